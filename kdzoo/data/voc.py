"""Pascal VOC detection datasets, read into (and written from) COCO dicts.

Layout (``docs/datasets.md``), the VOC year folder (e.g. ``VOCdevkit/VOC2012``)::

    Annotations/<id>.xml        # <object><name>, <difficult>, <bndbox><xmin><ymin><xmax><ymax>
    JPEGImages/<id>.jpg         # or another image suffix with the same stem
    ImageSets/Main/<split>.txt  # the image ids of the split, one a line

Conventions:

* Pixel coordinates. ``<bndbox>`` holds the VOC devkit's 1-based, inclusive pixel indices: the box
  covers pixels xmin..xmax. In COCO's pixel-edge coordinates (0-based, the right edge one past the
  last pixel) that is ``x1 = xmin - 1``, ``x2 = xmax``, so ``bbox = [xmin - 1, ymin - 1,
  xmax - xmin + 1, ymax - ymin + 1]``. This is supervision's convention (its VOC loader subtracts 1
  from the minima only, and its writer adds it back), so both read the same boxes. MMDetection 3.x's
  ``XMLDataset`` instead truncates the values to integers and subtracts 1 from all four
  (``parse_data_info`` passes ``minus_one=True``): its boxes are one pixel narrower than ours (the same
  left/top edge, the right/bottom edge one pixel in). MMDetection 2.x kept the truncated values as
  they are and evaluated with a legacy ``+1`` box area. Decimal coordinates are kept (not truncated).
* ``difficult`` objects become ``iscrowd: 1``: COCO evaluation treats them as ignore regions, as
  VOC's evaluation ignores difficult objects, and :class:`~kdzoo.data.coco.CocoDetection` does not
  train on them.
* Classes. ``classes`` gives the class order (category id = index + 1); an object of another class
  is an error. Without it: the 20 VOC classes (:data:`VOC_CLASSES`, in the devkit's order) when
  every name found in the split's XML files is one of them, else the sorted set of the names found.
  :func:`voc_classes` computes it over several splits, so that train and val get the same classes.
* Image sizes come from the image headers (the XML ``<size>`` is not trusted); EXIF orientation is
  not applied.

Errors name the XML file (and the object's index in it) for unparsable XML, a missing ``<name>`` or
``<bndbox>`` field, a non-numeric or reversed box, and an unknown class.
"""
from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ._images import (IMAGE_SUFFIXES, ImageMode, check_not_inside, clip_box, coco_boxes, fmt_number, load_coco_dict,
                      place_image, read_image_sizes, source_images)
from .yolo import WriteSummary

__all__ = ["VOC_CLASSES", "read_voc", "voc_classes", "voc_image_ids", "voc_images_dir", "write_voc"]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
_BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")


@dataclass
class _Object:
    name: str
    xyxy: tuple[float, float, float, float]  # the XML values, 1-based inclusive
    difficult: bool


def _split_file(root: Path, split: str) -> Path:
    return root / "ImageSets" / "Main" / f"{split}.txt"


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise FileNotFoundError(f"VOC dataset folder not found: {root} (expected the year folder holding "
                                "Annotations/, JPEGImages/ and ImageSets/Main/)")
    for sub in ("Annotations", "JPEGImages"):
        if not (root / sub).is_dir():
            raise FileNotFoundError(f"VOC dataset {root}: folder {sub}/ not found (expected Annotations/, "
                                    "JPEGImages/ and ImageSets/Main/)")


def voc_images_dir(root: str | Path) -> Path:
    """The folder the ``file_name`` entries of :func:`read_voc` are relative to."""
    return Path(root) / "JPEGImages"


def voc_image_ids(root: str | Path, split: str = "train") -> list[str]:
    """The image ids ``ImageSets/Main/<split>.txt`` lists (the first word of each non-blank line)."""
    root = Path(root)
    _check_root(root)
    path = _split_file(root, split)
    if not path.is_file():
        have = sorted(p.stem for p in path.parent.glob("*.txt") if "_" not in p.stem) if path.parent.is_dir() else []
        raise FileNotFoundError(f"VOC split file not found: {path} (expected ImageSets/Main/<split>.txt"
                                + (f"; splits there: {have}" if have else "") + ")")
    ids = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return list(dict.fromkeys(ids))


def _text(el: ET.Element, tag: str) -> str | None:
    child = el.find(tag)
    if child is None or child.text is None or not child.text.strip():
        return None
    return child.text.strip()


