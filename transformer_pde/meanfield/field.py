r"""The mean-field velocity at the faces of a grid.

For a density :math:`\rho` on a grid the measure is
:math:`\mu = \sum_c \rho_c|c|\,\delta_{x_c}` and the face velocity is the normal
component of the attention field,

.. math::

    u_f = \langle X[\mu](x_f), n_f\rangle, \qquad
    X[\mu](x) = P^\perp_x A[\mu](x) \ \text{(sphere, post-LN)}, \quad A[\mu](x) \ \text{(R^d)},

(the projection drops out: :math:`n_f` is tangent at :math:`x_f`), with
:math:`A[\mu](x) = \int W(x, y)\,Vy\,d\mu(y)` as in :mod:`transformer_pde.attention`
(docs/math.md §2.2, 3.1).

Two ways to compute it:

- **quadrature** (any Q, K, V, any variant): the attention kernels with the faces as
  targets and the cell centres as weighted sources, O(F N) work and O(F + N) memory. On
  a 2-D :class:`~transformer_pde.meanfield.grids.CartesianGrid` the same sums of softmax
  and L2 heads are computed by matrix products over the tensor grid
  (:mod:`~transformer_pde.meanfield.separable`, exact to round-off, with its own handover
  to the kernels where the shifted partition function underflows).
- **fast** (rotation-invariant models, Q = qI, K = kI, V = vI): the weights depend on
  :math:`\langle x, y\rangle` only, so both sums are convolutions. On the circle with
  faces at :math:`fh` and centres at :math:`(j+\frac12)h`,

  .. math::

      Z_f = \sum_j a_j\,w(\cos\psi_{f-j}), \qquad
      N_f = -v\sum_j a_j\,w(\cos\psi_{f-j})\sin\psi_{f-j}, \qquad \psi_m = (m - \tfrac12)h,

  are circular convolutions computed by FFT in O(M log M) (the continuous version has the
  Fourier multipliers :math:`2\pi I_k(b)` of docs/math.md §8; the discrete kernel makes the FFT
  reproduce the quadrature sum exactly, up to round-off). Then :math:`u_f = N_f/Z_f`
  (softmax, L2) or :math:`N_f` (USA, sigmoid). For the exponential kernels the modes
  whose Bessel tail is below eps are dropped and the rest computed by shorter, batched
  transforms (:meth:`_CircleFFT._band_limit`; an extra error of at most
  :math:`\varepsilon S`, a quarter of the E below).

**Handover to quadrature.** The transforms compute :math:`Z_f` with an absolute error of
about :math:`E\,S`, and :math:`N_f` with one of about :math:`E\,|v|\,S`, where S is the
scale of the transform's values. Measured against the direct sums on random and
one-to-five-cell densities at beta = 1..1000: for the FFT (64..1024 cells) the error is
about :math:`1\,\varepsilon` times :math:`S = \sum_j a_j\max w`, and :math:`E = 4\varepsilon` is
taken; for the spherical harmonics (SphereGrid(12..64)) it is at most
:math:`1.3\times10^{3}\varepsilon \approx` ``SHT_EPSILON`` = 3e-13 times
:math:`S = \max Z` over the faces and the cell centres (ducc0's accuracy is relative to
the size of the values; at large beta that maximum is far below :math:`\sum_j a_j` for a
spread density), and twice that, :math:`E = 6\times10^{-13}`, is taken. The quotient
:math:`u_f = N_f/Z_f` then errs by about :math:`2|v|E S / Z_f`: noise where :math:`Z_f` is
tiny (far from all mass at large beta, where the kernel samples may even underflow to 0).
So for softmax-type (normalised) heads a face whose

.. math::

    Z_f < \tau S, \qquad \tau = E / r, \quad r = 10^{-11},

(or whose :math:`Z_f` or :math:`u_f` is not finite) is *handed over*: its velocity is
recomputed by quadrature (the attention kernels with per-target log-sum-exp shifts, exact
and finite at every beta) at O(N) work per handed-over face. r is the relative error of
:math:`u_f` (relative to :math:`|v|`, the bound of :math:`|u|`) the fast path may keep, a
margin of 10 below the 1e-10 at which ``tests/test_meanfield_fastpath.py`` compares it
with quadrature; :math:`\tau \approx 9\times10^{-5}` on the circle and :math:`0.06` on the
sphere. On a CausalCircleGrid the sum S runs over the fibres 0..k that fibre k attends to.
At small beta and smooth densities no face is handed over (:math:`Z_f/S` is then of order
1); with concentrated mass at large beta most faces are, and the cost tends to the
quadrature's (plus the transform's). Unnormalised heads (USA, sigmoid) need no handover:
there is no quotient, and the error :math:`E|v|S` is of the size of the exact sums' own
round-off relative to their largest terms (for USA the factor :math:`e^{|b|}` multiplies
both paths alike).

Only the model kinds the mean-field equation defines are accepted: attention on the
sphere with post-LN (circle and sphere grids) or without normalization in
:math:`\mathbb R^d` (Cartesian grids); masked attention only on
:class:`~transformer_pde.meanfield.grids.CausalCircleGrid`.
"""

