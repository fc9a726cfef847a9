"""The compiled scan loops (fw_agents.memory.ops.compiled): bitwise the Python loops, and optional.

The C++ port runs the same ATen ops in the same order as the Python loops it replaces, so
values and gradients must be *equal*, not close, in every configuration of the scan (chunk
sizes, inner steps, layer norm on and off, an initial A read by some rows, episode starts,
write masks, hidden resets). The Python loops themselves are held to the float64 reference
by tests/test_fast_weights.py and tests/test_fast_weights_options.py.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
import warnings

import pytest
import torch

from fw_agents.memory import FastWeightsRNN
from fw_agents.memory.ops import compiled, fast_weights_scan

needs_toolchain = pytest.mark.skipif(
    shutil.which("ninja") is None or (shutil.which("c++") is None and shutil.which("g++") is None),
    reason="no C++ compiler or ninja on this machine: the compiled loops cannot be built (the scan runs its Python loops)",
)


@pytest.fixture
def choose(monkeypatch):
    """Set FW_AGENTS_COMPILED for the next scan (and restore the session's choice afterwards)."""

    def set_choice(value: str) -> None:
        monkeypatch.setenv("FW_AGENTS_COMPILED", value)
        compiled.reset()

    yield set_choice
    compiled.reset()


def _scan_outputs_and_grads(dtype, T, B, with_A, p_start, write, resets, **options):
    g = torch.Generator().manual_seed(1)
    H = 8
    zx = torch.randn(T, B, H, generator=g, dtype=dtype, requires_grad=True)
    h = torch.randn(B, H, generator=g, dtype=dtype, requires_grad=True)
    A = (0.1 * torch.randn(B, H, H, generator=g, dtype=dtype)).requires_grad_() if with_A else None
    W = (0.2 * torch.randn(H, H, generator=g, dtype=dtype)).requires_grad_()
    ln_w = (1 + 0.1 * torch.randn(H, generator=g, dtype=dtype)).requires_grad_()
    ln_b = (0.1 * torch.randn(H, generator=g, dtype=dtype)).requires_grad_()
    starts = (torch.rand(T, B, generator=g) < p_start).to(dtype)
    write_mask = (torch.rand(T, B, generator=g) < 0.7).to(dtype) if write else None
    hidden_resets = (torch.rand(T, B, generator=g) < 0.15).to(dtype) if resets else None
    y, h_T, A_T = fast_weights_scan(zx, h, A, W, ln_w, ln_b, decay=0.9, fast_lr=0.3, episode_starts=starts,
                                    write_mask=write_mask, hidden_resets=hidden_resets, **options)  # fmt: skip
    loss = (y * torch.linspace(-1, 1, H, dtype=dtype)).sum() + h_T.pow(2).sum() + A_T.pow(2).sum()
    leaves = [t for t in (zx, h, A, W, ln_w, ln_b) if t is not None]
    return [y, h_T, A_T, *torch.autograd.grad(loss, leaves, allow_unused=True)]


# every combination of the row options, each with one of the chunk sizes and inner-step counts in turn
CASES = [
    dict(T=T, B=3, with_A=with_A, p_start=p, write=write, resets=resets, layer_norm=norm != "none",
         rms_norm=norm == "rms", chunk_size=(1, 3, 64)[i % 3], inner_steps=(1, 2)[i // 3 % 2])  # fmt: skip
    for i, (T, with_A, p, write, resets, norm) in enumerate(
        itertools.product([1, 7], [False, True], [0.0, 0.3], [False, True], [False, True], ["layer", "rms", "none"])
    )
]


@needs_toolchain
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_loops_give_bitwise_the_python_loops(choose, dtype):
    for case in CASES:
        choose("0")
        python = _scan_outputs_and_grads(dtype, **case)
        assert compiled.loops() is None
        choose("1")
        built = _scan_outputs_and_grads(dtype, **case)
        assert compiled.loops() is not None
        for a, b in zip(python, built, strict=True):
            if a is None or b is None:
                assert a is None and b is None, case
                continue
            # equal, NaN for NaN (no layer norm lets some cases overflow: both must, alike)
            assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)), case


@needs_toolchain
def test_a_policy_update_through_the_compiled_loops_matches_the_python_loops(choose):
    # the agent's configuration (bias-corrected writes, sequences cut mid-episode reading A_in)
    torch.manual_seed(0)
    core = FastWeightsRNN(6, 16, bias_correction=True)
    x = torch.randn(9, 5, 6)
    starts = (torch.rand(9, 5) < 0.2).float()
    with torch.no_grad():
        _, state = core(torch.randn(4, 5, 6))
    grads = []
    for choice in ("0", "1"):
        choose(choice)
        core.zero_grad()
        y, (h_T, A_T, m_T) = core(x, state, starts)
        (y.pow(2).mean() + A_T.sum()).backward()
        grads.append([y, h_T, A_T, m_T] + [p.grad.clone() for p in core.parameters()])
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


def _rollout_steps(dtype, bias_correction, inner_steps, norm, starts_kind, extra_width, into_out):
    """Three rollout steps of a core on packed states (NaN carried in some rows' A, restarted)."""
    torch.manual_seed(3)
    layer_norm = norm != "none"
    core = FastWeightsRNN(5, 8, fast_share=0.7, decay=0.9, inner_steps=inner_steps, layer_norm=layer_norm,
                          rms_norm=norm == "rms", bias_correction=bias_correction).to(dtype)  # fmt: skip
    with torch.no_grad():
        core.W.weight.add_(0.1 * torch.randn(8, 8, dtype=dtype))
        if layer_norm:
            core.ln.weight.add_(0.1 * torch.randn(8, dtype=dtype))
            core.ln.bias.add_(0.1 * torch.randn(8, dtype=dtype))
    B, width = 4, core.state_size + extra_width
    packed = torch.randn(B, width, dtype=dtype) * 0.3
    if bias_correction:
        packed[:, core.state_size - 1] = torch.tensor([0.0, 0.2, 0.9, 0.5], dtype=dtype)
    packed[1, 8 + 5] = float("nan")  # a NaN in row 1's A: cleared exactly where that row restarts
    outputs = []
    with torch.no_grad():
        for _ in range(3):
            x = torch.randn(1, B, 5, dtype=dtype)
            starts = {"none": None, "zeros": torch.zeros(1, B), "some": torch.tensor([[0.0, 1.0, 0.0, 1.0]]),
                      "all": torch.ones(1, B)}[starts_kind]  # fmt: skip
            out = torch.full((B, width), 7.0, dtype=dtype) if into_out else None
            y, packed = core.forward_packed(x, packed, starts, width, out)
            assert out is None or packed is out
            outputs += [y, packed.clone()]
    return outputs


@needs_toolchain
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_compiled_rollout_step_gives_bitwise_the_python_step(choose, dtype):
    for case in itertools.product(
        [True, False], [1, 2], ["layer", "rms", "none"], ["none", "zeros", "some", "all"], [0, 3], [False, True]
    ):
        choose("0")
        python = _rollout_steps(dtype, *case)
        assert compiled.loops() is None
        choose("1")
        built = _rollout_steps(dtype, *case)
        assert compiled.loops() is not None
        for a, b in zip(python, built, strict=True):
            assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)), case


