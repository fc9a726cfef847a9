"""Baseline cores wrapping torch's fused recurrent layers: LSTM, GRU and the IRNN.

Each core runs ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (cuDNN on a GPU, the fused
CPU kernel otherwise) over the spans between episode starts (see
:func:`~fw_agents.memory.base.run_in_segments`), so a rollout with few resets costs
one or a few kernel calls instead of a Python loop over time.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fw_agents.memory.base import MemoryCore, State, run_in_segments
from fw_agents.validation import check_float


class _TorchRNNCore(MemoryCore):
    """Shared plumbing of the single-layer ``torch.nn`` recurrent wrappers.

    Subclasses set :attr:`rnn` (time-major, one layer, unidirectional) and
    :attr:`_num_states` (2 for the LSTM's ``(h, c)``, 1 otherwise). The core's state
    is batch-first, ``([B, H], ...)``; torch's ``[num_layers = 1, B, H]`` layout is used
    only inside :meth:`_run_span`.

    :param input_size: Number of input features ``F``.
    :param hidden_size: Number of recurrent units ``H``.
    """

    rnn: nn.RNNBase
    _num_states: int = 1

    @property
    def state_shapes(self) -> tuple[tuple[int, ...], ...]:
        return ((self.hidden_size,),) * self._num_states

    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        episode_starts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]:
        """Process a sequence.

        :param x: Inputs ``[T, B, input_size]``.
        :param state: State before ``x[0]`` (tensors ``[B, H]``); None for a fresh start.
        :param episode_starts: ``[T, B]``, 1 where the row's state is reset to zero before step ``t``.
        :return: Outputs ``[T, B, H]`` (the hidden state ``h`` at every step) and the final state.
        """
        state, starts = self._prepare(x, state, episode_starts)
        return run_in_segments(self._run_span, x, state, starts)

    def _run_span(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One fused call over ``x [t, B, F]`` with no resets inside."""
        hx = tuple(s.unsqueeze(0).contiguous() for s in state)  # [B, H] -> [1, B, H]
        y, hx_new = self.rnn(x, hx if self._num_states > 1 else hx[0])
        if isinstance(hx_new, torch.Tensor):
            hx_new = (hx_new,)
        return y, tuple(s.squeeze(0) for s in hx_new)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


class LSTMCore(_TorchRNNCore):
    """Long short-term memory (``torch.nn.LSTM``, one layer, torch's default init).

    State: ``(h [B, H], c [B, H])``; the output at each step is ``h``.

    :param input_size: Number of input features ``F``.
    :param hidden_size: Number of LSTM cells ``H``.
    """

    _num_states = 2

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.rnn = nn.LSTM(self.input_size, self.hidden_size)


class GRUCore(_TorchRNNCore):
    """Gated recurrent unit (``torch.nn.GRU``, one layer, torch's default init).

    State: ``(h [B, H],)``; the output at each step is ``h``.

    :param input_size: Number of input features ``F``.
    :param hidden_size: Number of units ``H``.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.rnn = nn.GRU(self.input_size, self.hidden_size)


class IRNNCore(_TorchRNNCore):
    """ReLU RNN with identity-initialised recurrent weights (Le, Jaitly and Hinton 2015),
    the IRNN baseline of the fast-weights paper::

        h(t) = relu(W_ih x(t) + W_hh h(t-1) + b),   W_hh = 0.5·I at initialisation

    Input weights are uniform in ±1/√H and both biases start at zero.
    State: ``(h [B, H],)``; the output at each step is ``h``.

    :param input_size: Number of input features ``F``.
    :param hidden_size: Number of units ``H``.
    :param identity_scale: Scale ``s`` of the initial recurrent weights ``s·I`` (> 0). Paper: 0.5.
    """

    def __init__(self, input_size: int, hidden_size: int, identity_scale: float = 0.5) -> None:
        super().__init__(input_size, hidden_size)
        self.identity_scale = check_float("identity_scale", identity_scale, 0.0)
        self.rnn = nn.RNN(self.input_size, self.hidden_size, nonlinearity="relu")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``W_hh = identity_scale·I``, ``W_ih`` uniform in ±1/√H, zero biases."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(self.identity_scale * torch.eye(self.hidden_size))
            self.rnn.weight_ih_l0.uniform_(-bound, bound)
            self.rnn.bias_ih_l0.zero_()
            self.rnn.bias_hh_l0.zero_()

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, identity_scale={self.identity_scale}"
