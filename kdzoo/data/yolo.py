"""Ultralytics-style YOLO detection datasets, read into (and written from) COCO dicts.

Layout (``docs/datasets.md``)::

    dataset/
      data.yaml            # path: .  (optional)   train: images/train   val: images/val   names: [...]
      images/train/*.jpg   # any of IMAGE_SUFFIXES, sub-folders allowed
      labels/train/*.txt   # one 'class cx cy w h' line per box, normalised to [0, 1]

* ``path`` (optional) is the dataset root, relative to the folder of data.yaml; without it the root
  is that folder. A split (``train``, ``val``, or any other key) is a folder of images, a ``.txt``
  file listing image paths (one a line; relative ones are relative to the list file's folder), or
  a list of those, relative to the root.
* ``names`` is a list, or a dict {index: name} with the indexes 0..n-1. COCO category ids are the
  class index + 1, in that order.
* The label file of ``.../images/<rest>.<ext>`` is ``.../labels/<rest>.txt`` (the last ``images``
  path component replaced by ``labels``, as Ultralytics does); with no ``images`` component the
  label file is next to the image. An image without a label file, or with an empty one, has no
  objects.
* A line is ``class cx cy w h`` (5 numbers; the class a whole number, the box centre and size
  normalised by the image width/height, finite, in [0, 1]). Boxes are converted to COCO
  [x, y, w, h] in absolute pixels: x = (cx - w/2) * width, as Ultralytics and supervision do.
  Segmentation polygons and pose keypoints are not read: such a line is an error naming the file
  and the line.
* Image sizes come from the image headers (no decode). EXIF orientation is not applied (kdzoo's
  decoder does not rotate images either): a warning lists rotated JPEGs.

:func:`write_yolo` writes a COCO dataset in this layout (crowd boxes left out, boxes clipped to the
image, coordinates written with full float precision so that COCO -> YOLO -> COCO gives the same
boxes), so ``read_yolo(write_yolo(...))`` is a round trip.
"""
from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..checkpoint import atomic_write
from ._images import (ImageMode, check_not_inside, clip_box, coco_boxes, fmt_number, list_images, load_coco_dict,
                      place_image, read_image_sizes, source_images)

__all__ = ["YoloConfig", "load_data_yaml", "read_yolo", "yolo_images_dir", "yolo_split_paths", "yolo_label_path",
           "write_yolo", "WriteSummary", "DATA_YAML"]

DATA_YAML = "data.yaml"


@dataclass(frozen=True)
class YoloConfig:
    """A parsed data.yaml: its file, the dataset root, the class names in index order, and the raw mapping."""

    yaml_path: Path
    root: Path
    names: list[str]
    data: dict[str, Any]


def _yaml_file(data_yaml: str | Path) -> Path:
    p = Path(data_yaml)
    if p.is_dir():
        p = p / DATA_YAML
    if not p.is_file():
        raise FileNotFoundError(f"YOLO data.yaml not found: {p} (expected the dataset's data.yaml, or the folder holding it)")
    return p


def _names(raw: Any, where: Path) -> list[str]:
    if isinstance(raw, list):
        names = raw
    elif isinstance(raw, dict):
        try:
            keys = sorted(int(k) for k in raw if not isinstance(k, bool))
        except (TypeError, ValueError):
            keys = []
        if len(keys) != len(raw) or keys != list(range(len(raw))):
            raise ValueError(f"{where}: 'names' keys are {list(raw)[:10]}; expected the class indexes 0..{len(raw) - 1}")
        names = [raw[k] if k in raw else raw[str(k)] for k in keys]
    else:
        raise ValueError(f"{where}: 'names' must be a list of class names or a dict {{index: name}}, "
                         f"got {type(raw).__name__}")
    if not names:
        raise ValueError(f"{where}: 'names' is empty; expected at least one class name")
    bad = [n for n in names if not isinstance(n, (str, int, float)) or isinstance(n, bool)]
    if bad:
        raise ValueError(f"{where}: 'names' entries must be strings, got {bad[0]!r}")
    out = [str(n) for n in names]
    dup = sorted({n for n in out if out.count(n) > 1})
    if dup:
        raise ValueError(f"{where}: 'names' has duplicate class names {dup}; expected one name per class")
    return out


