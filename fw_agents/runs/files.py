"""Atomic file writes: a crash, a kill or a full disk mid-write never leaves a truncated file
under its final name. Bounded reads: a file handed to the package (a checkpoint, a run folder's
``config.json``) is read only if it is a regular file of a bounded size (:func:`open_regular_file`).

>>> with atomic_path("runs/x/model.zip") as tmp:
...     model.save(tmp)          # any writer that takes a path
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A hidden temporary path beside ``path`` (same suffix, so writers that infer the format
    from it still do) that replaces ``path`` once the block succeeds: flushed to disk, given the
    permissions a plain write would have, then renamed over ``path``. When the block raises the
    temporary file is removed and ``path`` is left as it was.

    :param path: The final file; its folder is created if missing.
    :return: The temporary path to write to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".partial{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as file:
            os.fsync(file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private (0600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text_atomically(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


#: What a path that is not a regular file is, by ``stat`` type (for the one-line refusal).
_FILE_KINDS = ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
               (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))  # fmt: skip


def open_regular_file(path: str | os.PathLike[str], max_bytes: int, what: str = "file") -> BinaryIO:
    """``path`` opened for binary reading if it is a regular file of at most ``max_bytes``.

    Never a FIFO (opening one waits for a writer, forever), a device (``/dev/zero`` never ends), a
    socket or a folder: the type is checked with ``os.stat`` before opening (so no device is
    opened), then again on the open descriptor (opened non-blocking, so a FIFO put there meanwhile
    cannot block it), so the file read is the file checked.

    :param path: The file (a symlink is followed).
    :param max_bytes: The largest size accepted.
    :param what: What the file is, for the message (``model``, ``config.json``).
    :return: The open file; close it (a ``with`` block).
    :raises ValueError: Not a regular file, or larger than ``max_bytes``: one line naming the path.
    :raises OSError: It cannot be opened (missing, no permission).
    """
    check_regular_file(path, max_bytes, what)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        _check_regular(os.fstat(fd), path, max_bytes, what)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular_file(path: str | os.PathLike[str], max_bytes: int, what: str = "file") -> None:
    """Refuse ``path`` unless it is a regular file of at most ``max_bytes`` (``os.stat``, nothing opened).

    :raises ValueError: Not a regular file (a FIFO, a device, a folder, ...) or too large: one line.
    :raises OSError: It cannot be looked at (missing, no permission).
    """
    _check_regular(os.stat(path), path, max_bytes, what)


def read_regular_text(path: str | os.PathLike[str], max_bytes: int, what: str = "file") -> str:
    """The text of ``path`` through :func:`open_regular_file`, read up to ``max_bytes`` (a file that
    grows while it is read, such as one under ``/proc``, is refused past that too).

    :raises ValueError: As :func:`open_regular_file`, or the bytes are not UTF-8.
    """
    with open_regular_file(path, max_bytes, what) as file:
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{what} {str(path)!r} is larger than the {format_bytes(max_bytes)} accepted")
    try:
        return data.decode()
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} {str(path)!r} is not UTF-8 text ({error.reason} at byte {error.start})") from None


def format_bytes(size: int) -> str:
    """``size`` in the largest binary unit below it: ``512 bytes``, ``4 MiB``, ``1.5 GiB``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"


def _check_regular(info: os.stat_result, path: str | os.PathLike[str], max_bytes: int, what: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "special file")
        raise ValueError(f"{what} {str(path)!r} is a {kind}, not a regular file; give a file")
    if info.st_size > max_bytes:
        raise ValueError(
            f"{what} {str(path)!r} is {format_bytes(info.st_size)}, larger than the {format_bytes(max_bytes)} accepted"
        )
