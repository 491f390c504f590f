"""Evaluation report of a detector: per-class AP, precision-recall curves, a confusion matrix and,
for a distilled student, the same figures next to its teacher's.

    from kdzoo.report import write_report
    write_report("out/report", dataset.coco, results, dataset.categories,
                 label_to_cat_id=dataset.label_to_cat_id, name="student", compare=teacher_results)

Files (docs/evaluation.md describes each one and the conventions):

* ``per_class.json`` + ``report.md``: AP, AP50, AP75, ground-truth instances per class;
* ``pr_curves.json`` + ``pr_curves.png``: COCOeval's interpolated precision at 101 recall points,
  per class, at IoU 0.5 and averaged over IoU 0.5:0.95;
* ``confusion_matrix.json`` + ``confusion_matrix.png``: rows ground-truth class + background
  (false detections), columns predicted class + background (missed objects);
* with ``compare=``: ``compare.json`` (per-class AP of both, model - reference), ``per_class_compare.png``,
  ``confusion_matrix_compare.png`` and the reference's own report in a subfolder.

The PNGs need matplotlib (``pip install 'kdzoo[report]'``); without it the JSON and markdown files
are still written. matplotlib is used through its object API with the Agg canvas, so the caller's
pyplot backend is never changed.
"""
from __future__ import annotations

import json
import math
import re
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from .checkpoint import atomic_write
from .evaluation import BACKENDS, _results_annotations, coco_eval

__all__ = ["BACKGROUND", "DEFAULT_IOU_THRESHOLD", "DEFAULT_SCORE_THRESHOLD", "confusion_matrix", "format_compare",
           "per_class_metrics", "pr_curves", "write_report", "write_run_report"]

#: Detections below this score are left out of the confusion matrix (not of AP, PR curves or the
#: per-class table). 0.3 is supervision's ConfusionMatrix default (so its numbers compare) and near
#: Ultralytics' 0.25; the kdzoo detectors keep 100 boxes per image down to a score of 0.05 for AP, and
#: counting all of those would bury the matrix under low-score boxes nobody would keep in use.
DEFAULT_SCORE_THRESHOLD = 0.3
#: A detection and a ground truth match at IoU >= this (COCOeval's AP50 rule).
DEFAULT_IOU_THRESHOLD = 0.5
#: Name of the extra row (false detections) and column (missed objects) of the confusion matrix.
BACKGROUND = "background"

_HEADLINE = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
_PNG_HINT = "the report's PNG figures need matplotlib: pip install 'kdzoo[report]'; writing the JSON and markdown only"
_warned_no_matplotlib = False


# --------------------------------------------------------------------------- inputs
def _cat_ids(coco_gt: COCO, label_to_cat_id: Sequence[int] | None) -> list[int]:
    """The category id of each class index (matrix row/column), checked against the ground truth."""
    gt_cats = sorted(coco_gt.getCatIds())
    if label_to_cat_id is None:
        return gt_cats
    ids = [int(c) for c in label_to_cat_id]
    if len(set(ids)) != len(ids) or sorted(ids) != gt_cats:
        raise ValueError(f"label_to_cat_id {ids} must list each ground-truth category id {gt_cats} exactly once")
    return ids


def _names(coco_gt: COCO, cat_ids: Sequence[int], categories: Sequence[str] | None) -> list[str]:
    if categories is None:
        names = [str(coco_gt.cats[c].get("name", c)) for c in cat_ids]
    elif len(categories) != len(cat_ids):
        raise ValueError(f"categories has {len(categories)} names but there are {len(cat_ids)} categories; "
                         "expected one name per label_to_cat_id entry")
    else:
        names = [str(n) for n in categories]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"category names {repeated} appear more than once; expected one distinct name per class")
    return names


def _image_ids(coco_gt: COCO, image_ids: Sequence[int] | None) -> list[int]:
    ids = sorted(coco_gt.getImgIds()) if image_ids is None else sorted({int(i) for i in image_ids})
    missing = [i for i in ids if i not in coco_gt.imgs]
    if missing:
        raise ValueError(f"image_ids {missing[:5]} are not in the ground truth")
    return ids


