"""Thread-count setting and the per-call choice of serial or parallel kernels."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

import transformer_pde as tp
from transformer_pde import _threads

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_contention.py"
TWO = min(2, numba.config.NUMBA_NUM_THREADS)

#: these tests are about threads: the kernels keep all of theirs (tests/conftest.py)
pytestmark = pytest.mark.parallel

VARIANTS = {
    "softmax": lambda: tp.SoftmaxAttention(beta=2.0),
    "causal": lambda: tp.SoftmaxAttention(beta=2.0, causal=True),
    "l2": lambda: tp.L2Attention(beta=2.0),
    "usa": lambda: tp.UnnormalizedAttention(beta=2.0),
    "sigmoid": lambda: tp.SigmoidAttention(beta=2.0, bias=-0.5),
    "sinkhorn": lambda: tp.SinkhornAttention(beta=2.0, n_iter=50, tol=1e-10),
}


@pytest.fixture(autouse=True)
def _clean_state():
    """Every test starts and ends with the default setting, policy and no timings."""
    numba_threads = numba.get_num_threads()
    _threads._reset()
    yield
    tp.set_num_threads(None)
    _threads._policy = "adaptive"
    _threads._reset()
    assert numba.get_num_threads() == numba_threads


def _tokens(n=150, d=3, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ----------------------------------------------------------------- the public setting
def test_default_follows_numba():
    assert tp.get_num_threads() == numba.get_num_threads()


@pytest.mark.parametrize("n", [1, TWO, numba.config.NUMBA_NUM_THREADS, np.int64(1)])
def test_set_get_roundtrip(n):
    tp.set_num_threads(n)
    assert tp.get_num_threads() == int(n)
    assert type(tp.get_num_threads()) is int


@pytest.mark.parametrize("bad", [1.0, "2", True, [1]])
def test_set_rejects_non_int(bad):
    with pytest.raises(TypeError, match=r"n must be a positive int or None, got") as info:
        tp.set_num_threads(bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", [0, -1, numba.config.NUMBA_NUM_THREADS + 1])
def test_set_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match=rf"n must be between 1 and \d+ .*got {bad}$"):
        tp.set_num_threads(bad)
    assert tp.get_num_threads() == numba.get_num_threads()  # unchanged by the failed call


def test_context_manager_restores():
    tp.set_num_threads(TWO)
    with tp.num_threads(1):
        assert tp.get_num_threads() == 1
    assert tp.get_num_threads() == TWO
    with pytest.raises(RuntimeError), tp.num_threads(1):
        raise RuntimeError
    assert tp.get_num_threads() == TWO
    with pytest.raises(ValueError, match="n must be between"), tp.num_threads(0):
        pass  # pragma: no cover


def test_setting_does_not_touch_numba():
    before = numba.get_num_threads()
    tp.set_num_threads(1)
    assert numba.get_num_threads() == before


# ------------------------------------------------------- the same numbers every way
def _velocity_all_ways(att, x):
    """Outputs of one variant: serial, 2 threads forced parallel, adaptive (many calls)."""
    out = {}
    with tp.num_threads(1):
        out["serial"] = att.velocity(x)
    _threads._policy = "parallel"
    with tp.num_threads(TWO):
        out["parallel"] = att.velocity(x)
    _threads._policy = "adaptive"
    with tp.num_threads(TWO):
        # enough calls for the chooser to try both versions and exploit one
        outs = [att.velocity(x) for _ in range(4 * _threads._WINDOW)]
    out["adaptive"] = outs
    return out


# causal (~5 s cold: the parallel causal kernels, which nothing else in the default suite
# compiles) runs in the slow set
@pytest.mark.parametrize("variant", [pytest.param(v, marks=pytest.mark.slow) if v == "causal" else v
                                     for v in sorted(VARIANTS)])
def test_same_result_serial_parallel_adaptive(variant):
    att = VARIANTS[variant]()
    x = _tokens()
    assert len(x) ** 2 > _threads.SERIAL_MAX_PAIRS  # the parallel version is eligible
    out = _velocity_all_ways(att, x)
    ref = out["serial"]
    np.testing.assert_allclose(out["parallel"], ref, rtol=0, atol=1e-12)
    for o in out["adaptive"]:
        np.testing.assert_allclose(o, ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ref, att.velocity_reference(x), rtol=0, atol=1e-12)


# slow: it compiles the parallel float32 kernels, which nothing else in the default suite
# needs (~10 s of a cold CI run); the serial float32 kernels are checked in
# tests/test_kernels_float32.py
@pytest.mark.slow
@pytest.mark.parametrize("make", [lambda: tp.SoftmaxAttention(2.0), lambda: tp.UnnormalizedAttention(2.0)])
def test_float32_serial_and_parallel_agree(make):
    """The float32 kernels too: serial and parallel run the same row code (to float32 round-off)."""
    att, x = make(), _tokens()
    with tp.num_threads(1):
        serial = att.velocity(x, dtype=np.float32)
    _threads._policy = "parallel"
    with tp.num_threads(TWO):
        parallel = att.velocity(x, dtype=np.float32)
    assert parallel.dtype == serial.dtype == np.float32
    # the same arithmetic in each row; 4 eps32 of the largest entry allows for a different
    # vectorised reduction order between the two compiled copies
    atol = 4 * np.finfo(np.float32).eps * np.abs(serial).max()
    np.testing.assert_allclose(parallel, serial, rtol=0, atol=atol)


def test_adaptive_tries_both_versions():
    att = tp.SoftmaxAttention()
    x = _tokens(200)
    with tp.num_threads(TWO):
        for _ in range(2 * _threads._WINDOW):
            att.velocity(x)
    (size_class,) = _threads._classes.values()
    # a new size class times each version _WINDOW times before the estimates decide
    if TWO > 1:
        assert [len(t) for t in size_class.times] == [_threads._WINDOW, _threads._WINDOW]
    assert all(len(t) <= _threads._WINDOW for t in size_class.times)


def test_an_outlier_first_sample_does_not_lock_in_the_slower_version():
    """The first parallel call of a process can take 1000x longer (loading the kernel,
    waking the pool: 169 ms against 0.1 ms measured). The chooser alternates until both
    versions have _WINDOW samples, so the median discards it and parallel wins."""
    size_class = _threads._SizeClass()
    fake = {0: [1.5e-4] * 3, 1: [0.169, 1e-4, 1e-4]}
    order = []
    for _ in range(2 * _threads._WINDOW):
        which = size_class.choose()
        order.append(which)
        size_class.record(which, fake[which].pop(0))
    assert order == [1, 0, 1, 0, 1, 0]
    assert size_class.est == [1.5e-4, 1e-4]
    assert size_class.choose() == 1  # the faster, now that both windows are full


def test_small_calls_and_one_thread_never_time():
    att = tp.SoftmaxAttention()
    att.velocity(_tokens(32))  # 32^2 <= SERIAL_MAX_PAIRS
    with tp.num_threads(1):
        att.velocity(_tokens(200))
    assert _threads._classes == {}


def test_chooser_probes_rarely_and_follows_the_faster():
    c = _threads._SizeClass()
    picks = []
    for _ in range(2000):
        w = c.choose()
        picks.append(w)
        c.record(w, 1e-3 if w == 0 else 5e-3)  # serial 5x faster
    probes = sum(picks[10:])
    assert 0 < probes < 0.01 * len(picks)  # re-probed, at a cost share below EXPLORE_SHARE
    assert probes * 4e-3 <= 2 * _threads.EXPLORE_SHARE * sum(
        1e-3 if w == 0 else 5e-3 for w in picks)


def test_chooser_switches_when_load_changes():
    c = _threads._SizeClass()
    cost = {0: 1e-3, 1: 5e-4}  # parallel faster
    for _ in range(50):
        w = c.choose()
        c.record(w, cost[w])
    assert c.choose() == 1 or c.choose() == 1
    cost[1] = 5e-2  # a busy neighbour: the parallel version collapses
    picks = []
    for _ in range(50):
        w = c.choose()
        picks.append(w)
        c.record(w, cost[w])
    assert picks[-20:].count(0) >= 19


# ------------------------------------------------------ the setting is respected
def _spy(monkeypatch):
    """Record Numba's thread count inside every parallel kernel call."""
    seen = []
    from transformer_pde._kernels import attention as k

    for name in ("softmax_field", "exp_field", "symmetric_field", "sigmoid_field", "sinkhorn_potentials"):
        real = getattr(k, name)

        def wrapper(*args, _real=real, _name=name):
            if _name != "sinkhorn_potentials" or not args[-1]:
                seen.append(numba.get_num_threads())
            return _real(*args)

        monkeypatch.setattr(k, name, wrapper)
    return seen


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_parallel_calls_respect_the_setting(monkeypatch, variant):
    seen = _spy(monkeypatch)
    att = VARIANTS[variant]()
    x = _tokens(120)
    before = numba.get_num_threads()
    with tp.num_threads(1):
        att.velocity(x)
    assert seen == []  # one thread: never a parallel region
    _threads._policy = "parallel"
    with tp.num_threads(TWO):
        att.velocity(x)
    assert seen and max(seen) <= TWO
    assert numba.get_num_threads() == before  # restored after each call


