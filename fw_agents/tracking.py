"""Run tracking shared by every command: run directory, SB3 logger, Weights & Biases.

One :class:`Tracker` per run. Curves go through Stable-Baselines3's logger
(``stdout``, ``progress.csv``, TensorBoard events), and the same key/values are
mirrored into W&B by :class:`WandbOutputFormat`, so an RL agent
(``model.set_logger(tracker.logger)``) and a supervised task log identically.

W&B must never stop or hang a run: ``wandb.init`` runs with a short
``init_timeout``; any failure (no network, bad credentials, wandb bug) falls
back to ``disabled`` with a one-line warning, and a failing ``wandb.log`` turns
mirroring off for the rest of the run.

>>> tracker = start_run("runs", "retrieval-lstm", config={"lr": 1e-3}, wandb_mode="disabled")
>>> tracker.logger.record("train/loss", 0.5)
>>> tracker.logger.dump(step=100)
>>> tracker.close()
"""

from __future__ import annotations

import argparse
import json
import netrc
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from stable_baselines3.common.logger import KVWriter, Logger, configure

#: Accepted values of ``--wandb`` (``None`` / ``"auto"`` picks online or offline).
WANDB_MODES: tuple[str, ...] = ("online", "offline", "disabled")
DEFAULT_WANDB_PROJECT = "fw-agents"
#: Seconds ``wandb.init`` may take before we give up on W&B (its own default is 90 s).
DEFAULT_WANDB_INIT_TIMEOUT = 20.0
#: Seconds ``run.finish()`` may wait for uploads (0 would mean: wait forever).
DEFAULT_WANDB_FINISH_TIMEOUT = 60.0
DEFAULT_LOG_FORMATS: tuple[str, ...] = ("stdout", "csv", "tensorboard")


# --------------------------------------------------------------------- run dir
def make_run_dir(root: str | os.PathLike[str] = "runs", name: str = "run", run_dir: str | None = None) -> Path:
    """Create (and return) the directory of a new run.

    :param root: Parent folder of auto-named runs.
    :param name: Prefix of the auto-generated name ``<name>-<YYYYmmdd-HHMMSS>[-k]``.
    :param run_dir: Explicit directory to use instead (created if needed, may exist).
    :return: The run directory.
    """
    if run_dir is not None:
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{name}-{stamp}"
    path, k = base, 1
    while True:
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            k += 1
            path = base.with_name(f"{base.name}-{k}")


# ----------------------------------------------------------------------- W&B
def wandb_credentials_available() -> bool:
    """True when W&B credentials exist: ``WANDB_API_KEY`` or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    netrc_path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        return netrc.netrc(netrc_path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(mode: str | None = None) -> str:
    """The W&B mode to use.

    :param mode: ``online``, ``offline``, ``disabled``, or ``None``/``"auto"``: then the
        ``WANDB_MODE`` environment variable if set, else ``online`` when credentials
        exist (see :func:`wandb_credentials_available`) and ``offline`` otherwise.
    :return: One of :data:`WANDB_MODES`.
    """
    if mode in (None, "auto"):
        env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
        if env_mode in ("dryrun",):
            env_mode = "offline"
        if env_mode in WANDB_MODES:
            return env_mode
        return "online" if wandb_credentials_available() else "offline"
    if mode not in WANDB_MODES:
        raise ValueError(f"unknown wandb mode {mode!r}; choose one of {', '.join(WANDB_MODES)}")
    return mode


def init_wandb(
    mode: str | None,
    run_dir: Path,
    config: Mapping[str, Any] | None = None,
    project: str = DEFAULT_WANDB_PROJECT,
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] | None = None,
    init_timeout: float = DEFAULT_WANDB_INIT_TIMEOUT,
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
    :return: The ``wandb`` run object, or ``None``.
    """
    try:
        mode = resolve_wandb_mode(mode)
    except ValueError as error:
        _warn(f"W&B disabled: {error}")
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
        )
        # Plot every mirrored metric against the SB3 step, not W&B's call counter.
        run.define_metric("global_step")
        run.define_metric("*", step_metric="global_step")
        return run
    except BaseException as error:  # noqa: BLE001 - W&B must never stop training
        if isinstance(error, KeyboardInterrupt):
            raise
        _warn(f"W&B {mode} init failed, continuing with W&B disabled: {_one_line(error)}")
        return None


class WandbOutputFormat(KVWriter):
    """SB3 ``KVWriter`` that mirrors logged scalars into a W&B run.

    Non-scalar values (videos, figures, images, text) are skipped, as are keys
    whose exclusion tuple names ``"wandb"``. The first failing ``run.log`` prints
    one warning and turns mirroring off (training continues).

    :param run: A ``wandb`` run (anything with ``log(dict)``).
    """

    def __init__(self, run: Any) -> None:
        self.run = run

    def write(
        self,
        key_values: dict[str, Any],
        key_excluded: dict[str, tuple[str, ...]],
        step: int = 0,
    ) -> None:
        if self.run is None:
            return
        payload: dict[str, float | int] = {"global_step": int(step)}
        for key, value in key_values.items():
            excluded = key_excluded.get(key) or ()
            if "wandb" in excluded:
                continue
            scalar = _as_scalar(value)
            if scalar is not None:
                payload[key] = scalar
        try:
            self.run.log(payload)
        except Exception as error:  # noqa: BLE001 - logging must never stop training
            _warn(f"W&B logging failed, mirroring turned off: {_one_line(error)}")
            self.run = None

    def close(self) -> None:
        """Nothing to do: the run is finished by :meth:`Tracker.close`."""


