"""kdzoo demo: the same image through several detectors (teacher, student, distilled student) side by side.

    python demo/app.py [--host 127.0.0.1] [--port 7860] [--models NAME ...] [--online]

Models are registry names with weights (the embedded ``*.shapes*`` checkpoints by default),
``hf-hub:org/name`` ids or training run directories; a registry architecture without weights
is shown untrained. Offline unless ``--online``: ``HF_HUB_OFFLINE=1`` and
``GRADIO_ANALYTICS_ENABLED=False`` are set before Gradio and the Hub client are imported.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

_T0 = time.perf_counter()
DEFAULT_CACHE = Path(os.environ.get("KDZOO_DEMO_CACHE", Path.home() / ".cache" / "kdzoo" / "demo"))
NUM_SHAPES_EXAMPLES = 4
PHOTO_EXAMPLES = ("astronaut.png", "coffee.png", "chelsea.png")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--models", nargs="*", default=None,
                   help="default models (registry names, hf-hub: ids, run directories); default: the embedded checkpoints")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where the shapes example images are generated")
    p.add_argument("--online", action="store_true", help="allow Hugging Face Hub downloads and Gradio's lookups")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-preload", action="store_true", help="load the default models on first use, not at start")
    return p.parse_args(argv)


def set_offline() -> None:
    """Must run before gradio / huggingface_hub are imported: both read these at import time."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


def example_images(cache_dir: Path) -> list[str]:
    """A few shapes validation images (generated once into ``cache_dir``) and scikit-image's photos."""
    from kdzoo.data.shapes import ensure_shapes

    root = ensure_shapes(cache_dir / "shapes_examples", num_train=0, num_val=NUM_SHAPES_EXAMPLES, workers=1)
    files = sorted(str(p) for p in (root / "val").glob("*.png"))
    spec = importlib.util.find_spec("skimage")  # located, not imported: importing skimage takes seconds
    if spec and spec.submodule_search_locations:
        data = Path(list(spec.submodule_search_locations)[0]) / "data"
        files += [str(data / n) for n in PHOTO_EXAMPLES if (data / n).is_file()]
    return files


def split_models(selected: list[str] | str | None, extra: str | None) -> list[str]:
    """Dropdown values plus the free-text box (commas or new lines), in order, without duplicates."""
    names = list(selected or []) if not isinstance(selected, str) else [selected]
    names += re.split(r"[,\n]", extra or "")
    out: list[str] = []
    for n in (n.strip() for n in names):
        if n and n not in out:
            out.append(n)
    return out


