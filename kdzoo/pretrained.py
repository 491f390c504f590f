"""Weight sources as data (timm's ``PretrainedCfg``), and loading them into a detector.

Sources are tried in this order: an in-memory ``state_dict``, a local ``file``, a Hugging Face
Hub repo (``hf_hub_id``), a ``url`` (downloaded once, sha256-prefix checked, into torch.hub's cache
``torch.hub.get_dir()/checkpoints/<file name of the URL>``) and a Google Drive file id
(``gdrive_id``, for releases that exist only on Drive, such as the CrossKD students). A Drive
file is fetched once with `gdown <https://github.com/wkentaro/gdown>`_ (the optional
``kdzoo[gdrive]`` extra, which handles Drive's virus-scan confirmation page) into
``torch.hub.get_dir()/checkpoints/<gdrive_filename>``, the cache URL weights use, and read from
there on every later call without network. With ``HF_HUB_OFFLINE=1`` nothing is downloaded: a
file not in the cache is an error that says where to put a copy (or how to pass one with
``pretrained_cfg_overlay=dict(file=PATH)``), as is a download that fails.

Pickle checkpoints are always read with ``weights_only=True``; one that pickles anything but
tensors (and, for MMDetection's files, MMEngine's metadata objects) is refused, never unpickled.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .checkpoint import checkpoint_weights, is_training_checkpoint

_log = logging.getLogger(__name__)

__all__ = ["PretrainedCfg", "load_pretrained", "no_weights_error", "load_state_dict_checked", "gdrive_cache_path", "gdrive_url",
           "url_cache_path", "read_weights_file", "IMAGENET_MEAN", "IMAGENET_STD"]

# MMDetection's pixel statistics (0..255 scale), used by its pytorch-style ResNet configs.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class PretrainedCfg:
    """Where a detector's weights come from and what is known about them."""

    architecture: str = ""
    tag: str = ""
    # Weight sources, tried in timm's order (state_dict, file, hf_hub_id, url), then gdrive_id.
    state_dict: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    file: str | None = None
    hf_hub_id: str | None = None
    hf_hub_filename: str = "model.safetensors"
    url: str | None = None
    url_hash: str | None = None  # sha256 prefix checked on download
    # A Google Drive file id, downloaded once (with gdown, the ``kdzoo[gdrive]`` extra) into the torch hub
    # cache as ``gdrive_filename`` (a plain file name; default ``<architecture>.<tag>.pth``).
    gdrive_id: str | None = None
    gdrive_filename: str | None = None
    # Converts a foreign checkpoint (MMDetection layout) into kdzoo's; dotted path "module:function".
    filter_fn: str | None = None
    # Pre-processing and label space.
    num_classes: int = 80
    categories: tuple[str, ...] = ()
    # The dataset's category id of each class index (COCO's 1..90 with gaps), for results files;
    # empty: index + 1.
    category_ids: tuple[int, ...] = ()
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
        return any((self.state_dict is not None, self.file, self.hf_hub_id, self.url, self.gdrive_id))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("state_dict")
        d.pop("build_kwargs")
        d["categories"] = list(self.categories)
        d["category_ids"] = list(self.category_ids)
        return d


def _resolve_filter(path: str | None) -> Callable[[dict, nn.Module], dict] | None:
    if not path:
        return None
    import importlib

    mod, _, fn = path.partition(":")
    return getattr(importlib.import_module(mod), fn)


_MMDET_FILTER = "kdzoo.convert:mmdet_to_kdzoo"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
# torch.save's legacy format (PyTorch < 1.6, or _use_new_zipfile_serialization=False; early MMDetection
# model-zoo files): it opens with its magic number pickled at protocol 2.
_LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:-1]


def _is_torch_file_head(head: bytes) -> bool:
    """Whether a file's first bytes are those of a ``torch.save`` file (zip or legacy format)."""
    return head[:4] == _ZIP_MAGIC or head.startswith(_LEGACY_MAGIC)