def _threshold(value: float, what: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {value}")
    return value


def _pct(v: float) -> float | None:
    return None if v < 0 else float(v) * 100.0


def _json_safe(obj: Any) -> Any:
    """NaN/inf as null and numpy scalars as Python numbers: strict JSON."""
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _write_text(path: Path, text: str) -> Path:
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def _write_json(path: Path, data: Any) -> Path:
    return _write_text(path, json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n")


# --------------------------------------------------------------------------- metrics
def per_class_metrics(ev: Any, coco_gt: COCO, results: Sequence[Mapping[str, Any]], cat_ids: Sequence[int],
                      names: Sequence[str], image_ids: Sequence[int]) -> list[dict[str, Any]]:
    """One row per class from an accumulated COCOeval ``ev``: AP, AP50, AP75 (percent; None when the
    class has no ground truth), ground-truth instances (non-crowd) and detections on ``image_ids``."""
    p = ev.params
    precision = ev.eval["precision"]  # [IoU, recall, class (p.catIds order), area, maxDets]
    k_of = {int(c): k for k, c in enumerate(p.catIds)}
    i50 = int(np.flatnonzero(np.isclose(p.iouThrs, 0.5))[0])
    i75 = int(np.flatnonzero(np.isclose(p.iouThrs, 0.75))[0])
    images = set(image_ids)
    gts: dict[int, int] = defaultdict(int)
    for a in coco_gt.dataset.get("annotations", []):
        if a["image_id"] in images and not a.get("iscrowd", 0):
            gts[int(a["category_id"])] += 1
    dets: dict[int, int] = defaultdict(int)
    for r in results:
        if int(r["image_id"]) in images:
            dets[int(r["category_id"])] += 1

    def ap(values: np.ndarray) -> float | None:
        values = values[values > -1]
        return float(values.mean()) * 100.0 if values.size else None

    rows = []
    for cat, name in zip(cat_ids, names):
        k = k_of[int(cat)]
        rows.append({
            "class": name, "category_id": int(cat), "gt_instances": gts[int(cat)], "detections": dets[int(cat)],
            "AP": ap(precision[:, :, k, 0, -1]), "AP50": ap(precision[i50, :, k, 0, -1]),
            "AP75": ap(precision[i75, :, k, 0, -1]),
        })
    return rows


def pr_curves(ev: Any, cat_ids: Sequence[int], names: Sequence[str]) -> dict[str, Any]:
    """Per-class precision at COCOeval's 101 recall points (area all, 100 detections): at IoU 0.5,
    averaged over IoU 0.5:0.95, and the detection score reached at each recall point (IoU 0.5).
    Interpolated precision is 0 past the highest recall reached; a class without ground truth has None."""
    p = ev.params
    precision, scores = ev.eval["precision"], ev.eval["scores"]
    k_of = {int(c): k for k, c in enumerate(p.catIds)}
    i50 = int(np.flatnonzero(np.isclose(p.iouThrs, 0.5))[0])
    out: dict[str, Any] = {"recall": [round(float(r), 6) for r in p.recThrs], "classes": {}}
    for cat, name in zip(cat_ids, names):
        k = k_of[int(cat)]
        pk = precision[:, :, k, 0, -1]
        defined = bool((pk > -1).all())
        out["classes"][name] = {
            "precision_iou50": [round(float(v), 6) for v in pk[i50]] if defined else None,
            "precision_iou50_95": [round(float(v), 6) for v in pk.mean(axis=0)] if defined else None,
            "score_iou50": [round(float(v), 6) for v in scores[i50, :, k, 0, -1]] if defined else None,
        }
    return out


def _iou(dt: np.ndarray, gt: np.ndarray, crowd: bool) -> np.ndarray:
    """[D, G] IoU of xywh boxes as COCOeval computes it (for crowd regions: intersection / detection area)."""
    if not len(dt) or not len(gt):
        return np.zeros((len(dt), len(gt)))
    iou = mask_utils.iou(dt.tolist(), gt.tolist(), [int(crowd)] * len(gt))
    return np.asarray(iou, dtype=np.float64).reshape(len(dt), len(gt))


def confusion_matrix(
    coco_gt: COCO,
    results: Sequence[Mapping[str, Any]],
    categories: Sequence[str] | None = None,
    *,
    label_to_cat_id: Sequence[int] | None = None,
    image_ids: Sequence[int] | None = None,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
) -> dict[str, Any]:
    """Detection confusion matrix: ``matrix[i][j]`` counts ground truths of class i matched to a
    detection of class j; row ``K`` (background) holds unmatched detections (false detections),
    column ``K`` unmatched ground truths (missed objects).

    Per image, detections with ``score >= score_threshold`` are taken by descending score (stable),
    each matching at most one ground truth and each ground truth at most one detection, at
    ``IoU >= iou_threshold``: first a pass over same-class pairs (COCOeval's own matching, so the
    diagonal equals COCOeval's true positives at that IoU and score), then a pass matching the
    detections left over to the unmatched ground truths of other classes (the highest IoU first).
    Crowd ground truths are not objects: a left-over detection covering a crowd region of its class
    (intersection over detection area >= ``iou_threshold``) is ignored, as COCOeval does.

    Returns ``{"classes": names + ["background"], "matrix": [[int]], "iou_threshold", "score_threshold",
    "images", "ground_truths", "detections", "matched", "matched_right_class", "matched_wrong_class",
    "missed", "false_detections", "ignored_on_crowd"}``: the matrix sums to matched + missed +
    false_detections and its diagonal to matched_right_class.
    """
    iou_threshold = _threshold(iou_threshold, "iou_threshold")
    score_threshold = _threshold(score_threshold, "score_threshold")
    cat_ids = _cat_ids(coco_gt, label_to_cat_id)
    names = _names(coco_gt, cat_ids, categories)
    img_ids = _image_ids(coco_gt, image_ids)
    label_of = {c: k for k, c in enumerate(cat_ids)}
    n = len(cat_ids)
    matrix = np.zeros((n + 1, n + 1), dtype=np.int64)
    ignored = 0

    dets_by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for a in _results_annotations(coco_gt, results):  # checks every result, as AP does
        if a["score"] >= score_threshold:
            dets_by_image[a["image_id"]].append(a)

    for img in img_ids:
        anns = coco_gt.imgToAnns.get(img, [])
        gts = [a for a in anns if not a.get("iscrowd", 0)]
        crowds = [a for a in anns if a.get("iscrowd", 0)]
        dts = sorted(dets_by_image.get(img, []), key=lambda a: -a["score"])  # stable: ties keep result order
        g_lab = np.array([label_of[a["category_id"]] for a in gts], dtype=np.int64)
        c_lab = np.array([label_of[a["category_id"]] for a in crowds], dtype=np.int64)
        d_lab = np.array([label_of[a["category_id"]] for a in dts], dtype=np.int64)
        if not dts:
            np.add.at(matrix, (g_lab, n), 1)
            continue
        d_box = np.array([a["bbox"] for a in dts], dtype=np.float64)
        iou = _iou(d_box, np.array([a["bbox"] for a in gts], dtype=np.float64).reshape(-1, 4), crowd=False)
        covers_crowd = _iou(d_box, np.array([a["bbox"] for a in crowds], dtype=np.float64).reshape(-1, 4), crowd=True)
        taken = np.zeros(len(gts), dtype=bool)
        match = np.full(len(dts), -1)
        skip = np.zeros(len(dts), dtype=bool)
        for same_class in (True, False):
            for d in range(len(dts)):
                if match[d] >= 0 or skip[d]:
                    continue
                ok = ~taken & (iou[d] >= iou_threshold)
                if same_class:
                    ok &= g_lab == d_lab[d]
                cand = np.flatnonzero(ok)
                if cand.size:
                    g = int(cand[np.argmax(iou[d, cand])])
                    taken[g], match[d] = True, g
                elif same_class and len(crowds) and np.any((c_lab == d_lab[d]) & (covers_crowd[d] >= iou_threshold)):
                    skip[d] = True
        for d in range(len(dts)):
            if match[d] >= 0:
                matrix[g_lab[match[d]], d_lab[d]] += 1
            elif skip[d]:
                ignored += 1
            else:
                matrix[n, d_lab[d]] += 1
        np.add.at(matrix, (g_lab[~taken], n), 1)

    matched = int(matrix[:n, :n].sum())
    right = int(np.trace(matrix[:n, :n]))
    return {
        "classes": [*names, BACKGROUND], "matrix": matrix.tolist(),
        "iou_threshold": iou_threshold, "score_threshold": score_threshold, "images": len(img_ids),
        "ground_truths": int(matrix[:n].sum()), "detections": int(matrix[:, :n].sum()) + ignored,
        "matched": matched, "matched_right_class": right, "matched_wrong_class": matched - right,
        "missed": int(matrix[:n, n].sum()), "false_detections": int(matrix[n, :n].sum()),
        "ignored_on_crowd": ignored,
    }


def _class_rates(rows: list[dict[str, Any]], cm: Mapping[str, Any]) -> None:
    """Add precision / recall at the confusion matrix's thresholds to the per-class rows (percent)."""
    m = np.asarray(cm["matrix"])
    for k, row in enumerate(rows):
        predicted, actual = int(m[:, k].sum()), int(m[k, :].sum())
        row["precision_at_threshold"] = 100.0 * m[k, k] / predicted if predicted else None
        row["recall_at_threshold"] = 100.0 * m[k, k] / actual if actual else None


# --------------------------------------------------------------------------- figures
def _matplotlib() -> bool:
    """Whether matplotlib imports; says once per process when it does not."""
    global _warned_no_matplotlib
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        if not _warned_no_matplotlib:
            _warned_no_matplotlib = True
            warnings.warn(_PNG_HINT, RuntimeWarning, stacklevel=3)
        return False
    return True


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # Agg canvas on savefig; no pyplot, no global backend

    # Fixed margins (subplots_adjust) rather than a layout engine: constrained layout measures every
    # text box and took most of the report's time.
    return Figure(figsize=(width, height), dpi=100)


def _margins(fig: Any, left: float, right: float, bottom: float, top: float, **kw: float) -> None:
    """Margins in inches, converted to the figure fractions subplots_adjust takes."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h, **kw)


def _save(fig: Any, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(max_cols, max(1, n))
    return math.ceil(n / cols), cols


def _plot_pr(curves: Mapping[str, Any], rows: list[dict[str, Any]], title: str, path: Path) -> Path:
    names = list(curves["classes"])
    nrows, ncols = _grid(len(names))
    fig = _figure(2.8 * ncols + 0.6, 2.5 * nrows + 0.9)
    _margins(fig, 0.6, 0.15, 0.5, 0.6, wspace=0.08, hspace=0.3)
    grid = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    axes = grid.ravel()
    recall = curves["recall"]
    for ax, name, row in zip(axes, names, rows):
        c = curves["classes"][name]
        if c["precision_iou50"] is None:
            ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.plot(recall, c["precision_iou50"], label="IoU 0.5", color="tab:blue")
            ax.plot(recall, c["precision_iou50_95"], label="IoU 0.5:0.95 (mean)", color="tab:orange", linestyle="--")
        ax.set_title(f"{name}: AP50 {_fmt(row['AP50'])}, AP {_fmt(row['AP'])}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_xlim(0, 1)
    axes[0].set_ylim(0, 1.02)
    for r in range(nrows):
        grid[r, 0].set_ylabel("precision", fontsize=8)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    for i, ax in enumerate(axes[:len(names)]):
        ax.tick_params(labelsize=7, labelbottom=i + ncols >= len(names), labelleft=i % ncols == 0)
        if i + ncols >= len(names):  # the lowest plot of its column
            ax.set_xlabel("recall", fontsize=8)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _draw_matrix(ax: Any, cm: Mapping[str, Any], title: str, vmax: float = 1.0) -> Any:
    """Counts in the cells, colour = share of the row (of the ground-truth class; of all false
    detections in the background row)."""
    m = np.asarray(cm["matrix"], dtype=np.float64)
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=vmax)
    labels = cm["classes"]
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted class (background = missed)", fontsize=9)
    ax.set_ylabel("ground-truth class (background = false detection)", fontsize=9)
    ax.set_title(title, fontsize=10)
    size = 8 if len(labels) <= 12 else 6
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=size,
                        color="white" if frac[i, j] > 0.5 * vmax else "black")
    return im


def _matrix_title(name: str, cm: Mapping[str, Any]) -> str:
    return f"{name}: IoU >= {cm['iou_threshold']:g}, score >= {cm['score_threshold']:g}"


def _plot_matrices(cms: Sequence[tuple[str, Mapping[str, Any]]], path: Path) -> Path:
    """One confusion matrix per model, side by side, with one colour bar; axes placed in inches so the
    square cells fill the figure whatever the number of classes."""
    k = len(cms[0][1]["classes"])
    side, left, bottom, top, bar = 0.45 * k, 2.0, 1.5, 0.5, 1.3
    w, h = len(cms) * (side + left) + bar, side + bottom + top
    fig = _figure(w, h)
    im = None
    for i, (name, cm) in enumerate(cms):
        ax = fig.add_axes(((left + i * (side + left)) / w, bottom / h, side / w, side / h))
        im = _draw_matrix(ax, cm, _matrix_title(name, cm))
    cax = fig.add_axes(((len(cms) * (side + left) + 0.2) / w, bottom / h, 0.2 / w, side / h))
    fig.colorbar(im, cax=cax, label="share of the row")
    return _save(fig, path)


def _plot_compare_bars(rows: list[dict[str, Any]], name: str, ref: str, path: Path) -> Path:
    classes = [r["class"] for r in rows]
    x = np.arange(len(classes))
    fig = _figure(max(6.0, 0.8 * len(classes) + 2.0), 4.2)
    _margins(fig, 0.8, 0.2, 1.0 if len(classes) > 6 else 0.6, 0.45)
    ax = fig.subplots()
    ref_ap = [np.nan if r["AP"][ref] is None else r["AP"][ref] for r in rows]
    own_ap = [np.nan if r["AP"][name] is None else r["AP"][name] for r in rows]
    ax.bar(x - 0.2, ref_ap, 0.4, label=ref, color="tab:gray")
    ax.bar(x + 0.2, own_ap, 0.4, label=name, color="tab:blue")
    top = np.nanmax([*ref_ap, *own_ap, 1.0])
    for xi, r in zip(x, rows):
        d = r["diff"]["AP"]
        if d is not None:
            ax.text(xi, np.nanmax([r["AP"][ref] or 0, r["AP"][name] or 0]) + 0.02 * top, f"{d:+.1f}",
                    ha="center", va="bottom", fontsize=8, color="tab:red" if d < 0 else "tab:green")
    ax.set_xticks(x, classes, rotation=30 if len(classes) > 6 else 0, ha="right" if len(classes) > 6 else "center")
    ax.set_ylabel("AP (IoU 0.5:0.95)")
    ax.set_ylim(0, top * 1.15)
    ax.set_title(f"per-class AP: {name} vs {ref} (labels: {name} - {ref})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


# --------------------------------------------------------------------------- markdown
def _fmt(v: Any, digits: int = 1, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _top_confusions(cm: Mapping[str, Any], limit: int = 5) -> list[str]:
    m = np.asarray(cm["matrix"])
    n = m.shape[0] - 1
    names = cm["classes"]
    cells = [(int(m[i, j]), i, j) for i in range(n) for j in range(n) if i != j and m[i, j]]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    out = []
    for count, i, j in cells[:limit]:
        total = int(m[i].sum())
        out.append(f"- {names[i]} detected as {names[j]}: {count} ({100.0 * count / total:.0f}% of {names[i]})")
    return out


def _markdown(name: str, overall: Mapping[str, Any], rows: list[dict[str, Any]], cm: Mapping[str, Any],
              backend: str) -> list[str]:
    n = len(rows)
    thr = f"IoU >= {cm['iou_threshold']:g}, score >= {cm['score_threshold']:g}"
    lines = [f"## {name}", "",
             f"{cm['images']} images, {cm['ground_truths']} ground-truth objects (crowd regions excluded), "
             f"COCOeval backend `{backend}`.", ""]
    lines += _table(_HEADLINE, [[_fmt(overall.get(k)) for k in _HEADLINE]]) + [""]
    lines += ["### Per class", "",
              f"AP is COCO's (IoU 0.5:0.95, all detections); precision and recall are at the confusion matrix's "
              f"thresholds ({thr}).", ""]
    lines += _table(["class", "GT", "AP", "AP50", "AP75", "precision", "recall"],
                    [[r["class"], r["gt_instances"], _fmt(r["AP"]), _fmt(r["AP50"]), _fmt(r["AP75"]),
                      _fmt(r["precision_at_threshold"]), _fmt(r["recall_at_threshold"])] for r in rows]) + [""]
    m = cm["matrix"]
    lines += [f"### Confusion matrix ({thr})", "",
              "Rows: ground-truth class, last row background = false detections. Columns: predicted class, "
              "last column background = missed objects.", ""]
    short = [c if len(c) <= 12 else c[:11] + "." for c in cm["classes"]]
    lines += _table(["GT \\ predicted", *short], [[short[i], *m[i]] for i in range(n + 1)]) + [""]
    lines += [f"Matched {cm['matched']} (right class {cm['matched_right_class']}, wrong class "
              f"{cm['matched_wrong_class']}), missed {cm['missed']}, false detections {cm['false_detections']}"
              + (f", ignored on crowd regions {cm['ignored_on_crowd']}" if cm["ignored_on_crowd"] else "") + ".", ""]
    top = _top_confusions(cm)
    if top:
        lines += ["Most frequent confusions:", "", *top, ""]
    return lines


# --------------------------------------------------------------------------- one model
def _analyse(coco_gt: COCO, results: Sequence[Mapping[str, Any]], cat_ids: list[int], names: list[str],
             img_ids: list[int], iou_threshold: float, score_threshold: float, backend: str) -> dict[str, Any]:
    ev, _ = coco_eval(coco_gt, results, image_ids=img_ids, cat_ids=sorted(cat_ids), backend=backend)
    overall = {k: _pct(v) for k, v in zip(_STATS, ev.stats)}
    rows = per_class_metrics(ev, coco_gt, results, cat_ids, names, img_ids)
    cm = confusion_matrix(coco_gt, results, names, label_to_cat_id=cat_ids, image_ids=img_ids,
                          iou_threshold=iou_threshold, score_threshold=score_threshold)
    _class_rates(rows, cm)
    return {"overall": overall, "classes": rows, "pr": pr_curves(ev, cat_ids, names), "confusion": cm}


def _write_single(out: Path, name: str, a: Mapping[str, Any], backend: str, pngs: bool,
                  extra_md: Sequence[str] = ()) -> list[Path]:
    cm = a["confusion"]
    files = [
        _write_json(out / "per_class.json", {
            "model": name, "backend": backend, "images": cm["images"], "overall": a["overall"],
            "iou_threshold": cm["iou_threshold"], "score_threshold": cm["score_threshold"], "classes": a["classes"]}),
        _write_json(out / "pr_curves.json", {"model": name, "area": "all", "max_detections": 100, **a["pr"]}),
        _write_json(out / "confusion_matrix.json", {"model": name, **cm}),
    ]
    if pngs:
        files.append(_plot_pr(a["pr"], a["classes"], f"{name}: precision-recall per class", out / "pr_curves.png"))
        files.append(_plot_matrices([(name, cm)], out / "confusion_matrix.png"))
    md = [f"# Evaluation report: {name}", "", *extra_md, *_markdown(name, a["overall"], a["classes"], cm, backend)]
    if pngs:
        md += ["### Figures", "", "![confusion matrix](confusion_matrix.png)", "",
               "![precision-recall curves](pr_curves.png)", ""]
    else:
        md += [f"_PNG figures not written: {_PNG_HINT.split(';')[0]}._", ""]
    md += ["Files: per_class.json, pr_curves.json, confusion_matrix.json" + (", *.png" if pngs else "")
           + "; conventions in kdzoo's docs/evaluation.md.", ""]
    files.append(_write_text(out / "report.md", "\n".join(md)))
    return files


def _compare_rows(name: str, ref: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for ra, rb in zip(a["classes"], b["classes"]):
        row: dict[str, Any] = {"class": ra["class"], "gt_instances": ra["gt_instances"], "diff": {}}
        for k in ("AP", "AP50", "AP75", "precision_at_threshold", "recall_at_threshold"):
            row[k] = {name: ra[k], ref: rb[k]}
            row["diff"][k] = None if ra[k] is None or rb[k] is None else ra[k] - rb[k]
        rows.append(row)
    return rows


def format_compare(compare: Mapping[str, Any], digits: int = 1) -> str:
    """Plain-text per-class AP of both models and their difference (from ``write_report(...)["compare"]``)."""
    name, ref = compare["model"], compare["reference"]
    width = max(8, *(len(r["class"]) for r in compare["classes"]))
    col = min(24, max(8, len(ref), len(name)))
    cols = (ref[:col], name[:col], "diff")
    lines = [f"{'class':<{width}}  " + "  ".join(f"{c:>{col}}" for c in cols), "-" * (width + (col + 2) * len(cols))]
    for label, ra, rb, d in [("all", compare["overall"]["AP"][ref], compare["overall"]["AP"][name],
                              compare["overall"]["diff"]["AP"])] + [
            (r["class"], r["AP"][ref], r["AP"][name], r["diff"]["AP"]) for r in compare["classes"]]:
        lines.append(f"{label:<{width}}  {_fmt(ra, digits):>{col}}  {_fmt(rb, digits):>{col}}  "
                     f"{_fmt(d, digits, True):>{col}}")
    return "\n".join(lines)


def _safe_dirname(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "reference"


def write_report(
    out_dir: str | Path,
    coco_gt: COCO,
    results: Sequence[Mapping[str, Any]],
    categories: Sequence[str] | None = None,
    *,
    label_to_cat_id: Sequence[int] | None = None,
    name: str | None = None,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    compare: Sequence[Mapping[str, Any]] | None = None,
    compare_name: str = "teacher",
    image_ids: Sequence[int] | None = None,
    backend: str = "pycocotools",
    figures: bool = True,
) -> dict[str, Any]:
    """Write the evaluation report of ``results`` (COCO bbox results) against ``coco_gt`` into ``out_dir``.

    Args:
        categories: display name of each class, in ``label_to_cat_id`` order (default: the ground truth's).
        label_to_cat_id: category id of each class index, i.e. the row/column order of the confusion
            matrix (default: the ground-truth ids sorted, as :class:`kdzoo.data.coco.CocoDetection`).
        name: the model's name in titles and tables (default ``"model"``).
        iou_threshold, score_threshold: the confusion matrix's matching IoU and minimum detection score
            (AP and the PR curves always use every detection).
        compare: a reference model's results on the same images (a distilled student's teacher):
            its own report goes to ``out_dir/<compare_name>/`` and the side-by-side files to ``out_dir``;
            differences are ``name - compare_name``.
        image_ids: evaluate these images only (default: every ground-truth image; an image without
            detections counts its objects as missed).
        backend: COCOeval implementation, ``"pycocotools"`` or ``"faster_coco_eval"``.
        figures: write the PNGs (needs matplotlib; skipped with one warning when it is missing).

    Returns:
        ``{"out_dir", "files": [Path], "overall", "classes", "confusion_matrix", "compare": dict | None,
        "seconds"}``.
    """
    t0 = time.perf_counter()
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if not isinstance(results, Sequence) or isinstance(results, (str, bytes)):
        raise ValueError(f"results must be a list of COCO bbox result dicts, got {type(results).__name__}")
    if compare is not None and (not isinstance(compare, Sequence) or isinstance(compare, (str, bytes))):
        raise ValueError(f"compare must be a list of COCO bbox result dicts, got {type(compare).__name__}")
    name = name or "model"
    if compare is not None and compare_name == name:
        raise ValueError(f"compare_name {compare_name!r} equals name; expected two different model names")
    cat_ids = _cat_ids(coco_gt, label_to_cat_id)
    names = _names(coco_gt, cat_ids, categories)
    img_ids = _image_ids(coco_gt, image_ids)
    iou_threshold = _threshold(iou_threshold, "iou_threshold")
    score_threshold = _threshold(score_threshold, "score_threshold")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"report directory {str(out)!r} is a file; expected a directory (or a new path)")
    out.mkdir(parents=True, exist_ok=True)
    pngs = figures and _matplotlib()

    own = _analyse(coco_gt, results, cat_ids, names, img_ids, iou_threshold, score_threshold, backend)
    cmp: dict[str, Any] | None = None
    files: list[Path] = []
    extra_md: list[str] = []
    if compare is not None:
        ref = _analyse(coco_gt, compare, cat_ids, names, img_ids, iou_threshold, score_threshold, backend)
        sub = out / _safe_dirname(compare_name)
        sub.mkdir(exist_ok=True)
        files += _write_single(sub, compare_name, ref, backend, pngs)
        rows = _compare_rows(name, compare_name, own, ref)
        overall = {k: {name: own["overall"][k], compare_name: ref["overall"][k]} for k in _HEADLINE}
        overall["diff"] = {k: None if v[name] is None or v[compare_name] is None else v[name] - v[compare_name]
                           for k, v in overall.items()}
        cmp = {"model": name, "reference": compare_name, "difference": f"{name} - {compare_name}",
               "reference_report": sub.name, "overall": overall, "classes": rows,
               "confusion_matrix": {name: own["confusion"], compare_name: ref["confusion"]}}
        files.append(_write_json(out / "compare.json", cmp))
        if pngs:
            files.append(_plot_compare_bars(rows, name, compare_name, out / "per_class_compare.png"))
            files.append(_plot_matrices([(compare_name, ref["confusion"]), (name, own["confusion"])],
                                        out / "confusion_matrix_compare.png"))
        extra_md = _compare_markdown(cmp, pngs, sub.name)
    files += _write_single(out, name, own, backend, pngs, extra_md)
    return {"out_dir": out, "files": files, "overall": own["overall"], "classes": own["classes"],
            "confusion_matrix": own["confusion"], "compare": cmp, "seconds": time.perf_counter() - t0}


def _compare_markdown(cmp: Mapping[str, Any], pngs: bool, subdir: str) -> list[str]:
    name, ref = cmp["model"], cmp["reference"]
    o = cmp["overall"]
    lines = [f"## {name} vs {ref}", "",
             f"Differences are {name} - {ref}: a negative number is where {name} trails. "
             f"{ref}'s own report: [{subdir}/report.md]({subdir}/report.md).", ""]
    lines += _table(["", *_HEADLINE], [[ref, *(_fmt(o[k][ref]) for k in _HEADLINE)],
                                       [name, *(_fmt(o[k][name]) for k in _HEADLINE)],
                                       ["difference", *(_fmt(o["diff"][k], signed=True) for k in _HEADLINE)]]) + [""]
    rows = sorted(cmp["classes"], key=lambda r: (r["diff"]["AP"] is None, r["diff"]["AP"] or 0.0))
    lines += ["### Per-class AP, largest gap first", ""]
    cms = cmp["confusion_matrix"]
    at = f"@{cms[name]['score_threshold']:g}"
    lines += _table(["class", "GT", f"AP {ref}", f"AP {name}", "diff AP", "diff AP50", "diff AP75", f"diff recall{at}"],
                    [[r["class"], r["gt_instances"], _fmt(r["AP"][ref]), _fmt(r["AP"][name]),
                      _fmt(r["diff"]["AP"], signed=True), _fmt(r["diff"]["AP50"], signed=True),
                      _fmt(r["diff"]["AP75"], signed=True), _fmt(r["diff"]["recall_at_threshold"], signed=True)]
                     for r in rows]) + [""]
    trailing = [r["class"] for r in rows if r["diff"]["AP"] is not None and r["diff"]["AP"] < 0]
    lines += [f"{name} trails {ref} on {len(trailing)} of {len(rows)} classes"
              + (f", most on {', '.join(trailing[:3])}." if trailing else "."), ""]
    lines += [f"Confusion matrix totals (IoU >= {cms[name]['iou_threshold']:g}, score >= "
              f"{cms[name]['score_threshold']:g}):", ""]
    lines += _table(["", "matched right class", "wrong class", "missed", "false detections"],
                    [[k, c["matched_right_class"], c["matched_wrong_class"], c["missed"], c["false_detections"]]
                     for k, c in ((ref, cms[ref]), (name, cms[name]))]) + [""]
    if pngs:
        lines += ["![per-class AP](per_class_compare.png)", "", "![confusion matrices](confusion_matrix_compare.png)", ""]
    return lines


# --------------------------------------------------------------------------- a training run
def _teacher_results(run_dir: Path, dataset: Any) -> tuple[list[dict[str, Any]] | None, str]:
    """The teacher run's results.json when the run's recipe names a teacher run directory that was
    evaluated on the same validation data; else None and why not."""
    import yaml

    try:
        recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        return None, f"no teacher comparison: cannot read {run_dir / 'recipe.yaml'} ({e})"
    teacher = recipe.get("teacher") or {}
    ckpt = teacher.get("checkpoint")
    if not ckpt or not Path(ckpt).is_dir():
        return None, "no teacher comparison: the recipe has no teacher run directory"
    tdir = Path(ckpt)
    try:
        t_recipe = yaml.safe_load((tdir / "recipe.yaml").read_text()) or {}
        results = json.loads((tdir / "results.json").read_text())
    except (OSError, ValueError, yaml.YAMLError) as e:
        return None, f"no teacher comparison: {tdir} has no readable recipe.yaml and results.json ({e})"
    keys = ("val_images", "val_ann", "shapes")
    a, b = recipe.get("data") or {}, t_recipe.get("data") or {}
    same_root = False
    try:
        same_root = Path(a.get("root", "")).resolve() == Path(b.get("root", "")).resolve()
    except (OSError, TypeError):
        pass
    if not same_root or any(a.get(k) != b.get(k) for k in keys):
        return None, f"no teacher comparison: the teacher run {tdir} was evaluated on other validation data"
    try:
        if not isinstance(results, list):
            raise ValueError("expected a list of COCO results")
        _results_annotations(dataset.coco, results)
    except ValueError as e:
        return None, f"no teacher comparison: {tdir / 'results.json'} does not fit this dataset ({e})"
    return results, f"teacher: {tdir} (its results.json)"


def write_run_report(
    run_dir: str | Path,
    dataset: Any,
    results: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any] | None = None,
    *,
    teacher: str | Sequence[Mapping[str, Any]] | None = "auto",
    backend: str | None = None,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
) -> dict[str, Any]:
    """The end-of-training report of a run, in ``run_dir/report/`` (what the engine calls after the final
    evaluation, on rank 0; 1-2 s for the 200-image shapes validation set, twice that with the teacher).

    Args:
        dataset: the validation :class:`~kdzoo.data.coco.CocoDetection` (``.coco``, ``.categories``,
            ``.label_to_cat_id``); every ground-truth image is evaluated, as :func:`kdzoo.evaluation.evaluate` does.
        results: the run's final COCO results (``results.json``).
        metrics: the final metrics ``evaluate`` returned; when given, their AP is checked against the
            report's (a warning if they differ, i.e. results and metrics come from different evaluations).
        teacher: ``"auto"`` compares a distillation run with its teacher's ``results.json`` when the recipe's
            ``teacher.checkpoint`` is a run directory evaluated on the same validation data; a results list
            compares with that; None writes the student alone.
        backend: COCOeval implementation; default faster_coco_eval when it is installed (the same AP,
            2-4x faster), else pycocotools.
    """
    if backend is None:
        try:
            import faster_coco_eval  # noqa: F401

            backend = "faster_coco_eval"
        except ImportError:
            backend = "pycocotools"
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist")
    note = None
    compare = None
    if isinstance(teacher, str):
        if teacher != "auto":
            raise ValueError(f"teacher must be 'auto', a results list or None, got {teacher!r}")
        compare, note = _teacher_results(run_dir, dataset)
    elif teacher is not None:
        compare = teacher
    report = write_report(run_dir / "report", dataset.coco, results, dataset.categories,
                          label_to_cat_id=dataset.label_to_cat_id,
                          name=run_dir.name if run_dir.name != "teacher" else "student", compare=compare,
                          compare_name="teacher", backend=backend, iou_threshold=iou_threshold,
                          score_threshold=score_threshold)
    report["note"] = note
    ours, theirs = report["overall"]["AP"], None if metrics is None else metrics.get("AP")
    if ours is not None and theirs is not None and math.isfinite(float(theirs)):
        if not math.isclose(float(theirs), ours, rel_tol=0, abs_tol=1e-6):
            print(f"warning: {run_dir}: the report's AP {report['overall']['AP']:.4f} differs from the final "
                  f"metrics' {float(metrics['AP']):.4f}; were results and metrics from the same evaluation?",
                  file=sys.stderr)
    return report
