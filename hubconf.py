"""torch.hub entry points: every registered kdzoo detector and alias.

``torch.hub.load('org/kdzoo', 'gfl_r50_crosskd', pretrained=True)`` or, from a checkout,
``torch.hub.load(repo_dir, 'gfl_r50', source='local', pretrained=False)``.
"""
dependencies = ["torch", "torchvision", "timm"]

import kdzoo as _kdzoo  # noqa: E402
from kdzoo import registry as _registry  # noqa: E402


def _ap_line(arch: str) -> str:
    lines = [f"``{arch}.{tag}``: {cfg.box_ap:.1f} box AP on {cfg.ap_dataset or 'COCO val2017'} ({cfg.source or 'source unknown'})"
             for tag, cfg in _registry.list_tags(arch).items() if cfg.box_ap is not None]
    return "\n    ".join(lines) if lines else "No COCO AP measured."


def _entry(name: str):
    def entry(pretrained: bool = False, **kwargs):
        return _kdzoo.create_detector(name, pretrained=pretrained, **kwargs)

    arch, tag = _registry.resolve_name(name)
    builder_doc = (_registry.get_entrypoint(arch).__doc__ or arch).strip().splitlines()[0]
    weights = f"``{arch}.{tag}``" if tag else "the default weights"
    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (f"{builder_doc}\n\n    AP: {_ap_line(arch)}\n\n"
                     f"    ``pretrained=True`` loads {weights}; kwargs go to the builder (num_classes, ...).")
    return entry


for _name in _kdzoo.list_detectors():
    globals()[_name] = _entry(_name)
del _name
