"""Memory benchmark suite: {models} × {tasks} × {seeds} at an equal env-step budget per task.

Every model trains with the same PPO hyper-parameters (``fw_agents.config.TrainConfig``'s
defaults) and ``--hidden-size`` units, with each policy's **own defaults** otherwise (no
per-task tuning): ``fastweights``, ``lstm``, ``gru``, ``irnn`` are ``FastRecurrentPPO`` with
``RecurrentMemoryPolicy(memory=...)`` (no ``memory_kwargs``); ``stock-lstm`` is sb3-contrib's
``RecurrentPPO("MlpLstmPolicy")``. ``--fast-variant LABEL=JSON`` adds a fast-weights row
``fastweights[LABEL]`` with those ``memory_kwargs`` (a sweep with the same machinery).
Tasks: the POPGym "Easy" memory tasks (``pip install -e '.[bench]'`` for popgym) and CatchBlind16.

Per run: the training curve (mean return of the episodes finished in each rollout), a
deterministic evaluation over ``--eval-episodes`` episodes on a separate env (seed + 10,000)
and the training wall time. Every run is a cell of one Optuna study (``--storage``, default
``sqlite:///<out>/suite.db``; ``--study``): the command enqueues the cells the study lacks, then
``--workers`` processes take waiting cells until none is left. The same command on other
machines with one PostgreSQL ``--storage`` joins the same study (docs/scale.md); no cell runs
twice, a dead worker's cell runs again after 2 × ``--heartbeat`` seconds (fw_agents.cell_study).
Each record is stored in its trial and written to ``<out>/runs/<task>/<model>/seed<k>.json``
on the machine that ran it; a JSON already there whose cell the study lacks is recorded in the
study as it is (not rerun); ``--retry-errors`` reruns the runs that raised. A cell already in the
study keeps its budget and settings (a command asking other ones reruns nothing: use another
``--study``/``--out``). Report: ``<out>/memory_suite.md`` (normalised final return, area under the
normalised training curve, wall time; each model's interquartile mean over tasks × seeds with
95% bootstrap intervals; the target check when the runs allow it), ``<out>/memory_suite.png``
(training curves) and ``<out>/memory_suite_profile.png`` (performance profiles)::

    python benchmarks/memory_suite.py                      # the whole suite, overnight on 2 cores
    python benchmarks/memory_suite.py --workers 2 --tasks RepeatFirstEasy CatchBlind16 --seeds 0
    python benchmarks/memory_suite.py --quick              # smoke run, well under a minute
    python benchmarks/memory_suite.py --models fastweights --fast-variant 'eta2={"fast_share": 2.0}'
    python benchmarks/memory_suite.py --models gru --variant 'gru[mlp64]={"policy": {"net_arch": [64]}}'
    python benchmarks/memory_suite.py --report-only        # the report from the study, any time, any machine

The tasks, their budgets (sized from measured throughputs, in ``suite_tasks.py``'s docstring) and
scores are in ``benchmarks/suite_tasks.py``, one run's code in ``benchmarks/suite_runs.py``, the
report in ``benchmarks/suite_report.py``.
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from suite_report import (  # noqa: F401  (the report's names, importable from here as before)
    build_report, group_runs, load_runs, ordered, plot_curves, run_value, target_check, write_report,
)  # fmt: skip
from suite_runs import (  # noqa: F401  (one run's code, importable from here as before)
    EVAL_SEED_OFFSET, Job, build_job_model, cell_key, make_task_env, policy_kwargs, ppo_settings,
    record_value, run_job, run_path, suite_worker,
)  # fmt: skip
from suite_tasks import (  # noqa: F401  (the suite's tables and scores, importable from here as before)
    AUC_POINTS, BUDGETS, MODELS, POPGYM_TASKS, RETURN_BOUNDS, STOCK, TASKS, area_under_curve, budget,
    interpolate_curve, normalise, parse_model_variant, parse_variant,
)  # fmt: skip

from fw_agents.aggregate import DEFAULT_REPS, DEFAULT_SEED
from fw_agents.cell_study import cell_records, enqueue_cells, launch_cell_workers, load_cell_study, open_cell_study
from fw_agents.search_storage import MAX_RETRY, hidden_password
from fw_agents.cli import OneLineArgumentParser, run_cli
from fw_agents.validation import check_float, check_int

QUICK: dict[str, Any] = dict(tasks=["RepeatFirstEasy", "CatchBlind16"], models=["fastweights", STOCK], seeds=[0],
                             timesteps=4096)  # fmt: skip


# --------------------------------------------------------------------------- command line


def resolve_tasks(names: Sequence[str]) -> list[str]:
    """Task names (a Gymnasium id of a task is accepted too); ``ValueError`` naming a bad one."""
    by_id = {env_id: name for name, env_id in TASKS.items()}
    tasks = []
    for name in names:
        if name not in TASKS and name not in by_id:
            raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
        tasks.append(by_id.get(name, name))
    return list(dict.fromkeys(tasks))


def resolve_models(names: Sequence[str] | None, variants: dict[str, dict[str, Any]]) -> list[str]:
    """Model names (default: all five), plus the ``--fast-variant`` rows; ``ValueError`` naming a bad one."""
    accepted = [*MODELS, *variants]
    for name in names or []:
        if name not in accepted:
            raise ValueError(f"unknown model {name!r}; choose from {', '.join(accepted)}")
    return list(dict.fromkeys([*(names or MODELS), *variants]))


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", help=f"default: all ({', '.join(TASKS)})")
    p.add_argument("--models", nargs="+", help=f"default: all ({', '.join(MODELS)})")
    p.add_argument("--seeds", nargs="+", type=int, help="default: 0 1 2")
    p.add_argument("--fast-variant", action="append", default=[], metavar="LABEL=JSON",
                   help="extra fast-weights model fastweights[LABEL] with these memory_kwargs (repeatable)")  # fmt: skip
    p.add_argument("--variant", action="append", default=[], metavar="MEMORY[LABEL]=JSON",
                   help="extra model of any of our cores, e.g. 'gru[mlp64]={\"policy\": {\"net_arch\": [64]}}' "
                        "(its memory_kwargs, and policy options under \"policy\"; repeatable)")  # fmt: skip
    p.add_argument("--timesteps", type=int, help="env steps per run for every task (default: the BUDGETS table)")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply every budget")
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--workers", type=int, default=2,
                   help="worker processes on this machine joining the study, one run and one thread each")  # fmt: skip
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage of the suite's study, shared by every worker on every machine, e.g. "
                        "postgresql+psycopg://USER:PASSWORD@HOST:5432/DB (default: sqlite:///<out>/suite.db)")  # fmt: skip
    p.add_argument("--study", default="memory_suite", help="the study's name (one per suite)")
    p.add_argument("--heartbeat", type=int, default=60,
                   help="seconds between a running run's heartbeats; one silent for twice this is run again")  # fmt: skip
    p.add_argument("--out", help="default: runs/memory_suite (runs/memory_suite_quick with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 tasks, 2 models, 1 seed, 4k steps")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild the report from the study (and <out>/runs), from any machine at any time")  # fmt: skip
    p.add_argument("--retry-errors", action="store_true", help="rerun runs recorded with status error")
    p.add_argument("--bootstrap-reps", type=int, default=DEFAULT_REPS,
                   help="bootstrap replications of the report's IQM intervals and performance profiles")  # fmt: skip
    p.add_argument("--bootstrap-seed", type=int, default=DEFAULT_SEED, help="seed of the report's bootstraps")
    return p


def _check(args: argparse.Namespace) -> None:
    for name in ("timesteps", "hidden_size", "eval_episodes", "workers", "bootstrap_reps", "heartbeat"):
        if getattr(args, name) is not None:
            check_int(f"--{name.replace('_', '-')}", getattr(args, name), 1)
    check_float("--budget-scale", args.budget_scale, 0)
    for seed in args.seeds or []:
        check_int("--seeds", seed, 0)
    check_int("--bootstrap-seed", args.bootstrap_seed, 0)


def make_cells(args: argparse.Namespace, tasks: list[str], models: list[str], variants: dict[str, dict[str, Any]],
               command: str) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Every run of the command as a study cell, seed by seed (a partial suite has whole seeds):
    :func:`~suite_runs.cell_key` -> its :class:`~suite_runs.Job` fields but ``path`` (each
    machine writes the JSON under its own ``--out``)."""
    cells = {}
    for seed in args.seeds:
        for task in tasks:
            steps = args.timesteps or budget(task, args.budget_scale)
            for model in models:
                variant = dict(variants.get(model) or {})
                policy_options = variant.pop("policy", None)
                job = Job(task, model, seed, steps, "", args.hidden_size, args.eval_episodes,
                          variant if model in variants else None, command, policy_options)  # fmt: skip
                cells[cell_key(task, model, seed)] = {k: v for k, v in asdict(job).items() if k != "path"}
    return cells


