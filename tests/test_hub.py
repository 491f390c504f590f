"""Hub loading, saving and publishing, all offline: local directories, hf_hub_download against a
loopback HTTP endpoint (then from the cache with the endpoint stopped), a patched HfApi, torch.hub."""
from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from safetensors.torch import save_file

import kdzoo
from kdzoo.hub import save_pretrained
from kdzoo.publish import push_to_hub, stage_run_dir
from kdzoo.cli.publish import main as publish_main

REPO_ROOT = Path(__file__).resolve().parents[1]
KWARGS = {"num_classes": 3, "score_thr": 0.0, "input_size": [256, 192]}


def images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 120, 160, generator=g), torch.rand(3, 96, 128, generator=g)]


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return model.eval()


_reference: dict[int, list[dict]] = {}


def assert_same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    with torch.no_grad():
        if id(a) not in _reference:  # the reference model never changes: run it once
            _reference[id(a)] = a.eval()(images())
        out_a, out_b = _reference[id(a)], b.eval()(images())
    assert len(out_a[0]["boxes"]) > 0
    for x, y in zip(out_a, out_b):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(x[key], y[key])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """What ``python -m kdzoo.train`` writes (coordinated through the file formats only)."""
    model = randomised(kdzoo.create_detector("gfl_r18", **KWARGS))
    d = tmp_path_factory.mktemp("run")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))
    config = {"architecture": "gfl_r18", "kwargs": KWARGS, "pretrained_cfg": model.pretrained_cfg.to_dict()}
    (d / "config.json").write_text(json.dumps(config))
    (d / "recipe.yaml").write_text(yaml.safe_dump({
        "model": {"name": "gfl_r18", "kwargs": KWARGS},
        "data": {"root": "data/shapes", "shapes": {"num_train": 800}},
        "schedule": {"iters": 100},
        "output_dir": str(d),
        "teacher": {"name": "gfl_r50", "checkpoint": "runs/teacher"},
        "distill": {"method": "crosskd", "options": {}},
    }))
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"iter": 50, "loss": 1.5},
        {"iter": 50, "AP": 12.5, "AP50": 30.0},
        {"iter": 100, "loss": 1.2},
        {"iter": 100, "AP": 21.25, "AP50": 41.0, "AP75": 19.5, "APs": float("nan")},
    ]) + "\n")
    return d, model


def test_run_dir_round_trip_identical_outputs(run_dir, tmp_path):
    d, model = run_dir
    loaded = kdzoo.create_detector(f"local-dir:{d}", pretrained=True)
    assert loaded.arch_name == "gfl_r18" and loaded.num_classes == 3
    assert_same_outputs(model, loaded)
    out = save_pretrained(loaded, tmp_path / "saved")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    again = kdzoo.create_detector(f"local-dir:{out}", pretrained=True)
    assert again.build_kwargs == {"num_classes": 3, "score_thr": 0.0, "input_size": (256, 192)}
    assert again.pretrained_cfg.file == str(out / "model.safetensors")
    assert_same_outputs(model, again)
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


def test_method_and_kwarg_override(run_dir, tmp_path):
    d, model = run_dir
    model.save_pretrained(str(tmp_path / "m"))
    m = kdzoo.create_detector(f"local-dir:{tmp_path / 'm'}", pretrained=True, score_thr=0.5)
    assert m.bbox_head.test_cfg.score_thr == 0.5
    with pytest.raises(ValueError, match="holds weights for 3 classes, got num_classes=80"):
        kdzoo.create_detector(f"local-dir:{tmp_path / 'm'}", pretrained=True, num_classes=80)
    assert kdzoo.create_detector(f"local-dir:{tmp_path / 'm'}", pretrained=False, num_classes=80).num_classes == 80


def test_stage_run_dir_card_and_lineage(run_dir, tmp_path):
    d, _ = run_dir
    out = stage_run_dir(d, tmp_path / "stage", repo_id="kdzoo-test/gfl_r18_shapes")
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "kdzoo" and card.data.pipeline_tag == "object-detection"
    assert card.data.license == "apache-2.0" and card.data.datasets == ["kdzoo-shapes (synthetic)"]
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"mAP": 21.25, "AP50": 41.0, "AP75": 19.5}  # last eval record; NaN APs left out
    text = card.text
    sha = hashlib.sha256((d / "recipe.yaml").read_bytes()).hexdigest()
    assert "Teacher: `gfl_r50`" in text and "Method: `crosskd`" in text and sha in text
    assert 'kdzoo.create_detector("hf-hub:kdzoo-test/gfl_r18_shapes", pretrained=True)' in text
    cfg = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    assert cfg["box_ap"] == 21.25 and cfg["teacher"] == "gfl_r50" and cfg["distill_method"] == "crosskd"
    assert (out / "recipe.yaml").read_bytes() == (d / "recipe.yaml").read_bytes()


