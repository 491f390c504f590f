"""Distillation on the shapes dataset: the same budget and seeds for every row.

    python benchmarks/bench_distill.py [--families gfl atss faster_rcnn] [--seeds 0 1 2] [--methods ...]

For each family the shapes teacher is trained once (its recipe, ``--resume``), then every
method's recipe is trained for each seed with ``seed=S`` and its own ``output_dir``; finished
runs are reused, so the script can be stopped and restarted. Rows:

* CrossKD families (recipes/shapes/{family}_*.yaml): teacher, student baseline, prediction
  mimicking, PKD, CrossKD, CrossKD+PKD, and CrossKD with the pre-ReLU tap (the ablation);
* ``faster_rcnn`` (TADF, recipes/shapes/faster_rcnn_{teacher,student,tadf}.yaml):
  teacher, student baseline, each TADF term alone, all terms with and without decay, and all
  terms without the teacher-wins rule (every positive region distilled).

Writes the short-regime block of ``docs/distill_results.md`` (mean, std, per-seed AP and the paired
difference to the baseline with its 95 % interval), ``docs/distill_results.json``
and ``docs/distill_ap.png`` (AP per method with the spread over seeds).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _md import replace_block  # noqa: E402
from bench_converged import paired  # noqa: E402
PY = sys.executable


@dataclass
class Row:
    label: str
    recipe: str
    overrides: list[str] = field(default_factory=list)
    seeded: bool = True  # trained once per seed (the teacher is trained once)


def crosskd_rows(family: str) -> list[Row]:
    r = f"recipes/shapes/{family}_"
    return [
        Row("teacher", r + "teacher.yaml", seeded=False),
        Row("student baseline", r + "student.yaml"),
        Row("prediction mimicking", r + "mimic.yaml"),
        Row("PKD (features)", r + "pkd.yaml"),
        Row("CrossKD", r + "crosskd.yaml"),
        Row("CrossKD+PKD", r + "crosskd_pkd.yaml"),
        # The tap ablation (docs/crosskd.md): the feature before the layer's ReLU, as the reference's
        # code reads, instead of after it, as the reference computes.
        Row("CrossKD, pre-ReLU tap", r + "crosskd.yaml", ["distill.options.tap=pre_relu"]),
    ]


def tadf_rows() -> list[Row]:
    r = "recipes/shapes/faster_rcnn_"
    tadf = r + "tadf.yaml"
    return [
        Row("teacher", r + "teacher.yaml", seeded=False),
        Row("student baseline", r + "student.yaml"),
        Row("TADF feature only", tadf, ["distill.options.terms=[feat]"]),
        Row("TADF classification only", tadf, ["distill.options.terms=[cls]"]),
        Row("TADF regression only", tadf, ["distill.options.terms=[reg]"]),
        Row("TADF all, no decay", tadf, ["distill.options.decay=constant"]),
        Row("TADF all, linear decay", tadf, ["distill.options.decay=linear"]),
        Row("TADF all, not adaptive", tadf, ["distill.options.adaptive=false"]),  # every positive distilled
    ]


FAMILIES = {"gfl": lambda: crosskd_rows("gfl"), "atss": lambda: crosskd_rows("atss"), "faster_rcnn": tadf_rows}
METHOD = {"gfl": "CrossKD", "atss": "CrossKD", "faster_rcnn": "TADF"}


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_")


def _run_dir(row: Row, family: str, seed: int | None, runs_root: Path) -> Path:
    recipe = _load(row.recipe)
    if seed in (None, recipe.get("seed", 0)) and not row.overrides:
        return ROOT / recipe["output_dir"]  # the recipe as shipped: shared with `make run`
    return runs_root / family / f"{_slug(row.label)}_seed{seed}"


def _find(row: Row, family: str, seed: int | None, runs_root: Path) -> Path | None:
    """The finished run's eval.json, if there is one."""
    path = _run_dir(row, family, seed, runs_root) / "eval.json"
    return path if path.is_file() else None


def run(row: Row, family: str, seed: int | None, runs_root: Path, teacher_dir: Path | None) -> dict:
    """Train (or reuse) one run and return its eval.json."""
    out = _run_dir(row, family, seed, runs_root)
    eval_file = out / "eval.json"
    lock = out.parent / f"{out.name}.lock"
    out.parent.mkdir(parents=True, exist_ok=True)
    while not eval_file.is_file():
        try:  # several bench processes may share the queue: one trains a run, the others wait for it
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if not _owner_alive(lock):
                lock.unlink(missing_ok=True)  # left by a killed process; --resume picks its run up
            time.sleep(10)
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        try:
            _train(row, out, seed, teacher_dir)
        finally:
            lock.unlink(missing_ok=True)
    return {**json.loads(eval_file.read_text()), "run_dir": str(out)}


def _owner_alive(lock: Path) -> bool:
    try:
        os.kill(int(lock.read_text()), 0)
        return True
    except (ValueError, ProcessLookupError, FileNotFoundError):
        return False


def _train(row: Row, out: Path, seed: int | None, teacher_dir: Path | None) -> None:
    cmd = [PY, "-m", "kdzoo.train", row.recipe, f"output_dir={out}", *row.overrides, "--resume"]
    if seed is not None:
        cmd.append(f"seed={seed}")
    if teacher_dir is not None and row.seeded:
        cmd.append(f"teacher.checkpoint={teacher_dir}")
    t = time.time()
    print("$", " ".join(cmd[1:]), flush=True)
    log = out.parent / f"{out.name}.log"
    with open(log, "a") as f:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"{row.label} (seed {seed}) failed with exit code {rc}; see {log}")
    print(f"  done in {time.time() - t:.0f} s", flush=True)


