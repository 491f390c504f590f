"""Recipe inheritance: ``_base_`` files merged under a recipe (deep merge, later base wins, the
recipe on top, ``_delete_`` to replace a section), and the errors for cycles, missing bases and
unknown keys (naming the file that wrote them)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kdzoo.recipe import RecipeError, load_recipe, resolve_bases, save_recipe

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, data: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.fixture
def bases(tmp_path: Path) -> Path:
    write(tmp_path / "_base_" / "data.yaml", {"data": {"root": "data/x", "input_size": [320, 320], "flip": 0.5},
                                             "batch_size": 4, "output_dir": "runs/base"})
    write(tmp_path / "_base_" / "sched.yaml", {"schedule": {"iters": 100, "lr": 0.01, "steps": [60, 80]},
                                              "batch_size": 8})
    return tmp_path


def test_bases_merge_in_order_and_the_recipe_wins(bases: Path) -> None:
    child = write(bases / "child.yaml", {
        "_base_": ["_base_/data.yaml", "_base_/sched.yaml"],
        "model": {"name": "gfl_r18", "kwargs": {"fpn_channels": 64}},
        "data": {"flip": 0.0},                       # one key of a section: the rest is kept
        "schedule": {"steps": [70]},                 # a list is replaced, not appended to
        "output_dir": "runs/child",
    })
    merged = resolve_bases(child)
    assert merged["data"] == {"root": "data/x", "input_size": [320, 320], "flip": 0.0}
    assert merged["schedule"] == {"iters": 100, "lr": 0.01, "steps": [70]}
    assert merged["batch_size"] == 8  # the later base wins over the earlier one
    assert merged["output_dir"] == "runs/child" and "_base_" not in merged
    r = load_recipe(child)
    assert (r.data.flip, r.schedule.steps, r.batch_size, r.model.kwargs) == (0.0, [70], 8, {"fpn_channels": 64})


def test_chained_bases_and_overrides_apply_last(bases: Path) -> None:
    parent = write(bases / "parent.yaml", {"_base_": "_base_/data.yaml", "model": {"name": "gfl_r18"},
                                           "schedule": {"iters": 10}})
    child = write(bases / "sub" / "child.yaml", {"_base_": "../parent.yaml", "schedule": {"lr": 0.02}})
    r = load_recipe(child, ["schedule.iters=7"])
    assert (r.schedule.iters, r.schedule.lr, r.data.root, r.model.name) == (7, 0.02, "data/x", "gfl_r18")


def test_delete_replaces_a_section_instead_of_merging(bases: Path) -> None:
    parent = write(bases / "parent.yaml", {"_base_": "_base_/data.yaml", "model": {"name": "gfl_r18", "kwargs": {
        "fpn_channels": 64, "stacked_convs": 2}}, "schedule": {"iters": 10}})
    child = write(bases / "child.yaml", {"_base_": parent.name, "model": {"kwargs": {"_delete_": True, "fpn_channels": 32}}})
    assert load_recipe(child).model.kwargs == {"fpn_channels": 32}
    merged = resolve_bases(child)
    assert "_delete_" not in merged["model"]["kwargs"]


def test_resolved_recipe_is_saved_whole(bases: Path, tmp_path: Path) -> None:
    child = write(bases / "child.yaml", {"_base_": ["_base_/data.yaml", "_base_/sched.yaml"], "model": {"name": "gfl_r18"}})
    saved = yaml.safe_load(save_recipe(load_recipe(child), tmp_path / "run" / "recipe.yaml").read_text())
    assert "_base_" not in saved and saved["data"]["root"] == "data/x" and saved["schedule"]["steps"] == [60, 80]
    assert load_recipe(tmp_path / "run" / "recipe.yaml").to_dict() == load_recipe(child).to_dict()


def test_cycle_is_an_error_naming_the_chain(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", {"_base_": "b.yaml", "model": {"name": "gfl_r18"}})
    write(tmp_path / "b.yaml", {"_base_": "c.yaml"})
    write(tmp_path / "c.yaml", {"_base_": "a.yaml"})
    with pytest.raises(RecipeError, match=r"_base_ cycle: .*a\.yaml -> .*b\.yaml -> .*c\.yaml -> .*a\.yaml"):
        load_recipe(tmp_path / "a.yaml")
    write(tmp_path / "self.yaml", {"_base_": "self.yaml"})
    with pytest.raises(RecipeError, match="_base_ cycle"):
        resolve_bases(tmp_path / "self.yaml")


def test_missing_base_names_the_file_and_where_it_was_looked_for(tmp_path: Path) -> None:
    child = write(tmp_path / "child.yaml", {"_base_": "../nowhere/base.yaml", "model": {"name": "gfl_r18"}})
    with pytest.raises(RecipeError, match=r"child\.yaml: _base_ '\.\./nowhere/base\.yaml' does not exist \(looked for .*nowhere/base\.yaml\)"):
        load_recipe(child)
    bad = write(tmp_path / "bad.yaml", {"_base_": {"file": "x.yaml"}})
    with pytest.raises(RecipeError, match=r"bad\.yaml: _base_ must be a path or a list of paths"):
        load_recipe(bad)


def test_unknown_key_names_the_file_that_wrote_it(bases: Path) -> None:
    child = write(bases / "child.yaml", {"_base_": "_base_/data.yaml", "model": {"name": "gfl_r18"},
                                         "schedule": {"itres": 10}})
    with pytest.raises(RecipeError, match=r"child\.yaml: unknown recipe key 'schedule\.itres'\. Did you mean 'iters'\?"):
        load_recipe(child)
    write(bases / "_base_" / "data.yaml", {"data": {"root": "x", "flipp": 0.5}})
    child = write(bases / "child.yaml", {"_base_": "_base_/data.yaml", "model": {"name": "gfl_r18"}})
    with pytest.raises(RecipeError, match=r"_base_/data\.yaml: unknown recipe key 'data\.flipp'\. Did you mean 'flip'\?"):
        load_recipe(child)
    bad_type = write(bases / "t.yaml", {"_base_": "_base_/sched.yaml", "model": {"name": "gfl_r18"},
                                        "data": {"root": "x"}, "output_dir": "o", "schedule": {"lr": "fast"}})
    with pytest.raises(RecipeError, match=r"schedule\.lr: expected float, got str 'fast'"):
        load_recipe(bad_type)


def test_shipped_recipes_state_only_their_differences() -> None:
    """The COCO CrossKD recipe is its student's recipe plus a teacher, a distill section and its own
    output directory; the shapes distillation recipes likewise (they inherit the baseline's budget)."""
    coco = REPO / "recipes" / "coco"
    kd, student = (resolve_bases(coco / f) for f in ("crosskd_gfl_r101_to_r50_1x.yaml", "gfl_r50_1x.yaml"))
    differs = {k for k in {*kd, *student} if kd.get(k) != student.get(k)}
    assert differs == {"teacher", "distill", "output_dir", "checkpoint_interval"}
    assert yaml.safe_load((coco / "crosskd_gfl_r101_to_r50_1x.yaml").read_text())["_base_"] == "gfl_r50_1x.yaml"
    r101 = load_recipe(coco / "gfl_r101_1x.yaml")
    assert (r101.model.name, r101.schedule.steps, r101.data.input_size) == ("gfl_r101", [8, 11], [1333, 800])
    two_x = load_recipe(coco / "crosskd_retinanet_r101_to_r50_2x.yaml").schedule
    assert (two_x.epochs, two_x.steps, two_x.warmup) == (24, [16, 22], "linear")
    fcos = load_recipe(coco / "crosskd_fcos_r101_to_r50_2x_ms.yaml").schedule
    assert (fcos.epochs, fcos.warmup, fcos.bias_lr_mult, fcos.grad_clip) == (24, "constant", 2.0, 35.0)
