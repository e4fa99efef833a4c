"""Numba kernels for attention velocity fields (private).

Every kernel works on *projected* inputs, so the O(n^2) work is only dot products of
length k and sums of length d:

- ``qx`` (m, k): ``beta * Q x_i`` for the m target points,
- ``kyT`` (k, n): ``K y_j`` for the n source points, transposed,
- ``vyT`` (d, n): ``V y_j`` for the n source points, transposed,
- ``colw`` (n,): an additive log-weight per source (log weight, L2 bias; ``-inf`` for a
  source of zero weight).

All arrays of one call share one floating dtype, float64 or float32; Numba compiles a
specialisation of the same code for each (the dtype-specific parts, the exponential
and the exact maximum, are chosen by :func:`numba.extending.overload` on the dtype).

Each row kernel exists twice: ``name`` processes the targets in parallel
(``numba.prange``), ``name_serial`` on the calling thread only (no parallel region, so
no barrier at which threads spin for a busy core; ``nogil``); both call the same
compiled row function, so they give the same numbers. :mod:`transformer_pde._threads`
chooses between them per call. The shared per-row core (``_row_sums``, which calls
``_fused_row``, and ``_sigmoid_row``) are jitted functions of their own, called once per
target row, with the block helpers inlined into them once: the kernels do not each
inline the whole tree into their Numba IR, so compiling takes a third of the time
(measured cold: 8.4 s against 24.8 s for the four SA and USA kernels; every fresh
installation and CI run pays it) at the same speed for large n. One level of calls
only: a jitted caller links in and optimises again the code of its callees, so a row
core called through a second jitted function compiled ~1.7x longer. The price is one
call per row: about 35 % more time at n = 32 (the batches of many small systems, which
with Q = K = I take the symmetric pairs instead), nothing measurable at n = 4096.

A target row works through its sources in blocks of :data:`BLOCK` (O(BLOCK) scratch
per thread, in L1 cache; never an n x n array); block sums are added to float64
accumulators, so the rounding error of the sums does not grow with n beyond that of
one block. Softmax-type weights exp(s_j - shift) need a shift near the row maximum,
chosen one of two ways per row (:func:`_row_sums`):

- *one pass* (most rows): the shift is the Cauchy-Schwarz bound
  b_i = max_j colw_j + |qx_i| max_j |ky_j| >= s_j, taken when the gap b_i - m_i
  (bounded by b_i minus two attained logits) is at most :data:`_GAP64` = 600
  (float32: :data:`_GAP32` = 40), and for USA b_i <= :data:`_EXP_TOP` (exp(b_i) finite).
  No maximum to find, nothing to rescale: for k, d <= 3 (the circle, S^2) one loop per
  block computes the logit, its weight and the weighted sums, never storing the weight
  (:func:`_fused_row`; a function of its own, so that LLVM keeps its sums in registers:
  inlined into the larger row function the loop spilled, ~20 % slower); for larger k
  or d the logits pass and the weights-and-sums pass of the online row. The largest
  weight is >= exp(-600), a normal float, and a term is lost only below exp(-108)
  (float32: exp(-47)) of the largest; the shift cancels in softmax, and USA multiplies
  by exp(b_i) instead of exp(m_i). Causal rows take the bound over their own sources
  j <= i (prefix maxima, :func:`_source_stats`), so a row never depends on later tokens.
- *online* (large beta): the running shift m is the largest logit seen so far (a
  maximum pass per block); when a block raises it, the accumulated sums are multiplied
  by exp(m_old - m_new) <= 1. Every weight is thus exp(s - m) <= 1 with m an attained
  logit, so logits of size 1e3 and more stay finite, and a weight below about
  exp(-708.4) (float32: exp(-87.7)) relative to an attained one is exactly 0.

Measured at n = 4096 on S^2 (one thread, CPU time, interleaved with the previous
online-only kernels): 1.21x float64, 1.28x float32.

The exponential is branch-free and libm-free (the scalar libm call does not
vectorise): z = k ln2 + r with |r| <= ln2 / 2, a polynomial for exp(r) (float64:
degree 11, float32: degree 6; relative error at most 2 eps measured over the whole
range, tests/test_kernels_float32.py) and 2^k built from its exponent bits by an LLVM
bit cast (:func:`_pow2_bits`; AVX2 has no vector float-to-int64 conversion, and LLVM
keeps a loop with one scalar). The maximum uses the integer order of IEEE floats
(sign-magnitude mapped to two's complement), because LLVM does not vectorise a float
max reduction. Kernels are
compiled with ``fastmath={"reassoc", "contract"}``, so the sums vectorise; this
reorders sums (differences ~1e-16 relative to the NumPy reference) but keeps IEEE
infinities and NaNs.

For larger k + d the logits are better computed by BLAS: :func:`weight_rows` turns a
(B, n) tile of logits into weights in place, and the caller multiplies tiles of B
targets at a time (memory O(B n)); the caller runs the tiles on one or several Python
threads (:func:`weight_rows` releases the GIL, as BLAS does).

Kernels trust their inputs: validation happens in :mod:`transformer_pde.attention`.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba import types
from numba.extending import intrinsic, overload

__all__ = [
    "softmax_field",
    "softmax_field_serial",
    "pairs_shift",
    "symmetric_field",
    "symmetric_field_serial",
    "weight_rows",
    "exp_shifted",
    "exp_field",
    "exp_field_serial",
    "sigmoid_field",
    "sigmoid_field_serial",
    "sinkhorn_potentials",
    "BLOCK",
]

_FASTMATH = {"reassoc", "contract"}
_JIT = dict(parallel=True, cache=True, fastmath=_FASTMATH)
#: the same kernels compiled without a parallel region: no thread pool, no barrier (and
#: the numpy error model of the parallel ones: x / 0 gives inf or nan, not an exception)
_SERIAL = dict(parallel=False, nogil=True, cache=True, error_model="numpy", fastmath=_FASTMATH)

#: size of Numba's thread pool, a compile-time constant (``numba.get_num_threads()``
#: inside a kernel would make it uncacheable); only the load balance depends on it
_POOL = int(numba.config.NUMBA_NUM_THREADS)
#: sources per block of a row (scratch of a few KiB per thread: stays in L1 cache)
BLOCK = 512

# -- float64 exponential: exp(z) for z <= 0 ---------------------------------------------
_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471803691238  # ln 2 split in two so that k * _LN2_HI is exact
_LN2_LO = 1.9082149292705877e-10
#: arguments are clamped here: k = -1023, whose 2^k is 0.0, so a weight below about
#: exp(-708.4) (2^-1022.5) is exactly 0 without a compare and select
_ZCLAMP = -1023.0 * 0.6931471805599453
#: kf + _EXP_BITS has the biased exponent k + 1023 in its low mantissa bits
_EXP_BITS = 1.5 * 2.0**52 + 1023.0
# near-minimax polynomial for exp(r), |r| <= ln2 / 2 (Lawson-weighted least squares on
# the relative error, extended precision): approximation error 3e-18, measured error
# of the float64 Horner evaluation 1.7e-16 (< eps); a Taylor polynomial needs degree 12
_P64 = (1.0, 1.0, 0.5000000000000018, 0.1666666666666617, 0.041666666666492935,
        0.008333333333559945, 0.0013888888951208937, 0.00019841269431234665,
        2.4801486521984946e-05, 2.7557623663276933e-06, 2.763229572145879e-07,
        2.4993996802409284e-08)

# -- float32 exponential ----------------------------------------------------------------
_LOG2E_32 = np.float32(_LOG2E)
_LN2_HI_32 = np.float32(0.693359375)  # 8 significant bits: k * _LN2_HI_32 exact for |k| < 2^16
_LN2_LO_32 = np.float32(-2.12194440e-4)
_ZCLAMP_32 = np.float32(-127.0 * 0.6931471805599453)  # k = -127: 2^k is 0.0; zero below ~-87.7
_EXP_BITS_32 = np.float32(1.5 * 2.0**23 + 127.0)
_HALF_32 = np.float32(0.5)
# degree 6, same construction: approximation error 1.9e-9, measured 9.6e-8 (0.8 eps32)
_P32 = tuple(np.float32(c) for c in (
    1.0, 1.0, 0.49999991059303284, 0.16666419804096222, 0.04166822507977486,
    0.008374815806746483, 0.0013836829457432032))


# -- bit-level helpers: LLVM bitcasts, which vectorise ------------------------------------
def _float_format(x):
    """(bits, mantissa bits, LLVM float type, Numba int type) of a float32/float64 type."""
    if x == types.float64:
        return 64, 52, llvm_ir.DoubleType(), types.int64
    if x == types.float32:
        return 32, 23, llvm_ir.FloatType(), types.int32
    return None


@intrinsic
def _pow2_bits(typingctx, y):
    """The float whose bits are those of ``y`` shifted left by the mantissa width.

    With y = kf + 1.5 * 2^52 + 1023 (float64; 1.5 * 2^23 + 127 for float32) the low
    mantissa bits of y hold the biased exponent k + 1023, so the result is 2^k
    (0.0 for k = -1023). Numba has no scalar bit cast, and AVX2 has no vector
    float-to-int64 conversion (LLVM keeps a loop with one scalar).
    """
    fmt = _float_format(y)
    if fmt is None:
        return None
    width, mant, fty, _ = fmt

    def codegen(context, builder, sig, args):
        ity = llvm_ir.IntType(width)
        bits = builder.shl(builder.bitcast(args[0], ity), llvm_ir.Constant(ity, mant))
        return builder.bitcast(bits, fty)

    return y(y), codegen


def _flip_negative(builder, bits, width):
    """Two's-complement order of IEEE floats: flip the magnitude bits of negative ones."""
    ity = llvm_ir.IntType(width)
    sign = builder.ashr(bits, llvm_ir.Constant(ity, width - 1))
    return builder.xor(bits, builder.and_(sign, llvm_ir.Constant(ity, (1 << (width - 1)) - 1)))