def _read_foreign_file(path: str | Path, cfg: PretrainedCfg) -> dict[str, torch.Tensor]:
    """A file in MMDetection's layout is read like MMEngine wrote it (weights only, its pickled
    logging objects as inert placeholders); anything else with :func:`read_weights_file`."""
    path = Path(path)
    if cfg.filter_fn == _MMDET_FILTER and path.suffix != ".safetensors" and path.is_file():
        from .convert import read_mmdet_checkpoint

        return read_mmdet_checkpoint(path)
    return read_weights_file(path)


def _read_checkpoint(cfg: PretrainedCfg) -> dict[str, torch.Tensor]:
    if cfg.state_dict is not None:
        return cfg.state_dict
    if cfg.file:
        return _read_foreign_file(cfg.file, cfg)
    if cfg.hf_hub_id:
        from huggingface_hub import hf_hub_download

        return read_weights_file(hf_hub_download(cfg.hf_hub_id, cfg.hf_hub_filename))
    if cfg.url or cfg.gdrive_id:
        path = _download_url(cfg) if cfg.url else _download_gdrive(cfg)
        try:
            if cfg.url:
                return _read_foreign_file(path, cfg)
            if path.suffix == ".safetensors":
                return read_weights_file(path)
            from .convert import read_mmdet_checkpoint  # MMEngine's metadata objects read as inert placeholders

            return read_mmdet_checkpoint(path)
        except (ValueError, OSError) as e:
            raise ValueError(f"the cached download {str(path)!r} of {_display_name(cfg)} could not be read ({e}); "
                             "delete it to download it again") from e
    raise no_weights_error(cfg)


def no_weights_error(cfg: PretrainedCfg) -> RuntimeError:
    """The one error for ``pretrained=True`` on a config without a weight source."""
    return RuntimeError(
        f"No pretrained weights are configured for {cfg.architecture}.{cfg.tag or '(default)'}; "
        f"pick a tag from kdzoo.list_detectors('{cfg.architecture}*', pretrained=True) or pass "
        "pretrained_cfg_overlay=dict(file='path/to/weights')."
    )


# ------------------------------------------------------------------------------ Google Drive
GDRIVE_URL = "https://drive.google.com"  # where Drive-hosted files live (gdown talks to Drive's own hosts)


def gdrive_url(file_id: str) -> str:
    """The Drive page of a file: open it in a browser to download the file by hand."""
    return f"{GDRIVE_URL}/file/d/{file_id}/view"


def _display_name(cfg: PretrainedCfg) -> str:
    return f"{cfg.architecture}.{cfg.tag}" if cfg.tag else (cfg.architecture or "(unnamed model)")


def gdrive_cache_path(cfg: PretrainedCfg) -> Path:
    """Where the Drive file of ``cfg`` is cached: ``torch.hub.get_dir()/checkpoints/<gdrive_filename>``."""
    name = cfg.gdrive_filename or f"{_display_name(cfg)}.pth"
    if name != Path(name).name or name in (".", "..") or "\\" in name:
        raise ValueError(f"gdrive_filename must be a plain file name, got {name!r}")
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def url_cache_path(cfg: PretrainedCfg) -> Path:
    """Where the file at ``cfg.url`` is cached: ``torch.hub.get_dir()/checkpoints/<file name of the URL>``
    (torch.hub's own place, so files it downloaded before are reused)."""
    name = os.path.basename(urllib.parse.urlparse(cfg.url or "").path)
    if not name or name in (".", ".."):
        raise ValueError(f"the weights URL of {_display_name(cfg)} names no file: {cfg.url!r}")
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _download_help(cfg: PretrainedCfg, path: Path) -> str:
    """The part of every download error (URL or Drive) that says where the file is and how to do
    without the download. The URL is named when there is one: it is the source tried first."""
    name = _display_name(cfg)
    if cfg.url:
        source = f"\n  URL:        {cfg.url} (download it by hand, e.g. in a browser)"
    else:
        source = f"\n  Drive file: {gdrive_url(cfg.gdrive_id)} (open it in a browser to download it by hand)"
    return (f"\n  model:      {name}" + source +
            f"\n  cache path: {path} (a copy placed there is used as is)"
            f"\n  local copy: kdzoo.create_detector({name!r}, pretrained=True, "
            "pretrained_cfg_overlay=dict(file=PATH))")


