"""FastWeightsRNN: every fast path held to the slow per-step reference."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from fw_agents.memory import FastWeightsRNN, make_memory
from fw_agents.memory.ops import fast_weights_reference, fast_weights_scan, fast_weights_step

FAST = dict(decay=0.9, fast_lr=0.5)  # λ and η of the op-level tests

DT = torch.float64
#: The core's modes, and the scan with its chunk size pinned to both ends (1: the matrix form
#: every step; T: attention over the whole call), which the former modes "matrix" and
#: "attention" ran: see :func:`use_mode`.
MODES_AND_CHUNKS = ["auto", "scan", "scan/chunk=1", "scan/chunk=T", "reference"]


def use_mode(core, mode):
    """Set ``core``'s mode to one of :data:`MODES_AND_CHUNKS` (``"scan/chunk=1"`` and
    ``"scan/chunk=T"``: the scan op called with ``chunk_size`` 1 / the call's length); returns it."""
    name, _, chunk = mode.partition("/chunk=")
    core.mode = name
    core.__dict__.pop("chunk_size", None)
    if chunk:
        core.chunk_size = (lambda steps: 1) if chunk == "1" else (lambda steps: steps)
    return core


def _inputs(T=6, B=3, H=5, seed=0, resets=True, writes=False, init=True, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    zx = scale * torch.randn(T, B, H, generator=g, dtype=DT)
    h = torch.randn(B, H, generator=g, dtype=DT)
    A = 0.1 * torch.randn(B, H, H, generator=g, dtype=DT) if init else None
    W = 0.3 * torch.randn(H, H, generator=g, dtype=DT)
    gain = 1 + 0.1 * torch.randn(H, generator=g, dtype=DT)
    bias = 0.1 * torch.randn(H, generator=g, dtype=DT)
    starts = (torch.rand(T, B, generator=g) < 0.3).to(DT) if resets else None
    write = (torch.rand(T, B, generator=g) < 0.6).to(DT) if writes else None
    return zx, h, A, W, gain, bias, starts, write


def op_inputs(T, B, H, seed):
    """:func:`_inputs`' six tensors as a list, episode starts at fixed places (``B >= 3``): row 1
    at step 0 (the scan puts the rows that restart there last) and row 2 at step ``min(3, T-1)``,
    and a generator for the caller's masks."""
    zx, h, A, W, gain, bias, _, _ = _inputs(T, B, H, seed=seed, resets=False)
    starts = torch.zeros(T, B, dtype=DT)
    starts[0, 1] = starts[min(3, T - 1), 2] = 1.0
    return [zx, h, A, W, gain, bias], starts, torch.Generator().manual_seed(seed + 1)


@pytest.fixture(params=["whole", "sliced"])
def block_reads(request, monkeypatch):
    """Both ways the scan reads a chunk's past: the whole block (zero weights ahead, short
    chunks) and a slice h(< t) per step (long chunks), forced here at any length."""
    from fw_agents.memory.ops import chunking

    monkeypatch.setattr(chunking, "WHOLE_BLOCK_STEPS", 64 if request.param == "whole" else 0)
    return request.param


def assert_same_values_and_gradients(ref, out, tensors) -> None:
    """``out`` equals ``ref`` (1e-10) and so do their gradients w.r.t. ``tensors`` (1e-9)
    under random cotangents on every output."""
    for a, b in zip(ref, out):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    cotangents = [torch.randn_like(o) for o in ref]
    g_ref = torch.autograd.grad(sum((o * c).sum() for o, c in zip(ref, cotangents)), tensors)
    g_out = torch.autograd.grad(sum((o * c).sum() for o, c in zip(out, cotangents)), tensors)
    for a, b in zip(g_ref, g_out):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "inner_steps,layer_norm,chunk,init,resets,writes",
    [
        (S, ln, chunk, init, resets, writes)
        for S, ln, chunk, init, resets, writes in itertools.product(
            [1, 3], [True, False], [1, 4, 6], [True, False], [True, False], [False, True]
        )
        if not (writes and chunk == 4)  # keep the grid small; write masks are covered at chunk 1 and 6
    ],
)
def test_scan_matches_reference_forward_and_gradients(inner_steps, layer_norm, chunk, init, resets, writes, block_reads):
    # Without layer norm the S > 1 inner loop amplifies large states without bound
    # (the paper's reason for layer norm), so feed it small inputs.
    scale = 1.0 if layer_norm else 0.3
    zx, h, A, W, gain, bias, starts, write = _inputs(resets=resets, writes=writes, init=init, scale=scale)
    tensors = [zx, h, W] + ([gain, bias] if layer_norm else []) + ([A] if init else [])
    for t in tensors:
        t.requires_grad_(True)
    ln = (gain, bias) if layer_norm else (None, None)
    kw = dict(FAST, inner_steps=inner_steps, episode_starts=starts, write_mask=write, layer_norm=layer_norm)
    ref = fast_weights_reference(zx, h, A, W, *ln, **kw)
    out = fast_weights_scan(zx, h, A, W, *ln, **kw, chunk_size=chunk)
    assert_same_values_and_gradients(ref, out, tensors)


