"""The slow, obviously-correct fast-weights recurrence: one Python step per time step.

It follows the paper's equations literally, forms the fast-weight matrix ``A``
explicitly and lets autograd do the backward pass. The chunked scan
(:mod:`fw_agents.memory.ops.chunked_scan`) and the single step
(:mod:`fw_agents.memory.ops.step`) are tested against it (values and gradients);
all three share one signature, so a caller or a test can swap them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fw_agents.memory.ops import time_scales


def fast_weights_reference(
    zx: torch.Tensor,
    h: torch.Tensor,
    A: torch.Tensor | None,
    W: torch.Tensor,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    *,
    decay: float | tuple[float, ...] | torch.Tensor,
    fast_lr: float | tuple[float, ...] | torch.Tensor,
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
    """Run the fast-weights RNN over a sequence, one step at a time.

    For each step t (a start resets ``h`` and ``A`` to zero first, a hidden reset ``h`` alone)::

        z      = W h(t-1) + C x(t)                     # sustained boundary condition
        h_0    = relu(z)                               # preliminary state
        h_s+1  = relu(LN[z + A(t-1) h_s]),  s < S      # Eq. 5, LN on every inner step
        h(t)   = h_S
        A(t)   = decay A(t-1) + fast_lr h(t) h(t)^T    # Eq. 1 (where write_mask is 1)

    With several time scales (``decay`` and ``fast_lr`` tuples of ``G``), row ``i`` of ``A``
    decays by ``decay[g]`` and is written with ``fast_lr[g]``, ``g = ⌊i G / H⌋``
    (:mod:`~fw_agents.memory.ops.time_scales`).

    Args:
        zx: ``C x(t)`` with its bias, ``[T, B, H]``.
        h: Hidden state before the first step, ``[B, H]``.
        A: Fast weights before the first step, ``[B, H, H]``; None for zeros.
        W: Slow recurrent weights ``[H, H]`` (``z = h @ W.T``, as ``nn.Linear``).
        ln_weight: Layer-norm gain ``[H]`` (None: no gain).
        ln_bias: Layer-norm bias ``[H]``.
        decay: λ, or one per time scale; or a 0-d tensor (a learned λ: autograd gives its gradient,
            here only, ``FastWeightsRNN(learned_memory=True)``).
        fast_lr: η, or one per time scale; or a 0-d tensor with a tensor ``decay``.
        inner_steps: S.
        episode_starts: ``[T, B]`` 0/1; 1 resets the row's ``h`` and ``A`` to exact zeros before
            step t (``torch.where``: a NaN or inf carried there is cleared too).
        write_mask: ``[T, B]`` 0/1; 0 leaves ``A`` unchanged after step t (default: write every step).
            A value ``w`` between them gives ``A(t) = (1 - w(1-λ)) A(t-1) + η w h hᵀ`` (the
            bias-corrected writes); ``[T, B, G]``: one per time scale.
        hidden_resets: ``[T, B]`` 0/1; 1 zeroes the row's ``h`` (not ``A``) before step t
            (the multi-level glimpse model's wipe between levels).
        layer_norm: Apply layer norm in the inner loop.
        rms_norm: With ``layer_norm``, RMS norm instead: ``γ ⊙ u / sqrt(mean(u²) + eps) + β``
            (no mean removed; gain and bias needed).
        eps: Layer-norm epsilon.
        output_final_state: False returns None for the final ``A``.
        chunk_size: Accepted for the common signature and ignored (there are no chunks here).
        gate_x: With ``gate_weight``, an update gate around the inner loop (here only,
            ``FastWeightsRNN(update_gate=True)``): ``G_x x(t) + b``, ``[T, B, H]``, and the step's
            state is ``h(t) = h(t-1) + g ⊙ (h_S - h(t-1))``, ``g = sigmoid(h(t-1) G_hᵀ + G_x x(t) + b)``.
        gate_weight: ``G_h`` ``[H, H]`` (as ``nn.Linear``); None: no gate (the paper's ``h(t) = h_S``).

    Returns:
        ``(y [T, B, H], h [B, H], A [B, H, H] or None)``.
    """
    if (gate_x is None) != (gate_weight is None):
        raise ValueError("gate_x and gate_weight go together: give both (the update gate) or neither")
    decay, fast_lr = time_scales.as_scales(decay, fast_lr, tensors=True)
    T, B, H = zx.shape
    scales = time_scales.count(decay)
    time_scales.check_write_mask(write_mask, T, B, scales)
    rows = time_scales.rows_by_scale(scales, H, zx.device) if scales > 1 else None
    decay, fast_lr = time_scales.per_row(decay, rows, zx), time_scales.per_row(fast_lr, rows, zx)  # floats, or [H]
    if A is None:
        A = zx.new_zeros(B, H, H)
    outputs = []
    for t in range(zx.shape[0]):
        if episode_starts is not None:
            start = episode_starts[t] > 0.5
            h = torch.where(start[:, None], 0.0, h)
            A = torch.where(start[:, None, None], 0.0, A)
        if hidden_resets is not None:
            h = torch.where(hidden_resets[t][:, None] > 0.5, 0.0, h)
        z = h @ W.T + zx[t]
        hs = torch.relu(z)
        for _ in range(inner_steps):
            u = z + torch.einsum("bij,bj->bi", A, hs)
            if layer_norm:
                # per example, over its H hidden units (never over the batch)
                if rms_norm:  # RMS norm: the scale alone, no mean removed
                    u = u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + eps) * ln_weight + ln_bias
                else:
                    u = F.layer_norm(u, u.shape[-1:], ln_weight, ln_bias, eps)
            hs = torch.relu(u)
        # a GRU-style update gate keeps or replaces each unit of h(t-1) (None: h(t) = h_S, the paper's)
        h = hs if gate_weight is None else h + torch.sigmoid(h @ gate_weight.T + gate_x[t]) * (hs - h)
        # in zx's dtype: a float32 or bool mask must not turn decay_t (and the write) into float32
        write = zx.new_ones(B) if write_mask is None else write_mask[t].to(zx.dtype)
        write = time_scales.write_per_row(write, rows)  # [B, 1], or [B, H] by time scale
        decay_t = 1.0 - write * (1.0 - decay)  # a float λ, or λ per row of A
        A = decay_t[:, :, None] * A + (fast_lr * write)[:, :, None] * torch.einsum("bi,bj->bij", h, h)
        outputs.append(h)
    return torch.stack(outputs), h, A if output_final_state else None
