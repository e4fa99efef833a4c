r"""Numba kernels for the finite-volume right-hand side of the grid PDE (private).

The readable NumPy version of the same right-hand side is
``transformer_pde.meanfield.solver._FiniteVolume.evaluate_reference``; the tests check that
both agree to round-off on every grid. With :math:`\rho_f^\mp` the limited face values,
:math:`u_f` the normal face velocity, :math:`|f|` the face size and :math:`|c|` the cell
volume,

.. math::

    F_f = |f|\,(u_f^+\rho_f^- + u_f^-\rho_f^+) + D_f(\rho_{l(f)} - \rho_{r(f)}), \qquad
    \frac{d\rho_c}{dt} = -\frac{1}{|c|}\sum_{f \ni c} \pm F_f,

with :math:`D_f = |f|/(\kappa\,\delta_f)` the two-point diffusion coefficient (0 without
noise), and the outflow rate per cell
:math:`(\sum_{f\ni c}|f|(u_f\cdot n_{f,c})^+ + D_f)/|c|`, whose maximum bounds the step.

- :func:`periodic_rhs` is the fused step of the circle grids (``CircleGrid``, the fibres of
  ``CausalCircleGrid``): MC-limited reconstruction, upwind fluxes, diffusion, update and
  the largest outflow rate in one pass over the cells of each periodic row.
- :func:`face_rhs` is the same update for any face list (sphere, Cartesian boxes) from
  reconstructed face values.
- :func:`softmax_quotient` forms :math:`u_f = N_f / Z_f` from the transforms of the fast
  field path and marks the faces it must hand over to quadrature.
- :func:`ssp_combine` and :func:`min_and_mass` are the Runge-Kutta stage combination and
  the check of a new state, each one pass instead of several NumPy temporaries.

A non-finite face velocity makes the returned rate NaN (the solver then stops and says
where). Kernels trust their inputs: the solver validates.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["periodic_rhs", "face_rhs", "softmax_quotient", "ssp_combine", "min_and_mass",
           "max_abs_and_change", "decay_rows"]

#: serial on purpose: one pass over a few thousand cells costs microseconds, less than
#: waking a thread pool; ``nogil`` so that other Python threads can run beside it
_JIT = dict(cache=True, nogil=True, error_model="numpy")


@numba.njit(inline="always")
def _mc_slope(minus, plus):
    """Van Leer's MC-limited slope from the one-sided differences (grids.mc_slopes)."""
    if not minus * plus > 0.0:
        return 0.0
    central = 0.5 * (minus + plus)
    mag = min(abs(central), 2.0 * min(abs(minus), abs(plus)))
    return mag if central > 0.0 else -mag


@numba.njit(**_JIT)
def periodic_rhs(rho, u, areas, vol, coef, change, slope, flux):
    """d rho / dt on periodic rows; returns the largest outflow rate per cell volume.

    ``rho`` (S, M): cell values, row by row; face ``s * M + c`` lies between cells
    ``c - 1`` and ``c`` of row s (periodic). ``u``, ``areas`` (S * M,): normal velocity
    and size of each face; ``vol`` (S * M,): cell volumes; ``coef`` (S * M,) the
    diffusion coefficient of each face or an empty array (no diffusion). ``change``
    (S * M,) receives d rho / dt; ``slope`` and ``flux`` (M,) are scratch.
    """
    n_rows, m = rho.shape
    diffuse = coef.shape[0] > 0
    rate = 0.0
    finite = True
    for s in range(n_rows):
        base = s * m
        for c in range(m):
            left = rho[s, c - 1] if c > 0 else rho[s, m - 1]
            right = rho[s, c + 1] if c < m - 1 else rho[s, 0]
            slope[c] = _mc_slope(rho[s, c] - left, right - rho[s, c])
        for c in range(m):
            cm = c - 1 if c > 0 else m - 1
            uf = u[base + c]
            if not np.isfinite(uf):
                finite = False
            lo = rho[s, cm] + 0.5 * slope[cm]  # the side of cell c - 1
            hi = rho[s, c] - 0.5 * slope[c]  # the side of cell c
            f = areas[base + c] * (max(uf, 0.0) * lo + min(uf, 0.0) * hi)
            if diffuse:
                f += coef[base + c] * (rho[s, cm] - rho[s, c])
            flux[c] = f
        for c in range(m):
            cp = c + 1 if c < m - 1 else 0
            k = base + c
            change[k] = (flux[c] - flux[cp]) / vol[k]
            out = areas[base + cp] * max(u[base + cp], 0.0) + areas[k] * max(-u[k], 0.0)
            if diffuse:
                out += coef[k] + coef[base + cp]
            r = out / vol[k]
            if r > rate:
                rate = r
    return rate if finite else np.nan


