"""The associative LSTM of Danihelka, Wayne, Uria, Kalchbrenner and Graves,
"Associative Long Short-Term Memory" (ICML 2016, arXiv:1602.03032).

The memory's algebra uses torch's complex dtypes (complex64 for float32 parameters,
complex128 for float64); the core's state and output stay real, as ``[Re ; Im]``.
The helpers below are shared by the core and its tests.
"""

from __future__ import annotations

import torch
from torch import nn

from fw_agents.memory.base import MemoryCore, State, reset_rows
from fw_agents.validation import check_int


def complex_bound(z: torch.Tensor) -> torch.Tensor:
    """``bound(z) = z / max(1, |z|)`` element-wise (complex modulus): caps each unit's modulus at 1.

    The gradient is finite everywhere, ``z = 0`` included.
    """
    return z / z.abs().clamp(min=1.0)


def permute_copies(keys: torch.Tensor, permutations: torch.Tensor) -> torch.Tensor:
    """The permuted keys ``P_s r`` of every copy: ``[..., N]`` -> ``[..., S, N]``.

    :param keys: Complex keys ``[..., N]``.
    :param permutations: ``[S, N]`` long; ``(P_s r)[j] = r[permutations[s, j]]``.
    """
    return keys[..., permutations]


def holographic_write(
    cells: torch.Tensor,
    forget: torch.Tensor,
    in_keys: torch.Tensor,
    values: torch.Tensor,
    permutations: torch.Tensor,
) -> torch.Tensor:
    """``c_s <- g_f ⊙ c_s + Σ_k (P_s r_i^k) ⊛ v^k`` for every copy ``s`` (``⊛``: element-wise complex product).

    :param cells: Complex memory copies ``c`` ``[B, S, N]``.
    :param forget: Real forget gate ``g_f`` ``[B, N]``.
    :param in_keys: Complex input keys ``r_i`` ``[B, K, N]``, one per head.
    :param values: Complex gated values ``v = g_i ⊙ u`` ``[B, K, N]``, one per head.
    :param permutations: ``[S, N]`` copy permutations.
    :return: The updated copies ``[B, S, N]``.
    """
    written = (permute_copies(in_keys, permutations) * values.unsqueeze(2)).sum(dim=1)  # [B, K, S, N] -> [B, S, N]
    return forget.unsqueeze(1) * cells + written


def holographic_read(cells: torch.Tensor, out_keys: torch.Tensor, permutations: torch.Tensor) -> torch.Tensor:
    """``(1/S) Σ_s Σ_k (P_s r_o^k) ⊛ c_s``: the heads' retrievals, added, averaged over copies.

    Computed as ``(1/S) Σ_s P_s(Σ_k r_o^k) ⊛ c_s`` (``P_s`` and ``⊛`` are linear in the key).

    :param cells: Complex memory copies ``[B, S, N]``.
    :param out_keys: Complex output keys ``r_o`` ``[B, K, N]``, one per head.
    :param permutations: ``[S, N]`` copy permutations.
    :return: The (unbounded) complex read ``[B, N]``.
    """
    return (permute_copies(out_keys.sum(dim=1), permutations) * cells).mean(dim=1)


