"""Sequence log-probabilities of semantic IDs and the preference losses (DPO, ECPO, GBPO).

Shapes: B = users, G = candidates per user, D = code levels, E = d_model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def sequence_log_probs(model, batch: dict[str, Tensor], codes: Tensor) -> Tensor:
    """log pi(codes | user) summed over the D levels, teacher-forced: codes [B, G, D] -> [B, G].

    Uses only the generator's public pieces: ``encode_batch`` once per user, ``decode`` over
    ``[BOS] s_1 .. s_{D-1}`` for every candidate, and ``heads[t]`` per level. Codes must lie in
    each level's codebook (unconstrained generations do; they need not map to an item).
    """
    b, g, d = codes.shape
    memory, memory_mask = model.encode_batch(batch)
    memory = memory.repeat_interleave(g, dim=0)
    memory_mask = memory_mask.repeat_interleave(g, dim=0)
    flat = codes.reshape(b * g, d)
    hidden = model.decode(flat[:, :-1], memory, memory_mask)  # [B*G, D, E]
    total = hidden.new_zeros(b * g)
    for t in range(d):
        logp = F.log_softmax(model.heads[t](hidden[:, t]).float(), dim=-1)
        total = total + logp.gather(1, flat[:, t:t + 1])[:, 0]
    return total.view(b, g)


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float) -> Tensor:
    """Direct Preference Optimization (Rafailov et al. 2023), as OneRec V1's IPA uses it (arXiv
    2502.18965, Sec. 2.3): -log sigmoid(beta * [(log pi_w - log ref_w) - (log pi_l - log ref_l)]),
    averaged over pairs. The reference is the model of the current round (frozen)."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean()


def ecpo_loss(logp: Tensor, logp_old: Tensor, advantages: Tensor, eps: float, delta: float,
              mask: Tensor | None = None) -> Tensor:
    """Early-Clipped GRPO (OneRec Technical Report, arXiv 2506.13695, Sec. 4.2).

    The PPO-clipped surrogate with ratio ``pi / pi_old'``, where for negative advantages
    ``pi_old' = max(sg(pi) / (1 + eps + delta), pi_old)``: a sample the policy has already made
    much likelier than ``pi_old`` (ratio > 1 + eps + delta) is measured against a raised
    ``pi_old'``, so its ratio is capped at ``1 + eps + delta`` and its gradient cannot explode.
    Positive advantages use ``pi_old`` unchanged. No KL term: NTP training continues alongside.

    Args:
        logp: log pi of each sample (with grad), [B, G]. logp_old: log pi_old (no grad), [B, G].
        advantages: group-normalised advantages [B, G]. mask: which samples count (default all).
    """
    logp_old = logp_old.detach()
    raised = torch.maximum(logp.detach() - math.log(1.0 + eps + delta), logp_old)
    base = torch.where(advantages < 0, raised, logp_old)
    ratio = torch.exp(logp - base)
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1.0 - eps, 1.0 + eps) * advantages)
    if mask is None:
        return -surrogate.mean()
    m = mask.to(surrogate.dtype)
    return -(surrogate * m).sum() / m.sum().clamp_min(1.0)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate at both ends (Maechler 2012): -inf at x = 0."""
    x = x.clamp_max(0.0)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def gbpo_loss(logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor | None = None) -> Tensor:
    """Gradient-Bounded Policy Optimization (OneRec-V2, arXiv 2508.20900, Sec. 4).

    The surrogate ``-A * pi / pi_old'`` with no ratio clipping, where the old policy in the
    denominator is raised by the current one (``sg`` = stop-gradient)::

        pi_old' = max(pi_old, sg(pi))        for A >= 0
        pi_old' = max(pi_old, 1 - sg(pi))    for A < 0

    Why it bounds the gradient: write a sample's probability as ``pi = sigmoid(s)`` (``s``: the
    logit of "this item" against all others, ``d pi / d s = pi (1 - pi)``). Then
    ``|dL/ds| = |A| pi (1 - pi) / pi_old'``, which is at most ``|A| (1 - pi)`` for A >= 0 and at most
    ``|A| pi`` for A < 0: never above ``|A|``, whatever ``pi_old`` is -- the gradient of binary cross
    entropy, ``|sigmoid(s) - y|``. Plain ``pi / pi_old`` grows without bound as ``pi_old -> 0``; PPO/ECPO
    instead clip the ratio and drop those samples' gradients altogether. In log-prob terms
    ``dL/dlog pi = -A * ratio``: positives move ``log pi`` at most ``|A|`` per unit (ratio <= 1); a
    negative that the policy has made unlikely (``pi`` small, ``pi_old' ~ 1``) is pushed only gently.

    Here ``pi`` is the probability of a whole item (its D semantic-ID tokens), as in :func:`ecpo_loss`.

    Args:
        logp: log pi of each sample (with grad), [B, G]. logp_old: log pi_old (no grad), [B, G].
        advantages: [B, G], e.g. V2's duration-aware {-1, 0, +1}. mask: which samples count (default all).

    Example: pi = 0.6, pi_old = 0.2, A = -1 -> pi_old' = max(0.2, 0.4) = 0.4, ratio 1.5, loss 1.5
    (plain ``pi / pi_old`` would be 3); pi = 0.5, pi_old = 0.25, A = +1 -> pi_old' = 0.5, ratio 1, loss -1.
    """
    logp_old = logp_old.detach()
    cur = logp.detach()
    # arXiv 2508.20900 (Sec. 4), GBPO: pi_old' = max(pi_old, sg(pi)) where A >= 0,
    # max(pi_old, 1 - sg(pi)) where A < 0 -- in log space
    base = torch.where(advantages >= 0, torch.maximum(logp_old, cur), torch.maximum(logp_old, _log1mexp(cur)))
    surrogate = torch.exp(logp - base) * advantages  # no ratio clipping: the bound is on the gradient
    if mask is None:
        return -surrogate.mean()
    m = mask.to(surrogate.dtype)
    return -(surrogate * m).sum() / m.sum().clamp_min(1.0)


def grpo_loss(logp: Tensor, logp_old: Tensor, advantages: Tensor, eps: float) -> Tensor:
    """Plain PPO-clipped GRPO surrogate (no early clipping), the comparison point of :func:`ecpo_loss`."""
    ratio = torch.exp(logp - logp_old.detach())
    return -torch.minimum(ratio * advantages, ratio.clamp(1.0 - eps, 1.0 + eps) * advantages).mean()
