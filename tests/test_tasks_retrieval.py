"""Associative retrieval: data format, fixed splits, a model that learns, the command line."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fw_agents.runs import preflight
from fw_agents.memory import MEMORY_NAMES
from fw_agents.tasks import retrieval
from fw_agents.cli import run_cli
from fw_agents.tasks.retrieval import (
    DIGIT_OFFSET,
    SEPARATOR,
    VOCAB_SIZE,
    RetrievalModel,
    decode,
    generate_examples,
    make_splits,
)

os.environ["WANDB_MODE"] = "disabled"


pytestmark = pytest.mark.usefixtures("one_thread")

RECURRENT = ("fastweights", "lstm", "gru", "irnn", "alstm")
needs_core = pytest.mark.skipif(not RECURRENT, reason="no recurrent memory core implemented yet")


@pytest.fixture(scope="module")
def splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return make_splits()


def test_vocabulary() -> None:
    assert VOCAB_SIZE == 37 and SEPARATOR == 36 and DIGIT_OFFSET == 26


def test_example_format(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    tokens, targets = splits["train"]
    assert tokens.shape == (100_000, 11) and targets.shape == (100_000,)
    assert tokens.dtype == np.int64 and targets.dtype == np.int64
    keys, values = tokens[:, 0:8:2], tokens[:, 1:8:2]
    assert ((keys >= 0) & (keys < 26)).all(), "keys must be letters"
    assert ((values >= 26) & (values < 36)).all(), "values must be digits"
    assert (np.sort(keys, axis=1)[:, 1:] != np.sort(keys, axis=1)[:, :-1]).all(), "keys must be distinct"
    assert (tokens[:, 8:10] == SEPARATOR).all(), "separator ?? expected at positions 8-9"
    query = tokens[:, 10]
    match = keys == query[:, None]
    assert (match.sum(axis=1) == 1).all(), "the query must be one of the keys"
    assert (values[match] - DIGIT_OFFSET == targets).all(), "target must be the query's digit"
    # every letter, digit and query position shows up: the sampling is not degenerate
    assert set(np.unique(keys)) == set(range(26)) and set(np.unique(targets)) == set(range(10))
    assert set(np.unique(match.argmax(axis=1))) == {0, 1, 2, 3}


def test_decode_reads_like_the_paper() -> None:
    tokens, targets = generate_examples(1, 4, np.random.default_rng(3))
    text = decode(tokens[0])
    assert len(text) == 11 and text[8:10] == "??" and text[10] in text[0:8:2]
    assert int(text[text.index(text[10]) + 1]) == targets[0]


def test_num_pairs_is_configurable() -> None:
    tokens, targets = generate_examples(500, 2, np.random.default_rng(0))
    assert tokens.shape == (500, 7) and (tokens[:, 4:6] == SEPARATOR).all()
    with pytest.raises(ValueError, match="num-pairs"):
        make_splits(num_pairs=27, sizes=(10, 10, 10))


def test_splits_sizes_disjoint_and_deterministic(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    assert [len(splits[name][0]) for name in ("train", "val", "test")] == [100_000, 10_000, 20_000]
    rows = {name: {row.tobytes() for row in tokens} for name, (tokens, _) in splits.items()}
    assert len(rows["train"]) == 100_000 and len(rows["val"]) == 10_000 and len(rows["test"]) == 20_000
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"] and not rows["val"] & rows["test"]
    again = make_splits()
    for name in splits:
        np.testing.assert_array_equal(splits[name][0], again[name][0])
        np.testing.assert_array_equal(splits[name][1], again[name][1])
    other = make_splits(seed=1, sizes=(1000, 100, 100))
    assert not np.array_equal(other["train"][0], splits["train"][0][:1000])


def test_splits_are_fast() -> None:
    make_splits(sizes=(1000, 100, 100))  # warm-up
    start = time.perf_counter()
    make_splits()
    assert time.perf_counter() - start < 1.0


def test_disjointness_enforced_when_collisions_are_likely() -> None:
    # K = 1 has only 26 * 10 = 260 distinct sequences: duplicates would be certain
    out = make_splits(num_pairs=1, sizes=(200, 30, 30))
    rows = [{r.tobytes() for r in out[name][0]} for name in ("train", "val", "test")]
    assert [len(r) for r in rows] == [200, 30, 30]
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    with pytest.raises(ValueError, match="distinct"):
        make_splits(num_pairs=1, sizes=(250, 30, 30))


@needs_core
@pytest.mark.parametrize("memory", RECURRENT)
def test_model_shapes_and_few_steps_reduce_loss(memory: str, splits: dict) -> None:
    torch.manual_seed(0)
    model = RetrievalModel(memory, 20)
    tokens = torch.from_numpy(splits["train"][0][:64])
    targets = torch.from_numpy(splits["train"][1][:64])
    assert model(tokens).shape == (64, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(model(tokens), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], f"{memory}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


@needs_core
def test_cli_writes_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    memory = RECURRENT[0]
    run_dir = tmp_path / "run"
    argv = ["--memory", memory, "--hidden", "8", "--steps", "20", "--eval-every", "10", "--wandb", "disabled"]
    assert run_cli(retrieval.main, [*argv, "--run-dir", str(run_dir), "--threads", "1"]) == 0
    for name in ("results.json", "curves.png", "progress.csv", "config.json", "best_model.pt"):
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("events.out.tfevents.*"))
    results = json.loads((run_dir / "results.json").read_text())
    assert results["memory"] == memory and results["updates"] == 20
    assert [e["updates"] for e in results["curve"]] == [0, 10, 20]
    assert 0.0 <= results["test_error"] <= 1.0 and results["sec_per_update"] > 0
    best = min(results["curve"], key=lambda e: (e["val_error"], e["val_nll"]))
    assert results["test_error"] == best["test_error"], "test error must be read at the best validation point"
    assert "test error" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--memory", "transformer"], "transformer"),
        (["--hidden", "0"], "hidden"),
        (["--lr", "-1"], "lr"),
        (["--steps", "0"], "steps"),
        (["--hidden", "ten"], "ten"),
        (["--device", "tpu"], "tpu"),
        (["--device", "mps"], "unknown device 'mps'; choose auto, cpu, cuda or cuda:<index>"),
        (["--device", "meta"], "unknown device 'meta'; choose auto, cpu, cuda or cuda:<index>"),
        (["--threads", "0"], "threads must be an integer >= 1, got 0"),
        (["--data-seed", "-1"], "data-seed must be an integer >= 0, got -1"),
        (["--seed", "-1"], "seed must be an integer in [0, 18446744073709551615], got -1"),
        (["--num-pairs", "27"], "num-pairs must be an integer in [1, 26], got 27"),
        (["--batch-size", "0"], "batch-size must be an integer >= 1, got 0"),
        (["--eval-every", "0"], "eval-every must be an integer >= 1, got 0"),
        (["--lr", "nan"], "lr must be a finite number > 0, got nan"),
        (["--grad-clip", "-1"], "grad-clip must be a finite number >= 0, got -1.0"),
        # preflight: refused before the model is built (a 40 GB allocation was a traceback) or the
        # batch silently became the whole training set (20,000 full-set updates: a hang)
        (["--hidden", "100000"], "this run needs about 597.9 GiB (--hidden 100000, --batch-size 128 x 11 steps"),
        (["--memory", "fastweights", "--hidden", "100000"], "GiB (--hidden 100000, --batch-size 128 x 11 steps"),
        (["--batch-size", "100000000"], "--batch-size 100000000 is more than the 100000 training examples; choose 1..100000"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preflight, "_physical_memory", lambda: 64 * 2**30)  # the same on every machine
    full = ["--memory", "lstm", "--wandb", "disabled", "--run-dir", str(tmp_path / "r"), *argv]
    try:
        status = run_cli(retrieval.main, full)
    except SystemExit as exit_:  # argparse errors exit directly
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "r").exists(), "no run dir for rejected input"


def test_help_shows_every_default() -> None:
    text = " ".join(retrieval.build_parser().format_help().split())
    for expected in (
        "--hidden HIDDEN R, number of recurrent units (default: 20)",
        "--steps STEPS number of parameter updates (default: 20000)",
        "--eval-every EVAL_EVERY updates between evaluations (also the logging period) (default: 1000)",
        "--decay DECAY fast weights: lambda (paper: 0.9 here) (default: 0.9)",
        "--wandb-project WANDB_PROJECT W&B project name (default: fw-agents)",
    ):
        assert expected in text, expected


@pytest.mark.slow
@needs_core
def test_training_does_not_import_stable_baselines3(tmp_path: Path) -> None:
    """The supervised heads log without SB3 (only the RL side knows it)."""
    script = (
        "import sys\n"
        "from fw_agents.tasks import retrieval\n"
        f"argv = ['--memory', 'lstm', '--hidden', '4', '--steps', '2', '--eval-every', '1', '--run-dir', {str(tmp_path / 'r')!r}]\n"
        "assert retrieval.main([*argv, '--threads', '1', '--wandb', 'disabled']) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'stable_baselines3'))\n"
    )
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout
    assert (tmp_path / "r" / "progress.csv").is_file() and list((tmp_path / "r").glob("events.out.tfevents.*"))


def test_cli_unknown_memory_lists_choices_subprocess() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fw_agents.tasks.retrieval", "--memory", "nope", "--wandb", "disabled"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "nope" in lines[0] and all(name in lines[0] for name in MEMORY_NAMES)


@needs_core
def test_ctrl_c_saves_the_training_state_and_resume_finishes_the_same_run(tmp_path, capsys, monkeypatch):
    """Interrupted at update 13 and resumed, a run ends exactly as an uninterrupted one."""
    from fw_agents.tasks import training

    argv = ["--memory", RECURRENT[0], "--hidden", "8", "--steps", "30", "--eval-every", "10", "--wandb", "disabled",
            "--threads", "1"]  # fmt: skip
    assert retrieval.main([*argv, "--run-dir", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())

    real_adam, calls = training._adam, []

    def adam_stopped_by_ctrl_c_at_update_13(*args, **kwargs):
        optimizer = real_adam(*args, **kwargs)
        step = optimizer.step

        def ctrl_c_at_13(*step_args, **step_kwargs):
            calls.append(1)
            if len(calls) == 13:
                raise KeyboardInterrupt
            return step(*step_args, **step_kwargs)

        optimizer.step = ctrl_c_at_13
        return optimizer

    monkeypatch.setattr(training, "_adam", adam_stopped_by_ctrl_c_at_update_13)
    run = tmp_path / "cut"
    assert retrieval.main([*argv, "--run-dir", str(run)]) == 130
    err = capsys.readouterr().err
    assert "interrupted at update 13; the training state of update 10" in err and "Traceback" not in err and (run / "training_state.pt").is_file()
    assert not (run / "results.json").exists()
    monkeypatch.undo()

    assert retrieval.main([*argv, "--run-dir", str(run)]) == 2, "a folder holding a run is not reused silently"
    assert "already holds a run" in capsys.readouterr().err
    assert retrieval.main([*argv, "--resume", str(run), "--lr", "0.5"]) == 2
    assert "--lr 0.5 conflicts with the run being resumed" in capsys.readouterr().err
    assert retrieval.main([*argv, "--resume", str(run)]) == 0
    resumed = json.loads((run / "results.json").read_text())
    for key in ("test_error", "test_nll", "val_error", "best_updates"):
        assert resumed[key] == whole[key], key
    assert [e["updates"] for e in resumed["curve"]] == [0, 10, 20, 30]
    assert [e["test_nll"] for e in resumed["curve"]] == [e["test_nll"] for e in whole["curve"]]
    steps = [int(row["train/updates"]) for row in csv.DictReader((run / "progress.csv").open())]
    assert steps == [0, 10, 20, 30], "one curve, appended"


@needs_core
def test_non_finite_loss_stops_with_one_line_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A diverging run stops at the next evaluation: one line, exit 1, no NaN results, and the
    training state on disk is the last finite one."""
    run = tmp_path / "nan"
    argv = ["--memory", "irnn", "--hidden", "8", "--steps", "30", "--eval-every", "10", "--batch-size", "16",
            "--lr", "1e30", "--wandb", "disabled", "--threads", "1", "--run-dir", str(run)]  # fmt: skip
    assert retrieval.main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "non-finite" in err and "Traceback" not in err, err
    assert not (run / "results.json").exists() and not (run / "best_model.pt").exists()
    state = torch.load(run / "training_state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_resume_takes_the_runs_settings_and_refuses_other_ones_before_touching_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--resume DIR`` alone continues with the run's own settings (as ``train_agent.py``'s);
    a typed setting that differs is one line, exit 2, with the run's config.json left as it
    was; a missing folder is not created."""
    run = tmp_path / "run"
    argv = ["--memory", "lstm", "--hidden", "8", "--eval-every", "10", "--wandb", "disabled", "--threads", "1"]
    assert retrieval.main([*argv, "--steps", "10", "--run-dir", str(run)]) == 0
    config = (run / "config.json").read_text()
    capsys.readouterr()
    for other in ([*argv[2:], "--steps", "20", "--data-seed", "3"], ["--steps", "20", "--memory", "gru"],
                  ["--steps", "20", "--memory", "fastweights"]):  # the last: typed at its default, still a conflict  # fmt: skip
        assert retrieval.main([*other, "--resume", str(run)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "conflict" in err and "Traceback" not in err, err
        assert (run / "config.json").read_text() == config
    assert retrieval.main(["--steps", "20", "--threads", "1", "--resume", str(run)]) == 0  # lstm, H = 8, eval every 10
    results = json.loads((run / "results.json").read_text())
    assert results["memory"] == "lstm" and results["hidden"] == 8 and [e["updates"] for e in results["curve"]][-1] == 20
    assert retrieval.main(["--steps", "20", "--wandb", "disabled", "--resume", str(tmp_path / "typo")]) == 2
    assert "no training state to resume" in capsys.readouterr().err and not (tmp_path / "typo").exists()


@needs_core
def test_resume_after_a_kill_between_logging_and_saving_logs_each_evaluation_once(tmp_path, monkeypatch) -> None:
    """Stopped while the state of update 20 was being saved (after update 20 was logged), the
    resumed run redoes update 20: progress.csv holds it once."""
    from fw_agents.tasks import training

    real_save, calls = training.save_training_state, []

    def stopped_while_saving_update_20(path, state):
        calls.append(1)
        if len(calls) == 3:  # updates 0, 10, then 20
            raise KeyboardInterrupt
        real_save(path, state)

    run = tmp_path / "run"
    argv = ["--memory", "lstm", "--hidden", "8", "--steps", "30", "--eval-every", "10", "--wandb", "disabled",
            "--threads", "1"]  # fmt: skip
    monkeypatch.setattr(training, "save_training_state", stopped_while_saving_update_20)
    assert retrieval.main([*argv, "--run-dir", str(run)]) == 130
    monkeypatch.undo()
    assert retrieval.main([*argv, "--resume", str(run)]) == 0
    steps = [int(row["train/updates"]) for row in csv.DictReader((run / "progress.csv").open())]
    assert steps == [0, 10, 20, 30]
