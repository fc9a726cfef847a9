"""FastRecurrentPPO: stock RecurrentPPO's results with a compact rollout buffer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.vec_env import VecEnv

import envs
from fw_agents.algorithms import CompactRecurrentRolloutBuffer, FastRecurrentPPO
from fw_agents.policies import RecurrentMemoryPolicy


def _train(cls, memory: str = "fastweights", critic: str = "shared", timesteps: int = 128, **policy_kwargs):
    """A small model after ``timesteps`` steps (128: two rollouts and updates; batch 24 cuts
    sequences mid-episode); ``policy_kwargs`` go to the policy on top of the small sizes."""
    env = envs.CatchSB3VecEnv.from_id("CatchBlind16-v0", 4)
    policy_kwargs = dict(memory=memory, hidden_size=16, critic=critic, features_extractor_kwargs=dict(features_dim=16),
                         **policy_kwargs)  # fmt: skip
    model = cls(RecurrentMemoryPolicy, env, n_steps=16, batch_size=24, n_epochs=2, seed=3, device="cpu",
                policy_kwargs=policy_kwargs)  # fmt: skip
    if timesteps:
        model.learn(timesteps)
    return model


@pytest.mark.parametrize("memory", ["fastweights", "lstm"])
@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_same_parameters_as_stock_recurrent_ppo(memory, critic):
    stock = _train(RecurrentPPO, memory, critic)
    fast = _train(FastRecurrentPPO, memory, critic)
    assert isinstance(fast.rollout_buffer, CompactRecurrentRolloutBuffer)
    assert fast.rollout_buffer.critic_state == (critic == "separate")  # a shared critic's states: not stored
    assert (fast.rollout_buffer.slots.vf is None) == (critic == "shared")
    for a, b in zip(stock.policy.parameters(), fast.policy.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_rollout_states_are_written_straight_into_the_buffer(critic):
    # each step's new state lands in the buffer row of the next step (CoreAdapter.next_slots_out):
    # add copies only row 0 (the previous rollout's last state) per stored side; the numbers are
    # the stock ones (test_same_parameters_as_stock_recurrent_ppo), and nothing stays armed
    model = _train(FastRecurrentPPO, "fastweights", critic, timesteps=0)
    sides = 2 if critic == "separate" else 1
    model.learn(128)  # two rollouts of 4 envs x 16 steps
    assert model.rollout_buffer.slots.copies == 2 * sides
    adapters = [model.policy.lstm_actor] + ([model.policy.lstm_critic] if critic == "separate" else [])
    assert all(a.next_slots_out is None for a in adapters)
    stored = model.rollout_buffer.slots.pi
    states = model._last_lstm_states.pi  # the last step's state: its own tensor, not a buffer row
    assert not np.shares_memory(stored, states[0].numpy())
    obs = model.env.reset()
    _, predicted = model.predict(obs, state=None, episode_start=np.ones(4, dtype=bool))
    assert not np.shares_memory(stored, predicted[0])  # a later predict gets its own tensors too


def test_models_load_across_classes(tmp_path):
    fast = _train(FastRecurrentPPO, "fastweights", "shared")
    fast.save(tmp_path / "fast.zip")
    stock = RecurrentPPO.load(tmp_path / "fast.zip", device="cpu")
    for a, b in zip(stock.policy.parameters(), fast.policy.parameters()):
        assert torch.equal(a, b)
    stock.save(tmp_path / "stock.zip")
    again = FastRecurrentPPO.load(tmp_path / "stock.zip", env=envs.CatchSB3VecEnv.from_id("CatchBlind16-v0", 4))
    again.learn(64, reset_num_timesteps=False)
    assert again.num_timesteps == 128 + 64


@pytest.mark.parametrize("batch_size", [5, 24, 96])
@pytest.mark.parametrize("layers", [1, 2])
def test_buffer_samples_equal_stock_samples(batch_size, layers):
    """Every field of every minibatch, padded sequences included, as the stock buffer's
    (one layer: the states come back as halves of one array; more: as separate copies)."""
    from gymnasium import spaces
    from sb3_contrib.common.recurrent.buffers import RecurrentRolloutBuffer
    from sb3_contrib.common.recurrent.type_aliases import RNNStates

    n_steps, n_envs, size = 24, 4, 6
    obs_space, act_space = spaces.Box(-1, 1, (2, 3)), spaces.Discrete(3)
    args = (n_steps, obs_space, act_space, (n_steps, layers, n_envs, size), "cpu")
    stock = RecurrentRolloutBuffer(*args, n_envs=n_envs)
    compact = CompactRecurrentRolloutBuffer(*args, n_envs=n_envs)
    rng = np.random.default_rng(0)
    for _ in range(n_steps):
        step = dict(
            obs=rng.normal(size=(n_envs, 2, 3)).astype(np.float32),
            action=rng.integers(0, 3, size=(n_envs, 1)),
            reward=rng.normal(size=n_envs).astype(np.float32),
            episode_start=(rng.random(n_envs) < 0.2).astype(np.float32),
            value=torch.randn(n_envs, 1),
            log_prob=torch.randn(n_envs),
        )
        states = RNNStates(*[(torch.randn(layers, n_envs, size), torch.randn(layers, n_envs, size)) for _ in range(2)])
        for buffer in (stock, compact):
            buffer.add(**step, lstm_states=states)
    last_values = torch.randn(n_envs, 1)
    for buffer in (stock, compact):
        buffer.compute_returns_and_advantage(last_values, np.zeros(n_envs))
    np.random.seed(1)
    expected = list(stock.get(batch_size))
    np.random.seed(1)
    got = list(compact.get(batch_size))
    assert len(got) == len(expected) == -(-n_steps * n_envs // batch_size)
    for a, b in zip(expected, got):
        for name in a._fields:
            x, y = getattr(a, name), getattr(b, name)
            if name == "lstm_states":
                for pair_a, pair_b in zip(x, y):
                    for s, t in zip(pair_a, pair_b):
                        assert torch.equal(s, t)
            else:
                assert x.dtype == y.dtype and torch.equal(x, y), name


def test_stock_lstm_policy_same_parameters_as_stock():
    """FastRecurrentPPO with sb3-contrib's own MlpLstmPolicy (nn.LSTM reads the buffer's state views)."""

    def train(cls):
        env = envs.CatchSB3VecEnv.from_id("CatchBlind16-v0", 4)
        model = cls("MlpLstmPolicy", env, n_steps=16, batch_size=24, n_epochs=2, seed=3, device="cpu",
                    policy_kwargs=dict(lstm_hidden_size=8, net_arch=[]))  # fmt: skip
        model.learn(128)
        return model

    stock, fast = train(RecurrentPPO), train(FastRecurrentPPO)
    for a, b in zip(stock.policy.parameters(), fast.policy.parameters()):
        assert torch.equal(a, b)


def test_policy_optimizer_is_fused_adam_with_the_same_numbers():
    """The policy defaults to Adam's fused step: the per-tensor step's results up to float rounding."""
    default = _train(FastRecurrentPPO)
    per_tensor = _train(FastRecurrentPPO, optimizer_kwargs=dict(foreach=False, eps=1e-5))  # SB3's eps by default only
    assert default.policy.optimizer.defaults["fused"] is True
    per_tensor_defaults = per_tensor.policy.optimizer.defaults
    assert per_tensor_defaults["foreach"] is False and not per_tensor_defaults["fused"]
    for a, b in zip(default.policy.parameters(), per_tensor.policy.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    initial = _train(FastRecurrentPPO, timesteps=0)  # the same model, untrained
    with torch.no_grad():
        moved = [float((a - b).abs().max()) for a, b in zip(default.policy.parameters(), initial.policy.parameters())]
    assert min(moved) > 1e-4  # every parameter trained well past the tolerance


@pytest.mark.parametrize(
    "optimizer_kwargs, fused, foreach",
    [(dict(fused=True), True, None), (dict(foreach=True), None, True), (dict(fused=False), False, None)],
)
def test_policy_optimizer_choice_of_the_caller_is_kept(optimizer_kwargs, fused, foreach):
    model = _train(FastRecurrentPPO, optimizer_kwargs=optimizer_kwargs)
    assert model.policy.optimizer.defaults["fused"] == fused and model.policy.optimizer.defaults["foreach"] == foreach


def test_other_optimizers_get_the_multi_tensor_step():
    model = _train(FastRecurrentPPO, optimizer_class=torch.optim.SGD, optimizer_kwargs=dict(momentum=0.9))
    assert isinstance(model.policy.optimizer, torch.optim.SGD)
    assert model.policy.optimizer.defaults["foreach"] is True and not model.policy.optimizer.defaults["fused"]


def test_gsde_same_parameters_as_stock():
    """Continuous actions with gSDE: the noise matrices sampled during the (inference-mode)
    rollout never reach the update, which samples its own."""

    def train(cls):
        model = cls(RecurrentMemoryPolicy, "Pendulum-v1", n_steps=16, batch_size=16, n_epochs=2, seed=3,
                    device="cpu", use_sde=True, sde_sample_freq=4,
                    policy_kwargs=dict(memory="fastweights", hidden_size=8))  # fmt: skip
        model.learn(48)
        return model

    stock, fast = train(RecurrentPPO), train(FastRecurrentPPO)
    for a, b in zip(stock.policy.parameters(), fast.policy.parameters()):
        assert torch.equal(a, b)


def test_rollout_in_inference_mode_callbacks_outside_it():
    """The policy steps under torch.inference_mode; callbacks run in ordinary mode and can
    even take a gradient through the policy."""
    from stable_baselines3.common.callbacks import BaseCallback

    class GradientCallback(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.modes: list[bool] = []
            self.grad_norms: list[float] = []

        def _on_rollout_start(self) -> None:
            self.modes.append(torch.is_inference_mode_enabled())

        def _on_step(self) -> bool:
            self.modes.append(torch.is_inference_mode_enabled())
            policy = self.model.policy
            policy.zero_grad()
            obs = torch.as_tensor(self.locals["new_obs"]).float()
            policy.predict_values(obs, policy.lstm_actor.to_slots(policy.lstm_actor.core.initial_state(len(obs))),
                                  torch.ones(len(obs))).sum().backward()  # fmt: skip
            self.grad_norms.append(float(torch.cat([p.grad.flatten() for p in policy.value_net.parameters()]).norm()))
            return True

        def _on_rollout_end(self) -> None:
            self.modes.append(torch.is_inference_mode_enabled())

    env = envs.CatchSB3VecEnv.from_id("CatchBlind16-v0", 2)
    model = FastRecurrentPPO(RecurrentMemoryPolicy, env, n_steps=8, batch_size=16, n_epochs=1, seed=0, device="cpu",
                             policy_kwargs=dict(memory="fastweights", hidden_size=8))  # fmt: skip
    policy_modes: list[bool] = []
    model.policy.lstm_actor.register_forward_hook(lambda *_: policy_modes.append(torch.is_inference_mode_enabled()))
    callback = GradientCallback()
    model.learn(32, callback=callback)  # two rollouts of 8 steps
    assert policy_modes.count(True) == 2 * (8 + 1)  # per rollout: 8 steps and the last value
    assert policy_modes.count(False) == 16 + 2  # the callback's 16 calls and one minibatch per update
    assert callback.modes == [False] * (2 * (1 + 8 + 1))
    assert len(callback.grad_norms) == 16 and all(g > 0 for g in callback.grad_norms)


def test_callback_wrapper_forwards_other_attributes():
    from stable_baselines3.common.callbacks import CallbackList

    from fw_agents.algorithms import _OutsideInferenceMode

    callback = CallbackList([])
    wrapped = _OutsideInferenceMode(callback)
    assert wrapped.callbacks is callback.callbacks and wrapped.n_calls == 0
    with pytest.raises(AttributeError, match="no_such_thing"):
        wrapped.no_such_thing  # noqa: B018


def test_policies_by_name_and_loads_argument_order_as_sb3(tmp_path):
    """``FastRecurrentPPO("FastWeightsPolicy", env)`` as SB3 names its policies; ``load`` keeps SB3's
    positional arguments (``trusted`` is keyword-only, so a positional ``print_system_info`` can
    never switch the safe loader off)."""
    import inspect

    from stable_baselines3.common.base_class import BaseAlgorithm

    from fw_agents.policies import FastWeightsPolicy

    env = envs.CatchSB3VecEnv.from_id("CatchBlind16-v0", 2)
    for name, cls in (("FastWeightsPolicy", FastWeightsPolicy), ("RecurrentMemoryPolicy", RecurrentMemoryPolicy)):
        model = FastRecurrentPPO(name, env, n_steps=8, batch_size=8, policy_kwargs=dict(hidden_size=8))
        assert type(model.policy) is cls
    ours = list(inspect.signature(FastRecurrentPPO.load).parameters.values())
    sb3 = list(inspect.signature(BaseAlgorithm.load).parameters.values())
    positional = [p.name for p in ours if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == [p.name for p in sb3 if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert inspect.signature(FastRecurrentPPO.load).parameters["trusted"].kind is inspect.Parameter.KEYWORD_ONLY
    model.save(tmp_path / "m.zip")
    FastRecurrentPPO.load(tmp_path / "m.zip", env, "cpu", None, True)  # SB3's order: print_system_info=True


def test_the_callers_optimizer_kwargs_are_left_alone():
    """The policy's choice of Adam's fused step does not leak into the caller's dict (which is
    also the model's saved ``policy_kwargs``)."""
    optimizer_kwargs = dict(eps=1e-5)
    model = _train(FastRecurrentPPO, timesteps=0, optimizer_kwargs=optimizer_kwargs)
    assert model.policy.optimizer.defaults["fused"] is True
    assert optimizer_kwargs == dict(eps=1e-5)
    assert model.policy_kwargs["optimizer_kwargs"] == dict(eps=1e-5)


