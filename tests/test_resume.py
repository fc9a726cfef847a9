"""--resume continues a run in its folder with the model's settings (fw_agents.runs.resume)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from stable_baselines3.common.callbacks import BaseCallback

import fw_agents.train as train_module
import fw_agents.runs.tracking as tracking
from fw_agents.config import TrainConfig
from fw_agents.train import train
from fw_agents.algorithms import FastRecurrentPPO
from fw_agents.runs.resume import latest_checkpoint, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(
    env="CatchBlind16-v0", timesteps=512, n_envs=4, n_steps=32, batch_size=64, n_epochs=1, hidden_size=16,
    eval_freq=128, eval_episodes=4, checkpoint_freq=128, gif_episodes=0, wandb="disabled", progress_bar=False,
)  # fmt: skip


def _interrupted_run(tmp_path: Path, monkeypatch, stop_at: int = 256, **changes) -> Path:
    """A run in ``tmp_path/run`` stopped by a Ctrl-C just after ``stop_at`` env steps (a rollout boundary)."""

    def interrupt(self) -> bool:  # in the rollout after the update at stop_at: the checkpoint is that update's
        if self.num_timesteps > stop_at:
            raise KeyboardInterrupt
        return True

    with monkeypatch.context() as patch:
        patch.setattr(train_module.CatchRateCallback, "_on_step", interrupt)
        with pytest.raises(KeyboardInterrupt):
            train(TrainConfig(run_dir=str(tmp_path / "run"), **{**TINY, **changes}))
    return tmp_path / "run"


def _steps(run: Path) -> list[int]:
    return [int(row["time/total_timesteps"]) for row in csv.DictReader((run / "progress.csv").open())]


class FakeWandbRun:
    """A W&B run with id ``abc123`` that records the ``global_step`` of every row sent to it."""

    id, dir, settings = "abc123", None, None

    def __init__(self, sent: list[int] | None = None) -> None:
        self.sent = [] if sent is None else sent

    def log(self, payload, step=None):
        assert step == payload["global_step"]  # W&B's own step is the logged one
        self.sent.append(payload["global_step"])

    def finish(self):
        pass


def test_resume_continues_in_the_same_folder(tmp_path, monkeypatch):
    run = _interrupted_run(tmp_path, monkeypatch, memory_kwargs={"decay": 0.9})
    before = _steps(run)
    evaluated = np.load(run / "evaluations.npz")["timesteps"].tolist()
    assert before and max(before) <= 256 and evaluated == [128, 256]  # the Ctrl-C came just after the 256 update
    assert latest_checkpoint(run).name == "interrupted_256_steps.zip"

    # the folder alone is enough: the latest checkpoint, the old run's settings, the same folder
    summary = train(TrainConfig(resume=str(run), progress_bar=False, wandb="disabled"))
    assert summary["timesteps"] == 512 and summary["run_dir"] == str(run)
    after = _steps(run)
    assert after[: len(before)] == before and after == sorted(after) and max(after) > 256, "one curve, appended"
    assert np.load(run / "evaluations.npz")["timesteps"].tolist() == [128, 256, 384, 512]
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["memory_kwargs"]["decay"] == 0.9 and recorded["hidden_size"] == 16 and recorded["timesteps"] == 512
    assert recorded["resume"].endswith("interrupted_256_steps.zip")
    model = FastRecurrentPPO.load(run / "model.zip", device="cpu")
    assert model.num_timesteps == 512 and model.policy.lstm_actor.core.decay == 0.9


def test_resume_elsewhere_leaves_the_old_folder_alone(tmp_path, monkeypatch):
    run = _interrupted_run(tmp_path, monkeypatch)
    before = (run / "progress.csv").read_text()
    checkpoint = next((run / "checkpoints").glob("interrupted_*.zip"))
    summary = train(TrainConfig(resume=str(checkpoint), run_dir=str(tmp_path / "other"), progress_bar=False, wandb="disabled"))
    assert summary["run_dir"] == str(tmp_path / "other") and summary["timesteps"] == 512
    assert (run / "progress.csv").read_text() == before


@pytest.mark.parametrize(
    "changes,needle",
    [
        (dict(hidden_size=32), "--hidden-size 32 conflicts with the checkpoint"),
        (dict(memory="lstm"), "--memory lstm conflicts"),
        (dict(memory_kwargs={"decay": 0.5}), "--memory-kwargs decay=0.5 conflicts"),
        (dict(learning_rate=0.5), "--learning-rate 0.5 conflicts"),
        (dict(timesteps=256), "has trained 256 steps, so --timesteps 256 leaves nothing to train"),
    ],
)
def test_resume_refuses_what_contradicts_the_checkpoint(tmp_path, monkeypatch, changes, needle):
    run = _interrupted_run(tmp_path, monkeypatch)
    before = sorted(p.name for p in run.rglob("*"))
    with pytest.raises(ValueError, match=needle):
        train(TrainConfig(resume=str(run), progress_bar=False, **changes))
    assert sorted(p.name for p in run.rglob("*")) == before, "nothing written"


def test_a_finished_runs_folder_is_not_reused_without_resume(tmp_path, monkeypatch):
    run = _interrupted_run(tmp_path, monkeypatch)
    with pytest.raises(ValueError, match="already holds a run"):
        train(TrainConfig(run_dir=str(run), **TINY))


def test_checkpoints_read_without_unpickling(tmp_path, monkeypatch):
    run = _interrupted_run(tmp_path, monkeypatch, stop_at=128)
    checkpoint = read_checkpoint(run)
    assert checkpoint.timesteps == 128 and checkpoint.run_dir == run.resolve()
    assert checkpoint.settings["hidden_size"] == 16 and checkpoint.settings["memory"] == "fastweights"
    (run / "checkpoints" / "model_999_steps.zip").write_bytes(b"half-written")  # a crash mid-save
    assert latest_checkpoint(run).name == "interrupted_128_steps.zip", "unreadable zips are skipped"


def test_resumed_runs_continue_their_wandb_run(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(tracking, "init_wandb", lambda *args, run_id=None, **kwargs: seen.append(run_id) or FakeWandbRun())
    for resume in (False, True):
        tracking.start_run(tmp_path, "x", run_dir=str(tmp_path / "r"), sb3_logger=False, log_formats=("csv",),
                           resume=resume).close()  # fmt: skip
    assert seen == [None, "abc123"] and (tmp_path / "r" / tracking.WANDB_ID_FILE).read_text().strip() == "abc123"


@pytest.mark.slow
def test_cli_resume_errors_are_one_line(tmp_path, monkeypatch):
    run = _interrupted_run(tmp_path, monkeypatch)
    env = dict(os.environ, WANDB_MODE="disabled")
    for args, needle in [
        (["--resume", str(run), "--hidden-size", "32"], "conflicts with the checkpoint"),
        (["--run-dir", str(run)], "already holds a run"),
        (["--resume", str(tmp_path)], "no readable checkpoint"),
    ]:
        result = subprocess.run([sys.executable, str(ROOT / "train_agent.py"), *args], capture_output=True, text=True,
                                env=env, timeout=120)  # fmt: skip
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and needle in lines[0], result.stderr


def test_resume_after_a_crash_between_checkpoints_drops_the_lost_steps(tmp_path, monkeypatch):
    """A run killed after its last checkpoint logged rows and evaluations that the resumed run
    makes again: they are dropped, so the curve and the evaluation history each go on once."""
    run = _interrupted_run(tmp_path, monkeypatch, stop_at=400)
    for path in [*(run / "checkpoints").glob("*.zip"), run / "model.zip"]:  # as if killed at 400: no
        if path.exists() and read_checkpoint(path).timesteps > 256:  # checkpoint after the one at 256
            path.unlink()
    assert latest_checkpoint(run).name.endswith("_256_steps.zip")
    assert max(_steps(run)) > 256 and np.load(run / "evaluations.npz")["timesteps"].tolist() == [128, 256, 384]

    # the crashed run mirrored to W&B; the resumed run continues that W&B run
    (run / tracking.WANDB_ID_FILE).write_text("abc123\n")
    sent = []
    monkeypatch.setattr(tracking, "init_wandb", lambda *args, run_id=None, **kwargs: FakeWandbRun(sent) if run_id else None)
    summary = train(TrainConfig(resume=str(run), progress_bar=False, wandb="offline"))
    assert summary["timesteps"] == 512
    steps = _steps(run)
    # as many rows at 384 (a rollout's and an evaluation's) as at 128: the lost ones were dropped, then made again
    assert steps == sorted(steps) and steps.count(384) == steps.count(128) == 2, steps
    assert np.load(run / "evaluations.npz")["timesteps"].tolist() == [128, 256, 384, 512]
    # W&B cannot delete the crashed run's 384 rows: it is sent only the steps after them
    assert sent and min(sent) == 512, sent
    # TensorBoard hides the crashed run's events after the checkpoint: each tag has each step once
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "eval/mean_reward" in tags
    for tag in tags:
        at = [event.step for event in events.Scalars(tag)]
        assert at == sorted(set(at)), (tag, at)
    assert [event.step for event in events.Scalars("eval/mean_reward")] == [128, 256, 384, 512]


def test_drop_rows_after_keeps_what_it_cannot_read(tmp_path):
    from fw_agents.runs.progress_csv import drop_rows_after, last_step

    path = tmp_path / "progress.csv"
    path.write_text('time/total_timesteps,note\n128,"a"\n256,\n,"no step"\n384,"b"\n512,"c"\n51')
    assert last_step(path, "time/total_timesteps") == 512
    assert drop_rows_after(path, "time/total_timesteps", 256) == 3  # 384, 512 and the row a crash cut short
    assert path.read_text() == 'time/total_timesteps,note\n128,"a"\n256,\n,"no step"\n'
    assert last_step(path, "time/total_timesteps") == 256
    path.write_text('time/total_timesteps\n128\n9999')  # a torn last row never counts, nor survives
    assert last_step(path, "time/total_timesteps") == 128
    assert drop_rows_after(path, "time/total_timesteps", 256) == 1 and path.read_text() == "time/total_timesteps\n128\n"
    assert drop_rows_after(path, "missing", 0) == 0 and drop_rows_after(tmp_path / "none.csv", "x", 0) == 0


def test_resumed_tracker_without_sb3_logs_each_step_once(tmp_path, monkeypatch):
    """The supervised heads' writers (no SB3 logger) continue a crashed run the same way."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sent = []
    monkeypatch.setattr(tracking, "init_wandb", lambda *args, **kwargs: FakeWandbRun(sent))
    options = dict(run_dir=str(tmp_path / "r"), sb3_logger=False, log_formats=("csv", "tensorboard"),
                   step_column="train/updates")  # fmt: skip
    with tracking.start_run(tmp_path, "x", **options) as tracker:  # crashed after logging step 5
        for step in range(1, 6):
            tracker.log_scalars({"train/updates": step, "loss": float(step)}, step=step)
    with tracking.start_run(tmp_path, "x", resume=True, resume_step=2, **options) as tracker:  # its checkpoint: 2
        for step in range(3, 8):
            tracker.log_scalars({"train/updates": step, "loss": -float(step)}, step=step)
    rows = list(csv.DictReader((tmp_path / "r" / "progress.csv").open()))
    assert [(int(r["train/updates"]), float(r["loss"])) for r in rows] == [(1, 1), (2, 2), (3, -3), (4, -4), (5, -5),
                                                                            (6, -6), (7, -7)]  # fmt: skip
    assert sent == [1, 2, 3, 4, 5, 6, 7], "W&B keeps the crashed run's 3..5 and gets each step once"
    events = EventAccumulator(str(tmp_path / "r"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 1), (2, 2), (3, -3), (4, -4), (5, -5),
                                                                    (6, -6), (7, -7)]  # fmt: skip