@needs_toolchain
def test_the_compiled_rollout_step_checks_its_inputs(choose):
    choose("1")
    core = FastWeightsRNN(5, 8, bias_correction=True)
    packed = torch.zeros(4, core.state_size)
    with torch.no_grad(), pytest.raises(ValueError, match="episode_starts must be"):
        core.forward_packed(torch.zeros(1, 4, 5), packed, torch.zeros(1, 3), core.state_size)
    with torch.no_grad(), pytest.raises(ValueError, match="x must be"):
        core.forward_packed(torch.zeros(1, 4, 6), packed, None, core.state_size)
    with torch.no_grad(), pytest.raises(ValueError, match="packed state"):
        core.forward_packed(torch.zeros(1, 4, 5), packed[:, :-1], None, core.state_size)


def test_the_setting_is_checked_and_0_never_builds(choose, monkeypatch):
    choose("sometimes")
    with pytest.raises(ValueError, match=r"FW_AGENTS_COMPILED='sometimes': accepted values are auto, 0, 1"):
        compiled.loops()
    choose("0")
    monkeypatch.setattr(compiled, "_build", lambda: pytest.fail("FW_AGENTS_COMPILED=0 must not build"))
    assert compiled.loops() is None
    assert compiled.loops_for(torch.zeros(1)) is None


