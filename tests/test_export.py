"""Export (ONNX, torch.export, OpenVINO) and the exported files' runtimes: the same detections as the
eager model for every family, dynamic batch, empty results, the CLIs and their errors.

The default run exports two models (tracing dominates the cost): the shipped ``gfl_mnv3s.shapes``
student through the CLI (trained weights, real photos, batch 1 and 3, predict and demo loaders,
OpenVINO from the same ONNX file) and a tiny Faster R-CNN; plus a torch.export round trip of a tiny
RetinaNet. The other families, ``gfl_r10t.shapes``, the full OpenVINO export and the fixed-size
canvas are ``slow``. Tiny models use timm's ``test_resnet`` backbone and a 16-channel FPN, with the
predictors initialised wide (std 0.1 rather than MMDetection's 0.01) so that scores and boxes vary
over locations and parity is not trivially true.
"""
import contextlib
import dataclasses
import importlib
import importlib.util
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

import kdzoo  # noqa: E402
from kdzoo import atss, fcos, gfl, retinanet  # noqa: E402
from kdzoo.export_path import ExportableDetector  # noqa: E402
from kdzoo.faster_rcnn import build_faster_rcnn  # noqa: E402

# `kdzoo.export` is the function (kdzoo/__init__.py); the module is reached through importlib.
kexport = importlib.import_module("kdzoo.export")
predict = importlib.import_module("kdzoo.predict")
from kdzoo.cli.export import main as export_main  # noqa: E402
from kdzoo.cli.predict import main as predict_cli  # noqa: E402

STUDENT = "gfl_mnv3s.shapes"
THR = 0.2  # the student's export threshold (see the `student` fixture)
TINY = dict(num_classes=3, fpn_channels=16, input_size=(128, 128), frozen_stages=-1, norm_eval=False)
BOX_TOL, SCORE_TOL = 1e-3, 1e-4


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def tiny(family: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if family == "faster_rcnn":
        model = build_faster_rcnn(backbone="test_resnet", fc_channels=64, nms_pre=300, rpn_max_per_img=300, **TINY)
        for m in (model.rpn_head.rpn_cls, model.rpn_head.rpn_reg):
            nn.init.normal_(m.weight, std=0.1)
        nn.init.normal_(model.roi_head.bbox_head.fc_cls.weight, std=0.3)
        nn.init.normal_(model.roi_head.bbox_head.fc_reg.weight, std=0.05)
        return model.eval()
    module = {"gfl": gfl, "atss": atss, "retinanet": retinanet, "fcos": fcos}[family]
    model = module._create(f"{family}_r18", "test_resnet", False, stacked_convs=1, **TINY)
    head = model.bbox_head
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.1)
    # Classification prior 0.1 rather than 0.01: many candidates above the 0.05 threshold, so NMS and
    # the max_per_img cut are exercised.
    cls = next(getattr(head, n) for n in ("gfl_cls", "atss_cls", "retina_cls", "conv_cls") if hasattr(head, n))
    nn.init.constant_(cls.bias, -2.2)
    return model.eval()


def scenes(n: int = 3, seed: int = 0) -> list[torch.Tensor]:
    """Landscape, portrait and small square crops of synthetic scenes (different paddings in one batch)."""
    base = kexport.sample_images(seed=seed)
    crops = [base[0], base[1], F.interpolate(base[0][None], size=(150, 150), mode="bilinear")[0]]
    return crops[:n]


def photos() -> list[torch.Tensor]:
    skdata = pytest.importorskip("skimage.data")
    return [torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float() / 255
            for a in (skdata.astronaut(), skdata.coffee())]


