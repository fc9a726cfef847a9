"""``--resume``: which checkpoint, which run folder, and which settings a continued run has.

A resumed run continues **in the run folder its checkpoint belongs to** (the folder
with ``config.json`` above it), appending to its curves, unless ``--run-dir`` names
another. It keeps the **model's** settings: the memory core, its width and options,
the critic and the PPO hyper-parameters are read from the checkpoint (its JSON
``data``, without unpickling anything), and a flag that contradicts them stops the
run with one line instead of being silently ignored. Settings the checkpoint does
not hold (``timesteps``, evaluation and checkpoint frequencies, ``env``, ...) come
from the run folder's ``config.json`` unless given again. ``timesteps`` is the
total, so it must exceed the steps the checkpoint has already trained, except for a
run whose training is complete but whose end (final evaluation, ``model.zip``, plot,
GIF) was interrupted: resuming it in its folder writes just those.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from collections.abc import Collection
from pathlib import Path
from typing import Any

from fw_agents.config import TrainConfig
from fw_agents.fields import field_default, field_names
from fw_agents.runs.files import check_regular_file, read_regular_text
from fw_agents.memory.options import translate_legacy_options
from fw_agents.runs.folder import RUN_MARKER
from fw_agents.runs.tracking import WANDB_ID_FILE
from fw_agents.runs.safe_load import read_model_data

#: Config fields a checkpoint fixes: (field, where it lies in the model's data).
MODEL_FIELDS: dict[str, tuple[str, ...]] = {
    "memory": ("policy_kwargs", "memory"),
    "hidden_size": ("policy_kwargs", "hidden_size"),
    "memory_kwargs": ("policy_kwargs", "memory_kwargs"),
    "critic": ("policy_kwargs", "critic"),
    "learning_rate": ("learning_rate",),
    "n_steps": ("n_steps",),
    "batch_size": ("batch_size",),
    "n_epochs": ("n_epochs",),
    "gamma": ("gamma",),
    "gae_lambda": ("gae_lambda",),
    "ent_coef": ("ent_coef",),
}
#: What a finished run folder holds besides its curves (``episodes.gif`` is written before
#: ``eval_summary.json`` when asked for, and not at all for an env that cannot render).
FINAL_FILES = ("model.zip", "learning_curve.png", "eval_summary.json")
#: The files of a run folder a resumed run reads, and the most each may hold: a folder made by
#: someone else is read only as bounded, regular files (never a FIFO, which would block, or a device).
RUN_FILE_BOUNDS: dict[str, int] = {
    RUN_MARKER: 4 * 2**20, "eval_summary.json": 4 * 2**20, WANDB_ID_FILE: 4096, "progress.csv": 2**30,
    "evaluations.npz": 2**30,
}  # fmt: skip
#: Config fields that are never taken from the old run's ``config.json``: those declared
#: ``per_invocation`` (``trust_checkpoint`` above all, see its declaration).
PER_INVOCATION = field_names(TrainConfig, per_invocation=True)


@dataclass(frozen=True)
class Checkpoint:
    """What a resumed run starts from.

    :param path: The model ``.zip``.
    :param run_dir: The run folder it belongs to (None: a loose file).
    :param timesteps: Env steps it has trained.
    :param settings: The config fields it fixes (:data:`MODEL_FIELDS` it holds).
    """

    path: Path
    run_dir: Path | None
    timesteps: int
    settings: dict[str, Any]


def read_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint at ``path``: a model ``.zip``, or a run folder (its latest checkpoint).

    :raises ValueError: No such file, not a model, or a folder with no checkpoint (one line).
    """
    path = Path(path)
    if path.is_dir():
        path = latest_checkpoint(path)
    data = read_model_data(path)
    run_dir = _run_folder_of(path)
    if run_dir is not None:
        check_run_files(run_dir)
    settings = {}
    for name, keys in MODEL_FIELDS.items():
        value: Any = data
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None and not (isinstance(value, dict) and ":serialized:" in value):
            settings[name] = value
    if isinstance(settings.get("memory_kwargs"), dict):  # a checkpoint saved with normalize: today's names
        settings["memory_kwargs"] = translate_legacy_options(settings["memory_kwargs"])
    return Checkpoint(path, run_dir, int(data.get("num_timesteps", 0)), settings)


