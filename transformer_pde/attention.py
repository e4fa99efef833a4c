r"""Attention variants: the interaction between tokens, without time stepping.

Each variant is a small object holding the inverse temperature ``beta``
and the matrices ``Q``, ``K`` (shape (k, d), default the identity of the data
dimension) and ``V`` (shape (d, d), default the identity). Given tokens
:math:`x_1, \dots, x_n \in \mathbb R^d` with weights :math:`a_j` (default
:math:`1/n`, i.e. the empirical measure) it returns the attention output

.. math::

    A_i = \sum_{j} W_{ij}\, V x_j, \qquad \ell_{ij} = \beta \langle Q x_i, K x_j \rangle,

whose weight matrix :math:`W` depends on the variant (docs/math.md §1.1, 2.1, 3.1).
The output is *not* projected to any tangent space: that is the job of
:class:`transformer_pde.TokenDynamics`.

Three views of the same map are offered:

- :meth:`Attention.velocity`: the Numba kernel (serial or parallel over tokens, chosen per
  call by :mod:`transformer_pde._threads`; O(n d) memory,
  log-sum-exp stabilised); what the integrators call.
- :meth:`Attention.velocity_reference`: a readable dense NumPy computation
  ``matrix(x) @ (x @ V.T)``; tests check that both agree to 1e-12.
- :meth:`Attention.matrix`: the dense n x n matrix :math:`W` (diagnostics, small n).

References: Geshkovski, Letrouit, Polyanskiy, Rigollet, *A mathematical perspective on
Transformers* (arXiv 2312.10794); Castin, Ablin, Carrillo, Peyré, *A unified perspective
on the dynamics of deep Transformers* (arXiv 2501.18322); Sander, Ablin, Blondel, Peyré,
*Sinkformers* (arXiv 2110.11773).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from scipy.special import expit, log_softmax, logsumexp

from . import _fastsum, _spec, _threads
from . import _validation as _v
from ._fastsum import SummationReport
from ._kernels import attention as _k
from ._kernels import batched as _kb

__all__ = [
    "Attention",
    "SoftmaxAttention",
    "ALiBiAttention",
    "UnnormalizedAttention",
    "L2Attention",
    "SigmoidAttention",
    "SinkhornAttention",
    "MultiHeadAttention",
    "Layers",
    "SinkhornConvergenceWarning",
    "SummationReport",
]


def _softmax(qx, kx, vx, colw, causal, out, pairs=False):
    """out_i = sum_j softmax_j(<qx_i, kx_j> + colw_j) vx_j: fused kernel or BLAS tiles.

    ``colw`` (float64) is shifted by its maximum (softmax does not change) so that the
    logits carry no large common offset (log(1/n) for uniform weights) into the rounding
    of a float32 computation; it is then cast to the dtype of ``qx``. ``pairs``: the
    targets are the sources and <qx_i, kx_j> = <qx_j, kx_i> (:func:`_symmetric_pairs`).
    """
    colw = (colw - np.max(colw)).astype(qx.dtype)
    if pairs and _symmetric_pairs(qx, kx, vx, colw, True, out):
        return
    if _fused(qx, vx):
        _threads.run(_name("softmax", qx), len(qx) * len(kx), _k.softmax_field_serial,
                     _k.softmax_field, qx, _t(kx), _t(vx), colw, causal, out)
    else:
        _tiled(qx, kx, vx, colw, _k.SOFTMAX, 0.0, causal, out)


def _symmetric_pairs(qx, kx, vx, colw, normalize, out) -> bool:
    r"""The field of a token set on itself by the symmetric pairs, if they apply.

    When the targets are the sources and :math:`\langle qx_i, kx_j\rangle = \langle qx_j,
    kx_i\rangle` (:meth:`Attention._pairs_symmetric`), each weight
    :math:`e_{ij} = e^{\langle qx_i, kx_j\rangle - b}` serves the pair (i, j) and (j, i),
    so half the exponentials (and, on the BLAS path, half the logit products) are
    computed (docs/math.md §9.14). One shift b for all rows, the Cauchy-Schwarz bound
    :math:`\max_i|qx_i|\max_j|kx_j|`, where it keeps every row's weights in range
    (:func:`~transformer_pde._kernels.attention.pairs_shift`); float64. k, d <= 3: the
    compiled kernel; k + d above the fused kernels' sizes: BLAS tiles
    (:func:`_tiled_pairs`); sizes between: the generic fused rows. Returns False,
    having done nothing, where they do not apply.
    """
    small = qx.shape[1] <= 3 and 1 <= vx.shape[1] <= 3
    if qx.dtype != np.float64 or len(qx) < 2 or not (small or not _fused(qx, vx)):
        return False
    if small:
        return _threads.run("pairs", len(qx) * len(kx) // 2, _k.symmetric_field_serial,
                            _k.symmetric_field, qx, _t(kx), _t(vx), colw, normalize, out)
    b = _k.pairs_shift(qx, _t(kx), colw, normalize)
    if b == np.inf:
        return False
    with np.errstate(under="ignore"):
        a = np.exp(colw)
    _tiled_pairs(qx, kx, vx, a, b, normalize, 1.0 if normalize else float(np.exp(b)), out)
    return True


def _symmetric_pairs_batch(qx, kx, vx, colw, normalize, out) -> np.ndarray | None:
    """:func:`_symmetric_pairs` for a batch (B, n, .) of small systems (k, d <= 3).

    Returns whether each system was done (a system whose shared shift does not apply is
    left to the caller), or None where the pairs do not apply to the batch at all.
    """
    if qx.dtype != np.float64 or qx.shape[1] < 2 or not (qx.shape[2] <= 3 and 1 <= vx.shape[2] <= 3):
        return None
    kyT = np.ascontiguousarray(np.swapaxes(kx, 1, 2))
    vyT = kyT if vx is kx else np.ascontiguousarray(np.swapaxes(vx, 1, 2))
    done = np.zeros(qx.shape[0], dtype=np.bool_)
    _threads.run("pairs-batch", qx.shape[0] * qx.shape[1] * kx.shape[1] // 2, _kb.pairs_batch_serial,
                 _kb.pairs_batch, qx, kyT, vyT, colw, normalize, out, done)
    return done


def _batched_rest(done, run, qx, kx, vx, colw, out):
    """``run(qx, kx, vx, colw, out)`` (the generic batched kernel) on the systems not ``done``."""
    if done is None:
        run(qx, kx, vx, colw, out)
    elif not done.all():
        rest = np.flatnonzero(~done)
        sub = np.empty((len(rest),) + out.shape[1:], dtype=out.dtype)
        run(qx[rest], kx[rest], vx[rest], colw[rest], sub)
        out[rest] = sub


#: rows of a square tile of the symmetric pairs on the BLAS path (a 256 x 256 float64
#: tile is 512 KiB: in a core's L2 cache beside its operands)
_PAIR_TILE = 256


def _tiled_pairs(qx, kx, vx, a, shift, normalize, scale, out):
    """The symmetric pairs by BLAS tiles.

    For row blocks J <= I, the tile E = exp(qx_I kx_J^T - shift) adds E (a v, a)_J to the
    sums of rows I and, for J < I, E^T (a v, a)_I to those of rows J.

    The tile pairs are dealt in turn to a fixed number of groups (Numba's pool size),
    each with its own sums, added in group order at the end: one or several Python
    threads (BLAS and :func:`~transformer_pde._kernels.attention.exp_shifted` release the
    GIL) give the same numbers.
    """
    n, d = vx.shape
    va = np.empty((n, d + 1))
    va[:, :d] = a[:, None] * vx
    va[:, d] = a
    starts = range(0, n, _PAIR_TILE)
    tiles = [(i0, j0) for i0 in starts for j0 in starts if j0 <= i0]
    groups = numba.config.NUMBA_NUM_THREADS
    sums = np.zeros((groups, n, d + 1))
    _threads.run("tiles-pairs", n * n // 2, _pair_groups_serial, _pair_groups_parallel,
                 qx, kx, va, shift, tiles, sums)
    total = sums.sum(axis=0)
    if normalize:
        out[:] = total[:, :d] / total[:, d:]
    else:
        out[:] = total[:, :d] * scale


def _pair_group(qx, kx, va, shift, tiles, sums, g):
    """The tiles g, g + groups, ... of :func:`_tiled_pairs` into ``sums[g]``."""
    acc = sums[g]
    for i0, j0 in tiles[g :: len(sums)]:
        rows, cols = slice(i0, i0 + _PAIR_TILE), slice(j0, j0 + _PAIR_TILE)
        tile = _k.exp_shifted(qx[rows] @ kx[cols].T, shift)
        acc[rows] += tile @ va[cols]
        if j0 < i0:
            acc[cols] += tile.T @ va[rows]


def _pair_groups_serial(qx, kx, va, shift, tiles, sums):
    _pair_groups_of(qx, kx, va, shift, tiles, sums, 0, 1)


def _pair_groups_parallel(qx, kx, va, shift, tiles, sums):
    """:func:`_pair_groups_serial` with the groups on as many threads as the limit."""
    workers = min(_threads.get_num_threads(), len(sums))
    jobs = [_tile_executor().submit(_pair_groups_of, qx, kx, va, shift, tiles, sums, w, workers)
            for w in range(1, workers)]
    try:
        _pair_groups_of(qx, kx, va, shift, tiles, sums, 0, workers)
    finally:
        for job in jobs:
            job.result()


def _pair_groups_of(qx, kx, va, shift, tiles, sums, first, step):
    for g in range(first, len(sums), step):
        _pair_group(qx, kx, va, shift, tiles, sums, g)


def _name(kernel: str, qx: np.ndarray) -> str:
    """The size-class name of a kernel call for :func:`_threads.run` (per dtype)."""
    return kernel if qx.dtype == np.float64 else kernel + "32"


def _work_dtype(dtype) -> np.dtype:
    """The computing dtype of ``velocity(..., dtype=)``: float64 (None) or float32."""
    if dtype is None:
        return np.dtype(np.float64)
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be np.float64, np.float32 or None, got {dtype!r}") from exc
    if dt not in (np.float64, np.float32):
        raise ValueError(f"dtype must be np.float64, np.float32 or None, got {dt}")
    return dt


def _batch_rows(row, kx: np.ndarray) -> np.ndarray:
    """A per-source row (n,) or per-system rows (B, n) as a contiguous (B, n) array."""
    return np.ascontiguousarray(np.broadcast_to(row, kx.shape[:2]), dtype=kx.dtype)


def _batched(name, serial, parallel, qx, kx, vx, extra, out, kind, colw, bias, causal):
    """The batched row kernel of a batch of systems: qx (B, m, k), kx (B, n, k), vx (B, n, d).

    ``serial(qx, kyT, vyT, *extra, out)`` or its parallel twin (over systems), chosen per call
    by :mod:`transformer_pde._threads`; for large k + d, where the single-system path uses
    BLAS tiles, the systems go through those tiles one by one (``kind``, ``colw`` (B, n),
    ``bias``, ``causal`` as :func:`_tiled` takes them).
    """
    if not _fused(qx[0], vx[0]):
        for b in range(len(qx)):
            _tiled(qx[b], kx[b], vx[b], colw[b], kind, bias, causal, out[b])
        return
    kyT = np.ascontiguousarray(np.swapaxes(kx, 1, 2))
    vyT = kyT if vx is kx else np.ascontiguousarray(np.swapaxes(vx, 1, 2))  # K = V = I: one copy
    _threads.run(name + "-batch", qx.shape[0] * qx.shape[1] * kx.shape[1], serial, parallel,
                 qx, kyT, vyT, *extra, out)


def _sinkhorn_serial(*args):
    return _k.sinkhorn_potentials(*args, True)


def _sinkhorn_parallel(*args):
    return _k.sinkhorn_potentials(*args, False)


def _fused(qx: np.ndarray, vx: np.ndarray) -> bool:
    """Whether the fused per-row kernel beats BLAS tiles for these k and d."""
    return qx.shape[1] + vx.shape[1] <= _FUSED_MAX_KD


def _tiled(qx, kx, vx, colw, kind, bias, causal, out):
    """out_i = scale_i sum_j W_ij vx_j over tiles of rows: BLAS logits, Numba weights.

    Memory O(B n) per thread with B <= _TILE_ENTRIES // n rows per tile; never an n x n
    array. The tiles run on the calling thread or on :func:`_threads.get_num_threads`
    Python threads at once (BLAS and :func:`~transformer_pde._kernels.attention.weight_rows`
    release the GIL), chosen per call by :mod:`transformer_pde._threads` like the row
    kernels: the timings also decide against the threads when BLAS itself runs on
    several (``OPENBLAS_NUM_THREADS``) and they would compete for the cores.
    """
    _threads.run(_name(f"tiles{kind}", qx), len(qx) * len(kx), _tiles_serial, _tiles_parallel,
                 qx, kx, vx, colw, kind, bias, causal, out)


def _tile_rows(m: int, n: int) -> int:
    """Rows per tile: at most _TILE_ENTRIES // n, and a tile for each Numba thread.

    The same tiles serial and parallel: the same BLAS calls, the same numbers.
    """
    return max(1, min(_TILE_ENTRIES // n, -(-m // numba.config.NUMBA_NUM_THREADS)))


def _tiles(qx, kx, vx, colw, kind, bias, causal, out, rows, first, step):
    """The tiles number first, first + step, ... (``rows`` target rows each) of :func:`_tiled`."""
    n = len(kx)
    scale = np.empty(rows)  # float64 for either dtype
    for i0 in range(first * rows, len(qx), step * rows):
        i1 = min(len(qx), i0 + rows)
        n_src = min(n, i1) if causal else n  # causal rows never see sources beyond i1
        tile = qx[i0:i1] @ kx[:n_src].T
        _k.weight_rows(tile, colw[:n_src], kind, bias, causal, i0, scale)
        out[i0:i1] = (tile @ vx[:n_src]) * scale[: i1 - i0, None]


def _tiles_serial(qx, kx, vx, colw, kind, bias, causal, out):
    _tiles(qx, kx, vx, colw, kind, bias, causal, out, _tile_rows(len(qx), len(kx)), 0, 1)


def _tiles_parallel(qx, kx, vx, colw, kind, bias, causal, out):
    """:func:`_tiles_serial` on as many threads as the thread limit.

    The tiles are dealt in turn (interleaved: the rows of a causal triangle balance).
    """
    workers = _threads.get_num_threads()
    rows = _tile_rows(len(qx), len(kx))
    args = (qx, kx, vx, colw, kind, bias, causal, out, rows)
    jobs = [_tile_executor().submit(_tiles, *args, w, workers) for w in range(1, workers)]
    try:
        _tiles(*args, 0, workers)
    finally:
        for job in jobs:
            job.result()  # waits; re-raises an error of a worker


_executor: ThreadPoolExecutor | None = None


def _tile_executor() -> ThreadPoolExecutor:
    """The worker threads of :func:`_tiles_parallel` (created on first use)."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max(1, numba.config.NUMBA_NUM_THREADS - 1),
                                       thread_name_prefix="transformer_pde-tiles")
    return _executor


