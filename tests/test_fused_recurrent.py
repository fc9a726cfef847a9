"""The fused Triton kernel (fw_agents.memory.ops.fused_recurrent) against the float64 reference loop.

Without a GPU the kernels run on CPU tensors under Triton's interpreter. The op reads
``TRITON_INTERPRET`` when it is called (it decorates its kernels lazily, once per mode),
so the ``interpreter`` fixture's ``monkeypatch.setenv`` is enough, whatever was imported
before and whether or not the suite was started with the variable set.

Tolerances (float32 kernel vs float64 reference): outputs and final state ``atol=2e-5,
rtol=1e-4``; gradients ``rtol=1e-4`` and ``atol=1e-4 × max(1, max|grad|)``. The float64
kernel is held to ``1e-10``.

Tests marked ``cuda`` compile the kernels for a real GPU; they skip without one
(``benchmarks/gpu_check.py`` runs them).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from fw_agents.memory.ops import fused_recurrent
from fw_agents.memory.ops.reference import fast_weights_reference

needs_triton = pytest.mark.skipif(not fused_recurrent.triton_available(), reason="triton is not installed")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run benchmarks/gpu_check.py)")


@pytest.fixture
def interpreter(monkeypatch, one_thread):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def make_case(T, B, H, *, given_A=True, affine=True, starts=(), write_off=(), resets=(), seed=0, device="cpu"):
    """float64 leaves (zx, h, A, W, ln_weight, ln_bias) and float64 masks ``[T, B]``."""
    g = torch.Generator().manual_seed(seed)
    zx = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    h = torch.randn(B, H, generator=g, dtype=torch.float64).relu()
    A = 0.2 * torch.randn(B, H, H, generator=g, dtype=torch.float64) if given_A else None
    W = 0.4 * torch.randn(H, H, generator=g, dtype=torch.float64) / H**0.5 + 0.05 * torch.eye(H, dtype=torch.float64)
    lnw = 1.0 + 0.2 * torch.randn(H, generator=g, dtype=torch.float64) if affine else None
    lnb = 0.1 * torch.randn(H, generator=g, dtype=torch.float64) if affine else None
    masks = {}
    for name, cells, fill, value in (("episode_starts", starts, 0.0, 1.0), ("write_mask", write_off, 1.0, 0.0),
                                     ("hidden_resets", resets, 0.0, 1.0)):  # fmt: skip
        if cells:
            m = torch.full((T, B), fill, dtype=torch.float64)
            for t, b in cells:
                m[t, b] = value
            masks[name] = m.to(device)
    leaves = [None if x is None else x.to(device) for x in (zx, h, A, W, lnw, lnb)]
    return leaves, masks


def run_both(leaves, masks, dtype, *, S, layer_norm, chunk, decay=0.9, fast_lr=0.5, output_final_state=True):
    """Forward and gradients of a random linear loss, for the reference (float64) and the kernel (dtype)."""
    T, B, H = leaves[0].shape
    g = torch.Generator().manual_seed(123)
    gy, gh, gA = (torch.randn(*s, generator=g, dtype=torch.float64).to(leaves[0].device) for s in ((T, B, H), (B, H), (B, H, H)))
    kw = dict(decay=decay, fast_lr=fast_lr, inner_steps=S, layer_norm=layer_norm, **masks)
    results = []
    for fn, dt in ((fast_weights_reference, torch.float64), (fused_recurrent.fused_recurrent_fast_weights, dtype)):
        xs = [None if x is None else x.to(dt).requires_grad_() for x in leaves]
        extra = dict(chunk_size=chunk, output_final_state=output_final_state)
        masks_dt = {k: v.to(dt) for k, v in masks.items()}
        y, h_T, A_T = fn(*xs, **{**kw, **masks_dt, **extra})
        loss = (y * gy.to(dt)).sum() + (h_T * gh.to(dt)).sum()
        if output_final_state:
            loss = loss + (A_T * gA.to(dt)).sum()
        used = [x for x in xs if x is not None and (layer_norm or x.dim() != 1)]
        grads = torch.autograd.grad(loss, used, allow_unused=True)
        results.append(((y, h_T, A_T), grads))
    return results


def check(results, fwd_atol=2e-5, rtol=1e-4, grad_atol=1e-4, output_final_state=True):
    (ref_out, ref_grads), (out, grads) = results
    names = ("y", "h_T", "A_T") if output_final_state else ("y", "h_T")
    for name, r, k in zip(names, ref_out, out):
        torch.testing.assert_close(k.double(), r, rtol=rtol, atol=fwd_atol, msg=lambda m: f"{name}: {m}")
    assert len(ref_grads) == len(grads)
    for i, (r, k) in enumerate(zip(ref_grads, grads)):
        assert k is not None and r is not None, f"gradient {i} missing"
        atol = grad_atol * max(1.0, r.abs().max().item())
        torch.testing.assert_close(k.double(), r, rtol=rtol, atol=atol, msg=lambda m: f"gradient {i}: {m}")


# (T, B, H, S, layer_norm, chunk, case options): T is never a multiple of the chunk but once
GRID = {
    "S1-ln-plain-pow2H": (20, 2, 8, 1, True, 16, dict(given_A=False)),
    "S2-ln-all-masks-H6": (11, 3, 6, 2, True, 4, dict(
        starts=[(0, 0), (5, 1), (9, 2)], write_off=[(2, 0), (5, 1), (10, 2)], resets=[(4, 0), (7, 2)])),
    "S1-noln-start-mid-H5": (9, 2, 5, 1, False, 2, dict(starts=[(3, 1), (8, 0)])),
    "S2-noln-write-A-none-H16": (7, 2, 16, 2, False, 8, dict(given_A=False, write_off=[(1, 0), (3, 1), (6, 0)],
                                                             fast_lr=0.02)),  # no layer norm: a small η keeps it finite
    "S1-ln-no-affine-resets-H7": (12, 2, 7, 1, True, 4, dict(affine=False, resets=[(2, 1), (6, 0)], starts=[(0, 1)])),
    "S2-ln-chunk1-H3": (6, 2, 3, 2, True, 1, dict(starts=[(2, 0)], write_off=[(4, 1)])),
}  # fmt: skip


@needs_triton
@pytest.mark.parametrize("case", list(GRID))
def test_matches_reference_float32(interpreter, case):
    T, B, H, S, layer_norm, chunk, options = GRID[case]
    options = dict(options)
    fast_lr = options.pop("fast_lr", 0.5)
    leaves, masks = make_case(T, B, H, **options)
    results = run_both(leaves, masks, torch.float32, S=S, layer_norm=layer_norm, chunk=chunk, fast_lr=fast_lr)
    assert all(torch.isfinite(x).all() for x in results[0][0]), "the reference itself overflowed: a badly scaled case"
    check(results)


@needs_triton
def test_float64_kernel_is_exact(interpreter):
    """Exact in float64 when the scalars are float32-exact (the kernels take η, λ as float32)."""
    leaves, masks = make_case(9, 2, 5, starts=[(4, 1)], write_off=[(2, 0)], resets=[(6, 1)])
    results = run_both(leaves, masks, torch.float64, S=2, layer_norm=True, chunk=4)
    check(results, fwd_atol=1e-10, rtol=1e-10, grad_atol=1e-10)


@needs_triton
def test_without_final_state(interpreter):
    leaves, masks = make_case(5, 2, 4, starts=[(2, 1)])
    results = run_both(leaves, masks, torch.float32, S=1, layer_norm=True, chunk=2, output_final_state=False)
    assert results[1][0][2] is None, "no final A, as the other ops"
    check(results, output_final_state=False)


@needs_triton
def test_no_grad_and_partial_grads(interpreter):
    (zx, h, A, W, lnw, lnb), _ = make_case(6, 2, 4)
    zx, h, A, W, lnw, lnb = (x.float() for x in (zx, h, A, W, lnw, lnb))
    kw = dict(decay=0.95, fast_lr=0.5, inner_steps=1)
    with torch.no_grad():
        y0, _, A0 = fused_recurrent.fused_recurrent_fast_weights(zx, h, A, W, lnw, lnb, **kw)
    zx.requires_grad_()
    y, _, A_T = fused_recurrent.fused_recurrent_fast_weights(zx, h, A, W, lnw, lnb, **kw)
    torch.testing.assert_close(y, y0, rtol=0, atol=0)
    torch.testing.assert_close(A_T, A0, rtol=0, atol=0)
    (gzx,) = torch.autograd.grad(y.sum(), [zx])
    assert gzx.shape == zx.shape and torch.isfinite(gzx).all()


@needs_triton
def test_a_call_without_gradients_runs_the_forward_op_alone(interpreter, monkeypatch):
    """No gradient wanted (no_grad, inference_mode, or no input that requires one): the forward
    op runs without the autograd Function, same numbers, nothing saved for a backward."""
    (zx, h, A, W, lnw, lnb), masks = make_case(6, 2, 5, starts=[(0, 1), (3, 0)], write_off=[(2, 1)])
    args = [x.float() for x in (zx, h, A, W, lnw, lnb)]
    masks = {k: v.float() for k, v in masks.items()}
    kw = dict(decay=0.9, fast_lr=0.5, inner_steps=2, **masks)
    want = fused_recurrent.fused_recurrent_fast_weights(*[args[0].requires_grad_(), *args[1:]], **kw)
    assert want[0].requires_grad, "the reference call went through autograd"
    args[0] = args[0].detach()

    def refuse(*_):
        raise AssertionError("the autograd Function ran for a call that needs no gradient")

    monkeypatch.setattr(fused_recurrent._FastWeightsTriton, "apply", refuse)
    saving = []
    real_fwd = fused_recurrent.fused_recurrent_fast_weights_fwd
    monkeypatch.setattr(fused_recurrent, "fused_recurrent_fast_weights_fwd", lambda *a, save: saving.append(save) or real_fwd(*a, save=save))
    for context in (torch.no_grad, torch.inference_mode, torch.enable_grad):
        with context():
            got = fused_recurrent.fused_recurrent_fast_weights(*args, **kw)
        for g, w in zip(got, want):
            assert not g.requires_grad
            torch.testing.assert_close(g, w.detach(), rtol=0, atol=0)
    assert saving == [False] * 3, "nothing stored for a backward"


@needs_triton
@pytest.mark.parametrize("starts_at", [(), ((0, 1),)])
def test_a_kernel_step_makes_no_device_to_host_sync(interpreter, starts_at, device_syncs):
    """A rollout step through the kernel reads nothing back from the device (on a GPU a sync
    would stall every step): the episode starts go to the kernel as they are, set or not."""
    from fw_agents.memory import FastWeightsRNN

    core = FastWeightsRNN(4, 8, mode="triton", fast_share=0.5)
    x, starts = torch.randn(1, 3, 4), torch.zeros(1, 3)
    for t, b in starts_at:
        starts[t, b] = 1.0
    state = core.initial_state(3)
    with torch.inference_mode():
        assert device_syncs(lambda: core(x, state, starts)) == []
    scan = FastWeightsRNN(4, 8, mode="scan", fast_share=0.5)  # the scan asks, to skip the resets' arithmetic
    with torch.inference_mode():
        assert device_syncs(lambda: scan(x, state, starts)) != []


def test_rejects_hidden_above_128(monkeypatch):
    if not fused_recurrent.triton_available():
        pytest.skip("triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    zx = torch.zeros(2, 1, 129)
    with pytest.raises(ValueError, match="H <= 128.*fast_weights_scan"):
        fused_recurrent.fused_recurrent_fast_weights(zx, zx[0], None, torch.zeros(129, 129), None, None,
                                        decay=0.9, fast_lr=0.5, inner_steps=1)  # fmt: skip
    assert not fused_recurrent.supports(129, "cpu")
    assert fused_recurrent.supports(128, "cpu")


def test_cpu_without_interpreter_refuses(monkeypatch):
    if not fused_recurrent.triton_available():
        pytest.skip("triton is not installed")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    zx = torch.zeros(2, 1, 4)
    with pytest.raises(RuntimeError, match="needs CUDA tensors.*TRITON_INTERPRET=1"):
        fused_recurrent.fused_recurrent_fast_weights(zx, zx[0], None, torch.zeros(4, 4), None, None,
                                        decay=0.9, fast_lr=0.5, inner_steps=1)  # fmt: skip
    assert not fused_recurrent.supports(4, "cpu")


def test_without_triton_imports_and_names_the_extra(monkeypatch):
    """A fresh copy of the module with ``import triton`` failing: it imports, and the op says what to install."""
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    monkeypatch.setitem(sys.modules, "triton.language", None)
    spec = importlib.util.spec_from_file_location("_fused_recurrent_without_triton", fused_recurrent.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not module.triton_available() and not module.supports(16, "cuda")
    zx = torch.zeros(2, 1, 4)
    with pytest.raises(ImportError, match=r'pip install "fw-agents\[gpu\]"'):
        module.fused_recurrent_fast_weights(zx, zx[0], None, torch.zeros(4, 4), None, None,
                                   decay=0.9, fast_lr=0.5, inner_steps=1)  # fmt: skip


@needs_triton
def test_bad_shapes(interpreter):
    zx = torch.zeros(3, 2, 4)
    kw = dict(decay=0.9, fast_lr=0.5, inner_steps=1)
    with pytest.raises(ValueError, match="episode_starts must be"):
        fused_recurrent.fused_recurrent_fast_weights(zx, zx[0], None, torch.zeros(4, 4), None, None,
                                        episode_starts=torch.zeros(3, 3), **kw)  # fmt: skip
    with pytest.raises(ValueError, match="A must be"):
        fused_recurrent.fused_recurrent_fast_weights(zx, zx[0], torch.zeros(2, 4, 3), torch.zeros(4, 4), None, None, **kw)


# --------------------------------------------------------------------------- on a GPU


@pytest.mark.cuda
@cuda
@needs_triton
@pytest.mark.parametrize("shape", [(33, 4, 128, 1), (40, 3, 100, 2), (17, 5, 64, 1)])
def test_cuda_compiled_matches_reference(monkeypatch, shape):
    """The compiled kernels (not the interpreter) on a GPU, float32, against the float64 reference."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    T, B, H, S = shape
    leaves, masks = make_case(T, B, H, starts=[(0, 0), (T // 2, 1)], write_off=[(3, 2)], resets=[(5, 1)], device="cuda")
    check(run_both(leaves, masks, torch.float32, S=S, layer_norm=True, chunk=16))


@pytest.mark.cuda
@cuda
@needs_triton
def test_cuda_rl_shape_runs(monkeypatch):
    """The benchmark shape (B, T, H) = (256, 16, 128): finite outputs and gradients, A_T matches."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    leaves, masks = make_case(16, 256, 128, given_A=False, device="cuda")
    (ref_out, _), (out, grads) = run_both(leaves, masks, torch.float32, S=1, layer_norm=True, chunk=16)
    torch.testing.assert_close(out[2].double(), ref_out[2], rtol=1e-4, atol=1e-4)
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.cuda
@needs_triton
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_cuda_runs_on_a_device_other_than_the_current_one(monkeypatch):
    """Tensors on the last GPU while GPU 0 is current: Triton launches on the current device,
    so the op must make the tensors' device current (values and gradients as on GPU 0)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    last = torch.device("cuda", torch.cuda.device_count() - 1)
    leaves, masks = make_case(9, 3, 32, starts=[(4, 1)], device=last)
    with torch.cuda.device(0):
        check(run_both(leaves, masks, torch.float32, S=1, layer_norm=True, chunk=4))


def test_device_guard_is_a_no_op_on_cpu():
    guard = fused_recurrent._on_device(torch.zeros(1))
    with guard:
        pass
    assert type(guard).__name__ == "nullcontext"


# --------------------------------------------------------------------------- benchmarks/gpu_check.py

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _load_script(name):
    spec = importlib.util.spec_from_file_location(f"_{name}_under_test", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine gpu_check would run for real")
def test_gpu_check_without_cuda_fails_in_one_line(tmp_path, capsys):
    gpu_check = _load_script("gpu_check")
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpu_check: no CUDA device") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_gpu_check_runs_the_modules_that_hold_cuda_tests(monkeypatch):
    """Its test stage collects only the modules with CUDA-marked tests (others may need packages
    an offline GPU machine lacks) and goes on past one that cannot be imported."""
    gpu_check = _load_script("gpu_check")
    calls = []
    monkeypatch.setattr(gpu_check, "_run", lambda argv, timeout: (calls.append(argv), (True, "ok"))[1])
    added = []
    gpu_check.stage_tests(type("Report", (), {"add": lambda self, *args, **kwargs: added.append(args)})())
    (argv,) = calls
    assert argv[1:6] == ["-m", "pytest", "-q", "-m", "cuda"]
    files = [a for a in argv if a.startswith("tests/")]
    assert "tests/test_fused_recurrent.py" in files and "tests/test_cuda_end_to_end.py" in files
    assert "tests/test_search.py" not in files and "--continue-on-collection-errors" in argv
    assert all("mark.cuda" in (ROOT / f).read_text() for f in files) and added


def test_gpu_check_report_stages_without_a_gpu(tmp_path, monkeypatch):
    """The environment stage and the memory stage's target verdicts, with the GPU faked: what a
    device session would otherwise find broken only after paying for the machine."""
    from types import SimpleNamespace

    gpu_check = _load_script("gpu_check")
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: SimpleNamespace(name="Fake H200", total_memory=141 * 2**30, major=9, minor=0))  # fmt: skip
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91000)
    bench = gpu_check._bench_memory()
    fake = {"B=256 H=128 T=16": {bench.PEER: 2.0, bench.SCAN: 9.0, bench.KERNEL: 1.5},
            "B=16 H=128 T=512": {bench.PEER: 1.0, bench.SCAN: 9.0, bench.KERNEL: 2.5}}  # fmt: skip
    monkeypatch.setattr(bench, "measure", lambda device, rounds: fake)
    report = gpu_check.Report(tmp_path / "gpu_check.md")
    gpu_check.stage_environment(report)
    gpu_check.stage_bench_memory(report, rounds=1)
    text = (tmp_path / "gpu_check.md").read_text()
    assert "GPU: Fake H200, 141 GiB, compute capability 9.0" in text and "fw-agents commit " in text
    assert f"- TF32: cuDNN (the LSTM peer) {torch.backends.cudnn.allow_tf32}, matmul " in text
    assert "B=256 H=128 T=16: 0.75× LSTM (target ≤ 1.0×) — met" in text
    assert "B=16 H=128 T=512: 2.50× LSTM (target ≤ 2.0×) — MISSED" in text
    assert "all stages ran" in text and not report.failed


def test_gpu_check_stages_treat_a_kernel_fallback_as_an_error():
    """A stage process where mode="auto" would fall back from a failing kernel fails instead."""
    gpu_check = _load_script("gpu_check")
    code = (
        "import torch\n"
        "from fw_agents.memory.ops import fused_recurrent\n"
        "fused_recurrent.mark_unusable(torch.device('cpu'), RuntimeError('ptxas fatal'))\n"
        "print('fell back quietly')"
    )
    done = subprocess.run([sys.executable, "-c", code], env=gpu_check._env(), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "fell back quietly" not in done.stdout
    assert "RuntimeWarning: fast weights: the Triton kernel failed on cpu (RuntimeError: ptxas fatal)" in done.stderr


def test_gpu_check_help_and_training_flags(capsys):
    gpu_check = _load_script("gpu_check")
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(["--help"])
    assert exit_.value.code == 0 and "--out" in capsys.readouterr().out
    sys.path.insert(0, str(ROOT))
    try:
        import train_agent
    finally:
        sys.path.remove(str(ROOT))
    argv = gpu_check.train_argv(ROOT / "runs" / "x", 8192)
    parsed = train_agent.build_parser().parse_args(argv[2:])  # the flags train_agent.py gets
    assert parsed.device == "cuda" and parsed.memory == "fastweights" and parsed.timesteps == 8192


@needs_triton
def test_module_mode_triton_matches_the_reference_module(interpreter):
    """FastWeightsRNN(mode="triton") is the reference core, values and gradients, NaN carried state included."""
    from fw_agents.memory import FastWeightsRNN

    torch.manual_seed(0)
    cores = {mode: FastWeightsRNN(3, 6, inner_steps=2, fast_share=0.5, mode=mode).double() for mode in ("reference", "triton")}
    cores["triton"].load_state_dict(cores["reference"].state_dict())
    x = torch.randn(7, 3, 3, dtype=torch.float64)
    starts = torch.zeros(7, 3, dtype=torch.float64)
    starts[0, 0] = starts[4, 2] = 1.0
    h = torch.rand(3, 6, dtype=torch.float64)
    A = 0.1 * torch.randn(3, 6, 6, dtype=torch.float64)
    h[0], A[0] = float("nan"), float("inf")  # row 0 restarts at step 0: its carried state must not leak
    results = {}
    for mode, core in cores.items():
        y, (h_T, A_T) = core(x, (h, A), starts)
        grads = torch.autograd.grad((y.sin().sum() + h_T.sum() + A_T.sum()), list(core.parameters()))
        results[mode] = (y, h_T, A_T, grads)
    # float64 throughout, but the normalised η = 0.5 (1 - 0.95) / 6 enters the kernel as a float32 scalar
    for ref, got in zip(results["reference"][:3], results["triton"][:3]):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)
    for ref, got in zip(results["reference"][3], results["triton"][3]):
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)


def test_auto_mode_takes_the_kernel_for_cuda_inputs_only(monkeypatch):
    from fw_agents.memory import FastWeightsRNN
    from fw_agents.memory.ops.fused_recurrent import fused_recurrent_fast_weights

    core = FastWeightsRNN(3, 8)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the kernel could run here, but "auto" keeps CPU on the scan
    assert core._op(torch.zeros(5, 2, 3))[0] is not fused_recurrent_fast_weights
    assert core._op(torch.zeros(1, 2, 3))[0] is not fused_recurrent_fast_weights
    assert FastWeightsRNN(3, 8, mode="triton")._op(torch.zeros(5, 2, 3)) == (fused_recurrent_fast_weights, None)
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setattr(torch.version, "hip", None)
    assert fused_recurrent.supports(128, "cuda") == fused_recurrent.triton_available()  # an NVIDIA GPU
    assert not fused_recurrent.supports(129, "cuda") and not fused_recurrent.supports(8, "cpu")
    monkeypatch.setattr(torch.version, "hip", "6.2")  # a ROCm build: its GPUs are "cuda" too
    assert not fused_recurrent.supports(128, "cuda")
    monkeypatch.undo()
    if torch.cuda.is_available() and fused_recurrent.triton_available() and torch.version.hip is None:
        assert core.cuda()._op(torch.zeros(5, 2, 3, device="cuda"))[0] is fused_recurrent_fast_weights
        assert FastWeightsRNN(3, 200).cuda()._op(torch.zeros(5, 2, 3, device="cuda"))[0] is not fused_recurrent_fast_weights


@needs_triton
def test_auto_mode_falls_back_to_the_scan_where_the_kernel_cannot_build(monkeypatch):
    """A Triton that cannot compile or launch the kernel on a GPU (an old driver, a toolchain
    mismatch): "auto" warns once, in one line, and runs the PyTorch scan there from then on
    (same numbers); "triton" raises; bad input is not mistaken for such a failure."""
    import fw_agents.memory.fast_weights as fast_weights_module
    from fw_agents.memory import FastWeightsRNN

    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("PTX .version 8.7 does not support .target sm_90\n(driver too old)")

    monkeypatch.setattr(fused_recurrent, "UNUSABLE", {})
    monkeypatch.setattr(fast_weights_module, "fused_recurrent_fast_weights", broken)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # supports() says yes on this CPU ...
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))  # ... and "auto" sees a GPU
    torch.manual_seed(0)
    core = FastWeightsRNN(3, 8)
    scan = FastWeightsRNN(3, 8, mode="scan")
    scan.load_state_dict(core.state_dict())
    x = torch.randn(5, 2, 3)
    with pytest.warns(RuntimeWarning, match=r"Triton kernel failed on cpu \(RuntimeError: PTX .* too old\)\); mode='auto'"):
        y, state = core(x)
    torch.testing.assert_close(y, scan(x)[0], rtol=0, atol=0)
    y2, _ = core(x[:1], state)  # the next calls go straight to the scan: no second try, no warning
    assert len(calls) == 1 and "cpu" in fused_recurrent.UNUSABLE and not fused_recurrent.supports(8, "cpu")
    with pytest.raises(RuntimeError, match="driver too old"):
        FastWeightsRNN(3, 8, mode="triton")(x)

    def bad_input(*args, **kwargs):
        raise ValueError("h must be [B, H]")

    monkeypatch.setattr(fused_recurrent, "UNUSABLE", {})
    monkeypatch.setattr(fast_weights_module, "fused_recurrent_fast_weights", bad_input)
    with pytest.raises(ValueError, match="h must be"):
        FastWeightsRNN(3, 8)(x)
    assert not fused_recurrent.UNUSABLE


