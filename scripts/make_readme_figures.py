"""Make the README's figures (docs/figures/*.png) from the package itself.

    python scripts/make_readme_figures.py [--out docs/figures] [--movie]

Every figure is drawn by the package's own plotting functions from runs made here with
fixed seeds, so the figures in the README are what a user gets. About half a minute.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import transformer_pde as tp
from transformer_pde._io import atomic_write
from transformer_pde.convergence import meanfield_convergence

ROOT = Path(__file__).resolve().parents[1]


def _save(fig: Figure, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def particles(out: Path, rng) -> tp.Trajectory:
    """Tokens on the circle (angle vs time, cluster count, energy) and on the sphere."""
    beta = 9.0
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta=beta), geometry="sphere", norm="post")
    t = np.linspace(0.0, 25.0, 251)
    x0 = tp.initial.uniform_tokens(64, 2, rng)
    circle = tp.simulate(dyn, x0, (0.0, t[-1]), t_eval=t, method="rk4", dt=0.05)
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    a, b, c = fig.subplots(1, 3)
    circle.plot(ax=a)
    a.set_title(rf"64 tokens on $\mathbb{{S}}^1$, SA $\beta = {beta:g}$")
    tp.plot_cluster_count(circle, ax=b)
    b.set_title("metastable clusters")
    tp.plot_energy(circle, ax=c)
    c.set_title("interaction energy (non-decreasing)")
    _save(fig, out / "tokens_circle.png")

    dyn3 = tp.TokenDynamics(tp.SoftmaxAttention(beta=1.0), geometry="sphere", norm="post")
    sphere = tp.simulate(dyn3, tp.initial.uniform_tokens(48, 3, rng), (0.0, 10.0),
                         t_eval=np.linspace(0, 10, 101), method="rk4", dt=0.05)
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax3 = fig.add_subplot(1, 2, 1, projection="3d")
    sphere.plot(ax=ax3)
    ax3.set_title(r"48 tokens on $\mathbb{S}^2$, SA $\beta = 1$")
    tp.plot_attention_matrix(circle, k=60, sort=True, ax=fig.add_subplot(1, 2, 2))
    _save(fig, out / "tokens_sphere.png")
    return circle


def mean_field(out: Path) -> None:
    """The circle's PDE as a kymograph and a density on the sphere as a map."""
    grid = tp.CircleGrid(256)
    rho0 = tp.Density.from_function(grid, lambda th: 1.0 + 0.05 * np.cos(3 * th) + 0.03 * np.cos(5 * th + 1))
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta=9.0), geometry="sphere")
    sol = tp.solve_meanfield(dyn, rho0, (0.0, 12.0), t_eval=np.linspace(0.0, 12.0, 121))
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    a, b = fig.subplots(1, 2)
    sol.plot(ax=a)
    a.set_title(r"Transformer PDE on $\mathbb{S}^1$, $\beta = 9$ (M = 256 cells)")
    sgrid = tp.SphereGrid(24)
    rho = tp.Density.from_function(sgrid, lambda x: np.exp(4 * x[..., 2]) + np.exp(6 * x[..., 0]))
    dyn2 = tp.TokenDynamics(tp.SoftmaxAttention(beta=2.0), geometry="sphere")
    sol2 = tp.solve_meanfield(dyn2, rho, (0.0, 1.0), t_eval=[0.0, 1.0])
    sol2.plot(ax=b)
    b.set_title(r"density on $\mathbb{S}^2$ at $t = 1$ (SphereGrid(24))")
    _save(fig, out / "mean_field.png")


def gaussian_and_convergence(out: Path) -> None:
    """Covariance ellipses of a Gaussian solution; W_2 against n with the fitted rate."""
    V = np.array([[-0.6, 1.0], [-1.0, -0.3]])  # a contracting rotation
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta=1.0, V=V), geometry="euclidean")
    g = tp.gaussian_moments(dyn, np.array([1.0, 0.5]), np.array([[1.0, 0.4], [0.4, 0.6]]),
                            np.linspace(0.0, 2.0, 41))
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    a, b = fig.subplots(1, 2)
    g.plot(ax=a, n_ellipses=7)
    grid = tp.CircleGrid(512)
    rho0 = tp.Density.from_function(grid, lambda th: np.exp(np.cos(th - 1.0)))
    study = meanfield_convergence(tp.TokenDynamics(tp.SoftmaxAttention(1.0)), rho0, [32, 64, 128, 256, 512],
                                  [1.0], seeds=range(4), p=2, dt=0.1)
    study.plot(ax=b)
    b.set_title(r"particles $\to$ PDE on $\mathbb{S}^1$: $W_2 \sim n^{-1/2}$")
    _save(fig, out / "gaussian_convergence.png")


def sweep(out: Path) -> None:
    """The example sweep (examples/beta_sweep.toml): clusters at T against beta, per seed."""
    spec = tp.runfile.read(ROOT / "examples" / "beta_sweep.toml")
    res = tp.sweep(spec, spec["sweep"], progress=False)
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    T = spec["particles"]["T"]
    res.plot(lambda v: tp.clustering.cluster_count(v["particles"])[-1], x="model.beta", ax=ax,
             ylabel=f"clusters at t = {T:g}")
    ax.set_title(r"a $\beta \times$ seed sweep on $\mathbb{S}^2$ (n = 64)")
    _save(fig, out / "sweep.png")


def main() -> None:
    """Parse the arguments and write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures")
    parser.add_argument("--movie", action="store_true", help="also write tokens_circle.gif")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    circle = particles(args.out, rng)
    mean_field(args.out)
    gaussian_and_convergence(args.out)
    sweep(args.out)
    if args.movie:
        tp.movie(circle, args.out / "tokens_circle.gif", frames=60, fps=12, dpi=60)
        print(f"wrote {args.out / 'tokens_circle.gif'}")


if __name__ == "__main__":
    main()
