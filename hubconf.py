"""torch.hub entry points: every registered kdzoo detector.

``torch.hub.load('org/kdzoo', 'gfl_r50_crosskd', pretrained=True)`` or, from a checkout,
``torch.hub.load(repo_dir, 'gfl_r50', source='local', pretrained=False)``.
"""
dependencies = ["torch", "torchvision", "timm"]

import kdzoo as _kdzoo  # noqa: E402


def _ap_line(arch: str) -> str:
    from kdzoo.registry import _pretrained

    lines = []
    for tag, cfg in _pretrained.get(arch, {}).items():
        if cfg.box_ap is not None:
            lines.append(f"``{arch}.{tag}``: {cfg.box_ap:.1f} box AP on {cfg.ap_dataset or 'COCO val2017'} "
                         f"({cfg.source or 'source unknown'})")
    return "\n    ".join(lines) if lines else "No COCO AP measured."


def _entry(arch: str):
    def entry(pretrained: bool = False, **kwargs):
        return _kdzoo.create_detector(arch, pretrained=pretrained, **kwargs)

    builder_doc = (_kdzoo.registry._entrypoints[arch].__doc__ or arch).strip().splitlines()[0]
    entry.__name__ = entry.__qualname__ = arch
    entry.__doc__ = (f"{builder_doc}\n\n    AP: {_ap_line(arch)}\n\n"
                     f"    ``pretrained=True`` loads the default weights; kwargs go to the builder (num_classes, ...).")
    return entry


for _arch in _kdzoo.list_detectors():
    globals()[_arch] = _entry(_arch)
del _arch
