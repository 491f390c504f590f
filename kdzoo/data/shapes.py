"""Synthetic "shapes" detection dataset, written in COCO format.

The dataset is a fast, fully offline stand-in for COCO that is still hard enough to
separate detectors (and distillation recipes) of different quality. Everything is
deterministic from ``seed``: every image gets its own RNG derived from
``(seed, split, index)``, so the output does not depend on the number of workers.

Classes (COCO category ids 1..8, contiguous labels 0..7):

====  ==========  ===========================================  ===================
 id   name        geometry                                     colour palette (hue)
====  ==========  ===========================================  ===================
 1    circle      disc                                         red-orange (15)
 2    ellipse     disc stretched 1.5-2.3x, any rotation        orange (35)
 3    ring        disc with a 45-70 % radius hole              red (355)
 4    square      square, any rotation                         blue (210)
 5    rectangle   1.6-2.6x elongated box, any rotation         blue-violet (235)
 6    triangle    jittered equilateral triangle, any rotation  green (120)
 7    cross       plus sign (arm width 28-38 %), any rotation  purple (285)
 8    star        5-point star (inner ratio .38-.5), rotation  yellow (55)
====  ==========  ===========================================  ===================

Why it is hard: confusable shape groups (circle/ellipse/ring, square/rectangle,
cross/star) share neighbouring hue palettes; hues are jittered by +-35 degrees and 15 %
of objects get an arbitrary hue, so colour is a hint, never a shortcut. Object sizes are
log-uniform from 8 px to 50 % of the image (many small objects), 3-15 objects are
attempted per image (placed largest first), objects may overlap (an object is rejected only if it would leave
an earlier one less than 30 % visible), and backgrounds combine colour gradients,
low-frequency blotches, pixel noise and non-object distractors (lines, open arcs that
look like partial rings, irregular blobs).

Photo backgrounds (``background="photo"``, ``kdzoo shapes --background photo``): the same objects and
clutter drawn on random crops of the photographs that ship inside scikit-image (read from its
package folder; scikit-image is the ``dev`` extra), so the detector has to find the shapes in real
texture, not on smooth gradients. Training and validation draw on disjoint photographs (see
``PHOTO_BACKGROUNDS``), so the validation AP also measures how well a model ignores backgrounds it
never saw. Each crop covers 35-100 % of the photo's short side, is flipped at random and gets a random
per-channel gain, so grey photos come in tints.

Annotations: ``bbox`` is the visible extent of the drawn shape (after occlusion), in
pixel-edge coordinates (xywh). There are no segmentations, so ``area`` is the box area
w*h: the small/medium/large split then follows box size, which is also how COCOeval
measures detections (with the visible pixel count, "large" would be almost only circles,
as thin shapes like stars never fill 96x96 pixels).

Default dataset statistics (seed 0, 800 train + 200 val, 320x320; see docs/shapes.md,
recomputed with ``python -m kdzoo.data.shapes --out DIR --stats``):

- train: 800 images, 7,309 objects, 9.14 objects/image (min 3, max 15)
- val: 200 images, 1,778 objects, 8.89 objects/image (min 3, max 15)
- COCO size split by area (train / val): small 49.1 / 48.3 %, medium 37.8 / 38.0 %,
  large 13.1 / 13.7 %
- longest box side: p10 11 px, median 35 px, p90 113 px
- classes are balanced (about 12.5 % each)

Usage::

    python -m kdzoo.data.shapes --out data/shapes [--seed 0] [--train 800] [--val 200] [--size 320]
    python -m kdzoo.data.shapes --out data/shapes_photo --background photo

    from kdzoo.data.shapes import ensure_shapes
    root = ensure_shapes("data/shapes")  # root/train, root/val, root/annotations/
"""

from __future__ import annotations

import colorsys
import json
import math
import multiprocessing as mp
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

# (name, palette hue in degrees); order defines the category ids (1-based).
CLASSES: tuple[tuple[str, float], ...] = (
    ("circle", 15.0),
    ("ellipse", 35.0),
    ("ring", 355.0),
    ("square", 210.0),
    ("rectangle", 235.0),
    ("triangle", 120.0),
    ("cross", 285.0),
    ("star", 55.0),
)
CLASS_NAMES: tuple[str, ...] = tuple(name for name, _ in CLASSES)

