"""Training recipes: a typed schema (dataclasses), strict YAML loading, ``key.sub=value``
command-line overrides, and saving the resolved recipe next to a run.

Every key is checked: an unknown or mistyped key fails with its dotted path, close matches
and the allowed keys; a value of the wrong type names the key, the expected type and what
was given. The free-form ``model.kwargs``, ``teacher.kwargs`` and ``distill.options`` are checked
against the keyword arguments their builder accepts (:func:`builder_kwargs`). Paths in ``data`` are
checked by :meth:`Recipe.check_paths` (the engine calls it after generating the shapes dataset where
the recipe asks for one).

:func:`resume_changes` lists what a recipe changes relative to the one a checkpoint was trained
with, leaving out the keys in :data:`RESUME_SAFE_KEYS`; ``kdzoo.train --resume`` refuses the others.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import json
import os
import re
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import yaml

from .checkpoint import atomic_write

__all__ = [
    "Recipe", "ModelCfg", "DataCfg", "ShapesCfg", "ScheduleCfg", "TeacherCfg", "DistillCfg",
    "RecipeError", "load_recipe", "recipe_from_dict", "parse_overrides", "apply_overrides", "save_recipe",
    "builder_kwargs", "resume_changes", "format_value", "RESUME_SAFE_KEYS", "resolve_bases",
]


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the offending key."""


@dataclass
class ModelCfg:
    name: str = ""  # a registry name (``gfl_r50``, ``gfl_r50.tag``)
    kwargs: dict[str, Any] = field(default_factory=dict)  # builder kwargs (``fpn_channels``, ``backbone_pretrained`` ...)
    pretrained: bool = False  # load the detector weights of the name's tag


@dataclass
class ShapesCfg:
    """Generate :mod:`kdzoo.data.shapes` into ``data.root`` when it is missing."""

    num_train: int = 800
    num_val: int = 200
    image_size: int = 320
    seed: int = 0
    background: Literal["synthetic", "photo"] = "synthetic"  # "photo": scikit-image's photographs behind the shapes (docs/shapes.md)


@dataclass
class DataCfg:
    root: str = ""  # dataset root; the relative paths below are resolved against it
    # coco: the *_images/*_ann paths below; yolo: root is the folder holding data.yaml; voc: root is the
    # VOC year folder (Annotations/, JPEGImages/, ImageSets/Main/). See docs/datasets.md.
    format: Literal["coco", "yolo", "voc"] = "coco"
    train_split: str = "train"  # yolo: a data.yaml key; voc: an ImageSets/Main/<split>.txt name
    val_split: str = "val"
    classes: list[str] | None = None  # voc: the class order (default: see kdzoo.data.voc)
    train_images: str = "train"
    train_ann: str = "annotations/instances_train.json"
    val_images: str = "val"
    val_ann: str = "annotations/instances_val.json"
    shapes: ShapesCfg | None = None
    input_size: list[int] | None = None  # [long, short] keep-ratio resize (model kwarg input_size)
    train_sizes: list[list[int]] | None = None  # multi-scale training: a random [long, short] per image
    flip: float = 0.5
    filter_empty: bool = True  # skip training images without boxes, as MMDetection does
    cache: bool = False  # decode every image once and keep it in RAM as uint8 (docs/training.md)

    def path(self, name: str) -> Path:
        p = Path(getattr(self, name))
        return p if p.is_absolute() else Path(self.root) / p


@dataclass
class ScheduleCfg:
    epochs: int | None = None  # exactly one of epochs / iters
    iters: int | None = None
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    # The lr is given for this total batch (batch_size x processes); the engine scales it
    # linearly to the actual total batch (Goyal et al.). None: use lr as given.
    base_batch_size: int | None = None
    momentum: float = 0.9  # SGD momentum / AdamW beta1
    weight_decay: float = 1e-4
    bias_lr_mult: float = 1.0  # MMDetection's paramwise_cfg (FCOS: 2.0 and 0.0)
    bias_decay_mult: float = 1.0
    warmup: Literal["linear", "constant", "none"] = "linear"
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    policy: Literal["step", "cosine"] = "step"
    steps: list[int] = field(default_factory=list)  # in epochs when `epochs` is set, else in iterations
    gamma: float = 0.1
    min_lr_ratio: float = 0.0  # cosine floor
    grad_clip: float | None = None  # max L2 norm of all gradients


