"""kdzoo demo: the same image through several detectors (teacher, student, distilled student) side by side.

    python demo/app.py [--host 127.0.0.1] [--port 7860] [--models NAME ...] [--online]

Models are registry names with weights (the embedded ``*.shapes*`` checkpoints by default),
``hf-hub:org/name`` ids or training run directories; a registry architecture without weights
is shown untrained. Offline unless ``--online``: ``HF_HUB_OFFLINE=1`` and
``GRADIO_ANALYTICS_ENABLED=False`` are set before Gradio and the Hub client are imported.
The page says what each model was trained on, its box AP and its role (teacher, student
baseline, distilled student). The embedded models know only kdzoo's synthetic shapes
(docs/shapes.md), so offline the examples are shapes images; ``--online`` adds the COCO zoo
(:data:`COCO_ZOO`, downloaded on first use) and photo examples for it.
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
from typing import Any, NamedTuple, Sequence

_T0 = time.perf_counter()
DEFAULT_CACHE = Path(os.environ.get("KDZOO_DEMO_CACHE", Path.home() / ".cache" / "kdzoo" / "demo"))
NUM_SHAPES_EXAMPLES = 4
PHOTO_EXAMPLES = ("astronaut.png", "coffee.png", "chelsea.png")
# The COCO teacher, student baseline and CrossKD student offered with --online (docs/crosskd.md).
COCO_ZOO = ("gfl_r101.mmdet_coco", "gfl_r50.mmdet_coco", "gfl_r50_crosskd")
DISPLAY_SIDE = 640  # smaller images are upscaled (whole factor) before drawing, so labels stay readable
SUMMARY_HEADERS = ["model", "detections", "latency ms", "params M", "box AP", "role", "trained on", "note"]
_SHAPES_FILE = re.compile(r"\d{6}\.png")  # how kdzoo.data.shapes names its images (docs/shapes.md, Layout)
_METHODS = {"crosskd": "CrossKD", "tadf": "TADF"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--models", nargs="*", default=None,
                   help="default models (registry names, hf-hub: ids, run directories); default: the embedded checkpoints")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where the shapes example images are generated")
    p.add_argument("--online", action="store_true",
                   help="allow Hugging Face Hub downloads and Gradio's lookups; offers the COCO models "
                        f"({', '.join(COCO_ZOO)}, downloaded on first use) and photo examples")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-preload", action="store_true", help="load the default models on first use, not at start")
    return p.parse_args(argv)


def set_offline() -> None:
    """Must run before gradio / huggingface_hub are imported: both read these at import time."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


# ----------------------------------------------------------------------------- example images
def shapes_examples(cache_dir: Path) -> list[str]:
    """A few shapes validation images, generated once into ``cache_dir``."""
    from kdzoo.data.shapes import ensure_shapes

    root = ensure_shapes(cache_dir / "shapes_examples", num_train=0, num_val=NUM_SHAPES_EXAMPLES, workers=1)
    return sorted(str(p) for p in (root / "val").glob("*.png"))


def photo_examples() -> list[str]:
    """scikit-image's photographs (astronaut, coffee, chelsea) when scikit-image is installed."""
    spec = importlib.util.find_spec("skimage")  # located, not imported: importing skimage takes seconds
    if not (spec and spec.submodule_search_locations):
        return []
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    return [str(data / n) for n in PHOTO_EXAMPLES if (data / n).is_file()]


def example_images(cache_dir: Path) -> list[str]:
    """All example images: the shapes images, then the photos (benchmarks/bench_demo.py uses both)."""
    return shapes_examples(cache_dir) + photo_examples()


def is_shapes_image(path: str | Path, size: tuple[int, int]) -> bool:
    """A file as ``kdzoo.data.shapes`` writes them (``000001.png``, square); anything else counts as a photo."""
    return bool(_SHAPES_FILE.fullmatch(Path(path).name)) and size[0] == size[1]


# ----------------------------------------------------------------------------- what each model is
def model_domain(categories: Sequence[str], ap_dataset: str | None = None) -> str:
    """The kind of images a model knows: ``"photos"`` when its classes include COCO's 80 names or its AP
    was measured on COCO (``"COCO val2017"``), ``"shapes"`` when its classes are the synthetic shapes' (docs/shapes.md) or its
    AP was measured on them, else ``"unknown"``. Only ``"photos"`` models get the photo examples."""
    from kdzoo.data.coco_categories import COCO_NAMES
    from kdzoo.data.shapes import CLASS_NAMES

    names, dataset = set(categories or ()), (ap_dataset or "").lower()
    if set(COCO_NAMES) <= names or re.search(r"\bcoco\b", dataset):
        return "photos"
    if (names and names <= set(CLASS_NAMES)) or "shapes" in dataset:
        return "shapes"
    return "unknown"


