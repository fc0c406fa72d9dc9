"""The service core, without a web framework: a run's recommenders (the generator as configured, alone and with the
succession prior; most-popular and transitions fitted on the train split) answering batches of validated queries."""

import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onerec.config import RunConfig

DEFAULT_FLAGS = 1  # an explicit history's behaviours count as clicks unless flags are given
MAX_TIMESTAMP = 2**62  # explicit timestamps lie in [0, 2**62): request time (the latest + 1) stays in int64

#: what a request's ``model`` may name: the run's generator as configured (``generate.succession_prior``), the
#: generator alone (prior weight 0), the generator fused with the succession prior, and two baselines fitted on the
#: run's train split at start-up (SASRec is not served: it trains for minutes and a run keeps no fitted SASRec)
MODELS = ("onerec", "onerec_generator", "onerec_prior", "popular", "transitions")
BASELINES = ("popular", "transitions")
#: the prior weight of ``onerec_prior`` when the run's ``generate.succession_prior`` is 0 (``onerec tune-prior``
#: chooses one on the valid split and saves it in the run's config, which then takes its place)
UI_PRIOR_WEIGHT = 1.0
#: at most this many valid rows choose the transitions baseline's window and decay at start-up (as eval does,
#: on a fixed sample so a large dataset still starts in seconds)
TRANSITIONS_VALID_ROWS = 2000
COVER_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp"}
MAX_COVER_BYTES = 8 << 20


@dataclass
class Query:
    """One validated request: a user's history (item ids, oldest first), k, the model that ranks and whether the
    history's items are left out of the answer."""

    items: np.ndarray
    ts: np.ndarray
    flags: np.ndarray
    request_ts: int
    k: int
    user_id: str | None = None
    user: int | None = None  # the dataset's user index (known users): their full log and user features
    model: str = "onerec"
    exclude_seen: bool = False


def item_covers(items: Any, data_dir: Path, column: str, relative_to: Path | None = None) -> list[Path | None]:
    """Each item's cover image (by dense index) from the items table's ``column`` (a path relative to
    ``relative_to``, default ``data_dir``, or absolute), None where there is none or where it does not resolve
    (symlinks followed) to an image file inside ``data_dir``: a path in the data can never make the service read a
    file outside RUN/data."""
    if column not in items.column_names:
        return [None] * items.num_rows
    return [inside(data_dir, p, relative_to) for p in items[column].to_pylist()]


def inside(root: Path, path: Any, relative_to: Path | None = None) -> Path | None:
    """``path`` (relative to ``relative_to``, default ``root``, unless absolute) resolved, if it is an image file
    (:data:`COVER_TYPES`) inside ``root``; else None."""
    if not isinstance(path, (str, Path)) or not str(path) or "\x00" in str(path):
        return None
    try:
        base = root.resolve(strict=True)
        p = ((relative_to or root) / path).resolve(strict=True)  # an absolute ``path`` replaces the base
    except (OSError, RuntimeError, ValueError):  # missing, a symlink loop
        return None
    if not p.is_relative_to(base) or not p.is_file() or p.suffix.lower() not in COVER_TYPES:
        return None
    return p