def check_finite_output(out: np.ndarray, who: str) -> np.ndarray:
    """Return ``out`` (n, d) or (B, n, d), or raise ``FloatingPointError`` naming the first bad token."""
    bad = ~np.all(np.isfinite(out), axis=-1)
    if bad.any():
        where = np.unravel_index(int(np.argmax(bad)), bad.shape)
        place = f"token {where[0]}" if bad.ndim == 1 else f"token {where[1]} of system {where[0]}"
        raise FloatingPointError(
            f"{who}: the output is not finite for {place} ({int(bad.sum())} tokens in all); "
            f"it overflows {out.dtype} (unnormalized or sigmoid weights grow like "
            "exp(beta <Qx, Ky>))"
        )
    return out


class SinkhornConvergenceWarning(RuntimeWarning):
    """Sinkhorn scaling stopped at ``n_iter`` sweeps before reaching ``tol``."""


def _check_mask(causal, include_self) -> tuple[bool, bool]:
    """``(causal, include_self)`` as bools, or TypeError/ValueError naming the parameter."""
    for name, value in (("causal", causal), ("include_self", include_self)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool, got {value!r}")
    if not include_self and not causal:
        raise ValueError(
            "include_self=False (the mask j < i) needs causal=True; unmasked attention always "
            "includes the token itself"
        )
    return bool(causal), bool(include_self)


def _causal_mask(n: int, include_self: bool) -> np.ndarray:
    """The (n, n) boolean mask j <= i (``include_self``) or j < i."""
    return np.tri(n, k=0 if include_self else -1, dtype=bool)


def _mask_params(att) -> str:
    """The ``causal``/``include_self`` part of a repr."""
    return f", causal={att.causal}" + ("" if att.include_self else ", include_self=False")


def _log_weights(weights: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(weights)


def _t(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.T)


def _out_dtype(x: np.ndarray) -> np.dtype:
    """float32 for float32 tokens, float64 otherwise: the dtype the kernels compute in."""
    return np.dtype(np.float32) if x.dtype == np.float32 else np.dtype(np.float64)


def _mT(a: np.ndarray) -> np.ndarray:
    """The transpose of a matrix (k, d), or of each matrix of a stack (B, k, d)."""
    return np.swapaxes(a, -1, -2)


def _batch_array(value, name: str, ndim: int, sizes: dict) -> np.ndarray:
    """A parameter with ``ndim`` dimensions, or ``ndim + 1`` with a leading batch axis.

    Records the batch size B in ``sizes[name]`` when the axis is there.
    """
    if ndim == 2 and np.ndim(value) == 2:
        return _v.as_matrix(value, name, (None, None))
    arr = np.asarray(value)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating)
                                   or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != ndim + 1:
        want = ("a real number or an array of shape (B,) (one per system)" if ndim == 0 else
                "have shape (k, d), or (B, k, d) with a leading batch axis")
        raise ValueError(f"{name} must {'be ' if ndim == 0 else ''}{want}, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if arr.shape[0] < 1:
        raise ValueError(f"{name} has an empty batch axis (shape {arr.shape}); a batch needs B >= 1")
    if not np.all(np.isfinite(arr)):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        raise ValueError(f"{name} must be finite, but entry {bad} is {arr[bad]}")
    sizes[name] = arr.shape[0]
    return arr


def check_batch(batch: int | None, x: np.ndarray, name: str, who: str) -> None:
    """Raise ``ValueError`` unless the states ``x`` suit a model with ``batch`` systems.

    A batched model (``batch == B``) needs a batch of states (B, n, d); a model without
    batched parameters takes one system (n, d) or any batch (B, n, d).
    """
    if batch is None:
        return
    if x.ndim != 3:
        raise ValueError(
            f"{who} is a batch of {batch} models (parameters with a leading batch axis), so {name} "
            f"must be a batch of states of shape ({batch}, n, d), got shape {x.shape}; evaluate it "
            "through TokenDynamics(...).velocity or simulate"
        )
    if x.shape[0] != batch:
        raise ValueError(
            f"{who} is a batch of {batch} models, but {name} holds {x.shape[0]} systems "
            f"(shape {x.shape}); the leading axes must match"
        )


#: the fused per-row softmax kernel is used while k + d is at most this; above it,
#: BLAS computes tiles of logits and values (measured crossover, benchmarks/)
_FUSED_MAX_KD = 48
#: entries in one (B, n) tile of logits on the BLAS path (16 MiB of float64)
_TILE_ENTRIES = 2**21


class Attention:
    """Base class of the single-head variants (not instantiated directly).

    Parameters
    ----------
    beta : float or array_like, shape (B,)
        Inverse temperature, written out separately from ``Q`` and ``K``; one per system
        of a batch when given as an array.
    Q, K : array_like, shape (k, d) or (B, k, d), optional
        Query and key matrices; the identity of the data dimension when ``None``.
    V : array_like, shape (d, d) or (B, d, d), optional
        Value matrix; the identity when ``None``.

    A parameter with a leading batch axis makes a *batched* model (``batch == B``): B
    models of the same variant, system b using ``beta[b]``, ``Q[b]``, ... (parameters
    without the axis are shared). It acts on batches of states (B, n, d) only, through
    :class:`~transformer_pde.TokenDynamics` and :func:`~transformer_pde.simulate`; the
    methods of a model itself (``velocity``, ``matrix``, ...) take one system (n, d).
    """

    #: attention of token i depends on the order of the tokens (masked variants)
    causal: bool = False
    #: a causal token attends to itself (j <= i); False: to the tokens before it only (j < i)
    include_self: bool = True
    #: the weights of a row are normalised (softmax type): a causal row 0 needs weights[0] > 0
    _normalized: bool = True
    #: whether the variant accepts parameters with a leading batch axis
    _batch_params: bool = True
    #: how :meth:`_field` sums: the variants with fast summation set it per instance
    summation: str = "exact"

    def __init__(self, beta: float = 1.0, Q=None, K=None, V=None):
        if type(self) is Attention:
            raise TypeError(
                "Attention is the base class of the attention variants and has no weights of its "
                "own; use SoftmaxAttention, UnnormalizedAttention, L2Attention, SigmoidAttention, "
                "SinkhornAttention or ALiBiAttention"
            )
        sizes = {}
        if np.ndim(beta) == 0:
            self.beta = _v.as_real(beta, "beta")
        else:
            self.beta = _batch_array(beta, "beta", 0, sizes)
        self.Q = None if Q is None else _batch_array(Q, "Q", 2, sizes)
        self.K = None if K is None else _batch_array(K, "K", 2, sizes)
        self.V = None if V is None else _batch_array(V, "V", 2, sizes)
        if len(set(sizes.values())) > 1:
            raise ValueError(
                "the parameters with a leading batch axis must agree on the number of systems B, "
                "got " + ", ".join(f"{name}: B={b}" for name, b in sizes.items())
            )
        #: number of systems B of a batched model (parameters with a leading batch axis), else None
        self.batch: int | None = next(iter(sizes.values())) if sizes else None
        if self.batch is not None and not self._batch_params:
            raise ValueError(
                f"{type(self).__name__} does not take per-system parameters (a leading batch axis on "
                f"{', '.join(sizes)}); give one beta, Q, K, V and a batch of states (B, n, d) instead"
            )
        shape = {name: m.shape[-2:] for name, m in (("Q", self.Q), ("K", self.K), ("V", self.V))
                 if m is not None}
        if "Q" in shape and "K" in shape and shape["Q"] != shape["K"]:
            raise ValueError(
                f"Q and K must have the same shape (k, d), got Q {shape['Q']} and K {shape['K']}"
            )
        if "V" in shape and shape["V"][0] != shape["V"][1]:
            raise ValueError(f"V must be square (d, d), got shape {shape['V']}")
        dims = {s[1] for s in shape.values()}
        if len(dims) > 1:
            raise ValueError(f"Q, K and V must act on the same dimension d, got d in {sorted(dims)}")
        self.dim: int | None = dims.pop() if dims else None
        given = [(name, shape[name]) for name in ("Q", "K") if name in shape]
        if len(given) == 1 and given[0][1][0] != given[0][1][1]:
            name, m = given[0]
            raise ValueError(
                f"{name} of shape {m} is not square, so the other of Q, K must be given "
                "with the same shape (its default, the identity, is (d, d))"
            )

    # -- shared helpers -------------------------------------------------------------
    def _params(self) -> str:
        return f"beta={self.beta:g}"

    def __eq__(self, other) -> bool:
        """Same variant with equal parameters (arrays elementwise)."""
        if not isinstance(other, (Attention, MultiHeadAttention)):
            return NotImplemented
        return _spec.same_parameters(self, other)

    __hash__ = None  # parameters are mutable arrays

    def __repr__(self) -> str:
        one = self._system(0)
        params = one._params()
        if np.ndim(self.beta):
            params = params.replace(f"beta={one.beta:g}", f"beta=array({self.batch},)", 1)
        mats = ", ".join(
            f"{name}={'I' if m is None else 'array' + str(m.shape)}"
            for name, m in (("Q", self.Q), ("K", self.K), ("V", self.V))
        )
        return f"{type(self).__name__}({params}, {mats})"

    def _system(self, b: int) -> Attention:
        """The model of system b of a batched model (the model itself when not batched)."""
        if self.batch is None:
            return self
        one = copy.copy(self)
        one.batch = None
        if np.ndim(self.beta):
            one.beta = float(self.beta[b])
        for name in ("Q", "K", "V"):
            m = getattr(self, name)
            if m is not None and m.ndim == 3:
                setattr(one, name, m[b])
        return one

    def _check(self, x, weights):
        x = _v.as_tokens(x, "x")
        check_batch(self.batch, x, "x", repr(self))
        if self.dim is not None and x.shape[1] != self.dim:
            raise ValueError(
                f"x has token dimension d={x.shape[1]}, but {type(self).__name__} acts on "
                f"dimension {self.dim} (from the shapes of Q, K, V)"
            )
        weights = _v.as_weights(weights, x.shape[0])
        if self.causal and self._normalized and weights[0] == 0.0:
            raise ValueError(
                "weights[0] must be > 0 for causal attention: the first token attends only to itself"
            )
        return x, weights

    def _beta(self):
        """The inverse temperature: a scalar, or one per system as (B, 1, 1) for a batch."""
        return self.beta if type(self.beta) is float else self.beta[:, None, None]

    def _query(self, x: np.ndarray) -> np.ndarray:
        """``beta Q x`` as a contiguous (n, k) array ((B, n, k) for a batch).

        Of the dtype of ``x`` (float32 or float64).
        """
        qx = self._beta() * (x if self.Q is None else x @ _mT(self.Q))
        return np.ascontiguousarray(qx, dtype=_out_dtype(x))

    def _keys_values(self, x: np.ndarray):
        """``(K x, V x)`` as contiguous (n, k), (n, d) arrays ((B, n, .) for a batch).

        Of the dtype of ``x``: with float32 tokens the products are formed in float64
        (float64 matrices) and rounded once.
        """
        kx = x if self.K is None else x @ _mT(self.K)
        vx = x if self.V is None else x @ _mT(self.V)
        dt = _out_dtype(x)
        return np.ascontiguousarray(kx, dtype=dt), np.ascontiguousarray(vx, dtype=dt)


    def _projections(self, x: np.ndarray):
        """``(beta Q x, K x, V x)`` as contiguous (n, k), (n, k), (n, d) arrays."""
        return (self._query(x),) + self._keys_values(x)

    def _check_dense(self, x, weights, view: str):
        """:meth:`_check`, and refuse an (n, n) array above the dense limit (naming velocity())."""
        x, weights = self._check(x, weights)
        n = x.shape[0]
        _v.check_dense_size((n, n), f"{type(self).__name__}.{view} with n={n} tokens",
                            "use velocity(), which never forms the matrix (O(n d) memory), "
                            "or fewer tokens")
        return x, weights

    def logits(self, x, weights=None) -> np.ndarray:
        r"""Dense logits :math:`\ell_{ij} = \beta\langle Qx_i, Kx_j\rangle`, shape (n, n)."""
        x, _ = self._check_dense(x, weights, "logits")
        qx, kx, _ = self._projections(x)
        return qx @ kx.T

    # -- the three views --------------------------------------------------------------
    def matrix(self, x, weights=None) -> np.ndarray:
        r"""Dense weight matrix W, shape (n, n), with ``A_i = sum_j W_ij V x_j``.

        Parameters
        ----------
        x : array_like, shape (n, d)
            Tokens.
        weights : array_like, shape (n,), optional
            Nonnegative token weights (normalised to sum 1); uniform ``1/n`` by default.

        Raises ``FloatingPointError`` where an entry overflows float64 (unnormalized and
        sigmoid weights grow like :math:`e^{\beta\langle Qx, Ky\rangle}`), as
        :meth:`velocity` does, and ``ValueError`` when the (n, n) array would exceed
        ``DENSE_LIMIT_BYTES`` (2 GiB, n > 16384): :meth:`velocity` never forms it.
        """
        x, weights = self._check_dense(x, weights, "matrix")
        with np.errstate(over="ignore"):  # an overflow is named just below
            out = self._matrix_reference(x, weights)
        return check_finite_output(out, repr(self))

    def velocity_reference(self, x, weights=None) -> np.ndarray:
        """Attention output computed densely in NumPy, shape (n, d). See :meth:`matrix`.

        The readable reference of :meth:`velocity`, arithmetic included: where the weights
        overflow it returns the inf/NaN rows that the plain formula gives (tests locate
        the first bad token with it), while :meth:`velocity` and :meth:`matrix` raise
        ``FloatingPointError`` naming that token.
        """
        x, weights = self._check_dense(x, weights, "velocity_reference")
        _, _, vx = self._projections(x)
        return self._matrix_reference(x, weights) @ vx

    def velocity(self, x, weights=None, dtype=None) -> np.ndarray:
        r"""Attention output from the Numba kernel, shape (n, d). See :meth:`matrix`.

        Parameters
        ----------
        x : array_like, shape (n, d)
            Tokens.
        weights : array_like, shape (n,), optional
            Nonnegative token weights (normalised to sum 1); uniform ``1/n`` by default.
        dtype : {None, np.float64, np.float32}
            The precision of the computation and of the result (None: float64).

        Returns
        -------
        ndarray, shape (n, d), of ``dtype``

        Notes
        -----
        With ``dtype=np.float32`` the tokens are rounded to float32, the projections
        formed in float64 and rounded, and the kernels run in float32 (8 lanes per
        AVX2 vector instead of 4). Each row works through blocks of
        :data:`~transformer_pde._kernels.attention.BLOCK` = 512 sources and adds each
        block's float32 sums to float64 accumulators, so the rounding of the sums
        does not grow with n. Per token, relative to the sum of the absolute terms,
        the error against the exact result is at most

        .. math::

            \frac{\|A^{32}_i - A_i\|_\infty}{\sum_j |W_{ij}|\,\|V x_j\|_\infty}
            \;\le\; \big(\mathrm{BLOCK} + 5 + (k + 5) L\big)\, \epsilon_{32},
            \qquad L = \beta \max_i \|Q x_i\| \max_j \|K x_j\|
            + \max_{a_j > 0} \log\frac{\max_l a_l}{a_j},

        :math:`\epsilon_{32} = 2^{-23}`, k the number of rows of Q: one block sum
        (BLOCK / 2 roundings, worst case), the logits (absolute error about
        :math:`(k + 5) L \epsilon_{32} / 2`, which no summation scheme removes: at
        large beta ask float64), the exponential and the rounding of the inputs. For
        L = 1 that is 7e-5 at worst; the errors measured on the sphere at beta = 4
        are 1-3 :math:`\epsilon_{32}` (1e-7 to 4e-7). On the BLAS tile path
        (k + d > 48) the sums are float32 matrix products: replace BLOCK by n in the
        bound (measured: below :math:`\epsilon_{32}` at n = 3000, d = 64). Variants
        without a float32 kernel (Sinkhorn) compute in float64 and round the result.

        Raises ``FloatingPointError`` if the output overflows the dtype.

        Examples
        --------
        >>> import numpy as np
        >>> import transformer_pde as tp
        >>> x = np.random.default_rng(0).normal(size=(200, 3))
        >>> x /= np.linalg.norm(x, axis=1, keepdims=True)
        >>> att = tp.SoftmaxAttention(beta=2.0)
        >>> v32 = att.velocity(x, dtype=np.float32)
        >>> v32.dtype
        dtype('float32')
        >>> bool(np.max(np.abs(v32 - att.velocity(x))) < 1e-5)
        True
        """
        x, weights = self._check(x, weights)
        x = x.astype(_work_dtype(dtype), copy=False)
        return check_finite_output(self._velocity(x, weights), repr(self))

    def _velocity(self, x, weights):
        """The kernel on trusted inputs (what the integrators call).

        Float32 ``x`` gives a float32 result computed in float32, any other float64.
        """
        return self._field(x, x, weights, self.causal)

    def _velocity_batch(self, x, weights):
        """The kernel on a trusted batch x (B, n, d) with shared weights (n,): (B, n, d).

        What :class:`~transformer_pde.TokenDynamics` calls for a batch of systems (the
        public methods of a model take one system).

        Variants with a batched kernel (``_kernel_batch``) advance all systems in one
        call; the others go through the single-system path system by system.
        """
        if self._kernel_batch is None:
            return np.stack([self._system(b)._velocity(x[b], weights) for b in range(len(x))])
        qx, (kx, vx) = self._query(x), self._keys_values(x)
        out = np.empty(x.shape[:2] + vx.shape[-1:], dtype=qx.dtype)  # float32 batches stay float32
        if self.causal and not self.include_self:  # row i of j < i is row i - 1 of j <= i, shifted
            out[:, 0] = 0.0
            if x.shape[1] > 1:
                rest = np.empty_like(out[:, 1:])
                c = np.ascontiguousarray
                self._kernel_batch(weights[:-1], c(qx[:, 1:]), c(kx[:, :-1]), c(vx[:, :-1]), rest,
                                   True)
                out[:, 1:] = rest
            return out
        self._kernel_batch(weights, qx, kx, vx, out, self.causal)
        return out

    #: ``_kernel_batch(weights, qx, kx, vx, out, causal)`` on (B, n, .) projections, or None
    _kernel_batch = None

    def _field(self, targets, sources, weights, causal=False):
        """Attention output (m, d) at ``targets`` (m, d) of weighted sources, on trusted inputs.

        This is the mean-field velocity of a weighted point set: sources (n, d) with
        weights (n,). The causal index mask (source j <= target i) needs
        ``targets is sources``. Float32 ``targets`` select the float32 kernels (result
        float32). Heads with a ``summation`` other than ``"exact"`` may sum
        by fast summation here (:mod:`transformer_pde._fastsum`).
        """
        if self.summation != "exact":
            out = _fastsum.summed_field(self, targets, sources, weights, causal, self._exact_field)
            if out is not None:
                return out.astype(_out_dtype(targets), copy=False)
        return self._exact_field(targets, sources, weights, causal)

    def _exact_field(self, targets, sources, weights, causal=False):
        """:meth:`_field` by the exact O(mn) kernels."""
        dt = _out_dtype(targets)
        sources = sources.astype(dt, copy=False)
        kx, vx = self._keys_values(sources)
        out = np.empty((len(targets), vx.shape[1]), dtype=dt)
        qx = self._query(targets)
        if causal and not self.include_self:
            # the strict mask j < i: row i is row i - 1 of the mask j <= i applied to the
            # targets 1.. and the sources ..n-2, so the causal kernels serve unchanged; the
            # first token has an empty sum and velocity 0 (docs/math.md §3.1)
            out[0] = 0.0
            if len(targets) > 1:
                self._kernel(weights[:-1], qx[1:], kx[:-1], vx[:-1], out[1:], True)
            return out
        if targets is sources and not causal and self._pairs_symmetric():
            self._kernel(weights, qx, kx, vx, out, causal, pairs=True)
        else:
            self._kernel(weights, qx, kx, vx, out, causal)
        return out

    #: whether ``_kernel`` takes ``pairs=True`` (the symmetric-pairs kernel)
    _pairs_kernel = False

    def _pairs_symmetric(self) -> bool:
        """Whether the kernel may use the symmetric pairs (:func:`_symmetric_pairs`).

        True when <Qx, Ky> = <Qy, Kx> for all x, y: Q^T K symmetric, exactly in float64
        (a batched model: Q = K = I only).
        """
        if not self._pairs_kernel:
            return False
        if self.Q is None and self.K is None:
            return True
        if self.batch is not None:
            return False
        d = (self.Q if self.Q is not None else self.K).shape[1]
        q = np.eye(d) if self.Q is None else self.Q
        k = np.eye(d) if self.K is None else self.K
        m = q.T @ k
        return bool(np.array_equal(m, m.T))

    def _matrix_reference(self, x, weights):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not define its weight matrix "
                                  "(_matrix_reference); a variant must")

    def _kernel(self, weights, qx, kx, vx, out, causal):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not define its kernel (_kernel); "
                                  "a variant must")


