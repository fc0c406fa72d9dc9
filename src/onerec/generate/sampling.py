"""Unconstrained generation: beam search over the full codebooks, with no prefix table.

Constrained search (:mod:`onerec.generate.beam`) can only return codes of real items. To measure
how *legal* a model's own generations are (the Technical Report's format reward, arXiv
2506.13695 Sec. 4: without it RL drives legality below 50%) and to give ECPO rollouts that can be
illegal, this search keeps the top ``beam_size`` prefixes by total log-probability at every level
over all ``V_t`` codes. Same ``step_fn`` contract as :func:`onerec.generate.beam.beam_search`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from onerec.generate.beam import StepFn, reorder_state


def unconstrained_beam_search(step_fn: StepFn, *, batch_size: int, depth: int, beam_size: int,
                              state: Any = None) -> tuple[Tensor, Tensor]:
    """Top ``beam_size`` code sequences per user by total log-probability, no legality constraint.

    Args:
        step_fn: ``(tokens [B*K, step], step, state) -> (log_probs [B*K, V_step], state)``.
        batch_size: B. depth: D code levels. beam_size: K.
        state: tensor leaves with leading dim B*K (e.g. encoder memory repeated per beam).

    Returns:
        codes [B, K, D] (best first) and their scores [B, K]. When ``prod(V) < K`` the spare
        beams have score -inf.
    """
    b, k = batch_size, beam_size
    device = None
    tokens: Tensor | None = None
    scores: Tensor | None = None
    for step in range(depth):
        if tokens is None:
            tokens_in = torch.zeros(b * k, 0, dtype=torch.long)
        else:
            tokens_in = tokens
        logp, state = step_fn(tokens_in.to(device) if device is not None else tokens_in, step, state)
        device = logp.device
        v = logp.shape[-1]
        logp = logp.float().view(b, k, v)
        if scores is None:  # only beam 0 is live at the start, so beams never duplicate
            scores = torch.full((b, k), float("-inf"), device=device)
            scores[:, 0] = 0.0
        cand = (scores[..., None] + logp).view(b, k * v)
        top, flat = cand.topk(min(k, k * v), dim=1)
        if top.shape[1] < k:
            pad = k - top.shape[1]
            top = torch.cat([top, top.new_full((b, pad), float("-inf"))], dim=1)
            flat = torch.cat([flat, flat.new_zeros((b, pad))], dim=1)
        parent, token = flat // v, flat % v
        rows = (parent + torch.arange(b, device=device)[:, None] * k).reshape(-1)
        prev = tokens.to(device).index_select(0, rows) if tokens is not None else torch.zeros(b * k, 0,
                                                                                             dtype=torch.long,
                                                                                             device=device)
        tokens = torch.cat([prev, token.reshape(-1, 1)], dim=1)
        scores = top
        if step < depth - 1 and state is not None:
            state = reorder_state(state, rows, b * k)
    assert tokens is not None and scores is not None
    return tokens.view(b, k, depth), scores


def unconstrained_beam_search_reference(log_prob_fn, *, batch_size: int, depth: int,
                                        beam_size: int) -> tuple[list[list[tuple[int, ...]]], list[list[float]]]:
    """Plain-Python version (the check of the batched one). ``log_prob_fn(user, prefix) -> list of
    log-probs`` over level ``len(prefix)``'s codes."""
    all_codes, all_scores = [], []
    for u in range(batch_size):
        beams: list[tuple[float, tuple[int, ...]]] = [(0.0, ())]
        for _ in range(depth):
            cand = [(s + lp, (*p, c)) for s, p in beams for c, lp in enumerate(log_prob_fn(u, p))]
            cand.sort(key=lambda x: -x[0])
            beams = cand[:beam_size]
        all_codes.append([p for _, p in beams])
        all_scores.append([s for s, _ in beams])
    return all_codes, all_scores