from __future__ import annotations

from dataclasses import dataclass

import ducc0
import numpy as np
from scipy.special import ive

from .. import _threads
from .._kernels import finite_volume as _fv
from ..attention import (
    ALiBiAttention,
    Attention,
    L2Attention,
    Layers,
    MultiHeadAttention,
    SigmoidAttention,
    SoftmaxAttention,
    UnnormalizedAttention,
)
from ..dynamics import TokenDynamics
from .grids import CausalCircleGrid, CircleGrid, Grid

__all__ = ["face_velocity", "make_face_velocity", "check_model", "rate_bound", "RotationInvariant",
           "rotation_invariant"]

#: the ways :func:`face_velocity` computes the field (``field=`` of solve_meanfield)
FIELDS = ("auto", "quadrature", "fast")

#: absolute error of the FFT's Z_f in units of sum_j a_j max w (measured ~1 eps, module docstring)
FFT_ERROR = 4.0 * np.finfo(float).eps
#: relative error of u_f (in units of |v|) the fast path may keep before a face is handed over
HANDOVER_RELATIVE_ERROR = 1e-11


@dataclass(frozen=True)
class RotationInvariant:
    r"""A head whose weights depend on :math:`c = \langle x, y\rangle` only.

    ``kind`` is ``"softmax"`` (weights :math:`\propto e^{bc}`, normalised), ``"exp"``
    (:math:`e^{bc}`, USA) or ``"sigmoid"`` (:math:`\sigma(bc + \text{bias})`); the output is
    multiplied by the scalar ``v`` (V = vI). ``decay``: ALiBi's slope m on a
    :class:`CausalCircleGrid`, fibre k' weighted by :math:`e^{-m(k - k')}` in the sums of fibre k.
    """

    kind: str
    b: float
    v: float
    bias: float = 0.0
    decay: float = 0.0


def _scalar(m, d) -> float | None:
    """The scalar q if m is None (q = 1) or m == q I (d x d), else None."""
    if m is None:
        return 1.0
    if m.shape != (d, d):
        return None
    q = m[0, 0]
    return float(q) if np.array_equal(m, q * np.eye(d)) else None


def rotation_invariant(head: Attention, d: int) -> RotationInvariant | None:
    """The rotation-invariant description of a single head, or None if it has none."""
    q, k, v = (_scalar(m, d) for m in (head.Q, head.K, head.V))
    if q is None or k is None or v is None:
        return None
    b = head.beta * q * k
    if type(head) is ALiBiAttention:
        return RotationInvariant("softmax", b, v, decay=head.slope)
    if type(head) in (SoftmaxAttention, L2Attention):
        # L2 logits -(beta/2)|qx - ky|^2 = beta q k <x, y> + const on the sphere
        return RotationInvariant("softmax", b, v)
    if type(head) is UnnormalizedAttention:
        return RotationInvariant("exp", b, v)
    if type(head) is SigmoidAttention:
        return RotationInvariant("sigmoid", b, v, head.bias)
    return None  # Sinkhorn: its potentials are not rotation-invariant for a general density


def _heads(att) -> tuple[Attention, ...]:
    if isinstance(att, Layers):
        raise ValueError(
            f"{att!r} is depth-dependent: this function takes the model of one layer; "
            "solve_meanfield takes the whole Layers model"
        )
    return att.heads if isinstance(att, MultiHeadAttention) else (att,)


