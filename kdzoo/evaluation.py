"""COCO box evaluation (pycocotools COCOeval, iouType="bbox"; or faster-coco-eval, same numbers).

The evaluator only converts model outputs into plain COCO result dicts; the metric is
computed from a flat results list by :func:`evaluate_results`, so a distributed engine
can gather per-rank lists (``state_dict``/``merge``) and evaluate once on rank 0.

Metrics are percentages (0..100). A metric that pycocotools reports as undefined (-1:
no ground truth in that area range / class) is returned as NaN so it cannot silently
pull averages down.

Two backends compute the same COCOeval: ``"pycocotools"`` (the reference, always installed) and
``"faster_coco_eval"`` (its C++ reimplementation, ``pip install kdzoo[fast-eval]``, about 3x
faster; it gives identical AP on the shapes runs, see docs/evaluation.md).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DataLoader, DistributedSampler

from .checkpoint import atomic_write
from .data.coco import CocoDetection, collate_fn
from .distributed import is_distributed, rank, world_size

__all__ = ["BACKENDS", "CocoEvaluator", "coco_eval", "evaluate", "evaluate_results", "format_table", "save_results_json",
           "summary_table"]

#: COCOeval implementations :func:`coco_eval` can run.
BACKENDS = ("pycocotools", "faster_coco_eval")

# Order of COCOeval.stats for iouType="bbox".
_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
HEADLINE = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _pct(v: float) -> float:
    return float("nan") if v < 0 else float(v) * 100.0


def _category_names(coco_gt: COCO, cat_ids: list[int], categories: Sequence[str] | None) -> list[str]:
    if categories is None:
        return [coco_gt.cats[c]["name"] for c in cat_ids]
    if len(categories) != len(cat_ids):
        raise ValueError(
            f"categories has {len(categories)} names but the ground truth has {len(cat_ids)} categories; "
            "expected one name per category, ordered by category id"
        )
    return list(categories)


def _results_annotations(coco_gt: COCO, results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Checked detection annotations (what COCO.loadRes builds, with clearer errors)."""
    anns = []
    for i, r in enumerate(results):
        try:
            x, y, w, h = (float(v) for v in r["bbox"])
            img, cat, score = int(r["image_id"]), int(r["category_id"]), float(r["score"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"result {i} is not a COCO bbox result {{image_id, category_id, bbox[4], score}}: {r!r}") from e
        if img not in coco_gt.imgs:
            raise ValueError(f"result {i} has image_id {img}, which is not in the ground truth")
        if cat not in coco_gt.cats:
            raise ValueError(f"result {i} has category_id {cat}, which is not in the ground truth")
        anns.append({
            "id": i + 1, "image_id": img, "category_id": cat, "score": score,
            "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
        })
    return anns


def _results_coco(coco_gt: COCO, results: Sequence[Mapping[str, Any]]) -> COCO:
    """Build the detections COCO object (what COCO.loadRes does, with clearer errors)."""
    dt = COCO()
    dt.dataset = {"images": list(coco_gt.dataset["images"]), "categories": list(coco_gt.dataset["categories"]),
                  "annotations": _results_annotations(coco_gt, results)}
    with contextlib.redirect_stdout(io.StringIO()):
        dt.createIndex()
    return dt


def _faster_coco_eval() -> Any:
    try:
        import faster_coco_eval
    except ImportError as e:
        raise ImportError("backend 'faster_coco_eval' needs the faster-coco-eval package: "
                          "pip install 'kdzoo[fast-eval]' (or use backend 'pycocotools')") from e
    return faster_coco_eval


def coco_eval(
    coco_gt: COCO,
    results: Sequence[Mapping[str, Any]],
    *,
    image_ids: Sequence[int] | None = None,
    cat_ids: Sequence[int] | None = None,
    backend: str = "pycocotools",
) -> tuple[Any, str]:
    """Run COCOeval (bbox) to the end: ``evaluate``, ``accumulate``, ``summarize``.

    Returns the evaluator (``.eval["precision"]`` [IoU, recall, class, area, maxDets], ``.stats``,
    ``.params``; the same layout for both backends) and the printed summary lines.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    img_ids = sorted(coco_gt.getImgIds()) if image_ids is None else [int(i) for i in image_ids]
    cats = sorted(coco_gt.getCatIds()) if cat_ids is None else [int(c) for c in cat_ids]
    lines: list[str] = []
    if backend == "pycocotools":
        ev = COCOeval(coco_gt, _results_coco(coco_gt, results), iouType="bbox")
        ev.params.imgIds, ev.params.catIds = img_ids, cats
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):  # COCOeval prints timings; keep only the table
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        lines = buf.getvalue().splitlines()
    else:
        fce = _faster_coco_eval()
        anns = _results_annotations(coco_gt, results)

        def quiet_coco(annotations: list[dict[str, Any]]) -> Any:
            # faster-coco-eval writes flags ("ignore") into the annotation dicts: give it copies.
            data = {"images": list(coco_gt.dataset["images"]), "categories": list(coco_gt.dataset["categories"]),
                    "annotations": [dict(a) for a in annotations]}
            return fce.COCO(data, print_function=lambda *a, **k: None)

        ev = fce.COCOeval_faster(quiet_coco(coco_gt.dataset.get("annotations", [])), quiet_coco(anns), iouType="bbox",
                                 print_function=lambda *a, **k: lines.append(" ".join(str(x) for x in a)))
        ev.params.imgIds, ev.params.catIds = img_ids, cats
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    summary = "\n".join(line for line in lines if line.lstrip().startswith("Average"))
    return ev, summary


def evaluate_results(
    coco_gt: COCO,
    results: list[dict[str, Any]],
    categories: Sequence[str] | None = None,
    image_ids: Iterable[int] | None = None,
    backend: str = "pycocotools",
) -> dict[str, Any]:
    """COCO bbox metrics for a flat list of result dicts.

    Args:
        coco_gt: ground truth.
        results: ``{"image_id", "category_id", "bbox": [x,y,w,h], "score"}`` dicts.
        categories: display names, one per ground-truth category sorted by id (default:
            the names in ``coco_gt``).
        image_ids: restrict evaluation to these images (default: all ground-truth images,
            so images without any detection count as misses).
        backend: ``"pycocotools"`` or ``"faster_coco_eval"`` (:data:`BACKENDS`).

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
        "ARl": float, "per_class": {name: AP}, "summary": str}``.
    """
    cat_ids = sorted(coco_gt.getCatIds())
    names = _category_names(coco_gt, cat_ids, categories)
    img_ids = sorted(coco_gt.getImgIds()) if image_ids is None else sorted(set(int(i) for i in image_ids))
    missing = [i for i in img_ids if i not in coco_gt.imgs]
    if missing:
        raise ValueError(f"image_ids {missing[:5]} are not in the ground truth")

    ev, summary = coco_eval(coco_gt, results, image_ids=img_ids, cat_ids=cat_ids, backend=backend)
    metrics: dict[str, Any] = {k: _pct(v) for k, v in zip(_STAT_NAMES, ev.stats)}
    # precision: [IoU thresholds, recall points, classes, area ranges, max dets];
    # area "all" (0) and maxDets=100 (-1) as in the headline AP.
    precision = ev.eval["precision"]
    per_class = {}
    for k, name in enumerate(names):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[name] = float(np.mean(p)) * 100.0 if p.size else float("nan")
    metrics["per_class"] = per_class
    metrics["summary"] = summary
    return metrics


class CocoEvaluator:
    """Accumulates model outputs as COCO results and evaluates them.

    Args:
        coco_gt: ground truth (``dataset.coco``).
        label_to_cat_id: COCO category id of each 0-based label (``dataset.label_to_cat_id``).
    """

    def __init__(self, coco_gt: COCO, label_to_cat_id: Sequence[int]) -> None:
        unknown = [c for c in label_to_cat_id if c not in coco_gt.cats]
        if unknown:
            raise ValueError(f"label_to_cat_id contains category ids {unknown} that are not in the ground truth")
        self.coco_gt = coco_gt
        self.label_to_cat_id = [int(c) for c in label_to_cat_id]
        # image_id -> its results; keyed so that duplicated images (DistributedSampler
        # pads the last batch by repeating samples) are counted once.
        self._by_image: dict[int, list[dict[str, Any]]] = {}

    @property
    def image_ids(self) -> list[int]:
        return list(self._by_image)

    def update(self, image_ids: Sequence[int], outputs: Sequence[Mapping[str, Any]]) -> None:
        """Add eval-mode model outputs (boxes xyxy in original image coords, labels 0-based)."""
        if len(image_ids) != len(outputs):
            raise ValueError(f"got {len(image_ids)} image_ids but {len(outputs)} outputs; expected one output per image")
        n_cls = len(self.label_to_cat_id)
        for img_id, out in zip(image_ids, outputs):
            img_id = int(img_id.item() if isinstance(img_id, torch.Tensor) else img_id)
            boxes = torch.as_tensor(out["boxes"]).detach().float().cpu().reshape(-1, 4)
            scores = torch.as_tensor(out["scores"]).detach().float().cpu().reshape(-1)
            labels = torch.as_tensor(out["labels"]).detach().cpu().long().reshape(-1)
            if not (len(boxes) == len(scores) == len(labels)):
                raise ValueError(
                    f"output for image {img_id}: boxes/scores/labels lengths differ ({len(boxes)}/{len(scores)}/{len(labels)})"
                )
            if len(labels) and (labels.min() < 0 or labels.max() >= n_cls):
                raise ValueError(f"output for image {img_id}: labels must be in [0, {n_cls}), got {labels.min()}..{labels.max()}")
            xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
            self._by_image[img_id] = [
                {"image_id": img_id, "category_id": self.label_to_cat_id[l], "bbox": b, "score": s}
                for b, s, l in zip(xywh, scores.tolist(), labels.tolist())
            ]

    def results(self) -> list[dict[str, Any]]:
        return [r for rs in self._by_image.values() for r in rs]

    def state_dict(self) -> dict[str, Any]:
        """Picklable per-rank state for ``all_gather_object``."""
        return {"image_ids": self.image_ids, "results": self.results()}

    def merge(self, states: Iterable[Mapping[str, Any] | Sequence[dict[str, Any]]]) -> None:
        """Merge other ranks' ``state_dict()``s (or plain result lists); images seen already are skipped."""
        for st in states:
            if isinstance(st, Mapping):
                ids, results = [int(i) for i in st["image_ids"]], st["results"]
            else:  # a plain results list: images without detections cannot be recovered
                results = list(st)
                ids = list(dict.fromkeys(int(r["image_id"]) for r in results))
            new = [i for i in ids if i not in self._by_image]
            for i in new:
                self._by_image[i] = []
            keep = set(new)
            for r in results:
                if int(r["image_id"]) in keep:
                    self._by_image[int(r["image_id"])].append(r)

    def summarize(self, categories: Sequence[str] | None = None, all_images: bool = False,
                  backend: str = "pycocotools") -> dict[str, Any]:
        """Metrics over the images seen so far (or every ground-truth image if ``all_images``)."""
        ids = None if all_images or not self._by_image else self.image_ids
        return evaluate_results(self.coco_gt, self.results(), categories, image_ids=ids, backend=backend)


