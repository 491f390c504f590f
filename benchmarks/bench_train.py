"""Training throughput (images/s) of recipes, measured through the real engine.

    python benchmarks/bench_train.py recipes/shapes/gfl_r18_teacher.yaml recipes/shapes/gfl_r18_student.yaml \
        --iters 30 --threads 1 2

Each recipe is trained for ``--iters`` iterations into a temporary directory (no evaluation
counted) under each thread count; the first logging window (warm-up of allocator and caches) is
dropped. Run the recipes side by side in one invocation: a shared machine's load changes by the
minute, so only numbers from one run compare.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(recipe: str, iters: int, threads: int, log_every: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"schedule.iters={iters}", f"output_dir={tmp}/run", f"log_interval={log_every}",
                     "checkpoint_interval=0", "eval_interval=0", f"data.val_ann={_tiny_val(tmp, recipe)}"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run([sys.executable, "-m", "kdzoo.train", recipe, *overrides], cwd=REPO, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        records = [json.loads(line) for line in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
        windows = [r for r in records if "images_per_s" in r][1:]
        if not windows:
            raise SystemExit(f"{recipe}: --iters {iters} gives no timed window after the first; use more iterations")
        # Harmonic mean over windows = total images / total time.
        return len(windows) / sum(1 / r["images_per_s"] for r in windows)


def _tiny_val(tmp: str, recipe: str) -> str:
    """The final evaluation is not training throughput: evaluate on the first validation image only."""
    from kdzoo.recipe import load_recipe

    r = load_recipe(recipe)
    ann = json.loads(r.data.path("val_ann").read_text())
    first = ann["images"][:1]
    ann = {**ann, "images": first, "annotations": [a for a in ann["annotations"] if a["image_id"] == first[0]["id"]]}
    path = Path(tmp, "val_one.json")
    path.write_text(json.dumps(ann))
    return str(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("recipes", nargs="+")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=[os.cpu_count() or 1])
    args = p.parse_args()
    print(f"{'recipe':<45} {'threads':>7} {'images/s':>9}")
    for recipe in args.recipes:
        for threads in args.threads:
            ips = measure(recipe, args.iters, threads, args.log_every)
            print(f"{recipe:<45} {threads:>7} {ips:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
