"""Several training runs side by side on one machine: each recipe in its own ``kdzoo train``
process with a share of the CPU threads (on these CPUs, one thread per process beats two processes
with two threads each), one progress bar over the whole job, one log file per run."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import CHECKPOINT_FILE
from ..recipe import Recipe, load_recipe

__all__ = ["RunJob", "plan_runs", "train_in_parallel"]


@dataclass
class RunJob:
    recipe_path: Path
    recipe: Recipe
    total_iters: int | None  # None: an epoch-based schedule, known once the run has logged
    returncode: int | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.recipe.output_dir)

    @property
    def log(self) -> Path:
        return self.run_dir.with_name(self.run_dir.name + ".log")

    def done_iters(self) -> int:
        """The newest iteration ``metrics.jsonl`` records (the log is written every ``log_interval``)."""
        import json

        path = self.run_dir / "metrics.jsonl"
        try:
            lines = path.read_text().splitlines()
        except OSError:
            return 0
        for line in reversed(lines):
            try:
                return int(json.loads(line).get("iter", 0))
            except (ValueError, AttributeError):
                continue
        return 0


def plan_runs(recipes: list[str | Path], overrides: list[str] | None = None) -> list[RunJob]:
    """Load every recipe first (a bad one fails before anything runs); two recipes writing the
    same ``output_dir`` are refused."""
    jobs = []
    for path in recipes:
        recipe = load_recipe(path, overrides)
        jobs.append(RunJob(Path(path), recipe, recipe.schedule.iters))
    seen: dict[Path, Path] = {}
    for job in jobs:
        key = job.run_dir.resolve()
        if key in seen:
            raise ValueError(f"{job.recipe_path} and {seen[key]} both write output_dir {job.recipe.output_dir!r}")
        seen[key] = job.recipe_path
    return jobs


def train_in_parallel(jobs: list[RunJob], *, processes: int | None = None, resume: bool = False,
                      overrides: list[str] | None = None, progress: bool = True) -> list[RunJob]:
    """Train ``jobs`` with at most ``processes`` at a time (default: one per CPU, at most one per
    job), each with ``cpus // processes`` threads; returns the jobs with their exit status.
    A run that fails does not stop the others; its log names what happened."""
    from tqdm import tqdm

    cpus = os.cpu_count() or 1
    processes = max(1, min(processes or cpus, len(jobs)))
    threads = max(1, cpus // processes)
    pending, running = list(jobs), []
    bar = tqdm(total=sum(j.total_iters or 0 for j in jobs), unit="it", desc="training", disable=not progress,
               dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)
    shown = 0
    while pending or running:
        while pending and len(running) < processes:
            job = pending.pop(0)
            job.run_dir.parent.mkdir(parents=True, exist_ok=True)
            if not resume and (job.run_dir / CHECKPOINT_FILE).exists():
                raise ValueError(f"{job.recipe_path}: output_dir {job.recipe.output_dir!r} already holds a run; "
                                 "pass --resume to continue (or report) it")
            cmd = [sys.executable, "-m", "kdzoo", "train", str(job.recipe_path), *(overrides or [])]
            cmd += ["--resume"] if resume else []
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            log = open(job.log, "w")
            running.append((job, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
        time.sleep(1.0)
        for entry in list(running):
            job, proc, log = entry
            if proc.poll() is not None:
                job.returncode = proc.returncode
                log.close()
                running.remove(entry)
        done = sum(min(j.done_iters(), j.total_iters or math.inf) if j.returncode in (None, 0) else (j.total_iters or 0)
                   for j in jobs)
        if done > shown:
            bar.update(done - shown)
            shown = done
    bar.close()
    return jobs