MIN_SIZE_PX = 8.0  # smallest object extent in pixels
MAX_SIZE_FRAC = 0.5  # largest object extent as a fraction of the image side
MIN_VISIBLE_FRAC = 0.3  # objects occluded by more than 70 % are not allowed
HUE_JITTER = 35.0
OFF_PALETTE_PROB = 0.15
META_FILE = "shapes_meta.json"
_SPLIT_KEYS = {"train": 0, "val": 1}
BACKGROUNDS = ("synthetic", "photo")
# scikit-image's bundled photographs (skimage/data/), split so validation backgrounds are never trained on.
PHOTO_BACKGROUNDS: dict[str, tuple[str, ...]] = {
    "train": ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
              "grass.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "page.png", "retina.jpg",
              "rocket.jpg", "text.png"),
    "val": ("coffee.png", "coins.png", "gravel.png", "motorcycle_left.png"),
}


# --------------------------------------------------------------------------- geometry
def _regular(n: int, radius: float, phase: float = 0.0) -> np.ndarray:
    t = phase + np.arange(n) * (2 * math.pi / n)
    return np.stack([np.cos(t), np.sin(t)], 1) * radius


def _outline(cls: str, s: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Unrotated polygon (and optional hole polygon) centred at 0 for an object of extent ``s``."""
    circle_pts = max(16, int(s * 1.5))  # enough vertices that large discs look round
    if cls == "circle":
        return _regular(circle_pts, s / 2), None
    if cls == "ellipse":
        pts = _regular(circle_pts, s / 2)
        pts[:, 1] /= rng.uniform(1.5, 2.3)
        return pts, None
    if cls == "ring":
        r = s / 2
        inner = max(1.5, r * rng.uniform(0.45, 0.7))
        return _regular(circle_pts, r), _regular(circle_pts, inner)
    if cls == "square":
        h = s * 0.75 / 2
        return np.array([[-h, -h], [h, -h], [h, h], [-h, h]]), None
    if cls == "rectangle":
        w = s * 0.9 / 2
        h = w / rng.uniform(1.6, 2.6)
        return np.array([[-w, -h], [w, -h], [w, h], [-w, h]]), None
    if cls == "triangle":
        pts = _regular(3, s / 2, -math.pi / 2)
        return pts + rng.uniform(-0.08, 0.08, pts.shape) * s, None
    if cls == "cross":
        a, t = s * 0.9 / 2, s * rng.uniform(0.28, 0.38) / 2
        return np.array(
            [[-t, -a], [t, -a], [t, -t], [a, -t], [a, t], [t, t], [t, a], [-t, a], [-t, t], [-a, t], [-a, -t], [-t, -t]]
        ), None
    if cls == "star":
        outer, inner = _regular(5, s / 2, -math.pi / 2), _regular(5, s / 2 * rng.uniform(0.38, 0.5), -math.pi / 2 + math.pi / 5)
        return np.stack([outer, inner], 1).reshape(-1, 2), None
    raise ValueError(f"unknown shape class {cls!r}; expected one of {CLASS_NAMES}")


def _render_mask(
    poly: np.ndarray, hole: np.ndarray | None, size: int
) -> tuple[np.ndarray, int, int]:
    """Rasterise a placed polygon into a boolean mask covering only its bounding crop."""
    x0, y0 = max(0, int(math.floor(poly[:, 0].min()))), max(0, int(math.floor(poly[:, 1].min())))
    x1, y1 = min(size, int(math.ceil(poly[:, 0].max())) + 1), min(size, int(math.ceil(poly[:, 1].max())) + 1)
    canvas = Image.new("L", (max(1, x1 - x0), max(1, y1 - y0)), 0)
    draw = ImageDraw.Draw(canvas)
    off = np.array([x0, y0])
    draw.polygon([tuple(p) for p in (poly - off).tolist()], fill=1)
    if hole is not None:
        draw.polygon([tuple(p) for p in (hole - off).tolist()], fill=0)
    return np.asarray(canvas, dtype=bool), x0, y0


def _rotate(pts: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def _hsv(h_deg: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h_deg % 360) / 360, s, v), dtype=np.float32)


# --------------------------------------------------------------------------- rendering
def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Gradient + low-frequency colour blotches, as float32 HxWx3 in 0..1."""
    c0 = _hsv(rng.uniform(0, 360), rng.uniform(0, 0.6), rng.uniform(0.15, 0.95))
    c1 = _hsv(rng.uniform(0, 360), rng.uniform(0, 0.6), rng.uniform(0.15, 0.95))
    theta = rng.uniform(0, 2 * math.pi)
    coords = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    ramp = coords[None, :] * math.cos(theta) + coords[:, None] * math.sin(theta) + 0.5
    img = c0 + (c1 - c0) * ramp[..., None]
    # Blotches: upsample a tiny random grid so the background is not a clean gradient.
    grid = rng.uniform(0, 255, (rng.integers(3, 8), rng.integers(3, 8), 3)).astype(np.uint8)
    blotch = np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
    return img * (1 - (a := rng.uniform(0.1, 0.45))) + blotch * a


def skimage_data_dir() -> Path:
    """scikit-image's folder of bundled images, located without importing scikit-image (seconds)."""
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if not (spec and spec.submodule_search_locations):
        raise ModuleNotFoundError(
            "shapes background 'photo' draws on the photographs bundled with scikit-image, which is not installed: "
            "pip install scikit-image (or pip install 'kdzoo[dev]'), or use background 'synthetic'")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


_PHOTOS: dict[str, list[np.ndarray]] = {}


def _photos(split: str) -> list[np.ndarray]:
    """The split's background photographs as float32 HxWx3 in 0..1 (loaded once per process)."""
    if split not in _PHOTOS:
        folder = skimage_data_dir()
        missing = [n for n in PHOTO_BACKGROUNDS[split] if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"scikit-image's photographs {missing} are missing from {folder}; expected the "
                                    "images bundled with scikit-image >= 0.19")
        _PHOTOS[split] = [np.asarray(Image.open(folder / n).convert("RGB"), dtype=np.float32) / 255
                          for n in PHOTO_BACKGROUNDS[split]]
    return _PHOTOS[split]


def _photo_background(rng: np.random.Generator, size: int, split: str) -> np.ndarray:
    """A random square crop of one of the split's photographs, resized to ``size``, as float32 HxWx3 in 0..1."""
    photos = _photos(split)
    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    side = int(round(min(h, w) * rng.uniform(0.35, 1.0)))
    y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray((photo[y0 : y0 + side, x0 : x0 + side] * 255 + 0.5).astype(np.uint8))
    img = np.asarray(crop.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255
    if rng.random() < 0.5:
        img = img[:, ::-1]
    return np.clip(img * rng.uniform(0.7, 1.3, 3).astype(np.float32), 0, 1)


def _distractors(img: Image.Image, rng: np.random.Generator, size: int) -> None:
    """Draw clutter that must NOT be detected: lines, open arcs and irregular blobs."""
    draw = ImageDraw.Draw(img)

    def colour() -> tuple[int, int, int]:
        return tuple(int(c * 255) for c in _hsv(rng.uniform(0, 360), rng.uniform(0, 1), rng.uniform(0.1, 1)))

    for _ in range(rng.integers(2, 9)):
        p = rng.uniform(0, size, 4).tolist()
        draw.line(p, fill=colour(), width=int(rng.integers(1, 4)))
    for _ in range(rng.integers(0, 4)):  # open arcs look like partial rings
        r = rng.uniform(5, size * 0.15)
        cx, cy = rng.uniform(0, size, 2)
        start = rng.uniform(0, 360)
        draw.arc([cx - r, cy - r, cx + r, cy + r], start, start + rng.uniform(60, 260), fill=colour(), width=int(rng.integers(1, 5)))
    for _ in range(rng.integers(0, 5)):
        n = int(rng.integers(7, 13))
        pts = _regular(n, 1.0, rng.uniform(0, 2 * math.pi)) * rng.uniform(0.5, 1.0, (n, 1)) * rng.uniform(4, size * 0.12)
        pts += rng.uniform(0, size, 2)
        draw.polygon([tuple(p) for p in pts.tolist()], fill=colour())


def _render_image(
    seed: int, split: str, index: int, size: int, background: str = "synthetic"
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Render one image; returns (uint8 HxWx3, [{category_id, bbox, area}])."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_KEYS[split], index]))
    canvas = _photo_background(rng, size, split) if background == "photo" else _background(rng, size)
    bg = Image.fromarray((canvas * 255).astype(np.uint8))
    _distractors(bg, rng, size)
    img = np.asarray(bg, dtype=np.float32) / 255

    owner = np.full((size, size), -1, dtype=np.int16)  # index of the top-most object per pixel
    full_area: list[int] = []
    visible: list[int] = []
    classes: list[int] = []
    crops: list[tuple[int, int, int, int]] = []
    target = int(rng.integers(3, 16))
    log_lo, log_hi = math.log(MIN_SIZE_PX), math.log(MAX_SIZE_FRAC * size)
    # Largest first: small objects then land on top of big ones, which (as in real scenes)
    # keeps big objects from being rejected for hiding the small ones behind them.
    sizes = sorted(np.exp(rng.uniform(log_lo, log_hi, target)).tolist(), reverse=True)
    for s in sizes:
        for _attempt in range(4):  # bounded retries: crowded images may end with fewer objects
            cls_idx = int(rng.integers(len(CLASSES)))
            cls, hue = CLASSES[cls_idx]
            ext = max(s, 10.0) if cls == "ring" else s  # below ~10 px a ring's hole vanishes
            poly, hole = _outline(cls, ext, rng)
            angle = rng.uniform(0, 2 * math.pi)
            poly = _rotate(poly, angle)
            hole = None if hole is None else _rotate(hole, angle)
            centre = rng.uniform(-poly.min(0), size - poly.max(0))  # whole shape inside the image
            mask, x0, y0 = _render_mask(poly + centre, None if hole is None else hole + centre, size)
            area = int(mask.sum())
            if area < 12:
                continue
            h, w = mask.shape
            region = owner[y0 : y0 + h, x0 : x0 + w]
            covered = region[mask]
            counts = np.bincount(covered[covered >= 0], minlength=len(classes))[: len(classes)]
            new_visible = np.asarray(visible, dtype=np.int64) - counts
            if (new_visible < MIN_VISIBLE_FRAC * np.asarray(full_area)).any():
                continue  # would hide an earlier object too much
            visible[:] = new_visible.tolist()
            region[mask] = len(classes)
            full_area.append(area)
            visible.append(area)
            classes.append(cls_idx)
            crops.append((x0, y0, w, h))

            if rng.random() < OFF_PALETTE_PROB:
                hue = rng.uniform(0, 360)
            base = _hsv(hue + rng.uniform(-HUE_JITTER, HUE_JITTER), rng.uniform(0.45, 1), rng.uniform(0.4, 1))
            # A linear shading ramp across the object so it is not a flat colour patch.
            ramp = np.linspace(-1, 1, w, dtype=np.float32)[None, :] * rng.uniform(-0.25, 0.25)
            shaded = np.clip(base * (1 + ramp)[..., None], 0, 1)
            sub = img[y0 : y0 + h, x0 : x0 + w]
            sub[mask] = np.broadcast_to(shaded, (h, w, 3))[mask]
            break

    img += rng.normal(0, rng.uniform(0.004, 0.025), img.shape).astype(np.float32)
    out = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)

    anns = []
    for i, (x0, y0, w, h) in enumerate(crops):
        ys, xs = np.nonzero(owner[y0 : y0 + h, x0 : x0 + w] == i)
        bx, by = x0 + int(xs.min()), y0 + int(ys.min())
        bw, bh = x0 + int(xs.max()) + 1 - bx, y0 + int(ys.max()) + 1 - by
        anns.append({"category_id": classes[i] + 1, "bbox": [float(bx), float(by), float(bw), float(bh)], "area": float(bw * bh)})
    return out, anns


def _make_one(args: tuple[int, str, int, int, str, str]) -> list[dict[str, Any]]:
    seed, split, index, size, background, out_path = args
    pixels, anns = _render_image(seed, split, index, size, background)
    # compress_level=1: noisy images barely compress better at higher levels but take 3x longer.
    Image.fromarray(pixels).save(out_path, compress_level=1)
    return anns


# --------------------------------------------------------------------------- writing
def _file_name(index: int) -> str:
    return f"{index + 1:06d}.png"


def _coco_json(split: str, size: int, per_image: list[list[dict[str, Any]]], seed: int,
               background: str = "synthetic") -> dict[str, Any]:
    images, annotations = [], []
    for i, anns in enumerate(per_image):
        images.append({"id": i + 1, "file_name": _file_name(i), "width": size, "height": size})
        for a in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "iscrowd": 0, **a})
    return {
        # No timestamps: the JSON must be byte-identical for the same seed.
        "info": {"description": f"kdzoo synthetic shapes ({split})", "version": "1.0", "seed": seed,
                 **({} if background == "synthetic" else {"background": background})},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASS_NAMES)],
    }


