"""Forward+backward time and one-step latency of every memory core, against torch.nn.LSTM.

All cores are timed side by side in one process, round-robin (one repetition of
each core per round, median over rounds), so machine noise hits them alike.

    python benchmarks/bench_memory.py [--rounds 15] [--device cpu] [--threads 1] [--sweep]

On the CPU, "fastweights" runs the scan's compiled loops (``fw_agents.memory.ops.compiled``)
and "fastweights (Python loops)" the same scan with its loops in Python, bitwise the same
results.

With ``--device cuda`` it times the fast-weights core three ways instead: the PyTorch
scan (``FastWeightsRNN(mode="scan")``), the fused Triton kernel (``mode="triton"``, what
"auto" picks on CUDA) and cuDNN's ``nn.LSTM``, at (B, T, H) = (256, 16, 128),
(64, 128, 128), (16, 512, 128). ``--sweep`` then also times the kernel's warps per program
and backward chunk at those shapes (``benchmarks/gpu_check.py`` runs both).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable

import torch

from fw_agents.cli import OneLineArgumentParser, int_at_least
from fw_agents.memory import MEMORY_NAMES, make_memory
from fw_agents.memory.ops import compiled

SHAPES = [(64, 128, 128), (16, 64, 128), (16, 128, 16)]  # (B, H, T); the last is the RL shape
LATENCY_BATCH = 16
PEER = "torch.nn.LSTM"
REFERENCE = "fastweights (reference loop)"  # the naive per-step autograd loop, for scale
PYTHON_LOOPS = "fastweights (Python loops)"  # the scan without its compiled loops
CUDA_SHAPES = [(256, 128, 16), (64, 128, 128), (16, 128, 512)]  # (B, H, T)
SCAN = "fastweights (PyTorch scan)"
KERNEL = "fastweights (Triton kernel)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timer(fn: Callable[[], None], device: torch.device, repeat: int) -> Callable[[], float]:
    def run() -> float:
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        _sync(device)
        return (time.perf_counter() - start) / repeat

    return run


def _train_step(model: torch.nn.Module, x: torch.Tensor, is_peer: bool) -> Callable[[], None]:
    def step() -> None:
        y = model(x)[0]
        y.sum().backward()

    return step


def _one_step(model: torch.nn.Module, x: torch.Tensor, is_peer: bool) -> Callable[[], None]:
    """One step as a rollout takes it: ``nn.LSTM`` on its state; a core on packed rows, writing its
    new state into the other of two rows (``forward_packed(out=)``, as FastRecurrentPPO's buffer)."""
    if is_peer:
        state = None

        @torch.no_grad()
        def step() -> None:
            nonlocal state
            _, state = model(x, state)

        return step
    width = model.state_size
    rows = [torch.zeros(x.shape[1], width, device=x.device, dtype=x.dtype) for _ in range(2)]
    turn = 0

    @torch.no_grad()
    def packed_step() -> None:
        nonlocal turn
        model.forward_packed(x, rows[turn], None, width, out=rows[1 - turn])
        turn = 1 - turn

    return packed_step


def _in_python(fn: Callable[[], None]) -> Callable[[], None]:
    def step() -> None:
        with compiled.python_loops():
            fn()

    return step


def _make(name: str, H: int) -> torch.nn.Module:
    if name == PEER:
        return torch.nn.LSTM(H, H)
    if name == REFERENCE:
        return make_memory("fastweights", H, H, mode="reference")
    if name == PYTHON_LOOPS:
        return make_memory("fastweights", H, H)
    if name == SCAN:  # mode "auto" would take the kernel on CUDA
        return make_memory("fastweights", H, H, mode="scan")
    if name == KERNEL:
        return make_memory("fastweights", H, H, mode="triton")
    return make_memory(name, H, H)


def measure(
    device: torch.device,
    rounds: int,
    kernel: bool | None = None,
    shapes: list[tuple[int, int, int]] | None = None,
    latency: tuple[int, int] = (LATENCY_BATCH, 128),
) -> dict[str, dict[str, float]]:
    """Seconds per call, ``{column: {core: seconds}}``.

    :param kernel: Time the fast-weights scan against the Triton kernel and the LSTM (the
        CUDA table; default: on CUDA), else every core and the reference loop.
    :param shapes: ``(B, H, T)`` of the forward+backward columns (default: the table's).
    :param latency: ``(B, H)`` of the one-step column.
    """
    kernel = device.type == "cuda" if kernel is None else kernel
    # with the kernel the last name is timed in the round-robin too (no reference loop there)
    python_loops = [PYTHON_LOOPS] if device.type == "cpu" and compiled.loops() is not None else []
    names = [PEER, SCAN, KERNEL] if kernel else [PEER, *MEMORY_NAMES, *python_loops, REFERENCE]
    results: dict[str, dict[str, float]] = {}
    shapes = shapes or (CUDA_SHAPES if kernel else SHAPES)
    columns = [(f"B={B} H={H} T={T}", B, H, T, _train_step) for B, H, T in shapes]
    columns.append((f"1 rollout step, B={latency[0]} H={latency[1]}", *latency, 1, _one_step))
    for column, B, H, T, make_fn in columns:
        torch.manual_seed(0)
        x = torch.randn(T, B, H, device=device)
        timers = {}
        for name in names:
            model = _make(name, H).to(device)
            fn = make_fn(model, x, name == PEER)
            if name == PYTHON_LOOPS:
                fn = _in_python(fn)
            for _ in range(2):  # warm-up
                fn()
            once = _timer(fn, device, 1)()
            repeat = max(1, min(200, int(0.05 / max(once, 1e-6))))
            timers[name] = _timer(fn, device, repeat)
        samples: dict[str, list[float]] = {name: [] for name in names}
        # The reference loop builds huge autograd graphs that disturb the allocator for
        # whoever runs next, so it is timed after the round-robin, not inside it.
        for _ in range(rounds):
            for name in names if kernel else names[:-1]:
                samples[name].append(timers[name]())
        if not kernel:
            samples[REFERENCE] = [timers[REFERENCE]() for _ in range(3)]
        results[column] = {name: statistics.median(s) for name, s in samples.items()}
    return results


def markdown(results: dict[str, dict[str, float]]) -> str:
    columns = list(results)
    header = "| core | " + " | ".join(f"{c} (ms, ×LSTM)" for c in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for name in next(iter(results.values())):
        cells = []
        for c in columns:
            t, peer = results[c][name], results[c][PEER]
            cells.append(f"{t * 1e3:.3f} ({t / peer:.2f}×)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


SWEEP_WARPS = (4, 8, 16)
SWEEP_CHUNKS = (8, 16, 32)


def sweep_kernel(device: torch.device, rounds: int, shapes=CUDA_SHAPES) -> list[tuple[str, str, float, float]]:
    """The Triton kernel's launch choices, timed: warps per program (forward and backward
    alike) at the default chunk, then the backward's chunk at the default warps.

    :return: ``(shape, setting, forward seconds, forward+backward seconds)`` rows, the
        default setting marked ``(default)``; medians over ``rounds`` round-robin rounds.
    """
    from fw_agents.memory.ops import fused_recurrent

    rows = []
    for B, H, T in shapes:
        core = make_memory("fastweights", H, H, mode="triton").to(device)
        torch.manual_seed(0)
        zx = torch.randn(T, B, H, device=device, requires_grad=True)
        h = torch.zeros(B, H, device=device)
        default_warps = fused_recurrent._launch_options(fused_recurrent.next_power_of_2(H), backward=False)["num_warps"]
        settings = [(f"{w} warps" + (" (default)" if w == default_warps else ""), (w, w), None) for w in SWEEP_WARPS]
        settings += [(f"chunk {k}" + (" (default)" if k == fused_recurrent.DEFAULT_CHUNK else ""), None, k)
                     for k in SWEEP_CHUNKS]  # fmt: skip

        def call(chunk):
            return fused_recurrent.fused_recurrent_fast_weights(
                zx, h, None, core.slow_weights, core.ln.weight, core.ln.bias, decay=core.decay,
                fast_lr=core.paper_fast_lr, inner_steps=core.inner_steps, chunk_size=chunk)[0]  # fmt: skip

        def timers_for(chunk):
            def forward():
                with torch.no_grad():
                    call(chunk)

            def train():
                call(chunk).sum().backward()

            out = []
            for fn in (forward, train):
                fn()  # compile and warm up
                once = _timer(fn, device, 1)()
                out.append(_timer(fn, device, max(1, min(100, int(0.02 / max(once, 1e-6))))))
            return out

        def warps_of(warps):  # the setting's warps, or the op's own choice
            return contextlib.nullcontext() if warps is None else fused_recurrent.launch_options(*warps)

        timers = {}
        for label, warps, chunk in settings:
            with warps_of(warps):
                timers[label] = timers_for(chunk)
        samples = {label: ([], []) for label in timers}
        for _ in range(rounds):
            for label, warps, _chunk in settings:
                for i, timer in enumerate(timers[label]):
                    with warps_of(warps):
                        samples[label][i].append(timer())
        for label in timers:
            fwd, train = (statistics.median(x) for x in samples[label])
            rows.append((f"B={B} H={H} T={T}", label, fwd, train))
    return rows


def sweep_markdown(rows: list[tuple[str, str, float, float]]) -> str:
    lines = ["| shape | setting | forward (ms) | forward+backward (ms) |", "|---|---|---|---|"]
    lines += [f"| {shape} | {label} | {fwd * 1e3:.3f} | {train * 1e3:.3f} |" for shape, label, fwd, train in rows]
    return "\n".join(lines)


def main() -> None:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int_at_least(1), default=15, help="round-robin rounds (median is reported)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int_at_least(1), default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--sweep", action="store_true", help="cuda: also time the Triton kernel's warps and chunk choices")
    args = parser.parse_args()
    if args.sweep and args.device != "cuda":
        parser.error("--sweep times the Triton kernel's launch choices: it needs --device cuda")
    if args.threads is not None and args.threads > 1024:
        parser.error(f"argument --threads: must be an integer in [1, 1024], got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    if device.type == "cuda":
        from fw_agents.memory.ops.fused_recurrent import triton_available

        if not triton_available():
            parser.error('--device cuda times the Triton kernel: pip install "fw-agents[gpu]"')
        print(f"torch {torch.__version__}, device {torch.cuda.get_device_name(device)}, cuDNN {torch.backends.cudnn.version()}")
    else:
        loops = "compiled" if compiled.loops() is not None else "Python (not built)"
        print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, scan loops {loops}, "
              f"load average before {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")  # fmt: skip
    print("forward+backward per call for the three shapes; no-grad one-step latency in the last column\n")
    print(markdown(measure(device, args.rounds)))
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    if args.sweep:
        print("\nTriton kernel launch choices\n")
        print(sweep_markdown(sweep_kernel(device, args.rounds)))


if __name__ == "__main__":
    main()