def format_table(metrics: Mapping[str, Any], digits: int = 1) -> str:
    """Human-readable headline metrics plus a per-class AP table."""

    def fmt(v: float) -> str:
        return "n/a" if v is None or math.isnan(v) else f"{v:.{digits}f}"

    head = [k for k in HEADLINE if k in metrics]
    lines = ["  ".join(f"{k:>6}" for k in head), "  ".join(f"{fmt(metrics[k]):>6}" for k in head)]
    per_class = metrics.get("per_class") or {}
    if per_class:
        width = max(8, *(len(n) for n in per_class))
        lines += ["", f"{'class':<{width}}  {'AP':>6}", "-" * (width + 8)]
        lines += [f"{n:<{width}}  {fmt(v):>6}" for n, v in per_class.items()]
    return "\n".join(lines)


def save_results_json(path: str | Path, results: list[dict[str, Any]]) -> Path:
    """Write COCO results atomically so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            json.dump(results, f)

    atomic_write(path, write)
    return path


# --------------------------------------------------------------------------- running a model
@torch.inference_mode()
def evaluate(
    model: nn.Module,
    dataset: CocoDetection,
    *,
    batch_size: int = 1,
    workers: int = 2,
    device: torch.device | str = "cpu",
    progress: bool = False,
    backend: str = "pycocotools",
) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None]:
    """COCO metrics and results of ``model`` on ``dataset``.

    ``backend`` picks the COCOeval implementation (:data:`BACKENDS`); it is checked (and
    faster-coco-eval imported) before the model runs, so a missing package fails at once.

    In a process group each rank runs a shard (``DistributedSampler``); the per-rank results are
    gathered with ``all_gather_object`` and evaluated once. Returns ``(metrics, results)`` on
    rank 0 and ``(None, None)`` on the other ranks.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "faster_coco_eval":
        _faster_coco_eval()
    was_training = model.training
    model.eval()
    sampler = DistributedSampler(dataset, shuffle=False) if is_distributed() else None
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_fn)
    evaluator = CocoEvaluator(dataset.coco, dataset.label_to_cat_id)
    it = loader
    if progress and rank() == 0:
        from tqdm import tqdm

        it = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)
    try:
        for images, targets in it:
            outputs = model([im.to(device) for im in images])
            evaluator.update([t["image_id"] for t in targets], outputs)
    finally:
        model.train(was_training)
    if is_distributed():
        states: list[Any] = [None] * world_size()
        dist.all_gather_object(states, evaluator.state_dict())
        if rank() != 0:
            return None, None
        evaluator.merge(states)
    # all_images: an image without any detection still counts (its objects are misses).
    metrics = evaluator.summarize(dataset.categories, all_images=True, backend=backend)
    metrics["images"] = len(evaluator.image_ids)  # evidence that the gathered shards cover the dataset
    return metrics, evaluator.results()


