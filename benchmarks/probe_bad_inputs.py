"""Probe the commands with bad input: issue 25's "one line, never a traceback, hang or crash".

Each case of :data:`CASES` runs one command of this checkout (``train_agent.py``, the task
commands, the search, the zoo plugin) as a subprocess in a folder of its own, with a timeout and
an address-space limit, and is classified:

=========== =============================================================================
clean       refused as wanted: the expected exit status (2), exactly one stderr line naming the
            bad value (the case's ``names``), no traceback
vague       the same, but the line does not name the bad value
finished    a case that should run (``expect="finish"``) exited 0
traceback   ``Traceback`` on stderr
hang        still running at the timeout (killed)
crash       ended by a signal (the OOM killer, a segfault), or a ``MemoryError``
silent      exit 0 where a refusal was wanted
noisy       the expected status, but more than one stderr line
exit N      any other status
=========== =============================================================================

and whether it left anything behind in its folder (a refused run must write nothing). The table
is printed, and ``summary.json`` and ``summary.md`` are written (atomically) into ``--out``.
Slow (a minute or two; one shared tiny ``train_agent.py`` run is made first for the cases that
resume or replay a model): not part of the tests, which run ``--only`` two cheap cases.

    python benchmarks/probe_bad_inputs.py
    python benchmarks/probe_bad_inputs.py --only zoo- --timeout 30 --out runs/probe
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's fw_agents, as the probed commands get it

from fw_agents.cli import OneLineArgumentParser  # noqa: E402
from fw_agents.runs.files import write_text_atomically  # noqa: E402

PY = sys.executable
TRAIN = [PY, str(REPO / "train_agent.py")]
#: Flags that keep a train_agent.py case small should it run instead of refusing.
SMALL = ["--env", "Catch-v0", "--timesteps", "128", "--n-envs", "2", "--n-steps", "32", "--batch-size", "64",
         "--eval-freq", "64", "--eval-episodes", "2", "--gif-episodes", "0", "--hidden-size", "8",
         "--no-progress-bar"]  # fmt: skip
ZOO = [PY, "-m", "fw_agents.zoo"]
ZOO_TRAIN = [*ZOO, "train", "--algo", "fast_recurrent_ppo", "--env", "Catch-v0", "-n", "64", "--num-threads", "1",
             "-f", "logs"]  # fmt: skip
ZOO_ENJOY = [*ZOO, "enjoy", "--algo", "fast_recurrent_ppo", "--env", "Catch-v0", "--no-render", "-n", "4"]
SEARCH = [PY, "-m", "fw_agents.search", "--env", "Catch-v0", "--trials", "1", "--timesteps", "128", "--n-envs", "2",
          "--n-steps", "32", "--batch-size", "64", "--eval-freq", "64", "--eval-episodes", "2"]  # fmt: skip


# ------------------------------------------------------------------------------ case folders
def _base_run(cache: Path) -> Path:
    """A finished tiny ``train_agent.py`` run (``model.zip``, ``config.json``, checkpoints), made
    once per probe and copied into the cases that need it."""
    run = cache / "base"
    if not (run / "model.zip").is_file():
        subprocess.run([*TRAIN, *SMALL, "--run-dir", str(run)], env=_env({}), cwd=cache, capture_output=True,
                       timeout=600, check=True)  # fmt: skip
    return run


def _crafted_resume(
    edit: Callable[[dict[str, Any]], None], raw: tuple[str, str] | None = None
) -> Callable[[Path, Path], None]:  # fmt: skip
    """A setup: the base run copied to ``run/``, its ``model.zip``'s ``data`` changed by ``edit``
    (then ``raw``: a text replacement, for values JSON cannot write, e.g. ``1e400``)."""

    def setup(folder: Path, cache: Path) -> None:
        shutil.copytree(_base_run(cache), folder / "run")
        path = folder / "run" / "model.zip"
        with zipfile.ZipFile(path) as archive:
            members = {name: archive.read(name) for name in archive.namelist()}
        data = json.loads(members["data"])
        edit(data)
        text = json.dumps(data)
        members["data"] = (text.replace(*raw) if raw else text).encode()
        with zipfile.ZipFile(path, "w") as archive:
            for name, content in members.items():
                archive.writestr(name, content)

    return setup


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data[key] = value

    return edit


def _set_memory_kwargs(data: dict[str, Any]) -> None:
    data["policy_kwargs"]["memory_kwargs"] = []


def _fifo(folder: Path, cache: Path) -> None:
    os.mkfifo(folder / "fifo")


def _user_model_in_run_dir(folder: Path, cache: Path) -> None:
    (folder / "mine").mkdir()
    shutil.copy(_base_run(cache) / "model.zip", folder / "mine" / "model.zip")  # the user's, no config.json


def _zoo_folder(model: Callable[[bytes], bytes] | None, env_id: str = "Catch-v0") -> Callable[[Path, Path], None]:
    """A setup: ``logs/fast_recurrent_ppo/<env_id>_1`` holding ``model(base model.zip)`` (``None``: no model)."""

    def setup(folder: Path, cache: Path) -> None:
        run = folder / "logs" / "fast_recurrent_ppo" / f"{env_id}_1"
        (run / env_id).mkdir(parents=True)
        (run / env_id / "config.yml").write_text("normalize: false\n")
        if model is not None:
            (run / f"{env_id}.zip").write_bytes(model((_base_run(cache) / "model.zip").read_bytes()))

    return setup


# ------------------------------------------------------------------------------------ cases
@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input.

    :param name: Short unique name (``--only`` matches a part of it).
    :param argv: The command line (run in the case's own folder).
    :param names: A part of the bad value a refusal's line must name (any case).
    :param expect: ``"refuse"`` (exit ``status``, one stderr line) or ``"finish"`` (exit 0).
    :param env: Environment variables set for it (``WANDB_MODE`` is ``disabled`` unless set here).
    :param setup: Prepares the case's folder (``setup(folder, cache)``); what it makes is not "left behind".
    :param status: The exit status of a refusal.
    """

    name: str
    argv: tuple[str, ...]
    names: str = ""
    expect: str = "refuse"
    env: tuple[tuple[str, str], ...] = ()
    setup: Callable[[Path, Path], None] | None = None
    status: int = 2


