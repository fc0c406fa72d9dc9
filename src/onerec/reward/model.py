"""The P-Score model: a multi-task ranking model with SIM, CAN, per-objective towers and a fusion MLP.

OneRec Technical Report (arXiv 2506.13695, Sec. 4 "reward system"): the preference reward is a
SIM-based multi-tower ranking model (towers for ctr, lvtr, ltr, ...) whose final MLP fuses the
towers into one preference score. Its parts here:

* **DIN target attention** over the most recent ``short_len`` behaviours (Zhou et al. 2018), the
  baseline's only user-interest module.
* **SIM** (Pi et al., arXiv 2006.05639) over the long history (``long_len`` behaviours):
  General Search Unit, *hard* search = behaviours whose category (first SID level) equals the
  target's, most recent first; *soft* search = top-K by inner product of projected embeddings,
  the projections trained by an auxiliary CTR loss on the whole long sequence (Sec. 3.1: the soft
  search model is "trained with an auxiliary CTR prediction task"). Exact Search Unit: multi-head
  target attention over the retrieved behaviours, each with a bucketised time-gap embedding
  (Sec. 3.2).
* **CAN** (Bian et al., arXiv 2011.05625): the target's co-action parameters (separate from its
  embedding) reshaped into a per-sample MLP (``can_dims``, no bias, tanh between layers) applied
  to each history item's co-action parameters raised to orders 1..``can_orders``; all layer
  outputs concatenated and sum-pooled over the history; pairs (target item x history items) and
  (target category x history categories), over the short history.
* **Towers** per objective on the concatenated features, and a **fusion** MLP over the towers'
  logits that outputs the preference score (trained on capped watch time; the towers' outputs are
  detached for it, so the towers stay calibrated to their own labels).

``sim=False`` and ``can=False`` ablate the two modules; both off is the DIN-style baseline.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onerec.config import RewardConfig
from onerec.data.schema import SIGNALS
from onerec.features.history import N_AGE_BUCKETS
from onerec.model.layers import Attention
from onerec.reward.data import N_DUR_BUCKETS


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


class TargetAttention(nn.Module):
    """Multi-head attention of the target item (query) over a set of behaviours (keys/values)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = Attention(dim, heads)

    def forward(self, target: Tensor, behaviours: Tensor, mask: Tensor) -> Tensor:
        """target [B, E], behaviours [B, K, E], mask bool [B, K] -> [B, E] (zero where nothing is real)."""
        any_ = mask.any(dim=1, keepdim=True)
        m = (mask | ~any_)[:, None, :]
        out = self.attn(target[:, None, :], behaviours, mask=m)[:, 0]
        return out * any_


