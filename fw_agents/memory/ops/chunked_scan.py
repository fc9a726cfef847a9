"""The fast-weights recurrence as a chunked scan with a hand-written backward pass.

The recurrence is sequential (each ``h(t)`` goes through a ReLU of the previous one),
so the speed comes from doing as little per step as possible:

* ``C x(t)`` for all steps is one matmul outside the scan; ``dL/dW`` and the layer-norm
  parameter gradients are one batched reduction at the end.
* Inside a chunk, ``A(t-1) h_s`` is never formed from a per-step ``A``: with ``A_c`` the
  fast weights at the chunk's start, Eq. 1 unrolls to the paper's Eq. 4 (attention to
  the recent past), ``A(t-1) h_s = g_t A_c h_s + sum_{tau < t} w[t, tau] h(tau) (h(tau) . h_s)``:
  O(t H) per step instead of O(H^2), nothing ``[B, H, H]`` stored per step.
  ``A`` is formed once per chunk and carried on. ``chunk_size=1`` is the classic matrix
  form, ``chunk_size >= T`` the pure attention form.
* The backward pass runs the same recurrence in reverse with explicit BPTT formulas,
  about two forward passes, instead of autograd's graph of ~30 tiny nodes per step.

Derivations: ``fast_weights.md`` beside this file. Every path is held to
:func:`fw_agents.memory.ops.reference.fast_weights_reference` by the tests (values, and
gradients with ``gradcheck`` in float64). The pieces:

* :func:`fast_weights_scan_fwd` / :func:`fast_weights_scan_bwd`: the two passes, free
  functions on plain tensors (the residuals of the first feed the second);
* :class:`FastWeightsScanFunction`: the thin ``autograd.Function`` joining them;
* :func:`fast_weights_scan`: the public entry point (same signature as the reference).
"""

from __future__ import annotations

import numbers

import torch
from torch.autograd.function import once_differentiable

from fw_agents.memory.ops import time_scales
from fw_agents.memory.ops.chunked_scan_bwd import fast_weights_scan_bwd
from fw_agents.memory.ops.chunked_scan_fwd import fast_weights_scan_fwd
from fw_agents.memory.ops.options import OpOptions, refuse_gate
from fw_agents.memory.ops.chunking import as_bool_mask, default_chunk_size, hidden_reset_mask


class FastWeightsScanFunction(torch.autograd.Function):
    """``(y, h_T, A_T) = scan(zx, h, A, W, ln_weight, ln_bias, starts, write, reset_h, options)``:
    :func:`fast_weights_scan_fwd` forward, :func:`fast_weights_scan_bwd` backward.

    Use :func:`fast_weights_scan`, which documents the arguments. The residuals' tensors go
    through ``ctx.save_for_backward``; their layout (chunk bounds, settings) stays on ``ctx``.
    """

    @staticmethod
    def forward(ctx, zx, h, A, W, ln_weight, ln_bias, starts, write, reset_h, options):  # type: ignore[override]
        ctx.set_materialize_grads(False)
        y, h_T, A_T, residuals = fast_weights_scan_fwd(zx, h, A, W, ln_weight, ln_bias, starts, write, reset_h, options)
        tensors, ctx.residuals = residuals.split()
        ctx.save_for_backward(*tensors)
        return y, h_T, A_T

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_h_T, grad_A_T):  # type: ignore[override]
        residuals = ctx.residuals.join(ctx.saved_tensors)
        grads = fast_weights_scan_bwd(
            residuals,
            grad_y,
            grad_h_T,
            grad_A_T,
            need_grad_A_in=ctx.needs_input_grad[2],
            need_grad_ln=(ctx.needs_input_grad[4], ctx.needs_input_grad[5]),
        )
        return (*grads, None, None, None, None)  # no gradients for the masks and the options


