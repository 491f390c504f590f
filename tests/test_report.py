"""kdzoo.report (per-class AP, PR curves, confusion matrix, teacher comparison), the COCOeval backends
and the ``kdzoo eval --report / --compare-teacher / --backend`` flags."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import random
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import kdzoo.report as report_mod
from kdzoo.cli.eval import main as eval_main
from kdzoo.evaluation import coco_eval, evaluate_results
from kdzoo.report import BACKGROUND, confusion_matrix, write_report

# The optional packages (all in the dev extra): without one, the tests that need it are skipped.
needs_fce = pytest.mark.skipif(importlib.util.find_spec("faster_coco_eval") is None,
                               reason="faster-coco-eval is not installed (pip install 'kdzoo[fast-eval]')")
needs_mpl = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                               reason="matplotlib is not installed (pip install 'kdzoo[report]')")
needs_sv = pytest.mark.skipif(importlib.util.find_spec("supervision") is None, reason="supervision is not installed")

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "kdzoo" / "weights"
HEADLINE = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# ----------------------------------------------------------------------------- helpers
def _coco(data: dict) -> COCO:
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _ann(i: int, img: int, cat: int, bbox: list[float], crowd: int = 0) -> dict:
    return {"id": i, "image_id": img, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": crowd}


def _det(img: int, cat: int, bbox: list[float], score: float) -> dict:
    return {"image_id": img, "category_id": cat, "bbox": bbox, "score": score}


CATS = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 5, "name": "bird"}]  # ids not contiguous
LABEL_TO_CAT = [1, 2, 5]


def _hand_gt(crowd: bool = False) -> COCO:
    anns = [_ann(1, 1, 1, [0, 0, 20, 20]), _ann(2, 1, 2, [50, 50, 20, 20]), _ann(3, 1, 5, [10, 60, 20, 20])]
    images = [{"id": 1, "file_name": "1.png", "width": 100, "height": 100}]
    if crowd:
        images.append({"id": 2, "file_name": "2.png", "width": 100, "height": 100})
        anns += [_ann(4, 2, 1, [0, 0, 50, 50], crowd=1), _ann(5, 2, 2, [60, 60, 30, 30])]
    return _coco({"images": images, "annotations": anns, "categories": CATS})


HAND_DETS = [
    _det(1, 1, [1, 1, 20, 20], 0.9),    # the cat, found: matched, right class
    _det(1, 1, [50, 50, 20, 20], 0.8),  # the dog, called a cat: matched, wrong class
    _det(1, 5, [80, 0, 15, 15], 0.7),   # a bird where there is nothing: false detection
    _det(1, 2, [0, 0, 20, 20], 0.6),    # a dog on the cat, already matched: false detection (one per GT)
    _det(1, 5, [10, 60, 20, 20], 0.2),  # the bird, below the score threshold: the bird is missed
]


def _random_scene(seed: int, n_images: int = 12, crowd: bool = True) -> tuple[COCO, list[dict]]:
    """Objects of 3 classes, detections with localisation noise, wrong classes, duplicates, misses and
    false positives; a few crowd regions."""
    rng = random.Random(seed)
    images, anns, dets = [], [], []
    for img in range(1, n_images + 1):
        images.append({"id": img, "file_name": f"{img}.png", "width": 300, "height": 300})
        for _ in range(rng.randint(0, 6)):
            side = rng.choice([12, 30, 60, 110])
            x, y = rng.uniform(0, 300 - side), rng.uniform(0, 300 - side)
            cat = rng.choice(LABEL_TO_CAT)
            is_crowd = int(crowd and rng.random() < 0.08)
            anns.append(_ann(len(anns) + 1, img, cat, [x, y, side, side * rng.uniform(0.6, 1.0)], is_crowd))
            for _ in range(rng.choice([0, 1, 1, 1, 2])):
                c = cat if rng.random() < 0.75 else rng.choice(LABEL_TO_CAT)
                j = lambda v: v + rng.gauss(0, 0.12 * side)  # noqa: E731
                dets.append(_det(img, c, [j(x), j(y), side * rng.uniform(0.8, 1.2), side * 0.8], rng.random()))
        for _ in range(rng.randint(0, 3)):
            dets.append(_det(img, rng.choice(LABEL_TO_CAT), [rng.uniform(0, 250), rng.uniform(0, 250), 40, 30],
                             rng.random()))
    return _coco({"images": images, "annotations": anns, "categories": CATS}), dets


def _cocoeval(gt: COCO, dets: list[dict], cat_ids: list[int] | None = None) -> COCOeval:
    """The plain pycocotools recipe, independent of kdzoo."""
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes([dict(d) for d in dets]), "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


# ----------------------------------------------------------------------------- confusion matrix
def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(_hand_gt(), HAND_DETS, label_to_cat_id=LABEL_TO_CAT)
    assert cm["classes"] == ["cat", "dog", "bird", BACKGROUND]
    #                       cat dog bird background(missed)
    assert cm["matrix"] == [[1, 0, 0, 0],   # cat
                            [1, 0, 0, 0],   # dog: detected as a cat
                            [0, 0, 0, 1],   # bird: missed
                            [0, 1, 1, 0]]   # background: false detections (a dog, a bird)
    assert (cm["matched"], cm["matched_right_class"], cm["matched_wrong_class"]) == (2, 1, 1)
    assert (cm["missed"], cm["false_detections"], cm["ground_truths"], cm["detections"]) == (1, 2, 3, 4)
    assert (cm["score_threshold"], cm["iou_threshold"]) == (0.3, 0.5)

    # Below the default score threshold the bird detection counts and finds its bird.
    low = confusion_matrix(_hand_gt(), HAND_DETS, label_to_cat_id=LABEL_TO_CAT, score_threshold=0.1)
    assert low["matrix"][2] == [0, 0, 1, 0] and low["missed"] == 0
    # A stricter IoU: the cat shifted by 1 px (IoU 0.82) no longer matches at 0.9.
    # The dog detection lying exactly on the cat then takes it in the second (other-class) pass.
    strict = confusion_matrix(_hand_gt(), HAND_DETS, label_to_cat_id=LABEL_TO_CAT, iou_threshold=0.9)
    assert strict["matrix"] == [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [1, 0, 1, 0]]
    # The matrix rows and columns follow label_to_cat_id (here: bird, cat, dog).
    perm = confusion_matrix(_hand_gt(), HAND_DETS, label_to_cat_id=[5, 1, 2])
    assert perm["classes"][:3] == ["bird", "cat", "dog"] and perm["matrix"][0] == [0, 0, 0, 1]


def test_confusion_matrix_matching_rules() -> None:
    gt = _coco({"images": [{"id": 1, "width": 100, "height": 100}], "categories": CATS,
                "annotations": [_ann(1, 1, 1, [0, 0, 20, 20])]})
    # Same-class pass first (COCOeval's rule): the right-class detection gets the object even with a
    # lower score than a wrong-class one; the wrong-class one is then a false detection.
    cm = confusion_matrix(gt, [_det(1, 2, [0, 0, 20, 20], 0.9), _det(1, 1, [1, 1, 20, 20], 0.5)])
    assert cm["matrix"][0] == [1, 0, 0, 0] and cm["matrix"][3] == [0, 1, 0, 0]
    # Two same-class detections on one object: the higher score matches, the other is a false detection.
    cm = confusion_matrix(gt, [_det(1, 1, [2, 2, 20, 20], 0.4), _det(1, 1, [0, 0, 20, 20], 0.35)])
    assert cm["matrix"][0] == [1, 0, 0, 0] and cm["false_detections"] == 1
    # IoU exactly at the threshold matches (>=, as COCOeval).
    cm = confusion_matrix(gt, [_det(1, 1, [0, 0, 20, 10], 0.9)])
    assert cm["matched_right_class"] == 1


def test_crowd_regions_are_ignored() -> None:
    dets = [*HAND_DETS,
            _det(2, 1, [5, 5, 10, 10], 0.9),     # a cat inside the cat crowd region: ignored
            _det(2, 2, [10, 10, 10, 10], 0.8),   # a dog inside it: another class, a false detection
            _det(2, 2, [61, 61, 30, 30], 0.7)]   # the dog of image 2
    cm = confusion_matrix(_hand_gt(crowd=True), dets, label_to_cat_id=LABEL_TO_CAT)
    assert cm["ignored_on_crowd"] == 1 and cm["ground_truths"] == 4  # the crowd region is not an object
    assert cm["matrix"] == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1], [0, 2, 1, 0]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matrix_invariants_and_cocoeval(seed: int) -> None:
    gt, dets = _random_scene(seed)
    thr = 0.3
    cm = confusion_matrix(gt, dets, label_to_cat_id=LABEL_TO_CAT, score_threshold=thr)
    m = np.array(cm["matrix"])
    n = len(LABEL_TO_CAT)
    assert m.sum() == cm["matched"] + cm["missed"] + cm["false_detections"]
    assert np.trace(m[:n, :n]) == cm["matched_right_class"] and m[n, n] == 0
    assert m[:n].sum() == sum(1 for a in gt.dataset["annotations"] if not a["iscrowd"])
    assert m[:, :n].sum() + cm["ignored_on_crowd"] == sum(d["score"] >= thr for d in dets)
    assert cm["matched_wrong_class"] > 0 and cm["missed"] > 0 and cm["false_detections"] > 0

    # The diagonal is COCOeval's true positives at IoU 0.5 among detections scoring >= thr, and the
    # rest of the detections (wrong class or background) its false positives; COCOeval ignores the
    # same detections (those on crowd regions of their class).
    ev = _cocoeval(gt, dets)
    tp = fp = ig = 0
    for e in ev.evalImgs:
        if e is None or e["aRng"] != ev.params.areaRng[0]:
            continue
        keep = np.array(e["dtScores"]) >= thr
        matched, ignored = e["dtMatches"][0] > 0, e["dtIgnore"][0].astype(bool)
        tp += int((keep & matched & ~ignored).sum())
        fp += int((keep & ~matched & ~ignored).sum())
        ig += int((keep & ignored).sum())
    assert cm["matched_right_class"] == tp
    assert cm["matched_wrong_class"] + cm["false_detections"] == fp
    assert cm["ignored_on_crowd"] == ig


# ----------------------------------------------------------------------------- supervision cross-check
def _sv_matrix(gt: COCO, dets: list[dict], thr: float, iou: float) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # supervision warns that OpenCV is not installed
        import supervision as sv
    lab = {c: i for i, c in enumerate(LABEL_TO_CAT)}
    preds, targets = [], []
    for img in sorted(gt.getImgIds()):
        t = [[x, y, x + w, y + h, lab[a["category_id"]]] for a in gt.imgToAnns[img] for x, y, w, h in [a["bbox"]]]
        p = [[x, y, x + w, y + h, lab[d["category_id"]], d["score"]] for d in dets if d["image_id"] == img
             for x, y, w, h in [d["bbox"]]]
        targets.append(np.array(t, dtype=np.float64).reshape(-1, 5))
        preds.append(np.array(p, dtype=np.float64).reshape(-1, 6))
    names = [c["name"] for c in CATS]
    return sv.ConfusionMatrix.from_tensors(preds, targets, names, conf_threshold=thr, iou_threshold=iou).matrix


def _separated_scene(seed: int) -> tuple[COCO, list[dict]]:
    """Objects on a grid (no detection overlaps two objects), IoU far from the threshold, at most one
    class among the detections of an object: where supervision's matching order and ours agree."""
    rng = random.Random(seed)
    images, anns, dets = [], [], []
    for img in range(1, 9):
        images.append({"id": img, "width": 400, "height": 400})
        for cell in rng.sample(range(16), rng.randint(2, 10)):
            x, y = 100 * (cell % 4) + 10, 100 * (cell // 4) + 10
            cat = rng.choice(LABEL_TO_CAT)
            if rng.random() < 0.2:  # a false detection in an empty cell
                dets.append(_det(img, cat, [x, y, 50, 50], rng.random()))
                continue
            anns.append(_ann(len(anns) + 1, img, cat, [x, y, 50, 50]))
            c = cat if rng.random() < 0.7 else rng.choice(LABEL_TO_CAT)
            for _ in range(rng.choice([0, 1, 1, 2])):  # misses, hits, duplicates of the same class
                dx = rng.choice([rng.uniform(-4, 4), rng.uniform(30, 40)])  # IoU > 0.7 or < 0.3
                dets.append(_det(img, c, [x + dx, y + rng.uniform(-3, 3), 50, 50], rng.random()))
    return _coco({"images": images, "annotations": anns, "categories": CATS}), dets


@needs_sv
def test_supervision_agrees_where_conventions_agree() -> None:
    # The hand-built case: no object has two candidate detections of different classes.
    ours = confusion_matrix(_hand_gt(), HAND_DETS, label_to_cat_id=LABEL_TO_CAT)["matrix"]
    assert np.array_equal(_sv_matrix(_hand_gt(), HAND_DETS, 0.3, 0.5), ours)
    # Layout: both put ground truth on the rows, predictions on the columns, background last.
    for seed in range(4):
        gt, dets = _separated_scene(seed)
        for thr in (0.0, 0.3, 0.6):
            ours = confusion_matrix(gt, dets, label_to_cat_id=LABEL_TO_CAT, score_threshold=thr)["matrix"]
            assert np.array_equal(_sv_matrix(gt, dets, thr, 0.5), ours), (seed, thr)


@needs_sv
def test_supervision_convention_differences() -> None:
    gt = _coco({"images": [{"id": 1, "width": 100, "height": 100}], "categories": CATS,
                "annotations": [_ann(1, 1, 1, [0, 0, 20, 20])]})
    # 1. Wrong-class candidates: we match the higher *score* (dog), supervision the higher *IoU* (bird).
    dets = [_det(1, 2, [3, 0, 20, 20], 0.9), _det(1, 5, [1, 0, 20, 20], 0.5)]
    assert confusion_matrix(gt, dets)["matrix"][0] == [0, 1, 0, 0]
    assert _sv_matrix(gt, dets, 0.3, 0.5)[0].tolist() == [0, 0, 1, 0]
    # 2. IoU exactly at the threshold: a match for us (>=, COCOeval), not for supervision (>).
    dets = [_det(1, 1, [0, 0, 20, 10], 0.9)]
    assert confusion_matrix(gt, dets)["matrix"][0] == [1, 0, 0, 0]
    assert _sv_matrix(gt, dets, 0.3, 0.5)[0].tolist() == [0, 0, 0, 1]
    # 3. Crowd regions: supervision has none (its targets carry no iscrowd), so only crowd-free scenes compare.


# ----------------------------------------------------------------------------- report files
@needs_mpl
def test_report_files_and_per_class_ap(tmp_path: Path) -> None:
    gt, dets = _random_scene(5)
    out = tmp_path / "report"
    rep = write_report(out, gt, dets, ["Cat", "Dog", "Bird"], label_to_cat_id=LABEL_TO_CAT, name="m")
    for f in ("per_class.json", "report.md", "pr_curves.json", "pr_curves.png", "confusion_matrix.json",
              "confusion_matrix.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*"))  # no temporary files left behind
    assert rep["compare"] is None and set(rep["files"]) == set(out.iterdir())

    # Per-class AP / AP50 / AP75 are pycocotools' own numbers for that one category.
    per_class = json.loads((out / "per_class.json").read_text())
    assert per_class["model"] == "m" and per_class["score_threshold"] == 0.3
    for row, cat in zip(per_class["classes"], LABEL_TO_CAT):
        ev = _cocoeval(gt, dets, [cat])
        assert row["category_id"] == cat
        assert [row["AP"], row["AP50"], row["AP75"]] == pytest.approx([v * 100 for v in ev.stats[:3]], abs=1e-9)
        assert row["gt_instances"] == sum(1 for a in gt.dataset["annotations"]
                                          if a["category_id"] == cat and not a["iscrowd"])
    ev = _cocoeval(gt, dets)
    assert [per_class["overall"][k] for k in HEADLINE] == pytest.approx([v * 100 for v in ev.stats[:6]], abs=1e-9)

    # PR curves: COCOeval's precision array (area all, 100 detections), per class.
    curves = json.loads((out / "pr_curves.json").read_text())
    assert len(curves["recall"]) == 101 and list(curves["classes"]) == ["Cat", "Dog", "Bird"]
    for k, name in enumerate(curves["classes"]):
        p = ev.eval["precision"][:, :, k, 0, -1]
        assert curves["classes"][name]["precision_iou50"] == pytest.approx(p[0], abs=1e-6)
        assert curves["classes"][name]["precision_iou50_95"] == pytest.approx(p.mean(axis=0), abs=1e-6)

    cm = json.loads((out / "confusion_matrix.json").read_text())
    assert cm["matrix"] == confusion_matrix(gt, dets, label_to_cat_id=LABEL_TO_CAT)["matrix"]
    md = (out / "report.md").read_text()
    assert "# Evaluation report: m" in md and "| Cat |" in md and "background" in md
    assert "![confusion matrix](confusion_matrix.png)" in md