@dataclass
class TeacherCfg:
    name: str = ""  # registry name; may be omitted when `checkpoint` is a run directory
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str = ""  # a run directory (config.json + model.safetensors) or a weights file
    pretrained: bool = False  # instead of `checkpoint`: the registered weights of `name`'s tag


@dataclass
class DistillCfg:
    method: str = ""  # kdzoo.distill.build_distiller method name
    options: dict[str, Any] = field(default_factory=dict)


#: Metric names an evaluation gives (kdzoo.evaluation): what ``best.metric`` / ``early_stop.metric`` may name.
EVAL_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclass
class EmaCfg:
    """Exponential moving average of the student's weights (timm's ``ModelEmaV3``); docs/training.md."""

    decay: float = 0.9998
    warmup: bool = True  # decay = 1 - (1 + step / warmup_gamma) ** -warmup_power, capped at `decay`
    warmup_gamma: float = 1.0
    warmup_power: float = 2 / 3
    min_decay: float = 0.0  # floor of the warmed-up decay
    buffers: bool = True  # average the buffers (BatchNorm statistics) too; false copies them


@dataclass
class BestCfg:
    """Keep ``best.safetensors`` + ``best.json`` of the evaluation with the best ``metric``."""

    metric: str = "AP"
    mode: Literal["max", "min"] = "max"


@dataclass
class EarlyStopCfg:
    """Stop after ``patience`` evaluations without an improvement of ``metric`` by more than ``min_delta``."""

    metric: str = "AP"
    patience: int = 3
    min_delta: float = 0.0
    mode: Literal["max", "min"] = "max"


