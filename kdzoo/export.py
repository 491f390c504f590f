"""Export a kdzoo detector to ONNX, ``torch.export`` (``.pt2``) or OpenVINO IR, and run the exported file.

    python -m kdzoo.export gfl_r10t.shapes --format onnx --out exported/gfl_r10t
    python -m kdzoo.predict photos/ --model exported/gfl_r10t/model.onnx --backend onnxruntime

``MODEL`` is anything ``kdzoo.predict`` accepts (``arch.tag`` with weights, ``hf-hub:``,
``local-dir:``, a training run directory). The graph is :class:`kdzoo.export_path.ExportableDetector`:

* inputs ``images`` float32 ``[N, 3, H, W]`` RGB in 0..1, keep-ratio resized to the model's input
  size (long, short) and zero-padded bottom/right to multiples of 32; ``image_sizes`` int64
  ``[N, 2]``, each image's (h, w) before padding. Normalisation (and the BGR flip of caffe-style
  models) happens inside the graph. ``H``/``W`` are dynamic unless ``--fixed-size``; the batch is 1
  unless ``--dynamic-batch``. A ``.pt2`` program checks that every FPN level has at least two rows
  and columns, so its inputs are padded to at least ``PT2_MIN_SIDE`` (160) pixels per side (only an
  image thinner than that after resizing is affected).
* outputs ``boxes`` ``[N, M, 4]`` (xyxy, input pixels), ``scores`` ``[N, M]``, ``labels`` ``[N, M]``
  (0-based, -1 on padding rows), ``num_dets`` ``[N]``; ``M`` = ``max_per_img``.

The contract, classes and versions are stored in the file (ONNX ``metadata_props`` key
``kdzoo``, ``.pt2`` extra file ``kdzoo.json``, OpenVINO ``rt_info`` ``kdzoo``) and in
``kdzoo_export.json`` next to it. :func:`load_exported` wraps an exported file so that
``model(list_of_images)`` returns what the eager model returns (``[{boxes, scores, labels}]`` in
each image's own pixels): the keep-ratio resize, padding and the mapping back happen around the
graph, exactly as :class:`kdzoo.transform.DetectionTransform` does them.

After exporting, the command runs the exported file with its runtime on sample images and
compares with the eager model; a mismatch fails the export (exit status 1) with the largest box
and score differences.

``--fp16`` runs backbone, neck and heads in half precision (inputs, decoding and NMS stay fp32) and
is meant for GPU runtimes; for OpenVINO it stores fp16-compressed weights and the CPU still computes
in fp32. Its parity check compares detections scoring at least 0.3, within 2 px and 0.02.

Note: ``kdzoo.export`` (the package attribute) is the :func:`export` function; this module is
``sys.modules["kdzoo.export"]`` (``from kdzoo.export import load_exported`` works as usual).
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .export_path import INPUT_NAMES, OUTPUT_NAMES, ExportableDetector
from .transform import check_images as _check_image_list, keep_ratio_size

__all__ = ["export", "load_exported", "is_exported_path", "ExportError", "ExportResult", "ExportedDetector",
           "ParityReport", "ParityError", "compare_detections", "sample_images", "check_format", "FORMATS", "BACKENDS"]

FORMATS = ("onnx", "torch", "openvino")
BACKENDS = ("torch", "onnxruntime", "openvino")
FILE_NAMES = {"onnx": "model.onnx", "torch": "model.pt2", "openvino": "model.xml"}
SIDE_FILE = "kdzoo_export.json"
METADATA_KEY = "kdzoo"
DEFAULT_OPSET = 18
MAX_BATCH = 64
MAX_SIDE_CELLS = 128  # dynamic H/W up to 128 x 32 = 4096 px
# torch.export specialises memory-layout decisions on whether a feature map has one row/column; the
# example traced has at least two on every level (P7 at stride 128), and a .pt2 program checks it:
# its inputs are padded to at least this many pixels per side (ONNX/OpenVINO graphs have no such check).
PT2_MIN_SIDE = 160
# Parity tolerances of the export check (fp32): boxes in original pixels, scores absolute.
BOX_TOL, SCORE_TOL = 1e-3, 1e-4
# fp16: detections scoring >= FP16_MIN_SCORE must find a same-class partner within these tolerances.
FP16_BOX_TOL, FP16_SCORE_TOL, FP16_MIN_SCORE = 2.0, 2e-2, 0.3


class ExportError(ValueError):
    """A problem the user can fix (bad format, missing package, unreadable file, parity failure)."""


_PACKAGES = {
    "onnx": ("onnx", "onnxscript"),
    "onnxruntime": ("onnxruntime",),
    "openvino": ("openvino",),
}
_EXTRAS = {"onnx": "export", "onnxruntime": "export", "openvino": "openvino"}


def _require(what: str) -> dict[str, Any]:
    """Import the optional packages ``what`` needs, or raise naming the extra that installs them."""
    mods = {}
    for name in _PACKAGES[what]:
        try:
            mods[name] = importlib.import_module(name)
        except ImportError as e:
            extra = _EXTRAS[what]
            raise ExportError(f"{what} needs the {name!r} package, which is not installed: "
                              f"pip install 'kdzoo[{extra}]'") from e
    return mods


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return fmt


# ----------------------------------------------------------------------------- metadata
def _version() -> str:
    from . import __version__

    return __version__


def build_metadata(model: nn.Module, exportable: ExportableDetector, *, fmt: str, name: str, input_size: tuple[int, int],
                   dynamic_batch: bool, canvas: tuple[int, int] | None, fp16: bool, opset: int | None) -> dict[str, Any]:
    cfg = getattr(model, "pretrained_cfg", None)
    t = model.transform
    from .predict import _categories, _category_ids

    return {
        "kdzoo_version": _version(),
        "torch_version": torch.__version__,
        "format": fmt,
        "model": name,
        "architecture": getattr(model, "arch_name", "") or getattr(cfg, "architecture", ""),
        "tag": getattr(cfg, "tag", "") or "",
        "num_classes": int(model.num_classes),
        "classes": _categories(model),
        "category_ids": _category_ids(model),
        "num_params": int(sum(p.numel() for p in model.parameters())),
        "opset": opset,
        "precision": "fp16" if fp16 else "fp32",
        "input": {
            "names": list(INPUT_NAMES),
            "images": "float32 [N, 3, H, W], RGB, values in 0..1, keep-ratio resized into (long, short) = resize, "
                      "zero-padded bottom/right to multiples of size_divisor (or to canvas)",
            "image_sizes": "int64 [N, 2]: each image's (h, w) after resizing, before padding",
            "layout": "NCHW",
            "channel_order": "RGB",
            "value_range": [0.0, 1.0],
            "normalization": "inside the graph" + (" (RGB -> BGR flip first)" if t.bgr else ""),
            "mean_255": [round(float(v) * 255, 4) for v in t.mean.flatten()],
            "std_255": [round(float(v) * 255, 4) for v in t.std.flatten()],
            "resize": [int(input_size[0]), int(input_size[1])],
            "size_divisor": int(t.size_divisor),
            "canvas": list(canvas) if canvas else None,
            "min_size": None,
            "dynamic_batch": bool(dynamic_batch),
            "batch_size": None if dynamic_batch else 1,
        },
        "outputs": {
            "names": list(OUTPUT_NAMES),
            "boxes": "float32 [N, M, 4] xyxy in input (resized) pixels, clipped to image_sizes",
            "scores": "float32 [N, M], best first",
            "labels": "int64 [N, M], 0-based class indices; -1 on padding rows",
            "num_dets": "int64 [N]: rows past it are padding (boxes and scores 0)",
            "max_per_img": exportable.max_per_img,
        },
        "postprocess": {"score_thr": exportable.score_thr, **_nms_settings(model)},
    }


def _nms_settings(model: nn.Module) -> dict[str, Any]:
    if hasattr(model, "roi_head"):
        rpn, rcnn = model.rpn_head.test_cfg, model.roi_head.test_cfg
        return {"rpn_nms_pre": rpn.nms_pre, "rpn_max_per_img": rpn.max_per_img, "rpn_nms_iou": rpn.nms_iou,
                "nms_iou": rcnn.nms_iou}
    cfg = model.bbox_head.test_cfg
    return {"nms_pre": cfg.nms_pre, "nms_iou": cfg.nms_iou, "min_bbox_size": cfg.min_bbox_size}


# ----------------------------------------------------------------------------- pre/post-processing
@dataclass
class PreparedBatch:
    images: torch.Tensor  # [N, 3, H, W] 0..1, padded
    image_sizes: torch.Tensor  # [N, 2] int64
    scales: list[tuple[float, float]]  # (sx, sy) resized / original
    original_sizes: list[tuple[int, int]]


def prepare_batch(images: Sequence[torch.Tensor], resize: tuple[int, int], size_divisor: int = 32,
                  canvas: tuple[int, int] | None = None, min_size: tuple[int, int] | None = None) -> PreparedBatch:
    """The eager transform's resize and padding, without normalisation: the same ``F.interpolate``
    call, padded to the batch's largest size rounded up to ``size_divisor`` (and to at least
    ``min_size``), or to ``canvas`` (an image whose keep-ratio size does not fit the canvas is scaled
    down to fit it)."""
    _check_image_list(list(images))
    resized, sizes, scales = [], [], []
    for img in images:
        h, w = img.shape[-2:]
        nh, nw = keep_ratio_size(h, w, *resize)
        if canvas is not None and (nh > canvas[0] or nw > canvas[1]):
            s = min(canvas[0] / h, canvas[1] / w)
            nh, nw = min(canvas[0], int(h * s + 0.5)), min(canvas[1], int(w * s + 0.5))
        x = img.float()
        if (nh, nw) != (h, w):
            x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        resized.append(x)
        sizes.append((nh, nw))
        scales.append((nw / w, nh / h))
    if canvas is None:
        d = size_divisor
        H = -(-max(s[0] for s in sizes) // d) * d
        W = -(-max(s[1] for s in sizes) // d) * d
        if min_size:
            H, W = max(H, min_size[0]), max(W, min_size[1])
    else:
        H, W = canvas
    batch = torch.stack([F.pad(x, (0, W - x.shape[2], 0, H - x.shape[1])) for x in resized])
    return PreparedBatch(batch, torch.tensor(sizes, dtype=torch.int64), scales, [tuple(i.shape[-2:]) for i in images])


def to_detections(outputs: Sequence[Any], batch: PreparedBatch) -> list[dict[str, torch.Tensor]]:
    """Graph outputs -> ``[{boxes, scores, labels}]`` in each original image's pixels (the eager
    ``DetectionTransform.postprocess``)."""
    boxes, scores, labels, num = (torch.as_tensor(np.asarray(o)) if not isinstance(o, torch.Tensor) else o
                                  for o in outputs)
    out = []
    for i, ((sx, sy), (h, w)) in enumerate(zip(batch.scales, batch.original_sizes)):
        n = int(num[i])
        b = boxes[i, :n].float() / boxes.new_tensor([sx, sy, sx, sy]).float()
        b[:, 0::2] = b[:, 0::2].clamp(0, w)
        b[:, 1::2] = b[:, 1::2].clamp(0, h)
        out.append({"boxes": b, "scores": scores[i, :n].float(), "labels": labels[i, :n].long()})
    return out


# ----------------------------------------------------------------------------- runtimes
class _OrtRunner:
    backend = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        ort = _require("onnxruntime")["onnxruntime"]
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, images: torch.Tensor, sizes: torch.Tensor):
        return self.session.run(list(OUTPUT_NAMES), {"images": images.numpy(), "image_sizes": sizes.numpy()})


class _OpenVinoRunner:
    backend = "openvino"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        ov = _require("openvino")["openvino"]
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": int(threads)} if threads else {}
        # Same arithmetic as the eager model (OpenVINO's CPU plugin may otherwise pick bf16 on AMX/AVX-512 CPUs).
        config["INFERENCE_PRECISION_HINT"] = "f32"
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.outputs = [self.compiled.output(n) for n in OUTPUT_NAMES]

    def __call__(self, images: torch.Tensor, sizes: torch.Tensor):
        result = self.compiled({"images": images.numpy(), "image_sizes": sizes.numpy()})
        return [result[o] for o in self.outputs]


class _TorchExportRunner:
    backend = "torch"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import torchvision  # noqa: F401  (registers torchvision::nms/roi_align, which the program calls)

        self.module = torch.export.load(str(path)).module()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, sizes: torch.Tensor):
        return self.module(images, sizes)


_RUNNERS = {"onnxruntime": _OrtRunner, "openvino": _OpenVinoRunner, "torch": _TorchExportRunner}


class ExportedDetector(nn.Module):
    """An exported file behaving like an eager kdzoo detector in eval mode: ``model(images)`` with
    ``images`` a list of ``[3, H, W]`` float tensors in 0..1 returns ``[{boxes, scores, labels}]``
    in each image's own pixels. ``num_classes``, ``pretrained_cfg`` (classes, category ids) and
    ``metadata`` (the file's) describe it; it has no parameters (``num_params`` is the original's)."""

    def __init__(self, runner: Any, metadata: dict[str, Any], path: Path) -> None:
        super().__init__()
        from .pretrained import PretrainedCfg

        self.runner = runner
        self.metadata = metadata
        self.path = Path(path)
        self.backend = runner.backend
        inp = metadata["input"]
        self.resize = tuple(inp["resize"])
        self.size_divisor = int(inp.get("size_divisor", 32))
        self.canvas = tuple(inp["canvas"]) if inp.get("canvas") else None
        self.min_size = tuple(inp["min_size"]) if inp.get("min_size") else None
        self.dynamic_batch = bool(inp.get("dynamic_batch"))
        self.num_classes = int(metadata["num_classes"])
        self.num_params = int(metadata.get("num_params", 0))
        self.arch_name = metadata.get("architecture", "")
        self.pretrained_cfg = PretrainedCfg(
            architecture=self.arch_name, tag=metadata.get("tag", ""), num_classes=self.num_classes,
            categories=tuple(metadata.get("classes") or ()), category_ids=tuple(metadata.get("category_ids") or ()),
            input_size=self.resize)
        self.eval()

    def run_batch(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        batch = prepare_batch(images, self.resize, self.size_divisor, self.canvas, self.min_size)
        return to_detections(self.runner(batch.images.contiguous(), batch.image_sizes), batch)

    @torch.no_grad()
    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None) -> list[dict[str, torch.Tensor]]:
        if targets is not None or self.training:
            raise RuntimeError("an exported detector runs inference only (no targets, no training mode)")
        _check_image_list(images)
        images = [img.detach().cpu() for img in images]
        if self.dynamic_batch:  # the graph takes at most MAX_BATCH images: larger batches run in chunks
            return [det for i in range(0, len(images), MAX_BATCH) for det in self.run_batch(images[i:i + MAX_BATCH])]
        return [det for img in images for det in self.run_batch([img])]

    @property
    def graph_limits(self) -> tuple[float | None, int | None]:
        """(score threshold, max detections an image) fixed in the graph at export time."""
        return self.metadata.get("postprocess", {}).get("score_thr"), self.metadata.get("outputs", {}).get("max_per_img")

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, backend={self.backend!r}, architecture={self.arch_name!r}"


def is_exported_path(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names an exported file (``.onnx``, ``.pt2``, OpenVINO ``.xml``) or a folder
    written by ``kdzoo.export`` (with ``kdzoo_export.json``)."""
    p = Path(str(spec)).expanduser()
    if p.is_file():
        return p.suffix.lower() in (".onnx", ".pt2", ".xml")
    return p.is_dir() and (p / SIDE_FILE).is_file()


