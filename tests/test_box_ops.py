"""Box coders, priors and decoding against hand-computed values."""
import math

import pytest
import torch

from kdzoo.box_ops import DeltaXYWHCoder, Integral, aligned_iou, bbox2distance, distance2bbox
from kdzoo.priors import AnchorGenerator, PointGenerator


def test_delta_coder_known_values_and_round_trip():
    prior = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[5.0, 5.0, 15.0, 25.0]])
    # centre (5,5)->(10,15), size (10,10)->(10,20): dx=0.5, dy=1, dw=0, dh=log 2
    assert torch.allclose(DeltaXYWHCoder().encode(prior, gt), torch.tensor([[0.5, 1.0, 0.0, math.log(2)]]))
    coder = DeltaXYWHCoder((0.1, 0.1, 0.2, 0.2))
    deltas = coder.encode(prior, gt)
    assert torch.allclose(deltas, torch.tensor([[5.0, 10.0, 0.0, math.log(2) / 0.2]]))
    assert torch.allclose(coder.decode(prior, deltas), gt, atol=1e-5)


def test_delta_coder_clamps_and_clips():
    prior = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    huge = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    box = DeltaXYWHCoder().decode(prior, huge)
    # dw is clamped to log(1000/16): width 10 * 62.5 = 625
    assert (box[0, 2] - box[0, 0]).item() == pytest.approx(625.0)
    clipped = DeltaXYWHCoder().decode(prior, huge, max_shape=(50, 40))
    assert clipped.tolist() == [[0.0, 0.0, 40.0, 50.0]]


def test_distance_conversions():
    pts = torch.tensor([[10.0, 20.0]])
    d = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    box = distance2bbox(pts, d)
    assert box.tolist() == [[9.0, 18.0, 13.0, 24.0]]
    assert bbox2distance(pts, box).tolist() == d.tolist()
    # GFL clamps targets just below reg_max so the right bin exists
    assert bbox2distance(pts, torch.tensor([[0.0, 0.0, 50.0, 50.0]]), max_dis=16).max().item() == pytest.approx(15.9)  # MMDetection: reg_max - 0.1


def test_integral_expectation():
    logits = torch.full((1, 4 * 17), -1e4)
    for side, bin_ in enumerate([0, 3, 7, 16]):
        logits[0, side * 17 + bin_] = 0.0
    assert torch.allclose(Integral(16)(logits), torch.tensor([[0.0, 3.0, 7.0, 16.0]]))
    # equal mass on bins 2 and 3 -> 2.5
    two = torch.full((1, 4 * 17), -1e4)
    two[0, 2] = two[0, 3] = 0.0
    assert Integral(16)(two)[0, 0].item() == pytest.approx(2.5)


def test_aligned_iou():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 3.0, 3.0]])
    assert torch.allclose(aligned_iou(a, b), torch.tensor([1 / 7, 0.0]))


def test_anchor_generator_layout_matches_mmdet():
    gen = AnchorGenerator((8,), ratios=(1.0,), octave_base_scale=8, scales_per_octave=1)
    (anchors,) = gen([(2, 3)])
    assert anchors.shape == (6, 4)
    assert anchors[0].tolist() == [-32.0, -32.0, 32.0, 32.0]  # 8 * stride, centred on (0, 0)
    assert anchors[1].tolist() == [-24.0, -32.0, 40.0, 32.0]  # next x first (row-major)
    assert anchors[3].tolist() == [-32.0, -24.0, 32.0, 40.0]
    retina = AnchorGenerator((8,), ratios=(0.5, 1.0, 2.0), octave_base_scale=4, scales_per_octave=3)
    (a,) = retina([(1, 1)])
    assert a.shape == (9, 4)
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    # ratio-major, scale-minor: anchor 0 is ratio 0.5 (h/w), scale 4 -> w = 32*sqrt(2), h = 32/sqrt(2)
    assert w[0].item() == pytest.approx(32 * math.sqrt(2), rel=1e-5)
    assert h[0].item() == pytest.approx(32 / math.sqrt(2), rel=1e-5)
    assert w[1].item() == pytest.approx(32 * 2 ** (1 / 3) * math.sqrt(2), rel=1e-5)
    assert (h / w)[3:6].tolist() == pytest.approx([1.0] * 3)


def test_point_generator_cell_centres():
    (pts,) = PointGenerator((16,))([(2, 2)])
    assert pts.tolist() == [[8.0, 8.0], [24.0, 8.0], [8.0, 24.0], [24.0, 24.0]]
