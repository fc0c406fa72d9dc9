"""Collaborative alignment of item content vectors (OneRec Technical Report, arXiv 2506.13695, Sec. 2.1).

Content vectors place items by what they show; semantic IDs work better when items that the same
users engage with also sit close. The Technical Report compresses the multimodal LLM's token
vectors of each item with a QFormer (learnable queries, cross-attention -> RMSNorm -> FFN) and
trains it with item-to-item InfoNCE on two kinds of collaborative pairs:

* user->item: a positive target paired with the *most content-similar* of the user's recent
  positives (:func:`user_item_pairs`);
* item->item: items of high Swing similarity (:mod:`onerec.content.swing`, :func:`swing_pairs`);

plus a caption loss (next-token prediction through the LLM). Here the caption loss is optional and
lighter: the aligned vector predicts the bag of words of the item's text (softmax cross-entropy
over the ``caption_vocab`` most frequent words), which keeps text content in the vector without
running a language model (a choice of this reimplementation).

Only the train split's interactions are used, so nothing of the held-out targets leaks into the
semantic IDs. Items without interactions still get a vector: the QFormer encodes any item.

The QFormer is :class:`onerec.model.qformer.QFormer`, the same module as the encoder's lifelong
pathway; :class:`ItemQFormer` adds the input projection and the item-vector head.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onerec.config import ContentAlignConfig
from onerec.content.swing import swing, top_neighbours
from onerec.errors import DataError
from onerec.model.layers import ffn_hidden
from onerec.model.qformer import QFormer


class ItemQFormer(nn.Module):
    """Compress an item's ``[B, T, D_in]`` token vectors: a linear map to ``d_model``, the shared
    :class:`~onerec.model.qformer.QFormer` (``queries`` queries, ``layers`` blocks), and a head that
    turns the mean of the query outputs into one L2-normalised item vector.

    With ``n_items`` (``content.alignment.id_token``) each item also gets one learned token of its
    own, appended to its content tokens: the InfoNCE pairs then move items apart that the content
    alone cannot separate. Items never seen in training keep their small random initial token.
    """

    def __init__(self, in_dim: int, cfg: ContentAlignConfig, n_items: int | None = None) -> None:
        super().__init__()
        self.inp = nn.Linear(in_dim, cfg.d_model)
        self.qformer = QFormer(cfg.d_model, cfg.heads, ffn_hidden(cfg.d_model, 4.0), cfg.queries, cfg.layers,
                               cfg.dropout)
        self.head = nn.Linear(cfg.d_model, cfg.dim)
        self.id_token = None
        if n_items is not None:
            self.id_token = nn.Embedding(n_items, cfg.d_model)
            nn.init.normal_(self.id_token.weight, std=0.02)

    def forward(self, tokens: Tensor, mask: Tensor | None = None, ids: Tensor | None = None) -> Tensor:
        """Query outputs ``[B, queries, d_model]``; ``mask`` [B, T] True = a real token; ``ids`` [B]
        the items' row numbers (required with the id token)."""
        x = self.inp(tokens)
        if self.id_token is not None:
            if ids is None:
                raise ValueError("this ItemQFormer has per-item id tokens: pass the items' ids")
            x = torch.cat([x, self.id_token(ids)[:, None, :]], dim=1)
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        return self.qformer(x, mask)

    def embed(self, tokens: Tensor, mask: Tensor | None = None, ids: Tensor | None = None) -> Tensor:
        """The item vector: the projected mean of the query outputs, L2-normalised ``[B, dim]``."""
        return F.normalize(self.head(self.forward(tokens, mask, ids).mean(dim=1)), dim=-1)