def check_model(dyn: TokenDynamics, grid: Grid) -> None:
    """Raise ValueError/TypeError unless ``dyn`` has a mean-field equation on ``grid``."""
    if not isinstance(dyn, TokenDynamics):
        raise TypeError(f"dyn must be a TokenDynamics, got {type(dyn).__name__}")
    dyn._check_single("the mean-field solvers")
    if not isinstance(grid, Grid):
        raise TypeError(f"grid must be a grid, got {type(grid).__name__}")
    if dyn.layers is not None:  # a depth-dependent model: every layer must have the equation
        for k in range(len(dyn.layers)):
            try:
                check_model(dyn._layer(k), grid)
            except (TypeError, ValueError) as err:
                raise type(err)(f"layer {k} of {dyn.layers!r}: {err}") from None
        return
    if grid.geometry == "sphere":
        if dyn.geometry.name != "sphere" or dyn.norm != "post":
            raise ValueError(
                f"a {type(grid).__name__} needs TokenDynamics(..., geometry='sphere', norm='post'), "
                f"got geometry={dyn.geometry.name!r}, norm={dyn.norm!r} (the other normalization "
                "schemes carry a radius and have no mean-field equation on the sphere here)"
            )
    elif dyn.geometry.name != "euclidean":
        raise ValueError(
            f"a CartesianGrid needs TokenDynamics(..., geometry='euclidean'), got {dyn.geometry.name!r}"
        )
    if dyn.dim is not None and dyn.dim != grid.dim:
        raise ValueError(f"the attention acts on d={dyn.dim} but {grid!r} lives in d={grid.dim}")
    causal = any(h.causal for h in _heads(dyn.attention))
    grid_check = getattr(grid, "check_model", None)  # a grid with its own model conditions (ZonalGrid)
    if grid_check is not None:
        grid_check(dyn)
    if causal and not isinstance(grid, CausalCircleGrid):
        raise ValueError(
            "masked (causal) attention has a mean-field equation on (s, theta): use "
            "CausalCircleGrid(n_positions, n_cells)"
        )
    # include_self=False (the mask j < i) has the same mean field as j <= i: the token's own
    # term carries the weight 1/n. ALiBi's slope acts per fibre (S = n: the particles' bias).
    if isinstance(grid, CausalCircleGrid) and not all(
        type(h) in (SoftmaxAttention, UnnormalizedAttention, ALiBiAttention) and h.causal
        for h in _heads(dyn.attention)
    ):
        raise ValueError(
            "a CausalCircleGrid needs masked attention: SoftmaxAttention(..., causal=True), "
            "UnnormalizedAttention(..., causal=True) or ALiBiAttention (include_self either way; "
            f"got {dyn.attention!r})"
        )


def rate_bound(dyn: TokenDynamics, grid: Grid) -> float:
    r"""A bound L on the rate at which the mean-field velocity can change, in 1/time.

    For a head with logits :math:`\beta\langle Qx, Ky\rangle` on points of norm at most R,
    :math:`b = |\beta|\,\|Q\|\|K\|R^2` bounds the logit variation and the field's
    derivatives are at most :math:`\|V\|(1 + b)` (softmax, L2, Sinkhorn, sigmoid; the
    sigmoid's slope is 1/4 of that) or :math:`\|V\|e^{b}(1 + b)` (USA, whose weights
    reach :math:`e^b`); heads add. It sets the time scale of the dynamics, including the
    growth of perturbations of a near-uniform density, whose velocity (and so the CFL
    bound) is tiny: the solver keeps :math:`L\,\Delta t \le` cfl.
    """
    points = np.asarray(grid.centers).reshape(-1, grid.dim)
    if grid.geometry == "euclidean":
        corners = np.array(np.meshgrid(*[list(b) for b in grid.bounds])).reshape(grid.dim, -1).T
        radius = float(np.max(np.linalg.norm(corners, axis=1)))
    else:
        radius = float(np.max(np.linalg.norm(points, axis=1)))
    total = 0.0
    for head in _heads(dyn.attention):
        norm = [1.0 if m is None else float(np.linalg.norm(m, 2)) for m in (head.Q, head.K, head.V)]
        b = abs(head.beta) * norm[0] * norm[1] * radius**2
        growth = np.exp(min(b, 709.0)) if isinstance(head, UnnormalizedAttention) else 1.0
        with np.errstate(over="ignore"):  # inf is the honest bound when e^b overflows
            total += norm[2] * growth * (1.0 + b)
    return total