@pytest.mark.parametrize("chunk", [1, 4, 6])
@pytest.mark.parametrize("resets", [True, False])
@pytest.mark.parametrize("final_A", [True, False])
def test_scan_with_constant_initial_state_and_no_final_A(chunk, resets, final_A):
    """The PPO-update case: ``A_in`` from a buffer (no gradient wanted) and, with
    ``output_final_state=False``, no final ``A`` formed (None). ``y``, ``h_T`` and every gradient as the reference."""
    zx, h, A, W, gain, bias, starts, _ = _inputs(resets=resets)
    tensors = [t.requires_grad_(True) for t in (zx, h, W, gain, bias)]
    kw = dict(FAST, inner_steps=2, episode_starts=starts, output_final_state=final_A)
    ref = fast_weights_reference(zx, h, A, W, gain, bias, **kw)
    out = fast_weights_scan(zx, h, A, W, gain, bias, **kw, chunk_size=chunk)
    count = 3 if final_A else 2
    assert final_A or (out[2] is None and ref[2] is None)
    assert_same_values_and_gradients(ref[:count], out[:count], tensors)


def test_reference_hidden_resets_equal_wiping_h_between_calls():
    """A hidden reset at step t is the same as stopping there, zeroing h, keeping A, going on."""
    zx, h, A, W, gain, bias, _, write = _inputs(T=7, writes=True)
    wipe = torch.zeros(7, 3, dtype=DT)
    wipe[3] = 1.0
    kw = dict(FAST, inner_steps=2)
    y, h_T, A_T = fast_weights_reference(zx, h, A, W, gain, bias, **kw, write_mask=write, hidden_resets=wipe)
    y1, h1, A1 = fast_weights_reference(zx[:3], h, A, W, gain, bias, **kw, write_mask=write[:3])
    y2, h2, A2 = fast_weights_reference(zx[3:], torch.zeros_like(h1), A1, W, gain, bias, **kw, write_mask=write[3:])
    torch.testing.assert_close(y, torch.cat([y1, y2]), rtol=0, atol=0)
    torch.testing.assert_close(A_T, A2, rtol=0, atol=0)


@pytest.mark.parametrize("chunk", [1, 4, 7])
@pytest.mark.parametrize("resets", [True, False])
def test_scan_hidden_resets_match_reference(chunk, resets):
    zx, h, A, W, gain, bias, starts, write = _inputs(T=7, resets=resets, writes=True, seed=4)
    wipe = (torch.rand(7, 3, generator=torch.Generator().manual_seed(5)) < 0.4).to(DT)
    tensors = [t.requires_grad_(True) for t in (zx, h, A, W, gain, bias)]
    kw = dict(FAST, inner_steps=2, episode_starts=starts, write_mask=write, hidden_resets=wipe)
    ref = fast_weights_reference(zx, h, A, W, gain, bias, **kw)
    out = fast_weights_scan(zx, h, A, W, gain, bias, **kw, chunk_size=chunk)
    assert_same_values_and_gradients(ref, out, tensors)


def test_step_hidden_resets_match_reference():
    zx, h, A, W, gain, bias, _, _ = _inputs(T=1)
    wipe = torch.tensor([[1.0, 0.0, 1.0]], dtype=DT)
    kw = dict(FAST, inner_steps=1, hidden_resets=wipe)
    ref = fast_weights_reference(zx, h, A, W, gain, bias, **kw)
    out = fast_weights_step(zx, h, A, W, gain, bias, **kw)
    for a, b in zip(ref, out):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [1, 3, 7])