def test_smaller_setting_than_numba_is_applied_and_restored(monkeypatch):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    seen = _spy(monkeypatch)
    numba.set_num_threads(2)
    try:
        numba.set_num_threads(1)  # the user lowered Numba's count on this thread
        _threads._policy = "parallel"
        with tp.num_threads(2):  # ... and asked this package for 2
            tp.SoftmaxAttention().velocity(_tokens(120))
        assert seen == [2]
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


def test_simulate_leaves_numba_unchanged():
    before = numba.get_num_threads()
    dyn = tp.TokenDynamics(tp.SoftmaxAttention())
    x0 = _tokens(100)
    with tp.num_threads(TWO):
        tp.simulate(dyn, x0, (0.0, 0.5), method="rk4", dt=0.05)
    assert numba.get_num_threads() == before


# ------------------------------------------------------------- benchmark smoke test
@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_contention", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


# slow: the quick benchmark times every case idle, beside one and two busy processes and
# concurrently (~13 s, 7 % of the default suite's budget); the harness is still checked
# by CI's slow set
@pytest.mark.slow
def test_bench_contention_quick(bench, capsys, tmp_path):
    out_json = tmp_path / "sub" / "contention.json"
    status = bench.main(["--quick", "--json", str(out_json)])
    assert status == 0  # without --check, never a verdict on the timings
    text = capsys.readouterr().out
    for cond in ("idle", "busy1", "busy2", "conc #1", "conc #2"):
        assert cond in text
    assert "ours/single" in text and "ours/today" in text
    data = json.loads(out_json.read_text())
    assert data["exit_status"] == 0
    (row,) = data["results"]
    assert row["n"] == 64
    assert set(row["ratios"]) >= {"idle_ours_over_today", "busy1_ours_over_single",
                                  "busy2_ours_over_single", "concurrent_over_idle"}
    assert all(a["value"] > 0 for a in data["acceptance"])