def face_velocity(dyn: TokenDynamics, grid: Grid, rho: np.ndarray, field: str = "auto"
                  ) -> np.ndarray:
    r"""Normal velocity of the mean field at every face, shape (F,).

    .. math::

        u_f = \langle X[\mu](x_f), n_f\rangle, \qquad \mu = \sum_c \rho_c |c|\,\delta_{x_c}.

    Parameters
    ----------
    dyn : TokenDynamics
        The model (checked with :func:`check_model` by the caller).
    grid : Grid
        The grid.
    rho : ndarray, shape grid.shape
        Density values.
    field : {"auto", "quadrature", "fast"}
        How the field is computed: ``"fast"`` requires every head to be rotation-invariant on a grid with
        a fast path; ``"auto"`` uses it where available and quadrature otherwise. With either,
        for softmax-type heads, the faces where the fast path cannot be trusted are handed
        over to quadrature: those with :math:`Z_f < \tau S` (the transform's absolute error
        on :math:`Z_f` is about :math:`E S`, S the scale of its values: :math:`\sum_j a_j\max w`
        for the FFT, :math:`\max Z` for the spherical harmonics; :math:`\tau = E/r` keeps the
        relative error of :math:`u_f` below about :math:`r = 10^{-11}`; module docstring) or
        with a non-finite value. The result then agrees with ``"quadrature"``
        to about 1e-11 relative at every beta.

    Returns
    -------
    ndarray, shape (F,)
        One value per face of ``grid.faces``.

    See Also
    --------
    make_face_velocity : the same map, built once for many densities (what the solver uses).

    Examples
    --------
    >>> import numpy as np
    >>> import transformer_pde as tp
    >>> grid = tp.CircleGrid(64)
    >>> rho = tp.Density.from_function(grid, lambda th: 1 + 0.5 * np.cos(th)).values
    >>> dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta=1.0))
    >>> u = tp.meanfield.face_velocity(dyn, grid, rho)
    >>> bool(np.allclose(u, tp.meanfield.face_velocity(dyn, grid, rho, "quadrature"), rtol=0, atol=1e-13))
    True
    """
    return make_face_velocity(dyn, grid, field)(rho)


def make_face_velocity(dyn: TokenDynamics, grid: Grid, field: str = "auto"):
    r"""The face velocity of ``dyn`` on ``grid`` as a function ``rho -> u``, built once.

    .. math::

        \rho \mapsto u_f = \langle X[\mu](x_f), n_f\rangle, \qquad
        \mu = \sum_c \rho_c |c|\,\delta_{x_c},

    as :func:`face_velocity` computes it (same algorithms, same handover), with everything
    that does not depend on the density prepared here once: the kernel's Fourier spectrum
    on a circle grid, the grid's spherical-harmonic set-up, the tensor-grid tables of a
    Cartesian grid (:class:`~transformer_pde.meanfield.separable.TensorQuadrature`). The
    solver builds one per run.

    Parameters
    ----------
    dyn : TokenDynamics
        The model (checked with :func:`check_model` by the caller).
    grid : Grid
        The grid.
    field : {"auto", "quadrature", "fast"}
        As for :func:`face_velocity`; ``"fast"`` raises ValueError here for a head without
        a fast path.

    Returns
    -------
    callable
        ``velocity(rho)``: rho of shape ``grid.shape`` (or flat) to u of shape (F,).

    Examples
    --------
    >>> import numpy as np
    >>> import transformer_pde as tp
    >>> from transformer_pde.meanfield.field import make_face_velocity
    >>> grid = tp.CircleGrid(64)
    >>> velocity = make_face_velocity(tp.TokenDynamics(tp.SoftmaxAttention(beta=1.0)), grid)
    >>> velocity(tp.Density.uniform(grid).values).shape
    (64,)
    """
    return _FaceVelocity(dyn, grid, field)


