"""Recipes, the training engine (resume, NaN stop, DDP) and kdzoo.eval, on a tiny shapes dataset."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from kdzoo.data.shapes import generate_shapes
import kdzoo
from kdzoo.cli.eval import main as eval_main
from kdzoo.recipe import RecipeError, load_recipe, recipe_from_dict, save_recipe
from kdzoo.engine import CHECKPOINT_FILE, NonFiniteLossError, lr_factor, train
from kdzoo.cli.train import main as train_main

REPO = Path(__file__).resolve().parents[1]
ITERS = 4


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train=12, num_val=6, image_size=96, workers=1)


def tiny(root: Path, out: Path, **top) -> dict:
    """A recipe small enough to train a few iterations in seconds on a shared CPU."""
    recipe = {
        "model": {"name": "gfl_r18", "kwargs": {"fpn_channels": 16, "stacked_convs": 1, "frozen_stages": -1,
                                                "norm_eval": False}},
        "data": {"root": str(root), "input_size": [96, 96]},
        "schedule": {"iters": ITERS, "optimizer": "sgd", "lr": 0.01, "warmup_iters": 2, "steps": [3]},
        "batch_size": 4, "workers": 0, "output_dir": str(out), "checkpoint_interval": 2, "log_interval": 2,
    }
    for key, value in top.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe


def write(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


@pytest.fixture(scope="module")
def reference_run(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)  # the subprocess runs below use the same count: identical arithmetic
    out = tmp_path_factory.mktemp("runs") / "ref"
    train(recipe_from_dict(tiny(shapes, out)))
    return out


# ----------------------------------------------------------------------------- recipes
def test_recipe_unknown_and_mistyped_keys(tmp_path: Path, shapes: Path) -> None:
    base = tiny(shapes, tmp_path / "run")
    with pytest.raises(RecipeError, match=r"unknown recipe key 'schedule.lrr'.*'lr'.*Allowed keys in 'schedule'"):
        recipe_from_dict({**base, "schedule": {"iters": 2, "lrr": 0.1}})
    with pytest.raises(RecipeError, match=r"unknown recipe key 'bacth_size'. Did you mean 'batch_size'"):
        recipe_from_dict({**base, "bacth_size": 2})
    with pytest.raises(RecipeError, match=r"schedule.iters: expected int \| null, got str 'ten'"):
        recipe_from_dict({**base, "schedule": {"iters": "ten"}})
    with pytest.raises(RecipeError, match=r"schedule.optimizer: expected one of 'sgd' \| 'adamw', got 'adam'"):
        recipe_from_dict({**base, "schedule": {"iters": 2, "optimizer": "adam"}})
    with pytest.raises(RecipeError, match=r"data.input_size\[1\]: expected int"):
        recipe_from_dict({**base, "data": {"root": "x", "input_size": [96, "96"]}})
    with pytest.raises(RecipeError, match="exactly one of 'epochs' or 'iters'"):
        recipe_from_dict({**base, "schedule": {"iters": 2, "epochs": 1}})
    with pytest.raises(RecipeError, match="'teacher' and 'distill' go together"):
        recipe_from_dict({**base, "teacher": {"checkpoint": "x"}})


def test_recipe_overrides_and_saved_copy(tmp_path: Path, shapes: Path) -> None:
    path = write(tmp_path / "r.yaml", tiny(shapes, tmp_path / "run"))
    r = load_recipe(path, ["schedule.lr=2e-3", "model.kwargs.fpn_channels=64", "data.train_sizes=[[96, 64], [96, 96]]",
                           "schedule.grad_clip=null", "amp=true", "schedule.policy=cosine"])
    assert r.schedule.lr == 0.002 and r.model.kwargs["fpn_channels"] == 64 and r.amp is True
    assert r.data.train_sizes == [[96, 64], [96, 96]] and r.schedule.grad_clip is None
    with pytest.raises(RecipeError, match="unknown recipe key 'schedule.warmup_iter'"):
        load_recipe(path, ["schedule.warmup_iter=3"])
    with pytest.raises(RecipeError, match="not of the form key.sub=value"):
        load_recipe(path, ["schedule.lr"])
    saved = save_recipe(r, tmp_path / "out" / "recipe.yaml")
    assert load_recipe(saved) == r


def test_recipe_missing_data_paths(tmp_path: Path, shapes: Path) -> None:
    r = recipe_from_dict(tiny(tmp_path / "nowhere", tmp_path / "run"))
    with pytest.raises(RecipeError, match="data.root: dataset directory .*nowhere.* does not exist"):
        r.check_paths()
    r = recipe_from_dict(tiny(shapes, tmp_path / "run", data={"root": str(shapes), "val_ann": "annotations/missing.json"}))
    with pytest.raises(RecipeError, match="data.val_ann: file .*missing.json.* does not exist"):
        train(r)


def test_shipped_recipes_load() -> None:
    coco = [REPO / "recipes" / "coco" / f"{fam}_r{depth}_1x.yaml" for fam in ("gfl", "atss", "retinanet", "fcos")
            for depth in (50, 101)]
    for path in coco:
        r = load_recipe(path)
        s = r.schedule
        assert (s.epochs, s.steps, s.momentum, s.weight_decay, s.warmup_iters) == (12, [8, 11], 0.9, 1e-4, 500), path
        assert r.batch_size * 8 == s.base_batch_size == 16
        # MMDetection's ImageNet init: torchvision's weights, or MSRA's caffe ResNets for the caffe-style FCOS
        expected = f"open-mmlab://detectron/resnet{path.stem.split('_r')[1].split('_')[0]}_caffe" if "fcos" in path.name \
            else "tv_in1k"
        assert r.model.kwargs["backbone_pretrained"] == expected, path
        assert r.data.input_size == [1333, 800] and r.data.flip == 0.5
    fcos = load_recipe(REPO / "recipes" / "coco" / "fcos_r50_1x.yaml").schedule
    assert (fcos.grad_clip, fcos.warmup, fcos.bias_lr_mult, fcos.bias_decay_mult) == (35.0, "constant", 2.0, 0.0)
    # CrossKD's FCOS config: ConstantLR(1/3) for 500 iterations, a random choice of 1333x640 or 1333x800.
    kd = load_recipe(REPO / "recipes" / "coco" / "crosskd_fcos_r101_to_r50_2x_ms.yaml")
    assert (kd.schedule.warmup, kd.schedule.warmup_iters, kd.schedule.warmup_ratio) == ("constant", 500, pytest.approx(1 / 3))
    assert kd.data.train_sizes == [[1333, 640], [1333, 800]]
    for name in ("crosskd_retinanet_r101_to_r50_2x", "crosskd_retinanet_swin_t_to_r50_1x"):
        assert load_recipe(REPO / "recipes" / "coco" / f"{name}.yaml").model.kwargs["add_extra_convs"] == "on_output"
    shapes = sorted((REPO / "recipes" / "shapes").glob("*.yaml"))
    assert len(shapes) >= 12
    for path in shapes:  # CPU recipes train from scratch: nothing frozen, BatchNorm statistics learned
        r = load_recipe(path)
        assert r.model.kwargs["frozen_stages"] == -1 and r.model.kwargs["norm_eval"] is False, path


def test_lr_schedule() -> None:
    s = recipe_from_dict({"model": {"name": "gfl_r18"}, "data": {"root": "x"}, "output_dir": "o",
                          "schedule": {"epochs": 12, "steps": [8, 11], "warmup_iters": 500, "warmup_ratio": 0.001}}).schedule
    assert lr_factor(0, s, 1200, 100) == pytest.approx(0.001)
    assert lr_factor(250, s, 1200, 100) == pytest.approx(0.001 + 0.999 * 0.5)
    assert lr_factor(500, s, 1200, 100) == 1.0
    assert lr_factor(799, s, 1200, 100) == 1.0 and lr_factor(800, s, 1200, 100) == pytest.approx(0.1)
    assert lr_factor(1100, s, 1200, 100) == pytest.approx(0.01)
    s.warmup, s.warmup_ratio = "constant", 1 / 3
    assert lr_factor(499, s, 1200, 100) == pytest.approx(1 / 3) and lr_factor(500, s, 1200, 100) == 1.0
    s.policy, s.warmup, s.min_lr_ratio = "cosine", "none", 0.1
    assert lr_factor(0, s, 1200, 100) == 1.0 and lr_factor(1200, s, 1200, 100) == pytest.approx(0.1)
    assert lr_factor(600, s, 1200, 100) == pytest.approx(0.55)


# ----------------------------------------------------------------------------- engine
def test_train_writes_a_complete_run(reference_run: Path, shapes: Path) -> None:
    run = reference_run
    for name in ("recipe.yaml", "metrics.jsonl", CHECKPOINT_FILE, "model.safetensors", "config.json", "eval.json",
                 "results.json"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if "loss" in r]
    assert [r["iter"] for r in train_recs] == [2, 4]
    assert all(math.isfinite(r["loss"]) and r["images_per_s"] > 0 for r in train_recs)
    assert train_recs[0]["lr"] < 0.01 and train_recs[1]["lr"] == pytest.approx(0.001)  # warm-up, then step at 3
    final = json.loads((run / "eval.json").read_text())
    assert final["iter"] == ITERS and final["images"] == 6 and set(final["per_class"]) == {"circle", "ellipse", "ring", "square", "rectangle",
                                                                 "triangle", "cross", "star"}
    ckpt = torch.load(run / CHECKPOINT_FILE, weights_only=True)
    assert ckpt["iteration"] == ITERS and set(ckpt) >= {"model", "optimizer", "scheduler", "rng"}
    config = json.loads((run / "config.json").read_text())
    assert config["architecture"] == "gfl_r18" and config["kwargs"]["fpn_channels"] == 16
    assert config["pretrained_cfg"]["categories"][0] == "circle"

    # The run directory rebuilds the model, and kdzoo.eval on it reproduces the training-time AP.
    model = kdzoo.create_detector(run, pretrained=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights(run).items())
    assert eval_main(["--model", str(run), "--data", str(shapes), "--ann", "annotations/instances_val.json",
                      "--images-dir", "val", "--workers", "0", "--out", str(run / "again.json"),
                      "--metrics-out", str(run / "again_metrics.json")]) == 0
    metrics = json.loads((run / "again_metrics.json").read_text())
    assert metrics["AP"] == pytest.approx(final["AP"], nan_ok=True)
    assert json.loads((run / "again.json").read_text()) == json.loads((run / "results.json").read_text())

    from kdzoo.evaluation import summary_table

    table = summary_table([str(run / "recipe.yaml"), str(run)])  # a recipe stands for its output_dir
    assert table.splitlines()[1].split()[:2] == [run.name, str(ITERS)] and "circle" in table

    # --resume of a finished run trains and evaluates nothing more (what a second `make run` does).
    before = (run / "metrics.jsonl").read_text()
    again = train(load_recipe(run / "recipe.yaml"), resume=True)
    assert again["AP"] == pytest.approx(final["AP"], nan_ok=True) and (run / "metrics.jsonl").read_text() == before


def test_amp_bf16_on_cpu_and_adamw_cosine(shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "amp"
    train(recipe_from_dict(tiny(shapes, out, amp=True, schedule={"iters": 2, "optimizer": "adamw", "lr": 1e-3,
                                                                   "policy": "cosine", "steps": []})))
    rec = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][0]
    assert rec["iter"] == 2 and math.isfinite(rec["loss"])
    assert all(v.dtype == torch.float32 for v in weights(out).values() if v.is_floating_point())  # fp32 master weights


def test_resume_after_sigkill_matches_uninterrupted_run(reference_run: Path, shapes: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "killed"
    recipe = write(tmp_path / "r.yaml", tiny(shapes, out))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "kdzoo.train", str(recipe)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = out / CHECKPOINT_FILE
    deadline = time.time() + 600  # generous: a loaded machine imports slowly
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), proc.stderr.read().decode()[-2000:]
    assert not (out / "model.safetensors").exists(), "the run finished before it could be killed"
    killed_at = torch.load(ckpt, weights_only=True)["iteration"]
    assert killed_at == 2

    assert train_main([str(recipe), "--resume"]) == 0  # in-process: one interpreter start less
    assert f"resuming {out} from iteration 2/{ITERS}" in capsys.readouterr().err
    assert torch.load(ckpt, weights_only=True)["iteration"] == ITERS
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "loss" in r] == [2, 4]
    ref, got = weights(reference_run), weights(out)
    assert ref.keys() == got.keys()
    assert all(torch.allclose(ref[k], got[k], atol=1e-5) for k in ref)


def test_distillation_hook_trains_the_student(reference_run: Path, shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "kd"
    recipe = tiny(shapes, out, teacher={"checkpoint": str(reference_run)},
                  distill={"method": "crosskd", "options": {"layer": 0}}, schedule={"iters": 2})
    train(recipe_from_dict(recipe))
    rec = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][0]
    assert any(k.startswith("loss_") and k not in ("loss_cls", "loss_bbox", "loss_dfl") for k in rec), rec
    student = kdzoo.create_detector(out, pretrained=True)  # the saved weights are a plain student, teacher and adapters excluded
    assert student.arch_name == "gfl_r18" and set(student.state_dict()) == set(weights(out))
    assert not any(k.startswith("teacher.") for k in torch.load(out / CHECKPOINT_FILE, weights_only=True)["model"])
    with pytest.raises(RecipeError, match="teacher.checkpoint: .*missing.* does not exist"):
        train(recipe_from_dict({**recipe, "output_dir": str(tmp_path / "kd2"), "teacher": {"checkpoint": str(tmp_path / "missing")}}))


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(shapes: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from kdzoo.gfl import GFLHead

    real_loss, calls = GFLHead.loss, []

    def loss(self, *args, **kwargs):
        calls.append(1)
        out = real_loss(self, *args, **kwargs)
        return {**out, "loss_cls": out["loss_cls"] * float("nan")} if len(calls) == 3 else out

    monkeypatch.setattr(GFLHead, "loss", loss)
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"iteration 3 \(loss_cls=nan.*last good checkpoint .* \(iteration 2\)"):
        train(recipe_from_dict(tiny(shapes, out)))
    assert torch.load(out / CHECKPOINT_FILE, weights_only=True)["iteration"] == 2
    assert not (out / "model.safetensors").exists()


def test_bad_annotation_and_undecodable_image(shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    (data / "annotations" / "instances_val.json").write_text('{"info": "not coco"}')
    with pytest.raises(ValueError, match=r"instances_val.json is not COCO JSON: missing key\(s\) \['images', 'categories'\]"):
        train(recipe_from_dict(tiny(data, tmp_path / "a", data={"root": str(data)})))
    shutil.copy(shapes / "annotations" / "instances_val.json", data / "annotations" / "instances_val.json")
    for img in (data / "train").iterdir():
        img.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    # Found before training starts (every file is checked), not when the first batch is read.
    with pytest.raises(RuntimeError, match=r"12 of 18 image files under .*train.* cannot be read: .*train/000001.png \("):
        train(recipe_from_dict(tiny(data, tmp_path / "b", data={"root": str(data)})))
    assert not (tmp_path / "b" / CHECKPOINT_FILE).exists()
    # The CLI reports recipe problems as one line, no traceback.
    bad = write(tmp_path / "bad.yaml", {**tiny(data, tmp_path / "c"), "schedul": {}})
    capsys.readouterr()
    assert train_main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unknown recipe key 'schedul'. Did you mean 'schedule'?" in err


def test_pretrained_backbone_offline_fails_clearly(shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import huggingface_hub.constants

    # HF_HUB_OFFLINE=1, as huggingface_hub reads it at import time (this process imported it already).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    recipe = write(tmp_path / "r.yaml", tiny(shapes, tmp_path / "run", model={
        "name": "gfl_r18", "kwargs": {"backbone_pretrained": True, "fpn_channels": 16}}))
    t0 = time.time()
    assert train_main([str(recipe)]) == 2 and time.time() - t0 < 30
    err = capsys.readouterr().err
    assert "could not load pretrained weights" in err and "backbone_pretrained=false" in err


# ----------------------------------------------------------------------------- evaluation
def test_evaluation_runs_one_image_at_a_time_by_default() -> None:
    import inspect

    from kdzoo.evaluation import evaluate

    assert inspect.signature(evaluate).parameters["batch_size"].default == 1
    assert recipe_from_dict({"model": {"name": "gfl_r18"}, "data": {"root": "x"}, "output_dir": "o",
                             "schedule": {"iters": 1}}).eval_batch_size == 1
    # Why: next to a larger image, a small image's padding changes its features at the edges.
    torch.manual_seed(0)
    model = kdzoo.create_detector("gfl_r18", num_classes=3, fpn_channels=16, input_size=(96, 96)).eval()
    for m in model.modules():  # trained weights have biases and BatchNorm shifts: padding stops being zero
        if isinstance(getattr(m, "bias", None), torch.Tensor):
            torch.nn.init.normal_(m.bias, std=0.5)
    small, large = torch.rand(3, 48, 96), torch.rand(3, 96, 96)
    with torch.no_grad():
        feats_alone = model.extract_feats(model.preprocess([small])[0].tensors)
        feats_batched = model.extract_feats(model.preprocess([large, small])[0].tensors)
    h, w = feats_alone[0].shape[-2:]
    assert not torch.allclose(feats_alone[0][0], feats_batched[0][1, :, :h, :w], atol=1e-4)



def test_eval_results_file_matches_pycocotools(shapes: Path, tmp_path: Path) -> None:
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ann = shapes / "annotations" / "instances_val.json"
    gt = json.loads(ann.read_text())
    g = torch.Generator().manual_seed(0)
    results = []
    for i, a in enumerate(gt["annotations"]):
        if i % 4 == 3:
            continue  # a missed object
        x, y, w, h = a["bbox"]
        jitter = (torch.rand(4, generator=g) - 0.5) * 0.3 * torch.tensor([w, h, w, h])
        cat = a["category_id"] if i % 5 else a["category_id"] % 8 + 1  # some wrong classes
        results.append({"image_id": a["image_id"], "category_id": cat, "score": float(torch.rand(1, generator=g)),
                        "bbox": [x + float(jitter[0]), y + float(jitter[1]), max(1.0, w + float(jitter[2])),
                                 max(1.0, h + float(jitter[3]))]})
    results.append({"image_id": gt["images"][0]["id"], "category_id": 1, "score": 0.99, "bbox": [0, 0, 20, 20]})
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(results))

    assert eval_main(["--results", str(path), "--data", str(shapes), "--ann", "annotations/instances_val.json",
                      "--metrics-out", str(tmp_path / "metrics.json")]) == 0
    ours = json.loads((tmp_path / "metrics.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann))
        ev = COCOeval(coco, coco.loadRes(str(path)), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    for k, v in zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), ev.stats[:6]):
        assert ours[k] == pytest.approx(v * 100, abs=1e-9, nan_ok=True) if v >= 0 else math.isnan(ours[k]), k
    assert 10 < ours["AP"] < 95


# ----------------------------------------------------------------------------- distributed
@pytest.mark.slow
def test_torchrun_two_processes_gloo(shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    recipe = write(tmp_path / "r.yaml", tiny(shapes, out, schedule={"iters": 3, "base_batch_size": 4},
                                             batch_size=2, checkpoint_interval=0))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "kdzoo.train",
           str(recipe)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    sums = [r["rank_weight_checksums"] for r in records if "rank_weight_checksums" in r]
    assert len(sums) == 1 and len(sums[0]) == 2 and sums[0][0] == sums[0][1]
    assert records[0]["images_per_s"] > 0 and records[0]["lr"] == pytest.approx(0.01 * (1 / 2 * 0.999 + 0.001))
    # Evaluation gathered over both ranks (3 images each) covers the 6 validation images.
    assert json.loads((out / "eval.json").read_text())["images"] == 6
    assert (out / "model.safetensors").is_file()


def test_shapes_distillation_recipes_share_their_baselines_budget() -> None:
    """Every shapes distillation recipe trains exactly its family's baseline student (model, data,
    schedule, batch, seed) and differs only by its teacher and distill sections, so the
    benchmark's rows compare methods, not budgets; the teacher it names is its family's teacher run."""
    from kdzoo.recipe import resolve_bases

    shapes = REPO / "recipes" / "shapes"
    distilled = [p for p in sorted(shapes.glob("*.yaml")) if "teacher" in resolve_bases(p)]
    assert len(distilled) >= 9
    for path in distilled:
        family = path.stem.split("_")[0] if not path.stem.startswith("faster_rcnn") else "faster_rcnn"
        raw, base = (resolve_bases(p) for p in (path, shapes / f"{family}_student.yaml"))
        for key in ("model", "data", "schedule", "batch_size", "seed"):
            assert raw[key] == base[key], (path.name, key)
        teacher = resolve_bases(shapes / f"{family}_teacher.yaml")
        if raw["teacher"].get("pretrained"):  # the teacher shipped with the package (make run): that recipe's model
            assert raw["teacher"]["name"].partition(".")[0] == teacher["model"]["name"], path.name
            continue
        assert raw["teacher"]["checkpoint"] == teacher["output_dir"], path.name
        assert raw["teacher"].get("name", teacher["model"]["name"]) == teacher["model"]["name"], path.name
    # make run's pair: the same student budget as each other, the one docs/training.md states,
    # CrossKD from the GFL teacher shipped with the package
    student, crosskd = (resolve_bases(shapes / "make_run" / f) for f in ("gfl_student.yaml", "gfl_crosskd.yaml"))
    for key in ("model", "data", "schedule", "batch_size", "seed"):
        assert student[key] == crosskd[key], key
    doc = (REPO / "docs" / "training.md").read_text().partition("## Shapes: `make run`")[2]
    assert f"{student['schedule']['iters']} iterations of {student['batch_size']} images" in doc
    assert crosskd["teacher"] == {"name": "gfl_r10t.shapes", "pretrained": True}
    assert crosskd["distill"] == resolve_bases(shapes / "gfl_crosskd.yaml")["distill"]
    assert "teacher" not in student and student["output_dir"] != crosskd["output_dir"]
