r"""Exact face velocities on a 2-D Cartesian grid by matrix products (the tensor structure).

The quadrature of the face velocity on a Cartesian grid sums over all N cells for each
of the F faces. For softmax-type heads the logit of a face point x and a cell centre
:math:`y_{ij} = (g_i, h_j)` (the axis centres of the tensor grid) is linear in y,

.. math::

    \ell(x, y_{ij}) = \langle c(x), y_{ij}\rangle + b_{ij}, \qquad
    c(x) = \beta K^\top Q x,

(:math:`b_{ij}` the L2 head's column bias :math:`-\tfrac\beta2|Ky_{ij}|^2`, 0 for softmax), so
the weights of one face factor into a row and a column term,
:math:`e^{\ell} = e^{c_1 g_i}\,e^{c_2 h_j}\,e^{b_{ij}}`, and the three sums the face needs are
bilinear forms of the cell masses :math:`a_{ij}`:

.. math::

    Z = U^\top A\,W, \qquad S_1 = (g\circ U)^\top A\,W, \qquad S_2 = U^\top A\,(h \circ W),
    \qquad U_i = e^{c_1 g_i - \max_i c_1 g_i},\quad W_j = e^{c_2 h_j - \max_j c_2 h_j},

with :math:`A_{ij} = a_{ij}e^{b_{ij} - \max b}`, and
:math:`u_f = \langle n_f, V(S_1, S_2)/Z\rangle`. The shift is the log-sum-exp shift of the
whole logit over the rows and columns that hold mass (the maximum of a sum of a row term
and a column term is the sum of their maxima), so no factor exceeds 1 and nothing
overflows at any beta. For a block of faces the forms are one matrix product
(``U @ A`` or ``W @ A.T``, by BLAS) and row-wise dot products: the F N multiply-adds of the
quadrature remain, but at matrix-product speed and with only F (m_0 + m_1)
exponentials instead of F N. A face normal to axis 0 with :math:`V_{01} = 0` (V = I) needs
only :math:`S_1`, one normal to axis 1 only :math:`S_2`: one product per block.

These are the quadrature's own sums in another order: the result agrees with the
attention kernels (``head._field``) to round-off. **Handover:** the shifted sum
:math:`Z` is a sum of nonnegative terms, each exact to round-off unless it falls below
the smallest normal number (the mass sits far from where its row and column terms peak,
at large beta); a face whose :math:`Z < N\,2.2\cdot10^{-308}/\varepsilon` (where such
losses could reach :math:`\varepsilon` relative) or is not finite is recomputed by the
kernels, with their per-face log-sum-exp shift.
"""

from __future__ import annotations

import numpy as np

from .._kernels import finite_volume as _fv
from ..attention import Attention, L2Attention, SoftmaxAttention
from .grids import CartesianGrid

__all__ = ["TensorQuadrature"]

#: a face with Z below this many times the number of cells is handed over to the kernels
#: (underflow losses, of at most 2.2e-308 per cell, could then exceed eps relative)
_UNDERFLOW_PER_CELL = np.finfo(float).tiny / np.finfo(float).eps


