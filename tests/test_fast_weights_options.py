"""The fast-weights core's learning-speed options, each held to an independent float64 loop:
``identity_scale`` (the slow weights' initial scale) and ``bias_correction`` (the early-episode
memory read at full strength), and the continuous write weights the latter runs on in every op."""

from __future__ import annotations

import pytest
import torch

from fw_agents.memory import FastWeightsRNN, make_memory
from fw_agents.memory.bias_correction import bias_corrected_writes
from fw_agents.memory.ops import fast_weights_reference, fast_weights_scan, fast_weights_step
from fw_agents.memory.ops import fused_recurrent
from test_fast_weights import MODES_AND_CHUNKS as MODES, use_mode  # the modes every core test runs
from test_fast_weights import assert_same_values_and_gradients  # the float64 comparison every op test uses

DT = torch.float64


def _core(seed=0, inner_steps=1, eta="fast_share", **options):
    torch.manual_seed(seed)
    core = FastWeightsRNN(4, 6, **{eta: 0.7}, decay=0.8, inner_steps=inner_steps, **options)
    core = core.double()
    with torch.no_grad():  # away from the initial values, so that every parameter matters
        core.W.weight.add_(0.2 * torch.randn(6, 6, dtype=DT))
        core.ln.weight.uniform_(0.5, 1.5)
        core.ln.bias.uniform_(-0.2, 0.2)
    return core


def _masks(T, B, seed=1, p_start=0.25, p_skip=0.0):
    g = torch.Generator().manual_seed(seed)
    starts = (torch.rand(T, B, generator=g) < p_start).to(DT)
    writes = (torch.rand(T, B, generator=g) >= p_skip).to(DT)
    return starts, writes


def corrected_loop(core, x, starts, writes, h=None, A_raw=None, n=None):
    """Eq. 1 and 5 written out per step with the *uncorrected* ``A`` of Eq. 1, whose read is
    divided by ``1 - λ^n`` (``n``: writes since the episode's start), counted by hand.

    Returns ``(y, h, A_raw, n)``; ``A_raw / (1 - λ^n)`` is the corrected memory."""
    T, B, _ = x.shape
    H, lam, eta = core.hidden_size, core.decay, core.paper_fast_lr
    h = torch.zeros(B, H, dtype=DT) if h is None else h
    A_raw = torch.zeros(B, H, H, dtype=DT) if A_raw is None else A_raw
    n = [0] * B if n is None else list(n)
    ys = []
    for t in range(T):
        outs = []
        for b in range(B):
            hb, Ab = h[b], A_raw[b]
            if starts[t, b] > 0.5:
                hb, Ab, n[b] = torch.zeros_like(hb), torch.zeros_like(Ab), 0
            A_read = Ab / (1 - lam ** n[b]) if n[b] > 0 else Ab  # empty: nothing to correct
            z = core.W.weight @ hb + core.C.weight @ x[t, b] + core.C.bias
            hs = torch.relu(z)
            for _ in range(core.inner_steps):
                hs = torch.relu(core.ln(z + A_read @ hs))
            if writes[t, b] > 0.5:
                Ab = lam * Ab + eta * torch.outer(hs, hs)
                n[b] += 1
            outs.append((hs, Ab))
        h = torch.stack([o[0] for o in outs])
        A_raw = torch.stack([o[1] for o in outs])
        ys.append(h)
    return torch.stack(ys), h, A_raw, n


def _corrected(A_raw, n, lam):
    share = torch.tensor([1 - lam**k if k else 1.0 for k in n], dtype=DT)
    return A_raw / share[:, None, None]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("inner_steps", [1, 2])
@pytest.mark.parametrize("eta", ["fast_share", "fast_lr"])
def test_bias_correction_matches_the_hand_counted_loop(mode, inner_steps, eta):
    core = use_mode(_core(inner_steps=inner_steps, eta=eta, bias_correction=True), mode)
    T, B = 11, 3
    x = torch.randn(T, B, 4, dtype=DT, generator=torch.Generator().manual_seed(2))
    starts, writes = _masks(T, B, p_skip=0.2)
    starts[0] = 0  # the first call continues a fresh state; starts later on
    with torch.no_grad():
        y, (h, A, m) = core(x, None, starts, write_mask=writes)
        y_ref, h_ref, A_raw, n = corrected_loop(core, x, starts, writes)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(A, _corrected(A_raw, n, core.decay), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m[:, 0], torch.tensor([1 - core.decay**k for k in n], dtype=DT))


