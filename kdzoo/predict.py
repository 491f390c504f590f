"""Run a detector on images and draw its boxes: ``python -m kdzoo.predict INPUTS... --model NAME``.

    python -m kdzoo.predict photos/ 'more/*.jpg' one.png --model gfl_r18.shapes --out predictions
    python -m kdzoo.predict data/shapes/val --model gfl_mnv3s.shapes_crosskd --score-thr 0.3

``--model`` is a registry name with weights (``arch.tag``), ``hf-hub:org/name``, ``local-dir:path``
or a training run directory. ``--out`` receives one annotated image per input and
``results.json``: COCO-style ``{"images", "categories", "annotations"}`` where every annotation
is a detection (``image_id``, ``file_name``, ``category_id`` (the weights' dataset ids, e.g. COCO's; else 1-based), ``category_name``,
``bbox`` xywh in pixels, ``score``); ``annotations`` loads with ``COCO.loadRes``.
Boxes, ``width`` and ``height`` are in the original image's pixels; an image longer than
``MAX_SIDE`` px is run and drawn downscaled (its ``annotated_width``/``annotated_height`` say so).

Your files are never changed: ``--out`` must not be the folder of an input image, and a file
already in ``--out`` is replaced only when an earlier ``kdzoo.predict`` run wrote it there (its
``results.json`` lists it); otherwise nothing is written and the command stops with an error.
``results.json`` holds the latest run's detections; its ``info.annotated_in_folder`` lists every
annotated image that ``kdzoo.predict`` runs have written into the folder, this one and earlier ones.
The same helpers (model loading, image reading, drawing) serve ``demo/app.py``.
"""
from __future__ import annotations

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

from .checkpoint import atomic_write

