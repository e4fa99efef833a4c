"""Closed forms of theory.py against the reference numbers of MATH.md section 6."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import iv

import transformer_pde as tp
from transformer_pde import theory as th

# MATH.md 6 item 2, as printed: agreement to half a unit of the last printed decimal
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
    # MATH.md 6 item 3: the Ei closed forms reproduce t to 1e-8 (the ODE runs at rtol 1e-13)
    # USA converges like e^{-2 e^beta t}: stop before rho rounds to 1, where t(rho) is
    # ill-conditioned (dt = drho / rho' with rho' ~ (1 - rho) * rate)
    t = np.linspace(0.0, 1.5 if model == "SA" else 0.3, 7)
    rho = th.equiangular_rho(t, n, beta, model)
    assert rho[-1] < 1 - 1e-6
    assert np.allclose(th.equiangular_time(rho[1:], n, beta, model), t[1:], rtol=0, atol=1e-8)


def test_beta_zero_closed_form_and_particles():
    # rho(t) = (e^{2t} - 1)/(e^{2t} + n - 1); n = 2: tanh t (MATH.md 6 item 3)
    t = np.linspace(0, 2, 5)
    assert np.allclose(th.equiangular_rho(t, 2, 0.0), np.tanh(t), atol=1e-15)
    # particles from x_i = e_i follow the ODE (MATH.md 6 item 1): dopri5 at rtol 1e-11
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(2.0))
    traj = tp.simulate(dyn, np.eye(4), (0.0, 1.5), t_eval=[1.5], method="dopri5", rtol=1e-11,
                       atol=1e-13)
    assert traj.x[-1][0] @ traj.x[-1][1] == pytest.approx(th.equiangular_rho([0, 1.5], 4, 2.0)[-1],
                                                        abs=1e-9)


def test_consensus_rates():
    # MATH.md 6 item 4: -d/dt log(1 - rho) -> 2 (SA) and 2 e^beta (USA) near rho = 1
    rho = 1.0 - 1e-9
    assert th.equiangular_rate(rho, 5, 1.0, "SA") / (1 - rho) == pytest.approx(2.0, rel=1e-6)
    assert th.equiangular_rate(rho, 5, 1.0, "USA") / (1 - rho) == pytest.approx(2 * np.e, rel=1e-6)


def test_long_context():
    # MATH.md 6 item 6
    assert th.long_context_cosine(6, 2.0, 0.3) == pytest.approx(0.8350434, abs=5e-8)
    n, rho = 1e6, 0.5
    limits = [th.long_context_cosine(n, g * np.log(n), rho) for g in (1.0, 2.0, 3.0)]
    assert limits == pytest.approx([1.000, 0.800, 0.5005], abs=5e-4)
    assert th.critical_gamma(0.5) == 2.0


def test_circle_growth_rates_and_fastest_mode():
    # MATH.md 6 item 7: k* and max_k lambda_k^SA (three significant digits)
    betas = [0.5, 1, 2, 4, 9, 16, 25, 36, 64, 100]
    assert [th.fastest_circle_mode(b) for b in betas] == [1, 1, 2, 3, 4, 6, 7, 8, 11, 14]
    k = np.arange(1, 60)
    best = np.array([max(th.circle_growth_rate(k, b)) for b in betas])
    # independently, with the unscaled Bessel functions: the same formula to round-off
    direct = np.array([max(k**2 * iv(k, b) / (b * iv(0, b))) for b in betas])
    assert np.allclose(best, direct, rtol=1e-12)
    # MATH.md prints three decimals; two of them (beta = 2: 0.60445, beta = 36: 0.72446)
    # are rounded up by one unit, so the printed list is matched to one unit, 1e-3
    assert best == pytest.approx([0.485, 0.446, 0.605, 0.664, 0.705, 0.714, 0.726, 0.725, 0.731,
                                  0.733], abs=1e-3)
    # beta -> 0 on S^2, l = 1: 2/3, the beta = 0 field P_x(mean) (MATH.md 8)
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
