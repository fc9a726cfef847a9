"""train_agent.py end to end at a tiny budget, its bad-input handling, Ctrl-C and --resume."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.callbacks import BaseCallback

import fw_agents.train as train_module
import train_agent
from fw_agents.config import TrainConfig
from fw_agents.train import train
from fw_agents.policies import default_memory_kwargs
from fw_agents.runs.errors import NonFiniteError
from fw_agents.train_cli import CORE_FLAGS

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(
    timesteps=512, n_envs=4, n_steps=32, batch_size=64, n_epochs=1, hidden_size=16, eval_freq=256,
    eval_episodes=4, checkpoint_freq=256, gif_episodes=1, wandb="disabled", progress_bar=False,
)  # fmt: skip


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled")
    return subprocess.run(
        [sys.executable, str(ROOT / "train_agent.py"), *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.mark.slow
def test_cli_end_to_end(tmp_path):
    run = tmp_path / "run"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "progress_bar"]
    result = _cli("--env", "CatchBlind16-v0", "--memory", "fastweights", "--decay", "0.9", "--run-dir", str(run), *flags)
    assert result.returncode == 0, result.stderr
    assert "catch rate" in result.stdout
    for name in ["model.zip", "progress.csv", "learning_curve.png", "eval_summary.json", "episodes.gif",
                 "evaluations.npz", "config.json"]:  # fmt: skip
        assert (run / name).is_file(), name
    assert list((run / "checkpoints").glob("model_*_steps.zip"))
    assert RecurrentPPO.load(run / "best" / "best_model.zip", device="cpu").policy.memory == "fastweights"
    assert list(run.glob("events.out.tfevents.*"))
    summary = json.loads((run / "eval_summary.json").read_text())
    assert summary["episodes"] == 4 and -1 <= summary["mean_return"] <= 1 and 0 <= summary["catch_rate"] <= 1
    assert summary["timesteps"] == 512
    model = RecurrentPPO.load(run / "model.zip", device="cpu")
    assert model.policy.memory == "fastweights" and model.num_timesteps == 512
    assert model.policy.lstm_actor.core.decay == 0.9
    config = json.loads((run / "config.json").read_text())  # the full resolved config
    assert config["memory_kwargs"] == dict(default_memory_kwargs("fastweights"), decay=0.9)
    assert config["threads"] == 1 and config["gamma"] == 0.99 and set(config) >= {f.name for f in fields(TrainConfig)}
    assert config["algorithm"] == "FastRecurrentPPO" and config["clip_range"] == 0.2 and config["features_dim"] > 0
    assert "fw_agents_version" in config and "vf_coef" in config and "max_grad_norm" in config


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--env", "Nope-v9"], "Nope-v9"),
        (["--memory", "transformer"], "transformer"),
        (["--decay", "1.5"], "decay"),
        (["--fast-lr", "-1"], "fast_lr"),
        (["--timesteps", "0"], "timesteps"),
        (["--n-envs", "x"], "n-envs"),
        (["--resume", "/no/such/checkpoint.zip"], "/no/such/checkpoint.zip"),
        (["--device", "tpu"], "tpu"),
        (["--ent-coef", "nan"], "ent_coef"),
        (["--ent-coef", "inf"], "ent_coef"),
        (["--learning-rate", "nan"], "learning_rate"),
        (["--gamma", "nan"], "gamma"),
        (["--batch-size", "1"], "batch_size"),
        (["--memory-kwargs", "nope=1"], "unknown memory_kwargs key 'nope' for memory fastweights; accepted: fast_lr"),
        (["--memory", "irnn", "--memory-kwargs", "decay=0.9"], "accepted: identity_scale"),
        (["--decay", "0.9", "--memory", "lstm"], "--decay applies to --memory fastweights only"),
        (["--memory", "gru", "--no-bias-correction"], "--no-bias-correction applies to --memory fastweights only"),
        (["--memory", "gru", "--fast-share", "1"], "--fast-share applies to --memory fastweights only"),
        (["--fast-share", "0"], "fast_share (η share) must be a finite number in (0, 1e+06], got 0.0"),
        (["--decay", "0.9", "--memory-kwargs", "decay=0.8"], "both set decay"),
        (["--gae-lambda", "1.5"], "gae_lambda"),
        (["--gamma", "0"], "gamma"),
        (["--threads", "0"], "threads"),
        (["--n-envs", "1e8"], "n-envs"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, needle, tmp_path, capsys):
    _assert_one_line_exit_2([*args, "--run-dir", str(tmp_path / "r")], needle, capsys)
    assert not (tmp_path / "r").exists(), "rejected input writes nothing"


def _assert_one_line_exit_2(argv: list[str], needle: str, capsys) -> None:
    """``train_agent.main(argv)`` in this process (fast; the end-to-end test runs the script)."""
    try:
        status = train_agent.main([*argv, "--wandb", "disabled", "--no-progress-bar"])
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


def _module_registering_a_broken_env(folder: Path) -> str:
    """A module (importable from ``folder``) registering an env that needs a missing package."""
    (folder / "broken_envs.py").write_text(
        "import gymnasium as gym\n"
        "from gymnasium.error import DependencyNotInstalled\n"
        "def make(**kwargs):\n"
        "    raise DependencyNotInstalled('Box9D is not installed: pip install box9d')\n"
        "gym.register('NeedsBox9D-v0', entry_point=make)\n"
    )
    return "broken_envs:NeedsBox9D-v0"


def _module_failing_on_import(folder: Path) -> str:
    """A module (importable from ``folder``) whose own code raises when imported."""
    (folder / "failing_envs.py").write_text("raise RuntimeError('no GPU simulator here')\n")
    return "failing_envs:Sim-v0"


@pytest.mark.parametrize(
    "make_args,needle",
    [
        (lambda d: ["--run-dir", str(_file(d))], "as a run folder: "),
        (lambda d: ["--run-dir", str(_file(d).parent)], "holds no run (config.json): it has a-file.zip"),  # the user's own files
        (lambda d: ["--runs-root", str(_file(d))], "cannot create run folders under"),
        (lambda d: ["--resume", str(_zip(d, {"policy.pth": b""}))], "has no 'data' entry"),
        (lambda d: ["--resume", str(_file(d, b"PK\x03\x04 half-written"))], "cannot read model"),
        (lambda d: ["--resume", str(d)], "no readable checkpoint in run folder"),
        (lambda d: ["--env", _module_registering_a_broken_env(d)], "Box9D is not installed"),
        (lambda d: ["--env", "Blackjack-v1"], "observes Tuple(Discrete(32)"),
        (lambda d: ["--n-envs", "4096", "--n-steps", "1000000"], "GiB (--n-envs 4096 x --n-steps 1000000"),
        (lambda d: ["--hidden-size", "65536"], "--hidden-size 65536), more than 80%"),
        (lambda d: ["--n-steps", "1000000"], "--n-steps 1000000 steps"),
        (lambda d: ["--hidden-size", "1e5"], "invalid int value: '1e5'"),
        (lambda d: ["--fast-lr", "1e300"], "fast_lr (η) must be a finite number in (0, 1e+06]"),
        (lambda d: ["--device", "mps"], "invalid choice: 'mps'"),
        (lambda d: ["--device", "meta"], "invalid choice: 'meta'"),
        (lambda d: ["--seed", "-1"], "seed must be an integer in [0, "),
        (lambda d: ["--memory-kwargs", "decay"], "expected KEY=VALUE"),
        (lambda d: ["--eval-episodes", "0"], "eval_episodes must be an integer in [1, 10000], got 0"),
        (lambda d: ["--env", "nomodule:Catch-v0"], "cannot import module 'nomodule' (ModuleNotFoundError"),
        (lambda d: ["--env", _module_failing_on_import(d)], "cannot import module 'failing_envs' (RuntimeError: no GPU"),
        (lambda d: ["--env", ".relative:Catch-v0"], "'.relative' is not a module name; use module:id"),
        (lambda d: ["--env", ":Catch-v0"], "'' is not a module name; use module:id"),
        (lambda d: ["--seed", "99999999999"], "seed must be an integer in [0, 4294947295], got 99999999999"),
        (lambda d: ["--run-dir", ""], "run_dir must be a path, got ''"),
        (lambda d: ["--resume", " "], "resume must be a path, got ' '"),
    ],
)
def test_bad_files_envs_and_sizes_are_one_line(make_args, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _assert_one_line_exit_2(make_args(tmp_path), needle, capsys)


def _file(folder: Path, content: bytes = b"") -> Path:
    path = folder / "a-file.zip"
    path.write_bytes(content)
    return path


def _zip(folder: Path, entries: dict[str, bytes]) -> Path:
    import zipfile

    path = folder / "model.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def test_help_documents_every_field_with_its_default():
    result = _cli("--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for field in fields(TrainConfig):  # each field is a flag with its doc and its default
        flag = "--" + field.name.replace("_", "-")
        assert flag in text, flag
    assert text.count("(default: ") >= len(fields(TrainConfig)) + len(CORE_FLAGS)
    assert all(env_id in text for env_id in train_module.envs.CATCH_IDS) and "CatchFlicker16-v0" in text
    assert "module:id" in text and "--lr LEARNING_RATE" in text and "--no-progress-bar" in text
    for flag in ("--fast-lr FAST_LR", "--fast-share FAST_SHARE", "--decay DECAY", "--inner-steps INNER_STEPS",
                 "--identity-scale IDENTITY_SCALE", "--no-bias-correction"):  # fmt: skip
        assert flag in text
    assert "--decay DECAY fast weights: λ, the share of the fast memory kept at each step (default: 0.95)" in text


def test_command_line_and_python_api_build_the_same_config():
    import train_agent

    assert train_agent.parse_config([]) == TrainConfig()
    config = train_agent.parse_config(["--fast-lr", "0.3", "--no-bias-correction", "--memory-kwargs", "decay=0.9",
                                       "--gamma", "0.9", "--threads", "2", "--lr", "0.01"])  # fmt: skip
    assert config == TrainConfig(memory_kwargs=dict(decay=0.9, fast_lr=0.3, bias_correction=False), gamma=0.9,
                                 threads=2, learning_rate=0.01)  # fmt: skip
    assert config.policy_kwargs()["memory_kwargs"] == dict(fast_lr=0.3, decay=0.9, inner_steps=1, identity_scale=0.05,
                                                           bias_correction=False)  # fmt: skip
    assert TrainConfig(memory="lstm").policy_kwargs()["memory_kwargs"] == {}
    assert TrainConfig(memory="irnn", memory_kwargs={"identity_scale": 1.0}).resolved()["memory_kwargs"] == {
        "identity_scale": 1.0
    }
    assert train_agent.parse_config(["--memory", "lstm"]).memory_kwargs == {}  # the shortcuts' defaults stay out


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(memory_kwargs={"nope": 1}), "unknown memory_kwargs key 'nope' for memory fastweights; accepted: fast_lr, "
                                          "decay, inner_steps, layer_norm, mode, fast_share, identity_scale, bias_correction"),  # fmt: skip
        (dict(memory="lstm", memory_kwargs={"decay": 0.9}), "unknown memory_kwargs key 'decay' for memory lstm; "
                                                            "accepted: none"),  # fmt: skip
        (dict(memory_kwargs={"decay": 1.5}), "decay"),
        (dict(memory_kwargs=[("decay", 0.9)]), "memory_kwargs must be a dict"),
        (dict(memory="alstm", hidden_size=7), "hidden_size must be even"),
        (dict(threads=0), "threads must be an integer in [1, 1024], got 0"),
        (dict(n_envs=3, n_steps=7, batch_size=4), "batch_size 4 leaves a last minibatch of one step (n_envs * n_steps = 21)"),
        (dict(seed=-1), "seed must be an integer in [0, 4294947295], got -1"),
        (dict(gamma=0), "gamma must be a finite number in (0, 1], got 0"),
        (dict(progress_bar=1), "progress_bar must be True or False, got 1"),
    ],
)
def test_validate_names_the_bad_value(changes, message):
    with pytest.raises(ValueError) as error:
        TrainConfig(**changes).validate()
    assert message in str(error.value)
    TrainConfig(threads=None).validate()  # torch's own thread count


def test_the_default_minibatch_is_256_or_the_whole_smaller_rollout():
    # --n-envs 2 alone (a rollout of 128 steps) trains, in one minibatch; config.json records it
    small = TrainConfig(n_envs=2)
    small.validate()
    assert small.batch_size is None and small.minibatch_size == 128 and small.resolved()["batch_size"] == 128
    assert TrainConfig().minibatch_size == 256 and TrainConfig().resolved()["batch_size"] == 256
    with pytest.raises(ValueError, match=r"batch_size must be an integer in \[2, 128\] .* got 256"):
        TrainConfig(n_envs=2, batch_size=256).validate()  # asked for: refused, never silently shrunk


def test_threads_apply_during_training_only(monkeypatch):
    seen = []
    monkeypatch.setattr(train_module, "_train", lambda config, *rest: seen.append(torch.get_num_threads()) or {})
    before = torch.get_num_threads()
    for threads in (1, 2, None):
        train(TrainConfig(threads=threads))
        assert torch.get_num_threads() == before
    assert seen == [1, 2, before]


def test_ctrl_c_saves_checkpoint_and_resume_keeps_step_count(tmp_path, monkeypatch):
    stop_at = 256

    def interrupt(self) -> bool:  # a Ctrl-C arriving mid-training, in the rollout after the update at stop_at
        if self.num_timesteps > stop_at:
            raise KeyboardInterrupt
        return True

    monkeypatch.setattr(train_module.CatchRateCallback, "_on_step", interrupt)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(env="CatchBlind16-v0", run_dir=str(run), **TINY))
    saved = list((run / "checkpoints").glob("interrupted_*_steps.zip"))
    assert len(saved) == 1 and not list(run.rglob("*.partial.zip"))
    interrupted = RecurrentPPO.load(saved[0], device="cpu")
    assert interrupted.num_timesteps == stop_at
    assert (run / "progress.csv").stat().st_size > 0  # logs written before the interrupt survive

    monkeypatch.undo()
    resumed_dir = tmp_path / "resumed"
    summary = train(TrainConfig(env="CatchBlind16-v0", run_dir=str(resumed_dir), resume=str(saved[0]), **TINY))
    assert summary["timesteps"] == TINY["timesteps"]
    model = RecurrentPPO.load(resumed_dir / "model.zip", device="cpu")
    assert model.num_timesteps == TINY["timesteps"]


def test_any_gymnasium_env_trains_without_catch_specifics(tmp_path):
    run = tmp_path / "cartpole"
    config = dict(TINY, timesteps=256, eval_freq=128, n_steps=32)
    summary = train(TrainConfig(env="CartPole-v1", memory="gru", run_dir=str(run), **config))
    assert "catch_rate" not in summary and summary["episodes"] == 4 and summary["mean_return"] > 0
    assert (run / "learning_curve.png").is_file() and (run / "model.zip").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("env_id", ["Pendulum-v1", "popgym:popgym-MineSweeperEasy-v0"])
def test_continuous_and_multi_discrete_action_envs_train(env_id, tmp_path):
    """Box actions (Pendulum) and an env registered by its module on demand (``module:id``, as
    ``gym.make`` takes it), with MultiDiscrete actions and a Discrete observation."""
    if env_id.startswith("popgym"):
        pytest.importorskip("popgym")
    run = tmp_path / "run"
    summary = train(TrainConfig(env=env_id, run_dir=str(run), **dict(TINY, timesteps=256, eval_freq=128, n_steps=32)))
    assert summary["timesteps"] == 256 and "catch_rate" not in summary
    assert (run / "model.zip").is_file()


def test_gif_frames_play_at_the_requested_rate(tmp_path):
    from PIL import Image

    from fw_agents.runs.plots import record_gif

    model = RecurrentPPO(train_module.RecurrentMemoryPolicy, train_module.make_env("Catch-v0", 1, 0), n_steps=8, device="cpu",
                         policy_kwargs=dict(hidden_size=8))  # fmt: skip
    path = record_gif(model, "Catch-v0", tmp_path / "e.gif", episodes=1, fps=10)
    with Image.open(path) as gif:
        durations = []
        for frame in range(gif.n_frames):
            gif.seek(frame)
            durations.append(gif.info["duration"])
    assert gif.n_frames > 10 and set(durations) == {100}  # 1000 / 10 ms each (was 0: seconds read as ms)
    assert [p.name for p in tmp_path.iterdir()] == ["e.gif"]


def test_non_finite_parameters_stop_training_with_one_line(tmp_path, monkeypatch, capsys):
    """An update that leaves a NaN parameter stops the run before the next rollout samples from
    it: one line naming the step, exit 1, no model.zip, earlier checkpoints intact."""
    import train_agent
    from fw_agents.algorithms import FastRecurrentPPO

    real_train = FastRecurrentPPO.train

    def diverging_train(self) -> None:
        real_train(self)
        if self.num_timesteps >= 256:
            with torch.no_grad():
                next(self.policy.parameters()).fill_(float("nan"))

    monkeypatch.setattr(FastRecurrentPPO, "train", diverging_train)
    run = tmp_path / "run"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "progress_bar"]
    assert train_agent.main(["--env", "CatchBlind16-v0", "--run-dir", str(run), "--no-progress-bar", *flags]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite parameters" in err[0] and "step 256" in err[0] and "--learning-rate" in err[0]
    assert not (run / "model.zip").exists()
    checkpoints = list((run / "checkpoints").glob("model_*_steps.zip"))
    assert checkpoints and all(
        all(torch.isfinite(p).all() for p in RecurrentPPO.load(c, device="cpu").policy.parameters()) for c in checkpoints
    )


def test_non_finite_loss_is_named(monkeypatch):
    from stable_baselines3.common.logger import Logger

    callback = train_module.StopOnNonFinite()
    model = RecurrentPPO(train_module.RecurrentMemoryPolicy, train_module.make_env("Catch-v0", 2, 0), n_steps=8, device="cpu",
                         policy_kwargs=dict(hidden_size=8))  # fmt: skip
    model.set_logger(Logger(None, []))
    callback.init_callback(model)
    callback.on_rollout_start()  # finite: nothing happens
    model.logger.record("train/loss", float("inf"))
    with pytest.raises(NonFiniteError, match="non-finite loss"):
        callback.on_rollout_start()


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_like_ctrl_c(tmp_path):
    """What schedulers and `timeout` send: the run saves `interrupted_<steps>_steps.zip` and
    exits 128 + SIGTERM; every zip in the run folder loads."""
    import signal
    import time

    run = tmp_path / "run"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in dict(TINY, timesteps=10_000_000).items() if k != "progress_bar"]
    env = dict(os.environ, WANDB_MODE="disabled")
    process = subprocess.Popen([sys.executable, str(ROOT / "train_agent.py"), "--env", "CatchBlind16-v0", "--run-dir",
                                str(run), "--no-progress-bar", *flags], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not list((run / "checkpoints").glob("model_*_steps.zip")) and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    saved = list((run / "checkpoints").glob("interrupted_*_steps.zip"))
    assert len(saved) == 1 and "checkpoint saved" in out
    for path in run.rglob("*.zip"):
        RecurrentPPO.load(path, device="cpu")
    assert not list(run.rglob("*.partial.zip"))


def test_a_failed_save_keeps_the_previous_file_and_no_partial_one(tmp_path, monkeypatch):
    """A full disk (or a kill) mid-save: the earlier zip under the final name is untouched."""
    import errno

    model = RecurrentPPO(train_module.RecurrentMemoryPolicy, train_module.make_env("Catch-v0", 2, 0), n_steps=8, device="cpu",
                         policy_kwargs=dict(hidden_size=8))  # fmt: skip
    path = tmp_path / "best" / "best_model.zip"
    train_module.save_atomically(model, path)
    good = path.read_bytes()

    def disk_full(self, target, *args, **kwargs):
        Path(target).write_bytes(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RecurrentPPO, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        train_module.save_atomically(model, path)
    assert path.read_bytes() == good and [p.name for p in path.parent.iterdir()] == ["best_model.zip"]


class _Record(BaseCallback):
    """Counts its calls; returns False (stop) from the ``stop_at``-th on."""

    def __init__(self, stop_at: int | None = None) -> None:
        super().__init__()
        self.calls, self.stop_at, self.seen = 0, stop_at, []

    def _on_step(self) -> bool:
        self.calls += 1
        if self.parent is not None:  # an after-evaluation callback sees the EvalCallback
            self.seen.append((self.parent.evaluations_timesteps[-1], self.parent.last_mean_reward))
        return self.stop_at is None or self.calls < self.stop_at


def test_train_takes_callbacks_that_observe_evaluations_and_can_stop(tmp_path):
    every_step, after_eval = _Record(), _Record(stop_at=2)
    config = TrainConfig(env="CatchBlind16-v0", run_dir=str(tmp_path / "r"), **dict(TINY, timesteps=2048, eval_freq=256))
    summary = train(config, callbacks=[every_step], eval_callbacks=[after_eval])
    assert [step for step, _ in after_eval.seen] == [256, 512], "the second evaluation stopped training"
    assert all(-1 <= reward <= 1 for _, reward in after_eval.seen)
    assert summary["timesteps"] < 2048 and every_step.calls == summary["timesteps"] // config.n_envs
    rows = list(csv.DictReader((tmp_path / "r" / "progress.csv").open()))
    evaluated = [row for row in rows if row.get("eval/mean_reward")]
    assert evaluated and all(row["eval/catch_rate"] != "" for row in evaluated), "catch rate in the same row"
    for row in evaluated:  # Catch: +1 exactly when caught, so the rate follows from the mean return
        assert float(row["eval/catch_rate"]) == pytest.approx((float(row["eval/mean_reward"]) + 1) / 2)


def test_wandb_gets_the_curve_as_an_image_the_gif_as_a_video_and_the_model_on_request(tmp_path, monkeypatch):
    """With a W&B run (here a stand-in recording what it is given): media, artifact, project, group, tags."""
    import fw_agents.runs.tracking as tracking

    class Run:
        id, dir, settings = "r1", str(tmp_path), None

        def __init__(self):
            self.logged, self.artifacts, self.summary = [], [], {}

        def log(self, values, step=None):
            self.logged.append(values)
            self.summary.update(values)  # as W&B does: the summary holds each key's last value

        def log_artifact(self, artifact):
            self.artifacts.append(artifact)

        def define_metric(self, *args, **kwargs):
            pass

        def finish(self):
            pass

    run, init = Run(), {}
    monkeypatch.setattr(tracking, "init_wandb", lambda *args, **kwargs: init.update(kwargs) or run)
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    config = TrainConfig(env="CatchBlind16-v0", run_dir=str(tmp_path / "r"), wandb_group="g", wandb_tags=("a", "b"),
                         wandb_log_model=True, **{**TINY, "wandb": "offline"})  # fmt: skip
    train_summary = train(config)
    media = {key: type(value).__name__ for values in run.logged for key, value in values.items()
             if type(value).__name__ in ("Image", "Video")}  # fmt: skip
    assert media == {"media/learning_curve": "Image", "media/episodes_gif": "Video"}
    # the final evaluation's episode count stays in the summary, not overwritten by the GIF
    assert run.summary["episodes"] == config.eval_episodes and run.summary["mean_return"] == train_summary["mean_return"]
    assert [artifact.type for artifact in run.artifacts] == ["model"]
    assert init["project"] == "from-env" and init["group"] == "g" and list(init["tags"]) == ["a", "b"]
    assert init["config"]["algorithm"] == "FastRecurrentPPO"


def test_installed_commands_and_python_m(tmp_path):
    """``pip install`` gives the commands; ``python -m fw_agents`` is the training command."""
    from importlib.metadata import entry_points

    scripts = {ep.name: ep for ep in entry_points(group="console_scripts") if ep.name.startswith("fw-")}
    assert {"fw-train", "fw-retrieval", "fw-glimpses", "fw-zoo"} <= set(scripts)
    assert scripts["fw-train"].load() is train_agent.main
    result = subprocess.run([sys.executable, "-m", "fw_agents", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("usage: python -m fw_agents")


@pytest.mark.parametrize("verbose", [0, 1])
def test_verbose_0_keeps_the_terminal_quiet(verbose, tmp_path, capsys):
    train(TrainConfig(env="CatchBlind16-v0", run_dir=str(tmp_path / "r"), verbose=verbose, **TINY))
    out = capsys.readouterr().out
    assert ("rollout/" in out) == bool(verbose) and ("Eval num_timesteps" in out) == bool(verbose)
    assert "train/loss" in (tmp_path / "r" / "progress.csv").read_text(), "the curves are written either way"


def test_run_dir_dot_is_the_current_folder(tmp_path, monkeypatch):
    """``--run-dir .`` trains in the current folder (SB3's EvalCallback had made ``makedirs("")`` of it)."""
    monkeypatch.chdir(tmp_path)
    summary = train_module.train(TrainConfig(run_dir=".", env="CatchBlind16-v0", timesteps=128, n_envs=4, n_steps=32,
                                      batch_size=64, n_epochs=1, hidden_size=8, eval_freq=64, eval_episodes=2,
                                      gif_episodes=0, wandb="disabled", progress_bar=False))  # fmt: skip
    assert summary["timesteps"] == 128 and Path(summary["run_dir"]) == tmp_path
    assert (tmp_path / "eval_summary.json").exists() and (tmp_path / "evaluations.npz").exists()


def test_non_finite_values_inside_an_update_stop_with_one_line(tmp_path, capsys):
    """NaN that surfaces inside torch mid-update (a distribution's argument check) is the
    non-finite stop (exit 1, one line), not bad input (exit 2) or a traceback."""
    argv = ["--env", "Pendulum-v1", "--lr", "1e30", "--timesteps", "256", "--n-envs", "2", "--n-steps", "64",
            "--batch-size", "64", "--hidden-size", "8", "--eval-freq", "256", "--eval-episodes", "1",
            "--gif-episodes", "0", "--wandb", "disabled", "--no-progress-bar", "--run-dir", str(tmp_path / "r")]  # fmt: skip
    status = train_agent.main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 1 and len(lines) == 1 and "non-finite" in lines[0] and "Traceback" not in err, err


def test_an_interrupt_after_training_says_the_model_is_saved(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "evaluate", interrupted)
    config = TrainConfig(run_dir=str(tmp_path / "r"), env="CatchBlind16-v0", timesteps=64, n_envs=4, n_steps=16,
                         batch_size=32, n_epochs=1, hidden_size=8, eval_freq=64, eval_episodes=2, gif_episodes=0,
                         wandb="disabled", progress_bar=False)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        train_module.train(config)
    out = capsys.readouterr().out
    assert f"interrupted after training; the model is saved to {tmp_path / 'r' / 'model.zip'}" in out
    assert (tmp_path / "r" / "model.zip").exists()


def test_an_evaluation_episode_that_never_ends_is_cut_reported_and_shown(tmp_path, monkeypatch, capsys):
    """CliffWalking-v1 has no time limit, and a deterministic policy that walks into its walls never
    ends an episode: the run's first evaluation hung. Evaluation and GIF episodes are cut at
    --eval-max-steps, counted as truncated (eval_summary.json, progress.csv, the final line), and a
    slow evaluation says how far it is."""
    import signal

    import fw_agents.runs.evaluation as evaluation

    monkeypatch.setattr(evaluation, "PROGRESS_INTERVAL_S", 0.0)  # a line at every episode
    run = tmp_path / "r"
    argv = ["--env", "CliffWalking-v1", "--timesteps", "256", "--n-envs", "2", "--n-steps", "64", "--batch-size", "64",
            "--n-epochs", "1", "--hidden-size", "8", "--eval-freq", "128", "--eval-episodes", "2", "--eval-max-steps", "20",
            "--gif-episodes", "1", "--wandb", "disabled", "--run-dir", str(run)]  # fmt: skip
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the evaluation did not end"))
    signal.alarm(120)
    try:
        status = train_agent.main(argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out = capsys.readouterr().out
    summary = json.loads((run / "eval_summary.json").read_text())
    assert status == 0 and summary["max_episode_steps"] == 20 and summary["episodes"] == 2
    truncated = summary["truncated_episodes"]
    assert truncated >= 1 and f"{truncated} cut at 20 steps  ->  {run}" in out  # the final line
    assert summary["mean_length"] <= 20
    assert "evaluation at 128 steps: 1/2 episodes" in out and "final evaluation: 2/2 episodes" in out
    rows = list(csv.DictReader((run / "progress.csv").open()))
    assert any(row.get("eval/truncated_episodes") for row in rows)
    if (run / "episodes.gif").exists():  # (pygame renders CliffWalking) its one episode, cut at 20 steps too
        import imageio.v2 as imageio

        assert len(imageio.mimread(run / "episodes.gif")) <= 21
    else:
        assert "no GIF" in out
