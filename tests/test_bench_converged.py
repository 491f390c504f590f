"""benchmarks/bench_converged.py: the run plan, the recipes it trains, the iteration planner, the
paired interval and the results archive (the training itself is what `kdzoo train` tests cover)."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
import tarfile
from pathlib import Path

import pytest

from kdzoo.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_converged", ROOT / "benchmarks" / "bench_converged.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_converged"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_plan_rows_seeds_and_teachers(bench) -> None:
    runs = bench.plan()
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == 2 + 6 + 9 + 12 + 6
    by_name = {r.name: r for r in runs}
    for r in runs:  # every distilled run names a teacher run of its family, started before it
        if r.teacher:
            assert by_name[r.teacher].kind == "teacher" and by_name[r.teacher].family == r.family
            assert names.index(r.teacher) < names.index(r.name)
    labels = {(r.family, r.label) for r in runs if r.seed == 2}
    assert ("gfl", "CrossKD+PKD") in labels and ("faster_rcnn", "TADF regression only") in labels


def test_plan_ablations_add_tadf_rows_for_every_seed(bench, tmp_path: Path) -> None:
    base = {r.name for r in bench.plan()}
    extra = [r for r in bench.plan(ablations=True) if r.name not in base]
    rules = [r for r in extra if "sweep" not in r.name]
    assert sorted(r.name for r in rules) == [f"faster_rcnn_tadf_{k}_s{s}" for k in ("nodecay", "notadaptive", "w4_nodecay")
                                             for s in bench.SEEDS]
    expected = {"TADF all, no decay": ("constant", True, 1.0), "TADF all, not adaptive": ("linear", False, 1.0),
                "TADF all, feature weight 4, no decay": ("constant", True, 4.0)}
    for r in rules:  # distilled from the Faster R-CNN teacher, with overrides the recipe accepts
        assert r.teacher == "faster_rcnn_teacher"
        cmd = bench.command(r, tmp_path, iters=100, evals=4)
        o = load_recipe(ROOT / cmd[3], [a for a in cmd[4:] if "=" in a]).distill.options
        assert (o["decay"], o["adaptive"], o["loss_feat_weight"]) == expected[r.label]
    # the seed-0 sweep gains seeds 1 and 2, without its constant-decay row (the "no decay" row's runs)
    sweep0 = {r.name.removesuffix("_s0"): r.label for r in bench.plan() if "sweep" in r.name}
    assert sweep0["faster_rcnn_sweep_feat_w0.25"] == "TADF all, feature weight 0.25" and len(sweep0) == 6
    del sweep0["faster_rcnn_sweep_decay_constant"]
    for s in (0, 1, 2):
        assert {r.name.removesuffix(f"_s{s}"): r.label for r in bench.plan(ablations=True)
                if "sweep" in r.name and r.seed == s} == sweep0
    assert len(extra) == 9 + 10
    # collect looks for both plans' runs (the default's constant-decay sweep row too) and the CPU-only rows
    assert {r.name for r in bench.every_run()} == base | {r.name for r in extra} | {r.name for r in bench.EXTRA}
    assert len(bench.EXTRA) == 6
    for r in extra:  # every override is a key the TADF recipe accepts, with the value asked for
        cmd = bench.command(r, tmp_path, iters=100, evals=4)
        rec = load_recipe(ROOT / cmd[3], [a for a in cmd[4:] if "=" in a])
        for ov in r.overrides:
            key, value = ov.removeprefix("distill.options.").split("=")
            assert str(rec.distill.options[key]).lower() == value.lower()


def test_converged_recipes_share_the_student_schedule(bench) -> None:
    student = load_recipe(ROOT / bench.REC / "gfl_student.yaml")
    crosskd = load_recipe(ROOT / bench.REC / "gfl_crosskd.yaml")
    assert (crosskd.schedule, crosskd.batch_size, crosskd.model.name) == (student.schedule, student.batch_size, "gfl_mnv3s")
    assert crosskd.distill.method == "crosskd" and crosskd.teacher.checkpoint == "runs/shapes_converged/gfl_teacher"
    assert student.batch_size == 32 and student.data.cache and student.schedule.lr == 0.002
    tadf = load_recipe(ROOT / bench.REC / "faster_rcnn_tadf.yaml")
    base = load_recipe(ROOT / bench.REC / "faster_rcnn_student.yaml")
    assert tadf.schedule == base.schedule and tadf.distill.method == "tadf" and tadf.schedule.grad_clip == 10.0


def test_command_overrides(bench, tmp_path: Path) -> None:
    run = next(r for r in bench.plan() if r.name == "faster_rcnn_tadf_feat_s1")
    cmd = bench.command(run, tmp_path, iters=400, evals=8)
    assert cmd[3] == bench.REC + "faster_rcnn_tadf.yaml"
    assert {f"output_dir={tmp_path / run.name}", "seed=1", "schedule.iters=400", "eval_interval=0",
            "distill.options.terms=[feat]", f"teacher.checkpoint={tmp_path / 'faster_rcnn_teacher'}"} <= set(cmd)
    curve = next(r for r in bench.plan() if r.name == "gfl_student_s0")
    assert "eval_interval=50" in bench.command(curve, tmp_path, iters=400, evals=8)
    load_recipe(ROOT / cmd[3], [a for a in cmd[4:] if "=" in a])  # the overrides are valid recipe keys


def test_paired_interval_by_hand(bench) -> None:
    m, lo, hi = bench.paired([10.0, 12.0, 14.0], [9.0, 10.0, 11.0])  # differences 1, 2, 3: sd 1
    h = 4.303 / math.sqrt(3)
    assert m == 2.0 and lo == pytest.approx(2.0 - h) and hi == pytest.approx(2.0 + h)
    assert math.isnan(bench.paired([1.0], [0.0])[1])


def test_choose_iters_fits_the_budget(bench) -> None:
    runs = bench.plan()
    kinds = ["gfl_teacher", "gfl_student", "gfl_crosskd", "faster_rcnn_teacher", "faster_rcnn_student", "faster_rcnn_tadf"]
    cal = {"processes": 18, **{k: 0.1 for k in kinds}, **{f"{k}/overhead": 10.0 for k in kinds}}
    cal["faster_rcnn_tadf"] = 0.2
    # phase 1: 8 processes -> max(8/18, 0.35) * 0.1 per teacher step, 1.25 teacher steps per student step;
    # phase 2: 27 processes -> 27/18 * 0.2; overhead per phase: 10 * (1 + 8/8) for a curve run.
    per_iter = 1.25 * (8 / 18) * 0.1 + (27 / 18) * 0.2
    expected = int((600 - 20 - 20) / per_iter)
    assert bench.choose_iters(cal, runs, 600, evals=8, teacher_ratio=1.25) == expected


def test_pack_keeps_results_not_checkpoints(bench, tmp_path: Path) -> None:
    runs = tmp_path / "shapes_converged"
    (runs / "a").mkdir(parents=True)
    for name in ("metrics.jsonl", "eval.json", "config.json", "checkpoint.pt", "model.safetensors", "results.json"):
        (runs / "a" / name).write_text("{}")
    (runs / "a.log").write_text("log")
    bench.pack_results(runs, tmp_path / "out")
    with tarfile.open(tmp_path / "out" / "results.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["shapes_converged/a.log", "shapes_converged/a/config.json",
                                          "shapes_converged/a/eval.json", "shapes_converged/a/metrics.jsonl"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["results.tar.gz"]  # no temporary left


def test_collect_tables_paired_rows(bench, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    aps = {"gfl_student": [20.0, 22.0, 21.0], "gfl_crosskd": [23.0, 24.0, 25.0], "gfl_mimic": [21.0],
           "faster_rcnn_student": [10.0, 11.0], "faster_rcnn_tadf_nodecay": [12.0, 14.0]}
    for key, values in aps.items():
        for seed, ap in enumerate(values):
            d = runs / f"{key}_s{seed}"
            d.mkdir(parents=True)
            (d / "eval.json").write_text(json.dumps({"iter": 100, "AP": ap, "AP50": ap * 2}))
            (d / "metrics.jsonl").write_text(json.dumps({"iter": 50, "AP": ap / 2}) + "\n"
                                             + json.dumps({"iter": 100, "AP": ap}) + "\n")
    rows = bench.collect(runs, tmp_path / "docs")
    ck = rows["gfl"]["CrossKD"]
    assert ck["AP"] == [23.0, 24.0, 25.0] and ck["curves"]["0"] == [(50, 11.5), (100, 23.0)]
    d, lo, hi = ck["paired"]  # differences 3, 2, 4
    assert d == pytest.approx(3.0) and hi - d == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    text = bench.table(rows)
    assert "| CrossKD | 24.0 ± 1.0 | +3.0 [+0.5, +5.5] | 48.0 | 23.0, 24.0, 25.0 | 100 |" in text
    # along the way: at iteration 50 the differences are 1.5, 1.0, 2.0 (sd 0.5, half-width 4.303 * 0.5 / sqrt 3)
    assert "CrossKD against the baseline along the way (seeds 0, 1, 2;" in text
    assert "| 50 | 10.5 | 12.0 | +1.5 [+0.3, +2.7] | +1.5, +1.0, +2.0 |" in text
    assert "| 100 | 21.0 | 24.0 | +3.0 [+0.5, +5.5] | +3.0, +2.0, +4.0 |" in text
    # a row not planned as a curve but evaluated along the way gets its curve and table; one seed, no interval
    assert rows["gfl"]["prediction mimicking"]["curves"]["0"] == [(50, 10.5), (100, 21.0)]
    assert "prediction mimicking against the baseline along the way (seed 0 only, no interval):" in text
    assert "| 50 | 10.0 | 10.5 | +0.5 | +0.5 |" in text
    # one run has no spread: its AP stands alone, not as "21.0 ± 0.0"
    assert "| prediction mimicking | 21.0 (one run) | +1.0 (seed 0) | 42.0 | 21.0 | 100 |" in text
    assert (tmp_path / "docs" / "distill_curves.png").stat().st_size > 10_000
    # an ablation row (not in the default training plan) is read where its runs exist: differences 2, 3
    assert rows["faster_rcnn"]["TADF all, no decay"]["paired"][0] == pytest.approx(2.5)


#: A saved baseline row (docs/distill_<tag>.json) of three seeds, 100 iterations, evaluated at 50 and 100.
_SAVED_BASELINE = {"recipe": "r", "overrides": [], "seeds": [0, 1, 2], "AP": [28.0, 29.0, 30.0], "AP50": [40.0] * 3,
                   "iters": 100, "curves": {str(s): [[50, 10.0 + s], [100, 28.0 + s]] for s in range(3)}}


def _finished_run(d: Path, ap: float) -> None:
    """A finished 100-iteration run: final AP ``ap`` (AP50 50), half of it at iteration 50."""
    d.mkdir(parents=True)
    (d / "eval.json").write_text(json.dumps({"iter": 100, "AP": ap, "AP50": 50.0}))
    (d / "metrics.jsonl").write_text(json.dumps({"iter": 50, "AP": ap / 2}) + "\n"
                                     + json.dumps({"iter": 100, "AP": ap}) + "\n")


def test_collect_reuses_a_saved_baseline_row(bench, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed, ap in enumerate([30.0, 33.0, 31.0]):
        _finished_run(runs / f"gfl_crosskd_s{seed}", ap)
    saved = tmp_path / "distill_x6.json"
    base = _SAVED_BASELINE
    saved.write_text(json.dumps({"gfl": {"student baseline": base, "CrossKD": {**base, "AP": [0.0] * 3}}}))
    rows = bench.collect(runs, tmp_path / "docs", "t1200x6", reuse=[(saved, "student baseline")])
    assert list(rows["gfl"]) == ["student baseline", "CrossKD"]  # the baseline first; the saved CrossKD not taken
    assert rows["gfl"]["student baseline"]["reused_from"] == str(saved)
    assert rows["gfl"]["CrossKD"]["AP"] == [30.0, 33.0, 31.0]
    assert rows["gfl"]["CrossKD"]["paired"][0] == pytest.approx(7 / 3)  # differences 2, 4, 1
    # along the way at 50: 15 - 10, 16.5 - 11, 15.5 - 12 = 5, 5.5, 3.5
    assert "| 50 | 11.0 | 15.7 | +4.7 [" in bench.table(rows)
    with pytest.raises(SystemExit, match="no such row there \\(rows: CrossKD, student baseline\\)"):
        bench.collect(runs, tmp_path / "docs", "t1200x6", reuse=[(saved, "teacher")])
    with pytest.raises(SystemExit, match="expected a saved collect result"):
        bench.collect(runs, tmp_path / "docs", "t1200x6", reuse=[(tmp_path / "missing.json", "teacher")])


def test_collect_fills_in_the_seeds_a_row_lacks_from_a_saved_row(bench, tmp_path: Path) -> None:
    """New seeds of a row whose earlier runs are gone: the saved row gives the other seeds."""
    runs = tmp_path / "runs"
    for seed, ap in ((1, 33.0), (2, 31.0)):
        _finished_run(runs / f"gfl_crosskd_s{seed}", ap)
    saved = tmp_path / "distill_t2400x12.json"
    base = _SAVED_BASELINE
    old = {**base, "seeds": [0, 1], "AP": [32.0, 99.0], "AP50": [60.0, 99.0],
           "curves": {"0": [[50, 14.0], [100, 32.0]], "1": [[50, 99.0], [100, 99.0]]}, "paired": [1.0, 0.0, 2.0]}
    saved.write_text(json.dumps({"gfl": {"student baseline": base, "CrossKD": old}}))
    _finished_run(runs / "gfl_crosskd_pkd_s1", 40.0)  # a row the runs give first is still listed in the plan's order
    rows = bench.collect(runs, tmp_path / "docs", "t2400x12", reuse=[(saved, "student baseline"), (saved, "CrossKD")])
    assert list(rows["gfl"]) == ["student baseline", "CrossKD", "CrossKD+PKD"]
    ck = rows["gfl"]["CrossKD"]
    # seed 0 from the file, seeds 1 and 2 from the runs (the file's seed 1 is not taken)
    assert ck["seeds"] == [0, 1, 2] and ck["AP"] == [32.0, 33.0, 31.0] and ck["AP50"] == [60.0, 50.0, 50.0]
    assert list(ck["curves"]) == ["0", "1", "2"] and ck["curves"]["0"] == [[50, 14.0], [100, 32.0]]
    assert ck["curves"]["1"] == [(50, 16.5), (100, 33.0)] and ck["seeds_from"] == {"0": str(saved)}
    assert "reused_from" not in ck
    assert ck["paired"][0] == pytest.approx((4 + 4 + 1) / 3)  # recomputed over all three seeds
    assert "| CrossKD | 32.0 ± 1.0 | +3.0 [" in bench.table(rows)
    saved.write_text(json.dumps({"gfl": {"student baseline": base, "CrossKD": {**old, "iters": 200}}}))
    with pytest.raises(SystemExit, match="'CrossKD': that row is of 200 iterations, the runs' of 100"):
        bench.collect(runs, tmp_path / "docs", "t2400x12", reuse=[(saved, "CrossKD")])


def test_a_finished_run_of_another_schedule_is_not_reused(bench, tmp_path: Path) -> None:
    (tmp_path / "gfl_student_s0").mkdir()
    (tmp_path / "gfl_student_s0" / "eval.json").write_text(json.dumps({"iter": 10, "AP": 0.1}))
    assert bench.finished(tmp_path, "gfl_student_s0", 10) and not bench.finished(tmp_path, "gfl_crosskd_s0", 10)
    with pytest.raises(SystemExit, match="gfl_student_s0 holds a finished run of 10 iterations, not 480"):
        bench.finished(tmp_path, "gfl_student_s0", 480)


def test_collect_on_another_dataset(bench, tmp_path: Path, monkeypatch) -> None:
    runs, data = tmp_path / "runs", tmp_path / "shapes_photo"
    with pytest.raises(SystemExit, match="shapes_photo: expected a COCO-format dataset with annotations/instances_val"):
        bench.transfer_evals(runs, data)
    (data / "annotations").mkdir(parents=True)
    (data / "annotations" / "instances_val.json").write_text("{}")
    for key, own, other in (("gfl_student", [20.0, 22.0], [10.0, 12.0]), ("gfl_crosskd", [25.0, 26.0], [15.0, 18.0])):
        for seed in (0, 1):
            d = runs / f"{key}_s{seed}"
            d.mkdir(parents=True)
            (d / "eval.json").write_text(json.dumps({"iter": 100, "AP": own[seed], "AP50": 0.0}))
            (d / "metrics.jsonl").write_text(json.dumps({"iter": 100, "AP": own[seed]}) + "\n")
            if seed == 0:  # evaluated before: kept, not evaluated again
                (d / "eval_on_shapes_photo.json").write_text(json.dumps({"AP": other[0], "AP50": 1.0}))
    calls = []

    def fake_run(cmd, check, stdout):  # stands for `kdzoo eval ... --metrics-out FILE`
        calls.append(cmd)
        out = Path(cmd[cmd.index("--metrics-out") + 1])
        out.write_text(json.dumps({"AP": {"gfl_student_s1": 12.0, "gfl_crosskd_s1": 18.0}[out.parent.name], "AP50": 1.0}))

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    name = bench.transfer_evals(runs, data, log=lambda *_: None)
    assert name == "eval_on_shapes_photo.json"
    assert sorted(Path(c[c.index("--model") + 1]).name for c in calls) == ["gfl_crosskd_s1", "gfl_student_s1"]
    assert calls[0][calls[0].index("--data") + 1] == str(data) and "--ann" in calls[0]
    rows = bench.collect(runs, tmp_path / "docs", "transfer", name)
    ck = rows["gfl"]["CrossKD"]
    assert ck["AP"] == [15.0, 18.0] and ck["iters"] == 100 and ck["curves"] == {}  # curves are the own val set's
    assert ck["paired"][0] == pytest.approx(5.5)  # differences 5 and 6
    assert (tmp_path / "docs" / "distill_transfer.json").is_file()


def test_render_rewrites_a_block_from_the_saved_json(bench, tmp_path: Path) -> None:
    import subprocess

    docs = tmp_path / "docs"
    docs.mkdir()
    rows = {"gfl": {"student baseline": {"seeds": [0, 1], "AP": [10.0, 12.0], "AP50": [20.0, 24.0], "iters": 100,
                                         "curves": {"0": [[50, 4.0], [100, 10.0]], "1": [[50, 5.0], [100, 12.0]]}},
                    "CrossKD": {"seeds": [0, 1], "AP": [13.0, 16.0], "AP50": [26.0, 30.0], "iters": 100,
                                "curves": {"0": [[50, 7.0], [100, 13.0]], "1": [[50, 9.0], [100, 16.0]]},
                                "paired": [3.5, -2.85, 9.85]}}}
    (docs / "distill_long.json").write_text(json.dumps(rows))
    page = docs / "distill_results.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_converged.py"), "render", "--tag", "long", "--out", str(docs)]
    page.write_text("# page\n\nno block yet\n")
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode != 0 and "expected" in res.stderr and "<!-- long-regime:begin -->" in res.stderr
    page.write_text("# page\n\n<!-- long-regime:begin -->\nProduced by hand-kept line.\n\n| old table |\n"
                    "<!-- long-regime:end -->\n\nprose after\n")
    subprocess.run(cmd, check=True, capture_output=True)
    text = page.read_text()
    assert "Produced by hand-kept line.\n\n### gfl (CrossKD)" in text and "| old table |" not in text
    assert "| CrossKD | 14.5 ± 2.1 | +3.5 [-2.9, +9.8] | 28.0 | 13.0, 16.0 | 100 |" in text
    assert "| 50 | 4.5 | 8.0 | +3.5 [-2.9, +9.9] | +3.0, +4.0 |" in text  # 12.706 * 0.707 / sqrt 2 = 6.35
    assert text.endswith("<!-- long-regime:end -->\n\nprose after\n")


def test_collect_keeps_the_kept_share_of_a_single_term_run(bench, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    logged = {"faster_rcnn_student": {}, "faster_rcnn_tadf_cls": {"kept_cls": 0.75},
              "faster_rcnn_tadf_reg": {"kept_reg": 0.5}, "faster_rcnn_tadf_feat": {}}
    for key, kept in logged.items():
        d = runs / f"{key}_s0"
        d.mkdir(parents=True)
        (d / "eval.json").write_text(json.dumps({"iter": 100, "AP": 10.0, "AP50": 20.0}))
        lines = [json.dumps({"iter": i, "loss": 1.0, **kept}) for i in (10, 20)]
        lines.append(json.dumps({"iter": 100, "AP": 10.0}))
        (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    rows = bench.collect(runs, tmp_path / "docs")["faster_rcnn"]
    assert rows["TADF classification only"]["kept"]["0"]["kept_cls"] == [(10, 0.75), (20, 0.75)]
    assert rows["TADF regression only"]["kept"]["0"]["kept_reg"] == [(10, 0.5), (20, 0.5)]
    assert rows["TADF regression only"]["kept"]["0"]["kept_cls"] == []
    assert "kept" not in rows["TADF feature only"]


def test_versus_pairs_two_regimes_by_seed(bench, tmp_path: Path) -> None:
    import subprocess

    def row(aps, curves):
        return {"seeds": [0, 1, 2][:len(aps)], "AP": aps, "AP50": aps, "iters": 100, "curves": curves}

    new = {"gfl": {"student baseline": row([10.0, 12.0], {}),
                   "CrossKD": row([13.0, 15.0, 11.0], {"0": [[50, 7.0], [100, 13.0]], "1": [[50, 9.0], [100, 15.0]],
                                                       "2": [[50, 5.0], [100, 11.0]]}),
                   "CrossKD+PKD": row([20.0], {"0": [[50, 9.0], [100, 20.0]]})}}
    old = {"gfl": {"CrossKD": row([16.0, 17.0], {"0": [[50, 8.0], [100, 16.0]], "1": [[50, 11.0], [100, 17.0]]}),
                   "prediction mimicking": row([14.0, 14.0], {})}}
    text = bench.versus(new, old, "new", "old")
    # Seeds both ran (0, 1); 50: differences -1, -2; the end: -3, -2 (12.706 * 0.707 / sqrt 2 = 6.35).
    assert "gfl CrossKD, new minus old (seeds 0, 1; Δ paired per seed, 95 % interval):" in text
    assert "| 50 | 9.5 | 8.0 | -1.5 [-7.9, +4.9] | -1.0, -2.0 |" in text
    assert "| final | 16.5 | 14.0 | -2.5 [-8.9, +3.9] | -3.0, -2.0 |" in text
    assert "| 100 |" not in text  # the last evaluation is the final row
    assert "PKD" not in text and "mimicking" not in text and "baseline" not in text  # rows only one regime has
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "distill_long.json").write_text(json.dumps(new))
    page = docs / "distill_results.md"
    page.write_text("# page\n\n<!-- long-vs-x6:begin -->\nold\n<!-- long-vs-x6:end -->\n\nprose after\n")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_converged.py"), "versus", "--tag", "long", "--against",
           "x6", "--out", str(docs)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode != 0 and "distill_x6.json" in res.stderr
    (docs / "distill_x6.json").write_text(json.dumps(old))
    subprocess.run(cmd, check=True, capture_output=True)
    out = page.read_text()
    assert "`python benchmarks/bench_converged.py versus --tag long --against x6`" in out and "\nold\n" not in out
    assert "| final | 16.5 | 14.0 | -2.5 [-8.9, +3.9] | -3.0, -2.0 |" in out and out.endswith("prose after\n")


def test_versus_pairs_rows_of_different_names(bench, tmp_path: Path) -> None:
    import subprocess

    def row(aps, curves):
        return {"seeds": [0, 1, 2][:len(aps)], "AP": aps, "AP50": aps, "iters": 100, "curves": curves}

    sharp = {"gfl": {"CrossKD": row([15.0], {}),
                     "CrossKD, teacher scores at temperature 0.7": row([10.0, 11.0, 12.5],
                                                                        {"0": [[50, 6.0], [100, 10.0]], "1": [[50, 7.0], [100, 11.0]],
                                                                         "2": [[50, 9.0], [100, 12.5]]})}}
    plain = {"gfl": {"CrossKD": row([14.0, 13.0, 14.5], {"0": [[50, 8.0], [100, 14.0]], "1": [[50, 8.0], [100, 13.0]],
                                                          "2": [[50, 9.0], [100, 14.5]]})}}
    text = bench.versus(sharp, plain, "sharp", "plain", [("CrossKD, teacher scores at temperature 0.7", "CrossKD")])
    # The row of the same name first (seed 0 only: +1.0), then the named pair: -4, -2, -2 at the end.
    assert text.index("gfl CrossKD, sharp minus plain (seed 0;") < text.index(
        "gfl CrossKD, teacher scores at temperature 0.7 (sharp) minus CrossKD (plain) (seeds 0, 1, 2;")
    assert "| final | 14.0 | 15.0 | +1.0 | +1.0 |" in text  # one seed: no interval
    # 4.303 * std(-4, -2, -2) / sqrt 3 = 4.303 * 1.1547 / 1.732 = 2.87
    assert "| final | 13.8 | 11.2 | -2.7 [-5.5, +0.2] | -4.0, -2.0, -2.0 |" in text
    assert "| 50 | 8.3 | 7.3 | -1.0 [-3.5, +1.5] | -2.0, -1.0, +0.0 |" in text
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "distill_sharp6x.json").write_text(json.dumps(sharp))
    (docs / "distill_t1200x6.json").write_text(json.dumps(plain))
    (docs / "distill_results.md").write_text("<!-- sharp6x-vs-t1200x6:begin -->\n<!-- sharp6x-vs-t1200x6:end -->\n")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_converged.py"), "versus", "--tag", "sharp6x", "--against",
           "t1200x6", "--out", str(docs), "--rows", "CrossKD, sharp", "CrossKD"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode != 0 and "no row 'CrossKD, sharp' in sharp6x's results" in res.stderr
    cmd[-2] = "CrossKD, teacher scores at temperature 0.7"
    subprocess.run(cmd, check=True, capture_output=True)
    out = (docs / "distill_results.md").read_text()
    assert "--rows 'CrossKD, teacher scores at temperature 0.7' 'CrossKD'`" in out
    assert "| final | 13.8 | 11.2 | -2.7 [-5.5, +0.2] | -4.0, -2.0, -2.0 |" in out


def test_versus_within_one_regime_compares_only_the_named_rows(bench, tmp_path: Path) -> None:
    import subprocess

    def row(aps, curves):
        return {"seeds": [0, 1, 2][:len(aps)], "AP": aps, "AP50": aps, "iters": 100, "curves": curves}

    rows = {"faster_rcnn": {"TADF all": row([52.0, 54.0], {"0": [[50, 30.0], [100, 52.0]], "1": [[50, 31.0], [100, 54.0]]}),
                            "TADF feature only": row([51.0, 55.0, 50.0], {"0": [[50, 32.0], [100, 51.0]],
                                                                          "1": [[50, 34.0], [100, 55.0]]})}}
    assert bench.versus(rows, rows, "r12", "r12") == ""  # no row against itself
    text = bench.versus(rows, rows, "r12", "r12", [("TADF feature only", "TADF all")])
    # Seeds 0 and 1 only: the end -1, +1 (12.706 * 1.414 / sqrt 2 = 12.7); at 50: +2, +3.
    assert "faster_rcnn TADF feature only minus TADF all (r12) (seeds 0, 1; Δ paired per seed, 95 % interval):" in text
    assert "| iteration | TADF all | TADF feature only | Δ | per seed |" in text
    assert "| final | 53.0 | 53.0 | +0.0 [-12.7, +12.7] | -1.0, +1.0 |" in text
    assert "| 50 | 30.5 | 33.0 | +2.5 [-3.9, +8.9] | +2.0, +3.0 |" in text
    assert text.count("minus") == 1
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "distill_results.md").write_text("# page\n")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_converged.py"), "versus", "--tag", "frcnn12x",
           "--against", "frcnn12x", "--out", str(docs)]
    (docs / "distill_frcnn12x.json").write_text(json.dumps(rows))
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode != 0 and "within one regime name the rows to compare with --rows" in res.stderr
    subprocess.run(cmd + ["--rows", "TADF feature only", "TADF all"], check=True, capture_output=True)
    out = (docs / "distill_results.md").read_text()
    assert "<!-- frcnn12x-vs-frcnn12x:begin -->" in out and "every iteration both rows evaluated" in out
    assert "| final | 53.0 | 53.0 | +0.0 [-12.7, +12.7] | -1.0, +1.0 |" in out


def test_collect_reads_the_sharpened_teacher_rows(bench, tmp_path: Path) -> None:
    run = {r.name: r for r in bench.every_run()}["gfl_crosskd_sharp_s1"]
    assert (run.label, run.seed, run.overrides) == ("CrossKD, teacher scores at temperature 0.7", 1,
                                                    ["distill.options.teacher_cls_temperature=0.7"])
    (tmp_path / "gfl_teacher").mkdir()  # the recipe checks that the teacher run exists
    cmd = bench.command(run, tmp_path, iters=100, evals=4)
    assert load_recipe(ROOT / cmd[3], [a for a in cmd[4:] if "=" in a]).distill.options["teacher_cls_temperature"] == 0.7
    soft = {r.name: r for r in bench.every_run()}["gfl_crosskd_soft_s2"]
    assert (soft.label, soft.overrides) == ("CrossKD, teacher scores at temperature 1.4",
                                            ["distill.options.teacher_cls_temperature=1.4"])
    assert not {"gfl_crosskd_sharp_s1", "gfl_crosskd_soft_s2"} & {r.name for r in bench.plan(ablations=True)}  # CPU only