def assert_same(ref: list[dict], got: list[dict], box_tol: float = BOX_TOL, score_tol: float = SCORE_TOL) -> int:
    """Same detections in the same order; returns how many (callers check it is not 0)."""
    assert len(ref) == len(got)
    total = 0
    for r, g in zip(ref, got):
        assert set(g) == {"boxes", "scores", "labels"}
        assert g["boxes"].dtype == torch.float32 and g["labels"].dtype == torch.int64
        assert len(r["scores"]) == len(g["scores"])
        torch.testing.assert_close(g["boxes"], r["boxes"].float(), atol=box_tol, rtol=0)
        torch.testing.assert_close(g["scores"], r["scores"].float(), atol=score_tol, rtol=0)
        assert torch.equal(g["labels"], r["labels"].long())
        total += len(r["scores"])
    return total


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """``python -m kdzoo.export gfl_mnv3s.shapes --format onnx --dynamic-batch --score-thr 0.2`` once,
    with its parity check. At 0.2 a uniform grey image has no detection (its best scores 0.1) while
    the photos and scenes have some; ``model`` is the eager student with the same threshold."""
    out = tmp_path_factory.mktemp("student")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = export_main([STUDENT, "--format", "onnx", "--out", str(out), "--dynamic-batch", "--score-thr", str(THR)])
    model = kdzoo.create_detector(STUDENT, pretrained=True).eval()
    model.bbox_head.test_cfg = dataclasses.replace(model.bbox_head.test_cfg, score_thr=THR)
    return {"code": code, "out": out, "stdout": stdout.getvalue(), "model": model}


# ------------------------------------------------------------------------------ the trained student
def test_cli_export_runs_the_parity_check(student):
    assert student["code"] == 0
    assert "parity (onnxruntime):" in student["stdout"] and "detections match" in student["stdout"]
    assert (student["out"] / "model.onnx").is_file()
    side = json.loads((student["out"] / kexport.SIDE_FILE).read_text())
    assert side["parity"]["ok"] and sum(c[0] for c in side["parity"]["counts"]) > 0
    assert side["files"] == {"model.onnx": "onnx"}


def test_trained_student_on_real_images_batch_1_and_3(student):
    model, runner = student["model"], kdzoo.load_exported(student["out"] / "model.onnx")
    assert runner.backend == "onnxruntime" and runner.dynamic_batch
    imgs = photos() + scenes(2, seed=1)
    with torch.no_grad():
        ref = [model([img])[0] for img in imgs]
        ref3 = model(imgs[1:4])  # eager pads a batch to its largest image, and so does the runner
    assert assert_same(ref, [runner([img])[0] for img in imgs]) > 0
    assert assert_same(ref3, runner(imgs[1:4])) > 0
    prepared = kexport.prepare_batch(imgs[1:4], runner.resize)
    boxes, scores, labels, num = runner.runner(prepared.images, prepared.image_sizes)
    assert boxes.shape == (3, 100, 4) and scores.shape == labels.shape == (3, 100) and num.shape == (3,)


def test_image_with_no_detections_gives_zero_count_and_padding(student):
    model, runner = student["model"], kdzoo.load_exported(student["out"])
    blank = [torch.full((3, 96, 128), 0.5)]
    with torch.no_grad():
        assert len(model(blank)[0]["scores"]) == 0
    prepared = kexport.prepare_batch(blank, runner.resize)
    boxes, scores, labels, num = runner.runner(prepared.images, prepared.image_sizes)
    assert num.tolist() == [0]
    assert not boxes.any() and not scores.any() and (labels == -1).all() and boxes.shape == (1, 100, 4)
    (det,) = runner(blank)
    assert det["boxes"].shape == (0, 4) and det["scores"].shape == (0,) and det["labels"].shape == (0,)


def test_onnx_metadata_records_the_contract(student):
    import onnx

    proto = onnx.load(str(student["out"] / "model.onnx"))
    props = {p.key: p.value for p in proto.metadata_props}
    meta = json.loads(props["kdzoo"])
    assert meta["opset"] == kexport.DEFAULT_OPSET
    assert any(o.domain in ("", "ai.onnx") and o.version == kexport.DEFAULT_OPSET for o in proto.opset_import)
    assert (meta["architecture"], meta["tag"], meta["format"]) == ("gfl_mnv3s", "shapes", "onnx")
    assert meta["classes"] == list(student["model"].pretrained_cfg.categories)
    assert meta["kdzoo_version"] == kdzoo.__version__
    inp = meta["input"]
    assert inp["channel_order"] == "RGB" and inp["value_range"] == [0.0, 1.0] and inp["layout"] == "NCHW"
    assert inp["normalization"].startswith("inside") and inp["resize"] == [320, 320] and inp["dynamic_batch"]
    assert meta["postprocess"]["score_thr"] == THR and meta["outputs"]["max_per_img"] == 100
    assert [i.name for i in proto.graph.input] == ["images", "image_sizes"]
    assert [o.name for o in proto.graph.output] == ["boxes", "scores", "labels", "num_dets"]


