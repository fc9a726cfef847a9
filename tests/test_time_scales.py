"""Several fast-memory time scales (``time_scales``, a λ and η per group of rows of ``A``), held
to independent float64 loops: the ops (reference, scan at every chunk size, step, step into)
against a loop written out row by row, the core with bias correction against a hand-counted
loop, the rollout step against the sequence, and the bad values."""

from __future__ import annotations

import pytest
import torch

from fw_agents.memory import FastWeightsRNN, make_memory
from fw_agents.memory.ops import fast_weights_reference, fast_weights_scan, fast_weights_step
from fw_agents.memory.ops import fused_recurrent, time_scales
from fw_agents.memory.ops.step import fast_weights_step_into
from test_fast_weights import MODES_AND_CHUNKS as MODES, use_mode
from test_fast_weights import assert_same_values_and_gradients, op_inputs

DT = torch.float64
DECAYS, RATES = (0.95, 0.8, 0.5), (0.3, 0.1, 0.7)


def _op_inputs(T=7, B=4, H=7, seed=0):
    tensors, starts, g = op_inputs(T, B, H, seed)
    starts[T - 1, 0] = 1.0
    resets = torch.zeros(T, B, dtype=DT)
    resets[min(2, T - 1), 3] = 1.0
    return tensors, starts, resets, g


def row_by_row_loop(zx, h, A, W, gain, bias, decays, rates, starts, writes):
    """Eq. 1 and 5 with row ``i`` of ``A`` kept by ``decays[g]`` and written with ``rates[g]``,
    ``g = ⌊i G / H⌋``, one batch row and one row of ``A`` at a time (S = 1, layer norm)."""
    T, B, H = zx.shape
    G = len(decays)
    ys = []
    for t in range(T):
        h_next, A_next = [], []
        for b in range(B):
            hb, Ab = (torch.zeros_like(h[b]), torch.zeros_like(A[b])) if starts[t, b] > 0.5 else (h[b], A[b])
            z = W @ hb + zx[t, b]
            hb = torch.relu(torch.layer_norm(z + Ab @ torch.relu(z), (H,), gain, bias, 1e-5))
            rows = []
            for i in range(H):
                g, w = i * G // H, writes[t, b, i * G // H]
                rows.append((1 - w * (1 - decays[g])) * Ab[i] + rates[g] * w * hb[i] * hb)
            h_next.append(hb)
            A_next.append(torch.stack(rows))
        h, A = torch.stack(h_next), torch.stack(A_next)
        ys.append(h)
    return torch.stack(ys), h, A


def test_the_reference_is_the_row_by_row_loop():
    tensors, starts, _, g = _op_inputs()
    writes = torch.rand(7, 4, 3, generator=g, dtype=DT) * 2.0  # a weight per step, row and time scale
    got = fast_weights_reference(*tensors, decay=DECAYS, fast_lr=RATES, inner_steps=1, episode_starts=starts,
                                 write_mask=writes)  # fmt: skip
    expected = row_by_row_loop(*tensors, DECAYS, RATES, starts, writes)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 3, 7])
@pytest.mark.parametrize("inner_steps", [1, 2])
@pytest.mark.parametrize("writes", [None, "per step", "per time scale"])
@pytest.mark.parametrize("init", [True, False])
def test_the_scan_matches_the_reference(chunk, inner_steps, writes, init):
    tensors, starts, resets, g = _op_inputs()
    if not init:
        tensors[2] = None
    mask = {None: None, "per step": (torch.rand(7, 4, generator=g) > 0.3).to(DT),
            "per time scale": torch.rand(7, 4, 3, generator=g, dtype=DT) * 2.0}[writes]  # fmt: skip
    leaves = [t.requires_grad_() for t in tensors if t is not None]
    options = dict(decay=DECAYS, fast_lr=RATES, inner_steps=inner_steps, episode_starts=starts, write_mask=mask,
                   hidden_resets=resets)  # fmt: skip
    expected = fast_weights_reference(*tensors, **options)
    assert_same_values_and_gradients(expected, fast_weights_scan(*tensors, **options, chunk_size=chunk), leaves)