@dataclass
class Recipe:
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    schedule: ScheduleCfg = field(default_factory=ScheduleCfg)
    batch_size: int = 2  # per process
    workers: int = 2  # data-loading processes per training process
    seed: int = 0
    amp: bool = False  # bf16 autocast on CPU, fp16 autocast + GradScaler on CUDA
    device: str = "auto"  # auto | cpu | cuda
    output_dir: str = ""
    eval_interval: int = 0  # iterations; 0: evaluate only at the end
    # Images per evaluation step. 1 by default, as MMDetection tests: in a batch of mixed sizes the
    # padding changes the features at the smaller images' edges, so the AP would depend on batching.
    eval_batch_size: int = 1
    checkpoint_interval: int = 500  # iterations; the last checkpoint is always written
    # Iterations whose checkpoint is also kept, as checkpoint_iter{N}.pt beside checkpoint.pt (MMDetection
    # keeps iter_{N}.pth): a run's state part-way through, e.g. a teacher stopped half-way.
    keep_checkpoints: list[int] = field(default_factory=list)
    log_interval: int = 20
    teacher: TeacherCfg | None = None
    distill: DistillCfg | None = None
    ema: EmaCfg | None = None  # EMA of the student's weights; evaluations and the final weights use it
    best: BestCfg | None = None  # best.safetensors + best.json of the best evaluation
    early_stop: EarlyStopCfg | None = None  # needs eval_interval > 0
    tensorboard: bool = False  # scalars to OUTPUT_DIR/tensorboard/ (pip install kdzoo[tensorboard])
    report: bool = True  # OUTPUT_DIR/report/ after the final evaluation: per-class AP, PR curves, confusion matrix

    def validate(self) -> "Recipe":
        """Cross-field checks that the types alone cannot express."""
        s = self.schedule
        if not self.model.name:
            raise RecipeError("model.name is required (a registry name, see kdzoo.list_detectors())")
        if (s.epochs is None) == (s.iters is None):
            raise RecipeError(f"schedule: give exactly one of 'epochs' or 'iters' (got epochs={s.epochs}, iters={s.iters})")
        for key in ("epochs", "iters"):
            v = getattr(s, key)
            if v is not None and v <= 0:
                raise RecipeError(f"schedule.{key} must be > 0, got {v}")
        if s.lr <= 0:
            raise RecipeError(f"schedule.lr must be > 0, got {s.lr}")
        if s.steps != sorted(s.steps) or any(x <= 0 for x in s.steps):
            raise RecipeError(f"schedule.steps must be increasing positive numbers, got {s.steps}")
        if not 0 < s.warmup_ratio <= 1:
            raise RecipeError(f"schedule.warmup_ratio must be in (0, 1], got {s.warmup_ratio}")
        if s.grad_clip is not None and s.grad_clip <= 0:
            raise RecipeError(f"schedule.grad_clip must be > 0 or null, got {s.grad_clip}")
        for key in ("batch_size", "eval_batch_size", "log_interval"):
            if getattr(self, key) <= 0:
                raise RecipeError(f"{key} must be > 0, got {getattr(self, key)}")
        k = self.keep_checkpoints
        if any(isinstance(x, bool) or not isinstance(x, int) or x <= 0 for x in k) or k != sorted(set(k)):
            raise RecipeError(f"keep_checkpoints must be increasing positive iterations, got {k}")
        if k and s.iters is not None and k[-1] > s.iters:
            raise RecipeError(f"keep_checkpoints: iteration {k[-1]} is past the end of the schedule "
                              f"(schedule.iters={s.iters})")
        for key in ("workers", "eval_interval", "checkpoint_interval", "warmup_iters"):
            obj = s if key == "warmup_iters" else self
            if getattr(obj, key) < 0:
                raise RecipeError(f"{'schedule.' if obj is s else ''}{key} must be >= 0, got {getattr(obj, key)}")
        if not 0.0 <= self.data.flip <= 1.0:
            raise RecipeError(f"data.flip must be a probability in [0, 1], got {self.data.flip}")
        for key, v in (("data.input_size", self.data.input_size), *((f"data.train_sizes[{i}]", x) for i, x in enumerate(self.data.train_sizes or []))):
            if v is not None and (len(v) != 2 or min(v) <= 0):
                raise RecipeError(f"{key} must be [long, short] with positive sides, got {v}")
        if not self.data.root:
            raise RecipeError("data.root is required (the dataset directory)")
        if not self.output_dir:
            raise RecipeError("output_dir is required (where the run is written)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise RecipeError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if (self.teacher is None) != (self.distill is None):
            raise RecipeError("'teacher' and 'distill' go together: a distillation recipe needs both sections")
        if self.teacher is not None:
            if not self.teacher.checkpoint and not (self.teacher.pretrained and self.teacher.name):
                raise RecipeError("teacher.checkpoint is required (a run directory or a weights file), "
                                  "or set teacher.name with teacher.pretrained: true")
            if not self.teacher.checkpoint and not self.teacher.name:
                raise RecipeError("teacher.name is required when teacher.checkpoint is not a run directory")
            if not self.distill.method:
                raise RecipeError("distill.method is required (e.g. 'crosskd')")
        self._check_hooks()
        self.check_kwargs()
        return self

    def _check_hooks(self) -> None:
        """``ema``, ``best`` and ``early_stop``: ranges, metric names, and what early stopping needs."""
        e = self.ema
        if e is not None:
            if not 0.0 < e.decay < 1.0:
                raise RecipeError(f"ema.decay must be in (0, 1), got {e.decay}")
            if not 0.0 <= e.min_decay <= e.decay:
                raise RecipeError(f"ema.min_decay must be in [0, ema.decay={e.decay}], got {e.min_decay}")
            for key in ("warmup_gamma", "warmup_power"):
                if getattr(e, key) <= 0:
                    raise RecipeError(f"ema.{key} must be > 0, got {getattr(e, key)}")
        for key in ("best", "early_stop"):
            cfg = getattr(self, key)
            if cfg is not None and cfg.metric not in EVAL_METRICS:
                close = [m for m in EVAL_METRICS if m.lower() == cfg.metric.lower()] or \
                    difflib.get_close_matches(cfg.metric, EVAL_METRICS, n=3, cutoff=0.6)
                hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                raise RecipeError(f"{key}.metric: unknown evaluation metric {cfg.metric!r}.{hint} "
                                  f"Expected one of {', '.join(EVAL_METRICS)}")
        s = self.early_stop
        if s is not None:
            if s.patience < 1:
                raise RecipeError(f"early_stop.patience must be >= 1 (evaluations without improvement), got {s.patience}")
            if s.min_delta < 0:
                raise RecipeError(f"early_stop.min_delta must be >= 0, got {s.min_delta}")
            if self.eval_interval <= 0:
                raise RecipeError("early_stop needs periodic evaluations: set eval_interval > 0 (iterations "
                                  "between evaluations; early_stop.patience counts evaluations)")

    def check_kwargs(self) -> None:
        """Check ``model.kwargs``, ``teacher.kwargs`` and ``distill.options`` against the keyword
        arguments of the registered builder / the distiller, so that a typo fails when the recipe is
        loaded rather than after the datasets are built."""
        from .registry import is_detector, list_detectors

        def arch_of(name: str, key: str) -> str | None:
            if name.startswith(("hf-hub:", "local-dir:")):
                return None  # the architecture is in a config.json that may not be reachable yet
            if not is_detector(name):
                arch = name.partition(".")[0]
                close = difflib.get_close_matches(arch, list_detectors(), n=3, cutoff=0.6)
                hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                raise RecipeError(f"{key}: unknown detector {arch!r}.{hint} See kdzoo.list_detectors() for all names.")
            return name

        arch = arch_of(self.model.name, "model.name")
        if arch is not None:
            _check_names(self.model.kwargs, builder_kwargs(arch), "model.kwargs", f"detector {arch!r}")
        t = self.teacher
        if t is not None:
            if t.name:
                arch = arch_of(t.name, "teacher.name")
            else:  # a run directory: its config.json names the architecture (kdzoo.hub explains an unknown one)
                arch = _run_dir_architecture(t.checkpoint)
                arch = arch if arch and is_detector(arch) else None
            if arch is not None:
                _check_names(t.kwargs, builder_kwargs(arch), "teacher.kwargs", f"detector {arch!r}")
        if self.distill is not None:
            from .distill import _DISTILLERS, list_distillers

            method = self.distill.method
            if method not in _DISTILLERS:
                close = difflib.get_close_matches(method, list_distillers(), n=3, cutoff=0.6)
                hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                raise RecipeError(f"distill.method: unknown distillation method {method!r}.{hint} "
                                  f"Available: {', '.join(list_distillers())}")
            _check_names(self.distill.options, _callable_kwargs(_DISTILLERS[method], skip=("student", "teacher")),
                         "distill.options", f"distiller {method!r}")

    def check_paths(self) -> None:
        """Fail early, naming the recipe key, when a data path does not exist."""
        d = self.data
        if not Path(d.root).is_dir():
            raise RecipeError(f"data.root: dataset directory {d.root!r} does not exist"
                              + ("" if d.shapes is None else " (it is generated when data.shapes is set)"))
        if d.classes is not None and d.format != "voc":
            raise RecipeError(f"data.classes: only data.format: voc takes a class list; a {d.format} dataset names its "
                              "classes itself (yolo: data.yaml 'names', coco: 'categories')")
        if d.shapes is not None and d.format != "coco":
            raise RecipeError(f"data.shapes generates a COCO dataset but data.format is {d.format!r}; expected "
                              "data.format: coco (or no data.shapes)")
        if d.format == "coco":
            for key, is_dir in (("train_images", True), ("train_ann", False), ("val_images", True), ("val_ann", False)):
                p = d.path(key)
                if not (p.is_dir() if is_dir else p.is_file()):
                    raise RecipeError(f"data.{key}: {'directory' if is_dir else 'file'} {str(p)!r} does not exist")
        elif d.format == "yolo":  # docs/datasets.md
            from .data.yolo import DATA_YAML, load_data_yaml, yolo_split_paths

            if not (Path(d.root) / DATA_YAML).is_file():
                raise RecipeError(f"data.root: {d.root!r} has no {DATA_YAML}; data.format: yolo expects the folder "
                                  "holding the YOLO data.yaml")
            try:
                load_data_yaml(d.root)
            except ValueError as e:
                raise RecipeError(f"data.root: {e}") from None
            for key in ("train_split", "val_split"):
                try:
                    yolo_split_paths(d.root, getattr(d, key))
                except (ValueError, OSError) as e:
                    raise RecipeError(f"data.{key}: {e}") from None
        else:  # voc
            for sub in ("Annotations", "JPEGImages"):
                if not (Path(d.root) / sub).is_dir():
                    raise RecipeError(f"data.root: {d.root!r} has no {sub}/ folder; data.format: voc expects the VOC "
                                      "year folder (Annotations/, JPEGImages/, ImageSets/Main/)")
            for key in ("train_split", "val_split"):
                p = Path(d.root) / "ImageSets" / "Main" / f"{getattr(d, key)}.txt"
                if not p.is_file():
                    raise RecipeError(f"data.{key}: VOC split file {str(p)!r} does not exist "
                                      "(expected ImageSets/Main/<split>.txt)")
            if d.classes is not None and (not d.classes or len(set(d.classes)) != len(d.classes)):
                raise RecipeError(f"data.classes: expected a non-empty list of distinct class names, got {d.classes}")
        if self.teacher is not None and self.teacher.checkpoint and not Path(self.teacher.checkpoint).exists():
            raise RecipeError(f"teacher.checkpoint: {self.teacher.checkpoint!r} does not exist "
                              "(expected a run directory with config.json + model.safetensors, or a weights file)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- builder kwargs
def _check_names(given: Mapping[str, Any], allowed: frozenset[str] | None, key: str, what: str) -> None:
    if allowed is None:  # the builder's keyword arguments could not be determined: leave it to the builder
        return
    for name in given:
        if name not in allowed:
            close = difflib.get_close_matches(str(name), sorted(allowed), n=3, cutoff=0.6)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise RecipeError(f"{key}.{name}: {what} takes no keyword argument {name!r}.{hint} "
                              f"Allowed: {', '.join(sorted(allowed))}")


def _run_dir_architecture(checkpoint: str) -> str:
    """The architecture in a teacher run directory's config.json; '' when it cannot be read (yet)."""
    try:
        return str(json.loads((Path(checkpoint) / "config.json").read_text()).get("architecture") or "")
    except (OSError, ValueError, AttributeError):
        return ""


# create_detector passes these to every builder itself; a recipe cannot give them as kwargs.
_CREATE_DETECTOR_ARGS = frozenset({"pretrained", "pretrained_cfg"})


def builder_kwargs(name: str) -> frozenset[str] | None:
    """The keyword arguments ``kdzoo.create_detector(name, **kwargs)`` accepts: those of the family's
    ``BUILD_FN`` (``build_dense_detector`` with the family's head class, or ``build_faster_rcnn``),
    followed through every call that forwards its ``**kwargs`` (``build_dense_detector`` -> the head
    class' ``__init__`` -> ``DenseHead.__init__``), less the arguments the entry point passes itself.
    ``None`` when the chain cannot be followed (a ``**kwargs`` consumed in place, or a callee that
    cannot be resolved statically)."""
    import sys

    from . import registry

    try:
        arch, _ = registry.resolve_name(name)
    except KeyError:
        return None
    build = getattr(sys.modules[registry.get_entrypoint(arch).__module__], "BUILD_FN", None)
    bound: tuple[tuple[str, Any], ...] = ()
    if isinstance(build, functools.partial):
        positional = _positional_params(build.func) or []
        bound = tuple(sorted((p, v) for p, v in zip(positional, build.args) if isinstance(v, type)))
        skip = set(positional[:len(build.args)]) | set(build.keywords)
        build = build.func
    else:
        skip = set()
    if build is None:
        return None
    names = _accepted(build, bound, 0)
    return None if names is None else names - _CREATE_DETECTOR_ARGS - skip - {"backbone"}


def _callable_kwargs(obj: Any, skip: tuple[str, ...] = ()) -> frozenset[str] | None:
    names = _accepted(obj, (), 0)
    return None if names is None else names - frozenset(skip)


_NOT_FOUND = object()


@functools.lru_cache(maxsize=None)
def _accepted(obj: Any, bound: tuple[tuple[str, Any], ...], depth: int) -> frozenset[str] | None:
    """Keyword names ``obj`` (a function, or a class through its ``__init__``) accepts. ``bound``:
    parameters whose value the caller passed (a head class given to ``build_dense_detector``)."""
    if depth > 12:
        return None
    owner: type | None = None
    if isinstance(obj, type):
        owner = next((c for c in obj.__mro__ if "__init__" in c.__dict__), object)
        if owner is object:
            return frozenset()
        fn, concrete = owner.__dict__["__init__"], obj
    elif isinstance(obj, tuple):  # (function, defining class, concrete class): a method reached by super()
        fn, owner, concrete = obj
    elif inspect.isfunction(obj):
        fn, concrete = obj, None
    else:
        return None
    fn = inspect.unwrap(fn)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if owner is not None:
        params = params[1:]  # self
    P = inspect.Parameter
    names = {p.name for p in params if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)}
    var_kw = next((p.name for p in params if p.kind == P.VAR_KEYWORD), None)
    if var_kw is None:
        return frozenset(names)
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return None
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and any(k.arg is None and isinstance(k.value, ast.Name) and k.value.id == var_kw for k in node.keywords)]
    if not calls:
        return None  # the **kwargs are used in place: any name may be meant
    env = dict(bound)
    for call in calls:
        target = _resolve(call.func, fn, env, owner, concrete)
        if target is None or any(isinstance(a, ast.Starred) for a in call.args):
            return None
        positional = _positional_params(target)
        if positional is None or len(call.args) > len(positional):
            return None
        passed = {}
        for param, arg in zip(positional, call.args):
            value = _resolve(arg, fn, env, owner, concrete)
            if isinstance(value, type):
                passed[param] = value
        sub = _accepted(target, tuple(sorted(passed.items(), key=lambda kv: kv[0])), depth + 1)
        if sub is None:
            return None
        names |= sub - {k.arg for k in call.keywords if k.arg} - set(positional[:len(call.args)])
    return frozenset(names)