def hard_search(hist_cat: Tensor, target_cat: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """SIM hard search: indexes [B, k] of the most recent behaviours in the target's category, and
    their validity mask. Histories are right-aligned, so a larger index is more recent."""
    hit = mask & (hist_cat == target_cat[:, None])
    pos = torch.arange(hist_cat.shape[1], device=hist_cat.device).expand_as(hist_cat)
    key = torch.where(hit, pos, torch.full_like(pos, -1))
    k = min(k, hist_cat.shape[1])
    vals, idx = key.topk(k, dim=1)
    return idx, vals >= 0


def soft_search(scores: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """SIM soft search: indexes [B, k] of the top-k behaviours by ``scores`` [B, L] among real ones."""
    k = min(k, scores.shape[1])
    masked = scores.masked_fill(~mask, float("-inf"))
    vals, idx = masked.topk(k, dim=1)
    return idx, torch.isfinite(vals)


class CoAction(nn.Module):
    """CAN co-action unit for one (target feature x history feature) pair.

    The target's parameter vector (length ``sum(d_i * d_{i+1})``) is reshaped into the weights of
    a per-sample MLP ``dims[0] -> dims[1] -> ...`` (no bias, tanh between layers, as CAN's
    official setting); each history feature's ``dims[0]``-vector, raised elementwise to orders
    1..``orders``, goes through it; every layer's output is kept, concatenated, and the history is
    sum-pooled. Output width ``orders * sum(dims[1:])``.
    """

    def __init__(self, n_target: int, n_hist: int, dims: list[int], orders: int) -> None:
        super().__init__()
        self.dims, self.orders = list(dims), orders
        self.n_params = sum(a * b for a, b in pairwise(dims))
        self.target_params = nn.Embedding(n_target, self.n_params)
        self.hist_params = nn.Embedding(n_hist + 1, dims[0], padding_idx=n_hist)
        nn.init.normal_(self.target_params.weight, std=1.0 / math.sqrt(dims[0]))
        nn.init.normal_(self.hist_params.weight, std=0.5)
        self.out_dim = orders * sum(dims[1:])

    def forward(self, target: Tensor, hist: Tensor, mask: Tensor) -> Tensor:
        """target ids [B], history ids [B, S] (-1 padding), mask [B, S] -> [B, out_dim]."""
        p = self.target_params(target)  # [B, T]
        pad = self.hist_params.padding_idx
        x0 = self.hist_params(torch.where(hist < 0, torch.full_like(hist, pad), hist))  # [B, S, d0]
        weights, at = [], 0
        for a, b in pairwise(self.dims):
            weights.append(p[:, at:at + a * b].view(-1, a, b))
            at += a * b
        outs = []
        for order in range(1, self.orders + 1):
            h = x0 ** order
            for j, w in enumerate(weights):
                h = torch.bmm(h, w)  # per-sample weights: [B, S, a] x [B, a, b]
                if j < len(weights) - 1:
                    h = torch.tanh(h)
                outs.append((h * mask[..., None]).sum(dim=1))
        return torch.cat(outs, dim=-1)


class PScoreModel(nn.Module):
    """Multi-task ranking model; ``forward(batch)`` -> dict of tower logits, fusion logit, aux logit.

    Args:
        cfg: sizes and switches (:class:`onerec.config.RewardConfig`).
        n_users: vocabulary size of the user ids.
        n_items: vocabulary size of the item ids.
        n_cats: vocabulary size of the categories.
        n_authors: vocabulary size of the authors.
    """

    def __init__(self, cfg: RewardConfig, n_users: int, n_items: int, n_cats: int, n_authors: int) -> None:
        super().__init__()
        self.cfg = cfg
        e = cfg.d_model
        self.n_items, self.n_cats = n_items, n_cats
        self.objectives = list(cfg.objectives)
        self.user_emb = nn.Embedding(n_users, e)
        self.item_emb = nn.Embedding(n_items + 1, e, padding_idx=n_items)
        self.cat_emb = nn.Embedding(n_cats + 1, e, padding_idx=n_cats)
        self.author_emb = nn.Embedding(n_authors, e)
        self.dur_emb = nn.Embedding(N_DUR_BUCKETS, e)
        self.flag_emb = nn.Linear(len(SIGNALS), e, bias=False)
        self.gap_emb = nn.Embedding(N_AGE_BUCKETS, e)
        self.din = TargetAttention(e, cfg.n_heads)
        parts = 4 * e  # user, target, DIN, author x duration interactions
        if cfg.sim:
            self.esu = TargetAttention(e, cfg.n_heads)
            self.soft_q = nn.Linear(e, cfg.soft_dim, bias=False)
            self.soft_k = nn.Linear(e, cfg.soft_dim, bias=False)
            self.aux_head = _mlp(2 * e, cfg.tower_hidden, 1)
            parts += e
        if cfg.can:
            self.can_item = CoAction(n_items, n_items, cfg.can_dims, cfg.can_orders)
            self.can_cat = CoAction(n_cats, n_cats, cfg.can_dims, cfg.can_orders)
            parts += self.can_item.out_dim + self.can_cat.out_dim
        self.towers = nn.ModuleList(_mlp(parts, cfg.tower_hidden, 1) for _ in self.objectives)
        self.fusion = _mlp(len(self.objectives), cfg.tower_hidden, 1)

    # -------------------------------------------------------------------------- pieces
    def _item_vec(self, item: Tensor, cat: Tensor) -> Tensor:
        item = torch.where(item < 0, torch.full_like(item, self.n_items), item)
        cat = torch.where(cat < 0, torch.full_like(cat, self.n_cats), cat)
        return self.item_emb(item) + self.cat_emb(cat)

    def _behaviours(self, b: dict[str, Tensor]) -> Tensor:
        bits = (b["hist_flags"].unsqueeze(-1) >> torch.arange(len(SIGNALS), device=b["hist_flags"].device)) & 1
        return self._item_vec(b["hist_item"], b["hist_cat"]) + self.flag_emb(bits.float())

    def item_vec(self, b: dict[str, Tensor]) -> Tensor:
        """The target item's representation h [B, E] (item id + category embeddings)."""
        return self._item_vec(b["item"], b["cat"])

    def forward(self, b: dict[str, Tensor]) -> dict[str, Tensor]:
        x, out = self.features(b)
        logits = torch.cat([t(x) for t in self.towers], dim=-1)  # [B, n_objectives]
        out["logits"] = logits
        out["score"] = self.fusion(logits.detach())[:, 0]
        return out

    def features(self, b: dict[str, Tensor], target: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The towers' input x [B, parts] and, with SIM, ``{"aux": logit [B]}``. ``target`` [B, E] replaces the
        item representation :meth:`item_vec` (exploration perturbs it, :mod:`onerec.explore`)."""
        cfg = self.cfg
        target = self.item_vec(b) if target is None else target  # [B, E]
        hist = self._behaviours(b)  # [B, L, E]
        mask = b["hist_mask"]
        s = min(cfg.short_len, hist.shape[1])
        short, short_mask = hist[:, -s:], mask[:, -s:]
        feats = [self.user_emb(b["user"]), target, self.din(target, short, short_mask),
                 self.author_emb(b["author"]) * self.dur_emb(b["dur"])]
        out: dict[str, Tensor] = {}
        if cfg.sim:
            q, k = self.soft_q(target), self.soft_k(hist)
            rel = torch.einsum("bd,bld->bl", q, k)  # soft-search relevance
            # auxiliary CTR model on the whole long sequence (SIM Sec. 3.1): relevance-weighted pooling
            w = torch.softmax(rel.masked_fill(~mask, float("-inf")), dim=1).nan_to_num(0.0)
            pooled = torch.einsum("bl,ble->be", w, hist)
            out["aux"] = self.aux_head(torch.cat([pooled, target], dim=-1))[:, 0]
            idx, ok = [], []
            if cfg.gsu in ("hard", "both"):
                i, o = hard_search(b["hist_cat"], b["cat"], mask, cfg.top_k)
                idx.append(i)
                ok.append(o)
            if cfg.gsu in ("soft", "both"):
                i, o = soft_search(rel.detach(), mask, cfg.top_k)
                idx.append(i)
                ok.append(o)
            idx_t, ok_t = torch.cat(idx, dim=1), torch.cat(ok, dim=1)
            picked = hist.gather(1, idx_t[..., None].expand(-1, -1, hist.shape[-1]))
            picked = picked + self.gap_emb(b["hist_gap"].gather(1, idx_t))  # ESU: + time-gap bucket
            feats.append(self.esu(target, picked, ok_t))
        if cfg.can:
            h_item, h_cat = b["hist_item"][:, -s:], b["hist_cat"][:, -s:]
            feats.append(self.can_item(b["item"], h_item, short_mask))
            feats.append(self.can_cat(b["cat"], h_cat, short_mask))
        return torch.cat(feats, dim=-1), out

    def loss(self, b: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Sum of the towers' BCE, the fusion's soft-target BCE and (with SIM) the aux CTR loss."""
        out = self.forward(b)
        towers = F.binary_cross_entropy_with_logits(out["logits"], b["labels"], reduction="none").mean(0)
        fusion = F.binary_cross_entropy_with_logits(out["score"], b["pref"])
        total = towers.sum() + fusion
        parts = {f"bce_{o}": float(v) for o, v in zip(self.objectives, towers.detach())}
        parts["fusion"] = float(fusion.detach())
        if "aux" in out:
            click = b["labels"][:, self.objectives.index("click")] if "click" in self.objectives else b["pref"]
            aux = F.binary_cross_entropy_with_logits(out["aux"], click)
            total = total + self.cfg.aux_weight * aux
            parts["aux"] = float(aux.detach())
        return total, parts

    @torch.no_grad()
    def predict(self, b: dict[str, Tensor]) -> dict[str, Tensor]:
        """Probabilities per objective [B, n_objectives] and the P-Score [B] (both in [0, 1])."""
        out = self.forward(b)
        return {"probs": torch.sigmoid(out["logits"]), "pscore": torch.sigmoid(out["score"])}
