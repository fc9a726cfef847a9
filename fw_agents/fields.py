"""Config fields that document themselves: the metadata every config dataclass declares its
options with, and the checks that metadata carries.

A field declared with :func:`option` holds its default, one line of help and, for an ``int``,
its accepted range; :mod:`fw_agents.cli` generates a command's flags from these fields, and
:func:`check_int_ranges` checks a config against the ranges. A :class:`KeyFlag` describes a
flag that sets one key of a ``dict`` field. Pure Python: importing it pulls no torch, so a
config built on it stays plain data.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Sequence
from typing import Any

from fw_agents.validation import check_choice, check_int

#: What a field is to a hyper-parameter search (:mod:`fw_agents.search`): ``study`` defines the
#: study (every worker joining it must agree), ``worker`` is each worker's own choice (a flag of
#: the search, not the study's), ``trial`` is set by the search for each trial (drawn, or the
#: trial's own folder: no flag of the search).
SEARCH_ROLES = ("study", "worker", "trial")


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str | Callable[[], str],
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    aliases: Sequence[str] = (),
    choices: Sequence[Any] | None = None,
    metavar: str | None = None,
    cli: bool = True,
    low: int | None = None,
    high: int | None = None,
    per_invocation: bool = False,
    search: str = "study",
) -> Any:
    """A config dataclass field that documents itself and becomes a command-line flag.

    :param default: The field's default.
    :param help: One line for ``--help`` (and the reader of the dataclass); a function returning
        it for a text that needs heavier imports (the registered envs, the cores' options), called
        when the flags are built (:func:`field_help`).
    :param default_factory: For mutable defaults (``dict``), instead of ``default``.
    :param aliases: Extra flag spellings (``("--lr",)``).
    :param choices: The accepted values, checked by the parser and listed by ``--help``.
    :param metavar: The value's name in ``--help``.
    :param cli: False keeps the field out of the command line (set by code only).
    :param low: An ``int`` field's smallest accepted value (``--help`` shows the range;
        :func:`check_int_ranges` checks it).
    :param high: An ``int`` field's largest accepted value (None: unbounded).
    :param per_invocation: Each invocation's own choice (where the run goes, where it computes, what
        it trusts): a resumed run never takes it from the run's ``config.json``.
    :param search: The field's role in a hyper-parameter search, one of :data:`SEARCH_ROLES`.
    """
    check_choice("search role", search, SEARCH_ROLES)
    metadata = {"help": help, "aliases": tuple(aliases), "choices": choices, "metavar": metavar, "cli": cli,
                "range": None if low is None and high is None else (low, high), "per_invocation": per_invocation,
                "search": search}  # fmt: skip
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def field_names(config_class: type, **metadata: Any) -> tuple[str, ...]:
    """The names of ``config_class``'s :func:`option` fields whose metadata has these values, in
    declaration order: ``field_names(TrainConfig, per_invocation=True)``,
    ``field_names(TrainConfig, search="trial")``."""
    return tuple(
        field.name for field in dataclasses.fields(config_class)
        if "help" in field.metadata and all(field.metadata[key] == value for key, value in metadata.items())
    )  # fmt: skip


def field_help(field: dataclasses.Field) -> str:
    """An :func:`option` field's help text (its function called, for a deferred one)."""
    text = field.metadata["help"]
    return text() if callable(text) else text


def field_default(field: dataclasses.Field) -> Any:
    """A dataclass field's default (its factory called), or ``dataclasses.MISSING``."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def check_int_ranges(config: Any) -> None:
    """Check every field of ``config`` declared with an :func:`option` range (``low``/``high``):
    an integer in it, or ``None`` for an optional field.

    :raises ValueError: The first field out of its range, in :func:`fw_agents.validation.check_int`'s words
        (``n_envs must be an integer in [1, 4096], got 100000``).
    """
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        bounds = field.metadata.get("range")
        value = getattr(config, field.name)
        if bounds is None or (value is None and type(None) in typing.get_args(hints[field.name])):
            continue
        check_int(field.name, value, *bounds)


@dataclasses.dataclass(frozen=True)
class KeyFlag:
    """A flag that sets one key of a ``dict`` field of the config, valid for one value of another field.

    ``KeyFlag("--decay", "memory_kwargs", "decay", float, "λ", when=("memory", "fastweights"))``
    makes ``--decay 0.9`` mean ``--memory-kwargs decay=0.9``, and an error with any other ``--memory``.
    Add them with :func:`fw_agents.cli.add_key_flags`; :func:`fw_agents.cli.fold_key_flags` moves
    the given ones into their field.

    :param flag: The flag (``--decay``); a ``bool`` one also gets ``--no-...``.
    :param field: The ``dict`` field it writes into.
    :param key: The key it sets.
    :param type: The value's type (``bool``: a ``--x/--no-x`` switch).
    :param help: One line for ``--help``.
    :param when: ``(field, value)``: the flag applies only when that field has that value.
    :param default: What ``--help`` shows (the value the key has when the flag is not given).
    """

    flag: str
    field: str
    key: str
    type: type
    help: str
    when: tuple[str, Any]
    default: Any = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")
