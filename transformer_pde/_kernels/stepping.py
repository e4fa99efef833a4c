"""Numba kernels for the time steppers' per-stage work on the sphere (private).

Per stage a Runge-Kutta step on the sphere projects the attention output on the tangent
spaces and retracts the stage point; in NumPy each is a few whole-array passes and
temporaries (an ``einsum``, a product, a difference; a norm, a quotient), whose call
overhead dominates for small systems. These kernels do each in one pass over the rows
of a (m, d) view (m = n tokens, or B n for a batch), with the arithmetic of the NumPy
formulas in :mod:`transformer_pde.geometry` (the reference, tested to agree to round-off):

- :func:`sphere_project`: ``out_i = v_i - <x_i, v_i> x_i``;
- :func:`sphere_retract`: ``y_i <- y_i / |y_i|`` in place.

No calls to other modules' kernels, so the on-disk cache is safe (``cache=True``). They
return nothing (boxing a returned array costs as much as the work for small systems).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["sphere_project", "sphere_retract"]


@numba.njit(cache=True, nogil=True)
def sphere_project(x, v, out):
    """out[i] = v[i] - <x[i], v[i]> x[i] for the rows of (m, d) arrays.

    d = 2 and 3 (the circle, S^2) have loops of their own, which LLVM vectorises over the
    rows (with a loop over d inside it does not), in the same arithmetic: 0.0 + a = a.
    """
    m, d = x.shape
    if d == 2:
        for i in range(m):
            s = x[i, 0] * v[i, 0] + x[i, 1] * v[i, 1]
            out[i, 0] = v[i, 0] - s * x[i, 0]
            out[i, 1] = v[i, 1] - s * x[i, 1]
        return
    if d == 3:
        for i in range(m):
            s = x[i, 0] * v[i, 0] + x[i, 1] * v[i, 1] + x[i, 2] * v[i, 2]
            out[i, 0] = v[i, 0] - s * x[i, 0]
            out[i, 1] = v[i, 1] - s * x[i, 1]
            out[i, 2] = v[i, 2] - s * x[i, 2]
        return
    for i in range(m):
        s = 0.0
        for c in range(d):
            s += x[i, c] * v[i, c]
        for c in range(d):
            out[i, c] = v[i, c] - s * x[i, c]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def sphere_retract(y):
    """y[i] <- y[i] / |y[i]| in place for the rows of a (m, d) array (d = 2, 3 as in
    :func:`sphere_project`).

    NumPy's error model: a row of norm 0 becomes NaN, as in the NumPy formula (the
    steppers' finiteness check then stops the run and says where), instead of a
    ``ZeroDivisionError`` whose check in the loop keeps LLVM from vectorising it.
    """
    m, d = y.shape
    if d == 2:
        for i in range(m):
            r = np.sqrt(y[i, 0] * y[i, 0] + y[i, 1] * y[i, 1])
            y[i, 0] = y[i, 0] / r
            y[i, 1] = y[i, 1] / r
        return
    if d == 3:
        for i in range(m):
            r = np.sqrt(y[i, 0] * y[i, 0] + y[i, 1] * y[i, 1] + y[i, 2] * y[i, 2])
            y[i, 0] = y[i, 0] / r
            y[i, 1] = y[i, 1] / r
            y[i, 2] = y[i, 2] / r
        return
    for i in range(m):
        s = 0.0
        for c in range(d):
            s += y[i, c] * y[i, c]
        r = np.sqrt(s)
        for c in range(d):
            y[i, c] = y[i, c] / r
