"""Demo cold start and per-image latency per model, measured against a live ``demo/app.py``.

    python benchmarks/bench_demo.py [--models NAME ...] [--images A.png B.jpg] [--repeats 5]

Cold start: process spawn until the server answers (defaults preloaded, examples generated).
Per image: the model's own forward time as the demo reports it (median over ``--repeats``, one
model per request) and the client's round trip for all models at once. Default models: the
embedded checkpoints (what ``make demo`` shows).
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", default=None)
    p.add_argument("--images", nargs="*", default=None, help="default: a shapes val image and skimage's astronaut")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    os.environ.update(OFFLINE)
    sys.path.insert(0, str(REPO / "demo"))
    import app  # noqa: E402  (demo/app.py: its example images)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = Path(tempfile.mkdtemp(prefix="kdzoo-bench-demo-"))
    cmd = [sys.executable, str(REPO / "demo" / "app.py"), "--port", str(port), "--cache-dir", str(cache)]
    if args.models is not None:
        cmd += ["--models", *args.models]
    log = cache / "app.log"
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **OFFLINE})
    try:
        while "demo ready" not in log.read_text():
            if proc.poll() is not None:
                sys.exit(f"demo exited:\n{log.read_text()}")
            time.sleep(0.1)
        cold = time.perf_counter() - start
        from gradio_client import Client, handle_file

        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        models = client.view_api(return_format="dict", print_info=False)
        defaults = args.models if args.models is not None else \
            models["named_endpoints"]["/detect"]["parameters"][1]["parameter_default"] or []
        examples = app.example_images(cache)
        images = args.images or [examples[0]] + [e for e in examples if e.endswith("astronaut.png")]
        print(f"cold start: {cold:.1f} s (models preloaded: {', '.join(defaults) or 'none'})")
        for image in images:
            print(f"\n{Path(image).name}:")
            for model in defaults:
                ms = [client.predict(handle_file(image), [model], "", 0.3, api_name="/detect")[1]["data"][0][2]
                      for _ in range(args.repeats)]
                print(f"  {model:40s} {statistics.median(ms):8.1f} ms (median of {len(ms)}; min {min(ms):.1f})")
            if defaults:
                t = time.perf_counter()
                client.predict(handle_file(image), defaults, "", 0.3, api_name="/detect")
                print(f"  all {len(defaults)} models, client round trip: {(time.perf_counter() - t) * 1000:.0f} ms")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


if __name__ == "__main__":
    main()
