"""benchmarks/bench_teacher_targets.py: the teacher-target measures against hand-computed values
(a teacher whose head predicts one constant score and uniform box distributions everywhere), and
zero mimicking losses when the teacher is the student itself, and the logged KD losses averaged
over windows of the schedule by hand."""
from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from kdzoo import create_detector

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SIZE = 64


@pytest.fixture(scope="module")
def bench():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend
    spec = importlib.util.spec_from_file_location("bench_teacher_targets", BENCH / "bench_teacher_targets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    torch.set_num_threads(threads)


def small(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = create_detector("gfl_r18", num_classes=3, fpn_channels=32, input_size=(SIZE, SIZE), norm_eval=False,
                            frozen_stages=-1)
    for m in model.bbox_head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.1)
    return model.eval()


def data() -> list[tuple[torch.Tensor, dict]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(3, SIZE, SIZE, generator=g),
             {"boxes": torch.tensor([[8.0, 10.0, 40.0, 44.0], [30.0, 4.0, 60.0, 30.0]]), "labels": torch.tensor([0, 2])}),
            (torch.rand(3, SIZE, SIZE, generator=g),
             {"boxes": torch.tensor([[4.0, 20.0, 50.0, 62.0]]), "labels": torch.tensor([1])}),
            (torch.rand(3, SIZE, SIZE, generator=g),
             {"boxes": torch.tensor([[20.0, 20.0, 36.0, 40.0]]), "labels": torch.tensor([2])})]


def test_binary_entropy_in_bits(bench) -> None:
    got = bench._bits(torch.tensor([0.5, 0.25, 0.0, 1.0]))
    want = [1.0, -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75)), 0.0, 0.0]
    assert got.tolist() == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("bias", [-3.5, -2.0])
def test_constant_teacher_by_hand(bench, bias: float) -> None:
    teacher = small(1)
    head = teacher.bbox_head
    for conv, b in ((head.gfl_cls, bias), (head.gfl_reg, 0.0)):
        nn.init.zeros_(conv.weight)
        nn.init.constant_(conv.bias, b)
    p = 1 / (1 + math.exp(-bias))
    got = bench.measure(small(0), teacher, data(), batch=2)
    assert got["cls entropy, all"] == pytest.approx(-(p * math.log2(p) + (1 - p) * math.log2(1 - p)), rel=1e-4)
    assert got["cls entropy, positives"] == pytest.approx(got["cls entropy, all"], rel=1e-5)
    assert got["top score, positives"] == pytest.approx(p, rel=1e-5)
    assert got["locations with top score >= 0.05"] == (100.0 if p >= 0.05 else 0.0)  # 0.029 and 0.119
    assert got["box distribution entropy (score-weighted)"] == pytest.approx(math.log2(17), rel=1e-5)  # 17 uniform bins



def test_teacher_temperatures_by_hand(bench) -> None:
    """A constant teacher (class logit -2, one box bin of 17 at logit c on every side) at temperatures
    (0.5, 2): the measures of sigmoid(-2 / 0.5) and of the bin's logit c / 2, by hand."""
    teacher = small(1)
    head = teacher.bbox_head
    c = 3.0
    nn.init.zeros_(head.gfl_cls.weight)
    nn.init.constant_(head.gfl_cls.bias, -2.0)
    nn.init.zeros_(head.gfl_reg.weight)
    with torch.no_grad():
        head.gfl_reg.bias.copy_(torch.tensor([c if j % 17 == 0 else 0.0 for j in range(68)]))
    got = bench.measure(small(0), teacher, data(), batch=3, temps=(0.5, 2.0))
    p = 1 / (1 + math.exp(4.0))
    assert got["cls entropy, all"] == pytest.approx(-(p * math.log2(p) + (1 - p) * math.log2(1 - p)), rel=1e-4)
    assert got["top score, positives"] == pytest.approx(p, rel=1e-5)
    assert got["locations with top score >= 0.05"] == 0.0  # 0.018 once sharpened (0.119 at temperature 1)
    q = math.exp(c / 2) / (math.exp(c / 2) + 16)  # the peaked bin; the other 16 share the rest
    r = (1 - q) / 16
    assert got["box distribution entropy (score-weighted)"] == pytest.approx(-(q * math.log2(q) + 16 * r * math.log2(r)), rel=1e-5)
    plain = bench.measure(small(0), teacher, data(), batch=3)
    assert plain["locations with top score >= 0.05"] == 100.0
    assert plain["mimic loss_kd_cls"] != pytest.approx(got["mimic loss_kd_cls"], rel=1e-3)  # tempered targets

