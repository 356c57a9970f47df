"""SIGINT and SIGTERM during a run: stop at a safe point first, at once if asked again.

While ``handle_stop_signals()`` is active (the whole of every ``sslpipe`` command), SIGINT
(Ctrl-C) and SIGTERM are one and the same: the first signal calls the stop hook of the running
stage, if it registered one with ``stop_hook()`` (the pretrain stage asks its workers to
checkpoint and return); without a hook, or on a second signal, the signal raises
``KeyboardInterrupt`` where the driver is. Either way the runner then marks the stage
interrupted, shuts Ray down and releases the run lock; ``stop_requested()`` names the signal
for the one line the command line prints.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_hooks: list[Callable[[], None]] = []
_requested: list[str] = []


def _on_signal(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    first = not _requested
    _requested.append(name)
    if _hooks and first:
        print(f"\n{name}: stopping at the next step, after a checkpoint ({name} again: now)")
        _hooks[-1]()
        return
    raise KeyboardInterrupt


@contextmanager
def handle_stop_signals() -> Iterator[None]:
    """SIGINT and SIGTERM as described above while the block runs (a no-op off the main
    thread, where Python cannot set signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _on_signal) for s in _STOP_SIGNALS}
    _requested.clear()
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def stop_hook(request_stop: Callable[[], None]) -> Iterator[None]:
    """Call ``request_stop`` on the first stop signal while this block runs."""
    _hooks.append(request_stop)
    try:
        yield
    finally:
        _hooks.remove(request_stop)


def stop_requested() -> str | None:
    """The signal that asked the command to stop, if one did."""
    return _requested[0] if _requested else None


def keep_stop_handlers(start: Callable[[], None]) -> None:
    """Run ``start`` (e.g. ``ray.init``, which installs its own SIGTERM handler), then put
    back the handlers that were active before it."""
    before = {s: signal.getsignal(s) for s in _STOP_SIGNALS}
    start()
    for s, handler in before.items():
        if handler is not None:
            signal.signal(s, handler)