def _load(recipe: str) -> dict:
    from kdzoo.recipe import resolve_bases

    return resolve_bases(ROOT / recipe)  # the recipe merged over its _base_ files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=sorted(FAMILIES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--methods", nargs="*", default=None, help="row labels to run, in this order (default: all)")
    ap.add_argument("--runs", default="runs/bench", help="where the runs go")
    ap.add_argument("--out", default="docs", help="where the table, JSON and plot go")
    ap.add_argument("--collect-only", action="store_true",
                    help="train nothing: tabulate the finished runs, skipping rows with a missing seed")
    args = ap.parse_args()
    runs_root = ROOT / args.runs
    results: dict[str, dict[str, dict]] = {}
    for family in args.families:
        rows = FAMILIES[family]()
        teacher_row = rows[0]
        if args.collect_only and _find(teacher_row, family, None, runs_root) is None:
            print(f"{family}: no finished teacher run, skipped")
            continue
        teacher_eval = run(teacher_row, family, None, runs_root, None)
        teacher_dir = Path(teacher_eval["run_dir"])
        fam = results.setdefault(family, {})
        fam[teacher_row.label] = {"recipe": teacher_row.recipe, "seeds": [None], "AP": [teacher_eval["AP"]], "AP50": [teacher_eval["AP50"]]}
        todo = rows[1:]
        if args.methods:
            unknown = set(args.methods) - {r.label for r in todo}
            if unknown:
                raise SystemExit(f"unknown --methods {sorted(unknown)}; choose from {[r.label for r in todo]}")
            todo = sorted((r for r in todo if r.label in args.methods), key=lambda r: args.methods.index(r.label))
        for row in todo:
            if args.collect_only and any(_find(row, family, seed, runs_root) is None for seed in args.seeds):
                print(f"{family}: {row.label} has unfinished seeds, left out")
                continue
            teacher = teacher_dir if "teacher" in _load(row.recipe) else None
            evals = [run(row, family, s, runs_root, teacher) for s in args.seeds]
            order = sorted(range(len(args.seeds)), key=lambda i: args.seeds[i])  # per-seed columns in seed order
            fam[row.label] = {"recipe": row.recipe, "overrides": row.overrides, "seeds": [args.seeds[i] for i in order],
                              "AP": [evals[i]["AP"] for i in order], "AP50": [evals[i]["AP50"] for i in order]}
            write_outputs(results, ROOT / args.out)
    write_outputs(results, ROOT / args.out)
    print((ROOT / args.out / "distill_results.md").read_text())


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def write_outputs(results: dict, out_dir: Path) -> None:
    """Merge this process's families into the shared results (families may run in parallel
    processes, one per family) and rewrite the table and plot."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "distill_results.json"
    merged = json.loads(path.read_text()) if path.is_file() else {}
    for family, rows in results.items():
        merged.setdefault(family, {}).update(rows)
    # rows in the order of the family's definition, whoever finished first
    results = {f: {r.label: merged[f][r.label] for r in FAMILIES[f]() if r.label in merged[f]} for f in merged}
    tmp = out_dir / f"distill_results.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(path)
    lines = ["Produced by `python benchmarks/bench_distill.py` (same schedule, data and seeds for every row; "
             "COCO AP on the 200 shapes val images, in %). Mean ± sample std over seeds; the teacher is trained once. "
             "Δ: the mean of the per-seed differences to the baseline (same seed), with its 95 % t interval.", ""]
    for family, rows in results.items():
        base = rows.get("student baseline")
        base_ap = dict(zip(base["seeds"], base["AP"])) if base else {}
        lines += [f"### {family} ({METHOD[family]})", "", _pair_line(rows), "",
                  "| method | AP mean ± std | Δ vs baseline [95 %] | AP50 mean | per-seed AP | recipe |",
                  "|---|---|---|---|---|---|"]
        for label, r in rows.items():
            m, s = _stats(r["AP"])
            delta = ""
            common = [(a, base_ap[sd]) for sd, a in zip(r["seeds"], r["AP"]) if sd in base_ap]
            if base and label not in ("teacher", "student baseline") and len(common) > 1:
                d, lo, hi = paired([a for a, _ in common], [b for _, b in common])
                delta = f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]"
            seeds = ", ".join(f"{v:.1f}" for v in r["AP"])
            extra = (" " + " ".join(r.get("overrides", []))) if r.get("overrides") else ""
            lines.append(f"| {label} | {m:.1f} ± {s:.1f} | {delta} | {_stats(r['AP50'])[0]:.1f} | {seeds} | `{r['recipe']}`{extra} |")
        lines.append("")
    replace_block(out_dir / "distill_results.md", "short-regime", "\n".join(lines))
    _plot(results, out_dir / "distill_ap.png")


def _pair_line(rows: dict) -> str:
    """Which models and schedules the family's rows compare, read from the teacher and baseline recipes."""
    def desc(label: str) -> str:
        r = _load(rows[label]["recipe"])
        return f"`{r['model']['name']}` ({r['schedule']['iters']} iterations of {r['batch_size']})"
    if not {"teacher", "student baseline"} <= set(rows):
        return ""
    return f"Teacher {desc('teacher')}; every other row trains the student {desc('student baseline')}."


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (family, rows) in zip(axes[0], results.items()):
        labels = list(rows)
        for i, label in enumerate(labels):
            aps = rows[label]["AP"]
            m, s = _stats(aps)
            ax.errorbar([i], [m], yerr=[s], fmt="o", capsize=4, color="C0" if label != "teacher" else "C3")
            ax.scatter([i] * len(aps), aps, s=10, color="gray", zorder=3)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_ylabel("COCO AP (shapes val)")
        ax.set_title(f"{family} ({METHOD[family]}): mean ± std over seeds (dots: seeds)")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