def _download_url(cfg: PretrainedCfg) -> Path:
    """The cached file of ``cfg.url``, downloaded first if it is not cached yet (with torch.hub's
    downloader, which writes a temporary file next to the cache path and moves it into place only
    once it is complete and its sha256 starts with ``cfg.url_hash``)."""
    path = url_cache_path(cfg)
    if path.is_file():
        return path
    name = _display_name(cfg)
    host = urllib.parse.urlparse(cfg.url).netloc or cfg.url
    if _offline():
        raise ConnectionError(f"{name} is not cached and HF_HUB_OFFLINE is set, so it is not downloaded from "
                              f"{host}." + _download_help(cfg, path))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(cfg.url, str(path), hash_prefix=cfg.url_hash or None, progress=True)
    except RuntimeError as e:  # the sha256 check (the partial file is removed)
        raise ValueError(f"the file downloaded from {host} for {name} is not the expected one ({e}); it was "
                         "discarded." + _download_help(cfg, path)) from e
    except (OSError, ValueError) as e:  # URLError/HTTPError/timeouts are OSErrors; ValueError: a malformed URL
        # URLError's own text wraps its reason in "<urlopen error ...>"; HTTPError's names the status.
        reason = e.reason if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError) else e
        raise ConnectionError(f"downloading {name} from {host} failed: {reason}" + _download_help(cfg, path)) from e
    return path


def _html_title(head: bytes) -> str | None:
    """The title of an HTML page (Drive's quota, sign-in or virus-scan pages), or None if ``head`` is not HTML."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if not (text.startswith((b"<!doctype html", b"<html", b"<head", b"<meta", b"<!--")) or b"<html" in text[:512]):
        return None
    m = re.search(rb"<title[^>]*>(.*?)</title>", head, re.IGNORECASE | re.DOTALL)
    return m.group(1).decode("utf-8", "replace").strip() if m else ""


def _check_downloaded(tmp: Path, cfg: PretrainedCfg, path: Path) -> None:
    with open(tmp, "rb") as f:
        head = f.read(4096)
    title = _html_title(head)
    if title is not None:
        raise ValueError(
            f"Google Drive answered an HTML page{f' ({title!r})' if title else ''} instead of the checkpoint of "
            f"{_display_name(cfg)}: the file may be over its download quota ('too many users have viewed or "
            "downloaded this file recently') or no longer shared; the page was discarded. Try again later or "
            "download it by hand." + _download_help(cfg, path))
    if path.suffix != ".safetensors" and not _is_torch_file_head(head):
        raise ValueError(f"the file downloaded from Google Drive for {_display_name(cfg)} is not a torch "
                         f"checkpoint ({len(head)}+ bytes starting {head[:16]!r}); it was discarded."
                         + _download_help(cfg, path))


def _download_gdrive(cfg: PretrainedCfg) -> Path:
    """The cached Drive file of ``cfg``, downloaded first if it is not cached yet.

    The download goes to a temporary folder next to the cache path and is moved into place with
    ``os.replace`` only once it looks like a checkpoint, so an interrupted or refused download never
    leaves a file under the final name.
    """
    path = gdrive_cache_path(cfg)
    if path.is_file():
        return path
    name = _display_name(cfg)
    if _offline():
        raise ConnectionError(f"{name} is not cached and HF_HUB_OFFLINE is set, so it is not downloaded from "
                              "Google Drive." + _download_help(cfg, path))
    try:
        import gdown
    except ImportError as e:
        raise ImportError(f"downloading {name} from Google Drive needs gdown: pip install 'kdzoo[gdrive]' "
                          "(or pip install gdown)." + _download_help(cfg, path)) from e
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".download"))
    try:
        tmp = tmp_dir / path.name
        try:
            gdown.download(id=cfg.gdrive_id, output=str(tmp), quiet=False)
        except Exception as e:  # gdown's FileURLRetrievalError / DownloadError, requests' network errors
            raise ConnectionError(f"downloading {name} from Google Drive failed: {e}" + _download_help(cfg, path)) from e
        if not tmp.is_file():
            raise ConnectionError(f"gdown reported success but wrote no file for {name}." + _download_help(cfg, path))
        _check_downloaded(tmp, cfg, path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


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
    except pickle.UnpicklingError as e:
        # torch's message advises loading again with weights_only=False, which runs whatever the file
        # pickled: neither its advice nor the chained error is passed on.
        name = _refused_global(e)
        if name is not None:
            raise ValueError(_refusal_message(path, [name])) from None
        raise ValueError(f"{str(path)!r} could not be read as a weights-only torch checkpoint: "
                         f"{_weights_only_reason(e)}") from None
    except Exception as e:  # a truncated or foreign file: zip or pickle errors of many types
        raise ValueError(f"{str(path)!r} could not be read as a weights-only torch checkpoint: {e}") from e


# torch's weights-only unpickler names the global it will not load in its UnpicklingError.
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module)")


def _refused_global(error: BaseException) -> str | None:
    """The dotted name of the global a ``weights_only=True`` load refused, or None."""
    m = _REFUSED_GLOBAL.search(str(error))
    return m.group(1) if m else None


def _weights_only_reason(error: BaseException) -> str:
    """Why a ``weights_only=True`` load failed, without torch's advice to turn the check off."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    m = re.search(r"WeightsUnpickler error:\s*(.*?)(?: Please use `torch\.serialization|\n|$)", text)
    if m:
        return m.group(1).strip()
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if first and "weights_only" not in text else type(error).__name__


