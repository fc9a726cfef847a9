"""Learned λ and η (``learned_memory``): the core computes the fixed core's numbers at the given
values, its gradients for λ and η are the finite differences' (float64 ``gradcheck``), the
rollout's steps reproduce the sequence, an optimizer moves them, and the bad settings are refused."""

from __future__ import annotations

import math

import pytest
import torch

from fw_agents.memory import FastWeightsRNN

DT = torch.float64


def _cores(**options):
    """A learned core and the fixed core it starts as, with the same weights (float64)."""
    torch.manual_seed(0)
    learned = FastWeightsRNN(3, 6, learned_memory=True, **options).to(DT)
    learned.reset_parameters()  # ρ and κ set in float64, not float32's rounding of them
    options.pop("memory_lr_scale", None)
    fixed = FastWeightsRNN(3, 6, **options).to(DT)
    fixed.load_state_dict({k: v for k, v in learned.state_dict().items() if k not in ("decay_logit", "log_eta")})
    with torch.no_grad():  # a gain and bias away from 1 and 0, so layer norm's parameters matter
        for core in (learned, fixed):
            core.ln.weight.copy_(torch.linspace(0.5, 1.5, 6, dtype=DT))
            core.ln.bias.copy_(torch.linspace(-0.2, 0.3, 6, dtype=DT))
    return learned, fixed


def _sequence(T=9, B=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, 3, generator=g, dtype=DT)
    starts = torch.zeros(T, B, dtype=DT)
    starts[0, :] = 1.0
    starts[4, 1] = 1.0
    return x, starts


@pytest.mark.parametrize("options", [
    dict(fast_share=0.5, decay=0.95, bias_correction=True),
    dict(fast_share=2.0, decay=0.8, bias_correction=False, memory_lr_scale=10.0),
    dict(fast_lr=0.3, decay=0.9, inner_steps=2, bias_correction=True),
])  # fmt: skip
def test_at_its_initial_values_the_learned_core_is_the_fixed_core(options):
    learned, fixed = _cores(**options)
    assert learned.learned_decay.item() == pytest.approx(options["decay"], rel=1e-12)
    assert learned.paper_fast_lr.item() == pytest.approx(fixed.paper_fast_lr, rel=1e-12)
    x, starts = _sequence()
    y, state = learned(x, None, starts)
    y0, state0 = fixed(x, None, starts)
    torch.testing.assert_close(y, y0, rtol=1e-12, atol=1e-12)
    for a, b in zip(state, state0):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("options", [
    dict(fast_share=0.5, decay=0.95, bias_correction=True),
    dict(fast_share=2.0, decay=0.8, bias_correction=False, memory_lr_scale=10.0),
    dict(fast_lr=0.3, decay=0.9, inner_steps=2, bias_correction=True, memory_lr_scale=3.0),
])  # fmt: skip
def test_the_gradients_of_lambda_and_eta_are_the_finite_differences(options):
    learned, _ = _cores(**options)
    x, starts = _sequence()
    with torch.no_grad():  # a carried state, so λ also acts on the A a sequence starts from
        warm, _ = _sequence(5, 3, seed=2)
        _, stored = learned(warm, None, None)

    def loss(rho, kappa):
        trained = {"decay_logit": rho, "log_eta": kappa}
        y, (h, A, *_) = torch.func.functional_call(learned, trained, (x, stored, starts))
        return (y * torch.linspace(-1, 1, 6, dtype=DT)).sum() + A.sum()  # outputs and final state both

    rho, kappa = learned.decay_logit.detach().clone(), learned.log_eta.detach().clone()
    assert torch.autograd.gradcheck(loss, (rho.requires_grad_(), kappa.requires_grad_()), eps=1e-6, atol=1e-7)


def test_the_gradients_are_the_derivatives_of_the_fixed_cores_output_in_lambda_and_eta():
    """An independent check: central differences of the *fixed* core in λ and in the share,
    through the chain rule of ``λ = sigmoid(gρ)``, ``η = exp(gκ)``."""
    g_scale, decay, share = 4.0, 0.9, 1.5
    learned, _ = _cores(fast_share=share, decay=decay, bias_correction=True, memory_lr_scale=g_scale)
    x, starts = _sequence()
    y, _ = learned(x, None, starts)
    y.sum().backward()

    def fixed_output(d, s):
        core = FastWeightsRNN(3, 6, fast_share=s, decay=d, bias_correction=True).to(DT)
        core.load_state_dict({k: v for k, v in learned.state_dict().items() if k not in ("decay_logit", "log_eta")})
        return core(x, None, starts)[0].sum().item()

    step = 1e-6
    d_decay = (fixed_output(decay + step, share) - fixed_output(decay - step, share)) / (2 * step)
    d_share = (fixed_output(decay, share + step) - fixed_output(decay, share - step)) / (2 * step)
    assert learned.decay_logit.grad.item() == pytest.approx(d_decay * decay * (1 - decay) * g_scale, rel=1e-6)
    assert learned.log_eta.grad.item() == pytest.approx(d_share * share * g_scale, rel=1e-6)


