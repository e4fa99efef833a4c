"""Attention variants: Numba kernels vs NumPy references, closed forms, symmetries, checks.

Every test compares against mathematics computed here by hand (docs/math.md §1.1, 2.1, 3.1,
5.2), not only against the package's own reference.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import random_sphere

import transformer_pde as tp

EPS = np.finfo(float).eps
VARIANTS = ("softmax", "causal", "usa", "l2", "sigmoid", "sinkhorn", "multihead")
NON_CAUSAL = ("softmax", "usa", "l2", "sigmoid", "sinkhorn", "multihead")
DIMS = (1, 2, 3, 5)


# -- helpers ---------------------------------------------------------------------------
def _mats(rng, d, k=None, identity=False):
    """Random Q, K of shape (k, d) and V of shape (d, d), entries N(0, 1/d)."""
    if identity:
        return {}
    k = d if k is None else k
    return {
        "Q": rng.normal(size=(k, d)) / np.sqrt(d),
        "K": rng.normal(size=(k, d)) / np.sqrt(d),
        "V": rng.normal(size=(d, d)) / np.sqrt(d),
    }


def make_attention(name, d, rng, beta=1.0, identity=False, causal_head=True, **kw):
    """One attention object per variant name; multihead mixes variants and (k, d) blocks."""
    m = lambda k=None: _mats(rng, d, k, identity)  # noqa: E731
    if name == "softmax":
        return tp.SoftmaxAttention(beta, **m(), **kw)
    if name == "causal":
        return tp.SoftmaxAttention(beta, causal=True, **m(), **kw)
    if name == "usa":
        return tp.UnnormalizedAttention(beta, **m(), **kw)
    if name == "l2":
        return tp.L2Attention(beta, **m(), **kw)
    if name == "sigmoid":
        return tp.SigmoidAttention(beta, bias=kw.pop("bias", -0.7), **m(), **kw)
    if name == "sinkhorn":
        return tp.SinkhornAttention(beta, **m(), **kw)
    if name == "multihead":
        heads = [
            tp.SoftmaxAttention(beta, **m(d + 1)),  # rectangular (k, d) blocks, k > d
            tp.UnnormalizedAttention(0.5 * beta, **m(max(1, d - 1))),
            tp.L2Attention(beta, **m(2)),
            tp.SigmoidAttention(beta, bias=0.4, **m(1)),
            tp.SinkhornAttention(beta, **m(d + 2)),
        ]
        if causal_head:
            heads.append(tp.SoftmaxAttention(beta, causal=True, **m()))
        return tp.MultiHeadAttention(heads)
    raise AssertionError(name)


def make_tokens(kind, rng, n, d):
    return random_sphere(rng, n, d) if kind == "sphere" else rng.normal(size=(n, d))


def make_mass(rng, n):
    """Non-uniform masses with two zeros (not at index 0: a causal row 0 needs a source)."""
    mass = rng.uniform(0.2, 2.0, size=n)
    mass[[3, 7]] = 0.0
    return mass


def rel_err(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


def values(att, x):
    """V x_j as rows, shape (n, d)."""
    return x if att.V is None else x @ att.V.T


def hand_logits(att, x):
    """beta <Q x_i, K x_j> computed from the definition."""
    qx = x if att.Q is None else x @ att.Q.T
    kx = x if att.K is None else x @ att.K.T
    return att.beta * np.einsum("ic,jc->ij", qx, kx)


def random_orthogonal(rng, d):
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))[None, :]


# -- 1. kernel vs reference --------------------------------------------------------------
@pytest.mark.parametrize("weighted", [False, True], ids=["uniform", "mass"])
@pytest.mark.parametrize("kind", ["sphere", "euclidean"])
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("name", VARIANTS)
def test_kernel_matches_reference(name, d, kind, weighted, rng):
    n = 24
    att = make_attention(name, d, rng)
    x = make_tokens(kind, rng, n, d)
    mass = make_mass(rng, n) if weighted else None
    v = att.velocity(x, weights=mass)
    v_ref = att.velocity_reference(x, weights=mass)
    assert v.shape == (n, d) and np.all(np.isfinite(v))
    # same sums in a different order (online log-sum-exp vs dense): ~ n eps relative
    assert rel_err(v, v_ref) <= 1e-12


def _count_pairs_kernel(monkeypatch):
    """Count the calls of the symmetric-pairs kernels (compiled, and the BLAS tiles' weights)."""
    from transformer_pde._kernels import attention as k

    calls = []  # True: the pairs did the work; False: the compiled kernel declined

    def spy(*args, _real):
        out = _real(*args)
        calls.append(out if isinstance(out, bool) else True)
        return out

    for name in ("symmetric_field", "symmetric_field_serial", "exp_shifted"):
        real = getattr(k, name)
        monkeypatch.setattr(k, name, lambda *a, _real=real: spy(*a, _real=_real))
    return calls


@pytest.mark.parametrize("n", [2, 3, 33, 600])  # 600 > BLOCK: rows of several blocks
@pytest.mark.parametrize("case", ["sa-circle", "usa-sphere", "l2-plane", "sa-AtA", "sa-cluster-1e3",
                                  "sa-d64-tiles", "usa-d64-tiles"])
def test_symmetric_pairs_kernel_matches_reference(case, n, monkeypatch, rng):
    """Targets = sources and Q^T K symmetric: each pair's weight is computed once
    (docs/math.md §9.14). Against the dense reference and the generic kernel (targets a
    copy of the sources), with zero and unequal weights; the cluster at beta = 1e3 is the
    hardest case of the shared shift (every weight but the near-diagonal ones underflows)."""
    d = 3 if case in ("usa-sphere", "sa-cluster-1e3") else 64 if "d64" in case else 2
    x = random_sphere(rng, n, d)
    if case == "sa-d64-tiles":  # k + d = 128: BLAS tiles, 600 = two full tiles and a part
        att = tp.SoftmaxAttention(4.0)
    elif case == "usa-d64-tiles":
        att = tp.UnnormalizedAttention(2.0)
    elif case == "sa-circle":
        att = tp.SoftmaxAttention(3.0, summation="exact")
    elif case == "usa-sphere":
        att = tp.UnnormalizedAttention(2.0, V=rng.normal(size=(d, d)), summation="exact")
    elif case == "l2-plane":
        att, x = tp.L2Attention(1.5), rng.normal(size=(n, d))
    elif case == "sa-AtA":  # Q = K = A: Q^T K = A^T A, symmetric bit for bit
        a = rng.normal(size=(d, d))
        att, x = tp.SoftmaxAttention(1.0, Q=a, K=a, summation="exact"), rng.normal(size=(n, d))
    else:
        x = x[0] + 1e-3 * rng.normal(size=(n, d))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        att = tp.SoftmaxAttention(1e3, summation="exact")
    mass = rng.uniform(0.2, 2.0, size=n)
    mass[n // 2] = 0.0
    calls = _count_pairs_kernel(monkeypatch)
    v = att.velocity(x, weights=mass)
    assert calls and all(calls)  # the symmetric pairs did this one
    done = len(calls)
    generic = att._exact_field(x, x.copy(), mass / mass.sum())  # not the same array: generic rows
    assert len(calls) == done
    # sums of up to n terms in other orders: ~ n eps relative (600 eps ~ 1.3e-13)
    assert rel_err(v, att.velocity_reference(x, weights=mass)) <= 1e-12
    assert rel_err(v, generic) <= 1e-12


def test_symmetric_pairs_kernel_hands_over_where_the_shared_shift_fails(monkeypatch, rng):
    """Tokens of very different norms in R^2 at beta = 50: one shift for all rows would
    leave the small tokens' rows below exp(-600), so the generic rows do it."""
    x = np.concatenate([rng.normal(size=(20, 2)), 5.0 * rng.normal(size=(20, 2))])
    att = tp.SoftmaxAttention(50.0)
    calls = _count_pairs_kernel(monkeypatch)
    v = att.velocity(x)
    assert not any(calls)
    assert rel_err(v, att.velocity_reference(x)) <= 1e-12


@pytest.mark.parametrize("name", VARIANTS)
def test_zero_mass_tokens_do_not_act(name, rng):
    """A source of mass 0 has no influence: dropping it leaves every other velocity."""
    n, d = 12, 3
    att = make_attention(name, d, rng)
    x = rng.normal(size=(n, d))
    mass = rng.uniform(0.5, 1.5, size=n)
    mass[n - 1] = 0.0  # the last token: for causal attention it is nobody's predecessor
    full = att.velocity(x, weights=mass)
    dropped = att.velocity(x[:-1], weights=mass[:-1])
    # identical sums up to summation order: ~ n eps relative
    assert rel_err(full[:-1], dropped) <= 1e-13


# -- 2. closed forms of the weights -------------------------------------------------------
@pytest.mark.parametrize("weighted", [False, True], ids=["uniform", "mass"])
def test_softmax_weights_closed_form(weighted, rng):
    n, d = 16, 3
    att = make_attention("softmax", d, rng, beta=2.0)
    x = rng.normal(size=(n, d))
    mass = make_mass(rng, n) if weighted else np.ones(n)
    w = att.matrix(x, weights=mass if weighted else None)
    a = mass / mass.sum()
    e = a[None, :] * np.exp(hand_logits(att, x))
    # a few flops per entry: round-off ~ 10 eps
    np.testing.assert_allclose(w, e / e.sum(axis=1, keepdims=True), rtol=1e-13, atol=0)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=0, atol=1e-14)  # n eps
    assert np.all(w[:, a > 0] > 0) and np.all(w[:, a == 0] == 0)
    # velocity is the weighted sum of the values, by definition
    np.testing.assert_allclose(  # n eps relative (different summation order)
        att.velocity(x, weights=mass), w @ values(att, x), rtol=1e-13, atol=1e-14
    )


def test_causal_weights_closed_form(rng):
    n, d = 10, 2
    att = make_attention("causal", d, rng, beta=1.5)
    x = rng.normal(size=(n, d))
    w = att.matrix(x)
    assert np.all(np.triu(w, k=1) == 0.0)
    np.testing.assert_array_equal(w[0], np.eye(n)[0])
    e = np.tril(np.exp(hand_logits(att, x)))
    np.testing.assert_allclose(w, e / e.sum(axis=1, keepdims=True), rtol=1e-13, atol=0)  # 10 eps
    # token i sees only tokens j <= i: changing a later token leaves it unchanged (exactly)
    y = x.copy()
    y[6:] = rng.normal(size=(n - 6, d))
    np.testing.assert_array_equal(att.velocity(y)[:6], att.velocity(x)[:6])


def test_usa_weights_closed_form(rng):
    n, d = 16, 3
    att = make_attention("usa", d, rng, beta=1.3)
    x = rng.normal(size=(n, d))
    mass = make_mass(rng, n)
    a = mass / mass.sum()
    w = att.matrix(x, weights=mass)
    # exp: ~10 eps
    np.testing.assert_allclose(w, a[None, :] * np.exp(hand_logits(att, x)), rtol=1e-13, atol=0)
    # the uniform case is v_i = (1/n) sum_j exp(logit_ij) V x_j (docs/math.md §2.1)
    v = att.velocity(x)
    np.testing.assert_allclose(  # n eps relative
        v, np.exp(hand_logits(att, x)) @ values(att, x) / n, rtol=1e-12, atol=1e-14
    )


def test_sigmoid_weights_closed_form(rng):
    n, d, bias = 16, 3, -0.8
    att = make_attention("sigmoid", d, rng, beta=1.7, bias=bias)
    x = rng.normal(size=(n, d))
    mass = make_mass(rng, n)
    a = mass / mass.sum()
    w = att.matrix(x, weights=mass)
    by_hand = a[None, :] / (1.0 + np.exp(-(hand_logits(att, x) + bias)))
    np.testing.assert_allclose(w, by_hand, rtol=1e-13, atol=0)  # exp and a division: ~10 eps
    np.testing.assert_allclose(  # n eps relative
        att.velocity(x, weights=mass), by_hand @ values(att, x), rtol=1e-12, atol=1e-14
    )


def _plain_sinkhorn(kmat, a, n_sweeps=5000):
    """Multiplicative Sinkhorn: u, v with diag(u) K diag(a v) row-stochastic, a-balanced."""
    u = np.ones(len(a))
    v = np.ones(len(a))
    for _ in range(n_sweeps):
        u = 1.0 / (kmat @ (a * v))
        v = 1.0 / (kmat.T @ (a * u))
    u = 1.0 / (kmat @ (a * v))  # rows exact, as in the package's convention
    return u, v


@pytest.mark.parametrize("kind", ["sphere", "euclidean"])
def test_sinkhorn_doubly_stochastic_and_scaling(kind, rng):
    n, d = 20, 3
    att = make_attention("sinkhorn", d, rng, beta=1.5)
    x = make_tokens(kind, rng, n, d)
    w = att.matrix(x)
    assert att.last_status[1] <= att.tol
    # rows exact by construction, columns to the stopping tol 1e-13 of the log marginal
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, rtol=0, atol=1e-12)
    # W = diag(u) exp(L) diag(v): the log-ratio is f_i + g_j, so exp(L) ./ ... is rank one
    ratio = w / np.exp(hand_logits(att, x))
    outer = np.outer(ratio[:, 0], ratio[0, :]) / ratio[0, 0]
    np.testing.assert_allclose(ratio, outer, rtol=1e-12, atol=0)  # 3 products of ~eps-exact numbers
    # and u, v are those of an independent plain Sinkhorn iteration on exp(L)
    kmat = np.exp(hand_logits(att, x))
    a = np.full(n, 1.0 / n)
    u, v = _plain_sinkhorn(kmat, a)
    # both are the unique scaling up to tol 1e-13 in log marginal: ~1e-13 relative difference
    np.testing.assert_allclose(w, u[:, None] * kmat * (a * v)[None, :], rtol=1e-12, atol=0)


