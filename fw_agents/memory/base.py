"""The one interface every recurrent memory core implements.

Shapes follow ``torch.nn.RNN``: time-major ``x[T, B, F]``. A core's state is a
tuple of tensors whose **first dimension is the batch** (``[B, ...]``), so any
state can be sliced per environment, stored in a rollout buffer and packed
into a flat ``[B, state_size]`` matrix (see :meth:`MemoryCore.pack_state`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import nn

from fw_agents.validation import check_int

State = tuple[torch.Tensor, ...]


class MemoryCore(nn.Module, ABC):
    """Base class of the recurrent memory cores.

    :param input_size: Number of input features ``F``.
    :param hidden_size: Number of output features ``H`` (the core's width).
    """

    #: Whether :meth:`forward` takes ``write_mask`` and ``hidden_resets`` (and the state starts
    #: with ``h``): what the paper's multi-level glimpse model needs of a core.
    supports_write_mask: ClassVar[bool] = False

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = check_int("input_size", input_size)  # numpy integers too: SB3 sizes features with numpy
        self.hidden_size = check_int("hidden_size", hidden_size)

    # ------------------------------------------------------------------ state
    @property
    @abstractmethod
    def state_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Per-example shape of each state tensor (the state minus its batch dim)."""

    @property
    def state_size(self) -> int:
        """Number of floats one example's state takes when packed."""
        return sum(math.prod(shape) for shape in self.state_shapes)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """The state at the start of a sequence: zeros, one row per example.

        :param batch_size: Number of sequences ``B``.
        :param device: Device of the state (defaults to the parameters' device).
        :return: A tuple of tensors shaped ``[B, *shape]`` for each of :attr:`state_shapes`.
        """
        device, dtype = self._device_dtype(device)
        return tuple(torch.zeros(batch_size, *shape, device=device, dtype=dtype) for shape in self.state_shapes)

    def pack_state(self, state: State, width: int | None = None) -> torch.Tensor:
        """Flatten a state into one ``[B, state_size]`` tensor (a copy), zero-padded to
        ``[B, width]`` when ``width`` is given (in the same copy)."""
        batch = state[0].shape[0]
        parts = [s.reshape(batch, -1) for s in state]
        if width is not None and width > self.state_size:
            parts.append(state[0].new_zeros(batch, width - self.state_size))
        return torch.cat(parts, dim=1)

    def unpack_state(self, flat: torch.Tensor) -> State:
        """Inverse of :meth:`pack_state`: ``[B, state_size]`` -> state tuple."""
        if flat.dim() != 2 or flat.shape[1] != self.state_size:
            raise ValueError(f"packed state must be [B, {self.state_size}], got {tuple(flat.shape)}")
        batch = flat.shape[0]
        sizes = [math.prod(shape) for shape in self.state_shapes]
        return tuple(
            chunk.reshape(batch, *shape) for chunk, shape in zip(flat.split(sizes, dim=1), self.state_shapes)
        )

    def forward_packed(
        self,
        x: torch.Tensor,
        packed: torch.Tensor,
        episode_starts: torch.Tensor | None,
        width: int,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` on packed states: ``packed`` is ``[B, >= state_size]`` (the state in
        its first :attr:`state_size` columns), the new state comes back packed and zero-padded
        to ``[B, width]`` (``width >= state_size``), as ``RecurrentPPO``'s slots hold it
        (:mod:`fw_agents.state_slots`). The same numbers as ``forward`` then :meth:`pack_state`;
        a core may write its new state straight into the packed rows (fast weights do, in a
        rollout step: one copy of ``A`` fewer).

        :param out: ``[B, width]``, not overlapping ``packed``: where to put the new state (the
            rollout buffer's row for the next step, say), returned; None for a new tensor.
        """
        check_packed_out(out, x.shape[1], width, packed.dtype)
        y, state = self(x, self.unpack_state(packed[:, : self.state_size]), episode_starts)
        new = self.pack_state(state, width)
        return y, new if out is None else out.copy_(new)

    # ---------------------------------------------------------------- forward
    @abstractmethod
    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        episode_starts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]:
        """Process a sequence.

        :param x: Inputs ``[T, B, input_size]``.
        :param state: State before ``x[0]`` (default: :meth:`initial_state`).
        :param episode_starts: ``[T, B]``, 1 where ``x[t]`` is the first input of a
            new sequence: that row's state is reset to the initial state before step ``t``.
        :return: Outputs ``[T, B, hidden_size]`` and the state after the last step.
        """

    def outputs(
        self,
        x: torch.Tensor,
        state: State | None = None,
        episode_starts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`forward`'s outputs alone, for callers that drop the final state (e.g. a PPO
        update). Same numbers; a core whose final state costs extra work skips it here.

        :return: Outputs ``[T, B, hidden_size]``.
        """
        return self(x, state, episode_starts)[0]

    # ---------------------------------------------------------------- helpers
    def _device_dtype(self, device: torch.device | str | None) -> tuple[torch.device, torch.dtype]:
        param = next(self.parameters(), None)
        dtype = param.dtype if param is not None else torch.get_default_dtype()
        if device is None:
            device = param.device if param is not None else torch.device("cpu")
        return torch.device(device), dtype

    def _check_inputs(
        self, x: torch.Tensor, state: State | None, episode_starts: torch.Tensor | None
    ) -> State | None:
        """The shapes of a call's inputs (ValueError naming the expected ones); no tensor op.

        :return: ``state`` as a tuple (or None).
        """
        if x.dim() != 3 or x.shape[2] != self.input_size or x.shape[0] < 1:
            raise ValueError(f"x must be [T >= 1, B, {self.input_size}], got {tuple(x.shape)}")
        steps, batch = x.shape[0], x.shape[1]
        if state is not None:
            state = tuple(state)
            if len(state) != len(self.state_shapes) or any(
                tuple(s.shape) != (batch, *shape) for s, shape in zip(state, self.state_shapes)
            ):
                expected = [(batch, *shape) for shape in self.state_shapes]
                raise ValueError(f"state must have shapes {expected}, got {[tuple(s.shape) for s in state]}")
        if episode_starts is not None and tuple(episode_starts.shape) != (steps, batch):
            raise ValueError(f"episode_starts must be [T, B] = {(steps, batch)}, got {tuple(episode_starts.shape)}")
        return state

    def _prepare(
        self,
        x: torch.Tensor,
        state: State | None,
        episode_starts: torch.Tensor | None,
        drop_idle_starts: bool = True,
    ) -> tuple[State, torch.Tensor | None]:
        """Validate shapes; fill in the default state; return starts as ``x``'s dtype (or None).

        :param drop_idle_starts: Return None for starts that hold no 1 (the op then skips the
            reset arithmetic). Asking costs a device-to-host sync on a GPU: a fused kernel that
            reads the starts anyway passes False.
        """
        state = self._check_inputs(x, state, episode_starts)
        if state is None:
            state = self.initial_state(x.shape[1], x.device)
        if episode_starts is not None:
            episode_starts = episode_starts.to(device=x.device, dtype=x.dtype)
            if drop_idle_starts and not bool(episode_starts.any()):
                episode_starts = None
        return state, episode_starts


def check_packed_out(out: torch.Tensor | None, batch: int, width: int, dtype: torch.dtype) -> None:
    """``forward_packed``'s ``out``: None, or ``[batch, width]`` in ``dtype``; ValueError otherwise."""
    if out is not None and (tuple(out.shape) != (batch, width) or out.dtype != dtype):
        raise ValueError(f"out must be [B, width] = {(batch, width)} in {dtype}, got {tuple(out.shape)} in {out.dtype}")


def reset_rows(state: State, start: torch.Tensor) -> State:
    """Zero the state rows where ``start[b] == 1`` (``start``: ``[B]``, float).

    ``torch.where`` rather than a multiplication, so a non-finite row is cleared too.
    """
    reset = start > 0.5
    return tuple(torch.where(reset.view(-1, *([1] * (s.dim() - 1))), torch.zeros_like(s), s) for s in state)


def run_in_segments(
    step_fn: Callable[[torch.Tensor, State], tuple[torch.Tensor, State]],
    x: torch.Tensor,
    state: State,
    episode_starts: torch.Tensor | None,
) -> tuple[torch.Tensor, State]:
    """Run a whole-sequence function over the spans between episode starts.

    ``step_fn(x[t0:t1], state)`` processes a span with no resets inside. The time
    axis is cut only at steps where *some* row starts a new episode, and those
    rows are reset there, so a fused kernel (cuDNN LSTM, ...) handles each span.
    With no starts this is a single call; in the worst case (a start at every
    step) it degenerates to the per-step loop.
    """
    if episode_starts is None:
        return step_fn(x, state)
    cut_steps = torch.nonzero(episode_starts.any(dim=1)).flatten().tolist()
    bounds: Sequence[int] = sorted(set([0, *cut_steps, x.shape[0]]))
    outputs = []
    for t0, t1 in zip(bounds[:-1], bounds[1:]):
        state = reset_rows(state, episode_starts[t0])
        y, state = step_fn(x[t0:t1], state)
        outputs.append(y)
    return torch.cat(outputs, dim=0), state
