r"""Spherical-harmonic fast path of the mean-field velocity on the 2-sphere.

For weights :math:`w(\langle x, y\rangle)` (softmax :math:`e^{bc}`, USA
:math:`e^{bc}`, sigmoid :math:`\sigma(bc + \text{bias})`) and point masses :math:`a_j` at
the cell centres :math:`y_j`, write :math:`w(t) = \sum_l w_l \frac{2l+1}{4\pi} P_l(t)` with
the Funk-Hecke coefficients :math:`w_l = 2\pi\int_{-1}^1 w(t)P_l(t)\,dt`
(:math:`4\pi i_l(b)` for :math:`e^{bt}`). By the addition theorem

.. math::

    Z(x) = \sum_j a_j\,w(\langle x, y_j\rangle) = \sum_{l,m} w_l\,A_{lm}\,Y_{lm}(x),
    \qquad A_{lm} = \sum_j a_j\,\overline{Y_{lm}(y_j)},

and, with g an antiderivative of w (:math:`g_l = (w_{l-1} - w_{l+1})/(2l+1)` for
:math:`l \ge 1`; :math:`g_l = w_l/b` for the exponential),

.. math::

    P^\perp_x \sum_j a_j\,w(\langle x, y_j\rangle)\,y_j = \nabla_{\mathbb S} G(x), \qquad
    G(x) = \sum_{l,m} g_l\,A_{lm}\,Y_{lm}(x).

So one adjoint synthesis at the N centres gives :math:`A_{lm}`, and syntheses of
:math:`Z` and of :math:`\nabla_{\mathbb S}G` (spin 1) at the F face midpoints give the
face velocity :math:`u_f = v\,\langle\nabla G, n_f\rangle / Z` (softmax) or
:math:`v\,\langle\nabla G, n_f\rangle` (USA, sigmoid), the same sums as the quadrature
path up to the truncation of the series (the degree L is the smallest with a negligible
tail, about :math:`6 + 9\sqrt{b}` for the exponential) and the accuracy of ducc0's
non-uniform transforms (about 1e-14 relative to the largest value). Softmax divides by
Z: at large beta, far from all mass, Z can fall below that accuracy; those faces are
returned marked, for quadrature to recompute (the rule of
:mod:`~transformer_pde.meanfield.field`). Measured against the direct sums (random and one-to-five-cell
densities, SphereGrid(12..64), beta = 1..1000), the error of Z is at most
:math:`1.3\times10^{3}\varepsilon \approx 2.9\times10^{-13}` (about ``SHT_EPSILON``) times the
largest value of Z over the faces and the centres (not over the faces alone: at large beta
on a coarse grid Z peaks at the centres, far above its face values); relative to the total
mass it is smaller at large beta, which is why that scale is used. Series longer
than ``MAX_DEGREE`` (sigmoid at beta of several hundred) fall back to the exact sums.
The cost, O(L^2 log L + N + F), is linear in the grid size at fixed beta (measured
~N^1 from 20k to 80k cells, vs N^2 for the quadrature: 200x faster at 20k cells;
``benchmarks/bench_meanfield_sphere.py``).
"""
from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
from scipy.special import ive

from .._fastsum import _gauss_legendre, _legendre_table  # Legendre tools shared with token fast summation
from .field import HANDOVER_RELATIVE_ERROR, RotationInvariant, kernel_weights

__all__ = ["funk_hecke_coefficients", "sht_face_velocity", "SHT_EPSILON", "TAIL_TOL", "MAX_DEGREE"]

#: accuracy asked of ducc0's non-uniform spherical harmonic transforms (its floor is ~2e-13)
SHT_EPSILON = 3e-13
#: the series is cut where its tail is below this fraction of the kernel's largest value
TAIL_TOL = 1e-16
#: above this degree the fast path computes the exact sums instead (memory ~ L^2)
MAX_DEGREE = 1500


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)

# ---------------------------------------------------------------------------------------
# Funk-Hecke coefficients
# ---------------------------------------------------------------------------------------
def _exp_coefficients(b, lmax):
    """Funk-Hecke coefficients of exp(b t - |b|), l = 0..lmax."""
    w = np.zeros(lmax + 1)
    if b == 0.0:
        w[0] = 4.0 * np.pi
        return w
    l = np.arange(lmax + 1)
    ab = abs(b)
    # e^{-|b|} i_l(|b|) = sqrt(pi / (2|b|)) ive(l + 1/2, |b|); i_l(-b) = (-1)^l i_l(b)
    w[:] = 4.0 * np.pi * np.sqrt(np.pi / (2.0 * ab)) * ive(l + 0.5, ab)
    if b < 0.0:
        w[1::2] *= -1.0
    return w


