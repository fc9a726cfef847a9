"""Fast exact fast-weights recurrence: a chunked scan with a hand-written backward pass.

The recurrence itself is sequential (each ``h(t)`` goes through a ReLU of the
previous one), so the speed comes from doing as little per step as possible:

* ``C x(t)`` for all steps is one matmul outside the scan; ``dL/dW``, ``dL/dC``
  and the layer-norm parameter gradients are one batched reduction at the end.
* ``A(t-1) h_s`` is never computed with a per-step ``A`` inside a chunk. With
  ``A_c`` the fast weights at the chunk's start, Eq. 1 unrolls to::

      A(t-1) h_s = g_t A_c h_s + sum_{tau < t} w[t, tau] h(tau) (h(tau) . h_s)

  ``g_t`` (the decay of ``A_c``) and ``w[t, tau] = eta * prod(decays) `` are
  tabulated once per chunk with the episode starts and write mask folded in
  (zero across a reset). The second term is the paper's Eq. 4, "attention to
  the recent past": O(t H) per step instead of O(H^2), and nothing ``[B, H, H]``
  is stored per step.
* ``A`` is formed once per chunk (one batched matmul) and carried to the next.
  ``chunk_size=1`` is the classic matrix form (``A`` updated every step);
  ``chunk_size >= T`` is the pure attention form.
* The backward pass runs the same recurrence in reverse with explicit BPTT
  formulas (layer norm through ``native_layer_norm_backward``), which costs
  about two forward passes instead of autograd's graph of ~30 tiny nodes per step.

Every path is held to :func:`fw_agents.memory.ops.reference.fast_weights_reference`
by the tests (forward, and gradients with ``gradcheck`` in float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable


# Chunks up to this many steps let every step read the whole block of h(tau) (future steps
# weighted zero) through one view, rather than a new slice h(< t) per step: at RL sizes the
# slices cost more than the extra (zero-weighted) products.
WHOLE_BLOCK_STEPS = 64


@dataclass
class _Chunk:
    start: int
    stop: int
    A_init: torch.Tensor | None  # fast weights entering the chunk, first `readers` rows; None = never read
    readers: int  # rows [0, readers) read A_init (the scan puts the rows that read it first)
    init_coef: torch.Tensor  # g: [B, K + 1], decay of A_init as seen by step j (j = K: chunk end)
    weights: torch.Tensor  # w: [B, K + 1, K], weight of h(tau) h(tau)^T in A(j - 1)
    scores: torch.Tensor  # [S, B, K, K]: w[j, tau] (h(tau) . h_s(j)) from the forward pass
    read_coef: torch.Tensor  # g of the reading rows, [readers, K + 1]
    read_scale: list[float] | None  # g_j when every reading row shares it (one scalar per step)
    whole: bool  # steps read the whole block of h(tau) (K <= WHOLE_BLOCK_STEPS); the backward must agree


def _readers_first(keep: torch.Tensor | None, batch: int) -> tuple[torch.Tensor | None, int]:
    """Row order that puts the rows reading ``A_in`` first (one host sync).

    A row reads ``A_in`` unless its episode restarts at step 0. In a PPO minibatch only the
    sequences cut mid-episode do (a few of ~20); with them first, every per-step read of
    ``A_in`` is one op on a ``[:readers]`` view instead of a gather, a matmul and a scatter.

    :return: ``(order, readers)``: the permutation (None when the rows already come in that
        order, or when most rows read, which then read in place) and the number of leading
        rows that read (0: none; ``batch``: all, zero-weighted where a row restarts).
    """
    if keep is None:
        return None, batch
    reads = (keep[0] >= 0.5).tolist()
    readers = sum(reads)
    if readers == 0 or all(reads[:readers]):
        return None, readers
    if 2 * readers > batch:
        return None, batch
    order = [b for b in range(batch) if reads[b]] + [b for b in range(batch) if not reads[b]]
    return torch.tensor(order, device=keep.device), readers


def _shared_scale(read_coef: torch.Tensor, steps: int) -> list[float] | None:
    """``g_j`` for ``j < steps`` when every reading row has the same (as when none of them
    restarts inside the chunk and none has a write mask): the read is then one ``baddbmm``
    with a scalar ``alpha`` per step. None when the rows differ."""
    coef = read_coef[:, :steps]
    if not torch.equal(coef, coef[:1].expand_as(coef)):
        return None
    return coef[0].tolist()


def _chunk_coefficients(
    keep: torch.Tensor | None,
    write: torch.Tensor | None,
    decay: float,
    fast_lr: float,
    steps: int,
    batch: int,
    like: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tabulate ``g`` and ``w`` (see :class:`_Chunk`) for one chunk of ``steps`` steps.

    ``keep``/``write`` are the chunk's ``[K, B]`` slices (None = all ones).
    """
    # Per-step decay of A: lambda where the step writes, 1 where it does not.
    if write is None:
        log_decay = torch.full((steps, batch), math.log(decay), dtype=torch.float64, device=like.device)
        write_b = torch.ones(batch, steps, dtype=like.dtype, device=like.device)
    else:
        log_decay = torch.log1p(-write.to(torch.float64) * (1.0 - decay))
        write_b = write.t().to(like.dtype)
    zeros = torch.zeros(1, batch, dtype=torch.float64, device=like.device)
    cum = torch.cat([zeros, log_decay.cumsum(0)]).t()  # [B, K + 1]: log of prod_{k < j} d_k
    if keep is None:
        segment = torch.zeros(batch, steps + 1, dtype=torch.int64, device=like.device)
    else:
        starts = (keep.t() < 0.5).to(torch.int64)  # [B, K]
        segment = starts.cumsum(1)
        segment = torch.cat([segment, segment[:, -1:]], dim=1)  # the chunk end adds no reset
    # A_init survives to step j unless a reset happened at or before j.
    init_coef = (cum.exp() * (segment == 0)).to(like.dtype)
    # h(tau) enters A at the end of step tau and reaches step j > tau decayed by
    # prod_{tau < k < j} d_k, unless a reset lies in (tau, j].
    j = torch.arange(steps + 1, device=like.device)[:, None]
    tau = torch.arange(steps, device=like.device)[None, :]
    log_w = cum[:, :, None] - cum[:, None, 1:]
    same = (segment[:, :, None] == segment[:, None, :steps]) & (tau < j)
    weights = (log_w.clamp(max=0.0).exp() * same).to(like.dtype) * (fast_lr * write_b[:, None, :])
    return init_coef, weights


