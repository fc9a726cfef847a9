"""``progress.csv``: a run's scalar curves, in Stable-Baselines3's layout, that no crash corrupts.

One row per dump, one column per key; a key first logged later adds a column and
earlier rows get it empty, as SB3's ``CSVOutputFormat`` writes it. What differs:

* **Crash-safe.** A row is one ``write`` of a whole line. Adding a column rewrites the
  file to a temporary one and renames it over the old (:mod:`fw_agents.runs.files`), where
  SB3 rewrites in place, so a kill mid-rewrite can only cost the row being written,
  never the rows before it.
* **Appendable.** Opening an existing file continues it (a resumed run's curve goes on
  in the same file): its header is read back, and a last line a crash cut short (no
  newline) is dropped.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from fw_agents.runs.files import write_text_atomically


class ProgressCsv:
    """Rows of scalars, appended to ``path``.

    :param path: The CSV file; created, or continued when it exists.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.keys: list[str] = []
        if self.path.exists():
            text = self.path.read_text()
            if text and not text.endswith("\n"):  # a row cut short by a crash
                text = text[: text.rfind("\n") + 1]
                write_text_atomically(self.path, text)
            header = next(csv.reader(io.StringIO(text)), [])
            self.keys = list(header)
        self.file: IO[str] = open(self.path, "a")

    def write(self, values: Mapping[str, Any]) -> None:
        """Append one row (``None`` values are written empty, strings quoted as SB3 does)."""
        new = [key for key in values if key not in self.keys]
        if new:
            self._add_columns(new)
        self.file.write(",".join(_cell(values.get(key)) for key in self.keys) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()

    def _add_columns(self, new: list[str]) -> None:
        self.file.close()
        rows = self.path.read_text().splitlines()[1:]
        self.keys += new
        padding = "," * len(new)
        lines = [",".join(self.keys), *(row + padding for row in rows)]
        write_text_atomically(self.path, "\n".join(lines) + "\n")
        self.file = open(self.path, "a")


def _row_steps(path: Path, column: str) -> tuple[list[str], list[float | None], bool] | None:
    """The file's whole lines (a last one a crash cut short, with no newline, left out), each
    data row's number in ``column`` (None where it has none) and whether a line was cut;
    None when the file or the column is missing."""
    if not path.exists():
        return None
    text = path.read_text()
    lines = text[: text.rfind("\n") + 1].splitlines()
    header = next(csv.reader(lines[:1]), [])
    if column not in header:
        return None
    index = header.index(column)
    steps: list[float | None] = []
    for line in lines[1:]:
        cells = next(csv.reader([line]), [])
        try:
            steps.append(float(cells[index]))
        except (IndexError, ValueError):
            steps.append(None)
    return lines, steps, not text.endswith("\n")


def last_step(path: str | os.PathLike[str], column: str) -> float | None:
    """The largest step ``column`` holds in ``path`` (None: no file, no column or no number):
    how far a run logged, the W&B run it mirrors to included."""
    found = _row_steps(Path(path), column)
    steps = found[1] if found else []
    numbers = [step for step in steps if step is not None]
    return max(numbers) if numbers else None


def drop_rows_after(path: str | os.PathLike[str], column: str, step: float) -> int:
    """Rewrite ``path`` (atomically) without the rows whose ``column`` is above ``step``: what a
    run logged after the checkpoint it is resumed from (it crashed between checkpoints), which
    the resumed run logs again. Rows without a number there are kept; a last row a crash cut
    short (no newline) is dropped.

    :return: How many rows were dropped, the cut one included (0 when the file or the column
        does not exist).
    """
    path = Path(path)
    found = _row_steps(path, column)
    if found is None:
        return 0
    lines, steps, cut = found
    kept = lines[:1] + [line for line, at in zip(lines[1:], steps) if at is None or at <= step]
    dropped = len(lines) - len(kept) + cut
    if dropped:
        write_text_atomically(path, "\n".join(kept) + "\n")
    return dropped


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return '"' + value.replace('"', '""') + '"'
    return str(value)
