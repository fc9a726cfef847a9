"""Run tracking: run dir, SB3 logger and SB3-free outputs, W&B modes and its failure fallback (no network)."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fw_agents.runs.sb3_logger import WandbOutputFormat
from fw_agents.runs.writers import WandbScalars
from fw_agents.runs.tracking import start_run
from fw_agents.runs.wandb_mode import resolve_wandb_mode

os.environ["WANDB_MODE"] = "disabled"


@pytest.fixture(autouse=True)
def _no_wandb_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


@pytest.mark.parametrize("sb3_logger", [True, False])
def test_logger_writes_csv_and_tensorboard(tmp_path: Path, sb3_logger: bool) -> None:
    config = {"lr": 1e-3, "device": torch.device("cpu")}
    with start_run(tmp_path, "job", config=config, wandb_mode="disabled", sb3_logger=sb3_logger) as tracker:
        assert (tracker.logger is not None) == sb3_logger
        assert tracker.wandb_run is None
        for step in range(3):
            tracker.log_scalars({"train/loss": 1.0 / (step + 1), "train/updates": step}, step=step)
        run_dir = tracker.run_dir
    rows = list(csv.DictReader((run_dir / "progress.csv").open()))
    assert [float(r["train/loss"]) for r in rows] == pytest.approx([1.0, 0.5, 1 / 3])
    assert list(run_dir.glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert '"device": "cpu"' in (run_dir / "config.json").read_text()


def test_sb3_free_writers_match_the_sb3_logger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """progress.csv byte for byte and the stdout tables: the supervised heads' files keep their format."""
    rows = [
        {"train/updates": 0},
        {"train/updates": 10, "val/error": 0.5},  # one new key per row: SB3 orders new keys as a set
        {"train/updates": 20, "val/error": 0.25, "time/note": 'a "b", c'},
        {"train/updates": 30, "val/error": 1 / 3},  # a key missing
    ]
    csv_text, stdout = {}, {}
    for sb3_logger in (True, False):
        run_dir = tmp_path / str(sb3_logger)
        with start_run(run_dir=str(run_dir), wandb_mode="disabled", log_formats=("stdout", "csv"), sb3_logger=sb3_logger) as tracker:
            for step, values in enumerate(rows):
                tracker.log_scalars(values, step)
        csv_text[sb3_logger] = (run_dir / "progress.csv").read_text()
        stdout[sb3_logger] = capsys.readouterr().out.replace(str(run_dir), "RUN")
    assert csv_text[True] == csv_text[False]
    assert csv_text[False].splitlines()[0] == "train/updates,val/error,time/note"
    assert stdout[True] == stdout[False]


