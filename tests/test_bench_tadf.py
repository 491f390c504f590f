"""benchmarks/bench_tadf.py: the sweep's rows (each changes one TADF option of the shipped recipe),
the kept shares read from a run's per-step metrics, and the table's differences, by hand."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from kdzoo.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_tadf", BENCH / "bench_tadf.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_tadf"] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.path.remove(str(BENCH))


def test_rows_change_one_option_each(bench) -> None:
    rows = bench.rows()
    shipped = load_recipe(ROOT / bench.TADF).distill.options
    assert (shipped["loss_feat_weight"], shipped["sigma_ratio"], shipped["decay"]) == (1.0, 0.25, "linear")
    seen = set()
    for r in rows[2:]:
        options = [o for o in r.overrides if o.startswith("distill.options.")]
        assert len(options) == 1 and "log_interval=1" in r.overrides, r.label
        key, value = options[0].removeprefix("distill.options.").split("=")
        recipe = load_recipe(ROOT / r.recipe, [*r.overrides])
        assert str(recipe.distill.options[key]) == value != str(shipped[key]), r.label
        assert recipe.log_interval == 1
        seen.add((key, value))
    assert seen == {("loss_feat_weight", "0.25"), ("loss_feat_weight", "4.0"), ("sigma_ratio", "0.1"),
                    ("sigma_ratio", "0.5"), ("decay", "constant"), ("decay", "cosine")}
    base = load_recipe(ROOT / rows[0].recipe)
    assert rows[0].label == "student baseline" and base.teacher is None and base.distill is None
    assert rows[1].label == bench.SHIPPED and load_recipe(ROOT / rows[1].recipe, rows[1].overrides).distill.options == shipped


def _run(path: Path, ap: float, kept: list[float] | None) -> dict:
    path.mkdir(parents=True)
    lines = [{"iter": i + 1, "loss": 1.0, **({"kept_cls": k, "kept_reg": 1 - k} if kept else {})}
             for i, k in enumerate(kept or [0.0] * 8)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return {"AP": ap, "run_dir": str(path)}


def test_collect_and_table_by_hand(bench, tmp_path: Path) -> None:
    kept = [0.2, 0.4, float("nan"), 0.6, 0.6, 0.8, 0.9, 1.0, 1.0]  # NaN: a batch without positives
    results = {"student baseline": {0: _run(tmp_path / "b", 8.0, None), 1: _run(tmp_path / "b1", 6.0, None)},
               bench.SHIPPED: {0: _run(tmp_path / "t", 12.0, kept), 1: _run(tmp_path / "t1", 9.0, kept)},
               "feature weight 4": {0: _run(tmp_path / "f", 13.5, kept), 1: _run(tmp_path / "f1", 8.5, kept)}}
    data = bench.collect(results, 32.4)
    q = data["rows"][bench.SHIPPED]["kept_quarters"]["0"]
    # 8 finite values: quarters of 2 -> first (0.2 + 0.4) / 2, last (1.0 + 1.0) / 2; regression 1 - k
    assert q["kept_cls"] == pytest.approx((0.3, 1.0)) and q["kept_reg"] == pytest.approx((0.7, 0.0))
    assert data["rows"]["student baseline"]["kept"] == {}
    text = bench.table(data)
    lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    # vs shipped: (13.5 - 12 + 8.5 - 9) / 2 = +0.5; vs baseline: (13.5 - 8 + 8.5 - 6) / 2 = +4.0
    assert "| 13.5, 8.5 | +0.5 | +4.0 | 0.30 → 1.00 | 0.70 → 0.00 |" in lines["feature weight 4"]
    assert "| 12.0, 9.0 |  | +3.5 |" in lines[bench.SHIPPED]
    assert "teacher 32.4 AP" in text and "seeds 0, 1" in text
    bench.plot_kept(data, tmp_path / "kept.png", window=3)
    assert (tmp_path / "kept.png").stat().st_size > 5000
