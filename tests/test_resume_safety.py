"""Resume safety: a changed recipe is refused before anything is written, builder kwargs are checked
when the recipe is loaded, unreadable or mismatched checkpoints name the file and its role, and the
run's files follow the user's umask."""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
import yaml

import kdzoo
from kdzoo.data.shapes import generate_shapes
from kdzoo.recipe import RecipeError, builder_kwargs, recipe_from_dict
from kdzoo.checkpoint import CHECKPOINT_FILE, CheckpointError
from kdzoo.engine import train
from kdzoo.cli.train import main as train_main

TINY_KWARGS = {"fpn_channels": 16, "stacked_convs": 1, "frozen_stages": -1, "norm_eval": False}


def tiny(root: Path, out: Path, **top) -> dict:
    """Two iterations of a 16-channel GFL-R18 on 96 px shapes: a finished run in about two seconds."""
    recipe = {
        "model": {"name": "gfl_r18", "kwargs": dict(TINY_KWARGS)},
        "data": {"root": str(root), "input_size": [96, 96]},
        "schedule": {"iters": 2, "optimizer": "sgd", "lr": 0.01, "warmup_iters": 1, "steps": []},
        "batch_size": 4, "workers": 0, "output_dir": str(out), "checkpoint_interval": 2, "log_interval": 1,
    }
    for key, value in top.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe


def snapshot(directory: Path) -> dict[str, tuple[int, int, int]]:
    """Every file (hidden ones too) with its size, mtime and mode."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode) for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train=8, num_val=4, image_size=96, workers=1)


@pytest.fixture(scope="module")
def finished(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-iteration run, trained under umask 022."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("runs") / "finished"
    old = os.umask(0o022)
    try:
        train(recipe_from_dict(tiny(shapes, out)))
    finally:
        os.umask(old)
        torch.set_num_threads(threads)
    return out


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    """A private copy of the finished run (modes and times preserved)."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


