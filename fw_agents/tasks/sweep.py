"""Run a grid of task commands and tabulate them (used by the ``benchmarks/`` scripts).

Each cell is one run of a task's ``main(argv)`` in its own run directory under
the sweep's folder; a cell whose ``results.json`` already exists is reused
(``force=False``) and a cell stopped part-way is resumed from its training state,
so an interrupted reproduction picks up where it stopped. Ctrl-C or SIGTERM stops
the whole sweep (exit status 130 / 143) after the running cell saved its state.
A failing cell is recorded with its one-line error and the sweep goes on.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fw_agents.cli import add_config_arguments, config_from_args, config_to_argv
from fw_agents.fields import field_names
from fw_agents.tasks.cli import TRAINING_STATE, DeviceOptions
from fw_agents.tasks.training import SupervisedConfig
from fw_agents.runs.run import TrackingOptions
from fw_agents.validation import check_int

#: Tracking flags a sweep passes on to every cell: those not per invocation (each cell has its
#: own run directory and resumes on its own), read off the option declarations.
_CELL_TRACKING = field_names(TrackingOptions, per_invocation=False)


@dataclass(frozen=True)
class Cell:
    """One run of the grid.

    :param model: Row key (memory core or model name).
    :param size: Column key (units / features).
    :param argv: Command-line arguments of the task's ``main`` (without ``--run-dir``).
    """

    model: str
    size: int
    argv: tuple[str, ...]

    @property
    def name(self) -> str:
        """Folder name of the cell's run."""
        return f"{self.model}-{self.size}"


def add_cell_arguments(parser: argparse.ArgumentParser, **training_defaults: Any) -> None:
    """Add the task flags a sweep passes on to every cell: the training loop's
    (:class:`SupervisedConfig`, with ``training_defaults``), ``--device``, ``--threads``
    (default 1: cells run one after another on a shared machine) and ``--wandb``
    (default ``disabled``), ``--wandb-project``."""
    group = parser.add_argument_group("every cell")
    add_config_arguments(group, SupervisedConfig, defaults=training_defaults)
    add_config_arguments(group, DeviceOptions, defaults={"threads": 1})
    tracking = [name for name in TrackingOptions.__dataclass_fields__ if name not in _CELL_TRACKING]
    add_config_arguments(group, TrackingOptions, exclude=tracking, defaults={"wandb": "disabled"})


def cell_argv(args: argparse.Namespace, sizes: Sequence[int] = ()) -> list[str]:
    """The flags of :func:`add_cell_arguments` as every cell's command line, checked here
    (with the grid's ``sizes``) so that bad input stops the sweep before its first cell.

    :raises ValueError: A bad value, named by its flag.
    """
    for size in sizes:
        check_int("sizes", size)
    training = config_from_args(SupervisedConfig, args)
    device = config_from_args(DeviceOptions, args)
    device.apply()  # only to check it
    tracking = config_from_args(TrackingOptions, args, _CELL_TRACKING)
    return [*config_to_argv(training), *config_to_argv(device), *config_to_argv(tracking, _CELL_TRACKING)]


def run_grid(
    main: Callable[[Sequence[str] | None], int],
    cells: Sequence[Cell],
    out_dir: Path,
    force: bool = False,
) -> dict[tuple[str, int], dict[str, Any]]:
    """Run every cell (or reuse its results) and collect ``results.json`` contents.

    :param main: The task's ``main(argv) -> status``.
    :param cells: The grid.
    :param out_dir: Sweep folder; each cell runs in ``out_dir/<model>-<size>``.
    :param force: Re-run cells that already have results (their old folder is kept, renamed
        ``<model>-<size>.replaced-<time>``).
    :return: ``{(model, size): results}``; a failed cell has ``{"error": "..."}``.
    :raises SystemExit: With the cell's status (130 or 143) when Ctrl-C or SIGTERM stopped it:
        the sweep stops too; run it again to continue.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    collected: dict[tuple[str, int], dict[str, Any]] = {}
    for index, cell in enumerate(cells, 1):
        run_dir = out_dir / cell.name
        results_path = run_dir / "results.json"
        print(f"[{index}/{len(cells)}] {cell.name}", flush=True)
        if results_path.is_file() and not force:
            collected[(cell.model, cell.size)] = json.loads(results_path.read_text())
            print(f"  reusing {results_path}", flush=True)
            continue
        resume = not results_path.is_file() and (run_dir / TRAINING_STATE).is_file()
        if not resume and (run_dir / "config.json").exists():  # a run to redo: keep it aside
            aside = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
            run_dir.rename(aside)
            print(f"  previous run moved to {aside}", flush=True)
        elif resume:
            print(f"  resuming {run_dir}", flush=True)
        start = time.perf_counter()
        try:
            status = main([*cell.argv, "--resume" if resume else "--run-dir", str(run_dir)])
            if status in (128 + signal.SIGINT, 128 + signal.SIGTERM):  # the user stopped the sweep
                print(f"sweep stopped at {cell.name}; run the same command again to continue", file=sys.stderr)
                raise SystemExit(status)
            error = None if status == 0 else f"exit status {status}"
        except Exception as exc:  # noqa: BLE001 - one broken cell must not end the sweep
            traceback.print_exc()
            error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if error is None and results_path.is_file():
            collected[(cell.model, cell.size)] = json.loads(results_path.read_text())
        else:
            collected[(cell.model, cell.size)] = {"error": error or "no results.json", "wall_clock_s": time.perf_counter() - start}
    return collected


def markdown_table(
    results: Mapping[tuple[str, int], Mapping[str, Any]],
    models: Sequence[str],
    sizes: Sequence[int],
    paper: Mapping[str, Sequence[str]],
    labels: Mapping[str, str] | None = None,
    size_label: str = "R",
) -> str:
    """A markdown table: one row per model, per size ``ours (paper)`` test error and wall-clock.

    :param results: From :func:`run_grid`.
    :param models: Row order.
    :param sizes: Column order.
    :param paper: The paper's entries per model, in ``sizes`` order (strings such as ``"1.81%"``).
    :param labels: Display names of the models.
    :param size_label: Column header prefix (``R`` or ``features``).
    """
    labels = labels or {}
    header = "| model | " + " | ".join(f"{size_label}={s}: ours (paper) | time" for s in sizes) + " |"
    rule = "|---|" + "---|---|" * len(sizes)
    lines = [header, rule]
    for model in models:
        cells = []
        for column, size in enumerate(sizes):
            entry = results.get((model, size))
            reference = paper.get(model, ["-"] * len(sizes))[column]
            if entry is None:
                cells += [f"not run ({reference})", "-"]
            elif "error" in entry:
                cells += [f"failed: {entry['error']} ({reference})", _duration(entry.get("wall_clock_s"))]
            else:
                ours = f"{100 * entry['test_error']:.2f}%"
                detail = f"@{entry['best_updates']}/{entry['updates']} upd"
                cells += [f"**{ours}** ({reference}) {detail}", _duration(entry.get("wall_clock_s"))]
        lines.append(f"| {labels.get(model, model)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