@needs_triton
def test_carried_A_without_grad_gives_the_other_gradients(interpreter):
    """A rollout's stored state: A given, no gradient asked for it (the kernel then skips dL/dA0)."""
    leaves, masks = make_case(9, 3, 6, starts=[(4, 1)], write_off=[(2, 0)])
    zx, h, A, W, lnw, lnb = leaves
    kw = dict(decay=0.9, fast_lr=0.5, inner_steps=2, layer_norm=True, **masks)
    grads = []
    for fn, dt in ((fast_weights_reference, torch.float64), (fused_recurrent.fused_recurrent_fast_weights, torch.float32)):
        xs = [x.to(dt).requires_grad_() for x in (zx, h, W, lnw, lnb)]
        y, h_T, A_T = fn(xs[0], xs[1], A.to(dt), xs[2], xs[3], xs[4], **{**kw, **{k: v.to(dt) for k, v in masks.items()}})
        loss = (y * torch.cos(y.detach())).sum() + h_T.sum() + A_T.sum()
        grads.append(torch.autograd.grad(loss, xs))
    for r, k in zip(*grads):
        torch.testing.assert_close(k.double(), r, rtol=1e-4, atol=1e-4 * max(1.0, r.abs().max().item()))


def test_launch_options_override_and_restore():
    with pytest.raises(ValueError, match="num_warps must be a power of two"):
        with fused_recurrent.launch_options(3, 8):
            pass
    default = fused_recurrent._launch_options(128, backward=True)
    assert default["num_warps"] == fused_recurrent.NUM_WARPS[128][1] and default["enable_fp_fusion"] is True
    with fused_recurrent.launch_options(4, 16):
        assert fused_recurrent._launch_options(128, backward=False)["num_warps"] == 4
        with fused_recurrent.launch_options(2, 2):
            assert fused_recurrent._launch_options(8, backward=True)["num_warps"] == 2
        assert fused_recurrent._launch_options(64, backward=True)["num_warps"] == 16
    assert fused_recurrent._launch_options(128, backward=True) == default
    assert all(fused_recurrent._launch_options(2**k, backward=False) for k in range(0, 8))  # every padded size has a row


