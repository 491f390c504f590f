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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["CocoDetection", "collate_fn", "load_coco", "decode_image"]

_REQUIRED_KEYS = ("images", "categories")


def load_coco(ann_file: str | Path) -> COCO:
    """Load a COCO annotation file with explicit errors instead of pycocotools' asserts."""
    path = Path(ann_file)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"annotation file {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"annotation file {path} is not COCO JSON: expected an object, got {type(data).__name__}")
    missing = [k for k in _REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(
            f"annotation file {path} is not COCO JSON: missing key(s) {missing} (found {sorted(data)[:10]})"
        )
    # Image-info-only files (e.g. test-dev) have no annotations; treat them as unlabelled.
    data.setdefault("annotations", [])
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise ValueError(f"annotation file {path}: '{key}' must be a list, got {type(data[key]).__name__}")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress noise
        coco.createIndex()
    return coco


def decode_image(path: str | Path) -> Tensor:
    """Decode any PIL-readable image to a float RGB tensor [3,H,W] in 0..1."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()  # force the decode here so truncated files fail with our message
            arr = _to_rgb8(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise RuntimeError(f"cannot decode image file {path}: {e}") from e
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255).contiguous()


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
        ann_file: COCO instances JSON.
        train: enables the random horizontal flip.
        flip_prob: flip probability in train mode.
        filter_empty: drop images without any usable (non-crowd, non-degenerate) box,
            as detectors are usually trained.
    """

    def __init__(
        self,
        root: str | Path,
        ann_file: str | Path,
        train: bool = False,
        flip_prob: float = 0.5,
        filter_empty: bool = False,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image directory not found: {self.root}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.coco = load_coco(ann_file)
        self.train = train
        self.flip_prob = flip_prob

        cat_ids = sorted(self.coco.getCatIds())
        self.label_to_cat_id: list[int] = cat_ids
        self.cat_id_to_label: dict[int, int] = {c: i for i, c in enumerate(cat_ids)}
        self.categories: list[str] = [self.coco.cats[c]["name"] for c in cat_ids]

        ids = sorted(self.coco.imgs)
        if filter_empty:
            ids = [i for i in ids if len(self._load_target(i, *self._json_size(i))[0])]
        self.ids: list[int] = ids

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def _json_size(self, image_id: int) -> tuple[int | None, int | None]:
        info = self.coco.imgs[image_id]
        return info.get("height"), info.get("width")

    def _load_target(self, image_id: int, height: int | None, width: int | None) -> tuple[Tensor, Tensor]:
        boxes, labels = [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0):
                continue  # crowd regions are ignore-regions in COCO eval, not training targets
            bbox = ann.get("bbox")
            if bbox is None or len(bbox) != 4:
                raise ValueError(f"annotation {ann.get('id')} of image {image_id}: expected bbox [x,y,w,h], got {bbox}")
            cat = ann["category_id"]
            if cat not in self.cat_id_to_label:
                raise ValueError(f"annotation {ann.get('id')} of image {image_id}: unknown category_id {cat}")
            x, y, w, h = (float(v) for v in bbox)
            x1, y1, x2, y2 = x, y, x + w, y + h
            if width is not None and height is not None:
                x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
                y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue  # degenerate boxes give NaN/inf regression targets
            boxes.append((x1, y1, x2, y2))
            labels.append(self.cat_id_to_label[cat])
        return (
            torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            torch.tensor(labels, dtype=torch.int64),
        )

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        if "file_name" not in info:
            raise ValueError(f"image entry {image_id} in the annotation file has no 'file_name'")
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