@pytest.mark.usefixtures("block_reads")
@pytest.mark.parametrize("readers", [(), (0, 1), (1, 4), (0, 2, 3, 5), (0, 1, 2, 3, 5)])
@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("final_A", [True, False])
def test_scan_reads_initial_A_in_the_rows_that_see_it(chunk, readers, uniform, final_A):
    """PPO minibatches: most sequences start an episode (reset at t = 0, A_init never read),
    a few were cut mid-episode. Only the rows in ``readers`` of 6 keep A_in: as a prefix,
    scattered (the scan reorders the rows), or most of them (read in place). ``uniform``: no
    write mask and no later reset, so every reader decays A_in alike (scalar-weighted reads).
    Values and gradients (A_in's included) as the reference."""
    zx, h, A, W, gain, bias, _, write = _inputs(T=7, B=6, writes=not uniform, seed=6)
    starts = torch.ones(7, 6, dtype=DT) * (torch.rand(7, 6, generator=torch.Generator().manual_seed(7)) < 0.2)
    starts[0] = 1.0
    starts[0, list(readers)] = 0.0
    if uniform:
        starts[1:, list(readers)] = 0.0
    else:
        starts[4, 1] = 1.0
    tensors = [t.requires_grad_(True) for t in (zx, h, A, W, gain, bias)]
    kw = dict(FAST, inner_steps=2, episode_starts=starts, write_mask=write, output_final_state=final_A)
    ref = fast_weights_reference(zx, h, A, W, gain, bias, **kw)
    out = fast_weights_scan(zx, h, A, W, gain, bias, **kw, chunk_size=chunk)
    if not readers:  # A_in never read: its gradient is zero (the scan returns None for it)
        tensors = [t for t in tensors if t is not A]
    count = 3 if final_A else 2
    assert_same_values_and_gradients(ref[:count], out[:count], tensors)


@pytest.mark.parametrize(
    "keep,order,readers,in_place_restarts",
    [
        (None, None, 6, False),
        ([0, 0, 0, 0, 0, 0], None, 0, False),
        ([1, 1, 0, 0, 0, 0], None, 2, False),
        ([0, 1, 0, 0, 1, 0], [1, 4, 0, 2, 3, 5], 2, False),
        ([1, 0, 1, 1, 0, 1], None, 6, True),  # most rows read: in place, no reordering
        ([1, 1, 1, 1, 1, 1], None, 6, False),
    ],
)
def test_scan_puts_rows_that_read_A_in_first(keep, order, readers, in_place_restarts):
    from fw_agents.memory.ops.chunking import readers_first

    starts = None if keep is None else torch.tensor([keep, [1] * 6]) == 0
    got_order, got_readers, got_in_place = readers_first(starts, 6)
    assert got_readers == readers and got_in_place == in_place_restarts
    assert (got_order is None and order is None) or got_order.tolist() == order


@pytest.mark.parametrize("mode", MODES_AND_CHUNKS)
@pytest.mark.parametrize("steps", [1, 7])
def test_outputs_equal_forward_outputs(mode, steps):
    torch.manual_seed(0)
    core = use_mode(FastWeightsRNN(3, 5).double(), mode)
    x = torch.randn(steps, 4, 3, dtype=DT)
    state = (torch.rand(4, 5, dtype=DT), 0.1 * torch.randn(4, 5, 5, dtype=DT))
    starts = torch.zeros(steps, 4, dtype=DT)
    starts[0, 1] = 1
    y, _ = core(x, state, starts)
    torch.testing.assert_close(core.outputs(x, state, starts), y, rtol=0, atol=0)


@pytest.mark.parametrize("inner_steps", [1, 3])
@pytest.mark.parametrize("init,reset,write", [(True, False, False), (True, True, False), (False, False, True), (True, False, True)])
def test_single_step_matches_reference(inner_steps, init, reset, write):
    zx, h, A, W, gain, bias, _, _ = _inputs(T=1, init=init, resets=False)
    keep = torch.tensor([[0.0, 1.0, 1.0]], dtype=DT) if reset else None
    mask = torch.tensor([[1.0, 0.0, 1.0]], dtype=DT) if write else None
    tensors = [t.requires_grad_(True) for t in (zx, h, W, gain, bias)] + ([A.requires_grad_(True)] if init else [])
    starts = None if keep is None else 1 - keep
    kw = dict(FAST, inner_steps=inner_steps, episode_starts=starts, write_mask=mask)
    ref = fast_weights_reference(zx, h, A, W, gain, bias, **kw)
    out = fast_weights_step(zx, h, A, W, gain, bias, **kw)
    assert_same_values_and_gradients(ref, out, tensors)


@pytest.mark.parametrize("chunk", [1, 2, 5])
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_scan_gradcheck(chunk, inner_steps):
    zx, h, A, W, gain, bias, starts, write = _inputs(T=5, B=2, H=3, seed=1, writes=True)

    def fn(zx, h, A, W, gain, bias):
        kw = dict(FAST, inner_steps=inner_steps, episode_starts=starts, write_mask=write, chunk_size=chunk)
        return fast_weights_scan(zx, h, A, W, gain, bias, **kw)

    args = [t.requires_grad_(True) for t in (zx, h, A, W, gain, bias)]
    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("mode", MODES_AND_CHUNKS)
def test_modes_agree_float32(mode):
    torch.manual_seed(0)
    core = use_mode(FastWeightsRNN(7, 16), mode)
    ref = FastWeightsRNN(7, 16, mode="reference")
    ref.load_state_dict(core.state_dict())
    x = torch.randn(20, 4, 7)
    starts = (torch.rand(20, 4) < 0.2).float()
    y, (h, A) = core(x, episode_starts=starts)
    y_ref, (h_ref, A_ref) = ref(x, episode_starts=starts)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(A, A_ref, rtol=1e-5, atol=1e-5)


