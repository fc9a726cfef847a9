"""Everything that needs a GPU, in one command, into one markdown report.

    pip install "torch==2.13.0" -e ".[dev]"        # a CUDA build of torch on a GPU machine
    python benchmarks/gpu_check.py --out results/gpu

On a machine without a package index (the H200 lent here: torch 2.11 and triton 3.6 installed,
no gymnasium or Stable-Baselines3), keep its torch and triton and bring the pure-Python rest as
wheels: gymnasium, farama-notifications, stable-baselines3, sb3-contrib (`pip install --no-index
--no-deps --target DIR *.whl`, `PYTHONPATH=DIR`); the script runs from a checkout, uninstalled.

Stages (each one's output goes into ``<out>/gpu_check.md``, written after every stage so
a partial run still leaves a report; a failing stage does not stop the next):

1. environment: GPU, torch, CUDA, cuDNN, triton;
2. the CUDA tests (``pytest -m cuda``): the compiled Triton kernel against the float64
   reference, float32;
3. ``bench_memory.py --device cuda``: fast-weights PyTorch scan vs the fused Triton kernel
   vs cuDNN ``nn.LSTM``, forward+backward at (B, T, H) = (256, 16, 128), (64, 128, 128),
   (16, 512, 128) and one-step rollout latency, with the targets (kernel ≤ 1.0× LSTM at
   T = 16, ≤ 2× at T = 512) marked met or missed (reported, not enforced);
4. ``bench_memory.py --device cuda --sweep``'s sweep: the kernel's warps per program
   (4, 8, 16) and backward chunk (8, 16, 32) at the three shapes, forward and
   forward+backward, the defaults marked (they were chosen offline, from register counts);
5. ``bench_agent.py --device cuda`` when it has that flag (else noted as skipped);
6. a short ``train_agent.py --device cuda`` run (fast weights on CatchBlind16-v0).

Exit status: 0 when every stage ran and the tests passed, 1 otherwise, 2 (one line on
stderr) when there is no CUDA device or no triton. Takes under 5 minutes on an H100/H200.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# `python benchmarks/gpu_check.py` puts benchmarks/ on sys.path, not the root: without this the
# script needs the package installed, which an offline GPU machine cannot do (`pip install -e .`
# fetches setuptools and the dependencies); its stages get the root on PYTHONPATH (_env)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fw_agents.runs.files import write_text_atomically  # noqa: E402
TARGETS = {"B=256 H=128 T=16": 1.0, "B=16 H=128 T=512": 2.0}  # Triton kernel fwd+bwd ≤ this × cuDNN LSTM


class Report:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.parts: list[str] = []
        self.failed: list[str] = []

    def add(self, title: str, body: str, ok: bool = True) -> None:
        if not ok:
            self.failed.append(title)
        self.parts.append(f"## {title}{'' if ok else ' (FAILED)'}\n\n{body.rstrip()}\n")
        self.write()

    def write(self) -> None:
        status = "all stages ran" if not self.failed else "failed: " + ", ".join(self.failed)
        head = f"# GPU check\n\n{time.strftime('%Y-%m-%d %H:%M:%S')} — {status}\n"
        write_text_atomically(self.path, "\n".join([head, *self.parts]))


#: In every stage's process, a kernel that fails on this GPU is an error, not mode="auto"'s
#: quiet fallback to the PyTorch scan (-W syntax: the message is a prefix, without colons).
KERNEL_FAILURE_IS_AN_ERROR = "error:fast weights:RuntimeWarning"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the compiled kernels, not the interpreter
    env["PYTHONWARNINGS"] = ",".join(filter(None, [env.get("PYTHONWARNINGS"), KERNEL_FAILURE_IS_AN_ERROR]))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _run(argv: list[str], timeout: float) -> tuple[bool, str]:
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return False, f"$ {' '.join(argv)}\n(timed out after {timeout:.0f} s)\n{out[-4000:]}"
    took = time.perf_counter() - start
    text = (done.stdout + done.stderr)[-6000:]
    return done.returncode == 0, f"$ {' '.join(argv)}   # exit {done.returncode}, {took:.0f} s\n\n```\n{text.strip()}\n```"


def stage_environment(report: Report) -> None:
    import torch
    import triton

    props = torch.cuda.get_device_properties(0)
    try:  # the code measured (a copy without .git says so)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or "unknown (no git repository)"  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = "unknown (no git)"
    lines = [
        f"- fw-agents commit {commit}",
        f"- GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}",
        f"- torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}",
        # the LSTM peer runs as users get it: cuDNN's RNNs take TF32 on Ampere and later by default
        f"- TF32: cuDNN (the LSTM peer) {torch.backends.cudnn.allow_tf32}, matmul {torch.backends.cuda.matmul.allow_tf32}",
        f"- triton {triton.__version__}, Python {platform.python_version()}",
    ]
    report.add("Environment", "\n".join(lines))


def stage_tests(report: Report) -> None:
    # only the modules that hold CUDA tests (the others' imports, optuna say, need not be
    # there); one whose imports fail (an offline machine without SB3) is reported, and the
    # kernel's tests, which need only torch and triton, still run
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py") if "mark.cuda" in p.read_text())
    argv = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-rs", "--continue-on-collection-errors", *files]
    ok, text = _run(argv, timeout=240)
    report.add("CUDA tests (pytest -m cuda)", text, ok)


@functools.cache
def _bench_memory():
    spec = importlib.util.spec_from_file_location("bench_memory", ROOT / "benchmarks" / "bench_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def stage_bench_memory(report: Report, rounds: int) -> None:
    import torch

    bench = _bench_memory()
    start = time.perf_counter()
    results = bench.measure(torch.device("cuda"), rounds)
    lines = [f"`bench_memory.py --device cuda --rounds {rounds}` ({time.perf_counter() - start:.0f} s): "
             "forward+backward per call; no-grad one-step latency in the last column.", "",
             bench.markdown(results), "", "Targets (Triton kernel fwd+bwd vs cuDNN LSTM, reported, not enforced):", ""]  # fmt: skip
    for column, limit in TARGETS.items():
        if column in results:
            ratio = results[column][bench.KERNEL] / results[column][bench.PEER]
            verdict = "met" if ratio <= limit else "MISSED"
            lines.append(f"- {column}: {ratio:.2f}× LSTM (target ≤ {limit:.1f}×) — {verdict}")
    report.add("Memory cores: scan vs Triton kernel vs cuDNN LSTM", "\n".join(lines))


def stage_sweep(report: Report, rounds: int) -> None:
    import torch

    bench = _bench_memory()
    start = time.perf_counter()
    rows = bench.sweep_kernel(torch.device("cuda"), rounds)
    body = (f"`bench_memory.py --device cuda --sweep --rounds {rounds}` ({time.perf_counter() - start:.0f} s): "
            "medians per call; warps apply to forward and backward alike.\n\n" + bench.sweep_markdown(rows))  # fmt: skip
    report.add("Triton kernel launch choices", body)


def stage_bench_agent(report: Report) -> None:
    script = ROOT / "benchmarks" / "bench_agent.py"
    _, help_text = _run([sys.executable, str(script), "--help"], timeout=120)
    if "--device" not in help_text:
        report.add("bench_agent.py", "skipped: bench_agent.py has no `--device` flag (it pins device='cpu').")
        return
    ok, text = _run([sys.executable, str(script), "--device", "cuda", "--rollouts", "2", "--repeats", "1"], timeout=240)
    report.add("bench_agent.py --device cuda", text, ok)


def train_argv(run_dir: Path, timesteps: int, device: str = "cuda") -> list[str]:
    return [
        sys.executable, str(ROOT / "train_agent.py"), "--env", "CatchBlind16-v0", "--memory", "fastweights",
        "--device", device, "--timesteps", str(timesteps), "--run-dir", str(run_dir), "--wandb", "disabled",
        "--no-progress-bar", "--gif-episodes", "0", "--eval-freq", str(timesteps), "--eval-episodes", "5",
    ]  # fmt: skip


def stage_train(report: Report, out: Path, timesteps: int) -> None:
    ok, text = _run(train_argv(out / "train_run", timesteps), timeout=240)
    report.add(f"train_agent.py --device cuda ({timesteps} steps)", text, ok)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for gpu_check.md (and the training run)")
    parser.add_argument("--rounds", type=int, default=10, help="bench_memory round-robin rounds")
    parser.add_argument("--timesteps", type=int, default=8192, help="env steps of the training run")
    parser.add_argument("--skip", nargs="*", default=[], choices=["tests", "memory", "sweep", "agent", "train"],
                        help="stages to leave out")  # fmt: skip
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__} sees none); run it on a GPU machine",
              file=sys.stderr)  # fmt: skip
        return 2
    if importlib.util.find_spec("triton") is None:
        print('gpu_check: triton is not installed: pip install "fw-agents[gpu]"', file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    report = Report(args.out / "gpu_check.md")
    stages = [("environment", lambda: stage_environment(report)),
              ("tests", lambda: stage_tests(report)),
              ("memory", lambda: stage_bench_memory(report, args.rounds)),
              ("sweep", lambda: stage_sweep(report, max(3, args.rounds // 2))),
              ("agent", lambda: stage_bench_agent(report)),
              ("train", lambda: stage_train(report, args.out, args.timesteps))]  # fmt: skip
    for name, stage in stages:
        if name in args.skip:
            continue
        print(f"gpu_check: {name} ...", flush=True)
        try:
            stage()
        except Exception:  # one stage's crash goes into the report; the others still run
            report.add(name, f"```\n{traceback.format_exc()[-4000:]}\n```", ok=False)
    print(f"gpu_check: report in {report.path}" + (f" (failed: {', '.join(report.failed)})" if report.failed else ""))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
