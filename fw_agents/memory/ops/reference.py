"""The slow, obviously-correct fast-weights recurrence: one Python step per time step.

It follows the paper's equations literally, forms the fast-weight matrix ``A``
explicitly and lets autograd do the backward pass. Every fast path in
:mod:`fw_agents.memory.ops.fused` is tested against it (forward and gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fast_weights_reference(
    zx: torch.Tensor,
    h: torch.Tensor,
    A: torch.Tensor,
    W: torch.Tensor,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    decay: float,
    fast_lr: float,
    inner_steps: int,
    episode_starts: torch.Tensor | None = None,
    write_mask: torch.Tensor | None = None,
    layer_norm: bool = True,
    eps: float = 1e-5,
    hidden_resets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the fast-weights RNN over a sequence, one step at a time.

    For each step t (a start resets ``h`` and ``A`` to zero first, a hidden reset ``h`` alone)::

        z      = W h(t-1) + C x(t)                     # sustained boundary condition
        h_0    = relu(z)                               # preliminary state
        h_s+1  = relu(LN[z + A(t-1) h_s]),  s < S      # Eq. 5, LN on every inner step
        h(t)   = h_S
        A(t)   = decay A(t-1) + fast_lr h(t) h(t)^T    # Eq. 1 (where write_mask is 1)

    :param zx: ``C x(t)`` with its bias, ``[T, B, H]``.
    :param h: Hidden state before the first step, ``[B, H]``.
    :param A: Fast weights before the first step, ``[B, H, H]``.
    :param W: Slow recurrent weights ``[H, H]`` (``z = h @ W.T``, as ``nn.Linear``).
    :param ln_weight: Layer-norm gain ``[H]`` (None: no layer norm).
    :param ln_bias: Layer-norm bias ``[H]``.
    :param decay: λ.
    :param fast_lr: η.
    :param inner_steps: S.
    :param episode_starts: ``[T, B]``, 1 resets the row before step t.
    :param write_mask: ``[T, B]``, 0 leaves ``A`` unchanged after step t (default: write every step).
    :param layer_norm: Apply layer norm in the inner loop.
    :param eps: Layer-norm epsilon.
    :param hidden_resets: ``[T, B]``, 1 zeroes the row's ``h`` (not ``A``) before step t
        (the multi-level glimpse model's wipe between levels).
    :return: ``(y [T, B, H], h [B, H], A [B, H, H])``.
    """
    outputs = []
    for t in range(zx.shape[0]):
        if episode_starts is not None:
            keep = 1.0 - episode_starts[t]
            h = h * keep[:, None]
            A = A * keep[:, None, None]
        if hidden_resets is not None:
            h = h * (1.0 - hidden_resets[t])[:, None]
        z = h @ W.T + zx[t]
        hs = torch.relu(z)
        for _ in range(inner_steps):
            u = z + torch.einsum("bij,bj->bi", A, hs)
            if layer_norm:
                # per example, over its H hidden units (never over the batch)
                u = F.layer_norm(u, u.shape[-1:], ln_weight, ln_bias, eps)
            hs = torch.relu(u)
        h = hs
        write = torch.ones_like(h[:, 0]) if write_mask is None else write_mask[t]
        decay_t = 1.0 - write * (1.0 - decay)
        A = decay_t[:, None, None] * A + fast_lr * write[:, None, None] * torch.einsum("bi,bj->bij", h, h)
        outputs.append(h)
    return torch.stack(outputs), h, A
