"""RecurrentMemoryPolicy inside the unmodified sb3_contrib.RecurrentPPO."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import SubprocVecEnv

import envs
from fw_agents.algorithms import FastRecurrentPPO
from fw_agents.memory import MEMORY_NAMES
from fw_agents.memory.ops import fused_recurrent
from fw_agents.policies import DEFAULT_MEMORY_KWARGS, FastWeightsPolicy, RecurrentMemoryPolicy, sample_categorical
from fw_agents.state_slots import CoreAdapter

SMALL = dict(n_steps=16, batch_size=32, n_epochs=1)


def _model(
    memory: str, env=None, critic: str = "shared", algorithm=RecurrentPPO, device: str = "cpu",
    memory_kwargs: dict | None = None, **kwargs,
) -> RecurrentPPO:  # fmt: skip
    env = env if env is not None else envs.CatchSB3VecEnv.from_id("CatchBlind16-v0", 4)
    policy_kwargs = dict(memory=memory, hidden_size=16, critic=critic, features_extractor_kwargs=dict(features_dim=16),
                         memory_kwargs=memory_kwargs or {})  # fmt: skip
    return algorithm(RecurrentMemoryPolicy, env, policy_kwargs=policy_kwargs, seed=0, device=device, **SMALL, **kwargs)


@pytest.mark.parametrize("memory", MEMORY_NAMES)
def test_learn_save_load_predict(memory, tmp_path):
    model = _model(memory)
    model.learn(128)
    assert model.num_timesteps == 128
    obs = model.env.reset()
    starts = np.ones(4, dtype=bool)
    actions, state = model.predict(obs, episode_start=starts, deterministic=True)
    assert actions.shape == (4,) and state[0].shape == (1, 4, model.policy.lstm_actor.hidden_size)
    # continue with the returned state
    actions2, state2 = model.predict(obs, state=state, episode_start=np.zeros(4, dtype=bool), deterministic=True)
    model.save(tmp_path / "m.zip")
    loaded = RecurrentPPO.load(tmp_path / "m.zip", device="cpu")
    assert loaded.policy.memory == memory
    a, s = loaded.predict(obs, episode_start=starts, deterministic=True)
    a2, s2 = loaded.predict(obs, state=s, episode_start=np.zeros(4, dtype=bool), deterministic=True)
    np.testing.assert_array_equal(a, actions)
    np.testing.assert_array_equal(a2, actions2)
    np.testing.assert_allclose(s2[0], state2[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("memory", MEMORY_NAMES)
@pytest.mark.parametrize("critic", ["shared", "separate"])
@pytest.mark.parametrize("algorithm", [RecurrentPPO, FastRecurrentPPO], ids=["stock", "fast"])
def test_rollout_and_training_give_same_log_probs_and_values(memory, critic, algorithm):
    """The log-probs and values stored while stepping the env one step at a time equal
    those recomputed from the buffer's padded sequences in one core call (with the stock
    rollout buffer and with the compact one)."""
    _assert_rollout_matches_training(_model(memory, critic=critic, algorithm=algorithm))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("algorithm", [RecurrentPPO, FastRecurrentPPO], ids=["stock", "fast"])
def test_cuda_rollout_and_training_give_same_log_probs_and_values(algorithm):
    """The same on CUDA, where fast weights run the fused Triton kernel: compiled for one
    step in the rollout, for the padded sequences in the update."""
    _assert_rollout_matches_training(_model("fastweights", algorithm=algorithm, device="cuda"))


@pytest.mark.skipif(not fused_recurrent.triton_available(), reason="triton is not installed")
@pytest.mark.parametrize("algorithm", [RecurrentPPO, FastRecurrentPPO], ids=["stock", "fast"])
def test_rollout_and_training_agree_through_the_triton_kernel(algorithm, monkeypatch, one_thread):
    """The same through the fused kernel (``mode="triton"``, what CUDA runs), on CPU under
    Triton's interpreter: the rollout's one-step calls and the update's padded sequences,
    with the state carried through the buffer and the episode starts as masks."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = _model("fastweights", algorithm=algorithm, memory_kwargs=dict(mode="triton"))
    assert model.policy.lstm_actor.core.mode == "triton"
    _assert_rollout_matches_training(model)