def ov_text(value) -> str:
    """The text of an OpenVINO ``rt_info`` entry (``str()`` of an ``OVAny`` is its class name in recent releases)."""
    return value.astype(str) if hasattr(value, "astype") else str(value)


def _read_metadata(path: Path) -> dict[str, Any]:
    """The metadata stored in the file, else the side file next to it."""
    suffix = path.suffix.lower()
    raw = None
    try:
        if suffix == ".onnx":
            onnx = _require("onnx")["onnx"]
            m = onnx.load(str(path), load_external_data=False)
            raw = next((p.value for p in m.metadata_props if p.key == METADATA_KEY), None)
        elif suffix == ".pt2":
            import zipfile

            with zipfile.ZipFile(path) as z:
                hits = [n for n in z.namelist() if n.endswith(f"extra/{METADATA_KEY}.json")]
                raw = z.read(hits[0]).decode() if hits else None
        elif suffix == ".xml":
            ov = _require("openvino")["openvino"]
            model = ov.Core().read_model(str(path))
            if model.has_rt_info([METADATA_KEY]):
                raw = ov_text(model.get_rt_info([METADATA_KEY]))
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    if raw is None and (path.parent / SIDE_FILE).is_file():
        raw = json.dumps(json.loads((path.parent / SIDE_FILE).read_text())["metadata"])
    if raw is None:
        raise ExportError(f"{path} carries no kdzoo metadata (not written by `python -m kdzoo.export`?)")
    return json.loads(raw)


