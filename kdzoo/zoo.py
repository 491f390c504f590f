"""Zoo entries for the official checkpoints: MMDetection's model zoo (the CrossKD teachers and
baselines) and the CrossKD students.

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

import torch.nn as nn

from . import atss, fcos, gfl, retinanet
from .data.coco_categories import COCO_CATEGORY_IDS, COCO_NAMES
from .pretrained import PretrainedCfg
from .registry import register_detector, register_pretrained_cfgs

__all__: list[str] = []

_MMDET = "https://download.openmmlab.com/mmdetection/v2.0"
_CONVERT = "kdzoo.convert:mmdet_to_kdzoo"
_CAFFE = dict(mean=(102.9801, 115.9465, 122.7717), std=(1.0, 1.0, 1.0), bgr=True)
_PAPERS = {"gfl": "https://arxiv.org/abs/2006.04388", "atss": "https://arxiv.org/abs/1912.02424",
           "retinanet": "https://arxiv.org/abs/1708.02002", "fcos": "https://arxiv.org/abs/1904.01355",
           "faster_rcnn": "https://arxiv.org/abs/1506.01497"}
_CROSSKD_PAPER = "https://arxiv.org/abs/2306.11369"
_CROSSKD_SOURCE = "CrossKD README (published), https://github.com/jbwang1997/CrossKD"
# Every checkpoint here is trained on COCO 2017: its 80 names, and the ids COCO's files use.
_COCO = dict(categories=COCO_NAMES, category_ids=COCO_CATEGORY_IDS)


def _mmdet(family: str, folder: str, filename: str, box_ap: float, **extra: Any) -> PretrainedCfg:
    """A model-zoo file ``{folder}/{filename}``; the 8 hex digits before ``.pth`` are its sha256 prefix."""
    return PretrainedCfg(
        url=f"{_MMDET}/{family}/{folder}/{filename}", url_hash=filename.rsplit("-", 1)[1].split(".")[0],
        filter_fn=_CONVERT, box_ap=box_ap, ap_dataset="COCO val2017", license="apache-2.0", paper=_PAPERS[family], **_COCO,
        source=f"MMDetection model zoo (published), https://github.com/open-mmlab/mmdetection/tree/main/configs/{family}",
        notes=f"MMDetection config {folder}", **extra)


register_pretrained_cfgs({
    "gfl_r50.mmdet_coco": _mmdet("gfl", "gfl_r50_fpn_1x_coco", "gfl_r50_fpn_1x_coco_20200629_121244-25944287.pth", 40.2),
    "gfl_r101.mmdet_coco": _mmdet("gfl", "gfl_r101_fpn_mstrain_2x_coco",
                                  "gfl_r101_fpn_mstrain_2x_coco_20200629_200126-dd12f847.pth", 44.7),
    "atss_r50.mmdet_coco": _mmdet("atss", "atss_r50_fpn_1x_coco", "atss_r50_fpn_1x_coco_20200209-985f7bd0.pth", 39.4),
    "atss_r101.mmdet_coco": _mmdet("atss", "atss_r101_fpn_1x_coco", "atss_r101_fpn_1x_20200825-dfcadd6f.pth", 41.5),
    "retinanet_r50.mmdet_coco": _mmdet("retinanet", "retinanet_r50_fpn_1x_coco",
                                       "retinanet_r50_fpn_1x_coco_20200130-c2398f9e.pth", 36.5),
    "retinanet_r50.mmdet_coco_2x": _mmdet("retinanet", "retinanet_r50_fpn_2x_coco",
                                          "retinanet_r50_fpn_2x_coco_20200131-fdb43119.pth", 37.4),
    "retinanet_r101.mmdet_coco": _mmdet("retinanet", "retinanet_r101_fpn_2x_coco",
                                        "retinanet_r101_fpn_2x_coco_20200131-5560aee8.pth", 38.9),
    # FCOS: caffe-style ResNets, BGR input with the caffe mean and unit std.
    "fcos_r50.mmdet_coco": _mmdet("fcos", "fcos_r50_caffe_fpn_gn-head_1x_coco",
                                  "fcos_r50_caffe_fpn_gn-head_1x_coco-821213aa.pth", 36.6, **_CAFFE),
    "fcos_r50.mmdet_coco_ms2x": _mmdet("fcos", "fcos_r50_caffe_fpn_gn-head_mstrain_640-800_2x_coco",
                                       "fcos_r50_caffe_fpn_gn-head_mstrain_640-800_2x_coco-d92ceeea.pth", 38.5, **_CAFFE),
    "fcos_r101.mmdet_coco": _mmdet("fcos", "fcos_r101_caffe_fpn_gn-head_mstrain_640-800_2x_coco",
                                   "fcos_r101_caffe_fpn_gn-head_mstrain_640-800_2x_coco-511424d6.pth", 40.8, **_CAFFE),
})

try:
    from . import faster_rcnn  # noqa: F401  (registers faster_rcnn_*)
except ImportError:  # the two-stage family is optional
    faster_rcnn = None
if faster_rcnn is not None:
    register_pretrained_cfgs({
        "faster_rcnn_r50.mmdet_coco": _mmdet("faster_rcnn", "faster_rcnn_r50_fpn_1x_coco",
                                             "faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth", 37.4),
        "faster_rcnn_r101.mmdet_coco": _mmdet("faster_rcnn", "faster_rcnn_r101_fpn_1x_coco",
                                              "faster_rcnn_r101_fpn_1x_coco_20200130-f513f705.pth", 39.4),
    })


# --------------------------------------------------------------------------- CrossKD students
def _crosskd(teacher: str, box_ap: float, drive_id: str, config: str, **extra: Any) -> PretrainedCfg:
    """A CrossKD release file: Drive id ``drive_id``, cached as ``<config>.pth``."""
    return PretrainedCfg(
        gdrive_id=drive_id, gdrive_filename=f"{config}.pth",
        filter_fn=_CONVERT, box_ap=box_ap, ap_dataset="COCO val2017", license="cc-by-nc-4.0", paper=_CROSSKD_PAPER, **_COCO,
        source=_CROSSKD_SOURCE, teacher=teacher, distill_method="crosskd",
        notes=(f"Official CrossKD release (config {config}) from the CrossKD authors' Google Drive, "
               f"https://drive.google.com/file/d/{drive_id}/view (linked from the CrossKD README), downloaded "
               "with gdown (pip install 'kdzoo[gdrive]'). The weights are licensed CC BY-NC 4.0: "
               "non-commercial use only."), **extra)


register_pretrained_cfgs({
    "gfl_r50_crosskd.coco": _crosskd("gfl_r101.mmdet_coco", 43.7, "1S7fyDkFSAauJry0ZGS-ZW-P3CJb7RlsO",
                                     "crosskd_r50_gflv1_r101-2x-ms_fpn_1x_coco"),
    "gfl_r50_crosskd.pkd_coco": _crosskd("gfl_r101.mmdet_coco", 43.9, "1LJZ27al2omdXb3cUty-RX37pMLp8L-4B",
                                         "crosskd+pkd_r50_gflv1_r101-2x-ms_fpn_1x_coco"),
    "retinanet_r50_crosskd.coco": _crosskd("retinanet_r101.mmdet_coco", 39.7, "1fjwtuoKd4a_b5CHf6X0tKDmSNlwzYfWb",
                                           "crosskd_r50_retinanet_r101_fpn_2x_coco"),
    "retinanet_r50_crosskd.pkd_coco": _crosskd("retinanet_r101.mmdet_coco", 39.8, "1Ha9r5DrzaZ_9tz8x9PVxOkGaKAApIBGd",
                                               "crosskd+pkd_r50_retinanet_r101_fpn_2x_coco"),
    # Heterogeneous pair: a Swin-T teacher, 1x schedule. Registered after the R101-teacher tags so '.coco' stays the default.
    "retinanet_r50_crosskd.swin_coco": _crosskd("retinanet_swin_t.crosskd_coco", 38.0, "17rbkcXgqKfVUweRgzK7NtqFcLC-PohKX",
                                                "crosskd_r50_retinanet_swint_fpn_1x_coco"),
    "fcos_r50_crosskd.coco": _crosskd("fcos_r101.mmdet_coco", 41.1, "1ll5vOGFMEfOsNCkgbPuqh0uMNFnfICbE",
                                      "crosskd_r50_fcos_r101-2x-ms_caffe_fpn_gn-head_2x_ms_coco", **_CAFFE),
    "fcos_r50_crosskd.pkd_coco": _crosskd("fcos_r101.mmdet_coco", 41.3, "1r-UzxAOYOfPJFIV5e7Rd3P3uC9gXP09v",
                                          "crosskd+pkd_r50_fcos_r101-2x-ms_caffe_fpn_gn-head_2x_ms_coco", **_CAFFE),
    "atss_r50_crosskd.coco": _crosskd("atss_r101.mmdet_coco", 41.8, "1qyxOMaxQrwJ20tEgIwU8pi31O8A1hsEG",
                                      "crosskd_r50_atss_r101_fpn_1x_coco"),
    "atss_r50_crosskd.pkd_coco": _crosskd("atss_r101.mmdet_coco", 41.8, "1LkuKau1Na843ZPSNz77DqV8v8111b2_y",
                                          "crosskd+pkd_r50_atss_r101_fpn_1x_coco"),
})


# CrossKD's heterogeneous teacher (Swin-T -> R50), trained by the CrossKD authors with MMDetection.
register_pretrained_cfgs({
    "retinanet_swin_t.crosskd_coco": PretrainedCfg(
        gdrive_id="1W2KGR77XfQ5SRomgIyxCjqUNGJichcgh", gdrive_filename="retinanet_swin-t-p4-w7_fpn_1x_coco.pth",
        filter_fn=_CONVERT, box_ap=37.3, ap_dataset="COCO val2017", license="cc-by-nc-4.0", paper=_PAPERS["retinanet"], **_COCO,
        source=_CROSSKD_SOURCE,
        notes=("CrossKD's Swin-T RetinaNet teacher, retinanet_swin-t-p4-w7_fpn_1x_coco.pth (MMDetection config "
               "configs/retinanet/retinanet_swin-t-p4-w7_fpn_1x_coco.py of the CrossKD repository), from the CrossKD "
               "authors' Google Drive, https://drive.google.com/file/d/1W2KGR77XfQ5SRomgIyxCjqUNGJichcgh/view, "
               "downloaded with gdown (pip install 'kdzoo[gdrive]'). The weights are licensed CC BY-NC 4.0: "
               "non-commercial use only.")),
})

@register_detector
def gfl_r50_crosskd(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """GFL R50 1x distilled with CrossKD from GFL R101 (2x ms): ``gfl_r50`` with the CrossKD release's config."""
    return gfl.gfl_r50(pretrained=pretrained, **kwargs)


@register_detector
def retinanet_r50_crosskd(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """RetinaNet R50 2x distilled with CrossKD from RetinaNet R101 2x: ``retinanet_r50`` with the CrossKD release's
    config, whose FPN takes P6/P7 from its output (``add_extra_convs='on_output'``; MMDetection's RetinaNet and
    the teachers take them from C5)."""
    kwargs.setdefault("add_extra_convs", "on_output")
    return retinanet.retinanet_r50(pretrained=pretrained, **kwargs)


@register_detector
def fcos_r50_crosskd(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """FCOS caffe-R50 2x ms distilled with CrossKD from FCOS R101: ``fcos_r50`` with the CrossKD release's config."""
    return fcos.fcos_r50(pretrained=pretrained, **kwargs)


@register_detector
def atss_r50_crosskd(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ATSS R50 1x distilled with CrossKD from ATSS R101: ``atss_r50`` with the CrossKD release's config."""
    return atss.atss_r50(pretrained=pretrained, **kwargs)
