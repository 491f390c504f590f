"""MMDetection -> kdzoo conversion against the real MMDetection 3.3 state-dict layouts
(``tests/data/mmdet_layouts``, from the project's shared reference): every tensor consumed, every tensor placed where it belongs."""
from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch

import kdzoo
from kdzoo.cli.convert import main
from kdzoo.convert import CheckpointMismatchError, mmdet_to_kdzoo, read_mmdet_checkpoint

# MMDetection 3.3's state-dict layouts (keys and shapes) for nine COCO configs, vendored from the
# project's shared reference so the tests run in any checkout.
LAYOUTS = Path(__file__).resolve().parent / "data" / "mmdet_layouts"

DENSE = {
    "gfl_r50_fpn_1x_coco": "gfl_r50",
    "gfl_r101_fpn_ms-2x_coco": "gfl_r101",
    "atss_r50_fpn_1x_coco": "atss_r50",
    "atss_r101_fpn_1x_coco": "atss_r101",
    "retinanet_r50_fpn_1x_coco": "retinanet_r50",
    "retinanet_r101_fpn_2x_coco": "retinanet_r101",
    "fcos_r50-caffe_fpn_gn-head_1x_coco": "fcos_r50",
    "fcos_r101-caffe_fpn_gn-head_ms-640-800-2x_coco": "fcos_r101",
    # CrossKD's RetinaNet students take P6/P7 from the FPN output (add_extra_convs='on_output').
    "crosskd_retinanet_r50_student": "retinanet_r50_crosskd",
}
TWO_STAGE = {"faster-rcnn_r50_fpn_1x_coco": "faster_rcnn_r50", "faster-rcnn_r101_fpn_1x_coco": "faster_rcnn_r101"}
SWIN = {"retinanet_swin-t-p4-w7_fpn_1x_coco"}  # tests/test_swin.py
try:
    import kdzoo.faster_rcnn  # noqa: F401  (registers faster_rcnn_*)

    needs_faster_rcnn = pytest.mark.skipif(False, reason="")
except ImportError:
    needs_faster_rcnn = pytest.mark.skip(reason="kdzoo.faster_rcnn is not available")

_models: dict[tuple[str, int], torch.nn.Module] = {}


def build(arch: str, num_classes: int = 80) -> torch.nn.Module:
    if (arch, num_classes) not in _models:
        _models[arch, num_classes] = kdzoo.create_detector(arch, num_classes=num_classes)
    return _models[arch, num_classes]


