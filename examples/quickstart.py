"""Quickstart: softmax self-attention tokens on the sphere S^2 collapse to one cluster.

The code below is the library example of README.md, line for line (a test checks it).
Run it with ``python examples/quickstart.py``.
"""

import numpy as np

import transformer_pde as tp

rng = np.random.default_rng(0)
x0 = rng.normal(size=(32, 3))
x0 /= np.linalg.norm(x0, axis=1, keepdims=True)                   # 32 tokens uniform on S^2
att = tp.SoftmaxAttention(beta=1.0)                               # Q = K = V = I
dyn = tp.TokenDynamics(att, geometry="sphere", norm="post")       # post-LN: project on T_x S^2
traj = tp.simulate(dyn, x0, t_span=(0.0, 15.0), method="rk4", dt=0.05)
gram = traj.x[-1] @ traj.x[-1].T                                  # <x_i(T), x_j(T)>, (32, 32)
print(f"min_ij <x_i, x_j>: {np.min(x0 @ x0.T):+.4f} at t=0, {gram.min():+.8f} at t={traj.t[-1]:g}")
