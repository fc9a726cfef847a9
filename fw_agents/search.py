"""Hyper-parameter search on Optuna: the paper's random search, one process per worker.

    python -m fw_agents.search --env CatchBlind16-v0 --memory fastweights --trials 8 --timesteps 400000
    python -m fw_agents.search --env CatchBlind16-v0 --memory lstm --trials 4 --timesteps 400000 --workers 2
    python -m fw_agents.search --env CatchBlind16-v0 --memory irnn --trials 8 --timesteps 400000 \\
        --storage postgresql+psycopg://fw:secret@db-host:5432/fw_search

Each trial is one fw_agents.train.train() run, as train_agent.py runs it, in its own run
directory <runs-root>/search/<study>/trial-NNNN (config.json, evaluations.npz, train.log, ...).
Its objective is the mean of its evaluation curve (the area under it, the ranking of the
paper's "top 5 runs"); every periodic evaluation is reported to Optuna (the curve lives in the
study, so trials run on other machines read back the same). The space (the paper's: "learning
rate, number of inner steps, eta and lambda found by random search"; eta as the fast memory's
share of the drive, fast_share, or with --space paper the paper's absolute eta, fast_lr):

{space}

--trials is what THIS worker runs; any number of workers (--workers K here, or the same
command on other machines with one --storage) join the study, and none runs a trial twice.
Without --storage the study lives in sqlite:///<runs-root>/search/<study>.db: stop the
command at any time and run it again to go on. A trial whose worker dies (kill -9, a lost
machine) stops sending heartbeats; after 2 x --heartbeat seconds the next trial a worker
starts marks it failed and queues a retry with the same hyper-parameters (at most 3 times).
Ctrl-C or SIGTERM queues the running trial's retry at once.

At the end the command (not the workers it started) prints the study's report, also written
to <runs-root>/search/<study>_report.md with <study>_best_curves.png: every trial sorted by
objective (parameters, objective, final return, state), the best trial, and the evaluation
curves of the best 5. --report-only does just that, from any machine, at any time; the live
view is `optuna-dashboard URL` (docs/search.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fw_agents.cli import (
    HelpFormatter,
    OneLineArgumentParser,
    add_config_arguments,
    config_from_args,
    config_to_argv,
    run_cli,
)
from fw_agents.config import TrainConfig
from fw_agents.fields import field_names, option
from fw_agents.search_storage import (
    STORAGE_ENV,
    check_storage_flags,
    fail_stale_trials,
    hidden_password,
    make_sampler,
    open_storage,
    retry_callback,
    scrub_password,
    storage_from_env,
    study_size,
    taken_over as _taken_over,
)
from fw_agents.search_trial import (  # noqa: F401 (importable from here as before)
    Objective, _report_callback, _report_history, resumable_attempt, trial_config,
)  # fmt: skip
from fw_agents.search_report import params_text, summary_text, trial_line, write_report  # noqa: F401 (search.*)
from fw_agents.search_space import (  # noqa: F401 (suggest: importable from here as before)
    LEGACY_SPACE, SPACES, fixed_by_search, space_table, study_memory_kwargs, suggest,
)  # fmt: skip
from fw_agents.validation import check_choice, check_int, one_line

__doc__ = __doc__.replace("{space}", space_table())

if TYPE_CHECKING:
    import optuna

SAMPLERS = ("random", "tpe")
PRUNERS = ("none", "median")
#: ``TrainConfig`` fields that are the search's (``learning_rate``), or each worker's own
#: choice; every other field defines the study, and a worker joining it must agree on them
#: (each field's ``search`` role, :data:`fw_agents.fields.SEARCH_ROLES`).
NOT_STUDY_FIELDS = tuple(name for name in field_names(TrainConfig) if name not in field_names(TrainConfig, search="study"))
#: ``TrainConfig`` fields without a flag here: the search sets them per trial.
TRIAL_FIELDS = field_names(TrainConfig, search="trial")
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclasses.dataclass
class SearchOptions:
    """The search's own flags; the trials' are ``TrainConfig``'s (``fw_agents.config``)."""

    trials: int = option(10, help="trials this worker runs (each worker, with --workers)")
    study: str | None = option(None, help="study name (None: <env>-<memory>); letters, digits, . _ -")
    storage: str | None = option(
        None,
        help="Optuna RDB storage URL shared by every worker, e.g. postgresql+psycopg://USER:PASSWORD@HOST:5432/DB "
        "(None: sqlite:///<runs-root>/search/<study>.db, one machine)",
        metavar="URL",
    )
    study_trials: int | None = option(
        None,
        help="stop this worker once the study holds this many trials (finished, running or queued; retried "
        "ones count once): rerunning the command then only completes the study",
        metavar="N",
    )
    sampler: str = option(
        "random",
        help="random: the paper's random search, trial k's draw fixed by (--sampler-seed, k) whichever worker "
        "runs it; tpe: Optuna's TPE",
        choices=SAMPLERS,
    )
    sampler_seed: int = option(0, help="seed of the sampler")
    space: str = option("share", help="fast weights: search eta as a share of the drive (fast_share) or the paper's "
                        "absolute eta (fast_lr)", choices=tuple(SPACES))  # fmt: skip
    pruner: str = option("none", help="median: stop a trial below the median curve of earlier ones", choices=PRUNERS)
    storage_from_env: bool = option(False, help=f"read --storage from ${STORAGE_ENV}, so that its password stays off "
                                    "the command line (how --workers starts its workers)")  # fmt: skip
    workers: int = option(1, help="worker processes to start on this machine, each running --trials trials")
    heartbeat: int = option(
        60, help="seconds between a running trial's heartbeats; one silent for twice this is failed and retried"
    )
    report: bool = option(True, help="at the end, print and write the study's report (--no-report: the workers "
                          "that --workers starts; their parent reports once)")  # fmt: skip
    report_only: bool = option(False, help="run nothing: print and write the study's report (trials by objective, "
                               "the best trial, its curves) into <runs-root>/search, from any machine")  # fmt: skip

    def validate(self) -> None:
        check_int("trials", self.trials, 1)
        if self.study_trials is not None:
            check_int("study_trials", self.study_trials, 1)
        check_choice("sampler", self.sampler, SAMPLERS)
        check_choice("space", self.space, SPACES)
        check_int("sampler_seed", self.sampler_seed, 0, 2**32 - 1)  # numpy's seed range (the samplers')
        check_choice("pruner", self.pruner, PRUNERS)
        check_int("workers", self.workers, 1)
        check_int("heartbeat", self.heartbeat, 1)
        check_storage_flags(self.storage, self.storage_from_env)
        if self.study is not None and not STUDY_NAME.fullmatch(self.study):
            raise ValueError(f"study name must be letters, digits, '.', '_' or '-', got {self.study!r}")


