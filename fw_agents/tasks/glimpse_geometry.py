"""The fixed two-level glimpse sequence of the paper's visual attention experiments.

Paper §4.2 (MNIST, 28x28, 7x7 glimpses) and §4.3 (faces, 48x48, 12x12
glimpses): the image is split recursively into quadrants at two scales, coarse
regions are down-sampled to the glimpse size and presented with their
full-resolution sub-quadrants, 24 glimpses in all. The paper does not spell out
the order. An image of side ``S = 4P`` (``P`` the glimpse side) has

* 4 **coarse** glimpses: the 4 quadrants (``2P x 2P``) of the image, each
  average-pooled 2x2 down to ``P x P`` (non-overlapping, cover the image at half
  resolution);
* 16 **fine** glimpses: the 4 sub-quadrants (``P x P``, full resolution) of each
  quadrant (non-overlapping, cover every pixel exactly once).

That is 20 distinct patches; the 24 come from visiting each coarse glimpse
twice, on the way down and on the way back up, which is what the multi-level
model of Figure 3 needs: the hidden state is wiped whenever the model moves
between levels and the fast weights carry the partial result across, so after
a quadrant's four fine glimpses (stored into the fast memory) the model returns
to the coarse level, looks at the quadrant again and integrates what the fast
memory holds about it into the top-level computation. (Alternatives such as
one whole-image thumbnail first give 21, not 24.) For quadrant ``q`` in raster
order (top-left, top-right, bottom-left, bottom-right)::

    t = 6q      coarse(q)        level 1  -> store, wipe h, go down
    t = 6q+1..4 fine(q, 0..3)    level 2  (raster order), last one -> store, wipe h, go up
    t = 6q+5    coarse(q)        level 1  (h carries on to coarse(q+1))

4 x (1 + 4 + 1) = 24 glimpses; level changes after steps 0, 4, 6, 10, 12, 16,
18, 22. The *control input* of the paper is the ``store`` flag: 1 on the last
step of a level, where the final hidden state is written into the fast weights
and the hidden state is then wiped.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

NUM_GLIMPSES = 24
#: Raster order of the 4 quadrants / sub-quadrants: (row, column) offsets in units of the half side.
QUADRANTS: tuple[tuple[int, int], ...] = ((0, 0), (0, 1), (1, 0), (1, 1))


@dataclass(frozen=True)
class Glimpse:
    """One step of the glimpse sequence.

    :param step: Position in the sequence (0..23).
    :param scale: ``"coarse"`` (a quadrant down-sampled 2x) or ``"fine"`` (full resolution).
    :param level: 1 for coarse, 2 for fine (Figure 3's levels).
    :param row: Top row of the covered image region.
    :param col: Left column of the covered image region.
    :param size: Side of the covered image region (``2P`` coarse, ``P`` fine).
    :param store: The control input: 1 on the last step of a level (write + wipe).
    """

    step: int
    scale: str
    level: int
    row: int
    col: int
    size: int
    store: bool


def glimpse_size(image_size: int) -> int:
    """Glimpse side ``P = S / 4`` (7 for 28x28, 12 for 48x48)."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 4 or image_size % 4:
        raise ValueError(f"image size must be a multiple of 4 (28 or 48 in the paper), got {image_size!r}")
    return image_size // 4


@lru_cache(maxsize=8)
def glimpse_plan(image_size: int) -> tuple[Glimpse, ...]:
    """The 24 glimpses, in order (see the module docstring)."""
    patch = glimpse_size(image_size)
    half = 2 * patch
    plan: list[Glimpse] = []
    for q_row, q_col in QUADRANTS:
        top, left = q_row * half, q_col * half
        plan.append(Glimpse(len(plan), "coarse", 1, top, left, half, store=True))
        for s, (s_row, s_col) in enumerate(QUADRANTS):
            plan.append(Glimpse(len(plan), "fine", 2, top + s_row * patch, left + s_col * patch, patch, store=s == 3))
        plan.append(Glimpse(len(plan), "coarse", 1, top, left, half, store=False))
    assert len(plan) == NUM_GLIMPSES
    return tuple(plan)


def level_segments(image_size: int) -> tuple[tuple[int, int], ...]:
    """``[t0, t1)`` spans of consecutive steps at one level (a new span starts after each store)."""
    plan = glimpse_plan(image_size)
    bounds = [0] + [g.step + 1 for g in plan if g.store and g.step + 1 < len(plan)] + [len(plan)]
    return tuple(zip(bounds[:-1], bounds[1:]))


def store_flags(image_size: int) -> torch.Tensor:
    """The control input, ``[24]`` floats (1 = store into fast memory after this step)."""
    return torch.tensor([float(g.store) for g in glimpse_plan(image_size)])


@lru_cache(maxsize=8)
def glimpse_index(image_size: int) -> torch.Tensor:
    """``int64 [24, P*P]``: where each glimpse pixel is read from in the pyramid vector.

    The pyramid of an image is ``[full image (S*S) | 2x2 average-pooled image ((S/2)^2)]``,
    both flattened row-major (see :func:`pyramid`).
    """
    patch = glimpse_size(image_size)
    offsets = torch.arange(patch)
    rows = []
    for g in glimpse_plan(image_size):
        if g.scale == "fine":
            r, c, width, base = g.row + offsets, g.col + offsets, image_size, 0
        else:  # coarse: the same region in the half-resolution image
            r, c, width, base = g.row // 2 + offsets, g.col // 2 + offsets, image_size // 2, image_size**2
        rows.append((base + r[:, None] * width + c[None, :]).flatten())
    return torch.stack(rows)


def pyramid(images: torch.Tensor) -> torch.Tensor:
    """``[B, S, S]`` (uint8 0-255 or float) -> ``[B, S*S + (S/2)^2]`` floats in [0, 1]."""
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    pooled = F.avg_pool2d(x.unsqueeze(1), 2).squeeze(1)
    return torch.cat([x.flatten(1), pooled.flatten(1)], dim=1)


def extract_glimpses(images: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """The glimpse sequence of a batch: ``[B, S, S]`` -> ``[B, 24, P*P]`` (one gather).

    :param images: uint8 (0-255) or float images.
    :param index: :func:`glimpse_index` of ``S`` already on ``images``' device (saves a copy per batch).
    """
    if images.dim() != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be [B, S, S], got {tuple(images.shape)}")
    if index is None:
        index = glimpse_index(int(images.shape[1])).to(images.device)
    elif index.shape[1] * 16 != images.shape[1] ** 2:
        side = 4 * round(index.shape[1] ** 0.5)
        raise ValueError(f"glimpse index is for {side}x{side} images, got images {tuple(images.shape)}")
    return pyramid(images)[:, index]
