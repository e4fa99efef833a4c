r"""The 2-sphere: a reduced latitude-longitude grid of quasi-uniform cells.

Three pieces (docs/math.md §2.2 and 8):

- :class:`SphereGrid`, a finite-volume grid of quasi-uniform cells on
  :math:`\mathbb S^2 \subset \mathbb R^3` with a limited second-order reconstruction;
- :meth:`SphereGrid.fast_face_velocity`, the field of rotation-invariant models by
  spherical harmonics (Funk-Hecke), O(L^2 log L + N + F) per evaluation;
- :func:`solve_axisymmetric`, the high-resolution solution of the axisymmetric reduction
  (a density that depends on the polar angle only stays so), on an
  :class:`AxisymmetricGrid` of latitude bands, against which the 2-D grid is checked.

The fast path lives in :mod:`~transformer_pde.meanfield.sht`, the axisymmetric reduction in
:mod:`~transformer_pde.meanfield.axisymmetric`.
"""
from __future__ import annotations

import numpy as np
from scipy import sparse

from .. import _validation as _v
from .field import RotationInvariant
from .grids import Faces, Grid
from .sht import _exact_head, sht_face_velocity

__all__ = ["SphereGrid"]


def _unit(theta, phi):
    theta, phi = np.broadcast_arrays(np.asarray(theta, dtype=np.float64), np.asarray(phi, dtype=np.float64))
    st = np.sin(theta)
    return np.stack([st * np.cos(phi), st * np.sin(phi), np.cos(theta)], axis=-1)


def _e_theta(theta, phi):
    theta, phi = np.broadcast_arrays(np.asarray(theta, dtype=np.float64), np.asarray(phi, dtype=np.float64))
    ct = np.cos(theta)
    return np.stack([ct * np.cos(phi), ct * np.sin(phi), -np.sin(theta)], axis=-1)


def _e_phi(theta, phi):
    theta, phi = np.broadcast_arrays(np.asarray(theta, dtype=np.float64), np.asarray(phi, dtype=np.float64))
    return np.stack([-np.sin(phi), np.cos(phi), np.zeros(phi.shape)], axis=-1)


def _colat_lon(x):
    """(theta in [0, pi], phi in [0, 2 pi)) of unit vectors x (..., 3)."""
    theta = np.arccos(np.clip(x[..., 2], -1.0, 1.0))
    phi = np.mod(np.arctan2(x[..., 1], x[..., 0]), 2.0 * np.pi)
    return theta, phi

def _log_map(base, x):
    """Tangent vectors at ``base`` (n, 3) pointing to x (n, 3), of length the geodesic distance."""
    c = np.clip(np.einsum("ij,ij->i", base, x), -1.0, 1.0)
    t = x - c[:, None] * base
    s = np.linalg.norm(t, axis=1)
    ang = np.arctan2(s, c)
    return t * (ang / np.where(s > 0.0, s, 1.0))[:, None]

