r"""Token dynamics = attention + geometry + normalization scheme.

On the sphere, tokens are written :math:`x_j = r_j\theta_j` with
:math:`\theta_j\in\mathbb S^{d-1}`; attention acts on the directions,
:math:`A_j = \sum_k W_{jk}(\Theta) V\theta_k`, and the normalization scheme decides how
direction and radius move (docs/math.md §4.5, Karagodin-Ge-Polyanskiy-Rigollet,
arXiv 2510.22026):

.. math::

    \dot\theta_j = \frac{1}{s_j(t)} P^\perp_{\theta_j} A_j, \qquad \dot r_j = \text{(scheme)}.

======== ============================= ========================== =====================
norm     discrete layer                state velocity             state space
======== ============================= ========================== =====================
post     x <- N(x + Attn(x))           P_x A                      sphere
pre      x <- x + Attn(N(x))           A                          R^d (r carried)
peri     x <- x + N(Attn(N(x)))        A / |A|                    R^d (r carried)
mix      post for t <= tau, pre after  r P_theta A, then A        R^d (r carried)
ngpt     x <- N(x + a_t(N(Attn)-x))    alpha(t) P_x A / |A|       sphere
cod      depth-scaled LN               P_x A / sqrt(t + 1)        sphere
======== ============================= ========================== =====================

(The pre-LN row follows from :math:`s_j = r_j`, :math:`\dot r_j = \langle\theta_j, A_j\rangle`:
:math:`\dot x_j = \dot r_j\theta_j + r_j\dot\theta_j = A_j`; peri-LN likewise.)
In Euclidean geometry there is no normalization: :math:`\dot x_i = A_i(x)` (docs/math.md §1.1, 3.1).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np

from . import _spec
from . import _validation as _v
from .attention import Attention, Layers, MultiHeadAttention, check_batch, check_finite_output
from .geometry import Euclidean, Sphere, as_geometry

__all__ = ["TokenDynamics", "NORMS"]

#: normalization schemes accepted on the sphere (the first is the default)
NORMS = ("post", "pre", "peri", "mix", "ngpt", "cod")
_ON_SPHERE = {"post", "ngpt", "cod"}


class TokenDynamics:
    r"""The vector field moving n tokens: attention, geometry and normalization.

    Parameters
    ----------
    attention : Attention, MultiHeadAttention or Layers
        The interaction (:class:`~transformer_pde.Layers`: depth-dependent, one attention
        per time interval; the geometry, normalization and noise are shared by the layers).
    geometry : {"sphere", "euclidean"}
        Where tokens live. On the sphere attention acts on directions.
    norm : {"post", "pre", "peri", "mix", "ngpt", "cod"} or None
        Normalization scheme (table in the module docstring). ``None`` means ``"post"``
        on the sphere and no normalization in Euclidean space (the only choice there).
    alpha : float or callable, optional
        nGPT step size :math:`\alpha_t > 0` (a constant or a function of t).
    tau : float, optional
        Mix-LN switching time: post-LN for :math:`t \le \tau`, pre-LN after.
    kappa : float, optional
        Noise level :math:`\kappa > 0` of the noisy model (docs/math.md §4.7): each token also
        carries a Brownian motion :math:`\sqrt{2/\kappa}\,P^\perp_{x}\circ dW` and the mean
        field gains the diffusion :math:`\kappa^{-1}\Delta\rho`. None (default): no
        noise. Used by :func:`~transformer_pde.simulate` and
        :func:`~transformer_pde.solve_meanfield` alike; not for norm "pre", "peri" or
        "mix", whose state carries token radii.

    Attributes
    ----------
    state_space : Euclidean or Sphere
        The manifold the state x lives on (what the integrators retract onto).
    """

    def __init__(self, attention, geometry: str = "sphere", norm: str | None = None, *,
                 alpha: float | Callable[[float], float] = 1.0, tau: float = 1.0,
                 kappa: float | None = None):
        if not isinstance(attention, (Attention, MultiHeadAttention, Layers)):
            raise TypeError(
                "attention must be an attention object such as tp.SoftmaxAttention(...), "
                f"got {type(attention).__name__}"
            )
        self.attention = attention
        self.geometry = as_geometry(geometry)
        if isinstance(self.geometry, Euclidean):
            if norm not in (None, "none"):
                raise ValueError(
                    f"norm must be None in Euclidean geometry (no normalization), got {norm!r}; "
                    f"use geometry='sphere' for the schemes {NORMS}"
                )
            self.norm = "none"
        else:
            norm = "post" if norm is None else norm
            if isinstance(norm, str) and norm not in NORMS:
                raise ValueError(f"norm must be one of {NORMS} on the sphere, got {norm!r}")
            self.norm = _v.as_choice(norm, "norm", NORMS)
        if callable(alpha):
            self.alpha = alpha
        else:
            self.alpha = _v.as_positive(alpha, "alpha")
        self.tau = _v.as_real(tau, "tau")
        self.state_space = (
            Sphere() if self.norm in _ON_SPHERE else Euclidean()
        )
        self.kappa = None if kappa is None else _v.as_positive(kappa, "kappa")
        if self.kappa is not None and self.norm in ("pre", "peri", "mix"):
            raise ValueError(
                f"kappa (noise) is supported on the sphere and in Euclidean space, not for "
                f"norm={self.norm!r}, whose state carries token radii; got kappa={self.kappa:g}"
            )

    @property
    def dim(self) -> int | None:
        """Token dimension fixed by the attention matrices (None if any d works)."""
        return self.attention.dim

    @property
    def batch(self) -> int | None:
        """Number of systems B when the attention has per-system parameters, else None.

        A batched model advances batches of states (B, n, d) only; any model advances
        batches of states with its parameters shared by all systems.
        """
        return self.attention.batch

    @property
    def breakpoints(self) -> tuple[float, ...]:
        """Times where the field switches (mix-LN's tau, the boundaries of Layers): steppers land on them."""
        points = set(self.attention.breakpoints) if isinstance(self.attention, Layers) else set()
        if self.norm == "mix":
            points.add(self.tau)
        return tuple(sorted(points))

    @property
    def autonomous(self) -> bool:
        """Whether the velocity does not depend on t."""
        return (self.norm not in ("mix", "cod") and not (self.norm == "ngpt" and callable(self.alpha))
                and not isinstance(self.attention, Layers))

    @property
    def layers(self) -> Layers | None:
        """The :class:`~transformer_pde.Layers` of a depth-dependent model, else None."""
        return self.attention if isinstance(self.attention, Layers) else None

    def _layer(self, k: int) -> TokenDynamics:
        """The model of layer k alone (the model itself when it has no layers)."""
        if self.layers is None:
            return self
        one = copy.copy(self)
        one.attention = self.attention.attentions[k]
        return one

    def _layer_at(self, t: float) -> TokenDynamics:
        """The model of the layer acting at t (ValueError outside the layers' times)."""
        return self if self.layers is None else self._layer(self.layers.index(t))

    def _check_span(self, t0: float, t1: float, name: str = "t_span") -> None:
        """Raise ValueError if a depth-dependent model is not defined on all of [t0, t1]."""
        if self.layers is not None:
            self.layers.check_span(t0, t1, name)

    def __eq__(self, other) -> bool:
        """Same attention, geometry, normalization, alpha, tau and kappa."""
        if not isinstance(other, TokenDynamics):
            return NotImplemented
        return _spec.same_parameters(self, other)

    __hash__ = None  # the attention's parameters are mutable arrays

    def __repr__(self) -> str:
        noise = "" if self.kappa is None else f", kappa={self.kappa:g}"
        return (f"TokenDynamics({self.attention!r}, geometry={self.geometry.name!r}, "
                f"norm={self.norm!r}{noise})")

    # -- public ----------------------------------------------------------------------
    def check_state(self, x, name: str = "x") -> np.ndarray:
        """Validate a state (n, d) or a batch of states (B, n, d).

        Finite, of the right dimension, on the sphere where required, and B matching a
        batched model.
        """
        x = _v.as_states(x, name, d=self.dim)
        check_batch(self.batch, x, name, repr(self))
        self.state_space.check(x, name)
        if self.norm in ("pre", "peri", "mix"):
            norms = np.linalg.norm(x, axis=-1)
            if np.any(norms == 0.0):
                where = np.unravel_index(int(np.argmin(norms)), norms.shape)
                token = f"token {where[-1]}" + (f" of system {where[0]}" if norms.ndim > 1 else "")
                raise ValueError(
                    f"{name} must have nonzero tokens for norm={self.norm!r} (x = r theta), "
                    f"but {token} is zero"
                )
        return x

    def velocity(self, x, t: float = 0.0, weights=None) -> np.ndarray:
        """Velocity of the state x at time t, shape (n, d) -> (n, d), Numba kernels.

        Parameters
        ----------
        x : array_like, shape (n, d) or (B, n, d)
            State (on the unit sphere for norm in {"post", "ngpt", "cod"}), or a batch of
            B states (system b moved by model b of a batched model).
        t : float
            Time (used by "mix", "cod", a time-dependent nGPT ``alpha`` and Layers).
        weights : array_like, shape (n,), optional
            Token weights of a weighted empirical measure (normalised to sum 1); uniform by
            default; shared by the systems of a batch.
        """
        x = self.check_state(x)
        t = _v.as_real(t, "t")
        one = self._layer_at(t)  # the model itself, or that of the layer acting at t
        v = one._rhs(x, t, one._attend(x), _v.as_weights(weights, x.shape[-2]))
        return check_finite_output(v, repr(self))

    def velocity_reference(self, x, t: float = 0.0, weights=None) -> np.ndarray:
        """As :meth:`velocity`, with the dense NumPy attention reference (system by system)."""
        x = self.check_state(x)
        t = _v.as_real(t, "t")
        if self.layers is not None:
            return self._layer_at(t).velocity_reference(x, t, weights)
        if x.ndim == 3:
            return np.stack([self._system(b)._rhs(x[b], t, self.attention._system(b).velocity_reference,
                                                  weights) for b in range(len(x))])
        return self._rhs(x, t, self.attention.velocity_reference, weights)

    def _check_single(self, who: str) -> None:
        """Raise ``ValueError`` for a batched model where only one model makes sense (``who``)."""
        if self.batch is not None:
            raise ValueError(
                f"{who}: dyn must be a single model, but it is a batch of {self.batch} models (attention "
                "parameters with a leading batch axis); build one model per system, with one "
                "beta, Q, K, V each"
            )

    def _system(self, b: int) -> TokenDynamics:
        """The model of system b of a batched model (the model itself when not batched)."""
        if self.batch is None:
            return self
        one = copy.copy(self)
        one.attention = self.attention._system(b)
        return one

    def _attend(self, x: np.ndarray):
        """The attention kernel for one state (n, d) or a batch (B, n, d), on trusted inputs.

        For a depth-dependent model, ask the model of one layer (:meth:`_layer`).
        """
        if self.layers is not None:
            raise TypeError("a Layers model has one kernel per layer: use dyn._layer(k)._attend(x)")
        return self.attention._velocity_batch if x.ndim == 3 else self.attention._velocity

    # -- private ---------------------------------------------------------------------
    def _rhs(self, x: np.ndarray, t: float, attend, weights=None, piece: int | None = None
             ) -> np.ndarray:
        """The velocity, trusting x and weights (what the integrators call).

        ``piece`` (0 or 1 for mix-LN) selects the side of the switch at ``tau``
        explicitly, so a step that starts at tau can use the pre-LN branch throughout;
        by default the side follows t (post-LN for t <= tau).
        """
        if weights is None:
            n = x.shape[-2]
            weights = np.full(n, 1.0 / n)
        norm = self.norm
        if norm == "none":
            return attend(x, weights)
        if norm in _ON_SPHERE:
            theta, r = x, None
        else:
            r = np.linalg.norm(x, axis=-1, keepdims=True)
            theta = x / r
        a = attend(theta, weights)
        if norm == "post":
            return self.geometry._project_fast(theta, a)
        if norm == "pre":
            return a
        if norm == "mix":
            pre_phase = t > self.tau if piece is None else piece >= 1
            return a if pre_phase else r * self.geometry._project_fast(theta, a)
        if norm == "cod":
            return self.geometry._project_fast(theta, a) / np.sqrt(t + 1.0)
        # peri and ngpt divide by |A_j|
        size = np.linalg.norm(a, axis=-1, keepdims=True)
        if np.any(size == 0.0):
            where = np.unravel_index(int(np.argmin(size)), size.shape)
            token = f"token {where[-2]}" + (f" of system {where[0]}" if size.ndim > 2 else "")
            raise FloatingPointError(
                f"norm={norm!r} divides by |A_j|, but the attention output of {token} is zero "
                f"at t={t:g}"
            )
        if norm == "peri":
            return a / size
        alpha = _v.as_positive(self.alpha(t), f"alpha({t:g})") if callable(self.alpha) else self.alpha
        return alpha * self.geometry._project_fast(theta, a) / size