def _parse_xml(path: Path) -> list[_Object]:
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise FileNotFoundError(f"VOC annotation file not found: {path}") from None
    except ET.ParseError as e:
        raise ValueError(f"{path}: not valid XML ({e}); expected a VOC <annotation> file") from e
    objects = []
    for i, obj in enumerate(root.findall("object")):
        name = _text(obj, "name")
        if name is None:
            raise ValueError(f"{path}: object {i}: missing <name>; expected the class name")
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{path}: object {i} ({name}): missing <bndbox>; expected <xmin> <ymin> <xmax> <ymax>")
        values = []
        for key in _BOX_KEYS:
            text = _text(box, key)
            if text is None:
                raise ValueError(f"{path}: object {i} ({name}): missing <bndbox><{key}>; expected a pixel coordinate")
            try:
                v = float(text)
            except ValueError:
                v = math.nan
            if not math.isfinite(v):
                raise ValueError(f"{path}: object {i} ({name}): <{key}> is {text!r}; expected a finite number")
            values.append(v)
        xmin, ymin, xmax, ymax = values
        if xmax < xmin - 1 or ymax < ymin - 1:
            raise ValueError(f"{path}: object {i} ({name}): reversed box xmin={xmin} ymin={ymin} xmax={xmax} "
                             f"ymax={ymax}; expected xmin <= xmax and ymin <= ymax (1-based inclusive pixels)")
        flag = _text(obj, "difficult") or "0"
        try:
            difficult = bool(int(float(flag)))
        except ValueError:
            raise ValueError(f"{path}: object {i} ({name}): <difficult> is {flag!r}; expected 0 or 1") from None
        objects.append(_Object(name, (xmin, ymin, xmax, ymax), difficult))
    return objects


def _default_classes(found: Iterable[str]) -> list[str]:
    found = set(found)
    return list(VOC_CLASSES) if found <= set(VOC_CLASSES) else sorted(found)


def voc_classes(root: str | Path, splits: Sequence[str] = ("train",)) -> list[str]:
    """The default class list of ``splits`` together: the 20 VOC classes when every object name in their
    XML files is one of them, else the sorted set of names found."""
    root = Path(root)
    names: set[str] = set()
    for split in splits:
        for image_id in voc_image_ids(root, split):
            names.update(o.name for o in _parse_xml(root / "Annotations" / f"{image_id}.xml"))
    return _default_classes(names)


def _image_file(root: Path, image_id: str, xml: Path) -> Path:
    images = root / "JPEGImages"
    first = images / f"{image_id}.jpg"
    if first.is_file():
        return first
    for suffix in sorted(IMAGE_SUFFIXES):
        for cand in (images / f"{image_id}{suffix}", images / f"{image_id}{suffix.upper()}"):
            if cand.is_file():
                return cand
    raise FileNotFoundError(f"no image for {xml}: expected {images}/{image_id}.jpg (or another image suffix)")


def read_voc(root: str | Path, split: str = "train", classes: Sequence[str] | None = None) -> dict[str, Any]:
    """One split of a VOC dataset as a COCO dict (``images``, ``annotations``, ``categories``).

    ``file_name`` entries are relative to ``JPEGImages/`` (:func:`voc_images_dir`); image ids are 1.. in
    the split file's order. See the module docstring for the pixel convention, difficult objects and the
    default ``classes``.
    """
    root = Path(root)
    ids = voc_image_ids(root, split)
    xmls = [root / "Annotations" / f"{i}.xml" for i in ids]
    parsed = [_parse_xml(x) for x in xmls]
    if classes is None:
        classes = _default_classes(o.name for objs in parsed for o in objs)
    classes = [str(c) for c in classes]
    if len(set(classes)) != len(classes) or not classes:
        raise ValueError(f"classes {classes}: expected a non-empty list of distinct class names")
    cat_id = {name: i + 1 for i, name in enumerate(classes)}
    paths = [_image_file(root, i, x) for i, x in zip(ids, xmls)]
    sizes = read_image_sizes(paths)
    images, annotations = [], []
    for image_id, (xml, objs, path, (width, height)) in enumerate(zip(xmls, parsed, paths, sizes), 1):
        images.append({"id": image_id, "file_name": path.relative_to(root / "JPEGImages").as_posix(),
                       "width": width, "height": height})
        for k, o in enumerate(objs):
            if o.name not in cat_id:
                raise ValueError(f"{xml}: object {k}: unknown class {o.name!r}; expected one of {classes}")
            xmin, ymin, xmax, ymax = o.xyxy
            bbox = [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat_id[o.name],
                                "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": int(o.difficult)})
    return {"info": {"description": f"Pascal VOC dataset {root} ({split})"}, "images": images,
            "annotations": annotations, "categories": [{"id": i + 1, "name": n} for i, n in enumerate(classes)]}


