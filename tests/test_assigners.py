"""Assigners on constructed cases: which priors become positive, negative or ignored."""
import torch

from kdzoo.assigners import IGNORE, NEGATIVE, ATSSAssigner, MaxIoUAssigner, fcos_assign


def test_max_iou_assigner_thresholds():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor([
        [0.0, 0.0, 10.0, 14.0],   # IoU 100/140 = 0.71 -> positive
        [0.0, 0.0, 10.0, 20.0],   # IoU 0.5 -> positive (>= pos_iou_thr)
        [0.0, 0.0, 10.0, 22.5],   # IoU 0.444 -> between 0.4 and 0.5: ignored
        [20.0, 20.0, 30.0, 30.0], # IoU 0 -> negative
    ])
    out = MaxIoUAssigner(0.5, 0.4, 0.0)(anchors, gt)
    assert out.tolist() == [0, 0, IGNORE, NEGATIVE]


def test_max_iou_low_quality_match_and_best_gt():
    gts = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 104.0, 104.0]])
    anchors = torch.tensor([[0.0, 0.0, 10.0, 11.0], [98.0, 98.0, 108.0, 108.0], [50.0, 50.0, 60.0, 60.0]])
    out = MaxIoUAssigner(0.5, 0.4, 0.0)(anchors, gts)
    # the small GT's best anchor has IoU 0.16 < 0.5 but is matched by the low-quality rule
    assert out.tolist() == [0, 1, NEGATIVE]
    assert MaxIoUAssigner(0.5, 0.4, 0.0, match_low_quality=False)(anchors, gts).tolist() == [0, NEGATIVE, NEGATIVE]


def test_max_iou_no_gt_all_negative():
    assert MaxIoUAssigner()(torch.rand(5, 4) * 10 + torch.tensor([0, 0, 10, 10.0]), torch.zeros(0, 4)).tolist() == [NEGATIVE] * 5


def test_atss_assigner_mean_plus_std():
    # four 10x10 anchors in a row; GT [2,0,12,10]. Top-3 by centre distance: a0, a1, a2 with IoUs
    # 80/120, 20/180, 0 -> mean 0.2593, unbiased std 0.3572, threshold 0.6165: only a0 passes.
    anchors = torch.tensor([[0.0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10], [30, 0, 40, 10]])
    gt = torch.tensor([[2.0, 0, 12, 10]])
    assert ATSSAssigner(topk=3)(anchors, [4], gt).tolist() == [0, NEGATIVE, NEGATIVE, NEGATIVE]


def test_atss_assigner_topk_per_level_and_centre_inside():
    # level 0 has the small anchors, level 1 one big anchor whose centre is outside the GT.
    anchors = torch.tensor([[0.0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10], [-40.0, -40, 0, 0]])
    gt = torch.tensor([[2.0, 0, 12, 10]])
    out = ATSSAssigner(topk=3)(anchors, [3, 1], gt)
    assert out[3] == NEGATIVE  # centre (-20,-20) not inside the GT
    assert out[0] == 0


def test_atss_assigner_conflict_goes_to_higher_iou():
    anchors = torch.tensor([[0.0, 0, 10, 10], [30, 0, 40, 10], [60, 0, 70, 10]])
    # Both GTs pass their own mean+std threshold on anchor 0 (IoU 0.833 >= 0.759 and
    # 0.4545 >= 0.414); the anchor goes to the GT it overlaps more.
    gts = torch.tensor([[0.0, 0, 10, 12], [0.0, 0, 11, 20]])
    assert ATSSAssigner(topk=3)(anchors, [3], gts).tolist() == [0, NEGATIVE, NEGATIVE]
    assert ATSSAssigner(topk=3)(anchors, [3], gts[1:]).tolist() == [0, NEGATIVE, NEGATIVE]


def test_fcos_assign_smallest_area_and_ranges():
    points = torch.tensor([[5.0, 5.0], [50.0, 50.0], [5.0, 5.0]])
    ranges = torch.tensor([[-1.0, 64.0], [-1.0, 64.0], [64.0, 128.0]])
    gts = torch.tensor([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 100.0, 100.0]])
    out = fcos_assign(points, ranges, gts)
    # point 0 lies in both: the smaller GT wins; point 1 only in the big GT (max side 50 in range);
    # point 2 (next level, range 64..128) regresses max distance 95 for the big GT only.
    assert out.tolist() == [0, 1, 1]
    assert fcos_assign(points, ranges, torch.zeros(0, 4)).tolist() == [NEGATIVE] * 3
