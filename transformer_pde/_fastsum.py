r"""Fast summation of rotation-invariant attention on the circle and on the 2-sphere (private).

For tokens on :math:`\mathbb S^{d-1}` (d = 2, 3) and a head whose logits are
:math:`b\langle x, y\rangle` (Q = qI, K = kI, so :math:`b = \beta qk`) and whose values are
:math:`vy` (V = vI), the two sums every variant needs,

.. math::

    Z_i = \sum_j a_j\,w(\langle x_i, y_j\rangle), \qquad
    N_i = \sum_j a_j\,w(\langle x_i, y_j\rangle)\,y_j,

are expanded in the eigenfunctions of the kernel (docs/math.md §9.12): output
:math:`vN_i/Z_i` (softmax), :math:`vN_i` (USA :math:`w = e^{bt}`, sigmoid
:math:`w = \sigma(bt + \text{bias})`).

- **Circle.** :math:`w(\cos\phi) = \sum_m c_m e^{im\phi}` (:math:`c_m = I_m(b)` for the
  exponential, times :math:`e^{-|b|}` here; an FFT of samples for the sigmoid). With
  :math:`F_m = \sum_j a_j e^{-im\theta_j}` (one type-1 NUFFT of the sources),
  :math:`Z_i = \sum_m c_mF_me^{im\theta_i}` and, in complex form,
  :math:`N_i = \sum_m c_mF_{m-1}e^{im\theta_i}` (one type-2 NUFFT of two coefficient
  sets at the targets), finufft (Barnett, Magland, af Klinteberg 2019).
- **2-sphere.** :math:`w(t) = \sum_l w_l\frac{2l+1}{4\pi}P_l(t)`; with
  :math:`A_{lm} = \sum_j a_j\overline{Y_{lm}(y_j)}` (one adjoint transform of the sources),
  Z has coefficients :math:`w_lA_{lm}`, the radial part :math:`\langle x, N\rangle` those of
  :math:`t\,w(t)` (:math:`h_l = (l w_{l-1} + (l+1)w_{l+1})/(2l+1)`), and the tangent part is
  the surface gradient of the antiderivative series :math:`g_l = (w_{l-1} - w_{l+1})/(2l+1)`
  (three syntheses at the targets, ducc0's general-position transforms).

Error control: the transforms compute Z and N with an absolute error of about
:math:`E\,S` (S the scale of their values), while :math:`Z_i` itself can be far
smaller. The estimated relative error of target i is :math:`2ES/Z_i` (softmax; relative to
|v|, the bound of the output) or :math:`ES/Z_i` (USA and sigmoid; relative to
:math:`|v|Z_i`, the sum of the magnitudes of the terms); a target whose estimate exceeds
``tol`` (or whose value is not finite) is *handed over* to the exact O(n) sum.

finufft is imported here only, and only when a circle is summed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.special import expit, ive, roots_legendre, spherical_in

from . import _validation as _v

__all__ = [
    "SummationReport",
    "SUMMATIONS",
    "check_summation",
    "summed_field",
    "NUFFT_EPSILON",
    "NUFFT_ERROR",
    "NUFFT_MODES",
    "SHT_EPSILON",
    "SHT_ERROR",
    "SHT_DEGREE",
    "MAX_MODES",
    "MAX_DEGREE",
    "CROSSOVER_PAIRS",
    "EXACT_PAIR_S",
    "FAST_FIXED_S",
    "FAST_TOKEN_S",
    "FAST_DEGREE2_S",
]

#: the values of ``summation=``
SUMMATIONS = ("auto", "exact", "fast")
#: accuracy asked of finufft (its float64 floor is about 1e-15)
NUFFT_EPSILON = 1e-14
#: absolute error of the circle's Z and N in units of S = sum_j a_j * sum_m |c_m|, for
#: up to NUFFT_MODES modes; it grows with the number of modes beyond (measured over uniform,
#: one-arc, two-point and cluster-plus-outlier tokens, n = 300, 3000, beta = 0.5..1000:
#: at most 1.2e-14 up to 159 modes, 6.9e-14 at 491 modes; taken: 4e-14 (1 + modes / 64))
NUFFT_ERROR = 4.0 * NUFFT_EPSILON
NUFFT_MODES = 64
#: accuracy asked of ducc0's general-position spherical-harmonic transforms (floor 2e-13)
SHT_EPSILON = 3e-13
#: absolute error of the sphere's Z and N in units of S = max Z over targets and sources,
#: for series up to degree SHT_DEGREE (measured over uniform, cap and cap-plus-outlier
#: tokens, n = 300, 3000, exp beta = 0.5..1000, sigmoid beta = 0.5..100: at most 2.6e-13 up
#: to degree 144, 3.1e-13 at 264 (exp, beta = 1000), 5.7e-12 at 790 (sigmoid, beta = 100),
#: growing like L^1.5 with the l1 norm of the series). Taken: 6e-13 times that l1 norm
#: over max w times max(1, (L / SHT_DEGREE)^2), at least 7 times each measured error.
SHT_ERROR = 6e-13
SHT_DEGREE = 128
#: longest expansion "auto" accepts: Fourier modes on the circle (2M + 1)
MAX_MODES = 1 << 16
#: highest degree on the sphere (memory and time ~ L^2)
MAX_DEGREE = 1500
#: cost model of "auto" (seconds on the 2-core development machine, shared with other jobs;
#: benchmarks/bench_fastsum.py, medians of interleaved repeats): the exact kernel costs
#: EXACT_PAIR_S per pair (measured 7e-9..9e-9 at n = 1024..4096, d = 2, 3); fast summation a
#: fixed FAST_FIXED_S plus a cost per token (circle 3e-7: 0.27 s at n = 1e6; sphere 7e-7:
#: 72 ms at n = 1e5) plus, on the sphere, 1e-6 L^2 (70 ms at L = 264, 11 ms at L = 85).
#: Measured speed-ups fast/exact, SA: circle beta = 4: 0.2 at n = 256, 0.6 at 512, 4.8 at
#: 1024; beta = 16: 0.8 at 512, 3.5 at 1024; sphere beta = 4: 0.7 at 512, 1.7 at 1024, 7.9
#: at 2048; beta = 16: 0.6, 1.3, 3.9; beta = 1000: 0.2 at 1024, 2.6 at 4096, 31 at 16384.
EXACT_PAIR_S = 8e-9
FAST_FIXED_S = 1.5e-3
FAST_TOKEN_S = {2: 3e-7, 3: 7e-7}
FAST_DEGREE2_S = 1e-6
#: below this many pairs the exact kernel is always cheaper (FAST_FIXED_S / EXACT_PAIR_S):
#: "auto" decides without looking further, so small systems pay nothing for the choice
CROSSOVER_PAIRS = int(FAST_FIXED_S / EXACT_PAIR_S)
#: the fast path evaluates the kernel at x / |x|: a token's norm may differ from 1 by
#: delta with (1 + 4 |b|) delta <= tol * this (logits move by 2|b|delta, values by delta)
_UNIT_SHARE = 0.1


@dataclass(frozen=True)
class SummationReport:
    """How the latest attention field was summed (``Attention.last_summation``).

    Attributes
    ----------
    method : str
        ``"exact"`` (the O(mn) kernel) or ``"fast"`` (expansion and transforms).
    length : int
        Expansion length: Fourier modes 2M + 1 on the circle, degree L on the sphere; 0 for exact.
    error : float or None
        Estimated largest relative error over the targets kept from the transform (softmax:
        relative to |v|; USA, sigmoid: relative to :math:`|v|\\sum_j a_j w_{ij}`); None for exact.
    handed_over : int
        Targets recomputed by the exact kernel because their estimate exceeded ``tol``.
    reason : str
        Why the exact kernel was used ("" for fast).
    """

    method: str
    length: int = 0
    error: float | None = None
    handed_over: int = 0
    reason: str = ""


_SMALL = SummationReport("exact", reason="fewer pairs than CROSSOVER_PAIRS: the exact kernel is cheaper")
_EXACT = SummationReport("exact", reason="summation='exact'")


def check_summation(summation, tol) -> tuple[str, float]:
    """Validate the ``summation`` and ``tol`` keywords of an attention model."""
    _v.as_choice(summation, "summation", SUMMATIONS)
    tol = _v.as_real(tol, "tol")
    if not 0.0 < tol < 1.0:
        raise ValueError(f"tol must be a relative error in (0, 1), got {tol!r}")
    return summation, tol


# ---------------------------------------------------------------------------------------
# eligibility
# ---------------------------------------------------------------------------------------
def _scalar(m, d) -> float | None:
    """q if m is None (q = 1) or m == q I_d, else None."""
    if m is None:
        return 1.0
    if m.shape != (d, d):
        return None
    q = float(m[0, 0])
    return q if np.array_equal(m, q * np.eye(d)) else None


def _kind(head) -> str | None:
    from .attention import SigmoidAttention, SoftmaxAttention, UnnormalizedAttention

    return {SoftmaxAttention: "softmax", UnnormalizedAttention: "exp",
            SigmoidAttention: "sigmoid"}.get(type(head))


def _model(head, d, causal) -> tuple[tuple | None, str]:
    """((kind, b, v, bias), "") for an eligible head on S^{d-1}, else (None, why not)."""
    kind = _kind(head)
    if kind is None:
        return None, (f"{type(head).__name__} has no fast summation (SoftmaxAttention, "
                      "UnnormalizedAttention and SigmoidAttention have)")
    if any(np.ndim(p) for p in (head.beta, getattr(head, "bias", 0.0))):
        return None, "batched parameters (an array of beta or bias) are summed exactly"
    if causal or head.causal:
        return None, "causal (masked) attention depends on the order of the tokens"
    if d not in (2, 3):
        return None, f"tokens of dimension d={d}: fast summation is on S^1 (d=2) and S^2 (d=3)"
    q, k, v = (_scalar(m, d) for m in (head.Q, head.K, head.V))
    if q is None or k is None or v is None:
        return None, "the model is not rotation-invariant: Q, K and V must be multiples of the identity"
    return (kind, head.beta * q * k, v, getattr(head, "bias", 0.0)), ""


def _unit_defect(x) -> float:
    return float(np.max(np.abs(np.einsum("ij,ij->i", x, x) - 1.0))) * 0.5 if len(x) else 0.0


# ---------------------------------------------------------------------------------------
# expansions
# ---------------------------------------------------------------------------------------
def _truncate(mag, eps):
    """Smallest M with sum_{m > M} mag[m] <= eps * sum(mag); None if mag is too short."""
    tail = np.append(np.cumsum(mag[::-1])[::-1][1:], 0.0)
    ok = np.nonzero(tail <= eps * mag.sum())[0]
    if len(ok) == 0 or ok[0] > len(mag) - 8:
        return None
    return int(ok[0])


@lru_cache(maxsize=64)
def _fourier(kind, b, bias):
    """Fourier coefficients c_m, m = -M..M, of w(cos phi) (exp shifted by e^{-|b|}), or None.

    Cut where the tail of sum |c_m| is below NUFFT_EPSILON of the whole.
    """
    if kind == "sigmoid":
        p = 64
        while p <= 4 * MAX_MODES:
            phi = 2.0 * np.pi * np.arange(p) / p
            c = np.fft.rfft(expit(b * np.cos(phi) + bias)).real / p  # even: c_m real
            mag = np.abs(c[: p // 4])  # aliasing from modes >= 3p/4 is below the cut
            M = _truncate(np.concatenate([mag[:1], 2.0 * mag[1:]]), NUFFT_EPSILON)
            if M is not None:
                half = c[: M + 1]
                break
            p *= 2
        else:
            return None
    else:
        ab = abs(b)
        mmax = int(ab + 12.0 * np.sqrt(ab) + 64)
        if mmax > MAX_MODES:
            return None
        half = ive(np.arange(mmax + 1), ab)
        if b < 0:
            half[1::2] *= -1.0
        M = _truncate(np.concatenate([np.abs(half[:1]), 2.0 * np.abs(half[1:])]), NUFFT_EPSILON)
        half = half[: M + 1]
    coef = np.concatenate([half[:0:-1], half])
    coef.setflags(write=False)
    return coef


def _legendre_table(lmax, t):
    """P_0..P_lmax at the points t, shape (lmax + 1, len(t)) (three-term recurrence)."""
    p = np.empty((lmax + 1, len(t)))
    p[0] = 1.0
    if lmax >= 1:
        p[1] = t
    for l in range(1, lmax):
        p[l + 1] = ((2 * l + 1) * t * p[l] - l * p[l - 1]) / (l + 1)
    return p


def _gauss_legendre(n):
    """Gauss-Legendre nodes and weights to round-off: scipy's nodes polished by Newton steps on
    P_n, the weights recomputed from P_n' (scipy's weights err by ~ n eps, which the
    gradient series of a slowly decaying kernel amplifies like L^2)."""
    t = roots_legendre(n)[0]

    def p_dp(t):
        p0, p1 = np.ones_like(t), t.copy()
        for l in range(1, n):
            p0, p1 = p1, ((2 * l + 1) * t * p1 - l * p0) / (l + 1)
        return p1, n * (t * p1 - p0) / (t * t - 1.0)

    for _ in range(2):
        p, dp = p_dp(t)
        t = t - p / dp
    return t, 2.0 / ((1.0 - t * t) * p_dp(t)[1] ** 2)


@lru_cache(maxsize=64)
def _legendre(kind, b, bias):
    """Funk-Hecke series (w, g, h, ratio) of w(t), an antiderivative, and t w(t); or None.

    w_l = 2 pi int w P_l, degrees 0..L (exp shifted by e^{-|b|}); cut where the tails of all
    three (values, gradient bound l(l+1)/2) are below SHT_EPSILON / 10 of max w. ``ratio``:
    the l1 norm of the series (sum of (2l+1)/(4 pi) times the largest of the three) over
    max w, 1 for the exponential, larger for the sigmoid's slowly decaying series.
    """
    lmax = 32
    while lmax <= 2 * MAX_DEGREE:
        if kind == "sigmoid":
            nq = lmax + 64
            t, wq = _gauss_legendre(nq)
            vals = expit(b * t + bias)
            w = 2.0 * np.pi * (_legendre_table(lmax + 1, t) @ (wq * vals))
            # coefficients below the rounding of the quadrature sums are noise: zero them
            w[np.abs(w) < 4.0 * np.sqrt(nq) * np.finfo(float).eps * 2.0 * np.pi * np.sum(wq * vals)] = 0.0
            scale = float(expit(abs(b) + bias))
        else:
            ab = abs(b)
            l = np.arange(lmax + 2)
            w = np.zeros(lmax + 2)
            if ab < 1e-150:  # i_0 = 1, i_l(b) < b^l: the rest is far below round-off
                w[0] = 4.0 * np.pi  # (scipy's spherical_in gives NaN at subnormal b)
            elif ab < 1.0:  # i_l directly (the ive form below overflows in sqrt(1/|b|) as b -> 0)
                w[:] = 4.0 * np.pi * np.exp(-ab) * spherical_in(l, ab)
            else:  # e^{-|b|} i_l(|b|) = sqrt(pi / (2|b|)) ive(l + 1/2, |b|)
                w[:] = 4.0 * np.pi * np.sqrt(np.pi / (2.0 * ab)) * ive(l + 0.5, ab)
            if b < 0:
                w[1::2] *= -1.0
            scale = 1.0
        l = np.arange(lmax + 1)
        g = np.zeros(lmax + 1)
        g[1:] = (w[l[1:] - 1] - w[l[1:] + 1]) / (2 * l[1:] + 1)
        h = (l * np.append(0.0, w[:lmax]) + (l + 1) * w[1: lmax + 2]) / (2 * l + 1)
        w = w[: lmax + 1]
        norm = (2 * l + 1) / (4.0 * np.pi)
        mag = norm * np.maximum(np.maximum(np.abs(w), np.abs(h)), np.abs(g) * 0.5 * l * (l + 1))
        tail = np.append(np.cumsum(mag[::-1])[::-1][1:], 0.0)
        ok = np.nonzero(tail <= 0.1 * SHT_EPSILON * scale)[0]
        if len(ok) and ok[0] <= lmax - 8:
            L = max(int(ok[0]), 1)
            out = tuple(a[: L + 1].copy() for a in (w, g, h))
            for a in out:
                a.setflags(write=False)
            return out + (float(np.sum(mag[: L + 1])) / scale,)
        lmax *= 2
    return None


def _length(kind, b, bias, d) -> int | None:
    if d == 2:
        c = _fourier(kind, float(b), float(bias))
        return None if c is None else len(c)
    s = _legendre(kind, float(b), float(bias))
    return None if s is None else len(s[0]) - 1


def _sht_error(kind, b, bias) -> float:
    """Absolute error of the sphere's sums in units of max Z: SHT_ERROR, grown with L and the series."""
    w, _, _, ratio = _legendre(kind, float(b), float(bias))
    return SHT_ERROR * ratio * max(1.0, ((len(w) - 1) / SHT_DEGREE) ** 2)


