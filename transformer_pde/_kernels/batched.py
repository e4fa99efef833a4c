"""Numba kernels for a batch of independent token systems (private).

A batch is a leading axis: B systems of n tokens each, advanced together. Every kernel
here takes the per-system projections

- ``qx`` (B, m, k): ``beta_b * Q_b x_i`` of system b,
- ``kyT`` (B, k, n): ``K_b y_j``, transposed per system,
- ``vyT`` (B, d, n): ``V_b y_j``, transposed per system,
- ``colw`` (B, n): the additive log-weight of each source (``weights`` (B, n) for sigmoid),

and calls the single-system serial kernel of :mod:`transformer_pde._kernels.attention`
on each system: ``name_batch`` spreads the systems over Numba's threads
(``numba.prange``), ``name_batch_serial`` runs them one after the other on the calling
thread; :mod:`transformer_pde._threads` chooses between the two per call. Each system is
computed by exactly the kernel a separate call would use on it, so a batch gives the
separate calls' numbers. With Q = K = I (per-system beta and V allowed) and no mask, SA
and USA batches go through ``pairs_batch``: each system by the symmetric pairs of
:func:`~transformer_pde._kernels.attention.symmetric_field` in one chunk (half the
exponentials; equal to the separate calls, which use the same pairs in 8 chunks, to
rounding); a system whose shared shift does not apply is marked undone, and the caller
gives those systems to the generic kernels.

Not cached on disk (``cache=False``): Numba's cache checks only the file of the cached
function, so a cached batch kernel would keep an old copy of the row kernels it calls
after :mod:`transformer_pde._kernels.attention` changes. Compiling costs about a second
per kernel at the first batched call of a process.

Kernels trust their inputs: validation happens in :mod:`transformer_pde.attention`.
"""

from __future__ import annotations

import numba
import numpy as np

from .attention import (
    _n_chunks,
    _sym_chunk,
    _sym_finish,
    exp_field_serial,
    pairs_shift,
    sigmoid_field_serial,
    softmax_field_serial,
)

__all__ = [
    "softmax_batch",
    "softmax_batch_serial",
    "exp_batch",
    "exp_batch_serial",
    "pairs_batch",
    "pairs_batch_serial",
    "sigmoid_batch",
    "sigmoid_batch_serial",
]

_PARALLEL = dict(parallel=True, cache=False)
_SERIAL = dict(parallel=False, nogil=True, cache=False)


@numba.njit(**_PARALLEL)
def softmax_batch(qx, kyT, vyT, colw, causal, out):
    """out[b] = softmax_field_serial(qx[b], kyT[b], vyT[b], colw[b], causal), systems in parallel."""
    for b in numba.prange(qx.shape[0]):
        softmax_field_serial(qx[b], kyT[b], vyT[b], colw[b], causal, out[b])
    return out


@numba.njit(**_SERIAL)
def softmax_batch_serial(qx, kyT, vyT, colw, causal, out):
    """:func:`softmax_batch` on the calling thread only (releases the GIL)."""
    for b in range(qx.shape[0]):
        softmax_field_serial(qx[b], kyT[b], vyT[b], colw[b], causal, out[b])
    return out


@numba.njit(**_PARALLEL)
def exp_batch(qx, kyT, vyT, colw, causal, out):
    """out[b] = exp_field_serial(qx[b], kyT[b], vyT[b], colw[b], causal) (unnormalised), in parallel."""
    for b in numba.prange(qx.shape[0]):
        exp_field_serial(qx[b], kyT[b], vyT[b], colw[b], causal, out[b])
    return out


@numba.njit(**_SERIAL)
def exp_batch_serial(qx, kyT, vyT, colw, causal, out):
    """:func:`exp_batch` on the calling thread only (releases the GIL)."""
    for b in range(qx.shape[0]):
        exp_field_serial(qx[b], kyT[b], vyT[b], colw[b], causal, out[b])
    return out


@numba.njit(inline="always")
def _pairs_system(qx, kyT, vyT, colw, normalize, out, tu, aw):
    """One system by the symmetric pairs (all rows in one chunk; ``tu`` (1, 4, n), ``aw``
    (n,) scratch); False, ``out`` untouched, where their shared shift does not apply."""
    shift = pairs_shift(qx, kyT, colw, normalize)
    if shift == np.inf:
        return False
    scale = 1.0 if normalize else np.exp(shift)
    tu[:] = 0.0
    for j in range(colw.shape[0]):
        aw[j] = np.exp(colw[j])
    # the argument types of symmetric_field's call (literal 0 and 1 would compile another one)
    _sym_chunk(qx, kyT, vyT, aw, shift, np.int64(0), np.int64(1), tu[0])
    _sym_finish(tu, normalize, scale, out)
    return True


@numba.njit(**_PARALLEL)
def pairs_batch(qx, kyT, vyT, colw, normalize, out, done):
    """out[b] = the field of system b by the symmetric pairs, done[b] whether they applied
    (see :func:`~transformer_pde._kernels.attention.symmetric_field`), systems in parallel."""
    n_sys = qx.shape[0]
    chunks = _n_chunks(n_sys)
    for c in numba.prange(chunks):
        tu, aw = np.empty((1, 4, qx.shape[1])), np.empty(qx.shape[1])
        for b in range(c, n_sys, chunks):
            done[b] = _pairs_system(qx[b], kyT[b], vyT[b], colw[b], normalize, out[b], tu, aw)
    return out


@numba.njit(**_SERIAL)
def pairs_batch_serial(qx, kyT, vyT, colw, normalize, out, done):
    """:func:`pairs_batch` on the calling thread only (releases the GIL)."""
    tu, aw = np.empty((1, 4, qx.shape[1])), np.empty(qx.shape[1])
    for b in range(qx.shape[0]):
        done[b] = _pairs_system(qx[b], kyT[b], vyT[b], colw[b], normalize, out[b], tu, aw)
    return out


@numba.njit(**_PARALLEL)
def sigmoid_batch(qx, kyT, vyT, bias, weights, out):
    """out[b] = sigmoid_field_serial(qx[b], kyT[b], vyT[b], bias, weights[b]), in parallel."""
    for b in numba.prange(qx.shape[0]):
        sigmoid_field_serial(qx[b], kyT[b], vyT[b], bias, weights[b], out[b])
    return out


@numba.njit(**_SERIAL)
def sigmoid_batch_serial(qx, kyT, vyT, bias, weights, out):
    """:func:`sigmoid_batch` on the calling thread only (releases the GIL)."""
    for b in range(qx.shape[0]):
        sigmoid_field_serial(qx[b], kyT[b], vyT[b], bias, weights[b], out[b])
    return out
