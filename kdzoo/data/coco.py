"""COCO-format detection dataset (pycocotools based).

Returns images as float tensors [3,H,W] in 0..1 (RGB) and targets in the project
convention: ``boxes`` xyxy absolute pixels, ``labels`` 0-based contiguous class indices
(sorted by COCO category id, no background class). Resizing is deliberately left to the
model's transform; the dataset only does the (box-exact) random horizontal flip.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["CocoDetection", "collate_fn", "load_coco", "decode_image", "find_bad_images", "check_images",
           "BadImagesError"]

_REQUIRED_KEYS = ("images", "categories")
_log = logging.getLogger(__name__)


def load_coco(ann_file: str | Path | dict[str, Any], source: str | None = None) -> COCO:
    """Load COCO annotations with explicit errors instead of pycocotools' asserts.

    ``ann_file`` is a COCO JSON file or an in-memory COCO dict (what :mod:`kdzoo.data.yolo` and
    :mod:`kdzoo.data.voc` read); errors about a dict name ``source`` (e.g. the YOLO data.yaml).
    A dict is not modified: the index is built on a shallow copy.
    """
    if isinstance(ann_file, dict):
        data: Any = dict(ann_file)
        where = source or "COCO annotation dict"
        kind = "COCO data"
    else:
        path = Path(ann_file)
        if not path.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {path}")
        try:
            with open(path, "rb") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"annotation file {path} is not valid JSON: {e}") from e
        where = f"annotation file {path}"
        kind = "COCO JSON"
        if not isinstance(data, dict):
            raise ValueError(f"{where} is not {kind}: expected an object, got {type(data).__name__}")
    missing = [k for k in _REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(
            f"{where} is not {kind}: missing key(s) {missing} (found {sorted(data)[:10]})"
        )
    # Image-info-only files (e.g. test-dev) have no annotations; treat them as unlabelled.
    data.setdefault("annotations", [])
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise ValueError(f"{where}: '{key}' must be a list, got {type(data[key]).__name__}")
    _check_entries(data, where)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress noise
        coco.createIndex()
    return coco


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_entries(data: dict[str, Any], where: str) -> None:
    """The fields kdzoo and pycocotools index by: integer, unique image and category ids, a file name
    and a positive size where given, a category name, an integer image id on every annotation.
    Annotations of an image the file does not list are counted in one warning (they are unused)."""
    files: dict[int, Any] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            raise ValueError(f"{where}: images[{i}] is a {type(img).__name__}; expected an object with 'id' and 'file_name'")
        if not _is_int(img.get("id")):
            raise ValueError(f"{where}: images[{i}] has id {img.get('id')!r}; expected an integer id")
        name = img.get("file_name")
        if "file_name" in img and (not isinstance(name, str) or not name):
            raise ValueError(f"{where}: image {img['id']} has file_name {name!r}; expected a path relative to the image folder")
        for key in ("width", "height"):
            v = img.get(key)
            if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
                raise ValueError(f"{where}: image {img['id']} ({name}) has {key} {v!r}; expected a positive number of pixels")
        if img["id"] in files:
            raise ValueError(f"{where}: image id {img['id']} is used twice ({files[img['id']]!r} and {name!r}); "
                             "expected one id per image")
        files[img["id"]] = name
    cat_ids: set[int] = set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise ValueError(f"{where}: categories[{i}] is {cat!r}; expected an object with an integer 'id' and a 'name'")
        if cat["id"] in cat_ids:
            raise ValueError(f"{where}: category id {cat['id']} is used twice; expected one id per category")
        cat_ids.add(cat["id"])
    orphans, example = 0, None
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not _is_int(ann.get("image_id")):
            got = ann.get("image_id") if isinstance(ann, dict) else ann
            raise ValueError(f"{where}: annotations[{i}] has image_id {got!r}; expected the integer id of an image")
        if ann["image_id"] not in files:
            orphans += 1
            example = example if example is not None else ann["image_id"]
    if orphans:
        _log.warning("%s: %d annotation(s) belong to no listed image (e.g. image_id %r) and are not used",
                     where, orphans, example)


def decode_image(path: str | Path) -> Tensor:
    """Decode any PIL-readable image to a float RGB tensor [3,H,W] in 0..1."""
    return decode_image_u8(path).float().div_(255)


def decode_image_u8(path: str | Path) -> Tensor:
    """Decode any PIL-readable image to a uint8 RGB tensor [3,H,W] (what the RAM cache keeps)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()  # force the decode here so truncated files fail with our message
            arr = _to_rgb8(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise RuntimeError(f"cannot decode image file {path}: {e}") from e
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _to_rgb8(img: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB from any mode (gray, palette, alpha, 16/32-bit integer, float)."""
    if img.mode.startswith("I") or img.mode == "F":
        # PIL's convert("RGB") clips high-bit-depth values at 255 instead of rescaling.
        a = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            scale = 1.0 if a.max(initial=0) <= 1.0 else 255.0
        else:
            scale = 65535.0 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        a = np.clip(a / scale * 255 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3]
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's warning about palette transparency
    # Alpha is dropped rather than composited: COCO images carry no meaningful alpha.
    return np.array(img.convert("RGB"), dtype=np.uint8)  # a copy: torch needs a writable array


class CocoDetection(Dataset):
    """COCO-format detection dataset.

    Args:
        root: directory holding the images (``file_name`` is relative to it).
        ann_file: COCO instances JSON, or an in-memory COCO dict (e.g. from
            :func:`kdzoo.data.yolo.read_yolo` or :func:`kdzoo.data.voc.read_voc`).
        train: enables the random horizontal flip.
        flip_prob: flip probability in train mode.
        filter_empty: drop images without any usable (non-crowd, non-degenerate) box,
            as detectors are usually trained.
        source: what messages call a dict ``ann_file`` (e.g. the YOLO data.yaml); a path
            names itself.

    :meth:`cache_images` decodes every image once and keeps it in memory as uint8 (3 bytes per
    pixel), as Ultralytics' ``cache=ram``: worth it when decoding, not the model, bounds the step
    (small images, a GPU); the recipe key is ``data.cache``.

    Every annotation is checked when the dataset is built: a malformed or non-finite ``bbox``
    or an unknown ``category_id`` raises ValueError there. Degenerate boxes (under 1 px wide
    or tall once clipped to the image, or outside it) are left out of the targets and counted,
    with one warning per dataset (logger ``kdzoo.data.coco``). :func:`check_images` checks that
    every image file reads.
    """

    def __init__(
        self,
        root: str | Path,
        ann_file: str | Path | dict[str, Any],
        train: bool = False,
        flip_prob: float = 0.5,
        filter_empty: bool = False,
        source: str | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image directory not found: {self.root}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.coco = load_coco(ann_file, source)
        # What warnings name: the annotation file, or the source of an in-memory dict.
        self.source: str = str(ann_file) if not isinstance(ann_file, dict) else (source or "COCO annotation dict")
        self.train = train
        self.flip_prob = flip_prob

        cat_ids = sorted(self.coco.getCatIds())
        self.label_to_cat_id: list[int] = cat_ids
        self.cat_id_to_label: dict[int, int] = {c: i for i, c in enumerate(cat_ids)}
        self.categories: list[str] = [self.coco.cats[c]["name"] for c in cat_ids]

        ids = sorted(self.coco.imgs)
        usable = self._scan_boxes(ids, self.source)
        if filter_empty:
            ids = [i for i in ids if usable[i]]
        self.ids: list[int] = ids
        self._cache: list[Tensor] | None = None

    def cache_images(self, workers: int | None = None) -> int:
        """Decode every image of :attr:`ids` into memory (uint8, a thread pool of ``workers``); later
        reads come from there. Returns the bytes kept. Filled before a DataLoader forks its workers,
        the cache is shared with them, not copied."""
        paths = []
        for image_id in self.ids:
            info = self.coco.imgs[image_id]
            if "file_name" not in info:
                raise ValueError(f"image entry {image_id} in the annotation file has no 'file_name'")
            paths.append(self.root / info["file_name"])
        max_workers = max(1, workers if workers is not None else min(32, (os.cpu_count() or 1) + 4))
        with ThreadPoolExecutor(max_workers=max_workers) as pool:
            self._cache = list(pool.map(decode_image_u8, paths))
        return sum(t.numel() for t in self._cache)

    def _scan_boxes(self, ids: list[int], ann_file: str) -> dict[int, int]:
        """Validate every annotation once (so bad ones fail here, not mid-run), count each image's
        usable boxes, and report the degenerate boxes that will be left out, in one warning line."""
        usable: dict[int, int] = {}
        dropped: list[tuple[int, Any]] = []  # (image id, annotation id)
        total = 0
        for image_id in ids:
            n, size = 0, self._json_size(image_id)
            for ann in self.coco.imgToAnns.get(image_id, []):
                if ann.get("iscrowd", 0):
                    continue
                total += 1
                if self._ann_box(ann, image_id, *size) is None:
                    dropped.append((image_id, ann.get("id")))
                else:
                    n += 1
            usable[image_id] = n
        if dropped:
            examples = ", ".join(f"{self.coco.imgs[i].get('file_name', f'image {i}')} (annotation {a})"
                                 for i, a in dropped[:3])
            _log.warning("%s: %d of %d boxes are degenerate (width or height under 1 px inside the image, or outside "
                         "it) and are left out of the targets, e.g. %s", ann_file, len(dropped), total,
                         examples)
        return usable

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def _json_size(self, image_id: int) -> tuple[int | None, int | None]:
        info = self.coco.imgs[image_id]
        return info.get("height"), info.get("width")

    def _ann_box(self, ann: dict[str, Any], image_id: int, height: int | None,
                 width: int | None) -> tuple[float, float, float, float] | None:
        """The annotation's xyxy box clipped to the image, or None when it is degenerate."""
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise ValueError(f"annotation {ann.get('id')} of image {image_id}: expected bbox [x,y,w,h], got {bbox}")
        cat = ann.get("category_id")
        if cat not in self.cat_id_to_label:
            raise ValueError(f"annotation {ann.get('id')} of image {image_id}: unknown category_id {cat}")
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            raise ValueError(f"annotation {ann.get('id')} of image {image_id}: expected bbox of 4 numbers, "
                             f"got {bbox}") from None
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            raise ValueError(f"annotation {ann.get('id')} of image {image_id}: bbox {bbox} has non-finite values; "
                             "expected finite [x,y,w,h]")
        x1, y1, x2, y2 = x, y, x + w, y + h
        if width is not None and height is not None:
            x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
            y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
        if x2 - x1 < 1 or y2 - y1 < 1:
            return None  # degenerate boxes give NaN/inf regression targets (counted in _scan_boxes)
        return x1, y1, x2, y2

    def _load_target(self, image_id: int, height: int | None, width: int | None) -> tuple[Tensor, Tensor]:
        boxes, labels = [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0):
                continue  # crowd regions are ignore-regions in COCO eval, not training targets
            box = self._ann_box(ann, image_id, height, width)
            if box is not None:
                boxes.append(box)
                labels.append(self.cat_id_to_label[ann["category_id"]])
        return (
            torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            torch.tensor(labels, dtype=torch.int64),
        )

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        if "file_name" not in info:
            raise ValueError(f"image entry {image_id} in the annotation file has no 'file_name'")
        if self._cache is not None:
            image = self._cache[index].float().div_(255)
        else:
            image = decode_image(self.root / info["file_name"])
        h, w = image.shape[-2:]
        jh, jw = self._json_size(image_id)
        if (jh is not None and jh != h) or (jw is not None and jw != w):
            raise ValueError(
                f"image {self.root / info['file_name']} is {w}x{h} but the annotation file says {jw}x{jh}"
            )
        boxes, labels = self._load_target(image_id, h, w)
        if self.train and torch.rand(()) < self.flip_prob:  # torch RNG: seeded per DataLoader worker
            image = image.flip(-1)
            boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
        target = {"boxes": boxes, "labels": labels, "image_id": int(image_id), "orig_size": (int(h), int(w))}
        return image, target

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, images={len(self)}, "
            f"classes={self.num_classes}, train={self.train})"
        )


def collate_fn(batch: list[tuple[Tensor, dict[str, Any]]]) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """Keep variable-size images as a list; the model's transform batches them."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


class BadImagesError(ValueError, RuntimeError):
    """Image files of a dataset that cannot be read. ``bad`` lists every one as (path, reason).
    A ValueError (bad input data) and a RuntimeError, what :func:`decode_image` raises for one file."""

    def __init__(self, message: str, bad: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.bad = list(bad or [])


def _probe_image(path: Path, size: tuple[int | None, int | None]) -> str | None:
    """Why ``path`` cannot be used as a training image, or None when it is fine.

    Cheaper than a decode: PNG files are checked chunk by chunk (verify reads every chunk and
    its checksum without inflating), JPEGs are decoded at 1/8 scale (which still reads all of
    the compressed data, so truncation shows), other formats are decoded.
    """
    try:
        with Image.open(path) as img:
            w, h = img.size
            if img.format == "PNG":
                img.verify()
            else:
                img.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                img.load()
    except FileNotFoundError:
        return "file not found"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    jh, jw = size
    if (jh is not None and jh != h) or (jw is not None and jw != w):
        return f"is {w}x{h} but the annotation file says {jw}x{jh}"
    return None


def find_bad_images(dataset: CocoDetection, workers: int | None = None) -> list[tuple[str, str]]:
    """(path, reason) for every image of ``dataset`` (its ``ids``) that cannot be read, in id order.

    Files are probed in a thread pool (``workers`` threads, default ``min(32, CPUs + 4)``): the
    work is mostly file reads, checksums and decoding, which run outside Python's GIL.
    """
    jobs: list[tuple[Path, tuple[int | None, int | None]]] = []
    bad: list[tuple[str, str]] = []
    for image_id in dataset.ids:
        info = dataset.coco.imgs[image_id]
        if "file_name" not in info:
            bad.append((f"image {image_id}", "no 'file_name' in the annotation file"))
            continue
        jobs.append((dataset.root / info["file_name"], dataset._json_size(image_id)))
    if not jobs:
        return bad

    def probe_chunk(chunk: list[tuple[Path, tuple[int | None, int | None]]]) -> list[str | None]:
        return [_probe_image(p, size) for p, size in chunk]

    max_workers = max(1, workers if workers is not None else min(32, (os.cpu_count() or 1) + 4))
    step = max(1, min(256, len(jobs) // (4 * max_workers)))  # a few chunks per thread, not one future per file
    chunks = [jobs[i:i + step] for i in range(0, len(jobs), step)]
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        reasons = [r for rs in pool.map(probe_chunk, chunks) for r in rs]
    bad.extend((str(p), r) for (p, _), r in zip(jobs, reasons) if r is not None)
    return bad


def check_images(*datasets: CocoDetection, workers: int | None = None, show: int = 5) -> None:
    """Raise :class:`BadImagesError` (one line, the first ``show`` files and why) if any image file of
    ``datasets`` cannot be read: called before training so that a bad file does not stop a run midway."""
    bad: list[tuple[str, str]] = []
    total = 0
    for ds in datasets:
        bad += find_bad_images(ds, workers)
        total += len(ds)
    if bad:
        where = ", ".join(str(ds.root) for ds in datasets)
        listed = "; ".join(f"{p} ({r})" for p, r in bad[:show])
        more = f"; and {len(bad) - show} more" if len(bad) > show else ""
        raise BadImagesError(f"{len(bad)} of {total} image files under {where} cannot be read: {listed}{more}; "
                             "expected decodable images of the size the annotation file gives", bad)
