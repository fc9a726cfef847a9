"""How the chunked scan lays out its work: masks, row order and per-chunk coefficients.

Everything here turns the caller's masks (episode starts, write mask, hidden resets)
into what :mod:`fw_agents.memory.ops.chunked_scan` reads per step, once per call or
per chunk, so that the scan's inner loops hold no mask logic. The maths is in
``fast_weights.md`` beside this file.
"""

from __future__ import annotations

import torch

# Chunks up to this many steps let every step read the whole block of h(tau) (future steps
# weighted zero) through one view, rather than a new slice h(< t) per step: at RL sizes the
# slices cost more than the extra (zero-weighted) products.
WHOLE_BLOCK_STEPS = 64


def default_chunk_size(steps: int, hidden_size: int) -> int:
    """Steps per chunk when the caller names none: attention over at most ``2 H`` steps,
    so that neither a long sequence (``[T, T]`` scores) nor a large ``H`` (``[H, H]`` per
    formation of ``A``) dominates."""
    return min(steps, 2 * hidden_size)


def as_bool_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A ``[T, B]`` 0/1 mask as bool (``> 0.5``), or None."""
    return None if mask is None else mask > 0.5


def hidden_reset_mask(starts: torch.Tensor | None, hidden_resets: torch.Tensor | None) -> torch.Tensor | None:
    """``[T, B]`` bool: True where ``h(t-1)`` is zeroed before step t (an episode start or a
    hidden reset). ``starts`` is already bool; ``hidden_resets`` is the caller's 0/1 mask."""
    wipes = as_bool_mask(hidden_resets)
    if wipes is None:
        return starts
    return wipes if starts is None else starts | wipes


def masks_by_step(keep: torch.Tensor | None, steps: list[bool]) -> list[torch.Tensor | None]:
    """``keep [T, B]`` -> per step a ``[B, 1]`` multiplier, or None where ``steps[t]`` says no
    row resets (e.g. every step but the first of a PPO minibatch's sequences): T fewer ops.

    ``steps`` is :func:`reset_steps` of the same mask (computed once per call).
    """
    if keep is None:
        return [None] * len(steps)
    return [m if r else None for m, r in zip(keep.unsqueeze(2).unbind(0), steps)]


def reset_steps(reset: torch.Tensor | None, steps: int) -> list[bool]:
    """Which steps reset some row (one host sync)."""
    if reset is None:
        return [False] * steps
    return reset.any(dim=1).tolist()


def readers_first(starts: torch.Tensor | None, batch: int) -> tuple[torch.Tensor | None, int, bool]:
    """Row order that puts the rows reading ``A_in`` first (one host sync).

    A row reads ``A_in`` unless its episode restarts at step 0. In a PPO minibatch only the
    sequences cut mid-episode do (a few of ~20); with them first, every per-step read of
    ``A_in`` is one op on a ``[:readers]`` view instead of a gather, a matmul and a scatter.

    Args:
        starts: ``[T, B]`` bool episode starts, or None (no starts).
        batch: ``B``.

    Returns:
        ``(order, readers, in_place_restarts)``: the permutation (None when the rows already
        come in that order, or when most rows read, which then read in place), the number of
        leading rows that read (0: none; ``batch``: all), and whether those ``batch`` in-place
        readers include rows that restart at step 0 (zero-weighted; their ``A_in`` rows must be
        cleared first, so that a NaN there cannot leak through ``0 * NaN``).
    """
    if starts is None:
        return None, batch, False
    reads = (~starts[0]).tolist()
    readers = sum(reads)
    if readers == 0 or all(reads[:readers]):
        return None, readers, False
    if 2 * readers > batch:
        return None, batch, True
    order = [b for b in range(batch) if reads[b]] + [b for b in range(batch) if not reads[b]]
    return torch.tensor(order, device=starts.device), readers, False


def shared_scale(read_coef: torch.Tensor, steps: int) -> list[float] | None:
    """``g_j`` for ``j < steps`` when every reading row has the same (as when none of them
    restarts inside the chunk and none has a write mask): the read is then one ``baddbmm``
    with a scalar ``alpha`` per step. None when the rows differ."""
    coef = read_coef[:, :steps]
    if not torch.equal(coef, coef[:1].expand_as(coef)):
        return None
    return coef[0].tolist()


