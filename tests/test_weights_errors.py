"""Weights that cannot be fetched or read, packaging, and training batches without a usable box.

* URL weight sources: offline (``HF_HUB_OFFLINE=1``: no request at all) and unreachable (a closed
  loopback port) give a ConnectionError naming the model, the URL, the cache path and the local-file
  overlay; a loopback server serves a download that is cached, hash-checked and then read offline.
* Pickles that ``weights_only=True`` refuses: the message names the refused global and never
  repeats torch's advice to load with ``weights_only=False``.
* Legacy-format (PyTorch < 1.6) MMDetection checkpoints with MMEngine metadata objects are read
  weights-only, by ``read_mmdet_checkpoint``, the converter and ``create_detector(file=...)``.
* ``pyproject.toml``: SPDX license string, and the editable install that keeps working from the
  directory above a checkout named ``kdzoo``.
* Every family trains a step on batches with no boxes or only zero-area boxes.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
import traceback
import types
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import kdzoo
from kdzoo import registry
from kdzoo.cli.convert import main as convert_main
from kdzoo.convert import convert_mmdet_checkpoint, read_mmdet_checkpoint
from kdzoo import pretrained
from kdzoo.pretrained import PretrainedCfg, read_weights_file

REPO_ROOT = Path(__file__).resolve().parents[1]
ARCH, TAG = "gfl_r18", "url_errors_test"
NAME = f"{ARCH}.{TAG}"
SMALL = dict(num_classes=3, input_size=(64, 64), fpn_channels=16, stacked_convs=1)
CONVERT = "kdzoo.convert:mmdet_to_kdzoo"
HASH = "0123abcd"


# ------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def importable(**classes: type):
    """Make each class importable as ``module.Name`` (keys are dotted names) while ``torch.save``
    pickles it; the fake modules are gone afterwards, as on a machine without MMEngine."""
    added = {}
    for dotted, cls in classes.items():
        module, _, name = dotted.rpartition(".")
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            mod = ".".join(parts[:i])
            if mod not in sys.modules:
                added[mod] = sys.modules[mod] = types.ModuleType(mod)
        cls.__module__, cls.__qualname__, cls.__name__ = module, name, name
        setattr(sys.modules[module], name, cls)
    try:
        yield
    finally:
        for mod in added:
            sys.modules.pop(mod, None)


class HistoryBuffer:  # stands in for mmengine.logging.history_buffer.HistoryBuffer
    def __init__(self):
        self.values = [0.5, 0.25]


class LogProcessor:  # a second metadata class (stands in for MMEngine's logging state)
    def __init__(self):
        self.window_size = 10


RAN: list[str] = []


def _payload_ran(what: str) -> None:
    RAN.append(what)


class Payload:
    """Unpickling it would call ``evilpkg.ran``: a test fails if that ever happens."""

    def __reduce__(self):
        return (_payload_ran, ("payload",))


def mmdet_layout(state_dict: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """kdzoo's names -> MMDetection's (backbone prefix and FPN conv names; heads keep theirs)."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("backbone.body."):
            key = key.replace("backbone.body.", "backbone.", 1)
        elif m := re.fullmatch(r"neck\.fpn\.inner_blocks\.(\d+)\.0\.(\w+)", key):
            key = f"neck.lateral_convs.{m[1]}.conv.{m[2]}"
        elif m := re.fullmatch(r"neck\.fpn\.layer_blocks\.(\d+)\.0\.(\w+)", key):
            key = f"neck.fpn_convs.{m[1]}.conv.{m[2]}"
        elif m := re.fullmatch(r"neck\.fpn\.extra_blocks\.convs\.(\d+)\.(\w+)", key):
            key = f"neck.fpn_convs.{levels + int(m[1])}.conv.{m[2]}"
        out[key] = value
    return out


