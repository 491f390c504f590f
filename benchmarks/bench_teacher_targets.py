"""What two GFL teachers give a student to learn from: why is the stronger teacher the worse one?

docs/distill_results.md ("A teacher trained to its plateau") finds that CrossKD from a GFL teacher
trained to its plateau (2400 iterations, 68.2 AP) gains much less than from the same recipe
stopped at 1200 iterations (58.6 AP). This script measures, on the validation images, what each
teacher's targets look like and how far one fixed student (a baseline run, trained without any
teacher) is from them:

* the teacher's confidence: mean binary entropy (bits) of its class scores over every valid
  location and over the student's positives (the locations the KD terms are averaged over), its
  mean top score on the positives, and the share of locations where its top score is at least 0.05
  (the soft negatives a KD-QFL target carries);
* the sharpness of its box distributions: mean entropy (bits) of its 17-bin side distributions,
  weighted by its top class score as the KD box term is (docs/crosskd.md);
* the prediction-mimicking losses (the recipes' weights) of students trained without a teacher
  against each teacher's outputs: how far a student trained alone ends up from what each teacher
  would ask of it. (The cross-head losses of such a student are not defined: between different
  head widths CrossKD's 1x1 adapter is learned during distillation, and an untrained one makes
  them noise.)
* with ``--distilled``: the KD losses distillation runs logged while training (the learned adapter
  included), averaged over windows of their schedule and grouped by the teacher they came from
  (and the teacher temperatures they used);
* with ``--teacher-temperature CLS BOX``: every teacher again with its class logits divided by CLS
  and its box-distribution logits by BOX (CrossKD's ``teacher_cls_temperature`` and
  ``teacher_reg_temperature``): how far a temperature moves the measures above, e.g. to sharpen
  one teacher to another's entropy without changing its ranking of locations.

    python benchmarks/bench_teacher_targets.py --student runs/shapes_t1200_2400/gfl_student_s0 \\
        --student runs/shapes_t1200_2400/gfl_student_s1 --student runs/shapes_t1200_2400/gfl_student_s2 \\
        --teacher runs/shapes_t1200/gfl_teacher_1200 --teacher runs/shapes_t2400/gfl_teacher_2400 \\
        --distilled runs/shapes_t1200_2400/gfl_crosskd_s0 ... --distilled runs/shapes_t2400_2400/gfl_crosskd_s0 ... \\
        --json docs/teacher_targets_t1200_t2400.json --block teacher-targets

The students are finished run directories of the same data (their ``recipe.yaml`` names it); a
teacher is a run directory, a run's training checkpoint (``checkpoint.pt``: the teacher part-way
through its schedule, built from the recipe the checkpoint records) or a registered pretrained name
(``gfl_r10t.shapes``, the embedded teacher); models run in eval mode on the CPU, batch 8.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import yaml

from kdzoo import create_detector
from kdzoo.data.coco import CocoDetection, collate_fn
from kdzoo.distill import build_distiller


def load_run(run: Path) -> torch.nn.Module:
    if not (run / "model.safetensors").is_file():
        raise SystemExit(f"{run}: not a finished kdzoo run directory (no model.safetensors)")
    return create_detector(f"local-dir:{run}", pretrained=True).eval()


def load_checkpoint_teacher(path: Path, data: CocoDetection) -> torch.nn.Module:
    """A teacher from a run's training checkpoint (e.g. a copy of ``checkpoint.pt`` taken part-way
    through its schedule): the detector its recorded recipe builds for ``data``'s classes, with the
    weights the run would have saved at that iteration."""
    from kdzoo.checkpoint import check_fits, checkpoint_weights, is_training_checkpoint
    from kdzoo.engine.build import build_student
    from kdzoo.pretrained import read_weights_file
    from kdzoo.recipe import recipe_from_dict

    try:
        state = read_weights_file(path)
    except ValueError as e:
        raise SystemExit(f"--teacher {path}: {e}") from e
    if not is_training_checkpoint(state):
        raise SystemExit(f"--teacher {path}: a file must be a training checkpoint written by kdzoo.train "
                         "(checkpoint.pt); give a finished run directory or a pretrained name otherwise")
    model = build_student(recipe_from_dict(state["recipe"]), data)
    weights = checkpoint_weights(state)
    check_fits(model, weights, f"--teacher {path}", "the detector its recorded recipe builds")
    model.load_state_dict(weights)
    return model.eval()


def load_teacher(spec: str, data: CocoDetection | None = None) -> torch.nn.Module:
    """A teacher from a run directory, a run's ``checkpoint.pt`` (for ``data``'s classes) or, if
    ``spec`` is neither, a pretrained name."""
    if Path(spec).is_dir():
        return load_run(Path(spec))
    if Path(spec).is_file() and data is not None:
        return load_checkpoint_teacher(Path(spec), data)
    try:
        return create_detector(spec, pretrained=True).eval()
    except (RuntimeError, ValueError) as e:
        raise SystemExit(f"--teacher {spec}: neither a run directory nor a loadable pretrained name ({e})") from e


def teacher_label(spec: str, temps: tuple[float, float] = (1.0, 1.0)) -> str:
    """The table's column: the teacher as given, with its temperatures unless they are the reference's."""
    return spec if temps == (1.0, 1.0) else f"{spec}, temperatures cls {temps[0]:g}, box {temps[1]:g}"


def teacher_id(spec: str) -> str:
    """What identifies a teacher across spellings: a path resolved (links to one run are one
    teacher), a pretrained name (no ``/``) as it is."""
    return str(Path(spec).resolve()) if "/" in spec or Path(spec).exists() else spec


def val_data(run: Path) -> CocoDetection:
    d = yaml.safe_load((run / "recipe.yaml").read_text())["data"]
    if d.get("format", "coco") != "coco":
        raise SystemExit(f"{run}: trained on {d['format']!r} data; this script reads COCO-format runs")
    root = Path(d["root"])
    return CocoDetection(root / d["val_images"], root / d["val_ann"], train=False)


def _bits(p: torch.Tensor) -> torch.Tensor:
    """Binary entropy of probabilities ``p`` in bits, element-wise."""
    p = p.clamp(1e-7, 1 - 1e-7)
    return -(p * p.log2() + (1 - p) * (1 - p).log2())


@torch.no_grad()
def measure(student: torch.nn.Module, teacher: torch.nn.Module, data: CocoDetection, batch: int = 8,
            limit: int | None = None, temps: tuple[float, float] = (1.0, 1.0)) -> dict[str, float]:
    """The measures of the module docstring for one student and one teacher, whose class and box
    logits are divided by ``temps`` (the mimicking losses use the same tempered targets)."""
    head = student.bbox_head
    if head.reg_distribution_bins is None or teacher.bbox_head.reg_distribution_bins is None:
        raise SystemExit(f"measure: student {student.arch_name!r} and teacher {teacher.arch_name!r} must both predict "
                         "box distributions (GFL); this script reads the entropy of those distributions")
    mimic = build_distiller("crosskd", student, teacher, mode="mimic", teacher_cls_temperature=temps[0],
                            teacher_reg_temperature=temps[1]).eval()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}

    def add(key: str, value: float, weight: float = 1.0) -> None:
        sums[key] = sums.get(key, 0.0) + value
        counts[key] = counts.get(key, 0.0) + weight

    n = len(data) if limit is None else min(limit, len(data))
    for start in range(0, n, batch):
        images, targets = collate_fn([data[i] for i in range(start, min(start + batch, n))])
        for k, v in mimic(images, targets).items():
            if k.startswith("loss_kd"):
                add(f"mimic {k}", float(v))
        b, t = student.preprocess(images, targets)
        t_out = teacher.bbox_head(teacher.extract_feats(b.tensors))
        s_out = head(student.extract_feats(b.tensors))
        assignment = head.loss_and_assignment(s_out, t, b.image_sizes)[1]
        flat = head.flatten(t_out)
        valid, pos = assignment.valid, assignment.positive
        prob = (flat["cls"] / temps[0]).sigmoid()  # [N, P, C]
        ent = _bits(prob).mean(-1)  # per location, over the classes
        top = prob.amax(-1)
        add("cls entropy, all", float(ent[valid].sum()), float(valid.sum()))
        add("cls entropy, positives", float(ent[pos].sum()), float(pos.sum()))
        add("top score, positives", float(top[pos].sum()), float(pos.sum()))
        add("locations with top score >= 0.05", float((top[valid] >= 0.05).sum()), float(valid.sum()))
        bins = head.reg_distribution_bins
        dist = (flat["reg"] / temps[1]).reshape(*top.shape, 4, bins).softmax(-1)
        side_ent = -(dist * dist.clamp_min(1e-12).log2()).sum(-1).mean(-1)  # [N, P]
        w = top * valid
        add("box distribution entropy (score-weighted)", float((side_ent * w).sum()), float(w.sum()))
    out = {k: sums[k] / counts[k] for k in sums}
    out["locations with top score >= 0.05"] *= 100
    return out


WINDOWS = ((0, 300), (300, 1200), (1200, None))  # iterations (start, end]; None: to the end


def logged_kd(runs: list[Path]) -> dict[str, dict[str, list[float]]]:
    """For each teacher (the runs' ``teacher.checkpoint``, resolved: links to one run are one
    teacher; or ``teacher.name``) and the teacher temperatures the run used (:func:`teacher_label`
    of :func:`teacher_id`), the logged ``loss_kd_*`` of its distilled runs, by distillation mode,
    each averaged over the iterations of every window in ``WINDOWS``: one value per run."""
    out: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        recipe = yaml.safe_load((run / "recipe.yaml").read_text())
        teacher = recipe.get("teacher") or {}
        teacher = teacher.get("checkpoint") or teacher.get("name")
        if not teacher or not (run / "metrics.jsonl").is_file():
            raise SystemExit(f"--distilled {run}: expected a distillation run directory with recipe.yaml "
                             "(teacher.checkpoint or teacher.name set) and metrics.jsonl")
        options = (recipe.get("distill") or {}).get("options") or {}
        mode = options.get("mode", "crosskd")
        temps = (float(options.get("teacher_cls_temperature", 1.0)), float(options.get("teacher_reg_temperature", 1.0)))
        group = teacher_label(teacher_id(teacher), temps)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        rows = [r for r in rows if "loss_kd_cls" in r]
        for key in sorted({k for r in rows for k in r if k.startswith("loss_kd")}):
            for lo, hi in WINDOWS:
                vals = [r[key] for r in rows if key in r and lo < r["iter"] and (hi is None or r["iter"] <= hi)]
                if vals:
                    name = f"logged {mode} {key}, iterations {lo}-{hi if hi is not None else 'end'}"
                    out.setdefault(group, {}).setdefault(name, []).append(statistics.mean(vals))
    return out


def _cell(v: list[float]) -> str:
    spread = f" [{min(v):.2f}, {max(v):.2f}]" if len(v) > 1 and max(v) - min(v) > 5e-4 else ""
    return f"{statistics.mean(v):.3f}{spread}"


def render_table(results: dict[str, dict[str, list[float]]]) -> str:
    """The Markdown table: one column per teacher (at one pair of temperatures), one row per measure."""
    lines = ["| measure | " + " | ".join(f"`{t}`" for t in results) + " |", "|---|" + "---|" * len(results)]
    for k in dict.fromkeys(k for r in results.values() for k in r):
        lines.append(f"| {k} | " + " | ".join(_cell(r[k]) if k in r else "" for r in results.values()) + " |")
    return "\n".join(lines)


def write_block(page: Path, name: str, table: str, command: str) -> None:
    """Put ``table`` into the block ``name`` of ``page``, under the block's first paragraph (where the
    numbers came from, written by hand) if it has one, else under ``Produced by `command```."""
    from _md import block_head, replace_block

    head = block_head(page, name) or f"Produced by `{command}`."
    replace_block(page, name, head + "\n\n" + table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", type=Path, action="append", required=True,
                    help="a finished student run trained without a teacher (repeat: the table shows the mean and range)")
    ap.add_argument("--teacher", action="append", required=True,
                    help="a finished teacher run, a run's training checkpoint (checkpoint.pt, e.g. a copy taken "
                         "part-way through), or a pretrained name such as gfl_r10t.shapes (repeat)")
    ap.add_argument("--teacher-temperature", nargs=2, type=float, action="append", default=[], metavar=("CLS", "BOX"),
                    help="also measure every teacher with its class / box logits divided by these (repeat)")
    ap.add_argument("--distilled", type=Path, action="append", default=[],
                    help="a finished distillation run from one of the teachers (repeat): its logged KD losses")
    ap.add_argument("--limit", type=int, default=None, help="first N validation images only")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    ap.add_argument("--block", default=None,
                    help="also write the table into the block <!-- BLOCK:begin --> of --page, keeping the block's "
                         "first paragraph (e.g. teacher-targets)")
    ap.add_argument("--page", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "distill_results.md")
    args = ap.parse_args()
    data = val_data(args.student[0])
    for cls_t, box_t in args.teacher_temperature:
        if not (cls_t > 0 and box_t > 0):
            raise SystemExit(f"--teacher-temperature {cls_t:g} {box_t:g}: both must be > 0")
    teachers = {spec: load_teacher(spec, data) for spec in args.teacher}
    temps = [(1.0, 1.0)] + [tuple(t) for t in args.teacher_temperature if tuple(t) != (1.0, 1.0)]
    # results[column][measure]: one value per student; a column is a teacher at one pair of temperatures
    results: dict[str, dict[str, list[float]]] = {teacher_label(t, tt): {} for t in teachers for tt in temps}
    for s_run in args.student:
        student = load_run(s_run)
        for t, teacher in teachers.items():
            for tt in temps:
                for k, v in measure(student, teacher, data, limit=args.limit, temps=tt).items():
                    results[teacher_label(t, tt)].setdefault(k, []).append(v)
    for spec in args.teacher:  # the AP its run recorded (none for a pretrained name)
        ev = Path(spec) / "eval.json"
        if ev.is_file():
            results[spec]["teacher AP"] = [json.loads(ev.read_text())["AP"]]
    columns = {teacher_label(teacher_id(t), tt): teacher_label(t, tt) for t in teachers for tt in temps}
    for group, logged in logged_kd(args.distilled).items():
        if group not in columns:
            raise SystemExit(f"--distilled: runs distilled from {group}, which is not one of the --teacher columns "
                             f"({', '.join(columns.values())}); add the teacher or its --teacher-temperature")
        results[columns[group]].update(logged)
    n = len(data) if args.limit is None else min(args.limit, len(data))
    print(f"students (without a teacher): {', '.join(map(str, args.student))} ({n} val images; mean over the students, range in brackets)\n")
    table = render_table(results)
    print(table)
    if args.block:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        write_block(args.page, args.block, table, "python benchmarks/bench_teacher_targets.py " + " ".join(sys.argv[1:]))
    if args.json:
        args.json.write_text(json.dumps({"students": list(map(str, args.student)), "val_images": n,
                                         "teachers": results}, indent=1))

if __name__ == "__main__":
    main()
