"""Conformance of every registered memory core to the one interface (``MemoryCore``).

Each test runs once per name in ``MEMORY_NAMES`` (each core with its own defaults), and once
more for the fast-weights core with the agent's options (``DEFAULT_MEMORY_KWARGS``) and
bias-corrected writes, whose state has a third slot; the test ids carry the name, so
``pytest -k "not fastweights"`` skips the fast-weights cores.
"""

from __future__ import annotations

import re

import pytest
import torch

from fw_agents.memory import MEMORY_NAMES, MemoryCore, State, make_memory
from fw_agents.policies import default_memory_kwargs

INPUT, HIDDEN, BATCH, STEPS = 5, 6, 4, 9  # HIDDEN even: the associative LSTM needs H/2 complex units


CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


#: Core configurations beyond each core's defaults: name -> (core, options).
CONFIGURED = {
    "fastweights-agent-bias-corrected": (
        "fastweights", {**default_memory_kwargs("fastweights"), "bias_correction": True, "identity_scale": 0.5}
    ),
}


@pytest.fixture(params=[*MEMORY_NAMES, *CONFIGURED])
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def make(name: str, seed: int = 0, input_size: object = INPUT, hidden_size: object = HIDDEN) -> MemoryCore:
    torch.manual_seed(seed)
    core, options = CONFIGURED.get(name, (name, {}))
    return make_memory(core, input_size, hidden_size, **options)


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def random_starts(steps: int, batch: int, seed: int, p: float = 0.3) -> torch.Tensor:
    return (torch.rand(steps, batch, generator=torch.Generator().manual_seed(seed)) < p).float()


@torch.no_grad()
def warm_state(core: MemoryCore, batch: int, seed: int) -> State:
    """A realistic non-zero state: the state after a few random steps."""
    parameter = next(core.parameters())
    _, state = core(randn(4, batch, core.input_size, seed=seed, dtype=parameter.dtype).to(parameter.device))
    return state


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, expected, atol=tol, rtol=tol)


def assert_states_close(actual: State, expected: State, tol: float = 1e-5) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert_close(a, e, tol)


def rows(state: State, index: slice) -> State:
    return tuple(s[index] for s in state)


# ----------------------------------------------------------------- shapes, state
def test_output_and_state_shapes(name: str) -> None:
    core = make(name)
    y, state = core(randn(STEPS, BATCH, INPUT, seed=1))
    assert y.shape == (STEPS, BATCH, HIDDEN)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()
    assert isinstance(state, tuple) and len(state) == len(core.state_shapes)
    assert [tuple(s.shape) for s in state] == [(BATCH, *shape) for shape in core.state_shapes]
    assert all(s.dtype == torch.float32 for s in state)


def test_initial_state_is_zeros_on_the_requested_device(name: str) -> None:
    core = make(name)
    state = core.initial_state(BATCH)
    assert [tuple(s.shape) for s in state] == [(BATCH, *shape) for shape in core.state_shapes]
    assert all(s.device == torch.device("cpu") and s.dtype == torch.float32 for s in state)
    assert all(bool((s == 0).all()) for s in state)
    meta = core.initial_state(BATCH, device="meta")
    assert all(s.device.type == "meta" for s in meta)
    # None means the initial state.
    x = randn(STEPS, BATCH, INPUT, seed=2)
    y_none, s_none = core(x)
    y_init, s_init = core(x, state)
    assert_close(y_none, y_init)
    assert_states_close(s_none, s_init)