def test_config_json_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fw_agents.runs.tracking as tracking

    written = []
    real = tracking.write_text_atomically
    monkeypatch.setattr(tracking, "write_text_atomically", lambda path, text: (written.append(Path(path)), real(path, text)))
    with start_run(tmp_path, "job", config={"b": 1, "a": [1, 2]}, wandb_mode="disabled", sb3_logger=False) as tracker:
        pass
    assert written == [tracker.run_dir / "config.json"]
    assert (tracker.run_dir / "config.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'


def test_resolve_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve_wandb_mode("offline") == "offline"
    assert resolve_wandb_mode(None) == "disabled"  # WANDB_MODE from the environment
    monkeypatch.delenv("WANDB_MODE")
    assert resolve_wandb_mode(None) == "offline"  # no credentials
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode("auto") == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password " + "y" * 40 + "\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    assert resolve_wandb_mode(None) == "online"
    with pytest.raises(ValueError, match="online, offline, disabled"):
        resolve_wandb_mode("sometimes")


def test_wandb_mode_from_the_environment_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """``$WANDB_MODE`` takes wandb's own values (``wandb.Settings.mode``); anything else is refused in
    one line, where it used to run without W&B without a word."""
    from fw_agents.runs.wandb_mode import check_wandb_mode

    for given, mode in (("offline", "offline"), ("dryrun", "offline"), ("run", "online"), ("shared", "online"),
                        (" Disabled ", "disabled")):  # fmt: skip
        monkeypatch.setenv("WANDB_MODE", given)
        assert resolve_wandb_mode(None) == mode
        check_wandb_mode(None)
    monkeypatch.setenv("WANDB_MODE", "bogus")
    for check in (lambda: resolve_wandb_mode(None), lambda: check_wandb_mode(None), lambda: check_wandb_mode("auto")):
        with pytest.raises(ValueError) as error:
            check()
        assert str(error.value) == (
            "WANDB_MODE='bogus' is not a W&B mode; accepted: online, offline, disabled (wandb's own dryrun, run, "
            "shared too), or unset it: online with W&B credentials, else offline"
        )
    check_wandb_mode("disabled")  # --wandb given: the environment is not consulted


def test_wandb_init_failure_falls_back_to_disabled(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import wandb

    def broken_init(**kwargs: object) -> None:
        raise wandb.errors.CommError("Timed out while retrying\nsecond line")

    monkeypatch.setattr(wandb, "init", broken_init)
    with start_run(tmp_path, "job", wandb_mode="online") as tracker:
        assert tracker.wandb_run is None
        tracker.log_scalars({"x": 1.0}, step=1)
    warning = [line for line in capsys.readouterr().err.splitlines() if "W&B" in line]
    assert len(warning) == 1 and "disabled" in warning[0] and "second line" not in warning[0]


def test_unreachable_server_does_not_hang(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A real online init against a closed local port gives up within the init timeout."""
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.delenv("WANDB_MODE")
    start = time.monotonic()
    tracker = start_run(tmp_path, "job", wandb_mode=None, wandb_init_timeout=2.0)
    try:
        assert tracker.wandb_run is None
        tracker.log_scalars({"x": 1.0}, step=1)
    finally:
        tracker.close()
    assert time.monotonic() - start < 20


@pytest.mark.parametrize("sb3_logger", [True, False])
def test_offline_run_mirrors_logger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sb3_logger: bool) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    with start_run(tmp_path, "job", config={"a": 1}, wandb_mode=None, log_formats=("csv",), sb3_logger=sb3_logger) as tracker:
        assert tracker.wandb_run is not None
        if sb3_logger:
            assert any(isinstance(f, WandbOutputFormat) for f in tracker.logger.output_formats)
        else:
            assert any(isinstance(w, WandbScalars) for w in tracker.writers)
        tracker.log_scalars({"train/loss": 0.5}, step=10)
        tracker.log_summary({"test_error": 0.1})
        run_dir = tracker.run_dir
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


class _FakeRun:
    def __init__(self, fail: bool = False) -> None:
        self.logged: list[dict] = []
        self.fail = fail

    def log(self, payload: dict, step: int | None = None) -> None:
        assert step == payload["global_step"]
        if self.fail:
            raise RuntimeError("network down")
        self.logged.append(payload)


def test_kvwriter_keeps_scalars_only_and_survives_errors(capsys: pytest.CaptureFixture[str]) -> None:
    run = _FakeRun()
    writer = WandbOutputFormat(run)
    values = {"a": 1.5, "b": np.float32(2.0), "c": torch.tensor(3.0), "d": "text", "e": 4, "hidden": 5.0}
    writer.write(values, {"hidden": ("wandb",), "a": ("stdout",)}, step=7)
    assert run.logged == [{"global_step": 7, "a": 1.5, "b": 2.0, "c": 3.0, "e": 4}]
    failing = WandbOutputFormat(_FakeRun(fail=True))
    failing.write({"a": 1.0}, {}, step=1)
    failing.write({"a": 2.0}, {}, step=2)  # turned off: no second warning, no exception
    assert capsys.readouterr().err.count("W&B logging failed") == 1
    assert failing.run is None



def test_an_offline_run_says_how_to_upload_it(tmp_path, capsys):
    from types import SimpleNamespace

    from fw_agents.runs.tracking import Tracker

    files = tmp_path / "wandb" / "offline-run-20261130_000000-abc" / "files"
    run = SimpleNamespace(settings=SimpleNamespace(_offline=True), dir=str(files), finish=lambda: None)
    Tracker(run_dir=tmp_path, wandb_run=run).close()
    assert f"wandb sync {files.parent}" in capsys.readouterr().err


@pytest.mark.parametrize("sb3_logger", [True, False])
def test_an_offline_resume_continues_the_run_and_its_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], sb3_logger: bool
) -> None:
    """A resumed offline run is a second offline folder of the same W&B run: W&B's own step is the
    logged step (offline, W&B cannot ask the server where the run got, and restarted at 0), and the
    run says how to upload both folders together, oldest first."""
    import fw_agents.runs.tracking as tracking

    steps_given: list[int | None] = []

    def spied_init(*args, **kwargs):  # the real offline W&B run; its log() records the step it is given
        run = real_init(*args, **kwargs)
        log = run.log
        run.log = lambda data, step=None, **rest: steps_given.append(step) or log(data, step=step, **rest)
        return run

    real_init = tracking.init_wandb
    monkeypatch.setattr(tracking, "init_wandb", spied_init)
    options = dict(run_dir=str(tmp_path / "r"), wandb_mode="offline", log_formats=("csv",), sb3_logger=sb3_logger,
                   step_column="train/updates")  # fmt: skip
    ids = []
    for resume, steps in ((False, range(1, 6)), (True, range(3, 8))):  # crashed after 5, its checkpoint at 2
        if resume:  # W&B names an offline folder by its start second: a resume is never within that second
            time.sleep(1.0)
        with start_run(tmp_path, "x", resume=resume, resume_step=2 if resume else None, **options) as tracker:
            ids.append(tracker.wandb_run.id)
            for step in steps:
                tracker.log_scalars({"train/updates": step, "loss": float(step)}, step=step)
    assert ids[0] == ids[1]
    assert steps_given == [1, 2, 3, 4, 5, 6, 7], "W&B's step continues across the resume"
    folders = sorted((tmp_path / "r" / "wandb").glob(f"offline-run-*-{ids[0]}"))
    assert len(folders) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith(f"wandb sync {folders[0]} {folders[1]}"), last
