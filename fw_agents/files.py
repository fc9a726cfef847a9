"""Atomic file writes: a crash, a kill or a full disk mid-write never leaves a truncated file
under its final name.

>>> with atomic_path("runs/x/model.zip") as tmp:
...     model.save(tmp)          # any writer that takes a path
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


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