@dataclasses.dataclass
class Search:
    """A search: its options and the trials' base ``TrainConfig`` (sampled fields left at their defaults)."""

    options: SearchOptions
    train: TrainConfig

    def validate(self) -> None:
        self.options.validate()
        self.train.validate()
        fixed = [key for key in fixed_by_search(self.train.memory) if key in self.train.memory_kwargs]
        if fixed:
            raise ValueError(f"--memory-kwargs {fixed[0]}=... is searched for {self.train.memory}; leave it out")
        if self.train.eval_freq > self.train.timesteps:  # no evaluation: no curve, no objective
            raise ValueError(
                f"eval_freq must be <= timesteps (a trial's objective is the mean of its evaluations), got "
                f"eval_freq={self.train.eval_freq}, timesteps={self.train.timesteps}"
            )

    @property
    def study_name(self) -> str:
        return self.options.study or re.sub(r"[^A-Za-z0-9._-]", "_", f"{self.train.env}-{self.train.memory}")

    @property
    def study_dir(self) -> Path:
        """Where the trials' run directories go."""
        return Path(self.train.runs_root) / "search" / self.study_name

    @property
    def storage_url(self) -> str:
        if self.options.storage:
            return self.options.storage
        return f"sqlite:///{(Path(self.train.runs_root) / 'search' / f'{self.study_name}.db').resolve()}"

    def definition(self) -> dict[str, Any]:
        """What every worker of the study must agree on (stored in the study at its creation)."""
        config = {k: v for k, v in self.train.resolved().items() if k not in NOT_STUDY_FIELDS}
        config["memory_kwargs"] = study_memory_kwargs(self.train.memory, config["memory_kwargs"])
        config.update(sampler=self.options.sampler, sampler_seed=self.options.sampler_seed, pruner=self.options.pruner,
                      space=self.options.space)  # fmt: skip
        return json.loads(json.dumps(config))  # as the storage gives it back


