"""RMS norm in the inner loop (``rms_norm``), held to independent float64 computations: the norm
and its backward against autograd of the formula, every op against the reference (values and
gradients), the reference against a loop written out per example, the core's rollout step
against its sequence, and the bad values. (The compiled loops against the Python ones, bitwise,
with RMS norm too: tests/test_compiled_scan.py.)"""

from __future__ import annotations

import pytest
import torch

from fw_agents.memory import FastWeightsRNN, make_memory
from fw_agents.memory.ops import fast_weights_reference, fast_weights_scan, fast_weights_step, fused_recurrent
from fw_agents.memory.ops.norms import normalize, normalize_backward, statistics
from fw_agents.memory.ops.step import fast_weights_step_into
from test_fast_weights import MODES_AND_CHUNKS as MODES, use_mode
from test_fast_weights import assert_same_values_and_gradients, op_inputs

DT = torch.float64


def _rms_formula(u, gain, bias, eps=1e-5):
    return gain * u / torch.sqrt((u * u).mean(-1, keepdim=True) + eps) + bias


@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("affine", [True, False])
def test_the_norm_and_its_backward_are_the_formulas(rms, affine):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(4, 3, 9, generator=g, dtype=DT, requires_grad=True)
    gain = 0.5 + torch.rand(9, generator=g, dtype=DT) if affine else None
    bias = torch.randn(9, generator=g, dtype=DT) if affine else None
    out = normalize(u, gain, bias, 1e-5, rms)
    if rms:
        expected = _rms_formula(u, 1.0 if gain is None else gain, 0.0 if bias is None else bias)
    else:
        expected = torch.nn.functional.layer_norm(u, (9,), gain, bias, 1e-5)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    cotangent = torch.randn(out.shape, generator=g, dtype=DT)
    (grad,) = torch.autograd.grad(expected, u, cotangent)
    mean, rstd = statistics(u.detach(), 1e-5, rms)
    torch.testing.assert_close(normalize_backward(cotangent, u.detach(), mean, rstd, gain, bias, rms), grad,
                               rtol=1e-10, atol=1e-12)  # fmt: skip


def test_relu_of_the_rms_norm_keeps_a_non_negative_state():
    # the reason for the option: a state driven by W h = s h alone (a blank input) passes through
    # relu(RMS(.)) as h / rms(h), where relu(LN(.)) zeroes every unit below the mean
    h = torch.relu(torch.randn(5, 16, dtype=DT))
    ones, zeros = torch.ones(16, dtype=DT), torch.zeros(16, dtype=DT)
    kept = torch.relu(normalize(0.05 * h, ones, zeros, 0.0, rms=True))
    torch.testing.assert_close(kept, h / h.square().mean(-1, keepdim=True).sqrt())
    rewritten = torch.relu(normalize(0.05 * h, ones, zeros, 0.0, rms=False))
    assert bool(((rewritten == 0) & (h > 0)).any())


def _op_inputs(T=7, B=4, H=6, seed=1):
    tensors, starts, g = op_inputs(T, B, H, seed)
    return tensors, starts, (torch.rand(T, B, generator=g) > 0.3).to(DT)


def test_the_reference_is_the_loop_written_out():
    (zx, h, A, W, gain, bias), starts, _ = _op_inputs()
    y, _, A_T = fast_weights_reference(zx, h, A, W, gain, bias, decay=0.9, fast_lr=0.3, inner_steps=2,
                                       episode_starts=starts, rms_norm=True)  # fmt: skip
    ys = []
    for t in range(zx.shape[0]):
        keep = (starts[t] < 0.5).to(DT)
        h, A = h * keep[:, None], A * keep[:, None, None]
        rows = []
        for b in range(zx.shape[1]):
            z = W @ h[b] + zx[t, b]
            hs = torch.relu(z)
            for _ in range(2):
                hs = torch.relu(_rms_formula(z + A[b] @ hs, gain, bias))
            rows.append(hs)
        h = torch.stack(rows)
        A = 0.9 * A + 0.3 * torch.einsum("bi,bj->bij", h, h)
        ys.append(h)
    torch.testing.assert_close(y, torch.stack(ys), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(A_T, A, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 3, 7])
