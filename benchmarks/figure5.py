"""Reproduce the paper's Figure 5: memories on the partially observable Catch variants.

Two modes, both training through ``fw_agents.train.train`` and writing into ``--out``:

* **search** (``--trials N``): the paper's protocol (notes §5: "learning rate, number of
  inner steps, η and λ found by random search; curves average the top 5 runs") through
  ``fw_agents.search --space paper`` (η searched as the paper's absolute η, ``fast_lr``):
  one Optuna study per env × memory, ``figure5-<env>-<memory>``, in
  ``--storage`` (default: ``<out>/search/<study>.db``). The command runs what the studies
  still lack of their ``N`` trials (``--workers K`` processes at once), then reads them back:
  trials ranked by their objective, the mean of their evaluation curve (the area under it),
  the plot shows mean ± std of the top ``--top``; ``trials.md`` lists every trial.
  ``--plot-only`` only reads the studies back (their trials ran elsewhere: ``python -m
  fw_agents.search`` on other machines with the same ``--storage``).
* **seeds** (default): every memory with the same hyper-parameters (or, with ``--best-of``,
  each memory's best trial of a search: its ``--out`` folder, its storage URL, or a JSON
  table) and each of ``--seeds``; the plot shows mean ± std over seeds. Each env × memory ×
  seed run is a cell of one Optuna study (``--storage``, default
  ``sqlite:///<out>/figure5_seeds.db``; ``--study``, default ``figure5-seeds``): the command
  enqueues the runs the study lacks, ``--workers K`` processes take them, and the same command
  on other machines with one PostgreSQL ``--storage`` joins in (docs/scale.md); a run never
  trains twice, a dead worker's run is taken over after 2 × ``--heartbeat`` s, and the curves
  are read back from the study (``--plot-only``, alias ``--report-only``, on any machine). A
  run already in the study keeps its settings; a finished run folder in ``--out`` is read, not
  trained again.

Outputs: ``figure5_<env>.png`` (one line per memory) and ``figure5.md`` (env steps to first
reach a mean evaluation return of 0.9, and the final return; then each memory's interquartile
mean over its trials or seeds of the area under the evaluation curve and of the final return,
with 95% bootstrap intervals, through ``rliable``: ``fw_agents.aggregate``). Finished runs and trials are
kept, so an interrupted command resumes where it stopped::

    python benchmarks/figure5.py --timesteps 500000 --seeds 0 1 2
    python benchmarks/figure5.py --trials 8 --top 5 --timesteps 400000 --envs CatchBlind16-v0 --workers 2
    python benchmarks/figure5.py --best-of runs/figure5 --envs CatchBlind24-v0 --seeds 100 101 --out runs/figure5-24
    python benchmarks/figure5.py --best-of benchmarks/figure5_best16.json --envs CatchBlind24-v0 --seeds 100 101
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fw_agents import search  # noqa: E402
from fw_agents.aggregate import DEFAULT_REPS, DEFAULT_SEED, iqm_cells  # noqa: E402
from fw_agents.cell_study import (  # noqa: E402
    cell_records, enqueue_cells, launch_cell_workers, load_cell_study, open_cell_study, run_cells,
)  # fmt: skip
from fw_agents.config import TrainConfig  # noqa: E402
from fw_agents.train import train  # noqa: E402
from fw_agents.cli import HelpFormatter, OneLineArgumentParser, run_cli  # noqa: E402
from fw_agents.runs.files import atomic_path, write_text_atomically  # noqa: E402
from fw_agents.memory import MEMORY_NAMES  # noqa: E402
from fw_agents.memory.options import translate_legacy_options  # noqa: E402
from fw_agents.runs.resume import latest_checkpoint  # noqa: E402
from fw_agents.runs.folder import RUN_MARKER  # noqa: E402

TARGET = 0.9
#: Before ``TrainConfig.memory_kwargs``, the fast-weights options were fields of their own:
#: old field -> core option (old JSON tables); a study's flat parameters are read the same way.
LEGACY_FAST_FIELDS = dict(fast_lr="fast_lr", fast_share="fast_share", decay="decay", inner_steps="inner_steps",
                          fast_normalize="normalize")  # fmt: skip
Curve = tuple[np.ndarray, np.ndarray]


def load_curve(run_dir: Path) -> Curve:
    """(env steps, mean evaluation return) from a run's ``evaluations.npz``."""
    data = np.load(run_dir / "evaluations.npz")
    return data["timesteps"], data["results"].mean(axis=1)


