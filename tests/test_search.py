"""fw_agents.search: the paper's space, trials through train(), one study shared by worker
processes (SQLite here, PostgreSQL across machines), killed workers' trials retried, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from fw_agents import search
from fw_agents.config import TrainConfig
from fw_agents.runs.errors import NonFiniteError

ROOT = Path(__file__).resolve().parents[1]
STUDY = "Catch-v0-fastweights"  # the default name for TINY's env and memory
#: A few seconds per trial on one core: 1024 steps, 2 evaluations of 4 episodes.
TINY = ["--env", "Catch-v0", "--memory", "fastweights", "--timesteps", "1024", "--hidden-size", "16",
        "--n-envs", "8", "--n-steps", "32", "--batch-size", "64", "--eval-freq", "512", "--eval-episodes", "4",
        "--checkpoint-freq", "100000"]  # fmt: skip


def command_env() -> dict[str, str]:
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def search_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "fw_agents.search", *TINY, *argv]


def sqlite_study(runs_root: Path, name: str = STUDY) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{runs_root / 'search' / name}.db")


# --------------------------------------------------------------------------- the space
def test_the_space_and_per_trial_draws():
    draws = []
    for _ in range(2):  # two workers' samplers: trial k's draw depends on (seed, k) only
        study = optuna.create_study(sampler=search.make_sampler("random", 7), direction="maximize")
        draws.append([search.suggest(study.ask(), "fastweights") for _ in range(4)])
    assert draws[0] == draws[1]
    assert len({d["learning_rate"] for d in draws[0]}) == 4
    for params in draws[0]:
        assert 1e-4 <= params["learning_rate"] <= 3e-3
        kwargs = params["memory_kwargs"]
        assert 0.05 <= kwargs["fast_share"] <= 5.0 and 0.5 <= kwargs["decay"] <= 0.99  # the default space: a share
        assert kwargs["inner_steps"] in (1, 2) and set(kwargs) == {"fast_share", "decay", "inner_steps"}
        config = search.trial_config(TrainConfig(memory="fastweights"), params, 3, Path("r"))
        assert config.memory_kwargs == kwargs and config.seed == 3 and config.run_dir == "r"
        config.validate()
    other = optuna.create_study(sampler=search.make_sampler("random", 8))
    assert search.suggest(other.ask(), "fastweights") != draws[0][0]
    lstm = search.suggest(optuna.create_study().ask(), "lstm")
    assert set(lstm) == {"learning_rate"}


class _FakeTrial:
    def __init__(self, prune: bool) -> None:
        self.reports: list[tuple[float, int]] = []
        self.prune = prune

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return self.prune


@pytest.mark.parametrize("pruning, prune, goes_on", [(False, True, True), (True, False, True), (True, True, False)])
def test_each_evaluation_is_reported_and_may_prune(pruning, prune, goes_on):
    trial = _FakeTrial(prune)
    callback = search._report_callback(trial, pruning)
    callback.parent = type("Eval", (), dict(last_mean_reward=0.25, evaluations_timesteps=[512, 1024]))()
    assert callback._on_step() is goes_on and callback.pruned is not goes_on
    assert trial.reports == [(0.25, 1024)]


# ------------------------------------------------------------------------------ errors
BAD_INPUT = [
    (["--memory", "transformer"], "invalid choice"),
    (["--env", "NoSuchEnv-v0"], "unknown env id"),
    (["--sampler", "grid"], "invalid choice"),
    (["--pruner", "hyperband"], "invalid choice"),
    (["--trials", "0"], "trials must be an integer >= 1"),
    (["--trials", "two"], "invalid int value"),
    (["--workers", "0"], "workers must be an integer >= 1"),
    (["--study-trials", "0"], "study_trials must be an integer >= 1"),
    (["--heartbeat", "0"], "heartbeat must be an integer >= 1"),
    (["--timesteps", "0"], "timesteps must be an integer in [1, 1000000000000], got 0"),
    (["--study", "a/b"], "study name must be"),
    (["--memory-kwargs", "decay=0.9"], "decay=... is searched"),
    (["--learning-rate", "0.1"], "unrecognized arguments"),
    (["--storage", "runs/search.db"], "storage must be a database URL"),
    (["--eval-freq", "4096"], "eval_freq must be <= timesteps"),
    (["--sampler-seed", str(2**32)], "sampler_seed must be an integer in [0, 4294967295], got 4294967296"),
    (["--storage", "nosuchdb://host/db"], "cannot open storage"),
    (["--storage", "postgresql+psycopg://fw:secret@127.0.0.1:1/db"], "cannot open storage postgresql+psycopg://fw:***@"),
    # a password with a raw @ or : (not %-encoded), or in the query: no piece of it in the message
    (["--storage", "postgresql+psycopg://fw:my@secret@127.0.0.1:1/db"], "cannot open storage postgresql+psycopg://fw:***@"),
    (["--storage", "postgresql+psycopg://fw:my:secret@127.0.0.1:1/db"], "cannot open storage postgresql+psycopg://fw:***@"),
    (["--storage", "postgresql+psycopg://fw@127.0.0.1:1/db?password=secret"], "cannot open storage"),
    # in-memory SQLite: one database per connection (was a heartbeat-thread traceback, trial
    # folders left behind, then "already holds run folders" at the report)
    (["--storage", "sqlite:///:memory:"], "--storage sqlite:///:memory: is an in-memory SQLite database, which the "
     "heartbeats, the workers and a resumed run cannot share; give sqlite:///PATH, or leave --storage out"),
    (["--storage", "sqlite://"], "--storage sqlite:// is an in-memory SQLite database"),
    (["--storage", "sqlite+pysqlite:///file::memory:?cache=shared"], "is an in-memory SQLite database"),
    (["--storage", "sqlite:///file:x?mode=memory&uri=true"], "is an in-memory SQLite database"),
]


def _status_and_stderr(argv: list[str], capsys) -> tuple[int, str]:
    try:
        status = search.main(argv)
    except SystemExit as exit_:  # argparse's errors
        status = exit_.code
    return status, capsys.readouterr().err


def test_the_tpe_sampler_is_reproducible_with_one_worker(tmp_path):
    """--sampler tpe --sampler-seed S: the same study, run twice by one worker (two processes),
    gives the same draws (the sampler's seed used to include the worker's pid), and no two trials
    share a draw."""
    code = (
        "import sys, numpy as np, optuna\n"
        "from fw_agents.search_storage import make_sampler\n"
        "optuna.logging.set_verbosity(optuna.logging.ERROR)\n"
        "study = optuna.create_study(sampler=make_sampler('tpe', 3), direction='maximize')\n"
        "study.optimize(lambda t: -abs(np.log(t.suggest_float('x', 1e-4, 1e-1, log=True)) + 5), n_trials=14)\n"
        "print([t.params['x'] for t in study.trials])\n"
    )
    runs = [subprocess.run([sys.executable, "-c", code], env=command_env(), capture_output=True, text=True,
                           timeout=120, check=True).stdout for _ in range(2)]  # fmt: skip
    first = eval(runs[0])  # noqa: S307 - our own output, a list of floats
    assert runs[0] == runs[1] and len(set(first)) == len(first) == 14


@pytest.mark.parametrize("argv, message", BAD_INPUT, ids=[" ".join(argv) for argv, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_status_2(argv, message, tmp_path, capsys):
    status, err = _status_and_stderr([*TINY, "--runs-root", str(tmp_path / "runs"), *argv], capsys)
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "secret" not in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists(), "a refused search leaves no folder"


def test_joining_a_study_with_other_settings_is_refused(tmp_path, capsys):
    search.open_study(search.parse_search([*TINY, "--runs-root", str(tmp_path)]))
    status, err = _status_and_stderr([*TINY, "--runs-root", str(tmp_path), "--timesteps", "2048"], capsys)
    assert status == 2 and "created with timesteps=1024, this worker has timesteps=2048" in err
    status, err = _status_and_stderr([*TINY, "--runs-root", str(tmp_path), "--sampler", "tpe"], capsys)
    assert status == 2 and "created with sampler='random'" in err
    status, err = _status_and_stderr([*TINY, "--runs-root", str(tmp_path), "--space", "paper"], capsys)
    assert status == 2 and "created with space='share', this worker has space='paper'" in err


def test_a_study_from_before_space_joins_as_the_papers_space(tmp_path):
    """Studies created before --space (and the agents' identity_scale/bias_correction defaults)
    searched the paper's η without bias correction: they join with --space paper
    --memory-kwargs bias_correction=False, and are refused, naming the difference, with either of
    today's defaults."""
    without_correction = ["--memory-kwargs", "bias_correction=False"]
    paper = search.parse_search([*TINY, "--runs-root", str(tmp_path), "--space", "paper", *without_correction])
    study = search.open_study(paper)
    old = {k: v for k, v in paper.definition().items() if k != "space"}
    assert old["memory_kwargs"] == {}  # as the definitions of then: every fixed core option at the core's default
    study.set_user_attr("definition", old)
    search.open_study(paper)
    with pytest.raises(ValueError, match=r"with memory_kwargs=\{\}, this worker has memory_kwargs=\{'bias_correction': True\}"):
        search.open_study(search.parse_search([*TINY, "--runs-root", str(tmp_path), "--space", "paper"]))
    with pytest.raises(ValueError, match="created with space='paper', this worker has space='share'"):
        search.open_study(search.parse_search([*TINY, "--runs-root", str(tmp_path), *without_correction]))


def test_joining_a_study_that_minimizes_is_refused(tmp_path, capsys):
    """A study of that name made by other means (``optuna create-study`` minimizes by default):
    Optuna's best trial, which ``benchmarks/figure5.py --best-of`` and the dashboard read, would
    be the worst one."""
    (tmp_path / "search").mkdir()
    optuna.create_study(study_name=STUDY, storage=f"sqlite:///{tmp_path / 'search' / STUDY}.db", direction="minimize")
    status, err = _status_and_stderr([*TINY, "--runs-root", str(tmp_path)], capsys)
    assert status == 2 and "exists with direction minimize" in err and len(err.strip().splitlines()) == 1, err
    assert sqlite_study(tmp_path).get_trials() == []


def test_a_new_study_over_another_studys_run_folders_is_refused(tmp_path, capsys):
    """The study's database was deleted (or a new --storage) but its trial folders stay: trial 0
    would stop on trial-0000 ("already holds a run"), failed, each time the command is run."""
    folder = tmp_path / "search" / STUDY / "trial-0000"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    status, err = _status_and_stderr([*TINY, "--runs-root", str(tmp_path)], capsys)
    assert status == 2 and "already holds run folders (trial-0000, ...)" in err and len(err.strip().splitlines()) == 1
    assert sqlite_study(tmp_path).get_trials() == []


def test_the_command_itself_exits_2_without_traceback(tmp_path):
    result = subprocess.run(search_command("--trials", "0", "--runs-root", str(tmp_path)), env=command_env(),
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and result.stderr == "error: trials must be an integer >= 1, got 0\n"


# ------------------------------------------------------------------ one worker, SQLite
def test_trials_run_through_train_and_the_study_resumes(tmp_path, monkeypatch, capsys):
    argv = [*TINY, "--runs-root", str(tmp_path), "--trials", "2", "--study-trials", "2", "--seed", "10"]
    assert search.main(argv) == 0
    out = capsys.readouterr().out
    assert "trial 0 COMPLETE" in out and "trial 1 COMPLETE" in out and f"study {STUDY}: " in out
    trials = sqlite_study(tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for trial in trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir == tmp_path / "search" / STUDY / f"trial-{trial.number:04d}"
        config = json.loads((run_dir / "config.json").read_text())
        assert config["learning_rate"] == trial.params["learning_rate"] and config["timesteps"] == 1024
        assert config["memory_kwargs"]["fast_share"] == trial.params["fast_share"] and "fast_lr" not in config["memory_kwargs"]
        assert config["seed"] == trial.user_attrs["seed"] == 10 + trial.number and config["threads"] == 1
        assert config["wandb_group"] == STUDY  # every trial's W&B run in one group per study
        data = np.load(run_dir / "evaluations.npz")
        curve = data["results"].mean(axis=1)
        assert trial.intermediate_values == dict(zip(data["timesteps"].tolist(), curve.tolist()))
        assert trial.value == pytest.approx(curve.mean())  # the objective: the area under the curve
        assert trial.user_attrs["steps"] == 1024 and -1 <= trial.user_attrs["final_return"] <= 1
        assert (run_dir / "train.log").is_file() and (run_dir / "model.zip").exists()  # the log: quiet by default
    assert search.main(argv) == 0  # the study is complete: the command runs nothing more
    assert len(sqlite_study(tmp_path).get_trials()) == 2


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, "the worker ended before its trial started"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_workers_trial_fails_and_is_retried(tmp_path):
    command = search_command("--timesteps", "2048", "--trials", "1", "--heartbeat", "1", "--runs-root", str(tmp_path))
    worker = subprocess.Popen(command, env=command_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(tmp_path / "search" / STUDY / "trial-0000", worker)  # trial 0 is running
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    (stale,) = sqlite_study(tmp_path).get_trials()
    assert stale.state == TrialState.RUNNING  # until a worker sees its heartbeat stopped
    time.sleep(2.5)  # the grace period: 2 x --heartbeat
    result = subprocess.run(command, env=command_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    failed, retry = sqlite_study(tmp_path).get_trials()
    assert failed.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == failed.params
    assert retry.user_attrs["seed"] == 0 and retry.user_attrs["steps"] == 2048  # the original's seed
    assert "trial 1 COMPLETE" in result.stdout


def test_an_interrupted_trial_is_retried_from_its_checkpoint(tmp_path, monkeypatch, capsys):
    """Ctrl-C in a trial saves a checkpoint and queues the trial again; the retry continues that
    run in its folder (not from scratch), its earlier evaluations reported to the new trial."""
    import fw_agents.train as train_module

    argv = [*TINY, "--runs-root", str(tmp_path), "--trials", "1", "--study-trials", "1", "--pruner", "none"]

    def interrupt(self) -> bool:
        if self.num_timesteps >= 640:  # after the evaluation at 512, mid-rollout (rollouts of 256)
            raise KeyboardInterrupt
        return True

    with monkeypatch.context() as patch:
        patch.setattr(train_module.CatchRateCallback, "_on_step", interrupt)
        assert search.main(argv) == 130
    folder = tmp_path / "search" / STUDY / "trial-0000"
    assert (folder / "checkpoints" / "interrupted_512_steps.zip").exists()  # the last update's step
    assert search.main(argv) == 0
    failed, retry = sqlite_study(tmp_path).get_trials()
    assert failed.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.user_attrs["resumed_at"] == 512 and Path(retry.user_attrs["run_dir"]) == folder
    assert not (tmp_path / "search" / STUDY / "trial-0001").exists()
    data = np.load(folder / "evaluations.npz")
    assert data["timesteps"].tolist() == [512, 1024]  # one history: the first attempt's 512, then the retry's
    assert retry.intermediate_values == dict(zip([512, 1024], data["results"].mean(axis=1).tolist()))
    assert 1024 <= retry.user_attrs["steps"] < 1024 + 256  # whole rollouts from 640 (SB3 stops between rollouts)


def test_resumable_attempt_picks_the_latest_folder_with_a_checkpoint(tmp_path):
    from fw_agents.runs.resume import read_checkpoint

    run = tmp_path / "run"
    agent_run = TrainConfig(env="Catch-v0", memory="fastweights", timesteps=256, hidden_size=8, n_envs=4, n_steps=32,
                            batch_size=64, eval_freq=10**6, eval_episodes=2, checkpoint_freq=128, gif_episodes=0,
                            wandb="disabled", progress_bar=False, run_dir=str(run))  # fmt: skip
    from fw_agents.train import train

    train(agent_run)
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    run.rename(study_dir / "trial-0003")  # attempt 3 trained; attempt 5 never wrote a checkpoint
    (study_dir / "trial-0005").mkdir()
    assert search.resumable_attempt(study_dir, [3, 5], 512) == (study_dir / "trial-0003", 256)
    assert search.resumable_attempt(study_dir, [3, 5], 256) is None  # its training had ended: start afresh
    assert search.resumable_attempt(study_dir, [7], 512) is None  # not on this machine
    assert read_checkpoint(study_dir / "trial-0003").timesteps == 256
    from fw_agents.runs.folder import claim_run_folder

    held = claim_run_folder(study_dir, "x", str(study_dir / "trial-0003"), resume=True)
    try:
        assert search.resumable_attempt(study_dir, [3], 512) is None  # a live process holds it
    finally:
        held.release()
    assert search.resumable_attempt(study_dir, [3], 512) is not None


# --------------------------------------------------- two worker processes, PostgreSQL
@pytest.mark.slow
def test_two_workers_share_one_postgres_study(postgres_url, tmp_path):
    name = f"test-{uuid.uuid4().hex[:8]}"
    command = search_command("--trials", "2", "--workers", "2", "--storage", postgres_url, "--study", name,
                             "--runs-root", str(tmp_path))  # fmt: skip
    result = subprocess.run(command, env=command_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    trials = optuna.load_study(study_name=name, storage=postgres_url).get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert result.stdout.count("Best trial: ") == 1 and result.stdout.count(f"study {name}: ") == 1  # one report
    workers = [t.user_attrs["worker"] for t in trials]
    assert len(set(workers)) == 2 and all(workers.count(w) == 2 for w in workers)  # 2 processes, 2 trials each
    assert len({t.user_attrs["run_dir"] for t in trials}) == 4
    assert len({t.params["learning_rate"] for t in trials}) == 4
    for trial in trials:  # each trial ran once: one line, one run directory, its own seed
        assert result.stdout.count(f" trial {trial.number} COMPLETE") == 1
        config = json.loads((Path(trial.user_attrs["run_dir"]) / "config.json").read_text())
        assert config["seed"] == trial.number and config["learning_rate"] == trial.params["learning_rate"]


def _open_storage_in_a_process(url: str) -> str:
    from fw_agents.search_storage import open_storage

    try:
        open_storage(url, 60)
        return "ok"
    except ValueError as error:
        return str(error)


def test_workers_started_together_on_an_empty_database_all_join(tmp_path):
    """Workers started at once on a database without Optuna's tables race to create them (a
    duplicate table / alembic row); each must join, not stop with 'cannot open storage'."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for attempt in range(3):
        url = f"sqlite:///{tmp_path / f'race-{attempt}.db'}"
        with context.Pool(4) as pool:
            assert pool.map(_open_storage_in_a_process, [url] * 4) == ["ok"] * 4


def test_a_trial_interrupted_during_an_evaluation_makes_it_when_retried(tmp_path, monkeypatch):
    """Ctrl-C (or a kill, or a lost database) during the evaluation at a checkpoint's step: the
    retry resumes at that step, and must make that evaluation rather than leave a hole in the
    curve (and in the objective, its mean)."""
    import stable_baselines3.common.callbacks as sb3_callbacks

    argv = [*TINY, "--runs-root", str(tmp_path), "--trials", "1", "--study-trials", "1", "--checkpoint-freq", "512"]
    evaluate = sb3_callbacks.evaluate_policy

    def interrupted(model, *args, **kwargs):
        if model.num_timesteps == 512:
            raise KeyboardInterrupt
        return evaluate(model, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(sb3_callbacks, "evaluate_policy", interrupted)
        assert search.main(argv) == 130
    assert search.main(argv) == 0
    failed, retry = sqlite_study(tmp_path).get_trials()
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_at"] == 512
    data = np.load(tmp_path / "search" / STUDY / "trial-0000" / "evaluations.npz")
    assert data["timesteps"].tolist() == [512, 1024]
    assert sorted(retry.intermediate_values) == [512, 1024]
    assert retry.value == pytest.approx(data["results"].mean(axis=1).mean())


def test_when_every_trial_fails_the_study_says_why_in_one_line_each(tmp_path, monkeypatch, capfd):
    """Every trial diverges: each trial's line and the study say why (no Optuna traceback), the
    reason is stored with the trial, and the command's status is 1, not 0."""
    import fw_agents.runs.callbacks as callbacks

    def diverge(self) -> None:
        if self.num_timesteps > 0:
            raise NonFiniteError(f"non-finite loss after the update ending at step {self.num_timesteps}")

    monkeypatch.setattr(callbacks.StopOnNonFinite, "_on_rollout_start", diverge)
    assert search.main([*TINY, "--runs-root", str(tmp_path), "--trials", "2"]) == 1
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert out.count("FAIL (NonFiniteError: non-finite loss after the update ending at step") == 2, out
    assert err.strip().splitlines()[-1:] == [f"error: no trial of study {STUDY} has completed (trial 1: NonFiniteError: "
                                        "non-finite loss after the update ending at step 256)"], err  # fmt: skip
    trials = sqlite_study(tmp_path).get_trials()
    assert all(t.state == TrialState.FAIL and t.user_attrs["error"].startswith("NonFiniteError") for t in trials)


def test_an_unwritable_study_folder_is_one_line_and_status_1(tmp_path, capfd):
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / STUDY).write_text("a file where the trials' folders go")
    assert search.main([*TINY, "--runs-root", str(tmp_path), "--trials", "1"]) == 1
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and err.count("error:") == 1, err
    assert "error: Not a directory (" in err and "trial-0000" in err


def test_a_worker_whose_trial_was_taken_over_goes_on(tmp_path, monkeypatch, capfd):
    """A worker paused past 2 x --heartbeat (a suspended machine): another worker fails its trial
    and runs the retry. When it wakes up, its next report finds the trial failed: it says so in
    one line and goes on with its next trial (it stopped with "error: Cannot tell a FAIL trial.",
    status 2)."""
    report = optuna.trial.Trial.report

    def report_after_a_pause(trial, value, step):
        if trial.number == 0:  # what another worker's fail_stale_trials does meanwhile
            trial.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        return report(trial, value, step)

    monkeypatch.setattr(optuna.trial.Trial, "report", report_after_a_pause)
    assert search.main([*TINY, "--runs-root", str(tmp_path), "--trials", "2"]) == 0
    out, err = capfd.readouterr()
    assert "trial 0 was taken over" in err and "Traceback" not in err and "trial 1 COMPLETE" in out
    assert [t.state for t in sqlite_study(tmp_path).get_trials()] == [TrialState.FAIL, TrialState.COMPLETE]


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://postgres:postgres@h/postgres", "postgresql://postgres:***@h/postgres"),  # only the password field
        ("postgresql://fw:db@dbhost:5432/db", "postgresql://fw:***@dbhost:5432/db"),
        ("postgresql://fw:s3cret@h/db?password=other", "postgresql://fw:***@h/db?password=***"),
    ],
)
def test_hidden_password_hides_the_password_field_alone(url, shown):
    from fw_agents.search_storage import hidden_password

    assert hidden_password(url) == shown


def test_a_worker_with_nothing_left_while_another_trial_runs_exits_0(tmp_path):
    """``--study-trials`` reached while another worker's trial is still running: this worker runs
    nothing, and that is not a failed search (the running trial may still complete)."""
    argv = [*TINY, "--runs-root", str(tmp_path), "--trials", "1", "--study-trials", "1"]
    with pytest.warns(UserWarning, match="Heartbeat"):  # Optuna: ask() outside optimize()
        search.open_study(search.parse_search(argv)).ask()  # worker A's trial 0, RUNNING
    assert search.main(argv) == 0
    assert [t.state for t in sqlite_study(tmp_path).get_trials()] == [TrialState.RUNNING]


# ------------------------------------------------------------------------- the report
def _study_with_curves(tmp_path: Path) -> optuna.Study:
    """Four trials by hand: three complete ones with curves (objectives 0.2, 0.7, 0.5) and a failed one."""
    from optuna.distributions import FloatDistribution

    study = optuna.create_study(study_name=STUDY, storage=f"sqlite:///{tmp_path / 'search' / STUDY}.db",
                                direction="maximize")  # fmt: skip
    rate = FloatDistribution(1e-4, 3e-3, log=True)
    for k, value in enumerate((0.2, 0.7, 0.5)):
        study.add_trial(optuna.create_trial(
            params={"learning_rate": 1e-3 * (k + 1)}, distributions={"learning_rate": rate}, value=value,
            intermediate_values={512: value - 0.1, 1024: value + 0.1}, user_attrs={"final_return": value + 0.1},
        ))  # fmt: skip
    study.add_trial(optuna.create_trial(state=TrialState.FAIL, user_attrs={"error": "NonFiniteError: loss is nan"}))
    return study


def test_report_only_prints_the_trials_by_objective_the_best_once_and_their_curves(tmp_path, capsys):
    (tmp_path / "search").mkdir()
    _study_with_curves(tmp_path)
    assert search.main([*TINY, "--runs-root", str(tmp_path), "--report-only"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    assert [row.split(" | ")[1] for row in rows] == ["1", "2", "0", "3"]  # by objective, the failed one last
    assert rows[0] == "| 1 | 1 | 0.700 | 0.800 | complete | learning_rate=0.002 |"
    assert rows[-1] == "|  | 3 | — | — | fail (NonFiniteError: loss is nan) |  |"
    assert out.count("Best trial: 1, objective 0.700") == 1
    assert (tmp_path / "search" / f"{STUDY}_report.md").read_text() in out
    assert (tmp_path / "search" / f"{STUDY}_best_curves.png").read_bytes().startswith(b"\x89PNG")
    assert len(optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path / 'search' / STUDY}.db").trials) == 4


def test_the_curves_figure_draws_the_best_trials_reported_values(tmp_path):
    import matplotlib.pyplot as plt

    from fw_agents.search_report import curves_figure

    (tmp_path / "search").mkdir()
    fig = curves_figure(_study_with_curves(tmp_path), top=2)
    try:
        lines = fig.axes[0].get_lines()
        assert [line.get_label() for line in lines] == ["trial 1: 0.700", "trial 2: 0.500"]
        assert lines[0].get_xdata().tolist() == [512, 1024] and lines[0].get_ydata() == pytest.approx([0.6, 0.8])
    finally:
        plt.close(fig)


def test_report_only_without_the_study_is_one_line(tmp_path, capsys):
    (tmp_path / "search").mkdir()
    assert search.main([*TINY, "--runs-root", str(tmp_path), "--report-only"]) == 2
    assert capsys.readouterr().err.startswith(f"error: no study '{STUDY}' in sqlite:///")


def test_workers_get_the_storage_password_through_the_environment_not_argv(tmp_path, monkeypatch):
    """A process's command line is visible to every user of the machine (ps): the workers that
    --workers starts read the storage URL from $FW_SEARCH_STORAGE instead."""
    from fw_agents.search_storage import STORAGE_ENV

    url = "postgresql+psycopg://fw:s3cr%40t-pw@db-host:5432/fw_search"
    parent = search.parse_search([*TINY, "--runs-root", str(tmp_path), "--workers", "3", "--storage", url])
    command, env = search.worker_command(parent)
    assert not any("s3cr" in arg for arg in command) and "--storage-from-env" in command
    assert env[STORAGE_ENV] == url and env["PATH"] == os.environ["PATH"]
    monkeypatch.setenv(STORAGE_ENV, url)
    child = search.parse_search(command[3:])  # as the worker parses its command line
    assert child.storage_url == url and child.study_name == parent.study_name and child.options.workers == 1
    monkeypatch.delenv(STORAGE_ENV)
    with pytest.raises(ValueError, match=f"^--storage-from-env: \\${STORAGE_ENV} is not set"):
        search.parse_search(command[3:])
    with pytest.raises(ValueError, match="^--storage and --storage-from-env both"):
        search.parse_search([*command[3:], "--storage", url])
    monkeypatch.setenv(STORAGE_ENV, "sqlite:///:memory:")  # checked as --storage is
    with pytest.raises(ValueError, match="^--storage sqlite:///:memory: is an in-memory SQLite database"):
        search.parse_search(command[3:])
