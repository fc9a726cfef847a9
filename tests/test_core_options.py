"""The one spec of the fast-weights options (fw_agents/memory/options.py) and what is generated
from it: the core's checks and defaults, the agents' defaults, train_agent.py's flags, the
supervised commands' options, the search spaces and the docs' table."""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

import train_agent
from fw_agents import zoo
from fw_agents.config import TrainConfig
from fw_agents.train_cli import CORE_FLAGS
from fw_agents.memory import FastWeightsRNN, make_memory
from fw_agents.memory.options import (
    FAST_WEIGHTS_OPTIONS,
    OPTIONS,
    agent_defaults,
    markdown_table,
    merge_options,
    translate_legacy_options,
)
from fw_agents.policies import DEFAULT_MEMORY_KWARGS, resolve_memory_kwargs
from fw_agents.search_space import SPACES, searched_core_options, suggest
from fw_agents.tasks import retrieval
from fw_agents.tasks.cli import FastWeightsOptions, parse_task_args, setup_task

ROOT = Path(__file__).resolve().parents[1]
RANGED = [o for o in FAST_WEIGHTS_OPTIONS if o.kind is not bool]
#: Options that apply only beside another: the values given with them.
COMPANION_FLAGS = {"memory_lr_scale": {"learned_memory": True}}


def _build(name, value):
    # time_scales' bound also depends on λ (its shortest scale's λ must stay > 0): room for 8 here
    return FastWeightsRNN(2, 4, **{name: value}, **({"decay": 0.999} if name == "time_scales" else {}),
                          **COMPANION_FLAGS.get(name, {}))


# ------------------------------------------------------------------ the spec is what the core checks
@pytest.mark.parametrize("option", RANGED, ids=lambda o: o.name)
def test_each_bound_of_the_spec_is_what_the_core_enforces(option):
    step = 1 if option.kind is int else 1e-9 * max(1.0, abs(option.low))
    cases = [(option.low, option.low_inclusive), (option.low + step, True), (option.low - step, False)]
    if option.high is not None:
        high_step = 1 if option.kind is int else 1e-9 * max(1.0, abs(option.high))
        cases += [(option.high, option.high_inclusive), (option.high - high_step, True), (option.high + high_step, False)]
    else:
        cases.append((option.kind(1e6), True))
    for value, accepted in cases:
        if accepted:
            assert getattr(_build(option.name, value), option.name) == value
        else:
            with pytest.raises(ValueError, match=re.escape(option.name) + ".*" + re.escape(option.range_text())):
                _build(option.name, value)
    for bad in (float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match=re.escape(option.name)):
            _build(option.name, bad)


def test_bool_options_and_the_cores_defaults_are_the_specs():
    core = FastWeightsRNN(2, 4)
    for option in FAST_WEIGHTS_OPTIONS:
        assert getattr(core, option.name) == option.default, option.name
        if option.kind is bool:
            assert getattr(_build(option.name, True), option.name) is True
            with pytest.raises(ValueError, match=option.name):
                _build(option.name, 1)
    assert core.paper_fast_lr == OPTIONS["fast_lr"].default  # neither η given: the paper's 0.5


