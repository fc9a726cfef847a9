"""The shared argument checks (fw_agents.validation) and the dataclass-generated CLI (fw_agents.cli)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from fw_agents.cli import OneLineArgumentParser, add_config_arguments, config_from_args, config_to_argv
from fw_agents.fields import option
from fw_agents.validation import check_bool, check_choice, check_float, check_int


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.int32(1)])
def test_check_int_accepts_python_and_numpy_integers(value):
    result = check_int("size", value)
    assert result == int(value) and type(result) is int


@pytest.mark.parametrize(
    "value,low,high,message",
    [
        (0, 1, None, "size must be an integer >= 1, got 0"),
        (2.0, 1, None, "size must be an integer >= 1, got 2.0"),
        (True, 1, None, "size must be an integer >= 1, got True"),
        ("3", 1, None, "size must be an integer >= 1, got '3'"),
        (11, 0, 10, "size must be an integer in [0, 10], got 11"),
        (-1, 0, None, "size must be an integer >= 0, got -1"),
        (-1, 0, 2**64 - 1, "size must be an integer in [0, 18446744073709551615], got -1"),
    ],
)
def test_check_int_refuses_with_one_message_style(value, low, high, message):
    with pytest.raises(ValueError) as error:
        check_int("size", value, low, high)
    assert str(error.value) == message


def test_check_float_bounds_and_non_finite():
    assert check_float("decay", 0.5, 0, 1) == 0.5
    assert check_float("gamma", 1, 0, 1, high_inclusive=True) == 1.0
    assert check_float("ent", 0, 0, low_inclusive=True) == 0.0
    assert type(check_float("x", np.float32(0.25))) is float
    for bad in (0.0, 1.0, float("nan"), float("inf"), -float("inf"), True, "0.5", None):
        with pytest.raises(ValueError, match=r"^decay must be a finite number in \(0, 1\), got"):
            check_float("decay", bad, 0, 1)
    with pytest.raises(ValueError, match=r"^lr must be a finite number > 0, got nan$"):
        check_float("lr", float("nan"), 0)
    with pytest.raises(ValueError, match=r"^x must be a finite number, got inf$"):
        check_float("x", float("inf"))


def test_check_choice_and_bool():
    assert check_choice("memory", "gru", ("lstm", "gru")) == "gru"
    with pytest.raises(ValueError, match=r"^unknown memory 'rnn'; choose one of lstm, gru$"):
        check_choice("memory", "rnn", ("lstm", "gru"))
    assert check_bool("flag", np.bool_(True)) is True
    for bad in (1, 0, "yes", None):
        with pytest.raises(ValueError, match="flag must be True or False"):
            check_bool("flag", bad)


@dataclass
class _Config:
    learning_rate: float = option(1e-3, help="Adam step size", aliases=("--lr",))
    n_envs: int = option(16, help="parallel envs")
    memory: str = option("lstm", help="memory core", choices=("lstm", "gru"))
    run_dir: str | None = option(None, help="where to write")
    progress_bar: bool = option(True, help="show a progress bar")
    memory_kwargs: dict[str, Any] = option(default_factory=dict, help="core options")
    tags: tuple[str, ...] = option((), help="labels")
    internal: int = option(5, help="set by code", cli=False)
    plain: int = 3  # declared without option(): never a flag


def _parse(argv: list[str], **kwargs: Any) -> _Config:
    parser = OneLineArgumentParser(prog="prog")
    names = add_config_arguments(parser, _Config, **kwargs)
    return config_from_args(_Config, parser.parse_args(argv), names)


def test_generated_flags_round_trip_every_field_kind():
    assert _parse([]) == _Config()
    assert _parse(["--tags", "a", "b c"]).tags == ("a", "b c") and _parse(["--tags"]).tags == ()
    config = _parse(
        ["--lr", "0.01", "--n-envs", "4", "--memory", "gru", "--run-dir", "x", "--no-progress-bar",
         "--memory-kwargs", "decay=0.9", "name=abc", "flags=[1, 2]", "decay=0.8"]
    )  # fmt: skip
    assert config == _Config(0.01, 4, "gru", "x", False, {"decay": 0.8, "name": "abc", "flags": [1, 2]})
    assert _parse(["--learning-rate", "0.5"]).learning_rate == 0.5
    assert _parse([], defaults={"n_envs": 2}).n_envs == 2
    assert _parse([], exclude=("memory",)).memory == "lstm"


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--n-envs", "1e8"], "invalid int value: '1e8'"),
        (["--memory", "rnn"], "invalid choice: 'rnn'"),
        (["--memory-kwargs", "0bad=1"], "expected KEY=VALUE"),
        (["--internal", "3"], "unrecognized arguments: --internal"),
        (["--plain", "3"], "unrecognized arguments: --plain"),
        (["--exclude-me"], "unrecognized arguments"),
    ],
)
def test_generated_flags_reject_bad_input_in_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as exit_:
        _parse(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err


def test_config_to_argv_round_trips():
    config = _Config(0.01, 4, "gru", None, False, {"decay": 0.8, "name": "a b"}, internal=7)
    argv = config_to_argv(config)
    assert "--internal" not in argv and "--run-dir" not in argv and "--no-progress-bar" in argv
    assert _parse(argv) == _Config(0.01, 4, "gru", None, False, {"decay": 0.8, "name": "a b"})
    assert config_to_argv(config, names=("n_envs",)) == ["--n-envs", "4"]


@dataclass(kw_only=True)
class _Required(_Config):
    data_dir: str = option(help="where the data are")


def test_a_field_without_default_is_a_required_flag(capsys):
    parser = OneLineArgumentParser(prog="prog")
    add_config_arguments(parser, _Required)
    config = config_from_args(_Required, parser.parse_args(["--data-dir", "d", "--n-envs", "2"]))  # names: all found
    assert config.data_dir == "d" and config.n_envs == 2 and config.internal == 5
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--n-envs", "2"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "the following arguments are required: --data-dir" in err
    assert len(err.strip().splitlines()) == 1


def test_help_shows_each_fields_doc_and_default():
    script = (
        "import sys; sys.argv[0] = 'prog'\n"
        "from tests.test_cli_and_validation import _Config\n"
        "from fw_agents.cli import HelpFormatter, OneLineArgumentParser, add_config_arguments\n"
        "p = OneLineArgumentParser(formatter_class=HelpFormatter)\n"
        "add_config_arguments(p, _Config)\n"
        "p.print_help()\n"
    )
    text = " ".join(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split())
    assert "--learning-rate LEARNING_RATE, --lr LEARNING_RATE Adam step size (default: 0.001)" in text
    assert "--progress-bar, --no-progress-bar show a progress bar (default: True)" in text
    assert "{lstm,gru}" in text and "--internal" not in text


def test_run_cli_turns_an_os_error_into_one_line_exit_1(tmp_path, capsys):
    """A full disk or an output path that cannot be a folder: one line, status 1, no traceback."""
    import errno

    from fw_agents.cli import run_cli

    def full_disk(argv):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "model.zip"))

    def not_a_folder(argv):
        (tmp_path / "out").write_text("")
        (tmp_path / "out").mkdir()

    assert run_cli(full_disk, []) == 1
    assert capsys.readouterr().err == f"error: No space left on device ({tmp_path / 'model.zip'}); stopped, the files written before are kept\n"
    assert run_cli(not_a_folder, []) == 1
    assert capsys.readouterr().err.startswith("error: File exists (")


def test_run_cli_reports_a_warning_in_one_line_without_escape_codes(capsys):
    """Gymnasium (and popgym's envs through it) colour their warnings with ANSI codes
    (``\x1b[33mWARN: ...\x1b[0m``): a command reports each as one plain ``warning:`` line."""
    import warnings

    from fw_agents.cli import run_cli, strip_ansi

    def warns(argv):
        warnings.warn("\x1b[33mWARN: render_mode 'rgb_array' is not in\nthe possible render_modes ([]).\x1b[0m", UserWarning)
        warnings.warn("\x1b]8;;https://x.org\x07link\x1b]8;;\x07 and \x1b[1;31mred\x1b[m", RuntimeWarning)
        return 0

    shown_before = warnings.showwarning
    assert run_cli(warns, []) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "\x1b" not in "".join(lines), lines
    assert lines[0].startswith("warning: WARN: render_mode 'rgb_array' is not in the possible render_modes ([]). (UserWarning")
    assert lines[1].startswith("warning: link and red (RuntimeWarning")
    assert warnings.showwarning is shown_before, "the command's warning display is restored"
    assert strip_ansi("\x1b[33mWARN\x1b[0m: a\x1b[2Kb") == "WARN: ab" and strip_ansi("plain [33m") == "plain [33m"


def test_range_types_name_the_flag_and_the_value(capsys):
    from fw_agents.cli import int_at_least, positive_float

    parser = OneLineArgumentParser(prog="p")
    parser.add_argument("--n", type=int_at_least(1))
    parser.add_argument("--t", type=positive_float)
    assert vars(parser.parse_args(["--n", "3", "--t", "0.5"])) == {"n": 3, "t": 0.5}
    for argv, needle in ((["--n", "0"], "argument --n: must be an integer >= 1, got 0"),
                         (["--n", "x"], "argument --n: invalid int value: 'x'"),
                         (["--t", "inf"], "argument --t: must be a finite number > 0, got inf"),
                         (["--t", "-1"], "argument --t: must be a finite number > 0, got -1")):  # fmt: skip
        with pytest.raises(SystemExit) as stop:
            parser.parse_args(argv)
        assert stop.value.code == 2 and capsys.readouterr().err == f"p: error: {needle}\n"


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, argv, needle",
    [
        ("bench_agent.py", ["--rollouts", "0"], "argument --rollouts: must be an integer >= 1, got 0"),
        ("bench_agent.py", ["--memories", "bogus"], "argument --memories: invalid choice: 'bogus'"),
        ("profile_agent.py", ["--rounds", "0"], "argument --rounds: must be an integer >= 1, got 0"),
        ("profile_agent.py", ["--task", "Nope"], "argument --task: invalid choice: 'Nope'"),
        ("bench_memory.py", ["--threads", "0"], "argument --threads: must be an integer >= 1, got 0"),
        ("bench_memory.py", ["--threads", "2147483648"], "argument --threads: must be an integer in [1, 1024], got 2147483648"),
        ("bench_catch.py", ["--seconds", "0"], "argument --seconds: must be a finite number > 0, got 0"),
        ("fast_weight_share.py", ["--out", "."], "--out . is a folder"),
    ],
)
def test_benchmark_scripts_refuse_bad_input_in_one_line(script, argv, needle):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "benchmarks" / script), *argv], capture_output=True, text=True,
                          timeout=120, cwd=root)  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and needle in lines[0], done.stderr


@pytest.mark.slow
def test_profile_agent_times_a_suite_task_in_the_suites_setting():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    argv = ["--task", "RepeatPreviousEasy", "--memories", "irnn", "gru", "--rounds", "1", "--threads", "1"]
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "profile_agent.py"), *argv], capture_output=True,
                          text=True, timeout=300, cwd=root)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "RepeatPreviousEasy, 16 envs, n_steps 64, batch 256, 4 epochs" in done.stdout
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| irnn |", "| gru |"))]
    assert len(rows) == 2 and rows[0].endswith("1.00× |")  # the first core is the peer without lstm


@dataclass
class _Ranged:
    n_envs: int = option(16, help="parallel envs", low=1, high=64)
    threads: int | None = option(1, help="threads", low=1, high=8)
    plain: int = option(3, help="no range")


def test_option_ranges_are_checked_and_shown(capsys):
    from fw_agents.fields import check_int_ranges

    check_int_ranges(_Ranged(n_envs=64, threads=None, plain=-5))  # a bound itself, None for an optional field
    for changes, message in ((dict(n_envs=65), "n_envs must be an integer in [1, 64], got 65"),
                             (dict(threads=2**31), "threads must be an integer in [1, 8], got 2147483648"),
                             (dict(n_envs=2.0), "n_envs must be an integer in [1, 64], got 2.0")):  # fmt: skip
        with pytest.raises(ValueError) as error:
            check_int_ranges(_Ranged(**changes))
        assert str(error.value) == message
    parser = OneLineArgumentParser(prog="prog")
    add_config_arguments(parser, _Ranged)
    text = " ".join(parser.format_help().split())
    assert "--n-envs N_ENVS parallel envs (an integer in [1, 64])" in text and "--plain PLAIN no range" in text


@pytest.mark.parametrize(
    "argv,environ,needle",
    [
        (["--memory-kwargs", "mode=triton", "--device", "cpu"], {},
         "memory_kwargs mode='triton': the Triton fast-weights kernel needs CUDA tensors (got cpu), or TRITON_INTERPRET=1 "
         "to run it (slowly) on CPU; accepted modes on this device (cpu): auto, scan, reference"),
        (["--n-envs", "100000", "--n-steps", "1"], {}, "n_envs must be an integer in [1, 4096], got 100000"),
        (["--eval-episodes", "1000000000"], {}, "eval_episodes must be an integer in [1, 10000], got 1000000000"),
        (["--batch-size", "1000000000", "--n-envs", "2", "--n-steps", "64"], {},
         "batch_size must be an integer in [2, 128] (at most the rollout, n_envs * n_steps = 128), got 1000000000"),
        (["--threads", "2147483648"], {}, "threads must be an integer in [1, 1024], got 2147483648"),
        (["--n-epochs", "100000000000000000000"], {}, "n_epochs must be an integer in [1, 1000], got 100000000000000000000"),
        (["--gif-episodes", "1000000"], {}, "gif_episodes must be an integer in [0, 100], got 1000000"),
        (["--timesteps", str(10**13)], {}, "timesteps must be an integer in [1, 1000000000000], got 10000000000000"),
        (["--verbose", "2"], {}, "verbose must be an integer in [0, 1], got 2"),
        ([], {"WANDB_MODE": "bogus"}, "WANDB_MODE='bogus' is not a W&B mode; accepted: online, offline, disabled"),
    ],
)
def test_train_agent_refuses_before_building_anything(argv, environ, needle, tmp_path, monkeypatch, capsys):
    """``train_agent.py``'s bad input: one line naming the value and the accepted ones, exit 2, and
    nothing built (no env, no run folder) before the refusal."""
    import fw_agents.train as train_module
    import train_agent

    def built(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("envs were built for a run that should have been refused")

    monkeypatch.setattr(train_module, "make_env", built)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    root = tmp_path / "runs"
    status = train_agent.main([*argv, "--runs-root", str(root), "--no-progress-bar"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith(f"error: {needle}") and "Traceback" not in err, err
    assert not root.exists(), "a refused run leaves no run folder"


def test_per_run_and_search_fields_come_from_the_field_metadata():
    """The lists once written by hand in three modules, now read off each field's declaration."""
    from fw_agents.runs.resume import PER_INVOCATION
    from fw_agents.search import NOT_STUDY_FIELDS, TRIAL_FIELDS
    from fw_agents.tasks.cli import _NOT_RESUMED

    assert set(PER_INVOCATION) == {"resume", "run_dir", "runs_root", "progress_bar", "threads", "device", "trust_checkpoint"}
    assert set(NOT_STUDY_FIELDS) == {
        "learning_rate", "device", "threads", "runs_root", "wandb", "wandb_project", "wandb_group", "wandb_tags",
        "wandb_log_model", "verbose", "trust_checkpoint", "progress_bar", "run_dir", "resume",
    }  # fmt: skip
    assert set(TRIAL_FIELDS) == {"learning_rate", "run_dir", "resume", "progress_bar"}
    assert set(_NOT_RESUMED) == {"device", "threads", "resume", "run_dir", "runs_root"}


def test_one_line_names_an_exception_in_one_line():
    from fw_agents.validation import one_line

    assert one_line(ValueError("bad\n  value")) == "ValueError: bad value"
    assert one_line(RuntimeError("x" * 10), limit=4) == "RuntimeError: xxxx..."
    assert one_line(KeyboardInterrupt()) == "KeyboardInterrupt"
    assert one_line(OSError("timed out\nretrying"), first_line=True) == "OSError: timed out"