@intrinsic
def _order_key(typingctx, x):
    """An integer that orders like the float ``x`` (NaN aside): LLVM vectorises an
    integer max reduction, not a float one."""
    fmt = _float_format(x)
    if fmt is None:
        return None
    width, _, _, ity_numba = fmt

    def codegen(context, builder, sig, args):
        return _flip_negative(builder, builder.bitcast(args[0], llvm_ir.IntType(width)), width)

    return ity_numba(x), codegen


@intrinsic
def _from_order_key(typingctx, key, like):
    """The float (of the type of ``like``) whose :func:`_order_key` is ``key``."""
    fmt = _float_format(like)
    if fmt is None:
        return None
    width, _, fty, _ = fmt

    def codegen(context, builder, sig, args):
        bits = args[0]
        if key.bitwidth > width:
            bits = builder.trunc(bits, llvm_ir.IntType(width))
        return builder.bitcast(_flip_negative(builder, bits, width), fty)

    return like(key, like), codegen


@numba.njit(inline="always")
def _exp_f64(z):
    """exp(z) for z <= 0, exactly 0 below ~-708.4; branch-free, so loops of it vectorise."""
    c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11 = _P64
    z = max(z, _ZCLAMP)
    kf = np.floor(z * _LOG2E + 0.5)
    r = (z - kf * _LN2_HI) - kf * _LN2_LO
    p = c11
    p = p * r + c10
    p = p * r + c9
    p = p * r + c8
    p = p * r + c7
    p = p * r + c6
    p = p * r + c5
    p = p * r + c4
    p = p * r + c3
    p = p * r + c2
    p = p * r + c1
    p = p * r + c0
    return p * _pow2_bits(kf + _EXP_BITS)


@numba.njit(inline="always")
def _exp_f32(z):
    """float32 version of :func:`_exp_f64` (exactly 0 below ~-87.7)."""
    c0, c1, c2, c3, c4, c5, c6 = _P32
    z = max(z, _ZCLAMP_32)
    kf = np.floor(z * _LOG2E_32 + _HALF_32)
    r = (z - kf * _LN2_HI_32) - kf * _LN2_LO_32
    p = c6
    p = p * r + c5
    p = p * r + c4
    p = p * r + c3
    p = p * r + c2
    p = p * r + c1
    p = p * r + c0
    return p * _pow2_bits(kf + _EXP_BITS_32)


