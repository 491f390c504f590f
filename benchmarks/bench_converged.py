"""Distillation where the students converge: the shapes recipes of recipes/shapes/converged/ (batch
32, long cosine schedules, AP evaluated along the way), every row for three seeds, on one GPU.

    python benchmarks/bench_converged.py train --student-iters 1500 --teacher-iters 1900 [--jobs 32]
    python benchmarks/bench_converged.py train --calibrate --budget 420      # pick the iterations
    python benchmarks/bench_converged.py train ... --ablations               # + TADF ablations, every seed
    python benchmarks/bench_converged.py collect [--runs runs/shapes_converged] [--out docs]
    python benchmarks/bench_converged.py render --tag x6                  # tables again, from docs/distill_x6.json

``train`` runs every row as its own ``kdzoo train`` process (one CPU thread each), as many at a time
as ``--jobs``: the two teachers and the six baselines first, each distilled row as soon as its
teacher has finished. Finished runs are reused (``--resume``). ``--calibrate`` first trains a few
iterations of every kind of row side by side and sizes the schedules so that the whole job fits in
``--budget`` seconds; ``--deadline`` stops what is still running at a wall-clock limit (its learning
curve so far is kept). ``--pack DIR`` writes the results (``results.tar.gz``: every run's metrics,
evaluations, recipes, configs and logs) there every minute and at the end.

``collect`` writes docs/distill_converged.json, the learning curves (docs/distill_curves.png), TADF's
kept shares over training (docs/tadf_kept.png) and the converged section of docs/distill_results.md:
mean, spread, and the per-seed paired difference to the baseline with its 95 % t interval, at the end
and, for every row evaluated during training, at each evaluation (faster to train, or better at the
end). ``--tag`` names a CPU regime instead (the files get ``_<tag>``, the page's block ``<tag>-regime``);
``render --tag`` rewrites that block's tables from the saved JSON when the runs are gone.
``collect --eval-data DIR`` scores the same runs' final models on another dataset's val split instead
(``kdzoo eval``, kept as ``eval_on_<name>.json`` in each run), e.g. the photo-background shapes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
REC = "recipes/shapes/converged/"
SEEDS = (0, 1, 2)
INTROS = {  # where each regime's runs come from
    "converged": "from the runs of `benchmarks/run_converged_gpu.sh` (recipes/shapes/converged/, one GPU)",
    "long": "from the short regime's GFL recipes run with `seed=S schedule.iters=600 eval_interval=150 "
            "output_dir=runs/shapes_long/gfl_{student,crosskd}_sS` (3x the budget, the same 280-iteration teacher, CPU)",
    "strong": "from the same 600-iteration GFL runs with a stronger teacher: the teacher recipe at `schedule.iters=560` "
              "(`runs/shapes_long/gfl_teacher_560`), CrossKD from it with `teacher.checkpoint=` that run and "
              "`output_dir=runs/shapes_long_t560/gfl_crosskd_sS` (prediction mimicking and CrossKD+PKD: the "
              "`gfl_mimic` and `gfl_crosskd_pkd` recipes, the same overrides); the baselines are the 3x rows' (CPU)",
    "x6": "from the short regime's GFL recipes at 6x the budget: `seed=S schedule.iters=1200 eval_interval=300 "
          "output_dir=runs/shapes_1200/gfl_{student,crosskd}_sS`, CrossKD from the 560-iteration teacher "
          "(`teacher.checkpoint=runs/shapes_long/gfl_teacher_560`) (CPU)",
    "t1200": "from the 3x-budget rows with a teacher trained twice as long as they are: the teacher recipe at "
             "`schedule.iters=1200 eval_interval=300 output_dir=runs/shapes_t1200/gfl_teacher_1200`, CrossKD from it "
             "with `seed=S schedule.iters=600 eval_interval=150 teacher.checkpoint=` that run and "
             "`output_dir=runs/shapes_t1200_600/gfl_crosskd_sS`; the baselines are the 3x rows' (CPU)",
    "t1200x6": "from the teacher recipe at `schedule.iters=1200 eval_interval=300 "
               "output_dir=runs/shapes_t1200/gfl_teacher_1200` and CrossKD from it at 6x the student "
               "budget: `seed=S schedule.iters=1200 eval_interval=300 teacher.checkpoint=` that run, "
               "`output_dir=runs/shapes_t1200_1200/gfl_crosskd_sS` (prediction mimicking and CrossKD+PKD: the `gfl_mimic` and "
               "`gfl_crosskd_pkd` recipes, the same overrides, `.../gfl_{mimic,crosskd_pkd}_sS`); the baselines are the 6x rows' (the same student "
               "recipe, seeds and schedule, taken from docs/distill_x6.json) (CPU)",
    "t1200x12": "from the same 1200-iteration teacher (`runs/shapes_t1200/gfl_teacher_1200`, 58.6 AP) at 12x the "
                "student budget: the student and CrossKD recipes with `seed=S schedule.iters=2400 eval_interval=300 "
                "report=false output_dir=runs/shapes_t1200_2400/gfl_{student,crosskd}_sS`, CrossKD with `teacher.checkpoint=` "
                "that run (prediction mimicking and CrossKD+PKD: the `gfl_mimic` and `gfl_crosskd_pkd` recipes, the "
                "same overrides, `.../gfl_{mimic,crosskd_pkd}_sS`) (CPU)",
    "t2400x12": "from a teacher trained as long as its students, to the flat end of its schedule: the teacher "
                "recipe at `schedule.iters=2400 eval_interval=300 report=false output_dir=runs/shapes_t2400/gfl_teacher_2400` "
                "(linked as `gfl_teacher` in the runs folder), CrossKD, prediction mimicking and CrossKD+PKD from it "
                "at 12x the student budget (the `gfl_crosskd`, `gfl_mimic` and `gfl_crosskd_pkd` recipes) with "
                "`seed=S schedule.iters=2400 eval_interval=300 report=false teacher.checkpoint=` that run, "
                "`output_dir=runs/shapes_t2400_2400/gfl_{crosskd,mimic,crosskd_pkd}_sS`; the baselines are the 12x rows' (the same "
                "student recipe, seeds and schedule, taken from docs/distill_t1200x12.json) (CPU)",
    "t2400mid": "from the plateau teacher's own run stopped half-way: the checkpoint its 2400-iteration run wrote at "
                "iteration 1200 (60.6 AP; `checkpoint_interval=300`, that `checkpoint.pt` copied to "
                "`runs/shapes_t2400/gfl_teacher_2400_it1200.pt`), CrossKD from it at 12x the student budget: the CrossKD "
                "recipe with `seed=S schedule.iters=2400 eval_interval=300 report=false teacher.name=gfl_r10t "
                "teacher.checkpoint=` that file, `output_dir=runs/shapes_t2400mid_2400/gfl_crosskd_sS`; the baselines are "
                "the 12x rows' (taken from docs/distill_t1200x12.json) (CPU)",
    "sharp6x": "from the GFL teacher that ships with the package (`gfl_r10t.shapes`: the 58.6-AP, 1200-iteration "
               "teacher of the t1200x6 rows, stored in fp16) at 6x the student budget: the CrossKD recipe with that teacher "
               "(`recipes/shapes/make_run/gfl_crosskd.yaml`) and `seed=S schedule.iters=1200 eval_interval=300 "
               "report=false`, the teacher's class logits divided by 0.7 (sharper) or 1.4 (softer) before they "
               "become targets (`distill.options.teacher_cls_temperature=0.7` or `1.4`, "
               "`output_dir=runs/shapes_sharp_1200/gfl_crosskd_{sharp,soft}_sS`) and, as the check that the fp16 "
               "teacher teaches as its fp32 run did, without (`.../gfl_crosskd_sS`, seeds 0 and 1); the baselines "
               "are the 6x rows' (taken from docs/distill_t1200x6.json) (CPU)",
    "frcnn3x": "from the short regime's Faster R-CNN recipes at 3x the budget: the teacher recipe at `schedule.iters=800 "
               "eval_interval=200 output_dir=runs/shapes_frcnn_600/faster_rcnn_teacher` (twice its short-regime "
               "budget), the student and TADF recipes with `seed=S schedule.iters=600 eval_interval=150 "
               "output_dir=runs/shapes_frcnn_600/faster_rcnn_{student,tadf}_sS`, TADF from that teacher (each term "
               "alone: `distill.options.terms=[feat]`, `[cls]` or `[reg]`, `output_dir=.../faster_rcnn_tadf_{feat,cls,reg}_sS`; "
               "without the decay: `distill.options.decay=constant`, `.../faster_rcnn_tadf_nodecay_sS`; without the "
               "teacher-wins rule: `distill.options.adaptive=false`, `.../faster_rcnn_tadf_notadaptive_sS`; both: "
               "`distill.options.loss_feat_weight=4.0 distill.options.decay=constant eval_interval=0`, "
               "`.../faster_rcnn_tadf_w4_nodecay_sS`; the sweep's "
               "rows with `eval_interval=0`, `distill.options.loss_feat_weight=0.25` or `4.0`, `distill.options.sigma_ratio=0.1` "
               "or `0.5`, `output_dir=.../faster_rcnn_sweep_{feat_w0.25,feat_w4,sigma0.1,sigma0.5}_sS`) (CPU)",
    "frcnn6x": "from the short regime's Faster R-CNN recipes at 6x the budget: the student and TADF recipes with "
               "`seed=S schedule.iters=1200 eval_interval=300 report=false output_dir=runs/shapes_frcnn_1200/faster_rcnn_{student,tadf}_sS`, "
               "TADF from the 800-iteration teacher of the 3x rows (`teacher.checkpoint=runs/shapes_frcnn_600/faster_rcnn_teacher`, "
               "53.1 AP; each term alone: `distill.options.terms=[feat]`, `[cls]` or `[reg]`, "
               "`.../faster_rcnn_tadf_{feat,cls,reg}_sS`; feature weight 4 and no decay: "
               "`distill.options.loss_feat_weight=4.0 distill.options.decay=constant`, "
               "`.../faster_rcnn_tadf_w4_nodecay_sS`; without the teacher-wins rule, seed 0: `distill.options.adaptive=false`, "
               "`.../faster_rcnn_tadf_notadaptive_s0`) (CPU)",
    "frcnn12x": "from the short regime's Faster R-CNN recipes at 12x the budget, as long as the GFL rows that flattened: "
                "the student and TADF recipes with `seed=S schedule.iters=2400 eval_interval=300 report=false "
                "checkpoint_interval=300 output_dir=runs/shapes_frcnn_2400/faster_rcnn_{student,tadf}_sS`, TADF from the "
                "800-iteration teacher of the 3x and 6x rows (the teacher recipe at `schedule.iters=800 eval_interval=200 "
                "output_dir=runs/shapes_frcnn_600/faster_rcnn_teacher`, linked as `faster_rcnn_teacher` in the runs "
                "folder); each term alone: `distill.options.terms=[feat]`, `[cls]` or `[reg]`, "
                "`.../faster_rcnn_tadf_{feat,cls,reg}_sS` (CPU)",
    "frcnn_t2400x12": "from a Faster R-CNN teacher trained as long as its students, to the flat end of its schedule: "
                      "the teacher recipe at `schedule.iters=2400 eval_interval=300 report=false checkpoint_interval=300 "
                      "output_dir=runs/shapes_frcnn_t2400/faster_rcnn_teacher_2400` (63.5 AP; linked as `faster_rcnn_teacher` "
                      "in the runs folder), TADF from it at 12x the student budget: the TADF recipe with `seed=S "
                      "schedule.iters=2400 eval_interval=300 report=false checkpoint_interval=300 teacher.checkpoint=` that "
                      "run, `output_dir=runs/shapes_frcnn_t2400_2400/faster_rcnn_tadf_sS`; the baselines are the frcnn12x "
                      "rows' (the same student recipe, seeds and schedule, taken from docs/distill_frcnn12x.json) (CPU)",
    "frcnn_t2400mid": "from the same Faster R-CNN teacher run stopped half-way: the checkpoint it kept at iteration 1200 "
                      "(57.5 AP; `runs/shapes_frcnn_t2400/faster_rcnn_teacher_2400/checkpoint_iter1200.pt`, the file "
                      "`keep_checkpoints=[1200]` keeps), TADF from it at 12x the "
                      "student budget: the TADF recipe with `seed=S schedule.iters=2400 eval_interval=300 report=false "
                      "checkpoint_interval=300 teacher.name=faster_rcnn_r18 'teacher.kwargs={fpn_channels: 128, "
                      "fc_channels: 512, num_rois: 128}' teacher.checkpoint=` that file, "
                      "`output_dir=runs/shapes_frcnn_t2400mid_2400/faster_rcnn_tadf_sS`; the baselines are the frcnn12x "
                      "rows' (taken from docs/distill_frcnn12x.json) (CPU)",
    "frcnn_t800": "from the short regime's Faster R-CNN recipes at their 200 iterations with `seed=S eval_interval=100 "
                  "output_dir=runs/shapes_frcnn_t800_200/faster_rcnn_{student,tadf,tadf_feat}_sS`, TADF from the "
                  "800-iteration teacher of the 3x rows (`teacher.checkpoint=runs/shapes_frcnn_600/faster_rcnn_teacher`; "
                  "feature only: `distill.options.terms=[feat]`; feature weight 4 and no decay: "
                  "`distill.options.loss_feat_weight=4.0 distill.options.decay=constant`, "
                  "`.../faster_rcnn_tadf_w4_nodecay_sS`) (CPU)",
    "photo3x": "from the same photo-background runs at 3x the budget: the student and CrossKD recipes with "
               "`schedule.iters=600 eval_interval=150 seed=S output_dir=runs/shapes_photo_600/gfl_{student,crosskd}_sS`, "
               "CrossKD from the same 25.0-AP photo teacher (CPU)",
    "transfer": "from the 600-iteration GFL runs of the strong-teacher rows above (`runs/shapes_long_t560`: "
                "36.4-AP teacher, baselines, CrossKD, prediction mimicking, CrossKD+PKD), all trained on the "
                "plain shapes backgrounds and evaluated, unchanged, on the photo-background variant (CPU)",
    "photo": "from the shapes recipes on the photo-background variant (`data.root=data/shapes_photo "
             "data.shapes.background=photo`, docs/shapes.md): the teacher recipe at `schedule.iters=560`, the "
             "student and CrossKD recipes at their 200 iterations with `seed=S`, CrossKD from that teacher; AP on "
             "the variant's 200 val images, whose photographs no model trained on (CPU)",
}
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}  # Student's t, two-sided 95 %, by degrees of freedom


@dataclass
class Run:
    name: str                 # run directory under the runs root
    family: str               # gfl | faster_rcnn
    label: str                # the table's row
    recipe: str
    overrides: list[str] = field(default_factory=list)
    seed: int = 0
    teacher: str | None = None  # the run whose weights it distils from
    kind: str = "student"       # teacher | student | distill: which schedule, and calibration's groups
    curve: bool = False         # evaluated along the way (the learning curves)

    @property
    def needs(self) -> list[str]:
        return [self.teacher] if self.teacher else []


def plan(ablations: bool = False) -> list[Run]:
    """Every run of the benchmark, in the order they are started; ``ablations`` adds TADF without
    its decay, without the teacher-wins rule, with the feature weight 4 and no decay, and the sweep's
    rows, for every seed (``train --ablations``; ``collect`` always reads them where they exist)."""
    runs = [Run("gfl_teacher", "gfl", "teacher", REC + "gfl_teacher.yaml", kind="teacher", curve=True),
            Run("faster_rcnn_teacher", "faster_rcnn", "teacher", REC + "faster_rcnn_teacher.yaml", kind="teacher",
                curve=True)]
    for s in SEEDS:
        runs.append(Run(f"gfl_student_s{s}", "gfl", "student baseline", REC + "gfl_student.yaml", seed=s, curve=True))
        runs.append(Run(f"faster_rcnn_student_s{s}", "faster_rcnn", "student baseline", REC + "faster_rcnn_student.yaml",
                        seed=s, curve=True))
    gfl = [("crosskd", "CrossKD", True), ("mimic", "prediction mimicking", False), ("crosskd_pkd", "CrossKD+PKD", False)]
    tadf = [("tadf", "TADF all", [], True), ("tadf_feat", "TADF feature only", ["distill.options.terms=[feat]"], False),
            ("tadf_cls", "TADF classification only", ["distill.options.terms=[cls]"], False),
            ("tadf_reg", "TADF regression only", ["distill.options.terms=[reg]"], False)]
    if ablations:  # the labels of the short regime's table (benchmarks/bench_distill.py)
        tadf += [("tadf_nodecay", "TADF all, no decay", ["distill.options.decay=constant"], False),
                 ("tadf_notadaptive", "TADF all, not adaptive", ["distill.options.adaptive=false"], False),
                 ("tadf_w4_nodecay", "TADF all, feature weight 4, no decay",
                  ["distill.options.loss_feat_weight=4.0", "distill.options.decay=constant"], False)]
    for s in SEEDS:
        for key, label, curve in gfl:
            runs.append(Run(f"gfl_{key}_s{s}", "gfl", label, REC + f"gfl_{key}.yaml", seed=s, teacher="gfl_teacher",
                            kind="distill", curve=curve))
        for key, label, ov, curve in tadf:
            runs.append(Run(f"faster_rcnn_{key}_s{s}", "faster_rcnn", label, REC + "faster_rcnn_tadf.yaml", ov, seed=s,
                            teacher="faster_rcnn_teacher", kind="distill", curve=curve))
    # The TADF sweep (seed 0; every seed with ``ablations``): the feature term's weight and Gaussian,
    # and the decay, one at a time (the labels of the short regime's sweep, benchmarks/bench_tadf.py).
    o = "distill.options."
    sweep = [("feat_w0.25", "feature weight 0.25", o + "loss_feat_weight=0.25"), ("feat_w4", "feature weight 4", o + "loss_feat_weight=4.0"),
             ("sigma0.1", "sigma ratio 0.1", o + "sigma_ratio=0.1"), ("sigma0.5", "sigma ratio 0.5", o + "sigma_ratio=0.5"),
             ("decay_constant", "decay constant", o + "decay=constant"), ("decay_cosine", "decay cosine", o + "decay=cosine")]
    if ablations:  # constant weights are the "no decay" row already
        sweep = [x for x in sweep if x[0] != "decay_constant"]
    for s in SEEDS if ablations else (0,):
        for key, label, ov in sweep:
            runs.append(Run(f"faster_rcnn_sweep_{key}_s{s}", "faster_rcnn", f"TADF all, {label}", REC + "faster_rcnn_tadf.yaml",
                            [ov], seed=s, teacher="faster_rcnn_teacher", kind="distill"))
    return runs


#: Rows of the CPU experiments that no GPU plan runs; ``collect`` reads them where they exist.
#: CrossKD from a teacher whose class scores are sharpened or softened by a temperature
#: (docs/distill_results.md, "Is it the sharpness?"); 0.7 brings the embedded 58.6-AP teacher to
#: about the sharpness of the 68.2-AP one, 1.4 is its inverse.
TEACHER_TEMPERATURES = {"sharp": 0.7, "soft": 1.4}
EXTRA = [Run(f"gfl_crosskd_{key}_s{s}", "gfl", f"CrossKD, teacher scores at temperature {t:g}", REC + "gfl_crosskd.yaml",
             [f"distill.options.teacher_cls_temperature={t:g}"], seed=s, teacher="gfl_teacher", kind="distill", curve=True)
         for key, t in TEACHER_TEMPERATURES.items() for s in SEEDS]


def every_run() -> list[Run]:
    """The runs ``collect`` looks for: the default plan's, the ablations' and ``EXTRA`` (without doubles)."""
    out = {r.name: r for r in plan()}
    out.update({r.name: r for r in plan(ablations=True) + EXTRA if r.name not in out})
    return list(out.values())


# ----------------------------------------------------------------------------------------------- train
def command(run: Run, runs_root: Path, iters: int, evals: int) -> list[str]:
    out = runs_root / run.name
    cmd = [PY, "-m", "kdzoo.train", run.recipe, f"output_dir={out}", f"seed={run.seed}", f"schedule.iters={iters}",
           f"eval_interval={max(1, iters // evals) if run.curve else 0}", "report=false", *run.overrides, "--resume"]
    if run.teacher:
        cmd.append(f"teacher.checkpoint={runs_root / run.teacher}")
    return cmd


def finished(runs_root: Path, name: str, iters: int | None = None) -> bool:
    """Whether the run has its final evaluation; with ``iters``, a finished run of another schedule
    is an error (an older job's directory), never silently reused."""
    path = runs_root / name / "eval.json"
    if not path.is_file():
        return False
    done = json.loads(path.read_text()).get("iter")
    if iters is not None and done != iters:
        raise SystemExit(f"{path.parent} holds a finished run of {done} iterations, not {iters}: "
                         "give another --runs, or remove that directory")
    return True


def train(runs: list[Run], runs_root: Path, *, student_iters: int, teacher_iters: int, evals: int, jobs: int,
          deadline: float | None, pack: Path | None, log=print) -> dict[str, int]:
    """Run ``runs`` respecting their teachers, ``jobs`` at a time; returns each run's exit status
    (-1: not started, its teacher failed or the deadline came first)."""
    runs_root.mkdir(parents=True, exist_ok=True)
    status: dict[str, int] = {r.name: 0 for r in runs
                              if finished(runs_root, r.name, teacher_iters if r.kind == "teacher" else student_iters)}
    pending = [r for r in runs if r.name not in status]
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    last_pack = time.time()
    while pending or running:
        for r in list(pending):
            if len(running) >= jobs:
                break
            if any(status.get(n, 0) != 0 for n in r.needs):
                status[r.name] = -1
                pending.remove(r)
                log(f"skip {r.name}: its teacher failed")
                continue
            if all(n in status for n in r.needs):
                iters = teacher_iters if r.kind == "teacher" else student_iters
                f = open(runs_root / f"{r.name}.log", "a")
                running[r.name] = (subprocess.Popen(command(r, runs_root, iters, evals), cwd=ROOT, env=env, stdout=f,
                                                    stderr=subprocess.STDOUT), time.time())
                f.close()
                pending.remove(r)
        time.sleep(1.0)
        for name, (p, t0) in list(running.items()):
            if p.poll() is not None:
                status[name] = p.returncode
                del running[name]
                log(f"{name}: exit {p.returncode} after {time.time() - t0:.0f} s "
                    f"({len(status)} done, {len(running)} running, {len(pending)} waiting)")
        if deadline is not None and time.time() > deadline:
            log(f"deadline: stopping {sorted(running)}; not started: {[r.name for r in pending]}")
            for p, _ in running.values():
                p.terminate()
            for name, (p, _) in running.items():
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                status[name] = -1
            for r in pending:
                status[r.name] = -1
            break
        if pack is not None and time.time() - last_pack > 60:
            pack_results(runs_root, pack)
            last_pack = time.time()
    if pack is not None:
        pack_results(runs_root, pack)
    return status


def calibrate(runs_root: Path, iters: int, log=print, one_each: bool = False) -> dict[str, float]:
    """Seconds per iteration of each kind of run (and seconds of start-up + one evaluation), with
    runs of every kind side by side as in the real job: random-weight teachers stand in for the
    trained ones."""
    import torch

    from kdzoo.engine.build import build_datasets, build_student
    from kdzoo.hub import save_pretrained
    from kdzoo.recipe import load_recipe

    cal = runs_root / "_calibration"
    teachers = {}
    for fam in ("gfl", "faster_rcnn"):
        rec = load_recipe(ROOT / REC / f"{fam}_teacher.yaml", ["data.cache=false"])
        torch.manual_seed(0)
        model = build_student(rec, build_datasets(rec)[0])
        teachers[fam] = cal / f"{fam}_teacher"
        save_pretrained(model, teachers[fam])
    mix = [("gfl_teacher", REC + "gfl_teacher.yaml", None, 2), ("gfl_student", REC + "gfl_student.yaml", None, 3),
           ("gfl_crosskd", REC + "gfl_crosskd.yaml", "gfl", 4), ("faster_rcnn_teacher", REC + "faster_rcnn_teacher.yaml", None, 2),
           ("faster_rcnn_student", REC + "faster_rcnn_student.yaml", None, 3),
           ("faster_rcnn_tadf", REC + "faster_rcnn_tadf.yaml", "faster_rcnn", 4)]
    procs = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.time()
    for kind, recipe, teacher, n in mix:
        for i in range(1 if one_each else n):
            out = cal / f"{kind}_{i}"
            cmd = [PY, "-m", "kdzoo.train", recipe, f"output_dir={out}", f"schedule.iters={iters}", "eval_interval=0",
                   "report=false", "log_interval=5", "checkpoint_interval=100000", "schedule.warmup_iters=5"]
            if teacher:
                cmd.append(f"teacher.checkpoint={teachers[teacher]}")
            procs.append((kind, out, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(f"{out}.log", "w"),
                                                      stderr=subprocess.STDOUT)))
    per: dict[str, list[float]] = {}
    over: dict[str, list[float]] = {}
    ended: dict[int, float] = {}
    while len(ended) < len(procs):  # each run's own end time: start-up + steps + its evaluation
        for i, (_, _, p) in enumerate(procs):
            if i not in ended and p.poll() is not None:
                ended[i] = time.time() - t0
        time.sleep(0.5)
    for i, (kind, out, p) in enumerate(procs):
        wall = ended[i]
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()] if p.returncode == 0 else []
        steps = [x["time_per_iter"] for x in lines if "time_per_iter" in x][1:]  # the first window holds the warm-up
        if not steps:  # reported, and timed as the slowest kind: the job goes on with what works
            tail = Path(f"{out}.log").read_text(errors="replace").splitlines()[-15:]
            log(f"calibration run {out.name} failed (exit {p.returncode}):\n  " + "\n  ".join(tail))
            continue
        per.setdefault(kind, []).append(statistics.mean(steps))
        over.setdefault(kind, []).append(wall - iters * statistics.mean(steps))
    if not per:
        raise SystemExit("every calibration run failed; see the logs above")
    out = {k: statistics.mean(v) for k, v in per.items()}
    out.update({f"{k}/overhead": statistics.mean(v) for k, v in over.items()})
    for kind, *_ in mix:
        out.setdefault(kind, max(out[k] for k in per))
        out.setdefault(f"{kind}/overhead", max(out[f"{k}/overhead"] for k in per))
    out["processes"] = len(procs)
    log(f"calibration ({len(procs)} processes, {iters} iterations, {time.time() - t0:.0f} s): "
        + ", ".join(f"{k} {v:.3f}" for k, v in out.items()))
    return out