def summary_table(run_dirs: list[str]) -> str:
    """Headline AP of several runs (from each run's ``eval.json``) and their per-class AP."""
    runs = {}
    for d in run_dirs:
        if Path(d).suffix in (".yaml", ".yml"):  # a recipe stands for its run directory
            from .recipe import load_recipe

            d = load_recipe(d).output_dir
        path = Path(d) / "eval.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; is {d} a finished training run?")
        runs[Path(d).name] = json.loads(path.read_text())
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    width = max(12, *(len(n) for n in runs))

    def fmt(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and v != v) else f"{v:.1f}"

    lines = [f"{'run':<{width}}  {'iters':>6}  " + "  ".join(f"{k:>5}" for k in keys)]
    lines += [f"{n:<{width}}  {m.get('iter', '-'):>6}  " + "  ".join(f"{fmt(m.get(k)):>5}" for k in keys)
              for n, m in runs.items()]  # a model evaluated without training (a teacher) has no iterations
    classes = list(next(iter(runs.values())).get("per_class", {}))
    if classes:  # one column per run, as wide as its name
        cols = [max(8, len(n)) for n in runs]
        lines += ["", f"{'class AP':<12}" + "".join(f"  {n:>{w}}" for n, w in zip(runs, cols))]
        lines += [f"{c:<12}" + "".join(f"  {fmt(m.get('per_class', {}).get(c)):>{w}}" for m, w in zip(runs.values(), cols))
                  for c in classes]
    return "\n".join(lines)
