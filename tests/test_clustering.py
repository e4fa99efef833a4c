"""Clustering diagnostics against exact values, invariances and the energy's monotonicity."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_sphere
from scipy.special import ive

import transformer_pde as tp
from transformer_pde import clustering as cl


def _three_clusters():
    e1, e2 = np.eye(3)[0], np.eye(3)[1]
    return np.array([e1, e1, e2, -e1, -e1, e2])


def test_cluster_labels_count_and_pairs():
    x = _three_clusters()
    assert list(cl.cluster_labels(x)) == [0, 0, 1, 2, 2, 1]
    assert cl.cluster_count(x) == 3
    # pairs inside clusters: 3 of the 15 pairs
    assert cl.clustered_pair_fraction(x) == pytest.approx(3 / 15, abs=1e-15)
    # a loose threshold joins e1 and e2 (inner product 0 > -0.5) but not e1 and -e1
    assert cl.cluster_count(x, threshold=-0.5) == 1  # linked through e2
    assert cl.cluster_count(5 * x, distance=1.0) == 3  # Euclidean linking (Paper A)
    stats = cl.inner_product_stats(x)
    assert stats["min"] == -1.0 and stats["max"] == 1.0


def test_trajectory_inputs_give_series(rng):
    x = random_sphere(rng, 12, 3)
    stack = np.stack([x, _three_clusters().repeat(2, axis=0)])
    assert list(cl.cluster_count(stack)) == [12, 3]
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0))
    traj = tp.simulate(dyn, x, (0.0, 0.5), t_eval=[0.0, 0.25, 0.5], dt=0.05)
    for f in (cl.cluster_count, cl.clustered_pair_fraction, cl.order_parameter):
        assert np.shape(f(traj)) == (3,)
    assert cl.inner_product_stats(traj)["mean"].shape == (3,)
    assert cl.interaction_energy(traj, 1.0).shape == (3,)


def test_energy_exact_values_and_invariances(rng):
    x = _three_clusters()
    beta = 2.0
    expected = np.exp(beta * x @ x.T).sum() / (2 * beta * 36)
    assert cl.interaction_energy(x, beta) == pytest.approx(expected, rel=1e-14)
    # a single cluster is the maximum e^beta / (2 beta): normalized energy 1
    assert cl.interaction_energy(np.tile(x[:1], (5, 1)), 50.0, normalized=True) == pytest.approx(1.0)
    # finite for beta beyond exp's range when normalized; the raw value would overflow
    assert 0 < cl.interaction_energy(x, 1e3, normalized=True) <= 1
    with pytest.raises(ValueError, match="normalized=True"):
        cl.interaction_energy(x, 1e3)
    # permutation and rotation invariance (round-off only)
    y = random_sphere(rng, 20, 3)
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    e = cl.interaction_energy(y, 3.0)
    assert cl.interaction_energy(y[rng.permutation(20)], 3.0) == pytest.approx(e, rel=1e-13)
    assert cl.interaction_energy(y @ rot.T, 3.0) == pytest.approx(e, rel=1e-13)
    assert cl.order_parameter(y @ rot.T) == pytest.approx(cl.order_parameter(y), rel=1e-13)


@pytest.mark.parametrize("beta", [0.5, 4.0, 20.0])
def test_energy_of_uniform_densities(beta):
    # circle: (1/2beta) (2 pi)^-2 iint e^{beta cos(a - b)} = I_0(beta)/(2 beta); the FFT path
    # is the periodic trapezoid rule, spectrally accurate: round-off only at 256 cells
    circle = tp.Density.uniform(tp.CircleGrid(256))
    exact = ive(0, beta) * np.exp(beta) / (2 * beta)
    assert cl.interaction_energy(circle, beta) == pytest.approx(exact, rel=1e-13)
    assert cl.order_parameter(circle) == pytest.approx(0.0, abs=1e-14)
    # S^2: int e^{beta <x, y>} dsigma(y) = sinh(beta)/beta. The midpoint rule on the cells
    # of the uniform density is far better than its generic O(h^2) (the grid's symmetry
    # cancels the low orders): measured relative errors at beta = 4 are 4.3e-7, 4.9e-9 and
    # 2.8e-12 at n_lat = 12, 24, 48; 1e-7 at n_lat = 24 leaves a factor 20
    if beta <= 4:
        sphere = tp.Density.uniform(tp.SphereGrid(24))
        exact = np.sinh(beta) / beta / (2 * beta)
        assert cl.interaction_energy(sphere, beta) == pytest.approx(exact, rel=1e-7)


def test_density_energy_agrees_with_its_particles(rng):
    # a density is the measure sum_c rho_c |c| delta_{x_c}: same sum as weighted tokens
    grid = tp.CircleGrid(64)
    rho = tp.Density.from_function(grid, lambda a: 1.0 + 0.5 * np.cos(3 * a) + 0.2 * np.sin(a))
    w = rho.values * grid.volumes
    pts = grid.centers
    direct = (w @ np.exp(2.5 * pts @ pts.T) @ w) / (2 * 2.5)
    assert cl.interaction_energy(rho, 2.5) == pytest.approx(direct, rel=1e-13)
    assert cl.order_parameter(rho) == pytest.approx(np.linalg.norm(w @ pts), rel=1e-13)
    # the same on the sphere (row-block path)
    sgrid = tp.SphereGrid(8)
    srho = tp.Density.from_function(sgrid, lambda x: 1.0 + x[:, 2] ** 2)
    w, pts = srho.values * sgrid.volumes, sgrid.centers
    assert cl.interaction_energy(srho, 1.5) == pytest.approx((w @ np.exp(1.5 * pts @ pts.T) @ w) / 3,
                                                             rel=1e-13)


@pytest.mark.parametrize("model", ["SA", "USA"])
@pytest.mark.parametrize("d", [2, 3])
def test_energy_never_decreases_along_sa_and_usa(model, d, rng):
    """docs/math.md §2.3: dE/dt = int |X|^2 Z dmu >= 0 (SA) and int |X^U|^2 dmu >= 0 (USA).

    Checked at every saved step of an rk4 run. Between saved steps the energy changes by
    at least ~1e-6 relative here, far above the rk4 error (dt = 0.01, ~1e-10) and round-off
    (~1e-15 relative), so the allowed dip of 1e-12 relative only absorbs round-off once
    the tokens have clustered and the energy is flat.
    """
    beta = 4.0 if model == "SA" else 1.0
    att = tp.SoftmaxAttention(beta) if model == "SA" else tp.UnnormalizedAttention(beta)
    x0 = random_sphere(rng, 32, d)
    traj = tp.simulate(tp.TokenDynamics(att), x0, (0.0, 10.0), t_eval=np.linspace(0, 10, 201),
                       dt=0.01)
    e = cl.interaction_energy(traj, beta)
    assert np.all(np.diff(e) >= -1e-12 * e[:-1])
    assert e[-1] > e[0]


def test_density_peaks():
    grid = tp.CircleGrid(256)
    bumps = tp.Density.from_function(grid, lambda a: np.exp(20 * np.cos(3 * (a - 0.1))))
    assert cl.density_peaks(bumps) == 3
    assert cl.density_peaks(tp.Density.uniform(grid)) == 0
    flat = np.full(grid.shape, 1 / (2 * np.pi))
    sol = tp.DensityTrajectory(np.array([0.0, 1.0]), np.stack([bumps.values, flat]), grid, None, None)
    assert list(cl.density_peaks(sol)) == [3, 0]
    # on S^2: two antipodal bumps and a third, lower one that still clears 5x the mean
    sphere = tp.SphereGrid(24)
    axes = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    bump = tp.Density.from_function(
        sphere,
        lambda x: sum(h * np.exp(30 * (x @ a - 1)) for h, a in zip((1.0, 1.0, 0.5), axes, strict=True)))
    assert cl.density_peaks(bump) == 3
    assert cl.density_peaks(tp.Density.uniform(sphere)) == 0
    with pytest.raises(TypeError, match="Density"):
        cl.density_peaks(np.ones(8))


def test_attention_matrix_boolean_rank_leaders(rng):
    x = random_sphere(rng, 6, 3)
    att = tp.SoftmaxAttention(2.0)
    P = cl.attention_matrix(att, x)
    logits = 2.0 * x @ x.T
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert np.allclose(P, expected, atol=1e-15)
    assert np.allclose(cl.attention_matrix(tp.TokenDynamics(att), x), P, atol=0)
    # pre-LN carries radii: the weights are those of the directions
    dyn_pre = tp.TokenDynamics(att, norm="pre")
    assert np.allclose(cl.attention_matrix(dyn_pre, 3 * x), P, atol=1e-15)

    # the d = 1 Boolean limit: rows e_a or e_b, rank 2, leaders {a, b}
    B = np.zeros((5, 5))
    B[:3, 0] = 1.0
    B[3:, 4] = 1.0
    near = 0.999 * B + 0.001 / 5
    assert cl.boolean_distance(B) == 0.0
    assert cl.boolean_distance(near) == pytest.approx(1 - (0.999 + 0.0002), abs=1e-15)
    assert np.array_equal(cl.nearest_boolean(near), B)
    assert cl.numerical_rank(B) == 2 and cl.numerical_rank(near, rtol=1e-2) == 2
    assert cl.numerical_rank(near) == 2  # two distinct rows
    noisy = 0.999 * B + 0.001 * rng.dirichlet(np.ones(5), size=5)
    assert cl.numerical_rank(noisy) == 5 and cl.numerical_rank(noisy, rtol=1e-2) == 2
    assert list(cl.leaders(near)) == [0, 4]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: cl.cluster_count(np.ones(3)), ValueError, "shape"),
        (lambda: cl.cluster_count(np.ones((3, 2)), threshold=1.5), ValueError, "threshold"),
        (lambda: cl.cluster_labels(np.ones((3, 2)), distance=-1.0), ValueError, "distance"),
        (lambda: cl.interaction_energy(np.eye(3), 0.0), ValueError, "beta must be > 0"),
        (lambda: cl.interaction_energy(np.full((2, 2), np.nan), 1.0), ValueError, "finite"),
        (lambda: cl.clustered_pair_fraction(np.ones((1, 2))), ValueError, "at least 2 tokens"),
        (lambda: cl.cluster_count(tp.Density.uniform(tp.CircleGrid(8))), TypeError, "no tokens"),
        (lambda: cl.leaders(np.eye(3), threshold=1.0), ValueError, "threshold"),
        (lambda: cl.attention_matrix("softmax", np.eye(3)), TypeError, "attention"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# -- statistics of the published studies ------------------------------------------------------
def test_effective_dimension_counts_independent_clusters(rng):
    # k clusters at orthonormal points: Gram eigenvalues m (k times) and 0: d_eff = k exactly
    e = np.eye(5)
    x = np.repeat(e[:3], 4, axis=0)
    assert cl.effective_dimension(x) == 3
    # tokens of a random 2-plane of R^6 (rank 2), then a stack and a batch of them
    basis, _ = np.linalg.qr(rng.normal(size=(6, 2)))
    y = random_sphere(rng, 30, 2) @ basis.T
    assert cl.effective_dimension(y) == 2
    assert cl.effective_dimension(np.stack([x[:, :5], np.repeat(e[:1], 12, 0)])).tolist() == [3, 1]
    batch = np.stack([np.stack([x, np.repeat(e[:2], 6, 0)])] * 2)  # (2, 2, 12, 5)
    assert cl.effective_dimension(batch).tolist() == [[3, 2], [3, 2]]
    # the convention is relative to the largest eigenvalue: a cluster of 1 token beside one of
    # 11 has eigenvalue ratio 1/11, kept at rtol 0.01, dropped at rtol 0.1
    z = np.vstack([np.repeat(e[:1], 11, 0), e[1:2]])
    assert cl.effective_dimension(z) == 2 and cl.effective_dimension(z, rtol=0.1) == 1
    with pytest.raises(ValueError, match="rtol"):
        cl.effective_dimension(z, rtol=1.5)


def test_cluster_rank_equals_components_exactly_for_cliques():
    x = _three_clusters()
    assert cl.cluster_rank(x) == cl.cluster_count(x) == 3
    assert cl.cluster_sizes(x).tolist() == [2, 2, 2]
    assert cl.cluster_sizes(np.vstack([x, x[:1]])).tolist() == [3, 2, 2]
    # a chain of 5 tokens at spacing 0.01 rad, linked by neighbours only (cos 0.01 > thr >
    # cos 0.02): one connected component, but the link matrix is tridiagonal of ones, of
    # determinants D_n = D_{n-1} - D_{n-2} = 1, 0, -1, -1, 0: singular at n = 5, rank 4
    theta = 0.01 * np.arange(5)
    chain = np.stack([np.cos(theta), np.sin(theta)], 1)
    thr = 0.99992
    tri = np.eye(5) + np.eye(5, k=1) + np.eye(5, k=-1)
    assert cl.cluster_count(chain, thr) == 1
    assert cl.cluster_rank(chain, thr) == np.linalg.matrix_rank(tri) == 4
    # rank >= components always
    stack = np.stack([chain, _three_clusters()[:5, :2]])
    assert np.all(cl.cluster_rank(stack, thr) >= cl.cluster_count(stack, thr))


def test_inner_product_histogram_of_equally_spaced_tokens():
    # 8 equally spaced tokens on the circle: pair inner products cos(2 pi j/8), j = 1..4, with
    # 8, 8, 8 and 4 pairs (28 in all): cos = 0.707, 0, -0.707, -1
    theta = 2 * np.pi * np.arange(8) / 8
    x = np.stack([np.cos(theta), np.sin(theta)], 1)
    # (5 bins: no inner product within round-off of an edge)
    counts, edges = cl.inner_product_histogram(x, bins=5, density=False)
    np.testing.assert_allclose(edges, [-1.0, -0.6, -0.2, 0.2, 0.6, 1.0], atol=1e-15)
    # [-1,-.6): -1 (4 pairs) and -0.707 (8); [-.2,.2): 0 (8); [.6, 1]: 0.707 (8)
    assert counts.tolist() == [12.0, 0.0, 8.0, 0.0, 8.0]
    dens, _ = cl.inner_product_histogram(x, bins=5)
    assert np.sum(dens * 0.4) == pytest.approx(1.0, abs=1e-15)
    # a stack, a batch per system, and the ensemble pooled over the systems
    collapsed = np.tile(x[:1], (8, 1))
    batch = np.stack([np.stack([x, collapsed])] * 3)  # (3, 2, 8, 2)
    per, _ = cl.inner_product_histogram(batch, bins=5, density=False)
    assert per.shape == (3, 2, 5) and per[0, 1].tolist() == [0, 0, 0, 0, 28]
    pooled, _ = cl.inner_product_histogram(batch, bins=5, density=False, ensemble=True)
    assert pooled[0].tolist() == [12.0, 0.0, 8.0, 0.0, 36.0]
    with pytest.raises(ValueError, match="ensemble"):
        cl.inner_product_histogram(x, ensemble=True)


def test_inner_product_histogram_tends_to_the_arcsine_law(rng):
    # uniform tokens on the circle: <x_i, x_j> = cos(U), U uniform, density 1/(pi sqrt(1-u^2));
    # bin masses (arcsin(b)-arcsin(a))/pi; 400 tokens x 20 systems = 1.6e6 pairs (dependent,
    # but the bin masses err by ~ sqrt(p/N_eff) with N_eff >= 20 * 400): 0.01 absolute
    x = np.stack([random_sphere(rng, 400, 2) for _ in range(20)])[None]
    h, edges = cl.inner_product_histogram(x, bins=10, ensemble=True, density=False)
    masses = h[0] / h[0].sum()
    exact = np.diff(np.arcsin(edges)) / np.pi
    np.testing.assert_allclose(masses, exact, atol=0.01)


def test_adjacent_pair_fraction_of_consecutive_clusters():
    e = np.eye(3)
    x = np.repeat(e, [4, 3, 5], axis=0)  # 3 clusters of consecutive tokens, n = 12
    assert cl.adjacent_pair_fraction(x) == pytest.approx(1 - 2 / 11, abs=1e-15)
    assert cl.adjacent_pair_fraction(e[[0, 1, 0, 1]]) == 0.0
    assert cl.adjacent_pair_fraction(np.stack([x, x[::-1]])).tolist() == [9 / 11, 9 / 11]


def test_head_eigenvector_similarity_of_rotated_heads(rng):
    # V_1 symmetric with eigenvectors R, V_2 = S V_1 S^T for a rotation S by phi in the
    # (e1, e2) plane: |<u_a, S u_b>| is known; here R = I so C_12 = |S| entrywise
    phi = 0.3
    S = np.eye(3)
    S[:2, :2] = [[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]]
    V1 = np.diag([3.0, 2.0, 1.0])
    heads = [tp.SoftmaxAttention(1.0, V=V1), tp.SoftmaxAttention(1.0, V=S @ V1 @ S.T)]
    C = cl.head_eigenvector_similarity(tp.TokenDynamics(tp.MultiHeadAttention(heads)))
    assert C.shape == (2, 2, 3, 3)
    np.testing.assert_allclose(C[0, 0], np.eye(3), atol=1e-14)
    np.testing.assert_allclose(C[0, 1], np.abs(S), atol=1e-12)  # eig's round-off
    np.testing.assert_allclose(C[1, 0], np.abs(S).T, atol=1e-12)
    with pytest.raises(TypeError, match="MultiHeadAttention"):
        cl.head_eigenvector_similarity(tp.SoftmaxAttention(1.0))


def test_covariance_rank_of_gaussian_runs():
    # softmax, Q = K = V = I: Sigma' = 2 Sigma^2, so (Sigma^{-1})' = -2 I and
    # Sigma^{-1}(t) = Sigma_0^{-1} - 2t I exactly, blowing up at t* = 1/(2 lambda_max(Sigma_0)).
    # Just before t* the shape has the rank of the top eigenspace of Sigma_0: with
    # t = t* - 1e-7 the other eigenvalues are ~2e-7 of the top one (< rtol 1e-6)
    dyn = tp.TokenDynamics(tp.SoftmaxAttention(1.0), geometry="euclidean")
    t_near = 0.5 - 1e-7
    covs0 = (np.diag([1.0, 0.5, 0.25]), np.diag([1.0, 1.0, 0.25]), np.diag([1.0, 1.0, 1.0]))
    runs = [tp.gaussian_moments(dyn, np.zeros(3), c, [0.0, 0.25, t_near]) for c in covs0]
    assert cl.covariance_rank(runs).tolist() == [1, 2, 3]
    assert cl.covariance_rank(runs, k=1).tolist() == [3, 3, 3]
    assert np.bincount(cl.covariance_rank(runs)).tolist() == [0, 1, 1, 1]
    assert cl.covariance_rank(np.array([np.diag([1.0, 1e-7]), np.diag([1.0, 1e-5])])).tolist() == [1, 2]
    with pytest.raises(TypeError, match="GaussianTrajectory"):
        cl.covariance_rank([np.eye(2)])