@pytest.mark.parametrize("init", [True, False])
def test_the_step_and_the_step_into_match_the_reference(init):
    tensors, starts, resets, g = _op_inputs(T=1)
    if not init:
        tensors[2] = None
    starts[0, 2] = 1.0
    options = dict(decay=DECAYS, fast_lr=RATES, inner_steps=2, episode_starts=starts, hidden_resets=resets,
                   write_mask=torch.rand(1, 4, 3, generator=g, dtype=DT) * 2.0)  # fmt: skip
    leaves = [t.requires_grad_() for t in tensors if t is not None]
    expected = fast_weights_reference(*tensors, **options)
    assert_same_values_and_gradients(expected, fast_weights_step(*tensors, **options), leaves)
    if init:
        h_out, A_out = torch.empty(4, 7, dtype=DT), torch.empty(4, 7, 7, dtype=DT)
        with torch.no_grad():
            fast_weights_step_into(h_out, A_out, *tensors, **options)
        torch.testing.assert_close(h_out, expected[1], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(A_out, expected[2], rtol=1e-12, atol=1e-12)


def test_one_time_scale_is_the_float_op_exactly():
    tensors, starts, resets, _ = _op_inputs()
    options = dict(inner_steps=1, episode_starts=starts, hidden_resets=resets)
    for op in (fast_weights_reference, fast_weights_scan):
        for a, b in zip(op(*tensors, decay=0.9, fast_lr=0.2, **options), op(*tensors, decay=(0.9,), fast_lr=[0.2], **options)):
            assert torch.equal(a, b)


def _core(time_scales=3, **options):
    torch.manual_seed(0)
    core = FastWeightsRNN(4, 7, fast_share=0.8, decay=0.9, time_scales=time_scales, **options).double()
    with torch.no_grad():
        core.W.weight.add_(0.2 * torch.randn(7, 7, dtype=DT))
        core.ln.weight.uniform_(0.5, 1.5)
    return core


@pytest.mark.parametrize("mode", MODES)
def test_the_core_reads_each_time_scale_bias_corrected(mode):
    """λ_g = 1 - (1-λ)·2^g, η_g = share·(1-λ_g)/H, and row i's read divided by 1 - λ_g^n (n writes
    since the episode's start): the hand-counted loop with the *uncorrected* A."""
    core = use_mode(_core(bias_correction=True), mode)
    assert core.decays == pytest.approx((0.9, 0.8, 0.6))
    T, B, H = 9, 3, 7
    x = torch.randn(T, B, 4, dtype=DT, generator=torch.Generator().manual_seed(1))
    starts = torch.zeros(T, B, dtype=DT)
    starts[4, 1] = starts[6, 2] = 1.0
    lam = torch.tensor([core.decays[i * 3 // H] for i in range(H)], dtype=DT)
    eta = 0.8 * (1 - lam) / H
    with torch.no_grad():
        y, (h, A, filled) = core(x, None, starts)
        h_ref, A_raw, n, ys = torch.zeros(B, H, dtype=DT), torch.zeros(B, H, H, dtype=DT), torch.zeros(B, dtype=DT), []
        for t in range(T):
            keep = starts[t] < 0.5
            h_ref, A_raw, n = h_ref * keep[:, None], A_raw * keep[:, None, None], n * keep
            share = 1 - lam[None, :] ** n[:, None]  # [B, H], 0 before the first write
            A_read = torch.where(share[:, :, None] > 0, A_raw / share.clamp(min=1e-300)[:, :, None], 0.0)
            z = h_ref @ core.W.weight.T + core.C(x[t])
            h_ref = torch.relu(core.ln(z + torch.einsum("bij,bj->bi", A_read, torch.relu(z))))
            A_raw = lam[None, :, None] * A_raw + eta[None, :, None] * torch.einsum("bi,bj->bij", h_ref, h_ref)
            n = n + 1
            ys.append(h_ref)
    torch.testing.assert_close(y, torch.stack(ys), rtol=1e-10, atol=1e-10)
    share = 1 - lam[None, :] ** n[:, None]
    torch.testing.assert_close(A, A_raw / share[:, :, None], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(filled, 1 - torch.tensor(core.decays, dtype=DT)[None, :] ** n[:, None])


@pytest.mark.parametrize("mode", ["auto", "scan", "reference"])
@pytest.mark.parametrize("bias_correction", [True, False])
def test_the_rollout_step_continues_the_sequence(mode, bias_correction):
    core = _core(bias_correction=bias_correction, mode=mode)
    T, B = 6, 3
    x = torch.randn(T, B, 4, dtype=DT, generator=torch.Generator().manual_seed(2))
    starts = torch.zeros(T, B, dtype=DT)
    starts[0] = 1.0
    starts[3, 1] = 1.0
    with torch.no_grad():
        y, state = core(x, None, starts)
        packed, ys = torch.zeros(B, core.state_size, dtype=DT), []
        for t in range(T):
            y_t, packed = core.forward_packed(x[t : t + 1], packed, starts[t : t + 1], core.state_size)
            ys.append(y_t)
    torch.testing.assert_close(torch.cat(ys), y, rtol=1e-12, atol=1e-12)
    for a, b in zip(core.unpack_state(packed), state):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_the_filled_share_has_one_slot_per_time_scale():
    assert make_memory("fastweights", 3, 8, bias_correction=True, time_scales=4).state_shapes == ((8,), (8, 8), (4,))
    assert make_memory("fastweights", 3, 8, time_scales=4).state_shapes == ((8,), (8, 8))


def test_the_time_scales_halve_the_horizon():
    core = FastWeightsRNN(3, 8, decay=0.95, time_scales=4)
    assert core.decays == pytest.approx((0.95, 0.9, 0.8, 0.6))
    assert core.op_fast_lr == 0.5  # the paper's η is absolute: the same in every time scale
    assert FastWeightsRNN(3, 8, fast_share=0.5, decay=0.95, time_scales=4).op_fast_lr == pytest.approx(
        tuple(0.5 * (1 - d) / 8 for d in (0.95, 0.9, 0.8, 0.6))
    )
    assert time_scales.rows_by_scale(3, 8).tolist() == [0, 0, 0, 1, 1, 1, 2, 2]


@pytest.mark.parametrize(
    "options,needle",
    [
        (dict(time_scales=0), "time_scales"),
        (dict(time_scales=2.0), "time_scales"),
        (dict(time_scales="4"), "time_scales"),
        (dict(time_scales=6, decay=0.95), r"time_scales=6 with decay=0.95: accepted 1 to 5"),
        (dict(time_scales=2, decay=0.5), r"accepted 1 to 1"),
        (dict(time_scales=2, mode="triton"), "mode='triton' runs one time scale"),
    ],
)
def test_bad_time_scales_raise(options, needle):
    with pytest.raises(ValueError, match=needle):
        make_memory("fastweights", 3, 4, **options)


def test_bad_op_arguments_raise():
    tensors, _, _, _ = _op_inputs()
    with pytest.raises(ValueError, match="give one fast_lr per decay"):
        fast_weights_scan(*tensors, decay=(0.9, 0.8), fast_lr=(0.1, 0.2, 0.3), inner_steps=1)
    with pytest.raises(ValueError, match="give a decay per time scale"):
        fast_weights_reference(*tensors, decay=0.9, fast_lr=(0.1, 0.2), inner_steps=1)
    with pytest.raises(ValueError, match=r"write_mask must be \[T, B\] = \(7, 4\) \(one time scale\), got \(7, 4, 1\)"):
        fast_weights_scan(*tensors, decay=0.9, fast_lr=0.1, inner_steps=1, write_mask=torch.ones(7, 4, 1, dtype=DT))
    with pytest.raises(ValueError, match="runs one time scale"):
        fused_recurrent.fused_recurrent_fast_weights(*tensors, decay=DECAYS, fast_lr=RATES, inner_steps=1)
