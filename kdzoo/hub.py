"""The kdzoo model folder (timm's conventions): its one writer, :func:`save_pretrained`, and its
reader for ``hf-hub:`` and ``local-dir:`` names, :func:`folder_config`.

A kdzoo model directory (what :func:`save_pretrained` writes, for a user, ``kdzoo.convert`` and at
the end of every training run) holds

* ``model.safetensors``: the plain state dict;
* ``config.json``: ``{"architecture": arch, "kwargs": build kwargs, "published_weights": bool,
  "pretrained_cfg": {...}}``, so ``create_detector(architecture, **kwargs)`` rebuilds the model.
  ``published_weights`` is true only for unchanged published weights (``kdzoo.convert``): only then
  does ``pretrained_cfg`` keep the published claims (box AP, source, paper, notes, lineage) of the
  registry tag the model was built from. A config without the key (a training run's, or an older
  save) is trusted only when it looks like :func:`save_pretrained` wrote it; otherwise those claims
  are dropped on load, and the recorded input size is always the one the model really uses;
* ``README.md`` (published directories): the model card, with a ``model-index`` of measured AP;
* a run directory also has ``recipe.yaml`` and ``metrics.jsonl`` (one JSON object per line; eval
  records carry ``"AP"``, COCO box AP in percent, and optionally ``AP50`` ... ``APl``, ``dataset``).

``create_detector('hf-hub:org/name[@revision]')``, ``create_detector('local-dir:path')`` (or a
directory path) build the model from :func:`folder_config` like a registry name.
:mod:`kdzoo.publish` stages a run directory and uploads it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from .checkpoint import atomic_write
from .pretrained import PretrainedCfg
from .registry import is_detector

__all__ = ["folder_config", "save_pretrained", "model_card", "read_config", "cfg_fields", "json_tuples", "as_built",
           "last_eval_metrics", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# Where weights came from, not what they are. A Drive id is kept as provenance (a folder's own
# safetensors file is always read first).
_SOURCE_FIELDS = ("file", "hf_hub_id", "url", "url_hash", "filter_fn")
_PUBLISHED_FIELDS = ("box_ap", "ap_dataset", "source")  # claims that only hold for unchanged weights
# Everything a registry tag says about *its* weights; a model built from the tag but holding other
# weights (trained, fine-tuned) keeps none of it. The license is kept: trained weights do not shed
# the terms of weights they started from, and the architecture's own default is the same.
_CLAIM_FIELDS = _PUBLISHED_FIELDS + ("paper", "notes", "teacher", "distill_method")
_WEIGHT_FIELDS = ("file", "hf_hub_id", "url")  # save_pretrained never stores these; a training run's config does
PUBLISHED_KEY = "published_weights"
_METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# ------------------------------------------------------------------------------- loading
def read_config(path: str | Path) -> dict[str, Any]:
    """Read and validate a kdzoo ``config.json``."""
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{str(path)!r} does not exist: not a kdzoo model directory "
                                f"(expected {CONFIG_NAME} and {WEIGHTS_NAME})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not valid JSON: {e}") from e
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise ValueError(f"{str(path)!r} has no 'architecture' string; expected "
                         '{"architecture": "gfl_r50", "kwargs": {...}, "pretrained_cfg": {...}}')
    for key in ("kwargs", "pretrained_cfg"):
        if not isinstance(config.get(key, {}), dict):
            raise ValueError(f"{str(path)!r}: '{key}' must be a JSON object, got {type(config[key]).__name__}")
    return config


def json_tuples(value: Any) -> Any:
    """JSON arrays back to the tuples the builders were given (``input_size``, ``train_sizes``)."""
    if isinstance(value, list):
        return tuple(json_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: json_tuples(v) for k, v in value.items()}
    return value


def cfg_fields(cfg_dict: Mapping[str, Any]) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(PretrainedCfg)} - {"state_dict", "architecture", "tag"}
    return {k: json_tuples(v) for k, v in cfg_dict.items() if k in known}


def _hub_download(repo_id: str, filename: str, revision: str | None) -> str:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    try:
        return hf_hub_download(repo_id, filename, revision=revision, library_name="kdzoo")
    except RepositoryNotFoundError as e:
        raise FileNotFoundError(f"Hugging Face Hub repository {repo_id!r} was not found (or is private: "
                                "log in with `hf auth login`)") from e
    except RevisionNotFoundError as e:
        raise FileNotFoundError(f"revision {revision!r} of Hub repository {repo_id!r} does not exist") from e
    except LocalEntryNotFoundError as e:  # a subclass of EntryNotFoundError: test it first
        raise ConnectionError(f"{filename!r} of Hub repository {repo_id!r} is neither cached nor downloadable "
                              f"(offline or the Hub is unreachable): {e}") from e
    except EntryNotFoundError as e:
        raise FileNotFoundError(f"Hub repository {repo_id!r} has no file {filename!r}; "
                                "is it a kdzoo model (config.json + model.safetensors)?") from e


def folder_config(name: str, *, pretrained: bool, kwargs: Mapping[str, Any]) -> tuple[str, PretrainedCfg, dict[str, Any]]:
    """``(architecture, pretrained cfg, build kwargs)`` of ``'hf-hub:org/name[@revision]'`` or
    ``'local-dir:path'``: :func:`kdzoo.create_detector` builds the model from them like any
    registry name. The cfg's ``file`` is the folder's weights (downloaded first from the Hub when
    ``pretrained``); ``kwargs`` override the stored build kwargs, and with weights ``num_classes``
    must equal the stored one.
    """
    kind, _, ref = name.partition(":")
    if kind == "hf-hub":
        repo_id, _, revision = ref.partition("@")
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise ValueError(f"{name!r}: expected 'hf-hub:org/name' or 'hf-hub:org/name@revision'")
        config_path = _hub_download(repo_id, CONFIG_NAME, revision or None)
        weights = lambda: _hub_download(repo_id, WEIGHTS_NAME, revision or None)  # noqa: E731
    elif kind == "local-dir":
        directory = Path(ref).expanduser()
        if not directory.is_dir():
            raise FileNotFoundError(f"{name!r}: directory {str(directory)!r} does not exist")
        config_path = directory / CONFIG_NAME

        def weights() -> str:
            if not (directory / WEIGHTS_NAME).is_file():
                raise FileNotFoundError(f"{str(directory)!r} has no {WEIGHTS_NAME}: not a finished kdzoo model "
                                        "directory (a training run writes it when it finishes)")
            return str(directory / WEIGHTS_NAME)

        if not config_path.is_file():
            raise FileNotFoundError(f"{str(directory)!r} is not a kdzoo model directory: expected {CONFIG_NAME} + "
                                    f"{WEIGHTS_NAME} (a training run writes them when it finishes)")
    else:
        raise ValueError(f"{name!r}: expected a 'hf-hub:' or 'local-dir:' source")
    config = read_config(config_path)
    arch = config["architecture"]
    if not is_detector(arch):
        raise ValueError(f"{name!r} was saved from architecture {arch!r}, which this kdzoo does not register; "
                         "upgrade kdzoo or import the module that registers it")
    overlay = {**cfg_fields(config.get("pretrained_cfg", {})), **{f: None for f in _SOURCE_FIELDS}}
    if not _claims_trusted(config, kind, config_path):
        overlay.update({f: None for f in _CLAIM_FIELDS})
    stored_classes = config.get("kwargs", {}).get("num_classes", overlay.get("num_classes"))
    if pretrained and "num_classes" in kwargs and stored_classes is not None and kwargs["num_classes"] != stored_classes:
        raise ValueError(f"{name!r} holds weights for {stored_classes} classes, got num_classes={kwargs['num_classes']}; "
                         "load with pretrained=False to train a new head")
    if kind == "hf-hub":
        overlay["hf_hub_id"] = repo_id
    if pretrained:
        overlay["file"] = weights()
    cfg = PretrainedCfg(architecture=arch, tag="", **overlay)
    return arch, cfg, {**json_tuples(config.get("kwargs", {})), **kwargs}


def _claims_trusted(config: Mapping[str, Any], kind: str, config_path: str | Path) -> bool:
    """Whether the published claims in ``config['pretrained_cfg']`` describe the stored weights.

    :func:`save_pretrained` records ``published_weights`` and has already dropped claims that are
    not the weights' own. Without the key: a training run's config copies the registry tag's whole
    config, weight location included (``file``/``hf_hub_id``/``url``), and has no model card beside
    it; only a config with neither sign (an older :func:`save_pretrained`) is trusted."""
    if PUBLISHED_KEY in config:
        return True
    stored = config.get("pretrained_cfg", {})
    if any(stored.get(f) for f in _WEIGHT_FIELDS):
        return False
    return kind == "hf-hub" or (Path(config_path).parent / "README.md").is_file()


def as_built(model: nn.Module) -> dict[str, Any]:
    """Config fields that must describe the model as it is built (class count, input size), whatever
    the registry tag it came from says."""
    fields: dict[str, Any] = {"num_classes": model.num_classes}
    size = getattr(getattr(model, "transform", None), "size", None)
    if size:
        fields["input_size"] = tuple(int(v) for v in size)
    return fields


def _arch(model: nn.Module) -> str:
    arch = getattr(model, "arch_name", "")
    if not arch or not is_detector(arch):
        raise ValueError(f"model has arch_name={arch!r}, not a registered architecture; "
                         "build it with kdzoo.create_detector() so it can be rebuilt from config.json")
    return arch


def _own_cfg(model: nn.Module, keep_published: bool) -> PretrainedCfg:
    """The model's pretrained config as it describes the model's current weights: no weight location,
    its own class count and input size, and the registry tag's claims only when ``keep_published``."""
    cfg: PretrainedCfg = getattr(model, "pretrained_cfg", None) or PretrainedCfg()
    updates: dict[str, Any] = {f: None for f in _SOURCE_FIELDS}
    updates.update(architecture=_arch(model), **as_built(model))
    if not keep_published:
        updates.update({f: None for f in _CLAIM_FIELDS})
    return dataclasses.replace(cfg, **updates)