def test_unmeasured_model_claims_no_ap(tmp_path):
    model = kdzoo.create_detector("atss_r18", num_classes=2)
    out = save_pretrained(model, tmp_path / "x")
    card = ModelCard.load(out / "README.md")
    assert card.data.eval_results is None and "model-index" not in (out / "README.md").read_text()
    assert json.loads((out / "config.json").read_text())["pretrained_cfg"]["box_ap"] is None


def test_push_to_hub_uploads_exact_folder(run_dir, monkeypatch):
    d, _ = run_dir
    calls = {}

    def create_repo(self, repo_id, **kw):
        calls["create_repo"] = (repo_id, kw)

    def upload_folder(self, *, repo_id, folder_path, **kw):
        calls["upload"] = (repo_id, kw, {p.name: p.read_bytes() for p in Path(folder_path).iterdir()})
        return "commit-info"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    assert push_to_hub(d, "kdzoo-test/gfl_r18_shapes", private=True, commit_message="first") == "commit-info"
    assert calls["create_repo"] == ("kdzoo-test/gfl_r18_shapes", {"repo_type": "model", "private": True, "exist_ok": True})
    repo_id, kw, files = calls["upload"]
    assert repo_id == "kdzoo-test/gfl_r18_shapes" and kw["commit_message"] == "first"
    assert sorted(files) == ["README.md", "config.json", "model.safetensors", "recipe.yaml"]
    assert files["recipe.yaml"] == (d / "recipe.yaml").read_bytes()
    card = ModelCard(files["README.md"].decode())
    assert card.data.eval_results[0].metric_value == 21.25
    assert card.data.eval_results[0].task_type == "object-detection"
    config = json.loads(files["config.json"])
    assert config["architecture"] == "gfl_r18" and config["kwargs"] == KWARGS


def test_publish_cli_dry_run(run_dir, tmp_path, capsys):
    d, _ = run_dir
    assert publish_main([str(d), "--repo-id", "kdzoo-test/x", "--dry-run", str(tmp_path / "dry")]) == 0
    assert sorted(p.name for p in (tmp_path / "dry").iterdir()) == ["README.md", "config.json", "model.safetensors", "recipe.yaml"]
    assert publish_main([str(tmp_path / "nope"), "--repo-id", "kdzoo-test/x", "--dry-run", str(tmp_path / "d2")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # the staged folder is what would be uploaded: a folder with files in it (the user's, the run itself) is refused
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes\n")
    for target in (mine, d, tmp_path / "dry"):
        before = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}
        assert publish_main([str(d), "--repo-id", "kdzoo-test/x", "--dry-run", str(target)]) == 2
        assert f"{target} already exists and holds " in capsys.readouterr().err
        assert {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()} == before


# ------------------------------------------------------------------------------ bad inputs
def test_truncated_safetensors(run_dir, tmp_path):
    d, model = run_dir
    out = save_pretrained(model, tmp_path / "t")
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file.*truncated or corrupt"):
        kdzoo.create_detector(f"local-dir:{out}", pretrained=True)


def test_checkpoint_of_another_architecture(run_dir, tmp_path):
    d, model = run_dir
    out = save_pretrained(model, tmp_path / "w")
    other = kdzoo.create_detector("atss_r18", num_classes=3)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(out / "model.safetensors"))
    with pytest.raises(RuntimeError, match=r"(?s)does not match.*bbox_head\.gfl_cls\.weight"):
        kdzoo.create_detector(f"local-dir:{out}", pretrained=True)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "architecture": "yolo_x"}))
    with pytest.raises(ValueError, match="architecture 'yolo_x', which this kdzoo does not register"):
        kdzoo.create_detector(f"local-dir:{out}")


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        kdzoo.create_detector(f"local-dir:{tmp_path / 'missing'}", pretrained=True)
    with pytest.raises(FileNotFoundError, match="not a kdzoo model directory"):
        kdzoo.create_detector(f"local-dir:{tmp_path}", pretrained=True)
    with pytest.raises(ValueError, match="expected 'hf-hub:org/name'"):
        kdzoo.create_detector("hf-hub:just-a-name", pretrained=True)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        kdzoo.create_detector(f"local-dir:{tmp_path}", pretrained=True)