def _is_path_like(name: str) -> bool:
    return name.startswith(("hf-hub:", "local-dir:")) or "/" in name or os.sep in name or Path(name).exists()


def registry_cfg(name: str) -> Any | None:
    """The pretrained config of a registry name (or alias) with weights, read without loading anything."""
    from kdzoo.registry import get_pretrained_cfg

    if _is_path_like(name) or name.lower().endswith((".onnx", ".pt2", ".xml")):
        return None
    try:
        cfg = get_pretrained_cfg(name)
    except (KeyError, ValueError):
        return None
    return cfg if cfg.has_weights else None


def _canonical(name: str) -> str:
    """``arch.tag`` of a registry name, alias or bare architecture (its default tag)."""
    from kdzoo.registry import default_tag, resolve_name

    try:
        arch, tag = resolve_name(name)
    except KeyError:
        return name
    tag = tag or default_tag(arch)
    return f"{arch}.{tag}" if tag else arch


def _arch_title(arch: str) -> str:
    """``"GFL MobileNetV3-Small FPN-48"`` from the architecture's docstring, else the name itself."""
    from kdzoo.registry import get_entrypoint

    try:
        doc = (get_entrypoint(arch).__doc__ or "").strip().splitlines()
    except KeyError:
        return arch
    title = re.split(r":| \(|\. ", doc[0])[0].strip().rstrip(".") if doc else ""
    return title.replace(", ", " ", 1) if title else arch


def model_role(name: str, cfg: Any) -> tuple[str, str]:
    """``(role, detail)`` as the registered configs tell it: ``"distilled student"`` (its config names a
    distillation method), ``"teacher"`` (another config names it as its teacher), ``"student baseline"``
    (same architecture and dataset as a distilled one, trained without distillation), else ``("", "")``."""
    from kdzoo.registry import get_pretrained_cfg, list_aliases, list_pretrained

    if getattr(cfg, "distill_method", None):
        method = _METHODS.get(cfg.distill_method, cfg.distill_method)
        return "distilled student", f" distilled with {method}" + (f" from {cfg.teacher}" if cfg.teacher else "")
    if registry_cfg(name) is None:
        return "", ""
    me = _canonical(name)
    alias = {target: a for a, target in list_aliases().items()}  # gfl_r50.crosskd_coco -> gfl_r50_crosskd
    others = {alias.get(n, n): get_pretrained_cfg(n) for n in list_pretrained() if n != me}
    students = [n for n, c in others.items() if c.teacher and _canonical(c.teacher) == me]
    if students:
        return "teacher", f", the teacher of {_and(students)}"
    distilled = [n for n, c in others.items() if c.distill_method and c.architecture == cfg.architecture
                 and c.ap_dataset == cfg.ap_dataset]
    if distilled:
        return "student baseline", f" trained without distillation (the baseline of {_and(distilled)})"
    return "", ""