def _assert_rollout_matches_training(model) -> None:
    model.learn(SMALL["n_steps"] * 4)  # one rollout and one update, then a fresh rollout below
    callback = CallbackList([])
    callback.init_callback(model)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, SMALL["n_steps"])
    model.policy.set_training_mode(False)
    checked = 0
    with torch.no_grad():
        for batch in model.rollout_buffer.get(batch_size=24):  # odd size: sequences cut mid-episode
            actions = batch.actions.long().flatten()
            values, log_prob, _ = model.policy.evaluate_actions(
                batch.observations, actions, batch.lstm_states, batch.episode_starts
            )
            mask = batch.mask > 0.5
            torch.testing.assert_close(log_prob[mask], batch.old_log_prob[mask], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(values.flatten()[mask], batch.old_values[mask], rtol=1e-4, atol=1e-5)
            checked += int(mask.sum())
    assert checked == SMALL["n_steps"] * 4


def test_fast_weights_state_travels_whole_through_the_buffer():
    """The whole (h, A) in the LSTM slots RecurrentPPO sizes its buffer from (the packing itself:
    tests/test_state_slots.py)."""
    model = RecurrentPPO(FastWeightsPolicy, envs.CatchSB3VecEnv.from_id("CatchBlind16-v0", 2), device="cpu", **SMALL)
    adapter = model.policy.lstm_actor
    assert isinstance(adapter, CoreAdapter)
    H = 128
    size = H + H * H + (1 if adapter.core.bias_correction else 0)  # h, A and the filled share m
    assert adapter.state_size == size and adapter.hidden_size == (size + 1) // 2
    assert model.rollout_buffer.hidden_state_shape == (SMALL["n_steps"], 1, 2, (size + 1) // 2)
    core = adapter.core
    defaults = DEFAULT_MEMORY_KWARGS["fastweights"]
    assert (core.fast_share, core.fast_lr, core.decay, core.inner_steps) == (
        defaults["fast_share"], None, defaults["decay"], defaults["inner_steps"]
    )


def test_fast_weight_hyperparameters_through_policy_kwargs():
    env = envs.CatchSB3VecEnv.from_id("Catch-v0", 2)
    kwargs = dict(hidden_size=32, memory_kwargs=dict(fast_share=0.3, decay=0.9, inner_steps=2), critic="separate")
    model = RecurrentPPO(FastWeightsPolicy, env, policy_kwargs=kwargs, device="cpu", **SMALL)
    for adapter in (model.policy.lstm_actor, model.policy.lstm_critic):
        core = adapter.core
        assert (core.hidden_size, core.fast_share, core.decay, core.inner_steps) == (32, 0.3, 0.9, 2)


def test_paper_architecture_by_default():
    model = RecurrentPPO(FastWeightsPolicy, envs.CatchSB3VecEnv.from_id("CatchBlind16-v0", 2), device="cpu", **SMALL)
    policy = model.policy
    assert policy.features_dim == 128  # 128 ReLU units
    assert policy.lstm_actor.core.hidden_size == 128
    assert policy.lstm_critic is None  # value head shares the core
    assert policy.action_net.in_features == 128 and policy.action_net.out_features == 3
    assert policy.value_net.in_features == 128 and policy.value_net.out_features == 1


@pytest.mark.parametrize(
    "kwargs,needle",
    [(dict(memory="transformer"), "memory"), (dict(critic="both"), "critic"), (dict(hidden_size=0), "hidden_size")],
)
def test_bad_policy_kwargs_raise(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        RecurrentPPO(RecurrentMemoryPolicy, envs.CatchSB3VecEnv.from_id("Catch-v0", 2), policy_kwargs=kwargs, device="cpu")


def test_dummy_and_subproc_vec_envs_and_evaluate_policy():
    dummy = make_vec_env("CatchBlind16-v0", n_envs=2)
    model = _model("fastweights", env=dummy)
    model.learn(64)
    mean, _ = evaluate_policy(model, dummy, n_eval_episodes=4)
    assert -1.0 <= mean <= 1.0
    # "envs:" makes each worker process import (and so register) the package first
    subproc = make_vec_env("envs:CatchBlind16-v0", n_envs=2, vec_env_cls=SubprocVecEnv)
    try:
        model.set_env(subproc)
        model.learn(64, reset_num_timesteps=False)
    finally:
        subproc.close()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_policy_learns():
    model = RecurrentPPO(FastWeightsPolicy, envs.CatchSB3VecEnv.from_id("CatchBlind16-v0", 4), device="cuda", **SMALL)
    model.learn(128)
    assert next(model.policy.parameters()).is_cuda


def test_net_arch_layers_between_core_and_heads():
    env = envs.CatchSB3VecEnv.from_id("CatchBlind16-v0", 2)
    policy_kwargs = dict(memory="gru", hidden_size=16, net_arch=dict(pi=[8], vf=[6]))
    model = RecurrentPPO(RecurrentMemoryPolicy, env, policy_kwargs=policy_kwargs, seed=0, device="cpu", **SMALL)
    assert model.policy.action_net.in_features == 8 and model.policy.value_net.in_features == 6
    model.learn(2 * SMALL["n_steps"])  # the heads read the net_arch layers' outputs


def test_action_distribution_is_stock_categorical():
    model = _model("lstm")
    latent = torch.randn(5, 16)
    dist = model.policy._get_action_dist_from_latent(latent)
    logits = model.policy.action_net(latent)
    expected = torch.distributions.Categorical(logits=logits)
    torch.testing.assert_close(dist.distribution.probs, expected.probs, rtol=0, atol=0)
    actions = torch.tensor([0, 1, 2, 1, 0])
    torch.testing.assert_close(dist.log_prob(actions), expected.log_prob(actions), rtol=0, atol=0)
    torch.testing.assert_close(dist.entropy(), expected.entropy(), rtol=0, atol=0)


@pytest.mark.parametrize("deterministic", [False, True])
def test_rollout_sampling_is_sb3_categorical_bitwise(deterministic):
    """sample_categorical (the policy's rollout step) draws SB3's actions, from the same random
    numbers, with SB3's log-probabilities, bitwise; extreme logits included."""
    from stable_baselines3.common.distributions import CategoricalDistribution

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 5, generator=generator) * 4
    logits[0] = torch.tensor([-1e4, 0.0, 1e4, -30.0, 30.0])
    logits[1] = 0.0
    stock = CategoricalDistribution(5).proba_distribution(logits)
    torch.manual_seed(1)
    expected_actions = stock.get_actions(deterministic=deterministic)
    expected_log_prob = stock.log_prob(expected_actions)
    expected_next_draw = torch.rand(3)
    torch.manual_seed(1)
    actions, log_prob = sample_categorical(logits, deterministic)
    assert torch.equal(actions, expected_actions) and torch.equal(log_prob, expected_log_prob)
    assert torch.equal(torch.rand(3), expected_next_draw)  # the same random numbers were used up


def test_policy_forward_is_sb3_forward():
    """RecurrentMemoryPolicy.forward (lean sampling) gives what the stock ActorCriticPolicy-style
    forward through SB3's distribution gives, with the same seed."""
    model = _model("fastweights")
    policy = model.policy
    obs = torch.rand(4, *model.observation_space.shape)
    state = model._last_lstm_states
    starts = torch.tensor([1.0, 0.0, 1.0, 0.0])
    with torch.no_grad():
        torch.manual_seed(5)
        actions, values, log_prob, _ = policy(obs, state, starts)
        torch.manual_seed(5)
        latent_pi, latent_vf, _ = policy._latents(obs, state, starts)
        dist = policy._get_action_dist_from_latent(latent_pi)
        expected = dist.get_actions()
    assert torch.equal(actions, expected)
    assert torch.equal(log_prob, dist.log_prob(expected))
    assert torch.equal(values, policy.value_net(latent_vf))
