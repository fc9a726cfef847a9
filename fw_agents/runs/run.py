"""One run of any command: :class:`Run` owns its folder (claimed and locked), its tracker
(``config.json``, ``progress.csv``, TensorBoard, W&B), where its checkpoints go, and how it
resumes (the checkpoint read without running its code).

>>> with Run.open("retrieval-lstm", {"lr": 1e-3}, wandb="disabled", sb3_logger=False) as run:
...     run.tracker.log_scalars({"train/loss": 0.5}, step=100)

The training path (:func:`fw_agents.train.train`) and the supervised tasks
(:mod:`fw_agents.tasks`, through :meth:`TrackingOptions.start`) open one each.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fw_agents.runs.resume import read_checkpoint, resumed_config
from fw_agents.runs.options import resume_option, run_dir_option, runs_root_option, wandb_option, wandb_project_option
from fw_agents.runs.tracking import Tracker, start_run
from fw_agents.runs.wandb_mode import DEFAULT_WANDB_PROJECT, check_wandb_mode
from fw_agents.runs.writers import DEFAULT_LOG_FORMATS


@dataclass
class Run:
    """A run's folder and everything written into it.

    :param tracker: The run's :class:`~fw_agents.runs.tracking.Tracker`, which holds the claimed
        folder (released by :meth:`close`).
    """

    tracker: Tracker

    @classmethod
    def open(
        cls,
        name: str,
        record: Mapping[str, Any] | None = None,
        *,
        runs_root: str | os.PathLike[str] = "runs",
        run_dir: str | os.PathLike[str] | None = None,
        wandb: str | None = None,
        wandb_project: str | None = None,
        wandb_group: str | None = None,
        wandb_tags: Sequence[str] | None = None,
        continue_at: int | None = None,
        sb3_logger: bool = True,
        log_formats: Sequence[str] = DEFAULT_LOG_FORMATS,
        step_column: str = "time/total_timesteps",
    ) -> Run:
        """Claim the run folder, write ``config.json``, start W&B and the curves
        (:func:`~fw_agents.runs.tracking.start_run`).

        :param name: Prefix of an auto-named folder (``<runs_root>/<name>-<time>``) and the W&B run's name.
        :param record: What ``config.json`` and the W&B config hold.
        :param runs_root: Parent folder of auto-named runs.
        :param run_dir: The run's folder (None: auto-named).
        :param wandb: ``online``/``offline``/``disabled``/None (:func:`~fw_agents.runs.wandb_mode.resolve_wandb_mode`).
        :param wandb_project: W&B project (None: ``$WANDB_PROJECT``, else ``fw-agents``).
        :param wandb_group: W&B group.
        :param wandb_tags: W&B tags.
        :param continue_at: Continue the run already in ``run_dir`` from the checkpoint of this step
            (its curves go on, what a crashed run logged after it is dropped); None: a new run, and a
            folder that holds one is refused.
        :param sb3_logger: Write the curves through an SB3 ``Logger`` (:attr:`logger`), as an RL agent needs.
        :param log_formats: A subset of ``stdout``, ``csv`` and ``tensorboard``.
        :param step_column: The ``progress.csv`` column holding the step.
        :raises fw_agents.runs.folder.RunFolderError: The folder is unusable, in use, or holds a run.
        """
        tracker = start_run(
            runs_root, name, record, run_dir=None if run_dir is None else str(run_dir), wandb_mode=wandb,
            wandb_project=wandb_project or os.environ.get("WANDB_PROJECT") or DEFAULT_WANDB_PROJECT,
            wandb_group=wandb_group, wandb_tags=wandb_tags, log_formats=log_formats, sb3_logger=sb3_logger,
            resume=continue_at is not None, resume_step=continue_at, step_column=step_column,
        )  # fmt: skip
        return cls(tracker)

    @staticmethod
    def resumed_config(config: Any, given_flags: Collection[str] | None = None) -> tuple[Any, bool]:
        """The settings a run resumed from ``config.resume`` continues with, and whether it continues
        in the checkpoint's own folder (:func:`~fw_agents.runs.resume.resumed_config` of
        :func:`~fw_agents.runs.resume.read_checkpoint`, which reads the model's settings without
        unpickling anything).

        :param config: A :class:`~fw_agents.config.TrainConfig` whose ``resume`` names a checkpoint
            or a run folder.
        :param given_flags: The fields the user set (None: those that differ from their defaults).
        :raises ValueError: No readable checkpoint, or a setting that contradicts it (one line).
        """
        return resumed_config(config, read_checkpoint(config.resume), given_flags)

    @property
    def path(self) -> Path:
        """The run's folder."""
        return self.tracker.run_dir

    @property
    def logger(self) -> Any:
        """The SB3 ``Logger`` of a run opened with ``sb3_logger`` (for ``model.set_logger``)."""
        return self.tracker.logger

    def checkpoint_path(self, steps: int, prefix: str = "interrupted") -> Path:
        """Where a checkpoint of ``steps`` env steps goes: ``checkpoints/<prefix>_<steps>_steps.zip``
        (the name :class:`~fw_agents.runs.callbacks.AtomicCheckpointCallback` gives its own, so
        :func:`~fw_agents.runs.resume.latest_checkpoint` finds it)."""
        return self.path.absolute() / "checkpoints" / f"{prefix}_{steps}_steps.zip"

    def close(self) -> None:
        """Flush the curves, finish W&B and release the folder."""
        self.tracker.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class TrackingOptions:
    """Where a command's run goes: the ``--run-dir``/``--runs-root``/``--wandb*`` flags."""

    run_dir: str | None = run_dir_option("<name>")
    runs_root: str = runs_root_option()
    wandb: str | None = wandb_option()
    wandb_project: str = wandb_project_option(DEFAULT_WANDB_PROJECT)
    resume: str | None = resume_option(
        "continue the run in this folder from the training state it saved (at every evaluation, and on Ctrl-C or "
        "SIGTERM); --steps is the total", metavar="RUN_DIR",
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_wandb_mode(self.wandb)
        if self.resume is not None and self.run_dir is not None and Path(self.resume) != Path(self.run_dir):
            raise ValueError("--resume continues the run in its own folder: drop --run-dir")

    def start(self, name: str, record: Mapping[str, Any] | None = None, tags: Sequence[str] | None = None,
              continue_at: int | None = None, **kwargs: Any) -> Run:  # fmt: skip
        """:meth:`Run.open` with these options: into ``resume``'s folder, continued at
        ``continue_at`` (the saved training state's step), when resuming.

        :param kwargs: :meth:`Run.open`'s other arguments.
        """
        return Run.open(name, record, runs_root=self.runs_root, run_dir=self.resume or self.run_dir, wandb=self.wandb,
                        wandb_project=self.wandb_project, wandb_tags=tags, continue_at=continue_at, **kwargs)  # fmt: skip