def _refusal_message(path: str | Path, names: list[str], also_allowed: str = "") -> str:
    """Why a pickle checkpoint is refused and what to do instead (never: turn the weights-only check off)."""
    return (f"refusing to load {str(path)!r}: it pickles objects other than tensors{also_allowed} "
            f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}), and unpickling them could run code of "
            "the file's choosing. Where the file was made, save its weights as safetensors "
            "(safetensors.torch.save_file(model.state_dict(), 'model.safetensors')) or as a state dict of "
            "tensors only, and load that file.")


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


def load_pretrained(model: nn.Module, cfg: PretrainedCfg, *, num_classes: int | None = None) -> None:
    """Load ``cfg``'s weights into ``model``, strictly. ``num_classes``: the class count the caller
    asked for; when it differs from the weights' (``cfg.num_classes``), the layers sized by it
    (``model.classifier_keys()``: the class scores, and Faster R-CNN's per-class box deltas) keep
    their fresh initialisation and everything else loads strictly, as timm does for a classifier:
    the start of fine-tuning a zoo detector on other classes. The model's config then names the new
    class count and drops the weights' class names."""
    state_dict = _read_checkpoint(cfg)
    if isinstance(state_dict, dict) and "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]  # MMDetection checkpoints wrap weights with meta
    elif is_training_checkpoint(state_dict):  # a run's checkpoint.pt, e.g. a teacher part-way through training
        state_dict = checkpoint_weights(state_dict)
    filter_fn = _resolve_filter(cfg.filter_fn)
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)
    where = cfg.file or (f"hf-hub:{cfg.hf_hub_id}" if cfg.hf_hub_id else None) or cfg.url
    source = f"weights of {_display_name(cfg)}" + (f" ({where})" if where else "")
    if num_classes is None or not cfg.num_classes or num_classes == cfg.num_classes:
        load_state_dict_checked(model, state_dict, source=source)
        return
    own = model.state_dict()
    # Only layers whose stored shape really differs (a folder's config may carry a stale class count).
    fresh = {k for k in model.classifier_keys()
             if k in state_dict and tuple(getattr(state_dict[k], "shape", ())) != tuple(own[k].shape)}
    if not fresh:
        load_state_dict_checked(model, state_dict, source=source)
        return
    kept = {k: v for k, v in state_dict.items() if k not in fresh}
    load_state_dict_checked(model, {**kept, **{k: own[k] for k in fresh}}, source=source)
    _log.info("%s: trained for %d classes; %s initialised afresh for %d classes", source, cfg.num_classes,
              ", ".join(sorted({k.rpartition(".")[0] for k in fresh})), num_classes)
    model.pretrained_cfg = dataclasses.replace(model.pretrained_cfg, num_classes=num_classes, categories=(),
                                               category_ids=())
