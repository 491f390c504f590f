"""Checkpoints embedded in the package: ``kdzoo/weights/<arch>.<tag>/`` -> the pretrained cfg ``arch.tag``.

Each folder holds what :func:`kdzoo.hub.save_pretrained` writes (``config.json``, ``README.md``,
``recipe.yaml``) with ``model.safetensors`` stored in fp16 to keep the wheel small; loading
copies the weights into the fp32 model (``load_state_dict`` casts). At ``import kdzoo`` every
folder is registered, so ``create_detector('gfl_r18.shapes', pretrained=True)`` works offline,
with the folder's build kwargs (width, classes, input size) applied. :func:`embed_run` (the
command ``kdzoo embed RUN_DIR --name arch.tag``) adds one from a training run.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from .factory import create_detector
from .hub import CONFIG_NAME, WEIGHTS_NAME, cfg_fields, json_tuples, last_eval_metrics, read_config, save_pretrained
from .pretrained import PretrainedCfg
from .publish import run_dataset, run_lineage
from .registry import is_detector, register_pretrained_cfgs, split_name

__all__ = ["WEIGHTS_DIR", "MAX_TOTAL_BYTES", "embedded_cfg", "register_embedded", "list_embedded", "embed_run", "tree_bytes"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MAX_TOTAL_BYTES = 20 * 1000 * 1000  # the package budget for all embedded checkpoints together
_registered: list[str] = []


def _check_name(name: str) -> tuple[str, str]:
    arch, tag = split_name(name)
    if not arch or not tag or "/" in name or name.startswith("."):
        raise ValueError(f"embedded checkpoint name must be 'arch.tag' (e.g. 'gfl_r18.shapes'), got {name!r}")
    return arch, tag


def embedded_cfg(folder: str | Path) -> tuple[str, PretrainedCfg]:
    """``('arch.tag', cfg)`` for one embedded folder: metadata from its ``config.json``, weights from
    its safetensors file, build kwargs applied by ``create_detector``."""
    folder = Path(folder)
    arch, _ = _check_name(folder.name)
    config = read_config(folder / CONFIG_NAME)
    if config["architecture"] != arch:
        raise ValueError(f"{folder}: the folder name says {arch!r} but config.json says {config['architecture']!r}")
    if not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{folder}: {WEIGHTS_NAME} is missing")
    overlay = cfg_fields(config.get("pretrained_cfg", {}))
    overlay.update(file=str(folder / WEIGHTS_NAME), hf_hub_id=None, url=None, url_hash=None, filter_fn=None,
                   build_kwargs=json_tuples(config.get("kwargs", {})))
    return folder.name, PretrainedCfg(**overlay)


def register_embedded(root: str | Path = WEIGHTS_DIR) -> list[str]:
    """Register every ``root/<arch>.<tag>/`` folder; a broken folder is skipped with a warning so that
    ``import kdzoo`` never fails because of package data."""
    root = Path(root)
    names = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not folder.is_dir() or folder.name.startswith((".", "_")):
            continue  # staging directories of an interrupted `kdzoo.embed`, __pycache__
        try:
            name, cfg = embedded_cfg(folder)
            if not is_detector(split_name(name)[0]):
                raise ValueError(f"architecture {split_name(name)[0]!r} is not registered")
        except (OSError, ValueError, TypeError) as e:
            warnings.warn(f"kdzoo: skipping embedded checkpoint {folder}: {e}", stacklevel=2)
            continue
        register_pretrained_cfgs({name: cfg}, default_ok=False)
        names.append(name)
    _registered.extend(n for n in names if n not in _registered)
    return names


def list_embedded() -> list[str]:
    """Names of the embedded checkpoints registered so far (the demo's default models)."""
    return list(_registered)


# --------------------------------------------------------------------------- adding one
def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _to_fp16(path: Path) -> None:
    """Rewrite a safetensors file with floating tensors in fp16 (integer buffers stay as they are)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    for key, t in tensors.items():
        if t.is_floating_point():
            if t.numel() and t.abs().max() > torch.finfo(torch.float16).max:
                raise ValueError(f"{key} has values beyond the fp16 range; it cannot be embedded in fp16")
            tensors[key] = t.half().contiguous()
    save_file(tensors, str(path), metadata={"format": "pt", "dtype": "float16"})


def embed_run(run_dir: str | Path, name: str, out: str | Path = WEIGHTS_DIR, *, teacher: str | None = None,
              overwrite: bool = False, max_total_bytes: int = MAX_TOTAL_BYTES) -> Path:
    """Convert a training run directory into ``out/<name>/`` (fp16 weights, config, model card with the
    run's last measured AP and lineage); refuses when ``out`` would exceed ``max_total_bytes``."""
    arch, tag = _check_name(name)
    run_dir, out = Path(run_dir), Path(out)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist")
    config = read_config(run_dir / CONFIG_NAME)
    if config["architecture"] != arch:
        raise ValueError(f"{run_dir} holds a {config['architecture']!r} model; name it "
                         f"'{config['architecture']}.{tag}', not {name!r}")
    target = out / name
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass --overwrite to replace it")
    model = create_detector(run_dir, pretrained=True)
    # Record the input size the model really uses (a recipe gives it as a build kwarg).
    model.pretrained_cfg = dataclasses.replace(model.pretrained_cfg, input_size=tuple(model.transform.size))
    recipe = run_dir / "recipe.yaml"
    metrics = last_eval_metrics(run_dir / "metrics.jsonl")
    if metrics is not None and not metrics.get("dataset") and recipe.is_file():
        metrics = {**metrics, "dataset": run_dataset(recipe)}
    lineage: dict[str, Any] = run_lineage(recipe) if recipe.is_file() else {}
    if teacher:
        lineage["teacher"] = teacher
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the embedded folder follows the user's umask
    try:
        save_pretrained(model, staging, metrics=metrics, lineage=lineage,
                        recipe_path=recipe if recipe.is_file() else None,
                        notes=f"embedded in kdzoo as `{name}` (weights stored in fp16)")
        _to_fp16(staging / WEIGHTS_NAME)
        card = staging / "README.md"
        card.write_text(card.read_text() + (
            f"\n## Embedded checkpoint\n\nShipped inside the kdzoo package as `{name}` (fp16 weights, upcast on "
            f"load):\n\n```python\nmodel = kdzoo.create_detector(\"{name}\", pretrained=True).eval()\n```\n"))
        total = tree_bytes(out) - tree_bytes(target)  # staging is inside out; target gets replaced
        if total > max_total_bytes:
            raise ValueError(f"embedding {name} ({tree_bytes(staging) / 1e6:.1f} MB) would make {out} "
                             f"{total / 1e6:.1f} MB, over the {max_total_bytes / 1e6:.0f} MB budget")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target