# -------------------------------------------------------------------- tracker
@dataclass
class Tracker:
    """Everything one run logs to.

    :param run_dir: The run's directory (``progress.csv``, TensorBoard events, results).
    :param logger: SB3 logger writing stdout/csv/TensorBoard (and W&B when active).
    :param wandb_run: The W&B run, or ``None`` when W&B is disabled/unavailable.
    :param config: The run's configuration (also written to ``config.json``).
    """

    run_dir: Path
    logger: Logger
    wandb_run: Any | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        """Record several scalars and write them out at ``step``."""
        for key, value in values.items():
            self.logger.record(key, value)
        self.logger.dump(step=step)

    def log_summary(self, values: Mapping[str, Any]) -> None:
        """Store final results in the W&B run summary (no-op without W&B)."""
        if self.wandb_run is None:
            return
        try:
            for key, value in values.items():
                scalar = _as_scalar(value)
                self.wandb_run.summary[key] = scalar if scalar is not None else value
        except Exception as error:  # noqa: BLE001
            _warn(f"W&B summary failed: {_one_line(error)}")

    def save_file(self, path: str | os.PathLike[str]) -> None:
        """Attach a file (PNG, JSON) to the W&B run (no-op without W&B)."""
        if self.wandb_run is None:
            return
        try:  # files in the run's own folder are uploaded with it (no symlink warnings)
            shutil.copy2(path, Path(self.wandb_run.dir) / Path(path).name)
        except Exception as error:  # noqa: BLE001
            _warn(f"W&B save failed: {_one_line(error)}")

    def close(self) -> None:
        """Flush and close the logger outputs and finish the W&B run."""
        self.logger.close()
        if self.wandb_run is not None:
            try:
                self.wandb_run.finish()
            except Exception as error:  # noqa: BLE001
                _warn(f"W&B finish failed: {_one_line(error)}")
            self.wandb_run = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
) -> Tracker:
    """Create the run directory, write ``config.json``, configure the SB3 logger and W&B.

    :param root: Parent folder of auto-named run directories.
    :param name: Prefix of the auto-named run directory (and W&B run name).
    :param config: Hyper-parameters (JSON-serialisable values; others are stringified).
    :param run_dir: Explicit run directory (overrides ``root``/``name``).
    :param wandb_mode: ``online``/``offline``/``disabled``/``None`` (see :func:`resolve_wandb_mode`).
    :param wandb_project: W&B project.
    :param wandb_group: Optional W&B group.
    :param wandb_tags: Optional W&B tags.
    :param log_formats: SB3 output formats (subset of ``stdout``, ``log``, ``csv``, ``json``, ``tensorboard``).
    :param wandb_init_timeout: Seconds ``wandb.init`` may take before falling back to disabled.
    :return: The :class:`Tracker`; close it (or use it as a context manager) at the end.
    """
    path = make_run_dir(root, name, run_dir)
    config_dict = {key: _jsonable(value) for key, value in (config or {}).items()}
    (path / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
    logger = configure(str(path), list(log_formats))
    run = init_wandb(
        wandb_mode,
        path,
        config=config_dict,
        project=wandb_project,
        name=path.name,
        group=wandb_group,
        tags=wandb_tags,
        init_timeout=wandb_init_timeout,
    )
    if run is not None:
        logger.output_formats.append(WandbOutputFormat(run))
    return Tracker(run_dir=path, logger=logger, wandb_run=run, config=config_dict)


def add_tracking_args(parser: argparse.ArgumentParser, default_root: str = "runs") -> None:
    """Add ``--run-dir``, ``--runs-root``, ``--wandb``, ``--wandb-project`` to a CLI parser."""
    group = parser.add_argument_group("tracking")
    group.add_argument("--run-dir", default=None, help="directory of this run (default: <runs-root>/<name>-<time>)")
    group.add_argument("--runs-root", default=default_root, help="parent folder of auto-named runs")
    group.add_argument(
        "--wandb",
        default=None,
        choices=WANDB_MODES,
        help="W&B mode (default: $WANDB_MODE, else online with credentials, else offline)",
    )
    group.add_argument("--wandb-project", default=DEFAULT_WANDB_PROJECT, help="W&B project name")


# -------------------------------------------------------------------- helpers
def _as_scalar(value: Any) -> float | int | None:
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


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    scalar = _as_scalar(value)
    return scalar if scalar is not None else str(value)


def _one_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    return text.splitlines()[0] if text else type(error).__name__


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
