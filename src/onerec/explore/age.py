"""The terms of AGE, adversarial gradient driven exploration (Liu et al., arXiv 2112.11136), one function each.

Pseudo-exploration (Sec. 3.2): instead of showing an uncertain item to learn about it, move its representation
``h`` to where one round of learning from it would take the model, and score it there::

    h' = h + lambda * delta_y * g / ||g||,      g = d f(h) / d h,      score = f(h')

``delta_y`` is the uncertainty of the prediction, from MC dropout (Sec. 3.3): UCB-style, the spread (std or
variance) over N passes with independent masks (:func:`mc_spread`); Thompson-style, the difference of one
masked pass from the plain prediction (:func:`thompson_delta`), which can be negative, so the item is then
scored as if exploring had shown it to be worse. FGM takes the one step above (:func:`fgm`); PGD takes several
shorter ones, re-reading the gradient at each point and staying inside the ball of radius
``lambda * |delta_y|`` (:func:`pgd`).

onerec adds an uncertainty that shrinks with the item's data (``explore.uncertainty=count``,
:func:`count_spread`): MC dropout in the towers stays as wide for an item shown a hundred times as for a new one,
which the paper's online deployment answered with a cap on impressions.

Dynamic gating (Sec. 3.4): only items whose predicted CTR ``f(h)`` beats a threshold, which a shallow
item-only model predicts, are explored (:func:`gate_mask`, :func:`gated_scores`).

Shapes: B = rows (user, candidate item), E = width of the item representation, N = dropout passes.
``f`` maps a representation ``[B, E]`` to a prediction ``[B]`` and is row-wise: row b of the output depends on
row b of the input only, so the gradient of ``f(h).sum()`` gives every row its own ``g``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: a row-wise prediction: item representations [B, E] -> predicted CTR [B]
Predictor = Callable[[Tensor], Tensor]


def unit_gradient(f: Predictor, h: Tensor, eps: float = 1e-12) -> Tensor:
    """g / ||g|| [B, E] for g = d f(h) / d h, row by row (a zero gradient stays zero).

    Worked example: f(h) = 3 h_0 + 4 h_1 gives g = (3, 4), ||g|| = 5, so (0.6, 0.8) for every row.
    """
    x = h.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(f(x).sum(), x)
    return g / g.norm(dim=-1, keepdim=True).clamp_min(eps)


def fgm(f: Predictor, h: Tensor, radius: Tensor) -> Tensor:
    """One step (fast gradient method): h' = h + radius * g/||g||, with ``radius`` [B] = lambda * delta_y.

    Example: f(h) = 3 h_0 + 4 h_1, h = (1, 1), radius 10 -> h' = (1 + 6, 1 + 8) = (7, 9).
    """
    return (h.detach() + radius[:, None] * unit_gradient(f, h)).detach()


def project_ball(x: Tensor, center: Tensor, radius: Tensor) -> Tensor:
    """x moved back onto the ball of radius |radius| [B] around ``center`` where it lies outside it."""
    d = x - center
    norm = d.norm(dim=-1, keepdim=True)
    scale = torch.clamp(radius.abs()[:, None] / norm.clamp_min(1e-12), max=1.0)
    return center + d * scale


def pgd(f: Predictor, h: Tensor, radius: Tensor, *, steps: int, step: float) -> Tensor:
    """``steps`` steps of ``step * radius`` along the unit gradient at the current point, each projected into the
    ball of radius |radius| around h (projected gradient descent, here ascent for radius > 0).

    With steps=1 and step=1 it is :func:`fgm`. Example: f linear (the gradient never turns), h = (1, 1),
    g/||g|| = (0.6, 0.8), radius 10, steps 3, step 0.5: the steps of 5 go 5, 10, then 15 is projected back
    to 10, so h' = (7, 9), FGM's point.
    """
    x = h.detach()
    for _ in range(steps):
        x = x + step * radius[:, None] * unit_gradient(f, x)
        x = project_ball(x, h.detach(), radius)
    return x.detach()


def mc_spread(samples: Tensor, stat: str = "std") -> Tensor:
    """UCB-style uncertainty [B]: the standard deviation (``std``) or variance (``var``) over the N dropout
    passes ``samples`` [N, B] (population form, divided by N).

    Example: passes 0.1, 0.3 -> mean 0.2, var 0.01, std 0.1.
    """
    if stat not in ("std", "var"):
        raise ValueError(f"stat must be 'std' or 'var', not {stat!r}")
    var = samples.var(dim=0, correction=0)
    return var if stat == "var" else var.sqrt()


def count_spread(counts: Tensor, sigma: float) -> Tensor:
    """An uncertainty [B] that shrinks with an item's data: sigma / sqrt(1 + n), n = ``counts`` [B] (the item's
    showings so far): what a Beta-Bernoulli posterior's standard deviation does, up to its scale.

    Example: sigma 0.1, counts 0, 3, 99 -> 0.1, 0.05, 0.01.
    """
    return sigma / torch.sqrt(1.0 + counts.to(torch.float32))


def ucb_scores(samples: Tensor, alpha: float, stat: str = "std") -> Tensor:
    """The UCB baseline without the adversarial step [B]: mean over the passes + alpha * spread.

    Example: passes 0.1, 0.3, alpha 2, std -> 0.2 + 2 * 0.1 = 0.4.
    """
    return samples.mean(dim=0) + alpha * mc_spread(samples, stat)


def thompson_delta(one_mask: Tensor, plain: Tensor) -> Tensor:
    """Thompson-style uncertainty [B]: one dropout mask's prediction minus the prediction without dropout.

    Example: 0.25 with the mask, 0.2 without -> 0.05 (and -0.05 had the mask given 0.15).
    """
    return one_mask - plain


def gate_mask(pred: Tensor, threshold: Tensor) -> Tensor:
    """Dynamic gating [B] bool: explore where the predicted CTR beats the item-only model's threshold."""
    return pred > threshold


def gated_scores(plain: Tensor, explored: Tensor, explore: Tensor) -> Tensor:
    """The AGE score [B]: f(h') where the gate lets an item be explored, f(h) elsewhere."""
    return torch.where(explore, explored, plain)
