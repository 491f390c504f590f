"""The detector registry, data only (timm's ``_registry``): entry points, their pretrained configs
and the aliases the mission names.

Names are ``arch.tag``: the architecture (``gfl_r50``) picks the code, the tag (``mmdet_coco``,
``crosskd_coco``) picks a :class:`~kdzoo.pretrained.PretrainedCfg`, i.e. which weights and what is
known about them. A bare ``arch`` means its default tag, by one rule for every family: the first
tag registered *with weights*; an architecture without weights uses its first tag (metadata
only) or an empty config. Checkpoints embedded for the offline demo are registered with
``default_ok=False``: they never become a bare name's default (they are trained on synthetic data).

An alias (``gfl_r50_crosskd``) stands for one ``arch.tag`` (``gfl_r50.crosskd_coco``): the hub
entry points and the names of the released CrossKD students. Building is :mod:`kdzoo.factory`.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import sys
from collections import defaultdict
from typing import Callable

import torch.nn as nn

from .pretrained import PretrainedCfg

__all__ = [
    "register_detector",
    "register_pretrained_cfgs",
    "register_alias",
    "list_detectors",
    "list_pretrained",
    "list_aliases",
    "list_tags",
    "default_tag",
    "get_pretrained_cfg",
    "get_entrypoint",
    "resolve_name",
    "split_name",
    "is_detector",
]

_entrypoints: dict[str, Callable[..., nn.Module]] = {}
# arch -> {tag: cfg}, in registration order.
_pretrained: dict[str, dict[str, PretrainedCfg]] = defaultdict(dict)
_not_default: set[tuple[str, str]] = set()
_aliases: dict[str, str] = {}


def register_detector(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator registering a builder ``fn(pretrained=False, **kwargs)`` under its name."""
    name = fn.__name__
    if name in _entrypoints or name in _aliases:
        raise ValueError(f"detector {name!r} is registered twice")
    _entrypoints[name] = fn
    mod = sys.modules[fn.__module__]
    if hasattr(mod, "__all__") and name not in mod.__all__:
        mod.__all__.append(name)
    return fn


def register_pretrained_cfgs(cfgs: dict[str, PretrainedCfg], default_ok: bool = True) -> None:
    """Register weight configs keyed ``arch.tag``. ``default_ok=False``: the tags are only used when
    named, never as the bare architecture's default."""
    for full_name, cfg in cfgs.items():
        arch, tag = split_name(full_name)
        if not tag:
            raise ValueError(f"pretrained config {full_name!r} needs a tag: 'arch.tag'")
        _pretrained[arch][tag] = dataclasses.replace(cfg, architecture=arch, tag=tag)
        if not default_ok:
            _not_default.add((arch, tag))


def register_alias(alias: str, target: str) -> None:
    """``alias`` builds ``target`` (``'arch.tag'``), as a name of its own (``gfl_r50_crosskd``)."""
    if alias in _entrypoints or alias in _aliases:
        raise ValueError(f"{alias!r} is already a registered name")
    arch, tag = split_name(target)
    if not tag or tag not in _pretrained.get(arch, {}):
        raise ValueError(f"alias {alias!r}: {target!r} is not a registered 'arch.tag'")
    _aliases[alias] = target


def split_name(name: str) -> tuple[str, str]:
    """``'gfl_r50.mmdet_coco'`` -> ``('gfl_r50', 'mmdet_coco')``; no tag gives ``''``."""
    arch, _, tag = name.partition(".")
    return arch, tag


def resolve_name(name: str) -> tuple[str, str]:
    """``(arch, tag)`` of a registered name or alias; ``tag`` is ``''`` for the default. Unknown
    names raise a ``KeyError`` with close matches."""
    if name in _aliases:
        return split_name(_aliases[name])
    arch, tag = split_name(name)
    if arch in _aliases:
        raise _unknown(name, [*_aliases], "detector", f" {arch!r} is an alias of {_aliases[arch]!r} and takes no tag.")
    if arch not in _entrypoints:
        raise _unknown(arch, [*_entrypoints, *_aliases], "detector")
    if tag and tag not in _pretrained.get(arch, {}):
        raise _unknown(name, [f"{arch}.{t}" for t in _pretrained.get(arch, {})], "pretrained tag")
    return arch, tag


def is_detector(name: str) -> bool:
    """Whether ``name`` (``arch`` or ``arch.tag``) names a registered architecture (aliases excluded)."""
    return split_name(name)[0] in _entrypoints


def get_entrypoint(arch: str) -> Callable[..., nn.Module]:
    if arch not in _entrypoints:
        raise _unknown(arch, list(_entrypoints), "detector")
    return _entrypoints[arch]


def _unknown(name: str, candidates: list[str], what: str, extra: str = "") -> KeyError:
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    return KeyError(f"Unknown {what} {name!r}.{extra}{hint} See kdzoo.list_detectors() for all names.")


def default_tag(arch: str) -> str:
    """The tag a bare ``arch`` means: the first registered with weights (embedded demo checkpoints
    excluded), else the first registered, else ``''``."""
    tags = [t for t in _pretrained.get(arch, {}) if (arch, t) not in _not_default]
    with_weights = [t for t in tags if _pretrained[arch][t].has_weights]
    return (with_weights or tags or [""])[0]


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The config selected by ``arch.tag``, an alias, or a bare ``arch`` (its :func:`default_tag`)."""
    arch, tag = resolve_name(name)
    tag = tag or default_tag(arch)
    return _pretrained[arch][tag] if tag else PretrainedCfg(architecture=arch, tag="")


def list_detectors(filter: str | list[str] = "", pretrained: bool = False, include_tags: bool | None = None) -> list[str]:
    """Names matching fnmatch pattern(s): architectures and aliases, or with ``pretrained=True`` the
    ``arch.tag`` configs that have a weight source (timm's behaviour)."""
    include_tags = pretrained if include_tags is None else include_tags
    names: list[str] = []
    if include_tags:
        for arch in sorted(_entrypoints):
            names += [f"{arch}.{tag}" for tag, cfg in _pretrained.get(arch, {}).items() if not pretrained or cfg.has_weights]
    else:
        names = sorted([*_entrypoints, *_aliases])
    patterns = [p for p in ([filter] if isinstance(filter, str) else list(filter)) if p]
    if patterns:
        names = [n for n in names if any(fnmatch.fnmatch(n, p) or fnmatch.fnmatch(split_name(n)[0], p) for p in patterns)]
    return names


def list_pretrained(filter: str = "") -> list[str]:
    return list_detectors(filter, pretrained=True)


def list_aliases() -> dict[str, str]:
    """``{alias: 'arch.tag'}``."""
    return dict(_aliases)


def list_tags(arch: str) -> dict[str, PretrainedCfg]:
    """``{tag: cfg}`` of one architecture, in registration order."""
    get_entrypoint(arch)
    return dict(_pretrained.get(arch, {}))
