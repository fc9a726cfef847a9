"""Core-specific checks of the baseline cores against hand-written loops of their equations."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from fw_agents.memory import make_memory
from fw_agents.memory.alstm import AssociativeLSTMCore, complex_bound, holographic_read, holographic_write
from fw_agents.memory.feedforward import NoMemoryCore
from fw_agents.memory.rnn import GRUCore, IRNNCore, LSTMCore

INPUT, HIDDEN, BATCH, STEPS = 5, 6, 3, 8
Cell = Callable[[torch.Tensor, tuple[torch.Tensor, ...]], tuple[torch.Tensor, tuple[torch.Tensor, ...]]]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def inputs(seed: int, steps: int = STEPS, batch: int = BATCH, features: int = INPUT, dtype=torch.float64):
    """Inputs ``[T, B, F]`` and random episode starts ``[T, B]`` (row 0 never resets)."""
    x = torch.randn(steps, batch, features, generator=gen(seed), dtype=dtype)
    starts = (torch.rand(steps, batch, generator=gen(seed + 1)) < 0.3).to(dtype)
    starts[:, 0] = 0.0
    return x, starts


def hand_loop(cell: Cell, x: torch.Tensor, state: tuple[torch.Tensor, ...], starts: torch.Tensor):
    """Run ``cell`` one step and one example at a time, zeroing the state at each start."""
    ys = torch.zeros(x.shape[0], x.shape[1], HIDDEN, dtype=x.dtype)
    finals = []
    for b in range(x.shape[1]):
        s = tuple(t[b] for t in state)
        for t in range(x.shape[0]):
            if starts[t, b]:
                s = tuple(torch.zeros_like(v) for v in s)
            ys[t, b], s = cell(x[t, b], s)
        finals.append(s)
    return ys, tuple(torch.stack(parts) for parts in zip(*finals))


def check_against(core, cell: Cell, seed: int) -> None:
    """``core`` (in float64) equals the hand loop of ``cell``, from a random state, with resets."""
    core = core.double()
    x, starts = inputs(seed)
    state = tuple(
        0.5 * torch.randn(BATCH, *shape, generator=gen(seed + 2), dtype=torch.float64) for shape in core.state_shapes
    )
    with torch.no_grad():
        y, final = core(x, state, starts)
        y_ref, final_ref = hand_loop(cell, x, state, starts)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    for s, s_ref in zip(final, final_ref):
        torch.testing.assert_close(s, s_ref, atol=1e-10, rtol=1e-10)


# ---------------------------------------------------------------------- IRNN
def test_irnn_initialisation() -> None:
    torch.manual_seed(0)
    core = IRNNCore(INPUT, 64)
    rnn = core.rnn
    assert rnn.nonlinearity == "relu"
    torch.testing.assert_close(rnn.weight_hh_l0, 0.5 * torch.eye(64), atol=0, rtol=0)
    assert (rnn.bias_ih_l0 == 0).all() and (rnn.bias_hh_l0 == 0).all()
    bound = 1.0 / math.sqrt(64)
    assert rnn.weight_ih_l0.abs().max() <= bound
    assert rnn.weight_ih_l0.abs().max() > 0.8 * bound  # uniform over the whole range, not a tiny init
    assert rnn.weight_ih_l0.std() > 0.4 * bound
    torch.testing.assert_close(IRNNCore(INPUT, 8, identity_scale=0.25).rnn.weight_hh_l0, 0.25 * torch.eye(8))


@pytest.mark.parametrize("bad", [0, -0.5, float("nan"), float("inf"), True, "0.5"])
def test_irnn_bad_identity_scale(bad: object) -> None:
    with pytest.raises(ValueError, match="identity_scale"):
        IRNNCore(INPUT, HIDDEN, identity_scale=bad)


def test_irnn_is_a_relu_rnn() -> None:
    torch.manual_seed(1)
    core = IRNNCore(INPUT, HIDDEN)
    with torch.no_grad():  # non-trivial biases and recurrent weights, so every term is exercised
        for p in (core.rnn.bias_ih_l0, core.rnn.bias_hh_l0):
            p.normal_(0.0, 0.3)
        core.rnn.weight_hh_l0.add_(0.2 * torch.randn(HIDDEN, HIDDEN))
    w_ih, w_hh = core.rnn.weight_ih_l0.double(), core.rnn.weight_hh_l0.double()
    b = core.rnn.bias_ih_l0.double() + core.rnn.bias_hh_l0.double()

    def cell(x, state):
        (h,) = state
        h = torch.relu(w_ih @ x + w_hh @ h + b)
        return h, (h,)

    check_against(core, cell, seed=10)
    x, starts = inputs(11)
    y, _ = core(x, None, starts)
    assert (y >= 0).all() and (y == 0).any()  # ReLU: non-negative with some units off


# ----------------------------------------------------------------- LSTM, GRU
def test_lstm_matches_its_equations() -> None:
    torch.manual_seed(2)
    core = LSTMCore(INPUT, HIDDEN)
    w_ih, w_hh = core.rnn.weight_ih_l0.double(), core.rnn.weight_hh_l0.double()
    b = core.rnn.bias_ih_l0.double() + core.rnn.bias_hh_l0.double()

    def cell(x, state):
        h, c = state
        i, f, g, o = (w_ih @ x + w_hh @ h + b).chunk(4)  # torch's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)

    check_against(core, cell, seed=20)


def test_gru_matches_its_equations() -> None:
    torch.manual_seed(3)
    core = GRUCore(INPUT, HIDDEN)
    w_ih, w_hh = core.rnn.weight_ih_l0.double(), core.rnn.weight_hh_l0.double()
    b_ih, b_hh = core.rnn.bias_ih_l0.double(), core.rnn.bias_hh_l0.double()

    def cell(x, state):
        (h,) = state
        xr, xz, xn = (w_ih @ x + b_ih).chunk(3)
        hr, hz, hn = (w_hh @ h + b_hh).chunk(3)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        return h, (h,)

    check_against(core, cell, seed=30)


def test_lstm_core_equals_torch_lstm_cell_with_shared_weights() -> None:
    torch.manual_seed(4)
    core = LSTMCore(INPUT, HIDDEN)
    cell = torch.nn.LSTMCell(INPUT, HIDDEN)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(core.rnn, f"{name}_l0"))
    x, _ = inputs(40, dtype=torch.float32)
    y, (h, c) = core(x)
    h_ref = c_ref = torch.zeros(BATCH, HIDDEN)
    for t in range(STEPS):
        h_ref, c_ref = cell(x[t], (h_ref, c_ref))
        torch.testing.assert_close(y[t], h_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(h, h_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(c, c_ref, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------- associative LSTM
def alstm_reference(core: AssociativeLSTMCore, x, state, starts):
    """The associative LSTM written literally from its equations: complex128, one example,
    one step, one head and one copy at a time, permutations as permutation matrices."""
    n, heads, copies = core.num_units, core.num_heads, core.num_copies
    w_x = core.input_proj.weight.detach().double()
    b_x = core.input_proj.bias.detach().double()
    w_h = core.recurrent_proj.weight.detach().double()
    perms = [torch.eye(n, dtype=torch.complex128)[p] for p in core.permutations]  # (P_s r)_j = r[perm_s[j]]

    def as_complex(v):  # [Re ; Im] -> complex
        return torch.complex(v[:n], v[n:])

    def as_real(z):
        return torch.cat([z.real, z.imag])

    def bound(z):
        return z / torch.clamp(z.abs(), min=1.0)

    sigmoid = torch.sigmoid
    ys = torch.zeros(x.shape[0], x.shape[1], 2 * n, dtype=torch.float64)
    h_final, c_final = [], []
    for b in range(x.shape[1]):
        h = as_complex(state[0][b].double())
        c = [as_complex(state[1][b, s].double()) for s in range(copies)]
        for t in range(x.shape[0]):
            if starts[t, b]:
                h = torch.zeros_like(h)
                c = [torch.zeros_like(cs) for cs in c]
            pre = w_x @ x[t, b] + b_x + w_h @ as_real(h)
            g_f, g_i, g_o = sigmoid(pre[:n]), sigmoid(pre[n : 2 * n]), sigmoid(pre[2 * n : 3 * n])
            r_i, r_o, u = [], [], []
            for k in range(heads):
                block = pre[3 * n + 6 * n * k : 3 * n + 6 * n * (k + 1)]
                r_i.append(bound(as_complex(block[: 2 * n])))
                r_o.append(bound(as_complex(block[2 * n : 4 * n])))
                u.append(bound(as_complex(block[4 * n :])))
            c = [g_f * c[s] + sum((perms[s] @ r_i[k]) * (g_i * u[k]) for k in range(heads)) for s in range(copies)]
            read = sum((perms[s] @ r_o[k]) * c[s] for s in range(copies) for k in range(heads)) / copies
            h = g_o * bound(read)
            ys[t, b] = as_real(h)
        h_final.append(as_real(h))
        c_final.append(torch.stack([as_real(cs) for cs in c]))
    return ys, (torch.stack(h_final), torch.stack(c_final))


@pytest.mark.parametrize("copies, heads", [(4, 3), (1, 1), (3, 2)])
def test_alstm_matches_the_reference(copies: int, heads: int) -> None:
    torch.manual_seed(5)
    hidden = 8
    core = AssociativeLSTMCore(INPUT, hidden, num_copies=copies, num_heads=heads)
    x, starts = inputs(50)
    state = (
        0.5 * torch.randn(BATCH, hidden, generator=gen(52), dtype=torch.float64),
        torch.randn(BATCH, copies, hidden, generator=gen(53), dtype=torch.float64),
    )
    y_ref, (h_ref, c_ref) = alstm_reference(core, x, state, starts)
    assert y_ref.abs().max() > 0.05  # the reference is not trivially zero

    with torch.no_grad():
        y32, (h32, c32) = core(x.float(), tuple(s.float() for s in state), starts.float())
        y64, (h64, c64) = core.double()(x, state, starts)
    for got, want in ((y64, y_ref), (h64, h_ref), (c64, c_ref)):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    for got, want in ((y32, y_ref), (h32, h_ref), (c32, c_ref)):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    assert y64.abs().max() <= 1.0  # |g_o| <= 1 and bound() caps each complex unit's modulus at 1


def test_alstm_permutations() -> None:
    torch.manual_seed(6)
    core = AssociativeLSTMCore(INPUT, 64, num_copies=4, num_heads=3)
    perms = core.permutations
    assert perms.shape == (4, 32) and perms.dtype == torch.long
    for p in perms:
        assert sorted(p.tolist()) == list(range(32))
    assert len({tuple(p.tolist()) for p in perms}) == 4  # distinct copies
    assert "permutations" in core.state_dict()
    # Loading a state_dict restores the permutations too, so the outputs match.
    torch.manual_seed(7)
    other = AssociativeLSTMCore(INPUT, 64, num_copies=4, num_heads=3)
    assert not torch.equal(other.permutations, perms)
    other.load_state_dict(core.state_dict())
    x, starts = inputs(60, dtype=torch.float32)
    torch.testing.assert_close(other(x, None, starts)[0], core(x, None, starts)[0], atol=0, rtol=0)


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"hidden_size": 7}, "hidden_size"),
        ({"num_copies": 0}, "num_copies"),
        ({"num_copies": 2.0}, "num_copies"),
        ({"num_heads": 0}, "num_heads"),
        ({"num_heads": -3}, "num_heads"),
    ],
)
def test_alstm_bad_arguments(kwargs: dict, bad: str) -> None:
    args = {"input_size": INPUT, "hidden_size": HIDDEN, **kwargs}
    with pytest.raises(ValueError, match=bad):
        AssociativeLSTMCore(**args)


def test_alstm_defaults_are_the_papers() -> None:
    core = make_memory("alstm", INPUT, HIDDEN)
    assert (core.num_copies, core.num_heads) == (4, 3)


# Holographic retrieval, through the full core. With W_x = I, b = 0, W_h = 0 the input *is* the
# pre-activation, so each step's gates, keys and values can be dictated.
LOGIT = 30.0  # sigmoid(±30) is 1 or 0 to within 1e-13


def _direct_core(units: int, copies: int, heads: int) -> AssociativeLSTMCore:
    size = 3 * units + 6 * units * heads
    core = AssociativeLSTMCore(size, 2 * units, num_copies=copies, num_heads=heads).double()
    with torch.no_grad():
        core.input_proj.weight.copy_(torch.eye(size, dtype=torch.float64))
        core.input_proj.bias.zero_()
        core.recurrent_proj.weight.zero_()
    return core


def _pre(units: int, heads: int, forget: float, write: float, out: float, r_i=None, r_o=None, u=None):
    """Pre-activation with gate logits and, for head 0 only, complex keys/value (other heads: 0)."""
    zero = torch.zeros(units, dtype=torch.complex128)
    gates = torch.tensor([forget, write, out], dtype=torch.float64).repeat_interleave(units)
    head0 = [z if z is not None else zero for z in (r_i, r_o, u)]
    blocks = [gates] + [torch.cat([torch.cat([z.real, z.imag]) for z in head0])]
    blocks += [torch.zeros(6 * units, dtype=torch.float64)] * (heads - 1)
    return torch.cat(blocks)


def _random_pairs(count: int, units: int, seed: int):
    g = gen(seed)
    keys = torch.exp(1j * 2 * math.pi * torch.rand(count, units, generator=g, dtype=torch.float64))  # |key| = 1
    values = 0.9 * torch.exp(1j * 2 * math.pi * torch.rand(count, units, generator=g, dtype=torch.float64))
    return keys, values


def _store_then_recall(core: AssociativeLSTMCore, keys, values) -> torch.Tensor:
    """Write every pair (one per step, head 0), then in one more step read each stored value
    back with the conjugate key (one recall per batch row). Returns the recalled complex values."""
    count, units, heads = keys.shape[0], core.num_units, core.num_heads
    writes = [_pre(units, heads, LOGIT, LOGIT, -LOGIT, r_i=k, u=v) for k, v in zip(keys, values)]
    x = torch.stack(writes)[:, None, :].expand(count, count, -1)  # same writes in every row
    reads = torch.stack([_pre(units, heads, LOGIT, -LOGIT, LOGIT, r_o=k.conj()) for k in keys])
    x = torch.cat([x, reads[None]])  # [count + 1, count, P]
    with torch.no_grad():
        y, _ = core(x)
    return torch.complex(y[-1, :, :units], y[-1, :, units:])


def test_alstm_recalls_a_single_stored_value() -> None:
    torch.manual_seed(8)
    core = _direct_core(units=16, copies=4, heads=3)
    keys, values = _random_pairs(1, 16, seed=70)
    recalled = _store_then_recall(core, keys, values)
    torch.testing.assert_close(recalled, values, atol=1e-9, rtol=0)


def test_alstm_redundant_copies_reduce_retrieval_noise() -> None:
    units, count = 64, 4
    keys, values = _random_pairs(count, units, seed=80)
    errors = {}
    for copies in (1, 4, 16):
        torch.manual_seed(9)
        recalled = _store_then_recall(_direct_core(units, copies, heads=1), keys, values)
        errors[copies] = (recalled - values).abs().square().mean().item()
    assert errors[1] > errors[4] > errors[16]
    # Interference of the other items: variance (count - 1)·|v|² per unit, divided by S when averaging
    # S differently permuted copies (bound() trims it a little more at S = 1, where it is large).
    expected = (count - 1) * 0.9**2 / 16
    assert 0.5 * expected < errors[16] < 1.5 * expected
    assert errors[1] > 0.5


def test_alstm_helpers_store_and_retrieve() -> None:
    """The memory algebra alone: write with one key, read with its conjugate (any permutations)."""
    units, copies = 10, 3
    keys, values = _random_pairs(1, units, seed=90)
    perms = torch.stack([torch.randperm(units, generator=gen(91 + s)) for s in range(copies)])
    cells = torch.zeros(1, copies, units, dtype=torch.complex128)
    forget = torch.ones(1, units, dtype=torch.float64)
    cells = holographic_write(cells, forget, keys[None], values[None], perms)
    torch.testing.assert_close(cells[0, 1], keys[0][perms[1]] * values[0])  # copy s holds (P_s r) ⊛ v
    read = holographic_read(cells, keys[None].conj(), perms)
    torch.testing.assert_close(read[0], values[0], atol=1e-12, rtol=0)


def test_complex_bound() -> None:
    re = torch.tensor([3.0, 0.3, 0.0], dtype=torch.float64, requires_grad=True)
    im = torch.tensor([4.0, -0.4, 0.0], dtype=torch.float64, requires_grad=True)
    out = complex_bound(torch.complex(re, im))
    torch.testing.assert_close(out.detach(), torch.tensor([0.6 + 0.8j, 0.3 - 0.4j, 0.0], dtype=torch.complex128))
    (out.real.sum() + out.imag.sum()).backward()
    assert torch.isfinite(re.grad).all() and torch.isfinite(im.grad).all()  # including at z = 0
    torch.testing.assert_close(re.grad[1:], torch.ones(2, dtype=torch.float64))  # identity inside the unit disc
    torch.testing.assert_close(im.grad[1:], torch.ones(2, dtype=torch.float64))


# ------------------------------------------------------------------- no memory
def test_no_memory_is_a_per_step_relu_layer_and_ignores_state() -> None:
    torch.manual_seed(10)
    core = NoMemoryCore(INPUT, HIDDEN)
    assert core.state_shapes == ((0,),) and core.state_size == 0
    x, starts = inputs(100, dtype=torch.float32)
    y, state = core(x)
    torch.testing.assert_close(y, torch.relu(x @ core.linear.weight.T + core.linear.bias))
    for t in range(STEPS):  # equal up to rounding: BLAS may block a [B, F] and a [T*B, F] product differently
        torch.testing.assert_close(core(x[t : t + 1])[0][0], y[t], atol=1e-7, rtol=1e-6)
    assert core.pack_state(state).shape == (BATCH, 0)
    assert [s.shape for s in core.unpack_state(torch.zeros(BATCH, 0))] == [(BATCH, 0)]
    torch.testing.assert_close(core(x, core.initial_state(BATCH), starts)[0], y, atol=0, rtol=0)
    # The output of a step depends on that step's input only.
    x2 = x.clone()
    x2[:-1] = torch.randn(STEPS - 1, BATCH, INPUT)
    torch.testing.assert_close(core(x2)[0][-1], y[-1], atol=0, rtol=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_alstm_start_clears_a_non_finite_carried_state(bad: float) -> None:
    """A start at t = 0 zeroes the row's h and memory exactly, even when they hold NaN/inf
    (torch.where, not a product); without a start the NaN is not hidden."""
    torch.manual_seed(14)
    core = AssociativeLSTMCore(INPUT, HIDDEN, num_copies=2, num_heads=2).double()
    x, starts = inputs(54)
    starts[0] = torch.tensor([1.0, 0.0, 1.0])
    h0 = torch.rand(BATCH, HIDDEN, dtype=torch.float64)
    c0 = torch.randn(BATCH, 2, HIDDEN, dtype=torch.float64)
    h0[[0, 1], 1] = bad
    c0[[0, 1], 0, 2] = bad
    clean = (h0.clone(), c0.clone())
    clean[0][[0, 2]] = 0.0
    clean[1][[0, 2]] = 0.0
    y, (h, c) = core(x, (h0, c0), starts)
    y_clean, (h_clean, c_clean) = core(x, clean, starts)
    rows = [0, 2]
    assert torch.equal(y[:, rows], y_clean[:, rows]) and torch.equal(c[rows], c_clean[rows])
    y_fresh, _ = core(x[:, rows], None, starts[:, rows])
    torch.testing.assert_close(y[:, rows], y_fresh, rtol=1e-12, atol=1e-12)
    # row 1 carries the NaN/inf without a start at t = 0: its first output is not finite
    assert not torch.isfinite(y[0, 1]).all()
