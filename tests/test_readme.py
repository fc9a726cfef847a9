"""The documentation runs as written.

* Every fenced ``python`` block of README.md runs, alone, in a fresh interpreter in an empty
  directory (``PYTHONPATH`` = the repository root), so a block that relies on inputs it does not
  define, or on files of the repository's working directory, fails. The blocks are written with
  tiny budgets (e.g. ``learn(total_timesteps=256)``); nothing is substituted.
* Every ``python <script>.py ...`` / ``python -m <module> ...`` line of a ``bash`` block in
  README.md and docs/*.md names a script or module that exists, and each flag it passes appears
  in that command's ``--help`` (the command itself is not run: some take hours).
* The README's test command is the one ``.ci/run`` runs.
* Every relative link and image in README.md and docs/*.md points to an existing file, and a
  ``#anchor`` into a Markdown page to one of its headings.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

BLOCK_TIMEOUT_S = 180  # one block; they take seconds, the machine may be busy
HELP_TIMEOUT_S = 120

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


def fenced_blocks(path: Path) -> list[tuple[int, str, str]]:
    """``(line number of the opening fence, language, code)`` of every fenced block."""
    blocks = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, lang = match.groups()
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        blocks.append((start, lang.lower(), "\n".join(body) + "\n"))
        i += 1  # the closing fence
    return blocks


def without_fenced_blocks(path: Path) -> str:
    """The page's text with its fenced blocks blanked out (links inside code are not links)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, fence = [], None
    for line in lines:
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(2)
            out.append("")
        elif fence is not None:
            if line.strip().startswith(fence):
                fence = None
            out.append("")
        else:
            out.append(line)
    return "\n".join(out)


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(WANDB_MODE="disabled", OMP_NUM_THREADS="1", MPLBACKEND="Agg", COLUMNS="10000")
    return env


# --- the README's Python blocks -----------------------------------------------------------

PYTHON_BLOCKS = [(line, code) for line, lang, code in fenced_blocks(README) if lang in ("python", "py")]


def test_readme_has_python_blocks():
    assert len(PYTHON_BLOCKS) >= 3, "README.md lost its Python examples (or the parser broke)"


@pytest.mark.slow
@pytest.mark.parametrize("line, code", PYTHON_BLOCKS, ids=[f"README.md:{line}" for line, _ in PYTHON_BLOCKS])
def test_readme_python_block_runs(line, code, tmp_path):
    script = tmp_path / "block.py"
    script.write_text(code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
    )
    assert result.returncode == 0, f"README.md block at line {line} failed:\n{result.stderr[-4000:]}"


# --- the shell commands of README.md and docs/*.md ----------------------------------------


def shell_commands(path: Path) -> list[tuple[int, list[str]]]:
    """``(line, argv)`` of every ``python ...`` command in the page's bash blocks."""
    commands = []
    for start, lang, code in fenced_blocks(path):
        if lang not in ("bash", "sh", "shell", "console"):
            continue
        lines = code.splitlines()
        i = 0
        while i < len(lines):
            first, text = i, lines[i]
            while text.rstrip().endswith("\\") and i + 1 < len(lines):  # continuation lines
                i += 1
                text = text.rstrip()[:-1] + " " + lines[i]
            i += 1
            text = text.strip().removeprefix("$ ")
            argv = shlex.split(text, comments=True)
            if argv and argv[0] in ("python", "python3"):
                commands.append((start + first + 1, argv))
    return commands


SHELL_COMMANDS = [
    (path, line, argv) for path in PAGES for line, argv in shell_commands(path)
]


def command_target(argv: list[str]) -> tuple[list[str], list[str]]:
    """``(what to run, its arguments)`` for ``python X.py args`` / ``python -m mod args``."""
    if argv[1] == "-m":
        return ["-m", argv[2]], argv[3:]
    return [argv[1]], argv[2:]


def flags(args: list[str]) -> list[str]:
    """The options among ``args`` (``--name`` or ``-x``; ``--name=value`` gives ``--name``)."""
    return [arg.split("=", 1)[0] for arg in args if re.match(r"^--?[A-Za-z]", arg)]


_HELP: dict[tuple[str, ...], subprocess.CompletedProcess] = {}


def help_of(target: list[str]) -> subprocess.CompletedProcess:
    """``python <target> --help``, once per target."""
    key = tuple(target)
    if key not in _HELP:
        _HELP[key] = subprocess.run(
            [sys.executable, *target, "--help"],
            cwd=ROOT,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=HELP_TIMEOUT_S,
        )
    return _HELP[key]


def test_readme_has_the_two_commands():
    argvs = [argv for path, _, argv in SHELL_COMMANDS if path == README]
    assert ["python", "train_agent.py", "--env", "Catch-v0", "--memory", "fastweights"] in argvs
    assert ["python", "-m", "pytest", "-q"] in argvs


def test_readme_test_command_is_the_ci_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ci_commands = [line.strip() for line in ci.splitlines() if re.match(r"^\s*python -m pytest\b", line)]
    assert ci_commands, ".ci/run no longer runs `python -m pytest ...`"
    readme_commands = [shlex.join(argv) for path, _, argv in SHELL_COMMANDS if path == README]
    for command in ci_commands:
        assert command in readme_commands, f"README.md should show CI's test command {command!r}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "path, line, argv",
    SHELL_COMMANDS,
    ids=[f"{path.relative_to(ROOT)}:{line}:{' '.join(argv[1:3])}" for path, line, argv in SHELL_COMMANDS],
)
def test_documented_command_takes_its_flags(path, line, argv):
    target, args = command_target(argv)
    where = f"{path.relative_to(ROOT)}:{line}: {shlex.join(argv)}"
    if target[0] != "-m":
        assert (ROOT / target[0]).is_file(), f"{where}: no such script"
    result = help_of(target)
    assert result.returncode == 0, f"{where}: --help failed:\n{result.stderr[-3000:]}"
    text = result.stdout
    unknown = [flag for flag in flags(args) if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text)]
    assert not unknown, f"{where}: {unknown} not in `python {' '.join(target)} --help`"


# --- links --------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMG = re.compile(r"<img\s[^>]*src=\"([^\"]+)\"")


def github_anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for line in without_fenced_blocks(path).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = github_anchor(match.group(1))
        result.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return result


LINKS = [
    (path, target)
    for path in PAGES
    for pattern in (LINK, IMG)
    for target in pattern.findall(without_fenced_blocks(path))
    if not re.match(r"^[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:, ...
]


def test_pages_have_links():
    assert any(path == README for path, _ in LINKS), "README.md links to no docs page (or the parser broke)"


@pytest.mark.parametrize(
    "path, target", LINKS, ids=[f"{path.relative_to(ROOT)}->{target}" for path, target in LINKS]
)
def test_relative_link_exists(path, target):
    file_part, _, anchor = target.partition("#")
    linked = (path.parent / file_part).resolve() if file_part else path
    assert linked.exists(), f"{path.relative_to(ROOT)} links to missing {target}"
    if anchor and linked.suffix == ".md":
        assert anchor in anchors(linked), f"{path.relative_to(ROOT)}: no heading #{anchor} in {linked.name}"