@needs_mpl
def test_compare_mode_writes_both_sides(tmp_path: Path) -> None:
    gt, student = _random_scene(7)
    _, teacher = _random_scene(8)  # other detections on the same images
    teacher = [d for d in teacher if d["image_id"] in gt.imgs]
    out = tmp_path / "cmp"
    rep = write_report(out, gt, student, label_to_cat_id=LABEL_TO_CAT, name="student", compare=teacher)
    for f in ("compare.json", "per_class_compare.png", "confusion_matrix_compare.png", "per_class.json",
              "report.md", "teacher/per_class.json", "teacher/report.md", "teacher/confusion_matrix.json",
              "teacher/pr_curves.png"):
        assert (out / f).is_file(), f
    cmp = json.loads((out / "compare.json").read_text())
    assert (cmp["model"], cmp["reference"], cmp["difference"]) == ("student", "teacher", "student - teacher")
    alone = write_report(tmp_path / "t", gt, teacher, label_to_cat_id=LABEL_TO_CAT, name="teacher")
    assert json.loads((out / "teacher" / "per_class.json").read_text()) == \
        json.loads((tmp_path / "t" / "per_class.json").read_text())
    for row, s_row, t_row in zip(cmp["classes"], rep["classes"], alone["classes"]):
        assert row["AP"] == {"student": pytest.approx(s_row["AP"]), "teacher": pytest.approx(t_row["AP"])}
        assert row["diff"]["AP"] == pytest.approx(s_row["AP"] - t_row["AP"])
    assert cmp["confusion_matrix"]["teacher"]["matrix"] == alone["confusion_matrix"]["matrix"]
    md = (out / "report.md").read_text()
    assert "## student vs teacher" in md and "teacher/report.md" in md and "diff AP" in md
    assert md.index("## student vs teacher") < md.index("## student\n")
    text = report_mod.format_compare(rep["compare"])
    assert text.splitlines()[0].split() == ["class", "teacher", "student", "diff"] and "cat" in text