# ---------------------------------------------------------------------------------------
# the transforms
# ---------------------------------------------------------------------------------------
def _threads() -> int:
    from . import _threads as th

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, th.get_num_threads()))


def _circle_sums(kind, b, bias, targets, sources, weights, same):
    """(Z (m,), N (m, 2), S, length) on the circle by two NUFFTs."""
    import finufft

    coef = _fourier(kind, b, bias)
    M = (len(coef) - 1) // 2
    ths = np.arctan2(sources[:, 1], sources[:, 0])
    tht = ths if same else np.arctan2(targets[:, 1], targets[:, 0])
    # one thread: threaded spreading adds in a varying order (last-bit differences between
    # runs), and finufft's OpenMP threads cost ~80 ms per call beside a busy process while
    # gaining at most 1.3x at n = 1e6 on 2 cores (measured)
    F = finufft.nufft1d1(ths, weights.astype(np.complex128), n_modes=2 * M + 3,
                         eps=NUFFT_EPSILON, isign=-1, nthreads=1)
    fk = np.stack([coef * F[1:-1], coef * F[:-2]])  # modes -M..M of Z and of N (F_{m-1})
    out = finufft.nufft1d2(tht, fk, eps=NUFFT_EPSILON, isign=1, nthreads=1)
    z = out[0].real
    n = np.stack([out[1].real, out[1].imag], axis=1)
    scale = float(np.sum(np.abs(weights))) * float(np.sum(np.abs(coef)))
    return z, n, NUFFT_ERROR * (1.0 + len(coef) / NUFFT_MODES) * scale, len(coef)


