"""Run a detector on images and draw its boxes: ``python -m kdzoo.predict INPUTS... --model NAME``.

    python -m kdzoo.predict photos/ 'more/*.jpg' one.png --model gfl_r18.shapes --out predictions
    python -m kdzoo.predict data/shapes/val --model gfl_mnv3s.shapes_crosskd --score-thr 0.3

``--model`` is a registry name with weights (``arch.tag``), ``hf-hub:org/name``, ``local-dir:path``
or a training run directory. ``--out`` receives one annotated image per input and
``results.json``: COCO-style ``{"images", "categories", "annotations"}`` where every annotation
is a detection (``image_id``, ``file_name``, ``category_id`` (the weights' dataset ids, e.g. COCO's; else 1-based), ``category_name``,
``bbox`` xywh in pixels, ``score``); ``annotations`` loads with ``COCO.loadRes``.
The same helpers (model loading, image reading, drawing) serve ``demo/app.py``.
"""
from __future__ import annotations

import argparse
import colorsys
import contextlib
import dataclasses
import glob
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

__all__ = ["PredictError", "LoadedModel", "load_model", "read_image", "expand_inputs", "detect", "draw_detections",
           "predict_files", "main", "IMAGE_SUFFIXES", "MAX_SIDE"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MAX_SIDE = 2048  # longer images are downscaled first: detectors resize to ~1333 px anyway, drawing stays fast


class PredictError(Exception):
    """A problem with the user's input (model name, image files) that deserves a one-line message."""


@dataclass
class LoadedModel:
    name: str
    model: nn.Module
    categories: list[str]
    num_params: int
    note: str = ""  # e.g. "untrained: random weights"
    category_ids: list[int] | None = None  # results-file id of each class index (COCO's); None: index + 1

    def category_id(self, label: int) -> int:
        return self.category_ids[label] if self.category_ids else label + 1


# ----------------------------------------------------------------------------- models
def _categories(model: nn.Module) -> list[str]:
    cfg = getattr(model, "pretrained_cfg", None)
    names = list(getattr(cfg, "categories", ()) or ())
    return names if len(names) == model.num_classes else [f"class_{i + 1}" for i in range(model.num_classes)]


def _category_ids(model: nn.Module) -> list[int] | None:
    ids = list(getattr(getattr(model, "pretrained_cfg", None), "category_ids", ()) or ())
    return ids if len(ids) == model.num_classes else None


def load_model(spec: str, device: str | torch.device = "cpu", *, allow_random: bool = False) -> LoadedModel:
    """A registry name with weights, ``hf-hub:``/``local-dir:``, or a run directory, in eval mode.

    ``allow_random``: a registry architecture without weights is built untrained with the shapes
    classes (the demo shows it; it finds nothing) instead of raising.
    """
    from . import create_detector, get_pretrained_cfg, list_pretrained
    from .registry import is_detector, split_name

    spec = spec.strip()
    if not spec:
        raise PredictError("empty model name")
    note = ""
    try:
        path = Path(spec).expanduser()
        if spec.startswith(("hf-hub:", "local-dir:")):
            model = create_detector(spec, pretrained=True)
        elif path.is_dir():
            if not (path / "config.json").is_file():
                raise PredictError(f"{spec!r} is a directory but not a kdzoo run directory (no config.json + "
                                   "model.safetensors; training writes them when it finishes)")
            model = create_detector(f"local-dir:{path}", pretrained=True)
        elif is_detector(split_name(spec)[0]):
            if get_pretrained_cfg(spec).has_weights:
                model = create_detector(spec, pretrained=True)
            elif allow_random and not split_name(spec)[1]:
                from .data.shapes import CLASS_NAMES

                model = create_detector(spec, num_classes=len(CLASS_NAMES),
                                        pretrained_cfg_overlay=dict(categories=CLASS_NAMES))
                note = "untrained: random weights"
            else:
                have = list_pretrained(f"{split_name(spec)[0]}*")
                hint = f"tags with weights: {', '.join(have)}" if have else "no tag of it has weights"
                raise PredictError(f"{spec!r} has no pretrained weights ({hint}); give a name with weights, "
                                   "an hf-hub: id or a training run directory")
        elif "/" in spec or spec.startswith((".", "~")):
            raise PredictError(f"{spec!r}: no such run directory")
        else:
            create_detector(spec)  # raises the registry's KeyError with close matches
            raise AssertionError("unreachable")
    except PredictError:
        raise
    except KeyError as e:
        raise PredictError(str(e.args[0]) if e.args else str(e)) from e
    except Exception as e:  # download failures, corrupt files, mismatched checkpoints
        raise PredictError(f"cannot load model {spec!r}: {e}") from e
    try:
        model = model.to(device).eval()
    except (RuntimeError, AssertionError) as e:
        raise PredictError(f"cannot move the model to device {str(device)!r}: {e}") from e
    params = sum(p.numel() for p in model.parameters())
    return LoadedModel(spec, model, _categories(model), params, note, _category_ids(model))


# ----------------------------------------------------------------------------- images
def read_image(source: str | Path | Image.Image, max_side: int = MAX_SIDE) -> tuple[np.ndarray, str]:
    """HxWx3 uint8 RGB from any PIL-readable file (gray, RGBA, palette, 16-bit), and a notice
    (empty, or what was changed: downscaling of huge images)."""
    from .data.coco import _to_rgb8  # the training loader's mode handling (16-bit rescaled, alpha dropped)

    name = getattr(source, "name", None) or str(source)
    try:
        if isinstance(source, Image.Image):
            img = source
        else:
            path = Path(source)
            if not path.is_file():
                raise PredictError(f"{name}: no such file")
            img = Image.open(path)
        img.load()
        if hasattr(img, "n_frames") and img.n_frames > 1:
            img.seek(0)  # animated GIF/multi-page TIFF: the first frame
        arr = _to_rgb8(img)
    except PredictError:
        raise
    except Image.DecompressionBombError as e:  # PIL refuses > 2x MAX_IMAGE_PIXELS (about 179 MP)
        raise PredictError(f"{Path(name).name} is too large to decode safely: {e}") from e
    except UnidentifiedImageError as e:
        raise PredictError(f"{Path(name).name} is not a readable image (unknown file format)") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise PredictError(f"{Path(name).name} is not a readable image ({type(e).__name__}: {e})") from e
    notice = ""
    h, w = arr.shape[:2]
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        arr = np.asarray(Image.fromarray(arr).resize(size, Image.BILINEAR))
        notice = f"{Path(name).name}: resized from {w}x{h} to {size[0]}x{size[1]} (longest side limit {max_side} px)"
    return arr, notice


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files as given, folders' image files (sorted), and glob matches; duplicates dropped."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise PredictError(f"folder {item!r} contains no image files ({', '.join(IMAGE_SUFFIXES)})")
        elif p.is_file():
            found = [p]
        else:
            found = sorted(Path(m) for m in glob.glob(str(p), recursive=True)
                           if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise PredictError(f"no image files match {item!r}")
        files.extend(found)
    seen: set[Path] = set()
    return [f for f in files if not (f.resolve() in seen or seen.add(f.resolve()))]


# ----------------------------------------------------------------------------- inference
@contextlib.contextmanager
def _score_floor(model: nn.Module, score_thr: float) -> Iterator[None]:
    """Lower the heads' built-in score threshold (0.05) when the caller asks for a lower one, so
    ``score_thr=0`` really returns the low-scoring boxes; restored afterwards."""
    saved = []
    for m in model.modules():
        cfg = getattr(m, "test_cfg", None)
        if dataclasses.is_dataclass(cfg) and hasattr(cfg, "score_thr") and score_thr < cfg.score_thr:
            saved.append((m, cfg))
            m.test_cfg = dataclasses.replace(cfg, score_thr=score_thr)
    try:
        yield
    finally:
        for m, cfg in saved:
            m.test_cfg = cfg


@torch.inference_mode()
def detect(loaded: LoadedModel, images: list[np.ndarray], score_thr: float = 0.3,
           device: str | torch.device = "cpu") -> tuple[list[dict[str, np.ndarray]], float]:
    """Detections ``{"boxes" xyxy, "scores", "labels" 0-based}`` per image with score >= ``score_thr``,
    and the model's wall time in seconds."""
    tensors = [torch.from_numpy(a).to(device).permute(2, 0, 1).float().div_(255) for a in images]
    with _score_floor(loaded.model, score_thr):
        start = time.perf_counter()
        outputs = loaded.model(tensors)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    results = []
    for out in outputs:
        keep = out["scores"] >= score_thr
        results.append({k: out[k][keep].float().cpu().numpy() if k != "labels" else out[k][keep].cpu().numpy()
                        for k in ("boxes", "scores", "labels")})
    return results, elapsed


def _colour(label: int) -> tuple[int, int, int]:
    h = (label * 0.618033988749895) % 1.0  # golden-ratio hues: neighbouring classes differ clearly
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: np.ndarray, det: dict[str, np.ndarray], categories: Sequence[str]) -> Image.Image:
    """The image with one box per detection and a ``name score`` label on a filled tag."""
    img = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(img)
    side = max(img.size)
    width = max(1, round(side / 320))
    try:
        font = ImageFont.load_default(size=max(10, round(side / 40)))
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        font = ImageFont.load_default()
    order = np.argsort(det["scores"])  # best last: drawn on top
    for i in order:
        x0, y0, x1, y1 = (float(v) for v in det["boxes"][i])
        label = int(det["labels"][i])
        colour = _colour(label)
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        name = categories[label] if label < len(categories) else f"class_{label + 1}"
        text = f"{name} {det['scores'][i]:.2f}"
        tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), text, font=font)
        tw, th = tx1 - tx0, ty1 - ty0 + 2
        top = y0 - th - 2 if y0 - th - 2 >= 0 else y0  # above the box, inside it at the top edge
        draw.rectangle((x0, top, x0 + tw + 4, top + th + 2), fill=colour)
        draw.text((x0 + 2 - tx0, top + 1 - ty0), text, fill=(0, 0, 0), font=font)
    return img


