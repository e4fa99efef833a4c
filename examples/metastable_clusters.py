"""Metastable clusters on the circle: about k*(beta) clusters form, persist, then merge.

SA tokens (post-LN, Q = K = V = I) start equally spaced on the circle with a small
seeded jitter. They first gather into about k*(beta) = argmax_k k^2 I_k(beta) clusters
(docs/math.md §2.4), which persist for a long time before merging two by two; the interaction
energy only grows. Run it with ``python examples/metastable_clusters.py``.
"""

import numpy as np

import transformer_pde as tp
from transformer_pde import clustering, theory

beta, n = 9.0, 128
rng = np.random.default_rng(1)
angles = 2 * np.pi * (np.arange(n) + 0.5) / n + 0.01 * rng.standard_normal(n)
x0 = np.stack([np.cos(angles), np.sin(angles)], axis=1)
dyn = tp.TokenDynamics(tp.SoftmaxAttention(beta))                 # SA, post-LN on S^1
t = np.geomspace(1.0, 300.0, 13)
traj = tp.simulate(dyn, x0, (0.0, t[-1]), t_eval=t, method="dopri5", rtol=1e-8)
counts = clustering.cluster_count(traj)                          # <x_i, x_j> > 0.9999 links
energy = clustering.interaction_energy(traj, beta, normalized=True)
print(f"k*(beta={beta:g}) = {theory.fastest_circle_mode(beta)}")
for ti, c, e in zip(t, counts, energy, strict=True):
    print(f"t = {ti:7.2f}: {c:3d} clusters, E / E_max = {e:.4f}")