def test_sinkhorn_weighted_marginals(rng):
    """With masses a: rows of W sum to 1 and a^T W = a (both marginals of the plan are a)."""
    n, d = 20, 2
    att = make_attention("sinkhorn", d, rng)
    x = rng.normal(size=(n, d))
    mass = make_mass(rng, n)
    a = mass / mass.sum()
    w = att.matrix(x, weights=mass)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=0, atol=1e-12)  # rows exact: n eps
    np.testing.assert_allclose(a @ w, a, rtol=1e-12, atol=0)  # log-marginal tol 1e-13
    u, v = _plain_sinkhorn(np.exp(hand_logits(att, x)), a)
    np.testing.assert_allclose(  # unique scaling, both to ~1e-13
        w, u[:, None] * np.exp(hand_logits(att, x)) * (a * v)[None, :], rtol=1e-12, atol=0
    )


@pytest.mark.parametrize("kind", ["sphere", "euclidean"])
def test_sinkhorn_one_sweep_is_softmax(kind, rng):
    n, d = 16, 3
    mats = _mats(rng, d)
    x = make_tokens(kind, rng, n, d)
    mass = make_mass(rng, n)
    sink = tp.SinkhornAttention(1.2, n_iter=1, tol=10.0, **mats)  # tol so large: no warning
    soft = tp.SoftmaxAttention(1.2, **mats)
    # one row normalisation of exp(L) is the softmax: same numbers, other order (~10 eps)
    np.testing.assert_allclose(sink.matrix(x, mass), soft.matrix(x, mass), rtol=1e-14, atol=1e-300)
    assert rel_err(sink.velocity(x, mass), soft.velocity(x, mass)) <= 1e-14


