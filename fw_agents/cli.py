"""Command-line plumbing shared by every command (``train_agent.py``, the task CLIs).

Bad input ends a command with **one** line on stderr and exit status 2, never a
traceback: :class:`OneLineArgumentParser` drops argparse's usage block, and
:func:`run_cli` turns a ``ValueError`` raised while setting up or running into
the same kind of line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

#: Exit status for bad input (argparse's own convention).
EXIT_BAD_INPUT = 2


class OneLineArgumentParser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors are one line: ``<prog>: error: <message>``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {' '.join(message.split())}\n")


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; a ``ValueError`` becomes ``error: <message>`` on stderr and status 2.

    :param main: The command's body; returns its exit status.
    :param argv: Arguments (default: ``sys.argv[1:]``).
    :return: The exit status.
    """
    try:
        return main(argv)
    except ValueError as error:
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