def test_pack_unpack_round_trip(name: str) -> None:
    core = make(name)
    state = warm_state(core, BATCH, seed=3)
    flat = core.pack_state(state)
    assert flat.shape == (BATCH, core.state_size)
    assert core.state_size == sum(torch.Size(shape).numel() for shape in core.state_shapes)
    unpacked = core.unpack_state(flat)
    assert_states_close(unpacked, state, tol=0.0)
    # A packed state, sliced by rows as a rollout buffer does, continues the sequence identically.
    x = randn(STEPS, 2, INPUT, seed=4)
    y_ref, s_ref = core(x, rows(state, slice(1, 3)))
    y, s = core(x, core.unpack_state(flat[1:3]))
    assert_close(y, y_ref, tol=0.0)
    assert_states_close(s, s_ref, tol=0.0)
    with pytest.raises(ValueError):
        core.unpack_state(torch.zeros(BATCH, core.state_size + 1))


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_forward_packed_equals_forward_then_pack(name: str, steps: int, grad: bool) -> None:
    # what the policy's state slots run: packed in, packed and zero-padded out, the same numbers
    # (a rollout step, no_grad and one step, is where a core may write into the packed rows)
    core = make(name)
    state = warm_state(core, BATCH, seed=3)
    width = core.state_size + 3
    packed = torch.cat([core.pack_state(state), torch.full((BATCH, 3), float("nan"))], dim=1)  # junk padding
    x = randn(steps, BATCH, INPUT, seed=5)
    starts = random_starts(steps, BATCH, seed=6, p=0.5)
    with torch.set_grad_enabled(grad):
        y_ref, s_ref = core(x, state, starts)
        y, new = core.forward_packed(x, packed, starts, width)
    assert new.shape == (BATCH, width) and new.dtype == packed.dtype
    assert torch.equal(y, y_ref)
    assert torch.equal(new, core.pack_state(s_ref, width))
    assert not new[:, core.state_size :].any()  # the padding is zeros, whatever came in
    out = torch.full((BATCH, width), float("nan"))  # a buffer row of the next step, say
    with torch.set_grad_enabled(grad):
        y_out, written = core.forward_packed(x, packed, starts, width, out=out)
    assert written is out and torch.equal(out, new) and torch.equal(y_out, y_ref)
    with pytest.raises(ValueError, match="out must be"):
        core.forward_packed(x, packed, starts, width, out=torch.empty(BATCH, width + 1))


# -------------------------------------------------- whole == steps == chunks
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_starts", [False, True], ids=["no_starts", "starts"])
def test_whole_equals_step_by_step_and_chunks(name: str, with_starts: bool, device: str) -> None:
    """What a rollout computes one step at a time, training computes in one call (on CUDA:
    the fused kernel, compiled with T = 1 for a step, against itself over the sequence)."""
    core = make(name).to(device)
    x = randn(STEPS, BATCH, INPUT, seed=5).to(device)
    starts = random_starts(STEPS, BATCH, seed=6).to(device) if with_starts else None
    state0 = warm_state(core, BATCH, seed=7)
    y_whole, s_whole = core(x, state0, starts)

    state, ys = state0, []
    for t in range(STEPS):
        y_t, state = core(x[t : t + 1], state, None if starts is None else starts[t : t + 1])
        assert y_t.shape == (1, BATCH, HIDDEN)
        ys.append(y_t)
    assert_close(torch.cat(ys), y_whole)
    assert_states_close(state, s_whole)

    for cuts in ([0, 4, STEPS], [0, 1, 3, 8, STEPS], [0, 2, 7, STEPS]):
        state, ys = state0, []
        for t0, t1 in zip(cuts[:-1], cuts[1:]):
            y_c, state = core(x[t0:t1], state, None if starts is None else starts[t0:t1])
            ys.append(y_c)
        assert_close(torch.cat(ys), y_whole)
        assert_states_close(state, s_whole)


# ------------------------------------------------------------------- resets
def test_resets_equal_fresh_runs_of_the_segments(name: str) -> None:
    core = make(name)
    x = randn(STEPS, BATCH, INPUT, seed=8)
    starts = random_starts(STEPS, BATCH, seed=9)
    starts[0, 0] = 1.0  # row 0 must ignore the state it was given
    starts[:, 1] = 0.0  # row 1 never resets: it continues from the given state
    starts[:, 2] = 1.0  # row 2 resets at every step
    state0 = warm_state(core, BATCH, seed=10)
    y, final = core(x, state0, starts)

    for b in range(BATCH):
        row_starts = [t for t in range(STEPS) if starts[t, b] > 0]
        bounds = sorted({0, *row_starts, STEPS})
        row_state = rows(state0, slice(b, b + 1))
        for t0, t1 in zip(bounds[:-1], bounds[1:]):
            fresh = None if t0 in row_starts else row_state
            y_seg, row_state = core(x[t0:t1, b : b + 1], fresh)
            assert_close(y[t0:t1, b : b + 1], y_seg)
        assert_states_close(rows(final, slice(b, b + 1)), row_state)

    # Boolean starts and all-zero starts are accepted.
    y_bool, _ = core(x, state0, starts.bool())
    assert_close(y_bool, y, tol=0.0)
    y_zero, _ = core(x, state0, torch.zeros(STEPS, BATCH))
    y_none, _ = core(x, state0, None)
    assert_close(y_zero, y_none, tol=0.0)


