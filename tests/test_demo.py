"""demo/app.py launched as a real server on a free loopback port, called with gradio_client and
driven in Debian's chromium through playwright (skipped when chromium is absent). Offline.
Its helpers (model descriptions, which models know photographs, examples, the photo warning) and
the drawing are tested directly, without a server."""
from __future__ import annotations

import contextlib
import importlib.util
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
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OFFLINE = {"HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}
CATEGORIES = ("circle", "ellipse", "ring", "square", "rectangle", "triangle", "cross", "star")
EMBEDDED = {"gfl_r10t.shapes": ("teacher", "58.6"), "gfl_mnv3s.shapes": ("student baseline", "42.3"),
            "gfl_mnv3s.shapes_crosskd": ("distilled student", "47.8")}


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


@contextlib.contextmanager
def launch_demo(args: list[str], workdir: Path) -> Iterator[tuple[str, subprocess.Popen, float]]:
    """demo/app.py on a free loopback port, offline: ``(url, process, seconds to ready)``; stopped afterwards."""
    port = free_port()
    log = workdir / "app.log"
    env = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "demo" / "app.py"), "--port", str(port), "--cache-dir", str(workdir / "cache"),
           *args]
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        while "demo ready" not in log.read_text():
            if proc.poll() is not None or time.perf_counter() - start > 120:
                pytest.fail(f"the demo did not start (exit {proc.poll()}):\n{log.read_text()}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/", proc, time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def server(runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with launch_demo(["--models", *map(str, runs)], tmp_path_factory.mktemp("demo")) as (url, proc, cold_start_s):
        yield {"url": url, "runs": runs, "cold_start_s": cold_start_s, "proc": proc}


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
        drawn = Image.open(item["image"]).convert("RGB")
        assert drawn.size == (640, 640), "the 160 px image is shown upscaled 4x (demo/app.py DISPLAY_SIDE)"
        assert not np.array_equal(np.asarray(drawn.resize((160, 160), Image.NEAREST)), original), "boxes are drawn"
        name, n, latency_ms, params_m = row[:4]
        assert item["caption"] == f"{Path(run).name} · {n} detection{'s' * (n != 1)}", "short: details are in the table"
        assert name == run and n > 0 and latency_ms > 0 and params_m > 10
        assert row[5:7] == ["-", "synthetic shapes (8 classes)"]
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
    for name, size in (("gray.png", (720, 560)), ("rgba.png", (640, 480)), ("deep16.png", (480, 640))):
        gallery, summary, _, status = detect(client, tmp_path / name, run)  # upscaled by a whole factor to >= 640
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
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server["url"], wait_until="networkidle")
            notes = page.locator("#model-notes").inner_text()
            assert all(str(r) in notes for r in server["runs"]) and "8 classes" in notes, notes
            body = page.locator("body").inner_text()
            assert "000001.png" in body and "astronaut" not in body, "offline, shapes models: no photo examples"
            page.locator("#upload input[type=file]").set_input_files(str(image))
            page.wait_for_selector("#upload :text('000001.png')", timeout=90_000)
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


@pytest.mark.skipif(not os.environ.get("KDZOO_SAVE_SCREENSHOT") or not Path(CHROMIUM).exists(),
                    reason="on purpose only: KDZOO_SAVE_SCREENSHOT=docs/demo_screenshot.png (and chromium)")
def test_docs_screenshot(tmp_path: Path) -> None:
    """What ``make demo`` shows: the embedded checkpoints on the example 000004.png at score 0.3."""
    from playwright.sync_api import sync_playwright

    with launch_demo([], tmp_path) as (url, _, _), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(url, wait_until="networkidle")
            page.get_by_text("000004.png", exact=True).first.click()
            page.wait_for_function("document.querySelector('#upload').innerText.includes('000004')", timeout=90_000)
            page.click("#run-btn")
            page.wait_for_selector("#status :text('3 of 3 model(s) ran')", timeout=60_000)
            page.wait_for_function("document.querySelectorAll('#results img').length >= 3", timeout=30_000)
            page.wait_for_timeout(1000)  # the gallery's images finish loading
            page.screenshot(path=str(tmp_path / "demo_screenshot.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "demo_screenshot.png").stat().st_size > 10_000
    shutil.copyfile(tmp_path / "demo_screenshot.png", os.environ["KDZOO_SAVE_SCREENSHOT"])




# ----------------------------------------------------------------------------- helpers, without a server
@pytest.fixture(scope="module")
def app() -> Any:
    """demo/app.py as a module (it is a script, not part of the package)."""
    import kdzoo  # noqa: F401  (registers the embedded checkpoints)

    spec = importlib.util.spec_from_file_location("kdzoo_demo_app", REPO / "demo" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_lines_say_role_dataset_and_ap(app: Any) -> None:
    from kdzoo.embedded import list_embedded

    assert set(EMBEDDED) <= set(list_embedded())
    for name, (role, ap) in EMBEDDED.items():
        line = app.model_line(name)
        assert line.startswith(f"**{name}** ({role}): GFL "), line
        assert "trained on the synthetic shapes dataset (8 classes, 320 px)" in line, line
        assert f"; {ap} box AP on its validation images" in line and "downloaded" not in line, line
    assert "distilled with CrossKD from gfl_r10t.shapes" in app.model_line("gfl_mnv3s.shapes_crosskd")
    assert "the teacher of gfl_mnv3s.shapes_crosskd" in app.model_line("gfl_r10t.shapes")
    # the COCO zoo is described from its registry configs, without downloading anything
    teacher, student, distilled = (app.model_line(m) for m in app.COCO_ZOO)
    assert "(teacher)" in teacher and "44.7 box AP on COCO val2017" in teacher
    assert "(student baseline)" in student and "40.2 box AP" in student
    assert "(distilled student)" in distilled and "CrossKD from gfl_r101.mmdet_coco" in distilled
    assert all("COCO 2017 photographs (80 classes)" in t and "downloaded on first use" in t
               for t in (teacher, student, distilled))


def test_which_models_know_photos(app: Any) -> None:
    from kdzoo.data.coco_categories import COCO_NAMES

    assert app.model_domain(COCO_NAMES) == "photos"
    assert app.model_domain(["a", "b"], "COCO val2017") == "photos"
    assert app.model_domain(CATEGORIES) == "shapes" and app.model_domain(CATEGORIES[:3]) == "shapes"
    assert app.model_domain(["class_1", "class_2"], "kdzoo-shapes (synthetic)") == "shapes"
    assert app.model_domain(["cat", "dog"], "coco_pets") == "unknown"
    assert app.model_domain(["class_1"]) == "unknown"
    assert [app.model_domain_of(m) for m in EMBEDDED] == ["shapes"] * 3
    assert [app.model_domain_of(m) for m in app.COCO_ZOO] == ["photos"] * 3
    assert app.model_domain_of("./no/such/run") == "unknown"


def test_photo_examples_only_with_models_that_know_photos(app: Any) -> None:
    shapes, photos, embedded = ["000001.png", "000002.png"], ["astronaut.png", "coffee.png"], list(EMBEDDED)
    domains = {m: app.model_domain_of(m) for m in [*embedded, *app.COCO_ZOO]}
    offline = app.example_sets(shapes, photos, embedded, embedded, domains)
    assert [s.images for s in offline] == [shapes] and "shapes" in offline[0].label
    online = app.example_sets(shapes, photos, embedded, embedded + list(app.COCO_ZOO), domains)
    assert [(s.images, s.models) for s in online] == [(shapes, embedded), (photos, list(app.COCO_ZOO))]
    assert "COCO" in online[1].label


def test_photo_upload_with_shapes_models_says_why_boxes_mean_nothing(app: Any, tmp_path: Path,
                                                                      one_thread: None) -> None:
    from kdzoo.data.shapes import generate_shapes

    shapes_image = next((generate_shapes(tmp_path / "s", num_train=0, num_val=1, workers=1) / "val").glob("*.png"))
    photo = tmp_path / "holiday.jpg"
    Image.open(shapes_image).convert("RGB").resize((400, 300)).save(photo)  # any non-dataset file counts as a photo
    models = ["gfl_mnv3s.shapes", "gfl_mnv3s.shapes_crosskd"]
    demo = app.Demo(app.ModelPool("cpu"), described=models)
    gallery, summary, _, status = demo(str(photo), models, "", 0.3)
    assert len(gallery) == 2, status
    warning = status.split("\n\n")[1]
    assert warning.startswith("**gfl_mnv3s.shapes and gfl_mnv3s.shapes_crosskd were trained only on kdzoo's "
                              "synthetic shapes"), status
    assert "their boxes on a photograph mean nothing" in warning and "`--online`" in warning
    assert all(m in warning for m in app.COCO_ZOO) and warning.count(". ") == 0, "one sentence"
    assert [row[5] for row in summary] == ["student baseline", "distilled student"]
    assert [c for _, c in gallery] == [f"{m} · {a} AP · {r[1]} detection{'s' * (r[1] != 1)}"
                                       for m, a, r in zip(models, ("42.3", "47.8"), summary)]
    _, _, _, status = app.Demo(app.ModelPool("cpu"), online=True)(str(photo), models[:1], "", 0.3)
    assert "gfl_mnv3s.shapes was trained only" in status and "click a photo example" in status
    assert "**gfl_mnv3s.shapes** (student baseline)" in status, "models the page does not list are described"
    _, _, _, status = demo(str(shapes_image), models, "", 0.3)
    assert "mean nothing" not in status, "no warning on a shapes image"


def test_labels_readable_and_boxes_exact(one_thread: None) -> None:
    from kdzoo.predict import _colour, draw_detections, label_font_size

    image = np.zeros((320, 320, 3), np.uint8)
    det = {"boxes": np.array([[40.0, 100.0, 200.0, 220.0]], np.float32), "scores": np.array([0.87], np.float32),
           "labels": np.array([0])}
    colour = np.array(_colour(0))
    for min_side, scale in ((0, 1), (640, 2)):
        drawn = np.asarray(draw_detections(image, det, CATEGORIES, min_side=min_side))
        side = 320 * scale
        assert drawn.shape == (side, side, 3)
        hit = (drawn == colour).all(-1)
        # the box's edges lie exactly on the scaled coordinates
        assert hit[150 * scale, 40 * scale] and not hit[150 * scale, 40 * scale - 1]
        assert hit[100 * scale, 120 * scale] and not hit[100 * scale + 3 * scale, 120 * scale]
        # the label tag sits above the box: its height is the text's, about 1/30 of the image side
        tag_rows = np.flatnonzero(hit[: 100 * scale].any(1))
        tag_height = tag_rows.max() - tag_rows.min() + 1
        assert tag_height >= 0.028 * side, (tag_height, side)
    # shown in a ~420 px gallery cell, a 640 px drawing keeps labels about 14 px high
    assert label_font_size(640) * 420 / 640 >= 13 and label_font_size(320) >= 12