@pytest.fixture(scope="module")
def small_weights() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Random weights of the small test model: (kdzoo layout, MMDetection layout)."""
    torch.manual_seed(0)
    model = kdzoo.create_detector(ARCH, **SMALL)
    g = torch.Generator().manual_seed(3)
    own = {k: v.clone() if k.endswith(("num_batches_tracked", "integral.project")) else torch.randn(v.shape, generator=g)
           for k, v in model.state_dict().items()}
    return own, mmdet_layout(own, levels=len(model.neck.fpn.inner_blocks))


def save_mmengine_checkpoint(path: Path, mmdet_sd: dict[str, torch.Tensor], *, legacy: bool, extra=None) -> Path:
    """An MMEngine-style checkpoint: weights, meta, and pickled logging/config objects."""
    with importable(**{"mmengine.logging.history_buffer.HistoryBuffer": HistoryBuffer,
                       "mmengine.runner.log_processor.LogProcessor": LogProcessor,
                       "evilpkg.Payload": Payload, "evilpkg.ran": _payload_ran}):
        checkpoint = {"meta": {"epoch": 12, "log": LogProcessor(), "lr": np.float64(0.01)}, "state_dict": mmdet_sd,
                      "message_hub": {"log_scalars": {"loss": HistoryBuffer()}}, **(extra or {})}
        torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    return path


def full_text(excinfo: pytest.ExceptionInfo) -> str:
    """The whole traceback a user would see, chained exceptions included."""
    return "".join(traceback.format_exception(excinfo.value))


def assert_no_unsafe_advice(text: str) -> None:
    assert "weights_only" not in text, text
    assert "add_safe_globals" not in text, text


def assert_download_help(message: str, url: str, cache: Path) -> None:
    assert NAME in message
    assert url in message
    assert str(cache) in message
    assert f"kdzoo.create_detector({NAME!r}, pretrained=True, pretrained_cfg_overlay=dict(file=PATH))" in message


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture
def hub_dir(tmp_path, monkeypatch) -> Path:
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return hub


@pytest.fixture
def url_tag():
    """Registers ``gfl_r18.url_errors_test`` with the given cfg fields; removed afterwards."""
    def register(**fields) -> PretrainedCfg:
        cfg = PretrainedCfg(build_kwargs=dict(SMALL), num_classes=3, **fields)
        registry.register_pretrained_cfgs({NAME: cfg}, default_ok=False)
        return registry.get_pretrained_cfg(NAME)

    yield register
    registry._pretrained[ARCH].pop(TAG, None)
    registry._not_default.discard((ARCH, TAG))


@pytest.fixture
def server():
    """A loopback HTTP server answering every GET with ``server.payload``; records the paths asked for."""
    state = types.SimpleNamespace(payload=b"", requests=[])

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            state.requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(state.payload)))
            self.end_headers()
            self.wfile.write(state.payload)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = lambda name: f"http://127.0.0.1:{httpd.server_address[1]}/weights/{name}"
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def cache_files(hub: Path) -> list[str]:
    folder = hub / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# ----------------------------------------------------------------- A: URL weight sources
def test_url_source_offline_fails_at_once_without_a_request(one_thread, hub_dir, url_tag, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}/weights/gfl_r18_test-{HASH}.pth"
    url_tag(url=url, url_hash=HASH)
    calls = []

    def record(*args, **kwargs):
        calls.append(args)
        raise AssertionError("nothing may be downloaded offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", record)
    monkeypatch.setattr(torch.hub, "urlopen", record, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="HF_HUB_OFFLINE") as e:
        kdzoo.create_detector(NAME, pretrained=True)
    assert_download_help(str(e.value), url, hub_dir / "checkpoints" / f"gfl_r18_test-{HASH}.pth")
    assert calls == []
    assert cache_files(hub_dir) == []


def test_url_source_unreachable_names_model_url_cache_and_overlay(one_thread, hub_dir, url_tag):
    port = closed_port()
    url = f"http://127.0.0.1:{port}/weights/gfl_r18_test-{HASH}.pth"
    cfg = url_tag(url=url, url_hash=HASH)
    with pytest.raises(ConnectionError, match=f"downloading {re.escape(NAME)} from 127.0.0.1:{port} failed") as e:
        kdzoo.create_detector(NAME, pretrained=True)
    cache = hub_dir / "checkpoints" / f"gfl_r18_test-{HASH}.pth"
    assert pretrained.url_cache_path(cfg) == cache
    assert_download_help(str(e.value), url, cache)
    assert "URLError" not in full_text(e).splitlines()[-1]  # the last line is kdzoo's message, not urllib's
    assert cache_files(hub_dir) == []  # no partial file left behind


def test_url_download_is_hash_checked_cached_and_read_offline(one_thread, hub_dir, url_tag, server, small_weights,
                                                              tmp_path, monkeypatch):
    """An MMDetection file in the legacy format with MMEngine metadata, served over loopback HTTP."""
    own, mmdet_sd = small_weights
    payload = save_mmengine_checkpoint(tmp_path / "served.pth", mmdet_sd, legacy=True).read_bytes()
    server.payload = payload
    good = hashlib.sha256(payload).hexdigest()[:8]
    bad = "00000000" if good != "00000000" else "11111111"

    url_tag(url=server.url(f"gfl_test-{bad}.pth"), url_hash=bad, filter_fn=CONVERT)
    with pytest.raises(ValueError, match="not the expected one") as e:
        kdzoo.create_detector(NAME, pretrained=True)
    assert_download_help(str(e.value), server.url(f"gfl_test-{bad}.pth"), hub_dir / "checkpoints" / f"gfl_test-{bad}.pth")
    assert cache_files(hub_dir) == []  # the mismatching download is discarded

    url_tag(url=server.url(f"gfl_test-{good}.pth"), url_hash=good, filter_fn=CONVERT)
    model = kdzoo.create_detector(NAME, pretrained=True)
    assert cache_files(hub_dir) == [f"gfl_test-{good}.pth"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, own[k]), k
    asked = len(server.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the cached copy is used as is
    again = kdzoo.create_detector(NAME, pretrained=True)
    assert len(server.requests) == asked
    assert torch.equal(again.state_dict()["bbox_head.gfl_cls.weight"], own["bbox_head.gfl_cls.weight"])


# ------------------------------------------------------------- B: refused pickles
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_read_weights_file_refuses_custom_classes_without_unsafe_advice(tmp_path, legacy):
    class Obj:
        def __init__(self):
            self.x = 1

    path = tmp_path / "custom.pth"
    with importable(**{"evilpkg.models.Obj": Obj}):
        torch.save({"w": torch.ones(2), "extra": Obj()}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ValueError) as e:
        read_weights_file(path)
    message = str(e.value)
    assert "refusing to load" in message and str(path) in message
    assert "evilpkg.models.Obj" in message
    assert "objects other than tensors" in message and "safetensors" in message
    assert_no_unsafe_advice(full_text(e))


def test_create_detector_file_refusal_without_unsafe_advice(one_thread, tmp_path):
    path = tmp_path / "weights.pth"
    with importable(**{"evilpkg.Payload": Payload, "evilpkg.ran": _payload_ran}):
        torch.save({"w": torch.ones(2), "x": Payload()}, path)
    with pytest.raises(ValueError, match="refusing to load") as e:
        kdzoo.create_detector(ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SMALL)
    assert "evilpkg.ran" in str(e.value)
    assert_no_unsafe_advice(full_text(e))
    assert RAN == []


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_read_mmdet_checkpoint_refuses_foreign_globals(tmp_path, legacy):
    path = save_mmengine_checkpoint(tmp_path / "evil.pth", {"w": torch.ones(2)}, legacy=legacy,
                                    extra={"hook": Payload()})
    with pytest.raises(ValueError, match="refusing to load") as e:
        read_mmdet_checkpoint(path)
    assert "evilpkg.ran" in str(e.value) and "safetensors" in str(e.value)
    assert "HistoryBuffer" not in str(e.value)  # metadata is not the problem
    assert_no_unsafe_advice(full_text(e))
    assert RAN == []


def test_convert_cli_refuses_legacy_file_with_foreign_global(one_thread, tmp_path, capsys):
    path = save_mmengine_checkpoint(tmp_path / "evil.pth", {"w": torch.ones(2)}, legacy=True, extra={"hook": Payload()})
    assert convert_main(["mmdet", str(path), "--arch", ARCH, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: refusing to load") and "evilpkg.ran" in err
    assert_no_unsafe_advice(err)
    assert not (tmp_path / "out").exists() and RAN == []


# ------------------------------------------------ C: legacy-format MMDetection checkpoints
def test_legacy_mmdet_checkpoint_reads_converts_and_loads(one_thread, tmp_path, small_weights):
    own, mmdet_sd = small_weights
    path = save_mmengine_checkpoint(tmp_path / "legacy.pth", mmdet_sd, legacy=True)
    assert not zipfile.is_zipfile(path)

    read = read_mmdet_checkpoint(path)  # two metadata classes: found one after the other
    assert read.keys() == mmdet_sd.keys()
    assert all(torch.equal(read[k], v) for k, v in mmdet_sd.items())

    out = tmp_path / "converted"
    convert_mmdet_checkpoint(path, ARCH, out, **SMALL)  # what `python -m kdzoo.convert mmdet` runs
    loaded = kdzoo.create_detector(f"local-dir:{out}", pretrained=True)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, own[k]), k

    direct = kdzoo.create_detector(ARCH, pretrained=True, **SMALL,
                                   pretrained_cfg_overlay=dict(file=str(path), filter_fn=CONVERT))
    assert torch.equal(direct.state_dict()["bbox_head.gfl_reg.weight"], own["bbox_head.gfl_reg.weight"])


def test_legacy_plain_state_dict_loads_through_file(one_thread, tmp_path, small_weights):
    own, _ = small_weights
    path = tmp_path / "plain_legacy.pth"
    torch.save(own, path, _use_new_zipfile_serialization=False)
    model = kdzoo.create_detector(ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SMALL)
    assert torch.equal(model.state_dict()["neck.fpn.inner_blocks.0.0.weight"], own["neck.fpn.inner_blocks.0.0.weight"])


# ----------------------------------------------------------------------- E: packaging
def test_pyproject_license_is_an_spdx_string():
    data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert data["project"]["license"] == "Apache-2.0"
    from packaging.requirements import Requirement

    setuptools_req = [Requirement(r) for r in data["build-system"]["requires"] if Requirement(r).name == "setuptools"]
    assert len(setuptools_req) == 1
    spec = setuptools_req[0].specifier
    assert not spec.contains("76.2") and spec.contains("77.0")  # SPDX license strings need setuptools>=77


def test_pyproject_applies_without_deprecation_warnings(monkeypatch):
    setuptools = pytest.importorskip("setuptools")
    from packaging.version import Version

    if Version(setuptools.__version__) < Version("77"):
        pytest.skip(f"setuptools {setuptools.__version__} predates SPDX license strings")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(REPO_ROOT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), "pyproject.toml")
    assert [str(w.message) for w in caught if "license" in str(w.message).lower()] == []
    assert dist.metadata.license_expression == "Apache-2.0"


# ------------------------------------------- D: running from above a checkout named kdzoo
def test_editable_install_works_from_the_parent_of_a_checkout_named_kdzoo(tmp_path):
    """From the directory above a checkout ``kdzoo/``, Python sees that checkout as a namespace
    package ``kdzoo``. With setuptools' import-hook editable install the namespace package wins:
    ``kdzoo/__init__.py`` never runs (no detectors) and ``kdzoo.data`` is the dataset folder. The
    install pyproject.toml asks for (the repository root on sys.path) keeps the real package."""
    setuptools = pytest.importorskip("setuptools")
    from packaging.version import Version

    if Version(setuptools.__version__) < Version("77"):
        pytest.skip(f"setuptools {setuptools.__version__} cannot build this pyproject.toml")
    checkout = tmp_path / "kdzoo"
    checkout.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, checkout / name)
    (checkout / "kdzoo").symlink_to(REPO_ROOT / "kdzoo", target_is_directory=True)
    (checkout / "data").mkdir()  # the dataset folder `make run` creates
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-c", "import sys; from setuptools import build_meta; print(build_meta.build_editable(sys.argv[1]))",
         str(wheels)], cwd=checkout, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    site_dir = tmp_path / "site"
    with zipfile.ZipFile(wheels / build.stdout.strip().splitlines()[-1]) as whl:
        whl.extractall(site_dir)

    script = (
        "import pathlib, runpy, site, sys\n"
        "root = pathlib.Path(sys.argv[2]).resolve()\n"
        "# this environment's own install of kdzoo (a path entry or an import hook) is taken away first:\n"
        "# only the install built above may find the package\n"
        "sys.path[:] = [p for p in sys.path if not p or pathlib.Path(p).resolve() != root]\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'kdzoo' not in getattr(f, '__module__', '')]\n"
        "site.addsitedir(sys.argv[1])  # the editable install, as pip would place it\n"
        "import kdzoo, kdzoo.data\n"
        "print('package', kdzoo.__file__)\n"
        "print('data', kdzoo.data.__file__)\n"
        "print('registered', 'gfl_r18' in kdzoo.list_detectors())\n"
        "sys.argv = ['kdzoo.train', '--help']\n"
        "runpy.run_module('kdzoo.train', run_name='__main__', alter_sys=True)  # python -m kdzoo.train --help\n")
    run = subprocess.run([sys.executable, "-c", script, str(site_dir), str(REPO_ROOT)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = run.stdout
    assert run.returncode == 0, (out + run.stderr)[-3000:]
    assert f"package {checkout / 'kdzoo' / '__init__.py'}" in out
    assert f"data {checkout / 'kdzoo' / 'data' / '__init__.py'}" in out
    assert "registered True" in out
    assert "usage: python -m kdzoo.train" in out


# ------------------------------------------------ F: batches without a usable box
FAMILIES = ["gfl_r18", "atss_r18", "retinanet_r18", "fcos_r18", "faster_rcnn_r18"]


def _targets(*per_image: list[list[float]]) -> list[dict]:
    out = []
    for boxes in per_image:
        b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        out.append({"boxes": b, "labels": torch.zeros(len(b), dtype=torch.long)})
    return out


BATCHES = {
    "no_boxes": _targets([], []),
    "zero_area": _targets([[10, 10, 10, 30]], [[5, 5, 20, 5], [30, 30, 30, 30]]),
    "empty_and_zero_area": _targets([], [[30, 30, 30, 30]]),
}


@pytest.fixture(scope="module")
def family_models() -> dict[str, torch.nn.Module]:
    models = {}
    for arch in FAMILIES:
        torch.manual_seed(0)
        models[arch] = kdzoo.create_detector(arch, num_classes=3, fpn_channels=16, input_size=(64, 64))
    return models


@pytest.mark.parametrize("batch", list(BATCHES))
@pytest.mark.parametrize("arch", FAMILIES)
def test_training_step_on_batch_without_usable_boxes(one_thread, family_models, arch, batch):
    model = family_models[arch].train()
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=g), torch.rand(3, 48, 64, generator=g)]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    optimizer.zero_grad()
    losses = model(images, BATCHES[batch])
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), (name, value)
        if any(part in name for part in ("bbox", "dfl", "centerness")):
            assert value.item() == 0.0, (name, value)  # nothing to regress
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