def test_batch_independence(name: str) -> None:
    core = make(name)
    x = randn(STEPS, BATCH, INPUT, seed=11)
    starts = random_starts(STEPS, BATCH, seed=12)
    state0 = warm_state(core, BATCH, seed=13)
    y, final = core(x, state0, starts)

    # Change everything about rows 1.. (inputs, states, starts); row 0 must not notice.
    x2 = x.clone()
    x2[:, 1:] = 3.0 * randn(STEPS, BATCH - 1, INPUT, seed=14)
    other = warm_state(core, BATCH, seed=15)
    state2 = tuple(torch.cat([s[:1], o[1:]]) for s, o in zip(state0, other))
    starts2 = starts.clone()
    starts2[:, 1:] = 1.0 - starts2[:, 1:]
    y2, final2 = core(x2, state2, starts2)
    assert_close(y2[:, 0], y[:, 0], tol=1e-6)
    assert_states_close(rows(final2, slice(0, 1)), rows(final, slice(0, 1)), tol=1e-6)
    assert not torch.allclose(y2[:, 1:], y[:, 1:])  # the other rows did change


# ---------------------------------------------------------------- gradients
def test_gradients_reach_all_parameters_and_the_state(name: str) -> None:
    core = make(name)
    x = randn(STEPS, BATCH, INPUT, seed=16).requires_grad_()
    state0 = tuple(s.detach().requires_grad_() for s in warm_state(core, BATCH, seed=17))
    starts = random_starts(STEPS, BATCH, seed=18, p=0.15)
    starts[:, 0] = 0.0  # keep the given state in play for every row at t = 0
    y, final = core(x, state0, starts)
    loss = (y * randn(*y.shape, seed=19)).sum() + sum((s * randn(*s.shape, seed=20)).sum() for s in final)
    loss.backward()
    for pname, param in core.named_parameters():
        assert param.grad is not None, f"no gradient for {pname}"
        assert torch.isfinite(param.grad).all(), f"non-finite gradient for {pname}"
        assert param.grad.abs().sum() > 0, f"zero gradient for {pname}"
    assert x.grad is not None and x.grad.abs().sum() > 0
    for s in state0:
        if s.numel():
            assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_outputs_equal_forward_outputs_and_gradients(name: str) -> None:
    """``core.outputs`` (the PPO-update call, no final state) is ``forward``'s ``y``, gradients too."""
    core = make(name)
    x = randn(STEPS, BATCH, INPUT, seed=21)
    state0 = warm_state(core, BATCH, seed=22)
    starts = random_starts(STEPS, BATCH, seed=23)
    weights = randn(STEPS, BATCH, HIDDEN, seed=24)
    y = core.outputs(x, state0, starts)
    grads = torch.autograd.grad((y * weights).sum(), list(core.parameters()))
    y_ref, _ = core(x, state0, starts)
    grads_ref = torch.autograd.grad((y_ref * weights).sum(), list(core.parameters()))
    assert_close(y, y_ref, tol=1e-6)
    for g, g_ref in zip(grads, grads_ref):
        assert_close(g, g_ref, tol=1e-5)


