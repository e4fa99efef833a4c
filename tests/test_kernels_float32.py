"""Exact kernels: the exponential and maximum primitives, the float32 path and its bound.

The float32 bound is the one stated in :meth:`transformer_pde.Attention.velocity`:

    |A32_i - A_i|_inf / sum_j |W_ij| |V x_j|_inf <= (BLOCK + 5 + (k + 5) L) eps32,

with L = beta max|Q x_i| max|K x_j| + max log(max a / a_j). Its terms: a float32 block
sum of at most BLOCK terms (BLOCK / 2 roundings relative to the sum of absolute values,
worst case; the softmax quotient doubles the weights' relative error), the logits (k + 1
products and sums of size at most L, plus the rounding of the inputs), the exponential
(2 eps32 measured below) and the values. The tile path (k + d > 48) sums with float32
BLAS products: BLOCK is replaced by n.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from conftest import random_sphere

import transformer_pde as tp
from transformer_pde._kernels import attention as K

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


@numba.njit(cache=True)
def _exp_of(z):
    out = z.copy()
    K._exp_block(out, K._typed(out, 0.0))
    return out


@numba.njit(cache=True)
def _max_of(z):
    return K._max(z)


# -- primitives -------------------------------------------------------------------------
def test_exp_float64_relative_error_over_the_whole_range():
    z = np.concatenate([np.linspace(-708.3, 0.0, 400_001), -np.geomspace(1e-300, 1.0, 2001)])
    got = _exp_of(z)
    rel = np.abs(got / np.exp(z) - 1.0)
    # polynomial 3e-18 + Horner rounding (~1 ulp of a value in [0.7, 1.4]) + the
    # reduction r = z - k ln2 (split ln2, FMA): measured 2.3e-16; 2 eps leaves a margin
    assert rel.max() <= 2 * EPS64


def test_exp_float32_relative_error_over_the_whole_range():
    z = np.linspace(-87.3, 0.0, 200_001).astype(np.float32)
    got = _exp_of(z).astype(np.float64)
    rel = np.abs(got / np.exp(z.astype(np.float64)) - 1.0)
    # degree-6 polynomial 2e-9, float32 Horner rounding ~1 ulp: 2 eps32
    assert rel.max() <= 2 * EPS32


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_exp_is_exactly_zero_far_below_and_one_at_zero(dtype):
    limit = -708.8 if dtype == np.float64 else -87.9  # 2^-1022.5, 2^-126.5
    z = np.array([0.0, limit, 10 * limit, -np.inf], dtype=dtype)
    got = _exp_of(z)
    assert got[0] == 1.0
    assert np.all(got[1:] == 0.0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_max_is_exact_for_any_signs(dtype, rng):
    for z in (rng.normal(size=1001), -np.abs(rng.normal(size=7)) - 1e3,
              np.array([-np.inf, -np.inf, -3.0]), np.array([-np.inf]), np.array([0.0, -0.0])):
        z = z.astype(dtype)
        assert _max_of(z) == z.max()


# -- float32 path -----------------------------------------------------------------------
def _bound_ratio(att, x, v32, weights=None):
    """max_i error_i / sum_j |W_ij| |V x_j|_inf against the float64 kernel, and L."""
    v64 = att.velocity(x, weights)
    vx = x if att.V is None else x @ att.V.T
    denom = np.abs(att.matrix(x, weights)) @ np.abs(vx).max(axis=1)
    err = (np.abs(v32.astype(np.float64) - v64).max(axis=1) / denom).max()
    qx = att.beta * (x if att.Q is None else x @ att.Q.T)
    kx = x if att.K is None else x @ att.K.T
    L = np.linalg.norm(qx, axis=1).max() * np.linalg.norm(kx, axis=1).max()
    if weights is not None:
        w = np.asarray(weights, float)
        L += np.log(w.max() / w[w > 0].min())
    return err, L, qx.shape[1]


def _clustered(rng, n, d, spread):
    """Tokens on the sphere concentrated around one point (the hardest case for large beta)."""
    x = np.zeros((n, d))
    x[:, 0] = 1.0
    x += spread * rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


CASES = {
    "softmax": lambda b: tp.SoftmaxAttention(b),
    "causal": lambda b: tp.SoftmaxAttention(b, causal=True),
    "usa": lambda b: tp.UnnormalizedAttention(b),
    "l2": lambda b: tp.L2Attention(b),
    "sigmoid": lambda b: tp.SigmoidAttention(b, bias=-0.5),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("beta", [1.0, 50.0])
@pytest.mark.parametrize("data", ["sphere", "cluster", "mass"])
def test_float32_error_within_stated_bound(name, beta, data, rng):
    n, d = 1300, 3  # three blocks of sources, the last one partial
    x = _clustered(rng, n, d, 0.05) if data == "cluster" else random_sphere(rng, n, d)
    weights = rng.uniform(0.1, 1.0, size=n) if data == "mass" else None
    att = CASES[name](beta)
    v32 = att.velocity(x, weights, dtype=np.float32)
    assert v32.dtype == np.float32
    err, L, k = _bound_ratio(att, x, v32, weights)
    assert err <= (K.BLOCK + 5 + (k + 5) * L) * EPS32


@pytest.mark.parametrize("name", ["softmax", "usa", "sigmoid"])
def test_float32_tile_path_within_stated_bound(name, rng):
    n, d = 700, 64  # k + d > 48: BLAS tiles (float32 products)
    x = random_sphere(rng, n, d)
    att = CASES[name](4.0)
    v32 = att.velocity(x, dtype=np.float32)
    assert v32.dtype == np.float32
    err, L, k = _bound_ratio(att, x, v32)
    assert err <= (n + 5 + (k + 5) * L) * EPS32


def test_float32_with_matrices_and_weights(rng):
    d = 3
    mats = {m: rng.normal(size=(d, d)) / np.sqrt(d) for m in "QKV"}
    x = random_sphere(rng, 900, d)
    w = rng.uniform(0.0, 1.0, size=900)
    w[5] = 0.0
    for att in (tp.SoftmaxAttention(3.0, **mats), tp.UnnormalizedAttention(3.0, **mats)):
        err, L, k = _bound_ratio(att, x, att.velocity(x, w, dtype=np.float32), w)
        assert err <= (K.BLOCK + 5 + (k + 5) * L) * EPS32


@pytest.mark.parametrize("name", ["softmax", "causal", "usa", "l2", "sigmoid", "sinkhorn", "multihead"])
def test_private_velocity_keeps_float32(name, rng):
    x = random_sphere(rng, 80, 3)
    heads = [tp.SoftmaxAttention(2.0), tp.SinkhornAttention(2.0), tp.SigmoidAttention(1.0)]
    att = {**{k: f(2.0) for k, f in CASES.items()}, "sinkhorn": tp.SinkhornAttention(2.0),
           "multihead": tp.MultiHeadAttention(heads)}[name]
    w = np.full(80, 1 / 80)
    v32 = att._velocity(x.astype(np.float32), w)
    assert v32.dtype == np.float32 and v32.shape == (80, 3)
    v64 = att._velocity(x, w)
    assert v64.dtype == np.float64
    # L <= beta = 2 on the sphere, k = 3: well inside the stated bound (Sinkhorn: rounding)
    assert np.max(np.abs(v32 - v64)) <= (K.BLOCK + 5 + 8 * 2.0) * EPS32 * np.abs(x).max() * 3


def test_float32_overflow_is_reported():
    x = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    att = tp.UnnormalizedAttention(120.0)  # e^120 ~ 1e52 > float32 max 3.4e38
    assert np.all(np.isfinite(att.velocity(x)))
    with pytest.raises(FloatingPointError, match="overflows float32"):
        att.velocity(x, dtype=np.float32)


@pytest.mark.parametrize("dtype, exc, match", [
    (np.int32, ValueError, "dtype must be np.float64, np.float32 or None, got int32"),
    (np.float16, ValueError, "got float16"),
    ("banana", TypeError, "dtype must be np.float64, np.float32 or None, got 'banana'"),
])
def test_bad_dtype(dtype, exc, match):
    with pytest.raises(exc, match=match):
        tp.SoftmaxAttention(1.0).velocity(np.eye(3), dtype=dtype)


def test_float64_dtype_is_the_default(rng):
    x = random_sphere(rng, 50, 3)
    att = tp.SoftmaxAttention(1.5)
    np.testing.assert_array_equal(att.velocity(x, dtype=np.float64), att.velocity(x))


@pytest.mark.slow  # ~3 s each: the batched kernels compile their float32 versions on each run
@pytest.mark.parametrize("att", [tp.SoftmaxAttention(2.0), tp.UnnormalizedAttention(2.0),
                                 tp.SigmoidAttention(2.0), tp.SoftmaxAttention(np.array([1.0, 3.0]))],
                         ids=["softmax", "usa", "sigmoid", "batched-beta"])
def test_batch_of_float32_states_stays_float32(att, rng):
    x = np.stack([random_sphere(rng, 300, 3) for _ in range(2)])
    w = np.full(300, 1 / 300)
    v64 = att._velocity_batch(x, w)
    v32 = att._velocity_batch(x.astype(np.float32), w)
    assert v32.dtype == np.float32 and v32.shape == v64.shape
    # the single-system bound with L <= beta = 3, k = 3, relative to max |V x_j| = 1
    # (softmax), to the largest attention sum (usa: <= e^3, sigmoid: <= 1)
    scale = np.exp(3.0) if isinstance(att, tp.UnnormalizedAttention) else 1.0
    assert np.max(np.abs(v32 - v64)) <= (K.BLOCK + 5 + 8 * 3.0) * EPS32 * scale


def _anti_aligned(rng, n, dtype):
    """Targets near the south pole, sources near the north pole: every logit is near
    -beta while the one-pass bound is +beta, so the gap b_i - m_i is ~2 beta (realised)."""
    north = np.array([0.0, 0.0, 1.0])
    y = north + 0.05 * rng.normal(size=(n, 3))
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    x = -north + 0.05 * rng.normal(size=(n, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(dtype), y.astype(dtype)


@pytest.mark.parametrize("dtype, gap", [(np.float64, K._GAP64), (np.float32, K._GAP32)])
@pytest.mark.parametrize("side", [0.95, 1.05], ids=["one-pass", "online"])
def test_one_pass_rows_agree_with_online_rows_at_the_gap_limit(dtype, gap, side, rng):
    # beta such that the realised gap b_i - m_i is just below (one pass with shift b_i)
    # or just above (online row) the limit; both must give the online row's numbers
    n = 700  # two blocks: a partial block too
    x, y = _anti_aligned(rng, n, dtype)
    b_over_beta = 1.0  # |x_i| |y_j| = 1
    beta = side * gap / (2.0 * b_over_beta)
    qx, kyT = (beta * x).astype(dtype), np.ascontiguousarray(y.T)
    colw = np.log(rng.uniform(0.5, 1.0, size=n)).astype(dtype)
    colw -= colw.max()
    stats = K._source_stats(kyT, colw, False)
    buf, acc, acc_online = np.empty(K.BLOCK, dtype=dtype), np.empty(3), np.empty(3)
    for i in (0, n // 2, n - 1):
        m, total = K._row_sums(qx, i, kyT, kyT, colw, n, buf, acc, stats, np.inf)
        m_on, total_on = K._row_sums(qx, i, kyT, kyT, colw, n, buf, acc_online, stats, -np.inf)
        # the attained gap: one pass iff below the limit (this is the path under test)
        assert (m != m_on) == (side < 1.0)
        assert m - m_on <= gap
        # the shift cancels in the normalised sums; exp(m - m_on) rescales the raw ones.
        # Same weights up to the exponential's rounding and the shifted argument
        # (a few eps, relative to the rounding of logits of size beta)
        eps = float(np.finfo(dtype).eps)
        tol = 8 * eps * (1.0 + 2 * beta) if dtype == np.float64 else (K.BLOCK + 5 + 8 * 2 * beta) * eps
        np.testing.assert_allclose(acc / total, acc_online / total_on, rtol=0, atol=tol)
        np.testing.assert_allclose(total * np.exp(m - m_on), total_on, rtol=tol)


def test_one_pass_usa_rows_keep_exp_of_the_shift_finite(rng):
    # USA scales by exp(shift): above _EXP_TOP the row is summed online (exp(m) <= exp(b));
    # sources in a cap around the target: gap ~ 0.01 beta, far below _GAP64
    n = 64
    _, y = _anti_aligned(rng, n, np.float64)
    yT = np.ascontiguousarray(y.T)
    colw = np.zeros(n)
    stats = K._source_stats(yT, colw, False)
    buf, acc = np.empty(K.BLOCK), np.empty(3)
    north = np.array([[0.0, 0.0, 1.0]])
    for beta, one_pass in ((0.99 * K._EXP_TOP, True), (1.01 * K._EXP_TOP, False)):
        bound = stats[1, 0] + beta * stats[0, 0]
        m, _ = K._row_sums(beta * north, 0, yT, yT, colw, n, buf, acc, stats, K._EXP_TOP)
        assert (m == bound) == one_pass  # one pass: the shift is the bound itself
        assert m <= K._EXP_TOP or not one_pass
        assert m < bound or one_pass  # online: the attained maximum