class _FastSummation:
    """The ``summation`` and ``tol`` keywords of the variants with fast summation."""

    def _set_summation(self, summation, tol) -> None:
        self.summation, self.tol = _fastsum.check_summation(summation, tol)
        #: how the latest field was summed (a :class:`SummationReport`), None before the first
        self.last_summation: SummationReport | None = None

    def _summation_params(self) -> str:
        if self.summation == "auto" and self.tol == _DEFAULT_TOL:
            return ""
        return f", summation={self.summation!r}, tol={self.tol:g}"


#: default relative error target of fast summation
_DEFAULT_TOL = 1e-10


class SoftmaxAttention(_FastSummation, Attention):
    r"""Softmax self-attention (SA).

    .. math::

        W_{ij} = \frac{a_j e^{\beta\langle Qx_i, Kx_j\rangle}}
                      {\sum_{k} a_k e^{\beta\langle Qx_i, Kx_k\rangle}},

    with the sums restricted to :math:`j, k \le i` when ``causal=True`` (masked
    attention: token i attends to itself and the tokens before it), and to
    :math:`j, k < i` when moreover ``include_self=False`` (the first token then has an
    empty sum: its output is defined as 0). docs/math.md §1.1, 2.1 and 3.1.

    Parameters
    ----------
    beta, Q, K, V
        See :class:`Attention`.
    causal : bool
        Apply the causal mask.
    include_self : bool
        With ``causal=True``: whether token i attends to itself (True, :math:`j \le i`) or
        only to the tokens before it (False, :math:`j < i`). Must be True without the mask.
    summation : {"auto", "exact", "fast"}
        How the sums over the tokens are computed. ``"exact"``: the O(n^2) kernels.
        ``"fast"``: fast summation on :math:`\mathbb S^1` and :math:`\mathbb S^2`, the kernel
        expanded in Fourier modes or spherical harmonics and summed by non-uniform
        transforms in O(n + L log L) (ValueError unless Q, K, V are multiples of the
        identity, the attention is not causal and the tokens are unit vectors of dimension
        2 or 3). ``"auto"``: fast summation for the tokens' own field where it applies and
        is cheaper (enough tokens, a bounded expansion), the exact kernels otherwise. Either
        way, the targets whose estimated error exceeds ``tol`` are summed exactly, and
        :attr:`last_summation` (a :class:`SummationReport`) says what was done.
        docs/math.md §9.12.
    tol : float
        Relative error target of fast summation, in (0, 1): relative to |v| (the bound of
        the output) for softmax, to :math:`|v|\sum_j a_j w_{ij}` for USA and sigmoid.

    Examples
    --------
    >>> import numpy as np, transformer_pde as tp
    >>> theta = np.random.default_rng(0).uniform(0, 2 * np.pi, 4096)
    >>> x = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    >>> fast = tp.SoftmaxAttention(4.0, summation="fast")
    >>> err = np.abs(fast.velocity(x) - tp.SoftmaxAttention(4.0, summation="exact").velocity(x))
    >>> bool(err.max() < 1e-10), fast.last_summation.method
    (True, 'fast')
    """

    def __init__(self, beta: float = 1.0, Q=None, K=None, V=None, causal: bool = False,
                 summation: str = "auto", tol: float = _DEFAULT_TOL, include_self: bool = True):
        super().__init__(beta, Q, K, V)
        self.causal, self.include_self = _check_mask(causal, include_self)
        self._set_summation(summation, tol)

    def _params(self) -> str:
        return f"beta={self.beta:g}{_mask_params(self)}{self._summation_params()}"

    def _column_bias(self, kx: np.ndarray) -> np.ndarray:
        return np.zeros(kx.shape[:-1])

    def _logits_reference(self, x):
        qx, kx, _ = self._projections(x)
        return qx @ kx.T

    def _matrix_reference(self, x, weights):
        logits = self._logits_reference(x) + _log_weights(weights)[None, :]
        if not self.causal:
            return np.exp(log_softmax(logits, axis=1))
        logits = np.where(_causal_mask(len(x), self.include_self), logits, -np.inf)
        first = 0 if self.include_self else 1  # j < i: row 0 has no source and stays 0
        out = np.zeros_like(logits)
        out[first:] = np.exp(log_softmax(logits[first:], axis=1))
        return out

    _pairs_kernel = True

    def _kernel(self, weights, qx, kx, vx, out, causal, pairs=False):
        _softmax(qx, kx, vx, _log_weights(weights) + self._column_bias(kx), causal, out, pairs)

    def _kernel_batch(self, weights, qx, kx, vx, out, causal):
        colw = _log_weights(weights) + self._column_bias(kx)
        colw = _batch_rows(colw - np.max(colw, axis=-1, keepdims=True), kx)  # as in _softmax
        done = (_symmetric_pairs_batch(qx, kx, vx, colw, True, out)
                if not causal and self._pairs_symmetric() else None)
        _batched_rest(done, lambda q, k, v, c, o: _batched(
            "softmax", _kb.softmax_batch_serial, _kb.softmax_batch, q, k, v, (c, causal), o,
            _k.SOFTMAX, c, 0.0, causal), qx, kx, vx, colw, out)


