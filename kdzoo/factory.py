"""``create_detector``: the one way from a name to a model (timm's ``create_model``). Every CLI,
the demo, evaluation and the trainer (students and teachers) call it."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch.nn as nn

from .hub import CONFIG_NAME, as_built, folder_config
from .pretrained import PretrainedCfg
from .registry import get_entrypoint, get_pretrained_cfg, is_detector, list_aliases, resolve_name

__all__ = ["create_detector", "parse_source"]

_CFG_FIELDS = frozenset(f.name for f in dataclasses.fields(PretrainedCfg))


def parse_source(name: str | Path) -> str:
    """``name`` as :func:`create_detector` reads it: a directory path becomes ``'local-dir:<path>'``;
    registry names, aliases, ``hf-hub:`` and ``local-dir:`` are returned as they are."""
    text = str(name).strip()
    if not text:
        raise ValueError("empty model name: give a registry name (kdzoo.list_detectors()), a model directory, "
                         "'hf-hub:org/name' or 'local-dir:path'")
    if text.startswith(("hf-hub:", "local-dir:")):
        return text
    path = Path(text).expanduser()
    arch = text.partition(".")[0]
    if is_detector(arch) or arch in list_aliases():
        return text
    if path.is_dir():
        return f"local-dir:{path}"
    if path.exists():
        raise FileNotFoundError(f"{text!r} is a file, not a kdzoo model directory (expected a directory with "
                                f"{CONFIG_NAME} + model.safetensors, a registry name or 'hf-hub:org/name')")
    if "/" in text or text.startswith((".", "~")):
        raise FileNotFoundError(f"{text!r}: no such model directory")
    return text


def create_detector(
    name: str | Path,
    pretrained: bool = False,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a detector, optionally with its weights.

    ``name``: ``arch`` (its default tag: the first with weights), ``arch.tag``, an alias
    (``gfl_r50_crosskd``), ``hf-hub:org/name[@revision]``, ``local-dir:path`` or a directory path
    (a training run, a :func:`kdzoo.save_pretrained` folder). ``pretrained_cfg_overlay`` replaces
    fields of the pretrained config (``dict(file='weights.pth')`` for a local copy). ``kwargs`` go
    to the architecture's builder (``num_classes``, ``feat_channels``, ``score_thr`` ...), over the
    tag's ``build_kwargs`` (an embedded checkpoint's width) or a folder's stored kwargs.
    """
    if pretrained_cfg_overlay:
        unknown = set(pretrained_cfg_overlay) - _CFG_FIELDS
        if unknown:
            raise TypeError(f"pretrained_cfg_overlay has unknown field(s) {sorted(unknown)}; allowed: {sorted(_CFG_FIELDS)}")
    source = parse_source(name)
    if source.startswith(("hf-hub:", "local-dir:")):
        arch, cfg, kwargs = folder_config(source, pretrained=pretrained, kwargs=kwargs)
    else:
        arch, _ = resolve_name(source)
        cfg = get_pretrained_cfg(source)
        kwargs = {**(cfg.build_kwargs or {}), **kwargs}
    if pretrained_cfg_overlay:
        cfg = dataclasses.replace(cfg, **pretrained_cfg_overlay)
    model = get_entrypoint(arch)(pretrained=pretrained, pretrained_cfg=cfg, **kwargs)
    if source.startswith(("hf-hub:", "local-dir:")):
        model.pretrained_cfg = dataclasses.replace(model.pretrained_cfg, **as_built(model))
    return model