def _exp(z):  # pragma: no cover - typed by the overload below
    raise NotImplementedError


@overload(_exp, inline="always")
def _exp_overload(z):
    if z == types.float32:
        return lambda z: _exp_f32(z)
    return lambda z: _exp_f64(z)


@numba.njit(inline="always")
def _exp_block(buf, shift):
    """buf[j] <- exp(buf[j] - shift) for arguments <= 0, in one vectorised pass.

    The kernels pass slices: an index ``off + j`` that Numba cannot prove nonnegative
    gets a wraparound select that stops LLVM vectorising the loop.
    """
    for j in range(buf.shape[0]):
        buf[j] = _exp(buf[j] - shift)


@numba.njit(inline="always")
def _max(buf):
    """max(buf), len(buf) >= 1, exactly (through :func:`_order_key`)."""
    m = _order_key(buf[0])
    for j in range(buf.shape[0]):
        v = _order_key(buf[j])
        m = v if v > m else m
    return _from_order_key(m, buf[0])


def _typed(a, value):  # pragma: no cover - typed by the overload below
    raise NotImplementedError


@overload(_typed, inline="always")
def _typed_overload(a, value):
    """``value`` in the dtype of array ``a``."""
    dt = a.dtype
    return lambda a, value: dt(value)


# -- block primitives -------------------------------------------------------------------
@numba.njit(inline="always")
def _logits(qx, i, kyT, colw, j0, nb, buf):
    """buf[j] <- colw[j0 + j] + <qx_i, ky_{j0 + j}> for j < nb.

    The first up to three components in one pass (d = 2, 3 on the circle and S^2),
    then one pass per component.
    """
    k = qx.shape[1]
    cw = colw[j0 : j0 + nb]
    k0 = kyT[0][j0 : j0 + nb]
    q0 = qx[i, 0]
    if k >= 3:
        k1, k2 = kyT[1][j0 : j0 + nb], kyT[2][j0 : j0 + nb]
        q1, q2 = qx[i, 1], qx[i, 2]
        for j in range(nb):
            buf[j] = cw[j] + q0 * k0[j] + q1 * k1[j] + q2 * k2[j]
    elif k == 2:
        k1 = kyT[1][j0 : j0 + nb]
        q1 = qx[i, 1]
        for j in range(nb):
            buf[j] = cw[j] + q0 * k0[j] + q1 * k1[j]
    else:
        for j in range(nb):
            buf[j] = cw[j] + q0 * k0[j]
    for c in range(3, k):
        q = qx[i, c]
        kc = kyT[c][j0 : j0 + nb]
        for j in range(nb):
            buf[j] += q * kc[j]


@numba.njit(inline="always")
def _dot_rest(buf, vyT, j0, nb, acc, c0):
    """acc[c] += sum_j buf[j] vyT[c, j0 + j] for c >= c0, one pass each."""
    for c in range(c0, vyT.shape[0]):
        vc = vyT[c][j0 : j0 + nb]
        sc = _typed(buf, 0.0)
        for j in range(nb):
            sc += buf[j] * vc[j]
        acc[c] += sc


@numba.njit(inline="always")
def _block_sums(buf, vyT, j0, nb, total, acc):
    """total + sum_j buf[j], and acc[c] += sum_j buf[j] vyT[c, j0 + j] (float64 accumulators)."""
    s = _typed(buf, 0.0)
    for j in range(nb):
        s += buf[j]
    _dot_rest(buf, vyT, j0, nb, acc, 0)
    return total + s


@numba.njit(inline="always")
def _exp_sums_block(buf, shift, vyT, j0, nb, total, acc):
    """buf[j] <- exp(buf[j] - shift), then :func:`_block_sums`, the first up to three
    value components fused into the exponential's pass."""
    d = vyT.shape[0]
    s = _typed(buf, 0.0)
    s0, s1, s2 = s, s, s
    if d == 3:  # the weights are not needed again: not stored
        v0, v1, v2 = vyT[0][j0 : j0 + nb], vyT[1][j0 : j0 + nb], vyT[2][j0 : j0 + nb]
        for j in range(nb):
            w = _exp(buf[j] - shift)
            s += w
            s0 += w * v0[j]
            s1 += w * v1[j]
            s2 += w * v2[j]
        acc[0] += s0
        acc[1] += s1
        acc[2] += s2
    elif d > 3:
        v0, v1, v2 = vyT[0][j0 : j0 + nb], vyT[1][j0 : j0 + nb], vyT[2][j0 : j0 + nb]
        for j in range(nb):
            w = _exp(buf[j] - shift)
            buf[j] = w
            s += w
            s0 += w * v0[j]
            s1 += w * v1[j]
            s2 += w * v2[j]
        acc[0] += s0
        acc[1] += s1
        acc[2] += s2
        _dot_rest(buf, vyT, j0, nb, acc, 3)
    elif d == 2:
        v0, v1 = vyT[0][j0 : j0 + nb], vyT[1][j0 : j0 + nb]
        for j in range(nb):
            w = _exp(buf[j] - shift)
            s += w
            s0 += w * v0[j]
            s1 += w * v1[j]
        acc[0] += s0
        acc[1] += s1
    elif d == 1:
        v0 = vyT[0][j0 : j0 + nb]
        for j in range(nb):
            w = _exp(buf[j] - shift)
            s += w
            s0 += w * v0[j]
        acc[0] += s0
    else:
        for j in range(nb):
            s += _exp(buf[j] - shift)
    return total + s


#: one-pass rows (:func:`_row_sums`): the largest gap b_i - (a logit attained in row i)
#: between the bound shift b_i and the row maximum. Terms more than ~708 (float32: ~87)
#: below b_i are 0, so a term is dropped only if it is below exp(gap - 708) relative to
#: the row's largest: exp(-108) for float64, exp(-47) for float32 (n of them stay far
#: below one rounding of the sum for any n that fits in memory)
_GAP64 = 600.0
_GAP32 = 40.0
#: USA rows take the one-pass shift b_i only while exp(b_i) is finite (float64)
_EXP_TOP = 700.0


def _gap(buf):  # pragma: no cover - typed by the overload below
    raise NotImplementedError


