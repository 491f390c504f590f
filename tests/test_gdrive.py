"""Google Drive weight sources (``PretrainedCfg.gdrive_id``), all offline.

A loopback HTTP server plays Google Drive: ``drive.google.com/uc?id=ID`` redirects to
``drive.usercontent.google.com/download``, which answers the virus-scan confirmation page (a
``download-form`` carrying ``confirm`` and ``uuid``), and only the confirmed request gets the file.
gdown has no base-URL option (it always requests ``https://drive.google.com/uc?id=ID`` and only
runs its confirmation handling for Google's own hosts), so the tests leave gdown's URLs alone and
route them at the transport: ``requests``' ``HTTPAdapter.send`` is wrapped to send every request
for a Google host to the loopback server (plain HTTP, no proxy) and to refuse any other host.
"""
from __future__ import annotations

import json
import re
import sys
import threading
import types
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

import kdzoo
from kdzoo import registry
from kdzoo.pretrained import PretrainedCfg, gdrive_cache_path, load_pretrained

requests = pytest.importorskip("requests")
pytest.importorskip("gdown")

FILE_ID = "1kdzooTESTfileIDonTheFakeDrive0x"
TEST_ARCH, TEST_TAG = "gfl_r18", "gdrive_test"
TEST_NAME = f"{TEST_ARCH}.{TEST_TAG}"
SMALL = dict(num_classes=3, input_size=(128, 128), fpn_channels=32, stacked_convs=2)
GOOGLE_HOSTS = {"drive.google.com", "docs.google.com", "drive.usercontent.google.com"}
CONVERT = "kdzoo.convert:mmdet_to_kdzoo"


