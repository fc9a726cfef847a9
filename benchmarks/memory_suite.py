"""Memory benchmark suite: {models} × {tasks} × {seeds} at an equal env-step budget per task.

Every model trains with the same PPO hyper-parameters (``fw_agents.agent.TrainConfig``'s
defaults) and ``--hidden-size`` units, with each policy's **own defaults** otherwise (no
per-task tuning): ``fastweights``, ``lstm``, ``gru``, ``irnn`` are ``FastRecurrentPPO`` with
``RecurrentMemoryPolicy(memory=...)`` (no ``memory_kwargs``); ``stock-lstm`` is sb3-contrib's
``RecurrentPPO("MlpLstmPolicy")``. ``--fast-variant LABEL=JSON`` adds a fast-weights row
``fastweights[LABEL]`` with those ``memory_kwargs`` (a sweep with the same machinery).
Tasks: the POPGym "Easy" memory tasks (``pip install -e '.[bench]'`` for popgym) and CatchBlind16.

Per run: the training curve (mean return of the episodes finished in each rollout), a
deterministic evaluation over ``--eval-episodes`` episodes on a separate env (seed + 10,000)
and the training wall time, in ``<out>/runs/<task>/<model>/seed<k>.json`` (written atomically;
an existing JSON is skipped, so an interrupted suite resumes; ``--retry-errors`` reruns the
runs that raised). Report: ``<out>/memory_suite.md`` (normalised final return, area under the
normalised training curve, wall time; each model's interquartile mean over tasks × seeds with
95% bootstrap intervals; the target check when the runs allow it), ``<out>/memory_suite.png``
(training curves) and ``<out>/memory_suite_profile.png`` (performance profiles)::

    python benchmarks/memory_suite.py                      # the whole suite, overnight on 2 cores
    python benchmarks/memory_suite.py --workers 2 --tasks RepeatFirstEasy CatchBlind16 --seeds 0
    python benchmarks/memory_suite.py --quick              # smoke run, well under a minute
    python benchmarks/memory_suite.py --models fastweights --fast-variant 'eta2={"fast_share": 2.0}'
    python benchmarks/memory_suite.py --report-only        # rebuild the report from <out>/runs

The tasks, their budgets (sized from measured throughputs, in ``suite_tasks.py``'s docstring) and
scores are in ``benchmarks/suite_tasks.py``, one run's code in ``benchmarks/suite_runs.py``, the
report in ``benchmarks/suite_report.py``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import re
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from suite_report import (  # noqa: F401  (the report's names, importable from here as before)
    build_report, load_runs, ordered, plot_curves, run_value, target_check, write_report,
)  # fmt: skip
from suite_runs import (  # noqa: F401  (one run's code, importable from here as before)
    EVAL_SEED_OFFSET, Job, _init_pool_worker, build_job_model, make_task_env, one_line, policy_kwargs,
    ppo_settings, run_job,
)  # fmt: skip
from suite_tasks import (  # noqa: F401  (the suite's tables and scores, importable from here as before)
    AUC_POINTS, BUDGETS, MODELS, POPGYM_TASKS, RETURN_BOUNDS, STOCK, TASKS, area_under_curve, budget,
    interpolate_curve, normalise,
)  # fmt: skip

from fw_agents.aggregate import DEFAULT_REPS, DEFAULT_SEED
from fw_agents.cli import OneLineArgumentParser, run_cli
from fw_agents.validation import check_float, check_int

QUICK: dict[str, Any] = dict(tasks=["RepeatFirstEasy", "CatchBlind16"], models=["fastweights", STOCK], seeds=[0],
                             timesteps=4096)  # fmt: skip
LABEL = re.compile(r"[A-Za-z0-9_.+-]+")


# --------------------------------------------------------------------------- command line


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``LABEL=JSON`` -> (``fastweights[LABEL]``, memory_kwargs), checked as ``TrainConfig`` checks them.

    A key ``"policy"`` holds the variant's other ``RecurrentMemoryPolicy`` options, e.g.
    ``sep={"policy": {"critic": "separate"}}``; they are checked when the model is built.

    :param text: A ``--fast-variant`` value, e.g. ``eta2={"fast_share": 2.0}``.
    """
    label, sep, raw = text.partition("=")
    if not sep or not LABEL.fullmatch(label):
        raise ValueError(f"bad --fast-variant {text!r}; expected LABEL=JSON with LABEL of letters, digits, _.+-")
    try:
        kwargs = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"bad --fast-variant {text!r}: invalid JSON ({error})") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"bad --fast-variant {text!r}: the JSON must be an object of fast-weights options")
    from fw_agents.agent import check_memory_kwargs

    if not isinstance(kwargs.get("policy", {}), dict):
        raise ValueError(f"bad --fast-variant {text!r}: \"policy\" must be an object of policy options")
    try:
        check_memory_kwargs("fastweights", {k: v for k, v in kwargs.items() if k != "policy"}, hidden_size=4)
    except ValueError as error:
        raise ValueError(f"bad --fast-variant {text!r}: {error}") from None
    return f"fastweights[{label}]", kwargs


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
    p.add_argument("--timesteps", type=int, help="env steps per run for every task (default: the BUDGETS table)")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply every budget")
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--workers", type=int, default=2, help="runs in parallel, one process and one thread each")
    p.add_argument("--out", help="default: runs/memory_suite (runs/memory_suite_quick with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 tasks, 2 models, 1 seed, 4k steps")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from <out>/runs")
    p.add_argument("--retry-errors", action="store_true", help="rerun runs recorded with status error")
    p.add_argument("--bootstrap-reps", type=int, default=DEFAULT_REPS,
                   help="bootstrap replications of the report's IQM intervals and performance profiles")  # fmt: skip
    p.add_argument("--bootstrap-seed", type=int, default=DEFAULT_SEED, help="seed of the report's bootstraps")
    return p