@needs_triton
def test_bench_memory_sweep_runs_under_the_interpreter(interpreter):
    """gpu_check's sweep stage, on CPU under the interpreter at a tiny shape: one row per setting,
    each default marked once, finite positive times."""
    bench = _load_script("bench_memory")
    rows = bench.sweep_kernel(torch.device("cpu"), rounds=1, shapes=[(2, 64, 3)])
    labels = [label for _, label, _, _ in rows]
    assert len(rows) == len(bench.SWEEP_WARPS) + len(bench.SWEEP_CHUNKS)
    assert "4 warps (default)" in labels and "chunk 16 (default)" in labels
    assert sum("(default)" in label for label in labels) == 2
    assert all(0 < fwd and 0 < train for _, _, fwd, train in rows)
    table = bench.sweep_markdown(rows)
    assert table.count("\n") == len(rows) + 1 and "B=2 H=64 T=3" in table


@needs_triton
def test_bench_memory_kernel_table_runs_under_the_interpreter(interpreter):
    """gpu_check's memory stage (scan vs kernel vs LSTM) on CPU under the interpreter, tiny shapes."""
    bench = _load_script("bench_memory")
    results = bench.measure(torch.device("cpu"), rounds=1, kernel=True, shapes=[(2, 16, 3)], latency=(2, 16))
    assert list(results) == ["B=2 H=16 T=3", "1 rollout step, B=2 H=16"]
    for column in results.values():
        assert list(column) == [bench.PEER, bench.SCAN, bench.KERNEL] and all(t > 0 for t in column.values())
    table = bench.markdown(results)
    assert table.count("\n") == 4 and "fastweights (Triton kernel)" in table


