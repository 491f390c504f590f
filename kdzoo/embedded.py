"""Checkpoints embedded in the package (``kdzoo/weights/<arch>.<tag>/``), registered at
``import kdzoo`` as the pretrained configs ``arch.tag``. ``python -m kdzoo.embed`` adds one."""
from __future__ import annotations

import warnings
from pathlib import Path

from .hub import CONFIG_NAME, WEIGHTS_NAME, _cfg_overlay, _tuples, read_config
from .pretrained import PretrainedCfg
from .registry import is_detector, register_pretrained_cfgs, split_name

__all__ = ["WEIGHTS_DIR", "MAX_TOTAL_BYTES", "embedded_cfg", "register_embedded", "list_embedded"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MAX_TOTAL_BYTES = 20 * 1000 * 1000  # the budget for all embedded checkpoints together
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
    overlay = _cfg_overlay(config.get("pretrained_cfg", {}))
    overlay.update(file=str(folder / WEIGHTS_NAME), hf_hub_id=None, url=None, url_hash=None, filter_fn=None,
                   build_kwargs=_tuples(config.get("kwargs", {})))
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
