"""kdzoo.predict must never change the user's files, must report boxes in the original image's
pixels, must not attribute published claims to a run's own weights, and must write files the
user's umask allows others to read."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

import kdzoo
from kdzoo.data.shapes import _render_image
from kdzoo.predict import describe_model, load_model
from kdzoo.cli.predict import main as predict_main

REPO = Path(__file__).resolve().parents[1]
MODEL = "gfl_r10t.shapes"  # embedded, trained: stable boxes, fast on CPU
PUBLISHED = ("40.2", "MMDetection model zoo", "1333")


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test here runs torch on one thread."""


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root``: content and mtime (ns)."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    d = tmp_path / "d"
    d.mkdir()
    for i, name in enumerate(("a.png", "b.jpg")):
        arr, _ = _render_image(i, "val", i, 160)
        Image.fromarray(arr).save(d / name)
    return d


def run(args: list[str], capsys: pytest.CaptureFixture, thr: float = 0.3) -> tuple[int, str]:
    rc = predict_main(args + ["--model", MODEL, "--score-thr", str(thr)])
    return rc, capsys.readouterr().err


# ----------------------------------------------------------------------------- never write over an input
def test_out_equal_to_input_folder_is_refused(photos: Path, capsys: pytest.CaptureFixture) -> None:
    before = snapshot(photos)
    rc, err = run([str(photos), "--out", str(photos)], capsys)
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(photos) in lines[0] and "--out" in lines[0], err
    assert snapshot(photos) == before, "the user's folder is unchanged"