def _and(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def dataset_text(cfg: Any, num_classes: int) -> tuple[str, str]:
    """``(trained on, where the AP was measured)`` in words, from the config's ``ap_dataset``."""
    dataset = getattr(cfg, "ap_dataset", None)
    domain = model_domain(getattr(cfg, "categories", ()) or (), dataset)
    if domain == "shapes":
        size = getattr(cfg, "input_size", None)
        px = f", {max(size)} px" if size else ""
        return f"the synthetic shapes dataset ({num_classes} classes{px})", "its validation images"
    if domain == "photos" and dataset and "coco" in dataset.lower():
        return f"COCO 2017 photographs ({num_classes} classes)", dataset
    return (f"{dataset} ({num_classes} classes)" if dataset else f"an unrecorded dataset ({num_classes} classes)"), \
        dataset or "an unrecorded dataset"


def trained_on_short(cfg: Any, categories: Sequence[str]) -> str:
    """A few words for the summary table: ``"synthetic shapes (8 classes)"``, ``"COCO (80 classes)"``."""
    domain = model_domain(categories, getattr(cfg, "ap_dataset", None))
    kind = {"shapes": "synthetic shapes", "photos": "COCO"}.get(domain) or getattr(cfg, "ap_dataset", None) or "?"
    return f"{kind} ({len(categories)} classes)"


def cfg_line(name: str, cfg: Any) -> str:
    """One Markdown line for a registry model: role, architecture, lineage, training data and box AP, e.g.
    ``**gfl_mnv3s.shapes_crosskd** (distilled student): GFL MobileNetV3-Small FPN-48 distilled with CrossKD
    from gfl_r10t.shapes; trained on the synthetic shapes dataset (8 classes, 320 px); 47.8 box AP on its
    validation images (measured with kdzoo.evaluation)."""
    role, detail = model_role(name, cfg)
    n = len(cfg.categories or ()) or cfg.num_classes
    trained, where = dataset_text(cfg, n)
    if cfg.box_ap is not None:
        source = (cfg.source or "").split(",")[0].strip()
        if source.endswith("(published)"):
            source = "published by the " + source.removesuffix("(published)").strip()
        ap = f"{cfg.box_ap:.1f} box AP on {where}" + (f" ({source})" if source else "")
    else:
        ap = "no box AP recorded"
    local = bool(cfg.file) and Path(cfg.file).is_file()
    head = f"**{name}**" + (f" ({role})" if role else "")
    return (f"{head}: {_arch_title(cfg.architecture)}{detail}; trained on {trained}; {ap}"
            + ("" if local else "; weights downloaded on first use") + ".")


def model_line(name: str, pool: ModelPool | None = None) -> str:
    """What the page says about one model: :func:`cfg_line` for registry names, else what
    ``describe_model`` knows of the loaded model (a run directory, an hf-hub id)."""
    from kdzoo.predict import describe_model

    cfg = registry_cfg(name)
    if cfg is not None:
        return cfg_line(name, cfg)
    loaded = pool.loaded(name) if pool else None
    if loaded is None:
        return f"**{name}**: loaded on first use."
    role, _ = model_role(name, getattr(loaded.model, "pretrained_cfg", None))
    text = describe_model(loaded)
    return f"**{name}**" + (f" ({role})" if role else "") + text[len(loaded.name):] + "."


def model_domain_of(name: str, pool: ModelPool | None = None) -> str:
    """:func:`model_domain` of a registry name (its config) or of a model already loaded in ``pool``."""
    cfg = registry_cfg(name)
    if cfg is not None:
        return model_domain(cfg.categories or (), cfg.ap_dataset)
    loaded = pool.loaded(name) if pool else None
    if loaded is None:
        return "unknown"
    return model_domain(loaded.categories, getattr(getattr(loaded.model, "pretrained_cfg", None), "ap_dataset", None))


def photo_warning(shapes_only: list[str], online: bool) -> str:
    """The one sentence shown when shapes-only models ran on a photograph."""
    from kdzoo.data.shapes import CLASS_NAMES

    one = len(shapes_only) == 1
    coco = f"the COCO models ({', '.join(COCO_ZOO)})"
    instead = (f"pick {coco} under Models or click a photo example; they download on first use" if online
               else f"start the demo with `--online` and pick {coco}, which download on first use")
    return (f"**{_and(shapes_only)} {'was' if one else 'were'} trained only on kdzoo's synthetic shapes "
            f"({', '.join(CLASS_NAMES)}), so {'its' if one else 'their'} boxes on a photograph mean nothing: "
            f"for photos {instead}.**")


class ExampleSet(NamedTuple):  # not a dataclass: tests load this script without registering it as a module
    """One ``gr.Examples`` block: its label, images, and the models a click selects (None: image only)."""

    label: str
    images: list[str]
    models: list[str] | None = None


def example_sets(shapes: list[str], photos: list[str], defaults: list[str], choices: list[str],
                 domains: dict[str, str]) -> list[ExampleSet]:
    """Shapes images always; photos only when a model on offer knows photographs (:func:`model_domain`),
    as a second set that also selects those models."""
    photo_models = [m for m in choices if domains.get(m) == "photos"]
    if not (photos and photo_models):
        return [ExampleSet("Examples: synthetic shapes images (what the embedded models were trained on)", shapes)]
    shape_models = [m for m in defaults if domains.get(m) != "photos"] or list(defaults)
    return [ExampleSet("Shapes images (selects the shapes models)", shapes, shape_models),
            ExampleSet(f"Photos (selects the COCO models: {', '.join(photo_models)}; first use downloads them)",
                       photos, photo_models)]


# ----------------------------------------------------------------------------- running models
def split_models(selected: list[str] | str | None, extra: str | None) -> list[str]:
    """Dropdown values plus the free-text box (commas or new lines), in order, without duplicates."""
    names = list(selected or []) if not isinstance(selected, str) else [selected]
    names += re.split(r"[,\n]", extra or "")
    out: list[str] = []
    for n in (n.strip() for n in names):
        if n and n not in out:
            out.append(n)
    return out


def short_name(name: str) -> str:
    """The name in a gallery caption: a run directory's last folder, other names as they are."""
    if name.startswith("hf-hub:") or not _is_path_like(name):
        return name
    return Path(name.removeprefix("local-dir:")).name or name


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

    def loaded(self, name: str) -> Any | None:
        """The model if it is already loaded, else None (loads nothing)."""
        return self._models.get(name)


class Demo:
    """The prediction callback, independent of Gradio so that it can be tested directly.

    ``online``: whether the COCO models can be downloaded (changes the advice on photos);
    ``described``: models the page already describes (the status describes the others)."""

    def __init__(self, pool: ModelPool, online: bool = False, described: Sequence[str] = ()) -> None:
        self.pool = pool
        self.online = online
        self.described = set(described)

    def __call__(self, upload: str | None, selected: list[str] | None, extra: str | None,
                 score_thr: float) -> tuple[list[tuple[Any, str]], list[list[Any]], list[list[Any]], str]:
        from kdzoo.predict import PredictError, box_ap_text, detect, draw_detections, read_image_and_size, \
            to_original_pixels

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
        gallery, summary, rows, shapes_only = [], [], [], []
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
            cfg = getattr(loaded.model, "pretrained_cfg", None)
            n = len(det["scores"])
            ap = f" · {cfg.box_ap:.1f} AP" if getattr(cfg, "box_ap", None) is not None else ""
            caption = f"{short_name(name)}{ap} · {n} detection{'s' if n != 1 else ''}"
            gallery.append((draw_detections(image, det, loaded.categories, min_side=DISPLAY_SIDE), caption))
            role, _ = model_role(name, cfg)
            summary.append([name, n, round(seconds * 1000, 1), round(loaded.num_params / 1e6, 2), box_ap_text(loaded),
                            role or "-", trained_on_short(cfg, loaded.categories), loaded.note or "-"])
            if name not in self.described:
                messages.append(model_line(name, self.pool))
            if model_domain(loaded.categories, getattr(cfg, "ap_dataset", None)) == "shapes" and \
                    not loaded.note.startswith("untrained"):
                shapes_only.append(name)
            det = to_original_pixels(det, (w, h), original)
            for box, score, label in zip(det["boxes"], det["scores"], det["labels"]):
                rows.append([name, loaded.categories[int(label)], round(float(score), 3),
                             *(round(float(v), 1) for v in box)])
        if shapes_only and not is_shapes_image(upload, original):
            messages.insert(0, photo_warning(shapes_only, self.online))
        messages.insert(0, f"{original[0]}x{original[1]} image, {len(gallery)} of {len(names)} model(s) ran, "
                           f"score >= {score_thr:.2f}.")
        return gallery, summary, rows, "\n\n".join(messages)


# ----------------------------------------------------------------------------- the page
def intro_text(choices: list[str], domains: dict[str, str], pool: ModelPool) -> str:
    """The Markdown under the title: one line per model on offer, and what the models know."""
    lines = [f"- {model_line(m, pool)}" for m in choices]
    shapes = [m for m in choices if domains.get(m) == "shapes"]
    photos = [m for m in choices if domains.get(m) == "photos"]
    if shapes and not photos:
        lines.append("\nThese models were trained only on kdzoo's synthetic shapes (docs/shapes.md): try them on "
                     "shapes images like the examples. For photographs start the demo with `--online`, which "
                     f"adds the COCO models ({', '.join(COCO_ZOO)}).")
    elif shapes and photos:
        lines.append(f"\nUse {_and(shapes)} on shapes images and {_and(photos)} on photographs: each knows only "
                     "the images it was trained on.")
    return "\n".join(lines)


def build_app(default_models: list[str], examples: list[str] | list[ExampleSet], pool: ModelPool, *,
              online: bool = False, choices: list[str] | None = None) -> Any:
    """The Blocks page. ``examples``: :class:`ExampleSet` blocks (or plain image paths, one block);
    ``choices``: the models offered in the dropdown (default: ``default_models``)."""
    import gradio as gr

    from kdzoo.predict import PredictError, read_image

    choices = list(choices or default_models)
    domains = {m: model_domain_of(m, pool) for m in choices}
    sets = [e for e in examples if isinstance(e, ExampleSet)]
    if len(sets) != len(examples):  # plain image paths: one block
        sets = [ExampleSet("Examples", [str(e) for e in examples])]
    run = Demo(pool, online=online, described=choices)

    def preview(upload: str | None) -> tuple[Any, str]:
        if not upload:
            return None, ""
        try:
            image, notice = read_image(upload)
        except PredictError as e:
            return None, f"**Cannot use this file:** {e}."
        return image, notice

    where = "COCO models download on first use." if online else "Runs fully offline."
    with gr.Blocks(title="kdzoo detectors") as app:
        gr.Markdown("# kdzoo: distilled detectors side by side\n"
                    f"One image through every chosen model: boxes, speed and size. {where}")
        gr.Markdown(intro_text(choices, domains, pool), elem_id="model-notes")
        with gr.Row(equal_height=False):  # the controls in one band, so that the results get the full width
            with gr.Column(scale=2, min_width=260):
                upload = gr.File(label="Image", type="filepath", elem_id="upload", height=110)
                shown = gr.Image(label="Input", interactive=False, height=190)
            with gr.Column(scale=3, min_width=300):
                models = gr.Dropdown(choices=choices, value=default_models, multiselect=True,
                                     allow_custom_value=True, label="Models", elem_id="models")
                for i, s in enumerate(sets):
                    if s.models is None:
                        gr.Examples(examples=[[e] for e in s.images], inputs=[upload], label=s.label,
                                    elem_id=f"examples-{i}")
                    else:
                        gr.Examples(examples=[[e, s.models] for e in s.images], inputs=[upload, models],
                                    label=s.label, visible_columns=[0], elem_id=f"examples-{i}")
            with gr.Column(scale=2, min_width=260):
                extra = gr.Textbox(label="More models", lines=2, elem_id="extra-models",
                                   placeholder="registry names, hf-hub:org/name or run directories; comma-separated")
                thr = gr.Slider(0.0, 1.0, value=0.3, step=0.01, label="Score threshold", elem_id="score-thr")
                button = gr.Button("Detect", variant="primary", elem_id="run-btn")
        status = gr.Markdown(label="status", elem_id="status")
        gallery = gr.Gallery(label="Detections per model (boxes drawn on the image upscaled for display)", columns=3,
                             object_fit="contain", height="auto", format="png", elem_id="results")
        summary = gr.Dataframe(headers=SUMMARY_HEADERS, label="Models", interactive=False, elem_id="summary",
                               column_widths=["18%", "9%", "9%", "8%", "20%", "12%", "16%", "8%"], wrap=True)
        table = gr.Dataframe(headers=["model", "class", "score", "x0", "y0", "x1", "y1"],
                             label="Detections (in the image's own pixels)", interactive=False,
                             elem_id="detections", max_height=400)
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
    choices = defaults + [m for m in COCO_ZOO if m not in defaults] if args.online else list(defaults)
    pool = ModelPool(args.device)
    if not args.no_preload:
        for name in defaults:
            try:
                pool.get(name)
            except PredictError as e:
                print(f"warning: {e}", file=sys.stderr)
    shapes, photos = shapes_examples(args.cache_dir), photo_examples()
    sets = example_sets(shapes, photos, defaults, choices, {m: model_domain_of(m, pool) for m in choices})
    app = build_app(defaults, sets, pool, online=args.online, choices=choices)
    data_dirs = sorted({str(Path(e).parent) for s in sets for e in s.images})
    app.queue(default_concurrency_limit=1)  # one inference at a time: the CPU is shared anyway
    app.launch(server_name=args.host, server_port=args.port, allowed_paths=data_dirs, share=False,
               inbrowser=False, prevent_thread_lock=True, show_error=True)
    print(f"kdzoo demo ready at http://{args.host}:{args.port} after {time.perf_counter() - _T0:.1f} s "
          f"(models: {', '.join(defaults) or 'none embedded yet'}"
          + (f"; on offer: {', '.join(m for m in choices if m not in defaults)}" if len(choices) > len(defaults)
             else "") + ")", flush=True)
    app.block_thread()


if __name__ == "__main__":
    main()
