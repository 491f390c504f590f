"""Publishing: a training run directory staged as a model folder (its weights checked by loading
them, the last evaluation as the card's measured AP, the recipe as lineage) and uploaded to the
Hugging Face Hub in one commit. The command line is ``kdzoo publish`` (:mod:`kdzoo.cli.publish`)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch.nn as nn

from .factory import create_detector
from .hub import last_eval_metrics, save_pretrained

__all__ = ["stage_run_dir", "push_to_hub", "run_lineage", "run_dataset"]


def run_lineage(recipe_path: Path) -> dict[str, Any]:
    import yaml

    recipe = yaml.safe_load(recipe_path.read_text()) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"{str(recipe_path)!r} is not a YAML mapping")
    teacher, distill = recipe.get("teacher") or {}, recipe.get("distill") or {}
    lineage = {}
    if teacher:
        lineage["teacher"] = teacher.get("name") or teacher.get("checkpoint")
    if distill:
        lineage["method"] = distill.get("method")
    return {k: v for k, v in lineage.items() if v}


def run_dataset(recipe_path: Path) -> str | None:
    import yaml

    data = (yaml.safe_load(recipe_path.read_text()) or {}).get("data") or {}
    if data.get("shapes") is not None:
        return "kdzoo-shapes (synthetic)"
    return Path(data["root"]).name if data.get("root") else None


def stage_run_dir(run_dir: str | Path, out_dir: str | Path, *, repo_id: str | None = None,
                  license: str | None = None) -> Path:
    """Turn a training run directory into the folder to publish: the weights are loaded into their
    architecture (which checks them), the last eval record of ``metrics.jsonl`` becomes the card's
    measured AP and ``recipe.yaml`` the lineage. ``out_dir`` must be new or empty: the staged folder is
    exactly what is uploaded, and nothing already there (the run itself, the user's files) is replaced."""
    run_dir, out = Path(run_dir), Path(out_dir)
    if (out.exists() or out.is_symlink()) and not (out.is_dir() and not any(out.iterdir())):
        held = sorted(p.name for p in out.iterdir())[:5] if out.is_dir() else []
        raise FileExistsError(f"{out} already exists{' and holds ' + ', '.join(held) if held else ''}; the staged "
                              "folder must hold only what would be uploaded: give a new or empty folder")
    model = create_detector(run_dir, pretrained=True)
    recipe = run_dir / "recipe.yaml"
    metrics = last_eval_metrics(run_dir / "metrics.jsonl")
    if metrics is not None and not metrics.get("dataset") and recipe.is_file():
        metrics = {**metrics, "dataset": run_dataset(recipe)}
    lineage = run_lineage(recipe) if recipe.is_file() else {}
    return save_pretrained(model, out_dir, metrics=metrics, lineage=lineage,
                           recipe_path=recipe if recipe.is_file() else None, repo_id=repo_id, license=license)


def push_to_hub(model_or_run_dir: nn.Module | str | Path, repo_id: str, *, private: bool = False,
                token: str | None = None, commit_message: str = "Upload kdzoo detector",
                revision: str | None = None, **save_kwargs: Any) -> Any:
    """Create ``repo_id`` (if needed) and upload a model or a run directory in one commit.

    A model is written with :func:`save_pretrained` (``save_kwargs``: ``metrics``, ``lineage``,
    ``recipe_path``, ``license``); a run directory with :func:`stage_run_dir`. Returns the
    ``CommitInfo`` of the upload.
    """
    from huggingface_hub import HfApi

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id must be 'org/name', got {repo_id!r}")
    with tempfile.TemporaryDirectory(prefix="kdzoo-push-") as tmp:
        if isinstance(model_or_run_dir, nn.Module):
            save_pretrained(model_or_run_dir, tmp, repo_id=repo_id, **save_kwargs)
        else:
            stage_run_dir(model_or_run_dir, tmp, repo_id=repo_id, license=save_kwargs.get("license"))
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, repo_type="model",
                                 commit_message=commit_message, revision=revision)


if __name__ == "__main__":  # python -m kdzoo.publish: the same as `kdzoo publish`
    import sys

    from kdzoo.cli import run_command

    sys.exit(run_command("publish"))
