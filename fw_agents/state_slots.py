"""A memory core's state in ``RecurrentPPO``'s LSTM slots: the one contract of the policy and the buffer.

sb3-contrib's ``RecurrentPPO`` carries an LSTM's state: ``RNNStates(pi=(h, c), vf=(h, c))``,
the actor's and the critic's, each tensor ``[num_layers, n_envs, hidden_size]``, float32. It
sizes them (and its rollout buffer) from ``policy.lstm_actor.num_layers`` and ``.hidden_size``.
A memory core's state is any tuple of ``[B, *shape]`` tensors (fast weights: ``h [B, H]`` and
``A [B, H, H]``). This module is everything that maps one onto the other;
:class:`fw_agents.policies.RecurrentMemoryPolicy` and
:class:`fw_agents.algorithms.CompactRecurrentRolloutBuffer` import it and do none of it themselves.

Slots (:class:`CoreAdapter`)
    The adapter presents the core as an LSTM with ``num_layers = 1`` and
    ``hidden_size = slot = max(1, ceil(state_size / 2))``. A state is packed into one
    ``[B, state_size]`` row per environment (:meth:`MemoryCore.pack_state`: the tensors of
    ``state_shapes`` in order, each row-major), zero-padded to ``[B, 2 * slot]``; ``h`` is the
    left half, ``c`` the right half, each ``[1, B, slot]`` in the core's dtype (float32). For
    fast weights ``h`` holds ``h`` then the first rows of ``A``, ``c`` the rest of ``A`` (and
    one padding zero if ``H + H^2`` is odd). Nothing is lost or approximated: a training
    sequence restarts from exactly the state the rollout saw. Padding floats are zeros and never
    read back. Cost: ``n_steps * n_envs * 2 * slot`` floats per stored side (67 MB for fast
    weights, 8 envs x 128 steps, H = 128).

Actor and critic (:func:`critic_has_own_state`)
    ``critic="separate"`` (the policy has ``lstm_critic``): ``vf`` holds the critic core's
    state, in the same layout, and the update reads it. ``critic="shared"`` (``lstm_critic is
    None``): the value head reads the actor core's output, the policy returns
    ``RNNStates(pi, pi)`` and nothing reads ``vf`` during the update, so the compact buffer
    stores only ``pi`` and hands a minibatch's ``pi`` back as its ``vf`` too (the stock buffer
    stores both copies). The buffer is told which by :func:`critic_has_own_state`, a property
    of the policy, not by looking at the tensors it is given.

Storage (:class:`SlotStore`)
    One float32 array ``[n_steps, n_envs, 2, num_layers, slot]`` per stored side, allocated once
    and overwritten every rollout. With ``num_layers = 1`` one environment's ``[2, 1, slot]`` is
    ``h`` then ``c``: the packed row. A minibatch's initial state is the stored state at the
    first step of each of its sequences, the same numbers as the stock
    ``RecurrentRolloutBuffer``'s ``states[seq_start]`` (``[num_layers, n_seq, slot]`` each); it
    gathers those rows alone, in one fancy index.

Zero-copy invariant (:func:`joined_halves`)
    When ``h`` and ``c`` (``[B, slot]`` after dropping the layer dim) are the left and right
    halves of one row-major ``[B, 2 * slot]`` buffer, that buffer is read as a view: the
    adapter unpacks the state, and the store stores it, without concatenating. Both sides keep
    it: :meth:`CoreAdapter.to_slots` returns such halves, and :meth:`SlotStore.initial_states`
    (``num_layers = 1``, CPU) returns halves of its gathered rows. Slots from anywhere else (the
    stock buffer, ``predict``'s numpy states, an ``nn.LSTM``) are concatenated or copied
    instead: the same numbers, one copy more.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from torch import nn

from fw_agents.memory import MemoryCore

#: An LSTM state pair ``(h, c)``, each ``[num_layers, B, hidden_size]``.
Slots = tuple[torch.Tensor, torch.Tensor]


class CoreAdapter(nn.Module):
    """A memory core dressed as the ``nn.LSTM`` that ``RecurrentPPO`` expects.

    ``num_layers`` and ``hidden_size`` describe the state slots (see the module docstring);
    ``output_size`` is the core's width.

    :param core: The memory core.
    """

    num_layers = 1

    def __init__(self, core: MemoryCore) -> None:
        super().__init__()
        self.core = core
        #: Where the next call that returns slots writes them, ``[B, 2 * slot]`` (one call, then
        #: None again): the rollout buffer's row of the next step (:class:`SlotStore`, armed by
        #: ``FastRecurrentPPO``'s rollout), which then stores the state without copying it.
        self.next_slots_out: torch.Tensor | None = None
        self.input_size = core.input_size
        self.output_size = core.hidden_size
        self.state_size = core.state_size
        self.hidden_size = max(1, math.ceil(self.state_size / 2))  # floats per slot

    def to_slots(self, state: tuple[torch.Tensor, ...]) -> Slots:
        """Core state -> ``(h, c)``, each ``[1, B, slot]``: the two halves of one buffer."""
        flat = self.core.pack_state(state, 2 * self.hidden_size)  # an odd state size: zero-padded
        return flat[:, : self.hidden_size].unsqueeze(0), flat[:, self.hidden_size :].unsqueeze(0)

    def from_slots(self, slots: Slots) -> tuple[torch.Tensor, ...]:
        """``(h, c)`` slots -> core state (views of the slots when they are the two halves
        of one buffer, as :meth:`to_slots` and :class:`SlotStore` make them)."""
        return self.core.unpack_state(self._flat(slots)[:, : self.state_size])

    def _flat(self, slots: Slots) -> torch.Tensor:
        """``(h, c)`` slots -> the ``[B, 2 * slot]`` packed rows (a view when they are the two
        halves of one buffer)."""
        left, right = slots[0][0], slots[1][0]
        if left.shape[-1] != self.hidden_size or right.shape[-1] != self.hidden_size:
            # another model's state (e.g. predict(state=...) from one of another width): as nn.LSTM, refuse it
            raise ValueError(
                f"state slots must be [1, B, {self.hidden_size}] each, got {tuple(slots[0].shape)} and {tuple(slots[1].shape)}"
            )
        flat = joined_halves(left, right)
        return torch.cat([left, right], dim=1) if flat is None else flat

    def forward(
        self, features: torch.Tensor, slots: Slots, episode_starts: torch.Tensor, return_slots: bool = True
    ) -> tuple[torch.Tensor, Slots | None]:
        """Run the core over RecurrentPPO's sequence-major batch, in one call (episode starts as
        a mask, no Python loop over time steps).

        :param features: ``[n_seq * T, F]``, sequence-major (``T = 1`` during rollouts).
        :param slots: State slots before each sequence, ``[1, n_seq, slot]`` each.
        :param episode_starts: ``[n_seq * T]``.
        :param return_slots: False when the caller drops the final state (a PPO update):
            the core then skips it (:meth:`MemoryCore.outputs`) and None is returned for it.
        :return: Outputs ``[n_seq * T, H]`` and the slots after the last step.
        """
        n_seq = slots[0].shape[1]
        x = features.reshape(n_seq, -1, self.input_size).transpose(0, 1)
        starts = episode_starts.reshape(n_seq, -1).transpose(0, 1)
        if not return_slots:
            return self.core.outputs(x, self.from_slots(slots), starts).transpose(0, 1).reshape(-1, self.output_size), None
        width = 2 * self.hidden_size
        out, self.next_slots_out = self.next_slots_out, None
        if out is not None and (tuple(out.shape) != (n_seq, width) or out.dtype != features.dtype or out.device != features.device):
            out = None  # another caller's batch: a new tensor, as always
        y, flat = self.core.forward_packed(x, self._flat(slots), starts, width, out)
        return y.transpose(0, 1).reshape(-1, self.output_size), (
            flat[:, : self.hidden_size].unsqueeze(0),
            flat[:, self.hidden_size :].unsqueeze(0),
        )


def joined_halves(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor | None:
    """``[B, 2n]`` view of ``cat([left, right], 1)`` when ``left``/``right`` (``[B, n]``) are the
    left and right halves of one row-major buffer; None otherwise (the caller then copies)."""
    if left.shape != right.shape or left.dtype != right.dtype or left.device != right.device or left.dim() != 2:
        return None
    rows, n = left.shape
    if left.stride() != (2 * n, 1) or right.stride() != (2 * n, 1):
        return None
    if left.untyped_storage().data_ptr() != right.untyped_storage().data_ptr():
        return None
    if right.data_ptr() != left.data_ptr() + n * left.element_size():
        return None
    return left.as_strided((rows, 2 * n), (2 * n, 1))


def critic_has_own_state(policy: Any) -> bool:
    """Whether the update reads the critic's slots (``RNNStates.vf``) back from the buffer.

    True when the critic runs its own recurrent core, ``policy.lstm_critic``: ours with
    ``critic="separate"``, sb3-contrib's with ``enable_critic_lstm``. Otherwise (ours with
    ``critic="shared"``; sb3-contrib's ``shared_lstm`` or feed-forward critic) ``evaluate_actions``
    never reads ``vf``, so the buffer need not store it.
    """
    return getattr(policy, "lstm_critic", None) is not None


class SlotStore:
    """The slots of one rollout, as :class:`fw_agents.algorithms.CompactRecurrentRolloutBuffer`
    keeps them (see the module docstring).

    :param hidden_state_shape: ``(n_steps, num_layers, n_envs, hidden_size)``, as sb3-contrib's
        ``RecurrentRolloutBuffer`` takes it.
    :param critic_state: Store the critic's slots too (see :func:`critic_has_own_state`); when
        False, a minibatch's critic slots are its actor slots.
    """

    def __init__(self, hidden_state_shape: tuple[int, int, int, int], critic_state: bool = True) -> None:
        n_steps, layers, n_envs, size = hidden_state_shape
        self.hidden_state_shape = tuple(hidden_state_shape)
        self.shape = (n_steps, n_envs, 2, layers, size)  # (h, c) per step and env
        self.pi = np.zeros(self.shape, dtype=np.float32)
        self.vf = np.zeros(self.shape, dtype=np.float32) if critic_state else None
        self.copies = 0  # rows copied in by add (the rest were written in place)

    def add(self, pos: int, lstm_states: RNNStates) -> None:
        """Store the slots before step ``pos`` (``[num_layers, n_envs, size]`` each, any device);
        slots that already are that row (:meth:`row`, written there by the step) are not copied."""
        self.copies += _store(self.pi[pos], lstm_states.pi)
        if self.vf is not None:
            self.copies += _store(self.vf[pos], lstm_states.vf)

    def row(self, pos: int, critic: bool = False) -> torch.Tensor:
        """Step ``pos``'s storage as one ``[n_envs, 2 * size]`` tensor (``num_layers = 1``): where a
        core may write the state before that step (:attr:`CoreAdapter.next_slots_out`)."""
        states = self.vf if critic else self.pi
        return torch.from_numpy(states[pos]).view(states.shape[1], -1)

    def initial_states(self, steps: np.ndarray, envs: np.ndarray, device: torch.device) -> RNNStates:
        """The slots at ``(steps[i], envs[i])``, the first step of each of a minibatch's
        sequences: ``[num_layers, n_seq, size]`` each."""
        pi = _gather(self.pi, steps, envs, device)
        return RNNStates(pi, pi if self.vf is None else _gather(self.vf, steps, envs, device))


def _store(row: np.ndarray, slots: Slots) -> int:
    """Copy an ``(h, c)`` pair of ``[num_layers, n_envs, size]`` tensors into ``row[n_envs, 2, ...]``
    (torch's copy: from any device, and about twice as fast as numpy's for these sizes), unless
    they already are that row. Returns the rows copied (0 or 1)."""
    target = torch.from_numpy(row)
    h, c = slots[0].detach(), slots[1].detach()
    if h.shape[0] == 1:
        flat = joined_halves(h[0], c[0])  # CoreAdapter's slots: one [n_envs, 2 * size] buffer
        if flat is not None:
            rows = target.view(len(row), -1)
            if flat.device.type == "cpu" and flat.data_ptr() == rows.data_ptr() and flat.shape == rows.shape:
                return 0  # the step wrote them here
            rows.copy_(flat)
            return 1
    target[:, 0].copy_(h.transpose(0, 1))
    target[:, 1].copy_(c.transpose(0, 1))
    return 1


def _gather(states: np.ndarray, steps: np.ndarray, envs: np.ndarray, device: torch.device) -> Slots:
    rows = states[steps, envs]  # [n_seq, 2, num_layers, size]: one gather, a fresh array
    if rows.shape[2] == 1 and device.type == "cpu":
        # h and c as [1, n_seq, size] halves of that array: CoreAdapter reads the whole state
        # through them without another copy.
        flat = torch.as_tensor(rows.reshape(len(rows), -1), device=device)
        size = rows.shape[3]
        return flat[:, :size].unsqueeze(0), flat[:, size:].unsqueeze(0)
    h = torch.tensor(np.ascontiguousarray(rows[:, 0].swapaxes(0, 1)), device=device)  # [num_layers, n_seq, size]
    c = torch.tensor(np.ascontiguousarray(rows[:, 1].swapaxes(0, 1)), device=device)
    return h, c