def test_a_failed_build_warns_once_and_the_scan_runs_its_python_loops(choose, monkeypatch):
    calls = []

    def broken_build():
        calls.append(1)
        raise OSError("c++: command not found")

    monkeypatch.setattr(compiled, "_build", broken_build)
    choose("auto")
    with pytest.warns(RuntimeWarning, match="could not be built .*c\\+\\+: command not found.*Python loops"):
        assert compiled.loops() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the next scans neither retry nor warn again
        y, _, _ = fast_weights_scan(torch.ones(3, 2, 4), torch.zeros(2, 4), None, torch.eye(4), None, None,
                                    decay=0.9, fast_lr=0.5, inner_steps=1, layer_norm=False)  # fmt: skip
    assert len(calls) == 1 and y.shape == (3, 2, 4)
    choose("1")
    with pytest.raises(RuntimeError, match="FW_AGENTS_COMPILED=1: the compiled scan loops failed to build"):
        compiled.loops()


@needs_toolchain
def test_a_process_killed_while_loading_blocks_no_later_load(choose):
    """A process killed while it held the extension's locks (a suite worker killed as it starts)
    leaves torch's lock file behind; the next load must neither wait on it nor rebuild."""
    choose("1")
    assert compiled.loops() is not None  # built (or found) in this session's extensions folder
    build_dir = compiled.build_directory()
    library = build_dir / f"{build_dir.name}.so"
    built_at = library.stat().st_mtime_ns
    stale = build_dir / "lock"
    stale.write_text("")  # what torch's FileBaton leaves when its holder dies before releasing it
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_OUR_LOCK, str(build_dir / "fw_agents.lock")])
    try:
        time.sleep(0.5)
        holder.kill()  # dies holding our lock: the OS releases it
        holder.wait()
        code = "from fw_agents.memory.ops import compiled; assert compiled.loops() is not None"
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=dict(os.environ, FW_AGENTS_COMPILED="1"))
    finally:
        stale.unlink(missing_ok=True)
    assert library.stat().st_mtime_ns == built_at  # imported, not built again


_HOLD_OUR_LOCK = """
import fcntl, sys, time
handle = open(sys.argv[1], "a+")
fcntl.flock(handle, fcntl.LOCK_EX)
time.sleep(60)
"""


@needs_toolchain
def test_bench_memory_times_the_compiled_and_the_python_loops_side_by_side(choose):
    import importlib.util
    from pathlib import Path

    choose("1")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_memory.py"
    spec = importlib.util.spec_from_file_location("_bench_memory_compiled_test", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.measure(torch.device("cpu"), rounds=1, shapes=[(2, 8, 3)], latency=(2, 8))
    rows = results["B=2 H=8 T=3"]
    assert {bench.PEER, "fastweights", bench.PYTHON_LOOPS, bench.REFERENCE} <= set(rows)
    assert all(seconds > 0 for seconds in rows.values())
    assert compiled.loops() is not None  # the Python-loops row left the session's choice as it was


def test_train_agent_refuses_a_bad_setting_before_the_run(monkeypatch):
    from fw_agents.config import TrainConfig

    monkeypatch.setenv("FW_AGENTS_COMPILED", "yes")
    with pytest.raises(ValueError, match=r"FW_AGENTS_COMPILED='yes': accepted values are auto, 0, 1"):
        TrainConfig().validate()
