"""User-history features for the generator: split tables -> padded tensors.

v0 builds the *positive-feedback pathway* of the Technical Report: the user's most recent
positive behaviours, each described by its item's semantic ID, its feedback "label" (the
signal bitmask) and its age at request time. The static, short-term and lifelong pathways
arrive with the full encoder.

Layout (H = max_history, D = semantic-ID length): histories are right-aligned, so position
H-1 is the most recent behaviour and padding sits on the left::

    hist_codes [B, H, D] int64   (-1 on padding)
    hist_flags [B, H]    int64   signal bitmask (0 on padding)
    hist_age   [B, H]    int64   bucket of log2(1 + seconds between behaviour and request)
    hist_mask  [B, H]    bool    True on real behaviours
    target     [B, D]    int64   semantic ID of the item to predict (training / validation)

The Technical Report's other pathways (arXiv 2506.13695, Sec. 2) add keys when the featurizer is
given a :class:`~onerec.model` config asking for them (``model.pathways``); ``X`` below is
``hist`` (positive), ``short`` or ``life``::

    X_item, X_author, X_tag, X_play, X_dur [B, T] int64   behaviour features (0 = padding/unknown)
    short_codes/flags/age/mask                            last ``short_len`` behaviours of any kind
    life_codes/flags/age/mask, life_count                 ``lifelong_reps`` representatives of the last
                                                          ``lifelong_max`` behaviours (+ cluster sizes)
    user_id [B], user_cats [B, C], user_act [B]           static pathway (C user feature columns)
    succ_codes [B, K, D], succ_count [B, K], succ_mask    succession pathway: the K items that most often
                                                          followed the last items (:mod:`.succession`),
                                                          best first, and log buckets of their scores
    session [B, m, D], session_mask [B, m]                the next m positives (``session_len`` > 1)

Short-term and lifelong behaviours come from the full interaction log (exposures included, only
events strictly before the request time) when :class:`~onerec.features.side.SideInfo` carries one,
else from the positive sequence itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from onerec.features.side import N_LOG_BUCKETS, SideInfo, log_bucket
from onerec.features.succession import Succession

N_AGE_BUCKETS = 40


def age_bucket(seconds: np.ndarray) -> np.ndarray:
    """log2 buckets of elapsed time: 0 s -> 0, 1 s -> 1, ~1 day -> 17, ~1 year -> 25."""
    s = np.maximum(seconds, 0).astype(np.float64)
    return np.minimum(np.floor(np.log2(1.0 + s)) + (s > 0), N_AGE_BUCKETS - 1).astype(np.int64)


@dataclass
class Ragged:
    """Flat per-row lists: row r is ``values[offsets[r]:offsets[r+1]]``."""

    offsets: np.ndarray
    items: np.ndarray
    ts: np.ndarray
    flags: np.ndarray

    @classmethod
    def from_table(cls, table: pa.Table, items: str, ts: str, flags: str) -> Ragged:
        def flat(col: str) -> tuple[np.ndarray, np.ndarray]:
            arr = table[col].combine_chunks()
            offs = arr.offsets.to_numpy().astype(np.int64)
            return offs - offs[0], arr.flatten().to_numpy()

        offs, it = flat(items)
        _, t = flat(ts)
        _, f = flat(flags)
        return cls(offs, it.astype(np.int64), t.astype(np.int64), f.astype(np.int64))


SIDE_FEATURES = frozenset({"author", "tag", "duration", "play"})


def needs_side(cfg) -> bool:
    """Whether a model config reads side information (item/user features, the full log): any pathway
    beyond the positive and succession ones, or a behaviour feature from :data:`SIDE_FEATURES`. Such a model must be
    featurized with a :class:`SideInfo` (see :func:`onerec.pipeline.make_featurizer`)."""
    return bool(set(cfg.pathways) - {"positive", "succession"} or set(cfg.behaviour_features) & SIDE_FEATURES)


def default_featurizer(codes: np.ndarray, cfg, owner: str) -> HistoryFeaturizer:
    """The side-less featurizer ``owner`` falls back to when none is passed; refuses a model that
    needs side information, which it would otherwise see as padding (unlike in training)."""
    if needs_side(cfg) or "succession" in cfg.pathways:
        raise ValueError(f"{owner}: this model reads side information or the train split's succession counts "
                         f"(pathways {list(cfg.pathways)}, behaviour features {list(cfg.behaviour_features)}); pass "
                         "featurizer=onerec.pipeline.make_featurizer(run, cfg.model, codes), the featurizer it was "
                         "trained with")
    return HistoryFeaturizer(codes, cfg.max_history, cfg=cfg)


class HistoryFeaturizer:
    """Turns (row, history end, request time) triples into padded tensors.

    Args:
        codes: [N_items, D] semantic IDs of every item.
        max_history: H, most recent behaviours kept.
        side: item/user/log side information (optional; missing features are padding).
        cfg (ModelConfig | None): the model config (a :class:`onerec.config.ModelConfig`); decides which pathways
            are built.
    """

    def __init__(self, codes: np.ndarray, max_history: int, *, side: SideInfo | None = None, cfg=None,
                 succession: Succession | None = None) -> None:
        self.codes = np.asarray(codes, dtype=np.int64)
        self.h = max_history
        self.side = side
        self.pathways = set(cfg.pathways) if cfg is not None else {"positive"}
        if "succession" in self.pathways and succession is None:
            raise ValueError("the succession pathway needs the train split's pair counts: pass succession="
                             "Succession.from_train(train, n_items) (onerec.pipeline.make_featurizer does)")
        self.succession = succession
        if succession is not None:
            self.succ_len, self.succ_window, self.succ_decay = (cfg.succession_len, cfg.succession_window,
                                                                cfg.succession_decay)
        self.short_len = cfg.short_len if cfg is not None else 20
        self.life_max = cfg.lifelong_max if cfg is not None else 2000
        self.life_reps = cfg.lifelong_reps if cfg is not None else 64
        self.session_len = cfg.session_len if cfg is not None else 1

    # ------------------------------------------------------------------ helpers
    def _tokens(self, prefix: str, items: np.ndarray, ts: np.ndarray, flags: np.ndarray, play: np.ndarray,
                mask: np.ndarray, request_ts: np.ndarray) -> dict:
        """Right-aligned behaviour arrays [B, T] (valid where mask) -> the pathway's tensors."""
        it = np.where(mask, items, 0)
        codes = np.where(mask[..., None], self.codes[it], -1)
        age = np.where(mask, age_bucket(request_ts[:, None] - ts), 0)
        t = torch.from_numpy
        out = {f"{prefix}_codes": t(codes), f"{prefix}_flags": t(np.where(mask, flags, 0).astype(np.int64)),
               f"{prefix}_age": t(age), f"{prefix}_mask": t(mask),
               f"{prefix}_item": t(np.where(mask, it + 1, 0)), f"{prefix}_play": t(np.where(mask, play, 0))}
        s = self.side
        for name, arr in (("author", None if s is None else s.item_author), ("tag", None if s is None else s.item_tag),
                          ("dur", None if s is None else s.item_dur)):
            out[f"{prefix}_{name}"] = t(np.where(mask, arr[it], 0) if arr is not None else np.zeros_like(it))
        return out

    @staticmethod
    def _window(starts: np.ndarray, ends: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Absolute indexes [B, length] of the last ``length`` events in [starts, ends), right-aligned."""
        pos = ends[:, None] - length + np.arange(length)[None, :]
        mask = pos >= starts[:, None]
        return np.where(mask, pos, 0), mask

    def _log(self, seqs: Ragged, rows: np.ndarray, ends: np.ndarray, request_ts: np.ndarray,
             users: np.ndarray | None):
        """(starts, ends, items, ts, flags, play) of the behaviour log the long pathways read: the
        users' full log (side information with a log, and user ids given), else the histories
        themselves (e.g. an explicit history sent to the service)."""
        s = self.side
        if s is not None and s.log_offsets is not None and users is not None:
            return (s.log_offsets[users], s.log_end(users, request_ts), s.log_items, s.log_ts, s.log_flags,
                    s.log_play)
        return seqs.offsets[rows], ends, seqs.items, seqs.ts, seqs.flags, np.zeros_like(seqs.items)

    def _compress(self, codes: np.ndarray, n_reps: int) -> tuple[np.ndarray, np.ndarray]:
        """Hierarchical clustering of one user's behaviours (chronological) into <= n_reps groups.

        The semantic IDs *are* a hierarchical (residual) k-means of the item embeddings, so a
        behaviour's SID prefix of length l names its cluster at level l. We take the deepest level
        whose clusters number at most ``n_reps`` (at level 1 with too many clusters, the largest
        ``n_reps``); each cluster is represented by its most recent behaviour and its size.
        Deviation from the report (per-user k-means on item embeddings): the clusters come from the
        tokenizer's shared k-means hierarchy, which costs one ``np.unique`` per level.
        Returns (indexes of representatives in chronological order, cluster sizes).
        """
        n = len(codes)
        if n <= n_reps:
            return np.arange(n), np.ones(n, dtype=np.int64)
        rev = codes[::-1]  # so np.unique's first occurrence is the most recent
        best = None
        key = np.zeros(n, dtype=np.int64)
        for level in range(codes.shape[1]):
            key = key * (int(codes[:, level].max()) + 2) + rev[:, level] + 1
            uniq, first, counts = np.unique(key, return_index=True, return_counts=True)
            if len(uniq) > n_reps and best is not None:
                break
            best = (first, counts)
            if len(uniq) > n_reps:
                break
        first, counts = best
        if len(first) > n_reps:
            keep = np.lexsort((first, -counts))[:n_reps]  # biggest clusters, ties: most recent
            first, counts = first[keep], counts[keep]
        idx = n - 1 - first
        order = np.argsort(idx)
        return idx[order], counts[order]

    # ------------------------------------------------------------------ main
    def histories(self, seqs: Ragged, rows: np.ndarray, ends: np.ndarray, request_ts: np.ndarray,
                  users: np.ndarray | None = None, *, counted: bool = False) -> dict:
        """Histories made of events ``[offsets[row], ends)`` of each chosen row (absolute indexes).

        ``counted``: ``seqs`` are the sequences the succession counts were made from (the train split):
        each row's pairs from its end on are left out of its candidates' scores."""
        starts = seqs.offsets[rows]
        idx, mask = self._window(starts, ends, self.h)
        out = self._tokens("hist", seqs.items[idx], seqs.ts[idx], seqs.flags[idx], np.zeros_like(idx), mask,
                           request_ts)
        if "succession" in self.pathways:
            out.update(self._succession(seqs, starts, ends, seqs.offsets[rows + 1] if counted else None))
        if self.pathways & {"short", "lifelong", "static"}:
            l_start, l_end, l_items, l_ts, l_flags, l_play = self._log(seqs, rows, ends, request_ts, users)
            if "short" in self.pathways:
                i, m = self._window(l_start, l_end, self.short_len)
                out.update(self._tokens("short", l_items[i], l_ts[i], l_flags[i], l_play[i], m, request_ts))
            if "lifelong" in self.pathways:
                out.update(self._lifelong(l_start, l_end, l_items, l_ts, l_flags, l_play, request_ts))
            if "static" in self.pathways:
                # unknown users (e.g. a request with an explicit history) get the padding id 0
                known = users is not None
                n_cats = 0 if self.side is None else self.side.user_cats.shape[1]
                cats = (self.side.user_cats[users] if known and self.side is not None
                        else np.zeros((len(rows), n_cats), dtype=np.int64))
                out["user_id"] = torch.from_numpy(users.astype(np.int64) + 1 if known
                                                  else np.zeros(len(rows), dtype=np.int64))
                out["user_cats"] = torch.from_numpy(cats.astype(np.int64))
                out["user_act"] = torch.from_numpy(log_bucket(l_end - l_start))
        return out

    def _succession(self, seqs: Ragged, starts: np.ndarray, ends: np.ndarray, seq_ends: np.ndarray | None) -> dict:
        """The succession pathway's candidates for histories ``items[starts:ends]``; ``seq_ends``: the
        rows' sequence ends when the counts include these sequences (their pairs from ``ends - 1`` on go)."""
        hist = [seqs.items[a:b] for a, b in zip(starts.tolist(), ends.tolist())]
        future = None if seq_ends is None else [seqs.items[max(b - 1, a):e] for a, b, e in
                                                zip(starts.tolist(), ends.tolist(), seq_ends.tolist())]
        items, score = self.succession.candidates(hist, self.succ_len, self.succ_window, self.succ_decay, future)
        mask = items >= 0
        return {"succ_codes": torch.from_numpy(np.where(mask[..., None], self.codes[np.maximum(items, 0)], -1)),
                "succ_count": torch.from_numpy(log_bucket(np.where(mask, score, -1.0))),
                "succ_mask": torch.from_numpy(mask)}

    def _lifelong(self, starts, ends, items, ts, flags, play, request_ts) -> dict:
        b, r = len(starts), self.life_reps
        pos = np.zeros((b, r), dtype=np.int64)
        mask = np.zeros((b, r), dtype=bool)
        count = np.zeros((b, r), dtype=np.int64)
        for j in range(b):
            lo = max(starts[j], ends[j] - self.life_max)
            ev = np.arange(lo, ends[j])
            if len(ev) == 0:
                continue
            rep, size = self._compress(self.codes[items[ev]], r)
            k = len(rep)
            pos[j, r - k:], mask[j, r - k:], count[j, r - k:] = ev[rep], True, size
        out = self._tokens("life", items[pos], ts[pos], flags[pos], play[pos], mask, request_ts)
        out["life_count"] = torch.from_numpy(np.where(mask, np.minimum(log_bucket(count), N_LOG_BUCKETS - 1), 0))
        return out

class TrainExamples:
    """Every next-item example of the train split: predict ``items[t]`` from ``items[:t]``, t >= 1."""

    def __init__(self, train: pa.Table, featurizer: HistoryFeaturizer) -> None:
        self.seqs = Ragged.from_table(train, "items", "ts", "flags")
        self.f = featurizer
        lens = np.diff(self.seqs.offsets)
        row_of_event = np.repeat(np.arange(len(lens)), lens)
        is_first = np.zeros(len(row_of_event), dtype=bool)
        is_first[self.seqs.offsets[:-1][lens > 0]] = True
        self.target_idx = np.flatnonzero(~is_first)  # every event but each user's first is a target
        self.rows = row_of_event[self.target_idx]
        self.users = train["user_id"].to_numpy().astype(np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def targets(self) -> int:
        """Next-item targets (one per example; :class:`SequenceExamples` has several per row)."""
        return len(self.rows)

    def rows_per_batch(self, examples: int) -> int:
        """Examples per step for ``examples`` targets: the same number (one target each)."""
        return examples

    def batch(self, idx: np.ndarray) -> dict:
        rows, tgt = self.rows[idx], self.target_idx[idx]
        out = self.f.histories(self.seqs, rows, tgt, self.seqs.ts[tgt], self.users[rows], counted=True)
        out["target"] = torch.from_numpy(self.f.codes[self.seqs.items[tgt]])
        m = self.f.session_len
        if m > 1:  # OneRec V1 session-wise target: this positive and the next m-1 of the same user
            pos = tgt[:, None] + np.arange(m)[None, :]
            ok = pos < self.seqs.offsets[rows + 1][:, None]
            items = self.seqs.items[np.where(ok, pos, 0)]
            out["session"] = torch.from_numpy(np.where(ok[..., None], self.f.codes[items], -1))
            out["session_mask"] = torch.from_numpy(ok)
        return out


class SequenceExamples:
    """Every next-item example of the train split, a window of a user's sequence at a time, for training
    every position in one pass (``train.objective=all_positions``, :class:`onerec.model.lazy.LazyGenerator`).

    A user's positives ``i_0 .. i_{n-1}`` have targets ``i_1 .. i_{n-1}`` (the examples of
    :class:`TrainExamples`). They are cut into segments of up to ``targets_per_row`` consecutive targets; a
    segment's row holds the behaviours from H (``max_history``) before its first target up to its last
    target, so every target's own history is in the row. Keys of :meth:`batch` (L = the longest row)::

        hist_codes/flags/mask/item/play/author/tag/dur [B, L(, D)]   the row's behaviours in order (left-aligned)
        seq_target [B, L] bool                                       positions that are targets of this row
        seq_age    [B, L, L] int64                                   age bucket of behaviour j at behaviour t's time

    ``seq_age[b, t, j]`` is what :class:`TrainExamples` gives behaviour j as ``hist_age`` in target t's sample
    (its request time is the target's time).
    """

    def __init__(self, train: pa.Table, featurizer: HistoryFeaturizer, targets_per_row: int | None = None) -> None:
        self.seqs = Ragged.from_table(train, "items", "ts", "flags")
        self.f = featurizer
        self.per_row = max(1, targets_per_row or featurizer.h)
        lens = np.diff(self.seqs.offsets)
        rows, starts = [], []
        for r in np.flatnonzero(lens >= 2):
            first = np.arange(1, lens[r], self.per_row)
            rows.append(np.full(len(first), r))
            starts.append(first)
        self.rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        self.first = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)  # first target, in the row
        self.last = np.minimum(self.first + self.per_row, lens[self.rows])  # one past the last target
        self.targets = int((lens[lens > 0] - 1).sum())
        self.users = train["user_id"].to_numpy().astype(np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def rows_per_batch(self, examples: int) -> int:
        """Rows per step that hold about ``examples`` targets on average (``train.batch_size`` counts targets)."""
        return max(1, round(examples * len(self) / max(self.targets, 1)))

    def batch(self, idx: np.ndarray) -> dict:
        rows = self.rows[idx]
        lo = np.maximum(self.first[idx] - self.f.h, 0)
        width = self.last[idx] - lo
        n = int(width.max())
        rel = lo[:, None] + np.arange(n)[None, :]  # position within the user's sequence
        mask = np.arange(n)[None, :] < width[:, None]
        pos = np.where(mask, self.seqs.offsets[rows][:, None] + rel, 0)
        ts = self.seqs.ts[pos]
        out = self.f._tokens("hist", self.seqs.items[pos], ts, self.seqs.flags[pos], np.zeros_like(pos), mask,
                             ts[:, -1])
        del out["hist_age"]  # ages depend on the target: seq_age
        out["seq_target"] = torch.from_numpy(mask & (rel >= self.first[idx][:, None]))
        pair = mask[:, :, None] & mask[:, None, :]
        out["seq_age"] = torch.from_numpy(np.where(pair, age_bucket(ts[:, :, None] - ts[:, None, :]), 0))
        return out


class EvalExamples:
    """Examples of a valid/test table: the full history, request time = target_ts."""

    def __init__(self, table: pa.Table, featurizer: HistoryFeaturizer) -> None:
        self.seqs = Ragged.from_table(table, "history", "history_ts", "history_flags")
        self.f = featurizer
        self.request_ts = table["target_ts"].to_numpy().astype(np.int64)
        # user ids feed the static and full-log pathways; a table of explicit histories may lack them
        self.users = table["user_id"].to_numpy().astype(np.int64) if "user_id" in table.column_names else None
        self.first_target = None  # first target of each row, for the validation loss
        if "targets" in table.column_names:
            tg = table["targets"].combine_chunks()
            offs = tg.offsets.to_numpy() - tg.offsets[0].as_py()
            self.first_target = tg.flatten().to_numpy()[offs[:-1]]

    def __len__(self) -> int:
        return len(self.request_ts)

    def batch(self, idx: np.ndarray, with_target: bool = False) -> dict:
        out = self.f.histories(self.seqs, idx, self.seqs.offsets[idx + 1], self.request_ts[idx],
                               None if self.users is None else self.users[idx])
        if with_target:
            if self.first_target is None:
                raise ValueError("this examples table has no 'targets' column")
            out["target"] = torch.from_numpy(self.f.codes[self.first_target[idx]])
        return out