def _resolve_file(spec: str | os.PathLike, backend: str | None) -> tuple[Path, str]:
    p = Path(str(spec)).expanduser()
    if p.is_dir():
        order = {"onnxruntime": ["onnx"], "openvino": ["openvino", "onnx"], "torch": ["torch"], None: list(FORMATS)}[backend]
        if backend is None:  # the format the folder was exported to first (an OpenVINO export also keeps its ONNX file)
            try:
                fmt = json.loads((p / SIDE_FILE).read_text())["metadata"]["format"]
                order = [fmt] + [f for f in order if f != fmt]
            except (OSError, ValueError, KeyError, TypeError):
                pass
        for fmt in order:
            if (p / FILE_NAMES[fmt]).is_file():
                p = p / FILE_NAMES[fmt]
                break
        else:
            raise ExportError(f"{spec}: no exported file for backend {backend or 'any'} "
                              f"(looked for {', '.join(FILE_NAMES[f] for f in order)})")
    if not p.is_file():
        raise ExportError(f"{spec}: no such exported file")
    natural = {".onnx": "onnxruntime", ".xml": "openvino", ".pt2": "torch"}.get(p.suffix.lower())
    if natural is None:
        raise ExportError(f"{p.name}: not an exported model (.onnx, .pt2 or OpenVINO .xml)")
    backend = backend or natural
    allowed = {"onnxruntime": ("onnxruntime", "openvino"), "openvino": ("openvino",), "torch": ("torch",)}[natural]
    if backend not in allowed:
        raise ExportError(f"{p.name} cannot run on backend {backend!r} (use {' or '.join(allowed)})")
    return p, backend


