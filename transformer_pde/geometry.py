r"""Where tokens live: Euclidean space or the unit sphere.

A geometry knows tangent projections, retractions and membership checks, nothing about
attention. On the sphere :math:`\mathbb S^{d-1}`

.. math::

    P^\perp_x v = v - \langle x, v\rangle x, \qquad R(y) = y / \|y\|.
"""

from __future__ import annotations

import numpy as np

from . import _validation as _v
from ._kernels import stepping as _ks

__all__ = ["Euclidean", "Sphere", "SPHERE_TOL", "as_geometry"]

#: largest accepted deviation ``max_i | |x_i| - 1 |`` of tokens given on the sphere
SPHERE_TOL = 1e-6


class Euclidean:
    r"""Flat :math:`\mathbb R^d`: projection and retraction are the identity."""

    name = "euclidean"

    def project(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Tangent projection (identity), shapes (..., n, d) -> (..., n, d)."""
        return v

    def retract(self, y: np.ndarray) -> np.ndarray:
        """Retraction onto the manifold (identity), shape (..., n, d)."""
        return y

    def _project_fast(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        return v

    def _retract_fresh(self, y: np.ndarray) -> np.ndarray:
        return y

    def check(self, x: np.ndarray, name: str = "x") -> None:
        """Every point of R^d is admissible."""

    def snap(self, x: np.ndarray) -> np.ndarray:
        """Admissible points are left as they are (identity)."""
        return x

    def __repr__(self) -> str:
        return "Euclidean()"


class Sphere:
    r"""The unit sphere :math:`\mathbb S^{d-1} \subset \mathbb R^d`.

    .. math::

        P^\perp_x v = v - \langle x, v\rangle x, \qquad R(y) = \frac{y}{\|y\|}.
    """

    name = "sphere"

    def project(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Project each row of v (..., n, d) onto the tangent space at the row of x (..., n, d)."""
        return v - np.einsum("...j,...j->...", x, v)[..., None] * x

    def retract(self, y: np.ndarray) -> np.ndarray:
        """Normalise each row of y (..., n, d) to unit length."""
        return y / np.linalg.norm(y, axis=-1, keepdims=True)

    def _project_fast(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        """:meth:`project` in one compiled pass (what the steppers call); a new array."""
        if not (x.flags.c_contiguous and v.flags.c_contiguous and x.dtype == v.dtype == np.float64):
            return self.project(x, v)
        d = x.shape[-1]
        out = np.empty_like(v)
        _ks.sphere_project(x.reshape(-1, d), v.reshape(-1, d), out.reshape(-1, d))
        return out

    def _retract_fresh(self, y: np.ndarray) -> np.ndarray:
        """:meth:`retract` in place, for an array the caller has just made and owns."""
        if not (y.flags.c_contiguous and y.dtype == np.float64):
            return self.retract(y)
        _ks.sphere_retract(y.reshape(-1, y.shape[-1]))
        return y

    def check(self, x: np.ndarray, name: str = "x") -> None:
        """Raise ``ValueError`` if some token is farther than ``SPHERE_TOL`` from unit norm.

        ``x`` is (n, d), or (B, n, d) for a batch of systems (the message names both indices).
        """
        norms = np.linalg.norm(x, axis=-1)
        dev = np.abs(norms - 1.0)
        where = np.unravel_index(int(np.argmax(dev)), dev.shape)
        if dev[where] > SPHERE_TOL:
            token = f"token {where[-1]}" + (f" of system {where[0]}" if dev.ndim > 1 else "")
            raise ValueError(
                f"{name} must lie on the unit sphere (| |x_i| - 1 | <= {SPHERE_TOL:g}), but "
                f"{token} has norm {norms[where]:.10g}; normalise with x / |x| first"
            )

    def snap(self, x: np.ndarray) -> np.ndarray:
        """Normalise the rows of x (..., n, d) whose norm is off 1 by more than 4 eps.

        Rows already unit to round-off are returned bit for bit, so that a run restarted
        from a saved state reproduces the original run exactly.
        """
        norms = np.linalg.norm(x, axis=-1)
        off = np.abs(norms - 1.0) > 4 * np.finfo(float).eps
        if not off.any():
            return x
        x = x.copy()
        x[off] /= norms[off][:, None]
        return x

    def __repr__(self) -> str:
        return "Sphere()"


def as_geometry(geometry) -> Euclidean | Sphere:
    """A geometry object from ``"sphere"``, ``"euclidean"`` or an instance."""
    if isinstance(geometry, (Euclidean, Sphere)):
        return geometry
    table = {"sphere": Sphere, "euclidean": Euclidean}
    if isinstance(geometry, str) and geometry not in table:
        raise ValueError(f"geometry must be 'sphere' or 'euclidean', got {geometry!r}")
    return table[_v.as_choice(geometry, "geometry", tuple(table))]()
