"""A model's class i must be the dataset's class i: a teacher or an evaluated model whose recorded
class names are the dataset's in another order is refused, naming the first class that differs."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from kdzoo.cli import main as kdzoo_main
from kdzoo.data.classes import check_class_order
from kdzoo.data.shapes import CLASS_NAMES, generate_shapes


def test_check_class_order_rules(caplog: pytest.LogCaptureFixture) -> None:
    check_class_order(["a", "b"], ["a", "b"], "m", "d")
    check_class_order((), ["b", "a"], "m", "d")  # nothing recorded: nothing to compare
    check_class_order(["a", "b", "c"], ["b", "a"], "m", "d")  # the count is checked elsewhere
    with pytest.raises(ValueError, match=r"m has the classes of d in another order: its class 0 is 'a', the "
                                         r"dataset's is 'b'"):
        check_class_order(["a", "b", "c"], ["b", "a", "c"], "m", "d")
    with pytest.raises(ValueError, match="its class 0 is 'cat', the dataset's is 'dog '"):
        check_class_order(["cat", "Dog"], ["dog ", "cat"], "m", "d")  # case and spaces do not hide a swap
    with caplog.at_level(logging.WARNING, logger="kdzoo.data"):
        check_class_order(["cat", "dog"], ["person", "car"], "m", "d")
    assert "m was trained on classes ['cat', 'dog'] but d has ['person', 'car']" in caplog.text


@pytest.fixture(scope="module")
def alpha(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shapes val images whose categories are listed (and numbered) alphabetically: the same classes
    and boxes as the embedded shapes models', in another index order."""
    root = generate_shapes(tmp_path_factory.mktemp("alpha") / "shapes", num_train=2, num_val=2, image_size=96,
                           seed=3, workers=1)
    for split in ("train", "val"):
        path = root / "annotations" / f"instances_{split}.json"
        data = json.loads(path.read_text())
        new_id = {c["name"]: i for i, c in enumerate(sorted(data["categories"], key=lambda c: c["name"]), 1)}
        old_name = {c["id"]: c["name"] for c in data["categories"]}
        for ann in data["annotations"]:
            ann["category_id"] = new_id[old_name[ann["category_id"]]]
        data["categories"] = [{"id": i, "name": n} for n, i in new_id.items()]
        path.write_text(json.dumps(data))
    return root


def test_eval_refuses_a_model_with_the_classes_in_another_order(alpha: Path, capsys: pytest.CaptureFixture) -> None:
    assert list(CLASS_NAMES)[:2] == ["circle", "ellipse"] and sorted(CLASS_NAMES)[:2] == ["circle", "cross"]
    code = kdzoo_main(["eval", "--model", "gfl_mnv3s.shapes", "--data", str(alpha), "--ann",
                       "annotations/instances_val.json", "--images-dir", "val", "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "model 'gfl_mnv3s.shapes' has the classes of" in err
    assert "its class 1 is 'ellipse', the dataset's is 'cross'" in err


def test_a_teacher_with_the_classes_in_another_order_is_refused(alpha: Path, tmp_path: Path) -> None:
    from kdzoo.engine.build import build_teacher
    from kdzoo.recipe import RecipeError, recipe_from_dict

    recipe = recipe_from_dict({"model": {"name": "gfl_mnv3s"}, "data": {"root": str(alpha)},
                               "output_dir": str(tmp_path / "o"), "schedule": {"iters": 1},
                               "teacher": {"name": "gfl_r10t.shapes", "pretrained": True}, "distill": {"method": "crosskd"}})
    with pytest.raises(RecipeError, match=r"the teacher \(gfl_r10t.shapes\) has the classes of the training data "
                                          rf"\({alpha}\) in another order: its class 1 is 'ellipse'"):
        build_teacher(recipe, 8, sorted(CLASS_NAMES))
    assert build_teacher(recipe, 8, list(CLASS_NAMES)).num_classes == 8


def test_eval_outputs_never_overwrite_an_input(alpha: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ann = alpha / "annotations" / "instances_val.json"
    kept = ann.read_bytes()
    args = ["eval", "--model", "gfl_mnv3s.shapes", "--data", str(alpha), "--ann", "annotations/instances_val.json",
            "--images-dir", "val", "--workers", "0"]
    with pytest.raises(SystemExit, match="2"):  # a usage error, before any model runs
        kdzoo_main([*args, "--out", str(ann)])
    assert f"--out '{ann}' is --ann '{ann}'; refusing to write over it" in capsys.readouterr().err
    same = str(tmp_path / "x.json")
    with pytest.raises(SystemExit, match="2"):
        kdzoo_main([*args, "--out", same, "--metrics-out", same])
    assert f"--metrics-out '{same}' is --out; refusing" in capsys.readouterr().err
    assert ann.read_bytes() == kept and not Path(same).exists()
