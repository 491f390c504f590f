"""Data safety: the shapes generator never deletes what it did not write, degenerate or
non-finite boxes are reported instead of passing silently, and unreadable images stop a run
before its first training step."""
from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdzoo.data.shapes import generate_shapes

TINY = dict(num_train=3, num_val=2, image_size=64)


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> content hash of every file under ``root``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def shapes_recipe(root: Path, out: Path, **shapes):
    from kdzoo.recipe import recipe_from_dict

    return recipe_from_dict({"model": {"name": "gfl_r18"}, "data": {"root": str(root), "shapes": {**TINY, **shapes}},
                             "schedule": {"iters": 1}, "output_dir": str(out)})


# ----------------------------------------------------------------------------- shapes generator
def test_recipe_with_other_shapes_parameters_leaves_the_directory_alone(tmp_path: Path) -> None:
    from kdzoo.engine.build import ensure_data  # the path a recipe's data.shapes goes through

    root = tmp_path / "shapes"
    ensure_data(shapes_recipe(root, tmp_path / "run"))
    (root / "my_notes.txt").write_text("mine")
    (root / "train" / "extra.png").write_bytes(b"user image")
    before = snapshot(root)
    assert "annotations/instances_train.json" in before and "train/000001.png" in before

    with pytest.raises(ValueError) as err:
        ensure_data(shapes_recipe(root, tmp_path / "run", num_train=4, seed=1))
    msg = str(err.value)
    assert "\n" not in msg and str(root) in msg
    assert "num_train: 3 there, 4 requested" in msg and "seed: 0 there, 1 requested" in msg
    assert "num_val" not in msg and "image_size" not in msg  # only the parameters that differ
    assert snapshot(root) == before  # the user's files and the existing data are untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]  # no temp or moved-aside directories

    ensure_data(shapes_recipe(root, tmp_path / "run"))  # the same parameters still just use it
    assert snapshot(root) == before


def test_generate_shapes_replaces_only_its_own_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kdzoo.cli.shapes import main
    from kdzoo.data.shapes import ShapesDirectoryError

    root = generate_shapes(tmp_path / "s", workers=1, **TINY)
    (root / "val" / "labels.csv").write_text("a,b")
    (root / "mine").mkdir()
    before = snapshot(root)
    with pytest.raises(ShapesDirectoryError, match=r"s holds 2 file\(s\) the shapes generator did not write "
                                                   r"\(mine/, val/labels.csv\)"):
        generate_shapes(root, workers=1, **{**TINY, "num_train": 1})
    assert snapshot(root) == before
    capsys.readouterr()
    assert main(["--out", str(root), "--train", "1", "--val", "1", "--size", "64", "--workers", "1"]) == 2
    err = capsys.readouterr().err  # the command line: one line, no traceback
    assert err.startswith("error: ") and "val/labels.csv" in err and "Traceback" not in err
    assert snapshot(root) == before

    # Nothing but its own files: an explicit generation replaces the previous one.
    (root / "val" / "labels.csv").unlink()
    (root / "mine").rmdir()
    generate_shapes(root, workers=1, **{**TINY, "num_train": 1})
    assert len(json.loads((root / "annotations" / "instances_train.json").read_text())["images"]) == 1
    assert not (root / "train" / "000002.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


# ----------------------------------------------------------------------------- boxes
W, H = 40, 30


def coco_dir(tmp_path: Path, annotations: list[dict]) -> tuple[Path, Path]:
    img_dir = tmp_path / "images"
    img_dir.mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(img_dir / name)
    ann = {"images": [{"id": 1, "file_name": "a.png", "width": W, "height": H},
                      {"id": 2, "file_name": "b.png", "width": W, "height": H}],
           "annotations": [{"image_id": 1, "category_id": 1, "iscrowd": 0, "area": 1.0, **a} for a in annotations],
           "categories": [{"id": 1, "name": "thing"}]}
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(ann))
    return img_dir, ann_file


def test_degenerate_coco_boxes_are_counted_and_reported_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from kdzoo.data.coco import CocoDetection

    img_dir, ann_file = coco_dir(tmp_path, [
        {"id": 11, "bbox": [2, 3, 10, 5]},  # fine
        {"id": 12, "bbox": [5, 5, 0, 10]},  # zero width
        {"id": 13, "bbox": [5, 5, 8, -2]},  # negative height
        {"id": 14, "bbox": [100, 5, 8, 8], "image_id": 2},  # entirely right of the 40 px wide image
        {"id": 15, "bbox": [1, 1, 8, 8], "iscrowd": 1},  # crowd: an ignore region, not a dropped box
    ])
    with caplog.at_level(logging.WARNING):
        ds = CocoDetection(img_dir, ann_file, filter_empty=True)
        for _ in range(2):
            for i in range(len(ds)):
                ds[i]
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(records) == 1, [r.getMessage() for r in records]
    msg = records[0].getMessage()
    assert "\n" not in msg and str(ann_file) in msg and "3 of 4 boxes" in msg
    assert "a.png (annotation 12)" in msg and "a.png (annotation 13)" in msg
    assert len(ds) == 1 and ds[0][1]["boxes"].tolist() == [[2.0, 3.0, 12.0, 8.0]]

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        CocoDetection(img_dir, coco_dir(tmp_path / "ok", [{"id": 1, "bbox": [2, 3, 10, 5]}])[1])
    assert not caplog.records  # nothing to report, nothing said


