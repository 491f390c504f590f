"""Tests for kdzoo.data (COCO dataset and the synthetic shapes generator)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdzoo.data.coco import CocoDetection, collate_fn
from kdzoo.cli.shapes import main
from kdzoo.data.shapes import CLASS_NAMES, ShapesDirectoryError, dataset_stats, ensure_shapes, generate_shapes

W, H = 40, 30


@pytest.fixture()
def tiny_coco(tmp_path: Path) -> tuple[Path, Path]:
    """Three images: RGB with boxes, 16-bit grayscale without boxes, RGBA with one box."""
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, :20] = (255, 0, 0)  # left half red, right half black: makes flips observable
    Image.fromarray(rgb).save(img_dir / "a.png")
    gray16 = np.full((H, W), 32768, np.uint16)
    gray16[0, 0] = 65535
    Image.fromarray(gray16).save(img_dir / "b.png")
    Image.fromarray(np.full((H, W, 4), (0, 255, 0, 10), np.uint8), "RGBA").save(img_dir / "c.png")
    ann = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": W, "height": H},
            {"id": 2, "file_name": "b.png", "width": W, "height": H},
            {"id": 3, "file_name": "c.png", "width": W, "height": H},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 5], "area": 50, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [1, 1, 8, 8], "area": 64, "iscrowd": 1},
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [30, 20, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 4, "image_id": 1, "category_id": 7, "bbox": [5, 5, 0.5, 10], "area": 5, "iscrowd": 0},
            {"id": 5, "image_id": 3, "category_id": 3, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0},
        ],
        # Deliberately unsorted, non-contiguous ids: labels must follow sorted ids.
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
    }
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(ann))
    return img_dir, ann_file


def test_dataset_tensors_and_targets(tiny_coco: tuple[Path, Path]) -> None:
    ds = CocoDetection(*tiny_coco)
    assert len(ds) == 3
    assert ds.categories == ["cat", "dog"] and ds.label_to_cat_id == [3, 7]
    img, t = ds[0]
    assert img.shape == (3, H, W) and img.dtype == torch.float32
    assert torch.equal(img[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    # crowd dropped, degenerate (w=0.5) dropped, box clipped to the image
    assert torch.equal(t["boxes"], torch.tensor([[2.0, 3.0, 12.0, 8.0], [30.0, 20.0, 40.0, 30.0]]))
    assert torch.equal(t["labels"], torch.tensor([1, 0]))
    assert t["image_id"] == 1 and t["orig_size"] == (H, W)


def test_empty_image_and_modes(tiny_coco: tuple[Path, Path]) -> None:
    ds = CocoDetection(*tiny_coco)
    img, t = ds[1]
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)
    assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64
    # 16-bit grayscale is rescaled (not clipped at 255) and replicated to RGB
    assert img.shape == (3, H, W)
    assert img[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert abs(img[0, 5, 5].item() - 0.5) < 0.01
    img, _ = ds[2]  # RGBA: alpha dropped
    assert img.shape == (3, H, W) and torch.equal(img[:, 0, 0], torch.tensor([0.0, 1.0, 0.0]))
    assert len(CocoDetection(*tiny_coco, filter_empty=True)) == 2


def test_flip_is_exact(tiny_coco: tuple[Path, Path]) -> None:
    plain = CocoDetection(*tiny_coco)
    flipped = CocoDetection(*tiny_coco, train=True, flip_prob=1.0)
    never = CocoDetection(*tiny_coco, train=True, flip_prob=0.0)
    img, t = plain[0]
    fimg, ft = flipped[0]
    assert torch.equal(fimg, img.flip(-1))
    assert torch.equal(ft["boxes"], torch.tensor([[28.0, 3.0, 38.0, 8.0], [0.0, 20.0, 10.0, 30.0]]))
    assert torch.equal(ft["labels"], t["labels"])
    # flipping twice is the identity
    fb = ft["boxes"]
    assert torch.equal(torch.stack([W - fb[:, 2], fb[:, 1], W - fb[:, 0], fb[:, 3]], 1), t["boxes"])
    assert torch.equal(never[0][0], img)
    assert flipped[1][1]["boxes"].shape == (0, 4)  # empty boxes survive the flip


def test_ram_cache_gives_the_same_samples(tiny_coco: tuple[Path, Path]) -> None:
    plain = CocoDetection(*tiny_coco, train=True, flip_prob=0.5)
    cached = CocoDetection(*tiny_coco, train=True, flip_prob=0.5)
    expected = [plain[i] for i in range(3) if torch.manual_seed(i) is not None]  # flips drawn per seed
    assert cached.cache_images(workers=2) == 3 * H * W * 3  # uint8: 3 bytes a pixel, every image
    for f in tiny_coco[0].iterdir():
        f.unlink()  # reads now come from memory
    for i, (img, t) in enumerate(expected):
        torch.manual_seed(i)
        c_img, c_t = cached[i]
        assert c_img.dtype == torch.float32 and torch.equal(c_img, img)
        assert torch.equal(c_t["boxes"], t["boxes"]) and torch.equal(c_t["labels"], t["labels"])
    with pytest.raises(FileNotFoundError, match="a.png"):
        plain[0]


def test_collate(tiny_coco: tuple[Path, Path]) -> None:
    ds = CocoDetection(*tiny_coco)
    images, targets = collate_fn([ds[0], ds[1]])
    assert isinstance(images, list) and len(images) == 2 and targets[1]["image_id"] == 2


def test_bad_inputs(tiny_coco: tuple[Path, Path], tmp_path: Path) -> None:
    img_dir, ann_file = tiny_coco
    with pytest.raises(FileNotFoundError, match="nope"):
        CocoDetection(tmp_path / "nope", ann_file)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        CocoDetection(img_dir, tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CocoDetection(img_dir, bad)
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match=r"missing key.*images.*categories"):
        CocoDetection(img_dir, bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not COCO JSON"):
        CocoDetection(img_dir, bad)
    (img_dir / "a.png").write_bytes(b"this is not a png")
    with pytest.raises(RuntimeError, match="a.png"):
        CocoDetection(img_dir, ann_file)[0]
    (img_dir / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match="b.png"):
        CocoDetection(img_dir, ann_file)[1]


SMALL = dict(num_train=3, num_val=2, image_size=96, workers=1)


def test_shapes_deterministic(tmp_path: Path) -> None:
    a = generate_shapes(tmp_path / "a", seed=3, **SMALL)
    b = generate_shapes(tmp_path / "b", seed=3, **SMALL)
    c = generate_shapes(tmp_path / "c", seed=4, **SMALL)
    for split in ("train", "val"):
        ja = (a / "annotations" / f"instances_{split}.json").read_bytes()
        assert ja == (b / "annotations" / f"instances_{split}.json").read_bytes()
        assert ja != (c / "annotations" / f"instances_{split}.json").read_bytes()
    assert (a / "train" / "000001.png").read_bytes() == (b / "train" / "000001.png").read_bytes()
    # worker count must not change the output
    d = generate_shapes(tmp_path / "d", seed=3, **{**SMALL, "workers": 2})
    assert (a / "annotations" / "instances_train.json").read_bytes() == (d / "annotations" / "instances_train.json").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "d"]  # no temp dirs left


def test_shapes_valid_coco_and_sizes(tmp_path: Path) -> None:
    root = generate_shapes(tmp_path / "s", num_train=10, num_val=1, image_size=320, seed=0, workers=1)
    ds = CocoDetection(root / "train", root / "annotations" / "instances_train.json")
    assert ds.categories == list(CLASS_NAMES) and len(ds) == 10
    coco = ds.coco
    anns = coco.loadAnns(coco.getAnnIds())
    assert all(a["iscrowd"] == 0 and a["area"] > 0 for a in anns)
    for a in anns:
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 320 and y + h <= 320 and w >= 1 and h >= 1
    assert all(3 <= len(coco.getAnnIds(imgIds=i)) <= 15 for i in coco.getImgIds())
    stats = dataset_stats(root)["train"]
    assert stats["size"]["small"] > 0.3 and stats["size"]["medium"] > 0.1
    assert min(max(a["bbox"][2:]) for a in anns) < 16  # some objects are really small
    img, t = ds[0]
    assert img.shape == (3, 320, 320) and len(t["boxes"]) == len(coco.getAnnIds(imgIds=ds.ids[0]))


def test_ensure_shapes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = ensure_shapes(tmp_path / "s", **SMALL)
    ann = root / "annotations" / "instances_train.json"
    stamp = ann.stat().st_mtime_ns
    assert ensure_shapes(tmp_path / "s", **SMALL) == root and ann.stat().st_mtime_ns == stamp
    # Other parameters: the existing dataset is kept and the error says what differs.
    with pytest.raises(ShapesDirectoryError, match=r"num_train: 3 there, 4 requested"):
        ensure_shapes(tmp_path / "s", **{**SMALL, "num_train": 4})
    assert len(json.loads(ann.read_text())["images"]) == 3 and ann.stat().st_mtime_ns == stamp
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with pytest.raises(FileExistsError, match="foreign"):
        generate_shapes(foreign, **SMALL)
    main(["--out", str(tmp_path / "cli"), "--train", "2", "--val", "1", "--size", "64", "--workers", "1"])
    assert "objects/image" in capsys.readouterr().out


def test_shapes_photo_backgrounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kdzoo.data import shapes

    pytest.importorskip("skimage")  # the dev extra; the photographs ship inside it
    folder = shapes.skimage_data_dir()
    train, val = shapes.PHOTO_BACKGROUNDS["train"], shapes.PHOTO_BACKGROUNDS["val"]
    assert not set(train) & set(val) and all((folder / n).is_file() for n in train + val)

    a = generate_shapes(tmp_path / "a", seed=3, background="photo", **SMALL)
    b = generate_shapes(tmp_path / "b", seed=3, background="photo", **{**SMALL, "workers": 2})
    syn = generate_shapes(tmp_path / "syn", seed=3, **SMALL)
    for split in ("train", "val"):
        assert (a / split / "000001.png").read_bytes() == (b / split / "000001.png").read_bytes()
        assert (a / split / "000001.png").read_bytes() != (syn / split / "000001.png").read_bytes()
    info = json.loads((a / "annotations" / "instances_val.json").read_text())["info"]
    assert info["background"] == "photo" and "background" not in json.loads(
        (syn / "annotations" / "instances_val.json").read_text())["info"]
    # The recorded parameters tell a photo dataset from a synthetic one of the same size and seed.
    assert ensure_shapes(tmp_path / "a", seed=3, background="photo", **SMALL) == a
    with pytest.raises(ShapesDirectoryError, match=r"background: None there, 'photo' requested"):
        ensure_shapes(tmp_path / "syn", seed=3, background="photo", **SMALL)
    main(["--out", str(tmp_path / "cli"), "--background", "photo", "--train", "1", "--val", "1", "--size", "64",
          "--workers", "1"])
    assert json.loads((tmp_path / "cli" / shapes.META_FILE).read_text())["background"] == "photo"

    # Each split draws only on its own photographs: flat stand-ins, dark for train, bright for val.
    monkeypatch.setattr(shapes, "_PHOTOS", {"train": [np.full((50, 80, 3), 0.2, np.float32)],
                                            "val": [np.full((60, 40, 3), 0.6, np.float32)]})
    rng = np.random.default_rng(0)
    for _ in range(5):
        tr, va = shapes._photo_background(rng, 32, "train"), shapes._photo_background(rng, 32, "val")
        assert tr.shape == va.shape == (32, 32, 3)
        assert 0.2 * 0.7 - 0.01 <= tr.min() and tr.max() <= 0.2 * 1.3 + 0.01  # the per-channel gain is 0.7-1.3
        assert 0.6 * 0.7 - 0.01 <= va.min() and va.max() <= 0.6 * 1.3 + 0.01


def test_shapes_photo_backgrounds_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from kdzoo.data import shapes

    with pytest.raises(ValueError, match=r"background must be one of 'synthetic', 'photo', got 'foto'"):
        generate_shapes(tmp_path / "x", background="foto", **SMALL)
    real = importlib.util.find_spec
    monkeypatch.setattr(shapes, "_PHOTOS", {})
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install scikit-image.*or use background 'synthetic'"):
        generate_shapes(tmp_path / "p", background="photo", **SMALL)
    assert not (tmp_path / "p").exists() and list(tmp_path.iterdir()) == []  # nothing written
