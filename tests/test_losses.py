"""Each loss against values computed by hand on tiny cases."""
import math

import pytest
import torch

from kdzoo.losses import distribution_focal_loss, focal_loss, giou_loss, iou_loss, one_hot, quality_focal_loss


def test_focal_loss_closed_form():
    logits = torch.zeros(1, 2)  # p = 0.5 everywhere
    targets = torch.tensor([[1.0, 0.0]])
    loss = focal_loss(logits, targets, alpha=0.25, gamma=2.0)
    # positive: alpha * (1-p)^2 * log 2 ; negative: (1-alpha) * p^2 * log 2
    expected = torch.tensor([[0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2)]])
    assert torch.allclose(loss, expected, atol=1e-6)


def test_one_hot_background_is_all_zero():
    assert one_hot(torch.tensor([1, 3]), 3).tolist() == [[0, 1, 0], [0, 0, 0]]


@pytest.mark.parametrize("score, expected", [(0.5, 0.25 * math.log(2)), (1.0, 0.25 * math.log(2) + 0.25 * math.log(2))])
def test_quality_focal_loss_closed_form(score, expected):
    # Two classes, logits 0 (sigmoid 0.5), GT class 0 with IoU target `score`.
    # GT class: BCE(0.5 vs score) * |score - 0.5|^2; other class: BCE(0.5 vs 0) * 0.5^2 = log2 / 4.
    # BCE(p=0.5, t) = log 2 for every t, so the GT term is log2 * (score - 0.5)^2.
    loss = quality_focal_loss(torch.zeros(1, 2), torch.tensor([0]), torch.tensor([score]), beta=2.0)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_quality_focal_loss_background_row():
    # Background (label == C): only the "push to zero" term, log(1 + e^x) * sigmoid(x)^2 per class.
    x = torch.tensor([[1.0, -2.0]])
    loss = quality_focal_loss(x, torch.tensor([2]), torch.tensor([0.0]))
    expected = sum(math.log(1 + math.exp(v)) * (1 / (1 + math.exp(-v))) ** 2 for v in (1.0, -2.0))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_distribution_focal_loss_closed_form():
    probs = torch.tensor([[0.2, 0.5, 0.3]])
    loss = distribution_focal_loss(probs.log(), torch.tensor([0.4]))
    # target 0.4 sits between bins 0 and 1 with weights 0.6 and 0.4
    expected = 0.6 * -math.log(0.2) + 0.4 * -math.log(0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_giou_and_iou_losses_closed_form():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    # inter 1, union 7, enclosing 9: GIoU = 1/7 - 2/9
    assert giou_loss(a, b).item() == pytest.approx(1 - (1 / 7 - 2 / 9), rel=1e-5)
    assert iou_loss(a, b).item() == pytest.approx(math.log(7), rel=1e-5)
    assert iou_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