# ------------------------------------------------------------------------------ pairs
def train_events(train: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flatten the train split (``user_id``, ``items`` list) into (users, items, offsets) arrays."""
    col = train["items"].combine_chunks()
    offsets = col.offsets.to_numpy().astype(np.int64)
    items = col.values.to_numpy().astype(np.int64)
    offsets = offsets - offsets[0]
    users = np.repeat(train["user_id"].to_numpy().astype(np.int64), np.diff(offsets))
    return users, items, offsets


def user_item_pairs(items: np.ndarray, offsets: np.ndarray, vectors: np.ndarray, window: int,
                    chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """For every positive with at least one earlier positive of the same user, pair it with the
    earlier one (within ``window``) whose content vector is most similar (Technical Report: "a
    clicked target with the most similar recent positive"). Repeats of the target itself are skipped."""
    n = len(items)
    pos_in_seq = np.arange(n) - np.repeat(offsets[:-1], np.diff(offsets))
    v = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    targets, partners = [], []
    for s in range(0, n, chunk):
        idx = np.arange(s, min(n, s + chunk))
        back = np.arange(1, window + 1)
        cand = idx[:, None] - back[None, :]  # [P, W] absolute event indexes
        valid = back[None, :] <= pos_in_seq[idx][:, None]
        cand_items = np.where(valid, items[np.clip(cand, 0, None)], -1)
        tgt = items[idx]
        valid &= cand_items != tgt[:, None]
        sims = np.einsum("pd,pwd->pw", v[tgt], v[np.clip(cand_items, 0, None)])
        sims = np.where(valid, sims, -np.inf)
        best = sims.argmax(axis=1)
        ok = valid.any(axis=1)
        targets.append(tgt[ok])
        partners.append(cand_items[np.arange(len(idx)), best][ok])
    return np.concatenate(targets), np.concatenate(partners)


def user_item_pairs_reference(items: np.ndarray, offsets: np.ndarray, vectors: np.ndarray,
                              window: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`user_item_pairs`, one event at a time in plain Python."""
    v = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    targets, partners = [], []
    for u in range(len(offsets) - 1):
        seq = items[offsets[u]:offsets[u + 1]].tolist()
        for t in range(1, len(seq)):
            best, best_sim = None, -np.inf
            for b in range(1, window + 1):  # nearest first: ties go to the most recent
                if t - b < 0:
                    break
                c = seq[t - b]
                if c == seq[t]:
                    continue
                sim = float(v[seq[t]] @ v[c])
                if sim > best_sim:
                    best, best_sim = c, sim
            if best is not None:
                targets.append(seq[t])
                partners.append(best)
    return np.array(targets, dtype=np.int64), np.array(partners, dtype=np.int64)


def swing_pairs(users: np.ndarray, items: np.ndarray, offsets: np.ndarray, n_items: int, cfg: ContentAlignConfig
                ) -> tuple[np.ndarray, np.ndarray]:
    """Each item with its top ``swing_k`` Swing neighbours, from each user's last ``max_user_items`` positives."""
    pos_from_end = np.repeat(offsets[1:], np.diff(offsets)) - np.arange(len(items))
    keep = pos_from_end <= cfg.max_user_items
    n_users = int(users.max()) + 1 if len(users) else 0
    sim = swing(users[keep], items[keep], n_users, n_items, alpha=cfg.swing_alpha)
    a, b, _ = top_neighbours(sim, cfg.swing_k)
    return a, b


# ---------------------------------------------------------------------- caption words
def caption_targets(texts: list[str], vocab: int) -> tuple[torch.Tensor, int]:
    """Row-normalised bag-of-words ``[N, V]`` of the items' texts over the ``vocab`` most frequent words."""
    from sklearn.feature_extraction.text import CountVectorizer

    cv = CountVectorizer(max_features=vocab, token_pattern=r"(?u)\b\w+\b")
    try:
        x = cv.fit_transform(texts).astype(np.float32)
    except ValueError as e:  # empty vocabulary
        raise DataError("caption reconstruction needs item text", fix="set content.alignment.caption_weight=0") from e
    dense = torch.from_numpy(x.toarray())
    return dense / dense.sum(dim=1, keepdim=True).clamp_min(1.0), dense.shape[1]


# ---------------------------------------------------------------------------- training
def info_nce(a: Tensor, b: Tensor, ids_a: Tensor, ids_b: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE over a batch of pairs: each ``a`` must pick its own ``b`` among the batch's.
    In-batch "negatives" that are the same item as the positive are masked out."""
    logits = a @ b.T / temperature
    same = (ids_b[None, :] == ids_b[:, None]) | (ids_b[None, :] == ids_a[:, None])
    same_t = (ids_a[None, :] == ids_a[:, None]) | (ids_a[None, :] == ids_b[:, None])
    eye = torch.eye(len(a), dtype=torch.bool)
    la = logits.masked_fill(same & ~eye, float("-inf"))
    lb = logits.T.masked_fill(same_t & ~eye, float("-inf"))
    target = torch.arange(len(a))
    return 0.5 * (F.cross_entropy(la, target) + F.cross_entropy(lb, target))


def align_vectors(tokens: np.ndarray, train: pa.Table, cfg: ContentAlignConfig, *, texts: list[str] | None = None,
                  content: np.ndarray | None = None, progress: bool = False
                  ) -> tuple[np.ndarray, ItemQFormer, dict[str, Any]]:
    """Train the QFormer on the collaborative pairs of ``train`` and return the aligned item vectors.

    tokens: ``[N, T, D]`` from the content backend. train: the train split (``user_id``, ``items``).
    content: ``[N, D']`` content-only vectors used to pick the user->item partner (default: mean tokens).
    Returns (vectors ``[N, dim]`` float32 L2-normalised, the trained model, a metrics dict).
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    n_items = tokens.shape[0]
    if content is None:
        content = tokens.mean(axis=1)
    users, items, offsets = train_events(train)
    if len(items) and items.max() >= n_items:
        raise DataError(f"train split names item {int(items.max())} but there are {n_items} item vectors",
                        fix="rerun `onerec tokenize` after `onerec data` on the same run directory")
    ui_a, ui_b = user_item_pairs(items, offsets, content, cfg.window)
    sw_a, sw_b = swing_pairs(users, items, offsets, n_items, cfg)
    if len(ui_a) + len(sw_a) == 0:
        raise DataError("no collaborative pairs: no user has two distinct positives in the train split",
                        fix="use more interactions or set content.align=false")
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = ItemQFormer(tokens.shape[2], cfg, n_items if cfg.id_token else None)
    caption = None
    if cfg.caption_weight > 0:
        if texts is None:
            raise DataError("caption reconstruction needs the items' texts",
                            fix="set content.alignment.caption_weight=0")
        caption, vocab = caption_targets(texts, cfg.caption_vocab)
        model.caption_head = nn.Linear(cfg.dim, vocab)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    all_tokens = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.float32))
    pools = [(torch.from_numpy(ui_a), torch.from_numpy(ui_b)), (torch.from_numpy(sw_a), torch.from_numpy(sw_b))]
    n_sw = round(cfg.batch_size * cfg.swing_share) if len(sw_a) else 0
    n_sw = n_sw if len(ui_a) else cfg.batch_size
    sizes = [cfg.batch_size - n_sw, n_sw]
    losses: list[float] = []
    model.train()
    bar = tqdm(range(cfg.steps), desc="align", unit="step", disable=not progress, dynamic_ncols=True)
    for step in bar:
        lr = cfg.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + np.cos(np.pi * step / max(1, cfg.steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        ia, ib = [], []
        for (pa_, pb_), k in zip(pools, sizes):
            if k and len(pa_):
                j = torch.randint(len(pa_), (k,), generator=g)
                ia.append(pa_[j])
                ib.append(pb_[j])
        ids_a, ids_b = torch.cat(ia), torch.cat(ib)
        za, zb = model.embed(all_tokens[ids_a], ids=ids_a), model.embed(all_tokens[ids_b], ids=ids_b)
        loss = info_nce(za, zb, ids_a, ids_b, cfg.temperature)
        if caption is not None:
            ids = torch.cat([ids_a, ids_b])
            logp = F.log_softmax(model.caption_head(torch.cat([za, zb])), dim=-1)
            loss = loss + cfg.caption_weight * -(caption[ids] * logp).sum(dim=1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", refresh=False)
    vectors = encode_items(model, all_tokens)
    if cfg.residual > 0:
        if content.shape[1] != vectors.shape[1]:
            raise DataError(f"content.alignment.residual needs content vectors of dim {vectors.shape[1]} "
                            f"(got {content.shape[1]})", fix="set content.alignment.dim to the content dimension")
        c = content / np.maximum(np.linalg.norm(content, axis=1, keepdims=True), 1e-12)
        vectors = (1 - cfg.residual) * vectors + cfg.residual * c
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    metrics = {
        "user_item_pairs": len(ui_a), "swing_pairs": len(sw_a), "steps": cfg.steps,
        "loss_first": float(np.mean(losses[:20])), "loss_last": float(np.mean(losses[-50:])),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return vectors.astype(np.float32), model, metrics


@torch.no_grad()
def encode_items(model: ItemQFormer, tokens: Tensor, batch: int = 4096) -> np.ndarray:
    """Item vectors of all ``tokens`` rows (row i = item i)."""
    model.eval()
    ids = torch.arange(len(tokens))
    return torch.cat([model.embed(tokens[s:s + batch], ids=ids[s:s + batch])
                      for s in range(0, len(tokens), batch)]).numpy()