def test_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gt, dets = _random_scene(3)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setattr(report_mod, "_warned_no_matplotlib", False)
    with pytest.warns(RuntimeWarning, match=r"pip install 'kdzoo\[report\]'"):
        write_report(tmp_path / "a", gt, dets, compare=dets[:10])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once only
        write_report(tmp_path / "b", gt, dets)
    assert {p.name for p in (tmp_path / "a").iterdir()} == {"per_class.json", "report.md", "pr_curves.json",
                                                           "confusion_matrix.json", "compare.json", "teacher"}
    assert "kdzoo[report]" in (tmp_path / "a" / "report.md").read_text()


def test_bad_report_inputs(tmp_path: Path) -> None:
    gt = _hand_gt()
    with pytest.raises(ValueError, match="label_to_cat_id"):
        confusion_matrix(gt, HAND_DETS, label_to_cat_id=[1, 2])
    with pytest.raises(ValueError, match="score_threshold must be in"):
        confusion_matrix(gt, HAND_DETS, score_threshold=1.5)
    with pytest.raises(ValueError, match="category_id 7"):
        confusion_matrix(gt, [_det(1, 7, [0, 0, 1, 1], 0.9)])
    with pytest.raises(ValueError, match="categories has 2 names"):
        write_report(tmp_path / "r", gt, HAND_DETS, ["a", "b"])
    with pytest.raises(ValueError, match=r"names \['a'\] appear more than once"):
        confusion_matrix(gt, HAND_DETS, ["a", "b", "a"])
    with pytest.raises(ValueError, match="backend 'nope'"):
        write_report(tmp_path / "r", gt, HAND_DETS, backend="nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        write_report(tmp_path / "file", gt, HAND_DETS)


# ----------------------------------------------------------------------------- backends
@needs_fce
def test_backends_agree_on_synthetic_scenes() -> None:
    for seed in (0, 4):
        gt, dets = _random_scene(seed, n_images=20)
        b = evaluate_results(gt, dets, backend="faster_coco_eval")
        assert all("ignore" not in a for a in gt.dataset["annotations"])  # faster-coco-eval got copies
        a = evaluate_results(gt, dets, backend="pycocotools")
        assert [b[k] for k in (*HEADLINE, "AR100")] == pytest.approx([a[k] for k in (*HEADLINE, "AR100")], abs=1e-9)
        assert list(b["per_class"].values()) == pytest.approx(list(a["per_class"].values()), abs=1e-9)
        ea, _ = coco_eval(gt, dets, backend="pycocotools")
        eb, _ = coco_eval(gt, dets, backend="faster_coco_eval")
        np.testing.assert_allclose(eb.eval["precision"], ea.eval["precision"], rtol=0, atol=1e-12)


def test_missing_faster_coco_eval(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    gt, dets = _random_scene(0)
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)
    with pytest.raises(ImportError, match=r"pip install 'kdzoo\[fast-eval\]'"):
        evaluate_results(gt, dets, backend="faster_coco_eval")
    with pytest.raises(ValueError, match="backend 'fast'"):
        evaluate_results(gt, dets, backend="fast")
    assert eval_main(["--results", "x.json", "--data", ".", "--ann", "a.json", "--backend", "faster_coco_eval"]) == 2
    assert "kdzoo[fast-eval]" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real detections, CLI
@pytest.fixture(scope="module")
def shapes_val(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kdzoo.data.shapes import generate_shapes

    return generate_shapes(tmp_path_factory.mktemp("shapes") / "shapes", num_train=0, num_val=6, image_size=320,
                           seed=11, workers=1)


def _eval_args(data: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--ann", "annotations/instances_val.json", "--images-dir", "val", "--workers", "0",
            "--device", "cpu", *extra]


@needs_fce
@needs_mpl
def test_cli_report_and_backends(shapes_val: Path, tmp_path: Path, one_thread: None) -> None:
    """``python -m kdzoo eval --report`` on an embedded model; both backends give the same AP on its detections."""
    out = tmp_path / "rep"
    proc = subprocess.run([sys.executable, "-m", "kdzoo", "eval", "--model", "gfl_mnv3s.shapes",
                           *_eval_args(shapes_val, "--report", str(out), "--out", str(tmp_path / "dets.json"),
                                       "--metrics-out", str(tmp_path / "m.json"), "--score-threshold", "0.2")],
                          capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "report written to" in proc.stderr
    per_class = json.loads((out / "per_class.json").read_text())
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert per_class["model"] == "gfl_mnv3s.shapes" and per_class["score_threshold"] == 0.2
    assert per_class["overall"]["AP"] == pytest.approx(metrics["AP"], abs=1e-9)
    nan = float("nan")
    assert [nan if r["AP"] is None else r["AP"] for r in per_class["classes"]] == \
        pytest.approx(list(metrics["per_class"].values()), nan_ok=True)
    assert (out / "confusion_matrix.png").is_file() and (out / "pr_curves.png").is_file()
    cm = json.loads((out / "confusion_matrix.json").read_text())
    assert cm["matched_right_class"] > 0  # real detections, not an empty report

    # The faster backend on the same detections: identical metrics.
    dets = json.loads((tmp_path / "dets.json").read_text())
    from kdzoo.data.coco import load_coco

    gt = load_coco(shapes_val / "annotations" / "instances_val.json")
    a, b = (evaluate_results(gt, dets, backend=k) for k in ("pycocotools", "faster_coco_eval"))
    assert [b[k] for k in HEADLINE] == pytest.approx([a[k] for k in HEADLINE], abs=1e-9, nan_ok=True)
    assert list(b["per_class"].values()) == pytest.approx(list(a["per_class"].values()), abs=1e-9, nan_ok=True)
    assert a["AP"] == pytest.approx(metrics["AP"], abs=1e-9)
    # ... and through the CLI flag, from the results file.
    assert eval_main(["--results", str(tmp_path / "dets.json"), *_eval_args(shapes_val)[:6], "--backend",
                      "faster_coco_eval", "--metrics-out", str(tmp_path / "m2.json")]) == 0
    assert json.loads((tmp_path / "m2.json").read_text())["AP"] == pytest.approx(metrics["AP"], abs=1e-9)


def _distill_run(tmp_path: Path, teacher: dict) -> Path:
    """A distillation run directory built from the embedded checkpoints (student: the CrossKD one)."""
    run = tmp_path / "crosskd_run"
    shutil.copytree(WEIGHTS / "gfl_mnv3s.shapes_crosskd", run)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["teacher"] = teacher
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return run


@needs_fce
@needs_mpl
def test_cli_compare_teacher(shapes_val: Path, tmp_path: Path, one_thread: None,
                             capsys: pytest.CaptureFixture[str]) -> None:
    teacher_dir = tmp_path / "teacher_run"
    shutil.copytree(WEIGHTS / "gfl_r10t.shapes", teacher_dir)
    run = _distill_run(tmp_path, {"name": "", "kwargs": {}, "checkpoint": str(teacher_dir), "pretrained": False})
    out = tmp_path / "rep"
    assert eval_main(["--model", str(run), *_eval_args(shapes_val, "--report", str(out), "--compare-teacher",
                                                       "--backend", "faster_coco_eval")]) == 0
    printed = capsys.readouterr().out
    assert "crosskd_run - teacher" in printed and "diff" in printed
    cmp = json.loads((out / "compare.json").read_text())
    assert (cmp["model"], cmp["reference"]) == ("crosskd_run", "teacher")
    for f in ("per_class_compare.png", "confusion_matrix_compare.png", "teacher/per_class.json", "report.md"):
        assert (out / f).is_file(), f
    # The teacher side is the teacher model's own evaluation (here through the other backend: the
    # numbers agree to the last bits of the averaging).
    t_out = tmp_path / "t_alone"
    assert eval_main(["--model", str(teacher_dir), *_eval_args(shapes_val, "--report", str(t_out))]) == 0
    side = json.loads((out / "teacher" / "per_class.json").read_text())["classes"]
    alone = json.loads((t_out / "per_class.json").read_text())["classes"]
    assert [r["class"] for r in side] == [r["class"] for r in alone]
    for a, b in zip(side, alone):
        assert a == {k: pytest.approx(v, abs=1e-9) if isinstance(v, float) else v for k, v in b.items()}


def test_cli_compare_teacher_errors(shapes_val: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def error(*args: str) -> str:
        try:
            code = eval_main(list(args))
        except SystemExit as e:  # argparse-style usage errors
            code = e.code
        assert code == 2
        return capsys.readouterr().err

    run = _distill_run(tmp_path, {"name": "gfl_r10t.shapes", "kwargs": {}, "checkpoint": "", "pretrained": True})
    base = _eval_args(shapes_val)
    assert "give --report DIR too" in error("--model", str(run), *base, "--compare-teacher")
    assert "not by a run directory" in error("--model", str(run), *base, "--report", str(tmp_path / "r"),
                                             "--compare-teacher")
    (run / "recipe.yaml").write_text(yaml.safe_dump({"model": {"name": "gfl_mnv3s"}}))
    assert "has no teacher section" in error("--model", str(run), *base, "--report", str(tmp_path / "r"),
                                             "--compare-teacher")
    assert "not a training run directory" in error("--model", "gfl_mnv3s.shapes", *base, "--report",
                                                   str(tmp_path / "r"), "--compare-teacher")
    assert "--score-threshold must be in [0, 1]" in error("--model", str(run), *base, "--score-threshold", "2")
    assert not (tmp_path / "r").exists()  # nothing written before the checks


# ----------------------------------------------------------------------------- end of training
def test_write_run_report_compares_with_the_teacher_run(tmp_path: Path) -> None:
    """What the engine calls after the final evaluation: run_dir/report/, with the teacher run's
    results.json when the recipe names a teacher run evaluated on the same data."""
    from types import SimpleNamespace

    gt, student = _random_scene(9)
    _, teacher = _random_scene(10)
    data = {"root": str(tmp_path / "data"), "val_images": "val", "val_ann": "annotations/instances_val.json"}
    t_run, s_run = tmp_path / "teacher", tmp_path / "student"
    for d in (t_run, s_run):
        d.mkdir()
    (t_run / "recipe.yaml").write_text(yaml.safe_dump({"data": data}))
    (t_run / "results.json").write_text(json.dumps(teacher))
    (s_run / "recipe.yaml").write_text(yaml.safe_dump({"data": data, "teacher": {"checkpoint": str(t_run)}}))
    dataset = SimpleNamespace(coco=gt, categories=["cat", "dog", "bird"], label_to_cat_id=LABEL_TO_CAT)
    metrics = evaluate_results(gt, student)
    rep = report_mod.write_run_report(s_run, dataset, student, metrics)
    assert rep["out_dir"] == s_run / "report" and rep["compare"] is not None and "teacher" in rep["note"]
    assert (s_run / "report" / "teacher" / "per_class.json").is_file()
    assert rep["overall"]["AP"] == pytest.approx(metrics["AP"], abs=1e-9)

    # Other validation data: the student alone, with the reason.
    (t_run / "recipe.yaml").write_text(yaml.safe_dump({"data": {**data, "val_ann": "other.json"}}))
    rep = report_mod.write_run_report(s_run, dataset, student, metrics)
    assert rep["compare"] is None and "other validation data" in rep["note"]
    assert report_mod.write_run_report(s_run, dataset, student, teacher=None)["compare"] is None