class _FaceVelocity:
    """rho -> u (F,): the heads' built evaluators summed, with the uniform residuals removed."""

    def __init__(self, dyn, grid, field):
        self.grid = grid
        self.volumes = np.asarray(grid.volumes, dtype=float).ravel()
        self.heads = [_HeadVelocity(head, grid, field) for head in _heads(dyn.attention)]
        self.residuals = []
        if getattr(grid, "balance_uniform", False):
            for hv in self.heads:
                if rotation_invariant(hv.head, grid.dim):
                    self.residuals.append((_uniform_residual(hv.head, grid, field),
                                           _normalised(hv.head)))
        self.single = None
        if len(self.heads) == 1 and not self.residuals:
            hv = self.heads[0]
            self.single = hv.tensor if hv.tensor is not None else hv

    def __call__(self, rho) -> np.ndarray:
        a = np.asarray(rho, dtype=float).ravel() * self.volumes
        if self.single is not None:  # one head, nothing to subtract: straight to its evaluator
            return self.single(a)
        if len(self.heads) == 1:
            u = self.heads[0](a)
            if not self.residuals:
                return u
            u = np.array(u, dtype=float)
        else:
            u = np.zeros(len(self.grid.faces.areas))
            for hv in self.heads:
                u += hv(a)
        for residual, normalised in self.residuals:
            u -= residual * (1.0 if normalised else a.sum())
        return u


class _HeadVelocity:
    """One head's face velocity from the cell masses a (N,): fast path with handover, or quadrature."""

    def __init__(self, head: Attention, grid: Grid, field: str):
        self.head, self.grid = head, grid
        self.fast = _fast_path(grid, head) if field != "quadrature" else None
        if field == "fast" and self.fast is None:
            raise ValueError(
                f"field='fast' needs rotation-invariant heads (Q, K, V multiples of I; not "
                f"Sinkhorn) on a grid with a fast path, got {head!r} on {grid!r}"
            )
        if self.fast is None and not getattr(grid, "has_quadrature", True):
            raise ValueError(
                f"{grid!r} has no quadrature path (its cells stand for whole parallels): use "
                f"field='fast' or 'auto' with rotation-invariant heads, got field={field!r} for {head!r}")
        self.tensor = None
        if self.fast is None:
            from .separable import TensorQuadrature

            self.tensor = TensorQuadrature.build(head, grid)

    def __call__(self, a: np.ndarray) -> np.ndarray:
        if self.fast is None:
            if self.tensor is not None:
                return self.tensor(a)
            return _quadrature(self.head, self.grid, a)
        u, bad = self.fast(a)
        if bad is None:
            return u
        if bad.any():
            u = np.array(u, dtype=float)
            u[bad] = _quadrature(self.head, self.grid, a, bad)
        return u


def _head_velocity(head: Attention, grid: Grid, a: np.ndarray, field: str) -> np.ndarray:
    return _HeadVelocity(head, grid, field)(a)


def _handed_over(dyn: TokenDynamics, grid: Grid, rho: np.ndarray) -> int:
    """How many faces the fast path hands over to quadrature for ``rho`` (all heads; tests)."""
    a = (rho * grid.volumes).ravel()
    count = 0
    for head in _heads(dyn.attention):
        fast = _fast_path(grid, head)
        if fast is not None:
            bad = fast(a)[1]
            count += 0 if bad is None else int(np.count_nonzero(bad))
    return count


def _normalised(head: Attention) -> bool:
    """Whether the head's output does not scale with the total mass (softmax-type)."""
    return not isinstance(head, (UnnormalizedAttention, SigmoidAttention))


def _uniform_residual(head: Attention, grid: Grid, field: str) -> np.ndarray:
    r"""The discrete face velocity of the uniform unit-mass density, for a rotation-invariant head.

    The head is evaluated on a grid whose quadrature is not exactly rotation-invariant.

    In the continuum this field vanishes by symmetry; on a reduced sphere grid the
    midpoint rule leaves an O(h^3) residual that makes the uniform density drift.
    Subtracting it (a "well-balanced" correction, consistent to that order and linear in
    the mass for unnormalised heads) keeps the uniform density stationary to round-off
    and leaves the dynamics of perturbations unchanged. Cached per grid, head and field algorithm.
    """
    cache = grid.__dict__.setdefault("_uniform_residuals", {})
    key = (rotation_invariant(head, grid.dim), field)
    if key not in cache:
        uniform = np.asarray(grid.volumes, dtype=float).ravel()
        cache[key] = _head_velocity(head, grid, uniform / uniform.sum(), field)
    return cache[key]


