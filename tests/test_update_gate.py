"""The update gate (``update_gate``, docs/fast_weights_learning.md §13): the reference loop computes an
independent per-row loop's numbers, its gradients are the finite differences' (float64
``gradcheck``), the core's rollout steps reproduce its sequence, the gate's parameters train, and
the modes that do not run it are refused in one line."""

from __future__ import annotations

import pytest
import torch

from fw_agents.memory import FastWeightsRNN
from fw_agents.memory.ops import fast_weights_reference

DT = torch.float64


def _inputs(T=6, B=3, H=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        zx=torch.randn(T, B, H, generator=g, dtype=DT),
        h=torch.rand(B, H, generator=g, dtype=DT),
        A=0.1 * torch.randn(B, H, H, generator=g, dtype=DT),
        W=0.05 * torch.eye(H, dtype=DT) + 0.1 * torch.randn(H, H, generator=g, dtype=DT),
        ln_weight=torch.linspace(0.5, 1.5, H, dtype=DT),
        ln_bias=torch.linspace(-0.2, 0.3, H, dtype=DT),
        gate_x=torch.randn(T, B, H, generator=g, dtype=DT),
        gate_weight=0.5 * torch.randn(H, H, generator=g, dtype=DT),
    )


def _by_rows(zx, h, A, W, ln_weight, ln_bias, gate_x, gate_weight, decay, fast_lr, starts):
    """Each row on its own, vectors only: the equations of §13 written out (no layer-norm call)."""
    T, B, H = zx.shape
    ys = torch.zeros(T, B, H, dtype=DT)
    for b in range(B):
        hb, Ab = h[b].clone(), A[b].clone()
        for t in range(T):
            if starts[t, b] > 0.5:
                hb, Ab = torch.zeros(H, dtype=DT), torch.zeros(H, H, dtype=DT)
            z = W @ hb + zx[t, b]
            u = z + Ab @ torch.relu(z)  # one inner step, h_0 = relu(z)
            normed = (u - u.mean()) / torch.sqrt(u.var(unbiased=False) + 1e-5) * ln_weight + ln_bias
            candidate = torch.relu(normed)
            gate = 1.0 / (1.0 + torch.exp(-(gate_weight @ hb + gate_x[t, b])))
            hb = (1.0 - gate) * hb + gate * candidate
            Ab = decay * Ab + fast_lr * torch.outer(hb, hb)
            ys[t, b] = hb
    return ys


def test_the_gated_reference_is_an_independent_per_row_loop():
    inputs = _inputs()
    starts = torch.zeros(6, 3, dtype=DT)
    starts[2, 1] = 1.0
    y, h_T, A_T = fast_weights_reference(**inputs, decay=0.9, fast_lr=0.3, inner_steps=1, episode_starts=starts)
    expected = _by_rows(**inputs, decay=0.9, fast_lr=0.3, starts=starts)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_T, expected[-1], rtol=1e-12, atol=1e-12)
    ungated, _, _ = fast_weights_reference(**{**inputs, "gate_x": None, "gate_weight": None}, decay=0.9, fast_lr=0.3,
                                           inner_steps=1, episode_starts=starts)  # fmt: skip
    assert not torch.allclose(ungated, y)  # the gate changes the numbers: the test can fail


def test_the_gated_reference_gradients_are_the_finite_differences():
    inputs = {k: v.requires_grad_() for k, v in _inputs(T=4, B=2, H=4).items()}
    names = list(inputs)

    def run(*tensors):
        y, h_T, A_T = fast_weights_reference(*tensors[:6], decay=0.9, fast_lr=0.3, inner_steps=2,
                                             gate_x=tensors[6], gate_weight=tensors[7])  # fmt: skip
        return y, A_T

    assert names[6:] == ["gate_x", "gate_weight"]
    assert torch.autograd.gradcheck(run, tuple(inputs.values()), eps=1e-6, atol=1e-7)


def _core(**options):
    torch.manual_seed(0)
    return FastWeightsRNN(3, 6, fast_share=0.5, update_gate=True, **options).to(DT)


def _sequence(T=9, B=3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, 3, generator=g, dtype=DT)
    starts = torch.zeros(T, B, dtype=DT)
    starts[0, :] = 1.0
    starts[4, 1] = 1.0
    return x, starts


@pytest.mark.parametrize("bias_correction", [False, True])
def test_rollout_steps_reproduce_the_sequence(bias_correction, rollout_steps):
    core = _core(bias_correction=bias_correction)
    x, starts = _sequence()
    with torch.no_grad():
        y, state = core(x, None, starts)
    steps, packed = rollout_steps(core, x, starts)
    torch.testing.assert_close(steps, y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(packed, core.pack_state(state, core.state_size), rtol=1e-12, atol=1e-12)


def test_the_gates_parameters_get_gradients_and_a_start_forgets_the_past():
    core = _core(bias_correction=True)
    x, starts = _sequence()
    y, _ = core(x, None, starts)
    y.square().sum().backward()
    for name in ("G_h.weight", "G_x.weight", "G_x.bias", "W.weight", "C.weight"):
        grad = dict(core.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    with torch.no_grad():  # row 1 restarts at step 4: from there it is a fresh run of its own inputs
        fresh, _ = core(x[4:, 1:2], None, None)
    torch.testing.assert_close(y[4:, 1:2].detach(), fresh, rtol=1e-12, atol=1e-12)
    assert "update_gate=True" in repr(core)


@pytest.mark.parametrize("mode", ["scan", "triton"])
def test_modes_that_do_not_run_the_gate_are_refused_in_one_line(mode):
    with pytest.raises(ValueError, match=rf"update_gate=True with mode='{mode}': .*mode 'auto' or 'reference'"):
        FastWeightsRNN(3, 6, update_gate=True, mode=mode)


def test_only_the_reference_loop_takes_the_gate_and_the_others_refuse_it():
    from fw_agents.memory.ops import fast_weights_scan, fast_weights_step

    inputs = _inputs(T=1)
    tensors = [inputs[k] for k in ("zx", "h", "A", "W", "ln_weight", "ln_bias")]
    gate = dict(gate_x=inputs["gate_x"], gate_weight=inputs["gate_weight"])
    for op in (fast_weights_scan, fast_weights_step):
        with pytest.raises(ValueError, match="gate_x and gate_weight .* run in fast_weights_reference only"):
            op(*tensors, decay=0.9, fast_lr=0.3, inner_steps=1, **gate)
    with pytest.raises(ValueError, match="gate_x and gate_weight go together"):
        fast_weights_reference(*tensors, decay=0.9, fast_lr=0.3, inner_steps=1, gate_x=inputs["gate_x"])
