"""TokenDynamics and geometry: normalization schemes against docs/math.md §4.5, checks.

The attention output A_j = sum_k W_jk V theta_k is recomputed here from the dense weight
matrix of the attention object; each scheme's velocity is then decomposed into a radial
part and a direction part and compared with its (s_j, rdot_j) row of the table.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_sphere

import transformer_pde as tp
from transformer_pde.geometry import SPHERE_TOL

NORMS_R = ("pre", "peri", "mix")  # schemes that carry a radius per token


# -- helpers ---------------------------------------------------------------------------
def make_attention(name, d, rng, beta=1.0):
    mats = {
        "Q": rng.normal(size=(d, d)) / np.sqrt(d),
        "K": rng.normal(size=(d, d)) / np.sqrt(d),
        "V": rng.normal(size=(d, d)) / np.sqrt(d),
    }
    if name == "softmax":
        return tp.SoftmaxAttention(beta, **mats)
    if name == "sinkhorn":
        return tp.SinkhornAttention(beta, **mats)
    if name == "multihead":
        return tp.MultiHeadAttention([
            tp.SoftmaxAttention(beta, **mats),
            tp.UnnormalizedAttention(0.5 * beta, V=rng.normal(size=(d, d)) / np.sqrt(d)),
            tp.SigmoidAttention(beta, bias=0.3, Q=rng.normal(size=(2, d)), K=rng.normal(size=(2, d))),
        ])
    raise AssertionError(name)


def attention_output(att, theta):
    """A_j = sum_k W_jk V theta_k from the dense weights (docs/math.md §4.5)."""
    heads = att.heads if isinstance(att, tp.MultiHeadAttention) else (att,)
    out = np.zeros_like(theta)
    for head in heads:
        vtheta = theta if head.V is None else theta @ head.V.T
        out += head.matrix(theta) @ vtheta
    return out


def proj(theta, a):
    """P_theta a = a - <theta, a> theta, row by row."""
    return a - np.sum(theta * a, axis=1, keepdims=True) * theta


def polar_state(rng, n, d):
    theta = random_sphere(rng, n, d)
    r = rng.uniform(0.5, 2.0, size=(n, 1))
    return theta, r, r * theta


def decompose(v, theta, r):
    """(rdot, thetadot) with v = rdot theta + r thetadot and thetadot tangent at theta."""
    rdot = np.sum(theta * v, axis=1, keepdims=True)
    return rdot, (v - rdot * theta) / r


def close(a, b, rel):
    return np.max(np.abs(a - b)) <= rel * max(1.0, np.max(np.abs(b)))


# -- 1. defaults, tangency, kernel vs reference ---------------------------------------
@pytest.mark.parametrize("name", ["softmax", "multihead"])
def test_default_is_post_ln_on_sphere(name, rng):
    n, d = 20, 3
    att = make_attention(name, d, rng)
    dyn = tp.TokenDynamics(att)
    assert isinstance(dyn.geometry, tp.Sphere) and dyn.norm == "post"
    assert isinstance(dyn.state_space, tp.Sphere) and dyn.autonomous
    x = random_sphere(rng, n, d)
    v = dyn.velocity(x)
    # <x_i, v_i> = <x_i, A_i>(1 - |x_i|^2): round-off only, |A| = O(1)
    assert np.max(np.abs(np.sum(x * v, axis=1))) <= 1e-14
    # P_x A with A from the dense weights: kernel vs dense sum, n eps relative
    assert close(v, proj(x, attention_output(att, x)), 1e-13)


@pytest.mark.parametrize("norm", tp.NORMS + (None,))
@pytest.mark.parametrize("name", ["softmax", "multihead"])
def test_velocity_matches_reference(name, norm, rng):
    n, d = 20, 3
    att = make_attention(name, d, rng)
    if norm is None:
        dyn = tp.TokenDynamics(att, geometry="euclidean")
        x = rng.normal(size=(n, d))
    else:
        dyn = tp.TokenDynamics(att, norm=norm, alpha=0.7, tau=0.5)
        x = polar_state(rng, n, d)[2] if norm in NORMS_R else random_sphere(rng, n, d)
    mass = rng.uniform(0.1, 1.0, size=n)
    for t in (0.0, 0.9):  # before and after the mix-LN switch tau = 0.5
        for m in (None, mass):
            v = dyn.velocity(x, t=t, weights=m)
            v_ref = dyn.velocity_reference(x, t=t, weights=m)
            assert v.shape == (n, d)
            # kernel vs dense attention (n eps relative), times O(1) normalization factors
            assert close(v, v_ref, 1e-12)


# -- 2. each normalization scheme against docs/math.md §4.5 -----------------------------------
def test_pre_ln(rng):
    n, d = 16, 3
    att = make_attention("softmax", d, rng)
    theta, r, x = polar_state(rng, n, d)
    a = attention_output(att, theta)
    rdot, thdot = decompose(tp.TokenDynamics(att, norm="pre").velocity(x), theta, r)
    # s = r, rdot = <theta, A>; a few flops on top of the kernel's n eps: 1e-13 relative
    assert close(rdot, np.sum(theta * a, axis=1, keepdims=True), 1e-13)
    assert close(thdot, proj(theta, a) / r, 1e-13)
    # attention acts on directions: the velocity does not depend on the radii
    v1 = tp.TokenDynamics(att, norm="pre").velocity(x)
    v2 = tp.TokenDynamics(att, norm="pre").velocity(3.0 * x)
    assert close(v1, v2, 1e-14)  # x / |x| differs by an ulp


def test_peri_ln(rng):
    n, d = 16, 3
    att = make_attention("softmax", d, rng)
    theta, r, x = polar_state(rng, n, d)
    a = attention_output(att, theta)
    size = np.linalg.norm(a, axis=1, keepdims=True)
    v = tp.TokenDynamics(att, norm="peri").velocity(x)
    rdot, thdot = decompose(v, theta, r)
    # s = r |A|, rdot = <theta, A>/|A|; a few flops on top of n eps: 1e-13 relative
    assert close(rdot, np.sum(theta * a, axis=1, keepdims=True) / size, 1e-13)
    assert close(thdot, proj(theta, a) / (r * size), 1e-13)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=0, atol=1e-14)  # |v| = 1


@pytest.mark.parametrize("tau", [0.0, 0.5, 2.0])
def test_mix_ln_switches_at_tau(tau, rng):
    n, d = 16, 3
    att = make_attention("softmax", d, rng)
    theta, r, x = polar_state(rng, n, d)
    a = attention_output(att, theta)
    dyn = tp.TokenDynamics(att, norm="mix", tau=tau)
    assert not dyn.autonomous
    for t in (tau - 0.25, tau):  # post-LN: s = 1, rdot = 0, i.e. v = r P_theta A
        rdot, thdot = decompose(dyn.velocity(x, t=t), theta, r)
        assert np.max(np.abs(rdot)) <= 1e-14 * np.max(r)  # r <theta, P theta A>: round-off
        assert close(thdot, proj(theta, a), 1e-13)  # n eps plus a few flops
    for t in (tau + 1e-9, tau + 1.0):  # pre-LN: s = r, rdot = <theta, A>
        rdot, thdot = decompose(dyn.velocity(x, t=t), theta, r)
        assert close(rdot, np.sum(theta * a, axis=1, keepdims=True), 1e-13)
        assert close(thdot, proj(theta, a) / r, 1e-13)


@pytest.mark.parametrize("alpha", [0.7, 3.0, lambda t: 1.0 / (1.0 + t)], ids=["0.7", "3", "callable"])
def test_ngpt(alpha, rng):
    n, d = 16, 3
    att = make_attention("softmax", d, rng)
    x = random_sphere(rng, n, d)
    a = attention_output(att, x)
    size = np.linalg.norm(a, axis=1, keepdims=True)
    dyn = tp.TokenDynamics(att, norm="ngpt", alpha=alpha)
    assert isinstance(dyn.state_space, tp.Sphere)
    assert dyn.autonomous == (not callable(alpha))
    for t in (0.0, 1.5):
        al = alpha(t) if callable(alpha) else alpha
        v = dyn.velocity(x, t=t)
        # s = |A| / alpha, rdot = 0: v = alpha P A / |A|; n eps plus a few flops
        assert np.max(np.abs(np.sum(x * v, axis=1))) <= 1e-14 * al
        assert close(v, al * proj(x, a) / size, 1e-13)


def test_cod(rng):
    n, d = 16, 3
    att = make_attention("softmax", d, rng)
    x = random_sphere(rng, n, d)
    dyn = tp.TokenDynamics(att, norm="cod")
    assert not dyn.autonomous
    pa = proj(x, attention_output(att, x))
    for t in (0.0, 3.0, 99.0):
        # s = sqrt(t + 1), rdot = 0; n eps plus one division
        assert close(dyn.velocity(x, t=t), pa / np.sqrt(t + 1.0), 1e-13)


def test_euclidean_has_no_normalization(rng):
    n, d = 16, 3
    att = make_attention("softmax", d, rng)
    x = 2.0 * rng.normal(size=(n, d))
    dyn = tp.TokenDynamics(att, geometry="euclidean")
    assert dyn.norm == "none" and isinstance(dyn.state_space, tp.Euclidean)
    # xdot_i = A_i(x) on the tokens themselves, not their directions (docs/math.md §1.1)
    assert close(dyn.velocity(x), attention_output(att, x), 1e-13)  # n eps relative


# -- 3. beta = 0 -------------------------------------------------------------------------
@pytest.mark.parametrize("d", (2, 3, 5))
@pytest.mark.parametrize("cls", [tp.SoftmaxAttention, tp.UnnormalizedAttention])
def test_beta_zero_is_projected_mean(cls, d, rng):
    """docs/math.md §2.1, e:Snonres0: xdot_i = P_{x_i}(xbar) for SA and USA at beta = 0."""
    n = 24
    x = random_sphere(rng, n, d)
    v = tp.TokenDynamics(cls(0.0)).velocity(x)
    xbar = x.mean(axis=0)
    expected = xbar[None, :] - (x @ xbar)[:, None] * x
    # all weights are exactly 1/n; sums in another order: n eps
    np.testing.assert_allclose(v, expected, rtol=0, atol=1e-14)


# -- 4. geometry -----------------------------------------------------------------------
@pytest.mark.parametrize("d", (2, 3, 7))
def test_sphere_project_and_retract(d, rng):
    sph = tp.Sphere()
    n = 30
    x = random_sphere(rng, n, d)
    v = rng.normal(size=(n, d))
    pv = sph.project(x, v)
    assert np.max(np.abs(np.sum(x * pv, axis=1))) <= 1e-14  # tangent: round-off of |x| = 1
    np.testing.assert_allclose(sph.project(x, pv), pv, rtol=0, atol=1e-15)  # idempotent: ~eps
    # the normal part removed is exactly <x, v> x
    np.testing.assert_allclose(v - pv, np.sum(x * v, axis=1, keepdims=True) * x, rtol=0, atol=1e-15)
    y = 10.0 ** rng.uniform(-3, 3, size=(n, 1)) * rng.normal(size=(n, d))
    ry = sph.retract(y)
    np.testing.assert_allclose(np.linalg.norm(ry, axis=1), 1.0, rtol=0, atol=4e-16)  # ~2 eps
    np.testing.assert_allclose(ry * np.linalg.norm(y, axis=1, keepdims=True), y, rtol=1e-15)  # same ray
    sph.check(ry)
    euc = tp.Euclidean()
    assert euc.project(x, v) is v and euc.retract(y) is y
    euc.check(y)


def test_sphere_check_tolerance(rng):
    sph = tp.Sphere()
    x = random_sphere(rng, 8, 3)
    assert SPHERE_TOL == 1e-6
    ok = x.copy()
    ok[5] *= 1.0 + 1e-9
    sph.check(ok)
    ok[2] *= 1.0 - 1e-9
    sph.check(ok, name="x0")
    bad = x.copy()
    bad[3] *= 1.0 + 1e-4
    with pytest.raises(ValueError, match=r"x0 must lie on the unit sphere .*1e-06.*token 3"):
        sph.check(bad, name="x0")
    bad = x.copy()
    bad[6] *= 1.0 - 1e-4
    with pytest.raises(ValueError, match=r"x must lie on the unit sphere .*1e-06.*token 6"):
        sph.check(bad)


# -- 5. bad input ----------------------------------------------------------------------
def test_bad_construction():
    att = tp.SoftmaxAttention(1.0)
    with pytest.raises(ValueError, match="geometry must be 'sphere' or 'euclidean'"):
        tp.TokenDynamics(att, geometry="torus")
    with pytest.raises(TypeError, match="geometry must be a string"):
        tp.TokenDynamics(att, geometry=None)
    with pytest.raises(ValueError, match="norm must be one of"):
        tp.TokenDynamics(att, norm="layer")
    with pytest.raises(ValueError, match="norm must be one of"):
        tp.TokenDynamics(att, norm="none")
    with pytest.raises(ValueError, match="norm must be None in Euclidean geometry"):
        tp.TokenDynamics(att, geometry="euclidean", norm="post")
    with pytest.raises(TypeError, match="attention must be an attention object"):
        tp.TokenDynamics("softmax")
    with pytest.raises(TypeError, match="attention must be an attention object"):
        tp.TokenDynamics(np.eye(3))
    for alpha in (0.0, -1.0):
        with pytest.raises(ValueError, match="alpha must be > 0"):
            tp.TokenDynamics(att, norm="ngpt", alpha=alpha)
    with pytest.raises(ValueError, match="alpha must be finite"):
        tp.TokenDynamics(att, norm="ngpt", alpha=np.nan)
    with pytest.raises(ValueError, match="tau must be finite"):
        tp.TokenDynamics(att, norm="mix", tau=np.inf)


@pytest.mark.parametrize("norm", ["post", "ngpt", "cod"])
def test_tokens_off_sphere(norm, rng):
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0), norm=norm)
    x = random_sphere(rng, 6, 3)
    x[4] *= 1.0 + 1e-4
    for method in (dyn.velocity, dyn.velocity_reference, dyn.check_state):
        with pytest.raises(ValueError, match=r"x must lie on the unit sphere .*1e-06"):
            method(x)


@pytest.mark.parametrize("norm", NORMS_R)
def test_zero_token_with_radius(norm, rng):
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0), norm=norm)
    x = rng.normal(size=(6, 3))
    x[2] = 0.0
    with pytest.raises(ValueError, match=f"nonzero tokens for norm='{norm}'.*token 2"):
        dyn.velocity(x)
    # off-sphere radii are fine for these schemes
    assert np.all(np.isfinite(dyn.velocity(3.0 * random_sphere(rng, 6, 3))))


def test_dimension_mismatch(rng):
    att = make_attention("softmax", 3, rng)
    for kw in ({}, {"norm": "pre"}, {"geometry": "euclidean"}):
        dyn = tp.TokenDynamics(att, **kw)
        assert dyn.dim == 3
        with pytest.raises(ValueError, match=r"x must have shape \(n, 3\)"):
            dyn.velocity(random_sphere(rng, 5, 2))


def test_bad_state_and_time(rng):
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0))
    x = random_sphere(rng, 5, 3)
    y = x.copy()
    y[1, 0] = np.nan
    with pytest.raises(ValueError, match="x must be finite"):
        dyn.velocity(y)
    with pytest.raises(ValueError, match=r"x must have shape \(n, d\)"):
        dyn.velocity(x[0])
    with pytest.raises(ValueError, match="t must be finite"):
        dyn.velocity(x, t=np.nan)
    with pytest.raises(ValueError, match=r"weights must have shape \(5,\)"):
        dyn.velocity(x, weights=np.ones(4))


@pytest.mark.parametrize("norm", ["peri", "ngpt"])
def test_zero_attention_output_is_reported(norm, rng):
    """peri-LN and nGPT divide by |A_j|: V = 0 gives A = 0, reported, not a silent NaN."""
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0, V=np.zeros((3, 3))), norm=norm)
    with pytest.raises(FloatingPointError, match=rf"norm='{norm}' divides by \|A_j\|"):
        dyn.velocity(random_sphere(rng, 5, 3))


def test_ngpt_callable_alpha_must_stay_positive():
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0), norm="ngpt", alpha=lambda t: 1.0 - t)
    x = np.eye(3)
    dyn.velocity(x, t=0.5)
    with pytest.raises(ValueError, match=r"alpha\(2\) must be > 0"):
        dyn.velocity(x, t=2.0)
