"""common/atomic.py, the one writer: all or nothing, owner-only unless asked, nothing left over."""

from __future__ import annotations

import json
import stat

import pytest

from common.atomic import (
    PUBLIC,
    atomic_dir,
    atomic_replace,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_are_owner_only_unless_asked_and_replace_whole(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic_write_json(path, {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1} and path.read_text().endswith("\n")
    assert _mode(path) == 0o600
    atomic_write_text(path, "second", mode=PUBLIC)
    assert path.read_text() == "second" and _mode(path) == 0o644
    atomic_write_bytes(path, b"third", durable=True)
    assert path.read_bytes() == b"third" and _mode(path) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]  # no temporary left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "r.npz"
    atomic_write_bytes(path, b"old")
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_replace(path) as fh:
            fh.write(b"half of the new")
            raise RuntimeError("crash mid-write")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.npz"]


def test_a_directory_is_swapped_in_whole(tmp_path):
    final = tmp_path / "adapter"
    with atomic_dir(final) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(ValueError):
        with atomic_dir(final) as tmp:
            (tmp / "a").write_text("2")
            raise ValueError("failed half way")
    assert (final / "a").read_text() == "1"
    with atomic_dir(final) as tmp:
        (tmp / "b").write_text("3")
    assert sorted(p.name for p in final.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