def test_trust_is_never_taken_from_the_run_folder(tmp_path, monkeypatch):
    """``config.json`` is plain data anyone can edit or hand you: a ``trust_checkpoint`` recorded
    there must not let ``--resume`` unpickle (run code from) the checkpoint."""
    from fw_agents.runs.resume import resumed_config

    run = _interrupted_run(tmp_path, monkeypatch)
    record = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**record, "trust_checkpoint": True}))
    config, _ = resumed_config(TrainConfig(resume=str(run)), read_checkpoint(run))
    assert config.trust_checkpoint is False
    config, _ = resumed_config(TrainConfig(resume=str(run), trust_checkpoint=True), read_checkpoint(run))
    assert config.trust_checkpoint is True  # the flag of this invocation


def test_flags_typed_at_their_default_count_on_resume(tmp_path, monkeypatch):
    """A flag the user types wins over the old run's ``config.json`` (and is checked against the
    checkpoint) even when its value is the default."""
    from fw_agents.runs.resume import resumed_config
    from fw_agents.train_cli import given_fields, parse_config

    run = _interrupted_run(tmp_path, monkeypatch, learning_rate=5e-4)
    default = TrainConfig()
    argv = ["--resume", str(run), "--eval-episodes", str(default.eval_episodes)]
    config, _ = resumed_config(parse_config(argv), read_checkpoint(run), given_fields(argv))
    assert config.eval_episodes == default.eval_episodes != TINY["eval_episodes"]
    config, _ = resumed_config(parse_config(argv[:2]), read_checkpoint(run), given_fields(argv[:2]))
    assert config.eval_episodes == TINY["eval_episodes"], "not typed: the run's own"
    argv = ["--resume", str(run), "--lr", str(default.learning_rate)]
    with pytest.raises(ValueError, match=f"--learning-rate {default.learning_rate} conflicts"):
        resumed_config(parse_config(argv), read_checkpoint(run), given_fields(argv))
    argv = ["--resume", str(run), "--decay", "0.95"]  # a core flag sets memory_kwargs
    assert "memory_kwargs" in given_fields(argv) and "learning_rate" not in given_fields(argv)