class L2Attention(SoftmaxAttention):
    r"""Softmax attention with :math:`L^2` logits.

    .. math::

        W_{ij} = \operatorname{softmax}_j\Big(\log a_j - \frac{\beta}{2}\|Qx_i - Kx_j\|^2\Big).

    The term :math:`-\frac\beta2\|Qx_i\|^2` does not depend on j and cancels, so the
    kernel computes :math:`\beta\langle Qx_i, Kx_j\rangle - \frac\beta2\|Kx_j\|^2`;
    on the sphere with ``Q = K = I`` this is softmax attention. docs/math.md §3.1.
    """

    def __init__(self, beta: float = 1.0, Q=None, K=None, V=None):
        super().__init__(beta, Q, K, V, causal=False, summation="exact")

    def _params(self) -> str:
        return f"beta={self.beta:g}"

    def _column_bias(self, kx):
        beta = self.beta if np.ndim(self.beta) == 0 else self.beta[:, None]  # per system (B, 1)
        return -0.5 * beta * np.einsum("...jc,...jc->...j", kx, kx)

    def _logits_reference(self, x):
        qx = x if self.Q is None else x @ self.Q.T
        kx = x if self.K is None else x @ self.K.T
        diff = qx[:, None, :] - kx[None, :, :]
        return -0.5 * self.beta * np.einsum("ijc,ijc->ij", diff, diff)