@pytest.mark.parametrize("init", [True, False])
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_the_scan_matches_the_reference(chunk, init, inner_steps):
    tensors, starts, writes = _op_inputs()
    if not init:
        tensors[2] = None
    leaves = [t.requires_grad_() for t in tensors if t is not None]
    options = dict(decay=0.9, fast_lr=0.3, inner_steps=inner_steps, episode_starts=starts, write_mask=writes,
                   rms_norm=True)  # fmt: skip
    expected = fast_weights_reference(*tensors, **options)
    assert_same_values_and_gradients(expected, fast_weights_scan(*tensors, **options, chunk_size=chunk), leaves)


def test_the_step_and_the_step_into_match_the_reference():
    tensors, starts, writes = _op_inputs(T=1)
    starts[0, 2] = 1.0
    options = dict(decay=0.9, fast_lr=0.3, inner_steps=2, episode_starts=starts, write_mask=writes, rms_norm=True)
    leaves = [t.requires_grad_() for t in tensors]
    expected = fast_weights_reference(*tensors, **options)
    assert_same_values_and_gradients(expected, fast_weights_step(*tensors, **options), leaves)
    h_out, A_out = torch.empty(4, 6, dtype=DT), torch.empty(4, 6, 6, dtype=DT)
    with torch.no_grad():
        fast_weights_step_into(h_out, A_out, *tensors, **options)
    torch.testing.assert_close(h_out, expected[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(A_out, expected[2], rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not fused_recurrent.triton_available(), reason="triton is not installed")
def test_the_kernel_matches_the_reference(monkeypatch, one_thread):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    tensors, starts, writes = _op_inputs(T=6, B=3, H=5)
    leaves = [t.requires_grad_() for t in tensors]
    options = dict(decay=0.9, fast_lr=0.3, inner_steps=2, episode_starts=starts, write_mask=writes, rms_norm=True)
    expected = fast_weights_reference(*tensors, **options)
    got = fused_recurrent.fused_recurrent_fast_weights(*tensors, **options, chunk_size=2)
    for a, b in zip(expected, got):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    cotangents = [torch.randn_like(o) for o in expected]
    g_ref = torch.autograd.grad(sum((o * c).sum() for o, c in zip(expected, cotangents)), leaves)
    g_got = torch.autograd.grad(sum((o * c).sum() for o, c in zip(got, cotangents)), leaves)
    for a, b in zip(g_ref, g_got):  # the kernel's float64 gradients hold to ~1e-7, as with layer norm
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("time_scales", [1, 3])
def test_the_core_rollout_step_continues_the_sequence(mode, time_scales):
    torch.manual_seed(0)
    core = use_mode(FastWeightsRNN(4, 6, fast_share=0.8, decay=0.9, bias_correction=True, rms_norm=True,
                                   time_scales=time_scales).double(), mode)  # fmt: skip
    x = torch.randn(6, 3, 4, dtype=DT)
    starts = torch.zeros(6, 3, dtype=DT)
    starts[0], starts[3, 1] = 1.0, 1.0
    with torch.no_grad():
        y, state = core(x, None, starts)
        packed, ys = torch.zeros(3, core.state_size, dtype=DT), []
        for t in range(6):
            y_t, packed = core.forward_packed(x[t : t + 1], packed, starts[t : t + 1], core.state_size)
            ys.append(y_t)
        reference = use_mode(core, "reference")(x, None, starts)[0]
    torch.testing.assert_close(torch.cat(ys), y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y, reference, rtol=1e-10, atol=1e-10)
    for a, b in zip(core.unpack_state(packed), state):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_rms_norm_needs_the_norm_it_replaces():
    with pytest.raises(ValueError, match="rms_norm=True with layer_norm=False"):
        make_memory("fastweights", 3, 4, rms_norm=True, layer_norm=False)
    with pytest.raises(ValueError, match="rms_norm"):
        make_memory("fastweights", 3, 4, rms_norm="yes")
    assert "rms_norm=True" in repr(make_memory("fastweights", 3, 4, rms_norm=True))