# --------------------------------------------------------------------------- compiled for a GPU, without one


def _compile_or_skip():
    if not fused_recurrent.triton_available():
        pytest.skip("triton is not installed")
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401

        resources = _load_script("triton_resources")
    except ImportError as error:  # a triton build without the NVIDIA backend
        pytest.skip(f"triton cannot compile for CUDA here: {error}")
    return resources


@pytest.mark.parametrize(
    "hidden, inner_steps, layer_norm, flags, float64, arch, steps, batch",
    [
        (128, 1, True, "ppo", False, 90, 16, 256),  # the RL shape as a RecurrentPPO update launches it, Hopper
        (128, 1, True, "rollout", False, 90, 1, 1),  # one rollout step of one env: T = B = 1 compiled in
        (128, 1, True, "all", False, 90, 37, 5),  # every option on, T and B not multiples of 16
        (128, 1, True, "all", False, 80, 16, 256),  # the same for Ampere (A100)
        (100, 2, False, "none", False, 90, 16, 256),  # padded H, no layer norm, no masks, no saved state
        (32, 1, True, "all", True, 90, 16, 256),  # float64 accumulation
    ],
)
def test_kernels_compile_for_cuda_without_a_gpu(hidden, inner_steps, layer_norm, flags, float64, arch, steps, batch):
    """The compiled path (what a GPU runs, unlike the interpreter) builds for Hopper and Ampere
    with the launcher's specialisations, and the tiles stay in registers at the default warps:
    no spill in the forward, a small one at most in the backward (the register budget in
    fused_recurrent.md; a PPO update's backward spilled 560 B at H = 128 before its dA took W's
    layout, and spills 96 B now)."""
    resources = _compile_or_skip()
    block = fused_recurrent.triton.next_power_of_2(hidden)
    for backward, fn in ((False, fused_recurrent._fw_forward_kernel), (True, fused_recurrent._fw_backward_kernel)):
        if flags == "rollout":  # no gradient: the forward alone, returning the final state
            if backward:
                continue
            chosen = {**resources.PPO_FORWARD_FLAGS, "SAVE": False, "STORE_AT": True}
        elif flags == "none":
            chosen = {k: False for k in resources.FLAG_SETS["all"][backward]}
        else:
            chosen = resources.FLAG_SETS[flags][backward]
        registers, stack = resources.resources(
            fn, chosen, hidden=hidden, inner_steps=inner_steps, chunk=fused_recurrent.DEFAULT_CHUNK, arch=arch,
            num_warps=fused_recurrent._launch_options(block, backward)["num_warps"], layer_norm=layer_norm, float64=float64,
            steps=steps, batch=batch,
        )  # fmt: skip
        assert 0 < registers <= 255
        if float64:
            continue
        name = "backward" if backward else "forward"
        assert stack <= (256 if backward else 0), f"{name} at H={hidden} ({flags}) spills {stack} B at the default warps"


