"""demo/app.py launched as a real server on a free loopback port, called with gradio_client and
driven in Debian's chromium through playwright (skipped when chromium is absent). Offline."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
OFFLINE = {"HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}
CATEGORIES = ("circle", "ellipse", "ring", "square", "rectangle", "triangle", "cross", "star")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two run directories of random 8-class models of different widths (stand-ins for a teacher and a
    student); at score threshold 0 they return boxes."""
    import torch

    import kdzoo

    out = []
    for name, width in (("teacher", 24), ("student", 16)):
        torch.manual_seed(width)
        model = kdzoo.create_detector("gfl_r18", num_classes=8, fpn_channels=width, stacked_convs=1, input_size=(128, 128),
                                      pretrained_cfg_overlay=dict(categories=CATEGORIES))
        out.append(model.save_pretrained(str(tmp_path_factory.mktemp("runs") / name)))
    return out


@pytest.fixture(scope="module")
def server(runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    port = free_port()
    log = tmp_path_factory.mktemp("demo") / "app.log"
    env = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "demo" / "app.py"), "--port", str(port), "--models", *map(str, runs),
           "--cache-dir", str(tmp_path_factory.mktemp("cache"))]
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        while "demo ready" not in log.read_text():
            if proc.poll() is not None or time.perf_counter() - start > 120:
                pytest.fail(f"the demo did not start (exit {proc.poll()}):\n{log.read_text()}")
            time.sleep(0.2)
        yield {"url": f"http://127.0.0.1:{port}/", "runs": runs, "cold_start_s": time.perf_counter() - start,
               "proc": proc}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def client(server: dict[str, Any]) -> Any:
    os.environ.update(OFFLINE)
    from gradio_client import Client

    return Client(server["url"], verbose=False)


def detect(client: Any, path: Path, models: list[str], thr: float = 0.0, extra: str = "") -> tuple[Any, ...]:
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), models, extra, thr, api_name="/detect")


def test_binds_loopback_only(server: dict[str, Any]) -> None:
    import urllib.request

    assert urllib.request.urlopen(server["url"], timeout=10).status == 200
    print(f"demo cold start (process start to ready, 2 models preloaded): {server['cold_start_s']:.1f} s")


def test_annotated_images_with_boxes_for_each_model(client: Any, server: dict[str, Any], tmp_path: Path) -> None:
    from kdzoo.data.shapes import generate_shapes

    root = generate_shapes(tmp_path / "shapes", num_train=0, num_val=1, image_size=160, workers=1)
    image = next((root / "val").glob("*.png"))
    runs = [str(r) for r in server["runs"]]
    gallery, summary, table, status = detect(client, image, runs, thr=0.0)
    assert len(gallery) == 2 and "2 of 2 model(s) ran" in status
    original = np.asarray(Image.open(image).convert("RGB"))
    for item, run, row in zip(gallery, runs, summary["data"]):
        drawn = np.asarray(Image.open(item["image"]).convert("RGB"))
        assert drawn.shape == original.shape and not np.array_equal(drawn, original), "boxes are drawn"
        assert item["caption"].startswith(run) and " ms | " in item["caption"] and "M params" in item["caption"]
        name, n, latency_ms, params_m = row[:4]
        assert name == run and n > 0 and latency_ms > 0 and params_m > 10
    rows = table["data"]
    assert {r[0] for r in rows} == set(runs) and all(r[1] in CATEGORIES for r in rows)
    assert all(0 <= r[3] <= r[5] <= 160 and 0 <= r[4] <= r[6] <= 160 for r in rows)
    # a high threshold keeps fewer (random models score about 0.01-0.1)
    _, summary_hi, _, _ = detect(client, image, runs[:1], thr=0.9)
    assert summary_hi["data"][0][1] < summary["data"][0][1]


def test_odd_inputs(client: Any, server: dict[str, Any], tmp_path: Path) -> None:
    run = [str(server["runs"][1])]
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (70, 90), np.uint8)).save(tmp_path / "gray.png")
    Image.fromarray(rng.integers(0, 255, (60, 80, 4), np.uint8)).save(tmp_path / "rgba.png")
    Image.fromarray(rng.integers(0, 65535, (64, 48), np.uint16)).save(tmp_path / "deep16.png")
    for name, size in (("gray.png", (90, 70)), ("rgba.png", (80, 60)), ("deep16.png", (48, 64))):
        gallery, summary, _, status = detect(client, tmp_path / name, run)
        assert len(gallery) == 1 and Image.open(gallery[0]["image"]).size == size, status
    Image.new("RGB", (4800, 1200), (30, 90, 200)).save(tmp_path / "huge.jpg", quality=40)
    gallery, _, _, status = detect(client, tmp_path / "huge.jpg", run)
    assert "resized from 4800x1200 to 2048x512" in status and Image.open(gallery[0]["image"]).size == (2048, 512)
    (tmp_path / "notes.txt").write_text("certainly not a picture")
    (tmp_path / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    for name in ("notes.txt", "fake.png"):
        gallery, summary, table, status = detect(client, tmp_path / name, run)
        assert gallery == [] and "Cannot use this file" in status and f"{name} is not a readable image" in status
    # models that cannot load are reported next to the ones that ran
    _, summary, _, status = detect(client, tmp_path / "gray.png", run, extra="gfl_r1, ./no/such/run")
    assert len(summary["data"]) == 1 and "Unknown detector 'gfl_r1'" in status and "no such model directory" in status
    _, _, _, status = detect(client, tmp_path / "gray.png", [], extra="")
    assert "Pick at least one model" in status
    assert server["proc"].poll() is None, "the server survived all of it"


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (apt-get install chromium)")
def test_browser_upload_and_detect(server: dict[str, Any], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from kdzoo.data.shapes import generate_shapes

    image = next((generate_shapes(tmp_path / "s", num_train=0, num_val=1, workers=1) / "val").glob("*.png"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server["url"], wait_until="networkidle")
            page.locator("#upload input[type=file]").set_input_files(str(image))
            page.wait_for_selector("#upload :text('000001.png')", timeout=30_000)
            page.locator("#score-thr input[type=number]").fill("0")
            page.locator("#score-thr input[type=number]").press("Enter")
            page.click("#run-btn")
            page.wait_for_function("document.querySelectorAll('#results img').length >= 2", timeout=60_000)
            page.wait_for_selector("#status :text('2 of 2 model(s) ran')", timeout=30_000)
            summary = page.locator("#summary").inner_text()
            assert all(str(r) in summary for r in server["runs"]), summary
            page.screenshot(path=str(tmp_path / "demo_screenshot.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "demo_screenshot.png").stat().st_size > 10_000
    if os.environ.get("KDZOO_SAVE_SCREENSHOT"):  # refresh docs/demo_screenshot.png on purpose only
        shutil.copyfile(tmp_path / "demo_screenshot.png", os.environ["KDZOO_SAVE_SCREENSHOT"])