# ------------------------------------------------------------------ float64
def test_float64(name: str) -> None:
    core32, core64 = make(name), make(name).double()
    state = core64.initial_state(BATCH)
    assert all(s.dtype == torch.float64 for s in state)
    x = randn(STEPS, BATCH, INPUT, seed=21)
    starts = random_starts(STEPS, BATCH, seed=22)
    y64, s64 = core64(x.double(), None, starts)
    assert y64.dtype == torch.float64 and all(s.dtype == torch.float64 for s in s64)
    y32, s32 = core32(x, None, starts)
    assert_close(y64.float(), y32, tol=1e-4)
    assert_states_close(tuple(s.float() for s in s64), s32, tol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(name: str, full_fp32) -> None:
    core = make(name)
    x = randn(STEPS, BATCH, INPUT, seed=23)
    starts = random_starts(STEPS, BATCH, seed=24)
    y_cpu, s_cpu = core(x, None, starts)
    core_gpu = make(name).cuda()
    assert all(s.is_cuda for s in core_gpu.initial_state(BATCH))
    y_gpu, s_gpu = core_gpu(x.cuda(), None, starts.cuda())
    assert_close(y_gpu.cpu(), y_cpu, tol=1e-4)
    assert_states_close(tuple(s.cpu() for s in s_gpu), s_cpu, tol=1e-4)


def test_full_fp32_fixture_turns_tf32_off_and_restores_it(full_fp32) -> None:
    """What test_cuda_matches_cpu relies on (readable without a GPU): cuDNN's TF32 default off."""
    assert torch.backends.cudnn.allow_tf32 is False


def test_cudnn_tf32_is_on_by_default_and_restored() -> None:
    """The default the fixture above overrides (the comparison failed by 1.6-2.9x its tolerance
    for lstm, gru and irnn with TF32 operands emulated on CPU)."""
    assert torch.backends.cudnn.allow_tf32 is True


# --------------------------------------------------------------- bad input
def test_bad_shapes_raise(name: str) -> None:
    core = make(name)
    x = randn(STEPS, BATCH, INPUT, seed=25)
    good = core.initial_state(BATCH)
    with pytest.raises(ValueError, match="x must be"):
        core(x[0])  # [B, F]: no time axis
    with pytest.raises(ValueError, match="x must be"):
        core(randn(STEPS, BATCH, INPUT + 1, seed=26))
    with pytest.raises(ValueError, match="state"):
        core(x, core.initial_state(BATCH + 1))
    with pytest.raises(ValueError, match="state"):
        core(x, good[:-1] if len(good) > 1 else (*good, good[0]))
    with pytest.raises(ValueError, match="state"):
        core(x, tuple(torch.zeros(BATCH, s.shape[1] + 1, *s.shape[2:]) for s in good))
    with pytest.raises(ValueError, match="episode_starts"):
        core(x, good, torch.zeros(STEPS, BATCH + 1))
    with pytest.raises(ValueError, match="episode_starts"):
        core(x, good, torch.zeros(STEPS))


@pytest.mark.parametrize(
    "input_size, hidden_size, bad",
    [(0, HIDDEN, "0"), (INPUT, 0, "0"), (-1, HIDDEN, "-1"), (INPUT, 2.0, "2.0"), (True, HIDDEN, "True")],
)
def test_bad_sizes_raise(name: str, input_size: object, hidden_size: object, bad: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"got {bad}")):
        make(name, input_size=input_size, hidden_size=hidden_size)


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError) as info:
        make_memory("nope", INPUT, HIDDEN)
    message = str(info.value)
    assert "nope" in message
    assert all(valid in message for valid in MEMORY_NAMES)


@pytest.mark.parametrize("name", [*MEMORY_NAMES, *CONFIGURED])
def test_empty_sequence_raises(name):
    core = make(name, input_size=3, hidden_size=4)
    with pytest.raises(ValueError, match="T >= 1"):
        core(torch.zeros(0, 2, 3))


def test_reset_clears_non_finite_rows():
    from fw_agents.memory.base import reset_rows

    state = (torch.tensor([[float("nan"), 1.0], [2.0, 3.0]]),)
    (cleared,) = reset_rows(state, torch.tensor([1.0, 0.0]))
    assert torch.equal(cleared, torch.tensor([[0.0, 0.0], [2.0, 3.0]]))


@pytest.mark.parametrize("name", [*MEMORY_NAMES, *CONFIGURED])
def test_supports_write_mask_says_whether_the_masks_are_honoured(name):
    """A core that claims the masks must take them and act on them; the others must refuse them."""
    core = make(name, input_size=3, hidden_size=8).double()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    masks = dict(write_mask=torch.zeros(4, 2, dtype=torch.float64), hidden_resets=torch.ones(4, 2, dtype=torch.float64))
    if not core.supports_write_mask:
        with pytest.raises(TypeError):
            core(x, **masks)
        return
    y, _ = core(x, **masks)  # never writes and wipes h before every step: each step sees only its own input
    alone = torch.stack([core(x[t : t + 1])[0][0] for t in range(4)])
    assert torch.allclose(y, alone)
    assert not torch.allclose(core(x)[0], alone), "without the masks the steps interact"