def load_data_yaml(data_yaml: str | Path) -> YoloConfig:
    """Read and check a data.yaml (or the folder holding one)."""
    path = _yaml_file(data_yaml)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping (path, train, val, names), got {type(data).__name__}")
    if "names" not in data:
        raise ValueError(f"{path}: missing key 'names' (the class names, a list or a dict {{index: name}})")
    names = _names(data["names"], path)
    nc = data.get("nc")
    if nc is not None and nc != len(names):
        raise ValueError(f"{path}: 'nc' is {nc} but 'names' has {len(names)} classes; expected them to agree")
    root = path.parent
    if data.get("path") not in (None, ""):
        if not isinstance(data["path"], str):
            raise ValueError(f"{path}: 'path' must be a folder name, got {data['path']!r}")
        root = root / data["path"]  # an absolute 'path' replaces the yaml's folder
    return YoloConfig(path, root, names, data)


def _split_entries(cfg: YoloConfig, split: str) -> list[Path]:
    value = cfg.data.get(split)
    if value in (None, "", []):
        keys = [k for k in cfg.data if k not in ("path", "names", "nc", "download")]
        raise ValueError(f"{cfg.yaml_path}: missing key {split!r} (expected the {split} images: a folder or a .txt "
                         f"list relative to the dataset root {cfg.root}; keys there: {keys})")
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(i, str) and i for i in items):
        raise ValueError(f"{cfg.yaml_path}: '{split}' must be a folder, a .txt list of images or a list of those, "
                         f"got {value!r}")
    return [cfg.root / i for i in items]


def _read_list(list_file: Path) -> list[Path]:
    """The images a .txt split file lists; relative paths are relative to the list file's folder."""
    images = []
    for lineno, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        p = Path(line)
        p = Path(os.path.normpath(p if p.is_absolute() else list_file.parent / p))  # 'lists/../images/a.jpg'
        if not p.is_file():
            raise FileNotFoundError(f"{list_file}:{lineno}: image {p} does not exist (relative paths in a YOLO image "
                                    "list are relative to the list file's folder)")
        images.append(p)
    return images


def _split_images(cfg: YoloConfig, split: str) -> tuple[Path, list[Path]]:
    """(images dir that file_name entries are relative to, every image of the split in order)."""
    entries = _split_entries(cfg, split)
    images: list[Path] = []
    for entry in entries:
        if entry.is_dir():
            images += list_images(entry)
        elif entry.is_file() and entry.suffix.lower() == ".txt":
            images += _read_list(entry)
        elif entry.exists():
            raise ValueError(f"{cfg.yaml_path}: '{split}' entry {entry} is neither a folder of images nor a .txt "
                             "list of image paths")
        else:
            raise FileNotFoundError(f"{cfg.yaml_path}: '{split}' images folder {entry} does not exist "
                                    f"(relative to the dataset root {cfg.root})")
    images = list(dict.fromkeys(images))  # the same file listed twice is one image
    images_dir = entries[0] if len(entries) == 1 and entries[0].is_dir() else cfg.root
    return images_dir, images


def yolo_split_paths(data_yaml: str | Path, split: str = "train") -> list[Path]:
    """The folders / .txt lists a split names, checked to exist (without listing the images)."""
    cfg = load_data_yaml(data_yaml)
    entries = _split_entries(cfg, split)
    for entry in entries:
        if not entry.exists():
            raise FileNotFoundError(f"{cfg.yaml_path}: '{split}' images folder {entry} does not exist "
                                    f"(relative to the dataset root {cfg.root})")
    return entries


def yolo_images_dir(data_yaml: str | Path, split: str = "train") -> Path:
    """The folder that the ``file_name`` entries of ``read_yolo(data_yaml, split)`` are relative to: the
    split's folder, or the dataset root for a .txt list or a list of folders."""
    cfg = load_data_yaml(data_yaml)
    entries = _split_entries(cfg, split)
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else cfg.root


def yolo_label_path(image: str | Path) -> Path:
    """The label file of an image: the last ``images`` folder in its path replaced by ``labels``, ``.txt``."""
    parts = Path(image).parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            return Path(*parts[:i], "labels", *parts[i + 1:]).with_suffix(".txt")
    return Path(image).with_suffix(".txt")