def test_auto_mode_chunks_long_sequences():
    core = FastWeightsRNN(3, 4)
    assert core.chunk_size(5) == 5
    assert core.chunk_size(1000) == 8  # 2 * hidden_size
    assert use_mode(FastWeightsRNN(3, 4), "scan/chunk=1").chunk_size(50) == 1  # the tests' pins
    assert use_mode(FastWeightsRNN(3, 4), "scan/chunk=T").chunk_size(50) == 50
    assert use_mode(use_mode(FastWeightsRNN(3, 4), "scan/chunk=1"), "scan").chunk_size(1000) == 8
    assert FastWeightsRNN(3, 4, mode="scan").chunk_size(1000) == 8


def test_scan_mode_is_auto_without_the_kernel(monkeypatch):
    """On CPU "auto" is the scan; "scan" stays the scan even where the kernel could run
    (here: under the interpreter, with the device check patched to say yes)."""
    from fw_agents.memory.ops import fast_weights_scan, fast_weights_step, fused_recurrent

    x = torch.zeros(6, 2, 3)
    assert FastWeightsRNN(3, 4)._op(x) == FastWeightsRNN(3, 4, mode="scan")._op(x) == (fast_weights_scan, 6)
    assert FastWeightsRNN(3, 4, mode="scan")._op(x[:1])[0] is fast_weights_step
    monkeypatch.setattr(fused_recurrent, "supports", lambda hidden, device: True)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    assert FastWeightsRNN(3, 4, mode="scan")._op(x)[0] is fast_weights_scan
    if fused_recurrent.triton_available():
        assert FastWeightsRNN(3, 4)._op(x)[0] is fused_recurrent.fused_recurrent_fast_weights


def test_module_matches_paper_equations_by_hand():
    """One step, written out from Eq. 1 and Eq. 5 with the module's own parameters."""
    torch.manual_seed(3)
    core = FastWeightsRNN(4, 6, fast_lr=0.4, decay=0.8, inner_steps=2).double()
    with torch.no_grad():
        core.ln.weight.uniform_(0.5, 1.5)
        core.ln.bias.uniform_(-0.2, 0.2)
    x = torch.randn(2, 3, 4, dtype=DT)
    y, (h, A) = core(x)
    hh = torch.zeros(3, 6, dtype=DT)
    AA = torch.zeros(3, 6, 6, dtype=DT)
    for t in range(2):
        boundary = hh @ core.W.weight.T + x[t] @ core.C.weight.T + core.C.bias
        hs = torch.relu(boundary)
        for _ in range(2):
            hs = torch.relu(core.ln(boundary + (AA @ hs.unsqueeze(-1)).squeeze(-1)))
        hh = hs
        AA = 0.8 * AA + 0.4 * hh.unsqueeze(2) * hh.unsqueeze(1)
        torch.testing.assert_close(y[t], hh)
    torch.testing.assert_close(A, AA)


def test_layer_norm_is_per_example_not_across_batch():
    torch.manual_seed(0)
    core = FastWeightsRNN(5, 8)
    x = torch.randn(3, 4, 5)
    y_full, _ = core(x)
    # Scaling another example's input must not change this one's output (a batch-wise
    # norm would couple them), and a lone example must give the same output as in a batch.
    x2 = x.clone()
    x2[:, 1:] *= 50.0
    y_scaled, _ = core(x2)
    torch.testing.assert_close(y_scaled[:, 0], y_full[:, 0])
    y_single, _ = core(x[:, :1])
    torch.testing.assert_close(y_single[:, 0], y_full[:, 0])
    # and the layer norm statistics are over the hidden units of each example
    u = torch.randn(4, 8)
    assert torch.allclose(F.layer_norm(u, (8,)).mean(dim=1), torch.zeros(4), atol=1e-6)


def test_initialisation_follows_paper():
    core = FastWeightsRNN(10, 32)
    torch.testing.assert_close(core.W.weight, 0.05 * torch.eye(32))
    assert core.C.weight.abs().max() <= 1 / 32**0.5
    assert core.ln is not None and torch.all(core.ln.weight == 1)
    assert FastWeightsRNN(10, 32, layer_norm=False).ln is None


