"""Closed forms of theory.py against the reference numbers of docs/math.md §6."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import iv

import transformer_pde as tp
from transformer_pde import theory as th

# docs/math.md §6 item 2, as printed: agreement to half a unit of the last printed decimal
REFERENCE = [
    ("SA", 5, 1.0, 2.0, "0.860669"), ("SA", 5, 1.0, 3.0, "0.978586"),
    ("USA", 5, 1.0, 2.0, "0.998378"), ("USA", 5, 1.0, 3.0, "0.999993"),
    ("SA", 8, 4.0, 2.0, "0.093652"), ("SA", 8, 4.0, 3.0, "0.179891"),
    ("SA", 32, 9.0, 2.0, "0.000497"), ("SA", 3, 0.0, 3.0, "0.992600"),
    ("SA", 2, 0.5, 2.0, "0.947437"), ("USA", 2, 0.5, 2.0, "0.993937"),
    ("USA", 8, 4.0, 0.05, "0.0133336"), ("USA", 32, 9.0, 0.05, "0.00332666"),
]


@pytest.mark.parametrize("model, n, beta, t, rho", REFERENCE)
def test_equiangular_reference_values(model, n, beta, t, rho):
    got = th.equiangular_rho([0.0, t], n, beta, model)[-1]
    decimals = len(rho.split(".")[1])
    assert abs(got - float(rho)) <= 0.5 * 10.0**-decimals + 1e-12


@pytest.mark.parametrize("model", ["SA", "USA"])
@pytest.mark.parametrize("n, beta", [(5, 1.0), (8, 4.0), (3, 0.5)])
def test_ei_formulas_invert_the_ode(model, n, beta):
    # docs/math.md §6 item 3: the Ei closed forms reproduce t to 1e-8 (the ODE runs at rtol 1e-13)
    # USA converges like e^{-2 e^beta t}: stop before rho rounds to 1, where t(rho) is
    # ill-conditioned (dt = drho / rho' with rho' ~ (1 - rho) * rate)
    t = np.linspace(0.0, 1.5 if model == "SA" else 0.3, 7)
    rho = th.equiangular_rho(t, n, beta, model)
    assert rho[-1] < 1 - 1e-6
    assert np.allclose(th.equiangular_time(rho[1:], n, beta, model), t[1:], rtol=0, atol=1e-8)


def test_beta_zero_closed_form_and_particles():
    # rho(t) = (e^{2t} - 1)/(e^{2t} + n - 1); n = 2: tanh t (docs/math.md §6 item 3)
    t = np.linspace(0, 2, 5)
    assert np.allclose(th.equiangular_rho(t, 2, 0.0), np.tanh(t), atol=1e-15)
    # particles from x_i = e_i follow the ODE (docs/math.md §6 item 1): dopri5 at rtol 1e-11
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(2.0))
    traj = tp.simulate(dyn, np.eye(4), (0.0, 1.5), t_eval=[1.5], method="dopri5", rtol=1e-11,
                       atol=1e-13)
    assert traj.x[-1][0] @ traj.x[-1][1] == pytest.approx(th.equiangular_rho([0, 1.5], 4, 2.0)[-1],
                                                        abs=1e-9)


def test_consensus_rates():
    # docs/math.md §6 item 4: -d/dt log(1 - rho) -> 2 (SA) and 2 e^beta (USA) near rho = 1
    rho = 1.0 - 1e-9
    assert th.equiangular_rate(rho, 5, 1.0, "SA") / (1 - rho) == pytest.approx(2.0, rel=1e-6)
    assert th.equiangular_rate(rho, 5, 1.0, "USA") / (1 - rho) == pytest.approx(2 * np.e, rel=1e-6)


def test_long_context():
    # docs/math.md §6 item 6
    assert th.long_context_cosine(6, 2.0, 0.3) == pytest.approx(0.8350434, abs=5e-8)
    n, rho = 1e6, 0.5
    limits = [th.long_context_cosine(n, g * np.log(n), rho) for g in (1.0, 2.0, 3.0)]
    assert limits == pytest.approx([1.000, 0.800, 0.5005], abs=5e-4)
    assert th.critical_gamma(0.5) == 2.0


def test_circle_growth_rates_and_fastest_mode():
    # docs/math.md §6 item 7: k* and max_k lambda_k^SA (three significant digits)
    betas = [0.5, 1, 2, 4, 9, 16, 25, 36, 64, 100]
    assert [th.fastest_circle_mode(b) for b in betas] == [1, 1, 2, 3, 4, 6, 7, 8, 11, 14]
    k = np.arange(1, 60)
    best = np.array([max(th.circle_growth_rate(k, b)) for b in betas])
    # independently, with the unscaled Bessel functions: the same formula to round-off
    direct = np.array([max(k**2 * iv(k, b) / (b * iv(0, b))) for b in betas])
    assert np.allclose(best, direct, rtol=1e-12, atol=0)
    # the printed list (docs/math.md §6 item 7) has three decimals; three of them (beta = 2:
    # 0.60445, beta = 9: 0.70450, beta = 36: 0.72446) were rounded up by one unit (§10.9),
    # so the printed list is matched to one unit, 1e-3
    assert best == pytest.approx([0.485, 0.446, 0.605, 0.664, 0.705, 0.714, 0.726, 0.725, 0.731,
                                  0.733], abs=1e-3)
    # beta -> 0 on S^2, l = 1: 2/3, the beta = 0 field P_x(mean) (docs/math.md §8)
    assert th.sphere_growth_rate(1, 1e-8) == pytest.approx(2 / 3, rel=1e-7)


def test_bad_input():
    with pytest.raises(ValueError, match="model must be one of"):
        th.equiangular_rate(0.1, 5, 1.0, "softmax")
    with pytest.raises(ValueError, match="n must be >= 2"):
        th.equiangular_rho([0, 1], 1, 1.0)
    with pytest.raises(ValueError, match="rho0 must lie in"):
        th.equiangular_rho([0, 1], 5, 1.0, rho0=-0.5)
    with pytest.raises(ValueError, match="beta must be > 0"):
        th.equiangular_time(0.5, 5, 0.0)


@pytest.mark.parametrize("norm", ["post", "pre", "peri", "mix", "ngpt", "cod"])
def test_equiangular_normalized_matches_particles(norm):
    # docs/math.md §6 item 5: n = d = 4, beta = 1.5, x_i(0) = e_i; the reduced ODE (rtol 1e-13)
    # and the particles (dopri5 at rtol 1e-12) agree to ~1e-12; 1e-9 is the acceptance figure
    # (§6 item 5 reports 4e-10)
    t = np.array([0.5, 1.0, 2.0, 3.0])
    rho, r = th.equiangular_normalized(np.r_[0.0, t], 4, 1.5, norm, tau=1.0)
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.5), norm=norm, tau=1.0)
    traj = tp.simulate(dyn, np.eye(4), (0.0, 3.0), t_eval=t, method="dopri5", rtol=1e-12, atol=1e-14)
    radii = np.linalg.norm(traj.x, axis=2)
    theta = traj.x / radii[..., None]
    gram = np.einsum("tid,tjd->tij", theta, theta)
    off = gram[:, ~np.eye(4, dtype=bool)]
    assert np.max(np.abs(off - rho[1:, None])) < 1e-9
    assert np.max(np.abs(radii - r[1:, None])) < 1e-9
    if norm == "post":  # post-LN is the SA equiangular ODE
        assert np.allclose(rho, th.equiangular_rho(np.r_[0.0, t], 4, 1.5), atol=1e-12)


def test_normalized_rates_at_long_times():
    # docs/math.md §4.5: pre and peri 1 - rho ~ C t^-2 and r/t -> 1; CoD 1 - rho ~ e^{-4 sqrt t}.
    # At t = 1e3 the local slopes are within a few 1/t (pre/peri) of their limits
    t = np.array([0.0, 500.0, 1000.0])
    for norm in ("pre", "peri"):
        rho, r = th.equiangular_normalized(t, 4, 1.5, norm)
        slope = np.log((1 - rho[2]) / (1 - rho[1])) / np.log(2.0)
        assert slope == pytest.approx(-2.0, abs=0.02)
        assert r[2] / t[2] == pytest.approx(1.0, abs=0.02)
    # CoD: rho' ~ 2 (1 - rho) / sqrt(t + 1) near 1, so log(1 - rho) ~ -4 sqrt(t + 1); at
    # sqrt(t + 1) = 4..5, 1 - rho ~ 1e-9 is far above round-off and the O(1 - rho)
    # corrections to the rate are negligible
    t = np.array([0.0, 15.0, 24.0])
    rho, _ = th.equiangular_normalized(t, 4, 1.5, "cod")
    assert np.log((1 - rho[2]) / (1 - rho[1])) / (5.0 - 4.0) == pytest.approx(-4.0, abs=0.01)


def test_metastability_time_scales():
    # e^{beta (1 - cos(2 pi / k))}: k = 4 clusters at beta = 9 merge on the scale e^9
    # cos(pi/2) = 6e-17, and exp amplifies the argument's rounding by beta: rel 1e-14
    assert th.merge_time_scale(9.0, np.cos(np.pi / 2)) == pytest.approx(np.exp(9.0), rel=1e-14)
    assert th.metastable_time(9.0, 32, 0.0, 0.05) == pytest.approx(0.05 / 32 * np.exp(9.0))
    with pytest.raises(ValueError, match="epsilon"):
        th.metastable_time(9.0, 32, 0.0, 0.1)
    with pytest.raises(ValueError, match="beta must be > 1"):
        th.metastable_time(0.5, 32, 0.0, 0.01)
    with pytest.raises(ValueError, match="rho_max"):
        th.merge_time_scale(1.0, 1.5)


@pytest.mark.parametrize("d", [2, 3, 5])
def test_noisy_order_parameter_solves_its_equation(d):
    # r = I_{d/2}(kappa r) / I_{d/2-1}(kappa r); 0 up to kappa_c = d, a pitchfork after it
    assert th.critical_kappa(d) == d
    assert th.noisy_order_parameter(d - 0.01, d) == 0.0
    for kappa in (d + 0.5, 2 * d, 10 * d):
        r = th.noisy_order_parameter(kappa, d)
        assert 0 < r < 1
        assert r == pytest.approx(iv(d / 2, kappa * r) / iv(d / 2 - 1, kappa * r), abs=1e-13)
    # near kappa_c, from I_{d/2}(x)/I_{d/2-1}(x) = x/d - x^3/(d^2 (d + 2)) + O(x^5):
    # r^2 = (kappa - d)(d + 2)/d^2 (1 + O(kappa - d)); at kappa = 1.001 d, 0.5% relative
    kappa = 1.001 * d
    assert th.noisy_order_parameter(kappa, d) ** 2 == pytest.approx((kappa - d) * (d + 2) / d**2,
                                                                     rel=5e-3)
    assert th.noisy_growth_rate(d, d) == 0.0
    assert th.noisy_growth_rate(4.0, 2) == pytest.approx(0.25)
