"""Waiting for work done in threads, with Ctrl-C (and kill, a closed terminal) that ends it rather than waiting it out."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


def results(futures: Iterable[Future[T]], cancel: threading.Event) -> Iterator[T]:
    """Each future's result, in order. Ctrl-C (KeyboardInterrupt) while waiting sets `cancel` and
    the wait goes on: each worker watches `cancel` and returns within its own bound (cut short),
    so every result still comes back, where a pool's exit would otherwise wait the work out."""
    for future in futures:
        while True:
            try:
                result = future.result()
                break
            except KeyboardInterrupt:
                cancel.set()
        yield result


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within this block SIGTERM and SIGHUP (`kill`, a closed terminal) raise KeyboardInterrupt in
    the main thread, as Ctrl-C does, so work ended that way is cancelled as Ctrl-C cancels it (a
    download removes its partial file; a build stops its make, which runs in a session of its own
    and would not get the signal). Outside the main thread it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Runner:
    """A daemon thread whose end is an Event: waiting on it survives Ctrl-C.

    (A KeyboardInterrupt inside Thread.join() can leave Thread.is_alive() wrong on CPython 3.11,
    so nothing here joins threads.)
    """

    def __init__(self, target: Callable[[], Any], name: str) -> None:
        self.done = threading.Event()

        def body() -> None:
            try:
                target()
            finally:
                self.done.set()

        self.thread = threading.Thread(target=body, name=name, daemon=True)
        self.thread.start()

    def is_alive(self) -> bool:
        return not self.done.is_set()


# Ctrl-C: how long a run waits for its workers to record their state before returning anyway.
STOP_WAIT_S = 1.5


def wait_threads(runners: Sequence[Runner], cancel: threading.Event, stop_wait: float = STOP_WAIT_S,
                 on_interrupt: Callable[[], None] | None = None) -> bool:
    """Wait for workers; on Ctrl-C set `cancel` (and call `on_interrupt`: fleet closes its open
    sessions there) and wait at most `stop_wait` more. Interrupted?"""
    interrupted = False
    stop_by: float | None = None
    while True:
        try:
            alive = [r for r in runners if r.is_alive()]
            if not alive:
                return interrupted
            if cancel.is_set() and stop_by is None:
                stop_by = time.monotonic() + stop_wait
            if stop_by is not None and time.monotonic() > stop_by:
                return interrupted
            time.sleep(0.05)
        except KeyboardInterrupt:
            interrupted = True
            cancel.set()         # each worker aborts its attempt now
            if on_interrupt is not None:
                on_interrupt()