def test_whole_equals_step_by_step_and_chunks_with_resets():
    torch.manual_seed(1)
    core = make_memory("fastweights", 6, 12)
    x = torch.randn(17, 5, 6)
    starts = (torch.rand(17, 5) < 0.15).float()
    starts[0] = 1.0
    y_whole, (h_w, A_w) = core(x, episode_starts=starts)
    state = core.initial_state(5)
    steps = []
    for t in range(17):
        y, state = core(x[t : t + 1], state, starts[t : t + 1])
        steps.append(y)
    torch.testing.assert_close(torch.cat(steps), y_whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state[1], A_w, rtol=1e-5, atol=1e-5)
    state, pieces = core.initial_state(5), []
    for a, b in [(0, 3), (3, 4), (4, 11), (11, 17)]:
        y, state = core(x[a:b], state, starts[a:b])
        pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces), y_whole, rtol=1e-5, atol=1e-5)


def test_gradients_through_carried_state_match_whole_sequence():
    torch.manual_seed(2)
    core = make_memory("fastweights", 3, 6).double()
    x = torch.randn(8, 2, 3, dtype=DT)
    y, _ = core(x)
    g_whole = torch.autograd.grad(y.square().sum(), list(core.parameters()))
    y1, state = core(x[:5])
    y2, _ = core(x[5:], state)
    g_chunks = torch.autograd.grad(torch.cat([y1, y2]).square().sum(), list(core.parameters()))
    for a, b in zip(g_whole, g_chunks):
        torch.testing.assert_close(b, a)


def test_resets_equal_fresh_runs():
    torch.manual_seed(4)
    core = make_memory("fastweights", 4, 8)
    x = torch.randn(10, 2, 4)
    starts = torch.zeros(10, 2)
    starts[6, 0] = 1.0
    y, _ = core(x, core.initial_state(2), starts)
    fresh, _ = core(x[6:, :1])
    torch.testing.assert_close(y[6:, :1], fresh, rtol=1e-5, atol=1e-6)


def test_write_mask_zero_leaves_fast_weights_unchanged():
    torch.manual_seed(5)
    core = make_memory("fastweights", 4, 8)
    x = torch.randn(3, 2, 4)
    _, (h, A) = core(x[:1])
    _, (_, A_after) = core(x[1:], (h, A), write_mask=torch.zeros(2, 2))
    torch.testing.assert_close(A_after, A)


def test_long_rollout_stays_finite_and_bounded():
    torch.manual_seed(6)
    core = make_memory("fastweights", 8, 32)
    state = core.initial_state(4)
    x = torch.randn(10_000, 4, 8)
    with torch.no_grad():
        y, (h, A) = core(x, state)
    assert torch.isfinite(y).all() and torch.isfinite(A).all()
    # Layer norm bounds h (relu of unit-variance rows: |h|^2 <= H), so the geometric
    # series bounds A: ||A||_F <= eta * H / (1 - lambda).
    bound = core.fast_lr * 32 / (1 - core.decay)
    assert torch.linalg.matrix_norm(A).max() <= bound


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(decay=1.0), "decay"),
        (dict(decay=0.0), "decay"),
        (dict(fast_lr=0.0), "fast_lr"),
        (dict(fast_lr=float("inf")), "fast_lr"),
        (dict(inner_steps=0), "inner_steps"),
        (dict(inner_steps=1.5), "inner_steps"),
        (dict(mode="fast"), "mode"),
        (dict(layer_norm="no"), "layer_norm"),  # a truthy string would silently turn layer norm on
        (dict(layer_norm=None), "layer_norm"),
    ],
)
def test_bad_arguments_raise(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        FastWeightsRNN(4, 8, **kwargs)


def test_bad_sizes_and_shapes_raise():
    with pytest.raises(ValueError, match="hidden_size"):
        FastWeightsRNN(4, 0)
    core = FastWeightsRNN(4, 8)
    with pytest.raises(ValueError, match="x must be"):
        core(torch.randn(3, 2, 5))
    with pytest.raises(ValueError, match="write_mask"):
        core(torch.randn(3, 2, 4), write_mask=torch.ones(3, 3))
    with pytest.raises(ValueError, match=r"hidden_resets must be \[T, B\] = \(3, 2\), got \(2, 2\)"):
        core.outputs(torch.randn(3, 2, 4), hidden_resets=torch.ones(2, 2))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    torch.manual_seed(7)
    core = make_memory("fastweights", 4, 16)
    x = torch.randn(12, 3, 4)
    starts = (torch.rand(12, 3) < 0.2).float()
    y_cpu, _ = core(x, episode_starts=starts)
    y_gpu, _ = core.cuda()(x.cuda(), episode_starts=starts.cuda())
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, rtol=1e-4, atol=1e-5)


def test_backward_leaves_the_incoming_gradient_untouched():
    torch.manual_seed(8)
    core = make_memory("fastweights", 3, 4)
    x = torch.randn(5, 2, 3)
    y, _ = core(x)
    # A gradient arriving as a transposed view of a [B, T, H] buffer, as the policy's
    # y.transpose(0, 1).reshape(...) produces it.
    upstream = torch.randn(2, 5, 4)
    kept = upstream.clone()
    y.backward(upstream.transpose(0, 1))
    assert torch.equal(upstream, kept)


