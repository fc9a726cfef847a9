"""Shared test fixtures."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch


def pytest_sessionstart(session):
    """Build the scan's compiled loops (fw_agents.memory.ops.compiled) before any test runs, so
    that no test's subprocess pays the build or prints its one-line notice on stderr."""
    from fw_agents.memory.ops import compiled

    compiled.loops()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny ops on a shared 2-core machine: more threads only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def full_fp32(monkeypatch):
    """float32 on a GPU computed as float32: no TF32. cuDNN runs float32 RNNs (and convolutions)
    in TF32 on Ampere and later by default (``torch.backends.cudnn.allow_tf32``, in torch 2.9+
    ``torch.backends.cudnn.rnn.fp32_precision == "tf32"``): 10-bit operands, about 4e-4 off the
    CPU's float32 for nn.LSTM/GRU/RNN, beyond a 1e-4 comparison. Restored after the test."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # cuBLAS matmuls: float32 by default


@pytest.fixture
def rollout_steps():
    """``rollout_steps(core, x, starts)``: the core's outputs ``[T, B, H]`` and final packed state when
    fed one step at a time through ``forward_packed`` (a rollout's calls: packed states, no
    autograd), from zero states; a test compares them with the core's sequence call."""

    def run(core, x, starts):
        with torch.no_grad():
            packed = torch.zeros(x.shape[1], core.state_size, dtype=x.dtype)
            outputs = []
            for t in range(x.shape[0]):
                out, packed = core.forward_packed(x[t : t + 1], packed, starts[t : t + 1], core.state_size)
                outputs.append(out[0])
        return torch.stack(outputs), packed

    return run


@pytest.fixture
def device_syncs():
    """``device_syncs(fn)``: the ops of ``fn()`` that read a value back from the tensors' device
    (on a GPU each one is a device-to-host sync), recorded at torch's dispatcher, so CPU runs
    see them too."""
    from torch.utils._python_dispatch import TorchDispatchMode

    reads = {"aten.is_nonzero.default", "aten._local_scalar_dense.default", "aten.nonzero.default", "aten.item.default"}

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            called.append(str(func))
            return func(*args, **(kwargs or {}))

    def syncs(fn) -> list[str]:
        called.clear()
        with Record():
            fn()
        return [op for op in called if op in reads]

    called: list[str] = []
    return syncs


def _postgres_bin() -> Path | None:
    """A folder with PostgreSQL's initdb and pg_ctl: Debian's newest, else initdb on PATH."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name.zfill(4), reverse=True)
    found = shutil.which("initdb")
    for folder in [*debian, *([Path(found).parent] if found else [])]:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    return None


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL database URL for the multi-worker tests: ``$FW_TEST_POSTGRES_URL`` (``.ci/run``
    starts a server and sets it), else a throwaway server of our own from the binaries on this
    machine (initdb into a temporary folder, as the ``postgres`` user or ``nobody`` when we are
    root: the server refuses to run as root), stopped at the end of the session."""
    url = os.environ.get("FW_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    folder = _postgres_bin()
    if folder is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin; "
                    "install Debian's postgresql or set FW_TEST_POSTGRES_URL")  # fmt: skip
    prefix: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="fw-test-postgres-"))
    if os.geteuid() == 0:
        user = "postgres" if _user_exists("postgres") else "nobody"
        shutil.chown(data, user)
        prefix = ["runuser", "-u", user, "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = functools.partial(subprocess.run, check=True, capture_output=True, text=True, timeout=120)
    run([*prefix, str(folder / "initdb"), "-D", str(data / "data"), "-U", "fw", "-A", "trust", "--no-sync"])
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = [*prefix, str(folder / "pg_ctl"), "-D", str(data / "data")]
    run([*pg_ctl, "-l", str(data / "server.log"), "-w", "-o", options, "start"])
    try:
        yield f"postgresql+psycopg://fw@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(data, ignore_errors=True)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