def chunk_coefficients(
    starts: torch.Tensor | None,
    write: torch.Tensor | None,
    decay: float | tuple[float, ...],
    fast_lr: float | tuple[float, ...],
    steps: int,
    batch: int,
    like: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tabulate the chunk-form coefficients ``g`` and ``w`` of one chunk (``fast_weights.md``, Eq. 4).

    With ``A_c`` the fast weights entering the chunk and ``h(tau)`` its steps' states,
    the fast weights that step ``j`` reads are
    ``A(j-1) = g[j] A_c + sum_{tau < j} w[j, tau] h(tau) h(tau)^T``;
    with ``G`` time scales, one ``g`` and ``w`` per scale, for its rows of ``A``.

    Args:
        starts: The chunk's ``[K, B]`` bool episode starts (None: no starts).
        write: The chunk's ``[K, B]`` write weights (``[K, B, G]``: one per time scale; None:
            every step writes).
        decay: λ (a tuple: one per time scale).
        fast_lr: η (a tuple: one per time scale).
        steps: ``K``.
        batch: ``B``.
        like: A tensor with the result's dtype and device.

    Returns:
        ``(g [B, K + 1], w [B, K + 1, K])``, or ``(g [B, G, K + 1], w [B, G, K + 1, K])`` with
        ``G`` time scales; row ``K`` is the chunk's end (the ``A`` it carries on). Both are
        zero across an episode start.
    """
    if isinstance(decay, float):
        return _coefficients(starts, write, decay, fast_lr, steps, batch, like)
    # G time scales: each (row, scale) pair is a column of its own, (b, g) in that order
    scales = len(decay)
    columns = batch * scales
    decays = torch.tensor(decay, dtype=torch.float64, device=like.device).repeat(batch)
    rates = torch.tensor(fast_lr, dtype=like.dtype, device=like.device).repeat(batch)
    if starts is not None:
        starts = starts[:, :, None].expand(steps, batch, scales).reshape(steps, columns)
    if write is not None:
        write = write if write.dim() == 3 else write[:, :, None].expand(steps, batch, scales)
        write = write.reshape(steps, columns)
    init_coef, weights = _coefficients(starts, write, decays, rates[:, None, None], steps, columns, like)
    return init_coef.view(batch, scales, steps + 1), weights.view(batch, scales, steps + 1, steps)


def _coefficients(starts, write, decay, fast_lr, steps, batch, like):
    """:func:`chunk_coefficients` for one time scale per column: ``decay`` a float or a
    float64 ``[B]``; ``fast_lr`` a float or ``[B, 1, 1]``."""
    # Per-step decay of A: lambda where the step writes, 1 where it does not.
    if write is None:
        if isinstance(decay, float):
            decay_t = torch.full((steps, batch), decay, dtype=torch.float64, device=like.device)
        else:
            decay_t = decay.expand(steps, batch)
        write_b = torch.ones(batch, steps, dtype=like.dtype, device=like.device)
    else:
        decay_t = 1.0 - write.to(torch.float64) * (1.0 - decay)
        write_b = write.t().to(like.dtype)
    # A step with d_k = 0 (lambda = 0) wipes A like a start: counted apart, since log 0 = -inf
    # would give -inf - -inf = NaN in the differences below.
    wiped = decay_t <= 0.0
    log_decay = torch.where(wiped, 0.0, torch.log(decay_t.clamp(min=torch.finfo(torch.float64).tiny)))
    zeros = torch.zeros(1, batch, dtype=torch.float64, device=like.device)
    cum = torch.cat([zeros, log_decay.cumsum(0)]).t()  # [B, K + 1]: log of prod_{k < j} d_k, d_k = 0 left out
    wipes = torch.cat([zeros.to(torch.int64), wiped.to(torch.int64).cumsum(0)]).t()  # [B, K + 1]: zero d_k, k < j
    if starts is None:
        segment = torch.zeros(batch, steps + 1, dtype=torch.int64, device=like.device)
    else:
        segment = starts.t().to(torch.int64).cumsum(1)  # [B, K]: starts in [0, j]
        segment = torch.cat([segment, segment[:, -1:]], dim=1)  # the chunk end adds no reset
    # A_c survives to step j unless a reset happened at or before j.
    init_coef = (cum.exp() * ((segment == 0) & (wipes == 0))).to(like.dtype)
    # h(tau) enters A at the end of step tau and reaches step j > tau decayed by
    # prod_{tau < k < j} d_k, unless a reset lies in (tau, j].
    j = torch.arange(steps + 1, device=like.device)[:, None]
    tau = torch.arange(steps, device=like.device)[None, :]
    log_w = cum[:, :, None] - cum[:, None, 1:]
    same = (segment[:, :, None] == segment[:, None, :steps]) & (tau < j)
    same &= wipes[:, :, None] == wipes[:, None, 1:]  # no d_k = 0 for tau < k < j
    weights = (log_w.clamp(max=0.0).exp() * same).to(like.dtype) * (fast_lr * write_b[:, None, :])
    return init_coef, weights