@overload(_gap, inline="always")
def _gap_overload(buf):
    g = _GAP32 if buf.dtype == types.float32 else _GAP64
    return lambda buf: g


@numba.njit(cache=True, nogil=True)
def _source_stats(kyT, colw, causal):
    """The bounds of :func:`_row_sums`, a (3, p) array: max_l |ky_l|, max_l colw_l and
    its first index, over l <= j for each j (p = n) if ``causal`` (a causal row i then
    depends on the sources l <= i only), else over all sources (p = 1)."""
    n = kyT.shape[1]
    stats = np.empty((3, n if causal else 1))
    k2 = 0.0
    c = -np.inf
    t = 0
    for j in range(n):
        s = 0.0
        for r in range(kyT.shape[0]):
            s += np.float64(kyT[r, j]) ** 2
        k2 = max(k2, s)
        if colw[j] > c:
            c = np.float64(colw[j])
            t = j
        if causal:
            stats[0, j] = np.sqrt(k2)
            stats[1, j] = c
            stats[2, j] = t
    if not causal:
        stats[0, 0] = np.sqrt(k2)
        stats[1, 0] = c
        stats[2, 0] = t
    return stats


@numba.njit(inline="always")
def _logit(qx, i, kyT, colw, j):
    """colw_j + <qx_i, ky_j> in float64 (one logit)."""
    s = np.float64(colw[j])
    for c in range(qx.shape[1]):
        s += np.float64(qx[i, c]) * np.float64(kyT[c, j])
    return s


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=_FASTMATH)
def _fused_row(qx, i, kyT, vyT, colw, nj, shift, acc):
    """One pass for k, d <= 3 (the circle and S^2): returns sum_j w_j and sets
    acc[c] = sum_j w_j vyT[c, j], w_j = exp(colw_j + <qx_i, ky_j> - shift) (j < nj),
    the weights never stored.

    k or d below 3 repeat the first component with a zero factor (resp. a discarded
    sum): one loop for all, at a few FMAs more than a loop of their own. A function of
    its own, with its sums in local variables: inlined into :func:`_row_sums`, or
    summing into ``acc`` per block, LLVM spilled registers in the loop (~20 % slower).
    """
    k = qx.shape[1]
    d = vyT.shape[0]
    zero = _typed(colw, 0.0)
    q0 = qx[i, 0]
    q1 = qx[i, 1] if k > 1 else zero
    q2 = qx[i, 2] if k > 2 else zero
    r1, r2 = min(1, k - 1), min(2, k - 1)
    c1, c2 = min(1, d - 1), min(2, d - 1)
    total, a0, a1, a2 = 0.0, 0.0, 0.0, 0.0
    for j0 in range(0, nj, BLOCK):
        nb = min(BLOCK, nj - j0)
        cw = colw[j0 : j0 + nb]
        k0, k1, k2 = kyT[0][j0 : j0 + nb], kyT[r1][j0 : j0 + nb], kyT[r2][j0 : j0 + nb]
        v0, v1, v2 = vyT[0][j0 : j0 + nb], vyT[c1][j0 : j0 + nb], vyT[c2][j0 : j0 + nb]
        s, s0, s1, s2 = zero, zero, zero, zero
        for j in range(nb):
            w = _exp(cw[j] + q0 * k0[j] + q1 * k1[j] + q2 * k2[j] - shift)
            s += w
            s0 += w * v0[j]
            s1 += w * v1[j]
            s2 += w * v2[j]
        total += s
        a0 += s0
        a1 += s1
        a2 += s2
    acc[0] = a0
    if d > 1:
        acc[1] = a1
    if d > 2:
        acc[2] = a2
    return total



@numba.njit(inline="always")
def _one_pass_shift(qx, i, kyT, colw, nj, stats, top):
    """The one-pass shift b_i of :func:`_row_sums` where it is safe, else ``inf``."""
    if nj < 1 or top == -np.inf:
        return np.inf
    last = nj - 1
    qn = 0.0
    for c in range(qx.shape[1]):
        qn += np.float64(qx[i, c]) ** 2
    p = min(last, stats.shape[1] - 1)
    b = stats[1, p] + np.sqrt(qn) * stats[0, p]
    top_j = int(stats[2, p])
    lower = max(_logit(qx, i, kyT, colw, last), _logit(qx, i, kyT, colw, top_j))
    if b - lower <= _gap(colw) and b <= top:  # false for NaN (all weights 0)
        return b
    return np.inf


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=_FASTMATH)
def _row_sums(qx, i, kyT, vyT, colw, nj, buf, acc, stats, top):
    """Sums over the sources j < nj of target i, block by block, in one pass where safe.

    Returns ``(m, total)`` (float64) with ``total = sum_j exp(s_j - m)`` and
    ``acc[c] = sum_j exp(s_j - m) vyT[c, j]``, s_j = colw_j + <qx_i, ky_j>.

    One pass: m is the bound b_i = max_j colw_j + |qx_i| max_j |ky_j| >= s_j
    (Cauchy-Schwarz; the maxima ``stats`` of :func:`_source_stats`), taken when the
    gap b_i - m_i <= b_i - (an attained logit: of the last source and of the source of
    largest colw) is at most :data:`_GAP64` (float32: :data:`_GAP32`) and b_i <= ``top``
    (``top = -inf``: never); no maximum, no rescaling, and for k, d <= 3 the fused loop
    of :func:`_fused_row`. Otherwise online: m = max_j s_j by the online log-sum-exp.
    """
    shift = _one_pass_shift(qx, i, kyT, colw, nj, stats, top)
    online = shift == np.inf
    if not online and 1 <= vyT.shape[0] <= 3 and qx.shape[1] <= 3:
        return shift, _fused_row(qx, i, kyT, vyT, colw, nj, _typed(buf, shift), acc)
    for c in range(vyT.shape[0]):
        acc[c] = 0.0
    m = -np.inf if online else shift
    total = 0.0
    for j0 in range(0, nj, BLOCK):
        nb = min(BLOCK, nj - j0)
        _logits(qx, i, kyT, colw, j0, nb, buf)
        if online:
            bm = _max(buf[:nb])
            if bm > m:  # a larger shift: rescale what was summed with the old one
                f = np.exp(m - bm)
                total *= f
                for c in range(vyT.shape[0]):
                    acc[c] *= f
                m = bm
            if m == -np.inf:  # only zero-weight sources so far
                continue
        total = _exp_sums_block(buf, _typed(buf, m), vyT, j0, nb, total, acc)
    return m, total


