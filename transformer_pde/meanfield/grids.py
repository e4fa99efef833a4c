r"""Finite-volume grids: geometry only (cells, faces, limited reconstruction).

Every grid describes its cells by their centres (in ambient coordinates of
:math:`\mathbb R^d`, so the attention model evaluates the field there) and volumes
(length or area), and its faces by a flat list: a midpoint, a unit normal tangent to
the manifold, an area (a length on a 2-D grid, 1 for the points that separate the
cells of a 1-D grid) and the two cells it separates, ``left`` and ``right`` (the
normal points from left to right; ``right = -1`` marks a boundary face). A finite-volume
scheme then reads

.. math::

    \frac{d\rho_c}{dt} = -\frac{1}{|c|}\sum_{f \ni c} \pm |f|\,F_f,
    \qquad F_f = u_f^+ \rho_f^- + u_f^- \rho_f^+,\quad u_f = \langle X[\mu](x_f), n_f\rangle,

with :math:`\rho_f^\mp` the limited second-order values on the left and right of face f
(:meth:`Grid.reconstruct`). Values are probability densities w.r.t. length or area.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _spec
from .. import _validation as _v

__all__ = ["Faces", "Grid", "CircleGrid", "CausalCircleGrid", "CartesianGrid", "mc_slopes"]


@dataclass(frozen=True)
class Faces:
    """Faces of a grid, flattened: F faces.

    Attributes
    ----------
    points : ndarray, shape (F, d)
        Face midpoints in ambient coordinates.
    normals : ndarray, shape (F, d)
        Unit normals, tangent to the manifold, pointing from ``left`` to ``right``.
    areas : ndarray, shape (F,)
        Face sizes (1 for the points between the cells of a 1-D grid).
    left, right : ndarray of int, shape (F,)
        Flat indices of the cells on either side; ``right == -1`` on a boundary face.
    """

    points: np.ndarray
    normals: np.ndarray
    areas: np.ndarray
    left: np.ndarray
    right: np.ndarray


def mc_slopes(minus: np.ndarray, plus: np.ndarray) -> np.ndarray:
    r"""Monotonized-central limited slope per cell from the one-sided differences.

    .. math::

        \sigma = \operatorname{minmod}\Big(\tfrac{\Delta^- + \Delta^+}{2},\, 2\Delta^-,\, 2\Delta^+\Big)

    (van Leer's MC limiter): second order where the data are smooth and monotone, zero at
    extrema, and the reconstructed face values stay between neighbouring cell values, so
    they are nonnegative when the cells are.
    """
    central = 0.5 * (minus + plus)
    mag = np.minimum(np.abs(central), 2.0 * np.minimum(np.abs(minus), np.abs(plus)))
    same = (minus * plus) > 0.0
    return np.where(same, np.sign(central) * mag, 0.0)


class Grid:
    """Base class of the finite-volume grids.

    Attributes
    ----------
    shape : tuple of int
        Shape of a density array on the grid.
    dim : int
        Ambient dimension d of the token space (2 for the circle, 3 for the sphere).
    geometry : {"sphere", "euclidean"}
        The :class:`~transformer_pde.TokenDynamics` geometry the grid discretises.
    centers : ndarray, shape (*shape, d)
        Cell centres in ambient coordinates.
    volumes : ndarray, shape (*shape,)
        Cell lengths or areas.
    faces : Faces
        The face list.
    """

    shape: tuple[int, ...]
    dim: int
    geometry: str
    centers: np.ndarray
    volumes: np.ndarray
    faces: Faces

    @property
    def size(self) -> int:
        """Number of cells."""
        return int(np.prod(self.shape))

    @property
    def coordinates(self) -> np.ndarray:
        """What :meth:`Density.from_function` passes to f: the cell centres (*shape, d)."""
        return self.centers

    def reconstruct(self, rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Limited second-order values ``(left side, right side)`` of rho (*shape) at the faces, each (F,)."""
        raise NotImplementedError  # pragma: no cover

    def sample_cells(self, cells: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A point uniform in each given cell (flat indices), shape (len(cells), d)."""
        raise NotImplementedError  # pragma: no cover

    def cell_of(self, x: np.ndarray) -> np.ndarray:
        """Flat index of the cell containing each point of x (N, d); -1 outside."""
        raise NotImplementedError  # pragma: no cover

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape})"

    def __eq__(self, other) -> bool:
        """Same grid class with the same constructor arguments."""
        if not isinstance(other, Grid):
            return NotImplemented
        return _spec.same_parameters(self, other)

    __hash__ = None  # grids carry caches and arrays; compare them with ==


def _circle_points(theta: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(theta), np.sin(theta)], axis=-1)


class CircleGrid(Grid):
    r"""The circle :math:`\mathbb S^1` cut into M equal arcs (angles in radians).

    Cell c is :math:`[c h, (c+1) h)` with :math:`h = 2\pi/M`, centre
    :math:`\theta_c = (c + \tfrac12)h` and length h; face c is the point :math:`\theta = c h`
    between cells c-1 and c (periodic), with normal :math:`e_\theta = (-\sin\theta, \cos\theta)`.

    Parameters
    ----------
    n_cells : int
        Number of cells M >= 4.
    """

    geometry = "sphere"
    dim = 2

    def __init__(self, n_cells: int):
        n_cells = _v.as_positive_int(n_cells, "n_cells")
        if n_cells < 4:
            raise ValueError(f"n_cells must be >= 4, got {n_cells}")
        self.n_cells = n_cells
        self.shape = (n_cells,)
        self.h = 2.0 * np.pi / n_cells
        self.angles = (np.arange(n_cells) + 0.5) * self.h
        self.centers = _circle_points(self.angles)
        self.volumes = np.full(n_cells, self.h)
        face_angles = np.arange(n_cells) * self.h
        idx = np.arange(n_cells)
        self.faces = Faces(
            points=_circle_points(face_angles),
            normals=np.stack([-np.sin(face_angles), np.cos(face_angles)], axis=-1),
            areas=np.ones(n_cells),
            left=(idx - 1) % n_cells,
            right=idx,
        )

    @property
    def coordinates(self) -> np.ndarray:
        """Cell-centre angles in radians, shape (M,)."""
        return self.angles

    def __repr__(self) -> str:
        return f"CircleGrid({self.n_cells})"

    def reconstruct(self, rho):
        """Limited second-order values ``(left side, right side)`` of rho at the faces, each (M,).

        Periodic MC-limited reconstruction (:func:`mc_slopes`); face c lies between cells c-1 and c.

        Parameters
        ----------
        rho : ndarray, shape (M,)
            Cell values.

        Returns
        -------
        left, right : ndarray, shape (M,)
            Values on the side of cell c-1 and of cell c of each face c.
        """
        return _periodic_reconstruct(rho, axis=-1)

    def sample_cells(self, cells, rng):
        """A point uniform in each given arc, on the unit circle.

        Parameters
        ----------
        cells : ndarray of int, shape (k,)
            Cell indices.
        rng : numpy.random.Generator
            Source of the uniform draws.

        Returns
        -------
        ndarray, shape (k, 2)
            One point per cell.
        """
        theta = (cells + rng.random(len(cells))) * self.h
        return _circle_points(theta)

    def cell_of(self, x):
        """Index of the arc containing each point, by the point's angle.

        Parameters
        ----------
        x : ndarray, shape (N, 2)
            Points of the plane (only their angle matters).

        Returns
        -------
        ndarray of int, shape (N,)
            Cell indices (never -1: every angle lies in some arc).
        """
        theta = np.mod(np.arctan2(x[:, 1], x[:, 0]), 2.0 * np.pi)
        return np.minimum((theta / self.h).astype(np.int64), self.n_cells - 1)


def _periodic_reconstruct(rho, axis=-1):
    """MC-limited face values of periodic rho along ``axis``: face c sits between c-1 and c."""
    up = np.roll(rho, -1, axis=axis) - rho  # rho_{c+1} - rho_c
    down = rho - np.roll(rho, 1, axis=axis)  # rho_c - rho_{c-1}
    slope = mc_slopes(down, up)
    right_side = rho - 0.5 * slope  # value at the face below cell c
    left_side = np.roll(rho + 0.5 * slope, 1, axis=axis)  # value of cell c-1 at the same face
    return left_side.ravel(), right_side.ravel()


class CausalCircleGrid(Grid):
    r"""Masked attention on the circle: the density lives on :math:`(s, \theta)`.

    :math:`s \in (0, 1]` is a token's position in the sequence, cut into S fibres
    :math:`((k-1)/S, k/S]`; each fibre is a :class:`CircleGrid` of M cells. Mass moves in
    :math:`\theta` only (:math:`\dot s = 0`) and fibre k attends to the fibres
    :math:`k' \le k` (docs/math.md §3.1, masked attention). Densities are w.r.t.
    :math:`ds\,d\theta`, shape (S, M); a causal particle system of n tokens at positions
    i/n is the case S = n with one token per fibre.

    Parameters
    ----------
    n_positions : int
        Number of fibres S >= 1.
    n_cells : int
        Cells per fibre M >= 4.
    """

    geometry = "sphere"
    dim = 2

    def __init__(self, n_positions: int, n_cells: int):
        self.n_positions = _v.as_positive_int(n_positions, "n_positions")
        self.circle = CircleGrid(n_cells)
        self.n_cells = self.circle.n_cells
        self.shape = (self.n_positions, self.n_cells)
        self.ds = 1.0 / self.n_positions
        self.positions = (np.arange(self.n_positions) + 1.0) * self.ds
        self.centers = np.broadcast_to(self.circle.centers, self.shape + (2,))
        self.volumes = np.full(self.shape, self.circle.h * self.ds)
        cf = self.circle.faces
        offset = (np.arange(self.n_positions) * self.n_cells)[:, None]
        self.faces = Faces(
            points=np.tile(cf.points, (self.n_positions, 1)),
            normals=np.tile(cf.normals, (self.n_positions, 1)),
            areas=np.full(self.n_positions * self.n_cells, self.ds),
            left=(offset + cf.left[None, :]).ravel(),
            right=(offset + cf.right[None, :]).ravel(),
        )

    @property
    def coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """``(s, theta)`` of the cell centres, each of shape (S, M)."""
        s = np.broadcast_to(self.positions[:, None] - 0.5 * self.ds, self.shape)
        return s, np.broadcast_to(self.circle.angles, self.shape)

    def __repr__(self) -> str:
        return f"CausalCircleGrid({self.n_positions}, {self.n_cells})"

    def reconstruct(self, rho):
        """Limited second-order values ``(left side, right side)`` of rho at the faces, each (S * M,).

        Each fibre is reconstructed as a periodic :class:`CircleGrid` (mass does not move in s).

        Parameters
        ----------
        rho : ndarray, shape (S, M)
            Cell values.

        Returns
        -------
        left, right : ndarray, shape (S * M,)
            Values on either side of each face, fibre by fibre as in :attr:`faces`.
        """
        return _periodic_reconstruct(rho, axis=-1)

    def sample_cells(self, cells, rng):
        """A point of the unit circle uniform in the arc of each given cell.

        Only the angle is drawn: a cell's position s is that of its fibre, ``cells // M``.

        Parameters
        ----------
        cells : ndarray of int, shape (k,)
            Flat cell indices into the (S, M) grid.
        rng : numpy.random.Generator
            Source of the uniform draws.

        Returns
        -------
        ndarray, shape (k, 2)
            One point per cell.
        """
        return self.circle.sample_cells(cells % self.n_cells, rng)


class CartesianGrid(Grid):
    r"""A box of :math:`\mathbb R^1` or :math:`\mathbb R^2` cut into equal cells.

    Parameters
    ----------
    bounds : sequence of (float, float)
        ``[(lo, hi)]`` or ``[(lo_x, hi_x), (lo_y, hi_y)]``.
    shape : sequence of int
        Cells per axis, each >= 4.
    boundary : {"outflow", "zero-flux"}
        ``"outflow"`` (default): mass carried out of the box by the field leaves it
        (nothing enters), and :func:`~transformer_pde.solve_meanfield` warns when the
        mass lost exceeds 1e-10; ``"zero-flux"``: no flux through the box boundary, so
        mass is conserved but piles up at the walls.
    """

    geometry = "euclidean"

    def __init__(self, bounds, shape, boundary: str = "outflow"):
        try:
            bounds = [tuple(b) for b in bounds]
            shape = tuple(shape)
        except TypeError:
            raise TypeError("bounds must be a list of (lo, hi) pairs and shape a list of ints") from None
        if len(bounds) not in (1, 2) or len(shape) != len(bounds):
            raise ValueError(
                f"bounds and shape must describe 1 or 2 axes with one (lo, hi) per axis, "
                f"got bounds {bounds} and shape {shape}"
            )
        lo, hi = [], []
        for ax, (b, m) in enumerate(zip(bounds, shape, strict=True)):
            if len(b) != 2:
                raise ValueError(f"bounds[{ax}] must be a pair (lo, hi), got {b}")
            a, z = _v.as_real(b[0], f"bounds[{ax}][0]"), _v.as_real(b[1], f"bounds[{ax}][1]")
            if not z > a:
                raise ValueError(f"bounds[{ax}] must satisfy lo < hi, got ({a}, {z})")
            if _v.as_positive_int(m, f"shape[{ax}]") < 4:
                raise ValueError(f"shape[{ax}] must be >= 4, got {m}")
            lo.append(a)
            hi.append(z)
        if boundary not in ("outflow", "zero-flux"):
            raise ValueError(f"boundary must be 'outflow' or 'zero-flux', got {boundary!r}")
        self.boundary = boundary
        self.bounds = tuple(zip(lo, hi, strict=True))
        self.shape = tuple(int(m) for m in shape)
        self.dim = len(self.shape)
        self.lo, self.hi = np.array(lo), np.array(hi)
        self.h = (self.hi - self.lo) / np.array(self.shape)
        axes = [self.lo[a] + (np.arange(m) + 0.5) * self.h[a] for a, m in enumerate(self.shape)]
        self.axes = axes
        self.centers = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
        self.volumes = np.full(self.shape, float(np.prod(self.h)))
        self.faces = self._make_faces()

    def __repr__(self) -> str:
        return f"CartesianGrid({list(self.bounds)}, {list(self.shape)}, boundary={self.boundary!r})"

    def _make_faces(self) -> Faces:
        """Interior faces per axis, then (outflow only) the boundary faces of each side."""
        flat = np.arange(self.size).reshape(self.shape)
        pts, nrm, area, left, right = [], [], [], [], []
        for a in range(self.dim):
            other = [b for b in range(self.dim) if b != a]
            face_area = float(np.prod(self.h[other])) if other else 1.0
            # interior: between index i-1 and i along axis a
            lc = np.take(flat, np.arange(self.shape[a] - 1), axis=a).ravel()
            rc = np.take(flat, np.arange(1, self.shape[a]), axis=a).ravel()
            parts = [(lc, rc)]
            if self.boundary == "outflow":
                first = np.take(flat, [0], axis=a).ravel()
                last = np.take(flat, [self.shape[a] - 1], axis=a).ravel()
                # normals point from left (inside) to right (outside, -1)
                parts += [(last, -np.ones_like(last)), (first, -np.ones_like(first))]
            for k, (lcells, rcells) in enumerate(parts):
                centre = self.centers.reshape(-1, self.dim)[lcells].copy()
                sign = -1.0 if k == 2 else 1.0  # the low wall's outward normal is -e_a
                centre[:, a] += sign * 0.5 * self.h[a]
                normal = np.zeros((len(lcells), self.dim))
                normal[:, a] = sign
                pts.append(centre)
                nrm.append(normal)
                area.append(np.full(len(lcells), face_area))
                left.append(lcells)
                right.append(rcells)
        return Faces(np.concatenate(pts), np.concatenate(nrm), np.concatenate(area),
                     np.concatenate(left), np.concatenate(right))

    def reconstruct(self, rho):
        """Limited second-order values ``(left side, right side)`` of rho at the faces, each (F,).

        MC-limited slopes (:func:`mc_slopes`), first order in the cells next to a wall; on an
        outflow boundary face the outside value is 0.

        Parameters
        ----------
        rho : ndarray, shape (*shape)
            Cell values.

        Returns
        -------
        left, right : ndarray, shape (F,)
            Values on either side of each face, in the order of :attr:`faces`.
        """
        lefts, rights = [], []
        for a in range(self.dim):
            r = np.moveaxis(rho, a, -1)
            d = np.diff(r, axis=-1)  # r_{i+1} - r_i, length m - 1
            slope = np.zeros_like(r)  # one-sided walls: first order in the wall cells
            slope[..., 1:-1] = mc_slopes(d[..., :-1], d[..., 1:])
            hi_face = r + 0.5 * slope  # value at the upper face of each cell
            lo_face = r - 0.5 * slope
            left = np.moveaxis(hi_face[..., :-1], -1, a).ravel()
            right = np.moveaxis(lo_face[..., 1:], -1, a).ravel()
            lefts.append(left)
            rights.append(right)
            if self.boundary == "outflow":
                lefts += [np.take(hi_face, [-1], axis=-1).ravel(), np.take(lo_face, [0], axis=-1).ravel()]
                rights += [np.zeros(lefts[-2].size), np.zeros(lefts[-1].size)]
        return np.concatenate(lefts), np.concatenate(rights)

    def sample_cells(self, cells, rng):
        """A point uniform in each given cell of the box.

        Parameters
        ----------
        cells : ndarray of int, shape (k,)
            Flat cell indices.
        rng : numpy.random.Generator
            Source of the uniform draws.

        Returns
        -------
        ndarray, shape (k, dim)
            One point per cell.
        """
        idx = np.stack(np.unravel_index(cells, self.shape), axis=-1)
        return self.lo + (idx + rng.random(idx.shape)) * self.h

    def cell_of(self, x):
        """Flat index of the cell containing each point; -1 outside the box.

        Parameters
        ----------
        x : ndarray, shape (N, dim)
            Points.

        Returns
        -------
        ndarray of int, shape (N,)
            Flat cell indices, -1 for the points outside.
        """
        idx = np.floor((x - self.lo) / self.h).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < np.array(self.shape)), axis=1)
        flat = np.ravel_multi_index(tuple(np.clip(idx, 0, np.array(self.shape) - 1).T), self.shape)
        return np.where(inside, flat, -1)
