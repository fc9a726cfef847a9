"""benchmarks/memory_suite.py: normalisation, AUC, the report, argument checks and one tiny run."""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE_PATH = ROOT / "benchmarks" / "memory_suite.py"


@pytest.fixture(scope="module")
def suite():
    """The benchmark module (benchmarks/ is not a package), registered as ``memory_suite``; its
    sibling modules (suite_tasks, suite_report) import from benchmarks/ on the path."""
    sys.path.insert(0, str(SUITE_PATH.parent))
    spec = importlib.util.spec_from_file_location("memory_suite", SUITE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["memory_suite"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("memory_suite", None)
    sys.path.remove(str(SUITE_PATH.parent))


def _record(task, model, seed, final=0.0, status="ok", wall=10.0, timesteps=1000, curve=((500, 1000), (0.0, 0.0))):
    record = dict(task=task, model=model, seed=seed, timesteps=timesteps, status=status, command="python x")
    if status == "ok":
        record.update(final_return=final, wall_time_s=wall, trained_steps=timesteps,
                      curve_steps=list(curve[0]), curve_returns=list(curve[1]))  # fmt: skip
    else:
        record["error"] = "TypeError: input_size should be of type int, got: int64"
    return record


def _write(out: Path, record: dict) -> None:
    path = out / "runs" / record["task"] / record["model"] / f"seed{record['seed']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_tables_cover_every_task(suite):
    assert set(suite.BUDGETS) == set(suite.TASKS) == set(suite.RETURN_BOUNDS)
    assert all(high > low for low, high in suite.RETURN_BOUNDS.values())


def test_normalise(suite):
    np.testing.assert_allclose(suite.normalise("CatchBlind16", [-1.0, 0.0, 1.0]), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(suite.normalise("RepeatFirstEasy", -1.0), 0.0)
    np.testing.assert_allclose(suite.normalise("PositionOnlyCartPoleEasy", [0.0, 0.25, 1.0]), [0.0, 0.25, 1.0])


def test_area_under_curve(suite):
    # Raw Catch returns rising linearly from -1 to 1: normalised k/20 on the grid k/20 * budget.
    auc = suite.area_under_curve("CatchBlind16", [0, 2000], [-1.0, 1.0], 2000)
    assert auc == pytest.approx(np.mean(np.arange(1, 21) / 20))
    # Held constant past the curve's ends; the grid follows the budget, not the points.
    assert suite.area_under_curve("CatchBlind16", [1000], [0.0], 4000) == pytest.approx(0.5)
    assert np.isnan(suite.area_under_curve("CatchBlind16", [], [], 1000))


@pytest.mark.slow
def test_report(suite, tmp_path):
    catch, cart = "CatchBlind16", "PositionOnlyCartPoleEasy"
    for seed, final in enumerate([0.0, 1.0]):  # normalised 0.5, 1.0
        _write(tmp_path, _record(catch, "fastweights", seed, final, wall=20.0, curve=((1000,), (1.0,))))
        _write(tmp_path, _record(catch, "stock-lstm", seed, -1.0, wall=60.0))  # normalised 0
        _write(tmp_path, _record(cart, "fastweights", seed, 0.2))
        _write(tmp_path, _record(cart, "stock-lstm", seed, status="cannot build"))
    text = suite.write_report(tmp_path, "python benchmarks/memory_suite.py --report-only")
    assert text == (tmp_path / "memory_suite.md").read_text()
    assert (tmp_path / "memory_suite.png").stat().st_size > 0
    assert not list(tmp_path.glob(".*tmp")) and not list(tmp_path.glob(".*.png"))  # atomic writes cleaned up
    lines = text.splitlines()
    assert lines[2] == "Command: `python benchmarks/memory_suite.py --report-only`"
    assert "Runs made by: `python x`" in text
    final, auc, wall = (text.split("\n## ")[i] for i in (1, 2, 3))
    assert "| task | steps | fastweights | stock-lstm |" in final
    assert f"| {cart} | 1,000 | **0.200 ± 0.000** | cannot build |" in final  # tasks in TASKS order
    assert f"| {catch} | 1,000 | **0.750 ± 0.250** | 0.000 ± 0.000 |" in final
    assert "| **mean** | | **0.750** | 0.000 |" in final  # only CatchBlind16 has every model
    assert f"left out: {cart}" in text
    assert f"| {catch} | 1,000 | **1.000 ± 0.000** | 0.500 ± 0.000 |" in auc
    assert "| **mean** | | **20.0 s** | 60.0 s |" in wall
    assert "cannot build: TypeError: input_size" in text  # listed under "Runs without results"


def test_report_without_runs(suite, tmp_path):
    with pytest.raises(ValueError, match="no runs"):
        suite.write_report(tmp_path, "cmd")


def _status(suite, argv, capsys):
    try:
        status = suite.run_cli(suite.main, argv)
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--tasks", "CatchBlind16", "Nope"], "'Nope'; choose from RepeatPreviousEasy"),
        (["--tasks", "CatchBlind16", "--models", "lstm", "transformer"], "'transformer'; choose from fastweights"),
        (["--fast-variant", 'eta={"fast_share": 2.0'], "invalid JSON"),
        (["--fast-variant", "eta"], "LABEL=JSON"),
        (["--fast-variant", 'a/b={"fast_share": 2.0}'], "LABEL=JSON"),
        (["--fast-variant", "eta=[2.0]"], "must be an object"),
        (["--fast-variant", 'eta={"fast_share": 2.0, "nope": 1}'], "nope"),
        (["--fast-variant", 'eta={"decay": 1.5}'], "decay"),
        (["--fast-variant", 'a={"decay": 0.9}', "--fast-variant", 'a={"decay": 0.8}'], "distinct"),
        (["--workers", "0"], "--workers"),
        (["--budget-scale", "-1"], "--budget-scale"),
        (["--seeds", "x"], "--seeds"),
    ],
)
def test_bad_arguments(suite, capsys, argv, needle):
    status, err = _status(suite, [*argv, "--out", "/nonexistent/never"], capsys)
    assert status == 2
    assert err.count("\n") == 1 and needle in err, err


def test_bad_argument_subprocess_is_one_line():
    result = subprocess.run([sys.executable, str(SUITE_PATH), "--models", "nope"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown model 'nope'") and result.stderr.count("\n") == 1


def test_popgym_missing(suite, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "popgym", None)  # `import popgym` raises ImportError
    status, err = _status(suite, ["--tasks", "RepeatFirstEasy", "--out", "/nonexistent/never"], capsys)
    assert status == 2 and err == "error: popgym is not installed; pip install -e '.[bench]'\n"


def test_models_and_variants(suite):
    name, kwargs = suite.parse_variant('eta2={"fast_share": 2.0}')
    assert (name, kwargs) == ("fastweights[eta2]", {"fast_share": 2.0})
    assert suite.resolve_models(None, {name: kwargs}) == [*suite.MODELS, name]
    assert suite.resolve_models(["lstm"], {name: kwargs}) == ["lstm", name]
    tasks = suite.resolve_tasks(["CatchBlind16-v0", "CatchBlind16", "RepeatFirstEasy"])  # ids accepted, once each
    assert tasks == ["CatchBlind16", "RepeatFirstEasy"]


def test_variants_of_any_core_carry_their_options_and_bad_ones_are_refused(suite):
    cores = [m for m in suite.MODELS if m != suite.STOCK]
    name, kwargs = suite.parse_model_variant('gru[mlp64]={"policy": {"net_arch": [64]}}', cores)
    assert (name, kwargs) == ("gru[mlp64]", {"policy": {"net_arch": [64]}})
    args = argparse.Namespace(seeds=[0], timesteps=100, budget_scale=1.0, hidden_size=8, eval_episodes=3)
    job = suite.make_cells(args, ["CatchBlind16"], [name], {name: kwargs}, "cmd")["CatchBlind16/gru[mlp64]/seed0"]
    assert job["memory_kwargs"] == {} and job["policy_options"] == {"net_arch": [64]}
    assert suite.policy_kwargs(suite.Job(**job, path="")) == dict(memory="gru", hidden_size=8, memory_kwargs={},
                                                                   net_arch=[64])  # fmt: skip
    assert suite.parse_model_variant('fastweights[e2]={"fast_share": 2.0}', cores)[0] == "fastweights[e2]"
    for text, needle in [
        ('stock-lstm[x]={}', "MEMORY one of fastweights, lstm, gru, irnn"),
        ('gru[x]{}', "expected MEMORY[LABEL]=JSON"),
        ('gru[x/y]={}', "LABEL of letters"),
        ('gru[x]={"decay": 0.9}', "decay"),  # a fast-weights option on the GRU core
        ('lstm[x]=[1]', "must be an object of lstm options"),
    ]:
        with pytest.raises(ValueError, match=re.escape(needle)) as error:
            suite.parse_model_variant(text, cores)
        assert repr(text) in str(error.value)  # the value as the user typed it


def test_cells_are_enqueued_once_and_local_jsons_recorded_without_running(suite, tmp_path):
    from fw_agents.cell_study import cell_records, enqueue_cells, open_cell_study, runs_per_cell

    args = argparse.Namespace(seeds=[0, 1], timesteps=None, budget_scale=0.5, hidden_size=8, eval_episodes=3)
    cells = suite.make_cells(args, ["CatchBlind16"], ["lstm", "gru"], {}, "cmd")
    assert list(cells) == ["CatchBlind16/lstm/seed0", "CatchBlind16/gru/seed0", "CatchBlind16/lstm/seed1",
                           "CatchBlind16/gru/seed1"]  # seed by seed  # fmt: skip
    assert cells["CatchBlind16/gru/seed0"]["timesteps"] == round(suite.BUDGETS["CatchBlind16"] * 0.5)
    assert "path" not in cells["CatchBlind16/gru/seed0"]  # each machine writes under its own --out
    _write(tmp_path, _record("CatchBlind16", "lstm", 0, timesteps=suite.BUDGETS["CatchBlind16"] // 2))
    _write(tmp_path, _record("CatchBlind16", "gru", 1, status="error"))
    local = functools.partial(suite.local_record, tmp_path, cells)
    study = open_cell_study(f"sqlite:///{tmp_path / 'suite.db'}", "s", 60)
    assert enqueue_cells(study, cells, local) == (2, 2)  # the JSONs recorded as they are, the others queued
    assert enqueue_cells(study, cells, local) == (0, 0)  # a second command enqueues nothing
    assert set(cell_records(study)) == {"CatchBlind16/lstm/seed0", "CatchBlind16/gru/seed1"}
    assert runs_per_cell(study)["CatchBlind16/lstm/seed0"] == 0  # recorded, not run
    assert enqueue_cells(study, cells, local, rerun_errors=True) == (1, 0)  # the error, queued again
    assert enqueue_cells(study, cells, local, rerun_errors=True) == (0, 0)


def test_build_job_model_uses_policy_defaults_unless_a_variant(suite, one_thread):
    default = suite.Job("CatchBlind16", "fastweights", 0, 64, "x", hidden_size=8)
    variant = suite.Job("CatchBlind16", "fastweights[eta2]", 0, 64, "x", hidden_size=8, memory_kwargs={"fast_share": 2.0})
    assert suite.policy_kwargs(default) == dict(memory="fastweights", hidden_size=8)  # the policy's own defaults
    assert suite.policy_kwargs(variant) == dict(memory="fastweights", hidden_size=8, memory_kwargs={"fast_share": 2.0})
    env = suite.make_task_env("CatchBlind16", 2, 0)
    try:
        default = suite.build_job_model(default, env)
        assert default.policy.memory == "fastweights"
        assert suite.build_job_model(variant, env).policy.memory_kwargs["fast_share"] == 2.0
        stock = suite.build_job_model(suite.Job("CatchBlind16", "stock-lstm", 0, 64, "x", hidden_size=8), env)
        assert stock.policy.lstm_actor.hidden_size == 8
        assert default.n_steps == stock.n_steps == suite.ppo_settings()["n_steps"]
        # the minibatch train_agent.py trains with, never None (SB3 would take the whole rollout)
        from fw_agents.config import TrainConfig

        assert default.batch_size == stock.batch_size == TrainConfig().minibatch_size == 256
    finally:
        env.close()


def test_tiny_run_writes_its_json(suite, tmp_path, one_thread):
    path = tmp_path / "runs" / "CatchBlind16" / "fastweights" / "seed0.json"
    job = suite.Job("CatchBlind16", "fastweights", 0, 512, str(path), hidden_size=16, eval_episodes=4)
    record = suite.run_job(job)
    assert record["status"] == "ok", record.get("error")
    assert json.loads(path.read_text()) == record
    assert record["trained_steps"] >= 512 and record["wall_time_s"] > 0
    assert len(record["curve_steps"]) == len(record["curve_returns"]) >= 1
    assert len(record["eval_returns"]) == 4 and 0.0 <= record["final_normalised"] <= 1.0
    assert 0.0 <= record["auc"] <= 1.0 and record["memory_kwargs"] is None
    assert isinstance(record["core_options"], dict)  # what the policy's defaults resolved to
    assert [p.name for p in path.parent.iterdir()] == ["seed0.json"]


def test_stock_lstm_cannot_build_on_multidiscrete(suite, tmp_path, one_thread):
    pytest.importorskip("popgym")
    path = tmp_path / "seed0.json"
    record = suite.run_job(suite.Job("CountRecallEasy", "stock-lstm", 0, 64, str(path), hidden_size=8, eval_episodes=2))
    assert record["status"] == "cannot build" and "input_size" in record["error"]
    assert json.loads(path.read_text())["status"] == "cannot build"


@pytest.mark.slow
def test_cli_runs_in_a_worker_and_resumes(suite, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(SUITE_PATH.parent))  # the spawned worker imports memory_suite by name
    argv = ["--tasks", "CatchBlind16", "--models", "irnn", "--seeds", "0", "--timesteps", "256", "--hidden-size", "8",
            "--eval-episodes", "2", "--workers", "1", "--out", str(tmp_path)]  # fmt: skip
    assert suite.main(argv) == 0
    out = capsys.readouterr().out
    assert "1 runs to do" in out and "CatchBlind16 irnn seed 0: ok" in out
    assert json.loads((tmp_path / "runs" / "CatchBlind16" / "irnn" / "seed0.json").read_text())["status"] == "ok"
    assert (tmp_path / "memory_suite.md").is_file() and (tmp_path / "memory_suite.png").is_file()
    assert suite.main(argv) == 0  # finished: skipped
    assert "0 runs to do" in capsys.readouterr().out
    assert suite.main(["--report-only", "--out", str(tmp_path)]) == 0
    assert "| CatchBlind16 | 256 |" in capsys.readouterr().out


def test_popgym_games_that_answer_the_previous_action_observe_it(suite):
    """MineSweeper and Concentration as POPGym runs them: PreviousAction + Flatten, so the
    observation is one flat one-hot Box holding the last action; other games are untouched."""
    pytest.importorskip("popgym")
    from gymnasium import spaces

    mines = suite.make_task_env("MineSweeperEasy", 2, 0)
    assert isinstance(mines.observation_space, spaces.Box) and mines.observation_space.shape == (3 + 4 + 4,)
    mines.reset()
    obs, *_ = mines.step(np.array([[1, 2], [3, 0]]))
    np.testing.assert_array_equal(obs[:, 3:], [[0, 1, 0, 0, 0, 0, 1, 0], [0, 0, 0, 1, 1, 0, 0, 0]])
    assert isinstance(suite.make_task_env("RepeatFirstEasy", 2, 0).observation_space, spaces.Discrete)


def test_report_checks_the_target_against_the_stock_lstm(suite):
    task = "RepeatFirstEasy"
    runs = {
        (task, "fastweights"): [_record(task, "fastweights", s, final=f) for s, f in enumerate((0.2, 0.4))],
        (task, "stock-lstm"): [_record(task, "stock-lstm", s, final=f) for s, f in enumerate((0.5, 0.9))],
        ("CountRecallEasy", "fastweights"): [_record("CountRecallEasy", "fastweights", 0, final=0.0)],
        ("CountRecallEasy", "stock-lstm"): [_record("CountRecallEasy", "stock-lstm", 0, status="cannot build")],
    }
    lines = suite.target_check(runs, [task, "CountRecallEasy"])
    # normalised: fast 0.6, 0.7 (mean 0.65); stock 0.75, 0.95 (mean 0.85, std 0.1): bar 0.75
    assert f"| {task} | 0.650 | 0.750 | **no** |" in lines
    assert "| CountRecallEasy | 0.500 | stock cannot run | — |" in lines
    assert "| mean of 1 tasks | 0.650 | 0.850 (stock's mean) | **no** |" in lines
    runs[(task, "fastweights")] = [_record(task, "fastweights", 0, final=0.5)]
    assert f"| {task} | 0.750 | 0.750 | yes |" in suite.target_check(runs, [task])


def _suite_runs(suite, out, seeds, scale):
    """fastweights and stock-lstm on RepeatFirst and CatchBlind16 (stock cannot build on
    CountRecall) at ``scale`` of the budgets; final raw returns vary with the seed."""
    finals = {}
    for task in ("RepeatFirstEasy", "CountRecallEasy", "CatchBlind16"):
        for model in ("fastweights", "stock-lstm"):
            for seed in seeds:
                status = "cannot build" if (task, model) == ("CountRecallEasy", "stock-lstm") else "ok"
                final = -0.9 + 0.3 * seed + (0.5 if model == "fastweights" else 0.0) + (0.1 if task == "CatchBlind16" else 0)
                finals[(task, model, seed)] = final
                _write(out, _record(task, model, seed, final, status=status, timesteps=suite.budget(task, scale)))
    return finals


def test_report_with_one_seed_leaves_the_target_out_and_says_why(suite, tmp_path):
    _suite_runs(suite, tmp_path, [0], 0.2)
    text = suite.write_report(tmp_path, "cmd", reps=100)
    assert "## Target" not in text and "| met |" not in text
    assert ("Target check (fast weights against the stock LSTM) left out: RepeatFirstEasy / fastweights has 1; "
            "RepeatFirstEasy / stock-lstm has 1; CatchBlind16 / fastweights has 1; CatchBlind16 / stock-lstm has 1 "
            "seed(s); it needs ≥ 3 seeds per compared cell and every run at budget scale 1 or 0.2.") in text


def test_report_with_three_seeds_at_other_budgets_leaves_the_target_out(suite, tmp_path):
    _suite_runs(suite, tmp_path, [0, 1, 2], 0.5)
    text = suite.write_report(tmp_path, "cmd", reps=100)
    assert "## Target" not in text
    assert "left out: RepeatFirstEasy / fastweights ran 200,000 steps, not 400,000 or 80,000;" in text


def test_report_with_three_seeds_at_scale_02_checks_the_target_and_gives_iqms(suite, tmp_path):
    import scipy.stats

    finals = _suite_runs(suite, tmp_path, [0, 1, 2], 0.2)
    _write(tmp_path, _record("CatchBlind16", "fastweights", 3, 1.0, timesteps=suite.budget("CatchBlind16", 0.2)))
    text = suite.write_report(tmp_path, "cmd", reps=200)
    target = text.split("## Target: fast weights (defaults) against the stock LSTM\n\nRule: ")[1]
    assert target.startswith("on each task, fast weights' mean final normalised return ≥ the stock LSTM's mean − 1 std")
    assert "budget scale 0.2)." in target and "| CountRecallEasy | 0.450 | stock cannot run | — |" in target
    iqm = text.split("## Interquartile mean over tasks × seeds (rliable)")[1].split("\n## ")[0]
    assert "Over the 2 tasks every model has results for (left out: CountRecallEasy), seeds 0, 1, 2:" in iqm
    for model in ("fastweights", "stock-lstm"):  # the IQM over the common tasks, against scipy's trimmed mean
        common = [suite.normalise(t, finals[(t, model, s)]) for t in ("RepeatFirstEasy", "CatchBlind16") for s in range(3)]
        assert f"| {model} | {scipy.stats.trim_mean(common, 0.25):.3f} [" in iqm
    own = [suite.normalise(t, finals[(t, "fastweights", s)]) for t in suite.TASKS if t != "RepeatPreviousEasy"
           for s in range(3) if (t, "fastweights", s) in finals]  # fmt: skip
    assert f"| fastweights | 3 | 0, 1, 2 | {scipy.stats.trim_mean(own, 0.25):.3f} [" in iqm
    assert "| stock-lstm | 2 | 0, 1, 2 |" in iqm
    assert "Runs left out so that every task has the same seeds: CatchBlind16 / fastweights / seed 3." in iqm
    assert "![performance profile](memory_suite_profile.png)" in iqm
    assert (tmp_path / "memory_suite_profile.png").read_bytes().startswith(b"\x89PNG")


def test_curves_legend_stays_inside_the_figure_with_one_task(suite):
    import matplotlib.pyplot as plt

    models = [*suite.MODELS, "fastweights[a-long-variant-label]"]
    runs = {("CatchBlind16", m): [_record("CatchBlind16", m, 0, curve=((500, 1000), (-1.0, 0.5)))] for m in models}
    fig = sys.modules["suite_report"].curves_figure(runs, ["CatchBlind16"], models)
    try:
        fig.canvas.draw()
        (legend,) = fig.legends
        box, frame = legend.get_window_extent(), fig.bbox
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        axes_box = fig.axes[0].get_tightbbox()
        assert box.y1 <= axes_box.y0 + 1  # below the subplot, not over it
    finally:
        plt.close(fig)


# ------------------------------------------------------- many workers on one study
#: 2 tasks × 2 models × 1 seed, a second or so per run.
SHARED = ["--tasks", "CatchBlind16", "RepeatFirstEasy", "--models", "irnn", "lstm", "--seeds", "0", "1",
          "--timesteps", "256", "--hidden-size", "8", "--eval-episodes", "2", "--bootstrap-reps", "100"]  # fmt: skip


def suite_command(*argv: str) -> list[str]:
    return [sys.executable, str(SUITE_PATH), *argv]


def command_env() -> dict[str, str]:
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _study(url: str, name: str = "memory_suite"):
    import optuna

    return optuna.load_study(study_name=name, storage=url)


def _each_cell_ran_once(study, cells: int) -> None:
    from fw_agents.cell_study import cell_records, runs_per_cell

    assert runs_per_cell(study) == {key: 1 for key in cell_records(study)} and len(cell_records(study)) == cells
    assert all(record["status"] == "ok" for record in cell_records(study).values())


@pytest.mark.slow
def test_two_local_workers_share_one_sqlite_study(tmp_path):
    pytest.importorskip("popgym")
    out = tmp_path / "out"
    result = subprocess.run(suite_command(*SHARED, "--workers", "2", "--out", str(out)), env=command_env(),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    study = _study(f"sqlite:///{out / 'suite.db'}")
    _each_cell_ran_once(study, 8)  # 2 tasks x 2 models x 2 seeds
    assert result.stdout.count(": ok: final") == 8  # one line per run, whichever worker ran it
    assert len(list((out / "runs").glob("*/*/seed*.json"))) == 8
    # Two workers that both saw the last cell waiting: the one that lost the claim got a fresh trial
    # from Optuna, pruned as holding no cell (cell_study.CellObjective); such claims run nothing
    trials = study.get_trials()
    assert len([t for t in trials if "cell" in t.user_attrs]) == 8
    assert all(t.user_attrs.get("no_cell") and t.state.name == "PRUNED" for t in trials if "cell" not in t.user_attrs)
    again = subprocess.run(suite_command(*SHARED, "--workers", "2", "--out", str(out)), env=command_env(),
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0 and again.stdout.startswith("0 runs to do")
    assert len(_study(f"sqlite:///{out / 'suite.db'}").get_trials()) == len(trials)  # nothing enqueued or run again


@pytest.mark.slow
def test_two_machines_share_one_postgres_study(postgres_url, tmp_path):
    """Two commands with their own --out (two machines) on one PostgreSQL study: every cell runs
    once, its JSON on the machine that ran it; the report reads the study, whichever machine asks."""
    pytest.importorskip("popgym")
    name = f"suite-{uuid.uuid4().hex[:8]}"
    shared = [*SHARED, "--workers", "1", "--storage", postgres_url, "--study", name]
    machines = [subprocess.Popen(suite_command(*shared, "--out", str(tmp_path / f"m{k}")), env=command_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(2)]  # fmt: skip
    for machine in machines:
        _, stderr = machine.communicate(timeout=300)
        assert machine.returncode == 0, stderr[-2000:]
    _each_cell_ran_once(_study(postgres_url, name), 8)
    jsons = [p.relative_to(tmp_path / f"m{k}") for k in range(2) for p in (tmp_path / f"m{k}").glob("runs/*/*/*.json")]
    assert len(jsons) == len(set(jsons)) == 8  # each run's JSON on one machine
    reports = [(tmp_path / f"m{k}" / "memory_suite.md").read_text() for k in range(2)]
    assert reports[0] == reports[1]  # both reports are the study's, whoever finished last


def _wait_for_a_running_cell(url: str, process: subprocess.Popen, timeout: float = 120):
    from optuna.trial import TrialState

    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, "the worker ended before a cell started"
        assert time.monotonic() < deadline, "no cell started"
        try:
            running = _study(url).get_trials(states=(TrialState.RUNNING,))
        except Exception:  # noqa: BLE001 - the study is not created yet
            running = []
        if running:
            return running[0]
        time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_workers_cell_is_run_again_and_the_report_is_the_studys(tmp_path):
    from optuna.trial import TrialState

    out, url = tmp_path / "out", f"sqlite:///{tmp_path / 'out' / 'suite.db'}"
    argv = ["--tasks", "CatchBlind16", "--models", "fastweights", "--seeds", "0", "1", "--timesteps", "4096",
            "--hidden-size", "8", "--eval-episodes", "2", "--bootstrap-reps", "100", "--heartbeat", "1",
            "--workers", "1", "--out", str(out)]  # fmt: skip
    worker = subprocess.Popen(suite_command(*argv), env=command_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    killed = _wait_for_a_running_cell(url, worker)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    time.sleep(2.5)  # the grace period: 2 x --heartbeat
    result = subprocess.run(suite_command(*argv), env=command_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    study = _study(url)
    _each_cell_ran_once(study, 2)
    cell = killed.user_attrs["cell"]
    states = [t.state for t in study.get_trials() if t.user_attrs.get("cell") == cell]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]  # the dead worker's trial, then its retry
    third = subprocess.run(suite_command("--report-only", "--storage", url, "--out", str(tmp_path / "elsewhere"),
                                         "--bootstrap-reps", "100"),
                           env=command_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert third.returncode == 0, third.stderr[-2000:]
    assert third.stdout == (out / "memory_suite.md").read_text()
    assert third.stdout.startswith("# Memory suite") and "| CatchBlind16 |" in third.stdout


def test_reach_steps_counts_a_running_mean_and_the_budget_for_a_seed_that_never_reaches(suite, tmp_path, capsys):
    import reach_steps

    steps, returns = [1000, 2000, 3000, 4000, 5000], [0.9, float("nan"), 0.2, 0.9, 0.9]
    assert reach_steps.first_reach(steps, returns, 0.5, 1) == 1000
    assert reach_steps.first_reach(steps, returns, 0.5, 2) == 2000  # the NaN rollout is skipped in its window
    assert reach_steps.first_reach(steps, returns, 0.6, 3) == 5000  # means 0.55, 0.55, then 0.67
    assert reach_steps.first_reach(steps, returns, 0.95, 1) is None
    with pytest.raises(ValueError, match="window"):
        reach_steps.first_reach(steps, returns, 0.5, 0)
    for seed, curve in enumerate([(steps, returns), (steps, [0.0] * 5)]):
        _write(tmp_path, _record("CatchBlind16", "gru", seed, final=0.5 * seed, timesteps=5000, curve=curve))
    assert reach_steps.main([str(tmp_path), "--thresholds", "0.5", "--window", "2"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row == "| CatchBlind16 | gru | 2 | 0.250 ± 0.250 | >4k (2k, >5k) |", row