def _loc(x):
    colat = np.arctan2(np.hypot(x[:, 0], x[:, 1]), x[:, 2])
    lon = np.arctan2(x[:, 1], x[:, 0])
    lon = np.where(lon < 0.0, lon + 2.0 * np.pi, lon)
    return np.ascontiguousarray(np.stack([colat, lon], axis=1)), colat, lon


@lru_cache(maxsize=16)
def _degree_index(lmax):
    return np.concatenate([np.arange(m, lmax + 1) for m in range(lmax + 1)])


def _sphere_sums(kind, b, bias, targets, sources, weights, same):
    """(Z (m,), N (m, 3), S, L) on the 2-sphere: one adjoint transform, three syntheses."""
    import ducc0

    w, g, h, _ = _legendre(kind, b, bias)
    lmax = len(w) - 1
    ls = _degree_index(lmax)
    nt = _threads()
    src, colat, lon = _loc(sources)
    if not same:
        tgt, colat, lon = _loc(targets)
    else:
        tgt = src
    # one thread for the adjoint: its threaded spreading sums in a varying order
    alm = ducc0.sht.adjoint_synthesis_general(
        map=np.ascontiguousarray(weights, dtype=np.float64)[None, :], spin=0, lmax=lmax,
        loc=src, epsilon=SHT_EPSILON, nthreads=1)

    def synth(coef, loc, spin=0):
        kw = dict(mode="DERIV1") if spin else {}
        return ducc0.sht.synthesis_general(alm=alm * coef[ls], spin=spin, lmax=lmax, loc=loc,
                                           epsilon=SHT_EPSILON, nthreads=nt, **kw)

    z = synth(w, tgt)[0]
    radial = synth(h, tgt)[0]
    dth, dph = synth(g, tgt, spin=1)  # d/dtheta G, (1/sin theta) d/dphi G
    ct, st, cp, sp = np.cos(colat), np.sin(colat), np.cos(lon), np.sin(lon)
    x = targets / np.linalg.norm(targets, axis=1, keepdims=True)
    n = radial[:, None] * x
    n[:, 0] += dth * ct * cp - dph * sp
    n[:, 1] += dth * ct * sp + dph * cp
    n[:, 2] -= dth * st
    if b >= 0.0:
        # the kernel grows with <x, y>: Z peaks near the mass, where the sources are
        zmax = float(np.max(z, initial=0.0))
        if not same:
            zmax = max(zmax, float(np.max(synth(w, src)[0], initial=0.0)))
    else:
        # it peaks opposite the mass, at no token: bound max Z by sum_j a_j max w
        # (measured: beta = -7, 20 tokens in a cap, error 4x the estimate from max Z at the tokens)
        zmax = float(np.sum(np.abs(weights))) * (1.0 if kind == "exp" else float(expit(abs(b) + bias)))
    return z, n, _sht_error(kind, b, bias) * zmax, lmax