# ------------------------------------------------------------------------- the study
def open_study(search: Search) -> optuna.Study:
    """Create the study, or join it after checking that it searches the same thing."""
    import optuna

    if search.options.storage is None:
        search.study_dir.parent.mkdir(parents=True, exist_ok=True)
    # ERROR: Optuna logs every failed trial (a NaN, Ctrl-C) as a warning with its traceback; the
    # worker prints one line per trial instead (_trial_line), the reason in its "error" attribute
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(search.storage_url, search.options.heartbeat)
    pruner = optuna.pruners.MedianPruner() if search.options.pruner == "median" else optuna.pruners.NopPruner()
    study = optuna.create_study(
        study_name=search.study_name,
        storage=storage,
        sampler=make_sampler(search.options.sampler, search.options.sampler_seed),
        pruner=pruner,
        direction="maximize",
        load_if_exists=True,
    )
    if study.directions != [optuna.study.StudyDirection.MAXIMIZE]:  # load_if_exists ignores `direction`
        found = ", ".join(d.name.lower() for d in study.directions)
        raise ValueError(
            f"study {search.study_name!r} exists with direction {found}; the search maximizes the mean "
            "evaluation return: use another --study"
        )
    wanted = search.definition()
    stored = study.user_attrs.get("definition")
    if stored is None:
        # a new study: trial-NNNN folders already there are another study's (its database deleted, or
        # kept elsewhere); trial k of this one would stop on folder k ("already holds a run"), failed
        leftovers = sorted(p.name for p in search.study_dir.glob("trial-*") if (p / "config.json").exists())
        if leftovers and not study.get_trials(deepcopy=False):
            raise ValueError(
                f"{search.study_dir} already holds run folders ({leftovers[0]}, ...) that are not this new "
                f"study's; move them away, or use another --study or --runs-root"
            )
        study.set_user_attr("definition", wanted)
    elif (stored := {"space": LEGACY_SPACE, **stored}) != wanted:  # a study from before --space: the paper's
        key = next(k for k in sorted({*stored, *wanted}) if stored.get(k) != wanted.get(k))
        raise ValueError(
            f"study {search.study_name!r} was created with {key}={stored.get(key)!r}, this worker has "
            f"{key}={wanted.get(key)!r}; use the study's settings or another --study"
        )
    return study


# ------------------------------------------------------------------------- a worker (one trial: fw_agents.search_trial)
def run_worker(search: Search) -> int:
    """Run up to ``--trials`` trials of the study (fewer once ``--study-trials`` is reached).

    :return: The number of trials this worker ran.
    """
    from optuna.trial import TrialState

    from fw_agents.runs.errors import NonFiniteError

    study = open_study(search)
    if search.train.wandb_group is None:  # one W&B group per study
        search = dataclasses.replace(search, train=dataclasses.replace(search.train, wandb_group=search.study_name))
    objective = Objective(search)
    ran = 0
    storage_errors = _storage_errors()
    for _ in range(search.options.trials):
        fail_stale_trials(study)
        size, queued = study_size(study)
        if search.options.study_trials is not None and size >= search.options.study_trials and not queued:
            break
        try:
            study.optimize(objective, n_trials=1, catch=(NonFiniteError,), callbacks=[trial_line])
        except KeyboardInterrupt:
            trial = objective.trial
            if trial is not None:
                frozen = study._storage.get_trial(trial._trial_id)
                if frozen.state == TrialState.FAIL:
                    retry_callback()(study, frozen)  # as if its heartbeat had stopped: queued again
                    print(f"interrupted: trial {trial.number} queued again", file=sys.stderr)
            raise
        except Exception as raised:
            if objective.trial is not None and _taken_over(raised, study, objective.trial):
                # this worker was paused or stalled (a suspended machine, a frozen VM) past 2 x --heartbeat:
                # another worker failed its trial and runs the retry; training on here is wasted
                print(
                    f"trial {objective.trial.number} was taken over: no heartbeat from this worker for "
                    f"2 x {search.options.heartbeat}s (was it paused?), so another worker failed it and runs its retry",
                    file=sys.stderr,
                )
                ran += 1
                continue
            error = _from_storage(raised, storage_errors)
            if error is None:
                raise
            # the database went away mid-trial (Optuna may raise its own error while failing the trial)
            number = objective.trial.number if objective.trial is not None else "?"
            raise WorkerError(
                f"lost the storage {hidden_password(search.storage_url)} during trial {number} "
                f"({scrub_password(one_line(error, first_line=True), search.storage_url)}); run the command "
                f"again once it is back: the trial "
                f"is retried from its last checkpoint after 2 x --heartbeat seconds"
            ) from None
        ran += 1
    return ran


class WorkerError(RuntimeError):
    """The worker cannot go on (a lost database, a full disk): one line, exit status 1."""


def _storage_errors() -> tuple[type[BaseException], ...]:
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import SQLAlchemyError

    return (StorageInternalError, SQLAlchemyError)


def _from_storage(error: BaseException | None, storage_errors: tuple[type[BaseException], ...]) -> BaseException | None:
    """The database's error that ``error`` was raised from or while handling (or is), if any."""
    seen = set()
    found = None
    while error is not None and id(error) not in seen:
        if isinstance(error, storage_errors):
            found = error  # the deepest: the driver's own words (connection refused, ...)
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return found


