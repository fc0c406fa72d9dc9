"""Recommendations from a trained generator: encode each user once, then constrained beam
search over semantic IDs (only codes that map to real items survive), top-K distinct items.

Optionally (``prior_weight`` > 0, ``generate.succession_prior``; not in the papers) the beam is pooled with the
items that most often followed the user's last items in the train split
(:class:`~onerec.features.succession.Succession`), and the pool is ranked by
``log p(item | history) + prior_weight * log(1 + succession score)``: shallow fusion of the generator with the
succession counts that the transitions baseline ranks by alone.

``exclude_seen`` (``generate.exclude_seen``, ``eval.exclude_seen``) leaves out the items of each user's history:
the constrained beam search itself masks them (:func:`~onerec.generate.beam.beam_search`'s ``exclude``), so
``k`` distinct unseen items come back whenever the catalogue has them; succession candidates are filtered too."""

from __future__ import annotations

import contextlib

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from onerec.data.splits import list_column
from onerec.errors import ConfigError
from onerec.eval.metrics import per_user_metrics
from onerec.features.history import EvalExamples, HistoryFeaturizer, default_featurizer
from onerec.features.succession import Succession
from onerec.generate.beam import beam_search
from onerec.model.generator import Generator
from onerec.tokenizer.constraints import PrefixTable

#: the prior weights and succession rules ``(window, decay)`` :meth:`GenerativeRecommender.choose_prior` tries by
#: default (``onerec tune-prior`` adds weight 0, the generator alone; ``onerec bench amazon``'s ``onerec_prior``
#: row uses them as they are)
PRIOR_WEIGHTS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
PRIOR_RULES = ((10, 0.1), (10, 0.5))


def compile_mode(compile: bool | str) -> bool | str:
    """``generate.compile`` as the decode step takes it: False (eager), True (``torch.compile``) or ``"aot"``
    (AOTInductor); the strings "false" and "true" as their booleans."""
    mode = {"false": False, "true": True, "aot": "aot"}.get(compile.lower()) if isinstance(compile, str) \
        else bool(compile)
    if mode is None:
        raise ValueError(f"compile must be false, true or 'aot', not {compile!r} (generate.compile)")
    return mode


def _check_modes(compile: bool | str, precision: str) -> None:
    """``generate.compile=aot`` with ``generate.precision=bf16`` is refused, with the fix."""
    if compile == "aot" and precision == "bf16":
        raise ConfigError("generate.compile=aot compiles the float32 step, not bf16 autocast: set "
                          "generate.compile=true (torch.compile) with generate.precision=bf16, or keep fp32")