def _scratch(like, nd):
    """Per-row scratch: a block of logits (dtype of ``like``), float64 accumulators."""
    raise NotImplementedError  # pragma: no cover - typed by the overload below


@overload(_scratch, inline="always")
def _scratch_overload(like, nd):
    dt = like.dtype
    return lambda like, nd: (np.empty(BLOCK, dtype=dt), np.empty(max(nd, 1)))


# -- softmax ----------------------------------------------------------------------------
@numba.njit(inline="always")
def _softmax_row(qx, kyT, vyT, colw, causal, out, i, buf, acc, stats):
    nj = i + 1 if causal else kyT.shape[1]
    _, total = _row_sums(qx, i, kyT, vyT, colw, nj, buf, acc, stats, np.inf)
    inv = 1.0 / total
    for c in range(vyT.shape[0]):
        out[i, c] = acc[c] * inv


@numba.njit(inline="always")
def _n_chunks(m):
    """Parallel chunks of target rows: a few per thread; chunk c takes rows c, c + C, ...

    Scratch is allocated once per chunk, not per row, and interleaved rows balance the
    causal triangle (row i visits i + 1 sources).
    """
    return max(1, min(m, 4 * _POOL))


@numba.njit(**_JIT)
def softmax_field(qx, kyT, vyT, colw, causal, out):
    """out_i = sum_j softmax_j(<qx_i, ky_j> + colw_j) vy_j, with j <= i if causal."""
    m = qx.shape[0]
    stats = _source_stats(kyT, colw, causal)
    chunks = _n_chunks(m)
    for c in numba.prange(chunks):
        buf, acc = _scratch(qx, vyT.shape[0])
        for i in range(c, m, chunks):
            _softmax_row(qx, kyT, vyT, colw, causal, out, i, buf, acc, stats)
    return out


@numba.njit(**_SERIAL)
def softmax_field_serial(qx, kyT, vyT, colw, causal, out):
    """:func:`softmax_field` on the calling thread only (releases the GIL)."""
    stats = _source_stats(kyT, colw, causal)
    buf, acc = _scratch(qx, vyT.shape[0])
    for i in range(qx.shape[0]):
        _softmax_row(qx, kyT, vyT, colw, causal, out, i, buf, acc, stats)
    return out


# -- unnormalised (USA) -----------------------------------------------------------------
@numba.njit(inline="always")
def _exp_row(qx, kyT, vyT, colw, causal, out, i, buf, acc, stats):
    nj = i + 1 if causal else kyT.shape[1]
    m, _ = _row_sums(qx, i, kyT, vyT, colw, nj, buf, acc, stats, _EXP_TOP)
    scale = np.exp(m)  # float64 even for float32 data: exp(m) > 3.4e38 gives inf on the store
    for c in range(vyT.shape[0]):
        out[i, c] = acc[c] * scale


@numba.njit(**_JIT)
def exp_field(qx, kyT, vyT, colw, causal, out):
    """out_i = sum_j exp(<qx_i, ky_j> + colw_j) vy_j, unnormalised (USA), with j <= i if causal.

    Summed with the row maximum m_i factored out, then scaled by exp(m_i).
    """
    m = qx.shape[0]
    stats = _source_stats(kyT, colw, causal)
    chunks = _n_chunks(m)
    for c in numba.prange(chunks):
        buf, acc = _scratch(qx, vyT.shape[0])
        for i in range(c, m, chunks):
            _exp_row(qx, kyT, vyT, colw, causal, out, i, buf, acc, stats)
    return out


@numba.njit(**_SERIAL)
def exp_field_serial(qx, kyT, vyT, colw, causal, out):
    """:func:`exp_field` on the calling thread only (releases the GIL)."""
    stats = _source_stats(kyT, colw, causal)
    buf, acc = _scratch(qx, vyT.shape[0])
    for i in range(qx.shape[0]):
        _exp_row(qx, kyT, vyT, colw, causal, out, i, buf, acc, stats)
    return out


# -- symmetric pairs: the targets are the sources and <qx_i, ky_j> = <qx_j, ky_i> -------
@numba.njit(inline="always")
def _q3(qx, i):
    """qx_i as three components (zeros beyond k)."""
    k = qx.shape[1]
    return qx[i, 0], qx[i, 1] if k > 1 else 0.0, qx[i, 2] if k > 2 else 0.0