def _case(name: str, names: str, argv: Sequence[str], **kwargs: Any) -> Case:
    """A :class:`Case` whose refusal must name ``names`` (a part of the bad value, any case)."""
    return Case(name, tuple(argv), names, **{k: tuple(v.items()) if k == "env" else v for k, v in kwargs.items()})


RESUME = [*TRAIN, "--resume", "run/model.zip", "--timesteps", "256"]  # the crafted copy of the base run's model
RETRIEVAL = [PY, "-m", "fw_agents.tasks.retrieval", "--steps", "10"]
CASES: tuple[Case, ...] = (
    # train_agent.py
    _case("train-triton-on-cpu", "triton", [*TRAIN, *SMALL, "--device", "cpu", "--memory-kwargs", "mode=triton"]),
    _case("train-resume-timesteps-1e400", "timesteps", RESUME,
          setup=_crafted_resume(_set("num_timesteps", 7777777), ("7777777", "1e400"))),
    _case("train-resume-timesteps-list", "timesteps", RESUME, setup=_crafted_resume(_set("num_timesteps", [1]))),
    _case("train-resume-timesteps-negative", "-100", RESUME, setup=_crafted_resume(_set("num_timesteps", -100))),
    _case("train-resume-policy-kwargs-str", "policy_kwargs", RESUME,
          setup=_crafted_resume(_set("policy_kwargs", "str"))),
    _case("train-resume-memory-kwargs-list", "memory_kwargs", RESUME, setup=_crafted_resume(_set_memory_kwargs)),
    _case("train-cliffwalking-finishes", "", [*TRAIN, *SMALL, "--env", "CliffWalking-v1", "--timesteps", "64",
                                              "--eval-episodes", "1"], expect="finish"),
    _case("train-resume-fifo", "fifo", [*TRAIN, *SMALL, "--resume", "fifo"], setup=_fifo),
    _case("train-resume-dev-zero", "/dev/zero", [*TRAIN, *SMALL, "--resume", "/dev/zero"]),
    _case("train-n-envs-100000", "100000", [*TRAIN, *SMALL, "--n-envs", "100000", "--n-steps", "1",
                                            "--batch-size", "100000"]),
    _case("train-eval-episodes-1e9", "1000000000", [*TRAIN, *SMALL, "--eval-episodes", "1000000000"]),
    _case("train-run-dir-with-users-model", "mine", [*TRAIN, *SMALL, "--run-dir", "mine"],
          setup=_user_model_in_run_dir),
    _case("train-batch-size-1e9", "1000000000", [*TRAIN, *SMALL, "--batch-size", "1000000000"]),
    _case("train-wandb-mode-bogus", "bogus", [*TRAIN, *SMALL], env={"WANDB_MODE": "bogus"}),
    _case("train-threads-2**31", "2147483648", [*TRAIN, *SMALL, "--threads", "2147483648"]),
    # the supervised tasks
    _case("retrieval-hidden-100000", "100000", [*RETRIEVAL, "--hidden", "100000"]),
    _case("retrieval-batch-size-1e8", "100000000", [*RETRIEVAL, "--batch-size", "100000000"]),
    # the search
    _case("search-in-memory-storage", ":memory:", [*SEARCH, "--storage", "sqlite:///:memory:"]),
    # the zoo plugin
    _case("zoo-train-unknown-env", "NoSuchEnv-v0", [*ZOO_TRAIN, "--env", "NoSuchEnv-v0"]),
    _case("zoo-train-unsupported-env", "Blackjack-v1", [*ZOO_TRAIN, "--env", "Blackjack-v1"]),
    _case("zoo-train-bad-policy-kwargs", "transformer",
          [*ZOO_TRAIN, "--hyperparams", "policy_kwargs:dict(memory='transformer')"]),
    _case("zoo-train-bad-memory-kwargs", "decay",
          [*ZOO_TRAIN, "--hyperparams", "policy_kwargs:dict(memory='fastweights', memory_kwargs=dict(decay=5))"]),
    _case("zoo-train-bogus-algo", "bogus", [*ZOO, "train", "--algo", "bogus", "--env", "Catch-v0", "-f", "logs"]),
    _case("zoo-enjoy-missing-folder", "nonexistent", [*ZOO_ENJOY, "-f", "nonexistent"]),
    _case("zoo-enjoy-random-bytes-zip", "Catch-v0.zip", [*ZOO_ENJOY, "-f", "logs"],
          setup=_zoo_folder(lambda model: os.urandom(len(model)))),
    _case("zoo-enjoy-truncated-zip", "Catch-v0.zip", [*ZOO_ENJOY, "-f", "logs"],
          setup=_zoo_folder(lambda model: model[: len(model) // 2])),
    _case("zoo-enjoy-no-model-for-env", "CatchBlind16-v0", [*ZOO_ENJOY, "--env", "CatchBlind16-v0", "-f", "logs"],
          setup=_zoo_folder(lambda model: model)),
)  # fmt: skip


# --------------------------------------------------------------------------------- running
def _env(extra: dict[str, str]) -> dict[str, str]:
    """The probed commands' environment: this checkout first on the path, one thread, no W&B."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", **extra}


def _files(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def run_case(case: Case, folder: Path, cache: Path, timeout: float, memory_bytes: int) -> dict[str, Any]:
    """Run ``case`` in ``folder`` (made empty, then set up) and classify it (module docstring).

    :param cache: Where shared fixtures (the base run) are kept between cases.
    :param timeout: Seconds before the command is killed (a hang).
    :param memory_bytes: Its address-space limit (``RLIMIT_AS``).
    :return: The case's record: name, expected, outcome, status, seconds, stderr lines, the first of
        them, and the paths left behind.
    """
    folder.mkdir(parents=True)
    if case.setup is not None:
        case.setup(folder, cache)
    before = _files(folder)

    def limit() -> None:  # in the child, before exec
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    start = time.perf_counter()
    # its own session (process group): a hang is killed with its children
    process = subprocess.Popen(case.argv, cwd=folder, env=_env(dict(case.env)), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=limit,
                               start_new_session=True)  # fmt: skip
    try:
        _, err = process.communicate(timeout=timeout)
        status: int | None = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        _, err = process.communicate()
        status = None
    seconds = time.perf_counter() - start
    lines = [line for line in err.splitlines() if line.strip()]
    left = sorted(_files(folder) - before)
    return {
        "name": case.name, "expect": case.expect, "outcome": classify(case, status, lines),
        "status": status, "seconds": round(seconds, 1), "stderr_lines": len(lines),
        "message": lines[-1][:300] if lines else "", "left_behind": left[:20], "left_count": len(left),
        "command": " ".join(a.replace(str(REPO) + "/", "") for a in case.argv[1:]),
    }  # fmt: skip


def classify(case: Case, status: int | None, lines: Sequence[str]) -> str:
    """The outcome of a run: ``status`` (``None``: killed at the timeout) and its stderr ``lines``."""
    text = "\n".join(lines)
    if status is None:
        return "hang"
    if status < 0 or "MemoryError" in text:
        return "crash"
    if "Traceback" in text:
        return "traceback"
    if case.expect == "finish":
        return "finished" if status == 0 else f"exit {status}"
    if status == 0:
        return "silent"
    if status == case.status:
        if len(lines) != 1:
            return "noisy"
        return "clean" if case.names.lower() in lines[0].lower() else "vague"
    return f"exit {status}"


def passed(record: dict[str, Any]) -> bool:
    """Whether the case did what it should, nothing left behind by a refusal."""
    if record["expect"] == "finish":
        return record["outcome"] == "finished"
    return record["outcome"] == "clean" and not record["left_count"]


def markdown(records: Sequence[dict[str, Any]]) -> str:
    """The results as a markdown table, with a count line."""
    rows = ["| case | outcome | exit | s | stderr lines | left behind | last stderr line |", "|---|---|---|---|---|---|---|"]
    for r in records:
        cells = [r["name"], r["outcome"], r["status"], r["seconds"], r["stderr_lines"],
                 f"{r['left_count']} paths" if r["left_count"] else "-", r["message"].replace("|", "\\|")]  # fmt: skip
        rows.append("| " + " | ".join(map(str, cells)) + " |")
    good = sum(passed(r) for r in records)
    total = f"{good} of {len(records)} cases as wanted (a clean refusal leaving nothing behind, or finished)"
    return "\n".join([*rows, "", total, ""])


def main(argv: Sequence[str] | None = None) -> int:
    """:return: 0 when every selected case did what it should, else 1 (2: bad arguments)."""
    parser = OneLineArgumentParser(description="Run the table of bad inputs of issue 25 against this checkout's "
                                     "commands and classify each (clean, traceback, hang, crash, silent, ...).")  # fmt: skip
    parser.add_argument("--only", action="append", default=[], metavar="PART",
                        help="run only the cases whose name contains PART (repeatable); see --list")  # fmt: skip
    parser.add_argument("--list", action="store_true", help="print the case names and exit")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a case counts as a hang")
    parser.add_argument("--memory-gb", type=float, default=4.0, help="address-space limit of each case (RLIMIT_AS), GB")
    parser.add_argument("--out", default="runs/probe_bad_inputs", help="folder of summary.json and summary.md")
    args = parser.parse_args(argv)
    if args.timeout <= 0 or args.memory_gb <= 0:
        parser.error("--timeout and --memory-gb must be > 0")
    cases = [case for case in CASES if not args.only or any(part in case.name for part in args.only)]
    if args.list:
        print("\n".join(case.name for case in CASES))
        return 0
    if not cases:
        parser.error(f"--only {' '.join(args.only)} matches no case; see --list")
    records = []
    with tempfile.TemporaryDirectory(prefix="probe_bad_inputs_") as tmp:
        cache = Path(tmp) / "cache"
        cache.mkdir()
        for case in cases:
            record = run_case(case, Path(tmp) / case.name, cache, args.timeout, int(args.memory_gb * 1e9))
            records.append(record)
            print(f"{record['name']:34s} {record['outcome']:10s} exit {str(record['status']):5s} "
                  f"{record['seconds']:6.1f}s lines {record['stderr_lines']:3d} left {record['left_count']:3d}  "
                  f"{record['message'][:100]}", flush=True)  # fmt: skip
    out = Path(args.out)
    write_text_atomically(out / "summary.json", json.dumps(records, indent=2) + "\n")
    write_text_atomically(out / "summary.md", markdown(records))
    print(f"\n{markdown(records).splitlines()[-1]}; {out / 'summary.md'}, {out / 'summary.json'}")
    return 0 if all(passed(r) for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