class ModelPool:
    """Loaded models by name; each is loaded once and warmed up (the first forward is slower)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Any:
        import numpy as np

        from kdzoo.predict import detect, load_model

        with self._lock:
            if name not in self._models:
                loaded = load_model(name, self.device, allow_random=True)
                detect(loaded, [np.zeros((64, 64, 3), np.uint8)], 1.0, self.device)
                self._models[name] = loaded
            return self._models[name]


class Demo:
    """The prediction callback, independent of Gradio so that it can be tested directly."""

    def __init__(self, pool: ModelPool) -> None:
        self.pool = pool

    def __call__(self, upload: str | None, selected: list[str] | None, extra: str | None,
                 score_thr: float) -> tuple[list[tuple[Any, str]], list[list[Any]], list[list[Any]], str]:
        from kdzoo.predict import (PredictError, box_ap_text, describe_model, detect, draw_detections,
                                   read_image_and_size, to_original_pixels)

        if not upload:
            return [], [], [], "**Upload an image or pick an example first.**"
        names = split_models(selected, extra)
        if not names:
            return [], [], [], "**Pick at least one model** (or type a registry name, hf-hub id or run directory)."
        try:
            image, notice, original = read_image_and_size(upload)
        except PredictError as e:
            return [], [], [], f"**Cannot use this file:** {e}. Upload a PNG, JPEG, BMP, GIF, TIFF or WebP image."
        h, w = image.shape[:2]
        messages = [f"Note: {notice}; the detections table is in the original's pixels"] if notice else []
        gallery, summary, rows = [], [], []
        for name in names:
            try:
                loaded = self.pool.get(name)
                (det,), seconds = detect(loaded, [image], float(score_thr), self.pool.device)
            except PredictError as e:
                messages.append(f"**{name}:** {e}")
                continue
            except Exception as e:  # a model that fails at inference must not take the others down
                messages.append(f"**{name}:** inference failed: {type(e).__name__}: {e}")
                continue
            n = len(det["scores"])
            caption = f"{name} | {seconds * 1000:.0f} ms | {loaded.num_params / 1e6:.2f} M params | {n} detections"
            gallery.append((draw_detections(image, det, loaded.categories), caption))
            summary.append([name, n, round(seconds * 1000, 1), round(loaded.num_params / 1e6, 2), box_ap_text(loaded),
                            loaded.note or "-"])
            messages.append(f"Model {describe_model(loaded)}.")
            det = to_original_pixels(det, (w, h), original)
            for box, score, label in zip(det["boxes"], det["scores"], det["labels"]):
                rows.append([name, loaded.categories[int(label)], round(float(score), 3),
                             *(round(float(v), 1) for v in box)])
        messages.insert(0, f"{original[0]}x{original[1]} image, {len(gallery)} of {len(names)} model(s) ran, "
                           f"score >= {score_thr:.2f}.")
        return gallery, summary, rows, "\n\n".join(messages)


def build_app(default_models: list[str], examples: list[str], pool: ModelPool) -> Any:
    import gradio as gr

    from kdzoo.predict import PredictError, read_image

    run = Demo(pool)

    def preview(upload: str | None) -> tuple[Any, str]:
        if not upload:
            return None, ""
        try:
            image, notice = read_image(upload)
        except PredictError as e:
            return None, f"**Cannot use this file:** {e}."
        return image, notice

    with gr.Blocks(title="kdzoo detectors") as app:
        gr.Markdown("# kdzoo: distilled detectors side by side\n"
                    "One image through every chosen model: boxes, speed and size. Runs fully offline.")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Image", type="filepath", elem_id="upload")
                shown = gr.Image(label="Input", interactive=False, height=220)
                gr.Examples(examples=[[e] for e in examples], inputs=[upload], label="Examples")
                models = gr.Dropdown(choices=default_models, value=default_models, multiselect=True,
                                     allow_custom_value=True, label="Models", elem_id="models")
                extra = gr.Textbox(label="More models", lines=2, elem_id="extra-models",
                                   placeholder="registry names, hf-hub:org/name or run directories; comma-separated")
                thr = gr.Slider(0.0, 1.0, value=0.3, step=0.01, label="Score threshold", elem_id="score-thr")
                button = gr.Button("Detect", variant="primary", elem_id="run-btn")
            with gr.Column(scale=2):
                status = gr.Markdown(label="status", elem_id="status")
                gallery = gr.Gallery(label="Detections per model", columns=3, object_fit="contain", height="auto",
                                     format="png", elem_id="results")
                summary = gr.Dataframe(headers=["model", "detections", "latency ms", "params M", "box AP", "note"],
                                       label="Models", interactive=False, elem_id="summary")
                table = gr.Dataframe(headers=["model", "class", "score", "x0", "y0", "x1", "y1"],
                                     label="Detections", interactive=False, elem_id="detections")
        upload.change(preview, inputs=[upload], outputs=[shown, status], api_name=False)
        button.click(run, inputs=[upload, models, extra, thr], outputs=[gallery, summary, table, status],
                     api_name="detect")
    return app


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.online:
        set_offline()
    import kdzoo  # noqa: F401  (after the environment: registers the embedded checkpoints)
    from kdzoo.embedded import list_embedded
    from kdzoo.predict import PredictError

    defaults = args.models if args.models is not None else list_embedded()
    pool = ModelPool(args.device)
    if not args.no_preload:
        for name in defaults:
            try:
                pool.get(name)
            except PredictError as e:
                print(f"warning: {e}", file=sys.stderr)
    examples = example_images(args.cache_dir)
    app = build_app(defaults, examples, pool)
    data_dirs = sorted({str(Path(e).parent) for e in examples})
    app.queue(default_concurrency_limit=1)  # one inference at a time: the CPU is shared anyway
    app.launch(server_name=args.host, server_port=args.port, allowed_paths=data_dirs, share=False,
               inbrowser=False, prevent_thread_lock=True, show_error=True)
    print(f"kdzoo demo ready at http://{args.host}:{args.port} after {time.perf_counter() - _T0:.1f} s "
          f"(models: {', '.join(defaults) or 'none embedded yet'})", flush=True)
    app.block_thread()


if __name__ == "__main__":
    main()