def test_sinkhorn_not_converged_warns_and_records(rng):
    n, d = 16, 3
    att = make_attention("sinkhorn", d, rng, n_iter=2)
    x = rng.normal(size=(n, d))
    with pytest.warns(tp.SinkhornConvergenceWarning, match="n_iter=2"):
        w = att.matrix(x)
    sweeps, err = att.last_status
    assert sweeps == 2 and err > att.tol
    # the reported error is the column log-marginal error of the returned matrix (1/n mass)
    assert abs(np.max(np.abs(np.log(w.sum(axis=0)))) - err) <= 1e-12  # n eps on the sums
    with pytest.warns(tp.SinkhornConvergenceWarning, match="did not converge"):
        att.velocity(x)
    assert att.last_status[0] == 2 and att.last_status[1] > att.tol
    # with the default budget it converges, and says so in last_status
    good = tp.SinkhornAttention(att.beta, Q=att.Q, K=att.K, V=att.V)
    good.velocity(x)
    assert good.last_status[0] < good.n_iter and good.last_status[1] <= good.tol


@pytest.mark.parametrize("d", (2, 3, 5))
def test_l2_equals_softmax_on_sphere(d, rng):
    """|x_i - x_j|^2 = 2 - 2<x_i, x_j> on the sphere: the constant cancels in the softmax."""
    n = 20
    x = random_sphere(rng, n, d)
    mass = make_mass(rng, n)
    V = rng.normal(size=(d, d)) / np.sqrt(d)
    l2 = tp.L2Attention(3.0, V=V)
    sa = tp.SoftmaxAttention(3.0, V=V)
    # logits differ by round-off of |K x_j|^2 = 1 (~eps), times beta: 1e-13 covers it
    np.testing.assert_allclose(l2.matrix(x, mass), sa.matrix(x, mass), rtol=1e-13, atol=0)
    assert rel_err(l2.velocity(x, mass), sa.velocity(x, mass)) <= 1e-13
    assert rel_err(l2.velocity(x), sa.velocity(x)) <= 1e-13


