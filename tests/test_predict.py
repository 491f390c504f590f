"""kdzoo.predict (CLI and helpers) and embedded checkpoints (kdzoo.embed), with tiny random models."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import kdzoo
from kdzoo.cli.embed import main as embed_main
from kdzoo.embedded import MAX_TOTAL_BYTES, WEIGHTS_DIR, embed_run, list_embedded, register_embedded
from kdzoo.predict import PredictError, load_model, read_image
from kdzoo.cli.predict import main as predict_main

CATEGORIES = ("circle", "ellipse", "ring", "square", "rectangle", "triangle", "cross", "star")
KWARGS = dict(num_classes=8, fpn_channels=16, stacked_convs=1, input_size=(96, 96))


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return kdzoo.create_detector("gfl_r18", pretrained_cfg_overlay=dict(categories=CATEGORIES), **KWARGS).eval()


@pytest.fixture(scope="module")
def run_dir(model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory as kdzoo.train leaves it (weights, config, metrics with an eval record, recipe)."""
    d = model.save_pretrained(str(tmp_path_factory.mktemp("run") / "run"))
    (d / "metrics.jsonl").write_text(json.dumps({"iter": 10, "loss": 2.0}) + "\n"
                                     + json.dumps({"iter": 20, "AP": 17.5, "AP50": 33.0}) + "\n")
    (d / "recipe.yaml").write_text("model: {name: gfl_r18}\ndata: {root: data/shapes, shapes: {num_train: 8}}\n"
                                   "teacher: {name: gfl_r18, checkpoint: runs/shapes/gfl_r18_teacher}\n"
                                   "distill: {method: crosskd}\n")
    return d


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RGB, grayscale, 16-bit, RGBA and palette images, plus files the folder scan must ignore."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (80, 120, 3), np.uint8)).save(d / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (90, 64), np.uint8)).save(d / "gray.jpg")
    Image.fromarray(rng.integers(0, 65535, (50, 70), np.uint16)).save(d / "deep16.png")
    Image.fromarray(rng.integers(0, 255, (64, 64, 4), np.uint8)).save(d / "alpha.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).convert("P").save(d / "palette.gif")
    (d / "notes.txt").write_text("not an image")
    (d / "sub").mkdir()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(d / "sub" / "nested.png")
    return d


def test_predict_folder_writes_annotated_images_and_coco_json(run_dir: Path, images: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    rc = predict_main([str(images), "--model", str(run_dir), "--out", str(out), "--score-thr", "0",
                       "--batch-size", "2"])
    assert rc == 0, capsys.readouterr().err
    names = ["alpha.png", "deep16.png", "gray.jpg", "palette.png", "rgb.png"]  # gif -> png; txt and sub/ ignored
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ["results.json"])
    result = json.loads((out / "results.json").read_text())
    assert [Path(i["file_name"]).name for i in result["images"]] == ["alpha.png", "deep16.png", "gray.jpg",
                                                                        "palette.gif", "rgb.png"]
    assert [c["name"] for c in result["categories"]] == list(CATEGORIES)
    assert result["annotations"], "score_thr 0 keeps the random model's boxes"
    sizes = {i["id"]: (i["width"], i["height"]) for i in result["images"]}
    for ann in result["annotations"]:
        x, y, w, h = ann["bbox"]
        W, H = sizes[ann["image_id"]]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0 and x + w <= W + 0.01 and y + h <= H + 0.01
        assert ann["category_name"] == CATEGORIES[ann["category_id"] - 1]
        assert 0 <= ann["score"] <= 1
        assert Path(ann["file_name"]).name in {Path(i["file_name"]).name for i in result["images"]}
    for meta in result["images"]:
        drawn = Image.open(out / meta["annotated"])
        assert drawn.size == (meta["width"], meta["height"]) and drawn.mode == "RGB"
        original, _ = read_image(meta["file_name"])
        if any(a["image_id"] == meta["id"] for a in result["annotations"]):
            assert not np.array_equal(np.asarray(drawn.convert("RGB")), original), "boxes were drawn"


def test_threshold_filters_and_matches_model_output(run_dir: Path, images: Path, tmp_path: Path,
                                                    model: torch.nn.Module) -> None:
    assert predict_main([str(images / "rgb.png"), "--model", str(run_dir), "--out", str(tmp_path / "a"),
                         "--score-thr", "0"]) == 0
    low = json.loads((tmp_path / "a" / "results.json").read_text())["annotations"]
    thr = sorted(a["score"] for a in low)[len(low) // 2]
    assert predict_main([str(images / "rgb.png"), "--model", f"local-dir:{run_dir}", "--out", str(tmp_path / "b"),
                         "--score-thr", str(thr)]) == 0
    high = json.loads((tmp_path / "b" / "results.json").read_text())["annotations"]
    assert [a["score"] for a in high] == [a["score"] for a in low if a["score"] >= thr]
    # the same boxes as calling the model directly (lowering its built-in 0.05 threshold)
    arr, _ = read_image(images / "rgb.png")
    model.bbox_head.test_cfg.score_thr, saved = 0.0, model.bbox_head.test_cfg.score_thr
    try:
        with torch.no_grad():
            ref = model([torch.from_numpy(arr).permute(2, 0, 1).float() / 255])[0]
    finally:
        model.bbox_head.test_cfg.score_thr = saved
    assert len(low) == len(ref["scores"])
    np.testing.assert_allclose(sorted(a["score"] for a in low), sorted(ref["scores"].tolist()), atol=1e-4)


def test_glob_inputs_and_duplicate_names(run_dir: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc = predict_main([str(images / "**" / "*.png"), str(images / "rgb.png"), str(images / "sub"),
                       "--model", str(run_dir), "--out", str(out), "--score-thr", "0.5"])
    assert rc == 0
    result = json.loads((out / "results.json").read_text())
    files = [Path(i["file_name"]).name for i in result["images"]]
    assert sorted(files) == ["alpha.png", "deep16.png", "nested.png", "rgb.png"]  # rgb.png once


def test_clear_errors(run_dir: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def err(args: list[str], rc: int = 2) -> str:
        assert predict_main(args + ["--out", str(tmp_path / "o")]) == rc
        return capsys.readouterr().err

    assert "no image files match" in err([str(tmp_path / "missing" / "*.jpg"), "--model", str(run_dir)])
    assert "contains no image files" in err([str(tmp_path), "--model", str(run_dir)])
    assert "Unknown detector 'gfl_r1'" in err([str(images), "--model", "gfl_r1"])
    assert "has no pretrained weights" in err([str(images), "--model", "gfl_r18"])
    assert "not a kdzoo model directory" in err([str(images), "--model", str(images)])
    assert "no such model directory" in err([str(images), "--model", str(tmp_path / "nope")])
    assert "--score-thr must be in [0, 1]" in err([str(images), "--model", str(run_dir), "--score-thr", "3"])
    # an unreadable image is skipped with its reason; the others are still written (exit status 1)
    bad = tmp_path / "mixed"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(bad / "ok.png")
    stderr = err([str(bad), "--model", str(run_dir)], rc=1)
    assert "skipped: broken.png is not a readable image" in stderr
    assert (tmp_path / "o" / "ok.png").is_file() and not (tmp_path / "o" / "broken.png").exists()
    if not torch.cuda.is_available():
        assert "CUDA is not available" in err([str(images), "--model", str(run_dir), "--device", "cuda"])


def test_read_image_modes_and_huge_images(tmp_path: Path) -> None:
    deep = np.full((10, 12), 65535, np.uint16)
    deep[0, 0] = 0
    Image.fromarray(deep).save(tmp_path / "deep.png")
    arr, notice = read_image(tmp_path / "deep.png")
    assert arr.shape == (10, 12, 3) and arr.dtype == np.uint8 and arr[1, 1].tolist() == [255] * 3 and arr[0, 0, 0] == 0
    assert notice == ""
    Image.new("RGBA", (8, 6), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    assert read_image(tmp_path / "rgba.png")[0][0, 0].tolist() == [10, 20, 30]
    Image.new("RGB", (5000, 2500), (0, 128, 255)).save(tmp_path / "huge.jpg", quality=50)
    arr, notice = read_image(tmp_path / "huge.jpg")
    assert arr.shape == (1024, 2048, 3)
    assert "resized from 5000x2500 to 2048x1024" in notice
    (tmp_path / "fake.jpg").write_text("hello")
    with pytest.raises(PredictError, match="fake.jpg is not a readable image"):
        read_image(tmp_path / "fake.jpg")


# ----------------------------------------------------------------------------- embedded checkpoints
@pytest.fixture
def registry_restored():
    """The registry as it was before the test: a tag registered here must not show in other tests
    (hubconf's docstrings list every registered tag)."""
    from kdzoo import embedded, registry

    pretrained = {arch: dict(tags) for arch, tags in registry._pretrained.items()}
    not_default, registered = set(registry._not_default), list(embedded._registered)
    yield
    registry._pretrained.clear()
    registry._pretrained.update(pretrained)
    registry._not_default.clear()
    registry._not_default.update(not_default)
    embedded._registered[:] = registered


def test_embed_run_registers_fp16_checkpoint(run_dir: Path, model: torch.nn.Module, tmp_path: Path,
                                             registry_restored: None) -> None:
    from safetensors.torch import load_file

    import os
    import stat

    old_umask = os.umask(0o022)
    try:
        folder = embed_run(run_dir, "gfl_r18.shapes_unittest", tmp_path / "weights", max_total_bytes=10 ** 9)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755  # the user's umask, not mkdtemp's 0700
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors", "recipe.yaml"]
    stored = load_file(str(folder / "model.safetensors"))
    assert {t.dtype for t in stored.values() if t.is_floating_point()} == {torch.float16}
    card = (folder / "README.md").read_text()
    assert "**Box AP 17.5**" in card and "Teacher: `gfl_r18`" in card and "Method: `crosskd`" in card
    assert 'create_detector("gfl_r18.shapes_unittest", pretrained=True)' in card

    assert register_embedded(tmp_path / "weights") == ["gfl_r18.shapes_unittest"]
    assert "gfl_r18.shapes_unittest" in list_embedded()
    assert "gfl_r18.shapes_unittest" in kdzoo.list_pretrained("gfl_r18*")
    cfg = kdzoo.get_pretrained_cfg("gfl_r18.shapes_unittest")
    assert (cfg.box_ap, cfg.ap_dataset, cfg.categories, cfg.input_size) == (17.5, "kdzoo-shapes (synthetic)",
                                                                             CATEGORIES, (96, 96))
    assert (cfg.teacher, cfg.distill_method) == ("gfl_r18", "crosskd")
    # the registry name alone rebuilds the narrow 8-class architecture and upcasts the weights
    loaded = kdzoo.create_detector("gfl_r18.shapes_unittest", pretrained=True).eval()
    assert loaded.num_classes == 8 and loaded.neck.out_channels == 16
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    for k, v in loaded.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, model.state_dict()[k].half().float(), rtol=0, atol=0)
    # the caller's kwargs win; the bare architecture is not changed by the embedded tag
    assert kdzoo.create_detector("gfl_r18.shapes_unittest", score_thr=0.5).bbox_head.test_cfg.score_thr == 0.5
    bare = kdzoo.create_detector("gfl_r18")
    assert bare.num_classes == 80 and bare.neck.out_channels == 128
    with pytest.raises(RuntimeError, match="No pretrained weights"):
        kdzoo.create_detector("gfl_r18", pretrained=True)
    # the predictor resolves it like any registry name
    assert load_model("gfl_r18.shapes_unittest").categories == list(CATEGORIES)


def test_embed_refuses_over_budget_and_bad_names(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "weights"
    rc = embed_main([str(run_dir), "--name", "gfl_r18.shapes_big", "--out", str(out)])  # 11 M params: 22 MB fp16
    assert rc == 2 and "over the 20 MB budget" in capsys.readouterr().err
    assert not any(out.iterdir()), "nothing is left behind"
    with pytest.raises(ValueError, match="name it 'gfl_r18.shapes'"):
        embed_run(run_dir, "fcos_r18.shapes", out)
    with pytest.raises(ValueError, match="must be 'arch.tag'"):
        embed_run(run_dir, "gfl_r18", out)
    embed_run(run_dir, "gfl_r18.twice", out, max_total_bytes=10 ** 9)
    with pytest.raises(FileExistsError, match="--overwrite"):
        embed_run(run_dir, "gfl_r18.twice", out, max_total_bytes=10 ** 9)
    embed_run(run_dir, "gfl_r18.twice", out, max_total_bytes=10 ** 9, overwrite=True)


def test_broken_embedded_folder_is_skipped_with_warning(tmp_path: Path) -> None:
    (tmp_path / "gfl_r18.broken").mkdir()
    (tmp_path / "gfl_r18.broken" / "config.json").write_text("{not json")
    (tmp_path / "nope_arch.x").mkdir()
    with pytest.warns(UserWarning, match="skipping embedded checkpoint"):
        assert register_embedded(tmp_path) == []


def test_shipped_weights_fit_the_budget_and_load() -> None:
    folders = sorted(p.name for p in WEIGHTS_DIR.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    assert set(folders) <= set(list_embedded())
    assert sum(f.stat().st_size for f in WEIGHTS_DIR.rglob("*") if f.is_file()) <= MAX_TOTAL_BYTES
    for name in folders:
        cfg = kdzoo.get_pretrained_cfg(name)
        assert cfg.box_ap is not None and cfg.ap_dataset, f"{name} has no measured AP"
        m = kdzoo.create_detector(name, pretrained=True).eval()
        assert m.num_classes == len(cfg.categories)