def local_record(out: Path, cells: dict[str, dict[str, Any]], key: str) -> dict[str, Any] | None:
    """The record of ``key`` in this machine's JSON, if any (noting a budget other than the cell's)."""
    path = run_path(out, key)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    if record["timesteps"] != cells[key]["timesteps"]:
        print(f"note: keeping {path} ({record['timesteps']:,} steps, not {cells[key]['timesteps']:,})")
    return record


def study_location(args: argparse.Namespace, out: Path) -> tuple[str, str]:
    """(storage URL, study name): ``--storage`` / ``--study``, by default ``sqlite:///<out>/suite.db``."""
    return args.storage or f"sqlite:///{(out / 'suite.db').resolve()}", args.study


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite (or rebuild its report) and write the report; returns the exit status."""
    args = build_parser().parse_args(argv)
    _check(args)
    command = shlex.join(["python", "benchmarks/memory_suite.py", *(sys.argv[1:] if argv is None else argv)])
    out = Path(args.out or ("runs/memory_suite_quick" if args.quick else "runs/memory_suite"))
    parsed = [parse_variant(text) for text in args.fast_variant]
    parsed += [parse_model_variant(text, [m for m in MODELS if m != STOCK]) for text in args.variant]
    variants = dict(parsed)
    if len(variants) < len(parsed):
        raise ValueError("--fast-variant and --variant labels must be distinct")
    if args.quick:
        for key, value in QUICK.items():  # what the command line does not set
            setattr(args, key, getattr(args, key) or value)
    if args.report_only:
        tasks = resolve_tasks(args.tasks) if args.tasks else None
        models = resolve_models(args.models, variants) if args.models or variants else None
        storage, study_name = study_location(args, out)
        exists = args.storage is not None or (out / "suite.db").exists()  # else a folder of JSONs from before the study
        print(report(out, load_cell_study(storage, study_name) if exists else None, tasks, models, args), end="")
        return 0
    tasks, models = resolve_tasks(args.tasks or list(TASKS)), resolve_models(args.models, variants)
    args.seeds = list(dict.fromkeys(args.seeds or [0, 1, 2]))
    if any(task in POPGYM_TASKS for task in tasks):
        try:
            import popgym  # noqa: F401
        except ImportError:
            raise ValueError("popgym is not installed; pip install -e '.[bench]'") from None
    out.mkdir(parents=True, exist_ok=True)
    storage, study_name = study_location(args, out)
    study = open_cell_study(storage, study_name, args.heartbeat)
    if "command" not in study.user_attrs:  # the report's header, the same whichever process writes it
        study.set_user_attr("command", command)
    cells = make_cells(args, tasks, models, variants, command)
    enqueued, imported = enqueue_cells(study, cells, functools.partial(local_record, out, cells), args.retry_errors,
                                       record_value)  # fmt: skip
    print(f"{enqueued} runs to do ({len(tasks)} tasks × {len(models)} models × {len(args.seeds)} seeds; "
          f"{imported} taken from {out / 'runs'}, the others finished or taken in the study), {args.workers} "
          f"workers, study {study_name} in {hidden_password(storage)}, JSONs into {out}", flush=True)  # fmt: skip
    start = time.perf_counter()
    try:
        launch_cell_workers(suite_worker, (storage, study_name, args.heartbeat, str(out)), args.workers, study)
    except KeyboardInterrupt:
        print("interrupted: the finished runs are saved, the running ones queued again; run the same command "
              "again to resume", file=sys.stderr)  # fmt: skip
        return 130
    print(f"workers done in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    records = cell_records(study)
    missing = [key for key in cells if key not in records]
    print(report(out, study, tasks, models, args), end="")
    figures = [out / name for name in ("memory_suite.png", "memory_suite_profile.png") if (out / name).exists()]
    print(f"\nreport: {', '.join(map(str, [out / 'memory_suite.md', *figures]))}")
    if missing:
        print(f"error: {len(missing)} runs have no result (their workers died {MAX_RETRY + 1} times?): "
              f"{', '.join(missing[:5])}; run the command again", file=sys.stderr)  # fmt: skip
    return 1 if missing else 0


def report(out: Path, study: Any, tasks: list[str] | None, models: list[str] | None, args: argparse.Namespace) -> str:
    """Write the report from the study's records (and this machine's JSONs of runs not in it)."""
    records = {key: record for key, record in cell_records(study).items()} if study is not None else {}
    local = {str(path.relative_to(out / "runs").with_suffix("")): path for path in (out / "runs").glob("*/*/seed*.json")}
    for key in sorted(set(local) - set(records)):
        records[key] = json.loads(local[key].read_text())
    command = study.user_attrs.get("command", "") if study is not None else "(from the JSONs)"
    return write_report(out, command, tasks, models, args.seeds, args.bootstrap_reps, args.bootstrap_seed,
                        runs=group_runs(records.values()))  # fmt: skip


if __name__ == "__main__":
    sys.exit(run_cli(main))