def _sigmoid_coefficients(b, bias, lmax):
    """Funk-Hecke coefficients of sigmoid(b t + bias), l = 0..lmax (Gauss-Legendre).

    The ones below the rounding level of the quadrature sums are set to zero.
    """
    nq = lmax + 64  # exact for w P_l when w's Legendre series is negligible past degree lmax + 127
    t, wq = _gauss_legendre(nq)
    vals, _ = kernel_weights(RotationInvariant("sigmoid", b, 1.0, bias), t)
    w = 2.0 * np.pi * (_legendre_table(lmax, t) @ (wq * vals))
    noise = 4.0 * np.sqrt(nq) * np.finfo(float).eps * 2.0 * np.pi * np.sum(wq * np.abs(vals))
    w[np.abs(w) < noise] = 0.0
    return w


def _tail_degree(w, g, scale):
    """Smallest degree L at which the series of w and of grad g can be cut.

    Beyond degree L the series of w (values) and of grad g (derivatives) are below
    TAIL_TOL * scale; None if lmax is not enough.
    """
    l = np.arange(len(w))
    tz = (2 * l + 1) / (4.0 * np.pi) * np.abs(w)
    tg = (2 * l + 1) / (4.0 * np.pi) * np.abs(g) * 0.5 * l * (l + 1)
    # tails beyond l: sum over l' > l
    tail_z = np.cumsum(tz[::-1])[::-1]
    tail_g = np.cumsum(tg[::-1])[::-1]
    tail = np.maximum(np.append(tail_z[1:], 0.0), np.append(tail_g[1:], 0.0))
    ok = np.nonzero(tail <= TAIL_TOL * scale)[0]
    # the last few coefficients must themselves be tiny, else lmax is too small
    if len(ok) == 0 or ok[0] > len(w) - 8:
        return None
    return max(int(ok[0]), 1)


@lru_cache(maxsize=64)
def _coefficients(kind, b, bias):
    lmax = 32
    while True:
        if kind == "sigmoid":
            w = _sigmoid_coefficients(b, bias, lmax + 1)
            g = np.zeros(lmax + 1)
            l = np.arange(1, lmax + 1)
            g[1:] = (w[l - 1] - w[l + 1]) / (2 * l + 1)
            w = w[: lmax + 1]
            ends, _ = kernel_weights(RotationInvariant("sigmoid", b, 1.0, bias), np.array([-1.0, 1.0]))
            scale = float(ends.max())
        else:
            # below |b| = 1e-150 the kernel e^{bt - |b|} is that of b = 0 to 1 + O(|b|), while
            # sqrt(pi / 2|b|) and g = w / b overflow near the smallest floats (hypothesis
            # found b = 2.2e-309 giving NaN coefficients): take the limit b = 0 there
            if abs(b) < 1e-150:
                b = 0.0
            w = _exp_coefficients(b, lmax)
            g = w / b if b != 0.0 else np.zeros(lmax + 1)
            if b == 0.0:
                g[1] = w[0] / 3.0  # g(t) = t
            scale = 1.0
        L = _tail_degree(w, g, scale)
        if L is not None:
            return w[: L + 1].copy(), g[: L + 1].copy()
        if lmax > MAX_DEGREE:
            return None
        lmax *= 2


def funk_hecke_coefficients(ri: RotationInvariant):
    r"""Funk-Hecke coefficients of a rotation-invariant head's weights, truncated.

    Returns ``(w, g)``, each of shape (L + 1,): :math:`w_l = 2\pi\int_{-1}^1 w(t)P_l(t)dt`
    of the weights as :func:`~transformer_pde.meanfield.field.kernel_weights` gives them
    (the exponential shifted by :math:`e^{-|b|}`), and :math:`g_l` of an antiderivative
    g of w. L is the smallest degree whose tails (of w, and of the derivatives of g) are
    below ``TAIL_TOL`` times the largest weight. None if L would exceed ``MAX_DEGREE``.
    """
    kind = "sigmoid" if ri.kind == "sigmoid" else "exp"
    return _coefficients(kind, float(ri.b), float(ri.bias) if kind == "sigmoid" else 0.0)