def _positional_params(target: Any) -> list[str] | None:
    if isinstance(target, type):
        owner = next((c for c in target.__mro__ if "__init__" in c.__dict__), object)
        fn, method = owner.__dict__.get("__init__"), True
    elif isinstance(target, tuple):
        fn, method = target[0], True
    else:
        fn, method = target, False
    try:
        params = list(inspect.signature(inspect.unwrap(fn)).parameters.values())
    except (TypeError, ValueError):
        return None
    P = inspect.Parameter
    return [p.name for p in params[1 if method else 0:] if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]


def _resolve(node: ast.expr, fn: Callable[..., Any], env: dict[str, Any], owner: type | None,
             concrete: type | None) -> Any:
    """The object a call's function (or argument) expression names, as far as it is static:
    a bound parameter, a global of ``fn``'s module, an attribute of one, or ``super().method``."""
    if isinstance(node, ast.Name):
        if node.id in env:
            return env[node.id]
        value = fn.__globals__.get(node.id, _NOT_FOUND)
        return None if value is _NOT_FOUND else value
    if isinstance(node, ast.Attribute):
        base = node.value
        if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super" and not base.args:
            if owner is None or concrete is None:
                return None
            mro = concrete.__mro__
            for cls in mro[mro.index(owner) + 1:]:
                if node.attr in cls.__dict__:
                    method = cls.__dict__[node.attr]
                    return (method, cls, concrete) if inspect.isfunction(method) else None
            return None
        parent = _resolve(base, fn, env, owner, concrete)
        if parent is None or not isinstance(parent, types.ModuleType):
            return None
        return getattr(parent, node.attr, None)
    return None


