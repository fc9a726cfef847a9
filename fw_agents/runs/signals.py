"""SIGTERM (what schedulers and ``timeout`` send) stops a run as Ctrl-C does: a
``KeyboardInterrupt`` where the run is, so it saves its checkpoint on the way out."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[list[int]]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt``; the previous handler is restored after.

    :return: The signals received (empty after a Ctrl-C): what a command's exit status reports
        (``128 + signal``).
    """
    received: list[int] = []

    def interrupt(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)