def _check(args: argparse.Namespace) -> None:
    for name in ("timesteps", "hidden_size", "eval_episodes", "workers", "bootstrap_reps"):
        if getattr(args, name) is not None:
            check_int(f"--{name.replace('_', '-')}", getattr(args, name), 1)
    check_float("--budget-scale", args.budget_scale, 0)
    for seed in args.seeds or []:
        check_int("--seeds", seed, 0)
    check_int("--bootstrap-seed", args.bootstrap_seed, 0)


def make_jobs(args: argparse.Namespace, tasks: list[str], models: list[str], variants: dict[str, dict[str, Any]],
              out: Path, command: str) -> list[Job]:  # fmt: skip
    """The runs still to do, seed by seed (so a partial suite has whole seeds); finished ones are skipped."""
    jobs = []
    for seed in args.seeds:
        for task in tasks:
            steps = args.timesteps or budget(task, args.budget_scale)
            for model in models:
                path = out / "runs" / task / model / f"seed{seed}.json"
                if path.exists():
                    old = json.loads(path.read_text())
                    if not (args.retry_errors and old["status"] == "error"):
                        if old["timesteps"] != steps:
                            print(f"note: keeping {path} ({old['timesteps']:,} steps, not {steps:,})")
                        continue
                variant = dict(variants.get(model) or {})
                policy_options = variant.pop("policy", None)
                jobs.append(Job(task, model, seed, steps, str(path), args.hidden_size, args.eval_episodes,
                                variant if model in variants else None, command, policy_options))  # fmt: skip
    return jobs


def run_jobs(jobs: list[Job], workers: int) -> int:
    """Run the jobs in ``workers`` spawned processes, printing a line per finished run.

    :return: The number of runs whose worker died (no record written).
    """
    start, lost = time.perf_counter(), 0
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(
        min(workers, len(jobs)), mp_context=context, initializer=_init_pool_worker
    )
    try:
        futures = {pool.submit(run_job, job): job for job in jobs}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            job = futures[future]
            try:
                record = future.result()
                status = record["status"]
                detail = (f"final {record['final_normalised']:.3f}, auc {record['auc']:.3f}, "
                          f"{record['wall_time_s']:.0f} s" if status == "ok" else record["error"])  # fmt: skip
            except Exception as error:  # the worker died (e.g. out of memory)
                lost, status, detail = lost + 1, "lost", one_line(error)
            elapsed = (time.perf_counter() - start) / 60
            print(f"[{done}/{len(jobs)} {elapsed:.1f} min] {job.task} {job.model} seed {job.seed}: {status}: {detail}",
                  flush=True)  # fmt: skip
    except KeyboardInterrupt:
        for process in list((getattr(pool, "_processes", None) or {}).values()):  # no public way before 3.14
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return lost


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite (or rebuild its report) and write the report; returns the exit status."""
    args = build_parser().parse_args(argv)
    _check(args)
    command = shlex.join(["python", "benchmarks/memory_suite.py", *(sys.argv[1:] if argv is None else argv)])
    out = Path(args.out or ("runs/memory_suite_quick" if args.quick else "runs/memory_suite"))
    variants = dict(parse_variant(text) for text in args.fast_variant)
    if len(variants) < len(args.fast_variant):
        raise ValueError("--fast-variant labels must be distinct")
    if args.quick:
        for key, value in QUICK.items():  # what the command line does not set
            setattr(args, key, getattr(args, key) or value)
    if args.report_only:
        tasks = resolve_tasks(args.tasks) if args.tasks else None
        models = resolve_models(args.models, variants) if args.models or variants else None
        print(write_report(out, command, tasks, models, args.seeds, args.bootstrap_reps, args.bootstrap_seed), end="")
        return 0
    tasks, models = resolve_tasks(args.tasks or list(TASKS)), resolve_models(args.models, variants)
    args.seeds = list(dict.fromkeys(args.seeds or [0, 1, 2]))
    if any(task in POPGYM_TASKS for task in tasks):
        try:
            import popgym  # noqa: F401
        except ImportError:
            raise ValueError("popgym is not installed; pip install -e '.[bench]'") from None
    jobs = make_jobs(args, tasks, models, variants, out, command)
    print(f"{len(jobs)} runs to do ({len(tasks)} tasks × {len(models)} models × {len(args.seeds)} seeds, "
          f"finished ones skipped), {args.workers} workers, into {out}", flush=True)  # fmt: skip
    try:
        lost = run_jobs(jobs, args.workers) if jobs else 0
    except KeyboardInterrupt:
        print("interrupted: the finished runs are saved; run the same command again to resume", file=sys.stderr)
        return 130
    print(write_report(out, command, tasks, models, args.seeds, args.bootstrap_reps, args.bootstrap_seed), end="")
    figures = [out / name for name in ("memory_suite.png", "memory_suite_profile.png") if (out / name).exists()]
    print(f"\nreport: {', '.join(map(str, [out / 'memory_suite.md', *figures]))}")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
