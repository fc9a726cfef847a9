"""The scan's per-step loops and the rollout step compiled to C++ (``scan_loops.cpp``), built on first use.

At the RL shape the chunked scan's cost is the interpreter, not the maths: ~8 tensor ops a
step forward and ~12 backward, each issued from Python. ``scan_loops.cpp`` ports the two
loops of :mod:`~fw_agents.memory.ops.chunked_scan_fwd` and
:mod:`~fw_agents.memory.ops.chunked_scan_bwd` line for line (the same ATen ops in the same
order), so a compiled scan gives **bitwise** the Python scan's values and gradients (tested),
at the cost of the C++ call alone. ``rollout_step`` does the same for a fast-weights rollout
step on packed states (``FastWeightsRNN.forward_packed``: ~40 small ops from Python, one call).

It is built with torch's own extension builder (``torch.utils.cpp_extension.load``: a C++17
compiler and ninja, both in the usual build tools) the first time a CPU scan runs, once per
machine (~40 s; cached in ``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``).
Where it cannot be built, the scan warns once and runs its Python loops: same results.

``FW_AGENTS_COMPILED`` chooses, read when the scan first asks:

* ``auto`` (default): compiled where it builds, the Python loops elsewhere;
* ``0``: always the Python loops (never builds);
* ``1``: compiled, and a build failure is an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import warnings
from pathlib import Path
from collections.abc import Iterator
from types import ModuleType

import torch

CHOICES = ("auto", "0", "1")
SOURCE = Path(__file__).with_name("scan_loops.cpp")

_loaded: ModuleType | None = None
_tried = False


def setting() -> str:
    """``FW_AGENTS_COMPILED`` (``auto`` when unset); ValueError naming the accepted values."""
    value = os.environ.get("FW_AGENTS_COMPILED", "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"FW_AGENTS_COMPILED={value!r}: accepted values are {', '.join(CHOICES)}")
    return value


def loops() -> ModuleType | None:
    """The compiled loops (``forward_steps``, ``backward_steps``, ``rollout_step``), or None for the Python ones."""
    global _loaded, _tried
    if _tried:
        return _loaded
    choice = setting()
    _tried = True
    if choice == "0":
        return None
    try:
        _loaded = _build()
    except Exception as error:  # noqa: BLE001 - no compiler, no ninja, a failed build: the Python loops instead
        if choice == "1":
            raise RuntimeError(f"FW_AGENTS_COMPILED=1: the compiled scan loops failed to build: {error}") from error
        warnings.warn(
            f"fast weights: the compiled scan loops could not be built ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[-1] if str(error).strip() else ''}); running the Python loops "
            "(same results, slower). Set FW_AGENTS_COMPILED=0 to skip the attempt.",
            RuntimeWarning,
            stacklevel=3,
        )
    return _loaded


def loops_for(like: torch.Tensor) -> ModuleType | None:
    """:func:`loops` for a scan over tensors like ``like``: CPU only (CUDA runs the Triton kernel,
    or the Python loops, whose launches the C++ port would not make cheaper)."""
    return loops() if like.device.type == "cpu" else None


@contextlib.contextmanager
def python_loops() -> Iterator[None]:
    """Within this block every scan (forward and backward) runs the Python loops; for timing
    the two side by side (``benchmarks/bench_memory.py``) and for checking them against each other."""
    global _loaded, _tried
    saved = _loaded, _tried
    _loaded, _tried = None, True
    try:
        yield
    finally:
        _loaded, _tried = saved


def reset() -> None:
    """Forget the last choice, so the next scan reads ``FW_AGENTS_COMPILED`` again (for tests)."""
    global _loaded, _tried
    _loaded, _tried = None, False


def _build() -> ModuleType:
    from torch.utils import cpp_extension

    # the source's and torch's version in the name: an edited source or another torch (another
    # ABI) is a new extension, never a stale cache
    digest = hashlib.sha256(SOURCE.read_bytes() + torch.__version__.encode()).hexdigest()[:12]
    name = f"fw_agents_scan_loops_{digest}"
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root())
    if not any(root.glob(f"*/{name}/{name}.*")) and not any(root.glob(f"{name}/{name}.*")):
        print(f"fast weights: building the compiled scan loops into {root} (once per machine, about a minute; "
              "FW_AGENTS_COMPILED=0 skips it)", file=sys.stderr, flush=True)  # fmt: skip
    return cpp_extension.load(
        name=name,
        sources=[str(SOURCE)],
        extra_cflags=["-O2"],
        verbose=False,
    )