def random_checkpoint(layout: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with exactly the keys and shapes MMDetection writes, random values."""
    spec = json.loads((LAYOUTS / f"{layout}.json").read_text())["state_dict"]
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randint(0, 1000, shape, generator=g) if k.endswith("num_batches_tracked")
            else torch.randn(shape, generator=g) for k, shape in spec.items()}


def expected_source_key(kdzoo_key: str, backbone_levels: int) -> str:
    """The mapping facts, written independently of kdzoo.convert (kdzoo key -> MMDetection key)."""
    if kdzoo_key.startswith("backbone.body."):
        return "backbone." + kdzoo_key[len("backbone.body."):]
    m = re.fullmatch(r"neck\.fpn\.inner_blocks\.(\d+)\.0\.(weight|bias)", kdzoo_key)
    if m:
        return f"neck.lateral_convs.{m[1]}.conv.{m[2]}"
    m = re.fullmatch(r"neck\.fpn\.layer_blocks\.(\d+)\.0\.(weight|bias)", kdzoo_key)
    if m:
        return f"neck.fpn_convs.{m[1]}.conv.{m[2]}"
    m = re.fullmatch(r"neck\.fpn\.extra_blocks\.convs\.(\d+)\.(weight|bias)", kdzoo_key)
    if m:
        return f"neck.fpn_convs.{int(m[1]) + backbone_levels}.conv.{m[2]}"
    return kdzoo_key


def test_layouts_present():
    assert {p.stem for p in LAYOUTS.glob("*.json")} == set(DENSE) | set(TWO_STAGE) | SWIN


@pytest.mark.parametrize("layout", list(DENSE) + [pytest.param(k, marks=needs_faster_rcnn) for k in TWO_STAGE])
def test_layout_converts_exactly(layout):
    arch = {**DENSE, **TWO_STAGE}[layout]
    model = build(arch)
    ckpt = random_checkpoint(layout)
    converted = mmdet_to_kdzoo({"meta": {"CLASSES": ["person"]}, "state_dict": ckpt}, model)
    own = model.state_dict()
    assert list(converted) == list(own)  # every model key filled, nothing else
    levels = len(model.neck.fpn.inner_blocks)
    used = set()
    for key, value in converted.items():
        src = expected_source_key(key, levels)
        assert src in ckpt, f"{key} should come from {src}"
        assert value.shape == own[key].shape
        assert torch.equal(value, ckpt[src]), f"{key} does not hold {src}"
        used.add(src)
    assert used == set(ckpt)  # every checkpoint tensor consumed exactly once
    kdzoo.pretrained.load_state_dict_checked(model, converted)
    after = model.state_dict()
    for key in after:
        assert torch.equal(after[key], ckpt[expected_source_key(key, levels)].to(after[key].dtype))


def test_fpn_extra_convs_are_p6_p7():
    model = build("retinanet_r50")
    converted = mmdet_to_kdzoo(random_checkpoint("retinanet_r50_fpn_1x_coco"), model)
    # RetinaNet's P6 conv reads C5 (on_input): 2048 input channels, exactly MMDetection's fpn_convs.3.
    assert converted["neck.fpn.extra_blocks.convs.0.weight"].shape == (256, 2048, 3, 3)


def test_crosskd_retinanet_student_neck_is_on_output():
    student, teacher = build("retinanet_r50_crosskd"), build("retinanet_r101")
    # The students' P6 conv reads P5 (256 channels), the teachers' reads C5 (2048 channels).
    assert student.state_dict()["neck.fpn.extra_blocks.convs.0.weight"].shape == (256, 256, 3, 3)
    assert teacher.state_dict()["neck.fpn.extra_blocks.convs.0.weight"].shape == (256, 2048, 3, 3)
    with pytest.raises(CheckpointMismatchError, match=r"neck.fpn.extra_blocks.convs.0.weight: checkpoint \(256, 2048, 3, 3\)"):
        mmdet_to_kdzoo(random_checkpoint("retinanet_r50_fpn_1x_coco"), student)


def test_derivable_buffers_may_be_absent():
    model = kdzoo.create_detector("gfl_r50")  # a fresh one: the cached model holds random weights
    ckpt = random_checkpoint("gfl_r50_fpn_1x_coco")
    ckpt = {k: v for k, v in ckpt.items() if not k.endswith(("num_batches_tracked", "integral.project"))}
    converted = mmdet_to_kdzoo(ckpt, model)
    assert torch.equal(converted["bbox_head.integral.project"], torch.arange(17.0))


def test_wrong_architecture_is_refused():
    with pytest.raises(CheckpointMismatchError, match=r"detector type differs: the checkpoint is RetinaNet, the model is GFL"):
        mmdet_to_kdzoo(random_checkpoint("retinanet_r50_fpn_1x_coco"), build("gfl_r50"))


def test_wrong_depth_is_refused():
    with pytest.raises(CheckpointMismatchError, match=r"backbone depth differs: the checkpoint has \(3, 4, 23, 3\) "
                                                      r"blocks per stage \(ResNet-101\), the model \(3, 4, 6, 3\)"):
        mmdet_to_kdzoo(random_checkpoint("atss_r101_fpn_1x_coco"), build("atss_r50"))


def test_wrong_class_count_is_refused():
    ckpt = random_checkpoint("retinanet_r50_fpn_1x_coco")
    ckpt["bbox_head.retina_cls.weight"] = torch.randn(9 * 20, 256, 3, 3)
    ckpt["bbox_head.retina_cls.bias"] = torch.randn(9 * 20)
    with pytest.raises(CheckpointMismatchError, match=r"class count differs: .*\(20 classes\).*num_classes=80.*num_classes=20"):
        mmdet_to_kdzoo(ckpt, build("retinanet_r50"))


@needs_faster_rcnn
def test_faster_rcnn_class_count_counts_background():
    ckpt = random_checkpoint("faster-rcnn_r50_fpn_1x_coco")
    ckpt["roi_head.bbox_head.fc_cls.weight"] = torch.randn(21, 1024)
    with pytest.raises(CheckpointMismatchError, match=r"fc_cls.weight has shape \(21, 1024\) \(20 classes\)"):
        mmdet_to_kdzoo(ckpt, build("faster_rcnn_r50"))


def test_extra_and_missing_keys_are_named():
    ckpt = random_checkpoint("gfl_r50_fpn_1x_coco")
    ckpt["bbox_head.adapter.weight"] = torch.zeros(1)
    del ckpt["bbox_head.gfl_reg.bias"]
    with pytest.raises(CheckpointMismatchError) as e:
        mmdet_to_kdzoo(ckpt, build("gfl_r50"))
    assert "bbox_head.adapter.weight" in str(e.value) and "bbox_head.gfl_reg.bias" in str(e.value)


def test_pretrained_cfg_filter_fn_path(tmp_path):
    """The converter as PretrainedCfg.filter_fn: an MMDetection .pth file loads with pretrained=True."""
    ckpt = random_checkpoint("gfl_r50_fpn_1x_coco", seed=3)
    path = tmp_path / "gfl.pth"
    torch.save({"meta": {"epoch": 12, "CLASSES": ("person",)}, "state_dict": ckpt}, path)
    model = kdzoo.create_detector("gfl_r50", pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(path), filter_fn="kdzoo.convert:mmdet_to_kdzoo"))
    assert torch.equal(model.state_dict()["neck.fpn.extra_blocks.convs.1.weight"], ckpt["neck.fpn_convs.4.conv.weight"])


def test_crosskd_student_checkpoint_loads_through_its_cfg(tmp_path):
    """CrossKD keeps its teacher out of the state dict: a student file is an MMDetection GFL R50."""
    ckpt = random_checkpoint("gfl_r50_fpn_1x_coco", seed=4)
    torch.save({"meta": {}, "state_dict": ckpt}, tmp_path / "crosskd_gfl.pth")
    model = kdzoo.create_detector("gfl_r50_crosskd", pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(tmp_path / "crosskd_gfl.pth")))
    assert model.pretrained_cfg.box_ap == 43.7
    assert torch.equal(model.state_dict()["bbox_head.gfl_cls.weight"], ckpt["bbox_head.gfl_cls.weight"])


def test_mmengine_metadata_is_read_weights_only(tmp_path, monkeypatch):
    """MMEngine checkpoints pickle logging objects next to the weights; they are read as inert
    placeholders, and a checkpoint pickling anything else is refused."""
    fake = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        def __init__(self):
            self.values = [1.0, 2.0]

    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = fake.__name__, "HistoryBuffer"
    fake.HistoryBuffer = HistoryBuffer
    for name in ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer"):
        monkeypatch.setitem(sys.modules, name, fake if name == fake.__name__ else types.ModuleType(name))
    sd = {"w": torch.arange(3.0)}
    torch.save({"state_dict": sd, "message_hub": {"loss": HistoryBuffer()}}, tmp_path / "m.pth")
    monkeypatch.delitem(sys.modules, fake.__name__)
    assert torch.equal(read_mmdet_checkpoint(tmp_path / "m.pth")["w"], sd["w"])

    evil = types.ModuleType("evilpkg")

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    Payload.__module__, Payload.__qualname__ = "evilpkg", "Payload"
    evil.Payload = Payload
    monkeypatch.setitem(sys.modules, "evilpkg", evil)
    torch.save({"state_dict": sd, "x": Payload()}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="refusing to load"):
        read_mmdet_checkpoint(tmp_path / "bad.pth")


@pytest.mark.slow
def test_cli_converts_to_loadable_dir(tmp_path):
    ckpt = random_checkpoint("atss_r50_fpn_1x_coco", seed=5)
    torch.save({"state_dict": ckpt, "meta": {}}, tmp_path / "atss.pth")
    assert main(["mmdet", str(tmp_path / "atss.pth"), "--arch", "atss_r50", "--out", str(tmp_path / "out")]) == 0
    model = kdzoo.create_detector(f"local-dir:{tmp_path / 'out'}", pretrained=True)
    assert torch.equal(model.state_dict()["bbox_head.atss_centerness.weight"], ckpt["bbox_head.atss_centerness.weight"])
    assert main(["mmdet", str(tmp_path / "atss.pth"), "--arch", "gfl_r50", "--out", str(tmp_path / "bad")]) == 2  # an input that does not fit: nothing done (kdzoo.cli exit policy)
    assert not (tmp_path / "bad" / "model.safetensors").exists()