def choose_iters(cal: dict[str, float], runs: list[Run], budget: float, evals: int, teacher_ratio: float) -> int:
    """Student iterations S that make the predicted job fit ``budget`` seconds. With P processes side
    by side a step takes P / P_cal times calibration's step time (the GPU and the CPUs are shared), and
    not less than 0.35 times it. Phase 1 trains the teachers (teacher_ratio * S steps, the baselines
    beside them), phase 2 every distilled run at once (S steps); each phase adds a calibration run's
    measured overhead (start-up + one evaluation, mostly start-up) and an eighth of it per evaluation
    along a curve."""
    p_cal = cal["processes"]

    def key(r: Run) -> str:
        base = r.recipe.rsplit("/", 1)[-1].removesuffix(".yaml")
        return {"gfl_mimic": "gfl_crosskd", "gfl_crosskd_pkd": "gfl_crosskd"}.get(base, base)

    def step(r: Run, procs: int) -> float:
        return cal[key(r)] * max(procs / p_cal, 0.35)

    def fixed(r: Run) -> float:  # start-up and the final evaluation, plus the evaluations along a curve
        return cal[f"{key(r)}/overhead"] * (1 + (evals / 8 if r.curve else 0))

    phase1 = [r for r in runs if not r.teacher]
    phase2 = [r for r in runs if r.teacher]
    per_iter = max((teacher_ratio * step(r, len(phase1)) for r in phase1 if r.kind == "teacher"), default=0.0)
    per_iter += max((step(r, len(phase2)) for r in phase2), default=0.0)
    if not phase2:
        per_iter = max(step(r, len(phase1)) * (teacher_ratio if r.kind == "teacher" else 1) for r in phase1)
    overhead = max((fixed(r) for r in phase1), default=0.0) + max((fixed(r) for r in phase2), default=0.0)
    return max(10, int((budget - overhead) / per_iter))