def test_nonfinite_box_in_annotation_file_fails_when_the_dataset_is_built(tmp_path: Path) -> None:
    from kdzoo.data.coco import CocoDetection

    img_dir, ann_file = coco_dir(tmp_path, [{"id": 11, "bbox": [2, 3, 10, 5]},
                                            {"id": 12, "bbox": [2, float("nan"), 10, 5], "image_id": 2}])
    with pytest.raises(ValueError, match=r"annotation 12 of image 2: bbox \[2, nan, 10, 5\] has non-finite values"):
        CocoDetection(img_dir, ann_file)


@pytest.mark.parametrize("bad", [[1.0, math.nan, 5.0, 5.0], [0.0, 0.0, math.inf, 10.0], [-math.inf, 0.0, 5.0, 5.0]])
def test_check_targets_rejects_nonfinite_boxes(bad: list[float]) -> None:
    from kdzoo.detector import check_targets

    targets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([0])},
               {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], bad]), "labels": torch.tensor([1, 2])}]
    shown = "[" + ", ".join(str(v) for v in bad) + "]"
    with pytest.raises(ValueError, match=r"targets\[1\]\['boxes'\]\[1\] = " + shown.replace("[", r"\[").replace("]", r"\]")
                       + " has non-finite coordinates"):
        check_targets(targets, 2, 3)


def test_model_call_rejects_nan_box(one_thread: None) -> None:
    import kdzoo

    torch.manual_seed(0)
    model = kdzoo.create_detector("gfl_r18", num_classes=3, fpn_channels=16, input_size=(64, 64)).train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[1.0, 1.0, 20.0, 20.0]]), "labels": torch.tensor([0])},
               {"boxes": torch.tensor([[1.0, 1.0, 20.0, 20.0], [3.0, 3.0, math.nan, 9.0]]), "labels": torch.tensor([0, 1])}]
    with pytest.raises(ValueError, match=r"targets\[1\]\['boxes'\]\[1\] = \[3.0, 3.0, nan, 9.0\] has non-finite"):
        model(images, targets)


# ----------------------------------------------------------------------------- images
def test_find_bad_images_lists_every_unreadable_file(tmp_path: Path) -> None:
    from kdzoo.data.coco import BadImagesError, CocoDetection, check_images, find_bad_images

    img_dir, ann_file = coco_dir(tmp_path, [{"id": 1, "bbox": [2, 3, 10, 5]}])
    ann = json.loads(ann_file.read_text())
    ann["images"] += [{"id": 3, "file_name": "truncated.png", "width": W, "height": H},
                      {"id": 4, "file_name": "garbage.jpg", "width": W, "height": H},
                      {"id": 5, "file_name": "missing.png", "width": W, "height": H},
                      {"id": 6, "file_name": "big.png", "width": W, "height": H},
                      {"id": 7, "file_name": "truncated.jpg", "width": W, "height": H}]
    ann_file.write_text(json.dumps(ann))
    noise = (np.random.default_rng(0).random((H, W, 3)) * 255).astype(np.uint8)
    Image.fromarray(noise).save(img_dir / "full.png")
    png = (img_dir / "full.png").read_bytes()
    (img_dir / "truncated.png").write_bytes(png[: len(png) // 2])
    (img_dir / "garbage.jpg").write_bytes(b"\xff\xd8\xff not a jpeg at all")
    Image.fromarray(np.zeros((H + 1, W, 3), np.uint8)).save(img_dir / "big.png")
    Image.fromarray(noise).save(img_dir / "full.jpg", quality=95)
    jpg = (img_dir / "full.jpg").read_bytes()
    (img_dir / "truncated.jpg").write_bytes(jpg[: len(jpg) * 2 // 3])

    ds = CocoDetection(img_dir, ann_file)
    bad = find_bad_images(ds, workers=2)
    assert [Path(p).name for p, _ in bad] == ["truncated.png", "garbage.jpg", "missing.png", "big.png", "truncated.jpg"]
    reasons = dict((Path(p).name, r) for p, r in bad)
    assert reasons["missing.png"] == "file not found"
    assert reasons["big.png"] == "is 40x31 but the annotation file says 40x30"
    assert "truncat" in reasons["truncated.png"].lower() and "truncat" in reasons["truncated.jpg"].lower()

    with pytest.raises(BadImagesError) as err:
        check_images(ds, workers=2, show=2)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"5 of 7 image files under {img_dir} cannot be read: ")
    assert f"{img_dir / 'truncated.png'} (" in msg and "garbage.jpg (" in msg and "and 3 more" in msg
    assert err.value.bad == bad and isinstance(err.value, RuntimeError)

    for name in ("truncated.png", "garbage.jpg", "missing.png", "big.png", "truncated.jpg"):
        ann["images"] = [im for im in ann["images"] if im["file_name"] != name]
    ann_file.write_text(json.dumps(ann))
    check_images(CocoDetection(img_dir, ann_file))  # all readable: no error


def test_unreadable_training_image_stops_the_run_before_the_model_is_built(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kdzoo.engine
    from kdzoo.recipe import recipe_from_dict

    root = generate_shapes(tmp_path / "data", num_train=4, num_val=2, image_size=64, workers=1)
    bad = root / "train" / "000003.png"
    bad.write_bytes(bad.read_bytes()[:200])

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built (training was about to start) before the images were checked")

    monkeypatch.setattr(kdzoo.engine.build, "build_student", no_model)
    out = tmp_path / "run"
    recipe = recipe_from_dict({"model": {"name": "gfl_r18"}, "data": {"root": str(root), "input_size": [64, 64]},
                               "schedule": {"iters": 2}, "batch_size": 2, "workers": 0, "output_dir": str(out)})
    with pytest.raises(ValueError, match=r"^1 of 6 image files under .*train, .*val cannot be read: "
                                         r".*train/000003.png \("):
        kdzoo.engine.train(recipe)
    assert not (out / "checkpoint.pt").exists() and not (out / "metrics.jsonl").exists()