def _config(model: nn.Module, cfg: PretrainedCfg, keep_published: bool) -> dict[str, Any]:
    return {"architecture": _arch(model), "kwargs": _jsonable(dict(getattr(model, "build_kwargs", {})), "build_kwargs"),
            PUBLISHED_KEY: bool(keep_published), "pretrained_cfg": _jsonable(cfg.to_dict(), "pretrained_cfg")}


# ------------------------------------------------------------------------------- saving
def _jsonable(value: Any, where: str) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{where} = {value!r} ({type(value).__name__}) cannot be stored in {CONFIG_NAME}; "
                    "build the model with JSON-compatible kwargs (numbers, strings, lists, dicts)")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _headline(metrics: Mapping[str, Any] | None) -> float | None:
    if not metrics:
        return None
    for key in ("AP", "box_ap", "bbox_mAP"):
        v = metrics.get(key)
        if isinstance(v, (int, float)) and not math.isnan(v):
            return float(v)
    return None


def save_pretrained(
    model: nn.Module,
    save_directory: str | Path,
    *,
    metrics: Mapping[str, Any] | None = None,
    lineage: Mapping[str, Any] | None = None,
    recipe_path: str | Path | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    keep_published: bool = False,
    notes: str | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` (and ``recipe.yaml``): the one
    writer of a model folder (users, ``kdzoo.convert``, ``kdzoo.publish`` and a training run's final
    weights all come through here).

    ``metrics``: measured results, ``{"AP": 41.2, "AP50": ..., "dataset": "coco"}`` (percent);
    they become ``pretrained_cfg.box_ap`` and the card's ``model-index``. ``lineage``:
    ``{"teacher": ..., "method": ...}``; with ``recipe_path`` the recipe is copied as
    ``recipe.yaml`` and its sha256 recorded. ``keep_published=True`` keeps the published AP, source,
    paper, notes and lineage of the model's pretrained config (only right when the weights are those
    published ones, as ``kdzoo.convert`` writes them); otherwise none of them is kept. The recorded
    input size is always the model's own. ``state_dict``: the weights to write instead of
    ``model.state_dict()`` (a training run's EMA or a distiller's plain-student weights).
    """
    cfg = _own_cfg(model, keep_published)
    build_kwargs = _jsonable(dict(getattr(model, "build_kwargs", {})), "build_kwargs")
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    updates: dict[str, Any] = {}
    ap = _headline(metrics)
    if ap is not None:
        updates.update(box_ap=round(ap, 2), ap_dataset=str(metrics.get("dataset") or "unspecified"),
                       source="measured with kdzoo.evaluation")
    lineage = dict(lineage or {})
    if recipe_path is not None:
        recipe_path = Path(recipe_path)
        if not recipe_path.is_file():
            raise FileNotFoundError(f"recipe_path {str(recipe_path)!r} does not exist")
        lineage.setdefault("recipe", recipe_path.name)
        lineage["recipe_sha256"] = file_sha256(recipe_path)
        if recipe_path.resolve() != (out / "recipe.yaml").resolve():
            atomic_write(out / "recipe.yaml", lambda tmp: shutil.copyfile(recipe_path, tmp))
    if lineage.get("teacher"):
        updates["teacher"] = str(lineage["teacher"])
    if lineage.get("method"):
        updates["distill_method"] = str(lineage["method"])
    if notes:
        updates["notes"] = notes
    cfg = dataclasses.replace(cfg, **updates)

    from safetensors.torch import save_file

    weights = model.state_dict() if state_dict is None else state_dict
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}
    atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    config = _config(model, cfg, keep_published)
    atomic_write(out / CONFIG_NAME, lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"))
    card = model_card(cfg, build_kwargs, metrics=metrics, lineage=lineage, repo_id=repo_id, license=license,
                      num_params=sum(t.numel() for t in tensors.values()))
    atomic_write(out / "README.md", lambda tmp: tmp.write_text(card))
    return out


# --------------------------------------------------------------------------- model card
def model_card(cfg: PretrainedCfg, build_kwargs: Mapping[str, Any], *, metrics: Mapping[str, Any] | None = None,
               lineage: Mapping[str, Any] | None = None, repo_id: str | None = None, license: str | None = None,
               num_params: int | None = None) -> str:
    """README.md with YAML metadata: ``library_name``, ``pipeline_tag``, ``license``, ``datasets``,
    ``tags`` and a ``model-index`` holding the measured box AP (or a published one, named as such)."""
    import yaml

    lineage = dict(lineage or {})
    name = repo_id.split("/")[-1] if repo_id else cfg.architecture
    family = cfg.architecture.split("_")[0]
    dataset = cfg.ap_dataset or (metrics or {}).get("dataset") or ""
    tags = ["kdzoo", "object-detection", family] + (["knowledge-distillation", str(lineage["method"])] if lineage.get("method") else [])
    meta: dict[str, Any] = {"library_name": "kdzoo", "pipeline_tag": "object-detection",
                            "license": license or cfg.license or "apache-2.0", "tags": tags}
    if dataset:
        meta["datasets"] = [dataset]
    measured = _headline(metrics)
    if cfg.box_ap is not None:
        metric_values = {"AP": cfg.box_ap} if measured is None else {
            "AP": measured, **{k: metrics[k] for k in _METRIC_NAMES[1:] if isinstance(metrics.get(k), (int, float))}}
        result = {
            "task": {"type": "object-detection", "name": "Object Detection"},
            "dataset": {"type": dataset or "unspecified", "name": dataset or "unspecified", "split": "validation"},
            "metrics": [{"type": "mAP" if k == "AP" else k, "name": "box mAP" if k == "AP" else f"box {k}",
                         "value": round(float(v), 2)} for k, v in metric_values.items() if not math.isnan(float(v))],
        }
        # The Hub requires a URL with a named source: published numbers link to where they were published.
        url = re.search(r"https?://\S+", cfg.source or "") if measured is None else None
        if url:
            result["source"] = {"name": cfg.source, "url": url.group(0).rstrip(").,")}
        meta["model-index"] = [{"name": name, "results": [result]}]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    source = f"hf-hub:{repo_id}" if repo_id else "local-dir:path/to/this/folder"
    lines = [f"---\n{front}---", f"# {name}", "",
             f"A `{cfg.architecture}` object detector ({cfg.num_classes} classes) for "
             "[kdzoo](https://github.com/kdzoo/kdzoo), a timm-style zoo of knowledge-distilled detectors.", ""]
    if measured is not None:
        lines += [f"**Box AP {measured:.1f}** on {dataset or 'the validation set'}, measured with `kdzoo.evaluation` "
                  "(COCO protocol, AP@[.50:.95]).", ""]
    elif cfg.box_ap is not None:
        lines += [f"**Box AP {cfg.box_ap:.1f}** on {dataset or 'COCO val2017'} as published by "
                  f"{cfg.source or 'the original authors'} (not re-measured by kdzoo).", ""]
    else:
        lines += ["No AP has been measured for these weights.", ""]
    if lineage:
        lines += ["## Distillation lineage", ""]
        for key, label in (("teacher", "Teacher"), ("method", "Method"), ("recipe", "Recipe"), ("recipe_sha256", "Recipe sha256")):
            if lineage.get(key):
                lines.append(f"- {label}: `{lineage[key]}`")
        lines.append("")
    lines += ["## Usage", "", "```python", "import torch", "import kdzoo", "",
              f'model = kdzoo.create_detector("{source}", pretrained=True).eval()',
              "image = torch.rand(3, 480, 640)  # RGB, float in 0..1",
              "with torch.no_grad():",
              "    detections = model([image])[0]  # boxes (xyxy pixels), scores, labels (0-based)",
              "```", "", "## Details", "",
              f"- Architecture: `{cfg.architecture}`, build kwargs `{json.dumps(dict(build_kwargs))}`",
              f"- Input: keep-ratio resize to {tuple(cfg.input_size)} (long, short), mean {tuple(cfg.mean)}, "
              f"std {tuple(cfg.std)} (0..255 scale){', BGR' if cfg.bgr else ''}"]
    if num_params:
        lines.append(f"- Parameters and buffers: {num_params / 1e6:.1f} M")
    if cfg.paper:
        lines.append(f"- Paper: {cfg.paper}")
    if cfg.notes:
        lines.append(f"- Notes: {cfg.notes}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------- run directories
def last_eval_metrics(metrics_path: str | Path) -> dict[str, Any] | None:
    """The last record of ``metrics.jsonl`` that carries a box AP, or None."""
    path = Path(metrics_path)
    if not path.is_file():
        return None
    last = None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{str(path)!r} line {n} is not JSON: {e}") from e
        if isinstance(record, dict) and _headline(record) is not None:
            last = record
    return last
