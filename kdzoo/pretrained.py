"""Weight sources as data (timm's ``PretrainedCfg``), and loading them into a detector."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

__all__ = ["PretrainedCfg", "load_pretrained", "load_state_dict_checked", "IMAGENET_MEAN", "IMAGENET_STD"]

# MMDetection's pixel statistics (0..255 scale), used by its pytorch-style ResNet configs.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class PretrainedCfg:
    """Where a detector's weights come from and what is known about them."""

    architecture: str = ""
    tag: str = ""
    # Weight sources, tried in timm's order: state_dict, file, hf_hub_id, url.
    state_dict: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    file: str | None = None
    hf_hub_id: str | None = None
    hf_hub_filename: str = "model.safetensors"
    url: str | None = None
    url_hash: str | None = None  # sha256 prefix checked by torch.hub's download
    # Converts a foreign checkpoint (MMDetection layout) into kdzoo's; dotted path "module:function".
    filter_fn: str | None = None
    # Pre-processing and label space.
    num_classes: int = 80
    categories: tuple[str, ...] = ()
    input_size: tuple[int, int] = (1333, 800)  # (long side, short side) of the keep-ratio resize
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    bgr: bool = False  # caffe-style models expect BGR input
    # What it reaches and where it comes from.
    box_ap: float | None = None
    ap_dataset: str | None = None
    license: str | None = None
    paper: str | None = None
    source: str | None = None
    teacher: str | None = None
    distill_method: str | None = None
    notes: str | None = None
    # Builder kwargs the weights need (fpn_channels, num_classes, input_size ...): create_detector uses
    # them as defaults under the caller's kwargs. config.json keeps them under "kwargs", not here.
    build_kwargs: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def has_weights(self) -> bool:
        return any((self.state_dict is not None, self.file, self.hf_hub_id, self.url))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("state_dict")
        d.pop("build_kwargs")
        d["categories"] = list(self.categories)
        return d


def _resolve_filter(path: str | None) -> Callable[[dict, nn.Module], dict] | None:
    if not path:
        return None
    import importlib

    mod, _, fn = path.partition(":")
    return getattr(importlib.import_module(mod), fn)


def _read_checkpoint(cfg: PretrainedCfg) -> dict[str, torch.Tensor]:
    if cfg.state_dict is not None:
        return cfg.state_dict
    if cfg.file:
        return read_weights_file(cfg.file)
    if cfg.hf_hub_id:
        from huggingface_hub import hf_hub_download

        return read_weights_file(hf_hub_download(cfg.hf_hub_id, cfg.hf_hub_filename))
    if cfg.url:
        return torch.hub.load_state_dict_from_url(
            cfg.url, map_location="cpu", check_hash=bool(cfg.url_hash), weights_only=True
        )
    raise RuntimeError(
        f"No pretrained weights are configured for {cfg.architecture}.{cfg.tag or '(default)'}; "
        f"pick a tag from kdzoo.list_detectors('{cfg.architecture}*', pretrained=True) or pass "
        "pretrained_cfg_overlay=dict(file='path/to/weights')."
    )


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or a pickle checkpoint (always with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{str(path)!r} is not a readable safetensors file ({e}); "
                             "it may be truncated or corrupt") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors come in many types
        raise ValueError(f"{str(path)!r} could not be read as a weights-only torch checkpoint: {e}") from e


def load_state_dict_checked(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load strictly, with an error that names missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        lines = [f"{source} does not match {type(model).__name__}:"]
        if mismatched:
            lines.append(f"  {len(mismatched)} shape mismatch(es), e.g. " + "; ".join(mismatched[:5]))
        if missing:
            lines.append(f"  {len(missing)} missing key(s), e.g. {missing[:5]}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected key(s), e.g. {unexpected[:5]}")
        raise RuntimeError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)


def load_pretrained(model: nn.Module, cfg: PretrainedCfg) -> None:
    state_dict = _read_checkpoint(cfg)
    if isinstance(state_dict, dict) and "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]  # MMDetection checkpoints wrap weights with meta
    filter_fn = _resolve_filter(cfg.filter_fn)
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)
    load_state_dict_checked(model, state_dict, source=f"weights of {cfg.architecture}.{cfg.tag}")
