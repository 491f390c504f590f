"""``kdzoo compare``: recipes trained side by side in their own processes, one table with the
teacher's row first; a failed run is named with its log, a clash of output directories refused."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from kdzoo.data.shapes import generate_shapes

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train=8, num_val=4, image_size=96, seed=0,
                           workers=1)


def recipe(tmp_path: Path, shapes: Path, name: str, **extra) -> Path:
    data = {"_base_": str(REPO / "recipes" / "shapes" / "gfl_student.yaml"),
            "model": {"kwargs": {"fpn_channels": 16, "stacked_convs": 1}},
            "data": {"root": str(shapes), "shapes": None, "input_size": [96, 96]},
            "schedule": {"iters": 2, "warmup_iters": 1}, "batch_size": 2, "workers": 0, "log_interval": 1,
            "output_dir": str(tmp_path / "runs" / name), **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def compare(*args: str, cwd: Path, capsys: pytest.CaptureFixture[str]) -> subprocess.CompletedProcess:
    """``kdzoo compare ARGS`` in this process (the runs themselves are child processes)."""
    from kdzoo.cli import run_command

    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setenv("HF_HUB_OFFLINE", "1")
        try:
            rc = run_command("compare", list(args))
        except SystemExit as e:  # argparse usage errors
            rc = int(e.code)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out.out, out.err)


def test_runs_side_by_side_with_the_teacher_first(shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = recipe(tmp_path, shapes, "a"), recipe(tmp_path, shapes, "b", seed=1)
    proc = compare(str(a), str(b), "--teacher", "gfl_r10t.shapes", "--processes", "2", cwd=tmp_path, capsys=capsys)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split()[0] for line in proc.stdout.splitlines()[1:4]]
    assert rows == ["gfl_r10t.shapes", "a", "b"]
    for name in ("a", "b"):
        assert json.loads((tmp_path / "runs" / name / "eval.json").read_text())["iter"] == 2
        assert "run directory:" in (tmp_path / "runs" / f"{name}.log").read_text()
    teacher = json.loads((tmp_path / "runs" / "gfl_r10t.shapes" / "eval.json").read_text())
    assert teacher["model"] == "gfl_r10t.shapes" and teacher["AP"] >= 0
    # again with --resume: finished runs are reported, nothing is trained or evaluated again
    stamp = (tmp_path / "runs" / "a" / "model.safetensors").stat().st_mtime_ns
    again = compare(str(a), str(b), "--teacher", "gfl_r10t.shapes", "--resume", cwd=tmp_path, capsys=capsys)
    assert again.returncode == 0 and again.stdout == proc.stdout
    assert (tmp_path / "runs" / "a" / "model.safetensors").stat().st_mtime_ns == stamp
    # a cached teacher evaluation of other weights under the same name is not shown: evaluated again
    import hashlib

    from kdzoo.embedded import WEIGHTS_DIR
    assert teacher["weights_sha256"] == hashlib.sha256(
        (WEIGHTS_DIR / "gfl_r10t.shapes" / "model.safetensors").read_bytes()).hexdigest()
    (tmp_path / "runs" / "gfl_r10t.shapes" / "eval.json").write_text(
        json.dumps({**teacher, "AP": 99.0, "weights_sha256": "0" * 64}))
    third = compare(str(a), str(b), "--teacher", "gfl_r10t.shapes", "--resume", cwd=tmp_path, capsys=capsys)
    assert third.returncode == 0 and third.stdout == proc.stdout and "evaluating again" in third.stderr
    # without --resume a finished run is not overwritten
    refused = compare(str(a), cwd=tmp_path, capsys=capsys)
    assert refused.returncode == 2 and "already holds a run; pass --resume" in refused.stderr


def test_a_failed_run_is_named_and_the_others_finish(shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = recipe(tmp_path, shapes, "good")
    bad = recipe(tmp_path, shapes, "bad", teacher={"checkpoint": str(tmp_path / "missing")},
                 distill={"method": "crosskd"})
    proc = compare(str(bad), str(good), cwd=tmp_path, capsys=capsys)
    assert proc.returncode == 1
    assert f"{bad} failed (exit status 2); its output is in {tmp_path / 'runs' / 'bad.log'}" in proc.stderr
    assert "teacher.checkpoint" in (tmp_path / "runs" / "bad.log").read_text()
    assert (tmp_path / "runs" / "good" / "eval.json").is_file() and proc.stdout.splitlines()[1].split()[0] == "good"


def test_two_recipes_writing_one_directory_are_refused(shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = recipe(tmp_path, shapes, "same")
    b = tmp_path / "other.yaml"
    b.write_text(a.read_text())
    proc = compare(str(a), str(b), cwd=tmp_path, capsys=capsys)
    assert proc.returncode == 2 and "both write output_dir" in proc.stderr
    assert not (tmp_path / "runs").exists()