def test_predict_backend_and_demo_loader(student, tmp_path):
    """`kdzoo.predict --backend onnxruntime` with the exported file writes the eager results.json; the
    file also loads wherever a model name is accepted (the demo's ModelPool calls load_model)."""
    from PIL import Image

    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    for i, img in enumerate(kexport.sample_images(seed=2)):
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(img_dir / f"{i}.png")
    runs = {}
    for backend, model in (("torch", STUDENT), ("onnxruntime", str(student["out"] / "model.onnx"))):
        dest = tmp_path / backend
        assert predict_cli([str(img_dir), "--model", model, "--out", str(dest), "--backend", backend,
                             "--score-thr", str(THR)]) == 0
        runs[backend] = json.loads((dest / "results.json").read_text())["annotations"]
    assert len(runs["torch"]) > 0 and len(runs["torch"]) == len(runs["onnxruntime"])
    for a, b in zip(runs["torch"], runs["onnxruntime"]):
        assert a["category_id"] == b["category_id"] and abs(a["score"] - b["score"]) < 1e-4
        assert np.allclose(a["bbox"], b["bbox"], atol=0.011)  # results.json rounds to 0.01 px
    loaded = predict.load_model(str(student["out"]))
    assert loaded.note.startswith("exported") and loaded.categories == list(student["model"].pretrained_cfg.categories)
    dets, _ = predict.detect(loaded, [np.zeros((64, 64, 3), np.uint8)], 1.0)  # the demo's warm-up call
    assert dets[0]["boxes"].shape == (0, 4)
    # The demo's callback with the exported file as a model, next to the eager student.
    spec = importlib.util.spec_from_file_location("kdzoo_demo_app", Path(__file__).resolve().parents[1] / "demo" / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    exported_file = str(student["out"] / "model.onnx")
    gallery, summary, rows, status = app.Demo(app.ModelPool("cpu"))(str(img_dir / "0.png"), [STUDENT, exported_file],
                                                                      None, THR)
    assert len(gallery) == 2, status
    assert summary[0][1] == summary[1][1] > 0  # the same number of detections
    assert [r[1:] for r in rows if r[0] == STUDENT] == [r[1:] for r in rows if r[0] == exported_file]


def test_openvino_runs_the_onnx_file_and_its_ir(student, tmp_path):
    ov = pytest.importorskip("openvino")
    model = student["model"]
    files = kexport.onnx_to_openvino(student["out"] / "model.onnx", tmp_path / "model.xml")
    assert [f.name for f in files] == ["model.xml", "model.bin"] and all(f.is_file() for f in files)
    meta = json.loads(kexport.ov_text(ov.Core().read_model(str(files[0])).get_rt_info(["kdzoo"])))
    assert meta["format"] == "openvino" and meta["architecture"] == "gfl_mnv3s"
    imgs = scenes(2, seed=2)
    with torch.no_grad():
        ref = [model([img])[0] for img in imgs]
    for spec, backend in ((files[0], None), (student["out"] / "model.onnx", "openvino")):
        runner = kdzoo.load_exported(spec, backend)
        assert runner.backend == "openvino"
        assert assert_same(ref, [runner([img])[0] for img in imgs]) > 0


def test_parity_failure_fails_the_export_loudly(student, tmp_path, monkeypatch, capsys):
    """An exported graph that does not compute what the eager model does: exit status 1, with the differences."""
    wrong = student["out"] / "model.onnx"  # the plain student's graph, passed off as the CrossKD student's
    monkeypatch.setattr(kexport, "_export_onnx", lambda graph, example, dynamic, path, *a: shutil.copy(wrong, path))
    assert export_main([f"{STUDENT}_crosskd", "--out", str(tmp_path), "--dynamic-batch"]) == 1
    err = capsys.readouterr().err
    assert "parity check failed" in err and "max box diff" in err and "max score diff" in err
    side = json.loads((tmp_path / kexport.SIDE_FILE).read_text())
    assert not side["parity"]["ok"]  # the files stay for inspection, marked as failed


# ------------------------------------------------------------------------------ the other families
def same_size_batch() -> list[torch.Tensor]:
    """Three 240 x 320 scenes: a batch without padding. (A random-init RPN scores the large padded area
    of a mixed batch with many exactly tied values, and which of them top-k keeps is up to its
    implementation; trained models are compared on mixed batches above.)"""
    a, b = kexport.sample_images(seed=0)[0], kexport.sample_images(seed=1)[0]
    return [a, b, a.flip(-1)]


def assert_onnxruntime_matches_eager(family: str, tmp_path) -> None:
    """``family``'s tiny model exported with a dynamic batch: the export's own parity check, then the same
    detections as eager one image at a time and for a batch of three."""
    model = tiny(family)
    result = kexport.export(model, tmp_path, "onnx", dynamic_batch=True)
    assert result.parity.ok, result.parity.message
    runner = kdzoo.load_exported(result.path)
    imgs = scenes()
    with torch.no_grad():
        ref, ref3 = [model([img])[0] for img in imgs], model(same_size_batch())
    assert assert_same(ref, [runner([img])[0] for img in imgs]) > 0
    assert assert_same(ref3, runner(same_size_batch())) > 0


def test_faster_rcnn_onnxruntime_matches_eager(tmp_path):
    assert_onnxruntime_matches_eager("faster_rcnn", tmp_path)


@pytest.mark.slow  # ~30 s: torch.export of a whole detector (make test-slow)
def test_torch_export_round_trip(tmp_path):
    model = tiny("retinanet")
    result = kexport.export(model, tmp_path / "retina.pt2", "torch", dynamic_batch=True)
    assert result.path == tmp_path / "retina.pt2" and result.parity.ok, result.parity.message
    program = torch.export.load(str(result.path))
    imgs = [F.interpolate(scenes(1)[0][None], size=(240, 400), mode="bilinear")[0]] * 2  # 77 x 128, padded to 160 x 160
    prepared = kexport.prepare_batch(imgs, model.transform.size, min_size=(160, 160))
    with torch.no_grad():
        outs = program.module()(prepared.images, prepared.image_sizes)
        ref = kexport._eager_on_canvas(model, imgs, kdzoo.load_exported(result.path))
    assert assert_same(ref, kexport.to_detections(outs, prepared)) > 0
    meta = kexport._read_metadata(result.path)
    assert meta["format"] == "torch" and meta["input"]["dynamic_batch"] and meta["input"]["min_size"] == [160, 160]
    runner = kdzoo.load_exported(result.path)
    assert runner.backend == "torch" and assert_same(ref, runner(imgs)) > 0


def test_exported_graph_equals_eager_without_export():
    """The export path in plain PyTorch gives the eager detections (same ops in the same order)."""
    model = tiny("atss")
    imgs = scenes(2)
    with torch.no_grad():
        ref = model(imgs)
        prepared = kexport.prepare_batch(imgs, model.transform.size)
        outs = ExportableDetector(model)(prepared.images, prepared.image_sizes)
    assert assert_same(ref, kexport.to_detections(outs, prepared), box_tol=1e-5, score_tol=1e-6) > 0


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gfl", "atss", "retinanet", "fcos"])
def test_dense_families_onnxruntime_match_eager(family, tmp_path):
    assert_onnxruntime_matches_eager(family, tmp_path)


@pytest.mark.slow
def test_trained_teacher_on_real_images(tmp_path):
    model = kdzoo.create_detector("gfl_r10t.shapes", pretrained=True).eval()
    result = kexport.export(model, tmp_path, "onnx", name="gfl_r10t.shapes")
    assert result.parity.ok, result.parity.message
    runner = kdzoo.load_exported(result.path)
    imgs = photos() + scenes(2, seed=1)
    with torch.no_grad():
        ref = [model([img])[0] for img in imgs]
    assert assert_same(ref, [runner([img])[0] for img in imgs]) > 0


@pytest.mark.slow
def test_openvino_export(tmp_path):
    pytest.importorskip("openvino")
    model = tiny("fcos")
    result = kexport.export(model, tmp_path, "openvino")
    assert result.parity.ok and result.parity.backend == "openvino", result.parity.message
    assert {f.name for f in result.files} == {"model.onnx", "model.xml", "model.bin"}
    runner = kdzoo.load_exported(tmp_path)  # the folder: the OpenVINO IR first
    with torch.no_grad():
        ref = [model([img])[0] for img in scenes()]
    assert runner.backend == "openvino" and assert_same(ref, [runner([img])[0] for img in scenes()]) > 0


@pytest.mark.slow
def test_predict_backend_exports_a_registry_model_on_the_fly():
    model = kdzoo.create_detector(STUDENT, pretrained=True).eval()
    imgs = [(img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for img in kexport.sample_images(seed=2)]
    for backend in ("onnxruntime", "openvino"):
        if backend == "openvino":
            pytest.importorskip("openvino")
        loaded = predict.load_model_for_backend(STUDENT, backend)
        assert loaded.model.backend == backend and loaded.note == f"exported ({'onnx' if backend == 'onnxruntime' else 'openvino'}), running on {backend}"
        eager = predict.LoadedModel(STUDENT, model, loaded.categories, 0)
        ref, _ = predict.detect(eager, imgs, 0.1)
        got, _ = predict.detect(loaded, imgs, 0.1)
        for r, g in zip(ref, got):
            assert len(r["scores"]) == len(g["scores"]) > 0
            assert np.allclose(r["boxes"], g["boxes"], atol=1e-3) and np.allclose(r["scores"], g["scores"], atol=1e-4)


@pytest.mark.slow
def test_fp16_export(tmp_path):
    """Half-precision network, fp32 decoding and NMS: the check compares detections above 0.3 loosely."""
    model = tiny("gfl")
    result = kexport.export(model, tmp_path, "onnx", fp16=True)
    assert result.parity.ok, result.parity.message
    assert kexport._read_metadata(result.path)["precision"] == "fp16"
    import onnx

    weights = onnx.load(str(result.path)).graph.initializer
    assert any(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)


@pytest.mark.slow
def test_fixed_size_canvas(tmp_path):
    model = tiny("gfl")
    result = kexport.export(model, tmp_path, "onnx", fixed_size=True)
    assert result.parity.ok, result.parity.message  # checked against eager on the same canvas
    runner = kdzoo.load_exported(result.path)
    assert runner.canvas == (128, 128) and runner.metadata["input"]["canvas"] == [128, 128]
    square = [F.interpolate(scenes(1)[0][None], size=(200, 200), mode="bilinear")[0]]
    with torch.no_grad():
        ref = model(square)  # a square image fills the canvas: eager pads it the same way
    assert assert_same(ref, runner(square)) > 0


# ------------------------------------------------------------------------------ errors
def test_unknown_format_and_backend_errors(tmp_path, capsys):
    model = tiny("gfl")
    with pytest.raises(kexport.ExportError, match="unknown export format 'tflite'; choose one of: onnx, torch, openvino"):
        kdzoo.export(model, tmp_path, format="tflite")
    assert export_main([STUDENT, "--format", "tflite", "--out", str(tmp_path)]) == 2
    assert "choose one of: onnx, torch, openvino" in capsys.readouterr().err
    with pytest.raises(kexport.ExportError, match="unknown backend 'tensorrt'"):
        kdzoo.load_exported(tmp_path / "model.onnx", "tensorrt")
    with pytest.raises(kexport.ExportError, match="no such exported file"):
        kdzoo.load_exported(tmp_path / "missing.onnx")
    with pytest.raises(predict.PredictError, match="no such exported file"):
        predict.load_model(str(tmp_path / "missing.onnx"))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("missing, fmt, extra", [("onnxscript", "onnx", "kdzoo[export]"),
                                                 ("onnxruntime", "onnx", "kdzoo[export]"),
                                                 ("openvino", "openvino", "kdzoo[openvino]")])
def test_missing_optional_package_names_the_extra(missing, fmt, extra, tmp_path, monkeypatch, capsys):
    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name == missing:
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(kexport.importlib, "import_module", fake)
    with pytest.raises(kexport.ExportError, match=rf"needs the '{missing}' package.*pip install 'kdzoo\[{extra[6:-1]}\]'"):
        kdzoo.export(tiny("gfl"), tmp_path, fmt)
    assert not list(tmp_path.iterdir())  # checked before anything is traced or written
    assert export_main([STUDENT, "--format", fmt, "--out", str(tmp_path)]) == 2
    assert f"pip install '{extra}'" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the export folder, options, batches
def test_batches_above_the_graph_limit_run_in_chunks(student, monkeypatch):
    runner = kdzoo.load_exported(student["out"])
    images = scenes(3, seed=4) + scenes(2, seed=5)
    # padding depends on the batch, so the reference is each chunk run as its own batch
    expected = [det for i in (0, 2, 4) for det in runner.run_batch(images[i:i + 2])]
    monkeypatch.setattr(kexport, "MAX_BATCH", 2)  # 5 images: chunks of 2, 2 and 1
    chunks: list[int] = []
    run_batch = runner.run_batch
    monkeypatch.setattr(runner, "run_batch", lambda imgs: chunks.append(len(imgs)) or run_batch(imgs))
    assert len(runner(images)) == 5
    assert chunks == [2, 2, 1]
    for a, b in zip(runner(images), expected):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])