def test_out_given_relative_or_through_a_link_is_refused(photos: Path, capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    link = photos.parent / "link"
    link.symlink_to(photos, target_is_directory=True)
    before = snapshot(photos)
    monkeypatch.chdir(photos.parent)
    rc, err = run(["d/a.png", "--out", "link"], capsys)
    assert rc == 2 and "error:" in err
    rc, err = run([str(photos / "b.jpg"), "--out", "./d/"], capsys)
    assert rc == 2 and "error:" in err
    assert snapshot(photos) == before


def test_rerun_that_picks_up_earlier_outputs_as_inputs_is_refused(photos: Path, capsys: pytest.CaptureFixture) -> None:
    out = photos / "predictions"
    rc, err = run([str(photos), "--out", str(out)], capsys)
    assert rc == 0, err
    before = snapshot(photos)
    rc, err = run([str(photos / "**" / "*.png"), str(photos / "**" / "*.jpg"), "--out", str(out)], capsys)
    assert rc == 2 and str(out) in err, err
    assert snapshot(photos) == before, "neither the originals nor the earlier annotated copies changed"


def test_rerun_into_its_own_output_folder_overwrites_its_own_files(photos: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "predictions"
    before = snapshot(photos)
    assert run([str(photos), "--out", str(out)], capsys)[0] == 0
    first = json.loads((out / "results.json").read_text())
    rc, err = run([str(photos), "--out", str(out)], capsys, thr=0.5)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.jpg", "results.json"]
    assert json.loads((out / "results.json").read_text())["info"]["score_thr"] == 0.5 != first["info"]["score_thr"]
    assert snapshot(photos) == before


def test_outputs_of_every_earlier_run_stay_kdzoos(photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Run on a.png, then on b.jpg, then on a.png again, into one folder: the second run's results.json
    still owns a.png (the third run used to be refused as if a.png were the user's)."""
    out = tmp_path / "predictions"
    for image, owned in (("a.png", ["a.png"]), ("b.jpg", ["a.png", "b.jpg"]), ("a.png", ["a.png", "b.jpg"])):
        rc, err = run([str(photos / image), "--out", str(out)], capsys)
        assert rc == 0, err
        results = json.loads((out / "results.json").read_text())
        assert [m["annotated"] for m in results["images"]] == [image]  # the latest run's detections
        assert results["info"]["annotated_in_folder"] == owned


def test_files_kdzoo_did_not_write_are_never_overwritten(photos: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    shutil.copyfile(photos / "b.jpg", out / "a.png")  # the user's own file that has an output's name
    before = snapshot(out)
    rc, err = run([str(photos / "a.png"), "--out", str(out)], capsys)
    assert rc == 2 and "a.png" in err and "error:" in err, err
    assert snapshot(out) == before
    # a results.json that kdzoo.predict did not write is the user's too
    (out / "a.png").unlink()
    (out / "results.json").write_text('{"my": "data"}\n')
    before = snapshot(out)
    rc, err = run([str(photos / "a.png"), "--out", str(out)], capsys)
    assert rc == 2 and "results.json" in err, err
    assert snapshot(out) == before


def test_help_documents_the_output_rules(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        predict_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "never an input's folder" in text and "overwritten only if an earlier kdzoo predict run wrote it" in text


# ----------------------------------------------------------------------------- original pixels
def test_boxes_of_a_large_image_are_in_its_own_pixels(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    arr, _ = _render_image(0, "val", 3, 320)
    (tmp_path / "small").mkdir()
    (tmp_path / "large").mkdir()
    Image.fromarray(arr).save(tmp_path / "small" / "x.png")
    Image.fromarray(arr).resize((3200, 3200), Image.NEAREST).save(tmp_path / "large" / "x.png")
    results = {}
    for size in ("small", "large"):
        rc, err = run([str(tmp_path / size / "x.png"), "--out", str(tmp_path / f"out_{size}")], capsys)
        assert rc == 0, err
        results[size] = json.loads((tmp_path / f"out_{size}" / "results.json").read_text())
    small, large = results["small"], results["large"]
    assert (large["images"][0]["width"], large["images"][0]["height"]) == (3200, 3200)
    assert Path(large["images"][0]["file_name"]).name == "x.png"
    assert len(small["annotations"]) == len(large["annotations"]) > 0
    for s, big in zip(sorted(small["annotations"], key=lambda a: -a["score"]),
                      sorted(large["annotations"], key=lambda a: -a["score"])):
        assert s["category_id"] == big["category_id"]
        np.testing.assert_allclose(np.array(big["bbox"]), 10 * np.array(s["bbox"]), atol=3200 * 0.005)
        np.testing.assert_allclose(big["area"], 100 * s["area"], rtol=0.05)
    # the drawn copy may be smaller; results.json says so
    meta = large["images"][0]
    drawn = Image.open(tmp_path / "out_large" / meta["annotated"])
    assert drawn.size == (2048, 2048)
    assert (meta["annotated_width"], meta["annotated_height"]) == (2048, 2048)
    assert small["images"][0]["annotated_width"] == 320


# ----------------------------------------------------------------------------- published claims
def _published_model() -> torch.nn.Module:
    return kdzoo.create_detector("gfl_r50", num_classes=3, input_size=(320, 320))


def _demo_texts(run_dir: Path, image: Path) -> str:
    spec = importlib.util.spec_from_file_location("kdzoo_demo_app", REPO / "demo" / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    gallery, summary, rows, status = app.Demo(app.ModelPool("cpu"))(str(image), [str(run_dir)], "", 0.3)
    assert len(gallery) == 1, status
    return json.dumps(summary) + "\n" + status + "\n" + " ".join(c for _, c in gallery)


@pytest.fixture(scope="module")
def scratch_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return _published_model().eval()


def test_training_run_does_not_claim_the_published_ap(scratch_model: torch.nn.Module, tmp_path: Path) -> None:
    from kdzoo.engine.hooks import FinalWeights

    assert scratch_model.pretrained_cfg.box_ap == 40.2  # the default tag's claim, inherited by the build
    run_dir = tmp_path / "run"
    FinalWeights(scratch_model.state_dict, scratch_model, run_dir).after_train()  # what kdzoo.train writes at the end
    assert sorted(p.name for p in run_dir.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = load_model(str(run_dir))
    cfg = loaded.model.pretrained_cfg
    assert cfg.box_ap is None and cfg.ap_dataset is None and cfg.source is None and cfg.paper is None
    assert tuple(cfg.input_size) == (320, 320)
    text = describe_model(loaded)
    assert "320x320" in text and "3 classes" in text
    image = tmp_path / "x.png"
    Image.fromarray(_render_image(0, "val", 0, 96)[0]).save(image)
    text += "\n" + _demo_texts(run_dir, image)
    for claim in PUBLISHED:
        assert claim not in text, f"{claim!r} in {text!r}"


def test_saved_run_card_and_config_carry_its_own_input_size(scratch_model: torch.nn.Module, tmp_path: Path) -> None:
    out = kdzoo.save_pretrained(scratch_model, tmp_path / "saved")
    text = (out / "config.json").read_text() + (out / "README.md").read_text()
    text += describe_model(load_model(str(out)))
    for claim in PUBLISHED:
        assert claim not in text, f"{claim!r} in the saved directory"
    assert json.loads((out / "config.json").read_text())["pretrained_cfg"]["input_size"] == [320, 320]


def test_converted_published_weights_keep_their_claims(tmp_path: Path) -> None:
    model = kdzoo.create_detector("gfl_r50").eval()  # stands in for the converted MMDetection file
    out = kdzoo.save_pretrained(model, tmp_path / "converted", keep_published=True,
                                notes="Converted from the MMDetection checkpoint x.pth with kdzoo.convert.")
    loaded = load_model(str(out))
    assert loaded.model.pretrained_cfg.box_ap == 40.2
    text = describe_model(loaded) + (out / "README.md").read_text()
    for claim in PUBLISHED:
        assert claim in text, f"{claim!r} missing"
    # a directory converted before config.json recorded "published_weights" keeps them too
    config = json.loads((out / "config.json").read_text())
    config.pop("published_weights", None)
    (out / "config.json").write_text(json.dumps(config))
    assert kdzoo.create_detector(f"local-dir:{out}").pretrained_cfg.box_ap == 40.2


def test_training_run_from_a_drive_only_tag_does_not_claim_its_ap(tmp_path: Path) -> None:
    """The CrossKD students' configs name no file, Hub repo or URL (only a Drive id): a run's
    config.json copied from one is still recognised as a run's."""
    from kdzoo.engine.hooks import FinalWeights

    model = kdzoo.create_detector("gfl_r50_crosskd", num_classes=3, input_size=(320, 320))
    assert model.pretrained_cfg.box_ap == 43.7 and model.pretrained_cfg.teacher
    FinalWeights(model.state_dict, model, tmp_path).after_train()
    cfg = kdzoo.create_detector(f"local-dir:{tmp_path}").pretrained_cfg
    assert (cfg.box_ap, cfg.source, cfg.teacher, cfg.notes, cfg.input_size) == (None, None, None, None, (320, 320))


# ----------------------------------------------------------------------------- file modes
@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_predict_outputs_follow_the_umask(photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                          umask_022: None) -> None:
    out = tmp_path / "out"
    assert run([str(photos), "--out", str(out)], capsys)[0] == 0
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes == {"a.png": 0o644, "b.jpg": 0o644, "results.json": 0o644}


def test_saved_model_files_follow_the_umask(tmp_path: Path, umask_022: None) -> None:
    model = kdzoo.create_detector("gfl_r18", num_classes=2, fpn_channels=16, stacked_convs=1, input_size=(64, 64))
    out = kdzoo.save_pretrained(model, tmp_path / "m")
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes == {"config.json": 0o644, "model.safetensors": 0o644, "README.md": 0o644}
