"""Checkpoints embedded in the package: ``kdzoo/weights/<arch>.<tag>/`` -> the pretrained cfg ``arch.tag``.

Each folder holds what :func:`kdzoo.hub.save_pretrained` writes (``config.json``, ``README.md``,
``recipe.yaml``) with ``model.safetensors`` stored in fp16 to keep the wheel small; loading
copies the weights into the fp32 model (``load_state_dict`` casts). At ``import kdzoo`` every
folder is registered, so ``create_detector('gfl_r18.shapes', pretrained=True)`` works offline,
with the folder's build kwargs (width, classes, input size) applied.

    python -m kdzoo.embed runs/shapes/gfl_crosskd --name gfl_mnv3s.shapes_crosskd --teacher gfl_r10t.shapes [--out kdzoo/weights]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from .embedded import MAX_TOTAL_BYTES, WEIGHTS_DIR, _check_name, embedded_cfg, list_embedded, register_embedded
from .hub import (CONFIG_NAME, WEIGHTS_NAME, _run_dataset, _run_lineage, last_eval_metrics, load_from_source, read_config,
                  save_pretrained)

__all__ = ["WEIGHTS_DIR", "MAX_TOTAL_BYTES", "embedded_cfg", "register_embedded", "list_embedded", "embed_run", "main"]


def _tree_bytes(path: Path) -> int:
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
    model = load_from_source(f"local-dir:{run_dir}", pretrained=True)
    # Record the input size the model really uses (a recipe gives it as a build kwarg).
    model.pretrained_cfg = dataclasses.replace(model.pretrained_cfg, input_size=tuple(model.transform.size))
    recipe = run_dir / "recipe.yaml"
    metrics = last_eval_metrics(run_dir / "metrics.jsonl")
    if metrics is not None and not metrics.get("dataset") and recipe.is_file():
        metrics = {**metrics, "dataset": _run_dataset(recipe)}
    lineage: dict[str, Any] = _run_lineage(recipe) if recipe.is_file() else {}
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
        total = _tree_bytes(out) - _tree_bytes(target)  # staging is inside out; target gets replaced
        if total > max_total_bytes:
            raise ValueError(f"embedding {name} ({_tree_bytes(staging) / 1e6:.1f} MB) would make {out} "
                             f"{total / 1e6:.1f} MB, over the {max_total_bytes / 1e6:.0f} MB budget")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kdzoo.embed", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="training run directory (config.json + model.safetensors [+ metrics.jsonl, recipe.yaml])")
    p.add_argument("--name", required=True, help="registry name arch.tag, e.g. gfl_r18.shapes")
    p.add_argument("--out", default=str(WEIGHTS_DIR), help="weights folder (default: the package's kdzoo/weights)")
    p.add_argument("--teacher", help="teacher name for the lineage (default: the recipe's teacher)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder of the same name")
    args = p.parse_args(argv)
    try:
        target = embed_run(args.run_dir, args.name, args.out, teacher=args.teacher, overwrite=args.overwrite)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = embedded_cfg(target)[1]
    ap = f"box AP {cfg.box_ap} on {cfg.ap_dataset}" if cfg.box_ap is not None else "no measured AP"
    print(f"wrote {target} ({_tree_bytes(target) / 1e6:.2f} MB, {ap}); "
          f"{Path(args.out)} now holds {_tree_bytes(Path(args.out)) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
