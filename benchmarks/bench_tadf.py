"""TADF, understood: a sweep of its feature term and decay on the shapes Faster R-CNN pair, and the
share of positive regions its teacher-wins rule keeps over training.

    python benchmarks/bench_tadf.py [--seeds 0] [--jobs 2] [--rows ...] [--collect-only]

The short-regime TADF recipes (recipes/shapes/faster_rcnn_{teacher,student,tadf}.yaml: the
student's 200-iteration budget); the teacher is trained once (its recipe, reused when finished).
Rows: the student baseline, TADF with every term as shipped (linear decay), and one change each:
the feature weight at 0.25 and 4 (shipped: 1), the Gaussian's sigma ratio at 0.1 and 0.5
(shipped: 0.25), the decay constant and cosine (shipped: linear). Every TADF run logs each step
(``log_interval=1``), so ``kept_cls`` / ``kept_reg`` in its metrics.jsonl is the share of positive
regions the rule keeps at every iteration. Runs go to runs/bench/faster_rcnn/ (shared with
bench_distill.py: its finished runs of the same row and seed are reused) as single-thread processes,
``--jobs`` at a time. Writes docs/tadf_sweep.json, docs/tadf_kept.png and the ``tadf-sweep`` block
of docs/distill_results.md (AP per row and seed, the difference to TADF as shipped and to the
baseline at the same seed, the mean kept shares over the first and last quarter of training).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _md import replace_block  # noqa: E402
from bench_converged import _series, plot_kept_series  # noqa: E402
from bench_distill import Row, _find, run  # noqa: E402

TADF = "recipes/shapes/faster_rcnn_tadf.yaml"
SHIPPED = "TADF all, linear decay"  # the same label as bench_distill's row: its runs are reused
LOG_EACH_STEP = ["log_interval=1"]


def rows() -> list[Row]:
    o = "distill.options."
    return [
        Row("student baseline", "recipes/shapes/faster_rcnn_student.yaml"),
        Row(SHIPPED, TADF, [o + "decay=linear", *LOG_EACH_STEP]),
        Row("feature weight 0.25", TADF, [o + "loss_feat_weight=0.25", *LOG_EACH_STEP]),
        Row("feature weight 4", TADF, [o + "loss_feat_weight=4.0", *LOG_EACH_STEP]),
        Row("sigma ratio 0.1", TADF, [o + "sigma_ratio=0.1", *LOG_EACH_STEP]),
        Row("sigma ratio 0.5", TADF, [o + "sigma_ratio=0.5", *LOG_EACH_STEP]),
        Row("decay constant", TADF, [o + "decay=constant", *LOG_EACH_STEP]),
        Row("decay cosine", TADF, [o + "decay=cosine", *LOG_EACH_STEP]),
    ]


def _quarter_means(series: list[tuple[int, float]]) -> tuple[float, float]:
    """Mean of a per-step series over its first and its last quarter of iterations (NaN steps,
    batches without a positive region, left out)."""
    vals = [v for _, v in series if v == v]
    q = max(1, len(vals) // 4)
    return statistics.mean(vals[:q]), statistics.mean(vals[-q:])


def collect(results: dict[str, dict[int, dict]], teacher_ap: float) -> dict:
    """Per row: AP per seed, the kept shares' series and quarter means (TADF rows)."""
    out: dict = {"teacher AP": teacher_ap, "rows": {}}
    for label, by_seed in results.items():
        row = out["rows"].setdefault(label, {"AP": {}, "kept": {}, "kept_quarters": {}})
        for seed, ev in sorted(by_seed.items()):
            row["AP"][str(seed)] = ev["AP"]
            kept = _series(Path(ev["run_dir"]), ("kept_cls", "kept_reg"))
            if kept["kept_cls"]:
                row["kept"][str(seed)] = kept
                row["kept_quarters"][str(seed)] = {k: _quarter_means(s) for k, s in kept.items() if s}
    return out