@lru_cache(maxsize=16)
def _degree_index(lmax):
    """The degree l of each entry of ducc0's a_lm array (m-major, l = m..lmax)."""
    return np.concatenate([np.arange(m, lmax + 1) for m in range(lmax + 1)])


def _exact_head(ri: RotationInvariant, d: int):
    """An attention object computing the same field by quadrature (the fallback)."""
    from ..attention import SigmoidAttention, SoftmaxAttention, UnnormalizedAttention

    v = ri.v * np.eye(d)
    if ri.kind == "softmax":
        return SoftmaxAttention(beta=ri.b, V=v)
    if ri.kind == "exp":
        return UnnormalizedAttention(beta=ri.b, V=v)
    return SigmoidAttention(beta=ri.b, V=v, bias=ri.bias)


def sht_face_velocity(ri: RotationInvariant, a, centers_loc, faces_loc, n_theta, n_phi):
    r"""Normal face velocities by spherical harmonics (module docstring), and the faces to hand over.

    ``centers_loc`` (N, 2) and ``faces_loc`` (F, 2) are (colatitude, longitude);
    ``n_theta``, ``n_phi`` (F,) the components of the face normals on
    :math:`e_\theta, e_\phi`. Returns ``(u, bad)``, or None when the series would be too
    long: bad (F,) marks the softmax faces whose Z is below :math:`\tau\max Z` (the largest
    Z at the faces and the centres; :math:`\tau = E/r`, E = 2 ``SHT_EPSILON`` twice the
    measured error, r = ``HANDOVER_RELATIVE_ERROR``) or not finite, whose u is 0 here, for
    quadrature to recompute; None for the other kinds, which have no quotient.
    """
    coef = funk_hecke_coefficients(ri)
    if coef is None:
        return None
    w, g = coef
    lmax = len(w) - 1
    ls = _degree_index(lmax)
    nt = _threads()
    # one thread for the adjoint transform: its threaded spreading sums in a varying order
    # (results differing in the last bit from run to run); the syntheses are deterministic
    alm = sht_analysis(a, centers_loc, lmax, 1)
    grad = _synth(alm * g[ls], faces_loc, lmax, nt, spin=1)
    num = ri.v * (grad[0] * n_theta + grad[1] * n_phi)
    if ri.kind == "softmax":
        z = _synth(alm * w[ls], faces_loc, lmax, nt, spin=0)[0]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            u = num / z
        tau = 2.0 * SHT_EPSILON / HANDOVER_RELATIVE_ERROR
        # Z at the centres too, the scale of the transform's error (a separate synthesis:
        # one at faces + centres together would change the face values' rounding)
        zc = _synth(alm * w[ls], centers_loc, lmax, nt, spin=0)[0]
        bad = ~(z >= tau * max(np.max(z), np.max(zc))) | ~np.isfinite(u)
        return np.where(bad, 0.0, u), bad
    if ri.kind == "exp":
        with np.errstate(over="ignore"):
            num = num * np.exp(abs(ri.b))
    return num, None


def sht_analysis(a, loc, lmax, nthreads=1):
    r"""Coefficients :math:`A_{lm} = \sum_j a_j \overline{Y_{lm}(y_j)}` of point masses a (N,).

    The masses sit at ``loc`` (N, 2) (colatitude, longitude); the coefficients are in ducc0's
    layout, shape (1, n_alm).
    """
    import ducc0

    return ducc0.sht.adjoint_synthesis_general(
        map=np.ascontiguousarray(a, dtype=np.float64)[None, :], spin=0, lmax=lmax, loc=loc,
        epsilon=SHT_EPSILON, nthreads=nthreads)


def _synth(alm, loc, lmax, nthreads, spin):
    import ducc0

    if spin == 0:
        return ducc0.sht.synthesis_general(alm=alm, spin=0, lmax=lmax, loc=loc,
                                           epsilon=SHT_EPSILON, nthreads=nthreads)
    # DERIV1: the alm of G in, (d/dtheta G, (1/sin theta) d/dphi G) out
    return ducc0.sht.synthesis_general(alm=alm, spin=1, lmax=lmax, loc=loc, epsilon=SHT_EPSILON,
                                       nthreads=nthreads, mode="DERIV1")