@numba.njit(**_JIT)
def face_rhs(rho, u, lo, hi, areas, left, right, vol, coef, change):
    """d rho / dt from a face list; returns the largest outflow rate per cell volume.

    ``rho`` (N,) cell values; per face f (F,): ``u`` normal velocity, ``lo``/``hi`` the
    reconstructed values on the side of ``left[f]``/``right[f]`` (``right[f] == -1``: a
    boundary face, whose flux leaves the grid), ``areas`` the face size, ``coef`` the
    diffusion coefficient (0 on boundary faces) or an empty array. ``vol`` (N,) cell
    volumes; ``change`` (N,) receives d rho / dt.
    """
    n = rho.shape[0]
    diffuse = coef.shape[0] > 0
    outflow = np.zeros(n)
    finite = True
    for c in range(n):
        change[c] = 0.0
    for f in range(u.shape[0]):
        uf = u[f]
        if not np.isfinite(uf):
            finite = False
        up = max(uf, 0.0)
        um = min(uf, 0.0)
        flux = areas[f] * (up * lo[f] + um * hi[f])
        lc, rc = left[f], right[f]
        outflow[lc] += areas[f] * up
        if rc >= 0:
            outflow[rc] -= areas[f] * um
            if diffuse:
                flux += coef[f] * (rho[lc] - rho[rc])
                outflow[lc] += coef[f]
                outflow[rc] += coef[f]
            change[rc] += flux
        change[lc] -= flux
    rate = 0.0
    for c in range(n):
        change[c] /= vol[c]
        r = outflow[c] / vol[c]
        if r > rate:
            rate = r
    return rate if finite else np.nan


@numba.njit(**_JIT)
def softmax_quotient(z, num, threshold, u, bad):
    """u = num / z where z >= threshold (per row) and the quotient is finite; else u = 0
    and ``bad`` is set. ``z``, ``num``, ``u``, ``bad`` (R, M); ``threshold`` (R,).
    Returns the number of bad faces."""
    count = 0
    for r in range(z.shape[0]):
        tau = threshold[r]
        for c in range(z.shape[1]):
            zc = z[r, c]
            q = num[r, c] / zc if zc >= tau else np.nan
            if np.isfinite(q):
                u[r, c] = q
                bad[r, c] = False
            else:
                u[r, c] = 0.0
                bad[r, c] = True
                count += 1
    return count


@numba.njit(**_JIT)
def ssp_combine(ca, x, cb, y, h, dy, out):
    """out = ca * x + cb * (y + h * dy), elementwise (a stage of SSP Runge-Kutta)."""
    for k in range(x.shape[0]):
        out[k] = ca * x[k] + cb * (y[k] + h * dy[k])
    return out


@numba.njit(**_JIT)
def min_and_mass(x, vol):
    """(min x, sum x * vol, all finite) in one pass."""
    lo = np.inf
    mass = 0.0
    finite = True
    for k in range(x.shape[0]):
        v = x[k]
        if not np.isfinite(v):
            finite = False
        if v < lo:
            lo = v
        mass += v * vol[k]
    return lo, mass, finite


@numba.njit(**_JIT)
def max_abs_and_change(u, u_prev):
    """(max |u_prev|, max |u - u_prev|): how large the face velocities were and how much
    they changed over a step (NaN if either is NaN somewhere)."""
    size = 0.0
    change = 0.0
    for k in range(u.shape[0]):
        p = abs(u_prev[k])
        d = abs(u[k] - u_prev[k])
        if p > size or p != p:
            size = p if size == size else size
        if d > change or d != d:
            change = d if change == change else change
    return size, change


@numba.njit(**_JIT)
def decay_rows(c, step, out):
    """out[b, i] = exp(-|c_b| step k), k = i from the start (c_b <= 0) or from the end (c_b > 0).

    The log-sum-exp-shifted weights exp(c_b g_i - max_i c_b g_i) of an axis of equal
    steps g_i = g_0 + i step. Each entry is exp(-t 8j) exp(-t r) with k = 8j + r, so a row
    of m entries costs m/8 + 8 exponentials (two roundings more than one exponential).
    """
    m = out.shape[1]
    fine = np.empty(8)
    for b in range(c.shape[0]):
        t = abs(c[b]) * step
        for r in range(8):
            fine[r] = np.exp(-t * r)
        flip = c[b] > 0.0
        for j in range(0, m, 8):
            coarse = np.exp(-t * j)
            for r in range(min(8, m - j)):
                k = j + r
                out[b, m - 1 - k if flip else k] = coarse * fine[r]
    return out