# ---------------------------------------------------------------- fast_share: η as a share
@pytest.mark.parametrize("mode", MODES_AND_CHUNKS)
@pytest.mark.parametrize("hidden,decay", [(5, 0.9), (12, 0.6)])
def test_normalized_core_is_the_reference_with_the_paper_eta(mode, hidden, decay):
    """``fast_share`` computes Eq. 1/5 exactly with η_paper = η (1-λ)/H: values and
    gradients against the float64 reference called with that η."""
    torch.manual_seed(2)
    core = use_mode(FastWeightsRNN(3, hidden, fast_share=2.5, decay=decay, inner_steps=2).double(), mode)
    assert core.paper_fast_lr == pytest.approx(2.5 * (1 - decay) / hidden, rel=1e-15)
    x = torch.randn(7, 4, 3, dtype=DT, requires_grad=True)
    h0 = torch.rand(4, hidden, dtype=DT, requires_grad=True)
    A0 = (0.1 * torch.randn(4, hidden, hidden, dtype=DT)).requires_grad_(True)
    starts = torch.zeros(7, 4, dtype=DT)
    starts[3, 1] = starts[5, 2] = 1
    y, (h, A) = core(x, (h0, A0), starts)
    zx = core.C(x)
    paper = dict(decay=decay, fast_lr=2.5 * (1 - decay) / hidden, inner_steps=2, episode_starts=starts)
    ref = fast_weights_reference(zx, h0, A0, core.W.weight, core.ln.weight, core.ln.bias, **paper)
    tensors = [x, h0, A0, core.W.weight, core.C.weight, core.ln.weight]
    assert_same_values_and_gradients(ref, (y, h, A), tensors)


def test_normalized_equals_the_paper_parameterisation_at_the_mapped_eta():
    torch.manual_seed(4)
    normalized = FastWeightsRNN(6, 16, fast_share=3.0, decay=0.8)
    paper = FastWeightsRNN(6, 16, fast_lr=3.0 * 0.2 / 16, decay=0.8)
    paper.load_state_dict(normalized.state_dict())
    x = torch.randn(30, 5, 6)
    y, (h, A) = normalized(x)
    y2, (h2, A2) = paper(x)
    assert torch.equal(y, y2) and torch.equal(A, A2)
    assert normalized.fast_lr is None and paper.fast_share is None and paper.fast_lr == paper.paper_fast_lr


@pytest.mark.parametrize("hidden", [8, 64])
@pytest.mark.parametrize("decay", [0.5, 0.99])
def test_normalized_fast_weights_are_bounded_by_eta_at_any_width_and_length(hidden, decay):
    """With unit layer-norm gain |h|² <= H, so the moving average of h hᵀ/H has ‖A‖_F <= η,
    whatever H, λ and the sequence length (the paper's η gives η H / (1-λ))."""
    torch.manual_seed(6)
    core = FastWeightsRNN(8, hidden, fast_share=2.0, decay=decay)
    with torch.no_grad():
        _, (_, A) = core(4 * torch.randn(2_000, 4, 8))
    norms = torch.linalg.matrix_norm(A)
    assert norms.max() <= 2.0 * (1 + 1e-5)
    assert norms.min() > 0.05  # and the memory is used, not vanishing


def test_normalize_is_no_longer_an_option():
    """η's unit is its name (fast_lr or fast_share); the old switch is refused, not ignored."""
    with pytest.raises(TypeError, match="normalize"):
        FastWeightsRNN(4, 8, normalize=True)


