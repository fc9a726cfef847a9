"""Forward+backward time and one-step latency of every memory core, against torch.nn.LSTM.

All cores are timed side by side in one process, round-robin (one repetition of
each core per round, median over rounds), so machine noise hits them alike.

    python benchmarks/bench_memory.py [--rounds 15] [--device cpu]

With ``--device cuda`` it times the fast-weights core three ways instead: the PyTorch
scan (``FastWeightsRNN``, mode "auto"), the fused Triton kernel
(:func:`fw_agents.memory.ops.triton_scan.fast_weights_triton`, same parameters) and
cuDNN's ``nn.LSTM``, at (B, T, H) = (256, 16, 128), (64, 128, 128), (16, 512, 128).
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
CUDA_SHAPES = [(256, 128, 16), (64, 128, 128), (16, 128, 512)]  # (B, H, T)
SCAN = "fastweights (PyTorch scan)"
KERNEL = "fastweights (Triton kernel)"


class TritonFastWeights(torch.nn.Module):
    """A ``FastWeightsRNN``'s parameters run through the fused Triton kernel (until the core
    grows a ``mode="triton"``)."""

    def __init__(self, core: torch.nn.Module) -> None:
        super().__init__()
        from fw_agents.memory.ops.triton_scan import fast_weights_triton

        self.core = core
        self.op = fast_weights_triton

    def initial_state(self, batch: int, device: torch.device):
        return self.core.initial_state(batch, device)

    def forward(self, x: torch.Tensor, state=None):
        c = self.core
        h, A = state if state is not None else (x.new_zeros(x.shape[1], c.hidden_size), None)
        ln_w, ln_b = (c.ln.weight, c.ln.bias) if c.ln is not None else (None, None)
        y, h, A = self.op(c.C(x), h, A, c.W.weight, ln_w, ln_b, decay=c.decay, fast_lr=c.paper_fast_lr,
                          inner_steps=c.inner_steps, layer_norm=c.layer_norm)  # fmt: skip
        return y, (h, A)


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


def _make(name: str, H: int) -> torch.nn.Module:
    if name == PEER:
        return torch.nn.LSTM(H, H)
    if name == REFERENCE:
        return make_memory("fastweights", H, H, mode="reference")
    if name == SCAN:
        return make_memory("fastweights", H, H)
    if name == KERNEL:
        return TritonFastWeights(make_memory("fastweights", H, H))
    return make_memory(name, H, H)


def measure(device: torch.device, rounds: int) -> dict[str, dict[str, float]]:
    """Seconds per call, ``{column: {core: seconds}}``."""
    cuda = device.type == "cuda"
    # on CUDA the last name is timed in the round-robin too (no reference loop there)
    names = [PEER, SCAN, KERNEL] if cuda else [PEER, *MEMORY_NAMES, REFERENCE]
    results: dict[str, dict[str, float]] = {}
    columns = [(f"B={B} H={H} T={T}", B, H, T, _train_step) for B, H, T in (CUDA_SHAPES if cuda else SHAPES)]
    columns.append((f"1 step, B={LATENCY_BATCH} H=128", LATENCY_BATCH, 128, 1, _one_step))
    for column, B, H, T, make_fn in columns:
        torch.manual_seed(0)
        x = torch.randn(T, B, H, device=device)
        timers = {}
        for name in names:
            model = _make(name, H).to(device)
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
            for name in names if cuda else names[:-1]:
                samples[name].append(timers[name]())
        if not cuda:
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
    if device.type == "cuda":
        from fw_agents.memory.ops.triton_scan import triton_available

        if not triton_available():
            parser.error('--device cuda times the Triton kernel: pip install "fw-agents[gpu]"')
        print(f"torch {torch.__version__}, device {torch.cuda.get_device_name(device)}, cuDNN {torch.backends.cudnn.version()}")
    else:
        print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    print("forward+backward per call for the three shapes; no-grad one-step latency in the last column\n")
    print(markdown(measure(device, args.rounds)))


if __name__ == "__main__":
    main()
