"""Registers and spill stack per thread of the fused fast-weights kernels, without a GPU.

Compiles both Triton kernels of ``fw_agents.memory.ops.fused_recurrent`` for a CUDA target
offline (Triton ships LLVM and ptxas) and reads the cubin's resource usage with the
bundled ``cuobjdump``: the one performance signal available on a CPU-only machine
(a non-zero STACK means ptxas spilled registers to local memory).

    python benchmarks/triton_resources.py [--arch 90] [--hidden 32 64 128] [--inner-steps 1] [--flags ppo all]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from typing import Any

import triton
import triton.backends.compiler as backend_compiler
import triton.compiler.compiler as compiler_compiler
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fw_agents.memory.ops import fused_recurrent

# Every option on (all masks, a given A with its gradient, the final state and its gradient).
FORWARD_FLAGS = dict(HAS_A0=True, HAS_START=True, HAS_WRITE=True, HAS_RESET=True, SAVE=True, STORE_AT=True)
BACKWARD_FLAGS = dict(HAS_START=True, HAS_WRITE=True, HAS_RESET=True, HAS_GY=True, HAS_GHT=True, HAS_GAT=True,
                      STORE_DA0=True)  # fmt: skip
# What a RecurrentPPO update launches: the buffer's carried A (no gradient), episode starts,
# no write mask or hidden resets, the final state neither returned nor differentiated.
PPO_FORWARD_FLAGS = dict(HAS_A0=True, HAS_START=True, HAS_WRITE=False, HAS_RESET=False, SAVE=True, STORE_AT=False)
PPO_BACKWARD_FLAGS = dict(HAS_START=True, HAS_WRITE=False, HAS_RESET=False, HAS_GY=True, HAS_GHT=False,
                          HAS_GAT=False, STORE_DA0=False)  # fmt: skip
FLAG_SETS = {"all": (FORWARD_FLAGS, BACKWARD_FLAGS), "ppo": (PPO_FORWARD_FLAGS, PPO_BACKWARD_FLAGS)}


def _source(
    kernel, names: list[str], signature: dict, constants: dict, divisible: list[int], ones: dict[str, int]
) -> ASTSource:
    """The kernel with its specialisations, in the installed Triton's format: 3.3 and later key
    constants and attributes by argument position and make an int argument equal to 1 a
    constexpr; 3.0 to 3.2 key constants by name, list no constexpr in the signature, take an
    ``AttrsDescriptor`` and mark the ones there (the kernels' floor, ``triton>=3.0``, is
    checked this way)."""
    equal_to_1 = [names.index(name) for name in ones]
    if hasattr(backend_compiler, "AttrsDescriptor"):  # 3.2
        attrs = backend_compiler.AttrsDescriptor.from_dict(
            {"arg_properties": {"tt.divisibility": divisible, "tt.equal_to": equal_to_1}, "cls": "AttrsDescriptor"}
        )
    elif hasattr(compiler_compiler, "AttrsDescriptor"):  # 3.0, 3.1
        attrs = compiler_compiler.AttrsDescriptor(divisible_by_16=set(divisible), equal_to_1=set(equal_to_1))
    else:  # 3.3 and later
        signature = {**signature, **{name: "constexpr" for name in ones}}
        attrs = {(i,): [["tt.divisibility", 16]] for i in divisible}
        return ASTSource(kernel, signature, {(names.index(k),): v for k, v in {**constants, **ones}.items()}, attrs)
    signature = {k: v for k, v in signature.items() if v != "constexpr"}
    return ASTSource(kernel, signature, {**constants, **ones}, attrs)

def resources(fn, flags: dict, **options: Any) -> tuple[int, int]:
    """Compile one kernel for ``sm_<arch>`` without a GPU (:func:`compile_kernel`'s options);
    ``(registers, spill stack bytes)`` per thread, read from the cubin with the ``cuobjdump``
    that ships with Triton."""
    compiled = compile_kernel(fn, flags, **options)
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        out = subprocess.run([cuobjdump, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    match = re.search(r"REG:(\d+) STACK:(\d+)", out)
    if match is None:
        raise RuntimeError(f"no resource usage in cuobjdump's output: {out.strip()[:200]}")
    return int(match.group(1)), int(match.group(2))


def compile_kernel(
    fn, flags: dict, *, hidden: int, inner_steps: int, chunk: int, arch: int, num_warps: int,
    layer_norm: bool = True, float64: bool = False, steps: int = 16, batch: int = 256,
) -> Any:  # fmt: skip
    """One kernel compiled for ``sm_<arch>`` without a GPU, as the launcher would specialise
    it (``compiled.asm`` holds its ``ttgir``, ``ptx`` and ``cubin``). ``steps`` and ``batch``
    (T and B) matter only as the launcher specialises them: 1 (a rollout step, one env) is
    compiled in as a constant, a multiple of 16 marked so."""
    block = triton.next_power_of_2(hidden)
    interpret = os.environ.pop("TRITON_INTERPRET", None)  # jit decides compiled vs interpreted now
    try:
        kernel = triton.jit(fn)
    finally:
        if interpret is not None:
            os.environ["TRITON_INTERPRET"] = interpret
    names = list(kernel.arg_names)
    acc, pointer = (tl.float64, "*fp64") if float64 else (tl.float32, "*fp32")
    constants = dict(S=inner_steps, BH=block, K=chunk, ACC=acc, LAYER_NORM=layer_norm, **flags)
    signature = {}
    for name in names:
        if name.endswith("_ptr"):
            signature[name] = pointer
        elif name in ("T", "B", "H"):
            signature[name] = "i32"
        elif name in ("decay", "fast_lr", "eps"):
            signature[name] = "fp32"  # the op passes Python floats: float32 scalars whatever the dtype
        else:
            signature[name] = "constexpr"
    # What the launcher specialises at run time: torch's allocations are 16-byte aligned, and an
    # int argument divisible by 16 is marked so (H, the real hidden size, when it is; T and B
    # by default as at the RL shape, 16 x 256), one equal to 1 becomes a constant. Without
    # these hints the compiler cannot vectorise the tile loads, picks another layout and the
    # counts are not the ones a GPU run gets.
    ints = {"T": steps, "B": batch, "H": hidden}
    divisible = [i for i, name in enumerate(names) if name.endswith("_ptr") or (ints.get(name, 1) % 16 == 0)]
    ones = {name: 1 for name, value in ints.items() if value == 1}
    source = _source(kernel, names, signature, constants, divisible, ones)
    options = {**fused_recurrent._launch_options(block, backward=False), "num_warps": num_warps}  # the op's options
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (90: H100/H200)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=fused_recurrent.DEFAULT_CHUNK)
    parser.add_argument("--warps", type=int, nargs="*", default=None, help="warps to try (default: the op's choice)")
    parser.add_argument("--flags", nargs="+", choices=sorted(FLAG_SETS), default=["ppo", "all"],
                        help="ppo: what a RecurrentPPO update launches; all: every option on")  # fmt: skip
    args = parser.parse_args()
    print("| H | kernel | options | warps | per thread |\n|---|---|---|---|---|")
    for hidden in args.hidden:
        block = triton.next_power_of_2(hidden)
        for backward, fn in ((False, fused_recurrent._fw_forward_kernel), (True, fused_recurrent._fw_backward_kernel)):
            for flag_set in args.flags:
                flags = FLAG_SETS[flag_set][backward]
                for warps in args.warps or [fused_recurrent._launch_options(block, backward)["num_warps"]]:
                    registers, stack = resources(fn, flags, hidden=hidden, inner_steps=args.inner_steps,
                                                 chunk=args.chunk, arch=args.arch, num_warps=warps)  # fmt: skip
                    label = "backward" if backward else "forward"
                    print(f"| {hidden} | {label} | {flag_set} | {warps} | {registers} registers, {stack} B stack |",
                          flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