@needs_triton
@pytest.mark.parametrize("where", ["h", "A", "zx"])
def test_non_finite_values_stay_non_finite_as_in_the_reference(interpreter, where):
    """relu(NaN) is NaN in every op: the kernel's tl.maximum must propagate it (its default,
    PropagateNan.NONE, returns 0, turning a diverged state into finite, wrong outputs)."""
    leaves, _ = make_case(4, 3, 6)
    zx, h, A, W, lnw, lnb = (x.float() for x in leaves)
    {"h": h, "A": A[:, 2], "zx": zx[1]}[where][1, 3] = float("nan")
    kw = dict(decay=0.9, fast_lr=0.5, inner_steps=2)
    y_ref = fast_weights_reference(zx, h, A, W, lnw, lnb, **kw)[0]
    y = fused_recurrent.fused_recurrent_fast_weights(zx, h, A, W, lnw, lnb, **kw)[0]
    assert torch.equal(torch.isfinite(y), torch.isfinite(y_ref))
    assert not torch.isfinite(y[:, 1]).all() and torch.isfinite(y[:, [0, 2]]).all()


@needs_triton
def test_hidden_reset_at_step_0_clears_a_non_finite_carried_h(interpreter):
    """As a start at t = 0 does (and as the reference and the scan do): the row's outputs are a
    zero h's, and dL/dW stays finite (it sums over every row)."""
    leaves, _ = make_case(3, 3, 6)
    zx, h, A, W, lnw, lnb = (x.float() for x in leaves)
    h[1, 2] = float("nan")
    resets = torch.zeros(3, 3)
    resets[0, 1] = 1.0
    W.requires_grad_(True)
    kw = dict(decay=0.9, fast_lr=0.5, inner_steps=2, hidden_resets=resets)
    y_ref = fast_weights_reference(zx, h, A, W, lnw, lnb, **kw)[0]
    y = fused_recurrent.fused_recurrent_fast_weights(zx, h, A, W, lnw, lnb, **kw)[0]
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    (grad_W,) = torch.autograd.grad(y.sum(), W)
    assert torch.isfinite(grad_W).all()


