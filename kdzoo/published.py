"""Pretrained configs of published checkpoints: MMDetection's model zoo (the CrossKD teachers and
baselines) and the CrossKD releases. Each family file registers its own with these constructors.

MMDetection files are downloaded by torch.hub (``weights_only=True``, sha256 prefix in the file
name checked) and converted on load by :func:`kdzoo.convert.mmdet_to_kdzoo`. Every AP here is a
*published* number, labelled with its source; kdzoo has not re-measured them.

The CrossKD students are released on Google Drive only. Their configs carry the Drive file id
(``gdrive_id``): ``create_detector('gfl_r50_crosskd', pretrained=True)`` downloads the file once
with gdown (``pip install 'kdzoo[gdrive]'``) into ``torch.hub.get_dir()/checkpoints/<config>.pth``
and converts it on load like the MMDetection files. Offline, or to use a copy downloaded by hand,
pass ``pretrained_cfg_overlay=dict(file=PATH)`` (or place the file at that cache path). Their
weights are CC BY-NC 4.0 (non-commercial use only), as the CrossKD repository states.
"""
from __future__ import annotations

from typing import Any

from .data.coco_categories import COCO_CATEGORY_IDS, COCO_NAMES
from .pretrained import PretrainedCfg

__all__ = ["mmdet_cfg", "crosskd_cfg", "CAFFE_INPUT", "PAPERS"]

_MMDET = "https://download.openmmlab.com/mmdetection/v2.0"
_CONVERT = "kdzoo.convert:mmdet_to_kdzoo"
# Caffe-style ResNets (MMDetection's FCOS): BGR input, the caffe mean, unit std.
CAFFE_INPUT = dict(mean=(102.9801, 115.9465, 122.7717), std=(1.0, 1.0, 1.0), bgr=True)
PAPERS = {"gfl": "https://arxiv.org/abs/2006.04388", "atss": "https://arxiv.org/abs/1912.02424",
          "retinanet": "https://arxiv.org/abs/1708.02002", "fcos": "https://arxiv.org/abs/1904.01355",
          "faster_rcnn": "https://arxiv.org/abs/1506.01497", "crosskd": "https://arxiv.org/abs/2306.11369"}
CROSSKD_SOURCE = "CrossKD README (published), https://github.com/jbwang1997/CrossKD"
# Every checkpoint here is trained on COCO 2017: its 80 names, and the ids COCO's files use.
_COCO = dict(categories=COCO_NAMES, category_ids=COCO_CATEGORY_IDS)
_CC_BY_NC = "The weights are licensed CC BY-NC 4.0: non-commercial use only."


def mmdet_cfg(family: str, folder: str, filename: str, box_ap: float, **extra: Any) -> PretrainedCfg:
    """A model-zoo file ``{folder}/{filename}``; the 8 hex digits before ``.pth`` are its sha256 prefix."""
    return PretrainedCfg(
        url=f"{_MMDET}/{family}/{folder}/{filename}", url_hash=filename.rsplit("-", 1)[1].split(".")[0],
        filter_fn=_CONVERT, box_ap=box_ap, ap_dataset="COCO val2017", license="apache-2.0", paper=PAPERS[family], **_COCO,
        source=f"MMDetection model zoo (published), https://github.com/open-mmlab/mmdetection/tree/main/configs/{family}",
        notes=f"MMDetection config {folder}", **extra)


def crosskd_cfg(teacher: str, box_ap: float, drive_id: str, config: str, **extra: Any) -> PretrainedCfg:
    """A CrossKD release file: Drive id ``drive_id``, cached as ``<config>.pth``."""
    return PretrainedCfg(
        gdrive_id=drive_id, gdrive_filename=f"{config}.pth",
        filter_fn=_CONVERT, box_ap=box_ap, ap_dataset="COCO val2017", license="cc-by-nc-4.0", paper=PAPERS["crosskd"],
        **_COCO, source=CROSSKD_SOURCE, teacher=teacher, distill_method="crosskd",
        notes=(f"Official CrossKD release (config {config}) from the CrossKD authors' Google Drive, "
               f"https://drive.google.com/file/d/{drive_id}/view (linked from the CrossKD README), downloaded "
               f"with gdown (pip install 'kdzoo[gdrive]'). {_CC_BY_NC}"), **extra)


def crosskd_teacher_cfg(family: str, box_ap: float, drive_id: str, config: str, **extra: Any) -> PretrainedCfg:
    """A teacher the CrossKD authors trained with MMDetection and released on Google Drive."""
    return PretrainedCfg(
        gdrive_id=drive_id, gdrive_filename=f"{config}.pth", filter_fn=_CONVERT, box_ap=box_ap,
        ap_dataset="COCO val2017", license="cc-by-nc-4.0", paper=PAPERS[family], **_COCO, source=CROSSKD_SOURCE,
        notes=(f"CrossKD's teacher {config}.pth (MMDetection config configs/{family}/{config}.py of the CrossKD "
               f"repository), from the CrossKD authors' Google Drive, https://drive.google.com/file/d/{drive_id}/view, "
               f"downloaded with gdown (pip install 'kdzoo[gdrive]'). {_CC_BY_NC}"), **extra)