__all__ = ["PredictError", "LoadedModel", "load_model", "describe_model", "box_ap_text", "read_image", "expand_inputs",
           "detect", "draw_detections", "label_font_size", "read_image_and_size", "to_original_pixels",
           "check_output_folder", "predict_files", "IMAGE_SUFFIXES", "MAX_SIDE"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MAX_SIDE = 2048  # longer images are downscaled first: detectors resize to ~1333 px anyway, drawing stays fast


class PredictError(ValueError):
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
    from .factory import create_detector, parse_source
    from .registry import get_pretrained_cfg, list_pretrained, resolve_name

    if _is_exported(spec.strip()):  # a kdzoo.export file or folder: runs on the file's own runtime
        return load_model_for_backend(spec.strip(), None, device)
    note = ""
    try:
        source = parse_source(spec)
        if source.startswith(("hf-hub:", "local-dir:")) or get_pretrained_cfg(source).has_weights:
            model = create_detector(source, pretrained=True)
        elif allow_random and not resolve_name(source)[1]:
            from .data.shapes import CLASS_NAMES

            model = create_detector(source, num_classes=len(CLASS_NAMES), pretrained_cfg_overlay=dict(categories=CLASS_NAMES))
            note = "untrained: random weights"
        else:
            arch = resolve_name(source)[0]
            have = list_pretrained(f"{arch}*")
            hint = f"tags with weights: {', '.join(have)}" if have else "no tag of it has weights"
            raise PredictError(f"{spec!r} has no pretrained weights ({hint}); give a name with weights, "
                               "an hf-hub: id or a training run directory")
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


def box_ap_text(loaded: LoadedModel) -> str:
    """``"40.2 (COCO val2017)"`` when the weights' config records a box AP, else ``"-"``."""
    cfg = getattr(loaded.model, "pretrained_cfg", None)
    if getattr(cfg, "box_ap", None) is None:
        return "-"
    return f"{cfg.box_ap:.1f} ({cfg.ap_dataset or 'dataset not recorded'})"


def describe_model(loaded: LoadedModel) -> str:
    """One line on what is loaded: architecture, classes, the input size it resizes to, size, the
    distillation lineage and the box AP with its source when the weights' config records them."""
    model, cfg = loaded.model, getattr(loaded.model, "pretrained_cfg", None)
    arch = getattr(model, "arch_name", "") or getattr(cfg, "architecture", "") or type(model).__name__
    size = getattr(getattr(model, "transform", None), "size", None)
    parts = [f"{loaded.name}: {arch}", f"{len(loaded.categories)} classes"]
    if size:
        parts.append(f"input {size[0]}x{size[1]}")
    parts.append(f"{loaded.num_params / 1e6:.1f} M params")
    if getattr(cfg, "distill_method", None) or getattr(cfg, "teacher", None):
        parts.append(f"distilled with {cfg.distill_method or 'an unrecorded method'}"
                     + (f" from {cfg.teacher}" if cfg.teacher else ""))
    if getattr(cfg, "box_ap", None) is not None:
        parts.append(f"box AP {box_ap_text(loaded)}" + (f", {cfg.source}" if cfg.source else ""))
    else:
        parts.append("no box AP recorded for these weights")
    if loaded.note:
        parts.append(loaded.note)
    return ", ".join(parts)


# ----------------------------------------------------------------------------- images
def read_image(source: str | Path | Image.Image, max_side: int = MAX_SIDE) -> tuple[np.ndarray, str]:
    """HxWx3 uint8 RGB from any PIL-readable file (gray, RGBA, palette, 16-bit), and a notice
    (empty, or what was changed: downscaling of huge images)."""
    arr, notice, _ = read_image_and_size(source, max_side)
    return arr, notice


def read_image_and_size(source: str | Path | Image.Image,
                        max_side: int = MAX_SIDE) -> tuple[np.ndarray, str, tuple[int, int]]:
    """:func:`read_image` plus the original ``(width, height)``: the array is smaller when the image
    was downscaled, and :func:`to_original_pixels` maps its boxes back."""
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
        arr = np.array(Image.fromarray(arr).resize(size, Image.BILINEAR))
        notice = f"{Path(name).name}: resized from {w}x{h} to {size[0]}x{size[1]} (longest side limit {max_side} px)"
    return arr, notice, (int(w), int(h))


def to_original_pixels(det: dict[str, np.ndarray], shown: tuple[int, int],
                       original: tuple[int, int]) -> dict[str, np.ndarray]:
    """``det`` with its xyxy boxes mapped from an image of size ``shown`` (width, height) to the
    ``original`` one it was downscaled from, clipped to it; the same dict when the sizes agree."""
    if tuple(shown) == tuple(original):
        return det
    sx, sy = original[0] / shown[0], original[1] / shown[1]
    boxes = det["boxes"].astype(np.float64) * np.array([sx, sy, sx, sy])
    boxes = np.clip(boxes, 0, np.array([original[0], original[1]] * 2, dtype=np.float64))
    return {**det, "boxes": boxes.astype(np.float32)}


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


def label_font_size(side: int) -> int:
    """Label font size in px for a drawn image whose longer side is ``side`` px: about 1/30 of it
    (21 px on a 640 px image), at least 12 px."""
    return max(12, round(side / 30))


def draw_detections(image: np.ndarray, det: dict[str, np.ndarray], categories: Sequence[str], *,
                    min_side: int = 0) -> Image.Image:
    """The image with one box per detection and a ``name score`` label on a filled tag.

    ``min_side``: an image whose longer side is shorter is first upscaled by a whole factor (nearest
    neighbour, so every input pixel stays a block and the boxes, scaled by the same factor, stay
    exact) until it reaches it; the demo uses this to show 320 px images with readable labels.
    Labels are sized to the drawn image (:func:`label_font_size`)."""
    img = Image.fromarray(image).convert("RGB")
    scale = max(1, -(-min_side // max(img.size))) if min_side > max(img.size) else 1
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    side = max(img.size)
    width = max(1, round(side / 320))
    try:
        font = ImageFont.load_default(size=label_font_size(side))
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        font = ImageFont.load_default()
    order = np.argsort(det["scores"])  # best last: drawn on top
    for i in order:
        x0, y0, x1, y1 = (float(v) * scale for v in det["boxes"][i])
        label = int(det["labels"][i])
        colour = _colour(label)
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        name = categories[label] if label < len(categories) else f"class_{label + 1}"
        text = f"{name} {det['scores'][i]:.2f}"
        tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), text, font=font)
        tw, th = tx1 - tx0, ty1 - ty0 + 2
        top = y0 - th - 2 if y0 - th - 2 >= 0 else y0  # above the box, inside it at the top edge
        left = max(0.0, min(x0, img.width - tw - 4))  # a tag near the right edge is moved left, not cut
        draw.rectangle((left, top, left + tw + 4, top + th + 2), fill=colour)
        ink = (0, 0, 0) if 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 110 else (255, 255, 255)
        draw.text((left + 2 - tx0, top + 1 - ty0), text, fill=ink, font=font)  # dark tags get white text
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


def _output_names(files: Sequence[Path]) -> list[str]:
    """The annotated file name of each input, decided before anything is written."""
    used: set[str] = set()
    return [_output_name(Path(f), used) for f in files]


RESULTS_NAME = "results.json"


def _earlier_outputs(out: Path) -> set[str] | None:
    """Names of the annotated images an earlier run listed in ``out/results.json``; an empty set
    when there is no results.json, None when there is one that kdzoo.predict did not write."""
    path = out / RESULTS_NAME
    if not path.exists() and not path.is_symlink():
        return set()
    try:
        data = json.loads(path.read_text()) if path.is_file() and not path.is_symlink() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if not (isinstance(data, dict) and isinstance(data.get("info"), dict) and "model" in data["info"]
            and isinstance(data.get("images"), list)):
        return None
    earlier = data["info"].get("annotated_in_folder")
    return ({m["annotated"] for m in data["images"] if isinstance(m, dict) and isinstance(m.get("annotated"), str)}
            | {n for n in (earlier if isinstance(earlier, list) else []) if isinstance(n, str)})


def check_output_folder(files: Sequence[Path], out_dir: str | Path, names: Sequence[str] | None = None) -> None:
    """Raise :class:`PredictError`, before anything is written, when writing the annotated copies
    of ``files`` into ``out_dir`` would change a file kdzoo.predict did not write: ``out_dir`` is the
    folder of an input (its copies would replace the inputs), or it already holds a file with an
    output's name that no earlier run listed in its results.json."""
    out = Path(out_dir)
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise PredictError(f"--out {out} exists and is not a folder; give a folder for the annotated images")
    target = out.resolve()
    for f in files:
        f = Path(f)
        if f.parent.resolve() == target or f.resolve().parent == target:
            raise PredictError(f"--out {out} is the folder of the input image {f}: annotated copies would be "
                               "written over the inputs; choose another --out or leave that folder out of the inputs")
    if not out.is_dir():
        return
    ours = _earlier_outputs(out)
    if ours is None:
        raise PredictError(f"--out {out} holds a {RESULTS_NAME} that kdzoo.predict did not write; give another "
                           "output folder (default: predictions)")
    for name in names if names is not None else _output_names(files):
        path = out / name
        if (path.exists() or path.is_symlink()) and (name not in ours or path.is_symlink() or not path.is_file()):
            raise PredictError(f"--out {out} already holds {name}, which kdzoo.predict did not write there; "
                               "it would be overwritten: give another output folder (default: predictions)")


def _save_image(img: Image.Image, path: Path) -> None:
    fmt = Image.registered_extensions()[path.suffix.lower()]
    atomic_write(path, lambda tmp: img.save(tmp, format=fmt))


def predict_files(files: Sequence[Path], loaded: LoadedModel, out_dir: str | Path, *, score_thr: float = 0.3,
                  device: str = "cpu", batch_size: int = 4, progress: bool = True) -> dict[str, Any]:
    """Annotate ``files`` into ``out_dir`` and write ``out_dir/results.json``; returns its content plus
    ``"skipped"`` (unreadable files with the reason) and ``"notices"`` (resized images).
    Boxes and sizes are in each original image's pixels. Refuses (:class:`PredictError`, nothing
    written) when a file of the user's would be overwritten: see :func:`check_output_folder`."""
    from tqdm import tqdm

    if batch_size < 1:
        raise PredictError(f"--batch-size must be >= 1, got {batch_size}")
    out = Path(out_dir)
    names = _output_names(files)
    check_output_folder(files, out, names)
    earlier = _earlier_outputs(out) or set()
    out.mkdir(parents=True, exist_ok=True)
    images_meta, annotations, skipped, notices = [], [], [], []
    bar = tqdm(total=len(files), unit="img", disable=not progress or len(files) < 2, file=sys.stderr)
    for start in range(0, len(files), batch_size):
        batch = []
        for path, name in zip(files[start:start + batch_size], names[start:start + batch_size]):
            try:
                arr, notice, size = read_image_and_size(path)
            except PredictError as e:
                skipped.append({"file": str(path), "error": str(e)})
                bar.update(1)
                continue
            if notice:
                notices.append(f"{notice}; the annotated copy is drawn at that size, {RESULTS_NAME} is in "
                               "the original's pixels")
            batch.append((path, name, arr, size))
        if batch:
            dets, _ = detect(loaded, [a for _, _, a, _ in batch], score_thr, device)
            for (path, name, arr, (width, height)), det in zip(batch, dets):
                image_id = len(images_meta) + 1
                _save_image(draw_detections(arr, det, loaded.categories), out / name)
                images_meta.append({"id": image_id, "file_name": str(path), "annotated": name,
                                    "width": width, "height": height,
                                    "annotated_width": int(arr.shape[1]), "annotated_height": int(arr.shape[0])})
                det = to_original_pixels(det, (arr.shape[1], arr.shape[0]), (width, height))
                annotations += _coco_annotations(det, image_id, str(path), loaded, len(annotations) + 1)
                bar.update(1)
    bar.close()
    in_folder = sorted(earlier | {m["annotated"] for m in images_meta})
    result = {"info": {"model": loaded.name, "score_thr": score_thr, "annotated_in_folder": in_folder},
              "images": images_meta,
              "categories": [{"id": loaded.category_id(i), "name": n} for i, n in enumerate(loaded.categories)],
              "annotations": annotations}
    text = json.dumps(result, indent=1) + "\n"
    atomic_write(out / RESULTS_NAME, lambda tmp: tmp.write_text(text))
    return {**result, "skipped": skipped, "notices": notices}


def check_device(device: str) -> str:
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise PredictError(f"--device {device!r} is not a device name (cpu, cuda, cuda:1, mps)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PredictError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return device


# ----------------------------------------------------------------------------- exported models (kdzoo.export)
BACKENDS = ("torch", "onnxruntime", "openvino")


def _is_exported(spec: str) -> bool:
    """An exported file or folder, or a path that names one (so that a missing file says so)."""
    from .export import is_exported_path

    return is_exported_path(spec) or Path(spec).suffix.lower() in (".onnx", ".pt2", ".xml")


def load_model_for_backend(spec: str, backend: str | None = "torch", device: str | torch.device = "cpu", *,
                           allow_random: bool = False) -> LoadedModel:
    """:func:`load_model` for a runtime. ``'torch'`` (or None): the eager model, except that an exported
    file (``.onnx``/``.pt2``/``.xml`` or a ``kdzoo.export`` folder) runs on its own runtime;
    ``'onnxruntime'``/``'openvino'``: an exported file or folder, or any model ``load_model`` accepts,
    exported on the fly (no parity check: ``python -m kdzoo.export`` runs one). Detections come back
    in the eager format, in original image pixels; the score threshold inside an exported graph is the
    one it was exported with (0.05 by default)."""
    from .export import BACKENDS as EXPORT_BACKENDS, ExportError, export, load_exported

    backend = None if backend in (None, "torch") and _is_exported(spec) else backend
    if backend == "torch":
        return load_model(spec, device, allow_random=allow_random)
    if backend is not None and backend not in EXPORT_BACKENDS:
        raise PredictError(f"unknown backend {backend!r}; choose one of: {', '.join(EXPORT_BACKENDS)}")
    try:
        if _is_exported(spec):
            model = load_exported(spec, backend)
        else:
            import tempfile

            eager = load_model(spec, "cpu", allow_random=allow_random)
            with tempfile.TemporaryDirectory(prefix="kdzoo-export-") as tmp:
                fmt = "openvino" if backend == "openvino" else "onnx"
                path = export(eager.model, tmp, fmt, dynamic_batch=True, check=False, name=spec).path
                model = load_exported(path, backend)
    except ExportError as e:
        raise PredictError(str(e)) from e
    meta = model.metadata
    note = f"exported ({meta.get('format', '?')}), running on {model.backend}"
    return LoadedModel(spec, model, list(meta.get("classes") or [f"class_{i + 1}" for i in range(model.num_classes)]),
                       model.num_params, note, list(meta.get("category_ids") or []) or None)


if __name__ == "__main__":  # python -m kdzoo.predict: the same as `kdzoo predict`
    from kdzoo.cli import run_command

    sys.exit(run_command("predict"))