@needs_triton
def test_next_power_of_2_is_tritons():
    assert [fused_recurrent.next_power_of_2(n) for n in range(1, 600)] == [fused_recurrent.triton.next_power_of_2(n) for n in range(1, 600)]


@needs_triton
def test_kernel_host_overhead_benchmark_runs():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_host_overhead.py"), "--rounds", "1"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "ops that read back from the device: none" in done.stdout
    assert "aten ops that launch on a GPU: 3 " in done.stdout


@pytest.mark.parametrize("arch", [80, 90])
def test_compiled_relu_propagates_nan(arch):
    """What the interpreter cannot show: on the GPU the forward's ReLUs compile to PTX's
    NaN-propagating ``max.NaN.f32`` (plain ``max.f32`` returns the other operand: relu(NaN) = 0)."""
    import re

    resources = _compile_or_skip()
    compiled = resources.compile_kernel(
        fused_recurrent._fw_forward_kernel, resources.PPO_FORWARD_FLAGS, hidden=32, inner_steps=2,
        chunk=fused_recurrent.DEFAULT_CHUNK, arch=arch, num_warps=2,
    )  # fmt: skip
    maxima = re.findall(r"\bmax(?:\.[A-Za-z0-9]+)*\.f32\b", compiled.asm["ptx"])
    assert maxima and all(".NaN." in op for op in maxima), sorted(set(maxima))


