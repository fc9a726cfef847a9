"""Where a run goes, declared once: the run folder, W&B and resume fields that every command's
config shares (:class:`fw_agents.config.TrainConfig`, :class:`fw_agents.runs.run.TrackingOptions`).
Each function returns a fresh :func:`~fw_agents.fields.option` field, with its help, choices and
its per-invocation and search metadata. Plain data: importing it pulls no torch.
"""

from __future__ import annotations

from typing import Any

from fw_agents.fields import option
from fw_agents.runs.wandb_mode import DEFAULT_WANDB_PROJECT, WANDB_MODES


def run_dir_option(auto_name: str) -> Any:
    """``--run-dir``: the run's folder; ``auto_name`` says how one left out is named."""
    return option(None, help=f"run directory (None: <runs-root>/{auto_name}-<time>, characters outside "
                  "A-Za-z0-9._- as -)", per_invocation=True, search="trial")  # fmt: skip


def runs_root_option() -> Any:
    """``--runs-root``: where auto-named run folders go."""
    return option("runs", help="parent folder of auto-named run directories", per_invocation=True, search="worker")


def wandb_option() -> Any:
    """``--wandb``: the W&B mode (:func:`~fw_agents.runs.wandb_mode.resolve_wandb_mode`)."""
    return option(None, help="W&B mode (None: $WANDB_MODE, else online with credentials, else offline)",
                  choices=WANDB_MODES, search="worker")  # fmt: skip


def wandb_project_option(default: str | None) -> Any:
    """``--wandb-project``; ``default`` None: ``$WANDB_PROJECT`` at the start of the run, else
    :data:`DEFAULT_WANDB_PROJECT`."""
    shown = f"W&B project (None: $WANDB_PROJECT, else {DEFAULT_WANDB_PROJECT})" if default is None else "W&B project name"
    return option(default, help=shown, search="worker")


def resume_option(what: str, metavar: str) -> Any:
    """``--resume``: continue a run from what it saved.

    :param what: The help text: what the flag takes and how the run goes on.
    :param metavar: The value's name in ``--help``.
    """
    return option(None, metavar=metavar, help=what, per_invocation=True, search="trial")