def test_save_refuses_unbuildable_models(tmp_path):
    model = kdzoo.create_detector("gfl_r18", num_classes=2)
    model.build_kwargs = {"backbone_kwargs": {"act_layer": torch.nn.ReLU}}
    with pytest.raises(TypeError, match=r"build_kwargs.backbone_kwargs.act_layer .* cannot be stored in config.json"):
        save_pretrained(model, tmp_path / "x")
    assert not (tmp_path / "x" / "model.safetensors").exists()
    model.arch_name = ""
    with pytest.raises(ValueError, match="not a registered architecture"):
        save_pretrained(model, tmp_path / "y")


# --------------------------------------------------------------------- loopback Hub endpoint
class _HubHandler(http.server.BaseHTTPRequestHandler):
    repos: dict[str, Path] = {}
    requests: list[str] = []

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _resolve(self) -> tuple[int, bytes, dict[str, str]]:
        self.requests.append(f"{self.command} {self.path}")
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return 404, b"", {}
        repo_id, filename = "/".join(parts[:2]), "/".join(parts[4:])
        if repo_id not in self.repos:
            return 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}
        path = self.repos[repo_id] / filename
        if not path.is_file():
            return 404, b'{"error": "Entry not found"}', {"X-Error-Code": "EntryNotFound"}
        data = path.read_bytes()
        commit = hashlib.sha1(repo_id.encode()).hexdigest()
        return 200, data, {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}

    def _respond(self, body: bool) -> None:
        status, data, headers = self._resolve()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def do_GET(self) -> None:
        self._respond(body=True)


