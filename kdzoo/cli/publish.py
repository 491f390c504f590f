"""Publish a training run to the Hugging Face Hub.

    kdzoo publish RUN_DIR --repo-id org/name [--private] [--dry-run DIR]

The run directory (``model.safetensors``, ``config.json``, ``recipe.yaml``, ``metrics.jsonl``) is
checked by loading its weights into their architecture, then uploaded in one commit with a model
card holding the measured box AP and the distillation lineage. ``--dry-run DIR`` writes the
folder that would be uploaded to ``DIR`` and uploads nothing.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..publish import push_to_hub, stage_run_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a kdzoo run directory (model.safetensors + config.json)")
    parser.add_argument("--repo-id", required=True, help="Hub repository, org/name")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one / HF_TOKEN)")
    parser.add_argument("--license", default=None, help="license id for the card (default apache-2.0)")
    parser.add_argument("--commit-message", default="Upload kdzoo detector")
    parser.add_argument("--dry-run", metavar="DIR", default=None, help="write the folder to DIR instead of uploading")


def run(args: argparse.Namespace) -> int:
    if not Path(args.run_dir).is_dir():
        raise FileNotFoundError(f"run directory {args.run_dir!r} does not exist")
    if args.dry_run:
        out = stage_run_dir(args.run_dir, args.dry_run, repo_id=args.repo_id, license=args.license)
        print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))} (nothing uploaded)")
    else:
        info = push_to_hub(args.run_dir, args.repo_id, private=args.private, token=args.token,
                           commit_message=args.commit_message, license=args.license)
        print(f"uploaded {args.run_dir} to https://huggingface.co/{args.repo_id} ({getattr(info, 'commit_url', info)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    from . import run_command

    return run_command("publish", argv)
