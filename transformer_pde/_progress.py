"""Progress on long work (private): when to show a bar, the bars, the compile notice.

``progress=None`` (the default of the public functions) means: a bar when stderr is a
terminal, shown only once the work has lasted :data:`AUTO_DELAY` seconds (short runs stay
silent), and none inside work that already shows a bar (a study's runs, a validation's
runs); ``True`` shows it at once, ``False`` never.

The compile notice: Numba signals every real compilation (a miss of the on-disk cache,
not a load from it) with a ``numba:compile`` event; a listener prints one line to stderr
the first time a kernel of the package compiles in a process.
"""

from __future__ import annotations

import contextlib
import sys
import threading

import numpy as np

__all__ = ["AUTO_DELAY", "COMPILE_NOTICE", "bar_delay", "counter", "quiet", "install_compile_notice"]

#: seconds of work before an automatic bar appears
AUTO_DELAY = 2.0
#: the line printed when the package's kernels compile (on-disk cache cold)
COMPILE_NOTICE = ("transformer_pde: compiling Numba kernels (~10 s at a first call; they are cached "
                  "on disk, later processes load them at once)...")

_state = threading.local()


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr is not None and sys.stderr.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def bar_delay(progress, name: str = "progress") -> float | None:
    """Seconds before a bar shows (0: at once), or None for no bar."""
    if progress is None:
        if getattr(_state, "quiet", 0) or not _stderr_is_terminal():
            return None
        return AUTO_DELAY
    if isinstance(progress, (bool, np.bool_)):
        return 0.0 if progress else None
    raise TypeError(f"{name} must be True, False or None (a bar when stderr is a terminal), "
                    f"got {progress!r}")


@contextlib.contextmanager
def quiet():
    """Inside: ``progress=None`` shows no bar (the caller shows one for the whole work)."""
    _state.quiet = getattr(_state, "quiet", 0) + 1
    try:
        yield
    finally:
        _state.quiet -= 1


def counter(total: int, desc: str, delay: float | None, unit: str = "run"):
    """A tqdm bar counting ``total`` pieces of work, or None when ``delay`` is None."""
    if delay is None:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, delay=delay, leave=delay == 0.0, dynamic_ncols=True)


_notice = {"installed": False, "printed": False}


def _on_compile(data) -> None:
    if _notice["printed"]:
        return
    dispatcher = data.get("dispatcher") if isinstance(data, dict) else None
    module = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
    if module.startswith("transformer_pde."):
        _notice["printed"] = True
        if "tqdm" in sys.modules:  # above any bar on screen
            from tqdm import tqdm

            tqdm.write(COMPILE_NOTICE, file=sys.stderr)
        else:
            print(COMPILE_NOTICE, file=sys.stderr, flush=True)


def install_compile_notice() -> None:
    """Listen to Numba's compile events (once per process; cheap: one call per compilation)."""
    if _notice["installed"]:
        return
    from numba.core import event

    class _Listener(event.Listener):
        def on_start(self, ev):
            _on_compile(ev.data)

        def on_end(self, ev):
            pass

    event.register("numba:compile", _Listener())
    _notice["installed"] = True