# --------------------------------------------------------------------------- resume
#: Keys a resumed run may change (top-level, or dotted for one key of a section): where and how often
#: it logs, evaluates and saves, how it loads data (workers, the RAM cache), and which evaluation it
#: keeps or stops at (best, early_stop, tensorboard).
#: Every other key (model, data, schedule, batch_size, seed, amp, teacher, distill, ema) defines
#: the run's weights, and ``--resume`` refuses a change to it.
RESUME_SAFE_KEYS = frozenset({"output_dir", "workers", "device", "log_interval", "checkpoint_interval",
                              "keep_checkpoints",
                              "eval_interval", "eval_batch_size", "best", "early_stop", "tensorboard",
                              "report", "data.cache"})

_ABSENT = object()

# Paths given relative in one invocation and absolute in another (``make run`` and the benchmarks
# share run directories) name the same run when they name the same file.
_PATH_KEYS = frozenset({"data.root", "teacher.checkpoint"})


def _same_path(a: Any, b: Any) -> bool:
    if not (isinstance(a, str) and isinstance(b, str) and a and b):
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def resume_changes(stored: Mapping[str, Any], recipe: "Recipe") -> list[tuple[str, Any, Any]]:
    """``(dotted key, stored value, new value)`` for each key of ``recipe`` that differs from the
    ``stored`` recipe (a :meth:`Recipe.to_dict`) and is not in :data:`RESUME_SAFE_KEYS`. Keys the
    stored recipe predates take their defaults; a missing key reads as ``_ABSENT``."""
    try:  # fill in the defaults of keys added since the checkpoint was written
        old: Any = _build(Recipe, _fix_yaml_floats(dict(stored))).to_dict()
    except (RecipeError, TypeError):
        old = dict(stored)
    out: list[tuple[str, Any, Any]] = []
    _diff(old, recipe.to_dict(), "", out)
    return [(k, a, b) for k, a, b in out
            if k.partition(".")[0] not in RESUME_SAFE_KEYS and k not in RESUME_SAFE_KEYS and not (k in _PATH_KEYS and _same_path(a, b))]


