"""Which ImageNet weights a detector's backbone starts from (``backbone_pretrained``).

* ``True``: timm's default weights for the backbone (``resnet50`` -> ``resnet50.a1_in1k``).
* a timm pretrained tag, e.g. ``'tv_in1k'``: ``resnet50.tv_in1k``, torchvision's ImageNet weights,
  which MMDetection and the CrossKD configs start their pytorch-style ResNets from
  (``torchvision://resnet50``). docs/crosskd.md, "Initialisation".
* an MMCV model-zoo name, e.g. ``'open-mmlab://detectron/resnet50_caffe'`` (MSRA's caffe ResNets that
  MMDetection's caffe-style FCOS starts from), an ``https://`` URL, or a local ``.pth`` /
  ``.safetensors`` file with MMDetection ResNet keys (``conv1.weight``, ``layer1.0.conv1.weight`` ...):
  downloaded once into the torch hub cache (sha256 prefix in the file name checked), read with
  ``weights_only=True`` and loaded strictly into the backbone (classifier keys dropped).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import timm
import torch

from .backbone import TimmBackbone

__all__ = ["MMCV_MODEL_ZOO", "create_backbone", "resolve_backbone_weights", "load_backbone_weights"]

# The entries of MMCV's model-zoo table (mmcv/model_zoo/open_mmlab.json) that MMDetection's configs use.
MMCV_MODEL_ZOO = {
    "detectron/resnet50_caffe": "https://download.openmmlab.com/pretrain/third_party/resnet50_caffe-788b5fa3.pth",
    "detectron/resnet101_caffe": "https://download.openmmlab.com/pretrain/third_party/resnet101_caffe-3ad79236.pth",
}
_CLASSIFIER = re.compile(r"^(fc|head|classifier)\.")


def resolve_backbone_weights(name: str, weights: bool | str | None) -> tuple[str, bool, str | None]:
    """``(timm model name, timm pretrained, external source)`` for ``backbone_pretrained=weights``."""
    if weights is None or weights is False:
        return name, False, None
    if weights is True:
        return name, True, None
    if not isinstance(weights, str) or not weights:
        raise TypeError(f"backbone_pretrained must be a bool or a string (a timm tag, an open-mmlab:// name, "
                        f"a URL or a file), got {weights!r}")
    if weights.startswith("open-mmlab://"):
        key = weights[len("open-mmlab://"):]
        if key not in MMCV_MODEL_ZOO:
            raise ValueError(f"backbone_pretrained={weights!r} is not in kdzoo's copy of MMCV's model-zoo table; "
                             f"known: {sorted('open-mmlab://' + k for k in MMCV_MODEL_ZOO)}, or pass the URL or a file")
        return name, False, MMCV_MODEL_ZOO[key]
    if weights.startswith(("http://", "https://")) or os.sep in weights or weights.endswith((".pth", ".pt", ".safetensors")):
        return name, False, weights
    arch = name.split(".")[0]
    tagged = f"{arch}.{weights}"
    if not timm.list_pretrained(tagged):
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
        raise ValueError(f"backbone_pretrained={weights!r}: timm has no pretrained tag {tagged!r}; "
                         f"its tags for {arch!r}: {tags}")
    return tagged, True, None


def _read(source: str) -> dict[str, torch.Tensor]:
    if source.startswith(("http://", "https://")):
        try:
            if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
                raise OSError("HF_HUB_OFFLINE is set")
            # torch.hub checks the sha256 prefix in a 'name-<hex>.pth' file name.
            check = bool(re.search(r"-[0-9a-f]{8,}\.\w+$", source.rsplit("/", 1)[-1]))
            state = torch.hub.load_state_dict_from_url(source, map_location="cpu", check_hash=check, weights_only=True)
        except Exception as e:  # URLError, HTTPError, OSError, hash mismatch
            cached = Path(torch.hub.get_dir()) / "checkpoints" / source.rsplit("/", 1)[-1]
            raise RuntimeError(f"backbone weights {source} could not be fetched ({type(e).__name__}: {e}); put the file "
                               f"at {cached} or pass its local path as backbone_pretrained") from e
    else:
        from .pretrained import read_weights_file

        state = read_weights_file(source)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return state


def load_backbone_weights(body: TimmBackbone, source: str) -> None:
    """Load an MMDetection-layout ResNet checkpoint (or any state dict with timm's names) into ``body``."""
    from .pretrained import load_state_dict_checked

    state = {k.removeprefix("backbone."): v for k, v in _read(source).items() if not _CLASSIFIER.match(k.removeprefix("backbone."))}
    own = body.body.state_dict()
    # Buffers that carry no learned state (BatchNorm's step counter) may be absent from older files.
    for k, v in own.items():
        if k not in state and k.endswith("num_batches_tracked"):
            state[k] = v
    load_state_dict_checked(body.body, state, source=f"backbone weights {source}")


def create_backbone(name: str, *, weights: bool | str | None = False, **kwargs: Any) -> TimmBackbone:
    """A :class:`TimmBackbone` initialised as ``backbone_pretrained=weights`` says."""
    timm_name, timm_pretrained, external = resolve_backbone_weights(name, weights)
    body = TimmBackbone(timm_name, pretrained=timm_pretrained, **kwargs)
    if external is not None:
        load_backbone_weights(body, external)
    return body