def check_run_files(run_dir: Path) -> None:
    """Refuse a run folder whose files a resumed run reads (:data:`RUN_FILE_BOUNDS`) are there but
    not regular files within their bounds.

    :raises ValueError: One line naming the file.
    """
    for name, bound in RUN_FILE_BOUNDS.items():
        path = run_dir / name
        if os.path.lexists(path):
            try:
                check_regular_file(path, bound, name)
            except OSError as error:  # a dangling symlink, no permission
                raise ValueError(f"cannot read {path} ({error.strerror or error})") from None


def latest_checkpoint(run_dir: Path) -> Path:
    """The zip under ``run_dir`` (its ``model.zip`` and ``checkpoints/``) with the most env steps.

    :raises ValueError: None there.
    """
    saved = sorted(path for path in (run_dir / "checkpoints").glob("*.zip") if not path.name.startswith("."))
    candidates = [run_dir / "model.zip", *saved]
    steps, reasons = {}, []
    for candidate in candidates:
        try:
            steps[candidate] = int(read_model_data(candidate).get("num_timesteps", 0))
        except ValueError as error:  # missing, or half-written by a crash: not a candidate
            if os.path.lexists(candidate):
                reasons.append(str(error))
            continue
    if not steps:
        why = f"; {reasons[-1]}" if reasons else ""
        raise ValueError(f"no readable checkpoint in run folder {str(run_dir)!r} (model.zip or checkpoints/*.zip){why}")
    return max(steps, key=lambda candidate: (steps[candidate], candidate.name == "model.zip"))


def resumed_config(config: Any, checkpoint: Checkpoint, given_flags: Collection[str] | None = None) -> tuple[Any, bool]:
    """``config`` as the continued run must have it, and whether it continues in the same folder.

    :param config: A :class:`fw_agents.config.TrainConfig` whose ``resume`` names ``checkpoint``.
    :param checkpoint: :func:`read_checkpoint` of it.
    :param given_flags: The fields the user set (the command line's flags, a value equal to its
        default included): kept over ``config.json`` and checked against the checkpoint. None
        (from Python): a field counts as set when it differs from its default.
    :return: ``(config, same_folder)``: model settings from the checkpoint, the others from the
        run folder's ``config.json`` where ``config`` left them at their defaults, ``run_dir`` the
        checkpoint's folder unless one was given, ``resume`` the checkpoint's path.
    :raises ValueError: A setting given that contradicts the checkpoint, or ``timesteps`` not
        beyond the steps it has trained (unless the run trained its ``config.json`` total and
        lacks :func:`missing_final_files`: then the resumed run only writes those).
    """
    defaults = {field.name: field_default(field) for field in dataclasses.fields(config)}

    def explicit(name: str) -> bool:  # set by the user: kept, and checked against the checkpoint
        if given_flags is not None:
            return name in given_flags
        return getattr(config, name) != defaults[name]

    changes: dict[str, Any] = {}
    recorded = _recorded_config(checkpoint.run_dir)
    for name, value in recorded.items():
        if name in defaults and name not in PER_INVOCATION and name not in MODEL_FIELDS:
            if not explicit(name):
                changes[name] = value
    _check_recorded_env(changes.get("env"), checkpoint.run_dir, config.trust_checkpoint)
    for name, saved in checkpoint.settings.items():
        given = getattr(config, name)
        if name == "memory_kwargs":
            conflict = {key: value for key, value in given.items() if saved.get(key) != value}
        else:
            conflict = explicit(name) and given != saved
        if conflict:
            shown = " ".join(f"{key}={value!r}" for key, value in conflict.items()) if name == "memory_kwargs" else given
            raise ValueError(
                f"--{name.replace('_', '-')} {shown} conflicts with the checkpoint {str(checkpoint.path)!r} "
                f"({name}={saved!r}): a resumed run keeps the model's settings; drop the flag or start a new run"
            )
        changes[name] = saved
    run_dir = checkpoint.run_dir if config.run_dir is None else Path(config.run_dir)
    same_folder = run_dir is not None and checkpoint.run_dir is not None and run_dir.resolve() == checkpoint.run_dir.resolve()
    changes["run_dir"] = None if run_dir is None else str(run_dir)
    changes["resume"] = str(checkpoint.path)
    resumed = dataclasses.replace(config, **changes)
    # the run trained all it was started for (config.json's total), but its end was interrupted: finish it
    target = recorded.get("timesteps")
    complete = isinstance(target, int) and checkpoint.timesteps >= target
    finishing = same_folder and complete and bool(missing_final_files(checkpoint.run_dir, checkpoint.timesteps))
    if resumed.timesteps <= checkpoint.timesteps and not finishing:
        raise ValueError(
            f"the checkpoint {str(checkpoint.path)!r} has trained {checkpoint.timesteps} steps, so --timesteps "
            f"{resumed.timesteps} leaves nothing to train: --timesteps is the total, pass a larger one"
        )
    return resumed, same_folder