def test_export_never_replaces_files_it_did_not_write(tmp_path):
    model = tiny("gfl")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.onnx").write_text("mine\n")
    folder = tmp_path / "modelfolder"
    kdzoo.save_pretrained(model, folder)
    side = tmp_path / "side"
    side.mkdir()
    (side / kexport.SIDE_FILE).write_text('["user data"]\n')
    for out, message in ((mine, r"model.onnx exists and was not written by kdzoo.export"),
                         (folder, r"is a model folder \(config.json, model.safetensors\)"),
                         (side, rf"holds a {kexport.SIDE_FILE} that kdzoo.export did not write")):
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        with pytest.raises(kexport.ExportError, match=message):
            kexport.export(model, out, "onnx", check=False)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_an_earlier_exports_own_files_are_replaced(student):
    ours = kexport._earlier_exports(student["out"])
    assert ours == {"model.onnx": "onnx"}
    kexport.check_export_folder(student["out"], ["model.onnx"])  # its own file: no refusal
    with pytest.raises(kexport.ExportError, match="model.pt2"):
        (student["out"] / "model.pt2").write_text("mine\n")
        kexport.check_export_folder(student["out"], ["model.pt2"])
    (student["out"] / "model.pt2").unlink()


@pytest.mark.parametrize("kwargs, message", [({"max_per_img": 0}, "max_per_img must be a positive integer"),
                                             ({"max_per_img": -3}, "max_per_img must be a positive integer"),
                                             ({"score_thr": 2.0}, r"score_thr must be in \[0, 1\)")])