# ---------------------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------------------
def _why_not(head, targets, sources, causal, tol):
    """(model, length, "") if fast summation applies here, else (None, 0, why not)."""
    d = sources.shape[1]
    model, why = _model(head, d, causal)
    if model is None:
        return None, 0, why
    kind, b, v, bias = model
    length = _length(kind, b, bias, d)
    if length is None:
        return None, 0, (f"the expansion of the kernel at b = beta*q*k = {b:g} is longer than "
                         f"{MAX_MODES if d == 2 else MAX_DEGREE} ({'modes' if d == 2 else 'degree'})")
    if d == 3:
        floor = (2.0 if kind == "softmax" else 1.0) * _sht_error(kind, b, bias)
        if floor > tol:
            return None, 0, (f"tol={tol:g} is below the accuracy of the spherical transforms "
                             f"for this kernel (relative error {floor:.2g} where the sums are "
                             f"largest; degree {length})")
    defect = max(_unit_defect(sources), 0.0 if targets is sources else _unit_defect(targets))
    if not (defect * (1.0 + 4.0 * abs(b)) <= _UNIT_SHARE * tol):
        return None, 0, (f"the tokens are not unit vectors: max | |x| - 1 | = {defect:.3g}, "
                         f"fast summation needs at most {_UNIT_SHARE * tol / (1.0 + 4.0 * abs(b)):.3g} "
                         f"at tol={tol:g}, b={b:g}")
    return model, length, ""


