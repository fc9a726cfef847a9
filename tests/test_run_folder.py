"""Run folders are claimed by one run at a time (fw_agents.runs.folder) and progress.csv survives
crashes and resumes (fw_agents.runs.progress_csv)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from stable_baselines3.common.logger import CSVOutputFormat

from fw_agents.runs.progress_csv import ProgressCsv
from fw_agents.runs.folder import RunFolderError, claim_run_folder


def test_auto_named_folders_are_unique_and_explicit_ones_are_created(tmp_path):
    first, second = claim_run_folder(tmp_path, "job"), claim_run_folder(tmp_path, "job")
    assert first.path != second.path and first.path.is_dir() and second.path.is_dir()
    explicit = claim_run_folder(tmp_path, "job", run_dir=str(tmp_path / "a" / "b"))
    assert explicit.path == tmp_path / "a" / "b" and explicit.path.is_dir()


@pytest.mark.parametrize("name, expected", [
    ("popgym:popgym-MineSweeperEasy-v0-fastweights-s0", "popgym-popgym-MineSweeperEasy-v0-fastweights-s0"),
    ("ALE/Pong-v5-lstm-s1", "ALE-Pong-v5-lstm-s1"),
    ("my.pkg:Env v1\\x*?<>|\"é", "my.pkg-Env-v1-x-------"),
    ("CatchBlind16-v0-gru-s3", "CatchBlind16-v0-gru-s3"),  # already safe: unchanged
    ("con", "_con"), ("NUL.v0", "_NUL.v0"), ("com1-x", "com1-x"), ("lpt9", "_lpt9"),  # names Windows reserves
    ("job. . ", "job"), ("..", "run"), ("", "run"),  # no trailing dots or spaces, never empty
])  # fmt: skip
def test_folder_names_keep_only_characters_safe_on_every_file_system(name, expected):
    from fw_agents.runs.folder import safe_folder_name

    assert safe_folder_name(name) == expected


def test_an_auto_named_folder_of_any_env_id_is_one_safe_folder(tmp_path):
    """``<runs-root>/<env>-<memory>-s<seed>-<time>`` for env ids with ':' (module:id) or '/' (ALE/...):
    one folder right under the root, named with [A-Za-z0-9._-] only; an explicit --run-dir is kept."""
    import re

    for env_id in ("popgym:popgym-MineSweeperEasy-v0", "ALE/Pong-v5", "ns.mod:Team/Env v2"):
        folder = claim_run_folder(tmp_path, f"{env_id}-lstm-s0")
        folder.release()
        assert folder.path.parent == tmp_path and re.fullmatch(r"[A-Za-z0-9._-]+", folder.path.name), folder.path
    explicit = claim_run_folder(tmp_path, "x:y", run_dir=str(tmp_path / "a:b" / "c d"))
    explicit.release()
    assert explicit.path == tmp_path / "a:b" / "c d"  # the folder given (a resumed one too) is used as it is


def test_a_held_folder_is_refused_until_released(tmp_path):
    held = claim_run_folder(tmp_path, "job", run_dir=str(tmp_path / "r"))
    with pytest.raises(RunFolderError, match=rf"in use by another run \(pid {os.getpid()}\)"):
        claim_run_folder(tmp_path, "job", run_dir=str(tmp_path / "r"))
    held.release()
    held.release()  # idempotent
    claim_run_folder(tmp_path, "job", run_dir=str(tmp_path / "r")).release()


def test_a_killed_holder_frees_the_folder(tmp_path):
    code = (
        "import sys, time; from fw_agents.runs.folder import claim_run_folder\n"
        f"claim_run_folder('.', 'x', run_dir={str(tmp_path / 'r')!r}); print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderError, match=f"pid {holder.pid}"):
            claim_run_folder(tmp_path, "x", run_dir=str(tmp_path / "r"))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    claim_run_folder(tmp_path, "x", run_dir=str(tmp_path / "r")).release()


def test_a_folder_that_holds_a_run_needs_resume(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text("{}")
    with pytest.raises(RunFolderError, match=r"already holds a run \(config.json\); continue it with --resume"):
        claim_run_folder(tmp_path, "job", run_dir=str(tmp_path / "r"))
    claim_run_folder(tmp_path, "job", run_dir=str(tmp_path / "r"), resume=True).release()
    claim_run_folder(tmp_path, "job", run_dir=str(tmp_path / "r"), resume=True).release()  # the refusal released it


def test_a_folder_that_is_not_a_run_and_not_empty_is_refused(tmp_path):
    """``--run-dir`` at the user's own folder (their ``model.zip``, no ``config.json``) used to be
    written over; it is refused, and left as it was (no lock file added)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.zip").write_bytes(b"my own model")
    (mine / "notes").mkdir()
    with pytest.raises(RunFolderError) as error:
        claim_run_folder(tmp_path, "job", run_dir=str(mine))
    assert str(error.value) == (f"--run-dir {str(mine)!r} is not empty and holds no run (config.json): it has "
                                "model.zip, notes; a run goes in a new or empty folder (or --resume one that holds a run)")  # fmt: skip
    assert sorted(p.name for p in mine.iterdir()) == ["model.zip", "notes"] and (mine / "model.zip").read_bytes() == b"my own model"
    # what a run itself leaves before its config.json (a run killed then), and a command's train.log, are not the user's
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for name in (".lock", ".model.abc.partial.zip", "train.log"):
        (fresh / name).write_text("")
    claim_run_folder(tmp_path, "job", run_dir=str(fresh)).release()