# ------------------------------------------- the scan's two passes, each on its own
@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_scan_fwd_alone_equals_the_reference(chunk, block_reads):
    """:func:`fast_weights_scan_fwd` (no autograd) returns the reference's y, h_T and A_T."""
    from fw_agents.memory.ops.chunked_scan_fwd import fast_weights_scan_fwd
    from fw_agents.memory.ops.options import OpOptions
    from fw_agents.memory.ops.chunking import hidden_reset_mask

    zx, h, A, W, gain, bias, starts, write = _inputs(T=7, B=4, writes=True, seed=9)
    ref = fast_weights_reference(zx, h, A, W, gain, bias, **FAST, inner_steps=2, episode_starts=starts, write_mask=write)
    options = OpOptions(decay=0.9, fast_lr=0.5, inner_steps=2, chunk_size=chunk)
    starts_b = starts > 0.5
    *out, residuals = fast_weights_scan_fwd(zx, h, A, W, gain, bias, starts_b, write, hidden_reset_mask(starts_b, None), options)
    for a, b in zip(ref, out):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    assert [c.stop - c.start for c in residuals.chunks] == [min(chunk, 7 - s) for s in range(0, 7, chunk)]


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_scan_bwd_alone_equals_autograd_of_the_reference(chunk, block_reads):
    """:func:`fast_weights_scan_bwd`, fed the forward's residuals and output cotangents,
    returns autograd's gradients of the float64 reference for every input."""
    from fw_agents.memory.ops.chunked_scan_bwd import fast_weights_scan_bwd
    from fw_agents.memory.ops.chunked_scan_fwd import fast_weights_scan_fwd
    from fw_agents.memory.ops.options import OpOptions

    zx, h, A, W, gain, bias, starts, write = _inputs(T=7, B=4, writes=True, seed=10)
    inputs = [t.requires_grad_(True) for t in (zx, h, A, W, gain, bias)]
    ref = fast_weights_reference(*inputs, **FAST, inner_steps=2, episode_starts=starts, write_mask=write)
    cotangents = [torch.randn_like(o) for o in ref]
    expected = torch.autograd.grad(sum((o * c).sum() for o, c in zip(ref, cotangents)), inputs)
    options = OpOptions(decay=0.9, fast_lr=0.5, inner_steps=2, chunk_size=chunk)
    with torch.no_grad():
        *_, residuals = fast_weights_scan_fwd(*inputs, starts > 0.5, write, starts > 0.5, options)
        got = fast_weights_scan_bwd(residuals, *cotangents)
    for a, b in zip(expected, got):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("decay", [0.0, 1.0])
@pytest.mark.parametrize("chunk", [1, 2, 5])
@pytest.mark.parametrize("writes", [False, True])
def test_scan_at_decay_0_and_1_matches_reference(decay, chunk, writes):
    """λ = 0 (A holds the last write only) and λ = 1 (no decay): the scan's log-space
    coefficients must not turn log 0 into a math error or -inf - -inf into NaN."""
    g = torch.Generator().manual_seed(3)
    T, B, H = 5, 2, 3
    zx = torch.randn(T, B, H, dtype=DT, generator=g)
    h, A = torch.rand(B, H, dtype=DT, generator=g), 0.2 * torch.randn(B, H, H, dtype=DT, generator=g)
    W, gain, bias = 0.05 * torch.eye(H, dtype=DT), torch.ones(H, dtype=DT), torch.zeros(H, dtype=DT)
    write = None
    if writes:
        write = torch.ones(T, B, dtype=DT)
        write[2, 0] = write[0, 1] = 0.0
    kw = dict(decay=decay, fast_lr=0.5, inner_steps=2, write_mask=write)
    want = fast_weights_reference(zx, h, A, W, gain, bias, **kw)
    got = fast_weights_scan(zx, h, A, W, gain, bias, **kw, chunk_size=chunk)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_scan_refuses_zero_inner_steps():
    zx = torch.randn(3, 2, 4)
    with pytest.raises(ValueError, match="inner_steps"):
        fast_weights_scan(zx, torch.zeros(2, 4), None, torch.eye(4), None, None, decay=0.9, fast_lr=0.5, inner_steps=0)


