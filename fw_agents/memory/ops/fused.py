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


@dataclass
class _Chunk:
    start: int
    stop: int
    A_init: torch.Tensor | None  # fast weights entering the chunk; None = known zero
    init_coef: torch.Tensor  # g: [B, K + 1], decay of A_init as seen by step j (j = K: chunk end)
    weights: torch.Tensor  # w: [B, K + 1, K], weight of h(tau) h(tau)^T in A(j - 1)
    scores: torch.Tensor  # [S, B, K, K]: w[j, tau] (h(tau) . h_s(j)) from the forward pass


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
        decay: float,
        fast_lr: float,
        inner_steps: int,
        chunk_size: int,
        use_A_in: bool,
        layer_norm: bool,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)
        T, B, H = zx.shape
        S = inner_steps
        Wt = W.t()
        norm_shape = (H,)
        hidden = zx.new_empty(B, T, H)  # h(t), batch-first so that h(<t) is a [B, t, H] view
        queries = zx.new_empty(S, T, B, H)  # h_s(t) for s < S (h_0 = relu(z))
        pre_act = zx.new_empty(S, T, B, H)  # z + A h_s: the layer norm's input
        chunks: list[_Chunk] = []
        A = A_in if use_A_in else None
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
            # Skip every read of A_init when no row of the chunk still sees it.
            A_read = A if (A is not None and bool(init_coef[:, :K].any())) else None
            scores = zx.new_empty(S, B, K, K)  # w[t, tau] (h(tau) . h_s(t)), kept for the backward
            for j in range(K):
                t = start + j
                if keep is not None:
                    h = h * keep[t, :, None]
                z = torch.addmm(zx[t], h, Wt)
                q = torch.clamp_min(z, 0.0, out=queries[0, t])
                past = hidden[:, start:t]  # [B, j, H]
                for s in range(S):
                    if s > 0:
                        q = queries[s, t]
                    u = pre_act[s, t]
                    if j > 0:  # Eq. 4 over this chunk's past
                        ws = scores[s, :, j : j + 1, :j]
                        torch.mul(torch.bmm(q.unsqueeze(1), past.transpose(1, 2)), weights[:, j : j + 1, :j], out=ws)
                        torch.baddbmm(z.unsqueeze(1), ws, past, out=u.unsqueeze(1))
                    else:
                        u.copy_(z)
                    if A_read is not None:
                        u.unsqueeze(1).baddbmm_((q * init_coef[:, j : j + 1]).unsqueeze(1), A_read.transpose(1, 2))
                    n = torch.native_layer_norm(u, norm_shape, ln_weight, ln_bias, eps)[0] if layer_norm else u
                    torch.clamp_min(n, 0.0, out=hidden[:, t] if s == S - 1 else queries[s + 1, t])
                h = hidden[:, t]
            chunks.append(_Chunk(start, stop, A_read, init_coef, weights, scores))
            # The chunk's A at its end: one [B, H, K] x [B, K, H] matmul.
            block = hidden[:, start:stop]
            A_out = torch.bmm((block * weights[:, K, :, None]).transpose(1, 2), block)
            if A is not None:
                A_out = A_out + A * init_coef[:, K, None, None]
            A = A_out

        ctx.save_for_backward(h_in, W, ln_weight, ln_bias, keep)
        ctx.saved = (hidden, queries, pre_act, chunks)
        ctx.config = (S, layer_norm, eps, use_A_in)
        return hidden.transpose(0, 1).contiguous(), hidden[:, T - 1].clone(), A

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_h_out, grad_A_out):  # type: ignore[override]
        h_in, W, ln_weight, ln_bias, keep = ctx.saved_tensors
        hidden, queries, pre_act, chunks = ctx.saved
        S, layer_norm, eps, use_A_in = ctx.config
        B, T, H = hidden.shape
        norm_shape = (H,)
        ln_mask = [True, False, False]
        threshold_backward = torch.ops.aten.threshold_backward.grad_input
        if layer_norm:  # the layer norm's statistics, for all steps at once
            var, mean = torch.var_mean(pre_act, dim=-1, keepdim=True, correction=0)
            rstd = (var + eps).rsqrt()

        # grad_hidden[:, t] collects dL/dh(t) from every use of h(t): output, next step's
        # W h, later Eq. 4 reads, and the chunk's final A. It is complete when step t is reached.
        if grad_y is None:
            grad_hidden = hidden.new_zeros(B, T, H)
        else:
            grad_hidden = grad_y.transpose(0, 1).contiguous()
        if grad_h_out is not None:
            grad_hidden[:, T - 1] += grad_h_out
        grad_z_all = hidden.new_empty(T, B, H)
        grad_ln_out = hidden.new_empty(S, T, B, H)  # dL/d(layer-norm output), for its gain and bias
        grad_h_in = hidden.new_zeros(B, H)
        grad_A = grad_A_out  # dL/dA at the current chunk's end

        for chunk in reversed(chunks):
            start, stop, A = chunk.start, chunk.stop, chunk.A_init
            K = stop - start
            block = hidden[:, start:stop]
            weights, init_coef = chunk.weights, chunk.init_coef
            grad_A_init = None
            if grad_A is not None:
                # A_end = g_K A_init + sum_tau w[K, tau] h(tau) h(tau)^T
                sym = grad_A + grad_A.transpose(1, 2)
                grad_hidden[:, start:stop] += weights[:, K, :, None] * torch.bmm(block, sym)
                if chunk.A_init is not None:
                    grad_A_init = grad_A * init_coef[:, K, None, None]
            if A is not None:
                init_rows, init_queries = [], []
            for j in reversed(range(K)):
                t = start + j
                past = hidden[:, start:t]
                grad_past = grad_hidden[:, start:t]
                grad_q = grad_hidden[:, t]
                grad_z = grad_z_all[t]
                for s in reversed(range(S)):
                    q_out = queries[s + 1, t] if s + 1 < S else hidden[:, t]
                    grad_u = threshold_backward(grad_q, q_out, 0, grad_input=grad_ln_out[s, t])
                    if layer_norm:
                        grad_u = torch.ops.aten.native_layer_norm_backward(
                            grad_u, pre_act[s, t], norm_shape, mean[s, t], rstd[s, t], ln_weight, ln_bias, ln_mask
                        )[0]
                    if s == S - 1:
                        grad_z.copy_(grad_u)
                    else:
                        grad_z += grad_u
                    q = queries[s, t]
                    grad_q = None  # dL/dh_s(t) through the fast-weight read
                    if j > 0:
                        # read = sum_tau w h(tau) (h(tau) . q): d/dq and d/dh(tau)
                        back = torch.bmm(grad_u.unsqueeze(1), past.transpose(1, 2)).mul_(weights[:, j : j + 1, :j])
                        grad_q = torch.bmm(back, past).squeeze(1)
                        grad_past.addcmul_(chunk.scores[s, :, j, :j].unsqueeze(2), grad_u.unsqueeze(1))
                        grad_past.addcmul_(back.transpose(1, 2), q.unsqueeze(1))
                    if A is not None:
                        scaled = grad_u * init_coef[:, j : j + 1]
                        init_rows.append(scaled)
                        init_queries.append(q)
                        from_init = torch.bmm(scaled.unsqueeze(1), A).squeeze(1)
                        grad_q = from_init if grad_q is None else grad_q + from_init
                    if grad_q is None:
                        grad_q = torch.zeros_like(q)
                    if s == 0:  # h_0 = relu(z)
                        grad_z += torch.ops.aten.threshold_backward(grad_q, q, 0)
                if keep is not None:
                    grad_z_kept = grad_z * keep[t, :, None]
                else:
                    grad_z_kept = grad_z
                if t > 0:
                    grad_hidden[:, t - 1].addmm_(grad_z_kept, W)
                else:
                    grad_h_in = grad_z_kept @ W
            if A is not None:
                rows = torch.stack(init_rows, dim=1)  # [B, K*S, H]
                cols = torch.stack(init_queries, dim=1)
                from_reads = torch.bmm(rows.transpose(1, 2), cols)  # sum g_j grad_u q^T
                grad_A_init = from_reads if grad_A_init is None else grad_A_init + from_reads
            grad_A = grad_A_init

        # z(t) = W h_prev(t) + ...: one matmul over all steps for dL/dW.
        h_prev_all = torch.cat([h_in.unsqueeze(0), hidden[:, :-1].transpose(0, 1)], dim=0)
        if keep is not None:
            h_prev_all = h_prev_all * keep[:, :, None]
        grad_W = grad_z_all.reshape(-1, H).t() @ h_prev_all.reshape(-1, H)
        grad_ln_weight = grad_ln_bias = None
        if layer_norm:
            if ctx.needs_input_grad[4]:
                grad_ln_weight = (grad_ln_out * ((pre_act - mean) * rstd)).sum(dim=(0, 1, 2))
            if ctx.needs_input_grad[5]:
                grad_ln_bias = grad_ln_out.sum(dim=(0, 1, 2))
        grad_A_in = grad_A if (use_A_in and ctx.needs_input_grad[2]) else None  # None reads as zero
        return (grad_z_all, grad_h_in, grad_A_in, grad_W, grad_ln_weight, grad_ln_bias) + (None,) * 9


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
    :return: ``(y [T, B, H], h_T [B, H], A_T [B, H, H])``.
    """
    use_A_in = A is not None
    if A is None:
        A = zx.new_zeros(0)
    if keep is not None:
        keep = keep.to(zx.dtype)
    if write_mask is not None:
        write_mask = write_mask.to(zx.dtype)
    return FastWeightsScan.apply(
        zx,
        h,
        A,
        W,
        ln_weight,
        ln_bias,
        keep,
        write_mask,
        float(decay),
        float(fast_lr),
        int(inner_steps),
        max(1, int(chunk_size)),
        use_A_in,
        layer_norm,
        float(eps),
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One time step in matrix form (the RL rollout case, ``T = 1``): a handful of fused ops.

    Same arguments and result as :func:`fast_weights_scan` with ``zx`` of length 1;
    differentiable through autograd.
    """
    zx = zx[0]
    if keep is not None:
        keep = keep[0].to(zx.dtype)
        h = h * keep[:, None]
        A = None if A is None else A * keep[:, None, None]
    z = torch.addmm(zx, h, W.t())
    q = torch.relu(z)
    for _ in range(inner_steps):
        u = z if A is None else torch.baddbmm(z.unsqueeze(1), q.unsqueeze(1), A.transpose(1, 2)).squeeze(1)
        if layer_norm:
            u = torch.layer_norm(u, u.shape[-1:], ln_weight, ln_bias, eps)
        q = torch.relu(u)
    if write_mask is None:  # Eq. 1: A <- decay A + fast_lr h h^T
        A_new = torch.einsum("bi,bj->bij", q, q) * fast_lr if A is None else torch.baddbmm(
            A, q.unsqueeze(2), q.unsqueeze(1), beta=decay, alpha=fast_lr
        )
    else:
        write = write_mask[0].to(zx.dtype)[:, None, None]
        outer = torch.einsum("bi,bj->bij", q, q) * (fast_lr * write)
        A_new = outer if A is None else A * (1.0 - write * (1.0 - decay)) + outer
    return q.unsqueeze(0), q, A_new