def _quadrature(head: Attention, grid: Grid, a: np.ndarray, faces=None) -> np.ndarray:
    """Normal face velocities by the attention kernels, at all faces or at ``faces`` only.

    ``faces``: None (all F faces), a boolean mask (F,) or face indices; the result has one
    value per selected face, in face order. On a CausalCircleGrid the faces of fibre k are
    ``k*m .. (k+1)*m - 1`` and attend to the cells of fibres 0..k.
    """
    f = grid.faces
    n_faces = len(f.areas)
    idx = np.arange(n_faces) if faces is None else np.arange(n_faces)[faces]
    sources = np.ascontiguousarray(np.asarray(grid.centers).reshape(-1, grid.dim))
    if len(idx) == 0:
        return np.zeros(0)
    if isinstance(grid, CausalCircleGrid):
        m = grid.n_cells
        values = np.empty((len(idx), grid.dim))
        fibre = idx // m
        slope = head.slope if isinstance(head, ALiBiAttention) else 0.0
        if slope:  # ALiBi: the bias as weights e^{-m (k - k')} of the fibres, on plain softmax
            head = SoftmaxAttention(head.beta, head.Q, head.K, head.V, summation="exact")
        for k in np.unique(fibre):  # fibre k attends to fibres 0..k
            sel = fibre == k
            n_src = (k + 1) * m
            targets = np.ascontiguousarray(f.points[idx[sel]])
            w = a[:n_src]
            if slope:
                w = w * np.repeat(np.exp(-slope * (k - np.arange(k + 1.0))), m)
            values[sel] = head._field(targets, sources[:n_src], w)
    else:
        values = head._field(np.ascontiguousarray(f.points[idx]), sources, a)
    return np.einsum("fd,fd->f", values, f.normals[idx])


def _fast_path(grid: Grid, head: Attention):
    """A function a -> (u (F,), faces to hand over (bool (F,)) or None) for this head, or None."""
    ri = rotation_invariant(head, grid.dim)
    if ri is None:
        return None
    if isinstance(grid, CausalCircleGrid):
        return _CircleFFT(ri, grid.circle, grid.n_positions, causal=True)
    if ri.decay:  # pragma: no cover - check_model admits ALiBi on a CausalCircleGrid only
        return None
    if isinstance(grid, CircleGrid):
        return _CircleFFT(ri, grid, 1)
    fast = getattr(grid, "fast_face_velocity", None)  # (u, faces to hand over or None)
    if fast is None:
        return None
    return lambda a: fast(ri, a)


def _fibre_sums(decay: float):
    """``f(masses, out)``: what the fibres of a causal grid attend to, in place in ``out``.

    The cumulated masses of the fibres up to each one, or with ALiBi's slope m the sums
    weighted by :math:`e^{-m(k - k')}` (the recursion out_k = masses_k + e^{-m} out_{k-1}).
    """
    if not decay:
        return lambda masses, out: np.cumsum(masses, axis=0, out=out)
    from scipy.signal import lfilter

    factor = float(np.exp(-decay))

    def weighted(masses, out):
        out[...] = lfilter([1.0], [1.0, -factor], masses, axis=0)
        return out

    return weighted


