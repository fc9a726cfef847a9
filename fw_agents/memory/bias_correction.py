"""Bias-corrected writes: the fast memory read at full strength from an episode's first step.

Eq. 1 starts ``A`` empty, so the early steps of an episode read a memory that holds only
``1 - λ^n`` of the weight its steady state gives the recent past; dividing by that share, as Adam
corrects its moment estimates, is a per-step write weight every op already takes
(:func:`bias_corrected_writes`). :class:`~fw_agents.memory.FastWeightsRNN` applies it per time
scale with ``bias_correction=True``.
"""

from __future__ import annotations

import torch


def bias_corrected_writes(
    decay: float,
    filled: torch.Tensor,
    episode_starts: torch.Tensor | None,
    write_mask: torch.Tensor | None,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write weights that keep ``A`` bias-corrected, and the filled share after the last step.

    Eq. 1 starts ``A`` empty, so ``n`` writes after a start it holds ``m = 1 - λ^n`` of the
    weight its steady state gives the recent past (0.14 after 3 steps at λ = 0.95). The
    corrected memory ``Â(t) = A(t) / m(t)``, with ``m(t) = λ m(t-1) + (1 - λ)``, obeys Eq. 1
    with a write weight ``w(t) = 1 / m(t)`` on the step::

        Â(t) = (1 - w(1-λ)) Â(t-1) + η w h(t) h(t)^T,   w = 1/m(t)

    since ``1 - (1-λ)/m(t) = λ m(t-1)/m(t)``: the form every op computes for a ``write_mask``
    value ``w``. The first write (``m = 1 - λ``) replaces ``Â`` outright; after ``~1/(1-λ)``
    steps ``w -> 1`` and the paper's Eq. 1 is back. A step whose ``write_mask`` is 0 leaves
    both ``Â`` and ``m`` unchanged.

    :param decay: λ.
    :param filled: ``m`` before the first step, ``[B]`` (0 at a fresh start).
    :param episode_starts: ``[T, B]`` 0/1 (a start sets ``m`` to 0 first), or None.
    :param write_mask: ``[T, B]`` 0/1 (0: no write), or None (every step writes).
    :param steps: ``T``.
    :return: ``(write weights [T, B], m after the last step [B])``, in ``filled``'s dtype.
    """
    batch, like = filled.shape[0], filled
    if steps == 1:  # a rollout step: the same formula without the scans (a few [B] ops)
        return _bias_corrected_step(decay, filled, episode_starts, write_mask)
    writes = like.new_ones(steps, batch, dtype=torch.float64) if write_mask is None else (write_mask > 0.5).double()
    count = writes.cumsum(0)  # writes up to and including step t since the call's start
    time = torch.arange(steps, device=like.device)[:, None].expand(steps, batch)
    if episode_starts is None:
        last_start = torch.full((steps, batch), -1, device=like.device)
    else:
        last_start = torch.where(episode_starts > 0.5, time, -1).cummax(0).values  # [T, B], -1: none yet
    before = (count - writes).gather(0, last_start.clamp(min=0))  # writes before that start
    n = torch.where(last_start >= 0, count - before, count)
    empty = torch.where(last_start >= 0, 1.0, 1.0 - filled.double()[None, :])  # 1 - m where counting began
    m = 1.0 - decay**n * empty
    weights = torch.where(writes > 0, writes / m.clamp(min=torch.finfo(torch.float64).tiny), 0.0)
    return weights.to(like.dtype), m[-1].to(like.dtype)


def _bias_corrected_step(
    decay: float, filled: torch.Tensor, episode_starts: torch.Tensor | None, write_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`bias_corrected_writes` for one step, in the same arithmetic (``m = 1 - λ^n (1 - m0)``,
    ``n`` = 0 or 1 writes, ``m0 = 0`` after a start)."""
    empty = 1.0 - filled.double()
    if episode_starts is not None:
        empty = torch.where(episode_starts[0] > 0.5, 1.0, empty)
    if write_mask is None:
        m = 1.0 - decay * empty
        weights = 1.0 / m.clamp(min=torch.finfo(torch.float64).tiny)
    else:
        write = write_mask[0] > 0.5
        m = 1.0 - torch.where(write, decay, 1.0) * empty
        weights = torch.where(write, 1.0 / m.clamp(min=torch.finfo(torch.float64).tiny), 0.0)
    return weights[None].to(filled.dtype), m.to(filled.dtype)
