"""The contract of fw_agents.state_slots: a core's state in RecurrentPPO's LSTM slots and buffer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.buffers import RecurrentRolloutBuffer
from stable_baselines3.common.callbacks import CallbackList

import envs
from fw_agents.algorithms import CompactRecurrentRolloutBuffer, FastRecurrentPPO
from fw_agents.memory import MEMORY_NAMES, make_memory
from fw_agents.policies import RecurrentMemoryPolicy
from fw_agents.state_slots import CoreAdapter, critic_has_own_state, joined_halves


def _random_state(core, batch: int) -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn(batch, *shape) for shape in core.state_shapes)


@pytest.mark.parametrize("hidden", [5, 6])  # odd and even state sizes (padding or none)
@pytest.mark.parametrize("memory", MEMORY_NAMES)
def test_pack_unpack_round_trip(memory, hidden):
    if memory == "alstm":
        hidden += hidden % 2  # H/2 complex units
    adapter = CoreAdapter(make_memory(memory, 3, hidden))
    state = _random_state(adapter.core, 4)
    slot = adapter.hidden_size
    assert slot == max(1, math.ceil(adapter.state_size / 2)) and adapter.num_layers == 1
    h, c = adapter.to_slots(state)
    assert h.shape == c.shape == (1, 4, slot) and h.dtype == c.dtype == torch.float32
    # h then c is the packed state (the tensors of state_shapes in order, row-major), zero-padded
    row = torch.cat([h[0], c[0]], dim=1)
    assert torch.equal(row[:, : adapter.state_size], torch.cat([s.reshape(4, -1) for s in state], dim=1))
    assert torch.equal(row[:, adapter.state_size :], torch.zeros(4, 2 * slot - adapter.state_size))
    back = adapter.from_slots((h, c))
    assert len(back) == len(state)
    assert all(torch.equal(a, b) and a.shape == b.shape for a, b in zip(back, state))
    # to_slots' halves are read back as views of their buffer, at the packed offsets
    offset = 0
    for part, shape in zip(back, adapter.core.state_shapes):
        if part.numel():
            assert part.data_ptr() == h.data_ptr() + offset * h.element_size()
        offset += math.prod(shape)
    # slots from elsewhere (separate tensors; the halves of one buffer in the wrong order) are copied
    copies = (h.clone(), c.clone())
    swapped = torch.cat([c[0], h[0]], dim=1)
    for slots in (copies, (swapped[:, slot:].unsqueeze(0), swapped[:, :slot].unsqueeze(0))):
        again = adapter.from_slots(slots)
        assert all(torch.equal(a, b) for a, b in zip(again, state))


def test_joined_halves_only_for_the_two_halves_of_one_buffer():
    buffer = torch.arange(24.0).reshape(3, 8)
    left, right = buffer[:, :4], buffer[:, 4:]
    view = joined_halves(left, right)
    assert view is not None and torch.equal(view, buffer) and view.data_ptr() == buffer.data_ptr()
    assert joined_halves(right, left) is None  # wrong order
    assert joined_halves(left, right.clone()) is None  # another storage
    assert joined_halves(left.clone(), right.clone()) is None
    wide = torch.arange(36.0).reshape(3, 12)
    assert joined_halves(wide[:, :4], wide[:, 4:8]) is None  # adjacent, but rows are 12 apart
    assert joined_halves(left, right.double()) is None
    assert joined_halves(buffer[:1, :4], buffer[:1, 4:]) is not None  # one row
    assert joined_halves(left[None], right[None]) is None  # [1, B, n]: callers drop the layer dim


def test_critic_has_own_state():
    env = envs.CatchSB3VecEnv.from_id("CatchBlind16-v0", 2)
    small = dict(n_steps=8, batch_size=16, device="cpu")
    for critic, own in (("shared", False), ("separate", True)):
        model = RecurrentPPO(RecurrentMemoryPolicy, env, policy_kwargs=dict(memory="gru", hidden_size=4, critic=critic),
                             **small)  # fmt: skip
        assert critic_has_own_state(model.policy) is own
    # sb3-contrib's own policies: a critic LSTM (default); a detached shared LSTM; a feed-forward critic
    for kwargs, own in ((dict(), True), (dict(shared_lstm=True, enable_critic_lstm=False), False),
                        (dict(enable_critic_lstm=False), False)):  # fmt: skip
        model = RecurrentPPO("MlpLstmPolicy", env, policy_kwargs=dict(lstm_hidden_size=4, **kwargs), **small)
        assert critic_has_own_state(model.policy) is own


class _Tee(RecurrentRolloutBuffer):
    """The stock buffer, handing every rollout on to a compact one as well."""

    def __init__(self, *args, compact: CompactRecurrentRolloutBuffer, **kwargs) -> None:
        self.compact = compact
        super().__init__(*args, **kwargs)

    def reset(self) -> None:
        super().reset()
        self.compact.reset()

    def add(self, *args, **kwargs) -> None:
        super().add(*args, **kwargs)
        self.compact.add(*args, **kwargs)

    def compute_returns_and_advantage(self, *args, **kwargs) -> None:
        super().compute_returns_and_advantage(*args, **kwargs)
        self.compact.compute_returns_and_advantage(*args, **kwargs)


@pytest.mark.parametrize("memory", ["fastweights", "gru"])
@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_buffer_rebuilds_the_stock_buffers_initial_states(memory, critic):
    """A real rollout of our policy into the stock buffer and the compact one: every minibatch
    starts its sequences from the same actor and critic states, and those are the states the
    core saw (decoded through the adapter)."""
    n_envs, n_steps = 3, 16
    model = FastRecurrentPPO(RecurrentMemoryPolicy, envs.CatchSB3VecEnv.from_id("CatchBlind16-v0", n_envs),
                             n_steps=n_steps, batch_size=16, n_epochs=1, seed=2, device="cpu",
                             policy_kwargs=dict(memory=memory, hidden_size=5, critic=critic,
                                                features_extractor_kwargs=dict(features_dim=8)))  # fmt: skip
    model.learn(n_steps * n_envs)  # one rollout and update: trained, differing actor and critic cores
    args = (n_steps, model.observation_space, model.action_space, model.rollout_buffer.hidden_state_shape, "cpu")
    compact = CompactRecurrentRolloutBuffer(*args, n_envs=n_envs, critic_state=critic_has_own_state(model.policy))
    tee = _Tee(*args, n_envs=n_envs, compact=compact)
    callback = CallbackList([])
    callback.init_callback(model)
    model.collect_rollouts(model.env, callback, tee, n_steps)
    assert (compact.slots.vf is None) == (critic == "shared")
    np.random.seed(5)
    expected = list(tee.get(batch_size=7))  # odd size: sequences cut mid-episode
    np.random.seed(5)
    got = list(compact.get(batch_size=7))
    assert len(got) == len(expected)
    nonzero = 0
    for a, b in zip(expected, got):
        assert torch.equal(a.mask, b.mask)
        for side in ("pi", "vf"):
            for s, t in zip(getattr(a.lstm_states, side), getattr(b.lstm_states, side)):
                assert s.shape == t.shape and torch.equal(s, t)
        pi, vf = b.lstm_states
        if critic == "shared":
            assert vf is pi  # nothing stored for the critic: its states are the actor's
        else:
            assert not torch.equal(vf[0], pi[0])  # the critic core's own states, not the actor's
        adapter = model.policy.lstm_actor
        for part, reference in zip(adapter.from_slots(pi), adapter.from_slots(tuple(a.lstm_states.pi))):
            assert torch.equal(part, reference)
        nonzero += int(pi[0].abs().sum(dim=-1).gt(0).sum())
    assert nonzero > 0  # real states, not only the zeros of episode starts


@pytest.mark.parametrize("memory", ["lstm", "fastweights"])
def test_predict_refuses_a_state_of_another_width(memory):
    """A state from a model of another width is refused, as stock MlpLstmPolicy's nn.LSTM refuses it
    (the slots were sliced to this core's size and read wrongly without a word)."""
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = FastRecurrentPPO(RecurrentMemoryPolicy, env, n_steps=8, batch_size=8, policy_kwargs=dict(memory=memory, hidden_size=8))
    slot = model.policy.lstm_actor.hidden_size
    obs = env.reset()
    model.predict(obs, state=(np.zeros((1, 2, slot)), np.zeros((1, 2, slot))))
    with pytest.raises(ValueError, match="state slots"):
        model.predict(obs, state=(np.zeros((1, 2, 2 * slot)), np.zeros((1, 2, 2 * slot))))