def _coco_annotations(det: dict[str, np.ndarray], image_id: int, file_name: str, loaded: LoadedModel,
                      first_id: int) -> list[dict[str, Any]]:
    anns = []
    for j, (box, score, label) in enumerate(zip(det["boxes"], det["scores"], det["labels"])):
        x0, y0, x1, y1 = (float(v) for v in box)
        anns.append({"id": first_id + j, "image_id": image_id, "file_name": file_name,
                     "category_id": loaded.category_id(int(label)), "category_name": loaded.categories[int(label)],
                     "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                     "area": round((x1 - x0) * (y1 - y0), 2), "score": round(float(score), 5)})
    return anns


def _output_name(path: Path, used: set[str]) -> str:
    suffix = path.suffix.lower() if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp") else ".png"
    name, n = f"{path.stem}{suffix}", 1
    while name in used:  # same file name from two folders
        name, n = f"{path.stem}_{n}{suffix}", n + 1
    used.add(name)
    return name


def predict_files(files: Sequence[Path], loaded: LoadedModel, out_dir: str | Path, *, score_thr: float = 0.3,
                  device: str = "cpu", batch_size: int = 4, progress: bool = True) -> dict[str, Any]:
    """Annotate ``files`` into ``out_dir`` and write ``out_dir/results.json``; returns its content plus
    ``"skipped"`` (unreadable files with the reason) and ``"notices"`` (resized images)."""
    from tqdm import tqdm

    if batch_size < 1:
        raise PredictError(f"--batch-size must be >= 1, got {batch_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images_meta, annotations, skipped, notices, used = [], [], [], [], set()
    bar = tqdm(total=len(files), unit="img", disable=not progress or len(files) < 2, file=sys.stderr)
    for start in range(0, len(files), batch_size):
        batch = []
        for path in files[start:start + batch_size]:
            try:
                arr, notice = read_image(path)
            except PredictError as e:
                skipped.append({"file": str(path), "error": str(e)})
                bar.update(1)
                continue
            if notice:
                notices.append(notice)
            batch.append((path, arr))
        if batch:
            dets, _ = detect(loaded, [a for _, a in batch], score_thr, device)
            for (path, arr), det in zip(batch, dets):
                image_id = len(images_meta) + 1
                name = _output_name(path, used)
                draw_detections(arr, det, loaded.categories).save(out / name)
                images_meta.append({"id": image_id, "file_name": str(path), "annotated": name,
                                    "width": int(arr.shape[1]), "height": int(arr.shape[0])})
                annotations += _coco_annotations(det, image_id, str(path), loaded, len(annotations) + 1)
                bar.update(1)
    bar.close()
    result = {"info": {"model": loaded.name, "score_thr": score_thr},
              "images": images_meta,
              "categories": [{"id": loaded.category_id(i), "name": n} for i, n in enumerate(loaded.categories)],
              "annotations": annotations}
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    return {**result, "skipped": skipped, "notices": notices}


def _check_device(device: str) -> str:
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise PredictError(f"--device {device!r} is not a device name (cpu, cuda, cuda:1, mps)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PredictError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return device


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kdzoo.predict", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns (quote them)")
    p.add_argument("--model", required=True, help="registry name (arch.tag), hf-hub:org/name, or a run directory")
    p.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    p.add_argument("--score-thr", type=float, default=0.3, help="keep detections scoring at least this (default 0.3)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args(argv)
    try:
        if not 0.0 <= args.score_thr <= 1.0:
            raise PredictError(f"--score-thr must be in [0, 1], got {args.score_thr}")
        device = _check_device(args.device)
        files = expand_inputs(args.inputs)
        loaded = load_model(args.model, device)
        result = predict_files(files, loaded, args.out, score_thr=args.score_thr, device=device,
                               batch_size=args.batch_size)
    except PredictError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for notice in result["notices"]:
        print(f"note: {notice}", file=sys.stderr)
    for s in result["skipped"]:
        print(f"skipped: {s['error']}", file=sys.stderr)
    print(f"{len(result['images'])} image(s), {len(result['annotations'])} detection(s) >= {args.score_thr} "
          f"-> {Path(args.out) / 'results.json'}")
    if result["skipped"] and not result["images"]:
        return 2
    return 1 if result["skipped"] else 0


if __name__ == "__main__":
    sys.exit(main())
