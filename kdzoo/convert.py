"""MMDetection (2.x/3.x) and CrossKD checkpoints -> kdzoo state dicts.

kdzoo keeps MMDetection's parameter names wherever it can, so conversion is a short list of
renames (``docs/architecture.md``; the layouts are recorded in ``tests/data/mmdet_layouts``):

* ``backbone.<name>`` -> ``backbone.body.<name>``: timm's ResNet names (``conv1``, ``bn1``,
  ``layer1.0.downsample.0``) are MMDetection's. Caffe-style ResNets (FCOS) have the same
  tensors; only the conv strides differ, which the ``style='caffe'`` model carries.
* ``neck.lateral_convs.i.conv`` -> ``neck.fpn.inner_blocks.i.0``; ``neck.fpn_convs.i.conv`` ->
  ``neck.fpn.layer_blocks.i.0`` for the backbone levels and ``neck.fpn.extra_blocks.convs.j``
  for the extra (P6/P7) convs.
* Heads (``bbox_head.*``, ``rpn_head.*``, ``roi_head.*``) already use MMDetection's names.
* Swin (MMDetection's ``SwinTransformer`` -> timm's, for models whose backbone is a timm Swin):
  ``stages.i.blocks.j.attn.w_msa`` -> ``layers_i.blocks.j.attn``, ``ffn.layers.0.0``/``ffn.layers.1``
  -> ``mlp.fc1``/``mlp.fc2``, ``patch_embed.projection`` -> ``patch_embed.proj``; the PatchMerging
  ``stages.i.downsample`` (end of stage i, ``nn.Unfold`` channel order) -> ``layers_{i+1}.downsample``
  (start of stage i+1, timm's order) with its reduction columns and norm permuted; the output
  norms ``backbone.norm{i}`` -> ``backbone.norm{i}`` (``TimmBackbone(out_norms=True)``); the
  ``relative_position_index`` buffers are dropped (timm recomputes the same index).

A family whose names differ registers its renames with :func:`register_mmdet_rules`.
CrossKD's distillers keep the teacher out of their ``state_dict`` (it is set with
``object.__setattr__``), so CrossKD student checkpoints are plain MMDetection detectors.

``mmdet_to_kdzoo`` is a ``PretrainedCfg.filter_fn`` (``"kdzoo.convert:mmdet_to_kdzoo"``); it
checks that every checkpoint tensor is used and every model tensor is filled with the same
shape, and explains a mismatch (other detector type, backbone depth or class count).

Command line: ``kdzoo convert mmdet CKPT --arch NAME --out DIR [--num-classes N]``.
"""
from __future__ import annotations

import pickle
import re
import sys
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

__all__ = [
    "CheckpointMismatchError",
    "register_mmdet_rules",
    "mmdet_key_map",
    "mmdet_to_kdzoo",
    "read_mmdet_checkpoint",
    "convert_mmdet_checkpoint",
]

# A kdzoo key, a function of (match, model) giving it, or None: a checkpoint buffer without learned
# state that the model recomputes (dropped).
Replacement = str | Callable[[re.Match, nn.Module], str] | None
# Optional change of a tensor's layout on the way (e.g. a permutation of its channels).
Transform = Callable[[torch.Tensor], torch.Tensor]
_Rule = tuple[re.Pattern, Replacement, "Transform | None"]


class CheckpointMismatchError(ValueError):
    """The checkpoint belongs to another architecture, backbone depth or class count."""


def _fpn_output_conv(m: re.Match, model: nn.Module) -> str:
    """``neck.fpn_convs.i``: a backbone level's 3x3 output conv, or extra level ``i - levels``."""
    i, tail = int(m.group(1)), m.group(2)
    levels = len(model.neck.fpn.inner_blocks)
    if i < levels:
        return f"neck.fpn.layer_blocks.{i}.0.{tail}"
    return f"neck.fpn.extra_blocks.convs.{i - levels}.{tail}"


