"""Command-line plumbing shared by every command (``train_agent.py``, the task CLIs).

**One source for every option.** A command's options are the fields of its config
dataclass, each declared once with :func:`fw_agents.fields.option` (default + help);
:func:`add_config_arguments` generates the flags from them (``learning_rate`` ->
``--learning-rate``, the field's type as the flag's type, ``bool`` as ``--x/--no-x``,
``dict`` as ``KEY=VALUE ...``, ``list``/``tuple`` as ``A B ...``, a field without a default as a required flag,
defaults shown by ``--help``) and :func:`config_from_args` builds the dataclass back from
the parsed flags (:func:`config_to_argv` is its inverse). A :class:`~fw_agents.fields.KeyFlag` is a shortcut
for one key of a ``dict`` field (``--decay 0.9`` for ``--memory-kwargs decay=0.9``).

**One-line errors.** Bad input ends a command with **one** line on stderr and exit
status 2, never a traceback: :class:`OneLineArgumentParser` drops argparse's usage
block, and :func:`run_cli` turns a ``ValueError`` raised while setting up or running
into the same kind of line. A warning raised meanwhile is one ``warning:`` line too
(:func:`show_warning_line`), without the ANSI colour codes Gymnasium puts in its own.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import re
import signal
import sys
import types
import typing
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

from fw_agents.fields import KeyFlag, field_default, field_help
from fw_agents.runs.errors import NonFiniteError
from fw_agents.runs.signals import sigterm_as_interrupt
from fw_agents.validation import int_range_text

C = TypeVar("C")

#: Exit status for bad input (argparse's own convention).
EXIT_BAD_INPUT = 2


class OneLineArgumentParser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors are one line: ``<prog>: error: <message>``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {' '.join(message.split())}\n")


def run_interruptible(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """:func:`run_cli` for a long-running command: SIGTERM (what schedulers and ``timeout``
    send) acts as Ctrl-C, and either ends the command with status ``128 + signal`` after
    ``main`` saved what it could, without a traceback.

    :param main: The command's body; on ``KeyboardInterrupt`` it saves and re-raises.
    :param argv: Arguments (default: ``sys.argv[1:]``).
    """
    with sigterm_as_interrupt() as received:
        try:
            return run_cli(main, argv)
        except KeyboardInterrupt:
            return 128 + (received[0] if received else signal.SIGINT)


#: An ANSI escape sequence: CSI (colours, ``\x1b[33m``), OSC (``\x1b]...`` up to BEL or ST), or a
#: two-character escape.
_ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


def strip_ansi(text: str) -> str:
    """``text`` without its ANSI escape sequences (terminal colours and the like)."""
    return _ANSI_ESCAPE.sub("", text)


def show_warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: typing.TextIO | None = None, line: str | None = None) -> None:  # fmt: skip
    """``warnings.showwarning`` of a command: ``warning: <message> (<category> at <file>:<line>)``,
    one line on stderr, ANSI escape codes removed (Gymnasium colours its warnings, which a log
    file or a non-colour terminal shows as raw ``\x1b[33m``)."""
    text = " ".join(strip_ansi(str(message)).split())
    stream = sys.stderr if file is None else file
    try:
        print(f"warning: {text} ({category.__name__} at {filename}:{lineno})", file=stream, flush=True)
    except OSError:  # a closed or broken stderr: a warning never stops the command
        pass


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; a ``ValueError`` becomes ``error: <message>`` on stderr and status 2,
    a :class:`~fw_agents.runs.errors.NonFiniteError` or an ``OSError`` (a full disk, an output path that cannot be a
    folder) one line and status 1: every file written before is intact (atomic writes).
    Warnings are shown as one line each (:func:`show_warning_line`) meanwhile.

    :param main: The command's body; returns its exit status.
    :param argv: Arguments (default: ``sys.argv[1:]``).
    :return: The exit status.
    """
    with warnings.catch_warnings():  # restores the filters and showwarning afterwards
        warnings.showwarning = show_warning_line
        return _run_reporting_errors(main, argv)


def _run_reporting_errors(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None) -> int:
    """:func:`run_cli`'s body: ``main(argv)``, its bad input and failures as one line and a status."""
    try:
        return main(argv)
    except ValueError as error:
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except NonFiniteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        print(f"error: {error.strerror or error}{where}; stopped, the files written before are kept", file=sys.stderr)
        return 1


def typed_dests(build_parser: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None) -> frozenset[str]:
    """The destinations the command line ``argv`` sets, a flag typed at its default value
    included (a fresh parser from ``build_parser`` parses it again with every default
    suppressed, so only what was typed lands in the namespace)."""
    probe = build_parser()
    for action in probe._actions:
        action.default = argparse.SUPPRESS
        action.required = False  # a required flag left out is the caller's to report
    probe.set_defaults(**{key: argparse.SUPPRESS for key in probe._defaults})
    return frozenset(key for key, value in vars(probe.parse_args(argv)).items() if value is not argparse.SUPPRESS)


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer ``>= low`` (argparse's one-line error otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite number ``> 0``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def program_name(module_form: str) -> str:
    """The command's name as the user typed it: an installed script (``fw-train``) or a file
    (``train_agent.py``) by its own name, ``python -m ...`` as ``module_form``."""
    path = sys.argv[0] if sys.argv and sys.argv[0] else ""
    name = os.path.basename(path)
    inside = os.path.abspath(path).startswith(os.path.dirname(os.path.abspath(__file__)) + os.sep)  # run with -m
    return name if name.startswith("fw-") or (name.endswith(".py") and not inside) else module_form


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's layout and shows every option's default."""


def add_config_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    config_class: type,
    exclude: Sequence[str] = (),
    defaults: dict[str, Any] | None = None,
) -> list[str]:
    """Add one flag per :func:`~fw_agents.fields.option` field of ``config_class``.

    :param parser: The parser (or argument group) to extend.
    :param config_class: A dataclass whose fields were declared with :func:`~fw_agents.fields.option`.
    :param exclude: Field names to leave out (a command that sets them itself).
    :param defaults: Per-command defaults replacing the dataclass's.
    :return: The names of the fields added (what :func:`config_from_args` reads back).
    """
    hints = typing.get_type_hints(config_class)
    added = []
    for field in dataclasses.fields(config_class):
        meta = field.metadata
        if "help" not in meta or not meta["cli"] or field.name in exclude:
            continue
        default = (defaults or {}).get(field.name, field_default(field))
        kind = _plain_type(hints[field.name])
        flags = ["--" + field.name.replace("_", "-"), *meta["aliases"]]
        bounds = meta.get("range")
        shown = f" (an integer {int_range_text(*bounds)})" if bounds else ""
        kwargs: dict[str, Any] = dict(dest=field.name, default=default, help=field_help(field) + shown)
        if default is dataclasses.MISSING:  # a field without a default is a required flag
            kwargs.update(default=argparse.SUPPRESS, required=True)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is dict:
            kwargs.update(type=_key_value, nargs="*", metavar=meta["metavar"] or "KEY=VALUE")
        elif kind in (list, tuple):
            kwargs.update(nargs="*", choices=meta["choices"], metavar=meta["metavar"])
        else:
            kwargs.update(type=kind, choices=meta["choices"], metavar=meta["metavar"])
        parser.add_argument(*flags, **kwargs)
        added.append(field.name)
    return added


def config_from_args(
    config_class: type[C], args: argparse.Namespace, names: Sequence[str] | None = None, **overrides: Any
) -> C:
    """Build ``config_class`` from the parsed flags ``names`` (as returned by
    :func:`add_config_arguments`; default: every field of ``config_class`` found in ``args``),
    plus ``overrides``."""
    if names is None:
        names = [f.name for f in dataclasses.fields(config_class) if hasattr(args, f.name) and f.name not in overrides]
    values = {name: getattr(args, name) for name in names}
    hints = typing.get_type_hints(config_class)
    for name, value in values.items():
        kind = _plain_type(hints[name])
        if kind is dict and isinstance(value, list):  # KEY=VALUE pairs; later ones win, as on any command line
            values[name] = dict(value)
        elif kind is tuple and isinstance(value, list):
            values[name] = tuple(value)
    return config_class(**values, **overrides)


_GIVEN = "_given_key_flags"


def _note_given(namespace: argparse.Namespace, dest: str, option_string: str | None) -> None:
    given = dict(getattr(namespace, _GIVEN, {}))  # a fresh dict per parse, never the parser's default
    given[dest] = option_string
    setattr(namespace, _GIVEN, given)


class _KeyFlagAction(argparse.Action):
    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, values)
        _note_given(namespace, self.dest, option_string)


class _KeySwitchAction(argparse.BooleanOptionalAction):
    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        super().__call__(parser, namespace, values, option_string)
        _note_given(namespace, self.dest, option_string)


def add_key_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, flags: Sequence[KeyFlag]) -> None:
    """Add the :class:`KeyFlag` s; ``args.<dest>`` holds each one's value (its ``default`` if not given)."""
    for flag in flags:
        kwargs: dict[str, Any] = dict(dest=flag.dest, default=flag.default, help=flag.help)
        if flag.type is bool:
            parser.add_argument(flag.flag, action=_KeySwitchAction, **kwargs)
        else:
            parser.add_argument(flag.flag, action=_KeyFlagAction, type=flag.type, **kwargs)


def fold_key_flags(args: argparse.Namespace, flags: Sequence[KeyFlag]) -> None:
    """Write each :class:`KeyFlag` given on the command line into its ``dict`` field of ``args``.

    :raises ValueError: A flag given while its ``when`` field has another value, or a key set both
        by its flag and in the field itself.
    """
    given = getattr(args, _GIVEN, {})
    for flag in flags:
        if flag.dest not in given:
            continue
        spelled = given[flag.dest] or flag.flag
        selector, value = flag.when
        if getattr(args, selector) != value:
            raise ValueError(f"{spelled} applies to --{selector.replace('_', '-')} {value} only")
        values = getattr(args, flag.field)
        values = dict(values or ())  # KEY=VALUE pairs or a dict
        if flag.key in values:
            field = "--" + flag.field.replace("_", "-")
            raise ValueError(f"{spelled} and {field} {flag.key}=... both set {flag.key}; give one")
        values[flag.key] = getattr(args, flag.dest)
        setattr(args, flag.field, values)


def config_to_argv(config: Any, names: Sequence[str] | None = None) -> list[str]:
    """The flags that give a command ``config``'s values: the inverse of
    :func:`config_from_args`, for running a command from code (a sweep's cells).

    :param config: A dataclass instance whose fields were declared with :func:`~fw_agents.fields.option`.
    :param names: The fields to pass (default: every command-line field). ``None`` values
        are left out (the flag's own default).
    """
    argv: list[str] = []
    for field in dataclasses.fields(config):
        if "help" not in field.metadata or not field.metadata["cli"] or (names is not None and field.name not in names):
            continue
        flag, value = "--" + field.name.replace("_", "-"), getattr(config, field.name)
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):
            argv += [flag, *(f"{key}={item!r}" for key, item in value.items())]
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def _plain_type(hint: Any) -> type:
    """``int | None`` -> ``int``; ``dict[str, Any]`` -> ``dict``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return typing.get_origin(hint) or hint


def _key_value(text: str) -> tuple[str, Any]:
    """``"decay=0.9"`` -> ``("decay", 0.9)``: the value as a Python literal (number, bool,
    None, string, list), else the plain string."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY a Python name, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value