class RecommendService:
    """Loads a run (dataset, codes, trained generator) and answers batches of :class:`Query`.

    Args:
        run: the run directory (needs data/, tokenizer/, train/).
        cfg: the run's config (``generate.beam_size``, ``serve.*``, ``data.positive``).
        device: torch device for the model.
        note_drift: print the note of :func:`onerec.pipeline.model_config_drift` (``serve --workers`` prints it
            once in its parent process, not once per worker).
    """

    def __init__(self, run: Path, cfg: RunConfig, device: str | torch.device = "cpu", *,
                 note_drift: bool = True) -> None:
        from onerec.data.schema import Dataset
        from onerec.data.splits import Sequences, load_splits
        from onerec.pipeline import _item_titles, _require, load_recommender, raw_ids

        self.cfg = cfg
        data = _require(run / "data" / "dataset.json", "data").parent
        ds = Dataset.load(data, validate=False)
        self.user_ids = raw_ids(ds.users)
        self.user_index = {r: i for i, r in enumerate(self.user_ids)}
        self.seq = Sequences.from_interactions(ds.interactions, ds.n_users, cfg.data.positive)
        self.titles = _item_titles(ds.items)
        self.item_ids = raw_ids(ds.items)  # the dataset's own item ids, by onerec's dense index
        self.item_index = {r: i for i, r in enumerate(self.item_ids)}
        splits = load_splits(_require(data / "split", "data"), n_items=ds.items.num_rows)
        # prior=True: the train split's succession counts, so the prior can be compared even where the run ranks
        # without it (generate.succession_prior = 0 keeps rank() the generator alone)
        self.rec = load_recommender(run, cfg, device, dataset=ds, splits=splits, prior=True,
                                    note_drift=note_drift)
        self.n_items = len(self.rec.codes)
        self.prior_weight = cfg.generate.succession_prior or UI_PRIOR_WEIGHT
        self.baselines = self._fit_baselines(splits)
        self.data_dir = data
        self.covers = self._covers(data, ds.items)
        self.lock = threading.Lock()  # one search at a time per model
        self.explorer = None  # serve.explore_slots: AGE's picks of new items (onerec.explore.serving)
        if cfg.serve.explore_slots:
            from onerec.explore.serving import Explorer

            self.explorer = Explorer.fit(ds.interactions, ds.n_users, np.asarray(self.rec.codes), ds.items, cfg)
        self.explore_lock = threading.Lock()
        if cfg.generate.compile != "false":  # compile the decode step before serving, not on the first requests'
            # clock. torch.compile: one user is a graph of its own (sizes of 1 are specialised), two or more share
            # one; aot: the first search compiles or loads every level's package, which serves every shape
            for n in (1, 2):
                self.recommend([self.history_query([0], 1) for _ in range(n)])

    def _fit_baselines(self, splits: dict) -> dict[tuple[str, bool], Any]:
        """Most-popular and transitions fitted on the train split (the transitions' window and decay chosen on at
        most :data:`TRANSITIONS_VALID_ROWS` valid rows), each also as a copy that leaves the history out."""
        import copy

        from onerec.baselines import ItemTransitions, MostPopular
        from onerec.pipeline import sample_rows

        valid = splits.get("valid")
        if valid is not None:
            valid = sample_rows(valid, TRANSITIONS_VALID_ROWS, self.cfg.train.seed)
            valid = valid if valid.num_rows else None
        out: dict[tuple[str, bool], Any] = {}
        for b in (MostPopular(), ItemTransitions()):
            b.fit(splits["train"], n_items=self.n_items, valid=valid)
            excluding = copy.copy(b)  # shares the fitted counts
            excluding.exclude_seen = True
            out[b.name, False], out[b.name, True] = b, excluding
        return out

    def _covers(self, data: Path, items: Any) -> list[Path | None]:
        """Each item's cover inside RUN/data: from the items' ``content.image_field`` column (relative paths against
        ``content.media_root``, default RUN/data), else a simulated world's covers that the vlm content backend
        rendered into RUN/data/covers (``<index>.png``, :func:`onerec.data.covers.render_covers`, which adds its
        column to the items only in memory); None for an item without one."""
        c = self.cfg.content
        if c.image_field in items.column_names:
            return item_covers(items, data, c.image_field, Path(c.media_root) if c.media_root else None)
        if (data / "covers").is_dir() and (data / "world" / "world.json").is_file():
            return [inside(data, f"covers/{i}.png") for i in range(items.num_rows)]
        return [None] * items.num_rows

    def cover(self, item: int) -> Path | None:
        """The cover file of item ``item`` if it has one that is (still) a file inside RUN/data, else None."""
        if not 0 <= item < len(self.covers) or self.covers[item] is None:
            return None
        return inside(self.data_dir, self.covers[item])

    def item_info(self, item: int) -> dict[str, Any]:
        """What the page shows of an item: its ids, title, semantic ID and cover URL (None without one)."""
        return {"item_id": self.item_ids[item], "item_index": item, "title": self.titles[item],
                "semantic_id": [int(c) for c in self.rec.codes[item]],
                "cover": f"/ui/cover/{item}" if self.covers[item] is not None else None}

    # ------------------------------------------------------------------ queries
    def user_query(self, user_id: str, k: int, model: str = "onerec", exclude_seen: bool = False) -> Query:
        """The stored positive history of a known user. Raises KeyError for an unknown id."""
        u = self.user_index[user_id]
        s, e = self.seq.offsets[u], self.seq.offsets[u + 1]
        ts = self.seq.ts[s:e]
        return Query(self.seq.items[s:e], ts, self.seq.flags[s:e].astype(np.int64),
                     int(ts[-1]) + 1 if e > s else 0, k, user_id, u, model, exclude_seen)

    def item_indices(self, ids: list[str | int]) -> list[int]:
        """Dense indices of the dataset's item ids (``raw_id``; an integer stands for its decimal text). Raises
        KeyError naming the first unknown id."""
        try:
            return [self.item_index[str(i)] for i in ids]
        except KeyError as e:
            raise KeyError(e.args[0]) from None

    def history_query(self, items: list[int], k: int, ts: list[int] | None = None,
                      flags: list[int] | None = None, model: str = "onerec", exclude_seen: bool = False) -> Query:
        """An explicit history (validated by the caller: known items, equal lengths)."""
        n = len(items)
        t = np.asarray(ts if ts is not None else [0] * n, dtype=np.int64)
        f = np.asarray(flags if flags is not None else [DEFAULT_FLAGS] * n, dtype=np.int64)
        return Query(np.asarray(items, dtype=np.int64), t, f, int(t.max()) + 1 if ts is not None else 0, k,
                     model=model, exclude_seen=exclude_seen)

    def explore(self, query: Query, items: list[int], scores: list[float]) -> tuple[list[int], list[float],
                                                                                     list[bool]]:
        """``serve.explore_slots``: the answer of ``query`` with its last N positions given to new items AGE chose,
        and which ones those are (:meth:`onerec.explore.serving.Explorer.fill`); unchanged without an explorer or
        for the baselines."""
        if self.explorer is None or query.model != "onerec":
            return list(items), list(scores), [False] * len(items)
        with self.explore_lock:
            return self.explorer.fill(query, items, scores)

    def beam_width(self, k: int) -> int:
        return max(self.cfg.generate.beam_size, k)

    @torch.no_grad()
    def recommend(self, queries: list[Query]) -> list[tuple[list[int], list[float]]]:
        """(items, scores) per query, in order; one beam search per distinct model, beam width, kind (known
        users, whose features include their full log and user features; explicit histories) and ``exclude_seen``
        (which leaves the query's whole history out of its answer: ``min(k, items not in it)`` items)."""
        out: list[Any] = [None] * len(queries)
        groups: dict[tuple[str, int, bool, bool], list[int]] = defaultdict(list)
        for i, q in enumerate(queries):
            if q.model in BASELINES:
                groups[q.model, 0, False, q.exclude_seen].append(i)
            else:
                groups[q.model, self.beam_width(q.k), q.user is not None, q.exclude_seen].append(i)
        with self.lock:
            for (model, beam, known, exclude), idx in groups.items():
                qs = [queries[i] for i in idx]
                k_max = max(q.k for q in qs)
                if model in BASELINES:
                    items, scores = self._baseline(model, qs, k_max, exclude)
                else:
                    items, scores = self._generate(model, qs, k_max, beam, known, exclude)
                items, scores = items.tolist(), scores.tolist()
                for j, i in enumerate(idx):
                    keep = [(it, sc) for it, sc in zip(items[j][: qs[j].k], scores[j][: qs[j].k]) if it >= 0]
                    out[i] = ([it for it, _ in keep], [sc for _, sc in keep])
        return out

    def _generate(self, model: str, qs: list[Query], k: int, beam: int, known: bool, exclude: bool
                  ) -> tuple[np.ndarray, np.ndarray]:
        """The generator's top ``k`` of queries of one kind: as the run ranks (``onerec``: fused with the prior when
        ``generate.succession_prior`` > 0), alone (beam items by log-probability) or fused with the prior."""
        from onerec.features.history import Ragged
        from onerec.generate.generative import top_fused

        offsets = np.zeros(len(qs) + 1, dtype=np.int64)
        np.cumsum([len(q.items) for q in qs], out=offsets[1:])
        seqs = Ragged(offsets, np.concatenate([q.items for q in qs]), np.concatenate([q.ts for q in qs]),
                      np.concatenate([q.flags for q in qs]))
        users = np.array([q.user for q in qs], dtype=np.int64) if known else None
        batch = self.rec.featurizer.histories(seqs, np.arange(len(qs)), offsets[1:],
                                              np.array([q.request_ts for q in qs]), users)
        seen = [q.items for q in qs] if exclude else None
        if model == "onerec":
            return self.rec.rank(batch, k, beam_size=beam, exclude=seen)  # fused when generate.succession_prior
        if model == "onerec_generator":
            items, scores, _ = self.rec.generate(batch, k, beam_size=beam, exclude=seen)
            return items.cpu().numpy(), scores.cpu().numpy()
        pool, log_p, prior = self.rec.pool(batch, k, beam_size=beam, exclude=seen)
        return top_fused(pool, log_p + self.prior_weight * prior, k)

    def _baseline(self, model: str, qs: list[Query], k: int, exclude: bool) -> tuple[np.ndarray, np.ndarray]:
        """A baseline's top ``k`` and their scores (most-popular: train interactions; transitions: its score)."""
        import pyarrow as pa

        b = self.baselines[model, exclude]
        hist = [q.items for q in qs]
        items = b.recommend(pa.table({"history": pa.array(hist, type=pa.list_(pa.int64()))}), k)
        if model == "popular":
            scores = b.counts[np.maximum(items, 0)].astype(np.float64)
        else:
            scores = np.take_along_axis(b.scores(hist), np.maximum(items, 0), 1)
        return items, scores
