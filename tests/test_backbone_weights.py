"""Backbone initialisation (``backbone_pretrained``): timm tags such as torchvision's ``tv_in1k``,
MMCV model-zoo names (MSRA's caffe ResNets), URLs (downloaded once, hash-checked) and local files."""
from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch

import kdzoo
from kdzoo.backbone import TimmBackbone
from kdzoo.backbone_weights import MMCV_MODEL_ZOO, resolve_backbone_weights


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_resolution_rules() -> None:
    assert resolve_backbone_weights("resnet50", False) == ("resnet50", False, None)
    assert resolve_backbone_weights("resnet50", True) == ("resnet50", True, None)
    # torchvision's ImageNet weights, as MMDetection's torchvision://resnet50
    assert resolve_backbone_weights("resnet50", "tv_in1k") == ("resnet50.tv_in1k", True, None)
    assert resolve_backbone_weights("resnet101", "tv_in1k") == ("resnet101.tv_in1k", True, None)
    url = "https://download.openmmlab.com/pretrain/third_party/resnet50_caffe-788b5fa3.pth"
    assert resolve_backbone_weights("resnet50", "open-mmlab://detectron/resnet50_caffe") == ("resnet50", False, url)
    assert MMCV_MODEL_ZOO["detectron/resnet101_caffe"].endswith("resnet101_caffe-3ad79236.pth")
    with pytest.raises(ValueError, match=r"timm has no pretrained tag 'resnet50.tv_in2k'.*'tv_in1k'"):
        resolve_backbone_weights("resnet50", "tv_in2k")
    with pytest.raises(ValueError, match=r"'open-mmlab://detectron/resnet51_caffe' is not in kdzoo's copy"):
        resolve_backbone_weights("resnet50", "open-mmlab://detectron/resnet51_caffe")


def test_recipes_name_mmdetections_initialisation() -> None:
    from kdzoo.recipe import resolve_bases

    root = Path(__file__).resolve().parents[1] / "recipes" / "coco"
    for path in root.glob("*.yaml"):
        kwargs = resolve_bases(path)["model"]["kwargs"]
        expected = "open-mmlab://detectron/resnet" if "fcos" in path.name else "tv_in1k"
        assert str(kwargs["backbone_pretrained"]).startswith(expected), path.name


def _mmdet_layout_file(tmp_path: Path, name: str = "resnet18_test.pth") -> tuple[Path, dict[str, torch.Tensor]]:
    """A ResNet-18 checkpoint in MMDetection's ResNet layout: {'state_dict': ...} with a classifier."""
    torch.manual_seed(3)
    body = TimmBackbone("resnet18").body
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in body.state_dict().items()}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # old files lack it
    saved = {**state, "fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}
    path = tmp_path / name
    torch.save({"state_dict": saved, "meta": {"note": "test"}}, path)
    return path, state


def _check_loaded(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = model.backbone.body.state_dict()
    for k, v in state.items():
        assert torch.equal(own[k], v), k


def test_local_file_in_mmdetection_layout(tmp_path: Path) -> None:
    path, state = _mmdet_layout_file(tmp_path)
    model = kdzoo.create_detector("fcos_r18", num_classes=2, backbone_pretrained=str(path), style="caffe")
    _check_loaded(model, state)
    # The detector's own weights win: no backbone file is read then.
    with pytest.raises(RuntimeError, match="No pretrained weights"):
        kdzoo.create_detector("gfl_r18", pretrained=True, backbone_pretrained=str(tmp_path / "missing.pth"))


def test_wrong_backbone_file_names_the_file(tmp_path: Path) -> None:
    path, _ = _mmdet_layout_file(tmp_path)
    with pytest.raises(RuntimeError, match=r"(?s)backbone weights .*resnet18_test.pth does not match.*shape mismatch"):
        kdzoo.create_detector("fcos_r50", num_classes=2, backbone_pretrained=str(path))


class _Files(http.server.SimpleHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802
        self.hits.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


def test_url_downloaded_once_with_hash_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serve = tmp_path / "serve"
    serve.mkdir()
    path, state = _mmdet_layout_file(serve, "tmp.pth")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    path.rename(serve / f"resnet18_test-{digest}.pth")
    (serve / "resnet18_test-deadbeef.pth").write_bytes((serve / f"resnet18_test-{digest}.pth").read_bytes())
    handler = functools.partial(_Files, directory=str(serve))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        for _ in range(2):
            model = kdzoo.create_detector("fcos_r18", num_classes=2, backbone_pretrained=f"{base}/resnet18_test-{digest}.pth")
            _check_loaded(model, state)
        assert _Files.hits == [f"/resnet18_test-{digest}.pth"]  # the second build read the cache
        assert (tmp_path / "hub" / "checkpoints" / f"resnet18_test-{digest}.pth").is_file()
        with pytest.raises(RuntimeError, match=r"resnet18_test-deadbeef.pth could not be fetched.*hash"):
            kdzoo.create_detector("fcos_r18", num_classes=2, backbone_pretrained=f"{base}/resnet18_test-deadbeef.pth")
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(RuntimeError, match=r"resnet50_caffe-788b5fa3.pth could not be fetched \(OSError: HF_HUB_OFFLINE.*put the file at .*hub/checkpoints/resnet50_caffe-788b5fa3.pth"):
            kdzoo.create_detector("fcos_r50", backbone_pretrained="open-mmlab://detectron/resnet50_caffe")
    finally:
        server.shutdown()
