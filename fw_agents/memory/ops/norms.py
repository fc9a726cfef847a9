"""The inner loop's normalisation (Eq. 5's LN), as layer norm or as RMS norm, forward and backward.

Layer norm (the paper's) centres each example over its ``H`` units and scales it to unit
variance; RMS norm (Zhang & Sennrich 2019) only scales, by the root mean square::

    LN(u)  = γ ⊙ (u - mean(u)) r + β,   r = 1/sqrt(var(u) + eps)
    RMS(u) = γ ⊙ u r + β,               r = 1/sqrt(mean(u²) + eps)

Why both: after the ReLU ``h >= 0``, and ``relu(LN(h))`` zeroes every unit below the mean, so a
state carried through inputs that add nothing (blank frames, ``z = W h`` with ``W = s·I``) is
rewritten at every step; ``relu(RMS(h)) = h / rms(h)`` carries it unchanged.

Backward with ``g = γ ⊙ ∂L/∂out`` and ``x̂ = (u - m) r`` (``m`` the mean, 0 for RMS)::

    LN:   ∂L/∂u = r (g - mean(g) - x̂ mean(g ⊙ x̂))
    RMS:  ∂L/∂u = r (g - x̂ mean(g ⊙ x̂))

so RMS's is layer norm's (``native_layer_norm_backward`` given ``m = 0``) plus ``r mean(g)``.
"""

from __future__ import annotations

import torch

# Private aten ops, kept because no public op does the same work: ``native_layer_norm`` for the
# statistics (the backward needs the very mean and 1/std the forward's kernel used, one call over
# all steps; ``var_mean`` may round differently) and ``native_layer_norm_backward`` (torch has no
# public layer-norm backward; autograd per step would build the graph the scan avoids).
_layer_norm_backward = torch.ops.aten.native_layer_norm_backward


def normalize(
    u: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float, rms: bool
) -> torch.Tensor:
    """``LN(u)`` or ``RMS(u)`` over the last axis, with gain ``weight`` and bias ``bias`` (either None)."""
    if not rms:
        return torch.layer_norm(u, u.shape[-1:], weight, bias, eps)
    out = torch.rms_norm(u, u.shape[-1:], weight, eps)
    return out if bias is None else out + bias


def statistics(u: torch.Tensor, eps: float, rms: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m, r)`` of every row of ``u`` at once, shaped ``[..., 1]``: the mean and ``1/std``
    (layer norm, from the forward's own kernel), or zeros and ``1/rms`` (RMS norm)."""
    if not rms:
        _, mean, rstd = torch.native_layer_norm(u, u.shape[-1:], None, None, eps)
        return mean, rstd
    rstd = torch.rsqrt(u.square().mean(-1, keepdim=True) + eps)
    return torch.zeros_like(rstd), rstd


def normalize_backward(
    grad: torch.Tensor,
    u: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    rms: bool,
) -> torch.Tensor:
    """``∂L/∂u`` from ``∂L/∂out`` (``grad``) of :func:`normalize`, with :func:`statistics`' ``m`` and ``r``."""
    grad_u = _layer_norm_backward(grad, u, u.shape[-1:], mean, rstd, weight, bias, [True, False, False])[0]
    if rms:  # layer norm's backward at m = 0 takes away r mean(g), which RMS norm's keeps
        g = grad if weight is None else grad * weight
        grad_u = grad_u.addcmul_(g.mean(-1, keepdim=True), rstd)
    return grad_u