def test_rollout_steps_reproduce_the_sequence(rollout_steps):
    learned, _ = _cores(fast_share=0.5, decay=0.95, bias_correction=True)
    with torch.no_grad():  # moved away from the initial values, as after training
        learned.decay_logit.add_(-0.7)
        learned.log_eta.add_(0.4)
    x, starts = _sequence()
    with torch.no_grad():
        y, state = learned(x, None, starts)
    steps, packed = rollout_steps(learned, x, starts)
    torch.testing.assert_close(steps, y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(packed, learned.pack_state(state, learned.state_size), rtol=1e-12, atol=1e-12)


def test_an_optimizer_step_moves_lambda_and_eta_by_the_scaled_rate():
    for scale in (1.0, 10.0):
        learned, _ = _cores(fast_share=0.5, decay=0.95, bias_correction=True, memory_lr_scale=scale)
        assert {"decay_logit", "log_eta"} <= {name for name, _ in learned.named_parameters()}
        before = (learned.memory_lr_scale * learned.decay_logit).item()
        optimizer = torch.optim.Adam(learned.parameters(), lr=1e-3)
        x, starts = _sequence()
        learned(x, None, starts)[0].sum().backward()
        optimizer.step()
        moved = abs((learned.memory_lr_scale * learned.decay_logit).item() - before)
        assert moved == pytest.approx(1e-3 * scale, rel=1e-3)  # Adam's first step: lr per parameter
        assert 0.0 < learned.learned_decay.item() < 1.0 and learned.paper_fast_lr.item() > 0.0


def test_a_saved_learned_core_loads_its_trained_values():
    learned, _ = _cores(fast_share=0.5, decay=0.95)
    with torch.no_grad():
        learned.decay_logit.fill_(math.log(0.7 / 0.3))
    copy = FastWeightsRNN(3, 6, fast_share=0.5, decay=0.95, learned_memory=True).to(DT)
    copy.load_state_dict(learned.state_dict())
    assert copy.learned_decay.item() == pytest.approx(0.7)
    assert "learned_memory=True" in repr(copy)


@pytest.mark.parametrize("options, message", [
    (dict(time_scales=2), r"learned_memory=True with time_scales=2, mode='auto': .*one time scale"),
    (dict(mode="scan"), r"mode='scan': .*mode 'auto' or 'reference'"),
    (dict(mode="triton"), r"mode='triton'"),
])  # fmt: skip
def test_settings_it_does_not_run_are_refused_in_one_line(options, message):
    with pytest.raises(ValueError, match=message):
        FastWeightsRNN(3, 6, learned_memory=True, **options)


def test_a_memory_lr_scale_without_learned_memory_is_refused():
    with pytest.raises(ValueError, match=r"memory_lr_scale=10\.0 applies with learned_memory=True only"):
        FastWeightsRNN(3, 6, memory_lr_scale=10.0)
    with pytest.raises(ValueError, match=r"memory_lr_scale"):
        FastWeightsRNN(3, 6, learned_memory=True, memory_lr_scale=0.0)


def test_only_the_reference_loop_takes_a_learned_decay_and_the_others_refuse_it():
    from fw_agents.memory.ops import fast_weights_reference, fast_weights_scan, fast_weights_step

    g = torch.Generator().manual_seed(0)
    zx, h, W = torch.randn(4, 2, 5, generator=g), torch.zeros(2, 5), 0.05 * torch.eye(5)
    decay, rate = torch.tensor(0.9, requires_grad=True), torch.tensor(0.1, requires_grad=True)
    y, _, _ = fast_weights_reference(zx, h, None, W, torch.ones(5), torch.zeros(5), decay=decay, fast_lr=rate, inner_steps=1)
    y.sum().backward()
    assert decay.grad is not None and rate.grad is not None
    for op in (fast_weights_scan, fast_weights_step):
        with pytest.raises(ValueError, match="run in fast_weights_reference only"):
            op(zx[:1], h, None, W, torch.ones(5), torch.zeros(5), decay=decay, fast_lr=rate, inner_steps=1)
    with pytest.raises(ValueError, match="two 0-d tensors"):
        fast_weights_reference(zx, h, None, W, None, None, decay=decay, fast_lr=0.1, inner_steps=1)
