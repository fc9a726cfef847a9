"""A grid of benchmark cells (task × model × seed, env × memory × seed) as the enqueued trials of
one shared Optuna study, so that any number of processes on any machines run one grid together.

* **Enqueue** (:func:`enqueue_cells`): every command enqueues the cells the study lacks; a cell
  with a waiting, running or complete trial is left alone, so a second command enqueues nothing.
  Two commands enqueueing at the same instant may both add a cell; the claim below runs it once.
* **Claim and run** (:func:`run_cells`): a worker takes a waiting trial through
  ``study.optimize`` (Optuna's queue: one trial is moved to RUNNING by one worker only), with
  heartbeats; a worker that dies stops sending them and, after the grace period (2 × heartbeat),
  the next worker marks its trial failed and queues a retry of the same cell
  (:mod:`fw_agents.search_storage`, as the search does). A claimed trial whose cell another
  trial already holds (complete, or running/waiting with a lower number: a doubly enqueued cell)
  is pruned without running, as a ``duplicate_of``. Workers wait while other workers' cells run,
  so that a dead one's cell is taken over, and stop when nothing waits or runs.
* **Results** (:func:`cell_records`): each cell's run record (JSON-safe) is the ``record`` user
  attribute of its complete trial; any process reads them back at any time.

Cells are identified by a ``key`` string; their definition (``job``) is a JSON-safe dict.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from fw_agents.search_storage import fail_stale_trials, open_storage, retry_callback, taken_over

if TYPE_CHECKING:
    import optuna

#: Trials in these states hold their cell (nothing is enqueued for it again).
HOLDING = ("WAITING", "RUNNING", "COMPLETE")


def json_safe(value: Any) -> Any:
    """``value`` as the storage gives it back (numpy numbers and paths as plain values/strings)."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def open_cell_study(url: str, name: str, heartbeat: int) -> optuna.Study:
    """Create or join the study ``name`` in the storage ``url`` (heartbeats every ``heartbeat`` s).

    :raises ValueError: The storage cannot be opened.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(url, heartbeat)
    return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)


def load_cell_study(url: str, name: str) -> optuna.Study | None:
    """The study ``name`` if it exists in ``url`` (no heartbeat: for reading), else None."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        return optuna.load_study(study_name=name, storage=open_storage(url, 60))
    except KeyError:  # no such study
        return None


def trials_by_cell(study: optuna.Study) -> dict[str, list[optuna.trial.FrozenTrial]]:
    """Every trial of each cell (``cell`` user attribute), by trial number."""
    cells: dict[str, list[Any]] = {}
    for trial in study.get_trials(deepcopy=False):
        if "cell" in trial.user_attrs:
            cells.setdefault(trial.user_attrs["cell"], []).append(trial)
    return {key: sorted(trials, key=lambda t: t.number) for key, trials in cells.items()}


def _counts(record: dict[str, Any] | None) -> bool:
    """Whether a run record is a result (anything but a run that raised)."""
    return record is not None and record.get("status") != "error"


def enqueue_cells(
    study: optuna.Study,
    cells: dict[str, dict[str, Any]],
    local_record: Callable[[str], dict[str, Any] | None] = lambda key: None,
    rerun_errors: bool = False,
    value: Callable[[dict[str, Any]], float] = lambda record: 0.0,
) -> tuple[int, int]:
    """Enqueue the ``cells`` the study does not hold yet.

    :param study: The grid's study.
    :param cells: key -> the cell's job (JSON-safe).
    :param local_record: key -> a finished record of the cell found on this machine (its JSON),
        or None: such a cell is recorded in the study as complete (imported) instead of run.
    :param rerun_errors: Enqueue again the cells whose latest record is an error.
    :param value: A record's objective value (what the dashboard shows).
    :return: (cells enqueued, cells imported from local records).
    """
    import optuna
    from optuna.trial import TrialState

    held = trials_by_cell(study)
    enqueued = imported = 0
    for key, job in cells.items():
        trials = [t for t in held.get(key, []) if t.state.name in HOLDING]
        complete = [t for t in trials if t.state == TrialState.COMPLETE and "record" in t.user_attrs]
        rerun = rerun_errors and bool(complete) and not _counts(complete[-1].user_attrs["record"])
        if trials and not (rerun and len(trials) == len(complete)):
            continue
        record = None if rerun else local_record(key)
        if record is not None and not (rerun_errors and not _counts(record)):
            attrs = dict(cell=key, job=json_safe(job), record=json_safe(record), imported=True)
            study.add_trial(optuna.create_trial(state=TrialState.COMPLETE, value=value(record), user_attrs=attrs))
            imported += 1
            continue
        study.enqueue_trial({}, user_attrs=dict(cell=key, job=json_safe(job), rerun_error=rerun))
        enqueued += 1
    return enqueued, imported


def _duplicate_of(trial: optuna.Trial, key: str) -> int | None:
    """The number of another trial that holds ``key``'s cell before ``trial`` does, if any: a
    complete one with a result (or an error when ``trial`` is no error rerun), or a running or
    waiting one with a lower number (the lowest claimed trial of a doubly enqueued cell runs)."""
    from optuna.trial import TrialState

    rerun = trial.user_attrs.get("rerun_error", False)
    for other in trials_by_cell(trial.study).get(key, []):
        if other.number == trial.number:
            continue
        if other.state == TrialState.COMPLETE and "record" in other.user_attrs:
            if _counts(other.user_attrs["record"]) or not rerun:
                return other.number
        if other.state in (TrialState.RUNNING, TrialState.WAITING) and other.number < trial.number:
            return other.number
    return None