# ---------------------------------------------------------------------------------------
# the 2-D grid
# ---------------------------------------------------------------------------------------
class SphereGrid(Grid):
    r"""A reduced latitude-longitude grid of the 2-sphere (quasi-uniform cells).

    The colatitude :math:`[0, \pi]` is cut into ``n_lat`` equal rings
    :math:`[\vartheta_i, \vartheta_{i+1}]`, :math:`\vartheta_i = i\pi/n_{lat}`; ring i is cut
    into :math:`n_i = \max(3, \operatorname{round}(2 n_{lat}\sin\bar\vartheta_i))` equal
    longitude sectors :math:`[2\pi k/n_i, 2\pi(k+1)/n_i)` (:math:`\bar\vartheta_i` the ring's
    mid colatitude). Every cell is then close to a square of side :math:`h = \pi/n_{lat}`,
    at the poles too: the polar rings are three wedges of area :math:`\approx 1.05h^2`
    meeting at the pole (instead of the :math:`2n_{lat}` slivers of width
    :math:`\sim h^2` of a plain latitude-longitude grid, which would crush the CFL step
    by a factor n_lat). About :math:`4n_{lat}^2/\pi` cells in all; the grid is symmetric
    under :math:`\vartheta \to \pi - \vartheta`.

    Why this grid rather than a cubed sphere: its cells are bounded by meridians and
    parallels, so areas, face lengths and normals are exact and elementary, sampling
    and point location are closed forms, the centres of a ring lie on one parallel with
    equal spacing (the layout spherical harmonic transforms like), and the polar problem
    of lat-lon grids is solved by reducing the number of cells per ring.

    Faces: the meridian segments between neighbouring cells of a ring (normal
    :math:`e_\phi`, length :math:`\vartheta_{i+1} - \vartheta_i`, midpoint at the ring's mid
    colatitude) and, on each parallel between two rings, the arcs between consecutive
    points of the union of both rings' longitude breakpoints (normal :math:`e_\vartheta`
    from the northern ring to the southern one, length :math:`\sin\vartheta_i\,\Delta\phi`), so
    every face separates exactly two cells and the fluxes are conservative. Arcs wider
    than :math:`h` in longitude (near the poles: the first parallel is cut into arcs of
    :math:`2\pi/9` by the breakpoints) are split into equal pieces, several faces then
    joining the same two cells: the flux through a face is taken at its midpoint, and
    along a parallel the normal :math:`e_\vartheta(\phi)` turns with the longitude, so the
    midpoint rule errs by :math:`\Delta\phi^2/24` of the flux, an error that would not
    shrink under refinement at the polar cells (their discrete divergence would be
    off by :math:`O(1/h)`; with the split it is off by O(h) there and O(h^2) on average).
    Volumes are the exact cell areas :math:`\Delta\phi(\cos\vartheta_i - \cos\vartheta_{i+1})`
    (they sum to :math:`4\pi`); centres are the directions of the cells' centroids (unit
    vectors), where the midpoint rule puts each cell's mass for the attention field.

    Reconstruction: a weighted least-squares gradient in the tangent plane at each centre
    (from the cells sharing a face, weights 1/distance^2), evaluated at the face midpoints
    through the log map (exact for data linear in the log-map coordinates of the cell,
    so second order), then limited per face with the bounds of Barth and Jespersen: the
    value is clipped to the range of the cell and its face neighbours, and below twice
    the cell's own value. The first keeps face values within neighbouring cell values
    (what the MC limiter of :func:`~transformer_pde.meanfield.grids.mc_slopes` does in
    1-D), the second is what a forward-Euler stage with cfl <= 1/2 needs to keep the
    density nonnegative (the outflow of a cell in one step is at most
    cfl * 2 rho_c |c|; see :mod:`~transformer_pde.meanfield.solver`). On smooth data the
    clip acts only near extrema, where it changes face values by O(h^2). (Clipping to the
    two cells of the face instead, as in 1-D, is first order on the parallels, whose
    midpoints are not between the two centres in longitude.)

    Densities are flat arrays of shape (N,), ordered ring by ring from the north pole
    (z = +1), west to east within a ring.

    Parameters
    ----------
    n_lat : int
        Number of latitude rings, >= 4.
    n_lon : sequence of int, optional
        Cells per ring (n_lat entries, each >= 3) instead of the quasi-uniform default;
        e.g. ``[2 * n_lat] * n_lat`` is the plain latitude-longitude grid.

    Attributes
    ----------
    theta_edges : ndarray (n_lat + 1,)
        Ring boundaries (colatitudes).
    n_lon : ndarray of int (n_lat,)
        Cells per ring; ``ring_start`` (n_lat + 1,) the flat index of each ring's first cell.
    ring, theta, phi, dphi : ndarray (N,)
        Ring index, centre colatitude, centre longitude and longitude width of each cell.
    max_face_angle : float
        The widest longitude interval of a face on a parallel, :math:`\pi/n_{lat}`.
    """

    geometry = "sphere"
    #: subtract the discrete field of the uniform density for rotation-invariant heads
    #: (see :func:`~transformer_pde.meanfield.field.face_velocity`): no grid of the
    #: sphere integrates the kernel exactly, and the uniform state should stay put
    balance_uniform = True
    dim = 3

    def __init__(self, n_lat: int, n_lon=None):
        n_lat = _v.as_positive_int(n_lat, "n_lat")
        if n_lat < 4:
            raise ValueError(f"n_lat must be >= 4 (latitude rings), got {n_lat}")
        self.n_lat = n_lat
        edges = np.linspace(0.0, np.pi, n_lat + 1)
        edges[-1] = np.pi
        self.theta_edges = edges
        mid = 0.5 * (edges[:-1] + edges[1:])
        if n_lon is None:
            counts = np.maximum(3, np.rint(2.0 * n_lat * np.sin(mid))).astype(np.int64)
            self._custom = False
        else:
            try:
                counts = [int(c) if float(c) == int(c) else None for c in n_lon]
            except (TypeError, ValueError):
                raise TypeError(f"n_lon must be a sequence of {n_lat} integers, got {n_lon!r}") from None
            if len(counts) != n_lat or any(c is None for c in counts):
                raise ValueError(f"n_lon must have one integer per ring ({n_lat}), got {list(n_lon)!r}")
            counts = np.asarray(counts, dtype=np.int64)
            if counts.min() < 3:
                raise ValueError(f"n_lon must be >= 3 in every ring, got {counts.min()} in ring "
                                 f"{int(np.argmin(counts))}")
            self._custom = True
        self.n_lon = counts
        self.max_face_angle = np.pi / n_lat
        self.ring_start = np.concatenate([[0], np.cumsum(counts)])
        n = int(self.ring_start[-1])
        self.shape = (n,)
        self.ring = np.repeat(np.arange(n_lat), counts)
        self.k = np.arange(n) - self.ring_start[self.ring]
        dphi = 2.0 * np.pi / counts[self.ring]
        self.dphi = dphi
        t0, t1 = edges[self.ring], edges[self.ring + 1]
        self.volumes = dphi * (np.cos(t0) - np.cos(t1))
        # centroid direction: int sin^2 (x, y) and int cos sin (z) over the cell
        s_int = 0.5 * (t1 - t0) - 0.25 * (np.sin(2 * t1) - np.sin(2 * t0))
        c_int = 0.5 * (np.sin(t1) ** 2 - np.sin(t0) ** 2)
        self.theta = np.arctan2(s_int * 2.0 * np.sin(0.5 * dphi), c_int * dphi)
        self.phi = (self.k + 0.5) * dphi
        self.centers = _unit(self.theta, self.phi)
        self.faces, self._face_loc = self._make_faces()
        self._center_loc = np.stack([self.theta, self.phi], axis=1)
        fl = self._face_loc
        self._n_theta = np.einsum("fd,fd->f", self.faces.normals, _e_theta(fl[:, 0], fl[:, 1]))
        self._n_phi = np.einsum("fd,fd->f", self.faces.normals, _e_phi(fl[:, 0], fl[:, 1]))
        self._make_reconstruction()

    def __repr__(self) -> str:
        if self._custom:
            return f"SphereGrid({self.n_lat}, n_lon={self.n_lon.tolist()})"
        return f"SphereGrid({self.n_lat})"

    # -- faces ---------------------------------------------------------------------------
    def _make_faces(self):
        edges, counts, start = self.theta_edges, self.n_lon, self.ring_start
        th, ph, nrm, area, left, right = [], [], [], [], [], []
        for i, m in enumerate(counts):  # meridional faces: face k between cells k-1 and k
            k = np.arange(m)
            tmid = 0.5 * (edges[i] + edges[i + 1])
            phi = 2.0 * np.pi * k / m
            th.append(np.full(m, tmid))
            ph.append(phi)
            nrm.append(_e_phi(tmid, phi))
            area.append(np.full(m, edges[i + 1] - edges[i]))
            left.append(start[i] + (k - 1) % m)
            right.append(start[i] + k)
        for j in range(1, self.n_lat):  # parallel between ring j-1 (north) and ring j
            na, nb = int(counts[j - 1]), int(counts[j])
            den = na * nb  # breakpoints in units of 2 pi / den
            cuts = np.unique(np.concatenate([np.arange(na) * nb, np.arange(nb) * na]))
            nxt = np.append(cuts[1:], den)
            # split arcs wider than max_angle into equal pieces (several faces, same two cells)
            width = 2.0 * np.pi * (nxt - cuts) / den
            pieces = np.ceil(width / self.max_face_angle * (1.0 - 1e-12)).astype(np.int64)
            seg = np.repeat(np.arange(len(cuts)), pieces)
            part = np.arange(len(seg)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
            dphi = width[seg] / pieces[seg]
            phi = 2.0 * np.pi * cuts[seg] / den + (part + 0.5) * dphi
            te = edges[j]
            th.append(np.full(len(seg), te))
            ph.append(phi)
            nrm.append(_e_theta(te, phi))
            area.append(np.sin(te) * dphi)
            left.append(start[j - 1] + cuts[seg] // nb)
            right.append(start[j] + cuts[seg] // na)
        th, ph = np.concatenate(th), np.concatenate(ph)
        faces = Faces(points=_unit(th, ph), normals=np.concatenate(nrm), areas=np.concatenate(area),
                      left=np.concatenate(left).astype(np.int64),
                      right=np.concatenate(right).astype(np.int64))
        return faces, np.stack([th, ph], axis=1)

    # -- reconstruction ------------------------------------------------------------------
    def _make_reconstruction(self):
        n = self.size
        f = self.faces
        nf = len(f.areas)
        # neighbour pairs (several faces may join the same two cells), both directions
        pairs = np.unique(np.stack([np.minimum(f.left, f.right), np.maximum(f.left, f.right)], 1), axis=0)
        p = np.concatenate([pairs[:, 0], pairs[:, 1]])
        q = np.concatenate([pairs[:, 1], pairs[:, 0]])
        x = self.centers
        e1 = _e_theta(self.theta, self.phi)
        e2 = _e_phi(self.theta, self.phi)

        def tangent(base_cells, points):  # log-map coordinates on (e_theta, e_phi) of the cells
            t = _log_map(x[base_cells], points)
            return np.stack([np.einsum("ij,ij->i", t, e1[base_cells]),
                             np.einsum("ij,ij->i", t, e2[base_cells])], axis=1)

        d2 = tangent(p, x[q])
        wgt = 1.0 / np.einsum("ij,ij->i", d2, d2)
        m = np.zeros((n, 2, 2))
        np.add.at(m, p, wgt[:, None, None] * d2[:, :, None] * d2[:, None, :])
        kq = wgt[:, None] * np.einsum("eij,ej->ei", np.linalg.inv(m)[p], d2)
        # gradient of cell p (2 components) = sum over its neighbours q of kq (rho_q - rho_p)
        rows = np.concatenate([2 * p, 2 * p + 1, 2 * p, 2 * p + 1])
        cols = np.concatenate([q, q, p, p])
        vals = np.concatenate([kq[:, 0], kq[:, 1], -kq[:, 0], -kq[:, 1]])
        grad = sparse.csr_matrix((vals, (rows, cols)), shape=(2 * n, n))
        # side s of face f (s < F: the left cell, else the right cell): offset of the face
        # midpoint from that cell's centre, dotted with that cell's gradient
        side_cell = np.concatenate([f.left, f.right])
        tf2 = tangent(side_cell, np.concatenate([f.points, f.points]))
        rows = np.repeat(np.arange(2 * nf), 2)
        cols = (2 * side_cell[:, None] + np.arange(2)).ravel()
        offsets = sparse.csr_matrix((tf2.ravel(), (rows, cols)), shape=(2 * nf, 2 * n))
        self._recon = (offsets @ grad).tocsr()
        # neighbour table for the limiter, padded with the cell itself
        order = np.argsort(p, kind="stable")
        counts = np.bincount(p, minlength=n)
        start = np.concatenate([[0], np.cumsum(counts)])
        nbr = np.repeat(np.arange(n)[:, None], int(counts.max()) + 1, axis=1)
        nbr[p[order], 1 + np.arange(len(p)) - start[p[order]]] = q[order]
        self._neighbours = nbr
        self._side_cell = side_cell
        self._n_faces = nf

    @property
    def coordinates(self) -> np.ndarray:
        """Cell centres (N, 3), unit vectors."""
        return self.centers

    def reconstruct(self, rho):
        """Limited second-order values ``(left side, right side)`` of rho at the faces, each (F,).

        A least-squares gradient per cell evaluated at the face midpoints, clipped by the
        Barth-Jespersen bounds and below twice the cell's value (class docstring).

        Parameters
        ----------
        rho : array_like, shape (N,)
            Cell values.

        Returns
        -------
        left, right : ndarray, shape (F,)
            Values on the side of the ``left`` and of the ``right`` cell of each face.
        """
        rho = np.asarray(rho).ravel()
        delta = self._recon @ rho
        nb = rho[self._neighbours]  # (N, 1 + max neighbours): the cell and its face neighbours
        low = nb.min(axis=1)
        high = np.minimum(nb.max(axis=1), 2.0 * rho)
        c = self._side_cell
        vals = np.minimum(np.maximum(rho[c] + delta, low[c]), high[c])
        nf = self._n_faces
        return vals[:nf], vals[nf:]

    # -- points ----------------------------------------------------------------------
    def sample_cells(self, cells, rng):
        """A point of the unit sphere uniform (w.r.t. area) in each given cell.

        Parameters
        ----------
        cells : array_like of int, shape (k,)
            Flat cell indices.
        rng : numpy.random.Generator
            Source of the uniform draws.

        Returns
        -------
        ndarray, shape (k, 3)
            One point per cell.
        """
        cells = np.asarray(cells, dtype=np.int64)
        ring = self.ring[cells]
        z0, z1 = np.cos(self.theta_edges[ring]), np.cos(self.theta_edges[ring + 1])
        z = z1 + (z0 - z1) * rng.random(len(cells))
        phi = (self.k[cells] + rng.random(len(cells))) * self.dphi[cells]
        s = np.sqrt(np.maximum(0.0, 1.0 - z * z))
        return np.stack([s * np.cos(phi), s * np.sin(phi), z], axis=1)

    def cell_of(self, x):
        """Flat index of the cell containing each point, by its colatitude and longitude.

        Parameters
        ----------
        x : array_like, shape (N, 3)
            Nonzero points (only their direction matters).

        Returns
        -------
        ndarray of int, shape (N,)
            Flat cell indices (never -1).
        """
        x = np.asarray(x, dtype=np.float64)
        theta, phi = _colat_lon(x / np.linalg.norm(x, axis=-1, keepdims=True))
        ring = np.clip(np.searchsorted(self.theta_edges, theta, side="right") - 1, 0, self.n_lat - 1)
        m = self.n_lon[ring]
        k = np.minimum((phi * m / (2.0 * np.pi)).astype(np.int64), m - 1)
        return self.ring_start[ring] + k

    # -- fast path -------------------------------------------------------------------
    def fast_face_velocity(self, ri: RotationInvariant, a: np.ndarray):
        """Normal face velocities (F,) of a rotation-invariant head from the cell masses a (N,).

        By spherical harmonics (module docstring). Returns ``(u, bad)``: bad (bool (F,), or
        None) marks the softmax faces where Z is too small to trust u, for quadrature to
        recompute (:mod:`~transformer_pde.meanfield.field`); the exact sums, with nothing
        to hand over, when the series is too long.
        """
        out = sht_face_velocity(ri, a, self._center_loc, self._face_loc, self._n_theta, self._n_phi)
        if out is not None:
            return out
        head = _exact_head(ri, 3)
        field = head._field(np.ascontiguousarray(self.faces.points), self.centers, a)
        return np.einsum("fd,fd->f", field, self.faces.normals), None

    def project(self, rho, f) -> float:
        r""":math:`\sum_c |c|\,\rho_c\,f(x_c)`: the integral of f against the density."""
        return float(np.sum(self.volumes * np.asarray(rho).ravel() * f(self.centers)))
