"""kdzoo.checkpoint.atomic_write: the target is the old file or the new one, never anything else."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kdzoo.checkpoint import atomic_write


def test_atomic_write_replaces_with_the_umask_mode(tmp_path: Path) -> None:
    target = tmp_path / "file.json"
    target.write_text("old")
    old = os.umask(0o027)
    try:
        atomic_write(target, lambda p: p.write_text("new"))
        atomic_write(str(tmp_path / "other.json"), lambda p: p.write_text("x"))  # str paths too
    finally:
        os.umask(old)
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.json", "other.json"]


def test_exception_during_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old checkpoint")
    before = target.stat()

    def half_then_fail(p: Path) -> None:
        p.write_bytes(b"half of a new che")
        raise KeyboardInterrupt  # BaseException too: Ctrl-C in the middle of a save

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old checkpoint" and target.stat().st_mtime_ns == before.st_mtime_ns
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # the temporary file is gone


def test_failed_rename_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "eval.json"
    target.write_text("old")

    def no_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, lambda p: p.write_text("new"))
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_killed_process_leaves_the_old_file(tmp_path: Path) -> None:
    """A process that dies mid-write (no exception handler runs) leaves the target as it was;
    only a hidden temporary file remains, which the trainer removes at its next start."""
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old weights")
    code = ("import os, sys\nfrom pathlib import Path\nfrom kdzoo.checkpoint import atomic_write\n"
            "def write(p):\n    p.write_bytes(b'half')\n    os._exit(9)\n"
            "atomic_write(Path(sys.argv[1]), write)\n")
    done = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 9, done.stderr
    assert target.read_bytes() == b"old weights"
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and leftovers[0].startswith(".model.safetensors.") and leftovers[0].endswith(".tmp")
