"""Particles converge to the Transformer PDE on the circle at the rate n^-1/2.

Theory (MATH.md 5.3): the empirical measure of n tokens drawn i.i.d. from the initial
density solves the PDE exactly, so W_p(mu^n_t, mu_t) is the initial sampling error
propagated by a stable flow, and on a 1-D support E W_p(mu^n_0, mu_0) ~ n^-1/2
(Fournier-Guillin). Measured: W_1 and W_2 between SA particles (post-LN, beta = 1) and the
grid PDE at t in {1, 3}, for n = 2^6 .. 2^10 (quick) or 2^8 .. 2^13 (full) and eight
seeds; the fitted slope of log W against log n must be -1/2 +- 0.1.

Run: python -m transformer_pde.validation.circle_convergence [--quick] [--out DIR]
"""

from __future__ import annotations

import sys
import time

import numpy as np

import transformer_pde as tp
from transformer_pde.checks import check_close, finish, script_arguments
from transformer_pde.convergence import meanfield_convergence

NAME = "circle_convergence"
THEORY = ("Mean-field limit on the circle: W_p(particles, PDE) ~ n^-1/2 at fixed t "
          "(MATH.md 5.3); the fitted slope must be -1/2 +- 0.1.")


def main(argv=None) -> int:
    args = script_arguments(__doc__.splitlines()[0], argv)
    started = time.perf_counter()
    if args.quick:
        n_values, seeds, cells = [64, 128, 256, 512, 1024], range(8), 1024
    else:
        n_values, seeds, cells = [256, 512, 1024, 2048, 4096, 8192], range(8), 4096
    times = [1.0, 3.0]
    grid = tp.CircleGrid(cells)
    rho0 = tp.Density.from_function(grid, lambda th: np.exp(np.cos(th - 1.0)))
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0))
    checks = []
    studies = dict(zip((1, 2), meanfield_convergence(dyn, rho0, n_values, times, seeds=seeds,
                                                      p=(1, 2), dt=0.1)))
    for p, study in studies.items():
        print(study.table())
        for k, t in enumerate(times):
            fit = study.fit(k)
            checks.append(check_close(f"slope of log W_{p} vs log n at t={t:g}", fit.slope, -0.5, 0.1,
                                      note=f"95% CI [{fit.low:+.3f}, {fit.high:+.3f}]"))
    figure = _figure(studies)
    extra = {f"W{p}": {"n": s.n.tolist(), "t": s.t.tolist(), "distance": s.distance.tolist()}
             for p, s in studies.items()}
    return finish(NAME, checks, figure, args.out, quick=args.quick, started=started,
                  theory=THEORY, extra=extra)


def _figure(studies):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    for i, study in enumerate(studies.values()):
        ax = fig.add_subplot(1, len(studies), i + 1)
        study.plot(ax)
        ax.set_title(f"circle, SA beta=1: $W_{{{study.p:g}}}$ vs n")
    return fig


if __name__ == "__main__":
    sys.exit(main())