_COMMON_RULES: list[tuple[str, Replacement]] = [
    (r"backbone\.(.+)", r"backbone.body.\1"),
    (r"neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)", r"neck.fpn.inner_blocks.\1.0.\2"),
    (r"neck\.fpn_convs\.(\d+)\.conv\.(weight|bias)", _fpn_output_conv),
]
_FAMILY_RULES: dict[type, list[tuple[re.Pattern, Replacement, Transform | None, Callable[[nn.Module], bool] | None]]] = {}

# Buffers that older checkpoints may lack and that carry no learned state: taken from the model.
# (timm keeps Swin's relative_position_index / attn_mask non-persistent; listed in case a version does not.)
_DERIVABLE = (re.compile(r".*\.num_batches_tracked"), re.compile(r".*\.integral\.project"),
              re.compile(r".*\.relative_position_index"), re.compile(r".*\.attn_mask"))

# Predictor names that identify a detector type, for error messages.
_TYPE_MARKERS = {
    "bbox_head.gfl_cls.weight": "GFL",
    "bbox_head.atss_cls.weight": "ATSS",
    "bbox_head.retina_cls.weight": "RetinaNet",
    "bbox_head.conv_cls.weight": "FCOS",
    "rpn_head.rpn_conv.weight": "Faster R-CNN (two-stage)",
}
_RESNET_DEPTHS = {(2, 2, 2, 2): "ResNet-18", (3, 4, 6, 3): "ResNet-34/50", (3, 4, 23, 3): "ResNet-101",
                  (3, 8, 36, 3): "ResNet-152"}


def register_mmdet_rules(model_cls: type[nn.Module], rules: Sequence[tuple], *,
                         when: Callable[[nn.Module], bool] | None = None) -> None:
    """Renames for ``model_cls`` (and subclasses), tried before the common backbone/neck rules.

    Each rule is ``(regex fully matching an MMDetection key, replacement)`` or
    ``(regex, replacement, transform)``; the replacement is a ``re`` template
    (``r"bbox_head.cls_logits.\\1"``), ``fn(match, model) -> kdzoo key`` or ``None`` (a buffer
    without learned state that the model recomputes: dropped); ``transform(tensor) -> tensor``
    changes the layout of the value. ``when(model)`` limits the rules to some models (e.g. those
    with a Swin backbone). Keys matched by no rule keep their name.
    """
    _FAMILY_RULES.setdefault(model_cls, []).extend(
        (re.compile(rule[0]), rule[1], rule[2] if len(rule) > 2 else None, when) for rule in rules)


def _rules_for(model: nn.Module) -> list[_Rule]:
    applies: dict[Callable[[nn.Module], bool], bool] = {}  # each condition checked once

    def holds(when: Callable[[nn.Module], bool] | None) -> bool:
        if when is not None and when not in applies:
            applies[when] = bool(when(model))
        return when is None or applies[when]

    rules = [(p, r, t) for cls in type(model).__mro__ for p, r, t, when in _FAMILY_RULES.get(cls, []) if holds(when)]
    if hasattr(model, "neck") and hasattr(getattr(model.neck, "fpn", None), "inner_blocks"):
        rules += [(re.compile(p), r, None) for p, r in _COMMON_RULES]
    else:
        rules += [(re.compile(p), r, None) for p, r in _COMMON_RULES[:1]]
    return rules


def _conversion_plan(keys: Sequence[str], model: nn.Module) -> dict[str, tuple[str | None, Transform | None]]:
    rules = _rules_for(model)
    out: dict[str, tuple[str | None, Transform | None]] = {}
    for key in keys:
        for pattern, repl, transform in rules:
            m = pattern.fullmatch(key)
            if m:
                out[key] = (repl(m, model) if callable(repl) else None if repl is None else m.expand(repl), transform)
                break
        else:
            out[key] = (key, None)
    return out


def mmdet_key_map(keys: Sequence[str], model: nn.Module) -> dict[str, str | None]:
    """MMDetection key -> kdzoo key for every key in ``keys`` (None: a dropped buffer)."""
    return {k: dst for k, (dst, _) in _conversion_plan(keys, model).items()}