def test_unusable_paths_are_one_line_errors(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(RunFolderError, match="cannot use .*file.* as a run folder"):
        claim_run_folder(tmp_path, "job", run_dir=str(tmp_path / "file"))
    with pytest.raises(RunFolderError, match="cannot create run folders under .*file"):
        claim_run_folder(tmp_path / "file", "job")


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def test_progress_csv_reads_back_as_sb3s(tmp_path):
    """Same rows, cells and quoting (SB3 orders the columns added in one write as a set does)."""
    writes = [{"a": 1, "b": 0.5}, {"a": 2, "c": "x,y"}, {"b": None, "d": 3}, {"a": 4}]
    ours, theirs = ProgressCsv(tmp_path / "ours.csv"), CSVOutputFormat(str(tmp_path / "theirs.csv"))
    for values in writes:
        ours.write(values)
        theirs.write(values, {key: () for key in values})
    ours.close()
    theirs.close()
    assert _rows(tmp_path / "ours.csv") == _rows(tmp_path / "theirs.csv")
    assert (tmp_path / "ours.csv").read_text().splitlines()[2] == '2,,"x,y",'  # a, b, c, d: first-seen order


def test_progress_csv_continues_a_file_and_drops_a_torn_last_row(tmp_path):
    path = tmp_path / "progress.csv"
    first = ProgressCsv(path)
    first.write({"step": 1, "loss": 0.5})
    first.write({"step": 2, "loss": 0.4})
    first.close()
    with path.open("a") as crashed:  # a kill in the middle of a row
        crashed.write("3,0.")
    again = ProgressCsv(path)
    again.write({"step": 3, "loss": 0.3, "eval": 1.0})
    again.close()
    assert _rows(path) == [
        {"step": "1", "loss": "0.5", "eval": ""},
        {"step": "2", "loss": "0.4", "eval": ""},
        {"step": "3", "loss": "0.3", "eval": "1.0"},
    ]


def test_a_crash_while_adding_a_column_keeps_every_earlier_row(tmp_path, monkeypatch):
    path = tmp_path / "progress.csv"
    log = ProgressCsv(path)
    for step in range(3):
        log.write({"step": step})
    before = path.read_text()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)  # the rewritten file never lands
    with pytest.raises(OSError, match="No space"):
        log.write({"step": 3, "new": 1})
    assert path.read_text() == before and not list(tmp_path.glob(".*tmp*"))


def test_sb3_logger_appends_to_a_resumed_runs_csv(tmp_path):
    from fw_agents.runs.sb3_logger import sb3_logger_writer

    for start in (0, 2):
        writer = sb3_logger_writer(tmp_path, ["csv"])
        for step in range(start, start + 2):
            writer.write({"time/total_timesteps": step, "train/loss": 0.1 * step}, step)
        writer.close()
        time.sleep(0.01)
    assert [row["time/total_timesteps"] for row in _rows(tmp_path / "progress.csv")] == ["0", "1", "2", "3"]
