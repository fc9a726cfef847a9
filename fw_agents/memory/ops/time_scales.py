"""Several fast-memory time scales: a decay λ and a write scale η per group of rows of ``A``.

Every op takes ``decay`` and ``fast_lr`` either as floats (the paper's Eq. 1, one time scale)
or as tuples of ``G`` floats. With ``G`` of them the rows of ``A`` fall in ``G`` contiguous
groups, row ``i`` in group ``⌊i G / H⌋``, and group ``g`` keeps its own moving average::

    A(t)[i, :] = λ_g A(t-1)[i, :] + η_g h_i(t) h(t)^T,     g = ⌊i G / H⌋

i.e. ``A(t) = Λ A(t-1) + diag(η) h hᵀ`` with diagonal ``Λ``: the read ``A h_s`` mixes several
horizons ``1/(1-λ_g)`` at once (RetNet's multi-scale decay, with every group reading the
whole ``h``). A write mask may then give one weight per group, ``[T, B, G]``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch


def as_scales(decay: float | Sequence[float] | torch.Tensor, fast_lr: float | Sequence[float] | torch.Tensor,
              tensors: bool = False) -> tuple[float | tuple[float, ...] | torch.Tensor, float | tuple[float, ...] | torch.Tensor]:
    """``(decay, fast_lr)`` as an op carries them: two floats (one time scale), or two tuples of
    ``G >= 2`` floats (a float ``fast_lr`` is repeated). A one-element tuple reads as its float.
    With ``tensors`` (the reference loop), 0-d tensors pass as they are (a learned λ and η: autograd
    gives their gradients); the other ops, which would carry them as constants, refuse them.

    :raises ValueError: The two lengths differ, a tuple is empty, or a tensor where ``tensors`` is False
        (or not 0-d, or beside a float).
    """
    if isinstance(decay, torch.Tensor) or isinstance(fast_lr, torch.Tensor):
        if not tensors:
            raise ValueError("decay and fast_lr as tensors (a learned λ and η) run in fast_weights_reference only; "
                             "give floats here")
        if not (isinstance(decay, torch.Tensor) and isinstance(fast_lr, torch.Tensor) and decay.dim() == fast_lr.dim() == 0):
            raise ValueError("a learned decay and fast_lr are two 0-d tensors")
        return decay, fast_lr
    if isinstance(decay, numbers.Real):
        if not isinstance(fast_lr, numbers.Real):
            raise ValueError(f"one decay with {len(fast_lr)} fast_lr values: give a decay per time scale")
        return float(decay), float(fast_lr)
    decays = tuple(float(d) for d in decay)
    rates = (float(fast_lr),) * len(decays) if isinstance(fast_lr, numbers.Real) else tuple(float(r) for r in fast_lr)
    if not decays or len(rates) != len(decays):
        raise ValueError(f"decay has {len(decays)} time scales and fast_lr {len(rates)}: give one fast_lr per decay")
    if len(decays) == 1:
        return decays[0], rates[0]
    return decays, rates


def count(decay: float | tuple[float, ...]) -> int:
    """``G``, the number of time scales of an op's ``decay``."""
    return 1 if isinstance(decay, (float, torch.Tensor)) else len(decay)


def rows_by_scale(scales: int, hidden_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The time scale of each row of ``A``: ``⌊i G / H⌋`` for ``i < H`` (``[H]``, int64)."""
    return torch.arange(hidden_size, device=device) * scales // hidden_size


def per_row(values: float | tuple[float, ...], rows: torch.Tensor | None, like: torch.Tensor) -> float | torch.Tensor:
    """A float as it is; a tuple of ``G`` floats as ``[H]`` in ``like``'s dtype and device, one per row."""
    if isinstance(values, (float, torch.Tensor)):
        return values
    return torch.tensor(values, dtype=like.dtype, device=like.device)[rows]


def check_write_mask(write_mask: torch.Tensor | None, steps: int, batch: int, scales: int) -> None:
    """A write mask is ``[T, B]``, or ``[T, B, G]`` with ``G >= 2`` time scales; ValueError otherwise."""
    if write_mask is None:
        return
    shapes = [(steps, batch)] + ([(steps, batch, scales)] if scales > 1 else [])
    if tuple(write_mask.shape) not in shapes:
        accepted = f"[T, B] = {shapes[0]}" + (f" or [T, B, G] = {shapes[1]}" if scales > 1 else " (one time scale)")
        raise ValueError(f"write_mask must be {accepted}, got {tuple(write_mask.shape)}")


def write_per_row(write: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """A step's write weights as ``[B, 1]`` (one per batch row) or ``[B, H]`` (a ``[B, G]``
    weight per time scale, taken to each row of ``A``)."""
    return write[:, None] if write.dim() == 1 else write[:, rows]