@pytest.mark.parametrize("rect", [False, True], ids=["square", "rect"])
def test_l2_in_rd_closed_form(rect, rng):
    n, d, beta = 16, 3, 0.8
    mats = _mats(rng, d, k=2 if rect else None)
    x = rng.normal(size=(n, d))
    l2 = tp.L2Attention(beta, **mats)
    qx, kx = x @ mats["Q"].T, x @ mats["K"].T
    sq = np.sum((qx[:, None, :] - kx[None, :, :]) ** 2, axis=2)
    e = np.exp(-0.5 * beta * sq)
    by_hand = e / e.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(l2.matrix(x), by_hand, rtol=1e-12, atol=0)  # logits O(10): ~100 eps
    # |Kx_j| is not constant in R^d, so this is not the softmax of <Qx_i, Kx_j>
    sa = tp.SoftmaxAttention(beta, **mats)
    assert rel_err(l2.velocity(x), sa.velocity(x)) > 1e-2
    np.testing.assert_allclose(  # n eps relative
        l2.velocity(x), by_hand @ (x @ mats["V"].T), rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("kind", ["sphere", "euclidean"])
def test_multihead_is_sum_of_heads(kind, rng):
    n, d = 16, 3
    mh = make_attention("multihead", d, rng)
    x = make_tokens(kind, rng, n, d)
    mass = make_mass(rng, n)
    w = mh.matrix(x, mass)
    assert w.shape == (len(mh.heads), n, n)
    by_weights = sum(w[h] @ values(head, x) for h, head in enumerate(mh.heads))
    by_heads = sum(head.velocity(x, mass) for head in mh.heads)
    v = mh.velocity(x, mass)
    np.testing.assert_array_equal(v, by_heads)  # the same floating-point sum
    assert rel_err(v, by_weights) <= 1e-12  # kernel vs dense: n eps relative
    assert mh.causal  # it contains a causal head


# -- 3. large beta ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sphere", "euclidean"])
@pytest.mark.parametrize("beta", [1e3, 1e4])
@pytest.mark.parametrize("name", ["softmax", "causal", "l2", "sinkhorn"])
def test_large_beta_finite(name, beta, kind, rng):
    n, d = 16, 3
    # Sinkhorn: with random Q, K the Birkhoff contraction factor tanh(Delta/4), Delta ~ beta,
    # is 1 - O(e^{-beta/2}): no convergence is expected; kernel and reference still run the
    # same sweeps and must agree
    kw = {"n_iter": 50} if name == "sinkhorn" else {}
    att = make_attention(name, d, rng, beta=beta, **kw)
    x = make_tokens(kind, rng, n, d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tp.SinkhornConvergenceWarning)
        v = att.velocity(x)
        v_ref = att.velocity_reference(x)
    assert np.all(np.isfinite(v)) and np.all(np.isfinite(v_ref))
    # logits of size L carry absolute round-off ~ L eps, i.e. a relative error L eps in each
    # weight; kernel and reference round differently
    big = np.max(np.abs(hand_logits(att, x)))
    if name == "l2":
        big += 0.5 * beta * np.max(np.sum((x @ att.K.T) ** 2, axis=1))
    assert rel_err(v, v_ref) <= max(1e-12, 16 * EPS * big)


def separated_sphere(rng, n, d, gap):
    """n generic points of the sphere with 1 - <x_i, x_j> > gap (greedy from a random pool)."""
    chosen = []
    for p in random_sphere(rng, 50 * n, d):
        if all(1.0 - p @ q > gap for q in chosen):
            chosen.append(p)
        if len(chosen) == n:
            return np.array(chosen)
    raise AssertionError("pool too small")


@pytest.mark.parametrize("beta", [1e3, 1e4])
@pytest.mark.parametrize("name", ["softmax", "causal", "l2", "sinkhorn"])
def test_large_beta_sphere_attends_to_itself(name, beta, rng):
    """Q = K = I on the sphere: logit_ii = beta is the strict row maximum, so A_i -> V x_i."""
    n, d = 10, 3
    V = rng.normal(size=(d, d)) / np.sqrt(d)
    att = {
        "softmax": lambda: tp.SoftmaxAttention(beta, V=V),
        "causal": lambda: tp.SoftmaxAttention(beta, V=V, causal=True),
        "l2": lambda: tp.L2Attention(beta, V=V),
        "sinkhorn": lambda: tp.SinkhornAttention(beta, V=V, tol=1e-8),  # above the beta eps floor
    }[name]()
    x = separated_sphere(rng, n, d, gap=0.1)
    gaps = 1.0 - x @ x.T + 2.0 * np.eye(n)  # 1 - <x_i, x_j>, diagonal pushed away
    vx = x @ V.T
    v = att.velocity(x)
    v_ref = att.velocity_reference(x)
    assert np.all(np.isfinite(v)) and np.all(np.isfinite(v_ref))
    # |A_i - Vx_i| <= sum_{j != i} w_ij |Vx_j - Vx_i| with w_ij <= exp(-beta gap_ij)
    # (softmax, L2, causal; Sinkhorn scalings are exp(-beta) to the same order)
    spread = np.max(np.linalg.norm(vx[:, None] - vx[None, :], axis=2))
    bound = n * spread * np.exp(-beta * gaps.min())
    assert bound < 1e-40  # so the check below is a round-off-level check
    # plus round-off of logits of size beta (relative ~ beta eps in each weight)
    tol = bound + 16 * beta * EPS * np.abs(vx).max()
    np.testing.assert_allclose(v, vx, rtol=0, atol=tol)
    np.testing.assert_allclose(v_ref, vx, rtol=0, atol=tol)


# -- 4. symmetries ---------------------------------------------------------------------
@pytest.mark.parametrize("weighted", [False, True], ids=["uniform", "mass"])
@pytest.mark.parametrize("kind", ["sphere", "euclidean"])
@pytest.mark.parametrize("name", NON_CAUSAL)
def test_permutation_equivariance(name, kind, weighted, rng):
    n, d = 24, 3
    att = make_attention(name, d, rng, causal_head=False)
    assert not att.causal
    x = make_tokens(kind, rng, n, d)
    mass = make_mass(rng, n) if weighted else None
    perm = rng.permutation(n)
    v = att.velocity(x, mass)
    vp = att.velocity(x[perm], None if mass is None else mass[perm])
    # same terms, summed in another order: n eps relative (Sinkhorn: converged to 1e-13)
    assert np.max(np.abs(vp - v[perm])) <= 1e-13 * max(1.0, np.abs(v).max())


def test_causal_not_permutation_equivariant(rng):
    """The mask breaks the symmetry: a sanity check that the test above has teeth."""
    att = make_attention("causal", 3, rng)
    x = rng.normal(size=(12, 3))
    perm = np.roll(np.arange(12), 1)
    assert np.max(np.abs(att.velocity(x[perm]) - att.velocity(x)[perm])) > 1e-3


@pytest.mark.parametrize("d", (2, 3, 5))
@pytest.mark.parametrize("name", VARIANTS)
def test_rotation_equivariance_identity_matrices(name, d, rng):
    """Q = K = V = I: logits are rotation invariant and the values rotate."""
    n = 20
    att = make_attention(name, d, rng, beta=2.0, identity=True)
    x = random_sphere(rng, n, d)
    rot = random_orthogonal(rng, d)
    v = att.velocity(x)
    v_rot = att.velocity(x @ rot.T)
    # inner products change by round-off (eps), weights by beta eps: 1e-13 absolute
    np.testing.assert_allclose(v_rot, v @ rot.T, rtol=0, atol=1e-13 * max(1.0, np.abs(v).max()))


# -- 5. bad input ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "beta, exc, match",
    [
        (float("nan"), ValueError, "beta must be finite"),
        (float("inf"), ValueError, "beta must be finite"),
        (-np.inf, ValueError, "beta must be finite"),
        ("1.0", TypeError, "beta must be a real number"),
        (True, TypeError, "beta must be a real number"),
    ],
)
@pytest.mark.parametrize(
    "cls",
    [tp.SoftmaxAttention, tp.UnnormalizedAttention, tp.L2Attention, tp.SigmoidAttention,
     tp.SinkhornAttention],
)
def test_bad_beta(cls, beta, exc, match):
    with pytest.raises(exc, match=match):
        cls(beta)