def _write_split(root: Path, split: str, n: int, size: int, seed: int, workers: int, background: str) -> None:
    img_dir = root / split
    img_dir.mkdir(parents=True)
    jobs = [(seed, split, i, size, background, str(img_dir / _file_name(i))) for i in range(n)]
    if workers > 1 and n > 1:
        # fork avoids re-importing the (possibly torch-heavy) parent package in each worker.
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(workers) as pool:
            per_image = pool.map(_make_one, jobs, chunksize=max(1, n // (workers * 8)))
    else:
        per_image = [_make_one(j) for j in jobs]
    with open(root / "annotations" / f"instances_{split}.json", "w") as f:
        json.dump(_coco_json(split, size, per_image, seed, background), f)


def _params(num_train: int, num_val: int, image_size: int, seed: int, background: str = "synthetic") -> dict[str, Any]:
    p: dict[str, Any] = {"num_train": num_train, "num_val": num_val, "image_size": image_size, "seed": seed, "version": 1}
    if background != "synthetic":  # absent for the default, so datasets written before the option still match
        p["background"] = background
    return p


def generate_shapes(
    out_dir: str | Path,
    *,
    num_train: int = 800,
    num_val: int = 200,
    image_size: int = 320,
    seed: int = 0,
    workers: int | None = None,
    background: str = "synthetic",
) -> Path:
    """Generate the dataset into ``out_dir`` (replacing a previous generation) and return it.

    Written into a temporary sibling directory and renamed into place, so an interrupted
    run never leaves a partial dataset at ``out_dir``. A previous generation is replaced only
    if it holds nothing but the generator's own files; a directory that is not a generated
    dataset, or one with anything else in it, raises :class:`ShapesDirectoryError` untouched.
    """
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train/num_val must be >= 0, got {num_train}/{num_val}")
    if image_size < 4 * MIN_SIZE_PX:
        raise ValueError(f"image_size must be >= {int(4 * MIN_SIZE_PX)} px, got {image_size}")
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {', '.join(map(repr, BACKGROUNDS))}, got {background!r}")
    if background == "photo":
        for split in _SPLIT_KEYS:
            _photos(split)  # a missing scikit-image is reported before anything is written
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    _check_replaceable(out)
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "annotations").mkdir()
        _write_split(tmp, "train", num_train, image_size, seed, workers, background)
        _write_split(tmp, "val", num_val, image_size, seed, workers, background)
        (tmp / META_FILE).write_text(json.dumps(_params(num_train, num_val, image_size, seed, background), sort_keys=True))
        old = None
        if out.exists():  # move the previous generation aside so the swap is a rename
            _check_replaceable(out)  # again: files may have been added while generating
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
        try:
            os.rename(tmp, out)
        except OSError:
            # Another process (e.g. another distributed rank) finished first: keep theirs.
            if not _is_complete(out):
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _is_complete(out: Path) -> bool:
    return (out / META_FILE).is_file() and all((out / "annotations" / f"instances_{s}.json").is_file() for s in _SPLIT_KEYS)


class ShapesDirectoryError(FileExistsError, ValueError):
    """The target directory holds something the generator must not replace. Also a ValueError,
    so command lines that report bad input as one ``error:`` line report this one too."""


_GENERATED_NAME = re.compile(r"\d{6}\.png")


def _is_generated(rel: tuple[str, ...]) -> bool:
    """Whether the path ``rel`` (parts, relative to the dataset root) is one the generator writes."""
    if rel == (META_FILE,):
        return True
    if len(rel) != 2:
        return False
    if rel[0] == "annotations":
        return rel[1] in {f"instances_{s}.json" for s in _SPLIT_KEYS}
    return rel[0] in _SPLIT_KEYS and _GENERATED_NAME.fullmatch(rel[1]) is not None


def _foreign_entries(out: Path) -> list[str]:
    """Files, links and folders under ``out`` that the generator did not write (relative paths)."""
    foreign: list[str] = []
    for dirpath, dirnames, filenames in os.walk(out):
        rel_dir = Path(dirpath).relative_to(out).parts
        for d in list(dirnames):
            if rel_dir or d not in ("annotations", *_SPLIT_KEYS) or (Path(dirpath) / d).is_symlink():
                foreign.append(str(Path(*rel_dir, d)) + "/")
                dirnames.remove(d)  # reported as a whole, not descended into
        foreign.extend(str(Path(*rel_dir, f)) for f in filenames
                       if not _is_generated((*rel_dir, f)) or (Path(dirpath) / f).is_symlink())
    return sorted(foreign)


def _check_replaceable(out: Path) -> None:
    """Raise unless ``out`` is absent or a previous generation holding only the generator's files."""
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or not (out / META_FILE).is_file():
        raise ShapesDirectoryError(
            f"{out} exists but is not a generated shapes dataset (no {META_FILE}); refusing to overwrite it: "
            "expected a missing directory or one written by kdzoo.data.shapes")
    foreign = _foreign_entries(out)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ShapesDirectoryError(
            f"{out} holds {len(foreign)} file(s) the shapes generator did not write ({shown}); refusing to replace "
            "the directory: move them out first, or generate into another directory")


def ensure_shapes(out_dir: str | Path, **kw: Any) -> Path:
    """Return ``out_dir``, generating it first if it is missing.

    A dataset already there that was generated with other parameters is never replaced (it
    may hold the user's files, or be read by a running job): :class:`ShapesDirectoryError`
    names the directory and every parameter that differs, old and new value.
    """
    out = Path(out_dir)
    want = _params(
        kw.get("num_train", 800), kw.get("num_val", 200), kw.get("image_size", 320), kw.get("seed", 0),
        kw.get("background", "synthetic"),
    )
    if _is_complete(out):
        try:
            have = json.loads((out / META_FILE).read_text())
        except ValueError:
            have = {}
        have = have if isinstance(have, dict) else {}
        if have == want:
            return out
        diff = "; ".join(f"{k}: {have.get(k)!r} there, {want.get(k)!r} requested"
                         for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k))
        raise ShapesDirectoryError(
            f"shapes dataset {out} was generated with other parameters ({diff}); refusing to replace it: "
            "use another directory for these parameters (a recipe's data.root), or delete this one to regenerate it")
    return generate_shapes(out, **kw)


