"""Every bad input a user can hit on day one, as one table: each case must fail with a message that
names the input and what was expected, and must leave everything on disk exactly as it was."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import kdzoo
from kdzoo.data.shapes import ensure_shapes, generate_shapes
from kdzoo.checkpoint import CHECKPOINT_FILE
from kdzoo.engine import train
from kdzoo.recipe import recipe_from_dict

class Payload:
    """An object a weights-only loader must refuse to rebuild."""


TINY_KWARGS = {"fpn_channels": 16, "stacked_convs": 1, "frozen_stages": -1, "norm_eval": False}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny shapes dataset, a finished two-iteration run, a folder of the user's images, and bad files."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("world")
    data = generate_shapes(root / "shapes", num_train=6, num_val=3, image_size=96, workers=1)
    run = root / "run"
    train(recipe_from_dict(_tiny(data, run)))
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    (root / "truncated.pt").write_bytes((run / CHECKPOINT_FILE).read_bytes()[:2000])
    bad = root / "bad_images"
    bad.mkdir()
    for sub in ("annotations", "train", "val"):
        src = data / sub
        (bad / sub).mkdir()
        for f in src.iterdir():
            (bad / sub / f.name).write_bytes(f.read_bytes())
    (bad / "train" / "000002.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (bad / "shapes_meta.json").write_bytes((data / "shapes_meta.json").read_bytes())
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Payload()}, root / "evil.pth")
    torch.save({"state_dict": {"bbox_head.retina_cls.weight": torch.zeros(9, 16, 3, 3)}}, root / "not_gfl.pth")
    return {"root": root, "data": data, "run": run, "photos": photos, "bad": bad}


def _tiny(data: Path, out: Path, **top) -> dict:
    recipe = {"model": {"name": "gfl_r18", "kwargs": dict(TINY_KWARGS)},
              "data": {"root": str(data), "input_size": [96, 96]},
              "schedule": {"iters": 2, "optimizer": "sgd", "lr": 0.01, "warmup_iters": 1, "steps": []},
              "batch_size": 4, "workers": 0, "output_dir": str(out), "checkpoint_interval": 2, "log_interval": 1}
    for key, value in top.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe


def _state(path: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mode of every file under ``path``: what 'nothing on disk changed' means."""
    files = [p for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() else [path]
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode) for p in files}