# ------------------------------------------------------------------------- Swin backbones
def _has_swin_backbone(model: nn.Module) -> bool:
    from timm.models.swin_transformer import SwinTransformerBlock

    body = getattr(getattr(model, "backbone", None), "body", None)
    return isinstance(body, nn.Module) and any(isinstance(m, SwinTransformerBlock) for m in body.modules())


def _swin_stage(model: nn.Module, index: int) -> str:
    """``backbone.body.layers_i`` (timm's features_only flattens ``layers.i``)."""
    name = f"layers_{index}" if hasattr(model.backbone.body, f"layers_{index}") else f"layers.{index}"
    return f"backbone.body.{name}"


def _swin_block(m: re.Match, model: nn.Module) -> str:
    stage, block, rest = int(m.group(1)), m.group(2), m.group(3)
    for old, new in (("attn.w_msa.", "attn."), ("ffn.layers.0.0.", "mlp.fc1."), ("ffn.layers.1.", "mlp.fc2.")):
        if rest.startswith(old):
            rest = new + rest[len(old):]
    return f"{_swin_stage(model, stage)}.blocks.{block}.{rest}"


def _swin_merge(m: re.Match, model: nn.Module) -> str:
    # MMDetection's PatchMerging ends stage i; timm's starts stage i + 1.
    return f"{_swin_stage(model, int(m.group(1)) + 1)}.downsample.{m.group(2)}"


def _unfold_to_timm_order(t: torch.Tensor) -> torch.Tensor:
    """Last dim from ``nn.Unfold``'s order (channel, row offset, column offset) to timm's
    PatchMerging order (column offset, row offset, channel): reduction columns and norm entries."""
    return t.unflatten(-1, (-1, 2, 2)).transpose(-1, -3).flatten(-3)


_SWIN_RULES = [
    (r"backbone\.patch_embed\.projection\.(weight|bias)", r"backbone.body.patch_embed.proj.\1"),
    (r"backbone\.stages\.\d+\.blocks\.\d+\.attn\.w_msa\.relative_position_index", None),
    (r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.(.+)", _swin_block),
    (r"backbone\.stages\.(\d+)\.downsample\.((?:reduction|norm)\.(?:weight|bias))", _swin_merge, _unfold_to_timm_order),
    (r"backbone\.(norm\d+)\.(weight|bias)", r"backbone.\1.\2"),  # output norms (TimmBackbone(out_norms=True))
]
register_mmdet_rules(nn.Module, _SWIN_RULES, when=_has_swin_backbone)


def _unwrap(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], Mapping):
        return checkpoint["state_dict"]  # MMDetection wraps the weights with meta (ignored)
    return checkpoint


def _resnet_blocks(keys: Sequence[str], prefix: str) -> tuple[int, ...]:
    blocks: dict[int, set[int]] = {}
    for k in keys:
        m = re.match(re.escape(prefix) + r"layer(\d+)\.(\d+)\.", k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return tuple(len(blocks[i]) for i in sorted(blocks))


def _describe_blocks(blocks: tuple[int, ...]) -> str:
    return f"{blocks} blocks per stage" + (f" ({_RESNET_DEPTHS[blocks]})" if blocks in _RESNET_DEPTHS else "")


def _diagnose(source_keys: Sequence[str], mapped: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor],
              model: nn.Module) -> list[str]:
    """Human-level reasons why a checkpoint does not fit ``model``, most telling first."""
    reasons = []
    ckpt_types = sorted({t for k, t in _TYPE_MARKERS.items() if k in source_keys})
    model_types = sorted({t for k, t in _TYPE_MARKERS.items() if k in own})
    if ckpt_types != model_types:
        ckpt = ", ".join(ckpt_types) or "unknown"
        reasons.append(f"detector type differs: the checkpoint is {ckpt}, the model is {', '.join(model_types) or 'unknown'}")
    ckpt_blocks, model_blocks = _resnet_blocks(source_keys, "backbone."), _resnet_blocks(list(own), "backbone.body.")
    if ckpt_blocks and model_blocks and ckpt_blocks != model_blocks:
        reasons.append(f"backbone depth differs: the checkpoint has {_describe_blocks(ckpt_blocks)}, "
                       f"the model {_describe_blocks(model_blocks)}")
    num_classes = getattr(model, "num_classes", None)
    for k, v in mapped.items():
        if k in own and tuple(v.shape) != tuple(own[k].shape) and re.search(r"(^|\.)\w*cls\.weight$", k) and num_classes:
            per_class = own[k].shape[0] // num_classes
            offset = own[k].shape[0] - per_class * num_classes  # background logit (Faster R-CNN)
            theirs = (v.shape[0] - offset) / per_class if per_class else float("nan")
            count = int(theirs) if theirs == int(theirs) else f"{v.shape[0]} outputs"
            reasons.append(f"class count differs: {k} has shape {tuple(v.shape)} ({count} classes), the model "
                           f"expects {tuple(own[k].shape)} (num_classes={num_classes}); build it with num_classes={count}")
    return reasons


