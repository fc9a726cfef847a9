"""One fast-weights time step in matrix form: the RL rollout case (``T = 1``)."""

from __future__ import annotations

import torch

from fw_agents.memory.ops import time_scales
from fw_agents.memory.ops.norms import normalize
from fw_agents.memory.ops.options import refuse_gate
from fw_agents.memory.ops.chunking import as_bool_mask, hidden_reset_mask


def fast_weights_step(
    zx: torch.Tensor,
    h: torch.Tensor,
    A: torch.Tensor | None,
    W: torch.Tensor,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    *,
    decay: float | tuple[float, ...],
    fast_lr: float | tuple[float, ...],
    inner_steps: int,
    episode_starts: torch.Tensor | None = None,
    write_mask: torch.Tensor | None = None,
    hidden_resets: torch.Tensor | None = None,
    layer_norm: bool = True,
    eps: float = 1e-5,
    output_final_state: bool = True,
    chunk_size: int | None = None,
    rms_norm: bool = False,
    gate_x: torch.Tensor | None = None,
    gate_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One time step with ``A`` kept explicitly: a handful of fused ops, autograd for the backward.

    Same signature and results as :func:`~fw_agents.memory.ops.chunked_scan.fast_weights_scan`
    with ``T = 1`` (``chunk_size`` is accepted and ignored). A start zeroes the row's ``h`` and
    ``A`` with ``torch.where``, so a NaN or inf carried there is cleared exactly.

    Args:
        zx: ``C x(t)`` with its bias, ``[1, B, H]``.
        h, A, W, ln_weight, ln_bias, decay, fast_lr, inner_steps, episode_starts, write_mask,
            hidden_resets, layer_norm, eps, output_final_state, rms_norm, gate_x, gate_weight: as
            :func:`fast_weights_scan` (the update gate refused).

    Returns:
        ``(y [1, B, H], h [B, H], A [B, H, H] or None)``.

    Raises:
        ValueError: ``zx`` is not one step long.
    """
    if zx.shape[0] != 1:
        raise ValueError(f"fast_weights_step runs one step: zx must be [1, B, H], got {tuple(zx.shape)}")
    refuse_gate(gate_x, gate_weight)
    decay, fast_lr = time_scales.as_scales(decay, fast_lr)
    time_scales.check_write_mask(write_mask, *zx.shape[:2], time_scales.count(decay))
    starts = as_bool_mask(episode_starts)
    if starts is not None and A is not None:
        A = A.masked_fill(starts[0, :, None, None], 0.0)
    reset_h = hidden_reset_mask(starts, hidden_resets)
    if reset_h is not None:
        h = h.masked_fill(reset_h[0, :, None], 0.0)
    z = torch.addmm(zx[0], h, W.t())
    q = torch.relu(z)
    for _ in range(inner_steps):  # Eq. 5
        u = z if A is None else torch.baddbmm(z.unsqueeze(1), q.unsqueeze(1), A.transpose(1, 2)).squeeze(1)
        if layer_norm:
            u = normalize(u, ln_weight, ln_bias, eps, rms_norm)
        q = torch.relu(u)
    if not output_final_state:
        return q.unsqueeze(0), q, None
    keep, scaled, value = _write_terms(q, write_mask, decay, fast_lr)
    if A is None:
        A_new = torch.einsum("bi,bj->bij", scaled, q) * value
    else:
        A_new = A * keep
        _add_outer_(A_new, scaled, q, value)
    return q.unsqueeze(0), q, A_new


def _write_terms(
    q: torch.Tensor, write_mask: torch.Tensor | None, decay: float | tuple[float, ...], fast_lr: float | tuple[float, ...]
) -> tuple[float | torch.Tensor, torch.Tensor, float]:
    """Eq. 1 as ``A <- keep A + value (scaled q^T)``: ``keep = λ``, ``scaled = q``, ``value = η``;
    with a per-row write weight ``w``, ``A <- (1 - w(1-λ)) A + η w h h^T`` (keep ``[B, 1, 1]``);
    with several time scales λ and η per row of ``A`` (keep ``[B, H, 1]``)."""
    if write_mask is None and isinstance(decay, float):
        return decay, q, fast_lr
    rows = None if isinstance(decay, float) else time_scales.rows_by_scale(len(decay), q.shape[1], q.device)
    decay, fast_lr = time_scales.per_row(decay, rows, q), time_scales.per_row(fast_lr, rows, q)
    write = q.new_ones(q.shape[0]) if write_mask is None else write_mask[0].to(q.dtype)
    write = time_scales.write_per_row(write, rows)  # [B, 1] or [B, H]
    return (1.0 - write * (1.0 - decay))[:, :, None], q * (fast_lr * write), 1.0


def _add_outer_(A: torch.Tensor, left: torch.Tensor, right: torch.Tensor, value: float) -> None:
    """``A += value left right^T`` in place, one broadcast pass (a rank-1 ``baddbmm_`` runs one
    ``addmm_`` per row of the batch on the CPU)."""
    A.addcmul_(left.unsqueeze(2), right.unsqueeze(1), value=value)


@torch.no_grad()
def fast_weights_step_into(
    h_out: torch.Tensor,
    A_out: torch.Tensor,
    zx: torch.Tensor,
    h: torch.Tensor,
    A: torch.Tensor,
    W: torch.Tensor,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    *,
    decay: float | tuple[float, ...],
    fast_lr: float | tuple[float, ...],
    inner_steps: int,
    episode_starts: torch.Tensor | None = None,
    write_mask: torch.Tensor | None = None,
    hidden_resets: torch.Tensor | None = None,
    layer_norm: bool = True,
    eps: float = 1e-5,
    rms_norm: bool = False,
) -> None:
    """:func:`fast_weights_step` without autograd, writing ``h(t)`` and ``A(t)`` into ``h_out``
    ``[B, H]`` and ``A_out`` ``[B, H, H]`` (views of one packed state, say): a rollout step that
    passes over ``A`` once to read it (per inner step) and once to write ``A(t)``, where the
    step with fresh outputs also copies it at a start and the caller copies it again to pack it.

    Bitwise :func:`fast_weights_step`'s ``h`` and ``A`` (tested): rows that start an episode
    are not masked before the step but replaced after it, exactly (a NaN or inf carried in
    their ``A`` never reaches the outputs). ``A`` is never written; it may not overlap ``A_out``.
    """
    decay, fast_lr = time_scales.as_scales(decay, fast_lr)
    starts = as_bool_mask(episode_starts)
    restart = None if starts is None else starts[0].nonzero().squeeze(1)  # rows whose A is reset
    if restart is not None and restart.numel() == 0:
        restart = None
    reset_h = hidden_reset_mask(starts, hidden_resets)
    if reset_h is not None:
        h = h.masked_fill(reset_h[0, :, None], 0.0)
    z = torch.addmm(zx[0], h, W.t())
    q = torch.relu(z)
    A_T = A.transpose(1, 2)
    for _ in range(inner_steps):  # Eq. 5, with A(t-1) = 0 in the restarting rows
        u = torch.baddbmm(z.unsqueeze(1), q.unsqueeze(1), A_T).squeeze(1)
        if restart is not None:
            u.index_copy_(0, restart, z.index_select(0, restart))
        if layer_norm:
            u = normalize(u, ln_weight, ln_bias, eps, rms_norm)
        q = torch.relu(u)
    h_out.copy_(q)
    keep, scaled, value = _write_terms(q, write_mask, decay, fast_lr)
    torch.mul(A, keep, out=A_out)
    if restart is not None:
        A_out.index_fill_(0, restart, 0.0)  # then A(t) = η h hᵀ there, as after a masked A
    _add_outer_(A_out, scaled, q, value)
