"""Waiting for work done in threads, with Ctrl-C (and kill, a closed terminal) that ends it rather than waiting it out."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
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