class ALiBiAttention(SoftmaxAttention):
    r"""Causal softmax attention with the ALiBi linear position bias.

    .. math::

        W_{ij} = \frac{a_j\, e^{\beta\langle Qx_i, Kx_j\rangle - m(i - j)}}
                      {\sum_{k \le i} a_k\, e^{\beta\langle Qx_i, Kx_k\rangle - m(i - k)}},
        \qquad j \le i,

    (:math:`j, k < i` with ``include_self=False``, the first token's output then 0), with
    the slope :math:`m \ge 0` per token index (Press, Smith, Lewis, *Train short, test long*,
    arXiv 2108.12409). The row term :math:`-m i` cancels in the quotient, so the weights
    are those of causal softmax attention with the per-source log-weight
    :math:`\log a_j + m j`: the causal softmax kernels compute it unchanged.

    **Mean field.** With positions :math:`s = i/n \in (0, 1]` the bias is
    :math:`-m n (s - s')`. A limit :math:`n \to \infty` with a nontrivial position bias
    needs :math:`\lambda = m n` fixed, i.e. a slope :math:`m = \lambda / n`: a fixed
    slope per token makes each token attend to its last :math:`O(1/m)` predecessors only, a
    vanishing fraction of the sequence, and the mean field forgets the bias (the limit of
    any fixed m > 0 is the field of the token's own position, local in s). On a
    :class:`~transformer_pde.CausalCircleGrid` of S fibres the slope acts per fibre
    (:math:`\lambda = m S`; S = n is the particles' bias). docs/math.md §3.1, 11.

    The per-source log-weights reach :math:`m n` in size, so the logits carry an absolute
    rounding error of about :math:`m n\,\epsilon` (float64: relative weights within
    :math:`2\cdot 10^{-13}` for :math:`m n \le 10^3`; in float32 :math:`m n\,\epsilon_{32}`).

    Parameters
    ----------
    beta, Q, K, V
        See :class:`Attention`.
    slope : float
        The slope m >= 0 (0: causal softmax attention).
    include_self : bool
        Whether token i attends to itself (:math:`j \le i`) or not (:math:`j < i`).

    Examples
    --------
    >>> import numpy as np, transformer_pde as tp
    >>> x = np.random.default_rng(0).normal(size=(6, 2))
    >>> att = tp.ALiBiAttention(2.0, slope=0.5)
    >>> bool(np.allclose(att.velocity(x), att.velocity_reference(x), rtol=0, atol=1e-13))
    True
    >>> [round(h.slope, 4) for h in tp.ALiBiAttention.multi_head(1.0, 4).heads]
    [0.25, 0.0625, 0.0156, 0.0039]
    """

    def __init__(self, beta: float = 1.0, slope: float = 0.0, Q=None, K=None, V=None,
                 include_self: bool = True):
        super().__init__(beta, Q, K, V, causal=True, summation="exact", include_self=include_self)
        self.slope = _v.as_real(slope, "slope")
        if self.slope < 0:
            raise ValueError(f"slope must be >= 0 (a bias that decays with distance), got {self.slope}")

    def _params(self) -> str:
        return (f"beta={self.beta:g}, slope={self.slope:g}"
                + ("" if self.include_self else ", include_self=False"))

    @classmethod
    def multi_head(cls, beta: float, n_heads: int, scale: float = 1.0, Q=None, K=None, V=None,
                   include_self: bool = True) -> MultiHeadAttention:
        r"""H heads with ALiBi's geometric slopes :math:`m_h = \text{scale}\cdot 2^{-8h/H}`.

        .. math::

            m_h = \text{scale}\cdot 2^{-8h/H}, \qquad h = 1, \dots, H,

        the sequence of the ALiBi paper (scale 1); the heads share beta, Q, K, V. Returns a
        :class:`MultiHeadAttention`.
        """
        n_heads = _v.as_positive_int(n_heads, "n_heads")
        scale = _v.as_real(scale, "scale")
        slopes = scale * 2.0 ** (-8.0 * np.arange(1, n_heads + 1) / n_heads)
        return MultiHeadAttention([cls(beta, float(m), Q, K, V, include_self) for m in slopes])

    def _column_bias(self, kx):
        return self.slope * np.arange(kx.shape[-2], dtype=float)  # + m j; -m i cancels per row

    def _logits_reference(self, x):
        n = len(x)
        i = np.arange(n)
        return super()._logits_reference(x) - self.slope * (i[:, None] - i[None, :])