class CellObjective:
    """One claimed trial: run its cell (``run_cell(key, job) -> record``) and store the record."""

    def __init__(self, run_cell: Callable[[str, dict[str, Any]], dict[str, Any]],
                 value: Callable[[dict[str, Any]], float]) -> None:  # fmt: skip
        self.run_cell, self.value = run_cell, value
        self.trial: optuna.Trial | None = None
        self.ran: str | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        self.trial, self.ran = trial, None
        key = trial.user_attrs.get("cell")
        if key is None:  # the queue emptied between the look and the claim: Optuna made a fresh trial
            trial.set_user_attr("no_cell", True)
            raise optuna.TrialPruned("no cell was waiting")
        duplicate = _duplicate_of(trial, key)
        if duplicate is not None:
            trial.set_user_attr("duplicate_of", duplicate)
            raise optuna.TrialPruned(f"cell {key} is trial {duplicate}'s")
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        record = json_safe(self.run_cell(key, trial.user_attrs["job"]))
        trial.set_user_attr("record", record)
        self.ran = key
        return float(self.value(record))


def pending_cells(study: optuna.Study) -> tuple[int, int]:
    """(waiting, running) trials of the study."""
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))]
    return states.count(TrialState.WAITING), states.count(TrialState.RUNNING)


def run_cells(
    study: optuna.Study,
    run_cell: Callable[[str, dict[str, Any]], dict[str, Any]],
    heartbeat: int,
    value: Callable[[dict[str, Any]], float] = lambda record: 0.0,
    on_done: Callable[[str, dict[str, Any]], None] = lambda key, record: None,
) -> int:
    """Take and run the study's waiting cells until none waits or runs (a worker).

    :param study: The grid's study, opened with heartbeats (:func:`open_cell_study`).
    :param run_cell: ``(key, job) -> record`` (JSON-safe after :func:`json_safe`).
    :param heartbeat: The heartbeat interval (s): how often an idle worker looks again.
    :param value: A record's objective value.
    :param on_done: Called with each cell this worker ran and its record.
    :return: The number of cells this worker ran.
    """
    objective = CellObjective(run_cell, value)
    ran = 0
    while True:
        fail_stale_trials(study)  # a dead worker's cell is queued again after the grace period
        waiting, running = pending_cells(study)
        if not waiting:
            if not running:
                return ran
            time.sleep(min(heartbeat, 5))  # another worker's cell runs: take it over if that worker dies
            continue
        try:
            study.optimize(objective, n_trials=1)
        except KeyboardInterrupt:
            _queue_again(study, objective.trial)
            raise
        except Exception as raised:
            if objective.trial is None or not taken_over(raised, study, objective.trial):
                raise
            print(f"cell {objective.trial.user_attrs.get('cell')} was taken over by another worker (this one was "
                  f"silent for 2 x {heartbeat}s)", file=sys.stderr)  # fmt: skip
            continue
        if objective.ran is not None:
            ran += 1
            frozen = study.get_trials(deepcopy=False)[objective.trial.number]
            on_done(objective.ran, frozen.user_attrs["record"])


def _queue_again(study: optuna.Study, trial: optuna.Trial | None) -> None:
    """After Ctrl-C: queue the interrupted trial's cell again at once (as if its heartbeat stopped)."""
    from optuna.trial import TrialState

    if trial is None:
        return
    frozen = study.get_trials(deepcopy=False)[trial.number]
    if frozen.state == TrialState.FAIL:
        retry_callback()(study, frozen)


def cell_records(study: optuna.Study, keys: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Each cell's record: that of its latest complete trial (``keys``: only these cells)."""
    from optuna.trial import TrialState

    wanted = None if keys is None else set(keys)
    records = {}
    for key, trials in trials_by_cell(study).items():
        done = [t for t in trials if t.state == TrialState.COMPLETE and "record" in t.user_attrs]
        if done and (wanted is None or key in wanted):
            records[key] = done[-1].user_attrs["record"]
    return records


def runs_per_cell(study: optuna.Study) -> dict[str, int]:
    """How many trials actually ran each cell (complete ones, imported ones excluded): 1 each when
    nothing went wrong; a cell whose worker died also has a failed trial, not counted here."""
    from optuna.trial import TrialState

    return {
        key: sum(t.state == TrialState.COMPLETE and "record" in t.user_attrs and not t.user_attrs.get("imported")
                 for t in trials)
        for key, trials in trials_by_cell(study).items()
    }  # fmt: skip


def launch_cell_workers(worker: Callable[..., int], worker_args: tuple[Any, ...], workers: int,
                        study: optuna.Study) -> None:  # fmt: skip
    """Run ``workers`` workers on this machine: this process and ``workers - 1`` spawned ones
    (no more than cells wait), each ``worker(*worker_args)`` (a module-level function that opens
    the study and calls :func:`run_cells`). Ctrl-C reaches them all: each queues its cell again.

    :param worker: The worker's function (picklable: defined at a module's top level).
    :param worker_args: Its arguments.
    :param workers: Processes on this machine.
    :param study: The study (to see whether anything is left).
    """
    import multiprocessing

    waiting, running = pending_cells(study)
    if not waiting and not running:
        return
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=worker, args=worker_args) for _ in range(min(workers, max(waiting, 1)) - 1)]
    for process in processes:
        process.start()
    try:
        worker(*worker_args)
    finally:
        for process in processes:
            process.join()