@pytest.fixture
def hub_endpoint(tmp_path, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    for name, value in (("HF_ENDPOINT", endpoint), ("HF_HUB_DISABLE_XET", "1"), ("HF_HUB_CACHE", str(tmp_path / "cache"))):
        monkeypatch.setenv(name, value)
    c = huggingface_hub.constants  # read at import time, so patched too
    monkeypatch.setattr(c, "ENDPOINT", endpoint)
    monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(c, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    _HubHandler.repos, _HubHandler.requests = {}, []
    yield server
    server.shutdown()
    server.server_close()


def test_hf_hub_download_then_cache_offline(run_dir, tmp_path, hub_endpoint, monkeypatch):
    d, model = run_dir
    _HubHandler.repos["kdzoo-test/gfl_r18_shapes"] = stage_run_dir(d, tmp_path / "repo")
    loaded = kdzoo.create_detector("hf-hub:kdzoo-test/gfl_r18_shapes", pretrained=True)
    assert loaded.pretrained_cfg.hf_hub_id == "kdzoo-test/gfl_r18_shapes"
    assert loaded.pretrained_cfg.box_ap == 21.25
    assert_same_outputs(model, loaded)
    served = [r for r in _HubHandler.requests if r.startswith("GET")]
    assert any(r.endswith("/resolve/main/config.json") for r in served)
    assert any(r.endswith("/resolve/main/model.safetensors") for r in served)

    hub_endpoint.shutdown()  # the endpoint is gone: the second load comes from the cache
    hub_endpoint.server_close()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    n = len(_HubHandler.requests)
    cached = kdzoo.create_detector("hf-hub:kdzoo-test/gfl_r18_shapes", pretrained=True)
    assert len(_HubHandler.requests) == n
    assert_same_outputs(model, cached)
    with pytest.raises(ConnectionError, match="neither cached nor downloadable"):
        kdzoo.create_detector("hf-hub:kdzoo-test/never_downloaded", pretrained=True)


def test_hf_hub_unknown_repo_and_file(run_dir, tmp_path, hub_endpoint):
    with pytest.raises(FileNotFoundError, match="repository 'kdzoo-test/nope' was not found"):
        kdzoo.create_detector("hf-hub:kdzoo-test/nope", pretrained=True)
    (tmp_path / "only_config").mkdir()
    (tmp_path / "only_config" / "config.json").write_text((run_dir[0] / "config.json").read_text())
    _HubHandler.repos["kdzoo-test/no_weights"] = tmp_path / "only_config"
    with pytest.raises(FileNotFoundError, match="has no file 'model.safetensors'"):
        kdzoo.create_detector("hf-hub:kdzoo-test/no_weights", pretrained=True)


# ------------------------------------------------------------------------------- torch.hub
@pytest.mark.parametrize("entry", ["gfl_r18", "atss_r18", "retinanet_r18", "fcos_r18", "gfl_r50_crosskd"])
def test_torch_hub_local(entry):
    model = torch.hub.load(str(REPO_ROOT), entry, source="local", pretrained=False, num_classes=5)
    assert model.arch_name == kdzoo.registry.resolve_name(entry)[0] and model.num_classes == 5


def test_zoo_entries_are_published_and_convertible():
    """Official checkpoints: hash-checked MMDetection URLs converted on load, APs labelled as published."""
    mmdet = kdzoo.list_pretrained("*.mmdet_coco*")
    assert {"gfl_r50.mmdet_coco", "gfl_r101.mmdet_coco", "atss_r101.mmdet_coco", "retinanet_r101.mmdet_coco",
            "fcos_r101.mmdet_coco", "faster_rcnn_r50.mmdet_coco", "faster_rcnn_r101.mmdet_coco"} <= set(mmdet)
    for name in mmdet:
        cfg = kdzoo.get_pretrained_cfg(name)
        assert cfg.url.startswith("https://download.openmmlab.com/mmdetection/v2.0/")
        assert cfg.url.endswith(f"-{cfg.url_hash}.pth") and len(cfg.url_hash) == 8
        assert cfg.filter_fn == "kdzoo.convert:mmdet_to_kdzoo"
        assert cfg.box_ap and "MMDetection model zoo (published)" in cfg.source
        assert cfg.bgr == name.startswith("fcos")  # caffe-style FCOS checkpoints take BGR input
    assert kdzoo.get_pretrained_cfg("gfl_r101.mmdet_coco").url.endswith(
        "gfl_r101_fpn_mstrain_2x_coco_20200629_200126-dd12f847.pth")
    # the TADF COCO recipe's teacher
    assert kdzoo.get_pretrained_cfg("faster_rcnn_r101.mmdet_coco").url.endswith(
        "faster_rcnn_r101_fpn_1x_coco/faster_rcnn_r101_fpn_1x_coco_20200130-f513f705.pth")
    # the CrossKD students: tags of the student architectures
    students = {n: kdzoo.get_pretrained_cfg(n) for n in kdzoo.list_detectors(include_tags=True)
                if (kdzoo.get_pretrained_cfg(n).source or "").startswith("CrossKD README") and kdzoo.get_pretrained_cfg(n).teacher}
    assert {n: c.box_ap for n, c in students.items() if n.endswith(".crosskd_coco")} == {
        "atss_r50.crosskd_coco": 41.8, "fcos_r50.crosskd_coco": 41.1, "gfl_r50.crosskd_coco": 43.7,
        "retinanet_r50.crosskd_coco": 39.7}
    for cfg in students.values():  # released on Google Drive only (tests/test_gdrive.py downloads from a fake Drive)
        assert cfg.gdrive_id and cfg.has_weights and cfg.license == "cc-by-nc-4.0"
        assert cfg.filter_fn == "kdzoo.convert:mmdet_to_kdzoo" and cfg.distill_method == "crosskd"
    with pytest.raises(RuntimeError, match="No pretrained weights.*pretrained_cfg_overlay"):
        kdzoo.create_detector("gfl_r18", pretrained=True, num_classes=3, fpn_channels=32)  # no default weights


def test_hubconf_exports_every_detector_with_ap():
    import importlib.util

    spec = importlib.util.spec_from_file_location("kdzoo_hubconf", REPO_ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert hubconf.dependencies == ["torch", "torchvision", "timm"]
    public = sorted(n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_"))
    assert public == sorted(kdzoo.list_detectors())
    for name in public:
        assert "AP" in getattr(hubconf, name).__doc__
    assert "No COCO AP measured." in hubconf.gfl_r18.__doc__
    assert "43.7 box AP on COCO val2017 (CrossKD README (published)" in hubconf.gfl_r50_crosskd.__doc__
    assert "40.2 box AP on COCO val2017 (MMDetection model zoo (published)" in hubconf.gfl_r50.__doc__
