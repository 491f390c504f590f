"""Conversions that used to lose boxes or write a dataset their own readers refuse (docs/datasets.md):
each now gives the right dataset or a ValueError naming the entry, before anything is written."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PIL import Image

from kdzoo.data.coco import CocoDetection, load_coco
from kdzoo.data.voc import read_voc, write_voc
from kdzoo.data.yolo import read_yolo, write_yolo


def _image(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (40, 90, 160)).save(path)
    return path


def _coco(images: list[dict], anns: list[dict] | None = None, cats: list[dict] | None = None) -> dict:
    return {"images": images, "annotations": anns if anns is not None else [],
            "categories": cats if cats is not None else [{"id": 1, "name": "cat"}]}


def _ann(image_id: int = 1, bbox: list[float] | None = None, ann_id: int = 1) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": bbox or [10.0, 10.0, 20.0, 20.0],
            "area": 400.0, "iscrowd": 0}


def test_file_names_under_an_images_folder_keep_their_labels_through_yolo(tmp_path: Path) -> None:
    """Label Studio / CVAT export file names as 'images/xxx.jpg': the label goes where read_yolo looks."""
    src = tmp_path / "src"
    _image(src / "images" / "a.png")
    write_yolo(_coco([{"id": 1, "file_name": "images/a.png", "width": 64, "height": 48}], [_ann()]), src, tmp_path / "y")
    back = read_yolo(tmp_path / "y")
    assert [i["file_name"] for i in back["images"]] == ["images/a.png"]
    assert [a["bbox"] for a in back["annotations"]] == [[10.0, 10.0, 20.0, 20.0]]


def test_duplicate_image_ids_are_refused(tmp_path: Path) -> None:
    data = _coco([{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}], [_ann()])
    with pytest.raises(ValueError, match=r"image id 1 is used twice \('a.png' and 'b.png'\)"):
        load_coco(data)
    with pytest.raises(ValueError, match="image id 1 is used twice"):
        write_yolo(data, tmp_path / "src", tmp_path / "y")
    assert not (tmp_path / "y").exists()


@pytest.mark.parametrize("data, message", [
    (_coco([{"file_name": "a.png"}]), r"images\[0\] has id None; expected an integer id"),
    (_coco([{"id": "a", "file_name": "a.png"}]), r"images\[0\] has id 'a'; expected an integer id"),
    (_coco([{"id": 1, "file_name": ""}]), r"image 1 has file_name ''"),
    (_coco([{"id": 1, "file_name": "a.png", "width": "64", "height": 48}]), r"image 1 \(a.png\) has width '64'; "
                                                                            "expected a positive number"),
    (_coco([{"id": 1, "file_name": "a.png"}], cats=[{"id": 1}]), r"categories\[0\] is \{'id': 1\}; expected an "
                                                                  "object with an integer 'id' and a 'name'"),
    (_coco([{"id": 1, "file_name": "a.png"}], cats=[{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]),
     "category id 1 is used twice"),
    (_coco([{"id": 1, "file_name": "a.png"}], [{"id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]),
     r"annotations\[0\] has image_id None; expected the integer id of an image"),
])
def test_malformed_coco_entries_name_the_entry(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_coco(data, source="my.json")
    with pytest.raises(ValueError, match="^my.json: "):
        load_coco(data, source="my.json")


def test_annotations_of_unlisted_images_are_counted_in_a_warning(tmp_path: Path, caplog) -> None:
    _image(tmp_path / "a.png")
    data = _coco([{"id": 1, "file_name": "a.png", "width": 64, "height": 48}], [_ann(1), _ann(7, ann_id=2), _ann(7, ann_id=3)])
    with caplog.at_level(logging.WARNING, logger="kdzoo.data.coco"):
        ds = CocoDetection(tmp_path, data)
    assert len(ds) == 1 and len(ds[0][1]["boxes"]) == 1
    assert "2 annotation(s) belong to no listed image (e.g. image_id 7)" in caplog.text


def test_a_size_that_disagrees_with_the_file_is_refused(tmp_path: Path) -> None:
    """Boxes are normalised by the size: a JSON width/height swapped (EXIF rotation) would move every box."""
    _image(tmp_path / "src" / "a.png", (64, 48))
    data = _coco([{"id": 1, "file_name": "a.png", "width": 48, "height": 64}], [_ann()])
    with pytest.raises(ValueError, match=r"a.png\) is 64x48 pixels but the annotation gives width 48, height 64"):
        write_yolo(data, tmp_path / "src", tmp_path / "y")
    assert not (tmp_path / "y").exists()
    data["images"][0].update(width=64, height=48)
    write_yolo(data, tmp_path / "src", tmp_path / "y")
    assert read_yolo(tmp_path / "y")["annotations"][0]["bbox"] == [10.0, 10.0, 20.0, 20.0]


def test_voc_ids_with_spaces_are_refused_before_writing(tmp_path: Path) -> None:
    _image(tmp_path / "src" / "IMG 0001.png")
    data = _coco([{"id": 1, "file_name": "IMG 0001.png"}], [_ann()])
    with pytest.raises(ValueError, match=r"gives the VOC id 'IMG 0001'; expected a name without spaces"):
        write_voc(data, tmp_path / "src", tmp_path / "voc")
    assert not (tmp_path / "voc").exists()


def test_duplicate_category_names_are_refused_by_the_writers(tmp_path: Path) -> None:
    _image(tmp_path / "src" / "a.png")
    data = _coco([{"id": 1, "file_name": "a.png"}], [_ann()], cats=[{"id": 1, "name": "cat"}, {"id": 2, "name": "cat"}])
    for write in (write_yolo, write_voc):
        with pytest.raises(ValueError, match=r"categories \['cat'\] are named twice"):
            write(data, tmp_path / "src", tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_image_suffixes_the_readers_do_not_list_are_refused(tmp_path: Path) -> None:
    _image(tmp_path / "src" / "a.gif")
    data = _coco([{"id": 1, "file_name": "a.gif"}], [_ann()])
    assert len(CocoDetection(tmp_path / "src", data)) == 1  # training reads it; the YOLO and VOC readers would not
    for write in (write_yolo, write_voc):
        with pytest.raises(ValueError, match=r"file_name 'a.gif' has a suffix the YOLO and VOC readers do not list"):
            write(data, tmp_path / "src", tmp_path / "out")
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("absolute", [False, True])
def test_yolo_list_with_parent_or_absolute_paths_converts(tmp_path: Path, monkeypatch, absolute: bool) -> None:
    root = tmp_path / "lst"
    img = _image(root / "images" / "train" / "a.png")
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text("0 0.25 0.5 0.25 0.5\n")
    (root / "lists").mkdir()
    (root / "lists" / "train.txt").write_text(f"{img if absolute else '../images/train/a.png'}\n")
    (root / "data.yaml").write_text("train: lists/train.txt\nnames: [cat]\n")
    monkeypatch.chdir(tmp_path)  # the dataset given by a relative path
    data = read_yolo("lst")
    assert [i["file_name"] for i in data["images"]] == ["images/train/a.png"]
    write_voc(data, "lst", tmp_path / "voc")
    back = read_voc(tmp_path / "voc", classes=["cat"])
    assert [a["bbox"] for a in back["annotations"]] == [[8.0, 12.0, 16.0, 24.0]]
