"""Convert detection datasets between COCO JSON, YOLO and Pascal VOC (``docs/datasets.md``).

    python -m kdzoo.data.convert yolo data/mine --to coco --out data/mine/instances_train.json [--split train]
    python -m kdzoo.data.convert voc VOCdevkit/VOC2012 --to coco --out voc_train.json --split train
    python -m kdzoo.data.convert coco instances_train.json --images train/ --to yolo --out data/mine_yolo --split train

The same as ``kdzoo convert-data ...``. A COCO JSON is written atomically; YOLO and VOC folders get
their images linked (or copied, ``--image-mode copy``). Nothing is written over an existing output
unless ``--overwrite``, and the source dataset is only read.

:func:`read_dataset` reads one split of any of the three formats as a COCO dict plus the folder its
``file_name`` entries are relative to; the training engine builds its datasets from it.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from ..checkpoint import atomic_write
from ._images import ImageMode
from .voc import read_voc, voc_images_dir, write_voc
from .yolo import DATA_YAML, read_yolo, write_yolo, yolo_images_dir

__all__ = ["FORMATS", "LoadedSplit", "read_dataset", "convert"]

Format = Literal["coco", "yolo", "voc"]
FORMATS: tuple[str, ...] = ("coco", "yolo", "voc")


@dataclass
class LoadedSplit:
    """One split read as a COCO dict: ``coco``, the folder its ``file_name`` entries are relative to, and
    what messages call it (``source``)."""

    coco: dict[str, Any]
    images_dir: Path
    source: str


def read_dataset(fmt: Format, src: str | Path, split: str = "train", *, images_dir: str | Path | None = None,
                 classes: Sequence[str] | None = None) -> LoadedSplit:
    """Read split ``split`` of a dataset: ``src`` is a COCO JSON file (with ``images_dir``), a YOLO data.yaml
    or the folder holding it, or a VOC year folder (``classes``: the VOC class order, see :mod:`kdzoo.data.voc`)."""
    if fmt == "coco":
        from .coco import load_coco

        if images_dir is None:
            raise ValueError(f"COCO source {src}: the images folder is required (the folder file_name is relative to)")
        return LoadedSplit(load_coco(src).dataset, Path(images_dir), f"annotation file {src}")
    if fmt == "yolo":
        yaml_path = Path(src) / DATA_YAML if Path(src).is_dir() else Path(src)
        return LoadedSplit(read_yolo(src, split), yolo_images_dir(src, split), f"{yaml_path} ({split})")
    if fmt == "voc":
        return LoadedSplit(read_voc(src, split, classes), voc_images_dir(src), f"VOC dataset {src} ({split})")
    raise ValueError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _source_files(fmt: Format, src: Path) -> list[Path]:
    """Files of the source that an output must never replace."""
    if fmt == "yolo":
        return [src / DATA_YAML if src.is_dir() else src]
    return [src] if src.is_file() else []


def convert(fmt: Format, src: str | Path, to: Format, out: str | Path, *, split: str = "train",
            images_dir: str | Path | None = None, classes: Sequence[str] | None = None,
            image_mode: ImageMode = "symlink", overwrite: bool = False) -> str:
    """Convert split ``split`` of ``src`` (format ``fmt``) to ``to`` at ``out`` and say what was written.

    ``to="coco"``: ``out`` is the JSON file to write (atomically); its ``file_name`` entries are relative
    to the source's images folder, which the message names (a recipe's ``data.*_images``). ``to="yolo"`` /
    ``"voc"``: ``out`` is the dataset folder (another split can be added to it later).
    """
    if fmt == to:
        raise ValueError(f"source and target format are both {fmt!r}; expected two different formats")
    if to not in FORMATS:
        raise ValueError(f"unknown target format {to!r}; expected one of {', '.join(FORMATS)}")
    out = Path(out)
    src = Path(src)
    if to == "coco":
        if out.suffix.lower() != ".json":
            raise ValueError(f"output {out}: expected a .json file name for COCO annotations")
        if out.is_dir():
            raise IsADirectoryError(f"output {out} is a folder; expected the COCO JSON file to write")
        if out.exists() and not overwrite:
            raise FileExistsError(f"output {out} already exists; refusing to overwrite it (pass --overwrite to replace it)")
    protected = {os.path.realpath(p) for p in _source_files(fmt, src)}
    if os.path.realpath(out) in protected:
        raise ValueError(f"output {out} is a file of the source dataset; refusing to write over the source")
    loaded = read_dataset(fmt, src, split, images_dir=images_dir, classes=classes)
    if to == "coco":
        data = loaded.coco
        out.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f)

        atomic_write(out, write)
        return (f"{len(data['images'])} images, {len(data['annotations'])} boxes, {len(data['categories'])} classes "
                f"-> {out} (file_name entries are relative to {loaded.images_dir})")
    writer = write_yolo if to == "yolo" else write_voc
    summary = writer(loaded.coco, loaded.images_dir, out, split, image_mode=image_mode, overwrite=overwrite)
    return str(summary)


if __name__ == "__main__":  # python -m kdzoo.data.convert: the same as `kdzoo convert-data`
    from kdzoo.cli import run_command

    sys.exit(run_command("convert-data", prog="python -m kdzoo.data.convert"))