def mmdet_to_kdzoo(state_dict: Mapping[str, Any], model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """Convert an MMDetection/CrossKD state dict (or whole checkpoint) for ``model``.

    Every checkpoint tensor must land on a model key of the same shape and every model key must
    be filled (``num_batches_tracked`` and GFL's fixed ``integral.project`` may be absent: the
    model's own values are used); otherwise :class:`CheckpointMismatchError` says what differs.
    """
    source = _unwrap(state_dict)
    not_tensors = [k for k, v in source.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise TypeError(f"state dict entries must be tensors; {not_tensors[:5]} are not")
    own = model.state_dict()
    plan = _conversion_plan(list(source), model)
    key_map = {k: dst for k, (dst, _) in plan.items() if dst is not None}
    targets = Counter(key_map.values())
    clashes = sorted(k for k, n in targets.items() if n > 1)
    if clashes:
        raise CheckpointMismatchError(f"several checkpoint keys map onto {clashes[:5]}")
    mapped = {}
    for k, dst in key_map.items():
        transform = plan[k][1]
        mapped[dst] = source[k] if transform is None or dst not in own else transform(source[k])
    for k, v in own.items():
        if k not in mapped and any(p.fullmatch(k) for p in _DERIVABLE):
            mapped[k] = v.clone()
    unexpected = [src for src, dst in key_map.items() if dst not in own]
    missing = [k for k in own if k not in mapped]
    mismatched = [f"{k}: checkpoint {tuple(mapped[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in mapped and tuple(mapped[k].shape) != tuple(own[k].shape)]
    if unexpected or missing or mismatched:
        arch = getattr(model, "arch_name", "") or type(model).__name__
        lines = [f"MMDetection checkpoint does not fit {arch}:"]
        lines += [f"  {r}" for r in _diagnose(list(source), mapped, own, model)]
        if mismatched:
            lines.append(f"  {len(mismatched)} shape mismatch(es), e.g. " + "; ".join(mismatched[:4]))
        if unexpected:
            lines.append(f"  {len(unexpected)} checkpoint key(s) the model does not have, e.g. {unexpected[:4]}")
        if missing:
            lines.append(f"  {len(missing)} model key(s) the checkpoint does not fill, e.g. {missing[:4]}")
        raise CheckpointMismatchError("\n".join(lines))
    return OrderedDict((k, mapped[k]) for k in own)


# ------------------------------------------------------------------------- reading files
# MMEngine checkpoints may pickle logging and config objects next to the weights. They are
# rebuilt as inert placeholders inside the weights-only unpickler, so nothing they name runs.
_METADATA_PACKAGES = ("mmengine", "mmcv", "mmdet", "mmrazor", "numpy")
_MAX_METADATA_GLOBALS = 64  # legacy files are read once per metadata class found: a bound on the retries


class _Placeholder:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _placeholder_for(qualified_name: str) -> type:
    module, _, name = qualified_name.rpartition(".")
    cls = type(name, (_Placeholder,), {"__module__": module})
    cls.__qualname__ = name
    return cls


def _is_metadata(qualified_name: str) -> bool:
    return qualified_name.split(".")[0] in _METADATA_PACKAGES


def _refuse(path: Path, names: Sequence[str]) -> ValueError:
    from .pretrained import _refusal_message

    return ValueError(_refusal_message(path, list(names), also_allowed=" and MMDetection/MMEngine metadata"))


def _load_with_placeholders(path: Path, names: list[str]) -> Any:
    """``torch.load(weights_only=True)`` with the metadata classes ``names`` allowed as placeholders.

    A legacy-format file cannot be listed beforehand (``get_unsafe_globals_in_checkpoint`` reads
    zip files only), so its metadata classes are found by loading: the weights-only unpickler stops
    at the first global it does not allow and names it; a metadata class is added as a placeholder
    and the load starts again, anything else refuses the file. No refused global is ever created.
    """
    from .pretrained import _refused_global, _weights_only_reason

    names = list(names)
    for _ in range(_MAX_METADATA_GLOBALS):
        try:
            with torch.serialization.safe_globals([_placeholder_for(g) for g in names]):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # torch's message advises weights_only=False: not passed on
            name = _refused_global(e)
            if name is None or name in names:
                raise ValueError(f"{str(path)!r} could not be read as a weights-only checkpoint: "
                                 f"{_weights_only_reason(e)}") from None
            if not _is_metadata(name):
                raise _refuse(path, [name]) from None
            names.append(name)
        except Exception as e:  # not a torch file, truncated, ...
            raise ValueError(f"{str(path)!r} is not a readable torch checkpoint (zip or legacy format): {e}") from e
    raise ValueError(f"{str(path)!r} pickles more than {_MAX_METADATA_GLOBALS} metadata classes "
                     f"(e.g. {names[:5]}); refusing to load it")


def read_mmdet_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an MMDetection ``.pth`` file (``torch.save``'s zip format or the legacy
    format of PyTorch < 1.6), read with ``weights_only=True``."""
    from .pretrained import _ZIP_MAGIC

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    with open(path, "rb") as f:
        zipped = f.read(4) == _ZIP_MAGIC
    metadata: list[str] = []
    if zipped:  # every global is listed up front: a refusal names all of them
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as e:
            raise ValueError(f"{str(path)!r} is not a readable torch checkpoint: {e}") from e
        foreign = [g for g in unsafe if not _is_metadata(g)]
        if foreign:
            raise _refuse(path, foreign)
        metadata = list(unsafe)
    checkpoint = _load_with_placeholders(path, metadata)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{str(path)!r} holds a {type(checkpoint).__name__}, expected a dict with a 'state_dict'")
    return dict(_unwrap(checkpoint))


def convert_mmdet_checkpoint(checkpoint: str | Path, arch: str, out_dir: str | Path, **build_kwargs: Any) -> nn.Module:
    """Build ``arch``, load the converted checkpoint strictly and save it as a kdzoo directory
    (``model.safetensors``, ``config.json``, ``README.md``) loadable with ``local-dir:``."""
    from .hub import save_pretrained
    from .pretrained import load_state_dict_checked
    from .factory import create_detector

    model = create_detector(arch, **build_kwargs)
    state_dict = mmdet_to_kdzoo(read_mmdet_checkpoint(checkpoint), model)
    load_state_dict_checked(model, state_dict, source=f"converted {Path(checkpoint).name}")
    notes = f"Converted from the MMDetection checkpoint {Path(checkpoint).name} with kdzoo.convert."
    save_pretrained(model.eval(), out_dir, keep_published=True, notes=notes)
    return model


if __name__ == "__main__":  # python -m kdzoo.convert: the same as `kdzoo convert`
    from kdzoo.cli import run_command

    sys.exit(run_command("convert"))