def test_bad_matrices():
    eye3 = np.eye(3)
    with pytest.raises(ValueError, match="Q and K must have the same shape"):
        tp.SoftmaxAttention(1.0, Q=np.ones((2, 3)), K=np.ones((3, 3)))
    with pytest.raises(ValueError, match="V must be square"):
        tp.SoftmaxAttention(1.0, V=np.ones((2, 3)))
    with pytest.raises(ValueError, match="Q, K and V must act on the same dimension"):
        tp.SoftmaxAttention(1.0, Q=eye3, K=eye3, V=np.eye(2))
    with pytest.raises(ValueError, match="V must have shape"):
        tp.SoftmaxAttention(1.0, V=np.ones(3))
    for name in ("Q", "V"):
        for bad in (np.nan, np.inf):
            m = eye3.copy()
            m[1, 2] = bad
            with pytest.raises(ValueError, match=f"{name} must be finite"):
                tp.UnnormalizedAttention(1.0, **{name: m})
    with pytest.raises(ValueError, match=r"Q of shape \(2, 3\) is not square"):
        tp.SoftmaxAttention(1.0, Q=np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"K of shape \(2, 3\) is not square"):
        tp.L2Attention(1.0, K=np.ones((2, 3)))
    with pytest.raises(TypeError, match="causal must be a bool"):
        tp.SoftmaxAttention(1.0, causal=1)
    with pytest.raises(ValueError, match="bias must be finite"):
        tp.SigmoidAttention(1.0, bias=np.nan)


