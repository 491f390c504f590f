"""Helpers shared by the dataset format readers and writers (:mod:`kdzoo.data.yolo`,
:mod:`kdzoo.data.voc`, :mod:`kdzoo.data.convert`): image discovery, header-only image sizes,
placing images in a converted dataset, and the output-safety checks (``docs/datasets.md``)."""
from __future__ import annotations

import logging
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Literal

from PIL import Image, UnidentifiedImageError

__all__ = ["IMAGE_SUFFIXES", "ImageMode", "list_images", "read_image_sizes", "place_image", "coco_boxes", "clip_box",
           "load_coco_dict", "source_images", "fmt_number", "check_not_inside"]

# The image formats Ultralytics trains on (and supervision lists), lower case.
IMAGE_SUFFIXES = frozenset({".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp"})

ImageMode = Literal["symlink", "copy", "hardlink"]
_EXIF_ORIENTATION = 0x0112
_log = logging.getLogger("kdzoo.data")


def list_images(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursively, following symlinked folders once), sorted by
    relative path, so that image ids do not depend on the file system's listing order."""
    found: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop
            dirnames[:] = []
            continue
        seen.add(real)
        found.extend(Path(dirpath) / f for f in filenames if Path(f).suffix.lower() in IMAGE_SUFFIXES)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _size(path: Path) -> tuple[int, int, bool]:
    """(width, height, has a non-identity EXIF orientation) from the file header, without decoding."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            # Only JPEG keeps EXIF in the header; PIL loads the whole image to find a PNG's EXIF.
            rotated = img.format in ("JPEG", "MPO") and img.getexif().get(_EXIF_ORIENTATION, 1) not in (1, None)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read the size of image {path}: {e}; expected an image file PIL can open") from e
    return int(w), int(h), bool(rotated)


def read_image_sizes(paths: list[Path], workers: int | None = None) -> list[tuple[int, int]]:
    """(width, height) of every image, read from the headers in a thread pool (file reads release the
    GIL). Logs one warning when some JPEGs carry an EXIF orientation: kdzoo decodes the stored pixels
    and does not rotate them, so such labels must be relative to the stored (unrotated) image."""
    if not paths:
        return []
    max_workers = max(1, workers if workers is not None else min(16, (os.cpu_count() or 1) + 4))
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        sizes = list(pool.map(_size, paths))
    rotated = [p for p, s in zip(paths, sizes) if s[2]]
    if rotated:
        _log.warning("%d image(s) have an EXIF orientation tag (e.g. %s); kdzoo reads the stored pixels without "
                     "rotating them, so their boxes must be relative to the unrotated image", len(rotated), rotated[0])
    return [(w, h) for w, h, _ in sizes]


def place_image(src: Path, dst: Path, mode: ImageMode) -> None:
    """Put ``src`` at ``dst`` as an absolute symlink, a hard link or a copy; a link that the file system
    refuses (no symlink permission, another device) falls back to a copy. ``src`` is never written."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if mode == "symlink":
        try:
            os.symlink(os.path.abspath(src), dst)
            return
        except OSError:
            pass
    elif mode == "hardlink":
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def coco_boxes(coco: dict[str, Any], source: str) -> tuple[list[dict[str, Any]], dict[int, int],
                                                             dict[int, list[dict[str, Any]]]]:
    """(categories sorted by id, category id -> 0-based index, image id -> its annotations) of a COCO dict:
    the class order every writer uses (the order :class:`~kdzoo.data.coco.CocoDetection` labels follow).
    An annotation with an unknown category or a bbox that is not 4 finite numbers raises ValueError."""
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(cats)}
    names = [str(c.get("name", c["id"])) for c in cats]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # YOLO's names and VOC's <name> identify a class by its name: the classes would merge
        raise ValueError(f"{source}: categories {twice} are named twice; expected one name per category")
    per_image: dict[int, list[dict[str, Any]]] = {}
    for ann in coco.get("annotations", []):
        where = f"{source}: annotation {ann.get('id')} of image {ann.get('image_id')}"
        if ann.get("category_id") not in index:
            raise ValueError(f"{where}: unknown category_id {ann.get('category_id')}; expected one of {sorted(index)}")
        bbox = ann.get("bbox")
        try:
            ok = isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(math.isfinite(float(v)) for v in bbox)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{where}: bbox {bbox!r}; expected [x, y, w, h] of 4 finite numbers")
        per_image.setdefault(ann["image_id"], []).append(ann)
    return cats, index, per_image