def steps_to_target(steps: np.ndarray, returns: np.ndarray, target: float = TARGET) -> float:
    hit = np.nonzero(returns >= target)[0]
    return float(steps[hit[0]]) if hit.size else float("nan")


def trial_params(entry: dict[str, Any], memory: str) -> dict[str, Any]:
    """The ``TrainConfig`` keyword arguments of a trial (``learning_rate``, ``memory_kwargs``) from
    a best-of JSON entry or a study's flat parameters, also in the old form with the fast-weights
    options as fields of their own (:data:`LEGACY_FAST_FIELDS`); ``normalize`` in today's names
    (:func:`~fw_agents.memory.options.translate_legacy_options`: ``fast_lr`` is the paper's η)."""
    params: dict[str, Any] = dict(learning_rate=entry["learning_rate"])
    if "memory_kwargs" in entry:
        memory_kwargs = translate_legacy_options(entry["memory_kwargs"])
    elif memory == "fastweights":
        memory_kwargs = translate_legacy_options({key: entry[old] for old, key in LEGACY_FAST_FIELDS.items() if old in entry})
    else:
        memory_kwargs = {}
    if memory_kwargs:
        params["memory_kwargs"] = memory_kwargs
    return params


def study_name(env_id: str, memory: str) -> str:
    return f"figure5-{env_id}-{memory}"


def _studies(source: str, memory: str) -> list[tuple[str, str]]:
    """``(storage URL, study name)`` of ``memory``'s figure-5 studies in a storage URL or an ``--out`` folder."""
    import optuna

    if "://" in source:
        names = optuna.get_all_study_names(source)
        return [(source, name) for name in names if name.startswith("figure5-") and name.endswith(f"-{memory}")]
    files = sorted(Path(source).glob(f"search/figure5-*-{memory}.db"))
    return [(f"sqlite:///{path.resolve()}", path.stem) for path in files]


def best_trial(source: Path | str, memory: str) -> dict[str, Any]:
    """Hyper-parameters of ``memory``'s best trial (highest objective) in a figure-5 search (its
    ``--out`` folder or storage URL; one env's study per memory), or ``memory``'s entry of a JSON
    file ``{memory: {"learning_rate": .., "memory_kwargs": {..}}}`` (such as
    ``benchmarks/figure5_best16.json``, the search's winners on CatchBlind16-v0)."""
    import optuna

    if str(source).endswith(".json"):
        table = json.loads(Path(source).read_text())
        if memory not in table:
            raise ValueError(f"{source} has no entry for {memory!r}; it has {', '.join(table)}")
        return trial_params(table[memory], memory)
    studies = _studies(str(source), memory)
    if len(studies) != 1:
        found = ", ".join(name for _, name in studies) or "none"
        raise ValueError(f"--best-of {source}: expected one figure5-<env>-{memory} study, found {found}")
    ((storage, name),) = studies
    try:
        return trial_params(optuna.load_study(study_name=name, storage=storage).best_trial.params, memory)
    except ValueError:  # optuna: no complete trial yet
        raise ValueError(f"no complete trial in study {name} ({search.hidden_password(storage)})") from None


def run(run_dir: Path, args: argparse.Namespace, env_id: str, memory: str, seed: int, **params: Any) -> Curve:
    """Train one run unless ``run_dir`` already holds a finished one; return its curve. A run an
    earlier command left unfinished (Ctrl-C, SIGTERM, a crash) continues from its latest
    checkpoint, or, with none, starts again (the unfinished folder set aside)."""
    if not (run_dir / "evaluations.npz").exists() or not (run_dir / "model.zip").exists():
        config = TrainConfig(
            env=env_id, memory=memory, seed=seed, timesteps=args.timesteps, eval_freq=args.eval_freq,
            eval_episodes=args.eval_episodes, run_dir=str(run_dir), wandb="disabled", gif_episodes=0,
            progress_bar=False, threads=args.threads, **params,
        )  # fmt: skip
        if (run_dir / RUN_MARKER).exists():
            try:
                latest_checkpoint(run_dir)
                config = dataclasses.replace(config, resume=str(run_dir))
            except ValueError:  # nothing saved to continue from
                aside = next(p for n in range(1, 10_000) if not (p := run_dir.with_name(f"{run_dir.name}.unfinished-{n}")).exists())
                run_dir.rename(aside)
        train(config)
    return load_curve(run_dir)


# ---------------------------------------------------------------------- seeds mode: one study of cells
SEEDS_STUDY = "figure5-seeds"


