"""A run's folder: named, created and held by one process at a time.

Two runs writing into one folder interleave their CSV rows and overwrite each
other's models, so a run *claims* its folder: it takes an exclusive lock on
``<folder>/.lock`` (``flock``; the system drops it when the process ends, even on
``kill -9``) and holds it until :meth:`RunFolder.release`. A second run on the
folder stops at once with one line naming the holder. Claiming a folder removes
the temporary files a writer killed mid-save left there (:mod:`fw_agents.runs.files`).
A folder that already holds a finished or interrupted run (its ``config.json``) is only taken back by
a run that continues it (``resume=True``); anything else stops, rather than
silently mixing two runs' files. A folder that holds no run but is not empty (the user's own
files, say a ``model.zip`` of their own) is refused too: a new run goes in a new or empty folder.

An auto-named folder's name keeps only characters every file system takes
(:func:`safe_folder_name`): an env id such as ``popgym:popgym-MineSweeperEasy-v0`` or
``ALE/Pong-v5`` gives one folder right under the runs root. A folder given by path (``--run-dir``,
``--resume``) is used as it is.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, folders are not guarded
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
#: The file whose presence says a folder holds a run.
RUN_MARKER = "config.json"


#: Names Windows reserves for devices, whatever follows their first dot (``nul.txt`` too).
WINDOWS_RESERVED_NAMES = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"{port}{k}" for port in ("COM", "LPT") for k in range(1, 10)]
)


def safe_folder_name(name: str) -> str:
    """``name`` as a folder name safe on every file system: trailing dots and spaces dropped
    (Windows drops them itself), every character outside ``[A-Za-z0-9._-]`` (``:`` ``/`` ``\\``,
    spaces, non-ASCII, ...) as ``-``, a name Windows reserves (``CON``, ``NUL.x``, ``LPT1``, ...)
    prefixed with ``_``, and ``run`` for nothing left."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", name.rstrip(". ")) or "run"
    return f"_{safe}" if safe.split(".")[0].upper() in WINDOWS_RESERVED_NAMES else safe


class RunFolderError(ValueError):
    """The folder cannot be used for this run (one line, naming the folder and what to do)."""


class RunFolder:
    """A claimed run folder; :meth:`release` (or the end of the process) gives it back.

    :param path: The folder.
    :param lock_fd: The open, locked ``.lock`` file (None where locks are unavailable).
    """

    def __init__(self, path: Path, lock_fd: int | None) -> None:
        self.path = path
        self._lock_fd = lock_fd

    def release(self) -> None:
        """Unlock the folder (idempotent). The ``.lock`` file stays: deleting it would race."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None


def claim_run_folder(root: str | os.PathLike[str], name: str, run_dir: str | None = None, resume: bool = False) -> RunFolder:
    """Create (or reuse) and lock the folder of a run.

    :param root: Parent folder of auto-named runs.
    :param name: Prefix of the auto-generated name ``<name>-<YYYYmmdd-HHMMSS>[-k]`` (made
        safe by :func:`safe_folder_name`: ``ALE/Pong-v5`` is ``ALE-Pong-v5``).
    :param run_dir: Explicit folder instead of an auto-named one.
    :param resume: The run continues the one already in ``run_dir`` (its files are kept and
        appended to); without it a folder that holds a run is refused.
    :raises RunFolderError: The path is not a usable folder (a file, read-only, ...), another
        process holds it, or, with ``resume`` False, it holds a run or is not empty (:func:`foreign_entries`).
    """
    path = _make(Path(run_dir)) if run_dir is not None else _make_unique(Path(root), name)
    others = [] if resume or (path / RUN_MARKER).exists() else foreign_entries(path)
    if others:  # the user's own files (a model.zip of theirs): a run would overwrite them, or mix its own in
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise RunFolderError(  # refused before the lock: nothing is added to their folder
            f"--run-dir {str(path)!r} is not empty and holds no run ({RUN_MARKER}): it has {shown}; "
            "a run goes in a new or empty folder (or --resume one that holds a run)"
        )
    folder = RunFolder(path, _lock(path))
    for stale in path.rglob(".*.partial*"):  # temporary files of a writer killed mid-save (we hold the lock)
        stale.unlink(missing_ok=True)
    if not resume and (path / RUN_MARKER).exists():
        folder.release()
        raise RunFolderError(
            f"run folder {str(path)!r} already holds a run ({RUN_MARKER}); continue it with "
            f"--resume {path}, or choose another --run-dir"
        )
    return folder


#: Entries a folder may hold and still count as empty for a new run: ones a run itself makes
#: before its ``config.json`` (the lock, temporary files, the writability probe), and ``train.log``,
#: the log a command opens in the folder before the run starts (the search's trials).
OWN_ENTRIES = (LOCK_NAME, "train.log")


def foreign_entries(path: Path) -> list[str]:
    """The names in folder ``path`` that no run made (see :data:`OWN_ENTRIES`), sorted."""
    own = re.compile(r"\..*\.partial.*|\.write-test-\d+")
    return sorted(entry.name for entry in os.scandir(path) if entry.name not in OWN_ENTRIES and not own.fullmatch(entry.name))


def folder_in_use(path: str | os.PathLike[str]) -> bool:
    """Whether a live process holds the run folder at ``path`` (its ``.lock``) right now."""
    lock_path = Path(path) / LOCK_NAME
    if fcntl is None or not lock_path.exists():
        return False
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # drops the lock taken just now, if any
    return False


def _make(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise RunFolderError(f"cannot use {str(path)!r} as a run folder: {error.strerror or error}") from None
    return path


def _make_unique(root: Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = root / f"{safe_folder_name(name)}-{stamp}"
    path, k = base, 1
    while True:
        try:
            path.mkdir(parents=True, exist_ok=False)
            return _make(path)
        except FileExistsError:
            if not root.is_dir():
                raise RunFolderError(f"cannot create run folders under {str(root)!r}: it is not a folder") from None
            k += 1
            path = base.with_name(f"{base.name}-{k}")
        except OSError as error:
            raise RunFolderError(f"cannot create run folders under {str(root)!r}: {error.strerror or error}") from None


def _lock(path: Path) -> int | None:
    if fcntl is None:
        return None
    lock_path = path / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise RunFolderError(f"cannot use {str(path)!r} as a run folder: {error.strerror or error}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunFolderError(
            f"run folder {str(path)!r} is in use by another run (pid {holder}); wait for it to end "
            "or choose another --run-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