def _parse_labels(path: Path, names: list[str], width: int, height: int) -> list[tuple[int, list[float]]]:
    """(class index, COCO [x, y, w, h] in pixels) for every line of a label file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text file ({e}); expected 'class cx cy w h' lines") from e
    boxes = []
    for lineno, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{path}:{lineno}"
        if len(tokens) != 5:
            raise ValueError(f"{where}: expected 5 numbers 'class cx cy w h', got {len(tokens)} values {line.strip()!r}"
                             + (" (segmentation polygons and keypoints are not supported)" if len(tokens) > 5 else ""))
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            raise ValueError(f"{where}: expected 5 numbers 'class cx cy w h', got {line.strip()!r}") from None
        cls = values[0]
        if not math.isfinite(cls) or not cls.is_integer():
            raise ValueError(f"{where}: class index {tokens[0]!r} is not a whole number")
        if not 0 <= cls < len(names):
            raise ValueError(f"{where}: class index {int(cls)} is outside names (expected 0..{len(names) - 1}, "
                             f"{len(names)} classes)")
        cx, cy, w, h = values[1:]
        for key, v, token in zip(("cx", "cy", "w", "h"), values[1:], tokens[1:]):
            if not math.isfinite(v):
                raise ValueError(f"{where}: {key} is {token!r}; expected a finite number in [0, 1]")
            if v < 0:
                raise ValueError(f"{where}: {key} is negative ({v}); expected a number in [0, 1]")
            if v > 1:
                raise ValueError(f"{where}: {key} is {v} > 1; expected coordinates normalised to [0, 1] by the image "
                                 f"size ({width}x{height}), not pixels")
        x1, y1 = (cx - w / 2) * width, (cy - h / 2) * height
        x2, y2 = (cx + w / 2) * width, (cy + h / 2) * height
        boxes.append((int(cls), [x1, y1, x2 - x1, y2 - y1]))
    return boxes


def read_yolo(data_yaml: str | Path, split: str = "train") -> dict[str, Any]:
    """One split of a YOLO dataset as a COCO dict (``images``, ``annotations``, ``categories``).

    ``file_name`` entries are relative to :func:`yolo_images_dir`; image ids are 1.. in image order.
    Every label line is checked: a bad one raises ValueError naming the file and the line.
    """
    cfg = load_data_yaml(data_yaml)
    images_dir, paths = _split_images(cfg, split)
    sizes = read_image_sizes(paths)
    images, annotations = [], []
    for image_id, (path, (width, height)) in enumerate(zip(paths, sizes), 1):
        try:  # absolute and normalised on both sides: a list may give absolute paths for a relative root
            rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(images_dir)).as_posix()
        except ValueError:
            rel = os.path.abspath(path)
        images.append({"id": image_id, "file_name": rel, "width": width, "height": height})
        label = yolo_label_path(path)
        if not label.is_file():
            continue
        for cls, bbox in _parse_labels(label, cfg.names, width, height):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                                "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0})
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(cfg.names)]
    return {"info": {"description": f"YOLO dataset {cfg.yaml_path} ({split})"}, "images": images,
            "annotations": annotations, "categories": categories}


@dataclass
class WriteSummary:
    """What a writer wrote: where, how many images and boxes, and the boxes it left out."""

    out: Path
    images: int = 0
    boxes: int = 0
    skipped_crowd: int = 0
    skipped_empty: int = 0  # boxes with nothing left inside the image

    def __str__(self) -> str:
        left = []
        if self.skipped_crowd:
            left.append(f"{self.skipped_crowd} crowd")
        if self.skipped_empty:
            left.append(f"{self.skipped_empty} outside the image or empty")
        return (f"{self.images} images, {self.boxes} boxes -> {self.out}"
                + (f" (left out: {', '.join(left)})" if left else ""))


def _check_empty(folder: Path, what: str, overwrite: bool) -> None:
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise FileExistsError(f"{folder} exists and is not a folder; refusing to write the {what} there")
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{folder} already holds {what}; refusing to overwrite it (pass overwrite=True / "
                                  "--overwrite to replace it)")
        shutil.rmtree(folder)


def write_yolo(coco: dict[str, Any] | str | Path, images_dir: str | Path, out_dir: str | Path, split: str = "train",
               *, image_mode: ImageMode = "symlink", overwrite: bool = False) -> WriteSummary:
    """Write a COCO dataset (a dict or a JSON file, its images in ``images_dir``) as split ``split`` of a
    YOLO dataset in ``out_dir``: ``images/<split>/<file_name>`` (symlinked, hard-linked or copied),
    ``labels/<split>/<file_name stem>.txt`` and ``data.yaml`` (names in category-id order).

    Another split can be added to the same ``out_dir`` (the data.yaml gains the key); existing images or
    labels of ``split``, a data.yaml with other names or already naming ``split`` are refused unless
    ``overwrite``. Crowd boxes are left out (YOLO has no ignore regions); boxes are clipped to the image.
    Nothing is written into ``images_dir``.
    """
    data, source = load_coco_dict(coco)
    images_dir, out = Path(images_dir), Path(out_dir)
    rows = source_images(data, images_dir, source)
    cats, index, per_image = coco_boxes(data, source)
    names = [str(c.get("name", c["id"])) for c in cats]
    if not names:
        raise ValueError(f"{source} has no categories; expected at least one")
    yaml_path = out / DATA_YAML
    existing: dict[str, Any] = {}
    if yaml_path.exists():
        cfg = load_data_yaml(yaml_path)
        existing = dict(cfg.data)
        if os.path.realpath(cfg.root) != os.path.realpath(out):
            raise ValueError(f"{yaml_path}: its 'path' points to {cfg.root}, not to {out}; refusing to add a split "
                             "there: expected a data.yaml written by write_yolo (no 'path', or 'path: .')")
        if not overwrite and cfg.names != names:
            raise FileExistsError(f"{yaml_path} has other class names ({cfg.names[:5]} ...) than {source} "
                                  f"({names[:5]} ...); refusing to mix them (overwrite to replace it)")
        if not overwrite and split in cfg.data:
            raise FileExistsError(f"{yaml_path} already has a {split!r} split; refusing to overwrite it "
                                  "(pass overwrite=True / --overwrite to replace it)")
    img_out, lbl_out = out / "images" / split, out / "labels" / split
    check_not_inside(img_out, images_dir)
    check_not_inside(lbl_out, images_dir)

    def label_of(rel: Path) -> Path:
        # where read_yolo looks: a file_name with its own 'images' folder (e.g. 'images/a.jpg') has its
        # label next to that folder's 'labels', not under labels/<split>/
        return yolo_label_path(img_out / rel) if "images" in rel.parts[:-1] else (lbl_out / rel).with_suffix(".txt")

    seen: dict[Path, str] = {}
    for info, *_ in rows:  # checked before anything is written
        label = label_of(Path(info["file_name"]))
        if label in seen:
            raise ValueError(f"{source}: images {seen[label]!r} and {info['file_name']!r} would share the label file "
                             f"{label}; expected distinct file names without their extension")
        seen[label] = info["file_name"]
    _check_empty(img_out, f"the {split} images", overwrite)
    _check_empty(lbl_out, f"the {split} labels", overwrite)

    summary = WriteSummary(yaml_path)
    for info, path, width, height in rows:
        rel = Path(info["file_name"])
        label = label_of(rel)
        place_image(path, img_out / rel, image_mode)
        lines = []
        for ann in per_image.get(info["id"], []):
            if ann.get("iscrowd", 0):
                summary.skipped_crowd += 1
                continue
            box = clip_box(ann["bbox"], width, height)
            if box is None:
                summary.skipped_empty += 1
                continue
            x1, y1, x2, y2 = box
            values = ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
            lines.append(" ".join([str(index[ann["category_id"]]), *(fmt_number(v) for v in values)]))
        if lines:
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("\n".join(lines) + "\n", encoding="utf-8")
        summary.images += 1
        summary.boxes += len(lines)
    lbl_out.mkdir(parents=True, exist_ok=True)
    img_out.mkdir(parents=True, exist_ok=True)

    # Without 'path' Ultralytics takes the yaml's folder as the root, wherever the dataset is moved.
    merged = {k: v for k, v in existing.items() if k not in ("names", "nc")}
    merged[split] = f"images/{split}"
    merged["names"] = dict(enumerate(names))
    atomic_write(yaml_path, lambda tmp: tmp.write_text(yaml.safe_dump(merged, sort_keys=False, allow_unicode=True),
                                                       encoding="utf-8"))
    return summary