@pytest.mark.parametrize("name", VARIANTS)
def test_bad_tokens_and_weights(name, rng):
    att = make_attention(name, 3, rng)
    x = rng.normal(size=(6, 3))
    for method in (att.velocity, att.velocity_reference, att.matrix):
        with pytest.raises(ValueError, match="dimension"):
            method(rng.normal(size=(6, 2)))
        for bad in (np.nan, np.inf):
            y = x.copy()
            y[2, 1] = bad
            with pytest.raises(ValueError, match="x must be finite"):
                method(y)
        for shape in ((6,), (2, 6, 3), (0, 3)):
            with pytest.raises(ValueError, match=r"x must have shape \(n, d\)"):
                method(np.ones(shape))
        with pytest.raises(ValueError, match=r"weights must have shape \(6,\)"):
            method(x, weights=np.ones(5))
        with pytest.raises(ValueError, match="weights must be nonnegative"):
            method(x, weights=np.array([1.0, 1, -0.5, 1, 1, 1]))
        with pytest.raises(ValueError, match="weights must have a positive sum"):
            method(x, weights=np.zeros(6))
        with pytest.raises(ValueError, match="weights must be finite"):
            method(x, weights=np.array([1.0, 1, np.nan, 1, 1, 1]))


def test_bad_sinkhorn_parameters():
    with pytest.raises(ValueError, match="n_iter must be >= 1"):
        tp.SinkhornAttention(1.0, n_iter=0)
    with pytest.raises(TypeError, match="n_iter must be an integer"):
        tp.SinkhornAttention(1.0, n_iter=2.5)
    for tol in (0.0, -1e-3):
        with pytest.raises(ValueError, match="tol must be > 0"):
            tp.SinkhornAttention(1.0, tol=tol)


