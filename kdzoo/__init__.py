"""kdzoo: a timm-style zoo of knowledge-distilled object detectors.

Layout: :mod:`kdzoo.registry` (names and pretrained configs, data only), :mod:`kdzoo.builder` (the one
build-and-load path), :mod:`kdzoo.factory` (``create_detector``), one file per detector family
(``gfl``, ``atss``, ``fcos``, ``retinanet``, ``faster_rcnn``: heads, criteria, builders and their
published weights), :mod:`kdzoo.distill` (one file per method), :mod:`kdzoo.engine` (the trainer) and
:mod:`kdzoo.cli` (the ``kdzoo`` command). See docs/architecture.md.
"""
from .pretrained import PretrainedCfg
from .registry import (
    get_pretrained_cfg,
    list_detectors,
    list_pretrained,
    register_detector,
    register_pretrained_cfgs,
)

# Importing the family modules registers their detectors and published weights.
from . import atss, faster_rcnn, fcos, gfl, retinanet  # noqa: E402,F401
from .factory import create_detector  # noqa: E402
from .hub import save_pretrained  # noqa: E402
from .publish import push_to_hub  # noqa: E402
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
    "push_to_hub",
    "register_detector",
    "register_pretrained_cfgs",
    "save_pretrained",
]