def _cli(main: Callable[[list[str]], int | None], argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run a CLI's main; it must fail (non-zero return or SystemExit) and say why on stderr."""
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    assert rc not in (0, None), f"{argv} succeeded; stdout: {out.out[-300:]}"
    return out.err + (rc if isinstance(rc, str) else "")


@dataclass
class Case:
    name: str
    watched: Callable[[dict[str, Path]], list[Path]]  # what must not change
    run: Callable[[dict[str, Path], Path, pytest.CaptureFixture[str]], str]  # the error message
    expect: str  # regex over the message: the input and what was expected


def _raises(fn: Callable[[], object], exc: type[BaseException] | tuple = Exception) -> str:
    with pytest.raises(exc) as info:
        fn()
    return str(info.value)


def _predict_into_inputs(w, tmp, capsys):
    from kdzoo.cli.predict import main

    return _cli(main, [str(w["photos"]), "--model", "gfl_r10t.shapes", "--out", str(w["photos"])], capsys)


def _shapes_other_params(w, tmp, capsys):
    (w["data"] / "my_notes.txt").write_text("mine")
    return _raises(lambda: ensure_shapes(w["data"], num_train=7, num_val=3, image_size=96))


def _resume_changed_schedule(w, tmp, capsys):
    from kdzoo.cli.train import main

    recipe = tmp / "r.yaml"
    recipe.write_text(yaml.safe_dump(_tiny(w["data"], w["run"], schedule={"iters": 5})))
    return _cli(main, [str(recipe), "--resume"], capsys)


def _resume_truncated_checkpoint(w, tmp, capsys):
    from kdzoo.cli.train import main

    run = tmp / "run"
    run.mkdir()
    (run / CHECKPOINT_FILE).write_bytes((w["root"] / "truncated.pt").read_bytes())
    recipe = tmp / "r.yaml"
    recipe.write_text(yaml.safe_dump(_tiny(w["data"], run)))
    return _cli(main, [str(recipe), "--resume"], capsys)


def _kwargs_typo(w, tmp, capsys):
    from kdzoo.cli.train import main

    recipe = tmp / "r.yaml"
    recipe.write_text(yaml.safe_dump(_tiny(w["data"], tmp / "out", model={"kwargs": {"fpn_chanels": 16}})))
    return _cli(main, [str(recipe)], capsys)


def _unknown_recipe_key(w, tmp, capsys):
    from kdzoo.cli.train import main

    recipe = tmp / "r.yaml"
    recipe.write_text(yaml.safe_dump({**_tiny(w["data"], tmp / "out"), "schedul": {"iters": 3}}))
    return _cli(main, [str(recipe)], capsys)


def _undecodable_image(w, tmp, capsys):
    from kdzoo.cli.train import main

    recipe = tmp / "r.yaml"
    recipe.write_text(yaml.safe_dump(_tiny(w["bad"], tmp / "out")))
    return _cli(main, [str(recipe)], capsys)


def _nan_box(w, tmp, capsys):
    model = kdzoo.create_detector("gfl_r18", num_classes=3, fpn_channels=16, input_size=(64, 64)).train()
    targets = [{"boxes": torch.tensor([[1.0, 1.0, 20.0, 20.0]]), "labels": torch.tensor([0])},
               {"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0], [3.0, float("nan"), 9.0, 12.0]]), "labels": torch.tensor([1, 2])}]
    return _raises(lambda: model([torch.rand(3, 64, 64), torch.rand(3, 64, 64)], targets), ValueError)


def _unknown_model(w, tmp, capsys):
    return _raises(lambda: kdzoo.create_detector("gfl_r5O"), KeyError)


def _weights_without_source(w, tmp, capsys):
    return _raises(lambda: kdzoo.create_detector("gfl_r18", pretrained=True), RuntimeError)


def _offline_url_weights(w, tmp, capsys):
    import os

    hub_dir = torch.hub.get_dir()
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        torch.hub.set_dir(str(tmp / "hub"))
        return _raises(lambda: kdzoo.create_detector("gfl_r50.mmdet_coco", pretrained=True))
    finally:
        del os.environ["HF_HUB_OFFLINE"]
        torch.hub.set_dir(hub_dir)


def _pickled_payload(w, tmp, capsys):
    path = w["root"] / "evil.pth"
    msg = _raises(lambda: kdzoo.create_detector("gfl_r18", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))))
    assert "weights_only=False" not in msg
    return msg


def _convert_wrong_architecture(w, tmp, capsys):
    from kdzoo.cli.convert import main

    path = w["root"] / "not_gfl.pth"
    return _cli(main, ["mmdet", str(path), "--arch", "gfl_r18", "--out", str(tmp / "converted")], capsys)


def _image_not_a_tensor(w, tmp, capsys):
    model = kdzoo.create_detector("gfl_r18", num_classes=3, fpn_channels=16, input_size=(64, 64)).eval()
    return _raises(lambda: model(torch.rand(2, 3, 64, 64)), TypeError)


CASES = [
    Case("predict --out is the input folder", lambda w: [w["photos"]], _predict_into_inputs,
         r"--out .*photos"),
    Case("shapes folder with other parameters", lambda w: [w["data"]], _shapes_other_params,
         r"shapes.*num_train: 6 there, 7 requested"),
    Case("--resume with a changed schedule", lambda w: [w["run"]], _resume_changed_schedule,
         r"schedule\.iters: 2 -> 5"),
    Case("--resume from a truncated checkpoint", lambda w: [w["root"] / "truncated.pt"], _resume_truncated_checkpoint,
         r"checkpoint\.pt.* truncated or corrupt"),
    Case("typo in model.kwargs", lambda w: [w["data"]], _kwargs_typo,
         r"model\.kwargs\.fpn_chanels.*fpn_channels"),
    Case("unknown recipe key", lambda w: [w["data"]], _unknown_recipe_key, r"schedul.*schedule"),
    Case("undecodable training image", lambda w: [w["bad"]], _undecodable_image, r"train/000002\.png"),
    Case("NaN box through the Python API", lambda w: [], _nan_box, r"targets\[1\]\['boxes'\]\[1\].*non-finite"),
    Case("unknown model name", lambda w: [], _unknown_model, r"gfl_r5O.*gfl_r50"),
    Case("pretrained=True without weights", lambda w: [], _weights_without_source,
         r"gfl_r18.*pretrained_cfg_overlay=dict\(file="),
    Case("URL weights offline", lambda w: [], _offline_url_weights,
         r"gfl_r50\.mmdet_coco.*https://download\.openmmlab\.com/.*pretrained_cfg_overlay=dict\(file="),
    Case("pickle with a foreign object", lambda w: [w["root"] / "evil.pth"], _pickled_payload,
         r"refusing to load .*evil\.pth.*objects other than tensors \(test_bad_inputs\.Payload\)"),
    Case("MMDetection checkpoint of another detector", lambda w: [w["root"] / "not_gfl.pth"], _convert_wrong_architecture,
         r"not fit gfl_r18.*detector type differs"),
    Case("a batch tensor instead of a list of images", lambda w: [], _image_not_a_tensor, r"list of \[3, H, W\] tensors"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    watched = case.watched(world)
    before = {str(p): _state(p) for p in watched}
    message = case.run(world, tmp_path, capsys)
    assert re.search(case.expect, message, re.S), f"{case.name}: message {message!r} does not match {case.expect!r}"
    assert "Traceback" not in message
    after = {str(p): _state(p) for p in watched}
    if case.name == "shapes folder with other parameters":  # the user's file added by the case itself stays
        for p in watched:
            after[str(p)].pop(str(p / "my_notes.txt"), None)
    assert after == before, f"{case.name} changed files on disk"