@pytest.mark.parallel
@pytest.mark.parametrize("normalize", [True, False], ids=["softmax", "usa"])
def test_symmetric_pairs_serial_and_parallel_bit_for_bit(normalize, rng):
    """The serial and the parallel symmetric-pairs kernels give the same bits: a resumed run
    repeats the uninterrupted one whichever version the chooser takes (found by the slow
    set's kill-and-resume test, when the chunk sums were added by code inlined into each)."""
    from transformer_pde._kernels import attention as k

    for n in (40, 400):
        x = rng.normal(size=(n, 2))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        q, xT = np.ascontiguousarray(4.0 * x), np.ascontiguousarray(x.T)
        colw = np.log(rng.uniform(0.5, 1.0, n))
        serial, parallel = np.empty((n, 2)), np.empty((n, 2))
        assert k.symmetric_field_serial(q, xT, xT, colw, normalize, serial)
        assert k.symmetric_field(q, xT, xT, colw, normalize, parallel)
        assert np.array_equal(serial, parallel)


def test_docstring_examples():
    import doctest

    result = doctest.testmod(_threads, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 3 and result.failed == 0


@pytest.mark.parametrize("variant", ["softmax", "causal", "usa", "sigmoid"])
def test_blas_tiles_on_threads_give_the_serial_numbers(monkeypatch, variant, rng):
    # k + d > 48: BLAS tiles; the threads take the same tiles, so the same numbers exactly
    from transformer_pde import attention as attention_module

    monkeypatch.setattr(attention_module, "_TILE_ENTRIES", 37 * 300)  # 37 rows: 9 tiles
    att = VARIANTS[variant]()
    x = rng.normal(size=(300, 50)) / np.sqrt(50)
    colw, out_s, out_p = np.zeros(300), np.empty((300, 50)), np.empty((300, 50))
    kind = {"usa": 1, "sigmoid": 2}.get(variant, 0)
    if variant == "sigmoid":
        colw[:] = 1 / 300  # the weights
    args = (att._query(x), x, x, colw, kind, -0.5, variant == "causal")
    attention_module._tiles_serial(*args, out_s)
    with tp.num_threads(TWO):
        attention_module._tiles_parallel(*args, out_p)
    np.testing.assert_array_equal(out_p, out_s)
    with tp.num_threads(TWO):  # through the chooser, parallel first: vs the dense reference
        v = att.velocity(x)
    np.testing.assert_allclose(v, att.velocity_reference(x), rtol=1e-12, atol=1e-14)  # BLAS order


def test_blas_tiles_use_no_worker_thread_on_one_thread(monkeypatch, rng):
    from transformer_pde import attention as attention_module

    used = []
    monkeypatch.setattr(attention_module, "_tiles_parallel", lambda *a: used.append(a))
    x = rng.normal(size=(200, 50)) / np.sqrt(50)
    with tp.num_threads(1):
        tp.UnnormalizedAttention(2.0).velocity(x)
    assert used == []