def _fast_cheaper(d, m, n, length) -> bool:
    """Whether the cost model (module constants) expects fast summation to beat the exact kernel."""
    fast = FAST_FIXED_S + FAST_TOKEN_S[d] * (m + n) + (FAST_DEGREE2_S * length**2 if d == 3 else 0.0)
    return fast < EXACT_PAIR_S * m * n


def summed_field(head, targets, sources, weights, causal, exact):
    """The attention field (m, d) by fast summation, or None to use the exact kernel.

    ``exact(targets, sources, weights)`` is the exact kernel (for the handed-over targets).
    Sets ``head.last_summation``; raises ValueError for ``summation="fast"`` on an
    ineligible model or geometry.
    """
    summation, tol = head.summation, head.tol
    if summation == "exact":
        head.last_summation = _EXACT
        return None
    same = targets is sources
    if summation == "auto":
        d = sources.shape[1]
        if not same:
            head.last_summation = SummationReport(
                "exact", reason="targets other than the sources: 'auto' sums those exactly")
            return None
        if len(targets) * len(sources) < CROSSOVER_PAIRS:
            head.last_summation = _SMALL
            return None
    model, length, why = _why_not(head, targets, sources, causal, tol)
    if model is None:
        if summation == "fast":
            raise ValueError(f"summation='fast' is not available for {head!r}: {why}")
        head.last_summation = SummationReport("exact", reason=why)
        return None
    if summation == "auto" and not _fast_cheaper(sources.shape[1], len(targets), len(sources), length):
        head.last_summation = SummationReport(
            "exact", reason=f"the exact kernel is estimated cheaper (expansion length {length})")
        return None
    kind, b, v, bias = model
    d = sources.shape[1]
    sums = _circle_sums if d == 2 else _sphere_sums
    z, n, err_abs, length = sums(kind, float(b), float(bias), targets, sources, weights, same)
    factor = 2.0 if kind == "softmax" else 1.0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if kind == "softmax":
            out = (v / z)[:, None] * n
        else:
            out = v * n * (np.exp(abs(b)) if kind == "exp" else 1.0)
        estimate = factor * err_abs / z
        # keep a target only if Z_i >= factor E S / tol: a Z_i that is noise may be negative
        bad = ~(z * tol >= factor * err_abs) | ~np.all(np.isfinite(out), axis=1)
    n_bad = int(np.count_nonzero(bad))
    if n_bad:
        out[bad] = exact(np.ascontiguousarray(targets[bad]), sources, weights)
    kept = estimate[~bad]
    head.last_summation = SummationReport("fast", length, float(kept.max()) if len(kept) else 0.0,
                                          n_bad)
    return out