class GenerativeRecommender:
    """The trained generator behind the same ``recommend`` interface as the baselines.

    Args:
        model: a trained :class:`Generator`.
        codes: [N_items, D] semantic IDs (unique per item).
        beam_size: beams per user (>= k asked of ``recommend``).
        featurizer: builds the encoder's input (default: from ``codes`` and the model config, without
            side information; refused for a model that needs it, see :func:`onerec.pipeline.make_featurizer`).
        exclude_seen: :meth:`recommend` (and :meth:`rank_by_priors`) never return an item of the row's
            ``history`` (all of it, not only the ``max_history`` items the encoder reads).
        compile: how the decode step runs (``generate.compile``): False (or ``"false"``) eagerly; True (``"true"``)
            through ``torch.compile`` (:mod:`onerec.model.compiled`), the first search per semantic-ID level
            compiling (seconds); ``"aot"`` through AOTInductor packages (:mod:`onerec.model.aot`), compiled once
            per architecture and kept under ``aot_dir`` (a temporary folder when None).
        static_cache: the decoder's KV cache: True the preallocated one, False the plain one, None (default) the
            device's choice (plain on CPU; :meth:`Generator.beam_step_fn`). The same items either way.
        precision: ``"bf16"`` runs the encoder and the decoder under ``torch.autocast`` in bfloat16
            (``generate.precision``); log-probabilities and beam scores stay float32. ``"fp32"``: exact.
    """

    name = "onerec"

    def __init__(self, model: Generator, codes: np.ndarray, *, beam_size: int = 32, batch_size: int = 256,
                 device: str | torch.device = "cpu", progress: bool = False,
                 featurizer: HistoryFeaturizer | None = None, prior: Succession | None = None,
                 prior_weight: float = 0.0, prior_pool: int = 20, prior_window: int = 10,
                 prior_decay: float = 0.1, exclude_seen: bool = False, compile: bool | str = False,
                 static_cache: bool | None = None, precision: str = "fp32", aot_dir: str | None = None) -> None:
        self.model = model.to(device).eval()
        self.codes = np.asarray(codes, dtype=np.int64)
        self.device = torch.device(device)
        self.table = PrefixTable.from_codes(torch.from_numpy(self.codes), model.codebook_sizes).to(self.device)
        # the pathways beyond the positive one need side information: the default refuses such a model
        self.featurizer = featurizer or default_featurizer(self.codes, model.cfg, "GenerativeRecommender")
        self.beam_size, self.batch_size, self.progress = beam_size, batch_size, progress
        if prior_weight and prior is None:
            raise ValueError("prior_weight > 0 needs prior=Succession.from_train(train, n_items)")
        self.prior, self.prior_weight, self.prior_pool = prior, prior_weight, prior_pool
        self.prior_window, self.prior_decay = prior_window, prior_decay
        self.exclude_seen = exclude_seen
        self.aot_dir = aot_dir
        self.static_cache = static_cache  # the KV cache: None = the device's default (Generator.beam_step_fn)
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', not {precision!r} (generate.precision)")
        self.precision = precision
        self.compile = compile

    @property
    def compile(self) -> bool | str:
        """How the decode step runs: False, True or ``"aot"`` (set with any form :func:`compile_mode` reads, also
        after construction, as benchmarks switching modes on one recommender do)."""
        return self._compile

    @compile.setter
    def compile(self, value: bool | str) -> None:
        mode = compile_mode(value)
        _check_modes(mode, self.precision)
        self._compile = mode

    def fit(self, train: pa.Table, *, n_items: int, valid: pa.Table | None = None) -> None:
        """Training happens in :func:`onerec.train.train_generator`; nothing to do here."""

    @torch.no_grad()
    def recommend(self, examples: pa.Table, k: int) -> np.ndarray:
        """Top-``k`` item ids per row of a valid/test table: int64 [B, k], -1 where fewer exist (with
        ``exclude_seen``, none of the row's ``history``)."""
        ex = EvalExamples(examples, self.featurizer)
        seen = self._seen(examples)
        out = np.full((len(ex), k), -1, dtype=np.int64)
        starts = range(0, len(ex), self.batch_size)
        for start in tqdm(starts, desc="generate", unit="batch", disable=not self.progress, dynamic_ncols=True):
            idx = np.arange(start, min(len(ex), start + self.batch_size))
            out[idx] = self.recommend_batch(ex.batch(idx), k, exclude=None if seen is None else [seen[i] for i in idx])
        return out

    def _seen(self, examples: pa.Table) -> list[np.ndarray] | None:
        """Each row's history (item ids) when ``exclude_seen``, else None."""
        return list_column(examples, "history") if self.exclude_seen else None

    @torch.no_grad()
    def recommend_batch(self, batch: dict[str, torch.Tensor], k: int, *,
                        exclude: list[np.ndarray] | None = None) -> np.ndarray:
        """Top-``k`` item ids of a featurized batch: int64 [B, k], -1 where fewer valid items exist;
        ``exclude`` as in :meth:`rank`."""
        return self.rank(batch, k, exclude=exclude)[0]

    @torch.no_grad()
    def rank(self, batch: dict[str, torch.Tensor], k: int, *, beam_size: int | None = None,
             exclude: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items of a featurized batch and their scores, best first: (int64 [B, k], -1 where fewer
        valid items exist; float [B, k]). The beam's items and total log-probabilities, or with
        ``prior_weight`` > 0 the fused ranking of the beam pooled with the succession candidates
        (:meth:`pool`). ``beam_size`` as in :meth:`generate`; ``exclude``: B arrays of item ids never returned
        for that row (e.g. its history; the beam search masks them, see :meth:`generate`), or None."""
        if not self.prior_weight:
            items, scores, _ = self.generate(batch, k, beam_size=beam_size, exclude=exclude)
            return items.cpu().numpy(), scores.cpu().numpy()
        pool, log_p, prior = self.pool(batch, k, beam_size=beam_size, exclude=exclude)
        return top_fused(pool, log_p + self.prior_weight * prior, k)

    @torch.no_grad()
    def pool(self, batch: dict[str, torch.Tensor], k: int, *, beam_size: int | None = None,
             rescore_beam: bool = False, exclude: list[np.ndarray] | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The candidate pool that :meth:`rank` fuses when ``prior_weight`` > 0: (items int64 [B, M], -1 =
        padding; their log-probabilities under the generator, float64 [B, M], -inf on padding; their prior
        log(1 + succession score), float64 [B, M]); the fused score is ``log_p + prior_weight * prior``. The
        pool is the whole final beam (``beam_size``, default ``max(self.beam_size, k)``) and the succession
        counts' top ``prior_pool`` for the user's history (as the positive pathway reads it: its last
        ``max_history`` items; ``prior_window`` and ``prior_decay`` score it), each item once.

        The beam's items keep the log-probabilities the beam search summed; only the succession candidates
        outside the beam are scored by a teacher-forced pass (:meth:`log_probs`, cached). ``rescore_beam=True`` is
        the plain reference: every pool item through the full decoder (``log_probs(cached=False)``), the same
        numbers up to float rounding (tested). ``exclude`` as in :meth:`rank`: neither the beam nor the succession
        candidates hold those items."""
        beam = self._beam(batch, k, beam_size, exclude)
        return self._pool(batch, beam, self.prior_window, self.prior_decay, rescore_beam=rescore_beam)

    def _beam(self, batch: dict[str, torch.Tensor], k: int, beam_size: int | None,
              exclude: list[np.ndarray] | None = None) -> tuple:
        """The first half of :meth:`pool`: (the encoder's output, the final beam's items [B, beam] and their
        log-probabilities, float64, -inf on padding, the histories the succession counts score, ``exclude``), to
        be pooled with one or more succession rules."""
        beam = max(self.beam_size, k) if beam_size is None else beam_size
        encoded = self._encode(batch)
        found, found_lp, _ = self._search(*encoded, beam, beam_size=beam, exclude=exclude)
        found = found.cpu().numpy()
        item_ids, mask = batch["hist_item"].numpy(), batch["hist_mask"].numpy()
        hist = [row[m] - 1 for row, m in zip(item_ids, mask)]  # hist_item is the item id + 1
        return encoded, found, np.where(found >= 0, found_lp.double().cpu().numpy(), -np.inf), hist, exclude

    def _pool(self, batch: dict[str, torch.Tensor], beam: tuple, window: int, decay: float, *,
              rescore_beam: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The second half of :meth:`pool`: the beam of :meth:`_beam` pooled with the succession rule
        (``window``, ``decay``)."""
        encoded, found, found_lp, hist, exclude = beam
        keys, totals = self.prior.sparse_scores(hist, window, decay)  # once for both uses
        rule, _ = self.prior.top(keys, totals, len(hist), self.prior_pool)
        if exclude is not None:  # excluded items leave the succession candidates too (the beam has none)
            for row, seen in enumerate(exclude):
                rule[row, np.isin(rule[row], seen)] = -1
        pool = np.concatenate([found, rule], 1)
        # an item in both lists keeps its first place only (a stable sort puts each first place first)
        order = np.argsort(pool, axis=1, kind="stable")
        ranked = np.take_along_axis(pool, order, 1)
        dup = np.zeros(pool.shape, dtype=bool)
        np.put_along_axis(dup, order[:, 1:], ranked[:, 1:] == ranked[:, :-1], 1)
        pool[dup] = -1
        if rescore_beam:
            log_p = self.log_probs(batch, pool, encoded=encoded, cached=False)
        else:  # the beam's own sums, and a teacher-forced pass for the candidates it did not find
            log_p = np.concatenate([found_lp, self.log_probs(batch, pool[:, found.shape[1]:], encoded=encoded)], 1)
        return pool, log_p, np.log1p(self.prior.lookup(keys, totals, pool))

    @torch.no_grad()
    def rank_by_priors(self, examples: pa.Table, weights: list[float], rules: list[tuple[int, float]] | None = None,
                       k: int = 10) -> dict[tuple[int, float, float], np.ndarray]:
        """The top-``k`` items of every row of a valid/test table under each succession rule ``(window, decay)``
        (default: this recommender's ``prior_window``, ``prior_decay``) and prior weight (the fused ranking of
        :meth:`rank`; weight 0 ranks the pool by the generator alone), one beam search per batch for all of them:
        ``{(window, decay, weight): int64 [B, k]}``. For choosing the prior on the valid split."""
        if self.prior is None:
            raise ValueError("ranking with the succession prior needs prior=Succession.from_train(train, n_items)")
        rules = [(self.prior_window, self.prior_decay)] if rules is None else rules
        ex = EvalExamples(examples, self.featurizer)
        seen = self._seen(examples)
        out: dict[tuple[int, float, float], list[np.ndarray]] = {(r[0], r[1], w): [] for r in rules for w in weights}
        starts = range(0, len(ex), self.batch_size)
        for start in tqdm(starts, desc="prior grid", unit="batch", disable=not self.progress, dynamic_ncols=True):
            idx = np.arange(start, min(len(ex), start + self.batch_size))
            batch = ex.batch(idx)
            beam = self._beam(batch, k, None, None if seen is None else [seen[i] for i in idx])
            for window, decay in rules:
                pool, log_p, prior = self._pool(batch, beam, window, decay)
                for w in weights:
                    out[window, decay, w].append(top_fused(pool, log_p + w * prior, k)[0])
        return {key: np.concatenate(v) if v else np.empty((0, k), dtype=np.int64) for key, v in out.items()}

    def choose_prior(self, valid: pa.Table, weights: list[float] | tuple[float, ...] = PRIOR_WEIGHTS,
                     rules: list[tuple[int, float]] | tuple[tuple[int, float], ...] = PRIOR_RULES,
                     metric: str = "ndcg@10") -> dict[tuple[int, float, float], float]:
        """Choose the succession prior on a valid table (rows with ``targets``): the mean ``metric`` (``recall@K``
        or ``ndcg@K``) of every ``(window, decay, weight)`` of ``rules`` x ``weights`` (:meth:`rank_by_priors`),
        and set this recommender's ``prior_window``, ``prior_decay`` and ``prior_weight`` to the best (the first of
        equal scores, in grid order). Returns the grid ``{(window, decay, weight): mean metric}``."""
        name, _, cut = metric.partition("@")
        if name not in ("recall", "ndcg") or not cut.isdigit() or int(cut) < 1:
            raise ValueError(f"metric {metric!r}: expected recall@K or ndcg@K, e.g. ndcg@10")
        check_prior_grid(weights, rules)
        targets = list_column(valid, "targets")
        tops = self.rank_by_priors(valid, list(weights), list(rules), k=int(cut))
        grid = {key: float(per_user_metrics(top, targets, (int(cut),))[metric].mean()) for key, top in tops.items()}
        self.prior_window, self.prior_decay, self.prior_weight = max(grid, key=grid.__getitem__)
        return grid

    @torch.no_grad()
    def log_probs(self, batch: dict[str, torch.Tensor], items: np.ndarray, *,
                  encoded: tuple[torch.Tensor, torch.Tensor] | None = None, cached: bool = True) -> np.ndarray:
        """log p(item | history) under the generator, teacher-forced: items int64 [B, M] (-1 = padding,
        scored -inf) -> float64 [B, M]. ``encoded``: the batch's (memory, mask) when the caller already ran
        the encoder.

        A row's items are decoded like the beams of a beam search (:meth:`Generator.decode_step`: the
        cross-attention keys and values once per user, a self-attention cache), so a beam item gets exactly
        the beam's score; each row's items are packed to the left first, so padding costs only up to the
        longest row. ``cached=False`` is the plain reference: the full decoder (:meth:`Generator.decode`)
        over the user's memory repeated per item. With ``precision="bf16"`` the decoder runs under the search's autocast
        (the scores then agree with the search's to bf16's rounding, not exactly)."""
        if encoded is None:
            encoded = self._encode(batch)
        with self._arithmetic():
            return self._log_probs(items, encoded, cached)

    def _log_probs(self, items: np.ndarray, encoded: tuple[torch.Tensor, torch.Tensor], cached: bool) -> np.ndarray:
        """:meth:`log_probs` from the encoder's output."""
        b, m = items.shape
        memory, mask = encoded
        out = np.full((b, m), -np.inf)
        if not cached:
            codes = torch.from_numpy(self.codes[np.maximum(items, 0).reshape(-1)]).to(self.device)
            hidden = self.model.decode(codes[:, :-1], memory.repeat_interleave(m, 0), mask.repeat_interleave(m, 0))
            lp = torch.zeros(b * m, device=self.device)
            for t in range(codes.shape[1]):
                step_lp = torch.log_softmax(self.model.heads[t](hidden[:, t]).float(), -1)
                lp += step_lp.gather(1, codes[:, t:t + 1])[:, 0]
            return np.where(items >= 0, lp.view(b, m).double().cpu().numpy(), out)
        order = np.argsort(items < 0, axis=1, kind="stable")  # each row's items first, padding last
        width = int((items >= 0).sum(1).max(initial=0))
        if not width:
            return out
        packed = np.take_along_axis(items, order[:, :width], 1)
        codes = torch.from_numpy(self.codes[np.maximum(packed, 0).reshape(-1)]).to(self.device)
        ctx, cache = self.model.start_decoding(memory, mask, width), None
        lp = torch.zeros(b * width, device=self.device)
        for t in range(codes.shape[1]):
            step_lp, cache = self.model.decode_step(codes, t, ctx, cache)
            lp += step_lp.gather(1, codes[:, t:t + 1])[:, 0]
        scored = np.where(packed >= 0, lp.view(b, width).double().cpu().numpy(), -np.inf)
        np.put_along_axis(out, order[:, :width], scored, 1)
        return out

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], k: int, *, beam_size: int | None = None,
                 cached: bool = True, exclude: list[np.ndarray] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Constrained beam search for a featurized batch (see :mod:`onerec.features`).

        The encoder runs once per user; decoding uses the KV cache and per-user cross-attention K/V
        (:meth:`Generator.decode_step`); ``cached=False`` runs the plain uncached decoder instead
        (:meth:`Generator.step_log_probs` over memory repeated per beam), the reference the fast path
        is tested against.

        Args:
            k: items per user; ``k = beam_size`` returns the whole final beam (Pass@K candidate sets).
            beam_size: beams (default ``max(self.beam_size, k)``); must be >= k.
            exclude: B arrays of item ids that row must not get (e.g. its history), or None: masked inside the
                search, so ``min(k, items not excluded)`` items come back (:func:`beam_search`).

        Returns:
            (items [B, k] int64, -1 = none; scores [B, k] float32 total log-prob, descending;
            codes [B, k, D]).
        """
        return self._search(*self._encode(batch), k, beam_size=beam_size, cached=cached, exclude=exclude)

    def _arithmetic(self) -> contextlib.AbstractContextManager:
        """The model's arithmetic: bfloat16 autocast with ``precision="bf16"``, else unchanged."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _encode(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's (memory, mask) for a featurized batch, on this recommender's device."""
        with self._arithmetic():
            return self.model.encode_batch({key: v.to(self.device) for key, v in batch.items()})

    def _search(self, memory: torch.Tensor, memory_mask: torch.Tensor, k: int, *, beam_size: int | None = None,
                cached: bool = True, exclude: list[np.ndarray] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`generate` from the encoder's output."""
        b = memory.shape[0]
        beam = max(self.beam_size, k) if beam_size is None else beam_size
        _check_modes(self.compile, self.precision)  # also when either was set after construction
        if cached:
            step_fn, state = self.model.beam_step_fn(memory, memory_mask, beam, compiled=self.compile,
                                                     static_cache=self.static_cache, aot_dir=self.aot_dir)
        else:
            state = {"memory": memory.repeat_interleave(beam, dim=0),
                     "mask": memory_mask.repeat_interleave(beam, dim=0)}

            def step_fn(tokens: torch.Tensor, step: int, st: dict[str, torch.Tensor]):
                return self.model.step_log_probs(tokens, step, st["memory"], st["mask"]), st

        with self._arithmetic():
            return beam_search(step_fn, batch_size=b, table=self.table, beam_size=beam, top_k=k, state=state,
                               return_codes=True, exclude=exclude)


def check_prior_grid(weights, rules) -> None:
    """Raise ValueError unless ``weights`` (>= 0) and ``rules`` (``(window >= 1, decay > 0)``) are non-empty and
    valid prior choices."""
    bad = [w for w in weights if not w >= 0] + [r for r in rules if r[0] < 1 or not r[1] > 0]
    if not len(weights) or not len(rules) or bad:
        raise ValueError(f"{bad[0] if bad else 'an empty grid'} is not allowed. Fix: give prior weights >= 0 and "
                         "succession rules WINDOW:DECAY with WINDOW >= 1 and DECAY > 0")


def top_fused(pool: np.ndarray, fused: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of a pool by fused score (ties keep the pool's order): (items [B, k], -1 where the pool
    has fewer; scores [B, k])."""
    order = np.argsort(-fused, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(fused, order, 1)
    return np.where(np.isneginf(scores), -1, np.take_along_axis(pool, order, 1)), scores