def seeds_storage(args: argparse.Namespace, out: Path) -> tuple[str, str]:
    """(storage URL, study name) of the seeds mode: ``--storage`` (default
    ``sqlite:///<out>/figure5_seeds.db``) and ``--study``."""
    return args.storage or f"sqlite:///{(out / 'figure5_seeds.db').resolve()}", args.study or SEEDS_STUDY


def seed_cells(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Every env × memory × seed run as a study cell: ``env/memory/s<seed>`` -> its settings."""
    cells = {}
    for env_id in args.envs:
        for memory in args.memories:
            params = best_trial(args.best_of, memory) if args.best_of else dict(learning_rate=args.learning_rate)
            for seed in args.seeds:
                cells[f"{env_id}/{memory}/s{seed}"] = dict(
                    env=env_id, memory=memory, seed=seed, params=params, timesteps=args.timesteps,
                    eval_freq=args.eval_freq, eval_episodes=args.eval_episodes, threads=args.threads,
                )  # fmt: skip
    return cells


def run_seed_cell(out: Path, key: str, job: dict[str, Any]) -> dict[str, Any]:
    """Train one seeds-mode cell in ``<out>/<env>-<memory>-s<seed>`` (a finished folder there is
    read, not trained again: :func:`run`); its record holds the evaluation curve."""
    settings = argparse.Namespace(**{k: job[k] for k in ("timesteps", "eval_freq", "eval_episodes", "threads")})
    start = time.perf_counter()
    run_dir = out / f"{job['env']}-{job['memory']}-s{job['seed']}"
    steps, returns = run(run_dir, settings, job["env"], job["memory"], job["seed"], **job["params"])
    return dict(job, status="ok", steps=steps.tolist(), returns=returns.tolist(), run_dir=str(run_dir),
                wall_time_s=time.perf_counter() - start)  # fmt: skip


def _seed_line(key: str, record: dict[str, Any]) -> None:
    print(f"[pid {os.getpid()}] {key}: final {record['returns'][-1]:.3f} ({record['wall_time_s']:.0f} s)", flush=True)


def seed_worker(storage: str, name: str, heartbeat: int, out: str) -> int:
    """One worker of the seeds-mode study (see :func:`fw_agents.cell_study.run_cells`)."""
    study = open_cell_study(storage, name, heartbeat)
    return run_cells(study, functools.partial(run_seed_cell, Path(out)), heartbeat, _final_return, _seed_line)


def _final_return(record: dict[str, Any]) -> float:
    return float(record["returns"][-1])


def seed_runs(args: argparse.Namespace, out: Path) -> dict[str, dict[str, Any]]:
    """Run the seeds mode's cells still missing from its study (``--workers`` processes here, any
    number elsewhere with one ``--storage``), unless ``--plot-only``; return their records by key."""
    storage, name = seeds_storage(args, out)
    cells = seed_cells(args)
    study = load_cell_study(storage, name) if args.plot_only else open_cell_study(storage, name, args.heartbeat)
    if not args.plot_only:
        enqueued, _ = enqueue_cells(study, cells, value=_final_return)
        print(f"{enqueued} runs to do ({len(cells)} in all), {args.workers} workers, study {name} in "
              f"{search.hidden_password(storage)}", flush=True)  # fmt: skip
        launch_cell_workers(seed_worker, (storage, name, args.heartbeat, str(out)), args.workers, study)
    records = cell_records(study, cells) if study is not None else {}
    missing = [key for key in cells if key not in records]
    if missing:
        raise ValueError(f"study {name} has no result for {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
                         f"; run the command without --plot-only (here or on other machines)")  # fmt: skip
    return records


# ---------------------------------------------------------------------- search mode
def study_search(args: argparse.Namespace, env_id: str, memory: str) -> search.Search:
    """The ``fw_agents.search`` command of one study, parsed."""
    argv = [
        "--env", env_id, "--memory", memory, "--study", study_name(env_id, memory), "--runs-root", args.out,
        "--trials", str(args.trials), "--study-trials", str(args.trials), "--workers", str(args.workers),
        "--sampler-seed", str(args.sampler_seed), "--space", "paper", "--timesteps", str(args.timesteps), "--eval-freq",
        str(args.eval_freq), "--eval-episodes", str(args.eval_episodes), "--threads", str(args.threads or 1),
    ]  # fmt: skip
    argv += ["--storage", args.storage] if args.storage else []
    argv += ["--wandb", args.wandb] if args.wandb else []
    return search.parse_search(argv)


def search_runs(spec: search.Search) -> list[tuple[str, dict[str, Any], Curve]]:
    """Every complete trial of the study, best first: (label, ``TrainConfig`` params, its curve).
    The curve is the one the trial reported to the study (its ``evaluations.npz``), so trials run
    on other machines read back without their run directories."""
    import optuna
    from optuna.trial import TrialState

    try:  # KeyError: no such study; a missing SQLite file: SQLAlchemy's OperationalError
        study = optuna.load_study(study_name=spec.study_name, storage=spec.storage_url)
    except Exception:  # noqa: BLE001
        raise ValueError(f"no study {spec.study_name} in {search.hidden_password(spec.storage_url)}") from None
    trials = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: -t.value)
    runs = []
    for trial in trials:
        steps = np.array(sorted(trial.intermediate_values))
        curve = np.array([trial.intermediate_values[step] for step in steps])
        runs.append((f"t{trial.number}", trial_params(trial.params, spec.train.memory), (steps, curve)))
    return runs


def _steps_text(steps: float) -> str:
    return "not reached" if np.isnan(steps) else f"{steps:,.0f}"


def _params_text(params: dict[str, Any]) -> str:
    return search.params_text({k: v for k, v in params.items() if k != "memory_kwargs"} | params.get("memory_kwargs", {}))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["CatchBlind16-v0", "CatchBlind24-v0"])
    parser.add_argument("--memories", nargs="+", default=["fastweights", "lstm", "irnn"], choices=MEMORY_NAMES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds mode: env seeds")
    parser.add_argument("--learning-rate", type=float, default=TrainConfig.learning_rate, help="seeds mode")
    parser.add_argument("--best-of", default=None,
                        help="seeds mode: each memory's best trial in a search's --out folder or --storage URL, or a "
                             "JSON of them")  # fmt: skip
    parser.add_argument("--trials", type=int, default=0, help="search mode: trials per study (env x memory)")
    parser.add_argument("--top", type=int, default=5, help="search mode: trials averaged in the plot")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    parser.add_argument("--storage", default=None, metavar="URL",
                        help="Optuna storage URL shared by every machine, e.g. postgresql+psycopg://USER:PASSWORD@HOST/DB "
                             "(default: search mode, a SQLite file per study under <out>/search; seeds mode, "
                             "sqlite:///<out>/figure5_seeds.db)")  # fmt: skip
    parser.add_argument("--study", default=None, help=f"seeds mode: the study of the runs (default: {SEEDS_STUDY})")
    parser.add_argument("--heartbeat", type=int, default=60,
                        help="seeds mode: seconds between a running run's heartbeats; one silent for twice this "
                             "is run again")  # fmt: skip
    parser.add_argument("--sampler-seed", type=int, default=0, help="search mode: seed of the random search")
    parser.add_argument("--plot-only", "--report-only", action="store_true",
                        help="read the studies back without running anything")  # fmt: skip
    parser.add_argument("--wandb", default=None, choices=("online", "offline", "disabled"),
                        help="search mode: W&B mode of the trials (one group per study)")  # fmt: skip
    parser.add_argument("--timesteps", type=int, default=500_000)
    parser.add_argument("--eval-freq", type=int, default=25_000)
    parser.add_argument("--eval-episodes", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run (TrainConfig.threads; default: torch's in seeds mode, 1 per "
                             "search worker; 1 lets two commands share 2 cores)")  # fmt: skip
    parser.add_argument("--bootstrap-reps", type=int, default=DEFAULT_REPS,
                        help="bootstrap replications of the report's IQM intervals")  # fmt: skip
    parser.add_argument("--bootstrap-seed", type=int, default=DEFAULT_SEED, help="seed of the report's bootstraps")
    parser.add_argument("--out", default="runs/figure5")
    return parser


def iqm_row(env_id: str, memory: str, returns: np.ndarray, reps: int, seed: int) -> str:
    """The IQM table's row of one env × memory: the IQM over its runs (trials or seeds) of the
    area under the evaluation curve (its mean) and of the final evaluation return, with 95%
    bootstrap intervals (:func:`fw_agents.aggregate.iqm_cells`, one task).

    :param env_id: The env.
    :param memory: The memory.
    :param returns: ``[runs x evaluations]`` mean evaluation returns.
    :param reps: Bootstrap replications.
    :param seed: Bootstrap seed.
    """
    auc, final = iqm_cells([returns.mean(axis=1, keepdims=True), returns[:, -1:]], reps, seed)
    return f"| {env_id} | {memory} | {len(returns)} | {auc} | {final} |"


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.trials < 0:
        raise ValueError(f"trials must be an integer >= 0, got {args.trials}")
    searching = args.trials > 0
    if not searching and args.best_of:  # every memory's entry before any run trains
        for memory in args.memories:
            try:
                best_trial(args.best_of, memory)
            except OSError as error:
                raise ValueError(f"--best-of {args.best_of}: {error.strerror or error}") from None
    if searching and args.top < 1:
        raise ValueError(f"top must be an integer >= 1, got {args.top}")
    if args.bootstrap_reps < 1 or args.bootstrap_seed < 0:
        raise ValueError(f"bootstrap reps must be >= 1 and bootstrap seed >= 0, got {args.bootstrap_reps}, "
                         f"{args.bootstrap_seed}")  # fmt: skip

    spread = f"top {args.top} of {args.trials} trials" if searching else "per seed"
    table = [f"| env | memory | steps to mean return ≥ 0.9 ({spread}) | final return (mean ± std) | best run |",
             "|---|---|---|---|---|"]  # fmt: skip
    iqm_table = ["", f"Interquartile mean over the runs ({spread}) with its 95% bootstrap confidence interval "
                 f"({args.bootstrap_reps:,} replications, seed {args.bootstrap_seed}):", "",
                 "| env | memory | runs | area under the curve (mean eval return): IQM [95% CI] | final return: IQM "
                 "[95% CI] |", "|---|---|---|---|---|"]  # fmt: skip
    if args.workers < 1 or args.heartbeat < 1:
        raise ValueError(f"workers and heartbeat must be integers >= 1, got {args.workers}, {args.heartbeat}")
    records = {} if searching else seed_runs(args, out)
    trials_table = ["| env | memory | trial | hyper-parameters | mean eval return | final |", "|---|---|---|---|---|---|"]
    for env_id in args.envs:
        fig, ax = plt.subplots(figsize=(6, 4))
        for memory in args.memories:
            if searching:
                spec = study_search(args, env_id, memory)
                if not args.plot_only and args.workers > 1:
                    status = search.launch_workers(spec)
                    if status:
                        return status
                elif not args.plot_only:
                    search.run_worker(spec)
                runs = search_runs(spec)
                if not runs:
                    raise ValueError(f"study {spec.study_name} has no complete trial")
                trials_table += [f"| {env_id} | {memory} | {label[1:]} | {_params_text(params)} | "
                                 f"{curve.mean():.3f} | {curve[-1]:.3f} |" for label, params, (_, curve) in runs]  # fmt: skip
                runs = runs[: args.top]
            else:
                found = [records[f"{env_id}/{memory}/s{seed}"] for seed in args.seeds]
                runs = [(f"s{r['seed']}", r["params"], (np.array(r["steps"]), np.array(r["returns"]))) for r in found]
            n = min(len(c[0]) for _, _, c in runs)
            steps = runs[0][2][0][:n]
            returns = np.stack([c[1][:n] for _, _, c in runs])
            mean, std = returns.mean(axis=0), returns.std(axis=0)
            ax.plot(steps, mean, label=memory)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
            reach = ", ".join(_steps_text(steps_to_target(*c)) for _, _, c in runs)
            final = returns[:, -1]
            best_name, best_params, _ = runs[0] if searching else max(runs, key=lambda r: r[2][1].mean())
            table.append(
                f"| {env_id} | {memory} | {reach} | {final.mean():.3f} ± {final.std():.3f} | "
                f"{best_name}: {_params_text(best_params)} |"
            )
            iqm_table.append(iqm_row(env_id, memory, returns, args.bootstrap_reps, args.bootstrap_seed))
        ax.axhline(TARGET, color="grey", lw=0.8, ls="--")
        what = f"top {args.top} of {args.trials} trials" if searching else f"{len(args.seeds)} seed(s)"
        ax.set(xlabel="env steps", ylabel="evaluation return", title=f"{env_id} ({what})", ylim=(-1.05, 1.05))
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_path(out / f"figure5_{env_id}.png") as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
    table += iqm_table
    write_text_atomically(out / "figure5.md", "\n".join(table) + "\n")
    if searching:
        write_text_atomically(out / "trials.md", "\n".join(trials_table) + "\n")
        print("\n".join(trials_table) + "\n")
    print("\n".join(table))
    write_text_atomically(out / "command.json", json.dumps(vars(args), indent=2) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run_cli(_main, argv)
    except KeyboardInterrupt:  # the running trial was queued again: the same command resumes
        return 130


if __name__ == "__main__":
    sys.exit(main())