@pytest.mark.parametrize("entry", ["policy.pth", "policy.optimizer.pth", "pytorch_variables.pth"])
def test_a_damaged_tensor_entry_is_a_one_line_value_error(tmp_path, monkeypatch, entry):
    import zipfile

    run = _interrupted_run(tmp_path, monkeypatch, stop_at=128)
    good = latest_checkpoint(run)
    bad = tmp_path / "damaged.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name)[:40] if name == entry else src.read(name))
    with pytest.raises(ValueError, match=f"^cannot load model '{bad}': "):
        FastRecurrentPPO.load(bad)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_an_unreadable_config_json_stops_the_resume_in_one_line(tmp_path, monkeypatch, text):
    """Rather than resume with the defaults for what only config.json holds (eval, seed, ...)."""
    run = _interrupted_run(tmp_path, monkeypatch)
    (run / "config.json").write_text(text)
    with pytest.raises(ValueError, match=r"config.json.*; fix or remove it to resume with the flags given"):
        train(TrainConfig(resume=str(run), progress_bar=False))
    (run / "config.json").unlink()  # removed: the flags given and the checkpoint's settings
    # (a folder without its config.json is no longer a run folder: the run continues in a new one)
    assert train(TrainConfig(resume=str(run), run_dir=str(tmp_path / "continued"), **TINY))["timesteps"] == 512