class _TorchStateVecEnv(VecEnv):
    """A batched env that keeps its state in torch tensors and updates them in place (as
    GPU-simulated envs do): it must not be handed inference tensors by the rollout."""

    def __init__(self, n: int = 2):
        super().__init__(n, spaces.Box(-10, 10, (1,), np.float32), spaces.Discrete(2))
        self.pos, self.t = torch.zeros(n), torch.zeros(n)

    def reset(self):
        self.pos.zero_()  # in place: fails on an inference tensor outside inference mode
        self.t.zero_()
        return self.pos[:, None].numpy().copy()

    def step_async(self, actions):
        self.actions = torch.as_tensor(actions)

    def step_wait(self):
        self.pos = self.pos + (2.0 * self.actions - 1.0)  # new tensors, made during the rollout
        self.t = self.t + 1
        done = self.t >= 5
        obs = self.pos[:, None].numpy().copy()
        infos = [{"terminal_observation": obs[i]} if done[i] else {} for i in range(self.num_envs)]
        self.pos[done] = 0.0
        self.t[done] = 0.0
        return self.pos[:, None].numpy().copy(), -self.pos.abs().numpy(), done.numpy(), infos

    def close(self):
        pass

    def get_attr(self, name, indices=None):
        return [None] * self.num_envs

    def set_attr(self, name, value, indices=None):
        pass

    def env_method(self, name, *args, indices=None, **kwargs):
        return [None] * self.num_envs

    def env_is_wrapped(self, wrapper, indices=None):
        return [False] * self.num_envs


def test_an_env_with_torch_state_is_usable_after_the_rollout():
    from stable_baselines3.common.evaluation import evaluate_policy

    env = _TorchStateVecEnv()
    model = FastRecurrentPPO(RecurrentMemoryPolicy, env, n_steps=16, batch_size=16, policy_kwargs=dict(hidden_size=8))
    model.learn(64)
    assert not env.pos.is_inference() and not env.t.is_inference()
    mean, _ = evaluate_policy(model, env, n_eval_episodes=2, warn=False)  # resets the env in place
    assert np.isfinite(mean)
