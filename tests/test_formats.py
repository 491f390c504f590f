"""YOLO and Pascal VOC datasets (kdzoo.data.yolo / voc / convert): readers cross-checked against supervision
and the original COCO boxes, round trips, bad inputs, recipes with data.format, and the convert-data command."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from kdzoo.cli import main as kdzoo_main
from kdzoo.data.coco import CocoDetection, load_coco
from kdzoo.data.convert import convert, read_dataset
from kdzoo.data.shapes import CLASS_NAMES, generate_shapes
from kdzoo.data.voc import VOC_CLASSES, read_voc, voc_classes, write_voc
from kdzoo.data.yolo import read_yolo, write_yolo, yolo_images_dir, yolo_label_path
from kdzoo.engine.build import build_datasets
from kdzoo.recipe import RecipeError, recipe_from_dict

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val")
TOL = 1e-6


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train=12, num_val=6, image_size=96,
                           seed=0, workers=1)


def ann_file(shapes: Path, split: str) -> Path:
    return shapes / "annotations" / f"instances_{split}.json"


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the hash of its bytes: to show that a conversion left it alone."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def yolo_dir(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("yolo") / "shapes_yolo"
    before = tree_digest(shapes)
    for split in SPLITS:
        write_yolo(ann_file(shapes, split), shapes / split, out, split)
    assert tree_digest(shapes) == before
    return out


@pytest.fixture(scope="module")
def voc_dir(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The train split as VOC, and a 'val' split listing its first 6 images (VOC ids are shared by all
    splits, and the shapes splits reuse the same file names)."""
    out = tmp_path_factory.mktemp("voc") / "VOC_shapes"
    write_voc(ann_file(shapes, "train"), shapes / "train", out, "train")
    ids = (out / "ImageSets" / "Main" / "train.txt").read_text().split()
    (out / "ImageSets" / "Main" / "val.txt").write_text("\n".join(ids[:6]) + "\n")
    return out