class _CircleFFT:
    r"""The FFT fast path of one rotation-invariant head on a circle grid, built once.

    The same convolutions as :func:`_circle_fft` (its reference), with the spectra of the
    two kernel samples :math:`w(\cos\psi_m)` and :math:`-v\,w(\cos\psi_m)\sin\psi_m`
    computed here once. Per call: one real FFT of the masses, the product with both
    spectra packed as the spectrum of the complex signal :math:`Z + iN` (both convolutions
    are real: :func:`transformer_pde._kernels.finite_volume.packed_spectrum`) and one
    complex inverse FFT that gives Z in its real part and N in its imaginary part
    (``ducc0.fft``, the successor of the pocketfft that NumPy and SciPy wrap: the same
    algorithms and accuracy, measured 1.7x faster than ``scipy.fft`` at M = 4096 with less
    overhead per call; the package's threads for large batches), then the quotient with its
    handover test in one compiled pass
    (:func:`transformer_pde._kernels.finite_volume.softmax_quotient`). The ``rows``
    fibres of a CausalCircleGrid attend to the cumulated masses of the fibres up to their own.

    The transforms read the masses from the buffer :attr:`masses` (R, M) and write into
    buffers of their own, allocated once: :meth:`transform` copies its argument there, and
    the solver writes its masses there directly and calls :attr:`run` (no arguments).
    """

    #: at least this many values per call before the FFTs get more than one thread
    PARALLEL_MIN = 1 << 16

    def __init__(self, ri: RotationInvariant, circle: CircleGrid, rows: int, causal: bool = False):
        self.ri, self.m, self.rows, self.causal = ri, circle.n_cells, rows, causal
        psi = (np.arange(self.m) - 0.5) * circle.h
        with np.errstate(over="ignore"):  # USA's e^|b| may overflow: u is then inf, and the solver says so
            w, self.scale = kernel_weights(ri, np.cos(psi))
        self.spectra = np.fft.rfft(np.stack([w, -ri.v * w * np.sin(psi)]), axis=-1)
        self.factor = FFT_ERROR / HANDOVER_RELATIVE_ERROR * float(np.max(w))
        self.masses = np.zeros((rows, self.m))
        #: what the rows attend to: the masses, or their sums over the fibres up to each
        self.source = np.zeros((rows, self.m)) if causal else self.masses
        self.decimated = self._band_limit()
        # Z + iN at the faces of each row (the band-limited path transforms in place)
        self.zn = self.g.reshape(rows, self.m) if self.decimated else np.empty((rows, self.m), dtype=complex)
        if not self.decimated:
            self.fa = np.empty((rows, self.m // 2 + 1), dtype=complex)
            self.product = np.empty((rows, self.m), dtype=complex)
        self.run = self._bind()

    def _band_limit(self) -> bool:
        r"""Set up the band-limited transforms when the kernel's spectrum allows; True if so.

        For the exponential kernels (softmax, USA) the samples
        :math:`w = e^{b(\cos\psi - 1)}` (shifted: :math:`\max w = 1`) have the Fourier
        coefficients :math:`e^{-|b|}I_k(|b|)` up to sign (docs/math.md §8), and those of
        :math:`-v\,w\sin\psi` are differences of neighbours of these times v/2. With K
        the first mode where :math:`2\sum_{k \ge K-1} e^{-|b|}I_k(|b|) \le \varepsilon`, the
        convolutions, dropped above K, change by at most :math:`\varepsilon\sum_j a_j\max w`
        (and :math:`|v|` times that): a quarter of the transform error E the handover
        allows for. Only the K lowest modes of the masses are then needed; with M = L P
        (L >= 2K + 2 a power of two dividing M, P >= 4) they come from P real FFTs of
        length L of the decimated masses :math:`a_{qP + r}` (r fixed) and the twiddles
        :math:`e^{-2\pi i k r/M}`, and Z + iN at the M faces from P complex inverse FFTs
        of length L of the twiddled spectra
        (:func:`transformer_pde._kernels.finite_volume.decimated_spectra`):
        about :math:`M\log L` work instead of :math:`M\log M`, in batches that vectorise.
        """
        if self.ri.kind not in ("softmax", "exp"):
            return False
        m = self.m
        b = abs(self.ri.b)
        coeff = ive(np.arange(m // 2 + 1), b)
        tails = 2.0 * np.cumsum(coeff[::-1])[::-1]  # tails[k] = 2 sum_{j >= k} e^{-b} I_j(b)
        ok = np.flatnonzero(tails <= np.finfo(float).eps)
        if len(ok) == 0:
            return False
        n_modes = int(ok[0]) + 1  # the numerator's coefficient K involves I_{K-1} and I_{K+1}
        length = 8
        while length < 2 * n_modes + 2:
            length *= 2
        if m % length or m // length < 4:
            return False
        self.length, self.stride = length, m // length
        k = np.arange(n_modes)[:, None]
        r = np.arange(self.stride)[None, :]
        twiddle = np.exp(-2j * np.pi * k * r / m)  # (K, P)
        self.twiddle = np.ascontiguousarray(np.stack([twiddle.real, twiddle.imag]))  # (2, K, P)
        self.spectra_low = np.ascontiguousarray(self.spectra[:, :n_modes] / m)
        self.modes = np.empty((self.rows, n_modes), dtype=complex)
        self.g = np.zeros((self.rows, length, self.stride), dtype=complex)
        self.b = np.empty((self.rows, length // 2 + 1, self.stride), dtype=complex)
        return True

    def _bind(self):
        """The transforms of :attr:`masses` into :attr:`zn`, as one function of no arguments.

        Every array and argument is bound here, once: a call costs the transforms and
        little else (positional arguments: ducc0 parses keywords in ~1 us a call).
        """
        masses, source, zn, rows = self.masses, self.source, self.zn, self.rows
        r2c, c2c = ducc0.fft.r2c, ducc0.fft.c2c
        serial = masses.size < self.PARALLEL_MIN
        get_threads = _threads.get_num_threads
        causal = self.causal
        fibre_sum = _fibre_sums(self.ri.decay)
        if self.decimated:
            # r2c(a, axes, forward, inorm, out, nthreads); c2c(a, axes, forward, inorm, out, nthreads)
            shape = (rows, self.length, self.stride)
            src, b, g = source.reshape(shape), self.b, self.g
            twiddle, spectra, modes = self.twiddle, self.spectra_low, self.modes
            spectra_of = _fv.decimated_spectra

            def run():
                threads = 1 if serial else get_threads()
                if causal:
                    fibre_sum(masses, source)
                r2c(src, (1,), True, 0, b, threads)
                spectra_of(b, twiddle, spectra, modes, g)
                c2c(g, (1,), False, 0, g, threads)  # in place: zn is g
                return zn
        else:
            fa, product, spectra, packed = self.fa, self.product, self.spectra, _fv.packed_spectrum

            def run():
                threads = 1 if serial else get_threads()
                if causal:
                    fibre_sum(masses, source)
                r2c(source, (1,), True, 0, fa, threads)
                packed(fa, spectra, product)
                c2c(product, (1,), False, 2, zn, threads)  # inorm=2: divided by M
                return zn
        return run

    def __call__(self, a):
        zn, a = self.transform(a)
        if self.ri.kind != "softmax":
            with np.errstate(over="ignore"):
                return (zn.imag * self.scale).ravel(), None
        u = np.empty(a.size)
        bad = np.empty(a.size, dtype=bool)
        n_bad = _fv.softmax_quotient(zn, a, self.factor, u, bad)
        return u, (bad if n_bad else None)

    def transform(self, a):
        """``(zn, source)``: Z + iN of each row (R, M) complex, and the masses each row attends to (R, M).

        N is not yet multiplied by the USA factor. Both are buffers of this object, valid
        until the next call.
        """
        np.copyto(self.masses, np.reshape(a, (self.rows, self.m)))
        return self.run(), self.source


def kernel_weights(ri: RotationInvariant, c: np.ndarray) -> tuple[np.ndarray, float]:
    """Weights ``w`` of the cosines c and a factor s with true weight = s * w.

    Softmax weights are shifted by their largest possible value (:math:`e^{b(c - 1)}`
    for b >= 0), which cancels in the normalisation; USA weights keep the factor
    :math:`e^{|b|}` apart so that it overflows only in the final product.
    """
    if ri.kind == "sigmoid":
        z = ri.b * c + ri.bias
        return np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))),
                        np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z)))), 1.0
    w = np.exp(ri.b * c - abs(ri.b))
    return w, float(np.exp(abs(ri.b))) if ri.kind == "exp" else 1.0


def _circle_fft(ri: RotationInvariant, grid: CircleGrid, a: np.ndarray) -> np.ndarray:
    """Face velocities from the masses a (..., M) by FFT, and the faces to hand over.

    The readable reference of :class:`_CircleFFT` (which the solver uses).

    Returns ``(u, bad)``: u (..., M); bad (..., M) marks the softmax faces whose Z is below
    the handover threshold or not finite (module docstring), None for the other kinds.
    """
    m = grid.n_cells
    psi = (np.arange(m) - 0.5) * grid.h
    w, scale = kernel_weights(ri, np.cos(psi))
    fa = np.fft.rfft(a, axis=-1)
    z = np.fft.irfft(fa * np.fft.rfft(w), n=m, axis=-1)
    num = -ri.v * np.fft.irfft(fa * np.fft.rfft(w * np.sin(psi)), n=m, axis=-1)
    if ri.kind == "softmax":
        tau = FFT_ERROR / HANDOVER_RELATIVE_ERROR
        threshold = tau * np.sum(a, axis=-1, keepdims=True) * np.max(w)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            u = num / z
        bad = ~(z >= threshold) | ~np.isfinite(u)
        return np.where(bad, 0.0, u), bad
    with np.errstate(over="ignore"):
        return num * scale, None
