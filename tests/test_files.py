"""fw_agents.runs.files: atomic writes."""

from __future__ import annotations

import os

import pytest

from fw_agents.runs.files import atomic_path, write_text_atomically


def test_atomic_path_replaces_the_file_with_a_plain_writes_permissions(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    path = tmp_path / "sub" / "model.zip"
    with atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".zip" and tmp.name.startswith(".model.")
        tmp.write_bytes(b"new")
        assert not path.exists()  # nothing under the final name until the block succeeds
    assert path.read_bytes() == b"new"
    assert os.stat(path).st_mode & 0o777 == os.stat(plain).st_mode & 0o777
    assert [p.name for p in path.parent.iterdir()] == ["model.zip"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "summary.json"
    write_text_atomically(path, "old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise OSError("disk full")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]
