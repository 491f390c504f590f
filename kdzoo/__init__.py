"""kdzoo: a timm-style zoo of knowledge-distilled object detectors."""
from .pretrained import PretrainedCfg
from .registry import (
    create_detector,
    get_pretrained_cfg,
    list_detectors,
    list_pretrained,
    register_detector,
    register_pretrained_cfgs,
)

# Importing the family modules registers their detectors.
from . import atss, faster_rcnn, fcos, gfl, retinanet  # noqa: E402,F401
from . import zoo  # noqa: E402,F401  (official MMDetection/CrossKD checkpoints, CrossKD student entry points)
from .hub import load_from_source, push_to_hub, save_pretrained  # noqa: E402
from .embedded import register_embedded as _register_embedded  # noqa: E402
from .export import export, load_exported  # noqa: E402  (ONNX / torch.export / OpenVINO; optional packages imported on use)

_register_embedded()  # kdzoo/weights/<arch>.<tag>/ -> pretrained cfgs 'arch.tag' (offline demo checkpoints)

__version__ = "0.1.0"

__all__ = [
    "PretrainedCfg",
    "create_detector",
    "export",
    "get_pretrained_cfg",
    "list_detectors",
    "list_pretrained",
    "load_exported",
    "load_from_source",
    "push_to_hub",
    "register_detector",
    "register_pretrained_cfgs",
    "save_pretrained",
]