class UnnormalizedAttention(_FastSummation, Attention):
    r"""Unnormalized self-attention (USA): no softmax denominator.

    .. math::

        W_{ij} = a_j\, e^{\beta\langle Qx_i, Kx_j\rangle}
        \quad(\text{so } A_i = \tfrac1n \textstyle\sum_j e^{\beta\langle Qx_i,Kx_j\rangle}Vx_j),

    with :math:`W_{ij} = 0` for :math:`j > i` when ``causal=True`` and for :math:`j \ge i`
    when moreover ``include_self=False`` (the first token's sum is then empty: output 0).
    There is no normalisation, so the weights are not renormalised over the unmasked
    tokens: :math:`A_i = \frac1n\sum_{j \le i}\dots` (docs/math.md §2.1, 3.1).
    Speeds grow like :math:`e^{\beta}` on the sphere; beyond
    :math:`\beta \approx 700` the output overflows float64 (the true value does).

    Parameters
    ----------
    beta, Q, K, V
        See :class:`Attention`.
    summation, tol
        Fast summation on the circle and the 2-sphere; see :class:`SoftmaxAttention`
        (not with the causal mask: its sums are exact).
    causal, include_self : bool
        The causal mask :math:`j \le i`, and whether it includes the token itself (False:
        :math:`j < i`); see :class:`SoftmaxAttention`.

    Examples
    --------
    >>> import numpy as np, transformer_pde as tp
    >>> x = np.random.default_rng(0).normal(size=(5, 2))
    >>> att = tp.UnnormalizedAttention(1.0, causal=True, include_self=False)
    >>> v = att.velocity(x)
    >>> bool(np.all(v[0] == 0.0)), bool(np.allclose(v, att.velocity_reference(x), rtol=1e-12))
    (True, True)
    """

    _normalized = False

    def __init__(self, beta: float = 1.0, Q=None, K=None, V=None, summation: str = "auto",
                 tol: float = _DEFAULT_TOL, causal: bool = False, include_self: bool = True):
        super().__init__(beta, Q, K, V)
        self.causal, self.include_self = _check_mask(causal, include_self)
        self._set_summation(summation, tol)

    def _params(self) -> str:
        mask = _mask_params(self) if self.causal else ""
        return f"beta={self.beta:g}{mask}{self._summation_params()}"

    def _matrix_reference(self, x, weights):
        qx, kx, _ = self._projections(x)
        w = weights[None, :] * np.exp(qx @ kx.T)
        return np.where(_causal_mask(len(x), self.include_self), w, 0.0) if self.causal else w

    _pairs_kernel = True

    def _kernel(self, weights, qx, kx, vx, out, causal, pairs=False):
        # the largest weight is factored out (exactly 0 shift for uniform weights), so
        # that float32 logits carry no log(1/n) offset into their rounding
        logw = _log_weights(weights)
        top = np.max(logw)
        colw = (logw - top).astype(qx.dtype)
        if pairs and _symmetric_pairs(qx, kx, vx, colw, False, out):
            pass
        elif _fused(qx, vx):
            _threads.run(_name("exp", qx), len(qx) * len(kx), _k.exp_field_serial,
                         _k.exp_field, qx, _t(kx), _t(vx), colw, causal, out)
        else:
            _tiled(qx, kx, vx, colw, _k.EXP, 0.0, causal, out)
        out *= np.exp(top)  # <= 1: no overflow

    def _kernel_batch(self, weights, qx, kx, vx, out, causal):
        logw = _log_weights(weights)
        top = np.max(logw)  # factored out as in _kernel
        colw = _batch_rows(logw - top, kx)
        done = (_symmetric_pairs_batch(qx, kx, vx, colw, False, out)
                if not causal and self._pairs_symmetric() else None)
        _batched_rest(done, lambda q, k, v, c, o: _batched(
            "exp", _kb.exp_batch_serial, _kb.exp_batch, q, k, v, (c, causal), o, _k.EXP,
            c, 0.0, causal), qx, kx, vx, colw, out)
        out *= np.exp(top)