# --------------------------------------------------------------------------- statistics
def dataset_stats(root: str | Path) -> dict[str, Any]:
    """Per-split statistics of a generated (or any COCO-format) dataset under ``root``."""
    stats: dict[str, Any] = {}
    for split in _SPLIT_KEYS:
        path = Path(root) / "annotations" / f"instances_{split}.json"
        if not path.is_file():
            continue
        d = json.loads(path.read_text())
        per_img = Counter(a["image_id"] for a in d["annotations"])
        counts = [per_img.get(im["id"], 0) for im in d["images"]]
        names = {c["id"]: c["name"] for c in d["categories"]}
        areas = np.array([a["area"] for a in d["annotations"]], dtype=np.float64)
        sides = np.array([max(a["bbox"][2], a["bbox"][3]) for a in d["annotations"]], dtype=np.float64)
        n = max(1, len(areas))
        stats[split] = {
            "images": len(d["images"]),
            "objects": len(d["annotations"]),
            "objects_per_image": {"mean": float(np.mean(counts)) if counts else 0.0, "min": min(counts, default=0), "max": max(counts, default=0)},
            # COCO rules: small < 32^2 <= medium < 96^2 <= large, on the annotation area.
            "size": {
                "small": float((areas < 32**2).sum() / n),
                "medium": float(((areas >= 32**2) & (areas < 96**2)).sum() / n),
                "large": float((areas >= 96**2).sum() / n),
            },
            "box_side_px": {q: float(np.percentile(sides, p)) if len(sides) else 0.0 for q, p in (("p10", 10), ("median", 50), ("p90", 90))},
            "classes": {names[c]: k for c, k in sorted(Counter(a["category_id"] for a in d["annotations"]).items())},
        }
    return stats


def format_stats(stats: dict[str, Any]) -> str:
    lines = []
    for split, s in stats.items():
        opi, size, side = s["objects_per_image"], s["size"], s["box_side_px"]
        lines.append(f"[{split}] {s['images']} images, {s['objects']} objects")
        lines.append(f"  objects/image: mean {opi['mean']:.2f}, min {opi['min']}, max {opi['max']}")
        lines.append(f"  size (COCO area): small {size['small']:.1%}, medium {size['medium']:.1%}, large {size['large']:.1%}")
        lines.append(f"  longest box side px: p10 {side['p10']:.0f}, median {side['median']:.0f}, p90 {side['p90']:.0f}")
        lines.append("  classes: " + ", ".join(f"{k} {v}" for k, v in s["classes"].items()))
    return "\n".join(lines)


if __name__ == "__main__":  # python -m kdzoo.data.shapes: the same as `kdzoo shapes`
    from kdzoo.cli import run_command

    sys.exit(run_command("shapes"))
