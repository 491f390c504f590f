"""One weight-resolution rule for every registered architecture, and one way from a name to a model.

``pretrained=True`` on a bare architecture loads its first tag *with weights* (the same rule for every
family; the offline demo checkpoints never count) or fails before anything is built, with the same
message for all; an entry point called directly behaves like ``create_detector``."""
from __future__ import annotations

import pytest
import torch

import kdzoo
from kdzoo import builder, registry

# Written out by hand from the published model zoos (not computed from the registry): the
# architectures with published weights and the tag a bare name means.
DEFAULT_WEIGHTS = {
    "gfl_r50": "mmdet_coco", "gfl_r101": "mmdet_coco", "atss_r50": "mmdet_coco", "atss_r101": "mmdet_coco",
    "retinanet_r50": "mmdet_coco", "retinanet_r101": "mmdet_coco", "retinanet_swin_t": "crosskd_coco",
    "fcos_r50": "mmdet_coco", "fcos_r101": "mmdet_coco", "faster_rcnn_r50": "mmdet_coco", "faster_rcnn_r101": "mmdet_coco",
}
ALIASES = {"gfl_r50_crosskd": "gfl_r50.crosskd_coco", "atss_r50_crosskd": "atss_r50.crosskd_coco",
           "fcos_r50_crosskd": "fcos_r50.crosskd_coco", "retinanet_r50_crosskd": "retinanet_r50.crosskd_coco"}


class _Stub(torch.nn.Module):
    """What a family builder returns, without building ResNet-101s: the config it was given."""

    def __init__(self, *, pretrained_cfg, pretrained, **kwargs):
        super().__init__()
        self.pretrained_cfg, self.kwargs = pretrained_cfg, kwargs


@pytest.fixture
def loads(monkeypatch):
    """Record which config each build would load; the family builders are stubbed (the real ones are
    exercised everywhere else), nothing is downloaded."""
    seen = []
    monkeypatch.setattr(builder, "load_pretrained", lambda model, cfg, **kw: seen.append(f"{cfg.architecture}.{cfg.tag}"))
    for family in (kdzoo.gfl, kdzoo.atss, kdzoo.fcos, kdzoo.retinanet, kdzoo.faster_rcnn):
        monkeypatch.setattr(family, "BUILD_FN", _Stub)
    return seen


def _no_weights(arch: str) -> str:
    return (f"No pretrained weights are configured for {arch}.(default); pick a tag from "
            f"kdzoo.list_detectors('{arch}*', pretrained=True) or pass pretrained_cfg_overlay=dict(file='path/to/weights').")


@pytest.mark.parametrize("arch", sorted(registry._entrypoints))
def test_pretrained_true_loads_the_first_tag_with_weights_or_fails_alike(arch, loads, one_thread):
    entrypoint = registry.get_entrypoint(arch)
    if arch not in DEFAULT_WEIGHTS:
        for build in (lambda: kdzoo.create_detector(arch, pretrained=True), lambda: entrypoint(pretrained=True)):
            with pytest.raises(RuntimeError) as e:
                build()
            assert str(e.value) == _no_weights(arch)
        return
    model = kdzoo.create_detector(arch, pretrained=True)
    direct = entrypoint(pretrained=True)
    expected = f"{arch}.{DEFAULT_WEIGHTS[arch]}"
    assert loads == [expected, expected]
    assert model.arch_name == direct.arch_name == arch
    assert model.kwargs == direct.kwargs  # the same architecture settings either way
    assert model.pretrained_cfg.tag == direct.pretrained_cfg.tag == DEFAULT_WEIGHTS[arch]


def test_every_architecture_is_accounted_for():
    with_weights = {a for a in registry._entrypoints if registry.default_tag(a)
                    and registry.get_pretrained_cfg(a).has_weights}
    assert with_weights == set(DEFAULT_WEIGHTS)


def test_aliases_name_the_released_students(loads):
    assert registry.list_aliases() == ALIASES
    for alias, target in ALIASES.items():
        arch, tag = target.split(".")
        assert kdzoo.get_pretrained_cfg(alias).tag == tag and alias in kdzoo.list_detectors()
        model = kdzoo.create_detector(alias, pretrained=True)
        assert model.arch_name == arch and loads[-1] == target
    with pytest.raises(KeyError, match="'gfl_r50_crosskd' is an alias of 'gfl_r50.crosskd_coco' and takes no tag"):
        kdzoo.create_detector("gfl_r50_crosskd.coco")


def test_release_tags_carry_the_architecture_they_need(loads):
    """The CrossKD RetinaNet students' neck takes P6/P7 from the FPN output (the teachers' from C5):
    the release tag's build kwargs over the family's default, recorded for config.json."""
    student = kdzoo.create_detector("retinanet_r50_crosskd")
    plain = kdzoo.create_detector("retinanet_r50")
    assert student.kwargs["add_extra_convs"] == "on_output" and plain.kwargs["add_extra_convs"] == "on_input"
    assert student.build_kwargs == {"add_extra_convs": "on_output"} and plain.build_kwargs == {}
    assert student.kwargs["backbone"] == plain.kwargs["backbone"] == "resnet50"


def test_embedded_demo_checkpoints_are_never_a_default():
    embedded = kdzoo.embedded.list_embedded()
    assert embedded, "the package ships demo checkpoints"
    for name in embedded:
        arch, tag = name.split(".")
        assert registry.default_tag(arch) != tag
        assert kdzoo.create_detector(arch).build_kwargs == {}  # the bare name keeps the architecture's own settings


def test_directories_and_unknown_names(tmp_path):
    assert kdzoo.factory.parse_source(str(tmp_path)) == f"local-dir:{tmp_path}"
    with pytest.raises(FileNotFoundError, match="not a kdzoo model directory"):
        kdzoo.create_detector(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        kdzoo.create_detector(str(tmp_path / "runs" / "missing"))
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is a file, not a kdzoo model directory"):
        kdzoo.create_detector(tmp_path / "w.pth")
    with pytest.raises(KeyError, match="Close matches: gfl_r50"):
        kdzoo.create_detector("gfl_r5O")