def test_a_module_named_only_in_config_json_is_not_imported(tmp_path, monkeypatch):
    """``module:id`` imports ``module`` (runs its code): a tampered ``config.json`` must not choose it.
    Only the command line may: ``--env`` again, or ``--trust-checkpoint``."""
    from fw_agents.runs.resume import resumed_config
    from fw_agents.train_cli import given_fields, parse_config

    run = _interrupted_run(tmp_path, monkeypatch)
    marker = tmp_path / "imported"
    (tmp_path / "marks_on_import_env.py").write_text(f"open({str(marker)!r}, 'w').close()\nimport envs\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    env = "marks_on_import_env:CatchBlind16-v0"
    record = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**record, "env": env}))
    needle = f"names env '{env}'.*pass --env {env} on the command line to allow it"
    with pytest.raises(ValueError, match=needle):
        train(TrainConfig(resume=str(run), progress_bar=False))
    argv = ["--resume", str(run)]
    with pytest.raises(ValueError, match=needle):
        resumed_config(parse_config(argv), read_checkpoint(run), given_fields(argv))
    assert not marker.exists(), "config.json chose a module to import"
    for argv in (["--resume", str(run), "--env", env], ["--resume", str(run), "--trust-checkpoint"]):
        config, _ = resumed_config(parse_config(argv), read_checkpoint(run), given_fields(argv))
        assert config.env == env  # the command line allowed it


class _SignalAt(BaseCallback):
    """Sends this process ``signum`` once, at ``step`` env steps (as Ctrl-C or a scheduler would)."""

    def __init__(self, step: int, signum: int = signal.SIGINT) -> None:
        super().__init__()
        self.step, self.signum = step, signum

    def _on_step(self) -> bool:
        if self.num_timesteps == self.step:
            os.kill(os.getpid(), self.signum)
        return True


