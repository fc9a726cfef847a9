"""The forward pass of the chunked fast-weights scan, and what it leaves for the backward.

:func:`fast_weights_scan_fwd` runs Eq. 5's inner loop with Eq. 1 unrolled over each chunk
to the paper's Eq. 4 (``fast_weights.md``, section 2), writing every intermediate the
backward pass needs (``h_s(t)``, the layer norm's input, the Eq. 4 scores) into
preallocated buffers (``out=``), so that a step costs about eight tensor ops.
No autograd: :mod:`fw_agents.memory.ops.chunked_scan` wraps it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from fw_agents.memory.ops import chunking, time_scales
from fw_agents.memory.ops.chunking import chunk_coefficients, masks_by_step
from fw_agents.memory.ops.compiled import loops_for as compiled_loops
from fw_agents.memory.ops.norms import normalize
from fw_agents.memory.ops.options import OpOptions


@dataclass
class ChunkResiduals:
    """What the backward pass needs of one chunk (steps ``start .. stop - 1``, ``K`` of them)."""

    start: int
    stop: int
    A_init: torch.Tensor | None  # fast weights entering the chunk, first `readers` rows; None = never read
    readers: int  # rows [0, readers) read A_init (the scan puts the rows that read it first)
    init_coef: torch.Tensor  # g: [B, K + 1], decay of A_init as seen by step j (j = K: chunk end); [B, H, K + 1] by row of A with time scales
    weights: torch.Tensor  # w: [B, K + 1, K], weight of h(tau) h(tau)^T in A(j - 1); [B, G, K + 1, K] with G time scales
    scores: torch.Tensor  # [S, B, K, K]: w[j, tau] (h(tau) . h_s(j)) from the forward pass; [S, B, K, G, K] with G time scales
    read_scale: list[float] | None  # g_j when every reading row shares it (one scalar per step)
    whole: bool  # steps read the whole block of h(tau) (K <= WHOLE_BLOCK_STEPS); the backward must agree

    #: The fields that hold tensors (or None), saved through ``ctx.save_for_backward`` by name.
    TENSORS: ClassVar[tuple[str, ...]] = ("A_init", "init_coef", "weights", "scores")


@dataclass
class ScanResiduals:
    """What :func:`fast_weights_scan_fwd` leaves for :func:`fast_weights_scan_bwd`.

    All rows in *scan order* (``order`` applied; ``restore`` undoes it; both None when the
    caller's order is kept). ``hidden [B, T, H]`` holds ``h(t)``; ``queries``/``pre_act``
    ``[S, T, B, H]`` hold ``h_s(t)`` and ``z + A h_s`` (the layer norm's input).
    """

    h_in: torch.Tensor
    W: torch.Tensor
    ln_weight: torch.Tensor | None
    ln_bias: torch.Tensor | None
    keep_h: torch.Tensor | None  # [T, B] 0/1 multiplier of h(t-1): 0 where step t resets h
    order: torch.Tensor | None
    restore: torch.Tensor | None
    hidden: torch.Tensor
    queries: torch.Tensor
    pre_act: torch.Tensor
    chunks: list[ChunkResiduals]
    reset_steps: list[bool]  # which steps reset some row's h, as host booleans
    use_A_in: bool
    options: OpOptions
    scale_rows: torch.Tensor | None = None  # [H]: the time scale of each row of A; None: one time scale

    #: The fields that hold tensors (or None), saved through ``ctx.save_for_backward`` by name.
    TENSORS: ClassVar[tuple[str, ...]] = (
        "h_in", "W", "ln_weight", "ln_bias", "keep_h", "order", "restore", "hidden", "queries", "pre_act", "scale_rows",
    )  # fmt: skip

    def split(self) -> tuple[list[torch.Tensor | None], ScanResiduals]:
        """``(tensors, skeleton)``: the tensors for ``ctx.save_for_backward`` and the rest."""
        names = self.TENSORS
        tensors = [getattr(self, n) for n in names]
        tensors += [getattr(c, n) for c in self.chunks for n in ChunkResiduals.TENSORS]
        chunks = [replace(c, **dict.fromkeys(ChunkResiduals.TENSORS)) for c in self.chunks]
        return tensors, replace(self, **dict.fromkeys(names), chunks=chunks)

    def join(self, tensors: tuple[torch.Tensor | None, ...]) -> ScanResiduals:
        """Inverse of :meth:`split`, called on the skeleton with the saved tensors."""
        names = self.TENSORS
        own, rest = tensors[: len(names)], tensors[len(names) :]
        n = len(ChunkResiduals.TENSORS)
        chunks = [replace(c, **dict(zip(ChunkResiduals.TENSORS, rest[i * n : (i + 1) * n]))) for i, c in enumerate(self.chunks)]
        return replace(self, **dict(zip(names, own)), chunks=chunks)


def fast_weights_scan_fwd(
    zx: torch.Tensor,
    h_in: torch.Tensor,
    A_in: torch.Tensor | None,
    W: torch.Tensor,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    starts: torch.Tensor | None,
    write: torch.Tensor | None,
    reset_h: torch.Tensor | None,
    options: OpOptions,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, ScanResiduals]:
    """The forward pass (no autograd): Eq. 5's inner loop with Eq. 1 in chunk form (Eq. 4).

    Args:
        zx: ``C x(t)`` with its bias, ``[T, B, H]``.
        h_in: ``h`` before step 0, ``[B, H]``.
        A_in: ``A`` before step 0, ``[B, H, H]``; None for zeros (never read).
        W: Slow recurrent weights ``[H, H]`` (``nn.Linear`` layout).
        ln_weight: Layer-norm gain ``[H]`` or None.
        ln_bias: Layer-norm bias ``[H]`` or None.
        starts: ``[T, B]`` bool episode starts (``h`` and ``A`` zeroed before step t) or None.
        write: ``[T, B]`` 0/1 write mask in ``zx``'s dtype, or None (always write).
        reset_h: ``[T, B]`` bool, ``h(t-1)`` zeroed before step t (starts and hidden resets), or None.
        options: The settings; ``chunk_size >= 1``.

    Returns:
        ``(y [T, B, H], h_T [B, H], A_T [B, H, H] or None, residuals)``.
    """
    T, B, H = zx.shape
    S = options.inner_steps
    use_A_in = A_in is not None
    # Rows that read A_in go first (the outputs are put back in the caller's order).
    order, readers, in_place_restarts = chunking.readers_first(starts, B) if use_A_in else (None, 0, False)
    restore = None if order is None else torch.argsort(order)  # scan order -> the caller's
    if order is not None:
        zx, h_in = zx.index_select(1, order), h_in.index_select(0, order)
        starts, write, reset_h = (None if m is None else m.index_select(1, order) for m in (starts, write, reset_h))
    # A_in as the rows that read it see it: rows [0, readers) in scan order. A row that restarts
    # at step 0 never sees its A_in, so a NaN or inf there must not leak through 0 * NaN.
    if readers == 0:
        A_first = None
    elif order is not None:
        A_first = A_in.index_select(0, order[:readers])
    elif readers < B:
        A_first = A_in[:readers]
    elif in_place_restarts:
        A_first = A_in.masked_fill(starts[0, :, None, None], 0.0)
    else:
        A_first = A_in
    steps_reset = chunking.reset_steps(reset_h, T)
    if steps_reset and steps_reset[0]:  # the carried h of rows reset at step 0: exact zeros, even if NaN
        h_in = h_in.masked_fill(reset_h[0, :, None], 0.0)
    res = ScanResiduals(
        h_in=h_in,
        W=W,
        ln_weight=ln_weight,
        ln_bias=ln_bias,
        keep_h=None if reset_h is None else 1.0 - reset_h.to(zx.dtype),
        order=order,
        restore=restore,
        hidden=zx.new_zeros(B, T, H),  # zeros: a short chunk reads its whole block (steps not yet run weigh 0)
        queries=zx.new_empty(S, T, B, H),
        pre_act=zx.new_empty(S, T, B, H),
        chunks=[],
        reset_steps=steps_reset,
        use_A_in=use_A_in,
        options=options,
    )
    scales = time_scales.count(options.decay)
    if scales > 1:
        res.scale_rows = time_scales.rows_by_scale(scales, H, zx.device)
    # the C++ loops (one time scale), or None for the Python ones
    compiled = compiled_loops(zx) if scales == 1 else None
    views = _ForwardViews(zx, res) if compiled is None else None
    A, A_readers, h = A_first, readers, h_in  # A: fast weights at the chunk's start, first A_readers rows
    for start in range(0, T, options.chunk_size):
        stop = min(start + options.chunk_size, T)
        chunk, h = _forward_chunk(views, res, start, stop, A, A_readers, starts, write, h, zx, compiled)
        res.chunks.append(chunk)
        if stop < T or options.output_final_state:
            A = _fast_weights_at_chunk_end(res.hidden[:, start:stop], chunk, A, A_readers, res.scale_rows)
        else:
            A = None
        A_readers = B
    hidden = res.hidden
    if order is None:
        return hidden.transpose(0, 1).contiguous(), hidden[:, T - 1].clone(), A, res
    return (
        hidden.transpose(0, 1).index_select(1, restore),
        hidden[:, T - 1].index_select(0, restore),
        None if A is None else A.index_select(0, restore),
        res,
    )


class ResidualViews:
    """Per-step views of the residual buffers, made once per pass (forward and backward):
    at small shapes, creating views costs as much as the maths."""

    def __init__(self, res: ScanResiduals) -> None:
        self.keep_h_t = masks_by_step(res.keep_h, res.reset_steps)  # [B, 1] or None per step
        self.hidden_t = res.hidden.unbind(1)  # h(t), [B, H]
        self.hidden_T = res.hidden.transpose(1, 2)  # [B, H, T]
        self.queries_t = [q.unbind(0) for q in res.queries]  # h_s(t), [B, H]
        self.queries3_t = [q.unsqueeze(2).unbind(0) for q in res.queries]  # h_s(t), [B, 1, H]
        self.pre_act_t = [u.unbind(0) for u in res.pre_act]  # z + A h_s, [B, H]


class _ForwardViews(ResidualViews):
    def __init__(self, zx: torch.Tensor, res: ScanResiduals) -> None:
        super().__init__(res)
        self.zx_t = zx.unbind(0)
        self.pre_act3_t = [u.unsqueeze(2).unbind(0) for u in res.pre_act]  # [B, 1, H], for out=


def _forward_chunk(views, res, start, stop, A_init, readers, starts, write, h, zx, compiled):
    """Run steps ``start .. stop - 1``, writing ``h_s(t)``, ``z + A h_s`` and ``h(t)`` into
    the residual buffers (``out=``, about eight tensor ops per step). Returns the chunk's
    residuals and ``h(stop - 1)``. ``compiled``: the C++ port of the loop over the steps
    (:mod:`~fw_agents.memory.ops.compiled`), or None to run it here (then ``views`` are set)."""
    opts, hidden, B = res.options, res.hidden, res.hidden.shape[0]
    K, S = stop - start, opts.inner_steps
    Wt = res.W.t()
    chunk_starts = None if starts is None else starts[start:stop]
    chunk_write = None if write is None else write[start:stop]
    init_coef, weights = chunk_coefficients(chunk_starts, chunk_write, opts.decay, opts.fast_lr, K, B, hidden)
    rows = res.scale_rows  # None, or the time scale of each row of A (then g is per row, w per scale)
    if rows is not None:
        init_coef = init_coef[:, rows]  # [B, H, K + 1]
    read_coef = init_coef[:readers]
    A_read = A_init
    if A_read is not None and not bool(read_coef[..., :K].any()):
        A_read, readers = None, 0  # every reader restarts before reading
    read_scale = chunking.shared_scale(read_coef, K) if A_read is not None and rows is None else None
    A_read_T = A_read.transpose(1, 2) if A_read is not None else None
    whole = K <= chunking.WHOLE_BLOCK_STEPS
    # w[t, tau] (h(tau) . h_s(t)), kept for the backward; with time scales, one per scale
    scores = hidden.new_empty(S, B, K, K) if rows is None else hidden.new_empty(S, B, K, weights.shape[1], K)
    if compiled is not None:  # the loop below, in C++ (bitwise the same ops)
        h = compiled.forward_steps(
            zx, hidden, res.queries, res.pre_act, scores, weights, Wt, res.ln_weight, res.ln_bias,
            opts.eps, opts.layer_norm, opts.rms_norm, res.keep_h, res.reset_steps, A_read_T, readers,
            None if read_scale is not None or A_read is None else read_coef, read_scale, start, stop, whole, h,
        )  # fmt: skip
        return ChunkResiduals(start, stop, A_read, readers, init_coef, weights, scores, read_scale, whole), h
    if rows is None:
        coef_t = read_coef.unsqueeze(2).split(1, dim=1)  # [readers, 1, 1] per step, scales h_s
        weight_rows = weights.unsqueeze(2).unbind(1)  # [B, 1, K] per step
        score_rows = [sc.split(1, dim=1) for sc in scores]  # [B, 1, K] per step
    else:
        coef_t = read_coef.transpose(1, 2).split(1, dim=1)  # [readers, 1, H] per step, scales A h_s by row
        weight_rows = weights.unbind(2)  # [B, G, K] per step
        score_rows = [sc.unbind(1) for sc in scores]  # [B, G, K] per step
        row_index = rows.expand(B, 1, -1)  # picks each row's scale out of [B, G, H]
    block, block_T = hidden[:, start:stop], views.hidden_T[:, :, start:stop]
    if A_read is not None:  # the reading rows' [readers, 1, H] views, per step
        read_q3_t = [q[start:stop, :readers].unsqueeze(2).unbind(0) for q in res.queries]
        read_u3_t = [u[start:stop, :readers].unsqueeze(2).unbind(0) for u in res.pre_act]
    queries_t, queries3_t, pre_act3_t = views.queries_t, views.queries3_t, views.pre_act3_t
    for j in range(K):
        t = start + j
        if views.keep_h_t[t] is not None:  # a product: 0 * NaN stays NaN, but h_in is already clean
            h = h * views.keep_h_t[t]
        z = torch.addmm(views.zx_t[t], h, Wt)
        z3 = z.unsqueeze(1)
        torch.clamp_min(z, 0.0, out=queries_t[0][t])  # h_0 = relu(z)
        if j > 0 and whole:  # h(tau >= t) get w[t, tau] = 0: one view for every step
            past, past_T, w_row = block, block_T, weight_rows[j]
        elif j > 0:
            past, past_T, w_row = hidden[:, start:t], views.hidden_T[:, :, start:t], weight_rows[j][:, :, :j]
        for s in range(S):
            u3 = pre_act3_t[s][t]
            if j > 0:  # Eq. 4 over this chunk's past: sum_tau w[t, tau] h(tau) (h(tau) . h_s)
                ws = score_rows[s][j] if whole else score_rows[s][j][:, :, :j]
                torch.mul(torch.bmm(queries3_t[s][t], past_T), w_row, out=ws)
                if rows is None:
                    torch.baddbmm(z3, ws, past, out=u3)
                else:  # each scale's read [B, G, H], then each row's own scale
                    torch.add(z3, torch.bmm(ws, past).gather(1, row_index), out=u3)
            else:
                u3.copy_(z3)
            if A_read_T is not None:  # + g_j A_init h_s, reading rows only
                if rows is not None:
                    read_u3_t[s][j].addcmul_(torch.bmm(read_q3_t[s][j], A_read_T), coef_t[j])
                elif read_scale is None:
                    read_u3_t[s][j].baddbmm_(read_q3_t[s][j] * coef_t[j], A_read_T)
                elif read_scale[j] != 0.0:
                    read_u3_t[s][j].baddbmm_(read_q3_t[s][j], A_read_T, alpha=read_scale[j])
            u = views.pre_act_t[s][t]
            n = normalize(u, res.ln_weight, res.ln_bias, opts.eps, opts.rms_norm) if opts.layer_norm else u
            torch.clamp_min(n, 0.0, out=views.hidden_t[t] if s == S - 1 else queries_t[s + 1][t])  # Eq. 5
        h = views.hidden_t[t]
    return ChunkResiduals(start, stop, A_read, readers, init_coef, weights, scores, read_scale, whole), h


def _fast_weights_at_chunk_end(block, chunk, A_init, readers, rows=None):
    """``A_end = g_K A_init + sum_tau w[K, tau] h(tau) h(tau)^T``: one ``[B, H, K] x [B, K, H]``
    matmul. ``A_init`` holds the first ``readers`` rows (the others restart at step 0: exact zeros).
    With time scales (``rows``, the scale of each row of ``A``), ``g`` and ``w`` are per row."""
    K = chunk.stop - chunk.start
    if rows is None:
        lhs = (block * chunk.weights[:, K, :, None]).transpose(1, 2)
        g_end = chunk.init_coef[:, K, None, None]
    else:
        lhs = block.transpose(1, 2) * chunk.weights[:, :, K][:, rows]  # [B, H, K]: w_{g(i)}[K, tau] h_i(tau)
        g_end = chunk.init_coef[:, :, K, None]
    if A_init is None:
        return torch.bmm(lhs, block)
    if readers == block.shape[0]:
        carried = A_init * g_end
    else:
        carried = A_init.new_zeros(block.shape[0], *A_init.shape[1:])
        torch.mul(A_init, g_end[:readers], out=carried[:readers])
    return torch.baddbmm(carried, lhs, block)