def clip_box(bbox: Iterable[float], width: float, height: float) -> tuple[float, float, float, float] | None:
    """COCO [x,y,w,h] clipped to the image as (x1, y1, x2, y2), or None when nothing of it is left."""
    x, y, w, h = (float(v) for v in bbox)
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x2 <= x1 or y2 <= y1:
        return None
    return x1, y1, x2, y2


def load_coco_dict(coco: dict[str, Any] | str | Path) -> tuple[dict[str, Any], str]:
    """A COCO dict (checked like :func:`kdzoo.data.coco.load_coco` checks a file) and what messages call it."""
    from .coco import load_coco

    source = "COCO annotation dict" if isinstance(coco, dict) else f"annotation file {coco}"
    return load_coco(coco).dataset, source


def source_images(coco: dict[str, Any], images_dir: Path, source: str) -> list[tuple[dict[str, Any], Path, int, int]]:
    """(image entry, file, width, height) for every image of ``coco`` sorted by id. The file must exist
    under ``images_dir`` (``file_name`` relative, without ``..``) with a suffix of ``IMAGE_SUFFIXES``
    (what the YOLO and VOC readers list). Sizes are read from the file headers; a size the entry
    gives must match (boxes are normalised by it)."""
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image directory not found: {images_dir} (expected the folder the "
                                f"file_name entries of {source} are relative to)")
    rows: list[tuple[dict[str, Any], Path]] = []
    for info in sorted(coco["images"], key=lambda i: i["id"]):
        name = info.get("file_name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{source}: image {info.get('id')} has no file_name; expected a path relative to {images_dir}")
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"{source}: image {info.get('id')} file_name {name!r} is not a relative path inside "
                             f"{images_dir}; expected e.g. '000001.jpg'")
        path = images_dir / rel
        if not path.is_file():
            raise FileNotFoundError(f"{source}: image file {path} (image {info.get('id')}) not found")
        if rel.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{source}: image {info.get('id')} file_name {name!r} has a suffix the YOLO and VOC "
                             f"readers do not list; expected one of {sorted(IMAGE_SUFFIXES)} (convert the image)")
        rows.append((info, path))
    out = []
    for (info, path), (w, h) in zip(rows, read_image_sizes([p for _, p in rows])):
        given = (info.get("width"), info.get("height"))
        if given != (None, None) and (float(given[0] or 0), float(given[1] or 0)) != (w, h):
            raise ValueError(f"{source}: image {info.get('id')} ({path}) is {w}x{h} pixels but the annotation gives "
                             f"width {given[0]}, height {given[1]}; expected the file's own size (boxes would be "
                             "normalised by the wrong size)")
        out.append((info, path, int(w), int(h)))
    return out


def fmt_number(v: float) -> str:
    """The shortest text that reads back as the same float (an integer without '.0')."""
    v = float(v)
    return str(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)


def check_not_inside(out: Path, images_dir: Path) -> None:
    """Refuse an output folder that is, holds or lies inside the source image folder: writing (or, with
    overwrite, clearing) it would change the source dataset."""
    a, b = Path(os.path.realpath(out)), Path(os.path.realpath(images_dir))
    if a == b or a in b.parents or b in a.parents:
        raise ValueError(f"output folder {out} overlaps the source image folder {images_dir}; refusing to write into "
                         "the source dataset: choose another output folder")
