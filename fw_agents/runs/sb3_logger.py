"""The Stable-Baselines3 side of run tracking: an SB3 ``Logger`` for an RL run.

:func:`fw_agents.runs.tracking.start_run` imports this module only for a run that needs
an SB3 logger (``sb3_logger=True``, what :mod:`fw_agents.train` uses), so the
supervised heads never import Stable-Baselines3. The logger writes SB3's own
outputs (``stdout``, ``progress.csv``, TensorBoard, ...) into the run directory
and mirrors every dump into W&B through :class:`WandbOutputFormat`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from stable_baselines3.common.logger import (
    Figure,
    FormatUnsupportedError,
    HParam,
    Image,
    KVWriter,
    Logger,
    TensorBoardOutputFormat,
    Video,
    filter_excluded_keys,
    make_output_format,
)

from fw_agents.runs.progress_csv import ProgressCsv
from fw_agents.runs.writers import WandbScalars


class WandbOutputFormat(KVWriter):
    """SB3 ``KVWriter`` that mirrors logged scalars into a W&B run
    (:class:`fw_agents.runs.writers.WandbScalars`), skipping keys whose exclusion tuple names
    ``"wandb"``.

    :param run: A ``wandb`` run (anything with ``log(dict)``).
    :param first_step: Earlier steps are not sent (a resumed run: :class:`WandbScalars`).
    """

    def __init__(self, run: Any, first_step: int | None = None) -> None:
        self.scalars = WandbScalars(run, first_step)

    @property
    def run(self) -> Any | None:
        """The W&B run; ``None`` once mirroring was turned off by a failure."""
        return self.scalars.run

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        kept = {key: value for key, value in key_values.items() if "wandb" not in (key_excluded.get(key) or ())}
        self.scalars.write(kept, step)

    def close(self) -> None:
        """Nothing to do: the run is finished by :meth:`fw_agents.runs.tracking.Tracker.close`."""


class LoggerWriter:
    """A :class:`fw_agents.runs.tracking.Tracker` writer that records into an SB3 logger and dumps it.

    :param logger: The SB3 logger (the one the RL model logs to as well).
    """

    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def write(self, values: Mapping[str, Any], step: int) -> None:
        for key, value in values.items():
            self.logger.record(key, value)
        self.logger.dump(step=step)

    def close(self) -> None:
        self.logger.close()


class ProgressCsvFormat(KVWriter):
    """SB3 ``KVWriter`` for ``progress.csv`` through :class:`fw_agents.runs.progress_csv.ProgressCsv`:
    SB3's layout, but crash-safe and continued by a resumed run (SB3's ``CSVOutputFormat``
    truncates the file on open and rewrites it in place when a column is added).

    :param path: The CSV file.
    """

    def __init__(self, path: Path) -> None:
        self.csv = ProgressCsv(path)

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        values = filter_excluded_keys(key_values, key_excluded, "csv")
        for value in values.values():
            if isinstance(value, (Video, Figure, Image, HParam)):
                raise FormatUnsupportedError(["csv"], type(value).__name__.lower())
        self.csv.write(values)

    def close(self) -> None:
        self.csv.close()


class ResumedTensorBoardFormat(TensorBoardOutputFormat):
    """SB3's TensorBoard output for a resumed run: TensorBoard hides the events at
    ``purge_step`` and later that the earlier (crashed) writer left in ``folder``, which the
    resumed run logs again (``SummaryWriter(purge_step=...)``).

    :param folder: The run folder.
    :param purge_step: The resumed run's first step.
    """

    def __init__(self, folder: str, purge_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=folder, purge_step=purge_step)
        self._is_closed = False


def sb3_logger_writer(
    run_dir: Path,
    log_formats: Sequence[str],
    wandb_run: Any | None = None,
    purge_step: int | None = None,
    wandb_first_step: int | None = None,
) -> LoggerWriter:
    """An SB3 logger writing ``log_formats`` into ``run_dir`` (mirrored into ``wandb_run``
    when given), wrapped as a tracker writer. ``csv`` is :class:`ProgressCsvFormat`;
    ``purge_step`` and ``wandb_first_step`` continue a resumed run."""

    def output(kind: str) -> KVWriter:
        if kind == "csv":
            return ProgressCsvFormat(run_dir / "progress.csv")
        if kind == "tensorboard" and purge_step is not None:
            return ResumedTensorBoardFormat(str(run_dir), purge_step)
        return make_output_format(kind, str(run_dir))

    kinds = list(log_formats)
    logger = Logger(folder=str(run_dir), output_formats=[output(kind) for kind in kinds])
    if kinds and kinds != ["stdout"]:
        logger.log(f"Logging to {run_dir}")  # as SB3's configure() says it
    if wandb_run is not None:
        logger.output_formats.append(WandbOutputFormat(wandb_run, wandb_first_step))
    return LoggerWriter(logger)
