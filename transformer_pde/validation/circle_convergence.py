"""Particles converge to the Transformer PDE on the circle at the rate n^-1/2.

Theory (docs/math.md §5.3): the empirical measure of n tokens drawn i.i.d. from the initial
density solves the PDE exactly, so W_p(mu^n_t, mu_t) is the initial sampling error
propagated by a stable flow, and on a 1-D support E W_p(mu^n_0, mu_0) ~ n^-1/2
(Fournier-Guillin). Measured: W_1 and W_2 between SA particles (post-LN, beta = 1) and the
grid PDE at t in {1, 3}, for n = 2^6 .. 2^10 (quick) or 2^8 .. 2^13 (full) and eight
seeds; the fitted slope of log W against log n must be -1/2 +- 0.1.

Run: python -m transformer_pde.validation.circle_convergence [--quick] [--out DIR]
"""

from __future__ import annotations

import sys

import numpy as np

import transformer_pde as tp
from transformer_pde.checks import Validation, check_close, run
from transformer_pde.convergence import meanfield_convergence

__all__ = ["VALIDATION", "measure", "checks", "figure"]

NAME = "circle_convergence"
THEORY = ("Mean-field limit on the circle: W_p(particles, PDE) ~ n^-1/2 at fixed t "
          "(docs/math.md §5.3); the fitted slope must be -1/2 +- 0.1.")


QUICK = {"n_values": [64, 128, 256, 512, 1024], "seeds": 8, "cells": 1024}
FULL = {"n_values": [256, 512, 1024, 2048, 4096, 8192], "seeds": 8, "cells": 4096}
TIMES = [1.0, 3.0]


def measure(params: dict) -> dict:
    """W_1 and W_2 between particles and the grid PDE for each n, seed and time."""
    n_values, seeds, cells = params["n_values"], range(params["seeds"]), params["cells"]
    times = TIMES
    grid = tp.CircleGrid(cells)
    rho0 = tp.Density.from_function(grid, lambda th: np.exp(np.cos(th - 1.0)))
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0))
    studies = dict(zip((1, 2), meanfield_convergence(dyn, rho0, n_values, times, seeds=seeds,
                                                      p=(1, 2), dt=0.1), strict=True))
    for study in studies.values():
        print(study.table())
    return {"studies": studies, "times": times}


def checks(results: dict) -> list:
    """Fitted slope of log W_p against log n at each time: -1/2 +- 0.1."""
    checks = []
    for p, study in results["studies"].items():
        for k, t in enumerate(results["times"]):
            fit = study.fit(k)
            checks.append(check_close(f"slope of log W_{p} vs log n at t={t:g}", fit.slope, -0.5, 0.1,
                                      note=f"95% CI [{fit.low:+.3f}, {fit.high:+.3f}]"))
    return checks


def _extra(results: dict) -> dict:
    return {f"W{p}": {"n": s.n.tolist(), "t": s.t.tolist(), "distance": s.distance.tolist()}
            for p, s in results["studies"].items()}


def figure(results: dict):
    """W_p against n with the fits, one panel per p."""
    return _figure(results["studies"])


def _figure(studies):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    for i, study in enumerate(studies.values()):
        ax = fig.add_subplot(1, len(studies), i + 1)
        study.plot(ax)
        ax.set_title(f"circle, SA $\\beta=1$: $W_{{{study.p:g}}}$ vs $n$")
    return fig


VALIDATION = Validation(name=NAME, theory=THEORY, measure=measure, checks=checks, figure=figure,
                        quick=QUICK, full=FULL, extra=_extra, description=__doc__.splitlines()[0])

if __name__ == "__main__":
    sys.exit(run(VALIDATION))
