"""The backward pass of the chunked fast-weights scan: explicit BPTT, chunk by chunk in reverse.

:func:`fast_weights_scan_bwd` takes the residuals of
:func:`~fw_agents.memory.ops.chunked_scan_fwd.fast_weights_scan_fwd` and the output
gradients and returns the input gradients; the derivation is ``fast_weights.md``,
section 3. About two forward passes of work, a dozen tensor ops per step.
"""

from __future__ import annotations

import torch

from fw_agents.memory.ops import norms
from fw_agents.memory.ops.chunked_scan_fwd import ResidualViews, ScanResiduals
from fw_agents.memory.ops.compiled import loops_for as compiled_loops

# Private aten ops, kept because no public op does the same work in one kernel (the norm's, in
# ops/norms.py): ``threshold_backward`` (ReLU's backward, into a preallocated buffer via
# ``.grad_input``): the public ``torch.where(q > 0, g, 0)`` takes two kernels and cannot write in place.
_relu_backward = torch.ops.aten.threshold_backward
_relu_backward_into = torch.ops.aten.threshold_backward.grad_input

def fast_weights_scan_bwd(
    res: ScanResiduals,
    grad_y: torch.Tensor | None,
    grad_h_out: torch.Tensor | None,
    grad_A_out: torch.Tensor | None,
    *,
    need_grad_A_in: bool = True,
    need_grad_ln: tuple[bool, bool] = (True, True),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The backward pass: BPTT through the chunks in reverse (derivation: ``fast_weights.md``).

    Args:
        res: The residuals :func:`fast_weights_scan_fwd` returned.
        grad_y: ``dL/dy [T, B, H]`` or None (zero); never written into.
        grad_h_out: ``dL/dh_T [B, H]`` or None.
        grad_A_out: ``dL/dA_T [B, H, H]`` or None.
        need_grad_A_in: Compute ``dL/dA_in`` (when the forward had an ``A_in``).
        need_grad_ln: Compute the layer-norm gain's and bias's gradients.

    Returns:
        ``(dzx [T, B, H], dh_in [B, H], dA_in or None, dW [H, H], d ln_weight or None,
        d ln_bias or None)``, in the caller's row order; a None reads as zero.
    """
    opts, order, restore, hidden = res.options, res.order, res.restore, res.hidden
    B, T, H = hidden.shape
    if opts.layer_norm:  # the norm's statistics, for all steps at once (one kernel for layer norm)
        mean, rstd = norms.statistics(res.pre_act, opts.eps, opts.rms_norm)
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
    # the C++ loops (one time scale), or None for the Python ones
    compiled = compiled_loops(hidden) if res.scale_rows is None else None
    grads = _BackwardBuffers(res, grad_hidden, mean if opts.layer_norm else None, rstd if opts.layer_norm else None,
                             views=compiled is None)  # fmt: skip
    grad_A = grad_A_out  # dL/dA at the current chunk's end
    for index in reversed(range(len(res.chunks))):
        # dL/dA_init feeds the previous chunk's hidden states, or the caller's A_in.
        need_grad_A_init = index > 0 or (res.use_A_in and need_grad_A_in)
        grad_A = _backward_chunk(grads, res, res.chunks[index], grad_A, need_grad_A_init, compiled)

    # z(t) = W h_prev(t) + ...: one matmul over all steps for dL/dW.
    h_prev_all = torch.cat([res.h_in.unsqueeze(0), hidden[:, :-1].transpose(0, 1)], dim=0)
    if res.keep_h is not None:
        h_prev_all = h_prev_all * res.keep_h[:, :, None]
    grad_W = grads.z.reshape(-1, H).t() @ h_prev_all.reshape(-1, H)
    grad_ln_weight = grad_ln_bias = None
    if opts.layer_norm:
        if need_grad_ln[0]:
            grad_ln_weight = (grads.ln_out * ((res.pre_act - mean) * rstd)).sum(dim=(0, 1, 2))
        if need_grad_ln[1]:
            grad_ln_bias = grads.ln_out.sum(dim=(0, 1, 2))
    grad_zx, grad_h_in = grads.z, grads.h_in
    grad_A_in = grad_A if (res.use_A_in and need_grad_A_in) else None  # None reads as zero
    if order is not None:  # scan order -> the caller's
        grad_zx, grad_h_in = grad_zx.index_select(1, restore), grad_h_in.index_select(0, restore)
        grad_A_in = None if grad_A_in is None else grad_A_in.index_select(0, restore)
    return grad_zx, grad_h_in, grad_A_in, grad_W, grad_ln_weight, grad_ln_bias


class _BackwardBuffers(ResidualViews):
    """The backward's gradient buffers, and per-step views of them and of the residuals
    (``views=False``: the buffers alone, for the compiled loops)."""

    def __init__(self, res: ScanResiduals, grad_hidden: torch.Tensor, mean, rstd, views: bool = True) -> None:
        B, T, H = res.hidden.shape
        S = res.options.inner_steps
        self.hidden = grad_hidden  # dL/dh(t), [B, T, H]
        self.z = res.hidden.new_empty(T, B, H)  # dL/dz(t) = dL/d(C x(t))
        self.ln_out = res.hidden.new_empty(S, T, B, H)  # dL/d(layer-norm output), for its gain and bias
        self.h_in = res.hidden.new_zeros(B, H)
        self.mean, self.rstd = mean, rstd
        if not views:
            return
        super().__init__(res)
        self.grad_hidden_t = grad_hidden.unbind(1)
        self.z_t = self.z.unbind(0)
        self.ln_out_t = [g.unbind(0) for g in self.ln_out]
        if mean is not None:
            self.mean_t = [m.unbind(0) for m in mean]
            self.rstd_t = [r.unbind(0) for r in rstd]


def _backward_chunk(grads, res, chunk, grad_A, need_grad_A_init, compiled):
    """BPTT through one chunk's steps in reverse: fills ``grads.z``/``grads.ln_out`` for its
    steps, adds into ``grads.hidden`` of earlier steps, returns ``dL/dA_init`` (or None).
    ``compiled``: the C++ port of the loop over the steps, or None to run it here."""
    opts, hidden, grad_hidden = res.options, res.hidden, grads.hidden
    B, _, H = hidden.shape
    start, stop, A = chunk.start, chunk.stop, chunk.A_init
    K = stop - start
    block = hidden[:, start:stop]
    weights, init_coef = chunk.weights, chunk.init_coef
    whole = chunk.whole  # as in the forward pass (its scores beyond h(< t) exist only then)
    readers, read_scale = chunk.readers, chunk.read_scale
    grad_A_init = None
    rows = res.scale_rows
    if grad_A is not None and rows is None:
        # A_end = g_K A_init + sum_tau w[K, tau] h(tau) h(tau)^T
        sym = grad_A + grad_A.transpose(1, 2)
        grad_hidden[:, start:stop] += weights[:, K, :, None] * torch.bmm(block, sym)
        if A is not None and need_grad_A_init:
            grad_A_init = grad_A * init_coef[:, K, None, None]
    elif grad_A is not None:
        # by row i of A: A_end[i] = g_K,i A_init[i] + sum_tau w_i[K, tau] h_i(tau) h(tau)^T, so
        # dL/dh(tau) = w[K, tau] ⊙ (dA h(tau)) + dAᵀ (w[K, tau] ⊙ h(tau))
        w_end = weights[:, :, K][:, rows].transpose(1, 2)  # [B, K, H]: w_{g(i)}[K, tau]
        grad_hidden[:, start:stop] += w_end * torch.bmm(block, grad_A.transpose(1, 2))
        grad_hidden[:, start:stop] += torch.bmm(block * w_end, grad_A)
        if A is not None and need_grad_A_init:
            grad_A_init = grad_A * init_coef[:, :, K, None]
    collect_reads = A is not None and need_grad_A_init
    if compiled is not None:  # the loop below, in C++ (bitwise the same ops)
        h_in, init_rows, init_queries = compiled.backward_steps(
            hidden, res.queries, res.pre_act, chunk.scores, weights, res.W, res.ln_weight, res.ln_bias, opts.layer_norm,
            opts.rms_norm, grads.mean, grads.rstd, res.keep_h, res.reset_steps, grad_hidden, grads.z, grads.ln_out, A, readers,
            init_coef, read_scale, collect_reads, start, stop, whole,
        )  # fmt: skip
        if start == 0:
            grads.h_in = h_in
    else:
        init_rows, init_queries = _backward_steps(grads, res, chunk, collect_reads)
    if collect_reads:
        rows = torch.stack(init_rows, dim=1)  # [readers, K*S, H]
        cols = torch.stack(init_queries, dim=1)
        from_reads = torch.bmm(rows.transpose(1, 2), cols)  # sum_j,s g_j dL/du_s h_s^T
        if grad_A_init is None:
            grad_A_init = from_reads if readers == B else hidden.new_zeros(B, H, H)
        if readers < B or grad_A_init is not from_reads:
            grad_A_init[:readers] += from_reads
    return grad_A_init


def _backward_steps(grads, res, chunk, collect_reads):
    """The Python loop of :func:`_backward_chunk` over the chunk's steps, in reverse (what
    ``scan_loops.cpp``'s ``backward_steps`` ports). Returns the reading rows' ``g_j dL/du_s``
    and ``h_s`` per read, for ``dL/dA_init``."""
    opts, hidden, grad_hidden = res.options, res.hidden, grads.hidden
    B, _, H = hidden.shape
    S = opts.inner_steps
    start, stop, A = chunk.start, chunk.stop, chunk.A_init
    K = stop - start
    block = hidden[:, start:stop]
    weights, init_coef, rows = chunk.weights, chunk.init_coef, res.scale_rows
    readers, read_scale = chunk.readers, chunk.read_scale
    if rows is None:
        weight_rows = weights.unsqueeze(2).unbind(1)  # [B, 1, K] per step
        score_cols = [sc.unsqueeze(3).unbind(1) for sc in chunk.scores]  # [B, K, 1] per step
        coef_t = init_coef[:readers].split(1, dim=1)  # [readers, 1] per step
    else:  # time scales: w per scale, g per row of A
        weight_rows = weights.unbind(2)  # [B, G, K] per step
        score_cols = [sc.unbind(1) for sc in chunk.scores]  # [B, G, K] per step (taken to rows below)
        coef_t = init_coef[:readers].unbind(2)  # [readers, H] per step
        in_scale = torch.nn.functional.one_hot(rows, weights.shape[1]).t().to(hidden.dtype)  # [G, H]
    whole = chunk.whole
    block_T, grad_block = grads.hidden_T[:, :, start:stop], grad_hidden[:, start:stop]
    queries_t, queries3_t = grads.queries_t, grads.queries3_t
    init_rows, init_queries = [], []  # g_j dL/du_s and h_s of the reading rows, for dL/dA_init
    for j in reversed(range(K)):
        t = start + j
        if j > 0 and whole:
            past, past_T, grad_past, w_row = block, block_T, grad_block, weight_rows[j]
        elif j > 0:
            past, past_T = hidden[:, start:t], grads.hidden_T[:, :, start:t]
            grad_past, w_row = grad_hidden[:, start:t], weight_rows[j][:, :, :j]
        grad_q = grads.grad_hidden_t[t]
        grad_z = grads.z_t[t]
        for s in reversed(range(S)):
            # h_{s+1} = relu(LN(u_s)): back through the ReLU (into the ln_out buffer) and the LN
            q_out = queries_t[s + 1][t] if s + 1 < S else grads.hidden_t[t]
            grad_u = _relu_backward_into(grad_q, q_out, 0, grad_input=grads.ln_out_t[s][t])
            if opts.layer_norm:
                u, mu, r = grads.pre_act_t[s][t], grads.mean_t[s][t], grads.rstd_t[s][t]
                grad_u = norms.normalize_backward(grad_u, u, mu, r, res.ln_weight, res.ln_bias, opts.rms_norm)
            if s == S - 1:  # u_s = z + A h_s: z gets every inner step's dL/du_s
                grad_z.copy_(grad_u)
            else:
                grad_z += grad_u
            q = queries_t[s][t]
            grad_q3 = None  # dL/dh_s(t) through the fast-weight read, [B, 1, H]
            grad_u3 = grad_u.unsqueeze(1)
            if j > 0 and rows is None:
                # read = sum_tau w h(tau) (h(tau) . q): d/dq and d/dh(tau)
                back = torch.bmm(grad_u3, past_T).mul_(w_row)
                grad_q3 = torch.bmm(back, past)
                grad_past.addcmul_(score_cols[s][j] if whole else score_cols[s][j][:, :j], grad_u3)
                grad_past.addcmul_(back.transpose(1, 2), queries3_t[s][t])
            elif j > 0:
                # read_i = sum_tau w_{g(i)}[tau] h_i(tau) (h(tau) . q), g(i) the time scale of row i:
                # back[tau] = sum_i dL/du_i w_{g(i)}[tau] h_i(tau), summed by scale first
                back = torch.bmm(grad_u3 * in_scale, past_T).mul_(w_row).sum(1, keepdim=True)  # [B, 1, K]
                grad_q3 = torch.bmm(back, past)
                scored = score_cols[s][j] if whole else score_cols[s][j][:, :, :j]  # [B, G, K]
                grad_past.addcmul_(scored.transpose(1, 2)[:, :, rows], grad_u3)
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
                    grad_q3[:readers].baddbmm_(grad_u3[:readers] * coef_t[j].unsqueeze(1), A)
                elif read_scale[j] != 0.0:
                    grad_q3[:readers].baddbmm_(grad_u3[:readers], A, alpha=read_scale[j])
            if grad_q3 is None:  # first step of a chunk with no initial A: nothing read
                if s == 0:
                    break
                grad_q = torch.zeros_like(q)
            else:
                grad_q = grad_q3.squeeze(1)
                if s == 0:  # h_0 = relu(z)
                    grad_z += _relu_backward(grad_q, q, 0)
        # z(t) = W h(t-1) + C x(t), with h(t-1) zeroed where the row resets
        keep = grads.keep_h_t[t]
        grad_z_kept = grad_z * keep if keep is not None else grad_z
        if t > 0:
            grads.grad_hidden_t[t - 1].addmm_(grad_z_kept, res.W)
        else:
            grads.h_in = grad_z_kept @ res.W
    return init_rows, init_queries