class FastWeightsScan(torch.autograd.Function):
    """``(y, h_T, A_T) = scan(zx, h_0, A_0, W, ln_weight, ln_bias, keep, write, ...)``.

    Use :func:`fast_weights_scan`, which documents the arguments. Intermediate
    results are written straight into the buffers the backward pass reads
    (``out=``), so a step costs about eight tensor ops forward and a dozen backward.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        zx: torch.Tensor,
        h_in: torch.Tensor,
        A_in: torch.Tensor,
        W: torch.Tensor,
        ln_weight: torch.Tensor | None,
        ln_bias: torch.Tensor | None,
        keep: torch.Tensor | None,
        write: torch.Tensor | None,
        keep_h: torch.Tensor | None,
        decay: float,
        fast_lr: float,
        inner_steps: int,
        chunk_size: int,
        use_A_in: bool,
        layer_norm: bool,
        eps: float,
        final_A: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)
        T, B, H = zx.shape
        S = inner_steps
        Wt = W.t()
        norm_shape = (H,)
        # Rows that read A_in go first (the outputs are put back in the caller's order).
        order, first_readers = _readers_first(keep, B) if use_A_in else (None, 0)
        restore = None if order is None else torch.argsort(order)  # scan order -> the caller's
        if order is not None:
            zx, h_in = zx.index_select(1, order), h_in.index_select(0, order)
            same = keep_h is keep  # (no hidden resets)
            keep, write = (None if m is None else m.index_select(1, order) for m in (keep, write))
            keep_h = keep if same else None if keep_h is None else keep_h.index_select(1, order)
        # h(t), batch-first so that h(<t) is a [B, t, H] view; zeros, so that a short chunk can
        # read its whole block (steps not yet run hold zeros, and carry zero weight anyway)
        hidden = zx.new_zeros(B, T, H)
        hidden_T = hidden.transpose(1, 2)
        queries = zx.new_empty(S, T, B, H)  # h_s(t) for s < S (h_0 = relu(z))
        pre_act = zx.new_empty(S, T, B, H)  # z + A h_s: the layer norm's input
        # Per-step views made once per call: at small shapes, creating views costs as much as the maths.
        zx_t = zx.unbind(0)
        keep_h_t = _masks_by_step(keep_h, T)
        hidden_t = hidden.unbind(1)
        queries_t = [q.unbind(0) for q in queries]
        queries3_t = [q.unsqueeze(2).unbind(0) for q in queries]
        pre_act_t = [u.unbind(0) for u in pre_act]
        pre_act3_t = [u.unsqueeze(2).unbind(0) for u in pre_act]
        chunks: list[_Chunk] = []
        A = None  # fast weights at the current chunk's start, all rows (scan order); None = zero
        h = h_in
        for start in range(0, T, chunk_size):
            stop = min(start + chunk_size, T)
            K = stop - start
            init_coef, weights = _chunk_coefficients(
                None if keep is None else keep[start:stop],
                None if write is None else write[start:stop],
                decay,
                fast_lr,
                K,
                B,
                zx,
            )
            if start == 0:  # A_in: just the rows that read it
                readers = first_readers
                if readers == 0:
                    A_read = None
                elif order is not None:
                    A_read = A_in.index_select(0, order[:readers])
                else:
                    A_read = A_in if readers == B else A_in[:readers]
            else:
                readers, A_read = (B, A) if A is not None else (0, None)
            read_coef = init_coef[:readers]
            if A_read is not None and not bool(read_coef[:, :K].any()):
                A_read, readers = None, 0  # every reader restarts before reading
            read_scale = _shared_scale(read_coef, K) if A_read is not None else None
            A_read_T = A_read.transpose(1, 2) if A_read is not None else None
            coef_t = read_coef.unsqueeze(2).split(1, dim=1)  # [readers, 1, 1] per step
            weight_rows = weights.unsqueeze(2).unbind(1)  # [B, 1, K] per step
            scores = zx.new_empty(S, B, K, K)  # w[t, tau] (h(tau) . h_s(t)), kept for the backward
            score_rows = [sc.split(1, dim=1) for sc in scores]  # [B, 1, K] per step
            whole = K <= WHOLE_BLOCK_STEPS
            block, block_T = hidden[:, start:stop], hidden_T[:, :, start:stop]
            if A_read is not None:  # the reading rows' [readers, 1, H] views, per step
                read_q3_t = [q[start:stop, :readers].unsqueeze(2).unbind(0) for q in queries]
                read_u3_t = [u[start:stop, :readers].unsqueeze(2).unbind(0) for u in pre_act]
            for j in range(K):
                t = start + j
                if keep_h_t[t] is not None:
                    h = h * keep_h_t[t]
                z = torch.addmm(zx_t[t], h, Wt)
                z3 = z.unsqueeze(1)
                torch.clamp_min(z, 0.0, out=queries_t[0][t])
                if j > 0 and whole:  # h(tau >= t) get w[t, tau] = 0: one view for every step
                    past, past_T, w_row = block, block_T, weight_rows[j]
                elif j > 0:
                    past = hidden[:, start:t]  # [B, j, H]
                    past_T = hidden_T[:, :, start:t]
                    w_row = weight_rows[j][:, :, :j]
                for s in range(S):
                    q3 = queries3_t[s][t]
                    u3 = pre_act3_t[s][t]
                    if j > 0:  # Eq. 4 over this chunk's past
                        ws = score_rows[s][j] if whole else score_rows[s][j][:, :, :j]
                        torch.mul(torch.bmm(q3, past_T), w_row, out=ws)
                        torch.baddbmm(z3, ws, past, out=u3)
                    else:
                        u3.copy_(z3)
                    if A_read_T is not None:  # + g_j A_init h_s, reading rows only
                        if read_scale is None:
                            read_u3_t[s][j].baddbmm_(read_q3_t[s][j] * coef_t[j], A_read_T)
                        elif read_scale[j] != 0.0:
                            read_u3_t[s][j].baddbmm_(read_q3_t[s][j], A_read_T, alpha=read_scale[j])
                    u = pre_act_t[s][t]
                    n = torch.native_layer_norm(u, norm_shape, ln_weight, ln_bias, eps)[0] if layer_norm else u
                    torch.clamp_min(n, 0.0, out=hidden_t[t] if s == S - 1 else queries_t[s + 1][t])
                h = hidden_t[t]
            chunks.append(_Chunk(start, stop, A_read, readers, init_coef, weights, scores, read_coef, read_scale, whole))
            if stop < T or final_A:  # the chunk's A at its end: one [B, H, K] x [B, K, H] matmul
                if start == 0 and use_A_in:
                    A = A_in if order is None else A_in.index_select(0, order)
                lhs = (block * weights[:, K, :, None]).transpose(1, 2)
                A = torch.bmm(lhs, block) if A is None else torch.baddbmm(A * init_coef[:, K, None, None], lhs, block)
            else:
                A = None

        ctx.save_for_backward(h_in, W, ln_weight, ln_bias, keep_h, order, restore)
        ctx.saved = (hidden, queries, pre_act, chunks, keep_h_t)
        ctx.config = (S, layer_norm, eps, use_A_in)
        if order is None:
            return hidden.transpose(0, 1).contiguous(), hidden[:, T - 1].clone(), A if A is not None else zx.new_zeros(0)
        return (
            hidden.transpose(0, 1).index_select(1, restore),
            hidden[:, T - 1].index_select(0, restore),
            A.index_select(0, restore) if A is not None else zx.new_zeros(0),
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_h_out, grad_A_out):  # type: ignore[override]
        h_in, W, ln_weight, ln_bias, keep_h, order, restore = ctx.saved_tensors  # all in scan order (see forward)
        hidden, queries, pre_act, chunks, keep_h_t = ctx.saved  # keep_h_t: the forward's per-step masks
        S, layer_norm, eps, use_A_in = ctx.config
        B, T, H = hidden.shape
        norm_shape = (H,)
        ln_mask = [True, False, False]
        threshold_backward = torch.ops.aten.threshold_backward.grad_input
        if layer_norm:  # the layer norm's statistics, for all steps at once (one kernel)
            _, mean, rstd = torch.native_layer_norm(pre_act, norm_shape, None, None, eps)

        # grad_hidden[:, t] collects dL/dh(t) from every use of h(t): output, next step's
        # W h, later Eq. 4 reads, and the chunk's final A. It is complete when step t is reached.
        if grad_y is None:
            grad_hidden = hidden.new_zeros(B, T, H)
        elif order is None:
            # always a copy: .contiguous() would alias grad_y when it is a transposed view of a
            # [B, T, H] buffer (as under the policy's transpose+reshape), and we write into it
            grad_hidden = grad_y.transpose(0, 1).clone(memory_format=torch.contiguous_format)
        else:  # the caller's order -> scan order (a fresh tensor too)
            grad_hidden = grad_y.transpose(0, 1).index_select(0, order)
        if grad_h_out is not None:
            grad_hidden[:, T - 1] += grad_h_out if order is None else grad_h_out.index_select(0, order)
        if grad_A_out is not None and order is not None:
            grad_A_out = grad_A_out.index_select(0, order)
        grad_z_all = hidden.new_empty(T, B, H)
        grad_ln_out = hidden.new_empty(S, T, B, H)  # dL/d(layer-norm output), for its gain and bias
        grad_h_in = hidden.new_zeros(B, H)
        grad_A = grad_A_out  # dL/dA at the current chunk's end

        grad_hidden_t = grad_hidden.unbind(1)
        grad_z_t = grad_z_all.unbind(0)
        grad_ln_out_t = [g.unbind(0) for g in grad_ln_out]
        hidden_t = hidden.unbind(1)
        hidden_T = hidden.transpose(1, 2)
        queries_t = [q.unbind(0) for q in queries]
        queries3_t = [q.unsqueeze(2).unbind(0) for q in queries]
        pre_act_t = [u.unbind(0) for u in pre_act]
        if layer_norm:
            mean_t = [m.unbind(0) for m in mean]
            rstd_t = [r.unbind(0) for r in rstd]

        for index in reversed(range(len(chunks))):
            chunk = chunks[index]
            start, stop, A = chunk.start, chunk.stop, chunk.A_init
            # dL/dA_init feeds the previous chunk's hidden states, or the caller's A_in.
            need_grad_A_init = index > 0 or (use_A_in and ctx.needs_input_grad[2])
            K = stop - start
            block = hidden[:, start:stop]
            weights, init_coef = chunk.weights, chunk.init_coef
            weight_rows = weights.unsqueeze(2).unbind(1)  # [B, 1, K] per step
            score_cols = [sc.unsqueeze(3).unbind(1) for sc in chunk.scores]  # [B, K, 1] per step
            whole = chunk.whole  # as in the forward pass (its scores beyond h(< t) exist only then)
            block_T, grad_block = hidden_T[:, :, start:stop], grad_hidden[:, start:stop]
            readers, read_scale = chunk.readers, chunk.read_scale
            coef_t = chunk.read_coef.split(1, dim=1)  # [readers, 1] per step
            grad_A_init = None
            if grad_A is not None:
                # A_end = g_K A_init + sum_tau w[K, tau] h(tau) h(tau)^T
                sym = grad_A + grad_A.transpose(1, 2)
                grad_hidden[:, start:stop] += weights[:, K, :, None] * torch.bmm(block, sym)
                if chunk.A_init is not None and need_grad_A_init:
                    grad_A_init = grad_A * init_coef[:, K, None, None]
            collect_reads = A is not None and need_grad_A_init
            if collect_reads:
                init_rows, init_queries = [], []
            for j in reversed(range(K)):
                t = start + j
                if j > 0 and whole:
                    past, past_T, grad_past, w_row = block, block_T, grad_block, weight_rows[j]
                elif j > 0:
                    past = hidden[:, start:t]
                    past_T = hidden_T[:, :, start:t]
                    grad_past = grad_hidden[:, start:t]
                    w_row = weight_rows[j][:, :, :j]
                grad_q = grad_hidden_t[t]
                grad_z = grad_z_t[t]
                for s in reversed(range(S)):
                    q_out = queries_t[s + 1][t] if s + 1 < S else hidden_t[t]
                    grad_u = threshold_backward(grad_q, q_out, 0, grad_input=grad_ln_out_t[s][t])
                    if layer_norm:
                        grad_u = torch.ops.aten.native_layer_norm_backward(
                            grad_u, pre_act_t[s][t], norm_shape, mean_t[s][t], rstd_t[s][t], ln_weight, ln_bias, ln_mask
                        )[0]
                    if s == S - 1:
                        grad_z.copy_(grad_u)
                    else:
                        grad_z += grad_u
                    q = queries_t[s][t]
                    grad_q3 = None  # dL/dh_s(t) through the fast-weight read, [B, 1, H]
                    grad_u3 = grad_u.unsqueeze(1)
                    if j > 0:
                        # read = sum_tau w h(tau) (h(tau) . q): d/dq and d/dh(tau)
                        back = torch.bmm(grad_u3, past_T).mul_(w_row)
                        grad_q3 = torch.bmm(back, past)
                        grad_past.addcmul_(score_cols[s][j] if whole else score_cols[s][j][:, :j], grad_u3)
                        grad_past.addcmul_(back.transpose(1, 2), queries3_t[s][t])
                    if A is not None:  # read = g_j A_init q in the first `readers` rows
                        if grad_q3 is None:
                            grad_q3 = grad_u.new_zeros(B, 1, H)
                        if collect_reads:
                            scaled = grad_u[:readers] * coef_t[j]
                            init_rows.append(scaled)
                            init_queries.append(q[:readers])
                            grad_q3[:readers].baddbmm_(scaled.unsqueeze(1), A)
                        elif read_scale is None:
                            grad_q3[:readers].baddbmm_(grad_u3[:readers] * coef_t[j].unsqueeze(2), A)
                        elif read_scale[j] != 0.0:
                            grad_q3[:readers].baddbmm_(grad_u3[:readers], A, alpha=read_scale[j])
                    if grad_q3 is None:  # first step of a chunk with no initial A: nothing read
                        if s == 0:
                            break
                        grad_q = torch.zeros_like(q)
                    else:
                        grad_q = grad_q3.squeeze(1)
                        if s == 0:  # h_0 = relu(z)
                            grad_z += torch.ops.aten.threshold_backward(grad_q, q, 0)
                grad_z_kept = grad_z * keep_h_t[t] if keep_h_t[t] is not None else grad_z
                if t > 0:
                    grad_hidden_t[t - 1].addmm_(grad_z_kept, W)
                else:
                    grad_h_in = grad_z_kept @ W
            if collect_reads:
                rows = torch.stack(init_rows, dim=1)  # [readers, K*S, H]
                cols = torch.stack(init_queries, dim=1)
                from_reads = torch.bmm(rows.transpose(1, 2), cols)  # sum g_j grad_u q^T
                if grad_A_init is None:
                    grad_A_init = from_reads if readers == B else hidden.new_zeros(B, H, H)
                if readers < B or grad_A_init is not from_reads:
                    grad_A_init[:readers] += from_reads
            grad_A = grad_A_init

        # z(t) = W h_prev(t) + ...: one matmul over all steps for dL/dW.
        h_prev_all = torch.cat([h_in.unsqueeze(0), hidden[:, :-1].transpose(0, 1)], dim=0)
        if keep_h is not None:
            h_prev_all = h_prev_all * keep_h[:, :, None]
        grad_W = grad_z_all.reshape(-1, H).t() @ h_prev_all.reshape(-1, H)
        grad_ln_weight = grad_ln_bias = None
        if layer_norm:
            if ctx.needs_input_grad[4]:
                grad_ln_weight = (grad_ln_out * ((pre_act - mean) * rstd)).sum(dim=(0, 1, 2))
            if ctx.needs_input_grad[5]:
                grad_ln_bias = grad_ln_out.sum(dim=(0, 1, 2))
        grad_A_in = grad_A if (use_A_in and ctx.needs_input_grad[2]) else None  # None reads as zero
        if order is not None:  # scan order -> the caller's
            grad_z_all, grad_h_in = grad_z_all.index_select(1, restore), grad_h_in.index_select(0, restore)
            grad_A_in = None if grad_A_in is None else grad_A_in.index_select(0, restore)
        return (grad_z_all, grad_h_in, grad_A_in, grad_W, grad_ln_weight, grad_ln_bias) + (None,) * 11


def fast_weights_scan(
    zx: torch.Tensor,
    h: torch.Tensor,
    A: torch.Tensor | None,
    W: torch.Tensor,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    decay: float,
    fast_lr: float,
    inner_steps: int,
    chunk_size: int,
    keep: torch.Tensor | None = None,
    write_mask: torch.Tensor | None = None,
    layer_norm: bool = True,
    eps: float = 1e-5,
    final_A: bool = True,
    hidden_resets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the fast-weights RNN over a sequence (same maths as the reference).

    :param zx: ``C x(t)`` with its bias, ``[T, B, H]``.
    :param h: Hidden state before the first step, ``[B, H]``.
    :param A: Fast weights before the first step, ``[B, H, H]``; None when known to be zero
        (a fresh start), which skips every read of it.
    :param W: Slow recurrent weights ``[H, H]`` (``nn.Linear`` layout).
    :param ln_weight: Layer-norm gain ``[H]`` (None with ``layer_norm=False``).
    :param ln_bias: Layer-norm bias ``[H]``.
    :param decay: λ, in (0, 1).
    :param fast_lr: η, > 0.
    :param inner_steps: S >= 1.
    :param chunk_size: Steps between explicit formations of ``A`` (1 = matrix form).
    :param keep: ``[T, B]``, ``1 - episode_starts`` (None: no resets).
    :param write_mask: ``[T, B]``, 0 where step t must not write into ``A`` (None: always write).
    :param layer_norm: Layer norm in the inner loop.
    :param eps: Layer-norm epsilon.
    :param final_A: Form the final ``A_T``; False returns an empty tensor in its place
        (for callers that only need ``y``).
    :param hidden_resets: ``[T, B]``, 1 zeroes ``h`` (not ``A``) before step t (None: never).
    :return: ``(y [T, B, H], h_T [B, H], A_T [B, H, H])``.
    """
    use_A_in = A is not None
    if A is None:
        A = zx.new_zeros(0)
    if keep is not None:
        keep = keep.to(zx.dtype)
    if write_mask is not None:
        write_mask = write_mask.to(zx.dtype)
    keep_h = _hidden_keep(keep, hidden_resets, zx.dtype)
    return FastWeightsScan.apply(
        zx,
        h,
        A,
        W,
        ln_weight,
        ln_bias,
        keep,
        write_mask,
        keep_h,
        float(decay),
        float(fast_lr),
        int(inner_steps),
        max(1, int(chunk_size)),
        use_A_in,
        layer_norm,
        float(eps),
        bool(final_A),
    )


