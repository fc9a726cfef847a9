"""One fast-weights time step in matrix form: the RL rollout case (``T = 1``)."""

from __future__ import annotations

import torch

from fw_agents.memory.ops.chunking import as_bool_mask, hidden_reset_mask


def fast_weights_step(
    zx: torch.Tensor,
    h: torch.Tensor,
    A: torch.Tensor | None,
    W: torch.Tensor,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    *,
    decay: float,
    fast_lr: float,
    inner_steps: int,
    episode_starts: torch.Tensor | None = None,
    write_mask: torch.Tensor | None = None,
    hidden_resets: torch.Tensor | None = None,
    layer_norm: bool = True,
    eps: float = 1e-5,
    output_final_state: bool = True,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One time step with ``A`` kept explicitly: a handful of fused ops, autograd for the backward.

    Same signature and results as :func:`~fw_agents.memory.ops.chunked_scan.fast_weights_scan`
    with ``T = 1`` (``chunk_size`` is accepted and ignored). A start zeroes the row's ``h`` and
    ``A`` with ``torch.where``, so a NaN or inf carried there is cleared exactly.

    Args:
        zx: ``C x(t)`` with its bias, ``[1, B, H]``.
        h, A, W, ln_weight, ln_bias, decay, fast_lr, inner_steps, episode_starts, write_mask,
            hidden_resets, layer_norm, eps, output_final_state: as :func:`fast_weights_scan`.

    Returns:
        ``(y [1, B, H], h [B, H], A [B, H, H] or None)``.

    Raises:
        ValueError: ``zx`` is not one step long.
    """
    if zx.shape[0] != 1:
        raise ValueError(f"fast_weights_step runs one step: zx must be [1, B, H], got {tuple(zx.shape)}")
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
            u = torch.layer_norm(u, u.shape[-1:], ln_weight, ln_bias, eps)
        q = torch.relu(u)
    if not output_final_state:
        return q.unsqueeze(0), q, None
    if write_mask is None:  # Eq. 1: A <- decay A + fast_lr h h^T
        if A is None:
            A_new = torch.einsum("bi,bj->bij", q, q) * fast_lr
        else:
            A_new = torch.baddbmm(A, q.unsqueeze(2), q.unsqueeze(1), beta=decay, alpha=fast_lr)
    else:
        # a per-row weight w: A <- (1 - w(1-λ)) A + η w h h^T, in two passes over [B, H, H]
        write = write_mask[0].to(zx.dtype)
        scaled = q * (fast_lr * write)[:, None]
        if A is None:
            A_new = torch.einsum("bi,bj->bij", scaled, q)
        else:
            A_new = A * (1.0 - write * (1.0 - decay))[:, None, None]
            A_new.baddbmm_(scaled.unsqueeze(2), q.unsqueeze(1))  # in place: one new [B, H, H] per step
    return q.unsqueeze(0), q, A_new
