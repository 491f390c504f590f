"""Train several recipes side by side and print their AP next to their teacher's.

    kdzoo compare RECIPE [RECIPE ...] [--teacher MODEL] [--processes N] [--resume] [key.sub=value ...]

Each recipe trains in its own process with a share of the CPU threads (one progress bar over the
whole job; each run's output goes to ``<output_dir>.log``). ``--teacher`` (a registry name such as
``gfl_r10t.shapes``, or a run directory) is evaluated on the first recipe's validation set and
shown as the first row. ``--resume`` continues unfinished runs and only reports finished ones, so
the job can be killed and started again. ``make run`` is this command on the shapes CrossKD pair.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

INTERMIXED = True  # overrides may come before or after the options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipes", nargs="+", help="recipe YAML files, then optional key.sub=value overrides for all")
    p.add_argument("--teacher", default=None, help="a model to evaluate and show first (registry name or run directory)")
    p.add_argument("--processes", type=int, default=None, help="runs at a time (default: one per CPU core)")
    p.add_argument("--resume", action="store_true", help="continue unfinished runs, report finished ones")


def run(args: argparse.Namespace) -> int:
    from ..engine.parallel import plan_runs, train_in_parallel
    from ..evaluation import summary_table
    from . import UsageError

    recipes = [r for r in args.recipes if "=" not in r]
    overrides = [r for r in args.recipes if "=" in r]
    if not recipes:
        raise UsageError("give at least one recipe")
    if args.processes is not None and args.processes < 1:
        raise UsageError(f"--processes must be >= 1, got {args.processes}")
    jobs = plan_runs(recipes, overrides)
    t0 = time.perf_counter()
    print(f"training {len(jobs)} run(s): " + ", ".join(str(j.run_dir) for j in jobs), file=sys.stderr)
    train_in_parallel(jobs, processes=args.processes, resume=args.resume, overrides=overrides)
    failed = [j for j in jobs if j.returncode != 0]
    for j in failed:
        print(f"error: {j.recipe_path} failed (exit status {j.returncode}); its output is in {j.log}", file=sys.stderr)
    rows = [str(j.run_dir) for j in jobs if j.returncode == 0]
    if args.teacher:
        rows.insert(0, str(_teacher_eval(args.teacher, jobs[0].recipe)))
    if rows:
        print(summary_table(rows))
    print(f"{len(jobs) - len(failed)} of {len(jobs)} run(s) finished in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 1 if failed else 0


def _teacher_eval(name: str, recipe) -> Path:
    """``<runs>/<teacher>/eval.json``: the teacher's metrics on the recipe's validation set,
    computed once for the same weights (a second job reuses them; new weights under the same name,
    e.g. after an upgrade of the embedded checkpoints, are evaluated again)."""
    from .. import create_detector
    from ..checkpoint import atomic_write
    from ..engine.build import build_datasets, device
    from ..engine.hooks import json_safe
    from ..evaluation import evaluate
    from ..hub import file_sha256

    out = Path(recipe.output_dir).parent / Path(name).name
    path = out / "eval.json"
    model = create_detector(name, pretrained=True)
    weights = getattr(getattr(model, "pretrained_cfg", None), "file", None)
    digest = file_sha256(Path(weights)) if weights and Path(weights).is_file() else None
    if path.is_file():
        try:
            cached = json.loads(path.read_text()).get("weights_sha256")
        except (OSError, ValueError, AttributeError):
            cached = None
        if digest is None or cached == digest:
            return out
        print(f"the teacher {name} has other weights than those {path} was computed with: evaluating again",
              file=sys.stderr)
    _, val_ds = build_datasets(recipe)
    if model.num_classes != val_ds.num_classes:
        raise ValueError(f"--teacher {name} predicts {model.num_classes} classes, the validation set has {val_ds.num_classes}")
    print(f"evaluating the teacher {name} on {val_ds.root}", file=sys.stderr)
    metrics, _ = evaluate(model, val_ds, batch_size=recipe.eval_batch_size, workers=recipe.workers,
                          device=device(recipe), progress=sys.stderr.isatty())
    out.mkdir(parents=True, exist_ok=True)
    record = {"model": name, "weights_sha256": digest, **{k: v for k, v in metrics.items() if k != "summary"}}
    atomic_write(path, lambda p: p.write_text(json.dumps(json_safe(record), indent=2)))
    return out


def main(argv: list[str] | None = None) -> int:
    from . import run_command

    return run_command("compare", argv)