def _diff(old: Any, new: Any, prefix: str, out: list[tuple[str, Any, Any]]) -> None:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in [*old, *(k for k in new if k not in old)]:
            _diff(old.get(key, _ABSENT), new.get(key, _ABSENT), f"{prefix}.{key}" if prefix else str(key), out)
    elif _normalise(old) != _normalise(new):
        out.append((prefix, old, new))


def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _normalise(v) for k, v in value.items()}
    return value


def format_value(value: Any) -> str:
    """A recipe value as it reads in a message: YAML-like scalars, ``(absent)`` for a missing key."""
    if value is _ABSENT:
        return "(absent)"
    if isinstance(value, str):
        return repr(value)
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


# --------------------------------------------------------------------------- typed loading
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        if len(args) == 1 and isinstance(value, (dict, list)):  # the inner error is the precise one (a nested key)
            return _convert(value, args[0], key)
        for arg in args:
            try:
                return _convert(value, arg, key)
            except RecipeError:
                continue
        raise RecipeError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if tp is type(None):
        if value is None:
            return None
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise RecipeError(f"{key}: expected one of {_type_name(tp)}, got {value!r}")
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _build(tp, value, key)
    elif origin is list:
        if isinstance(value, (list, tuple)):
            (item,) = typing.get_args(tp)
            return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            kt, vt = typing.get_args(tp)
            return {_convert(k, kt, f"{key} key"): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported recipe field type {tp!r} at {key}")
    raise RecipeError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=3, cutoff=0.6)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise RecipeError(f"unknown recipe key {path!r}.{hint} Allowed keys{' in ' + repr(prefix) if prefix else ''}: "
                              f"{', '.join(allowed)}")
        kwargs[key] = _convert(value, hints[key], path)
    return cls(**kwargs)