class SigmoidAttention(_FastSummation, Attention):
    r"""Sigmoid attention (no normalization).

    .. math::

        W_{ij} = a_j\, \sigma\big(\beta\langle Qx_i, Kx_j\rangle + b\big),
        \qquad \sigma(z) = \frac{1}{1 + e^{-z}}.

    docs/math.md §3.1. Parameters as :class:`Attention` plus ``bias`` :math:`b` (not scaled
    by beta), and ``summation``, ``tol`` (fast summation on the circle and the 2-sphere; see
    :class:`SoftmaxAttention`).
    """

    def __init__(self, beta: float = 1.0, Q=None, K=None, V=None, bias: float = 0.0,
                 summation: str = "auto", tol: float = _DEFAULT_TOL):
        super().__init__(beta, Q, K, V)
        self.bias = _v.as_real(bias, "bias")
        self._set_summation(summation, tol)

    def _params(self) -> str:
        return f"beta={self.beta:g}, bias={self.bias:g}{self._summation_params()}"

    def _matrix_reference(self, x, weights):
        qx, kx, _ = self._projections(x)
        return weights[None, :] * expit(qx @ kx.T + self.bias)

    def _kernel(self, weights, qx, kx, vx, out, causal):
        weights = weights.astype(qx.dtype)
        if _fused(qx, vx):
            _threads.run(_name("sigmoid", qx), len(qx) * len(kx), _k.sigmoid_field_serial,
                         _k.sigmoid_field, qx, _t(kx), _t(vx), self.bias, weights, out)
        else:
            _tiled(qx, kx, vx, weights, _k.SIGMOID, self.bias, False, out)

    def _kernel_batch(self, weights, qx, kx, vx, out, causal):
        w = _batch_rows(weights, kx)
        _batched("sigmoid", _kb.sigmoid_batch_serial, _kb.sigmoid_batch, qx, kx, vx, (self.bias, w), out,
                 _k.SIGMOID, w, self.bias, False)


class SinkhornAttention(Attention):
    r"""Sinkformer attention: the softmax kernel scaled to be doubly stochastic.

    The plan :math:`\pi_{ij} = a_i a_j e^{f_i + g_j + \beta\langle Qx_i, Kx_j\rangle}`
    has both marginals equal to the weights :math:`a` (log-domain Sinkhorn on the
    potentials f, g) and :math:`W_{ij} = \pi_{ij}/a_i`. For the empirical measure
    (:math:`a = 1/n`) the rows and the columns of W sum to 1. docs/math.md §3.1, 5.2.

    Each sweep makes the rows exact, then measures the column error
    :math:`\max_j |\log(\sum_i \pi_{ij}/a_j)|`; iterations stop when it is at most
    ``tol`` or after ``n_iter`` sweeps, with a :class:`SinkhornConvergenceWarning` in
    the latter case. ``n_iter=1`` is softmax attention. Rows are always exact, so the
    output is a convex combination of the values. A tolerance below the round-off
    floor of the logits, :math:`16\,\epsilon\,(1 + \max_i\|\beta Qx_i\|\max_j\|Kx_j\|)`
    (relevant for beta of order 1e3), is raised to that floor.

    Parameters
    ----------
    beta, Q, K, V
        See :class:`Attention`.
    n_iter : int
        Maximum number of Sinkhorn sweeps.
    tol : float
        Stopping tolerance on the column log-marginal error.
    """

    _batch_params = False  # a batch of states runs system by system, with shared parameters

    def __init__(self, beta: float = 1.0, Q=None, K=None, V=None, n_iter: int = 1000,
                 tol: float = 1e-13):
        super().__init__(beta, Q, K, V)
        self.n_iter = _v.as_positive_int(n_iter, "n_iter")
        self.tol = _v.as_positive(tol, "tol")
        #: ``(sweeps, column error)`` of the most recent scaling
        self.last_status: tuple[int, float] | None = None

    def _params(self) -> str:
        return f"beta={self.beta:g}, n_iter={self.n_iter}, tol={self.tol:g}"

    def _tolerance(self, qx, kx) -> float:
        """``tol``, raised to the round-off floor of the logits (Cauchy-Schwarz bound)."""
        bound = np.max(np.linalg.norm(qx, axis=1)) * np.max(np.linalg.norm(kx, axis=1))
        return max(self.tol, 16.0 * np.finfo(float).eps * (1.0 + bound))

    def _report(self, n_done: int, err: float, tol: float) -> None:
        self.last_status = (int(n_done), float(err))
        if err > tol:
            warnings.warn(
                f"SinkhornAttention did not converge: column log-marginal error {err:.3g} > "
                f"tol={tol:g} after n_iter={self.n_iter} sweeps; increase n_iter or tol",
                SinkhornConvergenceWarning,
                stacklevel=3,
            )

    def _matrix_reference(self, x, weights):
        qx, kx, _ = self._projections(x)
        logits = qx @ kx.T
        loga = _log_weights(weights)
        tol = self._tolerance(qx, kx)
        g = np.zeros(len(x))
        err, n_done = np.inf, 0
        for it in range(self.n_iter):
            f = -logsumexp(logits + (g + loga)[None, :], axis=1)
            col = logsumexp(logits + (f + loga)[:, None], axis=0)
            err = float(np.max(np.abs(col + g)))
            n_done = it + 1
            if err <= tol:
                break
            if it + 1 < self.n_iter:
                g = -col
        self._report(n_done, err, tol)
        return np.exp(logits + f[:, None] + (g + loga)[None, :])

    def _field(self, targets, sources, weights, causal=False):
        """The plan's conditional mean at ``targets``.

        With the potential g of the self-transport of the sources, row i of the plan is
        softmax_j(l_ij + g_j + log a_j) (the row potential f_i only normalises it), which
        extends to any target point.
        """
        dt = _out_dtype(targets)
        if dt != np.float64:  # no float32 Sinkhorn kernel: float64, result rounded
            return self._field(targets.astype(np.float64), sources.astype(np.float64),
                               weights, causal).astype(dt)
        qs, ks, vs = self._projections(sources)
        loga = _log_weights(weights)
        tol = self._tolerance(qs, ks)
        _, g, n_done, err = _threads.run("sinkhorn", len(sources) ** 2, _sinkhorn_serial,
                                         _sinkhorn_parallel, qs, _t(ks), _t(qs), ks, loga,
                                         self.n_iter, tol)
        self._report(n_done, err, tol)
        qx = qs if targets is sources else self._query(targets)
        out = np.empty((len(targets), vs.shape[1]))
        _softmax(qx, ks, vs, g + loga, False, out)
        return out


def _common_dim_batch(parts, what: str) -> tuple[int | None, int | None]:
    """The token dimension d and batch size B that all ``parts`` (heads, layers) share.

    None where no part fixes it; a ValueError naming ``what`` when two parts disagree.
    """
    dims = {p.dim for p in parts if p.dim is not None}
    if len(dims) > 1:
        raise ValueError(f"all {what} must act on the same dimension d, got d in {sorted(dims)}")
    batches = {p.batch for p in parts if p.batch is not None}
    if len(batches) > 1:
        raise ValueError(
            f"all batched {what} must hold the same number of systems B, got B in {sorted(batches)}"
        )
    return (dims.pop() if dims else None), (batches.pop() if batches else None)