@pytest.mark.parametrize("backward", [False, True])
def test_row_offsets_are_int64_before_the_multiply(backward):
    """What the interpreter cannot show: ``t * B`` (time step times batch) is formed in int64,
    not in the i32 of the arguments, where it wraps once T*B passes 2^31 (a float32 [T, B, 4]
    input of 2^31 rows is 32 GiB: it fits on one H200)."""
    import re

    resources = _compile_or_skip()
    fn = fused_recurrent._fw_backward_kernel if backward else fused_recurrent._fw_forward_kernel
    compiled = resources.compile_kernel(
        fn, resources.FLAG_SETS["all"][backward], hidden=4, inner_steps=1, chunk=fused_recurrent.DEFAULT_CHUNK,
        arch=90, num_warps=2, steps=37, batch=5,
    )  # fmt: skip
    products = [line.strip() for line in compiled.asm["ttir"].splitlines() if re.search(r"arith\.muli .*%B\b.*: i32", line)]
    assert not products, products


def test_gpu_check_runs_from_a_checkout_without_the_package_installed(tmp_path):
    """As on an offline GPU machine: no PYTHONPATH, another working folder."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and "--out" in done.stdout, done.stderr


@needs_triton
@pytest.mark.parametrize("used", ["y", "h_T", "A_T"])
def test_outputs_the_loss_does_not_use_get_no_gradient_at_all(interpreter, monkeypatch, used):
    """The backward gets None (not zeros) for unused outputs and launches without them; the
    gradients are still the reference's."""
    leaves, masks = make_case(5, 2, 6, starts=[(2, 1)])
    g = torch.Generator().manual_seed(5)
    grads = {}
    for fn in (fast_weights_reference, fused_recurrent.fused_recurrent_fast_weights):
        xs = [x.clone().requires_grad_() for x in leaves]
        out = dict(zip(("y", "h_T", "A_T"), fn(*xs, decay=0.875, fast_lr=0.5, inner_steps=1, **masks)))  # float32-exact scalars
        weight = torch.randn(out[used].shape, generator=g, dtype=out[used].dtype)
        grads[fn] = torch.autograd.grad((out[used] * weight).sum(), xs)
        g.manual_seed(5)
    for ref, got in zip(grads[fast_weights_reference], grads[fused_recurrent.fused_recurrent_fast_weights]):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
    flags = []
    real = fused_recurrent.fused_recurrent_fast_weights_bwd
    monkeypatch.setattr(fused_recurrent, "fused_recurrent_fast_weights_bwd",
                        lambda *a, **k: flags.append([x is not None for x in a[:3]]) or real(*a, **k))  # fmt: skip
    xs = [x.clone().requires_grad_() for x in leaves]
    out = dict(zip(("y", "h_T", "A_T"), fused_recurrent.fused_recurrent_fast_weights(*xs, decay=0.9, fast_lr=0.5, inner_steps=1, **masks)))
    out[used].sum().backward()
    assert flags == [[name == used for name in ("y", "h_T", "A_T")]]
