"""Numba kernels for attention velocity fields (private).

Every kernel works on *projected* inputs so that the O(n^2) loop only computes
dot products of length k and sums of length d:

- ``qx`` (m, k): ``beta * Q x_i`` for the m target points,
- ``ky`` (n, k): ``K y_j`` for the n source points,
- ``vy`` (n, d): ``V y_j`` for the n source points,
- ``colw`` (n,): an additive log-weight per source column (log mass, L2 bias, ...).

Targets are processed in parallel (``numba.prange``); each target streams over the
sources with O(k + d) scratch memory, so no n x n array is ever allocated.
Softmax-type kernels use an online log-sum-exp (running maximum), so logits of size
1e3 and more stay finite. Kernels trust their inputs: validation happens in
:mod:`transformer_pde.attention`.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "softmax_field",
    "exp_field",
    "sigmoid_field",
    "sinkhorn_potentials",
    "plan_field",
]

_JIT = dict(parallel=True, cache=True)


@numba.njit(**_JIT)
def softmax_field(qx, ky, vy, colw, causal, out):
    """out_i = sum_j softmax_j(<qx_i, ky_j> + colw_j) vy_j  (j <= i if causal)."""
    m, k = qx.shape
    n, d = vy.shape
    for i in numba.prange(m):
        jmax = i + 1 if causal else n
        acc = np.zeros(d)
        run_max = -np.inf
        total = 0.0
        for j in range(jmax):
            logit = colw[j]
            if logit == -np.inf:  # a source with zero mass
                continue
            for c in range(k):
                logit += qx[i, c] * ky[j, c]
            if logit > run_max:
                scale = np.exp(run_max - logit)
                total *= scale
                for c in range(d):
                    acc[c] *= scale
                run_max = logit
            w = np.exp(logit - run_max)
            total += w
            for c in range(d):
                acc[c] += w * vy[j, c]
        for c in range(d):
            out[i, c] = acc[c] / total
    return out


@numba.njit(**_JIT)
def exp_field(qx, ky, vy, colw, out):
    """out_i = sum_j exp(<qx_i, ky_j> + colw_j) vy_j, accumulated with a running shift."""
    m, k = qx.shape
    n, d = vy.shape
    for i in numba.prange(m):
        acc = np.zeros(d)
        run_max = -np.inf
        for j in range(n):
            logit = colw[j]
            if logit == -np.inf:  # a source with zero mass
                continue
            for c in range(k):
                logit += qx[i, c] * ky[j, c]
            if logit > run_max:
                scale = np.exp(run_max - logit)
                for c in range(d):
                    acc[c] *= scale
                run_max = logit
            w = np.exp(logit - run_max)
            for c in range(d):
                acc[c] += w * vy[j, c]
        shift = np.exp(run_max)
        for c in range(d):
            out[i, c] = acc[c] * shift
    return out


@numba.njit(**_JIT)
def sigmoid_field(qx, ky, vy, bias, colmass, out):
    """out_i = sum_j colmass_j * sigmoid(<qx_i, ky_j> + bias) vy_j."""
    m, k = qx.shape
    n, d = vy.shape
    for i in numba.prange(m):
        acc = np.zeros(d)
        for j in range(n):
            z = bias
            for c in range(k):
                z += qx[i, c] * ky[j, c]
            if z >= 0.0:
                s = 1.0 / (1.0 + np.exp(-z))
            else:
                e = np.exp(z)
                s = e / (1.0 + e)
            w = colmass[j] * s
            for c in range(d):
                acc[c] += w * vy[j, c]
        for c in range(d):
            out[i, c] = acc[c]
    return out


@numba.njit(parallel=True, cache=True)
def _lse_rows(qx, ky, colw, out):
    """out_i = log sum_j exp(<qx_i, ky_j> + colw_j)."""
    m, k = qx.shape
    n = ky.shape[0]
    for i in numba.prange(m):
        run_max = -np.inf
        total = 0.0
        for j in range(n):
            logit = colw[j]
            if logit == -np.inf:  # a source with zero mass
                continue
            for c in range(k):
                logit += qx[i, c] * ky[j, c]
            if logit > run_max:
                total *= np.exp(run_max - logit)
                run_max = logit
            total += np.exp(logit - run_max)
        out[i] = run_max + np.log(total)
    return out


@numba.njit(parallel=True, cache=True)
def _lse_cols(qx, ky, roww, out):
    """out_j = log sum_i exp(<qx_i, ky_j> + roww_i)."""
    m, k = qx.shape
    n = ky.shape[0]
    for j in numba.prange(n):
        run_max = -np.inf
        total = 0.0
        for i in range(m):
            logit = roww[i]
            if logit == -np.inf:
                continue
            for c in range(k):
                logit += qx[i, c] * ky[j, c]
            if logit > run_max:
                total *= np.exp(run_max - logit)
                run_max = logit
            total += np.exp(logit - run_max)
        out[j] = run_max + np.log(total)
    return out


@numba.njit(cache=True)
def sinkhorn_potentials(qx, ky, loga, n_iter, tol):
    """Log-domain Sinkhorn scaling of exp(<qx_i, ky_j>) to marginals a on both sides.

    Each sweep first makes the row sums exact (``f`` update), then measures the
    column error ``err = max_j |log(colsum_j / a_j)|`` of that plan; it stops when
    ``err <= tol`` or after ``n_iter`` sweeps, otherwise it updates ``g``. So the
    returned plan ``pi_ij = exp(f_i + g_j + <qx_i, ky_j> + loga_i + loga_j)`` has
    exact row sums ``a_i`` and column sums within a factor ``exp(err)`` of ``a_j``;
    with ``n_iter = 1`` it is the softmax plan. Returns ``(f, g, n_done, err)``.
    """
    m = qx.shape[0]
    n = ky.shape[0]
    f = np.zeros(m)
    g = np.zeros(n)
    tmp_r = np.empty(m)
    tmp_c = np.empty(n)
    colw = np.empty(n)
    roww = np.empty(m)
    err = np.inf
    n_done = 0
    for it in range(n_iter):
        for j in range(n):
            colw[j] = g[j] + loga[j]
        _lse_rows(qx, ky, colw, tmp_r)
        for i in range(m):
            f[i] = -tmp_r[i]
            roww[i] = f[i] + loga[i]
        _lse_cols(qx, ky, roww, tmp_c)
        err = 0.0
        for j in range(n):
            delta = abs(tmp_c[j] + g[j])
            if delta > err:
                err = delta
        n_done = it + 1
        if err <= tol:
            break
        if it + 1 < n_iter:
            for j in range(n):
                g[j] = -tmp_c[j]
    return f, g, n_done, err


@numba.njit(**_JIT)
def plan_field(qx, ky, vy, rowf, colw, out):
    """out_i = sum_j exp(<qx_i, ky_j> + rowf_i + colw_j) vy_j (a scaled plan, no row renormalisation)."""
    m, k = qx.shape
    n, d = vy.shape
    for i in numba.prange(m):
        acc = np.zeros(d)
        for j in range(n):
            logit = rowf[i] + colw[j]
            for c in range(k):
                logit += qx[i, c] * ky[j, c]
            w = np.exp(logit)
            for c in range(d):
                acc[c] += w * vy[j, c]
        for c in range(d):
            out[i, c] = acc[c]
    return out
