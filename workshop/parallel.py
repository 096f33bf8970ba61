"""Waiting for work done in threads, with Ctrl-C that ends it rather than waiting it out."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from typing import TypeVar

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