# ------------------------------------------------------------------------ a fake Google Drive
class FakeDrive:
    """Drive's download flow for one file; ``mode`` picks how the confirmed request is answered:
    ``"file"`` (the checkpoint), ``"html_file"`` (an HTML page sent as an attachment) or
    ``"quota"`` (Drive's 'too many users' error page instead of the confirmation form)."""

    uuid = "5d3e1c2a-7b1f-4c55-9c1e-0123456789ab"

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.mode = "file"
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (host asked for, path, query)
        drive = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                drive._answer(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=5)

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        parts = urllib.parse.urlsplit(h.path)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(parts.query).items()}
        host = h.headers.get("X-Test-Host", "127.0.0.1")
        self.requests.append((host, parts.path, query))
        if query.get("id") != FILE_ID:
            return self._send(h, 404, b"<html><body>Not found</body></html>", "text/html")
        if host == "drive.google.com" and parts.path == "/uc":
            h.send_response(303)
            h.send_header("Location", f"https://drive.usercontent.google.com/download?id={FILE_ID}&export=download")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        if host != "drive.usercontent.google.com" or parts.path != "/download":
            return self._send(h, 404, b"<html><body>Not found</body></html>", "text/html")
        confirmed = query.get("confirm") == "t" and query.get("uuid") == self.uuid
        if not confirmed:
            if self.mode == "quota":
                page = ('<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>'
                        '<p class="uc-error-caption">Sorry, you can\'t view or download this file at this time.</p>'
                        '<p class="uc-error-subcaption">Too many users have viewed or downloaded this file recently. '
                        'Please try accessing the file again later.</p></body></html>')
                return self._send(h, 200, page.encode(), "text/html; charset=utf-8")
            # Drive's virus-scan warning; like the real page, the form sits on one line.
            page = ('<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>'
                    "<p>Google Drive can't scan this file for viruses.</p>"
                    '<form id="download-form" action="https://drive.usercontent.google.com/download" method="get">'
                    '<input type="submit" value="Download anyway"/>'
                    f'<input type="hidden" name="id" value="{FILE_ID}">'
                    '<input type="hidden" name="export" value="download">'
                    '<input type="hidden" name="confirm" value="t">'
                    f'<input type="hidden" name="uuid" value="{self.uuid}"></form></body></html>')
            return self._send(h, 200, page.encode(), "text/html; charset=utf-8")
        if self.mode == "html_file":
            page = (b"<!DOCTYPE html>\n<html><head><title>Google Drive - Access denied</title></head>\n"
                    b"<body>You need access</body></html>\n")
            return self._send(h, 200, page, "text/html; charset=utf-8", attachment="weights.pth")
        return self._send(h, 200, self.payload, "application/octet-stream", attachment="weights.pth")

    @staticmethod
    def _send(h, status: int, body: bytes, content_type: str, attachment: str | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        if attachment:
            h.send_header("Content-Disposition", f'attachment; filename="{attachment}"')
        h.end_headers()
        h.wfile.write(body)


# ------------------------------------------------------------------------------- checkpoint
def to_mmdet_layout(state_dict: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """kdzoo names -> MMDetection names (the inverse of kdzoo.convert's renames, written out here)."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith("backbone.body."):
            k = "backbone." + k[len("backbone.body."):]
        elif m := re.fullmatch(r"neck\.fpn\.inner_blocks\.(\d+)\.0\.(weight|bias)", k):
            k = f"neck.lateral_convs.{m[1]}.conv.{m[2]}"
        elif m := re.fullmatch(r"neck\.fpn\.layer_blocks\.(\d+)\.0\.(weight|bias)", k):
            k = f"neck.fpn_convs.{m[1]}.conv.{m[2]}"
        elif m := re.fullmatch(r"neck\.fpn\.extra_blocks\.convs\.(\d+)\.(weight|bias)", k):
            k = f"neck.fpn_convs.{levels + int(m[1])}.conv.{m[2]}"
        out[k] = v
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An MMEngine-style checkpoint of the small test model: random weights in MMDetection's layout,
    with meta and a pickled mmengine logging object (as CrossKD's files have), and the expected
    kdzoo state dict."""
    torch.manual_seed(0)
    model = kdzoo.create_detector(TEST_ARCH, **SMALL)
    g = torch.Generator().manual_seed(1)
    expected = {k: (v.clone() if k.endswith(("num_batches_tracked", "integral.project"))
                    else torch.randn(v.shape, generator=g)) for k, v in model.state_dict().items()}
    mmdet = to_mmdet_layout(expected, levels=len(model.neck.fpn.inner_blocks))

    fake = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        def __init__(self):
            self.values = [0.5, 0.25]

    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = fake.__name__, "HistoryBuffer"
    fake.HistoryBuffer = HistoryBuffer
    names = ("mmengine", "mmengine.logging", fake.__name__)
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules.update({n: fake if n == fake.__name__ else types.ModuleType(n) for n in names})
    path = tmp_path_factory.mktemp("ckpt") / "served.pth"
    try:
        torch.save({"meta": {"epoch": 12, "mmdet_version": "3.0.0rc6"}, "state_dict": mmdet,
                    "message_hub": {"log_scalars": {"loss": HistoryBuffer()}}}, path)
    finally:
        for n, mod in saved.items():
            if mod is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = mod
    return path.read_bytes(), expected, path


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub dir, no offline flag, and gdown's cookie file kept out of $HOME."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import gdown.download

    monkeypatch.setattr(gdown.download, "DEFAULT_COOKIES_FILE", str(tmp_path / "gdown-cookies.txt"), raising=False)
    return hub


@pytest.fixture
def test_cfg():
    """A test-only tag ``gfl_r18.gdrive_test`` whose weights are on the fake Drive."""
    cfg = PretrainedCfg(gdrive_id=FILE_ID, gdrive_filename="gdrive_test_model.pth", filter_fn=CONVERT,
                        license="cc-by-nc-4.0", num_classes=3, build_kwargs=dict(SMALL))
    registry.register_pretrained_cfgs({TEST_NAME: cfg}, default_ok=False)
    yield registry.get_pretrained_cfg(TEST_NAME)
    registry._pretrained[TEST_ARCH].pop(TEST_TAG, None)
    registry._not_default.discard((TEST_ARCH, TEST_TAG))


@pytest.fixture
def drive(checkpoint, monkeypatch):
    """The fake Drive, with every request for a Google host routed to it."""
    fake = FakeDrive(checkpoint[0])
    send = requests.adapters.HTTPAdapter.send

    def routed_send(self, request, **kwargs):
        parts = urllib.parse.urlsplit(request.url)
        if parts.hostname in GOOGLE_HOSTS:
            request.headers["X-Test-Host"] = parts.hostname
            request.url = urllib.parse.urlunsplit(("http", f"127.0.0.1:{fake.port}", parts.path, parts.query, ""))
            kwargs["proxies"] = {}
        elif parts.hostname != "127.0.0.1":
            raise requests.exceptions.ConnectionError(f"tests are offline: refused {request.url}")
        return send(self, request, **kwargs)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", routed_send)
    yield fake
    fake.close()


def cache_listing(hub: Path) -> list[str]:
    folder = hub / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def assert_help(message: str, name: str, cache_path: Path, file_id: str = FILE_ID) -> None:
    assert name in message
    assert f"https://drive.google.com/file/d/{file_id}/view" in message
    assert str(cache_path) in message
    assert "pretrained_cfg_overlay=dict(file=" in message


# ------------------------------------------------------------------------------------- tests
def test_downloads_through_confirmation_page_once(one_thread, hub_dir, test_cfg, drive, checkpoint):
    payload, expected, _ = checkpoint
    model = kdzoo.create_detector(TEST_NAME, pretrained=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k]), k
    # gdown's own URL, the virus-scan page, then the confirmed request carrying the form's token and uuid.
    assert [(host, path) for host, path, _ in drive.requests] == [
        ("drive.google.com", "/uc"), ("drive.usercontent.google.com", "/download"),
        ("drive.usercontent.google.com", "/download")]
    assert drive.requests[0][2] == {"id": FILE_ID}
    assert drive.requests[2][2] == {"id": FILE_ID, "export": "download", "confirm": "t", "uuid": FakeDrive.uuid}
    cached = hub_dir / "checkpoints" / "gdrive_test_model.pth"
    assert gdrive_cache_path(test_cfg) == cached
    assert cached.read_bytes() == payload
    assert cache_listing(hub_dir) == ["gdrive_test_model.pth"]  # no temporary files left behind

    again = kdzoo.create_detector(TEST_NAME, pretrained=True)
    assert len(drive.requests) == 3  # the cached file is used without asking Drive
    assert torch.equal(again.state_dict()["bbox_head.gfl_cls.weight"], expected["bbox_head.gfl_cls.weight"])


def test_offline_fails_at_once_with_directions(one_thread, hub_dir, test_cfg, drive, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="HF_HUB_OFFLINE") as e:
        kdzoo.create_detector(TEST_NAME, pretrained=True)
    assert_help(str(e.value), TEST_NAME, hub_dir / "checkpoints" / "gdrive_test_model.pth")
    assert drive.requests == []
    assert cache_listing(hub_dir) == []


def test_offline_error_of_a_released_crosskd_student(hub_dir, drive, monkeypatch):
    """The real entry's message: its name and tag, its Drive page and its cache file (the config name)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError) as e:
        load_pretrained(torch.nn.Module(), kdzoo.get_pretrained_cfg("gfl_r50_crosskd"))
    assert_help(str(e.value), "gfl_r50.crosskd_coco",
                hub_dir / "checkpoints" / "crosskd_r50_gflv1_r101-2x-ms_fpn_1x_coco.pth",
                file_id="1S7fyDkFSAauJry0ZGS-ZW-P3CJb7RlsO")
    assert drive.requests == []


def test_missing_gdown_names_the_extra(one_thread, hub_dir, test_cfg, drive, monkeypatch):
    monkeypatch.setitem(sys.modules, "gdown", None)  # `import gdown` now raises ImportError
    with pytest.raises(ImportError, match=re.escape("pip install 'kdzoo[gdrive]'")) as e:
        kdzoo.create_detector(TEST_NAME, pretrained=True)
    assert "pip install gdown" in str(e.value)
    assert_help(str(e.value), TEST_NAME, hub_dir / "checkpoints" / "gdrive_test_model.pth")
    assert drive.requests == []


def test_html_page_instead_of_checkpoint_is_discarded(one_thread, hub_dir, test_cfg, drive):
    drive.mode = "html_file"
    with pytest.raises(ValueError, match="HTML page") as e:
        kdzoo.create_detector(TEST_NAME, pretrained=True)
    assert "Google Drive - Access denied" in str(e.value)
    assert_help(str(e.value), TEST_NAME, hub_dir / "checkpoints" / "gdrive_test_model.pth")
    assert len(drive.requests) == 3  # it went through the confirmation like a real download
    assert cache_listing(hub_dir) == []  # neither under the final name nor as a temporary file

    drive.mode = "file"  # once Drive serves the file, the next call downloads it
    kdzoo.create_detector(TEST_NAME, pretrained=True)
    assert cache_listing(hub_dir) == ["gdrive_test_model.pth"]


def test_quota_page_is_reported(one_thread, hub_dir, test_cfg, drive):
    drive.mode = "quota"
    with pytest.raises(ConnectionError, match="Too many users have viewed or downloaded this file") as e:
        kdzoo.create_detector(TEST_NAME, pretrained=True)
    assert_help(str(e.value), TEST_NAME, hub_dir / "checkpoints" / "gdrive_test_model.pth")
    assert cache_listing(hub_dir) == []


def test_unreachable_drive_is_reported(one_thread, hub_dir, test_cfg, drive):
    drive.close()  # nothing listens on the port any more: connection refused, as without network
    with pytest.raises(ConnectionError, match="downloading gfl_r18.gdrive_test from Google Drive failed") as e:
        kdzoo.create_detector(TEST_NAME, pretrained=True)
    assert_help(str(e.value), TEST_NAME, hub_dir / "checkpoints" / "gdrive_test_model.pth")
    assert cache_listing(hub_dir) == []


def test_local_copy_overlay_reads_mmengine_checkpoint(one_thread, hub_dir, test_cfg, drive, checkpoint):
    """The hint in the errors works: a hand-downloaded MMEngine file (with pickled logging objects)."""
    _, expected, path = checkpoint
    model = kdzoo.create_detector(TEST_NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(model.state_dict()["neck.fpn.extra_blocks.convs.1.weight"],
                       expected["neck.fpn.extra_blocks.convs.1.weight"])
    assert drive.requests == []


def test_config_json_carries_license_and_drive_source(one_thread, hub_dir, test_cfg, drive, tmp_path):
    """save_pretrained keeps the license and the Drive provenance; loading the folder back uses its
    own safetensors file, never Drive."""
    model = kdzoo.create_detector(TEST_NAME)
    out = kdzoo.save_pretrained(model, tmp_path / "saved")
    stored = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    assert stored["gdrive_id"] == FILE_ID and stored["gdrive_filename"] == "gdrive_test_model.pth"
    assert stored["license"] == "cc-by-nc-4.0"
    assert "license: cc-by-nc-4.0" in (out / "README.md").read_text()
    PretrainedCfg(**stored)  # every stored field is one of the dataclass's

    loaded = kdzoo.create_detector(f"local-dir:{out}", pretrained=True)
    assert loaded.pretrained_cfg.license == "cc-by-nc-4.0"
    assert loaded.pretrained_cfg.gdrive_id == FILE_ID
    assert drive.requests == []
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_gdrive_filename_must_be_a_plain_name(hub_dir):
    for bad in ("../escape.pth", "sub/dir.pth", ".."):
        with pytest.raises(ValueError, match="plain file name"):
            gdrive_cache_path(PretrainedCfg(architecture="gfl_r18", tag="x", gdrive_id=FILE_ID, gdrive_filename=bad))
    default = gdrive_cache_path(PretrainedCfg(architecture="gfl_r18", tag="x", gdrive_id=FILE_ID))
    assert default == hub_dir / "checkpoints" / "gfl_r18.x.pth"


# --------------------------------------------------------------------------------- the zoo
RELEASED = {  # the CrossKD README (commit 87e156a): tag -> Drive id
    "gfl_r50.crosskd_coco": "1S7fyDkFSAauJry0ZGS-ZW-P3CJb7RlsO",
    "gfl_r50.crosskd_pkd_coco": "1LJZ27al2omdXb3cUty-RX37pMLp8L-4B",
    "retinanet_r50.crosskd_coco": "1fjwtuoKd4a_b5CHf6X0tKDmSNlwzYfWb",
    "retinanet_r50.crosskd_pkd_coco": "1Ha9r5DrzaZ_9tz8x9PVxOkGaKAApIBGd",
    "retinanet_r50.crosskd_swin_coco": "17rbkcXgqKfVUweRgzK7NtqFcLC-PohKX",
    "fcos_r50.crosskd_coco": "1ll5vOGFMEfOsNCkgbPuqh0uMNFnfICbE",
    "fcos_r50.crosskd_pkd_coco": "1r-UzxAOYOfPJFIV5e7Rd3P3uC9gXP09v",
    "atss_r50.crosskd_coco": "1qyxOMaxQrwJ20tEgIwU8pi31O8A1hsEG",
    "atss_r50.crosskd_pkd_coco": "1LkuKau1Na843ZPSNz77DqV8v8111b2_y",
}


def test_every_crosskd_student_has_drive_weights():
    aliases = kdzoo.registry.list_aliases()
    assert {"gfl_r50_crosskd", "retinanet_r50_crosskd", "fcos_r50_crosskd", "atss_r50_crosskd"} == set(aliases)
    for alias, target in aliases.items():
        assert target.split(".")[1] == "crosskd_coco", alias
        cfg = kdzoo.get_pretrained_cfg(alias)  # the release it stands for
        arch = alias
        assert cfg.gdrive_id and cfg.has_weights, arch
        assert cfg.license == "cc-by-nc-4.0", arch
        assert cfg.filter_fn == CONVERT, arch
    for name, drive_id in RELEASED.items():
        cfg = kdzoo.get_pretrained_cfg(name)
        assert cfg.gdrive_id == drive_id, name
        assert cfg.license == "cc-by-nc-4.0" and "CC BY-NC 4.0" in cfg.notes and "non-commercial" in cfg.notes, name
        assert f"https://drive.google.com/file/d/{drive_id}/view" in cfg.notes, name
        assert cfg.gdrive_filename.endswith(".pth") and "/" not in cfg.gdrive_filename, name
    assert set(RELEASED) == set(kdzoo.list_pretrained("*_r50.crosskd_*"))
    assert kdzoo.get_pretrained_cfg("retinanet_r50_crosskd").tag == "crosskd_coco"
    swin = kdzoo.get_pretrained_cfg("retinanet_r50.crosskd_swin_coco")
    assert (swin.teacher, swin.box_ap) == ("retinanet_swin_t.crosskd_coco", 38.0)
    assert swin.gdrive_filename == "crosskd_r50_retinanet_swint_fpn_1x_coco.pth"
    filenames = [kdzoo.get_pretrained_cfg(n).gdrive_filename for n in RELEASED]
    assert len(set(filenames)) == len(filenames)


def test_swin_teacher_student_builds_the_released_neck(one_thread):
    """The Swin-T -> R50 student's config also sets add_extra_convs='on_output' (P6 from P5, not C5)."""
    model = kdzoo.create_detector("retinanet_r50.crosskd_swin_coco", fpn_channels=32, stacked_convs=1, num_classes=3)
    assert model.neck.fpn.extra_blocks.convs[0].in_channels == 32  # fpn channels (P5), not 2048 (C5)