class TensorQuadrature:
    """Face velocities (F,) of one softmax or L2 head on a 2-D CartesianGrid (module docstring).

    Built once per grid and head by :meth:`build`; called with the cell masses a (N,).
    """

    #: entries of one (faces x cells-per-axis) table: blocks of faces of ~8 MiB each
    TILE_ENTRIES = 1 << 20

    @classmethod
    def build(cls, head: Attention, grid) -> TensorQuadrature | None:
        """The tensor quadrature of ``head`` on ``grid``, or None where it does not apply."""
        if not isinstance(grid, CartesianGrid) or grid.dim != 2:
            return None
        if type(head) not in (SoftmaxAttention, L2Attention) or head.causal:
            return None
        return cls(head, grid)

    def __init__(self, head: Attention, grid: CartesianGrid):
        self.head, self.grid = head, grid
        eye = np.eye(2)
        q = eye if head.Q is None else head.Q
        k = eye if head.K is None else head.K
        v = eye if head.V is None else head.V
        faces = grid.faces
        self.c = faces.points @ (head.beta * k.T @ q).T  # (F, 2): the logit is <c_f, y>
        self.w = faces.normals @ v  # (F, 2): u_f = <w_f, (S_1, S_2)> / Z_f
        self.g, self.h = grid.axes
        kx = grid.centers.reshape(-1, 2) @ k.T
        bias = head._column_bias(kx).reshape(grid.shape)
        self.bias = bias if np.any(bias) else None
        # faces that need only S_1, only S_2, or both
        only1 = self.w[:, 1] == 0.0
        only2 = ~only1 & (self.w[:, 0] == 0.0)
        both = ~only1 & ~only2
        self.groups = [(np.flatnonzero(sel), kind) for sel, kind in ((only1, 1), (only2, 2), (both, 3))
                       if sel.any()]
        self.n_faces = len(faces.areas)
        # K^T Q diagonal: a face's row term depends on its first coordinate only, its column
        # term on its second; the sums of all faces are then entries of three products of
        # (distinct first coordinates) x m0 x m1 x (distinct second coordinates)
        cmat = head.beta * k.T @ q
        self.diagonal = cmat[0, 1] == 0.0 and cmat[1, 0] == 0.0
        if self.diagonal:
            self.x1, self.i1 = np.unique(faces.points[:, 0], return_inverse=True)
            self.x2, self.i2 = np.unique(faces.points[:, 1], return_inverse=True)
            self.c1, self.c2 = cmat[0, 0] * self.x1, cmat[1, 1] * self.x2

    def __call__(self, a: np.ndarray) -> np.ndarray:
        """Face velocities (F,) from the cell masses a (N,), with the handover of the module docstring."""
        from .field import _quadrature

        grid = self.grid
        a2 = a.reshape(grid.shape)
        rows = np.flatnonzero(np.any(a2 > 0.0, axis=1))
        cols = np.flatnonzero(np.any(a2 > 0.0, axis=0))
        if len(rows) == 0:  # no mass: the kernels say what the softmax of nothing is
            return _quadrature(self.head, grid, a)
        ri, rj = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
        amat = a2[ri, rj]
        if self.bias is not None:
            b = self.bias[ri, rj]
            shift = np.max(np.where(amat > 0.0, b, -np.inf))
            amat = np.where(amat > 0.0, amat * np.exp(np.minimum(b - shift, 0.0)), 0.0)
        g, h = self.g[ri], self.h[rj]
        if self.diagonal:
            z, s = self._diagonal_sums(g, h, amat)
        else:
            z = np.empty(self.n_faces)
            s = np.empty((self.n_faces, 2))
            block = max(1, self.TILE_ENTRIES // max(len(g), len(h)))
            for idx, kind in self.groups:
                for k0 in range(0, len(idx), block):
                    f = idx[k0:k0 + block]
                    z[f], s[f] = _sums(self.c[f], g, h, amat, kind)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            u = np.einsum("fd,fd->f", self.w, s) / z
        bad = ~(z >= _UNDERFLOW_PER_CELL * a.size) | ~np.isfinite(u)
        if bad.any():
            u[bad] = _quadrature(self.head, grid, a, bad)
        return u


    def _diagonal_sums(self, g, h, amat):
        """Z (F,) and (S_1, S_2) (F, 2) when K^T Q is diagonal.

        U_f and W_f then depend on one coordinate of the face each, so Z_f is an entry of
        U A W^T over the distinct values.
        """
        u = _decay(self.c1, _step(g), len(g))  # (P, m0): one row per distinct x_1
        w = _decay(self.c2, _step(h), len(h))  # (R, m1): one row per distinct x_2
        ua, uga = u @ amat, (u * g[None, :]) @ amat
        zg, s1g, s2g = ua @ w.T, uga @ w.T, ua @ (w * h[None, :]).T  # (P, R) each
        i1, i2 = self.i1, self.i2
        return zg[i1, i2], np.stack([s1g[i1, i2], s2g[i1, i2]], axis=1)


def _step(axis):
    return axis[1] - axis[0] if len(axis) > 1 else 0.0


def _decay(c, step, m):
    r"""Rows :math:`e^{c_b g_i - \max_i c_b g_i} = e^{-|c_b|\,\delta k}` (B, m).

    On an axis of equal steps :math:`g_i = g_0 + i\delta`, k counted from the end where
    the maximum lies (:func:`transformer_pde._kernels.finite_volume.decay_rows`).
    """
    return _fv.decay_rows(np.ascontiguousarray(c), float(step), np.empty((len(c), m)))


def _sums(c, g, h, amat, kind):
    """Shifted Z (B,) and (S_1, S_2) (B, 2) of a block of faces with logit slopes c (B, 2).

    kind 1: S_1 only (S_2 left 0), 2: S_2 only, 3: both. g, h: the axis centres of the
    rows and columns of amat (equal steps).
    """
    u = _decay(c[:, 0], _step(g), len(g))  # (B, m0)
    w = _decay(c[:, 1], _step(h), len(h))  # (B, m1)
    s = np.zeros((len(c), 2))
    if kind == 1:
        ur = u * (w @ amat.T)  # U_i (A W)_i
        s[:, 0] = ur @ g
        return ur.sum(axis=1), s
    pw = (u @ amat) * w  # (U^T A)_j W_j
    s[:, 1] = pw @ h
    if kind == 3:
        s[:, 0] = np.einsum("bj,bj->b", (u * g[None, :]) @ amat, w)
    return pw.sum(axis=1), s
