"""Argument checks with one message style, shared by the cores, the configs and the commands.

Every check raises ``ValueError`` naming the argument, what is accepted and what it got::

    hidden_size must be an integer >= 1, got 0
    decay must be a finite number in (0, 1), got 1.5
    unknown memory 'transformer'; choose one of fastweights, lstm, gru

and returns the value in its plain Python type (numpy integers, which Stable-Baselines3
computes sizes with, become ``int``). Pure Python: importing it pulls no torch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def check_int(name: str, value: Any, low: int | None = 1, high: int | None = None) -> int:
    """``value`` as an ``int`` in ``[low, high]`` (None: unbounded on that side).

    :param name: The argument's name, as the user wrote it.
    :param value: A Python or numpy integer (``bool`` and floats are refused, even ``2.0``).
    :param low: Smallest accepted value.
    :param high: Largest accepted value.
    :return: ``int(value)``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not _within(value, low, high, True, True):
        raise ValueError(f"{name} must be an integer{_range(low, high, True, True)}, got {value!r}")
    return int(value)


def check_float(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = False,
    high_inclusive: bool = False,
) -> float:
    """``value`` as a finite ``float`` between ``low`` and ``high`` (bounds open unless said).

    NaN and ±inf are always refused: they reach a run as a silently non-finite model.

    :param name: The argument's name.
    :param value: A Python or numpy real number (``bool`` is refused).
    :param low: Lower bound (None: none).
    :param high: Upper bound (None: none).
    :param low_inclusive: Accept ``low`` itself.
    :param high_inclusive: Accept ``high`` itself.
    :return: ``float(value)``.
    """
    ok = (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and math.isfinite(value)
        and _within(value, low, high, low_inclusive, high_inclusive)
    )
    if not ok:
        raise ValueError(f"{name} must be a finite number{_range(low, high, low_inclusive, high_inclusive)}, got {value!r}")
    return float(value)


def check_choice(name: str, value: T, choices: Iterable[T]) -> T:
    """``value`` if it is one of ``choices``.

    :param name: What is chosen (``memory``, ``device``, ...).
    :param value: The choice made.
    :param choices: The accepted values, listed in the message in this order.
    """
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(str, choices))}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False`` (numpy bools included); ``0``/``1`` and strings are refused."""
    if not isinstance(value, (bool, _numpy_bool())):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def one_line(error: BaseException, limit: int | None = None, first_line: bool = False) -> str:
    """An exception as one line: ``Type: message``, the message's whitespace (newlines included)
    as single spaces, cut after ``limit`` characters with ``...`` (None: whole); ``Type`` alone
    for an empty message. How every warning and error line of the package names a caught exception.

    :param first_line: Only the message's first line (the rest is detail, e.g. a W&B server's retries).
    """
    text = str(error).strip()
    if first_line and text:
        text = text.splitlines()[0]
    text = " ".join(text.split())
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _within(value: Any, low: Any, high: Any, low_inclusive: bool, high_inclusive: bool) -> bool:
    above = low is None or (value >= low if low_inclusive else value > low)
    below = high is None or (value <= high if high_inclusive else value < high)
    return bool(above and below)


def int_range_text(low: int | None, high: int | None) -> str:
    """How :func:`check_int` words ``[low, high]``: ``"in [1, 4096]"``, ``">= 0"`` (``""``: unbounded)."""
    return _range(low, high, True, True).strip()


def _range(low: Any, high: Any, low_inclusive: bool, high_inclusive: bool) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>=' if low_inclusive else '>'} {_number(low)}"
    if low is None:
        return f" {'<=' if high_inclusive else '<'} {_number(high)}"
    return f" in {'[' if low_inclusive else '('}{_number(low)}, {_number(high)}{']' if high_inclusive else ')'}"


def _number(bound: Any) -> str:
    """An integer bound in full (``18446744073709551615``), a float one short (``0.001``)."""
    return str(int(bound)) if isinstance(bound, numbers.Integral) else f"{bound:g}"


def _numpy_bool() -> type:
    try:
        import numpy

        return numpy.bool_
    except ImportError:  # pragma: no cover - numpy is a core dependency
        return bool
