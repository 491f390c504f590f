"""Detector registry in timm's style: ``arch.tag`` names, fnmatch listing, one build path.

The architecture (``gfl_r50``) picks the code; the tag (``mmdet_coco``, ``shapes``) picks a
:class:`~kdzoo.pretrained.PretrainedCfg`, i.e. which weights and metadata to use.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import sys
from collections import defaultdict
from typing import Any, Callable

import torch.nn as nn

from .pretrained import PretrainedCfg

__all__ = [
    "register_detector",
    "register_pretrained_cfgs",
    "create_detector",
    "list_detectors",
    "list_pretrained",
    "get_pretrained_cfg",
    "split_name",
    "is_detector",
]

_entrypoints: dict[str, Callable[..., nn.Module]] = {}
_module_of: dict[str, str] = {}
# arch -> {tag: cfg}; the first tag registered is the default one.
_pretrained: dict[str, dict[str, PretrainedCfg]] = defaultdict(dict)
# Tags never chosen for a bare ``arch`` (embedded demo weights must not change what ``gfl_r18`` builds).
_not_default: set[tuple[str, str]] = set()


def register_detector(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator registering a builder ``fn(pretrained=False, **kwargs)`` under its name."""
    name = fn.__name__
    if name in _entrypoints:
        raise ValueError(f"detector {name!r} is registered twice")
    _entrypoints[name] = fn
    _module_of[name] = fn.__module__.split(".")[-1]
    mod = sys.modules[fn.__module__]
    if hasattr(mod, "__all__") and name not in mod.__all__:
        mod.__all__.append(name)
    return fn


def register_pretrained_cfgs(cfgs: dict[str, PretrainedCfg], default_ok: bool = True) -> None:
    """Register weight configs keyed ``arch.tag`` (or bare ``arch`` for a config without weights).
    ``default_ok=False``: the tags are only used when named, never as the bare architecture's default."""
    for full_name, cfg in cfgs.items():
        arch, tag = split_name(full_name)
        tag = tag or "default"
        _pretrained[arch][tag] = dataclasses.replace(cfg, architecture=arch, tag=tag)
        if not default_ok:
            _not_default.add((arch, tag))


def split_name(name: str) -> tuple[str, str]:
    """``'gfl_r50.mmdet_coco'`` -> ``('gfl_r50', 'mmdet_coco')``; no tag gives ``''``."""
    arch, _, tag = name.partition(".")
    return arch, tag


def is_detector(name: str) -> bool:
    return split_name(name)[0] in _entrypoints


def _unknown(name: str, candidates: list[str], what: str) -> KeyError:
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    return KeyError(f"Unknown {what} {name!r}.{hint} See kdzoo.list_detectors() for all names.")


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The config selected by ``arch.tag`` (the default tag when none is given)."""
    arch, tag = split_name(name)
    if arch not in _entrypoints:
        raise _unknown(arch, list(_entrypoints), "detector")
    tags = _pretrained.get(arch, {})
    if not tag:
        for t, cfg in tags.items():
            if (arch, t) not in _not_default:
                return cfg
        return PretrainedCfg(architecture=arch, tag="")
    if tag not in tags:
        raise _unknown(f"{arch}.{tag}", [f"{arch}.{t}" for t in tags], "pretrained tag")
    return tags[tag]


def list_detectors(filter: str | list[str] = "", pretrained: bool = False, include_tags: bool | None = None) -> list[str]:
    """Registered names matching fnmatch pattern(s). With ``pretrained=True`` only configs that have
    a weight source are listed, as ``arch.tag`` names (timm's behaviour)."""
    include_tags = pretrained if include_tags is None else include_tags
    names: list[str] = []
    for arch in sorted(_entrypoints):
        if include_tags:
            for tag, cfg in _pretrained.get(arch, {}).items():
                if not pretrained or cfg.has_weights:
                    names.append(f"{arch}.{tag}")
        else:
            names.append(arch)
    patterns = [filter] if isinstance(filter, str) else list(filter)
    patterns = [p for p in patterns if p]
    if patterns:
        names = [n for n in names if any(fnmatch.fnmatch(n, p) or fnmatch.fnmatch(split_name(n)[0], p) for p in patterns)]
    return names


def list_pretrained(filter: str = "") -> list[str]:
    return list_detectors(filter, pretrained=True)


def create_detector(
    name: str,
    pretrained: bool = False,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered detector, optionally loading its pretrained weights.

    ``name`` is ``arch``, ``arch.tag``, ``hf-hub:org/repo`` or ``local-dir:/path``.
    ``kwargs`` go to the architecture's builder (``num_classes``, ``feat_channels``, ...), on top of
    the tag's ``PretrainedCfg.build_kwargs`` (an embedded checkpoint's width, classes, input size).
    """
    if name.startswith(("hf-hub:", "local-dir:")):
        from .hub import load_from_source

        return load_from_source(name, pretrained=pretrained, **kwargs)
    arch, _ = split_name(name)
    if arch not in _entrypoints:
        raise _unknown(arch, list(_entrypoints), "detector")
    cfg = get_pretrained_cfg(name)
    if pretrained_cfg_overlay:
        unknown = set(pretrained_cfg_overlay) - {f.name for f in dataclasses.fields(PretrainedCfg)}
        if unknown:
            raise TypeError(f"pretrained_cfg_overlay has unknown field(s) {sorted(unknown)}; "
                            f"allowed: {[f.name for f in dataclasses.fields(PretrainedCfg)]}")
        cfg = dataclasses.replace(cfg, **pretrained_cfg_overlay)
    if cfg.build_kwargs:
        kwargs = {**cfg.build_kwargs, **kwargs}  # the tag's architecture settings; the caller's win
    model = _entrypoints[arch](pretrained=pretrained, pretrained_cfg=cfg, **kwargs)
    model.arch_name = arch
    model.build_kwargs = dict(kwargs)
    if pretrained:
        from .pretrained import load_pretrained

        load_pretrained(model, cfg)
    return model
