"""Preflight memory estimate (fw_agents.runs.preflight): Dict spaces' stock buffer and a container's memory limit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from fw_agents.runs import preflight


def test_dict_observations_count_both_stored_states():
    box = spaces.Box(-1, 1, (3,), np.float32)
    flat = preflight.check_memory(box, "fastweights", 32, {}, 4, 8)
    as_dict = preflight.check_memory(spaces.Dict(a=box), "fastweights", 32, {}, 4, 8)
    separate = preflight.check_memory(box, "fastweights", 32, {}, 4, 8, separate_critic=True)
    assert as_dict - flat == 4 * (4 * 8) * (32 + 32 * 32)  # one more stored state per step and env
    assert separate > as_dict


def test_a_container_limit_below_the_machine_memory_is_used(tmp_path, monkeypatch):
    limit = tmp_path / "memory.max"
    limit.write_text("1073741824\n")  # 1 GiB
    monkeypatch.setattr(preflight, "CGROUP_LIMIT_FILES", (str(limit),))
    assert preflight._physical_memory() == 2**30
    box = spaces.Box(-1, 1, (3,), np.float32)
    with pytest.raises(ValueError, match="1.0 GiB"):  # ~1.1 GiB of fast-weights states
        preflight.check_memory(box, "fastweights", 128, {}, 16, 1024)
    limit.write_text("max\n")
    assert preflight._physical_memory() > 2**30


def test_the_envs_live_states_are_counted():
    """Besides the rollout buffer, every env holds its recurrent state while it steps (the one read
    and the one returned): 100000 envs of one step each fit the buffer estimate alone."""
    import torch

    from fw_agents.memory import make_memory

    box = spaces.Box(-1, 1, (3,), np.float32)
    with torch.device("meta"):
        state = make_memory("fastweights", 3, 32).state_size
    wide = preflight.check_memory(box, "fastweights", 32, {}, 8, 1)
    long = preflight.check_memory(box, "fastweights", 32, {}, 4, 2)  # the same buffer: 8 steps
    assert wide - long == 4 * 4 * (2 * state + 3)  # 4 more envs: their two states and their observations
    separate = preflight.check_memory(box, "fastweights", 32, {}, 8, 1, separate_critic=True)
    assert separate - wide >= 4 * 2 * 8 * state  # the critic's states too


def test_model_memory_counts_parameters_with_adam_and_the_cores_states(monkeypatch):
    from torch import nn

    from fw_agents.memory import make_memory

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.core = make_memory("fastweights", 5, 16)

    with torch.device("meta"):
        parameters = sum(p.numel() for p in Model().parameters())
    needed = preflight.check_model_memory(Model, 8, 11, "--hidden 16")
    assert needed == 4 * (4 * parameters + 8 * 11 * (16 + 16 * 16))  # weights, grads, 2 Adam moments; h and A per step
    monkeypatch.setattr(preflight, "_physical_memory", lambda: needed)  # 80% of it is too little
    with pytest.raises(ValueError, match=r"^this run needs about 0.0 GiB \(--hidden 16: [0-9,]+ parameters\), more than 80%"):
        preflight.check_model_memory(Model, 8, 11, "--hidden 16")