def test_teacher_equal_to_student_gives_zero_mimicking_loss(bench) -> None:
    student = small(0)
    twin = small(0)
    got = bench.measure(student, twin, data(), batch=3)
    assert got["mimic loss_kd_cls"] == pytest.approx(0.0, abs=1e-6)
    assert got["mimic loss_kd_reg"] == pytest.approx(0.0, abs=1e-6)
    other = bench.measure(student, small(1), data(), batch=3)
    assert other["mimic loss_kd_cls"] > 1e-3 and other["mimic loss_kd_reg"] > 1e-3


def _fake_run(path: Path, teacher: str, mode: str, rows: list[dict]) -> Path:
    path.mkdir(parents=True)
    (path / "recipe.yaml").write_text(f"teacher:\n  checkpoint: {teacher}\ndistill:\n  method: crosskd\n  options:\n    mode: {mode}\n")
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_logged_kd_windows_by_hand(bench, tmp_path: Path) -> None:
    rows = [{"iter": i, "loss_kd_cls": float(i), "loss_kd_reg": 2.0 * i} for i in (100, 300, 600, 1200, 1500, 2400)]
    rows.insert(3, {"iter": 1200, "AP": 40.0})  # an evaluation record: no loss, skipped
    a = _fake_run(tmp_path / "a", "runs/t1", "crosskd", rows)
    b = _fake_run(tmp_path / "b", "runs/t1", "crosskd", [{**r, "loss_kd_cls": r["loss_kd_cls"] + 1} for r in rows if "loss_kd_cls" in r])
    c = _fake_run(tmp_path / "c", "runs/t2", "mimic", rows)
    got = bench.logged_kd([a, b, c])
    assert set(got) == {str(Path("runs/t1").resolve()), str(Path("runs/t2").resolve())}
    t1 = got[str(Path("runs/t1").resolve())]
    assert t1["logged crosskd loss_kd_cls, iterations 0-300"] == [200.0, 201.0]  # (100 + 300) / 2
    assert t1["logged crosskd loss_kd_cls, iterations 300-1200"] == [900.0, 901.0]  # (600 + 1200) / 2
    assert t1["logged crosskd loss_kd_reg, iterations 1200-end"] == [3900.0, 3900.0]  # 2 (1500 + 2400) / 2
    assert set(got[str(Path("runs/t2").resolve())]) == {f"logged mimic loss_kd_{k}, iterations {w}" for k in ("cls", "reg")
                                   for w in ("0-300", "300-1200", "1200-end")}
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "recipe.yaml").write_text("teacher: null\n")
    with pytest.raises(SystemExit, match=r"--distilled .*d: expected a distillation run directory"):
        bench.logged_kd([tmp_path / "d"])


def test_logged_kd_links_to_one_teacher_are_one(bench, tmp_path: Path) -> None:
    (tmp_path / "teacher").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "teacher")
    rows = [{"iter": 100, "loss_kd_cls": 1.0, "loss_kd_reg": 2.0}]
    a = _fake_run(tmp_path / "a", str(tmp_path / "teacher"), "crosskd", rows)
    b = _fake_run(tmp_path / "b", str(tmp_path / "link"), "crosskd", rows)
    got = bench.logged_kd([a, b])
    assert list(got) == [str((tmp_path / "teacher").resolve())]
    assert got[str((tmp_path / "teacher").resolve())]["logged crosskd loss_kd_cls, iterations 0-300"] == [1.0, 1.0]



def test_logged_kd_groups_by_teacher_name_and_temperatures(bench, tmp_path: Path) -> None:
    rows = [{"iter": 100, "loss_kd_cls": 1.0, "loss_kd_reg": 2.0}]
    plain = _fake_run(tmp_path / "a", "runs/t1", "crosskd", rows)
    sharp = tmp_path / "b"
    sharp.mkdir()
    (sharp / "recipe.yaml").write_text("teacher:\n  name: gfl_r10t.shapes\n  pretrained: true\ndistill:\n  method: crosskd\n"
                                       "  options:\n    teacher_cls_temperature: 0.5\n")
    (sharp / "metrics.jsonl").write_text(json.dumps({"iter": 100, "loss_kd_cls": 3.0, "loss_kd_reg": 4.0}) + "\n")
    got = bench.logged_kd([plain, sharp])
    assert set(got) == {str(Path("runs/t1").resolve()), "gfl_r10t.shapes, temperatures cls 0.5, box 1"}
    assert got["gfl_r10t.shapes, temperatures cls 0.5, box 1"]["logged crosskd loss_kd_reg, iterations 0-300"] == [4.0]
    assert bench.teacher_label("gfl_r10t.shapes") == bench.teacher_id("gfl_r10t.shapes") == "gfl_r10t.shapes"

