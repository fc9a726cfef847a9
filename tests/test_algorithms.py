"""FastRecurrentPPO: stock RecurrentPPO's results with a compact rollout buffer."""

from __future__ import annotations

import pytest
import torch
from sb3_contrib import RecurrentPPO

import envs
from fw_agents.algorithms import CompactRecurrentRolloutBuffer, FastRecurrentPPO
from fw_agents.policies import RecurrentMemoryPolicy


def _train(cls, memory: str, critic: str):
    env = envs.CatchVecEnv.from_id("CatchBlind16-v0", 4)
    policy_kwargs = dict(memory=memory, hidden_size=16, critic=critic, features_extractor_kwargs=dict(features_dim=16))
    model = cls(RecurrentMemoryPolicy, env, n_steps=16, batch_size=24, n_epochs=2, seed=3, device="cpu",
                policy_kwargs=policy_kwargs)  # fmt: skip
    model.learn(128)  # two rollouts and updates; batch 24 cuts sequences mid-episode
    return model


@pytest.mark.parametrize("memory", ["fastweights", "lstm"])
@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_same_parameters_as_stock_recurrent_ppo(memory, critic):
    stock = _train(RecurrentPPO, memory, critic)
    fast = _train(FastRecurrentPPO, memory, critic)
    assert isinstance(fast.rollout_buffer, CompactRecurrentRolloutBuffer)
    assert fast.rollout_buffer.shared_critic_state == (critic == "shared")
    for a, b in zip(stock.policy.parameters(), fast.policy.parameters()):
        assert torch.equal(a, b)


def test_models_load_across_classes(tmp_path):
    fast = _train(FastRecurrentPPO, "fastweights", "shared")
    fast.save(tmp_path / "fast.zip")
    stock = RecurrentPPO.load(tmp_path / "fast.zip", device="cpu")
    for a, b in zip(stock.policy.parameters(), fast.policy.parameters()):
        assert torch.equal(a, b)
    stock.save(tmp_path / "stock.zip")
    again = FastRecurrentPPO.load(tmp_path / "stock.zip", env=envs.CatchVecEnv.from_id("CatchBlind16-v0", 4))
    again.learn(64, reset_num_timesteps=False)
    assert again.num_timesteps == 128 + 64
