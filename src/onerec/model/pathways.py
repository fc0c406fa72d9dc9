"""The encoder pathways of the OneRec Technical Report (arXiv 2506.13695, Sec. 2, "Encoder").

Four pathways turn the user into tokens, which are concatenated (1 + 20 + 256 + 128 = 405 tokens in
the report), given learnable positions and read by the encoder's full self-attention:

* static: one token from the user id and user features;
* short-term: the last ``short_len`` behaviours (any kind);
* positive-feedback: the last ``max_history`` positive behaviours;
* lifelong: up to thousands of behaviours, compressed into representatives by hierarchical
  clustering (see :meth:`onerec.features.history.HistoryFeaturizer._compress`), then summarised by
  a :class:`~onerec.model.qformer.QFormer` (shared with the content alignment): ``qformer_queries``
  learnable queries cross-attending to the representatives.

A fifth pathway, ``succession``, is ours (not in the papers): the items that most often followed the
user's last positives in the train split (:mod:`onerec.features.succession`), each a token of its
semantic-ID embedding plus a log bucket of its score, best first, so that the decoder can copy one.

Each behaviour token is the sum of the embeddings of its features (semantic ID, hashed item id,
author, tag/category, time since the behaviour, play time, duration, feedback label); each
pathway then has its own projection (Dense -> LeakyReLU -> Dense in the report, ``pathway_mlp``)
and a pathway-type embedding.

Shapes: B = batch, T = tokens of a pathway, D = semantic-ID length, E = d_model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from onerec.data.schema import SIGNALS
from onerec.errors import ConfigError
from onerec.features.history import N_AGE_BUCKETS
from onerec.features.side import N_LOG_BUCKETS

BEHAVIOUR_FEATURES = ("sid", "item", "author", "tag", "time", "play", "duration", "label")
PATHWAYS = ("static", "short", "positive", "lifelong", "succession")
PREFIX = {"short": "short", "positive": "hist", "lifelong": "life"}


def hashed(ids: Tensor, buckets: int) -> Tensor:
    """1 + (id - 1) mod (buckets - 1) for ids >= 1; 0 (padding) stays 0."""
    return torch.where(ids > 0, 1 + (ids - 1) % (buckets - 1), torch.zeros_like(ids))


class BehaviourEmbedding(nn.Module):
    """Sum of the embeddings of a behaviour's features, shared by the behaviour pathways.

    Args:
        codes: the generator's semantic-ID embedding (shared with the decoder's input).
        features: which of :data:`BEHAVIOUR_FEATURES` to use.
        buckets: rows of the hashed item/author/tag tables (needed for "item", "author", "tag").
        code_levels: D, for ``forward(per_code=True)`` (``model.history_tokens=code``): a level
            embedding per semantic-ID position; 0 (default) when only one token per behaviour is asked.
    """

    def __init__(self, codes: nn.Module, dim: int, features: list[str], buckets: int, *, code_levels: int = 0) -> None:
        super().__init__()
        unknown = sorted(set(features) - set(BEHAVIOUR_FEATURES))
        if unknown:
            raise ConfigError(f"model.behaviour_features: unknown feature {unknown[0]!r}; choose from "
                              f"{', '.join(BEHAVIOUR_FEATURES)}")
        if {"item", "author", "tag"} & set(features) and buckets < 2:
            raise ConfigError("behaviour features 'item'/'author'/'tag' need hashed id tables: set "
                              "model.sparse_buckets >= 2 (e.g. 4096)")
        if code_levels and "sid" not in features:
            raise ConfigError("model.history_tokens=code makes one token per semantic-ID code: add 'sid' to "
                              "model.behaviour_features or set model.history_tokens=item")
        self.features, self.buckets = set(features), buckets
        # history_tokens=code: which level a code token is at (TIGER's flattened history)
        self.level_emb = nn.Embedding(code_levels, dim) if code_levels else None
        # the semantic-ID embedding belongs to the generator (shared with the decoder): keep a
        # reference without registering it twice (a second registration duplicates the tensors on save)
        self._codes = [codes] if "sid" in self.features else []
        self.flag_emb = nn.Linear(len(SIGNALS), dim, bias=False) if "label" in self.features else None
        self.age_emb = nn.Embedding(N_AGE_BUCKETS, dim) if "time" in self.features else None
        self.item_emb = nn.Embedding(buckets, dim, padding_idx=0) if "item" in self.features else None
        self.author_emb = nn.Embedding(buckets, dim, padding_idx=0) if "author" in self.features else None
        self.tag_emb = nn.Embedding(buckets, dim, padding_idx=0) if "tag" in self.features else None
        self.play_emb = nn.Embedding(N_LOG_BUCKETS, dim, padding_idx=0) if "play" in self.features else None
        self.dur_emb = nn.Embedding(N_LOG_BUCKETS, dim, padding_idx=0) if "duration" in self.features else None

    def forward(self, batch: dict[str, Tensor], prefix: str, *, per_code: bool = False) -> tuple[Tensor, Tensor]:
        """Tokens of one pathway (keys ``{prefix}_*``) -> (tokens [B, T, E], mask [B, T]); with
        ``per_code`` (needs ``code_levels``) one token per code: -> ([B, T*D, E], [B, T*D]), behaviour
        i's level-t token at i*D + t being code t's embedding + level t's embedding + the behaviour's
        other features. Padding (a padded behaviour, or a -1 code) is zeros and False."""
        mask = batch[f"{prefix}_mask"]
        others = self._others(batch, prefix)
        if per_code:
            codes = batch[f"{prefix}_codes"]
            parts = [self._codes[0].levels(codes) + self.level_emb.weight, *(v.unsqueeze(2) for v in others)]
            mask = (mask.unsqueeze(-1) & (codes >= 0)).flatten(1)
        else:
            parts = ([self._codes[0](batch[f"{prefix}_codes"])] if self._codes else []) + others
        if not parts:
            raise ConfigError("model.behaviour_features is empty: give at least one, e.g. [sid]")
        x = parts[0]
        for v in parts[1:]:  # in a fixed order: sid first, then the others as listed in _others
            x = x + v
        if per_code:
            x = x.flatten(1, 2)
        return x * mask.unsqueeze(-1).to(x.dtype), mask

    def _others(self, batch: dict[str, Tensor], prefix: str) -> list[Tensor]:
        """The embeddings [B, T, E] of every feature but the semantic ID."""
        out = []
        if self.flag_emb is not None:
            flags = batch[f"{prefix}_flags"]
            bits = (flags.unsqueeze(-1) >> torch.arange(len(SIGNALS), device=flags.device)) & 1
            out.append(self.flag_emb(bits.to(self.flag_emb.weight.dtype)))
        if self.age_emb is not None:
            out.append(self.age_emb(batch[f"{prefix}_age"]))
        if self.item_emb is not None:
            out.append(self.item_emb(hashed(batch[f"{prefix}_item"], self.buckets)))
        if self.author_emb is not None:
            out.append(self.author_emb(hashed(batch[f"{prefix}_author"], self.buckets)))
        if self.tag_emb is not None:
            out.append(self.tag_emb(hashed(batch[f"{prefix}_tag"], self.buckets)))
        if self.play_emb is not None:
            out.append(self.play_emb(batch[f"{prefix}_play"]))
        if self.dur_emb is not None:
            out.append(self.dur_emb(batch[f"{prefix}_dur"]))
        return out


def projection(dim_in: int, dim: int, mlp: bool) -> nn.Module:
    """The report's per-pathway projection Dense -> LeakyReLU -> Dense (else a Dense, or identity)."""
    if mlp:
        return nn.Sequential(nn.Linear(dim_in, dim), nn.LeakyReLU(0.1), nn.Linear(dim, dim))
    return nn.Identity() if dim_in == dim else nn.Linear(dim_in, dim, bias=False)


class StaticEmbedding(nn.Module):
    """The static pathway's single token: hashed user id + user feature columns + activity level."""

    def __init__(self, dim: int, buckets: int, n_user_cats: int = 1024) -> None:
        super().__init__()
        self.buckets, self.n_cats = buckets, max(n_user_cats, 2)
        self.user_emb = nn.Embedding(buckets, dim, padding_idx=0) if buckets >= 2 else None
        self.cat_emb = nn.Embedding(self.n_cats, dim, padding_idx=0)
        self.act_emb = nn.Embedding(N_LOG_BUCKETS, dim)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        x = self.act_emb(batch["user_act"])
        cats = batch["user_cats"]
        if cats.shape[1]:
            x = x + self.cat_emb(hashed(cats, self.n_cats)).sum(1)
        if self.user_emb is not None:
            x = x + self.user_emb(hashed(batch["user_id"], self.buckets))
        return x.unsqueeze(1)  # [B, 1, E]
