"""Run tracking shared by every command: run directory, ``config.json``, curves, W&B.

One :class:`Tracker` per run, started by :func:`start_run`: it creates the run
directory, writes ``config.json`` (atomically), starts W&B, and writes every
logged set of scalars to ``stdout``, ``progress.csv`` and TensorBoard events,
mirrored into W&B.

This module never imports Stable-Baselines3. The supervised heads
(:mod:`fw_agents.tasks`) write their curves with the writers here
(``start_run(..., sb3_logger=False)``); an RL agent gets an SB3 ``Logger``
instead (``tracker.logger``, for ``model.set_logger``), built by
:mod:`fw_agents.runs.sb3_logger`, which is imported only then. Either way the run
directory holds the same files.

W&B must never stop or hang a run: ``wandb.init`` runs with a short
``init_timeout``; any failure (no network, bad credentials, wandb bug) falls
back to ``disabled`` with a one-line warning, and a failing ``wandb.log`` turns
mirroring off for the rest of the run.

>>> with start_run("runs", "retrieval-lstm", config={"lr": 1e-3}, wandb_mode="disabled", sb3_logger=False) as tracker:
...     tracker.log_scalars({"train/loss": 0.5}, step=100)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fw_agents.runs.files import write_text_atomically
from fw_agents.runs.progress_csv import drop_rows_after, last_step
from fw_agents.runs.folder import RunFolder, claim_run_folder
from fw_agents.runs.writers import DEFAULT_LOG_FORMATS, ScalarWriter, as_scalar, make_writers, warn
from fw_agents.runs.wandb_mode import DEFAULT_WANDB_PROJECT, resolve_wandb_mode
from fw_agents.validation import one_line

#: Seconds ``wandb.init`` may take before we give up on W&B (its own default is 90 s).
DEFAULT_WANDB_INIT_TIMEOUT = 20.0
#: Seconds ``run.finish()`` may wait for uploads (0 would mean: wait forever).
DEFAULT_WANDB_FINISH_TIMEOUT = 60.0
#: Where a run folder keeps its W&B run's id, so a resumed run continues the same W&B run.
WANDB_ID_FILE = "wandb-run-id"


# ----------------------------------------------------------------------- W&B
def init_wandb(
    mode: str | None,
    run_dir: Path,
    config: Mapping[str, Any] | None = None,
    project: str = DEFAULT_WANDB_PROJECT,
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] | None = None,
    init_timeout: float = DEFAULT_WANDB_INIT_TIMEOUT,
    run_id: str | None = None,
) -> Any | None:
    """Start a W&B run, or return ``None`` (disabled, or W&B unavailable).

    Never raises and never waits longer than about ``init_timeout`` seconds: on any
    error it prints one warning line and returns ``None``.

    :param mode: See :func:`resolve_wandb_mode`.
    :param run_dir: W&B writes its files under ``run_dir/wandb``.
    :param config: Hyper-parameters stored with the run.
    :param project: W&B project name.
    :param name: Display name of the run (default: the run directory's name).
    :param group: Optional W&B group (e.g. one benchmark sweep).
    :param tags: Optional W&B tags.
    :param init_timeout: Seconds ``wandb.init`` may take.
    :param run_id: Continue the W&B run with this id (``resume="allow"``), e.g. a resumed run's.
    :return: The ``wandb`` run object, or ``None``.
    """
    try:
        mode = resolve_wandb_mode(mode)
    except ValueError as error:
        warn(f"W&B disabled: {error}")
        return None
    if mode == "disabled":
        return None
    try:
        import wandb

        settings = wandb.Settings(
            init_timeout=init_timeout,
            finish_timeout=DEFAULT_WANDB_FINISH_TIMEOUT,
            silent=True,
            console="off",
        )
        run = wandb.init(
            mode=mode,
            project=project,
            name=name or run_dir.name,
            group=group,
            tags=list(tags) if tags else None,
            dir=str(run_dir),
            config=dict(config or {}),
            settings=settings,
            reinit="create_new",
            id=run_id,
            resume="allow" if run_id else None,
        )
        # Plot every mirrored metric against the logged step, not W&B's call counter.
        run.define_metric("global_step")
        run.define_metric("*", step_metric="global_step")
        return run
    except BaseException as error:  # noqa: BLE001 - W&B must never stop training
        if isinstance(error, KeyboardInterrupt):
            raise
        warn(f"W&B {mode} init failed, continuing with W&B disabled: {one_line(error, first_line=True)}")
        return None


# -------------------------------------------------------------------- tracker
@dataclass
class Tracker:
    """Everything one run logs to.

    :param run_dir: The run's directory (``progress.csv``, TensorBoard events, results).
    :param wandb_run: The W&B run, or ``None`` when W&B is disabled/unavailable.
    :param config: The run's configuration (also written to ``config.json``).
    :param writers: Where :meth:`log_scalars` writes.
    :param logger: The SB3 ``Logger`` of an RL run (``model.set_logger(tracker.logger)``);
        ``None`` for a run started with ``sb3_logger=False``.
    :param folder: The claimed run folder, released by :meth:`close`.
    """

    run_dir: Path
    wandb_run: Any | None = None
    config: dict[str, Any] = field(default_factory=dict)
    writers: list[ScalarWriter] = field(default_factory=list)
    logger: Any | None = None
    folder: RunFolder | None = None

    def log_scalars(self, values: Mapping[str, Any], step: int) -> None:
        """Write several scalars out at ``step``."""
        for writer in self.writers:
            writer.write(values, step)

    def log_summary(self, values: Mapping[str, Any]) -> None:
        """Store final results in the W&B run summary (no-op without W&B)."""
        if self.wandb_run is None:
            return
        try:
            for key, value in values.items():
                scalar = as_scalar(value)
                self.wandb_run.summary[key] = scalar if scalar is not None else value
        except Exception as error:  # noqa: BLE001
            warn(f"W&B summary failed: {one_line(error, first_line=True)}")

    def save_file(self, path: str | os.PathLike[str]) -> None:
        """Attach a file (PNG, JSON) to the W&B run (no-op without W&B)."""
        if self.wandb_run is None:
            return
        try:  # files in the run's own folder are uploaded with it (no symlink warnings)
            shutil.copy2(path, Path(self.wandb_run.dir) / Path(path).name)
        except Exception as error:  # noqa: BLE001
            warn(f"W&B save failed: {one_line(error, first_line=True)}")

    def log_media(self, key: str, path: str | os.PathLike[str], step: int | None = None) -> None:
        """Log a picture to the W&B run: ``.gif``/``.mp4`` as ``wandb.Video``, anything else as
        ``wandb.Image`` (no-op without W&B; a failure is one warning)."""
        if self.wandb_run is None:
            return
        try:
            import wandb

            media = wandb.Video(str(path)) if Path(path).suffix in (".gif", ".mp4") else wandb.Image(str(path))
            self.wandb_run.log({key: media, **({} if step is None else {"global_step": step})}, step=step)
        except Exception as error:  # noqa: BLE001
            warn(f"W&B media log failed: {one_line(error, first_line=True)}")

    def log_artifact(self, path: str | os.PathLike[str], name: str, kind: str = "model") -> None:
        """Upload ``path`` as a W&B artifact of type ``kind`` (no-op without W&B)."""
        if self.wandb_run is None:
            return
        try:
            import wandb

            artifact = wandb.Artifact(name, type=kind)
            artifact.add_file(str(path))
            self.wandb_run.log_artifact(artifact)
        except Exception as error:  # noqa: BLE001
            warn(f"W&B artifact upload failed: {one_line(error, first_line=True)}")

    def close(self) -> None:
        """Flush and close the outputs, finish the W&B run (saying how to upload an offline
        one) and release the run folder."""
        for writer in self.writers:
            writer.close()
        self.writers = []
        if self.wandb_run is not None:
            offline = bool(getattr(getattr(self.wandb_run, "settings", None), "_offline", False))
            run_files = getattr(self.wandb_run, "dir", None)
            try:
                self.wandb_run.finish()
            except Exception as error:  # noqa: BLE001
                warn(f"W&B finish failed: {one_line(error, first_line=True)}")
            if offline and run_files:  # .../wandb/offline-run-<time>-<id>/files
                folders = " ".join(str(folder) for folder in offline_run_folders(Path(run_files).parent))
                print(f"W&B offline run saved; upload it with: wandb sync {folders}", file=sys.stderr)
            self.wandb_run = None
        if self.folder is not None:
            self.folder.release()
            self.folder = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def offline_run_folders(folder: Path) -> list[Path]:
    """The offline folders of the W&B run whose offline folder is ``folder``
    (``<run>/wandb/offline-run-<time>-<id>``), oldest first: a resumed offline run writes a new
    one. ``wandb sync`` given them all uploads them as one run, in order of start time, the
    steps continued (:class:`~fw_agents.runs.writers.WandbScalars` sends ``step=``)."""
    run_id = folder.name.rsplit("-", 1)[-1]
    found = sorted(folder.parent.glob(f"offline-run-*-{run_id}"))  # <time> is YYYYMMDD_HHMMSS: sorts by age
    return found if folder in found else [*found, folder]


def write_config(path: str | os.PathLike[str], config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Write ``config`` as sorted, indented JSON, atomically (values that JSON cannot hold
    are stringified). :return: The dictionary written."""
    config_dict = {key: _jsonable(value) for key, value in (config or {}).items()}
    write_text_atomically(path, json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
    return config_dict


def start_run(
    root: str | os.PathLike[str] = "runs",
    name: str = "run",
    config: Mapping[str, Any] | None = None,
    run_dir: str | None = None,
    wandb_mode: str | None = None,
    wandb_project: str = DEFAULT_WANDB_PROJECT,
    wandb_group: str | None = None,
    wandb_tags: Sequence[str] | None = None,
    log_formats: Sequence[str] = DEFAULT_LOG_FORMATS,
    wandb_init_timeout: float = DEFAULT_WANDB_INIT_TIMEOUT,
    sb3_logger: bool = True,
    resume: bool = False,
    resume_step: int | None = None,
    step_column: str = "time/total_timesteps",
) -> Tracker:
    """Claim the run folder, write ``config.json``, start W&B and the outputs.

    :param root: Parent folder of auto-named run directories.
    :param name: Prefix of the auto-named run directory (and W&B run name).
    :param config: Hyper-parameters (JSON-serialisable values; others are stringified).
    :param run_dir: Explicit run directory (overrides ``root``/``name``).
    :param wandb_mode: ``online``/``offline``/``disabled``/``None`` (see :func:`resolve_wandb_mode`).
    :param wandb_project: W&B project.
    :param wandb_group: Optional W&B group.
    :param wandb_tags: Optional W&B tags.
    :param log_formats: Outputs: a subset of ``stdout``, ``csv`` (``progress.csv``) and
        ``tensorboard`` (with ``sb3_logger`` also SB3's ``log`` and ``json``).
    :param wandb_init_timeout: Seconds ``wandb.init`` may take before falling back to disabled.
    :param sb3_logger: Write the outputs through an SB3 ``Logger`` (``tracker.logger``), as an
        RL agent needs (``model.set_logger``); this imports Stable-Baselines3. False: write
        them with this module's writers, without SB3 (the supervised heads).
    :param resume: Continue the run already in ``run_dir``: its ``progress.csv`` and
        TensorBoard curves go on, and W&B continues the same run (its id is kept in
        ``wandb-run-id``). Without it, a folder that holds a run is refused.
    :param resume_step: With ``resume``, the step of the checkpoint it continues from. What a
        run that then crashed logged after it, the resumed run logs again: those rows of
        ``progress.csv`` (``step_column`` later) are dropped, TensorBoard hides those events
        (``purge_step``), and the continued W&B run, which cannot delete points, keeps them and
        is sent only the steps after the last one it got (W&B takes a step once).
    :param step_column: The ``progress.csv`` column holding the step.
    :return: The :class:`Tracker`; close it (or use it as a context manager) at the end.
    :raises fw_agents.runs.folder.RunFolderError: The folder is unusable, in use, or holds a run.
    """
    folder = claim_run_folder(root, name, run_dir, resume=resume)
    path = folder.path
    tracker = Tracker(run_dir=path, folder=folder)
    try:
        purge_step = logged_through = None
        if resume and resume_step is not None:  # before the CSV writer opens the file to append
            logged_through = last_step(path / "progress.csv", step_column)
            drop_rows_after(path / "progress.csv", step_column, resume_step)
            purge_step = int(resume_step) + 1  # TensorBoard hides what the crashed run logged from here on
        tracker.config = write_config(path / "config.json", config)
        id_file = path / WANDB_ID_FILE
        run_id = (id_file.read_text().strip() or None) if resume and id_file.exists() else None
        tracker.wandb_run = init_wandb(
            wandb_mode,
            path,
            config=tracker.config,
            project=wandb_project,
            name=path.name,
            group=wandb_group,
            tags=wandb_tags,
            init_timeout=wandb_init_timeout,
            run_id=run_id,
        )
        if getattr(tracker.wandb_run, "id", None):
            write_text_atomically(id_file, f"{tracker.wandb_run.id}\n")
        # the W&B run continued holds the steps up to where the crashed run got: each is sent once
        continued = run_id is not None and logged_through is not None and logged_through > resume_step
        wandb_first_step = int(logged_through) + 1 if continued else None
        if sb3_logger:
            from fw_agents.runs.sb3_logger import sb3_logger_writer

            writer = sb3_logger_writer(path, log_formats, tracker.wandb_run, purge_step, wandb_first_step)
            tracker.writers, tracker.logger = [writer], writer.logger
        else:
            tracker.writers = make_writers(path, log_formats, tracker.wandb_run, purge_step, wandb_first_step)
            if "stdout" in log_formats and list(log_formats) != ["stdout"]:
                print(f"Logging to {path}")  # as SB3's configure() says it
    except BaseException:
        tracker.close()
        raise
    return tracker


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    scalar = as_scalar(value)
    return scalar if scalar is not None else str(value)
