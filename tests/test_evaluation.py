"""Tests for kdzoo.evaluation against pycocotools run directly."""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
from pathlib import Path

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from kdzoo.evaluation import CocoEvaluator, evaluate_results, format_table, save_results_json

CAT_IDS = [2, 9]  # non-contiguous on purpose: labels 0/1 map to these


def _gt_dict() -> dict:
    rng = random.Random(0)
    images, anns = [], []
    for img_id in range(1, 7):
        images.append({"id": img_id, "file_name": f"{img_id}.png", "width": 400, "height": 400})
        for _ in range(rng.randint(1, 5)):
            side = rng.choice([10, 20, 50, 80, 150])  # small, medium and large objects
            x, y = rng.uniform(0, 400 - side), rng.uniform(0, 400 - side)
            anns.append({
                "id": len(anns) + 1, "image_id": img_id, "category_id": rng.choice(CAT_IDS),
                "bbox": [x, y, side, side * rng.uniform(0.6, 1.0)], "area": side * side * 0.8, "iscrowd": 0,
            })
    cats = [{"id": 9, "name": "b"}, {"id": 2, "name": "a"}]
    return {"images": images, "annotations": anns, "categories": cats}


@pytest.fixture()
def gt() -> COCO:
    coco = COCO()
    coco.dataset = _gt_dict()
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _pycocotools_stats(gt: COCO, results: list[dict]) -> list[float]:
    """Reference: the plain pycocotools recipe, independent of kdzoo."""
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) * 100 for v in ev.stats[:6]]


def _perfect_outputs(gt: COCO) -> tuple[list[int], list[dict]]:
    ids, outs = [], []
    for img_id in gt.getImgIds():
        anns = gt.loadAnns(gt.getAnnIds(imgIds=img_id))
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns])
        labels = torch.tensor([CAT_IDS.index(a["category_id"]) for a in anns])
        ids.append(img_id)
        outs.append({"boxes": boxes, "scores": torch.ones(len(anns)), "labels": labels})
    return ids, outs


def test_perfect_predictions(gt: COCO) -> None:
    ev = CocoEvaluator(gt, CAT_IDS)
    ev.update(*_perfect_outputs(gt))
    m = ev.summarize()
    for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert m[k] == pytest.approx(100.0), k
    assert m["per_class"] == {"a": pytest.approx(100.0), "b": pytest.approx(100.0)}
    r = ev.results()[0]
    a = gt.loadAnns(gt.getAnnIds(imgIds=r["image_id"]))[0]
    assert r["bbox"] == pytest.approx(a["bbox"], abs=1e-4) and r["category_id"] == a["category_id"]
    text = format_table(m)
    assert "AP50" in text and "a" in text and "100.0" in text


def test_matches_pycocotools(gt: COCO, tmp_path: Path) -> None:
    rng = random.Random(1)
    results = []
    for a in gt.loadAnns(gt.getAnnIds()):
        x, y, w, h = a["bbox"]
        if rng.random() < 0.2:
            continue  # missed detection
        j = lambda v: v + rng.gauss(0, 0.08 * w)  # noqa: E731 - localisation noise
        cat = a["category_id"] if rng.random() < 0.85 else rng.choice(CAT_IDS)
        results.append({"image_id": a["image_id"], "category_id": cat, "bbox": [j(x), j(y), w, h], "score": rng.random()})
    for _ in range(15):  # false positives
        results.append({"image_id": rng.randint(1, 6), "category_id": rng.choice(CAT_IDS),
                        "bbox": [rng.uniform(0, 300), rng.uniform(0, 300), 40, 30], "score": rng.random()})
    path = save_results_json(tmp_path / "out" / "dets.json", results)
    assert [p.name for p in path.parent.iterdir()] == ["dets.json"]  # no temp file left behind
    loaded = json.loads(path.read_text())

    ref = _pycocotools_stats(gt, loaded)
    m = evaluate_results(gt, loaded)
    ours = [m[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
    assert ours == pytest.approx(ref, abs=1e-9)
    assert 0 < m["AP"] < 100

    # Per-class AP equals pycocotools restricted to one category.
    for cat, name in zip(CAT_IDS, ("a", "b")):
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(gt, gt.loadRes(loaded), "bbox")
            ev.params.catIds = [cat]
            ev.evaluate(); ev.accumulate(); ev.summarize()  # noqa: E702
        assert m["per_class"][name] == pytest.approx(ev.stats[0] * 100, abs=1e-9)

    # Same numbers through the evaluator, split across two "ranks" and merged with duplicates.
    by_img: dict[int, list[dict]] = {}
    for r in loaded:
        by_img.setdefault(r["image_id"], []).append(r)
    ranks = [CocoEvaluator(gt, CAT_IDS), CocoEvaluator(gt, CAT_IDS)]
    for img_id in gt.getImgIds():
        rs = by_img.get(img_id, [])
        out = {
            "boxes": torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in rs)], dtype=torch.float64).reshape(-1, 4),
            "scores": torch.tensor([r["score"] for r in rs]),
            "labels": torch.tensor([CAT_IDS.index(r["category_id"]) for r in rs], dtype=torch.long),
        }
        ranks[img_id % 2].update([img_id], [out])
    ranks[1].update([2], [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}])
    ranks[0].merge([ranks[1].state_dict()])  # image 2 is on both ranks: rank 0's copy wins
    assert sorted(ranks[0].image_ids) == gt.getImgIds()
    assert [ranks[0].summarize()[k] for k in ("AP", "AP50", "AP75")] == pytest.approx(ref[:3], abs=1e-3)


def test_empty_predictions(gt: COCO) -> None:
    m = evaluate_results(gt, [])
    assert all(m[k] == 0.0 for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"))
    assert set(m["per_class"].values()) == {0.0}
    ev = CocoEvaluator(gt, CAT_IDS)
    assert ev.summarize()["AP"] == 0.0
    ev.update([1], [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}])
    assert ev.summarize()["AP"] == 0.0 and ev.results() == []
    format_table(m)


def test_undefined_metrics_are_nan(gt: COCO) -> None:
    # Evaluate only images without large objects: APl is undefined there (pycocotools -1), not 0.
    no_large = [i for i in gt.getImgIds() if all(a["area"] < 96**2 for a in gt.loadAnns(gt.getAnnIds(imgIds=i)))]
    assert no_large
    m = evaluate_results(gt, [], image_ids=no_large)
    assert math.isnan(m["APl"]) and m["AP"] == 0.0
    assert "n/a" in format_table(m)


def test_bad_inputs(gt: COCO) -> None:
    with pytest.raises(ValueError, match="not in the ground truth"):
        CocoEvaluator(gt, [2, 4])
    ev = CocoEvaluator(gt, CAT_IDS)
    with pytest.raises(ValueError, match="labels must be in"):
        ev.update([1], [{"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([2])}])
    with pytest.raises(ValueError, match="one output per image"):
        ev.update([1, 2], [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}])
    with pytest.raises(ValueError, match="image_id 99"):
        evaluate_results(gt, [{"image_id": 99, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 1.0}])
    with pytest.raises(ValueError, match="categories has 1 names"):
        evaluate_results(gt, [], categories=["x"])


def test_results_file_follows_the_umask(tmp_path: Path) -> None:
    import os
    import stat

    from kdzoo.evaluation import save_results_json

    old = os.umask(0o022)
    try:
        path = save_results_json(tmp_path / "results.json", [])
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600