class MultiHeadAttention:
    r"""Multi-head attention: the sum of its heads' outputs.

    .. math::

        A_i = \sum_{h=1}^H A^{(h)}_i,

    where each head is a single-head variant whose ``V`` maps :math:`\mathbb R^d` to
    :math:`\mathbb R^d` (so it includes that head's share of the output projection,
    :math:`W_h^\top V_h` in docs/math.md §3.1) and whose ``Q``, ``K`` may be (k_h, d) blocks.

    Parameters
    ----------
    heads : sequence of Attention
        At least one single-head attention object (not itself multi-head).
    """

    def __init__(self, heads: Sequence[Attention]):
        if isinstance(heads, Attention) or not isinstance(heads, Sequence):
            raise TypeError(
                f"heads must be a list of attention objects, got {type(heads).__name__}"
            )
        if len(heads) == 0:
            raise ValueError("heads must contain at least one attention object, got an empty list")
        for h, head in enumerate(heads):
            if not isinstance(head, Attention):
                raise TypeError(
                    f"heads[{h}] must be a single-head attention object (e.g. SoftmaxAttention), "
                    f"got {type(head).__name__}"
                )
        dim, batch = _common_dim_batch(heads, "heads")
        self.heads = tuple(heads)
        self.dim = dim
        self.causal = any(head.causal for head in heads)
        #: number of systems B when a head has per-system parameters, else None
        self.batch: int | None = batch

    def __eq__(self, other) -> bool:
        """Same variant with equal parameters (arrays elementwise)."""
        if not isinstance(other, (Attention, MultiHeadAttention)):
            return NotImplemented
        return _spec.same_parameters(self, other)

    __hash__ = None  # parameters are mutable arrays

    def __repr__(self) -> str:
        return f"MultiHeadAttention([{', '.join(map(repr, self.heads))}])"

    def matrix(self, x, weights=None) -> np.ndarray:
        """Per-head weight matrices, shape (H, n, n)."""
        return np.stack([head.matrix(x, weights) for head in self.heads])

    def velocity_reference(self, x, weights=None) -> np.ndarray:
        """Sum of the heads' dense NumPy outputs, shape (n, d)."""
        return sum(head.velocity_reference(x, weights) for head in self.heads)

    def velocity(self, x, weights=None, dtype=None) -> np.ndarray:
        """Sum of the heads' kernel outputs, shape (n, d), in ``dtype``.

        See :meth:`Attention.velocity`.
        """
        return sum(head.velocity(x, weights, dtype) for head in self.heads)

    def _velocity(self, x, weights):
        return sum(head._velocity(x, weights) for head in self.heads)

    def _velocity_batch(self, x, weights):
        return sum(head._velocity_batch(x, weights) for head in self.heads)

    def _system(self, b: int) -> MultiHeadAttention:
        """The model of system b of a batch (itself when no head is batched)."""
        if self.batch is None:
            return self
        return MultiHeadAttention([head._system(b) for head in self.heads])

    def _field(self, targets, sources, weights, causal=False):
        return sum(head._field(targets, sources, weights, causal) for head in self.heads)


class Layers:
    r"""A depth-dependent model: attention whose parameters are piecewise constant in time.

    Layer k acts on :math:`[t_k, t_{k+1})` (the last one on :math:`[t_{L-1}, t_L]`):

    .. math::

        A_i(x, t) = A^{(k)}_i(x) \quad\text{for } t_k \le t < t_{k+1},
        \qquad k = 0, \dots, L - 1,

    the continuous-depth picture of a Transformer whose layers have their own
    :math:`\beta, Q, K, V` (docs/math.md §9.16). Used as the attention of a
    :class:`~transformer_pde.TokenDynamics`, it is accepted by
    :func:`~transformer_pde.simulate` (one system or a batch),
    :func:`~transformer_pde.solve_meanfield` and :func:`~transformer_pde.gaussian_moments`;
    each lands exactly on the layer boundaries :math:`t_1, \dots, t_{L-1}` (no step
    straddles one) and starts the next layer afresh there, so a run over several layers
    is the sequence of the runs of its layers, each from the end state of the one before.
    The model is defined on :math:`[t_0, t_L]` only: a time outside it (in ``t_span``,
    ``t_eval`` or ``velocity(x, t)``) is a ``ValueError``.

    Parameters
    ----------
    attentions : sequence of Attention or MultiHeadAttention, length L >= 1
        The layers, on the same token dimension d (where their matrices fix it) and with
        the same number of systems B where they are batched.
    times : array_like, shape (L + 1,)
        Strictly increasing, finite layer boundaries :math:`t_0 < t_1 < \dots < t_L`.

    Examples
    --------
    >>> import numpy as np
    >>> import transformer_pde as tp
    >>> att = tp.Layers([tp.SoftmaxAttention(1.0), tp.SoftmaxAttention(4.0)], [0.0, 1.0, 2.0])
    >>> att.at(0.5).beta, att.at(1.0).beta, att.breakpoints
    (1.0, 4.0, (1.0,))
    >>> dyn = tp.TokenDynamics(att)
    >>> x0 = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> traj = tp.simulate(dyn, x0, (0.0, 2.0), t_eval=[0.0, 1.0, 2.0], dt=0.01)
    >>> traj.x.shape
    (3, 2, 2)
    """

    def __init__(self, attentions: Sequence, times):
        if isinstance(attentions, (Attention, MultiHeadAttention, Layers)) or not isinstance(
                attentions, Sequence):
            raise TypeError(
                "attentions must be a list of attention objects (one per layer), got "
                f"{type(attentions).__name__}"
            )
        if len(attentions) == 0:
            raise ValueError("attentions must contain at least one layer, got an empty list")
        for k, att in enumerate(attentions):
            if isinstance(att, Layers):
                raise TypeError(f"attentions[{k}] is itself a Layers model; give its layers directly")
            if not isinstance(att, (Attention, MultiHeadAttention)):
                raise TypeError(
                    f"attentions[{k}] must be an attention object (e.g. SoftmaxAttention), "
                    f"got {type(att).__name__}"
                )
        arr = np.asarray(times)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating)
                                       or np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"times must be a 1-D array of real numbers, got {times!r}")
        arr = np.array(arr, dtype=np.float64)
        if arr.ndim != 1 or len(arr) != len(attentions) + 1:
            raise ValueError(
                f"times must have shape ({len(attentions) + 1},) (one more boundary than the "
                f"{len(attentions)} layers), got shape {arr.shape}"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"times must be finite, got {arr.tolist()}")
        if np.any(np.diff(arr) <= 0.0):
            k = int(np.argmax(np.diff(arr) <= 0.0))
            raise ValueError(
                f"times must be strictly increasing, but times[{k}]={arr[k]:g} >= "
                f"times[{k + 1}]={arr[k + 1]:g}"
            )
        dim, batch = _common_dim_batch(attentions, "layers")
        self.attentions = tuple(attentions)
        self.times = arr
        self.dim: int | None = dim
        #: number of systems B when a layer has per-system parameters, else None
        self.batch: int | None = batch
        self.causal = any(att.causal for att in attentions)

    @property
    def breakpoints(self) -> tuple[float, ...]:
        r"""The interior layer boundaries :math:`t_1, \dots, t_{L-1}` (where the field switches)."""
        return tuple(float(t) for t in self.times[1:-1])

    def __len__(self) -> int:
        return len(self.attentions)

    def index(self, t: float) -> int:
        """The layer acting at time t: k with ``times[k] <= t < times[k + 1]`` (the last at ``times[-1]``).

        Raises ``ValueError`` for t outside ``[times[0], times[-1]]``.
        """
        t = _v.as_real(t, "t")
        self.check_span(t, t, "t")
        return min(int(np.searchsorted(self.times, t, side="right")) - 1, len(self.attentions) - 1)

    def at(self, t: float):
        """The attention object of the layer acting at time t (see :meth:`index`)."""
        return self.attentions[self.index(t)]

    def check_span(self, t0: float, t1: float, name: str = "t_span") -> None:
        """Raise ``ValueError`` unless ``[t0, t1]`` lies inside ``[times[0], times[-1]]``."""
        lo, hi = float(self.times[0]), float(self.times[-1])
        if t0 < lo or t1 > hi:
            given = f"{t0:g}" if t0 == t1 else f"[{t0:g}, {t1:g}]"
            raise ValueError(
                f"{name}={given} reaches outside the layers of {self!r}, which are defined on "
                f"[times[0], times[-1]] = [{lo:g}, {hi:g}]; extend times or shorten the run"
            )

    def __eq__(self, other) -> bool:
        """Same layers (each equal) and the same boundary times."""
        if not isinstance(other, Layers):
            return NotImplemented
        return _spec.same_parameters(self, other)

    __hash__ = None  # parameters are mutable arrays

    def __repr__(self) -> str:
        times = ", ".join(f"{t:g}" for t in self.times)
        return f"Layers([{', '.join(map(repr, self.attentions))}], times=[{times}])"

    def _system(self, b: int) -> Layers:
        """The model of system b of a batch (itself when no layer is batched)."""
        if self.batch is None:
            return self
        return Layers([att._system(b) for att in self.attentions], self.times)

    # the views of one layer, at the time t
    def matrix(self, x, t: float, weights=None) -> np.ndarray:
        """The weight matrix of the layer acting at t (see :meth:`Attention.matrix`)."""
        return self.at(t).matrix(x, weights)

    def velocity_reference(self, x, t: float, weights=None) -> np.ndarray:
        """Dense NumPy output of the layer acting at t, shape (n, d)."""
        return self.at(t).velocity_reference(x, weights)

    def velocity(self, x, t: float, weights=None, dtype=None) -> np.ndarray:
        """Kernel output of the layer acting at t, shape (n, d) (see :meth:`Attention.velocity`)."""
        return self.at(t).velocity(x, weights, dtype)
