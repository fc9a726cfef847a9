"""The memoryless control: a feed-forward layer behind the memory-core interface."""

from __future__ import annotations

import torch
from torch import nn

from fw_agents.memory.base import MemoryCore, State


class NoMemoryCore(MemoryCore):
    """No memory: ``y(t) = relu(W x(t) + b)`` at every step, independently.

    The control for the recurrent cores: same interface and output width, but
    nothing is carried between steps. Its state is a single zero-width tensor
    ``[B, 0]`` (``state_shapes == ((0,),)``), so it packs to ``[B, 0]`` and flows
    through rollout buffers like any other state; ``episode_starts`` has nothing
    to reset and is only validated.

    :param input_size: Number of input features ``F``.
    :param hidden_size: Output width ``H``.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.linear = nn.Linear(self.input_size, hidden_size)

    @property
    def state_shapes(self) -> tuple[tuple[int, ...], ...]:
        return ((0,),)

    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        episode_starts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]:
        """Apply the layer to every step.

        :param x: Inputs ``[T, B, input_size]``.
        :param state: ``([B, 0],)`` or None; validated, otherwise unused.
        :param episode_starts: ``[T, B]`` or None; validated, otherwise unused.
        :return: ``relu(linear(x))`` ``[T, B, H]`` and the (empty) state.
        """
        state, _ = self._prepare(x, state, episode_starts)
        return torch.relu(self.linear(x)), state

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"