@pytest.mark.parametrize("signal_step", [200, 256])  # mid-rollout, and the last step of a rollout (rollouts of 128)
def test_a_sigint_mid_rollout_resumes_to_exactly_the_target(tmp_path, signal_step):
    """The partial rollout was never trained on: the checkpoint is the last update's (128 steps,
    the weights' step), and the resumed run, which runs whole rollouts, ends at --timesteps."""
    run = tmp_path / "run"
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a runner may have SIGINT ignored
    try:
        with pytest.raises(KeyboardInterrupt):
            train(TrainConfig(run_dir=str(run), **TINY), callbacks=[_SignalAt(signal_step)])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert [path.name for path in (run / "checkpoints").glob("interrupted_*.zip")] == ["interrupted_128_steps.zip"]

    summary = train(TrainConfig(resume=str(run), progress_bar=False, wandb="disabled"))
    assert summary["timesteps"] == TINY["timesteps"] == read_checkpoint(run / "model.zip").timesteps
    steps = _steps(run)
    assert steps == sorted(steps) and max(steps) == TINY["timesteps"], steps


def test_a_resumed_run_interrupted_at_its_end_is_finished_by_the_next_resume(tmp_path, monkeypatch):
    """A finished run resumed to a larger total, then stopped while its end is written: the old
    eval_summary.json (of the earlier end) does not count, the next --resume writes the end."""
    run = tmp_path / "run"
    train(TrainConfig(run_dir=str(run), **{**TINY, "timesteps": 256}))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "evaluate", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train(TrainConfig(resume=str(run), timesteps=384, progress_bar=False, wandb="disabled"))
    assert json.loads((run / "eval_summary.json").read_text())["timesteps"] == 256  # the earlier end's
    summary = train(TrainConfig(resume=str(run), progress_bar=False, wandb="disabled"))
    assert summary["timesteps"] == 384 == json.loads((run / "eval_summary.json").read_text())["timesteps"]
    assert read_checkpoint(run / "model.zip").timesteps == 384
    with pytest.raises(ValueError, match="has trained 384 steps, so --timesteps 384 leaves nothing to train"):
        train(TrainConfig(resume=str(run), progress_bar=False, wandb="disabled"))


def test_resume_reads_only_regular_files_of_bounded_size(tmp_path, monkeypatch, capsys):
    """``--resume`` of a FIFO waited forever, of ``/dev/zero`` grew to 24 GB, and a model whose ``data``
    says ``num_timesteps: 1e400`` was a traceback: each is one line, exit 2, nothing created. The same
    for the run folder's own files (``config.json``, ``progress.csv``, ...)."""
    import fw_agents.runs.resume as resume
    import train_agent

    run = _interrupted_run(tmp_path, monkeypatch)
    os.mkfifo(tmp_path / "fifo.zip")
    crafted = tmp_path / "crafted.zip"
    with zipfile.ZipFile(crafted, "w") as archive:
        archive.writestr("data", '{"num_timesteps": 1e400}')
    root = tmp_path / "runs"

    def refused(target: Path, needle: str) -> None:
        previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail(f"--resume {target} blocked"))
        signal.alarm(30)
        try:
            status = train_agent.main(["--resume", str(target), "--runs-root", str(root), "--no-progress-bar",
                                       "--wandb", "disabled"])  # fmt: skip
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert status == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
        assert not root.exists(), "a refused run leaves no run folder"

    refused(tmp_path / "fifo.zip", f"model {str(tmp_path / 'fifo.zip')!r} is a FIFO, not a regular file; give a file")
    refused(Path("/dev/zero"), "model '/dev/zero' is a character device, not a regular file; give a file")
    refused(crafted, f"{crafted}: saved num_timesteps must be an integer in [0, 9223372036854775807], got inf")
    before = sorted(path.name for path in run.iterdir())
    for name in ("config.json", "progress.csv"):  # the run folder's own files
        (run / name).rename(tmp_path / name)
        os.mkfifo(run / name)
        refused(run, f"{name} {str(run / name)!r} is a FIFO, not a regular file; give a file")
        (run / name).unlink()
        (tmp_path / name).rename(run / name)
    with monkeypatch.context() as patch:
        patch.setitem(resume.RUN_FILE_BOUNDS, "config.json", 10)
        refused(run, f"config.json {str(run / 'config.json')!r} is 1.")  # "1.03 KiB, larger than the 10 bytes accepted"
    assert sorted(path.name for path in run.iterdir()) == before
    for path in (run / "checkpoints").glob("*.zip"):  # the run's only checkpoints (no model.zip yet): a FIFO left
        path.unlink()
    os.mkfifo(run / "checkpoints" / "interrupted_256_steps.zip")
    refused(run, f"no readable checkpoint in run folder {str(run)!r} (model.zip or checkpoints/*.zip); model "
                 f"{str(run / 'checkpoints' / 'interrupted_256_steps.zip')!r} is a FIFO")  # fmt: skip