def plot_kept(data: dict, path: Path, window: int = 10) -> None:
    """The kept shares against the iteration, one line per TADF row (its first seed)."""
    series = [(label, next(iter(r["kept"].values()))) for label, r in data["rows"].items() if r["kept"]]
    plot_kept_series(series, path, window, bold=SHIPPED)


def table(data: dict) -> str:
    rows_ = data["rows"]
    seeds = sorted({s for r in rows_.values() for s in r["AP"]}, key=int)
    base, shipped = rows_.get("student baseline", {}).get("AP", {}), rows_.get(SHIPPED, {}).get("AP", {})

    def diff(ap: dict, ref: dict) -> str:
        common = [s for s in ap if s in ref]
        return f"{statistics.mean(ap[s] - ref[s] for s in common):+.1f}" if common else ""

    lines = [f"Produced by `python benchmarks/bench_tadf.py` (seeds {', '.join(seeds)}; COCO AP on the 200 shapes val "
             f"images; teacher {data['teacher AP']:.1f} AP). Differences are taken at the same seed. Kept shares: the "
             "mean share of positive regions the teacher-wins rule keeps for the classification / regression term over "
             "the first and the last quarter of the 200 iterations.", "",
             "| row | AP per seed | Δ vs TADF as shipped | Δ vs baseline | kept (cls) first → last quarter "
             "| kept (reg) first → last quarter |", "|---|---|---|---|---|---|"]
    for label, r in rows_.items():
        ap = r["AP"]
        kq = {}
        for k in ("kept_cls", "kept_reg"):
            qs = [q[k] for q in r["kept_quarters"].values() if k in q]
            kq[k] = (f"{statistics.mean(a for a, _ in qs):.2f} → {statistics.mean(b for _, b in qs):.2f}" if qs else "")
        lines.append(f"| {label} | {', '.join(f'{ap[s]:.1f}' for s in sorted(ap, key=int))} "
                     f"| {'' if label in ('student baseline', SHIPPED) else diff(ap, shipped)} "
                     f"| {'' if label == 'student baseline' else diff(ap, base)} | {kq['kept_cls']} | {kq['kept_reg']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    ap.add_argument("--rows", nargs="*", help="row labels to run (default: all)")
    ap.add_argument("--runs", default="runs/bench", help="where the runs go")
    ap.add_argument("--out", default="docs", help="where the table, JSON and plot go")
    ap.add_argument("--collect-only", action="store_true", help="train nothing: tabulate the finished runs")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # the runs inherit it: one thread each is fastest side by side
    runs_root = ROOT / args.runs
    todo = [r for r in rows() if not args.rows or r.label in args.rows]
    if args.rows and len(todo) != len(args.rows):
        raise SystemExit(f"unknown --rows; choose from {[r.label for r in rows()]}")
    teacher_row = Row("teacher", "recipes/shapes/faster_rcnn_teacher.yaml", seeded=False)
    if args.collect_only and _find(teacher_row, "faster_rcnn", None, runs_root) is None:
        raise SystemExit("no finished Faster R-CNN teacher run: run without --collect-only first")
    teacher = run(teacher_row, "faster_rcnn", None, runs_root, None)
    teacher_dir = Path(teacher["run_dir"])
    jobs = [(r, s) for r in todo for s in args.seeds]
    if args.collect_only:
        jobs = [(r, s) for r, s in jobs if _find(r, "faster_rcnn", s, runs_root) is not None]

    def one(job: tuple[Row, int]) -> tuple[str, int, dict]:
        r, s = job
        return r.label, s, run(r, "faster_rcnn", s, runs_root, teacher_dir if r.recipe == TADF else None)

    results: dict[str, dict[int, dict]] = {r.label: {} for r in todo}
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for label, seed, ev in pool.map(one, jobs):
            results[label][seed] = ev
    results = {k: v for k, v in results.items() if v}
    data = collect(results, teacher["AP"])
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "tadf_sweep.json").write_text(json.dumps(data, indent=1))
    plot_kept(data, out / "tadf_kept.png")
    text = table(data)
    replace_block(out / "distill_results.md", "tadf-sweep", text)
    print(text)


if __name__ == "__main__":
    main()