# --------------------------------------------------------------------------- overrides
def parse_overrides(items: list[str]) -> list[tuple[list[str], Any]]:
    """``['schedule.lr=0.02', 'model.kwargs.fpn_channels=64']`` -> ``[(['schedule', 'lr'], 0.02), ...]``;
    values are parsed as YAML (``1e-3`` float, ``[320, 320]`` list, ``null``, ``true``)."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not k for k in key.split(".")):
            raise RecipeError(f"override {item!r} is not of the form key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise RecipeError(f"override {item!r}: the value is not valid YAML ({e})") from e
        out.append((key.split("."), _fix_yaml_floats(value)))
    return out


def apply_overrides(data: dict[str, Any], overrides: list[tuple[list[str], Any]]) -> dict[str, Any]:
    for keys, value in overrides:
        node = data
        for i, k in enumerate(keys[:-1]):
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            elif not isinstance(nxt, dict):
                raise RecipeError(f"override {'.'.join(keys)}: {'.'.join(keys[:i + 1])} is a "
                                  f"{type(nxt).__name__}, not a section")
            node = nxt
        node[keys[-1]] = value
    return data


# Scientific notation without a dot ("1e-4"), which YAML 1.1 leaves as a string.
_EXP_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _fix_yaml_floats(obj: Any) -> Any:
    """YAML 1.1 (PyYAML) reads ``1e-4`` as a string; recipes mean the number."""
    if isinstance(obj, dict):
        return {k: _fix_yaml_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fix_yaml_floats(v) for v in obj]
    if isinstance(obj, str) and _EXP_FLOAT.fullmatch(obj):
        return float(obj)
    return obj


def recipe_from_dict(data: dict[str, Any], source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: expected a mapping of recipe keys at the top level, got {type(data).__name__}")
    try:
        return _build(Recipe, _fix_yaml_floats(data)).validate()
    except RecipeError as e:
        raise RecipeError(f"{source}: {e}") from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe (merged over its ``_base_`` recipes, see :func:`resolve_bases`), apply
    ``key.sub=value`` overrides, validate every key and type."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe file {str(path)!r} does not exist")
    data = apply_overrides(resolve_bases(path), parse_overrides(overrides or []))
    return recipe_from_dict(data, source=str(path))


BASE_KEY = "_base_"
DELETE_KEY = "_delete_"


def resolve_bases(path: str | Path) -> dict[str, Any]:
    """The recipe at ``path`` with its ``_base_`` recipes merged in (MMDetection's convention, in YAML).

    ``_base_`` is a path or a list of paths, relative to the recipe's own folder. The bases are merged
    in order (a later one wins), then the recipe itself on top: mappings merge key by key, anything
    else (numbers, strings, lists) is replaced. ``_delete_: true`` inside a mapping replaces the
    base's mapping instead of merging into it. Each file's keys are checked against the schema
    before merging, so an unknown key names the file that wrote it; a cycle or a missing base is an
    error naming the chain. Paths inside a recipe (``data.root`` ...) stay relative to the working
    directory, wherever the file that sets them lives.
    """
    return _resolve_file(Path(path), ())


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from e
    except OSError as e:
        raise RecipeError(f"{path}: cannot be read ({e.strerror or e})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping of recipe keys at the top level, got {type(data).__name__}")
    return data


def _resolve_file(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    key = path.resolve()
    if key in chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(key):], key))
        raise RecipeError(f"{path}: _base_ cycle: {cycle}")
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise RecipeError(f"{path}: _base_ must be a path or a list of paths (relative to {path.parent}), got {bases!r}")
    _check_keys(data, Recipe, "", path)
    merged: dict[str, Any] = {}
    for base in bases:
        base_path = Path(base) if Path(base).is_absolute() else path.parent / base
        if not base_path.is_file():
            raise RecipeError(f"{path}: _base_ {base!r} does not exist (looked for {base_path})")
        merged = _merge(merged, _resolve_file(base_path, (*chain, key)))
    return _strip_delete(_merge(merged, data))


def _check_keys(data: Mapping[str, Any], cls: type, prefix: str, path: Path) -> None:
    """Unknown keys of one recipe file (before merging), with close matches; types are checked later."""
    hints = typing.get_type_hints(cls)
    for k, v in data.items():
        dotted = f"{prefix}.{k}" if prefix else str(k)
        if k == DELETE_KEY and prefix:
            continue
        if k not in hints:
            allowed = list(hints)
            close = difflib.get_close_matches(str(k), allowed, n=3, cutoff=0.6)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise RecipeError(f"{path}: unknown recipe key {dotted!r}.{hint} Allowed keys"
                              f"{' in ' + repr(prefix) if prefix else ''}: {', '.join(allowed)}")
        sub = next((a for a in (hints[k], *typing.get_args(hints[k])) if dataclasses.is_dataclass(a)), None)
        if sub is not None and isinstance(v, dict):
            _check_keys(v, sub, dotted, path)


def _merge(base: dict[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in child.items():
        if isinstance(v, dict) and not v.get(DELETE_KEY) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _strip_delete(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _strip_delete(v) for k, v in data.items() if k != DELETE_KEY}
    return data


def save_recipe(recipe: Recipe, path: str | Path) -> Path:
    """Write the resolved recipe atomically (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(recipe.to_dict(), sort_keys=False)
    atomic_write(path, lambda p: p.write_text(text))
    return path