def _xml(file_name: str, width: int, height: int, objects: list[tuple[str, tuple[float, ...], bool]]) -> bytes:
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "JPEGImages"
    ET.SubElement(ann, "filename").text = file_name
    size = ET.SubElement(ann, "size")
    for key, v in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(v)
    ET.SubElement(ann, "segmented").text = "0"
    for name, box, difficult in objects:
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(difficult))
        bnd = ET.SubElement(obj, "bndbox")
        for key, v in zip(_BOX_KEYS, box):
            ET.SubElement(bnd, key).text = fmt_number(v)
    ET.indent(ann)
    return ET.tostring(ann, encoding="utf-8", xml_declaration=True) + b"\n"


def write_voc(coco: dict[str, Any] | str | Path, images_dir: str | Path, out_dir: str | Path, split: str = "train",
              *, image_mode: ImageMode = "symlink", overwrite: bool = False) -> WriteSummary:
    """Write a COCO dataset (a dict or a JSON file, its images in ``images_dir``) as split ``split`` of a
    VOC dataset in ``out_dir``: ``Annotations/<stem>.xml``, ``JPEGImages/<name>`` (symlinked, hard-linked
    or copied; the original suffix is kept) and ``ImageSets/Main/<split>.txt``.

    Boxes are clipped to the image and written in VOC's 1-based inclusive pixels (``xmin = x + 1``,
    ``xmax = x + w``; decimals are kept, so COCO -> VOC -> COCO gives the same boxes); crowd boxes become
    ``difficult`` objects. A split file or an XML file with other content already there is refused unless
    ``overwrite``; nothing is written into ``images_dir``.
    """
    data, source = load_coco_dict(coco)
    images_dir, out = Path(images_dir), Path(out_dir)
    rows = source_images(data, images_dir, source)
    cats, _, per_image = coco_boxes(data, source)
    names = {c["id"]: str(c.get("name", c["id"])) for c in cats}
    split_file = _split_file(out, split)
    if split_file.exists() and not overwrite:
        raise FileExistsError(f"{split_file} already exists; refusing to overwrite it (pass overwrite=True / "
                              "--overwrite to replace it)")
    jpeg = out / "JPEGImages"
    check_not_inside(jpeg, images_dir)
    planned: list[tuple[Path, Path, Path, bytes]] = []  # (source image, image out, xml out, xml bytes)
    summary = WriteSummary(split_file)
    stems: dict[str, str] = {}
    for info, path, width, height in rows:
        stem = Path(info["file_name"]).stem
        if not stem or any(c.isspace() for c in stem):  # ImageSets lists are split on whitespace
            raise ValueError(f"{source}: image {info.get('id')} file_name {info['file_name']!r} gives the VOC id "
                             f"{stem!r}; expected a name without spaces (VOC's ImageSets lists split on whitespace)")
        if stem in stems:
            raise ValueError(f"{source}: images {stems[stem]!r} and {info['file_name']!r} would share the VOC id "
                             f"{stem!r}; expected distinct file names without their folder and extension")
        stems[stem] = info["file_name"]
        objects = []
        for ann in per_image.get(info["id"], []):
            box = clip_box(ann["bbox"], width, height)
            if box is None:
                summary.skipped_empty += 1
                continue
            x1, y1, x2, y2 = box
            objects.append((names[ann["category_id"]], (x1 + 1, y1 + 1, x2, y2), bool(ann.get("iscrowd", 0))))
        xml_out = out / "Annotations" / f"{stem}.xml"
        content = _xml(Path(info["file_name"]).name, width, height, objects)
        if xml_out.exists() and not overwrite and xml_out.read_bytes() != content:
            raise FileExistsError(f"{xml_out} already exists with other content (VOC image ids are shared by all "
                                  "splits: does another split have an image of the same name?); refusing to overwrite "
                                  "it (pass overwrite=True / --overwrite to replace it)")
        img_out = jpeg / Path(info["file_name"]).name
        if (img_out.exists() or img_out.is_symlink()) and not overwrite and not _same_file(img_out, path):
            raise FileExistsError(f"{img_out} already exists and is another image; refusing to overwrite it (pass "
                                  "overwrite=True / --overwrite to replace it)")
        planned.append((path, img_out, xml_out, content))
        summary.images += 1
        summary.boxes += len(objects)
    (out / "Annotations").mkdir(parents=True, exist_ok=True)
    for path, img_out, xml_out, content in planned:
        if not (img_out.exists() and _same_file(img_out, path)):
            place_image(path, img_out, image_mode)
        xml_out.write_bytes(content)
    jpeg.mkdir(parents=True, exist_ok=True)
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text("".join(f"{Path(info['file_name']).stem}\n" for info, *_ in rows), encoding="utf-8")
    return summary


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` is (a link to) ``b`` or has the same bytes."""
    try:
        if os.path.samefile(a, b):
            return True
        return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
    except OSError:
        return False