def fast_weights_scan(
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
    """Run the fast-weights RNN over a sequence: the reference's maths, as a chunked scan.

    Same signature and results as :func:`~fw_agents.memory.ops.reference.fast_weights_reference`
    and :func:`~fw_agents.memory.ops.step.fast_weights_step`; differentiable (hand-written
    backward). Per step t (a start zeroes ``h`` and ``A`` first, a hidden reset ``h`` alone)::

        z      = W h(t-1) + C x(t)
        h_0    = relu(z)
        h_s+1  = relu(LN[z + A(t-1) h_s]),  s < S      # Eq. 5
        A(t)   = λ A(t-1) + η h(t) h(t)^T              # Eq. 1 (where write_mask is 1)

    Args:
        zx: ``C x(t)`` with its bias, ``[T, B, H]``.
        h: Hidden state before step 0, ``[B, H]``.
        A: Fast weights before step 0, ``[B, H, H]``; None for zeros (a fresh start),
            which skips every read of it.
        W: Slow recurrent weights ``[H, H]`` (``z = h @ W.T``, as ``nn.Linear``).
        ln_weight: Layer-norm gain ``[H]`` (None with ``layer_norm=False``).
        ln_bias: Layer-norm bias ``[H]``.
        decay: λ, in [0, 1] (the module asks for (0, 1)); a tuple of ``G``: one per time
            scale, for its group of rows of ``A`` (:mod:`~fw_agents.memory.ops.time_scales`).
        fast_lr: η, > 0; a tuple: one per time scale.
        inner_steps: S >= 1.
        episode_starts: ``[T, B]`` 0/1; 1 zeroes the row's ``h`` and ``A`` before step t, to
            exact zeros even where the carried state is NaN or inf (a masked fill, not a
            product). A start later inside the call zeroes finite values as the reference
            does, but a NaN/inf the row carried in or produced earlier in the same call
            still reaches later steps through products with 0 and zero-weighted Eq. 4 terms
            (``0 * NaN = NaN``); that row's outputs are non-finite before the start already,
            so nothing is hidden. (The reference and the step clear it exactly.)
        write_mask: ``[T, B]`` 0/1; 0 leaves ``A`` unchanged after step t (None: always write);
            ``w`` in between, ``A(t) = (1 - w(1-λ)) A(t-1) + η w h hᵀ``; ``[T, B, G]``: per time scale.
        hidden_resets: ``[T, B]`` 0/1; 1 zeroes ``h`` (not ``A``) before step t (None: never).
        layer_norm: Layer norm in the inner loop (per example, over its ``H`` units).
        rms_norm: With ``layer_norm``, RMS norm instead (no mean removed; :mod:`~fw_agents.memory.ops.norms`).
        gate_x, gate_weight: The update gate: :func:`~fw_agents.memory.ops.reference.fast_weights_reference`
            only; anything but None is refused here.
        eps: Layer-norm epsilon.
        output_final_state: False returns None for ``A_T`` and skips forming it.
        chunk_size: Steps between explicit formations of ``A`` (1: matrix form; ``>= T``:
            pure attention form). None: ``min(T, 2 H)``.

    Returns:
        ``(y [T, B, H], h_T [B, H], A_T [B, H, H] or None)``.

    Examples:
        >>> T, B, H = 5, 2, 4
        >>> zx, W = torch.randn(T, B, H), 0.05 * torch.eye(H)
        >>> gain, bias = torch.ones(H), torch.zeros(H)
        >>> y, h_T, A_T = fast_weights_scan(
        ...     zx, torch.zeros(B, H), None, W, gain, bias, decay=0.95, fast_lr=0.5, inner_steps=1
        ... )
        >>> y.shape, A_T.shape
        (torch.Size([5, 2, 4]), torch.Size([2, 4, 4]))
    """
    T, _, H = zx.shape
    refuse_gate(gate_x, gate_weight)
    if isinstance(inner_steps, bool) or not (isinstance(inner_steps, numbers.Integral) and inner_steps >= 1):  # S = 0 would index empty buffers
        raise ValueError(f"inner_steps must be an int >= 1, got {inner_steps!r}")
    decay, fast_lr = time_scales.as_scales(decay, fast_lr)
    time_scales.check_write_mask(write_mask, T, zx.shape[1], time_scales.count(decay))
    starts = as_bool_mask(episode_starts)
    reset_h = hidden_reset_mask(starts, hidden_resets)
    write = None if write_mask is None else write_mask.to(zx.dtype)
    chunk = default_chunk_size(T, H) if chunk_size is None else max(1, int(chunk_size))
    options = OpOptions(
        decay, fast_lr, int(inner_steps), chunk, bool(layer_norm), float(eps), bool(output_final_state), bool(rms_norm)
    )
    return FastWeightsScanFunction.apply(zx, h, A, W, ln_weight, ln_bias, starts, write, reset_h, options)