def boxes_by_file(coco: dict, names_key: str = "basename") -> dict[str, list[tuple]]:
    """{image file name: sorted [(class name, x1, y1, x2, y2, iscrowd)]} of a COCO dict."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {i["id"]: Path(i["file_name"]).name if names_key == "basename" else i["file_name"] for i in coco["images"]}
    out: dict[str, list[tuple]] = {f: [] for f in files.values()}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        out[files[a["image_id"]]].append((names[a["category_id"]], x, y, x + w, y + h, a.get("iscrowd", 0)))
    return {f: sorted(v) for f, v in out.items()}


def assert_same_boxes(a: dict[str, list[tuple]], b: dict[str, list[tuple]], crowd: bool = True) -> None:
    assert sorted(a) == sorted(b)
    for f in a:
        ra, rb = a[f], b[f]
        if not crowd:
            ra, rb = [r[:5] for r in ra], [r[:5] for r in rb]
        assert [r[0] for r in ra] == [r[0] for r in rb], f
        assert len(ra) == len(rb), f
        if ra:
            np.testing.assert_allclose(np.array([r[1:5] for r in ra], float), np.array([r[1:5] for r in rb], float),
                                       rtol=0, atol=TOL, err_msg=f)
        if crowd:
            assert [r[5:] for r in ra] == [r[5:] for r in rb], f


def sv_boxes(ds) -> dict[str, list[tuple]]:
    """The same view of a supervision DetectionDataset (class names by class_id, xyxy)."""
    out = {}
    for path, det in ds.annotations.items():
        rows = [(ds.classes[int(c)], *map(float, xyxy), 0) for xyxy, c in zip(det.xyxy, det.class_id)]
        out[Path(path).name] = sorted(rows)
    return out


def original(shapes: Path, split: str) -> dict[str, list[tuple]]:
    return boxes_by_file(json.loads(ann_file(shapes, split).read_text()))


# --------------------------------------------------------------------------- YOLO
def test_yolo_layout_written(yolo_dir: Path) -> None:
    data = yaml.safe_load((yolo_dir / "data.yaml").read_text())
    assert data == {"train": "images/train", "val": "images/val", "names": dict(enumerate(CLASS_NAMES))}
    assert "path" not in data  # Ultralytics then uses the yaml's folder: the dataset can be moved
    assert len(list((yolo_dir / "images" / "train").iterdir())) == 12
    assert yolo_label_path(yolo_dir / "images" / "train" / "000001.png") == yolo_dir / "labels" / "train" / "000001.txt"
    assert yolo_label_path("/d/images/x/images/a.b.jpg") == Path("/d/images/x/labels/a.b.txt")  # the last 'images'
    assert yolo_label_path("/d/pics/a.jpg") == Path("/d/pics/a.txt")  # no 'images' folder: next to the image
    line = (yolo_dir / "labels" / "train" / "000001.txt").read_text().splitlines()[0].split()
    assert len(line) == 5 and line[0] == "7"  # the first box is a star: category id 8, class index 7


@pytest.mark.parametrize("split", SPLITS)
def test_yolo_reader_matches_coco_and_supervision(shapes: Path, yolo_dir: Path, split: str) -> None:
    coco = read_yolo(yolo_dir / "data.yaml", split)
    assert [c["name"] for c in coco["categories"]] == list(CLASS_NAMES)
    assert [c["id"] for c in coco["categories"]] == list(range(1, 9))
    assert yolo_images_dir(yolo_dir, split) == yolo_dir / "images" / split
    assert all(i["width"] == 96 and i["height"] == 96 for i in coco["images"])
    ours = boxes_by_file(coco)
    assert_same_boxes(ours, original(shapes, split))  # the COCO -> YOLO -> COCO round trip
    assert all(a["iscrowd"] == 0 and a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3]) for a in coco["annotations"])

    sv = pytest.importorskip("supervision")
    ds = sv.DetectionDataset.from_yolo(images_directory_path=str(yolo_dir / "images" / split),
                                       annotations_directory_path=str(yolo_dir / "labels" / split),
                                       data_yaml_path=str(yolo_dir / "data.yaml"))
    assert ds.classes == list(CLASS_NAMES)
    assert_same_boxes(ours, sv_boxes(ds), crowd=False)


def test_yolo_round_trip_keeps_fractional_boxes(tmp_path: Path) -> None:
    """Full float precision in the label text: sub-pixel boxes come back within 1e-6; crowd boxes are left
    out (YOLO has no ignore regions) and boxes are clipped to the image."""
    img_dir = tmp_path / "imgs"
    (img_dir / "sub").mkdir(parents=True)
    Image.new("RGB", (97, 61)).save(img_dir / "sub" / "a.png")
    Image.new("RGB", (33, 80)).save(img_dir / "b.jpg")
    boxes = [[10.25, 3.1, 20.123456789, 7.7], [0.001, 0.002, 96.998, 60.997], [1 / 3, 2 / 7, 5 / 11, 13 / 17]]
    coco = {
        "images": [{"id": 5, "file_name": "sub/a.png", "width": 97, "height": 61},
                   {"id": 9, "file_name": "b.jpg"}],  # no size: read from the header
        "annotations": [*({"id": k, "image_id": 5, "category_id": 4, "bbox": b, "iscrowd": 0} for k, b in enumerate(boxes)),
                        {"id": 10, "image_id": 5, "category_id": 2, "bbox": [1, 1, 5, 5], "iscrowd": 1},
                        {"id": 11, "image_id": 9, "category_id": 2, "bbox": [30, 70, 10, 20], "iscrowd": 0}],
        "categories": [{"id": 4, "name": "b"}, {"id": 2, "name": "a"}],
    }
    summary = write_yolo(coco, img_dir, tmp_path / "y", "train", image_mode="copy")
    assert (summary.images, summary.boxes, summary.skipped_crowd) == (2, 4, 1)
    assert not (tmp_path / "y" / "images" / "train" / "b.jpg").is_symlink()
    back = read_yolo(tmp_path / "y", "train")
    assert [c["name"] for c in back["categories"]] == ["a", "b"]  # category-id order
    assert {i["file_name"]: (i["width"], i["height"]) for i in back["images"]} == {"b.jpg": (33, 80),
                                                                                   "sub/a.png": (97, 61)}
    want = {"sub/a.png": sorted(("b", x, y, x + w, y + h, 0) for x, y, w, h in boxes),
            "b.jpg": [("a", 30.0, 70.0, 33.0, 80.0, 0)]}  # clipped to the 33x80 image
    assert_same_boxes(boxes_by_file(back, "path"), want)


def test_yolo_txt_list_split_and_names_dict(yolo_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "listed"
    root.mkdir()
    (root / "images").symlink_to(yolo_dir / "images")
    (root / "labels").symlink_to(yolo_dir / "labels")
    (root / "few.txt").write_text("./images/train/000002.png\n\nimages/train/000001.png\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "few.txt", "val": "images/val",
                                                    "names": {i: n for i, n in enumerate(CLASS_NAMES)}}))
    coco = read_yolo(root / "data.yaml", "train")
    assert [i["file_name"] for i in coco["images"]] == ["images/train/000002.png", "images/train/000001.png"]
    assert yolo_images_dir(root, "train") == root
    full = boxes_by_file(read_yolo(yolo_dir, "train"))
    got = boxes_by_file(coco)
    assert got == {k: full[k] for k in ("000001.png", "000002.png")}


def _yolo_case(tmp_path: Path, label: str, data: dict | None = None) -> Path:
    root = tmp_path / "bad"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    Image.new("RGB", (20, 10)).save(root / "images" / "train" / "x.png")
    (root / "labels" / "train" / "x.txt").write_text(label)
    (root / "data.yaml").write_text(yaml.safe_dump(data or {"train": "images/train", "val": "images/train",
                                                            "names": ["a", "b"]}))
    return root


@pytest.mark.parametrize("label, message", [
    ("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n", r"x\.txt:2: expected 5 numbers 'class cx cy w h', got 4 values"),
    ("0 0.5 0.5 0.2 0.2 0.1 0.1\n", r"x\.txt:1: expected 5 numbers .* got 7 values .*polygons"),
    ("\n\n0 0.5 zero 0.2 0.2\n", r"x\.txt:3: expected 5 numbers 'class cx cy w h', got '0 0.5 zero 0.2 0.2'"),
    ("2 0.5 0.5 0.2 0.2\n", r"x\.txt:1: class index 2 is outside names \(expected 0\.\.1, 2 classes\)"),
    ("-1 0.5 0.5 0.2 0.2\n", r"x\.txt:1: class index -1 is outside names"),
    ("0.5 0.5 0.5 0.2 0.2\n", r"x\.txt:1: class index '0.5' is not a whole number"),
    ("0 nan 0.5 0.2 0.2\n", r"x\.txt:1: cx is 'nan'; expected a finite number"),
    ("1 0.5 0.5 inf 0.2\n", r"x\.txt:1: w is 'inf'; expected a finite number"),
    ("0 0.5 0.5 0.2 -0.2\n", r"x\.txt:1: h is negative \(-0.2\)"),
    ("0 12 5 4 2\n", r"x\.txt:1: cx is 12.0 > 1; expected coordinates normalised .* \(20x10\), not pixels"),
])
def test_yolo_bad_label_lines(tmp_path: Path, label: str, message: str) -> None:
    root = _yolo_case(tmp_path, label)
    with pytest.raises(ValueError, match=message):
        read_yolo(root / "data.yaml", "train")


def test_yolo_class_index_written_as_float_is_accepted(tmp_path: Path) -> None:
    root = _yolo_case(tmp_path, "1.0 0.5 0.5 0.5 0.4\n")  # np.savetxt writes every column as a float
    coco = read_yolo(root, "train")
    assert coco["annotations"][0]["category_id"] == 2
    assert coco["annotations"][0]["bbox"] == pytest.approx([5.0, 3.0, 10.0, 4.0])


@pytest.mark.parametrize("data, split, error, message", [
    ({"train": "images/train", "names": ["a"]}, "val", ValueError, r"data\.yaml: missing key 'val'"),
    ({"train": "images/train", "val": "images/train"}, "train", ValueError, r"data\.yaml: missing key 'names'"),
    ({"train": "images/nope", "names": ["a"]}, "train", FileNotFoundError,
     r"data\.yaml: 'train' images folder .*images/nope does not exist"),
    ({"train": "missing.txt", "names": ["a"]}, "train", FileNotFoundError, r"missing\.txt does not exist"),
    ({"train": "images/train", "names": {0: "a", 2: "b"}}, "train", ValueError,
     r"'names' keys are \[0, 2\]; expected the class indexes 0\.\.1"),
    ({"train": "images/train", "names": ["a", "a"]}, "train", ValueError, r"duplicate class names \['a'\]"),
    ({"train": "images/train", "names": ["a", "b"], "nc": 3}, "train", ValueError, r"'nc' is 3 but 'names' has 2"),
])
def test_yolo_bad_data_yaml(tmp_path: Path, data: dict, split: str, error: type, message: str) -> None:
    root = _yolo_case(tmp_path, "", data)
    with pytest.raises(error, match=message):
        read_yolo(root / "data.yaml", split)


def test_yolo_missing_yaml_and_bad_list_line(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"YOLO data\.yaml not found: .*nothing"):
        read_yolo(tmp_path / "nothing")
    root = _yolo_case(tmp_path, "", {"train": "list.txt", "names": ["a"]})
    (root / "list.txt").write_text("images/train/x.png\nimages/train/gone.png\n")
    with pytest.raises(FileNotFoundError, match=r"list\.txt:2: image .*gone\.png does not exist"):
        read_yolo(root, "train")


def test_image_without_label_file_has_no_objects(tmp_path: Path) -> None:
    root = _yolo_case(tmp_path, "0 0.5 0.5 0.5 0.5\n")
    Image.new("RGB", (8, 8)).save(root / "images" / "train" / "y.png")
    coco = read_yolo(root, "train")
    assert [i["file_name"] for i in coco["images"]] == ["x.png", "y.png"]
    assert [a["image_id"] for a in coco["annotations"]] == [1]


# --------------------------------------------------------------------------- VOC
def test_voc_written_with_one_based_inclusive_pixels(voc_dir: Path) -> None:
    xml = (voc_dir / "Annotations" / "000001.xml").read_text()
    # The first shapes box is [50, 38, 28, 36] (x, y, w, h): pixels 51..78 and 39..74, 1-based inclusive.
    assert re.search(r"<name>star</name>.*?<xmin>51</xmin>\s*<ymin>39</ymin>\s*<xmax>78</xmax>\s*<ymax>74</ymax>",
                     xml, re.S)


def test_voc_reader_matches_coco_and_supervision(shapes: Path, voc_dir: Path) -> None:
    coco = read_voc(voc_dir, "train")
    # Not the 20 VOC classes: the sorted names found.
    assert [c["name"] for c in coco["categories"]] == sorted(CLASS_NAMES)
    ours = boxes_by_file(coco)
    assert_same_boxes(ours, original(shapes, "train"))  # COCO -> VOC -> COCO
    classes = read_voc(voc_dir, "train", classes=list(CLASS_NAMES))["categories"]
    assert [c["name"] for c in classes] == list(CLASS_NAMES)

    sv = pytest.importorskip("supervision")
    ds = sv.DetectionDataset.from_pascal_voc(images_directory_path=str(voc_dir / "JPEGImages"),
                                             annotations_directory_path=str(voc_dir / "Annotations"))
    assert_same_boxes(ours, sv_boxes(ds), crowd=False)


def _voc_case(tmp_path: Path, objects: str, name: str = "a1") -> Path:
    root = tmp_path / "VOC"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (50, 40)).save(root / "JPEGImages" / f"{name}.jpg")
    (root / "Annotations" / f"{name}.xml").write_text(f"<annotation><filename>{name}.jpg</filename>{objects}</annotation>")
    (root / "ImageSets" / "Main" / "train.txt").write_text(f"{name}\n")
    return root


def _obj(name: str = "dog", box: tuple = (1, 2, 10, 20), difficult: int = 0, skip: str = "") -> str:
    fields = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box) if k != skip)
    return f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>{fields}</bndbox></object>"


def test_voc_difficult_is_crowd_and_voc_classes_default(tmp_path: Path) -> None:
    root = _voc_case(tmp_path, _obj("dog", (1, 1, 50, 40)) + _obj("cat", (10.5, 3, 20, 9), difficult=1))
    coco = read_voc(root, "train")
    assert [c["name"] for c in coco["categories"]] == list(VOC_CLASSES)  # every name is a VOC class
    dog, cat = coco["annotations"]
    assert dog["bbox"] == [0, 0, 50, 40] and dog["iscrowd"] == 0 and dog["category_id"] == VOC_CLASSES.index("dog") + 1
    assert cat["bbox"] == [9.5, 2, 10.5, 7] and cat["iscrowd"] == 1  # decimals kept, difficult -> ignore region
    assert coco["images"] == [{"id": 1, "file_name": "a1.jpg", "width": 50, "height": 40}]
    assert voc_classes(root, ["train"]) == list(VOC_CLASSES)
    # COCO -> VOC -> COCO keeps crowd boxes as difficult ones
    back = read_voc(write_voc(coco, root / "JPEGImages", tmp_path / "again", "train").out.parents[2], "train")
    assert_same_boxes(boxes_by_file(back), boxes_by_file(coco))
    # the training dataset leaves the difficult box out
    ds = CocoDetection(root / "JPEGImages", coco, source="VOC")
    assert ds[0][1]["boxes"].tolist() == [[0.0, 0.0, 50.0, 40.0]]


@pytest.mark.parametrize("objects, classes, message", [
    (_obj() + _obj("cat", skip="ymax"), None, r"a1\.xml: object 1 \(cat\): missing <bndbox><ymax>"),
    (_obj() + "<object><name>cat</name></object>", None, r"a1\.xml: object 1 \(cat\): missing <bndbox>;"),
    ("<object><bndbox/></object>", None, r"a1\.xml: object 0: missing <name>"),
    (_obj(box=(1, 2, "ten", 20)), None, r"a1\.xml: object 0 \(dog\): <xmax> is 'ten'; expected a finite number"),
    (_obj(box=(10, 2, 5, 20)), None, r"a1\.xml: object 0 \(dog\): reversed box"),
    (_obj() + _obj("zebra"), ["dog", "cat"], r"a1\.xml: object 1: unknown class 'zebra'; expected one of \['dog', 'cat'\]"),
    ("<object><name>dog</name", None, r"a1\.xml: not valid XML"),
])
def test_voc_bad_xml(tmp_path: Path, objects: str, classes: list | None, message: str) -> None:
    root = _voc_case(tmp_path, objects)
    with pytest.raises(ValueError, match=message):
        read_voc(root, "train", classes=classes)


def test_voc_missing_parts(tmp_path: Path) -> None:
    root = _voc_case(tmp_path, _obj())
    with pytest.raises(FileNotFoundError, match=r"VOC split file not found: .*val\.txt.*splits there: \['train'\]"):
        read_voc(root, "val")
    (root / "ImageSets" / "Main" / "train.txt").write_text("a1\nb2\n")
    with pytest.raises(FileNotFoundError, match=r"VOC annotation file not found: .*b2\.xml"):
        read_voc(root, "train")
    (root / "Annotations" / "b2.xml").write_text("<annotation/>")
    with pytest.raises(FileNotFoundError, match=r"no image for .*b2\.xml: expected .*b2\.jpg"):
        read_voc(root, "train")


# --------------------------------------------------------------------------- CocoDetection from a dict
def test_coco_detection_from_dict_names_its_source(shapes: Path, tmp_path: Path) -> None:
    data = json.loads(ann_file(shapes, "val").read_text())
    from_dict = CocoDetection(shapes / "val", data, source="my data.yaml")
    from_file = CocoDetection(shapes / "val", ann_file(shapes, "val"))
    assert from_dict.categories == from_file.categories and from_dict.ids == from_file.ids
    assert from_dict[0][1]["boxes"].tolist() == from_file[0][1]["boxes"].tolist()
    assert "annotations" in data and data == json.loads(ann_file(shapes, "val").read_text())  # not modified
    assert load_coco({"images": [], "categories": []}).dataset["annotations"] == []
    with pytest.raises(ValueError, match=r"my data\.yaml is not COCO data: missing key\(s\) \['categories'\]"):
        CocoDetection(shapes / "val", {"images": []}, source="my data.yaml")
    with pytest.raises(ValueError, match=r"my data\.yaml: 'images' must be a list"):
        load_coco({"images": {}, "categories": []}, source="my data.yaml")


# --------------------------------------------------------------------------- recipes
def recipe(root: Path, **data) -> dict:
    return {"model": {"name": "gfl_r18", "kwargs": {"fpn_channels": 16, "stacked_convs": 1}},
            "data": {"root": str(root), "input_size": [96, 96], **data},
            "schedule": {"iters": 2}, "workers": 0, "output_dir": "unused"}


def _targets(ds: CocoDetection) -> list[tuple]:
    out = []
    for i in range(len(ds)):
        _, t = ds[i]
        info = ds.coco.imgs[ds.ids[i]]
        out.append((Path(info["file_name"]).name, t["boxes"].numpy(), [ds.categories[k] for k in t["labels"].tolist()]))
    return out


def _same_datasets(a: CocoDetection, b: CocoDetection) -> None:
    ta, tb = _targets(a), _targets(b)
    assert [x[0] for x in ta] == [x[0] for x in tb]
    for (f, ba, la), (_, bb, lb) in zip(ta, tb):
        order_a, order_b = np.lexsort(ba.T[::-1]), np.lexsort(bb.T[::-1])
        np.testing.assert_allclose(ba[order_a], bb[order_b], rtol=0, atol=1e-4, err_msg=f)
        assert [la[k] for k in order_a] == [lb[k] for k in order_b], f


def test_yolo_recipe_builds_the_same_datasets_as_coco(shapes: Path, yolo_dir: Path) -> None:
    r = recipe_from_dict(recipe(yolo_dir, format="yolo"))
    r.check_paths()
    train, val = build_datasets(r)
    coco_train, coco_val = build_datasets(recipe_from_dict(recipe(shapes)))
    assert train.categories == coco_train.categories == list(CLASS_NAMES)
    assert len(train) == len(coco_train) and len(val) == len(coco_val) == 6
    assert train.train and not val.train and train.source.endswith("data.yaml (train)")
    train.train = coco_train.train = False  # no random flips while comparing
    _same_datasets(train, coco_train)
    _same_datasets(val, coco_val)


def test_voc_recipe_builds_datasets(shapes: Path, voc_dir: Path) -> None:
    train, val = build_datasets(recipe_from_dict(recipe(voc_dir, format="voc", classes=list(CLASS_NAMES))))
    coco_train, _ = build_datasets(recipe_from_dict(recipe(shapes)))
    assert train.categories == list(CLASS_NAMES) and len(val) == 6
    train.train = coco_train.train = False
    _same_datasets(train, coco_train)
    default, _ = build_datasets(recipe_from_dict(recipe(voc_dir, format="voc")))
    assert default.categories == sorted(CLASS_NAMES)


@pytest.mark.parametrize("data, message", [
    ({"format": "yolo", "val_split": "test"}, r"data\.val_split: .*data\.yaml: missing key 'test'"),
    ({"format": "voc"}, r"data\.root: .* has no Annotations/ folder; data\.format: voc expects"),
    ({"format": "yolo", "classes": ["a"]}, r"data\.classes: only data\.format: voc takes a class list"),
    ({"format": "yolo", "shapes": {}}, r"data\.shapes generates a COCO dataset but data\.format is 'yolo'"),
])
def test_recipe_path_errors_name_the_key(yolo_dir: Path, data: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(recipe(yolo_dir, **data)).check_paths()


def test_recipe_yolo_without_data_yaml_and_voc_split(tmp_path: Path, voc_dir: Path) -> None:
    with pytest.raises(RecipeError, match=r"data\.root: .* has no data\.yaml; data\.format: yolo expects the folder"):
        recipe_from_dict(recipe(tmp_path, format="yolo")).check_paths()
    with pytest.raises(RecipeError, match=r"data\.val_split: VOC split file .*test\.txt' does not exist"):
        recipe_from_dict(recipe(voc_dir, format="voc", val_split="test")).check_paths()
    with pytest.raises(RecipeError, match=r"data\.format: expected one of 'coco' \| 'yolo' \| 'voc', got 'kitti'"):
        recipe_from_dict(recipe(voc_dir, format="kitti"))


# --------------------------------------------------------------------------- the converter command
def test_convert_data_cli(shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    before = tree_digest(shapes)
    y = tmp_path / "y"
    args = ["convert-data", "coco", str(ann_file(shapes, "val")), "--images", str(shapes / "val"), "--to", "yolo",
            "--out", str(y), "--split", "val"]
    assert kdzoo_main(args) == 0
    assert "6 images, 54 boxes" in capsys.readouterr().err
    assert kdzoo_main(args) == 2  # refuses to overwrite
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already" in err and "--overwrite" in err and err.count("\n") == 1
    assert kdzoo_main([*args, "--overwrite"]) == 0

    out_json = tmp_path / "back" / "val.json"
    back = ["convert-data", "yolo", str(y), "--split", "val", "--to", "coco", "--out", str(out_json)]
    assert kdzoo_main(back) == 0
    assert f"relative to {y / 'images' / 'val'}" in capsys.readouterr().err
    assert_same_boxes(boxes_by_file(json.loads(out_json.read_text())), original(shapes, "val"))
    stamp = out_json.stat().st_mtime_ns
    assert kdzoo_main(back) == 2 and "already exists" in capsys.readouterr().err
    assert out_json.stat().st_mtime_ns == stamp
    assert kdzoo_main([*back, "--overwrite"]) == 0
    assert not [p for p in out_json.parent.iterdir() if p.name != "val.json"]  # no temporary file left

    v = tmp_path / "v"
    assert kdzoo_main(["convert-data", "yolo", str(y / "data.yaml"), "--split", "val", "--to", "voc", "--out", str(v)]) == 0
    assert_same_boxes(boxes_by_file(read_voc(v, "val")), original(shapes, "val"))
    # never over a file of the source
    assert kdzoo_main(["convert-data", "yolo", str(y), "--to", "coco", "--out", str(y / "data.yaml"), "--overwrite"]) == 2
    assert "expected a .json file" in capsys.readouterr().err
    assert tree_digest(shapes) == before


@pytest.mark.parametrize("argv, message", [
    (["coco", "x.json", "--to", "yolo", "--out", "o"], "a coco source needs --images"),
    (["yolo", "d", "--to", "yolo", "--out", "o"], "both 'yolo'"),
    (["yolo", "d", "--images", "i", "--to", "coco", "--out", "o.json"], "--images is for a coco source"),
    (["yolo", "d", "--classes", "a,b", "--to", "coco", "--out", "o.json"], "--classes is for a voc source"),
])
def test_convert_data_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        kdzoo_main(["convert-data", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_convert_input_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _yolo_case(tmp_path, "0 0.5 0.5 0.2\n")
    assert kdzoo_main(["convert-data", "yolo", str(root), "--to", "coco", "--out", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"error: .*x\.txt:1: expected 5 numbers .*\n", err)
    assert not (tmp_path / "o.json").exists()
    with pytest.raises(ValueError, match="both 'voc'"):
        convert("voc", root, "voc", tmp_path / "o")  # the library raises, never exits


def test_write_yolo_refuses_to_mix_or_overwrite(shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "y"
    write_yolo(ann_file(shapes, "train"), shapes / "train", out, "train")
    with pytest.raises(FileExistsError, match=r"already has a 'train' split|already holds the train images"):
        write_yolo(ann_file(shapes, "train"), shapes / "train", out, "train")
    other = json.loads(ann_file(shapes, "val").read_text())
    other["categories"][0]["name"] = "disc"
    with pytest.raises(FileExistsError, match="other class names"):
        write_yolo(other, shapes / "val", out, "val")
    with pytest.raises(ValueError, match="overlaps the source image folder"):
        write_yolo(read_dataset("yolo", out, "train").coco, out / "images" / "train", out, "train", overwrite=True)
    assert len(list((out / "images" / "train").iterdir())) == 12  # the refused call left it alone


def test_python_m_kdzoo_data_convert(shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "voc"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "kdzoo.data.convert", "coco", str(ann_file(shapes, "val")), "--images",
                        str(shapes / "val"), "--to", "voc", "--out", str(out), "--split", "val", "--image-mode", "copy"],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "6 images, 54 boxes" in r.stderr
    assert not (out / "JPEGImages" / "000001.png").is_symlink()
    assert_same_boxes(boxes_by_file(read_voc(out, "val")), original(shapes, "val"))


@pytest.mark.parametrize("ann, message", [
    ({"category_id": 9, "bbox": [1, 1, 2, 2]}, r"COCO annotation dict: annotation 3 of image 1: unknown category_id 9"),
    ({"category_id": 1, "bbox": [1, 1, 2]}, r"annotation 3 of image 1: bbox \[1, 1, 2\]; expected \[x, y, w, h\]"),
    ({"category_id": 1, "bbox": [1, "nan", 2, 2]}, r"annotation 3 of image 1: bbox .*4 finite numbers"),
])
@pytest.mark.parametrize("writer", [write_yolo, write_voc])
def test_writers_check_the_coco_annotations(tmp_path: Path, writer, ann: dict, message: str) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
            "annotations": [{"id": 3, "image_id": 1, **ann}], "categories": [{"id": 1, "name": "a"}]}
    with pytest.raises(ValueError, match=message):
        writer(coco, tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