def test_ops_share_one_signature():
    """Reference, scan and step take the same arguments, in the same order, options keyword-only."""
    import inspect

    signatures = {f.__name__: inspect.signature(f) for f in (fast_weights_reference, fast_weights_scan, fast_weights_step)}
    params = [[(p.name, p.kind, p.default) for p in s.parameters.values()] for s in signatures.values()]
    assert params[0] == params[1] == params[2], signatures
    positional = [p.name for p in signatures["fast_weights_scan"].parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == ["zx", "h", "A", "W", "ln_weight", "ln_bias"]


# ------------------------------------------- a start clears a non-finite carried state
def _state_with_bad_rows(batch, hidden, rows, bad):
    torch.manual_seed(11)
    h0 = torch.rand(batch, hidden, dtype=DT)
    A0 = 0.1 * torch.randn(batch, hidden, hidden, dtype=DT)
    for b in rows:
        h0[b, ::2] = bad
        A0[b, 1] = bad
    return h0, A0


@pytest.mark.parametrize("mode", MODES_AND_CHUNKS)
@pytest.mark.parametrize("steps", [1, 7])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("rows", [(1,), (0, 2, 3, 5), (2, 3, 4, 5), (0, 1, 2, 3, 4, 5)])
def test_start_at_step_0_clears_a_non_finite_carried_state(mode, steps, bad, rows):
    """Rows that start an episode at t = 0 give a fresh start's outputs (and final state) even
    when their carried h and A hold NaN/inf; their state gradient is exactly zero. ``rows``
    covers the scan's layouts: one restarting row (read in place), scattered restarting rows
    (reordered), a suffix of them, all of them."""
    core = use_mode(FastWeightsRNN(3, 5, inner_steps=2).double(), mode)
    x = torch.randn(steps, 6, 3, dtype=DT, generator=torch.Generator().manual_seed(12))
    starts = torch.zeros(steps, 6, dtype=DT)
    starts[0, list(rows)] = 1.0
    if steps > 1:
        starts[4, 1] = 1.0
    h0, A0 = _state_with_bad_rows(6, 5, rows, bad)
    clean = (h0.clone(), A0.clone())
    clean[0][list(rows)] = 0.0
    clean[1][list(rows)] = 0.0
    h0.requires_grad_(True)
    A0.requires_grad_(True)
    y, (h, A) = core(x, (h0, A0), starts)
    y_clean, (h_clean, A_clean) = core(x, clean, starts)
    assert torch.isfinite(y).all() and torch.isfinite(A).all()
    for got, want in ((y, y_clean), (h, h_clean), (A, A_clean)):
        assert torch.equal(got, want)
    y_fresh, _ = core(x[:, list(rows)], None, starts[:, list(rows)])
    torch.testing.assert_close(y[:, list(rows)], y_fresh, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(y.sum() + A.sum(), [h0, A0, *core.parameters()], allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in grads)  # None: not read at all
    assert all(g is None or not g[list(rows)].any() for g in grads[:2])


@pytest.mark.parametrize("mode", MODES_AND_CHUNKS)
@pytest.mark.parametrize("steps", [1, 7])
def test_non_finite_state_without_a_start_stays_non_finite(mode, steps):
    """No start: a NaN carried state is not hidden (its row's outputs stay non-finite), and
    it does not leak into the other rows."""
    core = use_mode(FastWeightsRNN(3, 5).double(), mode)
    x = torch.randn(steps, 6, 3, dtype=DT, generator=torch.Generator().manual_seed(13))
    state = _state_with_bad_rows(6, 5, (2,), float("nan"))
    starts = torch.zeros(steps, 6, dtype=DT)
    starts[0, 4] = 1.0  # another row restarts: the scan's reader layouts are in play
    y, (h, A) = core(x, state, starts)
    assert not torch.isfinite(y[:, 2]).any() and not torch.isfinite(h[2]).any()
    others = [0, 1, 3, 4, 5]
    assert torch.isfinite(y[:, others]).all() and torch.isfinite(A[others]).all()


@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.bool, torch.int64])
def test_reference_write_mask_of_another_dtype_keeps_float64(mask_dtype):
    """A float64 reference with an all-ones write mask of another dtype (torch.ones' default
    float32, a bool mask) is the unmasked recurrence to float64 precision: the per-step decay
    must not be computed in the mask's precision."""
    core = FastWeightsRNN(3, 4, decay=0.95, mode="reference").double()
    x = torch.randn(50, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y, (_, A) = core(x, write_mask=torch.ones(50, 2, dtype=mask_dtype))
    y_none, (_, A_none) = core(x)
    torch.testing.assert_close(A, A_none, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(y, y_none, rtol=1e-13, atol=1e-13)


def test_the_scan_saves_every_residual_tensor_by_name():
    # ScanResiduals.split hands ctx.save_for_backward the fields named in TENSORS: a tensor field
    # missing there would be kept on ctx instead (escaping autograd's checks and its memory
    # accounting); a name there that is not a tensor field would fail here
    from dataclasses import fields

    from fw_agents.memory.ops.chunked_scan_fwd import ChunkResiduals, ScanResiduals, fast_weights_scan_fwd
    from fw_agents.memory.ops.options import OpOptions

    T, B, H = 5, 3, 4
    starts = torch.zeros(T, B, dtype=torch.bool)
    starts[2, 1] = True
    *_, res = fast_weights_scan_fwd(torch.randn(T, B, H), torch.randn(B, H), torch.randn(B, H, H), torch.eye(H),
                                    torch.ones(H), torch.zeros(H), starts, None, starts,
                                    OpOptions(0.9, 0.5, 2, 2))  # fmt: skip
    for kind, objects in ((ScanResiduals, [res]), (ChunkResiduals, res.chunks)):
        holding = {f.name for o in objects for f in fields(o) if isinstance(getattr(o, f.name), torch.Tensor)}
        assert holding <= set(kind.TENSORS) <= {f.name for f in fields(kind)}
    tensors, skeleton = res.split()
    assert all(t is None or isinstance(t, torch.Tensor) for t in tensors)
    assert not any(isinstance(getattr(skeleton, n), torch.Tensor) for n in ScanResiduals.TENSORS)
    again = skeleton.join(tuple(tensors))
    assert all(getattr(again, n) is getattr(res, n) for n in ScanResiduals.TENSORS)
