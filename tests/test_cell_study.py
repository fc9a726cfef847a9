"""fw_agents.cell_study: a grid of cells as enqueued trials of one study, each run once."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from fw_agents.cell_study import cell_records, enqueue_cells, open_cell_study, run_cells, runs_per_cell

CELLS = {f"t/m/seed{k}": {"seed": k} for k in range(3)}


@pytest.fixture
def study(tmp_path):
    return open_cell_study(f"sqlite:///{tmp_path / 'cells.db'}", "grid", 60)


def _run(key, job):
    return {"status": "ok", "seed": job["seed"], "final": job["seed"] / 10}


def test_a_doubly_enqueued_cell_runs_once_the_copy_pruned(study):
    assert enqueue_cells(study, CELLS) == (3, 0)
    for key, job in CELLS.items():  # what two commands enqueueing at the same instant can leave
        study.enqueue_trial({}, user_attrs=dict(cell=key, job=job, rerun_error=False))
    ran = []
    assert run_cells(study, lambda key, job: ran.append(key) or _run(key, job), 1, lambda r: r["final"]) == 3
    assert sorted(ran) == sorted(CELLS)
    assert runs_per_cell(study) == dict.fromkeys(CELLS, 1)
    copies = [t for t in study.get_trials() if t.number >= 3]
    assert [t.state for t in copies] == [TrialState.PRUNED] * 3
    assert [t.user_attrs["duplicate_of"] for t in copies] == [0, 1, 2]
    assert cell_records(study)["t/m/seed2"] == {"status": "ok", "seed": 2, "final": 0.2}
    assert study.get_trials()[2].value == pytest.approx(0.2)


def test_an_error_is_rerun_only_when_asked(study):
    enqueue_cells(study, CELLS)
    run_cells(study, lambda key, job: {"status": "error", "error": "boom"} if key.endswith("1") else _run(key, job), 1)
    assert enqueue_cells(study, CELLS) == (0, 0)
    assert enqueue_cells(study, CELLS, rerun_errors=True) == (1, 0)
    assert run_cells(study, _run, 1) == 1
    assert cell_records(study)["t/m/seed1"]["status"] == "ok"  # the latest record
    assert enqueue_cells(study, CELLS, rerun_errors=True) == (0, 0)


def test_ctrl_c_queues_the_running_cell_again(study):
    enqueue_cells(study, {"t/m/seed0": {"seed": 0}})

    def interrupted(key, job):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_cells(study, interrupted, 1)
    failed, retry = study.get_trials()
    assert failed.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert retry.user_attrs["cell"] == "t/m/seed0"
    assert run_cells(study, _run, 1) == 1 and runs_per_cell(study) == {"t/m/seed0": 1}


def test_a_worker_with_an_empty_queue_creates_no_trial(study):
    assert run_cells(study, _run, 1) == 0
    assert study.get_trials() == []
    assert isinstance(study, optuna.Study)


def test_a_copy_claimed_while_its_cell_runs_elsewhere_is_pruned(tmp_path, study):
    """Trial 0 of a cell runs (worker A) when another worker claims trial 1, a second copy of the
    same cell: the copy sees the lower-numbered running trial and is pruned without running."""
    from fw_agents.cell_study import CellObjective

    enqueue_cells(study, {"t/m/seed0": {"seed": 0}})
    study.enqueue_trial({}, user_attrs=dict(cell="t/m/seed0", job={"seed": 0}, rerun_error=False))
    other_worker = open_cell_study(f"sqlite:///{tmp_path / 'cells.db'}", "grid", 60)
    ran = []

    def run_while_another_claims(key, job):
        ran.append(key)
        if len(ran) == 1:
            other_worker.optimize(CellObjective(lambda k, j: ran.append(("copy", k)) or {}, lambda r: 0.0), n_trials=1)
        return _run(key, job)

    assert run_cells(study, run_while_another_claims, 1) == 1
    assert ran == ["t/m/seed0"]  # the copy never ran
    first, copy = study.get_trials()
    assert first.state == TrialState.COMPLETE and copy.state == TrialState.PRUNED
    assert copy.user_attrs["duplicate_of"] == 0
