"""Host-side cost of a fast-weights rollout step through the Triton path, without a GPU.

On a GPU a one-step call is launch-bound: what the host does around the kernel launch (checks,
conversions, allocations, autograd's bookkeeping) is its latency. This times
``FastWeightsRNN(mode="triton")`` on CPU tensors with the kernel launch replaced by a no-op, and
lists the aten ops the step dispatches (each non-view op is a CUDA launch on a GPU) and those
that read a value back from the device (a sync on a GPU).

    python benchmarks/kernel_host_overhead.py [--batch 1] [--hidden 16] [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ["TRITON_INTERPRET"] = "1"  # the op accepts CPU tensors; the launch itself is replaced

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from fw_agents.memory import FastWeightsRNN  # noqa: E402
from fw_agents.memory.ops import fused_recurrent  # noqa: E402

READS_BACK = {"aten.is_nonzero.default", "aten._local_scalar_dense.default", "aten.nonzero.default", "aten.item.default"}
#: Ops that launch nothing: views and allocations (a conversion that returns its input is dropped too).
NO_LAUNCH = {"aten.view.default", "aten.transpose.int", "aten.t.default", "aten.slice.Tensor", "aten.select.int",
             "aten.unsqueeze.default", "aten.alias.default", "aten.empty.memory_format"}  # fmt: skip


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


class _Record(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not (args and out is args[0]):  # .to() / .contiguous() of a tensor that needs none: no launch
            self.ops.append(str(func))
        return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    fused_recurrent._kernels = lambda: (_NoLaunch(), _NoLaunch())
    core = FastWeightsRNN(args.hidden, args.hidden, mode="triton", fast_share=0.5)
    x, starts = torch.randn(1, args.batch, args.hidden), torch.zeros(1, args.batch)
    state = core.initial_state(args.batch)
    with torch.inference_mode():
        with _Record() as record:
            core(x, state, starts)
        for _ in range(500):
            core(x, state, starts)
        times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for _ in range(2000):
                core(x, state, starts)
            times.append((time.perf_counter() - start) / 2000 * 1e6)
    launches = [op for op in record.ops if op not in NO_LAUNCH and op not in READS_BACK]
    print(f"B={args.batch} H={args.hidden}, inference mode, kernel launch replaced by a no-op: "
          f"median {statistics.median(times):.1f} µs a step (range {min(times):.1f}-{max(times):.1f}, {args.rounds} rounds)")  # fmt: skip
    print(f"aten ops that launch on a GPU: {len(launches)} {launches}, plus the kernel")
    print(f"ops that read back from the device: {[op for op in record.ops if op in READS_BACK] or 'none'}")


if __name__ == "__main__":
    main()
