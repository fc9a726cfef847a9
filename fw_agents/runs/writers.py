"""Where a run's scalars go: ``progress.csv``, TensorBoard, the terminal and W&B, one writer each.

:class:`fw_agents.runs.tracking.Tracker` sends every logged set of scalars to the writers of
:func:`make_writers`. None of them imports Stable-Baselines3 (an RL run writes through an
SB3 logger instead, :mod:`fw_agents.runs.sb3_logger`, which reuses :class:`WandbScalars`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fw_agents.runs.progress_csv import ProgressCsv
from fw_agents.validation import check_choice, one_line

DEFAULT_LOG_FORMATS: tuple[str, ...] = ("stdout", "csv", "tensorboard")
#: Formats the writers of this module provide (an SB3 logger also has ``log`` and ``json``).
NATIVE_LOG_FORMATS: tuple[str, ...] = DEFAULT_LOG_FORMATS


class ScalarWriter(Protocol):
    """Where :meth:`Tracker.log_scalars` sends a set of scalars."""

    def write(self, values: Mapping[str, Any], step: int) -> None: ...

    def close(self) -> None: ...


class WandbScalars:
    """Mirrors logged scalars into a W&B run, plotted against ``global_step``.

    Non-scalar values (text, figures) are skipped. The first failing ``run.log`` prints
    one warning and turns mirroring off (training continues).

    :param run: A ``wandb`` run (anything with ``log(dict)``).
    :param first_step: Rows at earlier steps are not sent. A resumed W&B run already holds
        the steps up to where the crashed run got (W&B cannot delete points); the resumed run
        logs the steps after its checkpoint again, and W&B takes each step once, as it does
        with ``log(step=...)``.

    Each row is sent with ``step=`` its step, so W&B's own step (``_step``) is the logged one:
    a resumed offline run (a second offline folder of the same run; offline, W&B cannot ask
    the server where the run got and would restart at 0) continues the steps when both are
    synced.
    """

    def __init__(self, run: Any, first_step: int | None = None) -> None:
        self.run = run
        self.first_step = first_step

    def write(self, values: Mapping[str, Any], step: int) -> None:
        if self.run is None or (self.first_step is not None and step < self.first_step):
            return
        payload: dict[str, float | int] = {"global_step": int(step)}
        for key, value in values.items():
            scalar = as_scalar(value)
            if scalar is not None:
                payload[key] = scalar
        try:
            self.run.log(payload, step=int(step))
        except Exception as error:  # noqa: BLE001 - logging must never stop training
            warn(f"W&B logging failed, mirroring turned off: {one_line(error, first_line=True)}")
            self.run = None

    def close(self) -> None:
        """Nothing to do: the run is finished by :meth:`Tracker.close`."""


class CsvScalars:
    """``progress.csv`` (:class:`fw_agents.runs.progress_csv.ProgressCsv`: SB3's layout, crash-safe,
    continued when it exists).

    :param path: The CSV file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.csv = ProgressCsv(path)

    def write(self, values: Mapping[str, Any], step: int) -> None:
        self.csv.write(values)

    def close(self) -> None:
        self.csv.close()


class TensorBoardScalars:
    """TensorBoard event file in ``log_dir`` (``torch.utils.tensorboard``): numbers as
    scalars, text as text.

    :param log_dir: Folder of the ``events.out.tfevents.*`` file.
    :param purge_step: A resumed run's first step: TensorBoard hides the events at this step
        and later that an earlier writer left in ``log_dir`` (``SummaryWriter(purge_step=...)``).
    """

    def __init__(self, log_dir: str | os.PathLike[str], purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def write(self, values: Mapping[str, Any], step: int) -> None:
        for key, value in values.items():
            if isinstance(value, str):
                self.writer.add_text(key, value, step)
            elif (scalar := as_scalar(value)) is not None:
                self.writer.add_scalar(key, scalar, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class StdoutScalars:
    """A table per write on stdout, as SB3 prints it (keys sorted, grouped by their
    ``prefix/``; floats with 3 significant digits)."""

    def write(self, values: Mapping[str, Any], step: int) -> None:
        rows: list[tuple[str, str]] = []
        tag = ""
        for key in sorted(values):
            prefix, sep, rest = key.partition("/")
            if sep and prefix and prefix + "/" != tag:
                tag = prefix + "/"
                rows.append((tag, ""))
            value = values[key]
            text = f"{value:<8.3g}" if isinstance(value, float) else str(value)
            rows.append((f"   {rest}" if sep and prefix else key, text))
        if not rows:
            return
        key_width = max(len(key) for key, _ in rows)
        value_width = max(len(text) for _, text in rows)
        dashes = "-" * (key_width + value_width + 7)
        lines = [dashes, *(f"| {key:<{key_width}} | {text:<{value_width}} |" for key, text in rows), dashes]
        print("\n".join(lines), flush=True)

    def close(self) -> None:
        """Nothing to close."""


def make_writers(
    run_dir: Path,
    log_formats: Sequence[str],
    wandb_run: Any | None = None,
    purge_step: int | None = None,
    wandb_first_step: int | None = None,
) -> list[ScalarWriter]:
    """The writers of ``log_formats`` (a subset of :data:`NATIVE_LOG_FORMATS`) for ``run_dir``,
    plus W&B mirroring when ``wandb_run`` is given. ``purge_step`` and ``wandb_first_step``
    continue a resumed run (:class:`TensorBoardScalars`, :class:`WandbScalars`)."""
    kinds = {
        "stdout": StdoutScalars,
        "csv": lambda: CsvScalars(run_dir / "progress.csv"),
        "tensorboard": lambda: TensorBoardScalars(run_dir, purge_step),
    }
    writers: list[ScalarWriter] = [kinds[check_choice("log format", kind, NATIVE_LOG_FORMATS)]() for kind in log_formats]
    if wandb_run is not None:
        writers.append(WandbScalars(wandb_run, wandb_first_step))
    return writers


def as_scalar(value: Any) -> float | int | None:
    """``value`` as a Python number when it is one (bool, int, float, numpy or one-element torch), else None."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, np.generic) and np.issubdtype(value.dtype, np.number):
        return value.item()
    if hasattr(value, "numel") and hasattr(value, "item"):  # a one-element torch tensor
        try:
            return value.item() if value.numel() == 1 else None
        except Exception:  # noqa: BLE001
            return None
    return None


def warn(message: str) -> None:
    """One ``warning:`` line on stderr (tracking never stops a run)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