def _check_recorded_env(env: Any, run_dir: Path | None, trusted: bool) -> None:
    """Refuse a ``module:id`` env read from ``config.json``: importing ``module`` runs its code,
    and which code to run is the command line's choice only (``--env`` again, or ``--trust-checkpoint``).

    :raises ValueError: ``env`` has a module part and ``trusted`` is false.
    """
    if trusted or not isinstance(env, str) or ":" not in env:
        return
    raise ValueError(
        f"{run_dir / RUN_MARKER if run_dir else 'config.json'} names env {env!r}, whose module would be imported "
        f"(running its code): pass --env {env} on the command line to allow it (or --trust-checkpoint)"
    )


def missing_final_files(run_dir: Path | None, timesteps: int) -> list[str]:
    """The files the end of a run at ``timesteps`` steps writes (``fw_agents.train._finish``) that
    ``run_dir`` lacks. ``eval_summary.json`` is written last, after the GIF, so one that says
    ``timesteps`` means that end completed; one from an earlier end (a run resumed since) counts
    as missing.

    :param run_dir: A run folder (None: a loose checkpoint, nothing to finish).
    :param timesteps: The steps the run has trained.
    """
    if run_dir is None:
        return []
    missing = [name for name in FINAL_FILES if not (run_dir / name).is_file()]
    if "eval_summary.json" not in missing:
        try:
            summary = json.loads(read_regular_text(run_dir / "eval_summary.json", RUN_FILE_BOUNDS["eval_summary.json"]))
        except (OSError, ValueError):
            summary = None
        if not isinstance(summary, dict) or summary.get("timesteps") != timesteps:
            missing.append("eval_summary.json")
    return missing


def _run_folder_of(path: Path) -> Path | None:
    for folder in list(path.resolve().parents)[:2]:  # run/model.zip, run/checkpoints/x.zip, run/best/x.zip
        if os.path.lexists(folder / RUN_MARKER):  # a config.json that is no file is refused, not taken for no run
            return folder
    return None


def _recorded_config(run_dir: Path | None) -> dict[str, Any]:
    """The run's ``config.json`` (``{}`` without one). One that is there but unreadable (edited
    by hand, say) is an error: the resumed run would otherwise take the defaults for the
    settings the checkpoint does not hold (evaluation, checkpoints, seed) without a word."""
    if run_dir is None or not os.path.lexists(run_dir / RUN_MARKER):
        return {}
    path = run_dir / RUN_MARKER
    try:
        recorded = json.loads(read_regular_text(path, RUN_FILE_BOUNDS[RUN_MARKER], RUN_MARKER))
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path} ({error}); fix or remove it to resume with the flags given") from None
    if not isinstance(recorded, dict):
        raise ValueError(f"{path} is not a JSON object; fix or remove it to resume with the flags given")
    return recorded
