"""Every POPGym environment whose observation space SB3 supports (39 of 42: the three Autoencode
envs observe a ``Tuple``, which SB3 rejects) builds and trains with every memory core."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env

from fw_agents.algorithms import FastRecurrentPPO
from fw_agents.memory import MEMORY_NAMES
from fw_agents.policies import RecurrentMemoryPolicy

popgym_envs = pytest.importorskip("popgym.envs")

ALL_IDS = [info["id"] for info in popgym_envs.ALL.values()]


def _supported(env_id: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return not isinstance(gym.make(env_id).observation_space, spaces.Tuple)


SUPPORTED_IDS = [env_id for env_id in ALL_IDS if _supported(env_id)]


def test_the_suite_is_the_one_we_count():
    assert len(ALL_IDS) == 42 and len(SUPPORTED_IDS) == 39
    assert all("Autoencode" in env_id for env_id in set(ALL_IDS) - set(SUPPORTED_IDS))


@pytest.mark.slow
@pytest.mark.parametrize("env_id", SUPPORTED_IDS)
def test_every_core_learns_on_every_popgym_env(env_id, one_thread):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # popgym's render-mode and shared-info warnings
        env = make_vec_env(env_id, n_envs=2, seed=0)
        for memory in MEMORY_NAMES:
            kwargs = dict(memory=memory, hidden_size=8, features_extractor_kwargs=dict(features_dim=8))
            model = FastRecurrentPPO(RecurrentMemoryPolicy, env, n_steps=64, batch_size=64, n_epochs=1,
                                     policy_kwargs=kwargs, seed=0, device="cpu")  # fmt: skip
            model.learn(256)
            assert model.num_timesteps == 256, memory
            assert all(torch.isfinite(p).all() for p in model.policy.parameters()), memory
            actions, _ = model.predict(env.reset(), episode_start=np.ones(2, dtype=bool))
            assert env.action_space.contains(actions[0]), memory