def test_fast_lr_and_fast_share_give_the_same_core_as_the_paper_formula():
    share, decay, hidden = 2.0, 0.8, 16
    torch.manual_seed(0)
    by_share = FastWeightsRNN(3, hidden, fast_share=share, decay=decay)
    by_lr = FastWeightsRNN(3, hidden, fast_lr=share * (1 - decay) / hidden, decay=decay)  # η = share·(1-λ)/H
    by_lr.load_state_dict(by_share.state_dict())
    assert by_share.paper_fast_lr == pytest.approx(by_lr.paper_fast_lr, rel=1e-15) and by_lr.fast_share is None
    x = torch.randn(9, 2, 3)
    (y1, (_, A1)), (y2, (_, A2)) = by_share(x), by_lr(x)
    torch.testing.assert_close(y1, y2, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(A1, A2, rtol=1e-6, atol=1e-7)
    assert "fast_share=2.0" in repr(by_share) and "fast_lr=" in repr(by_lr)


def test_fast_lr_and_fast_share_together_are_refused_naming_both():
    with pytest.raises(ValueError, match=r"fast_lr=0\.1 .*fast_share=0\.2 .*give one"):
        FastWeightsRNN(2, 4, fast_lr=0.1, fast_share=0.2)
    with pytest.raises(ValueError, match="fast_lr.*fast_share"):
        TrainConfig(memory_kwargs=dict(fast_lr=0.1, fast_share=0.2)).validate()


# ------------------------------------------------------------------ agent defaults and flags
def test_agent_defaults_are_the_specs_and_fast_lr_replaces_the_share():
    assert DEFAULT_MEMORY_KWARGS["fastweights"] == agent_defaults() == dict(
        fast_share=0.5, decay=0.95, inner_steps=1, identity_scale=0.05, bias_correction=True
    )
    resolved = resolve_memory_kwargs("fastweights", dict(fast_lr=0.01))
    assert resolved["fast_lr"] == 0.01 and "fast_share" not in resolved
    assert merge_options(dict(fast_lr=1.0, decay=0.9), dict(fast_share=2.0)) == dict(decay=0.9, fast_share=2.0)


FLAG_VALUES = {"fast_lr": 0.01, "fast_share": 2.0, "decay": 0.8, "inner_steps": 2, "identity_scale": 0.3,
               "bias_correction": True, "relative_slow_weights": True, "time_scales": 3, "rms_norm": True,
               "update_gate": True, "learned_memory": True, "memory_lr_scale": 10.0}  # fmt: skip


def test_every_option_has_its_generated_flag_and_round_trips_to_memory_kwargs():
    assert [flag.key for flag in CORE_FLAGS] == [o.name for o in FAST_WEIGHTS_OPTIONS]
    for option in FAST_WEIGHTS_OPTIONS:
        value = FLAG_VALUES[option.name]
        companions = COMPANION_FLAGS.get(option.name, {})
        argv = [option.flag] if option.kind is bool else [option.flag, str(value)]
        config = train_agent.parse_config(argv + [OPTIONS[name].flag for name in companions])
        assert config.memory_kwargs == {option.name: value, **companions}
        config.validate()
        core = make_memory("fastweights", 3, 8, **config.resolved_memory_kwargs())
        assert getattr(core, option.name) == value
    assert train_agent.parse_config(["--no-bias-correction"]).memory_kwargs == {"bias_correction": False}
    with pytest.raises(ValueError, match="--identity-scale applies to --memory fastweights only"):
        train_agent.parse_config(["--memory", "lstm", "--identity-scale", "0.3"])


def test_fast_lr_and_fast_share_flags_are_exclusive(capsys):
    with pytest.raises(SystemExit) as stop:
        train_agent.parse_config(["--fast-lr", "0.1", "--fast-share", "0.2"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--fast-share" in err and "--fast-lr" in err


# ------------------------------------------------------------------ supervised commands
@pytest.mark.parametrize("flag, value", [("--fast-share", "2.0"), ("--fast-lr", "0.01")])
def test_supervised_commands_read_fast_lr_and_fast_share_as_the_agent_does(flag, value):
    assert [f.name for f in dataclasses.fields(FastWeightsOptions)] == [o.name for o in FAST_WEIGHTS_OPTIONS]
    argv = [flag, value, "--decay", "0.9", "--hidden", "16"]
    task = setup_task(retrieval.RetrievalConfig, parse_task_args(retrieval.build_parser, argv)).task
    supervised = retrieval.RetrievalModel("fastweights", 16, memory_kwargs=task.memory_kwargs()).core
    agent = train_agent.parse_config([flag, value, "--decay", "0.9"])
    agent_core = make_memory("fastweights", 3, 16, **agent.resolved_memory_kwargs())
    assert supervised.paper_fast_lr == agent_core.paper_fast_lr
    assert (supervised.fast_lr, supervised.fast_share) == (agent_core.fast_lr, agent_core.fast_share)


def test_supervised_commands_refuse_both_etas(capsys):
    argv = ["--fast-share", "2.0", "--fast-lr", "0.01", "--hidden", "8", "--steps", "1"]
    task = setup_task(retrieval.RetrievalConfig, parse_task_args(retrieval.build_parser, argv)).task
    with pytest.raises(ValueError, match="fast_lr.*fast_share.*give one"):
        retrieval.RetrievalModel("fastweights", 8, memory_kwargs=task.memory_kwargs())


# ------------------------------------------------------------------ searches
@pytest.mark.parametrize("space", list(SPACES))
def test_search_draws_within_the_spec_ranges(space):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    names = searched_core_options("fastweights", space)
    assert SPACES[space] in names and set(names) == {SPACES[space], "decay", "inner_steps"}
    for _ in range(30):
        kwargs = suggest(study.ask(), "fastweights", space)["memory_kwargs"]
        assert set(kwargs) == set(names)
        for name, value in kwargs.items():
            assert OPTIONS[name].search.contains(value) and OPTIONS[name].check(value) == value
        make_memory("fastweights", 3, 8, **kwargs)


@pytest.mark.parametrize("eta", ["fast_share", "fast_lr"])
def test_zoo_draws_within_the_spec_ranges(eta):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5))
    seen_steps = set()
    for _ in range(30):
        kwargs = zoo.sample_memory_kwargs(study.ask(), eta)
        assert set(kwargs) == {eta, "decay", "inner_steps"}
        for name, value in kwargs.items():
            assert OPTIONS[name].search.contains(value)
        seen_steps.add(kwargs["inner_steps"])
        low, high = OPTIONS[eta].search.low, OPTIONS[eta].search.high
        assert math.log(low) <= math.log(kwargs[eta]) <= math.log(high)
    assert seen_steps == {1, 2}


# ------------------------------------------------------------------ legacy names
@pytest.mark.parametrize("normalize, name", [(True, "fast_share"), (False, "fast_lr")])
def test_a_legacy_config_resolves_to_the_same_core(normalize, name):
    legacy = dict(normalize=normalize, fast_lr=2.0 if normalize else 0.01, decay=0.9, inner_steps=1)
    translated = translate_legacy_options(legacy)
    assert translated == {name: legacy["fast_lr"], "decay": 0.9, "inner_steps": 1}
    resolved = resolve_memory_kwargs("fastweights", legacy)
    today = make_memory("fastweights", 3, 8, **resolve_memory_kwargs("fastweights", {name: legacy["fast_lr"], "decay": 0.9}))
    assert make_memory("fastweights", 3, 8, **resolved).paper_fast_lr == today.paper_fast_lr
    assert translate_legacy_options(dict(normalize=True)) == dict(fast_share=0.5)  # the old default η
    with pytest.raises(ValueError, match="normalize must be True or False"):
        translate_legacy_options(dict(normalize="yes"))
    with pytest.raises(ValueError, match="unknown memory_kwargs key 'normalize'"):  # no longer an option
        TrainConfig(memory_kwargs=dict(normalize=True)).validate()


@pytest.mark.parametrize("legacy", ["matrix", "attention"])
def test_a_former_mode_loads_as_the_scan(legacy, recwarn):
    """The former modes (the scan at chunk 1 / T) read as "scan", quietly: in saved options
    (a checkpoint's, config.json, zoo YAML) and at construction; an unknown mode is refused."""
    assert translate_legacy_options(dict(mode=legacy, decay=0.9)) == dict(mode="scan", decay=0.9)
    assert resolve_memory_kwargs("fastweights", dict(mode=legacy))["mode"] == "scan"
    assert FastWeightsRNN(3, 4, mode=legacy).mode == "scan"
    TrainConfig(memory_kwargs=dict(mode=legacy)).validate()
    assert not recwarn.list
    assert translate_legacy_options(dict(mode="triton")) == dict(mode="triton")
    with pytest.raises(ValueError, match="mode.*'matrices'.*auto, scan, triton, reference"):
        FastWeightsRNN(3, 4, mode="matrices")


# ------------------------------------------------------------------ the table
def test_the_docs_table_is_the_generated_one():
    text = (ROOT / "docs" / "fast_weights_defaults.md").read_text()
    found = re.search(r"<!-- options-table:start -->\n(.*?)\n<!-- options-table:end -->", text, re.S)
    assert found is not None and found.group(1) == markdown_table()
    printed = subprocess.run([sys.executable, "-m", "fw_agents.memory.options"], capture_output=True, text=True,
                             cwd=ROOT, check=True).stdout  # fmt: skip
    assert printed == markdown_table() + "\n"
    for option in FAST_WEIGHTS_OPTIONS:
        assert f"`{option.name}`" in printed and option.flag in printed
