"""docs/adding_a_core.md: its example core, registered as the page says, passes the
conformance tests and plugs into the agent as written."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

import tests.test_memory_interface as conformance
from fw_agents.memory import MEMORY_REGISTRY, make_memory, memory_options

PAGE = Path(__file__).resolve().parents[1] / "docs" / "adding_a_core.md"


@pytest.fixture
def leaky(monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    module = types.ModuleType("my_package.leaky")
    exec(compile(blocks[0], f"{PAGE}:core", "exec"), module.__dict__)  # noqa: S102 - the page's own example
    package = types.ModuleType("my_package")
    package.leaky = module
    monkeypatch.setitem(sys.modules, "my_package", package)
    monkeypatch.setitem(sys.modules, "my_package.leaky", module)
    monkeypatch.setitem(MEMORY_REGISTRY, "leaky", "my_package.leaky:LeakyCore")
    exec(compile(blocks[1], f"{PAGE}:register", "exec"), {})  # noqa: S102 - the page's registration line
    return blocks


def test_the_pages_core_passes_the_conformance_tests(leaky):
    assert memory_options("leaky") == ("decay",)
    assert make_memory("leaky", 3, 5, decay=0.5).decay == 0.5
    with pytest.raises(ValueError, match="decay"):
        make_memory("leaky", 3, 5, decay=1.0)
    for check in (
        conformance.test_output_and_state_shapes,
        conformance.test_initial_state_is_zeros_on_the_requested_device,
        conformance.test_pack_unpack_round_trip,
        conformance.test_resets_equal_fresh_runs_of_the_segments,
        conformance.test_batch_independence,
        conformance.test_gradients_reach_all_parameters_and_the_state,
        conformance.test_outputs_equal_forward_outputs_and_gradients,
        conformance.test_float64,
        conformance.test_bad_shapes_raise,
    ):
        check("leaky")
    for steps in (1, 3):
        for grad in (False, True):
            conformance.test_forward_packed_equals_forward_then_pack("leaky", steps, grad)
    conformance.test_whole_equals_step_by_step_and_chunks("leaky", True, "cpu")


def test_the_pages_agent_builds_and_learns(leaky):
    namespace: dict = {}
    exec(compile(leaky[2], f"{PAGE}:agent", "exec"), namespace)  # noqa: S102 - the page's agent example
    model = namespace["model"]
    assert model.policy.lstm_actor.core.decay == 0.95
    model.n_steps, model.batch_size = 16, 16  # a few steps: it trains end to end
    model._setup_model()
    model.learn(32)
    assert model.num_timesteps >= 32
