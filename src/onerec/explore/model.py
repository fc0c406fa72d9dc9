"""The CTR model that exploration scores with, and the gate's shallow item-only model.

:class:`ExplorationCTR` is the **DIN baseline of** :mod:`onerec.reward` (``PScoreModel`` with ``sim=False,
can=False``), with dropout in its towers. Why the DIN baseline and not the full P-Score towers:

* AGE perturbs *the* item representation ``h``. In the DIN baseline that is one vector (item id + category
  embeddings) that feeds both the target attention and the towers, so ``h' = h + ...`` moves the whole
  prediction. CAN keeps a second, per-item-id set of co-action parameters that the perturbation would not
  touch, and SIM's searches pick behaviours with ``h`` through a non-differentiable top-k.
* A new item has no history in either case; what lets the model say anything about it is its category, author
  and duration, which the DIN baseline has too. SIM and CAN add what a user's long history says about the
  item's id and category, which the replay's users (a few dozen events each) barely have.
* It is updated online after every block of events on one thread: the DIN baseline costs a fraction of the
  full model.

MC dropout (Gal & Ghahramani 2016, as AGE uses it): the towers drop units in training and, on demand, at
prediction time; the features below the towers (embeddings, target attention) have no dropout, so they are
computed once and only the towers run N times (:meth:`ExplorationCTR.heads` takes any leading dims).
New items start with (near) zero id embeddings, so an unseen item is scored from its category, author and
duration until its own embedding learns.

Shapes: B = rows (user, candidate), P = the towers' input width (4 * d_model), N = dropout passes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onerec.config import ExploreConfig, RewardConfig
from onerec.reward.data import N_DUR_BUCKETS
from onerec.reward.model import PScoreModel

#: the towers of the exploration CTR model, in the order of its logits
OBJECTIVES = ("click", "long_view")


class ExplorationCTR(PScoreModel):
    """DIN-baseline ranker with MC-dropout towers for ``click`` and ``long_view``; no fusion head.

    Args:
        cfg: the explore section (widths, history length, dropout).
        n_users, n_items, n_cats, n_authors: vocabulary sizes, as for ``PScoreModel``.
    """

    def __init__(self, cfg: ExploreConfig, n_users: int, n_items: int, n_cats: int, n_authors: int) -> None:
        rcfg = RewardConfig(objectives=list(OBJECTIVES), d_model=cfg.d_model, n_heads=1, long_len=cfg.history,
                            short_len=cfg.history, sim=False, can=False, tower_hidden=cfg.tower_hidden)
        super().__init__(rcfg, n_users, n_items, n_cats, n_authors)
        del self.towers, self.fusion  # replaced by the dropout towers below; no preference fusion here
        self.p = cfg.dropout
        parts = 4 * cfg.d_model  # user, target, DIN, author x duration (PScoreModel.features)
        self.hidden = nn.ModuleList(nn.Linear(parts, cfg.tower_hidden) for _ in OBJECTIVES)
        self.out = nn.ModuleList(nn.Linear(cfg.tower_hidden, 1) for _ in OBJECTIVES)
        nn.init.normal_(self.item_emb.weight, std=0.01)  # an unseen item: its side features speak, not noise
        with torch.no_grad():
            self.item_emb.weight[n_items].zero_()

    def heads(self, x: Tensor, *, dropout: bool, only: int | None = None) -> Tensor:
        """Tower logits [..., n_objectives] of features x [..., P]; ``dropout``: draw fresh masks (MC dropout
        at prediction time, or training); ``only``: just that tower's logit [..., 1] (half the work)."""
        outs = []
        towers = list(zip(self.hidden, self.out))
        for lin, out in towers if only is None else towers[only:only + 1]:
            z = F.relu(lin(F.dropout(x, self.p, training=dropout)))
            outs.append(out(F.dropout(z, self.p, training=dropout)))
        return torch.cat(outs, dim=-1)

    def forward(self, b: dict[str, Tensor], h: Tensor | None = None, *, dropout: bool = False) -> Tensor:
        """Tower logits [B, n_objectives]; ``h`` [B, E] replaces the item representation."""
        x, _ = self.features(b, h)
        return self.heads(x, dropout=dropout)

    def loss(self, b: dict[str, Tensor]) -> Tensor:
        """Mean BCE of the towers on ``b["labels"]`` [B, n_objectives], with dropout (the model is trained as it
        is sampled)."""
        return F.binary_cross_entropy_with_logits(self.forward(b, dropout=True), b["labels"])


class ItemGate(nn.Module):
    """The dynamic gating unit's threshold model: a shallow MLP over item-only features (category, author,
    duration bucket; no user, no item id), trained on clicks, so it predicts how an average user takes the item.
    ``forward(b)`` -> threshold logit [B]."""

    def __init__(self, cfg: ExploreConfig, n_cats: int, n_authors: int) -> None:
        super().__init__()
        e = cfg.d_model
        self.n_cats = n_cats
        self.cat = nn.Embedding(n_cats + 1, e)
        self.author = nn.Embedding(n_authors, e)
        self.dur = nn.Embedding(N_DUR_BUCKETS, e)
        self.mlp = nn.Sequential(nn.Linear(3 * e, cfg.tower_hidden), nn.ReLU(), nn.Linear(cfg.tower_hidden, 1))

    def forward(self, b: dict[str, Tensor]) -> Tensor:
        cat = torch.where(b["cat"] < 0, torch.full_like(b["cat"], self.n_cats), b["cat"])
        x = torch.cat([self.cat(cat), self.author(b["author"]), self.dur(b["dur"])], dim=-1)
        return self.mlp(x)[:, 0]

    def loss(self, b: dict[str, Tensor], click: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(self.forward(b), click)