@numba.njit(inline="always")
def _sym_one(i, q0, q1, q2, ai, j_lo, j_hi, kyT3, vyT3, a, shift, tu):
    """Row i against the sources j_lo <= j < j_hi: returns its sums (total, acc0..2) and
    adds a_i e_ij (and times vy_i) to the column sums ``tu`` (4, n) of those j."""
    k0, k1, k2 = kyT3
    v0, v1, v2 = vyT3
    w0, w1, w2 = ai * v0[i], ai * v1[i], ai * v2[i]
    t, u0, u1, u2 = tu[0], tu[1], tu[2], tu[3]
    total, a0, a1, a2 = 0.0, 0.0, 0.0, 0.0
    for b0 in range(j_lo, j_hi, BLOCK):
        nb = min(BLOCK, j_hi - b0)
        kb0, kb1, kb2 = k0[b0 : b0 + nb], k1[b0 : b0 + nb], k2[b0 : b0 + nb]
        vb0, vb1, vb2 = v0[b0 : b0 + nb], v1[b0 : b0 + nb], v2[b0 : b0 + nb]
        ab, tb = a[b0 : b0 + nb], t[b0 : b0 + nb]
        ub0, ub1, ub2 = u0[b0 : b0 + nb], u1[b0 : b0 + nb], u2[b0 : b0 + nb]
        s, s0, s1, s2 = 0.0, 0.0, 0.0, 0.0
        for j in range(nb):
            e = _exp(q0 * kb0[j] + q1 * kb1[j] + q2 * kb2[j] - shift)
            w = ab[j] * e
            s += w
            s0 += w * vb0[j]
            s1 += w * vb1[j]
            s2 += w * vb2[j]
            tb[j] += ai * e
            ub0[j] += e * w0
            ub1[j] += e * w1
            ub2[j] += e * w2
        total += s
        a0 += s0
        a1 += s1
        a2 += s2
    return total, a0, a1, a2


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=_FASTMATH)
def _sym_chunk(qx, kyT, vyT, a, shift, c, chunks, tu):
    """The pairs j <= i of the rows i = c, c + chunks, ... (k, d <= 3, float64).

    Each e_ij = exp(<qx_i, ky_j> - shift) is computed once: row i gains a_j e_ij (and
    times vy_j), row j < i gains a_i e_ij (and times vy_i), in ``tu`` (4, n): the float64
    sums of this chunk (total, then the three components). Rows go two at a time, i < i2
    (the next row of the chunk), over the sources j < i together, so that each column
    sum is loaded and stored once for both; then row i2 alone over i <= j < i2. Row sums
    are taken block by block as in :func:`_row_sums`; a column sum of a chunk adds
    n / chunks terms. k or d below 3 repeat the first component with a zero factor (as
    in :func:`_fused_row`).
    """
    n, k = qx.shape
    d = vyT.shape[0]
    r1, r2 = min(1, k - 1), min(2, k - 1)
    c1, c2 = min(1, d - 1), min(2, d - 1)
    kyT3 = (kyT[0], kyT[r1], kyT[r2])
    vyT3 = (vyT[0], vyT[c1], vyT[c2])
    k0, k1, k2 = kyT3
    v0, v1, v2 = vyT3
    t, u0, u1, u2 = tu[0], tu[1], tu[2], tu[3]
    for i in range(c, n, 2 * chunks):
        p0, p1, p2 = _q3(qx, i)
        ai = a[i]
        i2 = i + chunks
        if i2 >= n:  # the chunk's last row, alone
            total, a0, a1, a2 = _sym_one(i, p0, p1, p2, ai, 0, i, kyT3, vyT3, a, shift, tu)
        else:
            q0, q1, q2 = _q3(qx, i2)
            bi = a[i2]
            wa0, wa1, wa2 = ai * v0[i], ai * v1[i], ai * v2[i]
            wb0, wb1, wb2 = bi * v0[i2], bi * v1[i2], bi * v2[i2]
            total, a0, a1, a2 = 0.0, 0.0, 0.0, 0.0
            total2, b0_, b1_, b2_ = 0.0, 0.0, 0.0, 0.0
            for j0 in range(0, i, BLOCK):
                nb = min(BLOCK, i - j0)
                kb0, kb1, kb2 = k0[j0 : j0 + nb], k1[j0 : j0 + nb], k2[j0 : j0 + nb]
                vb0, vb1, vb2 = v0[j0 : j0 + nb], v1[j0 : j0 + nb], v2[j0 : j0 + nb]
                ab, tb = a[j0 : j0 + nb], t[j0 : j0 + nb]
                ub0, ub1, ub2 = u0[j0 : j0 + nb], u1[j0 : j0 + nb], u2[j0 : j0 + nb]
                sa, sa0, sa1, sa2 = 0.0, 0.0, 0.0, 0.0
                sb, sb0, sb1, sb2 = 0.0, 0.0, 0.0, 0.0
                for j in range(nb):
                    x0, x1, x2 = kb0[j], kb1[j], kb2[j]
                    ea = _exp(p0 * x0 + p1 * x1 + p2 * x2 - shift)
                    eb = _exp(q0 * x0 + q1 * x1 + q2 * x2 - shift)
                    y0, y1, y2 = vb0[j], vb1[j], vb2[j]
                    wa, wb = ab[j] * ea, ab[j] * eb
                    sa += wa
                    sa0 += wa * y0
                    sa1 += wa * y1
                    sa2 += wa * y2
                    sb += wb
                    sb0 += wb * y0
                    sb1 += wb * y1
                    sb2 += wb * y2
                    tb[j] += ai * ea + bi * eb
                    ub0[j] += ea * wa0 + eb * wb0
                    ub1[j] += ea * wa1 + eb * wb1
                    ub2[j] += ea * wa2 + eb * wb2
                total += sa
                a0 += sa0
                a1 += sa1
                a2 += sa2
                total2 += sb
                b0_ += sb0
                b1_ += sb1
                b2_ += sb2
            s, s0, s1, s2 = _sym_one(i2, q0, q1, q2, bi, i, i2, kyT3, vyT3, a, shift, tu)
            e = _exp(q0 * k0[i2] + q1 * k1[i2] + q2 * k2[i2] - shift) * bi  # the pair (i2, i2)
            t[i2] += total2 + s + e
            u0[i2] += b0_ + s0 + e * v0[i2]
            u1[i2] += b1_ + s1 + e * v1[i2]
            u2[i2] += b2_ + s2 + e * v2[i2]
        e = _exp(p0 * k0[i] + p1 * k1[i] + p2 * k2[i] - shift) * ai  # the pair (i, i), once
        t[i] += total + e
        u0[i] += a0 + e * v0[i]
        u1[i] += a1 + e * v1[i]
        u2[i] += a2 + e * v2[i]


@numba.njit(cache=True, nogil=True)
def _sym_finish(tu, normalize, scale, out):
    """out_i = (sum over chunks of the component sums) / (of the totals) (softmax), or
    times ``scale`` (USA).

    One compiled function (no fastmath) for the serial and the parallel kernel: inlined
    into each, LLVM reordered the sums over chunks differently in the two (1 ulp apart).
    """
    n, d = out.shape
    for i in range(n):
        t = 0.0
        for c in range(tu.shape[0]):
            t += tu[c, 0, i]
        f = 1.0 / t if normalize else scale
        for r in range(d):
            v = 0.0
            for c in range(tu.shape[0]):
                v += tu[c, r + 1, i]
            out[i, r] = v * f