@pytest.mark.parametrize("mode", MODES)
def test_bias_corrected_state_carries_across_calls_exactly(mode):
    """Rollout (one step a call) and training (the whole sequence from a stored state) agree,
    and the carried share ``m`` continues the count where the last call left it."""
    core = use_mode(_core(bias_correction=True), mode)
    T, B = 9, 4
    x = torch.randn(T, B, 4, dtype=DT, generator=torch.Generator().manual_seed(3))
    starts, _ = _masks(T, B, seed=4, p_start=0.3)
    with torch.no_grad():
        _, warm = core(torch.randn(3, B, 4, dtype=DT))  # a stored state with 3 writes in it
        y_whole, s_whole = core(x, warm, starts)
        state, ys = warm, []
        for t in range(T):
            y, state = core(x[t : t + 1], state, starts[t : t + 1])
            ys.append(y)
        _, s_split = core(x[5:], core(x[:5], warm, starts[:5])[1], starts[5:])
    torch.testing.assert_close(torch.cat(ys), y_whole, rtol=1e-10, atol=1e-10)
    for a, b, c in zip(state, s_whole, s_split):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(c, b, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(warm[2], torch.full((B, 1), 1 - 0.8**3, dtype=DT))


def test_bias_corrected_gradients_match_the_reference_mode():
    core = _core(bias_correction=True, inner_steps=2)
    T, B = 8, 3
    x = torch.randn(T, B, 4, dtype=DT, requires_grad=True)
    starts, writes = _masks(T, B, seed=5, p_skip=0.2)
    grads = {}
    for mode in MODES:
        use_mode(core, mode)
        core.zero_grad()
        y, (h, A, _) = core(x, None, starts, write_mask=writes)
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=DT).view_as(y)).sum() + h.sum() + A.square().sum()
        grads[mode] = torch.autograd.grad(loss, [x, *core.parameters()])
    for mode in MODES:
        for a, b in zip(grads[mode], grads["reference"]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_bias_correction_writes_the_first_step_at_full_strength():
    """One write replaces the empty memory outright: A = η_paper/(1-λ) h hᵀ, the steady weight."""
    core = _core(bias_correction=True)
    x = torch.randn(1, 2, 4, dtype=DT)
    with torch.no_grad():
        y, (h, A, m) = core(x)
    lam = core.decay
    torch.testing.assert_close(A, core.paper_fast_lr / (1 - lam) * torch.einsum("bi,bj->bij", h, h))
    torch.testing.assert_close(m, torch.full((2, 1), 1 - lam, dtype=DT))


def test_bias_corrected_writes_table():
    """The write weights by hand: w = 1/(1 - λ^n) after a start, counting on from a carried share."""
    lam = 0.5
    starts = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    writes = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    filled = torch.tensor([0.75, 0.3])  # row 0 has 2 writes in it; row 1 is reset at t = 0
    w, m = bias_corrected_writes(lam, filled, starts, writes, 4)
    expected = torch.tensor([[1 / (1 - lam**3), 1 / (1 - lam)], [1 / (1 - lam**4), 0.0],
                             [1 / (1 - lam), 1 / (1 - lam**2)], [0.0, 1 / (1 - lam**3)]])  # fmt: skip
    torch.testing.assert_close(w, expected)
    torch.testing.assert_close(m, torch.tensor([1 - lam, 1 - lam**3]))


@pytest.mark.parametrize("op", [fast_weights_scan, fast_weights_step])
def test_fractional_write_weights_match_the_reference(op):
    """Every op reads a write weight w as decay 1 - w(1-λ) and write η w (Eq. 1 generalised),
    which bias correction relies on: values and gradients against the reference loop."""
    g = torch.Generator().manual_seed(6)
    T = 7 if op is fast_weights_scan else 1
    B, H = 3, 5
    zx, h = torch.randn(T, B, H, generator=g, dtype=DT), torch.randn(B, H, generator=g, dtype=DT)
    A, W = 0.1 * torch.randn(B, H, H, generator=g, dtype=DT), 0.3 * torch.randn(H, H, generator=g, dtype=DT)
    gain, bias = 1 + 0.1 * torch.randn(H, generator=g, dtype=DT), 0.1 * torch.randn(H, generator=g, dtype=DT)
    weights = torch.rand(T, B, generator=g, dtype=DT) * 5.0  # up to 1/(1-λ) = 5
    weights[0, 0] = 5.0  # a full replacement (decay 0)
    leaves = [t.requires_grad_() for t in (zx, h, A, W, gain, bias)]
    options = dict(decay=0.8, fast_lr=0.3, inner_steps=2, write_mask=weights, chunk_size=3)
    ref = fast_weights_reference(*leaves, **options)
    assert_same_values_and_gradients(ref, op(*leaves, **options), leaves)


@pytest.mark.skipif(not fused_recurrent.triton_available(), reason="triton is not installed")
def test_fractional_write_weights_in_the_kernel(monkeypatch, one_thread):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    core = _core(bias_correction=True)
    T, B = 6, 2
    x = torch.randn(T, B, 4, dtype=DT, generator=torch.Generator().manual_seed(7))
    starts, _ = _masks(T, B, seed=8)
    expected = core(x, None, starts)
    core.mode = "triton"
    got = core(x, None, starts)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-10, atol=1e-10)
    for a, b in zip(got[1], expected[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_identity_scale_sets_the_slow_weights_initial_scale():
    torch.testing.assert_close(FastWeightsRNN(3, 7).W.weight, 0.05 * torch.eye(7))  # the paper's
    torch.testing.assert_close(FastWeightsRNN(3, 7, identity_scale=0.5).W.weight, 0.5 * torch.eye(7))
    core = FastWeightsRNN(3, 7, identity_scale=0.3)
    with torch.no_grad():
        core.W.weight.zero_()
    core.reset_parameters()
    torch.testing.assert_close(core.W.weight, 0.3 * torch.eye(7))


@pytest.mark.parametrize("mode", ["scan", "reference"])
def test_relative_slow_weights_compute_the_same_core_with_the_slow_gradient_scaled(mode):
    # W = s·W̃ with W̃ = I: the same outputs as the plain core at any W, and dL/dW̃ = s·dL/dW
    torch.manual_seed(0)
    plain = FastWeightsRNN(3, 6, fast_share=0.8, identity_scale=0.2, bias_correction=True, mode=mode).double()
    relative = FastWeightsRNN(3, 6, fast_share=0.8, identity_scale=0.2, bias_correction=True, mode=mode,
                              relative_slow_weights=True).double()  # fmt: skip
    torch.testing.assert_close(relative.W.weight, torch.eye(6, dtype=torch.float64))
    torch.testing.assert_close(relative.slow_weights, plain.W.weight)
    with torch.no_grad():
        plain.W.weight.add_(0.1 * torch.randn(6, 6, dtype=torch.float64))
        relative.load_state_dict(plain.state_dict())
        relative.W.weight.div_(0.2)
    x, starts = torch.randn(5, 2, 3, dtype=torch.float64), torch.tensor([[1.0, 1.0]] + [[0.0, 1.0]] * 4, dtype=torch.float64)
    y_plain, _ = plain(x, None, starts)
    y_relative, _ = relative(x, None, starts)
    torch.testing.assert_close(y_relative, y_plain, rtol=1e-12, atol=1e-12)
    y_plain.pow(2).sum().backward()
    y_relative.pow(2).sum().backward()
    torch.testing.assert_close(relative.W.weight.grad, 0.2 * plain.W.weight.grad, rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # and the rollout step agrees with the sequence
        packed = torch.zeros(2, relative.state_size, dtype=torch.float64)
        y_step, _ = relative.forward_packed(x[:1], packed, starts[:1], relative.state_size)
    torch.testing.assert_close(y_step, y_relative[:1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "options,needle",
    [
        (dict(relative_slow_weights="yes"), "relative_slow_weights"),
        (dict(identity_scale=0.0), "identity_scale"),
        (dict(identity_scale=-0.5), "identity_scale"),
        (dict(identity_scale=float("nan")), "identity_scale"),
        (dict(bias_correction="yes"), "bias_correction"),
        (dict(bias_correction=1), "bias_correction"),
    ],
)
def test_bad_option_values_raise(options, needle):
    with pytest.raises(ValueError, match=needle):
        make_memory("fastweights", 3, 4, **options)


def test_bias_corrected_state_has_the_share_slot():
    core = make_memory("fastweights", 3, 4, bias_correction=True)
    assert core.state_shapes == ((4,), (4, 4), (1,))
    assert core.state_size == 4 + 16 + 1
    assert make_memory("fastweights", 3, 4).state_shapes == ((4,), (4, 4))
