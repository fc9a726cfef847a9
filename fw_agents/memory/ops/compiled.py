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
machine (~40 s; cached in ``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``,
under ``fw_agents/``); a built library is imported directly.
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


def build_directory() -> Path:
    """Where the extension is built and cached: ``<TORCH_EXTENSIONS_DIR>/fw_agents/<name>``, the
    name carrying a digest of the source and torch's version (an edited source or another torch,
    another ABI, is a new extension, never a stale cache)."""
    from torch.utils import cpp_extension

    digest = hashlib.sha256(SOURCE.read_bytes() + torch.__version__.encode()).hexdigest()[:12]
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root())
    return root / "fw_agents" / f"fw_agents_scan_loops_{digest}"


def _build() -> ModuleType:
    from torch.utils import cpp_extension

    build_dir = build_directory()
    name = build_dir.name
    build_dir.mkdir(parents=True, exist_ok=True)
    # One process at a time past this point, by an OS lock that dies with its holder: torch's own
    # lock (a file it deletes when done) outlives a process killed mid-load, and every later load
    # would wait on it forever (a suite worker killed as it starts, say).
    with _exclusive(build_dir / "fw_agents.lock"):
        library = build_dir / f"{name}.so"
        if library.exists():  # built: import it, no build tools run
            with contextlib.suppress(ImportError):  # a half-written library: built again below
                return _import(name, library)
        with contextlib.suppress(FileNotFoundError):
            (build_dir / "lock").unlink()  # torch's lock, left by a build killed midway: ours is held
        print(f"fast weights: building the compiled scan loops into {build_dir} (once per machine, about a "
              "minute; FW_AGENTS_COMPILED=0 skips it)", file=sys.stderr, flush=True)  # fmt: skip
        return cpp_extension.load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=["-O2"],
            build_directory=str(build_dir),
            verbose=False,
        )


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (released by the OS if the process dies); a no-op
    where ``fcntl`` is missing (Windows: torch's own lock alone)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _import(name: str, library: Path) -> ModuleType:
    """The built extension module at ``library``, imported as ``name``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, library)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {library}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