@numba.njit(cache=True, nogil=True)
def pairs_shift(qx, kyT, colw, normalize):
    """The shared shift b of the symmetric pairs, or ``inf`` where they do not apply.

    b = max_i |qx_i| max_j |ky_j| >= every logit (Cauchy-Schwarz); they apply where every
    row keeps a weight >= e^-600 relative to b, checked through the logits of row i to
    itself and to the source of largest ``colw`` (b - max(l_ii + c_i, l_it + c_t) <=
    :data:`_GAP64`), and for USA (not ``normalize``) where e^b is finite (b <= :data:`_EXP_TOP`).
    """
    n, k = qx.shape
    q2, k2 = 0.0, 0.0
    top = 0
    for i in range(n):
        sq, sk = 0.0, 0.0
        for c in range(k):
            sq += qx[i, c] * qx[i, c]
            sk += kyT[c, i] * kyT[c, i]
        q2, k2 = max(q2, sq), max(k2, sk)
        if colw[i] > colw[top]:
            top = i
    b = np.sqrt(q2 * k2)
    if not (b <= (np.inf if normalize else _EXP_TOP)):  # also NaN
        return np.inf
    for i in range(n):
        own, to_top = colw[i], colw[top]
        for c in range(k):
            own += qx[i, c] * kyT[c, i]
            to_top += qx[i, c] * kyT[c, top]
        if not b - max(own, to_top) <= _GAP64:
            return np.inf
    return b


@numba.njit(inline="always")
def _pairs_scratch(colw, normalize, shift, n_chunks):
    """The source factors a_j = e^{c_j}, the USA scale e^b (1 for softmax) and the
    zeroed column sums (n_chunks, 4, n) of the symmetric kernels."""
    a = np.empty(colw.shape[0])
    for j in range(colw.shape[0]):
        a[j] = np.exp(colw[j])
    return a, (1.0 if normalize else np.exp(shift)), np.zeros((n_chunks, 4, colw.shape[0]))


@numba.njit(**_JIT)
def symmetric_field(qx, kyT, vyT, colw, normalize, out):
    """The softmax (``normalize``) or unnormalised field of a token set on itself when
    <qx_i, ky_j> = <qx_j, ky_i>, each e_ij = exp(<qx_i, ky_j> - b) computed once per pair:
    out_i = sum_j a_j e_ij vy_j / sum_j a_j e_ij, or e^b sum_j a_j e_ij vy_j (a_j = e^{colw_j}).

    Returns False, with ``out`` untouched, where the shared shift b does not apply
    (:func:`pairs_shift`). k, d <= 3, float64. The chunks of rows are those of
    :func:`_n_chunks`, the same for this kernel and :func:`symmetric_field_serial`, which
    thus give the same numbers.
    """
    shift = pairs_shift(qx, kyT, colw, normalize)
    if shift == np.inf:
        return False
    chunks = _n_chunks(qx.shape[0])
    a, scale, tu = _pairs_scratch(colw, normalize, shift, chunks)
    for c in numba.prange(chunks):
        _sym_chunk(qx, kyT, vyT, a, shift, c, chunks, tu[c])
    _sym_finish(tu, normalize, scale, out)
    return True


@numba.njit(**_SERIAL)
def symmetric_field_serial(qx, kyT, vyT, colw, normalize, out):
    """:func:`symmetric_field` on the calling thread only (releases the GIL)."""
    shift = pairs_shift(qx, kyT, colw, normalize)
    if shift == np.inf:
        return False
    chunks = _n_chunks(qx.shape[0])
    a, scale, tu = _pairs_scratch(colw, normalize, shift, chunks)
    for c in range(chunks):
        _sym_chunk(qx, kyT, vyT, a, shift, c, chunks, tu[c])
    _sym_finish(tu, normalize, scale, out)
    return True


# -- sigmoid ----------------------------------------------------------------------------
@numba.njit(inline="always")
def _sigmoid_block(buf, za, weights):
    """buf[j] <- weights[j] * sigmoid(buf[j]) (za: scratch >= len(buf))."""
    nb = buf.shape[0]
    one = _typed(buf, 1.0)
    zero = _typed(buf, 0.0)
    for j in range(nb):
        za[j] = -abs(buf[j])
    _exp_block(za[:nb], zero)  # e = exp(-|z|) <= 1, no overflow
    for j in range(nb):
        e = za[j]
        s = one / (one + e) if buf[j] >= zero else e / (one + e)
        buf[j] = weights[j] * s


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=_FASTMATH)
def _sigmoid_row(qx, kyT, vyT, bias, weights, out, i, buf, za, acc):
    n = kyT.shape[1]
    for c in range(vyT.shape[0]):
        acc[c] = 0.0
    for j0 in range(0, n, BLOCK):
        nb = min(BLOCK, n - j0)
        for j in range(nb):
            buf[j] = bias
        for c in range(qx.shape[1]):
            q = qx[i, c]
            kc = kyT[c][j0 : j0 + nb]
            for j in range(nb):
                buf[j] += q * kc[j]
        _sigmoid_block(buf[:nb], za, weights[j0 : j0 + nb])
        _block_sums(buf, vyT, j0, nb, 0.0, acc)
    for c in range(vyT.shape[0]):
        out[i, c] = acc[c]


@numba.njit(**_JIT)
def sigmoid_field(qx, kyT, vyT, bias, weights, out):
    """out_i = sum_j weights_j sigmoid(<qx_i, ky_j> + bias) vy_j, sigmoid(z) = 1 / (1 + e^-z)."""
    m = qx.shape[0]
    chunks = _n_chunks(m)
    for c in numba.prange(chunks):
        buf, acc = _scratch(qx, vyT.shape[0])
        za = np.empty_like(buf)
        b = _typed(buf, bias)
        for i in range(c, m, chunks):
            _sigmoid_row(qx, kyT, vyT, b, weights, out, i, buf, za, acc)
    return out


@numba.njit(**_SERIAL)
def sigmoid_field_serial(qx, kyT, vyT, bias, weights, out):
    """:func:`sigmoid_field` on the calling thread only (releases the GIL)."""
    buf, acc = _scratch(qx, vyT.shape[0])
    za = np.empty_like(buf)
    b = _typed(buf, bias)
    for i in range(qx.shape[0]):
        _sigmoid_row(qx, kyT, vyT, b, weights, out, i, buf, za, acc)
    return out