def test_bad_multihead():
    head = tp.SoftmaxAttention(1.0)
    with pytest.raises(ValueError, match="heads must contain at least one"):
        tp.MultiHeadAttention([])
    with pytest.raises(TypeError, match=r"heads\[1\] must be a single-head"):
        tp.MultiHeadAttention([head, "softmax"])
    with pytest.raises(TypeError, match=r"heads\[0\] must be a single-head"):
        tp.MultiHeadAttention([tp.MultiHeadAttention([head])])
    with pytest.raises(TypeError, match="heads must be a list"):
        tp.MultiHeadAttention(head)
    with pytest.raises(TypeError, match="heads must be a list"):
        tp.MultiHeadAttention(h for h in [head])
    with pytest.raises(ValueError, match="all heads must act on the same dimension"):
        tp.MultiHeadAttention([tp.SoftmaxAttention(1.0, V=np.eye(2)), tp.L2Attention(1.0, V=np.eye(3))])
    mh = tp.MultiHeadAttention([head, tp.SoftmaxAttention(1.0, V=np.eye(3))])
    assert mh.dim == 3
    with pytest.raises(ValueError, match="dimension"):
        mh.velocity(np.ones((4, 2)))


def test_causal_rejects_zero_mass_first_token():
    # token 0 attends only to itself: with zero mass its softmax row is 0/0
    att = tp.SoftmaxAttention(1.0, causal=True)
    x = np.eye(3)
    with pytest.raises(ValueError, match=r"weights\[0\] must be > 0"):
        att.velocity(x, weights=[0.0, 1.0, 1.0])


