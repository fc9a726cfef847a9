"""fw_agents.fields.KeyFlag: a flag that sets one key of a dict field (``--decay`` -> ``memory_kwargs``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from fw_agents.cli import (
    OneLineArgumentParser,
    add_config_arguments,
    add_key_flags,
    config_from_args,
    fold_key_flags,
)
from fw_agents.fields import KeyFlag, option


@dataclass
class _Config:
    memory: str = option("fast", help="core", choices=("fast", "slow"))
    memory_kwargs: dict[str, Any] = option(default_factory=dict, help="core options")


FLAGS = (
    KeyFlag("--decay", "memory_kwargs", "decay", float, "λ", ("memory", "fast"), 0.95),
    KeyFlag("--bias-correction", "memory_kwargs", "bias_correction", bool, "1/m(t)", ("memory", "fast"), True),
)


def _parse(argv: list[str]) -> _Config:
    parser = OneLineArgumentParser(prog="prog")
    names = add_config_arguments(parser, _Config)
    add_key_flags(parser, FLAGS)
    args = parser.parse_args(argv)
    fold_key_flags(args, FLAGS)
    return config_from_args(_Config, args, names)


def test_key_flags_fold_into_their_dict_field():
    assert _parse([]) == _Config()  # not given: the field stays as the user left it
    assert _parse(["--decay", "0.9"]).memory_kwargs == {"decay": 0.9}
    assert _parse(["--no-bias-correction", "--memory-kwargs", "x=1"]).memory_kwargs == {"x": 1, "bias_correction": False}
    assert _parse(["--bias-correction"]).memory_kwargs == {"bias_correction": True}
    assert _parse(["--decay=0.5", "--decay", "0.8"]).memory_kwargs == {"decay": 0.8}  # the last one wins


def test_key_flags_show_their_default_and_keep_it_in_args():
    parser = OneLineArgumentParser(prog="prog")
    add_key_flags(parser, FLAGS)
    args = parser.parse_args([])
    assert (args.decay, args.bias_correction) == (0.95, True)
    assert not hasattr(parser.parse_args([]), "_given_key_flags")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--memory", "slow", "--decay", "0.9"], "--decay applies to --memory fast only"),
        (["--no-bias-correction", "--memory", "slow"], "--no-bias-correction applies to --memory fast only"),
        (["--decay", "0.9", "--memory-kwargs", "decay=0.8"], "--decay and --memory-kwargs decay=... both set decay; "
                                                             "give one"),  # fmt: skip
    ],
)
def test_key_flags_refuse_what_they_cannot_mean(argv, message):
    with pytest.raises(ValueError) as error:
        _parse(argv)
    assert str(error.value) == message