def launch_workers(search: Search) -> int:
    """Run ``--workers`` workers of this command on this machine: this process and
    ``--workers - 1`` subprocesses started first, all in one study.

    :return: 0 when all succeeded, else the first non-zero exit status.
    """
    open_study(search)  # create it once, before the workers race to
    command, env = worker_command(search)
    processes = [subprocess.Popen(command, env=env) for _ in range(search.options.workers - 1)]
    try:
        run_worker(search)
        statuses = [process.wait() for process in processes]
    except BaseException:  # Ctrl-C (it reached the workers too) or this worker's error: none runs on unseen
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # they queue their running trials again
        for process in processes:
            process.wait()
        raise
    return next((status for status in statuses if status), 0)


def worker_command(search: Search) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a worker that :func:`launch_workers` starts: the
    storage URL (and so its password) in ``$FW_SEARCH_STORAGE``, never in the command line."""
    options = dataclasses.replace(search.options, workers=1, study=search.study_name, storage=None,
                                  storage_from_env=True, report=False)  # fmt: skip
    train_fields = [f.name for f in dataclasses.fields(search.train) if f.name not in TRIAL_FIELDS]
    argv = [*config_to_argv(options), *config_to_argv(search.train, train_fields)]
    return [sys.executable, "-m", "fw_agents.search", *argv], {**os.environ, STORAGE_ENV: search.storage_url}


# ---------------------------------------------------------------------------- the CLI
def build_parser() -> argparse.ArgumentParser:
    """The search's flags and every ``TrainConfig`` flag but the searched and per-trial ones."""
    p = OneLineArgumentParser(prog="python -m fw_agents.search", description=__doc__, formatter_class=HelpFormatter)
    search_fields = add_config_arguments(p.add_argument_group("search"), SearchOptions)
    train_fields = add_config_arguments(
        p.add_argument_group("every trial (fw_agents.config.TrainConfig)"), TrainConfig, exclude=TRIAL_FIELDS,
        defaults=dict(gif_episodes=0),
    )  # fmt: skip
    p.set_defaults(search_fields=search_fields, train_fields=train_fields)
    return p


def parse_search(argv: Sequence[str] | None = None) -> Search:
    """The :class:`Search` the command line asks for, validated."""
    args = build_parser().parse_args(argv)
    options = config_from_args(SearchOptions, args, args.search_fields)
    options.validate()
    if options.storage_from_env:
        options = dataclasses.replace(options, storage=storage_from_env(), storage_from_env=False)
    search = Search(
        options,
        config_from_args(TrainConfig, args, args.train_fields, progress_bar=False),
    )
    search.validate()
    return search


def _main(argv: Sequence[str] | None) -> int:
    search = parse_search(argv)
    if search.options.report_only:
        return _report(search)

    def interrupt(signum: int, frame: object) -> None:  # SIGTERM (schedulers, `timeout`) acts as Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    start = time.perf_counter()
    try:
        if search.options.workers > 1:
            status = launch_workers(search)
        else:
            run_worker(search)
            status = 0
    except KeyboardInterrupt:
        return 130
    except (OSError, WorkerError) as error:  # a full disk, a read-only --runs-root, a lost database
        where = f" ({error.filename})" if isinstance(error, OSError) and error.filename else ""
        text = (error.strerror or str(error)) if isinstance(error, OSError) else str(error)
        print(f"error: {text}{where}; the search stopped, finished trials are in the study", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    study = open_study(search)
    if search.options.report:  # once per command: not by the workers that --workers started
        print(f"workers done in {time.perf_counter() - start:.0f}s")
        _report(search, study)  # with the summary line (summary_text)
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    # only once nothing is left that may still complete: another worker's RUNNING trial (a sibling
    # of --workers, or another machine's) or a queued retry is not a failure of this command
    unfinished = any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
    if trials and not unfinished and not any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials):
        failed = [t for t in trials if t.state == TrialState.FAIL and "error" in t.user_attrs]
        reason = f" (trial {failed[-1].number}: {failed[-1].user_attrs['error']})" if failed else ""
        print(f"error: no trial of study {study.study_name} has completed{reason}", file=sys.stderr)
        return status or 1
    return status


def _report(search: Search, study: optuna.Study | None = None) -> int:
    """Print the study's report (the trials table and the best trial) and write it with its
    figure into ``<runs-root>/search`` (``--report-only``: the study must exist)."""
    if study is None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        try:
            study = optuna.load_study(study_name=search.study_name, storage=open_storage(search.storage_url, 60))
        except KeyError:
            raise ValueError(f"no study {search.study_name!r} in {hidden_password(search.storage_url)}") from None
    folder = Path(search.train.runs_root) / "search"
    print(write_report(study, folder), end="")
    print(f"report: {folder / f'{study.study_name}_report.md'}, {folder / f'{study.study_name}_best_curves.png'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