def test_sinkhorn_large_beta_converges_to_roundoff_floor(rng):
    # at beta = 1e3 the logits carry ~1e-13 of round-off, so the default tol=1e-13 is
    # raised to 16 eps (1 + max|logit|): kernel and reference both stop after a few sweeps
    x = random_sphere(rng, 20, 3)
    att = tp.SinkhornAttention(1e3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", tp.SinkhornConvergenceWarning)
        att.velocity(x)
        sweeps_kernel = att.last_status[0]
        att.matrix(x)
        sweeps_reference = att.last_status[0]
    assert sweeps_kernel < 50 and sweeps_reference < 50


@pytest.mark.parametrize("name", ["softmax", "causal", "usa", "l2", "sigmoid"])
@pytest.mark.parametrize("with_mass", [False, True])
def test_blas_tile_path_matches_reference(name, with_mass, rng, monkeypatch):
    """For large k + d the kernels multiply (B, n) tiles with BLAS; force that path with
    tiny tiles (several tiles, a ragged last one, causal tiles cut at the diagonal)."""
    import transformer_pde.attention as attention_module

    monkeypatch.setattr(attention_module, "_FUSED_MAX_KD", 0)
    monkeypatch.setattr(attention_module, "_TILE_ENTRIES", 7 * 45)  # 7 rows per tile
    n, d = 45, 4
    att = make_attention(name, d, rng)
    x = random_sphere(rng, n, d)
    mass = make_mass(rng, n) if with_mass else None
    # same arithmetic as the fused kernel up to summation order: ~n eps relative
    assert rel_err(att.velocity(x, mass), att.velocity_reference(x, mass)) < 1e-12


def test_large_dimension_takes_tile_path_and_matches_reference(rng):
    # k + d = 60 > 48 selects the BLAS tiles without any patching
    n, d = 80, 30
    for att in (make_attention("softmax", d, rng), make_attention("usa", d, rng, beta=0.5),
                make_attention("sigmoid", d, rng)):
        x = random_sphere(rng, n, d)
        assert rel_err(att.velocity(x), att.velocity_reference(x)) < 1e-12


@pytest.mark.parametrize("name", NON_CAUSAL)
def test_field_at_other_targets_restricts_the_velocity(name, rng):
    """_field(targets, sources, mass) is the mean-field velocity of the weighted sources at
    arbitrary points (what the grid solver uses): at targets that are some of the sources
    it must equal those rows of the velocity (Sinkhorn: its potentials come from the
    sources' self-transport, so they are the same too)."""
    n, d = 30, 3
    att = make_attention(name, d, rng, causal_head=False)
    x = random_sphere(rng, n, d)
    mass = make_mass(rng, n)
    mass /= mass.sum()  # _field trusts its inputs: masses already normalised
    rows = [0, 4, 7, 19]
    # same kernels, same sums: agreement to a few ulps of the output
    got = att._field(np.ascontiguousarray(x[rows]), x, mass)
    assert rel_err(got, att.velocity(x, mass)[rows]) < 1e-13