def fast_weights_step(
    zx: torch.Tensor,
    h: torch.Tensor,
    A: torch.Tensor | None,
    W: torch.Tensor,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    decay: float,
    fast_lr: float,
    inner_steps: int,
    keep: torch.Tensor | None = None,
    write_mask: torch.Tensor | None = None,
    layer_norm: bool = True,
    eps: float = 1e-5,
    final_A: bool = True,
    hidden_resets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One time step in matrix form (the RL rollout case, ``T = 1``): a handful of fused ops.

    Same arguments and result as :func:`fast_weights_scan` with ``zx`` of length 1;
    differentiable through autograd.
    """
    if keep is not None:
        keep = keep.to(zx.dtype)
        A = None if A is None else A * keep[0, :, None, None]
    keep_h = _hidden_keep(keep, hidden_resets, zx.dtype)
    if keep_h is not None:
        h = h * keep_h[0, :, None]
    zx = zx[0]
    z = torch.addmm(zx, h, W.t())
    q = torch.relu(z)
    for _ in range(inner_steps):
        u = z if A is None else torch.baddbmm(z.unsqueeze(1), q.unsqueeze(1), A.transpose(1, 2)).squeeze(1)
        if layer_norm:
            u = torch.layer_norm(u, u.shape[-1:], ln_weight, ln_bias, eps)
        q = torch.relu(u)
    if not final_A:
        return q.unsqueeze(0), q, q.new_zeros(0)
    if write_mask is None:  # Eq. 1: A <- decay A + fast_lr h h^T
        A_new = torch.einsum("bi,bj->bij", q, q) * fast_lr if A is None else torch.baddbmm(
            A, q.unsqueeze(2), q.unsqueeze(1), beta=decay, alpha=fast_lr
        )
    else:
        write = write_mask[0].to(zx.dtype)[:, None, None]
        outer = torch.einsum("bi,bj->bij", q, q) * (fast_lr * write)
        A_new = outer if A is None else A * (1.0 - write * (1.0 - decay)) + outer
    return q.unsqueeze(0), q, A_new


def _hidden_keep(keep: torch.Tensor | None, hidden_resets: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``[T, B]`` multiplier of ``h(t-1)``: 0 where an episode starts or ``h`` alone is reset."""
    if hidden_resets is None:
        return keep
    keep_h = 1.0 - hidden_resets.to(dtype)
    return keep_h if keep is None else keep * keep_h


def _masks_by_step(keep: torch.Tensor | None, steps: int) -> list[torch.Tensor | None]:
    """``keep [T, B]`` -> per step a ``[B, 1]`` multiplier, or None where no row resets
    (e.g. every step but the first of a PPO minibatch's sequences): one host sync, T fewer ops."""
    if keep is None:
        return [None] * steps
    resets = (keep < 1.0).any(dim=1).tolist()
    return [k if r else None for k, r in zip(keep.unsqueeze(2).unbind(0), resets)]
