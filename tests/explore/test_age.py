"""Every AGE term against its formula on a case small enough to check by hand."""

import math

import pytest
import torch

from onerec.explore.age import (
    count_spread,
    fgm,
    gate_mask,
    gated_scores,
    mc_spread,
    pgd,
    project_ball,
    thompson_delta,
    ucb_scores,
    unit_gradient,
)


def linear(h: torch.Tensor) -> torch.Tensor:
    """f(h) = 3 h0 + 4 h1: gradient (3, 4) everywhere, |g| = 5."""
    return 3 * h[:, 0] + 4 * h[:, 1]


def test_unit_gradient_of_a_linear_prediction():
    g = unit_gradient(linear, torch.tensor([[1.0, 1.0], [-2.0, 5.0]]))
    assert torch.allclose(g, torch.tensor([[0.6, 0.8], [0.6, 0.8]]))


def test_unit_gradient_is_per_row():
    # f(h) = h0^2 + h1^2 has g = 2h, so g/|g| = h/|h| row by row
    h = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    g = unit_gradient(lambda x: (x**2).sum(dim=1), h)
    assert torch.allclose(g, torch.tensor([[0.6, 0.8], [0.0, -1.0]]))


def test_fgm_is_h_plus_lambda_delta_unit_gradient():
    h = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    lam, delta = 2.0, torch.tensor([5.0, -0.5])  # radius 10 and -1: a negative delta (Thompson) steps down
    moved = fgm(linear, h, lam * delta)
    assert torch.allclose(moved, torch.tensor([[7.0, 9.0], [-0.6, -0.8]]))
    assert linear(moved)[0] > linear(h)[0] and linear(moved)[1] < linear(h)[1]


def test_fgm_leaves_h_untouched_and_detached():
    h = torch.tensor([[1.0, 1.0]], requires_grad=True)
    moved = fgm(linear, h, torch.tensor([1.0]))
    assert not moved.requires_grad and torch.equal(h.detach(), torch.tensor([[1.0, 1.0]]))


def test_project_ball():
    center = torch.zeros(2, 2)
    x = torch.tensor([[6.0, 8.0], [0.3, 0.4]])
    out = project_ball(x, center, torch.tensor([5.0, -5.0]))  # radius 5 (sign ignored)
    assert torch.allclose(out, torch.tensor([[3.0, 4.0], [0.3, 0.4]]))


def test_pgd_one_full_step_is_fgm():
    h = torch.randn(4, 3)
    f = lambda x: torch.sigmoid(x @ torch.tensor([1.0, -2.0, 0.5]) + (x**2).sum(1))  # noqa: E731
    radius = torch.tensor([0.3, -0.2, 1.0, 0.0])
    assert torch.allclose(pgd(f, h, radius, steps=1, step=1.0), fgm(f, h, radius), atol=1e-6)


def test_pgd_on_a_linear_prediction_stops_at_the_ball():
    # steps of 0.5 * 10 = 5 along (0.6, 0.8): 5, 10, 15 -> projected back to 10
    moved = pgd(linear, torch.tensor([[1.0, 1.0]]), torch.tensor([10.0]), steps=3, step=0.5)
    assert torch.allclose(moved, torch.tensor([[7.0, 9.0]]))
    # two steps of 0.25 * 10: 5 along the gradient, inside the ball
    moved = pgd(linear, torch.tensor([[1.0, 1.0]]), torch.tensor([10.0]), steps=2, step=0.25)
    assert torch.allclose(moved, torch.tensor([[4.0, 5.0]]))


def test_pgd_follows_a_turning_gradient():
    # f(h) = -(h0 - 2)^2 - 4 h1^2: from (0, 1) the gradient (4, -8) does not point at the peak (2, 0). FGM's one
    # step of 1 goes along (1, -2)/sqrt(5); PGD re-reads the gradient and ends higher, inside the same ball.
    f = lambda x: -((x[:, 0] - 2) ** 2) - 4 * x[:, 1] ** 2  # noqa: E731
    h, r = torch.tensor([[0.0, 1.0]]), torch.tensor([1.0])
    one = fgm(f, h, r)
    assert torch.allclose(one, torch.tensor([[1 / math.sqrt(5), 1 - 2 / math.sqrt(5)]]), atol=1e-6)
    many = pgd(f, h, r, steps=4, step=0.25)
    assert (many - h).norm() <= 1.0 + 1e-6
    assert f(many) > f(one) + 0.2


def test_mc_spread_std_and_var():
    samples = torch.tensor([[0.1, 0.5], [0.3, 0.5]])  # two passes over two rows
    assert torch.allclose(mc_spread(samples, "var"), torch.tensor([0.01, 0.0]))
    assert torch.allclose(mc_spread(samples, "std"), torch.tensor([0.1, 0.0]))
    with pytest.raises(ValueError):
        mc_spread(samples, "iqr")


def test_ucb_scores():
    samples = torch.tensor([[0.1], [0.3]])
    assert torch.allclose(ucb_scores(samples, 2.0, "std"), torch.tensor([0.4]))
    assert torch.allclose(ucb_scores(samples, 2.0, "var"), torch.tensor([0.22]))


def test_count_spread_shrinks_with_the_items_data():
    spread = count_spread(torch.tensor([0, 3, 99]), 0.1)
    assert torch.allclose(spread, torch.tensor([0.1, 0.05, 0.01]))


def test_thompson_delta_is_one_mask_minus_plain():
    assert torch.allclose(thompson_delta(torch.tensor([0.25, 0.15]), torch.tensor([0.2, 0.2])),
                          torch.tensor([0.05, -0.05]))


def test_gating():
    pred, thr = torch.tensor([0.3, 0.1, 0.2]), torch.tensor([0.2, 0.2, 0.2])
    explore = gate_mask(pred, thr)
    assert explore.tolist() == [True, False, False]
    assert gated_scores(pred, torch.tensor([0.9, 0.9, 0.9]), explore).tolist() == pytest.approx([0.9, 0.1, 0.2])