def load_exported(spec: str | os.PathLike, backend: str | None = None, *, threads: int | None = None) -> ExportedDetector:
    """An exported file (or an export folder) as an :class:`ExportedDetector`. ``backend``:
    ``'onnxruntime'`` (``.onnx``), ``'openvino'`` (``.xml``, or ``.onnx`` read by OpenVINO),
    ``'torch'`` (``.pt2``); ``None`` picks the file's own runtime."""
    if backend is not None and backend not in BACKENDS:
        raise ExportError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    path, backend = _resolve_file(spec, backend)
    metadata = _read_metadata(path)
    try:
        runner = _RUNNERS[backend](path, threads)
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"cannot load {path} with {backend}: {type(e).__name__}: {e}") from e
    return ExportedDetector(runner, metadata, path)


# ----------------------------------------------------------------------------- parity
@dataclass
class ParityReport:
    ok: bool
    max_box_diff: float
    max_score_diff: float
    counts: list[tuple[int, int]]  # (eager, exported) detections per image
    backend: str
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "max_box_diff": self.max_box_diff, "max_score_diff": self.max_score_diff,
                "counts": self.counts, "backend": self.backend, "message": self.message}


def compare_detections(ref: Sequence[dict[str, torch.Tensor]], got: Sequence[dict[str, torch.Tensor]], *,
                       box_tol: float = BOX_TOL, score_tol: float = SCORE_TOL, min_score: float | None = None,
                       backend: str = "") -> ParityReport:
    """Row-by-row comparison (both lists are sorted by score): same counts and labels, boxes within
    ``box_tol`` pixels and scores within ``score_tol``. With ``min_score`` (reduced precision), every
    detection scoring at least ``min_score`` on one side must have a same-class partner on the other
    within the tolerances instead (a box near the threshold may fall on either side of it)."""
    box_diff = score_diff = 0.0
    counts, problems = [], []
    for i, (r, g) in enumerate(zip(ref, got)):
        nr, ng = len(r["scores"]), len(g["scores"])
        counts.append((nr, ng))
        if min_score is not None:
            for a, b, side in ((r, g, "eager"), (g, r, "exported")):
                for box, score, label in zip(a["boxes"], a["scores"], a["labels"]):
                    if score < min_score:
                        continue
                    same = b["labels"] == label
                    if not same.any():
                        problems.append(f"image {i}: {side} class {int(label)} box has no partner")
                        continue
                    err = (b["boxes"][same].float() - box.float()).abs().amax(1)
                    j = int(err.argmin())
                    box_diff = max(box_diff, float(err[j]))
                    score_diff = max(score_diff, abs(float(b["scores"][same][j]) - float(score)))
            continue
        n = min(nr, ng)
        if nr != ng:
            problems.append(f"image {i}: {nr} eager detections, {ng} exported")
        if n:
            box_diff = max(box_diff, float((r["boxes"][:n].float() - g["boxes"][:n].float()).abs().max()))
            score_diff = max(score_diff, float((r["scores"][:n].float() - g["scores"][:n].float()).abs().max()))
            bad = (r["labels"][:n].cpu() != g["labels"][:n].cpu()).nonzero()
            if len(bad):
                problems.append(f"image {i}: labels differ from detection {int(bad[0])} on")
    if len(ref) != len(got):
        problems.append(f"{len(ref)} eager results, {len(got)} exported")
    if box_diff > box_tol:
        problems.append(f"max box difference {box_diff:.3g} px > {box_tol:g}")
    if score_diff > score_tol:
        problems.append(f"max score difference {score_diff:.3g} > {score_tol:g}")
    msg = "; ".join(problems[:5]) if problems else (f"{sum(c[0] for c in counts)} detections match "
                                                    f"(max box diff {box_diff:.2g} px, max score diff {score_diff:.2g})")
    return ParityReport(not problems, box_diff, score_diff, counts, backend, msg)


