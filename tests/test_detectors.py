"""Detector-level behaviour: registry, call convention, coordinate frames, tower API, overfitting
one image, and errors on bad input."""
import pytest
import torch
from torchvision.ops import box_iou

import kdzoo
from kdzoo.builder import build_dense_detector
from kdzoo.gfl import GFLHead
from kdzoo.transform import DetectionTransform

FAMILIES = ["retinanet_r18", "fcos_r18", "atss_r18", "gfl_r18"]
SMALL = dict(num_classes=3, input_size=(128, 128), frozen_stages=-1, norm_eval=False, fpn_channels=32, stacked_convs=2)


def _targets():
    return [
        {"boxes": torch.tensor([[10.0, 20.0, 60.0, 70.0], [30.0, 5.0, 90.0, 40.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]


# ---------------------------------------------------------------------------- registry
def test_list_detectors_wildcards_and_unknown_name():
    names = kdzoo.list_detectors()
    for required in ["retinanet_r50", "retinanet_r101", "fcos_r50", "fcos_r101", "atss_r50", "atss_r101", "gfl_r50", "gfl_r101"]:
        assert required in names
    assert kdzoo.list_detectors("gfl_*") == sorted(n for n in names if n.startswith("gfl_"))
    assert set(kdzoo.list_detectors(["gfl_r5*", "atss_r1*"])) >= {"gfl_r50", "atss_r101", "atss_r18"}
    with pytest.raises(KeyError, match="gfl_r50"):
        kdzoo.create_detector("gfl_r5O")  # letter O: close match suggested


def test_arch_tag_names_pick_pretrained_cfg():
    cfg = kdzoo.get_pretrained_cfg("fcos_r50")
    assert cfg.bgr and cfg.std == (1.0, 1.0, 1.0)  # caffe-style preprocessing of MMDetection's FCOS
    with pytest.raises(KeyError, match="pretrained tag"):
        kdzoo.create_detector("gfl_r18.no_such_tag")
    with pytest.raises(RuntimeError, match="No pretrained weights"):
        kdzoo.create_detector("gfl_r18", pretrained=True, **SMALL)
    with pytest.raises(TypeError, match="unknown field"):
        kdzoo.create_detector("gfl_r18", pretrained_cfg_overlay={"wieghts": "x"})


def test_overlay_and_kwargs_are_recorded_for_rebuild():
    m = kdzoo.create_detector("gfl_r18", pretrained_cfg_overlay={"mean": (0.0, 0.0, 0.0), "std": (255.0, 255.0, 255.0)}, **SMALL)
    assert m.arch_name == "gfl_r18" and m.build_kwargs == SMALL
    assert m.pretrained_cfg.mean == (0.0, 0.0, 0.0)
    assert m.bbox_head.num_classes == 3 and m.bbox_head.feat_channels == 32 and len(m.bbox_head.cls_convs) == 2


def test_every_registered_detector_builds_and_runs_both_modes():
    torch.manual_seed(0)
    img = [torch.rand(3, 96, 128)]
    for name in kdzoo.list_detectors():
        m = kdzoo.create_detector(name, num_classes=4, input_size=(128, 96))
        m.train()
        losses = m(img, [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([3])}])
        assert losses and all(k.startswith("loss_") and torch.isfinite(v) for k, v in losses.items()), name
        m.eval()
        with torch.no_grad():
            (out,) = m(img)
        assert set(out) == {"boxes", "scores", "labels"}, name
        assert out["boxes"].shape[1] == 4 and len(out["scores"]) == len(out["labels"]) <= 100


# ------------------------------------------------------------------ transform and frames
def test_transform_keep_ratio_resize_pad_and_back():
    t = DetectionTransform(size=(400, 200), mean=(0, 0, 0), std=(255, 255, 255))
    img = torch.rand(3, 100, 150)
    batch, targets = t([img], [{"boxes": torch.tensor([[15.0, 10.0, 30.0, 20.0]]), "labels": torch.tensor([0])}])
    # scale = min(400/150, 200/100) = 2 -> 200x300, padded to 224x320
    assert batch.image_sizes == [(200, 300)] and tuple(batch.tensors.shape) == (1, 3, 224, 320)
    assert targets[0]["boxes"].tolist() == [[30.0, 20.0, 60.0, 40.0]]
    assert batch.tensors[0, :, 200:, :].abs().sum() == 0
    det = [{"boxes": torch.tensor([[30.0, 20.0, 60.0, 40.0], [-5.0, 0.0, 900.0, 150.0]]), "scores": torch.ones(2), "labels": torch.zeros(2)}]
    back = t.postprocess(det, batch)[0]["boxes"]
    assert back.tolist() == [[15.0, 10.0, 30.0, 20.0], [0.0, 0.0, 150.0, 75.0]]


def test_transform_normalises_with_cfg_mean_std_and_bgr():
    t = DetectionTransform(size=(64, 64), mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0), bgr=True)
    img = torch.stack([torch.full((64, 64), v / 255) for v in (30.0, 60.0, 90.0)])
    batch, _ = t([img])
    # BGR: channel 0 becomes the blue value 90 -> (90 - 10) / 2
    assert batch.tensors[0, :, 0, 0].tolist() == pytest.approx([40.0, 10.0, 0.0], abs=1e-3)


def test_eval_outputs_in_each_images_own_frame():
    m = kdzoo.create_detector("retinanet_r18", **SMALL).eval()
    with torch.no_grad():
        m.bbox_head.test_cfg.score_thr = 0.0  # untrained: keep everything so boxes exist
        outs = m([torch.rand(3, 50, 200), torch.rand(3, 300, 90)])
    for out, (h, w) in zip(outs, [(50, 200), (300, 90)]):
        assert len(out["boxes"]) == 100
        assert out["boxes"][:, 0::2].max() <= w and out["boxes"][:, 1::2].max() <= h and out["boxes"].min() >= 0


# ------------------------------------------------------------------------- tower API
@pytest.mark.parametrize("name", FAMILIES)
def test_tower_can_be_split_anywhere(name):
    torch.manual_seed(0)
    m = kdzoo.create_detector(name, **SMALL).eval()
    feats = m.extract_feats(torch.randn(1, 3, 64, 64))
    with torch.no_grad():
        plain = m.bbox_head(feats)
        for tap in (0, 1, 2):
            split, taps = m.bbox_head.forward_taps(feats, tap)
            for a, b in zip(plain, split):
                for k in a:
                    assert torch.allclose(a[k], b[k], atol=1e-5), (name, tap, k)
            split_pre, _ = m.bbox_head.forward_taps(feats, tap, activated=False)
            for a, b in zip(plain, split_pre):
                for k in a:
                    assert torch.allclose(a[k], b[k], atol=1e-5), (name, tap, k)
        pre = m.bbox_head.forward_tower(feats[0], "cls", 0, 1, activate_last=False)
        # by default the tap is the output of layer 0 after its ReLU; activated=False: before it
        _, taps = m.bbox_head.forward_taps(feats, 1)
        assert torch.equal(taps[0]["cls"], pre.clamp(min=0)) and (pre < 0).any()
        _, taps = m.bbox_head.forward_taps(feats, 1, activated=False)
        assert torch.equal(pre, taps[0]["cls"])
    with pytest.raises(ValueError, match="0 <= start <= stop"):
        m.bbox_head.forward_tower(feats[0], "cls", 3, 5)
    with pytest.raises(ValueError, match="branch"):
        m.bbox_head.forward_tower(feats[0], "box")


# ------------------------------------------------------------------------ overfitting
@pytest.mark.parametrize("name", FAMILIES)
def test_detector_overfits_one_image(name):
    torch.manual_seed(0)
    img = torch.full((3, 128, 128), 0.2)
    img[0, 20:60, 30:90] = 0.9
    img[1, 80:120, 10:50] = 0.8
    gt = {"boxes": torch.tensor([[30.0, 20.0, 90.0, 60.0], [10.0, 80.0, 50.0, 120.0]]), "labels": torch.tensor([0, 1])}
    m = kdzoo.create_detector(name, **{**SMALL, "num_classes": 2, "fpn_channels": 64})
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m.train()
    for _ in range(70):
        loss = sum(m([img], [gt]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        (out,) = m([img])
    keep = out["scores"] > 0.5
    assert keep.sum() >= 2, (name, out["scores"][:5])
    ious = box_iou(out["boxes"][keep], gt["boxes"])
    for g in range(2):
        hit = (ious[:, g] > 0.7) & (out["labels"][keep] == gt["labels"][g])
        assert hit.any(), (name, g, ious)


# ------------------------------------------------------------------------ bad inputs
def test_bad_inputs_have_clear_errors():
    m = kdzoo.create_detector("gfl_r18", **SMALL)
    m.train()
    good = [torch.rand(3, 64, 64)]
    with pytest.raises(TypeError, match="single tensor of shape"):
        m(torch.rand(2, 3, 64, 64), _targets())
    with pytest.raises(ValueError, match=r"images\[0\] has shape \(1, 64, 64\)"):
        m([torch.rand(1, 64, 64)], _targets()[:1])
    with pytest.raises(ValueError, match=r"images\[0\] has shape \(1, 3, 64, 64\)"):
        m([torch.rand(1, 3, 64, 64)], _targets()[:1])
    with pytest.raises(TypeError, match="dtype torch.uint8"):
        m([torch.zeros(3, 8, 8, dtype=torch.uint8)], _targets()[:1])
    # values off the 0..1 scale would give meaningless detections: refused, with the likely cause
    with pytest.raises(ValueError, match=r"images\[0\] has values in \[0, 255\].*divide by 255"):
        m([torch.linspace(0, 255, 3 * 64 * 64).view(3, 64, 64)], _targets()[:1])
    with pytest.raises(ValueError, match=r"images\[0\] has values in \[-2, 2.5\].*already normalised"):
        m.eval()([torch.linspace(-2, 2.5, 3 * 64 * 64).view(3, 64, 64)])
    m.train()
    with pytest.raises(ValueError, match=r"input_size must be \(long, short\).*got \(320,\)"):
        kdzoo.create_detector("gfl_r18", num_classes=2, input_size=(320,))
    with pytest.raises(ValueError, match=r"train_sizes\[\] must be \(long, short\).*got 'big'"):
        kdzoo.create_detector("faster_rcnn_r18", num_classes=2, train_sizes=["big"])
    assert kdzoo.create_detector("gfl_r18", num_classes=2, input_size=256).transform.size == (256, 256)
    with pytest.raises(ValueError, match=r"x2 < x1"):
        m(good, [{"boxes": torch.tensor([[50.0, 10.0, 20.0, 30.0]]), "labels": torch.tensor([0])}])
    with pytest.raises(ValueError, match="below num_classes=3"):
        m(good, [{"boxes": torch.tensor([[5.0, 10.0, 20.0, 30.0]]), "labels": torch.tensor([3])}])
    with pytest.raises(ValueError, match=r"expected \[N, 4\]"):
        m(good, [{"boxes": torch.tensor([5.0, 10.0, 20.0, 30.0]), "labels": torch.tensor([0])}])
    with pytest.raises(ValueError, match="targets are required"):
        m(good)
    with pytest.raises(ValueError, match="Unknown timm backbone 'resnet_5O'"):
        build_dense_detector(GFLHead, backbone="resnet_5O")


@pytest.mark.parametrize("name", ["gfl_r18", "faster_rcnn_r18"])
def test_float64_images_give_the_float32_detections(name):
    """A float64 image (numpy's default) runs in the model's dtype, not into a dtype error."""
    torch.manual_seed(0)
    kw = {k: v for k, v in SMALL.items() if not (name.startswith("faster") and k == "stacked_convs")}
    m = kdzoo.create_detector(name, **kw, score_thr=0.0).eval()
    img = torch.rand(3, 96, 120, dtype=torch.float64)
    with torch.no_grad():
        (a,), (b,) = m([img]), m([img.float()])
    assert a["boxes"].dtype == torch.float32 and len(a["boxes"]) > 0
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
