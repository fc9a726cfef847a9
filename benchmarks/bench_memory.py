"""Forward+backward time and one-step latency of every memory core, against torch.nn.LSTM.

All cores are timed side by side in one process, round-robin (one repetition of
each core per round, median over rounds), so machine noise hits them alike.

    python benchmarks/bench_memory.py [--rounds 15] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from fw_agents.memory import MEMORY_NAMES, make_memory

SHAPES = [(64, 128, 128), (16, 64, 128), (16, 128, 16)]  # (B, H, T); the last is the RL shape
LATENCY_BATCH = 16
PEER = "torch.nn.LSTM"
REFERENCE = "fastweights (reference loop)"  # the naive per-step autograd loop, for scale


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
    state = None if is_peer else model.initial_state(x.shape[1], x.device)

    @torch.no_grad()
    def step() -> None:
        nonlocal state
        _, state = model(x, state)

    return step


def measure(device: torch.device, rounds: int) -> dict[str, dict[str, float]]:
    """Seconds per call, ``{column: {core: seconds}}``."""
    names = [PEER, *MEMORY_NAMES, REFERENCE]
    results: dict[str, dict[str, float]] = {}
    columns = [(f"B={B} H={H} T={T}", B, H, T, _train_step) for B, H, T in SHAPES]
    columns.append((f"1 step, B={LATENCY_BATCH} H=128", LATENCY_BATCH, 128, 1, _one_step))
    for column, B, H, T, make_fn in columns:
        torch.manual_seed(0)
        x = torch.randn(T, B, H, device=device)
        timers = {}
        for name in names:
            if name == PEER:
                model = torch.nn.LSTM(H, H)
            elif name == REFERENCE:
                model = make_memory("fastweights", H, H, mode="reference")
            else:
                model = make_memory(name, H, H)
            model = model.to(device)
            fn = make_fn(model, x, name == PEER)
            for _ in range(2):  # warm-up
                fn()
            once = _timer(fn, device, 1)()
            repeat = max(1, min(200, int(0.05 / max(once, 1e-6))))
            timers[name] = _timer(fn, device, repeat)
        samples: dict[str, list[float]] = {name: [] for name in names}
        # The reference loop builds huge autograd graphs that disturb the allocator for
        # whoever runs next, so it is timed after the round-robin, not inside it.
        for _ in range(rounds):
            for name in names[:-1]:
                samples[name].append(timers[name]())
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="round-robin rounds (median is reported)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    print("forward+backward per call for the three shapes; no-grad one-step latency in the last column\n")
    print(markdown(measure(device, args.rounds)))


if __name__ == "__main__":
    main()