def pack_results(runs_root: Path, dest: Path) -> None:
    """results.tar.gz in ``dest``: every run's small files (no checkpoints, no detections), atomically."""
    dest.mkdir(parents=True, exist_ok=True)
    keep = {"metrics.jsonl", "eval.json", "config.json", "recipe.yaml"}
    fd, tmp = tempfile.mkstemp(dir=dest, suffix=".tmp")
    os.close(fd)
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(runs_root.rglob("*")):
            if path.is_file() and (path.name in keep or path.suffix in (".log", ".txt")):
                tar.add(path, arcname=str(path.relative_to(runs_root.parent)))
    os.replace(tmp, dest / "results.tar.gz")


# ----------------------------------------------------------------------------------------------- collect
def _curve(run_dir: Path) -> list[tuple[int, float]]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        x = json.loads(line)
        if "AP" in x:
            out.append((int(x["iter"]), float(x["AP"])))
    return out


def _series(run_dir: Path, keys: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {k: [] for k in keys}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        x = json.loads(line)
        for k in keys:
            if k in x:
                out[k].append((int(x["iter"]), float(x[k])))
    return out


def paired(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of the per-seed differences a - b and its two-sided 95 % t interval."""
    d = [x - y for x, y in zip(a, b)]
    m = statistics.mean(d)
    if len(d) < 2:
        return m, math.nan, math.nan
    h = T_975[len(d) - 1] * statistics.stdev(d) / math.sqrt(len(d))
    return m, m - h, m + h


def transfer_evals(runs_root: Path, data: Path, log=print) -> str:
    """Evaluate every finished run's final model on ``data``'s val split with ``kdzoo eval``; each
    result is kept next to the run as ``eval_on_<data name>.json`` (a rerun reuses it). Returns that
    file name, for :func:`collect`."""
    name = f"eval_on_{data.name}.json"
    if not (data / "annotations" / "instances_val.json").is_file():
        raise SystemExit(f"--eval-data {data}: expected a COCO-format dataset with annotations/instances_val.json "
                         "and val/ (e.g. `kdzoo shapes --out data/shapes_photo --background photo`)")
    for r in every_run():
        d = runs_root / r.name
        if (d / "eval.json").is_file() and not (d / name).is_file():
            log(f"{r.name}: evaluating on {data}")
            subprocess.run([PY, "-m", "kdzoo", "eval", "--model", str(d), "--data", str(data), "--ann",
                            "annotations/instances_val.json", "--images-dir", "val", "--workers", "0",
                            "--metrics-out", str(d / name)], check=True, stdout=subprocess.DEVNULL)
    return name


def reused_rows(rows: dict, reuse: list[tuple[Path, str]]) -> dict:
    """``rows`` with the rows named in ``reuse`` (a saved ``distill_<tag>.json`` and a row label) added
    where the runs did not give that row: e.g. the 6x-budget baselines for CrossKD from another teacher,
    whose run directories are gone. Where the runs give the row for some seeds, the saved row fills in
    the seeds they lack (new seeds of a row whose earlier runs are gone); a seed in both is the run's, and
    a saved row of another schedule is an error. Each family's rows are in the plan's order (teacher,
    baseline, the rest); a reused row, or the seeds taken into one, record where they came from."""
    for path, label in reuse:
        if not path.is_file():
            raise SystemExit(f"--reuse {path}: expected a saved collect result (docs/distill_<tag>.json)")
        saved = json.loads(path.read_text())
        found = [f for f, fam in saved.items() if label in fam]
        if not found:
            have = sorted({lab for fam in saved.values() for lab in fam})
            raise SystemExit(f"--reuse {path} {label!r}: no such row there (rows: {', '.join(have)})")
        where = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
        for f in found:
            fam = rows.setdefault(f, {})
            if label not in fam:
                fam[label] = {"reused_from": where, **saved[f][label]}  # a row reused twice names its first file
                fam[label].pop("paired", None)
            else:
                _fill_seeds(fam[label], saved[f][label], where, f"--reuse {path} {label!r}")
    order = list(dict.fromkeys(r.label for r in every_run()))  # the plan's: teacher, baseline, the rest
    rank = lambda label: order.index(label) if label in order else len(order)  # noqa: E731
    return {f: {k: fam[k] for k in sorted(fam, key=rank)} for f, fam in rows.items()}


def _fill_seeds(row: dict, saved: dict, where: str, what: str) -> None:
    """Add to ``row`` (from the runs) the seeds of ``saved`` it lacks, in seed order, with their AP,
    AP50, curves and kept fractions; ``row["seeds_from"]`` names the file each taken seed came from."""
    if saved["iters"] != row["iters"]:
        raise SystemExit(f"{what}: that row is of {saved['iters']} iterations, the runs' of {row['iters']}")
    extra = [i for i, sd in enumerate(saved["seeds"]) if sd not in row["seeds"]]
    if not extra:
        return
    per_seed = {sd: (ap, ap50) for sd, ap, ap50 in zip(row["seeds"], row["AP"], row["AP50"])}
    per_seed.update({saved["seeds"][i]: (saved["AP"][i], saved["AP50"][i]) for i in extra})
    order = sorted(per_seed)
    row["seeds"], row["AP"], row["AP50"] = order, [per_seed[sd][0] for sd in order], [per_seed[sd][1] for sd in order]
    for key in ("curves", "kept"):
        taken = {str(saved["seeds"][i]): saved[key][str(saved["seeds"][i])] for i in extra
                 if str(saved["seeds"][i]) in saved.get(key, {})}
        if taken:
            row[key] = dict(sorted({**row.get(key, {}), **taken}.items(), key=lambda kv: int(kv[0])))
    first = saved.get("seeds_from", {})  # a seed taken twice names its first file
    row.setdefault("seeds_from", {}).update({str(saved["seeds"][i]): first.get(str(saved["seeds"][i]), where)
                                             for i in extra})


def collect(runs_root: Path, out_dir: Path, tag: str = "converged", eval_name: str = "eval.json",
            reuse: list[tuple[Path, str]] = ()) -> dict:
    """The rows of the runs under ``runs_root``: their final AP from ``eval_name`` (the run's own
    ``eval.json``, or another dataset's from :func:`transfer_evals`) and, from their own val set,
    their learning curves; ``reuse`` adds saved rows the runs lack (:func:`reused_rows`)."""
    runs = every_run()
    rows: dict[str, dict[str, dict]] = {}
    for r in runs:
        d = runs_root / r.name
        if not (d / "eval.json").is_file() or not (d / eval_name).is_file():
            continue
        ev = json.loads((d / eval_name).read_text())
        row = rows.setdefault(r.family, {}).setdefault(r.label, {"recipe": r.recipe, "overrides": r.overrides,
                                                                  "seeds": [], "AP": [], "AP50": [],
                                                                  "iters": json.loads((d / "eval.json").read_text())["iter"],
                                                                  "curves": {}})
        row["seeds"].append(r.seed)
        row["AP"].append(ev["AP"])
        row["AP50"].append(ev["AP50"])
        if eval_name == "eval.json":  # the curves are on the training data's own val set
            curve = _curve(d)
            if r.curve or len(curve) > 1:  # planned as a curve, or evaluated along the way anyway
                row["curves"][str(r.seed)] = curve
        if r.family == "faster_rcnn" and r.teacher:
            kept = _series(d, ("kept_cls", "kept_reg"))
            if kept["kept_cls"] or kept["kept_reg"]:  # a regression-only run logs kept_reg alone
                row.setdefault("kept", {})[str(r.seed)] = kept
    if reuse:
        rows = reused_rows(rows, list(reuse))
    for fam in rows.values():
        base = fam.get("student baseline")
        for label, row in fam.items():
            if base and label not in ("teacher", "student baseline") and len(row["AP"]) > 1:
                b = dict(zip(base["seeds"], base["AP"]))
                common = [s for s in row["seeds"] if s in b]
                if len(common) > 1:
                    a = dict(zip(row["seeds"], row["AP"]))
                    row["paired"] = paired([a[s] for s in common], [b[s] for s in common])
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if tag == "converged" else f"_{tag}"
    (out_dir / f"distill_{tag}.json").write_text(json.dumps(rows, indent=1))
    _plot_curves(rows, out_dir / f"distill_curves{suffix}.png")
    _plot_kept(rows, out_dir / f"tadf_kept{suffix}.png")
    return rows


def table(rows: dict) -> str:
    lines = []
    for family, fam in rows.items():
        base = fam.get("student baseline")
        lines += [f"### {family} ({'CrossKD' if family == 'gfl' else 'TADF'})", "",
                  "| row | AP mean ± std | Δ vs baseline (paired, 95 % interval) | AP50 mean | per-seed AP | iterations |",
                  "|---|---|---|---|---|---|"]
        for label, r in fam.items():
            m = statistics.mean(r["AP"])
            # one run has no spread: print its AP alone rather than a made-up "± 0.0"
            spread = f"{m:.1f} ± {statistics.stdev(r['AP']):.1f}" if len(r["AP"]) > 1 else f"{m:.1f} (one run)"
            if "paired" in r:
                d, lo, hi = r["paired"]
                delta = f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]"
            elif base and label not in ("teacher", "student baseline"):
                b = dict(zip(base["seeds"], base["AP"]))  # against the baseline of the same seed
                same = [a - b[sd] for sd, a in zip(r["seeds"], r["AP"]) if sd in b]
                delta = f"{statistics.mean(same):+.1f} (seed {', '.join(map(str, r['seeds']))})" if same else ""
            else:
                delta = ""
            per = ", ".join(f"{v:.1f}" for v in r["AP"])
            lines.append(f"| {label} | {spread} | {delta} | {statistics.mean(r['AP50']):.1f} | {per} | {r['iters']} |")
        lines.append("")
        lines += along(fam)
    return "\n".join(lines)


def _paired_line(point: object, av: list[float], bv: list[float]) -> str:
    """One table line: the point, both means, the paired difference ``av - bv`` (with its 95 %
    interval from two seeds on) and the per-seed differences."""
    d, lo, hi = paired(av, bv)
    delta = f"{d:+.1f}" if math.isnan(lo) else f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]"
    per = ", ".join(f"{x - y:+.1f}" for x, y in zip(av, bv))
    return f"| {point} | {statistics.mean(bv):.1f} | {statistics.mean(av):.1f} | {delta} | {per} |"


def versus(rows: dict, other: dict, name: str, other_name: str, pairs: list[tuple[str, str]] = ()) -> str:
    """Row against row between two saved regimes that differ in one thing (e.g. the teacher): for
    every distilled row both have, the paired per-seed difference ``rows - other`` at the end and at
    every iteration both evaluated, over the seeds both ran. ``pairs`` ((label in ``rows``, label in
    ``other``)) compares rows of different names too, after those of the same name. Within one regime
    (``name == other_name``, e.g. one term alone against all terms) only ``pairs`` are compared."""
    lines = []
    within = name == other_name
    same = [] if within else [(label, label) for fam in rows.values() for label in fam
                              if label not in ("teacher", "student baseline")]
    for family, fam in rows.items():
        for label, other_label in list(dict.fromkeys(same + list(pairs))):
            r, o = fam.get(label), other.get(family, {}).get(other_label)
            if r is None or o is None:
                continue
            a, b = dict(zip(r["seeds"], r["AP"])), dict(zip(o["seeds"], o["AP"]))
            seeds = [sd for sd in r["seeds"] if sd in b]
            if not seeds:
                continue
            what = (f"{label}, {name} minus {other_name}" if label == other_label
                    else f"{label} minus {other_label} ({name})" if within
                    else f"{label} ({name}) minus {other_label} ({other_name})")
            columns = (other_label, label) if within else (other_name, name)
            lines += [f"{family} {what} (seed{'s' if len(seeds) > 1 else ''} "
                      f"{', '.join(map(str, seeds))}; Δ paired per seed, 95 % interval):", "",
                      f"| iteration | {columns[0]} | {columns[1]} | Δ | per seed |", "|---|---|---|---|---|"]
            ca = {str(sd): dict(r["curves"].get(str(sd), [])) for sd in seeds}
            cb = {str(sd): dict(o["curves"].get(str(sd), [])) for sd in seeds}
            iters = sorted(set.intersection(*(set(ca[k]) & set(cb[k]) for k in ca)))
            points = [(it, [ca[str(sd)][it] for sd in seeds], [cb[str(sd)][it] for sd in seeds]) for it in iters]
            final = ("final", [a[sd] for sd in seeds], [b[sd] for sd in seeds])
            lines += [_paired_line(it, av, bv) for it, av, bv in [p for p in points if p[0] != r["iters"]] + [final]]
            lines.append("")
    return "\n".join(lines)


def along(fam: dict) -> list[str]:
    """The paired gain along the way, one table per distilled row evaluated during training: at every
    iteration where it and the student baseline were both evaluated for the same seeds, their mean AP
    and the mean per-seed difference with its 95 % t interval (does distillation make training
    faster, better at the end, or both)."""
    base = fam.get("student baseline")
    if not base or not base["curves"]:
        return []
    lines = []
    for label, r in fam.items():
        seeds = sorted(set(r["curves"]) & set(base["curves"]), key=int)
        if label in ("teacher", "student baseline") or not seeds:
            continue
        a = {sd: dict(r["curves"][sd]) for sd in seeds}  # iteration -> AP
        b = {sd: dict(base["curves"][sd]) for sd in seeds}
        iters = sorted(set.intersection(*(set(a[sd]) & set(b[sd]) for sd in seeds)))
        if not iters:
            continue
        how = (f"seeds {', '.join(seeds)}; Δ paired per seed, 95 % interval" if len(seeds) > 1
               else f"seed {seeds[0]} only, no interval")
        lines += [f"{label} against the baseline along the way ({how}):", "", f"| iteration | baseline | {label} | Δ | per seed |", "|---|---|---|---|---|"]
        for it in iters:
            lines.append(_paired_line(it, [a[sd][it] for sd in seeds], [b[sd][it] for sd in seeds]))
        lines.append("")
    return lines


def _plot_curves(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = [f for f in rows if any(r["curves"] for r in rows[f].values())]
    if not fams:
        return
    fig, axes = plt.subplots(1, len(fams), figsize=(6.5 * len(fams), 4.2), squeeze=False)
    for ax, fam in zip(axes[0], fams):
        for i, (label, r) in enumerate((lbl, r) for lbl, r in rows[fam].items() if r["curves"]):
            if label == "teacher":  # its final AP as a level to reach, not a curve on the students' axis
                ap = statistics.mean(r["AP"])
                ax.axhline(ap, color=f"C{i}", ls="--", lw=1.2, label=f"teacher ({ap:.1f} AP, {r['iters']} it)")
                continue
            for j, (seed, curve) in enumerate(sorted(r["curves"].items())):
                xs, ys = zip(*curve)
                ax.plot(xs, ys, color=f"C{i}", alpha=0.9 if j == 0 else 0.45, lw=1.6 if j == 0 else 1.0,
                        label=label if j == 0 else None, marker="o", ms=2.5)
        ax.set_xlabel("iteration")
        ax.set_ylabel("COCO AP, shapes val")
        ax.set_title(f"{fam}: AP during training (lines: seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_kept(rows: dict, path: Path) -> None:
    fam = rows.get("faster_rcnn", {})
    plot_kept_series([(label, next(iter(r["kept"].values()))) for label, r in fam.items() if r.get("kept")], path)


def plot_kept_series(series: list[tuple[str, dict]], path: Path, window: int = 10, bold: str | None = None) -> None:
    """TADF's kept shares (``kept_cls`` / ``kept_reg``: [(iteration, share)]) against the iteration,
    one line per ``(label, series)``, as a moving average over ``window`` logged steps (a step's
    share is over one batch's few positive regions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not series:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, key, title in ((axes[0], "kept_cls", "classification term"), (axes[1], "kept_reg", "regression term")):
        for i, (label, kept) in enumerate(series):
            pts = [(x, v) for x, v in kept.get(key, []) if v == v]  # NaN: a batch without positive regions
            if len(pts) < window:
                continue
            xs, vs = zip(*pts)
            avg = [statistics.mean(vs[j - window + 1:j + 1]) for j in range(window - 1, len(vs))]
            ax.plot(xs[window - 1:], avg, color=f"C{i}", lw=1.4 if label == bold else 1.0, label=label)
        ax.set_title(f"TADF: share of positive regions kept, {title} ({window}-step mean)", fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:  # e.g. a regression-only run has no classification share
            ax.text(0.5, 0.5, f"no run logged {window} steps of {key}", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--runs", default="runs/shapes_converged")
    t.add_argument("--student-iters", type=int)
    t.add_argument("--teacher-iters", type=int)
    t.add_argument("--teacher-ratio", type=float, default=1.25, help="teacher iterations per student iteration")
    t.add_argument("--calibrate", action="store_true", help="choose the iterations from a short side-by-side run")
    t.add_argument("--calibration-iters", type=int, default=40)
    t.add_argument("--calibration-one-each", action="store_true", help="one calibration run per kind (a quick check)")
    t.add_argument("--budget", type=float, default=420.0, help="seconds the training may take (with --calibrate)")
    t.add_argument("--safety", type=float, default=0.75, help="share of --budget the prediction may fill")
    t.add_argument("--evals", type=int, default=8, help="evaluations along a curve run")
    t.add_argument("--jobs", type=int, default=64)
    t.add_argument("--deadline", type=float, help="seconds from now after which running runs are stopped")
    t.add_argument("--pack", help="folder for results.tar.gz, refreshed every minute")
    t.add_argument("--only", nargs="*", help="run names to train (default: all)")
    t.add_argument("--ablations", action="store_true",
                   help="also TADF without decay, without the teacher-wins rule, with feature weight 4 and no decay, "
                        "and the sweep, for every seed (19 more runs)")
    c = sub.add_parser("collect")
    c.add_argument("--runs", default="runs/shapes_converged")
    c.add_argument("--out", default="docs")
    c.add_argument("--tag", default="converged", choices=sorted(INTROS),
                   help="which regime the runs are: names the files and the block of docs/distill_results.md")
    c.add_argument("--eval-data", help="a COCO-format dataset (another shapes variant) to evaluate the runs' final "
                                       "models on, instead of their own val set")
    c.add_argument("--reuse", nargs=2, action="append", default=[], metavar=("JSON", "ROW"),
                   help="take the row ROW (e.g. 'student baseline') from a saved docs/distill_<tag>.json where the "
                        "runs lack it, or the seeds of that row the runs lack; repeatable")
    r = sub.add_parser("render", help="rewrite a regime's tables in docs/distill_results.md from its saved "
                                      "docs/distill_<tag>.json, without the runs (the block's first paragraph, "
                                      "where the runs came from, and the plots are kept)")
    r.add_argument("--out", default="docs")
    r.add_argument("--tag", required=True, choices=sorted(INTROS))
    v = sub.add_parser("versus", help="two saved regimes row against row (paired per seed): "
                                      "docs/distill_<tag>.json minus docs/distill_<against>.json, into the block "
                                      "<tag>-vs-<against> of docs/distill_results.md")
    v.add_argument("--out", default="docs")
    v.add_argument("--tag", required=True, choices=sorted(INTROS))
    v.add_argument("--against", required=True, choices=sorted(INTROS))
    v.add_argument("--rows", nargs=2, action="append", default=[], metavar=("ROW", "AGAINST_ROW"),
                   help="also compare row ROW of --tag with row AGAINST_ROW of --against (repeatable)")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _md import block_head, replace_block

    if args.cmd == "render":
        page, saved = ROOT / args.out / "distill_results.md", ROOT / args.out / f"distill_{args.tag}.json"
        head = block_head(page, f"{args.tag}-regime")
        if not saved.is_file() or head is None:
            raise SystemExit(f"render --tag {args.tag}: expected {saved} and a block <!-- {args.tag}-regime:begin --> "
                             f"in {page}; run `collect --tag {args.tag}` on the runs first")
        text = table(json.loads(saved.read_text()))
        replace_block(page, f"{args.tag}-regime", head + "\n\n" + text)
        print(text)
        return
    if args.cmd == "versus":
        saved = [ROOT / args.out / f"distill_{t}.json" for t in (args.tag, args.against)]
        for path in saved:
            if not path.is_file():
                raise SystemExit(f"versus: expected {path}; run `collect` for that regime first")
        if args.tag == args.against and not args.rows:
            raise SystemExit(f"versus --tag {args.tag} --against {args.against}: within one regime name the rows to "
                             "compare with --rows ROW AGAINST_ROW (e.g. --rows 'TADF feature only' 'TADF all')")
        loaded = [json.loads(path.read_text()) for path in saved]
        for label, other_label in args.rows:
            for rows, lbl, tag in ((loaded[0], label, args.tag), (loaded[1], other_label, args.against)):
                if not any(lbl in fam for fam in rows.values()):
                    have = sorted({k for fam in rows.values() for k in fam})
                    raise SystemExit(f"versus --rows: no row {lbl!r} in {tag}'s results (rows: {', '.join(have)})")
        text = versus(*loaded, args.tag, args.against, [tuple(p) for p in args.rows])
        if not text:
            raise SystemExit(f"versus: {args.tag} and {args.against} share no distilled row with a seed in common; "
                             "name rows to compare with --rows")
        rows_arg = "".join(f" --rows '{a}' '{b}'" for a, b in args.rows)
        replace_block(ROOT / args.out / "distill_results.md", f"{args.tag}-vs-{args.against}",
                      f"Produced by `python benchmarks/bench_converged.py versus --tag {args.tag} --against "
                      f"{args.against}{rows_arg}` (COCO AP in %, the final evaluation and every iteration both "
                      f"{'rows' if args.tag == args.against else 'regimes'} evaluated).\n\n" + text)
        print(text)
        return
    runs_root = (ROOT / args.runs).resolve()
    if args.cmd == "collect":
        eval_name, where, cmd = "eval.json", "the 200 shapes val images", f"--tag {args.tag} --runs {args.runs}"
        if args.eval_data:
            data = (ROOT / args.eval_data).resolve()
            eval_name = transfer_evals(runs_root, data)
            where, cmd = f"the val images of `{args.eval_data}`", f"{cmd} --eval-data {args.eval_data}"
        reuse = [(ROOT / p, label) for p, label in args.reuse]
        if reuse:
            cmd += "".join(f" --reuse {p} '{label}'" for p, label in args.reuse)
        rows = collect(runs_root, ROOT / args.out, args.tag, eval_name, reuse)
        text = table(rows)
        replace_block(ROOT / args.out / "distill_results.md", f"{args.tag}-regime",
                      f"Produced by `python benchmarks/bench_converged.py collect {cmd}` "
                      f"{INTROS[args.tag]} (COCO AP on {where}, in %; mean ± sample std over seeds; "
                      "Δ: mean of the per-seed differences to the baseline of the same seed, with its 95 % t "
                      "interval).\n\n" + text)
        print(text)
        return
    start = time.time()
    log = lambda msg: print(f"[{time.time() - start:6.0f} s] {msg}", flush=True)  # noqa: E731
    runs = plan(args.ablations)
    if args.only:
        runs = [r for r in runs if r.name in set(args.only)]
    if args.calibrate:
        cal = calibrate(runs_root, args.calibration_iters, log, one_each=args.calibration_one_each)
        left = args.budget - (time.time() - start)
        student = choose_iters(cal, runs, left * args.safety, args.evals, args.teacher_ratio)
        (runs_root / "_calibration" / "calibration.json").write_text(json.dumps({**cal, "student_iters": student}, indent=1))
    else:
        if not args.student_iters:
            raise SystemExit("give --student-iters (and --teacher-iters), or --calibrate")
        student = args.student_iters
    if student >= 100:
        student = round(student / 20) * 20
    teacher = args.teacher_iters or max(1, round(student * args.teacher_ratio / 20) * 20 if student >= 100 else round(student * args.teacher_ratio))
    log(f"student iterations {student}, teacher iterations {teacher}, {len(runs)} runs")
    deadline = start + args.deadline if args.deadline else None
    status = train(runs, runs_root, student_iters=student, teacher_iters=teacher, evals=args.evals, jobs=args.jobs,
                   deadline=deadline, pack=Path(args.pack) if args.pack else None, log=log)
    bad = {k: v for k, v in status.items() if v != 0}
    log(f"finished: {sum(v == 0 for v in status.values())} runs; not finished: {bad or 'none'}")


if __name__ == "__main__":
    main()