def sample_images(kind: str = "scenes", seed: int = 0) -> list[torch.Tensor]:
    """Two deterministic synthetic scenes (the shapes dataset's renderer): a landscape and a
    portrait crop, so the check covers both orientations and the padding."""
    from .data.shapes import _render_image

    out = []
    for i, (h, w) in enumerate(((240, 320), (320, 208))):
        arr, _ = _render_image(seed, "val", i, 320)
        out.append(torch.from_numpy(np.ascontiguousarray(arr[:h, :w])).permute(2, 0, 1).float() / 255)
    return out


def check_parity(model: nn.Module, exported: ExportedDetector, images: Sequence[torch.Tensor], *,
                 fp16: bool = False, exportable: ExportableDetector | None = None) -> ParityReport:
    """Eager ``model`` vs ``exported`` on ``images``, one by one, and for a dynamic batch also the first
    image with its mirror image as a batch of two. (Batches of differently sized images are padded
    alike by both, but their large padded areas give many exactly tied scores, whose order top-k
    leaves to the implementation: a random-init model can then keep different tied candidates.)"""
    groups = [[img] for img in images]
    if exported.dynamic_batch and images:
        groups.append([images[0], images[0].flip(-1)])
    ref, got = [], []
    with torch.no_grad(), _eager_settings(model, exportable, exported.resize):
        for g in groups:
            ref += model(g) if exported.canvas is None and exported.min_size is None else _eager_on_canvas(model, g, exported)
            got += exported(g)
    tol = dict(box_tol=FP16_BOX_TOL, score_tol=FP16_SCORE_TOL, min_score=FP16_MIN_SCORE) if fp16 else {}
    return compare_detections(ref, got, backend=exported.backend, **tol)


