"""Numba kernels for attention velocity fields (private).

Every kernel works on *projected* inputs, so the O(n^2) work is only dot products of
length k and sums of length d:

- ``qx`` (m, k): ``beta * Q x_i`` for the m target points,
- ``kyT`` (k, n): ``K y_j`` for the n source points, transposed,
- ``vyT`` (d, n): ``V y_j`` for the n source points, transposed,
- ``colw`` (n,): an additive log-weight per source (log weight, L2 bias; ``-inf`` for a
  source of zero weight).

Each row kernel exists twice: ``name`` processes the targets in parallel
(``numba.prange``), ``name_serial`` on the calling thread only (no parallel region, so
no barrier at which threads spin for a busy core; ``nogil``); both inline the same row
function, so they give the same numbers. :mod:`transformer_pde._threads` chooses
between them per call. Each target fills a row buffer
of n logits (O(n) scratch per thread, never an n x n array), then works through it in
separate passes that LLVM vectorises: logits, maximum, shifted exponentials,
weighted sums. The exponential is a branch-free range-reduced Taylor polynomial
(``_exp_le0``, relative error < 3e-16 on [-700, 0]) because the scalar libm call does
not vectorise, and with ``fastmath={"reassoc", "contract"}`` so the reductions (sums,
maximum) vectorise too; this reorders sums (differences ~1e-16 relative to the NumPy
reference) but keeps IEEE infinities and NaNs. Softmax-type weights are shifted by the
row maximum (log-sum-exp), so logits of size 1e3 and more stay finite.

For larger k + d the logits are better computed by BLAS: :func:`weight_rows` turns a
(B, n) tile of logits into weights in place, and the caller multiplies tiles of B
targets at a time (memory O(B n)).

Kernels trust their inputs: validation happens in :mod:`transformer_pde.attention`.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "softmax_field",
    "softmax_field_serial",
    "weight_rows",
    "exp_field",
    "exp_field_serial",
    "sigmoid_field",
    "sigmoid_field_serial",
    "sinkhorn_potentials",
]

_JIT = dict(parallel=True, cache=True, fastmath={"reassoc", "contract"})
#: the same kernels compiled without a parallel region: no thread pool, no barrier (and
#: the numpy error model of the parallel ones: x / 0 gives inf or nan, not an exception)
_SERIAL = dict(parallel=False, nogil=True, cache=True, error_model="numpy",
               fastmath={"reassoc", "contract"})

_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471803691238  # ln 2 split in two so that k * _LN2_HI is exact
_LN2_LO = 1.9082149292705877e-10
_ZMIN = -700.0  # exp(-700) ~ 1e-304: below it a weight is set to exactly 0


@numba.njit(inline="always")
def _exp_le0(z):
    """(mantissa, exponent bits) with exp(z) = mantissa * 2^k for z in [_ZMIN, 0].

    z = k ln2 + r with |r| <= ln2 / 2; exp(r) by its Taylor polynomial of degree 12
    (remainder < r^13 / 13! < 2e-16). The caller builds 2^k from the returned biased
    exponent bits, which keeps the loop free of libm calls.
    """
    kf = np.floor(z * _LOG2E + 0.5)
    r = (z - kf * _LN2_HI) - kf * _LN2_LO
    p = 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    return p, (np.int64(kf) + 1023) << 52


@numba.njit(inline="always")
def _exp_shifted(buf, n, shift, bits):
    """buf[j] <- exp(buf[j] - shift) for j < n (0 where the argument is < _ZMIN); returns the sum."""
    for j in range(n):
        z = buf[j] - shift
        keep = z >= _ZMIN
        p, e = _exp_le0(max(z, _ZMIN))
        buf[j] = p if keep else 0.0
        bits[j] = e
    scale = bits.view(np.float64)
    total = 0.0
    for j in range(n):
        w = buf[j] * scale[j]
        buf[j] = w
        total += w
    return total


@numba.njit(inline="always")
def _logits_row(qx, i, kyT, colw, n, buf):
    """buf[j] <- colw[j] + <qx_i, ky_j> for j < n; returns max_j buf[j]."""
    for j in range(n):
        buf[j] = colw[j]
    for c in range(qx.shape[1]):
        q = qx[i, c]
        for j in range(n):
            buf[j] += q * kyT[c, j]
    mx = -np.inf
    for j in range(n):
        mx = max(mx, buf[j])
    return mx


@numba.njit(inline="always")
def _weighted_sum(buf, vyT, n, scale, out, i):
    """out[i, c] <- scale * sum_{j < n} buf[j] vyT[c, j]."""
    for c in range(vyT.shape[0]):
        s = 0.0
        for j in range(n):
            s += buf[j] * vyT[c, j]
        out[i, c] = s * scale


@numba.njit(inline="always")
def _softmax_row(qx, kyT, vyT, colw, causal, out, i, buf, bits):
    nj = i + 1 if causal else kyT.shape[1]
    mx = _logits_row(qx, i, kyT, colw, nj, buf)
    total = _exp_shifted(buf, nj, mx, bits)
    _weighted_sum(buf, vyT, nj, 1.0 / total, out, i)


@numba.njit(**_JIT)
def softmax_field(qx, kyT, vyT, colw, causal, out):
    """out_i = sum_j softmax_j(<qx_i, ky_j> + colw_j) vy_j, with j <= i if causal."""
    n = kyT.shape[1]
    for i in numba.prange(qx.shape[0]):
        _softmax_row(qx, kyT, vyT, colw, causal, out, i, np.empty(n), np.empty(n, dtype=np.int64))
    return out


@numba.njit(**_SERIAL)
def softmax_field_serial(qx, kyT, vyT, colw, causal, out):
    """:func:`softmax_field` on the calling thread only (releases the GIL)."""
    n = kyT.shape[1]
    buf, bits = np.empty(n), np.empty(n, dtype=np.int64)
    for i in range(qx.shape[0]):
        _softmax_row(qx, kyT, vyT, colw, causal, out, i, buf, bits)
    return out


#: what :func:`weight_rows` turns a tile of logits into
SOFTMAX, EXP, SIGMOID = 0, 1, 2


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def weight_rows(tile, colw, kind, bias, causal, row0, scale):
    """In place, row r of a (B, n) tile of logits <qx_i, ky_j> (i = row0 + r) becomes

    - SOFTMAX: softmax_j(tile[r, j] + colw[j]), scale[r] = 1;
    - EXP: exp(tile[r, j] + colw[j] - m_r), scale[r] = exp(m_r), m_r = max_j(...);
    - SIGMOID: colw[j] * sigmoid(tile[r, j] + bias) (colw holds the weights), scale[r] = 1;

    with sources j > i set to 0 if causal, so that ``out_i = scale_i * (tile @ vy)_i``.
    Serial on purpose: it runs between two BLAS calls whose threads are still spinning,
    and a parallel region competing with them was measured ~1.5x slower in all.
    """
    b, n = tile.shape
    bits = np.empty(n, dtype=np.int64)
    zabs = np.empty(n)
    for r in range(b):
        row = tile[r]
        nj = min(n, row0 + r + 1) if causal else n
        scale[r] = 1.0
        if kind == SIGMOID:
            for j in range(nj):
                row[j] += bias
                zabs[j] = -abs(row[j])
            _exp_shifted(zabs, nj, 0.0, bits)
            for j in range(nj):
                e = zabs[j]
                row[j] = colw[j] * (1.0 / (1.0 + e) if row[j] >= 0.0 else e / (1.0 + e))
        else:
            mx = -np.inf
            for j in range(nj):
                row[j] += colw[j]
                mx = max(mx, row[j])
            total = _exp_shifted(row, nj, mx, bits)
            if kind == SOFTMAX:
                inv = 1.0 / total
                for j in range(nj):
                    row[j] *= inv
            else:
                scale[r] = np.exp(mx)
        for j in range(nj, n):
            row[j] = 0.0
    return tile


@numba.njit(inline="always")
def _sigmoid_row(qx, kyT, vyT, bias, weights, out, i, buf, zabs, bits):
    n = kyT.shape[1]
    for j in range(n):
        buf[j] = bias
    for c in range(qx.shape[1]):
        q = qx[i, c]
        for j in range(n):
            buf[j] += q * kyT[c, j]
    for j in range(n):
        zabs[j] = -abs(buf[j])
    _exp_shifted(zabs, n, 0.0, bits)  # e = exp(-|z|) <= 1, no overflow
    for j in range(n):
        e = zabs[j]
        s = 1.0 / (1.0 + e) if buf[j] >= 0.0 else e / (1.0 + e)
        buf[j] = weights[j] * s
    _weighted_sum(buf, vyT, n, 1.0, out, i)


@numba.njit(**_JIT)
def sigmoid_field(qx, kyT, vyT, bias, weights, out):
    """out_i = sum_j weights_j sigmoid(<qx_i, ky_j> + bias) vy_j, sigmoid(z) = 1 / (1 + e^-z)."""
    n = kyT.shape[1]
    for i in numba.prange(qx.shape[0]):
        _sigmoid_row(qx, kyT, vyT, bias, weights, out, i, np.empty(n), np.empty(n),
                     np.empty(n, dtype=np.int64))
    return out


@numba.njit(**_SERIAL)
def sigmoid_field_serial(qx, kyT, vyT, bias, weights, out):
    """:func:`sigmoid_field` on the calling thread only (releases the GIL)."""
    n = kyT.shape[1]
    buf, zabs, bits = np.empty(n), np.empty(n), np.empty(n, dtype=np.int64)
    for i in range(qx.shape[0]):
        _sigmoid_row(qx, kyT, vyT, bias, weights, out, i, buf, zabs, bits)
    return out


@numba.njit(inline="always")
def _lse_row(qx, kyT, colw, out, i, buf, bits):
    n = kyT.shape[1]
    mx = _logits_row(qx, i, kyT, colw, n, buf)
    out[i] = mx + np.log(_exp_shifted(buf, n, mx, bits))


@numba.njit(**_JIT)
def _lse_rows(qx, kyT, colw, out):
    """out_i = log sum_j exp(<qx_i, ky_j> + colw_j)."""
    n = kyT.shape[1]
    for i in numba.prange(qx.shape[0]):
        _lse_row(qx, kyT, colw, out, i, np.empty(n), np.empty(n, dtype=np.int64))
    return out


@numba.njit(**_SERIAL)
def _lse_rows_serial(qx, kyT, colw, out):
    """:func:`_lse_rows` on the calling thread only."""
    n = kyT.shape[1]
    buf, bits = np.empty(n), np.empty(n, dtype=np.int64)
    for i in range(qx.shape[0]):
        _lse_row(qx, kyT, colw, out, i, buf, bits)
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


@numba.njit(inline="always")
def _exp_row(qx, kyT, vyT, colw, out, i, buf, bits):
    n = kyT.shape[1]
    mx = _logits_row(qx, i, kyT, colw, n, buf)
    _exp_shifted(buf, n, mx, bits)
    _weighted_sum(buf, vyT, n, np.exp(mx), out, i)


@numba.njit(**_JIT)
def exp_field(qx, kyT, vyT, colw, out):
    """out_i = sum_j exp(<qx_i, ky_j> + colw_j) vy_j, unnormalised (USA).

    Summed with the row maximum m_i factored out, then scaled by exp(m_i).
    """
    n = kyT.shape[1]
    for i in numba.prange(qx.shape[0]):
        _exp_row(qx, kyT, vyT, colw, out, i, np.empty(n), np.empty(n, dtype=np.int64))
    return out


@numba.njit(**_SERIAL)
def exp_field_serial(qx, kyT, vyT, colw, out):
    """:func:`exp_field` on the calling thread only (releases the GIL)."""
    n = kyT.shape[1]
    buf, bits = np.empty(n), np.empty(n, dtype=np.int64)
    for i in range(qx.shape[0]):
        _exp_row(qx, kyT, vyT, colw, out, i, buf, bits)
    return out