def tiny_state(arch: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = kdzoo.create_detector(arch, num_classes=8, **TINY_KWARGS)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- 1: changed recipe on --resume
def test_resume_refuses_a_changed_recipe_and_writes_nothing(run: Path, shapes: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(run)
    changed = tiny(shapes, run, schedule={"iters": 4}, model={"kwargs": {**TINY_KWARGS, "fpn_channels": 32}},
                   seed=1, log_interval=2, workers=1)  # the last two are harmless
    with pytest.raises(RecipeError) as info:
        train(recipe_from_dict(changed), resume=True)
    msg = str(info.value)
    assert str(run / CHECKPOINT_FILE) in msg
    assert "schedule.iters: 2 -> 4" in msg and "model.kwargs.fpn_channels: 16 -> 32" in msg and "seed: 0 -> 1" in msg
    assert "log_interval:" not in msg and "workers:" not in msg
    assert snapshot(run) == before

    # The same through the CLI: one error block, exit status 1, nothing written either.
    recipe = run.parent / "changed.yaml"
    recipe.write_text(yaml.safe_dump(tiny(shapes, run, model={"name": "atss_r18"})))
    capsys.readouterr()
    assert train_main([str(recipe), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and "model.name: 'gfl_r18' -> 'atss_r18'" in err
    assert snapshot(run) == before


def test_resume_falls_back_to_the_runs_recipe_yaml(run: Path, shapes: Path) -> None:
    ckpt = run / CHECKPOINT_FILE
    state = torch.load(ckpt, weights_only=True)
    del state["recipe"]  # a checkpoint written before the recipe was stored in it
    torch.save(state, ckpt)
    before = snapshot(run)
    with pytest.raises(RecipeError, match=r"(?s)as recorded in .*recipe.yaml.*model.name: .gfl_r18. -> .atss_r18."):
        train(recipe_from_dict(tiny(shapes, run, model={"name": "atss_r18"})), resume=True)
    assert snapshot(run) == before


def test_resume_accepts_harmless_changes(run: Path, shapes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(shapes.parent)  # the same dataset, named by a relative path this time
    harmless = tiny(shapes, run, log_interval=5, checkpoint_interval=7, eval_interval=3, workers=1,
                    eval_batch_size=2, device="cpu", data={"root": shapes.name})
    metrics = train(recipe_from_dict(harmless), resume=True)  # a finished run: nothing more to train
    assert metrics["iter"] == 2
    assert yaml.safe_load((run / "recipe.yaml").read_text())["log_interval"] == 5


# ----------------------------------------------------------------------------- 2: builder kwargs at load time
def test_builder_kwarg_typos_fail_when_the_recipe_is_loaded(shapes: Path, tmp_path: Path) -> None:
    base = tiny(shapes, tmp_path / "run")
    with pytest.raises(RecipeError, match=r"model.kwargs.fpn_chanels: .*Did you mean 'fpn_channels'.*Allowed: .*stacked_convs"):
        recipe_from_dict({**base, "model": {"name": "gfl_r18", "kwargs": {"fpn_chanels": 16}}})
    with pytest.raises(RecipeError, match=r"model.kwargs.reg_maks: .*'reg_max'"):  # a head kwarg of GFL
        recipe_from_dict({**base, "model": {"name": "gfl_r18", "kwargs": {"reg_maks": 8}}})
    with pytest.raises(RecipeError, match=r"model.kwargs.fc_chanels: .*'fc_channels'"):
        recipe_from_dict({**base, "model": {"name": "faster_rcnn_r18", "kwargs": {"fc_chanels": 64}}})
    with pytest.raises(RecipeError, match=r"model.name: unknown detector 'gfl_r19'.*gfl_r18"):
        recipe_from_dict({**base, "model": {"name": "gfl_r19"}})
    kd = {**base, "teacher": {"name": "gfl_r18", "checkpoint": "t.safetensors", "kwargs": {"stacked_conv": 1}},
          "distill": {"method": "crosskd", "options": {"layer": 0}}}
    with pytest.raises(RecipeError, match=r"teacher.kwargs.stacked_conv: .*'stacked_convs'"):
        recipe_from_dict(kd)
    kd["teacher"]["kwargs"] = {"stacked_convs": 1}
    recipe_from_dict(kd)
    with pytest.raises(RecipeError, match=r"distill.options.layr: .*'layer'.*Allowed: .*temperature"):
        recipe_from_dict({**kd, "distill": {"method": "crosskd", "options": {"layr": 0}}})
    with pytest.raises(RecipeError, match=r"distill.method: unknown distillation method 'crosskb'.*'crosskd'"):
        recipe_from_dict({**kd, "distill": {"method": "crosskb"}})


def test_builder_kwargs_follow_every_registered_builder() -> None:
    # passed by create_detector, a family's _create or build_dense_detector themselves
    reserved = {"pretrained", "pretrained_cfg", "backbone", "head_cls", "in_channels", "strides", "test_cfg"}
    for arch in kdzoo.list_detectors():
        names = builder_kwargs(arch)
        assert names is not None, arch
        assert {"num_classes", "fpn_channels", "input_size", "train_sizes", "backbone_pretrained"} <= names, arch
        assert not names & reserved, (arch, names & reserved)
    assert "reg_max" in builder_kwargs("gfl_r18") and "reg_max" not in builder_kwargs("atss_r18")
    assert "fc_channels" in builder_kwargs("faster_rcnn_mnv3s") and "stacked_convs" not in builder_kwargs("faster_rcnn_r18")
    assert "loss_centerness_weight" in builder_kwargs("atss_r50_crosskd") and "topk" not in builder_kwargs("retinanet_r18")


def test_shipped_recipes_pass_the_kwargs_check() -> None:
    from kdzoo.recipe import load_recipe

    recipes = [p for p in sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))
               if "_base_" not in p.parts]  # partial recipes, merged into the others
    assert len(recipes) >= 20
    for path in recipes:
        load_recipe(path)


# ----------------------------------------------------------------------------- 3: unreadable / mismatched checkpoints
def test_truncated_checkpoint_names_the_file(run: Path, shapes: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = run / CHECKPOINT_FILE
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    before = snapshot(run)
    with pytest.raises(CheckpointError, match=rf"{ckpt}.*truncated or corrupt.*[Dd]elete it"):
        train(recipe_from_dict(tiny(shapes, run)), resume=True)
    assert snapshot(run) == before
    recipe = run.parent / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny(shapes, run)))
    capsys.readouterr()
    assert train_main([str(recipe), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(ckpt) in err and "Traceback" not in err


def test_student_checkpoint_of_another_architecture(run: Path, shapes: Path) -> None:
    ckpt = run / CHECKPOINT_FILE
    state = torch.load(ckpt, weights_only=True)
    state["model"] = tiny_state("atss_r18")  # the recipe stored with it still says gfl_r18
    torch.save(state, ckpt)
    before = snapshot(run)
    with pytest.raises(CheckpointError, match=rf"(?s)student.*{ckpt}.*does not match.*(shape mismatch|missing key)"):
        train(recipe_from_dict(tiny(shapes, run)), resume=True)
    assert snapshot(run) == before


def test_teacher_checkpoint_of_another_architecture(finished: Path, shapes: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    bare = tmp_path / "atss_teacher.safetensors"
    save_file(tiny_state("atss_r18"), str(bare))
    kd = tiny(shapes, tmp_path / "kd", teacher={"name": "gfl_r18", "checkpoint": str(bare), "kwargs": TINY_KWARGS},
              distill={"method": "crosskd", "options": {"layer": 0}})
    with pytest.raises(CheckpointError, match=rf"(?s)teacher.*{bare}.*does not match.*(shape mismatch|missing key)"):
        train(recipe_from_dict(kd))

    teacher_dir = Path(shutil.copytree(finished, tmp_path / "teacher_run"))
    save_file(tiny_state("atss_r18"), str(teacher_dir / "model.safetensors"))  # config.json still says gfl_r18
    kd = {**kd, "output_dir": str(tmp_path / "kd2"), "teacher": {"checkpoint": str(teacher_dir)}}
    with pytest.raises(CheckpointError, match=rf"(?s)teacher.*{teacher_dir}.*does not match.*(shape mismatch|missing key)"):
        train(recipe_from_dict(kd))


# ----------------------------------------------------------------------------- 4: file modes
def test_run_files_follow_the_umask(finished: Path) -> None:
    modes = {p.relative_to(finished).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in finished.rglob("*")}
    assert {"recipe.yaml", "metrics.jsonl", CHECKPOINT_FILE, "model.safetensors", "config.json", "eval.json",
            "results.json", "report/per_class.json"} <= set(modes)
    # files 0644 and folders (report/) 0755 under umask 022
    assert modes == {name: 0o755 if (finished / name).is_dir() else 0o644 for name in modes}


def test_save_recipe_follows_a_stricter_umask(tmp_path: Path, shapes: Path) -> None:
    from kdzoo.recipe import save_recipe

    old = os.umask(0o027)
    try:
        path = save_recipe(recipe_from_dict(tiny(shapes, tmp_path / "run")), tmp_path / "recipe.yaml")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


# ----------------------------------------------------------------------------- a run directory without a checkpoint
@pytest.mark.parametrize("resume", [False, True])
def test_a_folder_with_files_but_no_checkpoint_is_not_overwritten(run: Path, shapes: Path, tmp_path: Path,
                                                                  resume: bool) -> None:
    """A finished run whose checkpoint.pt was deleted to save space, or a folder of the user's: a run
    starting at iteration 0 would replace model.safetensors, README.md, results.json ... in it."""
    (run / CHECKPOINT_FILE).unlink()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("# my notes\n")
    for folder, names in ((run, "README.md, config.json, eval.json, model.safetensors, report and 1 more but"),
                          (mine, "README.md but")):
        before = snapshot(folder)
        with pytest.raises(RecipeError, match=rf"output_dir '{folder}' already holds {names}.* no {CHECKPOINT_FILE}"):
            train(recipe_from_dict(tiny(shapes, folder)), resume=resume)
        assert snapshot(folder) == before


def test_a_run_killed_before_its_first_checkpoint_restarts(shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "early"
    out.mkdir()
    (out / "recipe.yaml").write_text("{}\n")  # what a run writes before its first checkpoint
    (out / "metrics.jsonl").write_text('{"iter": 1, "loss": 9.0}\n')
    (out / ".checkpoint.pt.tmp").write_bytes(b"partial")
    train(recipe_from_dict(tiny(shapes, out)), resume=True)
    assert (out / CHECKPOINT_FILE).is_file() and (out / "model.safetensors").is_file()
    assert not (out / ".checkpoint.pt.tmp").exists()
    log = (out / "metrics.jsonl").read_text()
    assert '"loss": 9.0' not in log and '"iter": 2' in log


def test_resume_drops_a_metrics_record_cut_off_mid_write(run: Path, shapes: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    log = run / "metrics.jsonl"
    whole = log.read_text()
    with open(log, "a") as f:
        f.write('{"iter": 3, "epoch": 1.5, "lr": 0.0')  # a kill or a full disk mid-append
    train(recipe_from_dict(tiny(shapes, run)), resume=True)  # finished: only the log is rewritten
    assert log.read_text() == whole
    assert f"{log}:{whole.count(chr(10)) + 1}: dropped an unreadable last record" in capsys.readouterr().err

    # A bad line before the last one is not a cut-off write: named, and nothing is rewritten.
    lines = whole.splitlines()
    log.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    before = log.read_text()
    with pytest.raises(RuntimeError, match=rf"{log}:2: not a JSON record .*fix or remove that line"):
        train(recipe_from_dict(tiny(shapes, run)), resume=True)
    assert log.read_text() == before