def _eager_on_canvas(model: nn.Module, images: list[torch.Tensor], exported: ExportedDetector) -> list[dict]:
    """The eager model on the exported canvas (or minimum size): the same resized, padded batch
    through the eager path."""
    from .transform import ImageBatch

    batch = prepare_batch(images, exported.resize, exported.size_divisor, exported.canvas, exported.min_size)
    t = model.transform
    x = batch.images.flip(1) if t.bgr else batch.images
    x = (x - t.mean) / t.std
    inside = torch.zeros_like(x, dtype=torch.bool)
    for i, (h, w) in enumerate(batch.image_sizes.tolist()):
        inside[i, :, :h, :w] = True
    x = torch.where(inside, x, torch.zeros_like(x)).contiguous(memory_format=torch.channels_last)
    ib = ImageBatch(x, [tuple(s) for s in batch.image_sizes.tolist()], batch.original_sizes, batch.scales)
    if hasattr(model, "predict_batch"):
        return model.predict_batch(ib)
    outputs = model.bbox_head(model.extract_feats(ib.tensors))
    return model.transform.postprocess(model.bbox_head.predict(outputs, ib.image_sizes), ib)


class _eager_settings:
    """Run the eager model with the exported graph's score threshold, max_per_img and resize, in fp32."""

    def __init__(self, model: nn.Module, exportable: ExportableDetector | None, resize: tuple[int, int]) -> None:
        self.model, self.exportable, self.saved = model, exportable, []
        self.resize = tuple(resize)

    def __enter__(self):
        import dataclasses

        self.dtype = getattr(self.model, "inference_dtype", None)
        if self.dtype is not None:
            self.model.inference_dtype = None
        self.size = self.model.transform.size
        self.model.transform.size = self.resize
        if self.exportable is None:
            return self
        head = self.model.roi_head if hasattr(self.model, "roi_head") else self.model.bbox_head
        self.saved.append((head, head.test_cfg))
        head.test_cfg = dataclasses.replace(head.test_cfg, score_thr=self.exportable.score_thr,
                                            max_per_img=self.exportable.max_per_img)
        return self

    def __exit__(self, *exc):
        for m, cfg in self.saved:
            m.test_cfg = cfg
        self.model.transform.size = self.size
        if self.dtype is not None:
            self.model.inference_dtype = self.dtype
        return False


