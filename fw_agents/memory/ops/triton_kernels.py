"""The fused Triton kernels of the fast-weights recurrence, forward and backward (one program per
sequence, ``A`` and ``W`` on chip). :mod:`fw_agents.memory.ops.fused_recurrent` launches them and
holds the autograd Function and the public op; ``fused_recurrent.md`` derives the backward.
The warps per program they launch with are here too (:data:`NUM_WARPS`, :func:`launch_options`).

They are plain functions: ``fused_recurrent`` decorates them with ``triton.jit`` on first use, for
compiled or interpreted (``TRITON_INTERPRET=1``) execution, whichever is asked for then. They
use only Triton built-ins (``tl.reduce`` with ``_ADD`` rather than ``tl.sum``), which the
interpreter can call even when triton was imported without the variable.

Storage: every hidden-sized axis in memory has the padded size ``BH`` (a power of two, the
host pads with zeros when ``H`` is not one), so no load or store needs a mask; ``H``, the
logical size, enters only the layer-norm statistics. Padded lanes stay exactly zero (their
rows and columns of ``W``, ``A``, the gain and bias are zero). Register budget: a
``[BH, BH]`` tile of offsets costs as much as a tile of values (of pointers, twice), so
pointer tiles used inside or after the time loop are built there from 1-D row pointers
that depend on the loop, leaving nothing of that size loop-invariant to keep.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

try:  # optional dependency: pip install "fw-agents[gpu]"
    import triton.language as tl
except ImportError:  # pragma: no cover - fused_recurrent refuses to run without it
    tl = None

_ADD = tl.standard._sum_combine if tl is not None else None

#: Warps per program by padded hidden size, (forward, backward). Chosen without a GPU from an
#: offline sm_90 compile with the launcher's specialisations (``benchmarks/triton_resources.py``,
#: table in ``fused_recurrent.md``): the fewest warps whose registers hold the tiles. At 128 the
#: forward needs 195 registers a thread (every option on: 231) and spills nothing, a PPO
#: update's backward spills 96 B (16 warps: 224 B); at 64 and below nothing spills.
#: ``benchmarks/gpu_check.py`` times the others.
NUM_WARPS = {16: (2, 2), 32: (2, 2), 64: (4, 4), 128: (8, 8)}
_warps_override: list[tuple[int, int] | None] = [None]


@contextlib.contextmanager
def launch_options(num_warps_forward: int, num_warps_backward: int) -> Iterator[None]:
    """Launch the kernels with these warps per program inside the block (for tuning sweeps:
    ``benchmarks/gpu_check.py``). Compiled mode only: the interpreter ignores warps."""
    for n in (num_warps_forward, num_warps_backward):
        if n not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"num_warps must be a power of two from 1 to 32, got {n!r}")
    previous = _warps_override[0]
    _warps_override[0] = (num_warps_forward, num_warps_backward)
    try:
        yield
    finally:
        _warps_override[0] = previous


def _launch_options(block: int, backward: bool) -> dict:
    warps = _warps_override[0] or NUM_WARPS[max(block, 16)]
    # FMA contraction asked for explicitly: Triton 3.9 warns that its default turns it off in 3.10
    return {"num_warps": warps[1] if backward else warps[0], "enable_fp_fusion": True}


def _fw_forward_kernel(
    zx_ptr, h0_ptr, a0t_ptr, wt_ptr, lnw_ptr, lnb_ptr, start_ptr, write_ptr, reset_ptr,
    y_ptr, hs_ptr, u_ptr, ckpt_ptr, ht_ptr, at_ptr,
    T, B, H, decay, fast_lr, eps,
    S: tl.constexpr, BH: tl.constexpr, K: tl.constexpr, ACC: tl.constexpr,
    LAYER_NORM: tl.constexpr, RMS_NORM: tl.constexpr, HAS_A0: tl.constexpr, HAS_START: tl.constexpr,
    HAS_WRITE: tl.constexpr, HAS_RESET: tl.constexpr, SAVE: tl.constexpr, STORE_AT: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)  # offsets in int64: ckpt and the saved states pass 2^31 elements at large T*B
    nb = b * 0 + B  # B as int64 (an i32 argument): t * B itself passes 2^31 at large T*B, small H
    rows = tl.arange(0, BH)
    cols = tl.arange(0, BH)
    # Tiles held transposed (Wt[i, j] = W[j, i], the host passes W^T and A^T contiguous) so
    # that every mat-vec reduces over axis 0 of a row-major (coalesced) tile: with Triton's
    # layout for it the result vectors are spread over the threads, not replicated in each.
    # (Loading W and A with transposed addresses instead makes the compiler anchor the
    # whole kernel on the load's layout, where the mat-vecs' results are replicated.)
    mat = rows[:, None] * BH + cols[None, :]
    Wt = tl.load(wt_ptr + mat).to(ACC)
    if LAYER_NORM:
        lane = cols < H  # the layer norm's statistics are over the H real lanes
        gain = tl.load(lnw_ptr + cols).to(ACC)
        beta = tl.load(lnb_ptr + cols).to(ACC)
    h = tl.load(h0_ptr + b * BH + cols).to(ACC)
    if HAS_A0:
        At = tl.load(a0t_ptr + b * BH * BH + mat).to(ACC)
    else:
        At = tl.full((BH, BH), 0.0, ACC)
    if HAS_START:  # a start at t = 0 clears a carried NaN/inf exactly (0 * NaN would keep it)
        fresh = tl.load(start_ptr + b) > 0.5
        h = tl.where(fresh, 0.0, h)
        At = tl.where(fresh, 0.0, At)
    if HAS_RESET:  # so does a hidden reset at t = 0 for h (the scan and the reference clear it too)
        h = tl.where(tl.load(reset_ptr + b) > 0.5, 0.0, h)
    for t in range(T):
        if SAVE:
            if t % K == 0:  # A^T entering the chunk, before this step's reset
                ck_rows = ckpt_ptr + ((t // K) * nb + b) * BH * BH + rows * BH
                tl.store(ck_rows[:, None] + cols[None, :], At)
        # A_pre = keep A(t-1) is never formed: keep scales A's mat-vecs and the decay below
        keep = 1.0 - tl.load(start_ptr + t * nb + b).to(ACC) if HAS_START else 1.0
        h = h * keep
        if HAS_RESET:
            h = h * (1.0 - tl.load(reset_ptr + t * nb + b).to(ACC))
        z = tl.reduce(Wt * h[:, None], 0, _ADD) + tl.load(zx_ptr + (t * nb + b) * BH + cols).to(ACC)
        hs = tl.maximum(z, 0.0, propagate_nan=tl.PropagateNan.ALL)  # relu(NaN) = NaN, as torch.relu (NONE gives 0)
        for s in tl.static_range(S):
            u = z + keep * tl.reduce(At * hs[:, None], 0, _ADD)
            if SAVE:
                base = ((t * nb + b) * S + s) * BH
                tl.store(hs_ptr + base + cols, hs)
                tl.store(u_ptr + base + cols, u)
            if LAYER_NORM:
                if RMS_NORM:  # the root mean square alone (ops/norms.py)
                    diff = tl.where(lane, u, 0.0)
                else:
                    diff = tl.where(lane, u - tl.reduce(u, 0, _ADD) / H, 0.0)
                rstd = 1.0 / tl.sqrt(tl.reduce(diff * diff, 0, _ADD) / H + eps)
                u = diff * rstd * gain + beta
            hs = tl.maximum(u, 0.0, propagate_nan=tl.PropagateNan.ALL)
        h = hs
        tl.store(y_ptr + (t * nb + b) * BH + cols, h)
        if HAS_WRITE:
            w = tl.load(write_ptr + t * nb + b).to(ACC)
            At = (keep * (1.0 - w * (1.0 - decay))) * At + (fast_lr * w) * (h[:, None] * h[None, :])
        else:
            At = (keep * decay) * At + fast_lr * (h[:, None] * h[None, :])
    tl.store(ht_ptr + b * BH + cols, h)
    if STORE_AT:  # A itself (row-major) from the A^T tile
        at_cols = at_ptr + b * BH * BH + cols * BH
        tl.store(at_cols[None, :] + rows[:, None], At)


def _fw_backward_kernel(
    y_ptr, hs_ptr, u_ptr, ckpt_ptr, w_ptr, lnw_ptr, start_ptr, write_ptr, reset_ptr,
    gy_ptr, ght_ptr, gat_ptr,
    dzx_ptr, dh0_ptr, da0_ptr, dlnw_ptr, dlnb_ptr,
    T, B, H, decay, fast_lr, eps,
    S: tl.constexpr, BH: tl.constexpr, K: tl.constexpr, ACC: tl.constexpr,
    LAYER_NORM: tl.constexpr, RMS_NORM: tl.constexpr, HAS_START: tl.constexpr, HAS_WRITE: tl.constexpr,
    HAS_RESET: tl.constexpr, HAS_GY: tl.constexpr, HAS_GHT: tl.constexpr, HAS_GAT: tl.constexpr, STORE_DA0: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)  # offsets in int64: ckpt and the saved states pass 2^31 elements at large T*B
    nb = b * 0 + B  # B as int64 (an i32 argument): t * B itself passes 2^31 at large T*B, small H
    rows = tl.arange(0, BH)
    cols = tl.arange(0, BH)
    mat = rows[:, None] * BH + cols[None, :]
    kidx = tl.arange(0, K)
    W = tl.load(w_ptr + mat).to(ACC)
    if LAYER_NORM:
        lane = rows < H
        gain = tl.load(lnw_ptr + rows).to(ACC)
        dgain = tl.full((BH,), 0.0, ACC)
        dbeta = tl.full((BH,), 0.0, ACC)
    # dh: dL/dh(t) from the future; dA: dL/dA(t)
    if HAS_GHT:
        dh = tl.load(ght_ptr + b * BH + rows).to(ACC)
    else:
        dh = tl.full((BH,), 0.0, ACC)
    if HAS_GAT:
        dA = tl.load(gat_ptr + b * BH * BH + mat).to(ACC)
    else:
        # zeros laid out as W's load (the layout a loaded dA has). A splat constant gets the
        # layout of its first use instead, and the loop then converts between the two: a PPO
        # update's backward (no grad for A_T) spilled 560 B a thread at H = 128, now 96 B.
        # (0 * W is exactly 0 for a finite W; a non-finite W has made every gradient NaN.)
        dA = W * 0.0
    n_chunks = (T + K - 1) // K
    for cc in range(n_chunks):
        c = n_chunks - 1 - cc
        t0 = c * K
        n = tl.minimum(K, T - t0)
        ck_rows = ckpt_ptr + (c * nb + b) * BH * BH + rows * BH  # the checkpoint holds A_c^T
        Act = tl.load(ck_rows[:, None] + cols[None, :]).to(ACC)
        Hc = tl.load(
            y_ptr + ((t0 + kidx[:, None]) * nb + b) * BH + cols[None, :], mask=kidx[:, None] < n, other=0.0
        ).to(ACC)  # fmt: skip
        # A(t0 + j - 1) after step t0 + j's reset = G[j] A_c + sum_i Wt[j, i] h_i h_i^T
        Wt = tl.full((K, K), 0.0, ACC)
        G = tl.full((K,), 0.0, ACC)
        wv = tl.full((K,), 0.0, ACC)
        g = tl.full((), 1.0, ACC)
        d_prev = g
        w_prev = g * 0.0
        for j in range(n):
            t = t0 + j
            keep = 1.0 - tl.load(start_ptr + t * nb + b).to(ACC) if HAS_START else 1.0
            wv = keep * (d_prev * wv + tl.where(kidx == j - 1, fast_lr * w_prev, 0.0))
            g = keep * d_prev * g
            Wt = tl.where(kidx[:, None] == j, wv[None, :], Wt)
            G = tl.where(kidx == j, g, G)
            if HAS_WRITE:
                w_prev = tl.load(write_ptr + t * nb + b).to(ACC)
            else:
                w_prev = g * 0.0 + 1.0
            d_prev = 1.0 - w_prev * (1.0 - decay)
        for jj in range(n):
            j = n - 1 - jj
            t = t0 + j
            keep = 1.0 - tl.load(start_ptr + t * nb + b).to(ACC) if HAS_START else 1.0
            w = tl.load(write_ptr + t * nb + b).to(ACC) if HAS_WRITE else 1.0
            wrow = tl.reduce(tl.where(kidx[:, None] == j, Wt, 0.0), 0, _ADD)  # [K] over tau
            gj = tl.reduce(tl.where(kidx == j, G, 0.0), 0, _ADD)
            h_t = tl.load(y_ptr + (t * nb + b) * BH + rows).to(ACC)
            gh = dh
            if HAS_GY:
                gh = gh + tl.load(gy_ptr + (t * nb + b) * BH + rows).to(ACC)
            # A(t) = d A_pre + eta w h h^T
            gh = gh + (fast_lr * w) * (tl.reduce(dA * h_t[None, :], 1, _ADD) + tl.reduce(dA * h_t[:, None], 0, _ADD))
            dA = (1.0 - w * (1.0 - decay)) * dA
            dz = tl.full((BH,), 0.0, ACC)
            h_next = h_t
            for ss in tl.static_range(S):
                s = S - 1 - ss
                base = ((t * nb + b) * S + s) * BH
                hs = tl.load(hs_ptr + base + rows).to(ACC)
                u = tl.load(u_ptr + base + rows).to(ACC)
                gu = tl.where(h_next > 0.0, gh, 0.0)
                if LAYER_NORM:
                    if RMS_NORM:
                        diff = tl.where(lane, u, 0.0)
                    else:
                        diff = tl.where(lane, u - tl.reduce(u, 0, _ADD) / H, 0.0)
                    rstd = 1.0 / tl.sqrt(tl.reduce(diff * diff, 0, _ADD) / H + eps)
                    xhat = diff * rstd
                    dgain = dgain + gu * xhat
                    dbeta = dbeta + gu
                    gx = gu * gain
                    if RMS_NORM:  # RMS norm's backward has no mean(g) term
                        gu = tl.where(lane, rstd * (gx - xhat * (tl.reduce(gx * xhat, 0, _ADD) / H)), 0.0)
                    else:
                        gu = tl.where(
                            lane, rstd * (gx - tl.reduce(gx, 0, _ADD) / H - xhat * (tl.reduce(gx * xhat, 0, _ADD) / H)), 0.0
                        )  # fmt: skip
                dz = dz + gu
                dA = dA + gu[:, None] * hs[None, :]
                # dL/dh_s = A_pre^T gu, A_pre = gj A_c + sum_tau wrow[tau] h(tau) h(tau)^T
                proj = tl.reduce(Hc * gu[None, :], 1, _ADD)  # [K]: h(tau) . gu
                gh = gj * tl.reduce(Act * gu[None, :], 1, _ADD) + tl.reduce(Hc * (wrow * proj)[:, None], 0, _ADD)
                h_next = hs
            dz = dz + tl.where(h_next > 0.0, gh, 0.0)  # h_0 = relu(z)
            tl.store(dzx_ptr + (t * nb + b) * BH + rows, dz)
            dh = tl.reduce(W * dz[:, None], 0, _ADD)  # W^T dz
            if HAS_RESET:
                dh = dh * (1.0 - tl.load(reset_ptr + t * nb + b).to(ACC))
            if HAS_START:
                dh = dh * keep
                dA = dA * keep
    tl.store(dh0_ptr + b * BH + cols, dh)
    if STORE_DA0:
        da_rows = da0_ptr + b * BH * BH + rows * BH
        tl.store(da_rows[:, None] + cols[None, :], dA)
    if LAYER_NORM:
        tl.store(dlnw_ptr + b * BH + rows, dgain)
        tl.store(dlnb_ptr + b * BH + rows, dbeta)