class AssociativeLSTMCore(MemoryCore):
    """Associative LSTM: an LSTM whose cell is a redundant holographic (complex) associative memory.

    The hidden state holds ``N = H / 2`` complex units, stored as the real vector
    ``h = [Re h ; Im h]`` of width ``H``; ``h`` is both the recurrent input and the
    core's output. With ``S = num_copies`` fixed random permutations ``P_s`` of the
    ``N`` complex units and ``K = num_heads`` read/write heads, each step computes::

        [ĝ_f, ĝ_i, ĝ_o, (r̂_i^k, r̂_o^k, û^k)_{k=1..K}] = W_x x(t) + W_h h(t-1) + b
        g_f, g_i, g_o = σ(ĝ_f), σ(ĝ_i), σ(ĝ_o)                     # real, N each
        r_i^k, r_o^k, u^k = bound(r̂_i^k), bound(r̂_o^k), bound(û^k) # complex, N each
        c_s(t) = g_f ⊙ c_s(t-1) + Σ_k (P_s r_i^k) ⊛ (g_i ⊙ u^k)     # s = 1..S
        h(t)   = g_o ⊙ bound( (1/S) Σ_s Σ_k (P_s r_o^k) ⊛ c_s(t) )

    where ``⊛`` is the element-wise complex product, ``bound(z) = z / max(1, |z|)``
    element-wise (complex modulus), and the real gates scale the real and imaginary
    parts alike. ``h`` and every ``c_s`` are zero at each sequence start.

    With ``K = 1`` these are the associative-LSTM paper's equations, which are stated
    for one head. For ``K > 1`` (the fast-weights paper's baseline used 4 copies and
    3 heads) this core uses the extension written above, which is our reading: each
    head has its own input key, output key and value; the heads share the gates and
    the memory copies; their writes add into every copy and their reads add before
    the bound. (Since ``P_s`` and ``⊛`` are linear in the key, the added reads equal
    one read with the key ``Σ_k r_o^k``; that is how it is computed.) As in the
    paper, the read uses ``r_o`` itself, not its conjugate: a learned ``r_o`` can be
    ``conj(r_i)``, which retrieves exactly what ``r_i`` stored when keys have unit
    modulus, up to interference from the other stored items; averaging over the
    differently permuted copies divides that interference's variance by ``S``.

    Parameters: ``W_x``/``b`` is ``input_proj`` and ``W_h`` is ``recurrent_proj`` (no
    bias), both with torch's default uniform init; their output is laid out in
    blocks of ``N`` as ``[ĝ_f, ĝ_i, ĝ_o]`` followed, per head ``k``, by
    ``[Re r̂_i, Im r̂_i, Re r̂_o, Im r̂_o, Re û, Im û]``. The permutations are a
    buffer (saved in the ``state_dict``), drawn from torch's global generator.

    State: ``(h [B, H], c [B, S, H])``, with ``c[:, s, :N]`` the real and
    ``c[:, s, N:]`` the imaginary part of copy ``s``. Inside :meth:`forward` the
    memory is a complex tensor (complex64 for float32 parameters, complex128 for
    float64, so half precision is not supported). The loop over time is in Python,
    one step per iteration; the input projection of all steps is one matmul.

    :param input_size: Number of input features ``F``.
    :param hidden_size: Output width ``H`` = 2 × the number of complex units; must be even.
    :param num_copies: Number of redundant memory copies ``S`` (>= 1). Fast-weights paper: 4.
    :param num_heads: Number of read/write heads ``K`` (>= 1). Fast-weights paper: 3.
    """

    def __init__(self, input_size: int, hidden_size: int, num_copies: int = 4, num_heads: int = 3) -> None:
        super().__init__(input_size, hidden_size)
        if hidden_size % 2 != 0:
            raise ValueError(f"hidden_size must be even (H/2 complex units), got {hidden_size!r}")
        self.num_copies = check_int("num_copies", num_copies)
        self.num_heads = check_int("num_heads", num_heads)
        self.num_units = hidden_size // 2
        n = self.num_units
        proj_size = 3 * n + num_heads * 6 * n  # three real gates, then per head three complex vectors
        self.input_proj = nn.Linear(self.input_size, proj_size)
        self.recurrent_proj = nn.Linear(hidden_size, proj_size, bias=False)
        self.register_buffer("permutations", torch.stack([torch.randperm(n) for _ in range(num_copies)]))

    @property
    def state_shapes(self) -> tuple[tuple[int, ...], ...]:
        return ((self.hidden_size,), (self.num_copies, self.hidden_size))

    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        episode_starts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]:
        """Process a sequence, one step at a time.

        :param x: Inputs ``[T, B, input_size]``.
        :param state: ``(h [B, H], c [B, S, H])`` before ``x[0]``; None for a fresh start.
        :param episode_starts: ``[T, B]``, 1 where the row's ``h`` and ``c`` are zeroed before step ``t``.
        :return: Outputs ``h`` ``[T, B, H]`` and the final state ``(h [B, H], c [B, S, H])``.
        """
        (h, c), starts = self._prepare(x, state, episode_starts)
        n = self.num_units
        cells = torch.complex(c[..., :n], c[..., n:])  # [B, S, N]
        # W_x x(t) + b for all steps in one matmul. unbind() rather than x_proj[t]: the backward
        # of T unbinds is one stack, that of T selects is T full-size zero-filled buffers, O(T²).
        x_steps = self.input_proj(x).unbind(0)
        starts_t = starts.unbind(0) if starts is not None else (None,) * len(x_steps)
        outputs = []
        for x_t, start in zip(x_steps, starts_t):
            if start is not None:  # torch.where, not a product: a NaN/inf row is cleared too
                h, cells = reset_rows((h, cells), start)
            h, cells = self._step(x_t, h, cells)
            outputs.append(h)
        return torch.stack(outputs), (h, torch.cat([cells.real, cells.imag], dim=-1))

    def _step(self, x_proj: torch.Tensor, h: torch.Tensor, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: ``x_proj [B, P]``, ``h [B, H]``, complex ``cells [B, S, N]`` -> new ``h``, ``cells``."""
        n, batch = self.num_units, h.shape[0]
        pre = x_proj + self.recurrent_proj(h)
        g_f, g_i, g_o = torch.sigmoid(pre[:, : 3 * n]).chunk(3, dim=1)  # real, [B, N] each
        kv = pre[:, 3 * n :].reshape(batch, self.num_heads, 3, 2, n)  # per head: r_i, r_o, u as (re, im)
        r_i, r_o, u = complex_bound(torch.complex(kv[..., 0, :], kv[..., 1, :])).unbind(dim=2)  # [B, K, N] each
        cells = holographic_write(cells, g_f, r_i, g_i.unsqueeze(1) * u, self.permutations)
        read = g_o * complex_bound(holographic_read(cells, r_o, self.permutations))  # [B, N]
        return torch.cat([read.real, read.imag], dim=1), cells  # h = [Re ; Im]

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, num_copies={self.num_copies}, num_heads={self.num_heads}"