# ----------------------------------------------------------------------------- export
@dataclass
class ExportResult:
    path: Path
    format: str
    metadata: dict[str, Any]
    parity: ParityReport | None = None
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def _dynamic_shapes(dynamic_batch: bool, dynamic_size: bool, min_side: int = 32) -> dict[str, Any] | None:
    from torch.export import Dim

    img: dict[int, Any] = {}
    sizes: dict[int, Any] = {}
    if dynamic_batch:
        batch = Dim("batch", min=1, max=MAX_BATCH)
        img[0] = batch
        sizes[0] = batch
    if dynamic_size:
        img[2] = 32 * Dim("h32", min=-(-min_side // 32), max=MAX_SIDE_CELLS)
        img[3] = 32 * Dim("w32", min=-(-min_side // 32), max=MAX_SIDE_CELLS)
    if not img:
        return None
    return {"images": img, "image_sizes": sizes}


def _example_inputs(input_size: tuple[int, int], divisor: int, dynamic_batch: bool,
                    canvas: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Example inputs for tracing: batch 2 for a dynamic batch (a size-1 example would be specialised);
    for dynamic H/W a landscape size with at least two rows and distinct heights/widths on every level."""
    n = 2 if dynamic_batch else 1
    if canvas is not None:
        h, w = canvas
    else:
        h = max(-(-min(input_size) // divisor) * divisor, PT2_MIN_SIDE)
        w = h + 128
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, h, w, generator=g)
    sizes = torch.tensor([[h, w]] + [[h - divisor, w - divisor]] * (n - 1), dtype=torch.int64)
    return images, sizes


def _earlier_exports(out_dir: Path) -> dict[str, str] | None:
    """The files an earlier ``kdzoo.export`` wrote into ``out_dir`` (its kdzoo_export.json's ``files``); an
    empty dict without that file, None when there is one that kdzoo.export did not write."""
    side = out_dir / SIDE_FILE
    if not side.exists() and not side.is_symlink():
        return {}
    try:
        data = json.loads(side.read_text()) if side.is_file() and not side.is_symlink() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None
    files = data.get("files") if isinstance(data, dict) and isinstance(data.get("metadata"), dict) else None
    return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else None


def check_export_folder(out_dir: Path, planned: Sequence[str]) -> None:
    """Raise :class:`ExportError`, before anything is written, when exporting into ``out_dir`` would
    replace a file that an earlier ``kdzoo.export`` did not write there, or turn a model folder
    (config.json + model.safetensors, which loads as the export once it holds kdzoo_export.json)."""
    if (out_dir.exists() or out_dir.is_symlink()) and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder; give a folder or a file name for the export")
    if not out_dir.is_dir():
        return
    model_files = [n for n in ("config.json", "model.safetensors") if (out_dir / n).exists()]
    if model_files:
        raise ExportError(f"{out_dir} is a model folder ({', '.join(model_files)}); an export there would load "
                          "in its place: export into another folder")
    ours = _earlier_exports(out_dir)
    if ours is None:
        raise ExportError(f"{out_dir} holds a {SIDE_FILE} that kdzoo.export did not write; refusing to replace it: "
                          "export into another folder")
    for name in planned:
        path = out_dir / name
        if (path.exists() or path.is_symlink()) and name not in ours:
            raise ExportError(f"{path} exists and was not written by kdzoo.export; refusing to overwrite it: "
                              "export into another folder")


def _write_side_file(out_dir: Path, metadata: dict[str, Any], files: list[Path], parity: ParityReport | None) -> None:
    side = out_dir / SIDE_FILE
    exports = _earlier_exports(out_dir) or {}
    for f in files:
        exports[f.name] = {".onnx": "onnx", ".pt2": "torch"}.get(f.suffix, "openvino")
    data = {"metadata": metadata, "files": exports, "parity": parity.to_dict() if parity else None}
    side.write_text(json.dumps(data, indent=1) + "\n")


def export(model: nn.Module, path: str | os.PathLike, format: str = "onnx", *, dynamic_batch: bool = False,
           fixed_size: bool = False, input_size: tuple[int, int] | None = None, fp16: bool = False,
           opset: int = DEFAULT_OPSET, check: bool = True, check_images: Sequence[torch.Tensor] | None = None,
           max_per_img: int | None = None, score_thr: float | None = None, name: str | None = None,
           verbose: bool = False) -> ExportResult:
    """Export ``model`` (a kdzoo detector) to ``path``: a folder (``model.onnx`` / ``model.pt2`` /
    ``model.xml``+``.bin`` inside it, plus ``kdzoo_export.json``) or a file name with the format's suffix.

    ``format``: ``'onnx'`` (dynamo exporter, opset ``opset``), ``'torch'`` (``torch.export`` ``.pt2``)
    or ``'openvino'`` (IR converted from the ONNX file, which is kept). ``input_size`` (long, short)
    overrides the model's keep-ratio size; ``fixed_size`` exports one canvas of that size padded to
    32 (landscape; portrait images are scaled to fit it) instead of dynamic H/W; ``dynamic_batch``
    accepts any batch size (else 1). ``fp16`` runs the network in half precision (decoding and NMS
    stay fp32; OpenVINO keeps fp32 arithmetic with fp16-compressed weights). ``check`` runs the
    exported file on ``check_images`` (default: :func:`sample_images`) and raises
    :class:`ExportError` when it differs from the eager model. Returns an :class:`ExportResult`."""
    fmt = check_format(format)
    if fmt in ("onnx", "openvino"):
        _require("onnx")
    if fmt == "openvino":
        _require("openvino")
    if check and fmt == "onnx":
        _require("onnxruntime")
    if not (hasattr(model, "transform") and hasattr(model, "extract_feats")):
        raise ExportError(f"expected a kdzoo detector, got {type(model).__name__}")
    started = time.perf_counter()
    path = Path(path).expanduser()
    suffix = Path(FILE_NAMES[fmt]).suffix
    if path.suffix.lower() == suffix:
        out_dir, file_name = path.parent, path.name
    elif path.suffix and not path.is_dir():
        raise ExportError(f"{path}: a {fmt} export is written as a folder or a *{suffix} file")
    else:
        out_dir, file_name = path, FILE_NAMES[fmt]
    planned = [file_name] + ([FILE_NAMES["onnx"], Path(file_name).with_suffix(".bin").name] if fmt == "openvino" else [])
    check_export_folder(out_dir, planned)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / file_name

    model = model.eval()
    t = model.transform
    input_size = tuple(int(v) for v in (input_size or t.size))
    if len(input_size) != 2 or min(input_size) < 1:
        raise ExportError(f"input size must be two positive integers (long, short), got {input_size}")
    input_size = (max(input_size), min(input_size))
    d = t.size_divisor
    canvas = (-(-input_size[1] // d) * d, -(-input_size[0] // d) * d) if fixed_size else None
    exportable = ExportableDetector(model, max_per_img=max_per_img, score_thr=score_thr).eval()
    onnx_fmt = fmt in ("onnx", "openvino")
    metadata = build_metadata(model, exportable, fmt=fmt, name=name or getattr(model, "arch_name", ""),
                              input_size=input_size, dynamic_batch=dynamic_batch, canvas=canvas,
                              fp16=fp16 and fmt != "openvino",
                              opset=opset if onnx_fmt else None)
    if fp16 and fmt == "openvino":
        metadata["precision"] = "fp16 weights"  # the graph itself is fp32; OpenVINO stores fp16 weights
    if t.size != input_size:
        metadata["input"]["resize_note"] = f"model trained with input size {list(t.size)}"
    graph: nn.Module = exportable
    if fp16 and fmt != "openvino":
        import copy

        # fp16 backbone, neck and heads; inputs, decoding and NMS stay fp32 (ExportableDetector casts).
        graph = ExportableDetector(copy.deepcopy(model).half(), max_per_img=max_per_img, score_thr=score_thr).eval()
    if fmt == "torch" and canvas is None:
        metadata["input"]["min_size"] = [PT2_MIN_SIDE, PT2_MIN_SIDE]
    example = _example_inputs(input_size, d, dynamic_batch, canvas)
    dynamic = _dynamic_shapes(dynamic_batch, canvas is None, PT2_MIN_SIDE if fmt == "torch" else 32)
    meta_json = json.dumps(metadata)
    files: list[Path] = []
    with torch.no_grad(), warnings.catch_warnings():
        if not verbose:
            warnings.simplefilter("ignore")
        try:
            if fmt == "torch":
                program = torch.export.export(graph, example, dynamic_shapes=dynamic, strict=False)
                torch.export.save(program, str(target), extra_files={f"{METADATA_KEY}.json": meta_json})
                files.append(target)
            else:
                onnx_path = target if fmt == "onnx" else out_dir / FILE_NAMES["onnx"]
                onnx_meta = {**metadata, "format": "onnx", "precision": "fp16" if fp16 and fmt == "onnx" else "fp32"}
                _export_onnx(graph, example, dynamic, onnx_path, opset, onnx_meta, verbose)
                files.append(onnx_path)
                if fmt == "openvino":
                    files += onnx_to_openvino(onnx_path, target, fp16=fp16)
        except ExportError:
            raise
        except Exception as e:
            raise ExportError(f"{fmt} export of {metadata['model'] or type(model).__name__} failed: "
                              f"{type(e).__name__}: {e}") from e
    parity = None
    if check:
        exported = load_exported(target)
        parity = check_parity(model, exported, check_images or sample_images(), fp16=fp16, exportable=exportable)
    _write_side_file(out_dir, metadata, files, parity)
    result = ExportResult(target, fmt, metadata, parity, files, time.perf_counter() - started)
    if parity is not None and not parity.ok:
        raise ParityError(result)
    return result


class ParityError(ExportError):
    """The exported file's detections differ from the eager model's (the files are kept for inspection)."""

    def __init__(self, result: ExportResult) -> None:
        p = result.parity
        super().__init__(f"parity check failed for {result.path} on {p.backend}: {p.message} "
                         f"(max box diff {p.max_box_diff:.3g} px, max score diff {p.max_score_diff:.3g})")
        self.result = result


def onnx_to_openvino(onnx_path: str | os.PathLike, xml_path: str | os.PathLike, *, fp16: bool = False) -> list[Path]:
    """Convert an exported ONNX file to OpenVINO IR (``.xml`` + ``.bin``), carrying its kdzoo metadata
    into the IR's ``rt_info`` (``format`` becomes ``'openvino'``). ``fp16`` stores fp16-compressed weights
    (the CPU plugin still computes in fp32). Returns the written files."""
    ov = _require("openvino")["openvino"]
    onnx_path, xml_path = Path(onnx_path), Path(xml_path)
    metadata = _read_metadata(onnx_path)
    metadata.update(format="openvino", precision="fp16 weights" if fp16 else metadata.get("precision", "fp32"))
    ov_model = ov.convert_model(str(onnx_path))
    ov_model.set_rt_info(json.dumps(metadata), [METADATA_KEY])
    ov.save_model(ov_model, str(xml_path), compress_to_fp16=fp16)
    return [xml_path, xml_path.with_suffix(".bin")]


def _export_onnx(graph: nn.Module, example, dynamic, path: Path, opset: int, metadata: dict[str, Any],
                 verbose: bool) -> None:
    import logging

    onnx = _require("onnx")["onnx"]
    quiet = [] if verbose else [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [q.level for q in quiet]
    for q in quiet:  # e.g. onnx_ir's "Attribute type is ambiguous" notes on empty attribute lists
        q.setLevel(logging.ERROR)
    try:
        program = torch.onnx.export(graph, example, dynamo=True, input_names=list(INPUT_NAMES),
                                    output_names=list(OUTPUT_NAMES), dynamic_shapes=dynamic, opset_version=opset,
                                    external_data=False, verbose=verbose, report=False)
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    proto = program.model_proto
    produced = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if produced != opset:  # the exporter falls back to its own opset when it cannot convert (a warning only)
        raise ExportError(f"the ONNX exporter of torch {torch.__version__} produced opset {produced}, not the requested "
                          f"{opset}; export with --opset {produced} (or leave it out: {DEFAULT_OPSET})")
    del proto.metadata_props[:]
    entries = {METADATA_KEY: json.dumps(metadata), "architecture": metadata["architecture"], "tag": metadata["tag"],
               "classes": json.dumps(metadata["classes"]), "kdzoo_version": metadata["kdzoo_version"],
               "input_contract": metadata["input"]["images"]}
    for k, v in entries.items():
        p = proto.metadata_props.add()
        p.key, p.value = k, str(v)
    proto.producer_name = "kdzoo"
    proto.producer_version = metadata["kdzoo_version"]
    onnx.save(proto, str(path))


# ----------------------------------------------------------------------------- CLI


if __name__ == "__main__":  # python -m kdzoo.export: the same as `kdzoo export`
    from kdzoo.cli import run_command

    sys.exit(run_command("export"))