def test_export_postprocess_options_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExportableDetector(tiny("gfl"), **kwargs)


def test_predict_notes_a_threshold_below_the_graphs(student, tmp_path, capsys):
    img = tmp_path / "in" / "a.png"
    img.parent.mkdir()
    from PIL import Image

    Image.fromarray((scenes(1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(img)
    assert predict_cli([str(img), "--model", str(student["out"] / "model.onnx"), "--out", str(tmp_path / "p"),
                         "--score-thr", "0.1"]) == 0
    assert f"note: the exported graph keeps only scores >= {THR:g} and at most 100 boxes" in capsys.readouterr().err


def test_an_opset_the_exporter_cannot_produce_is_an_error(tmp_path, monkeypatch):
    """torch's dynamo exporter falls back to its own opset with only a warning: the file is read back."""
    real = torch.onnx.export

    def fallback(*args, **kwargs):
        return real(*args, **{**kwargs, "opset_version": kexport.DEFAULT_OPSET})

    monkeypatch.setattr(torch.onnx, "export", fallback)
    with pytest.raises(kexport.ExportError, match=rf"produced opset {kexport.DEFAULT_OPSET}, not the requested 17"):
        kexport.export(tiny("gfl"), tmp_path / "x", "onnx", opset=17, check=False)
    assert not (tmp_path / "x" / "model.onnx").exists()
