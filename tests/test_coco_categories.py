"""COCO's 80 names and category ids on the COCO-trained zoo tags, and in prediction results."""
from __future__ import annotations

import numpy as np
import pytest

import kdzoo
from kdzoo.data.coco_categories import COCO_CATEGORY_IDS, COCO_NAMES
from kdzoo.predict import LoadedModel, _categories, _category_ids, _coco_annotations


def test_coco_tables() -> None:
    assert len(COCO_NAMES) == len(set(COCO_NAMES)) == 80 and len(COCO_CATEGORY_IDS) == 80
    ids = dict(zip(COCO_NAMES, COCO_CATEGORY_IDS))
    # A few of COCO 2017's ids, from instances_val2017.json's "categories".
    assert (ids["person"], ids["stop sign"], ids["backpack"], ids["dining table"], ids["toothbrush"]) == (1, 13, 27, 67, 90)
    assert sorted(COCO_CATEGORY_IDS) == list(COCO_CATEGORY_IDS)


def test_every_coco_trained_tag_carries_the_names() -> None:
    tags = [n for n in kdzoo.list_detectors(pretrained=True) if "coco" in n.split(".")[1]]
    assert len(tags) >= 20 and "gfl_r50.crosskd_coco" in tags and "gfl_r50.mmdet_coco" in tags
    for name in tags:
        cfg = kdzoo.get_pretrained_cfg(name)
        assert cfg.categories == COCO_NAMES and cfg.category_ids == COCO_CATEGORY_IDS, name


def test_zoo_model_predictions_use_coco_names_and_ids() -> None:
    model = kdzoo.create_detector("atss_r50_crosskd")  # the CrossKD release (weights not loaded)
    assert model.pretrained_cfg.tag == "crosskd_coco"
    loaded = LoadedModel("atss_r50_crosskd", model, _categories(model), 0, "", _category_ids(model))
    assert loaded.categories[:3] == ["person", "bicycle", "car"]
    det = {"boxes": np.array([[1.0, 2.0, 11.0, 22.0], [0.0, 0.0, 5.0, 5.0]]), "scores": np.array([0.9, 0.5]),
           "labels": np.array([0, 79])}
    anns = _coco_annotations(det, 7, "a.jpg", loaded, 1)
    assert [(a["category_id"], a["category_name"]) for a in anns] == [(1, "person"), (90, "toothbrush")]
    assert anns[0]["bbox"] == [1.0, 2.0, 10.0, 20.0]
    # A model without ids (e.g. trained on a dataset whose ids are 1..C) keeps index + 1.
    plain = kdzoo.create_detector("gfl_r18", num_classes=3)
    assert _category_ids(plain) is None
    assert LoadedModel("x", plain, _categories(plain), 0).category_id(2) == 3


@pytest.mark.parametrize("name", ["gfl_r50", "faster_rcnn_r101"])
def test_default_tags_of_coco_architectures_have_names(name: str) -> None:
    assert kdzoo.get_pretrained_cfg(name).categories == COCO_NAMES