# -- BLAS tiles -------------------------------------------------------------------------
#: what :func:`weight_rows` turns a tile of logits into
SOFTMAX, EXP, SIGMOID = 0, 1, 2


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def weight_rows(tile, colw, kind, bias, causal, row0, scale):
    """In place, row r of a (B, n) tile of logits <qx_i, ky_j> (i = row0 + r) becomes

    - SOFTMAX: exp(tile[r, j] + colw[j] - m_r), scale[r] = 1 / sum_j(...), m_r = max_j(...);
    - EXP: exp(tile[r, j] + colw[j] - m_r), scale[r] = exp(m_r);
    - SIGMOID: colw[j] * sigmoid(tile[r, j] + bias) (colw holds the weights), scale[r] = 1;

    with sources j > i set to 0 if causal, so that ``out_i = scale_i * (tile @ vy)_i``
    (the softmax quotient is left to that product: one pass over the tile less).
    ``scale`` is float64 for either dtype of ``tile``. Serial on purpose: it runs between
    two BLAS calls whose threads are still spinning, and a parallel region competing
    with them was measured ~1.5x slower in all.
    """
    b, n = tile.shape
    za = np.empty(BLOCK, dtype=tile.dtype)
    bias_t = _typed(tile, bias)
    for r in range(b):
        row = tile[r]
        nj = min(n, row0 + r + 1) if causal else n
        scale[r] = 1.0
        if kind == SIGMOID:
            for j in range(nj):
                row[j] += bias_t
            for j0 in range(0, nj, BLOCK):
                j1 = min(nj, j0 + BLOCK)
                _sigmoid_block(row[j0:j1], za, colw[j0:j1])
        else:
            head = row[:nj]
            cw = colw[:nj]
            for j in range(nj):
                head[j] += cw[j]
            mx = _max(head)
            if kind == SOFTMAX:
                total = 0.0
                for j0 in range(0, nj, BLOCK):  # block sums into float64, as in the rows
                    blk = head[j0 : min(nj, j0 + BLOCK)]
                    s = _typed(row, 0.0)
                    for j in range(blk.shape[0]):
                        w = _exp(blk[j] - mx)
                        blk[j] = w
                        s += w
                    total += s
                scale[r] = 1.0 / total
            else:
                _exp_block(head, mx)
                scale[r] = np.exp(np.float64(mx))
        for j in range(nj, n):
            row[j] = 0.0
    return tile


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def exp_shifted(tile, shift):
    """tile <- exp(tile - shift) in place (a C-contiguous 2-D float64 tile, tile <= shift):
    the weights of the BLAS tiles of the symmetric pairs."""
    for r in range(tile.shape[0]):
        _exp_block(tile[r], shift)
    return tile


# -- Sinkhorn ---------------------------------------------------------------------------
@numba.njit(inline="always")
def _lse_row(qx, kyT, colw, out, i, novals, nostats, buf, acc):
    m, total = _row_sums(qx, i, kyT, novals, colw, kyT.shape[1], buf, acc, nostats, -np.inf)
    out[i] = m + np.log(total)


@numba.njit(**_JIT)
def _lse_rows(qx, kyT, colw, out):
    """out_i = log sum_j exp(<qx_i, ky_j> + colw_j)."""
    novals = np.empty((0, kyT.shape[1]), dtype=kyT.dtype)
    nostats = np.empty((3, 1))  # online rows only (Sinkhorn potentials take any beta)
    m = qx.shape[0]
    chunks = _n_chunks(m)
    for c in numba.prange(chunks):
        buf, acc = _scratch(qx, 0)
        for i in range(c, m, chunks):
            _lse_row(qx, kyT, colw, out, i, novals, nostats, buf, acc)
    return out


@numba.njit(**_SERIAL)
def _lse_rows_serial(qx, kyT, colw, out):
    """:func:`_lse_rows` on the calling thread only."""
    novals = np.empty((0, kyT.shape[1]), dtype=kyT.dtype)
    nostats = np.empty((3, 1))  # online rows only (Sinkhorn potentials take any beta)
    buf, acc = _scratch(qx, 0)
    for i in range(qx.shape[0]):
        _lse_row(qx, kyT, colw, out, i, novals, nostats, buf, acc)
    return out
@numba.njit(cache=True, nogil=True)
def sinkhorn_potentials(qx, kyT, qxT, ky, loga, n_iter, tol, serial):
    """Log-domain Sinkhorn scaling of exp(<qx_i, ky_j>) to marginals a on both sides.

    ``qxT`` and ``ky`` are the transposes of ``qx`` and ``kyT`` (column sums are row
    sums of the transposed problem). Each sweep first makes the row sums exact (``f``
    update), then measures the column error ``err = max_j |log(colsum_j / a_j)|`` of
    that plan; it stops when ``err <= tol`` or after ``n_iter`` sweeps, otherwise it
    updates ``g``. The plan ``pi_ij = exp(f_i + g_j + <qx_i, ky_j> + loga_i + loga_j)``
    thus has exact row sums ``a_i`` and column sums within a factor ``exp(err)`` of
    ``a_j``; with ``n_iter = 1`` it is the softmax plan. Returns ``(f, g, n_done, err)``.
    The row sweeps run in parallel unless ``serial``.
    """
    m = qx.shape[0]
    n = ky.shape[0]
    f = np.zeros(m)
    g = np.zeros(n)
    lse_r = np.empty(m)
    lse_c = np.empty(n)
    colw = np.empty(n)
    roww = np.empty(m)
    err = np.inf
    n_done = 0
    for it in range(n_iter):
        for j in range(n):
            colw[j] = g[j] + loga[j]
        if serial:
            _lse_rows_serial(qx, kyT, colw, lse_r)
        else:
            _lse_rows(qx, kyT, colw, lse_r)
        for i in range(m):
            f[i] = -lse_r[i]
            roww[i] = f[i] + loga[i]
        if serial:
            _lse_rows_serial(ky, qxT, roww, lse_c)
        else:
            _lse_rows(ky, qxT, roww, lse_c)
        err = 0.0
        for j in range(n):
            err = max(err, abs(lse_c[j] + g[j]))
        n_done = it + 1
        if err <= tol:
            break
        if it + 1 < n_iter:
            for j in range(n):
                g[j] = -lse_c[j]
    return f, g, n_done, err