def test_a_head_without_box_distributions_is_refused(bench) -> None:
    torch.manual_seed(0)
    atss = create_detector("atss_r18", num_classes=3, fpn_channels=32, input_size=(SIZE, SIZE)).eval()
    with pytest.raises(SystemExit, match=r"teacher 'atss_r18' must both predict box distributions"):
        bench.measure(small(0), atss, data())


def test_table_into_a_docs_block_keeps_its_first_paragraph(bench, tmp_path: Path) -> None:
    import sys
    sys.path.insert(0, str(BENCH))  # the script's own import path for benchmarks/_md.py
    results = {"runs/t1": {"cls entropy, all": [0.0681, 0.0683], "teacher AP": [58.6]},
               "gfl_r10t.shapes, temperatures cls 0.7, box 1": {"cls entropy, all": [0.0242]}}
    table = bench.render_table(results)
    assert table.splitlines() == [
        "| measure | `runs/t1` | `gfl_r10t.shapes, temperatures cls 0.7, box 1` |", "|---|---|---|",
        "| cls entropy, all | 0.068 | 0.024 |", "| teacher AP | 58.600 |  |"]  # a 0.0002 range: no brackets
    page = tmp_path / "page.md"
    page.write_text("# p\n\n<!-- tt:begin -->\nWhere these came from, by hand.\n\n| old |\n<!-- tt:end -->\n\nafter\n")
    bench.write_block(page, "tt", table, "python benchmarks/bench_teacher_targets.py --x")
    text = page.read_text()
    assert "Where these came from, by hand.\n\n| measure |" in text and "| old |" not in text and text.endswith("after\n")
    bench.write_block(page, "new", table, "python benchmarks/bench_teacher_targets.py --x")
    assert "<!-- new:begin -->\nProduced by `python benchmarks/bench_teacher_targets.py --x`.\n\n| measure |" in page.read_text()


def test_a_training_checkpoint_is_a_teacher(bench, tmp_path: Path) -> None:
    """``--teacher`` a run's checkpoint.pt: the detector its recorded recipe builds for the data's
    classes, with the checkpoint's weights (a teacher part-way through its schedule)."""
    from types import SimpleNamespace

    from kdzoo.checkpoint import rng_state, save_checkpoint
    from kdzoo.recipe import recipe_from_dict

    teacher = small(3)
    recipe = recipe_from_dict({"model": {"name": "gfl_r18", "kwargs": {"fpn_channels": 32, "norm_eval": False,
                                                                       "frozen_stages": -1}},
                               "data": {"root": str(tmp_path), "input_size": [SIZE, SIZE]},
                               "output_dir": str(tmp_path / "run"), "schedule": {"iters": 600}})
    path = tmp_path / "teacher_it300.pt"
    save_checkpoint(path, iteration=300, model=teacher, optimizer=torch.optim.SGD(teacher.parameters(), lr=0.1),
                    scheduler={}, scaler=torch.amp.GradScaler("cpu", enabled=False), rngs=[rng_state()],
                    recipe=recipe.to_dict())
    classes = SimpleNamespace(num_classes=3, categories=["a", "b", "c"], label_to_cat_id=[1, 2, 3])
    loaded = bench.load_teacher(str(path), classes)
    assert loaded.arch_name == "gfl_r18" and not loaded.training
    assert loaded.state_dict().keys() == teacher.state_dict().keys()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in loaded.state_dict().items())
    images = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        out = [m.bbox_head.flatten(m.bbox_head(m.extract_feats(images)))["cls"] for m in (loaded, teacher)]
    assert torch.equal(out[0], out[1])
    # for other classes the recorded recipe's detector does not take the weights: the error names the file
    from kdzoo.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match=rf"(?s)--teacher {re.escape(str(path))} does not match.*shape mismatch.*gfl_cls"):
        bench.load_teacher(str(path), SimpleNamespace(num_classes=5, categories=list("abcde"), label_to_cat_id=[1, 2, 3, 4, 5]))
    other = tmp_path / "weights.pt"
    torch.save(teacher.state_dict(), other)
    with pytest.raises(SystemExit, match="must be a training checkpoint written by kdzoo.train"):
        bench.load_teacher(str(other), classes)
