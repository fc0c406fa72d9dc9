"""Recommendations from a trained generator: encode each user once, then constrained beam
search over semantic IDs (only codes that map to real items survive), top-K distinct items."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from onerec.features.history import EvalExamples, HistoryFeaturizer, default_featurizer
from onerec.generate.beam import beam_search
from onerec.model.generator import Generator
from onerec.tokenizer.constraints import PrefixTable


class GenerativeRecommender:
    """The trained generator behind the same ``recommend`` interface as the baselines.

    Args:
        model: a trained :class:`Generator`.
        codes: [N_items, D] semantic IDs (unique per item).
        beam_size: beams per user (>= k asked of ``recommend``).
        featurizer: builds the encoder's input (default: from ``codes`` and the model config, without
            side information; refused for a model that needs it, see :func:`onerec.pipeline.make_featurizer`).
    """

    name = "onerec"

    def __init__(self, model: Generator, codes: np.ndarray, *, beam_size: int = 32, batch_size: int = 256,
                 device: str | torch.device = "cpu", progress: bool = False,
                 featurizer: HistoryFeaturizer | None = None) -> None:
        self.model = model.to(device).eval()
        self.codes = np.asarray(codes, dtype=np.int64)
        self.device = torch.device(device)
        self.table = PrefixTable.from_codes(torch.from_numpy(self.codes), model.codebook_sizes).to(self.device)
        # the pathways beyond the positive one need side information: the default refuses such a model
        self.featurizer = featurizer or default_featurizer(self.codes, model.cfg, "GenerativeRecommender")
        self.beam_size, self.batch_size, self.progress = beam_size, batch_size, progress

    def fit(self, train: pa.Table, *, n_items: int, valid: pa.Table | None = None) -> None:
        """Training happens in :func:`onerec.train.train_generator`; nothing to do here."""

    @torch.no_grad()
    def recommend(self, examples: pa.Table, k: int) -> np.ndarray:
        """Top-``k`` item ids per row of a valid/test table: int64 [B, k], -1 where fewer exist."""
        ex = EvalExamples(examples, self.featurizer)
        out = np.full((len(ex), k), -1, dtype=np.int64)
        starts = range(0, len(ex), self.batch_size)
        for start in tqdm(starts, desc="generate", unit="batch", disable=not self.progress, dynamic_ncols=True):
            idx = np.arange(start, min(len(ex), start + self.batch_size))
            out[idx] = self.recommend_batch(ex.batch(idx), k)
        return out

    @torch.no_grad()
    def recommend_batch(self, batch: dict[str, torch.Tensor], k: int) -> np.ndarray:
        """Top-``k`` item ids of a featurized batch: int64 [B, k], -1 where fewer valid items exist."""
        items, _, _ = self.generate(batch, k)
        return items.cpu().numpy()

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], k: int, *, beam_size: int | None = None,
                 cached: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Constrained beam search for a featurized batch (see :mod:`onerec.features`).

        The encoder runs once per user; decoding uses the KV cache and per-user cross-attention K/V
        (:meth:`Generator.decode_step`); ``cached=False`` runs the plain uncached decoder instead
        (:meth:`Generator.step_log_probs` over memory repeated per beam), the reference the fast path
        is tested against.

        Args:
            k: items per user; ``k = beam_size`` returns the whole final beam (Pass@K candidate sets).
            beam_size: beams (default ``max(self.beam_size, k)``); must be >= k.

        Returns:
            (items [B, k] int64, -1 = none; scores [B, k] float32 total log-prob, descending;
            codes [B, k, D]).
        """
        batch = {key: v.to(self.device) for key, v in batch.items()}
        b = batch["hist_codes"].shape[0]
        beam = max(self.beam_size, k) if beam_size is None else beam_size
        memory, memory_mask = self.model.encode_batch(batch)
        if cached:
            step_fn, state = self.model.beam_step_fn(memory, memory_mask, beam)
        else:
            state = {"memory": memory.repeat_interleave(beam, dim=0),
                     "mask": memory_mask.repeat_interleave(beam, dim=0)}

            def step_fn(tokens: torch.Tensor, step: int, st: dict[str, torch.Tensor]):
                return self.model.step_log_probs(tokens, step, st["memory"], st["mask"]), st

        return beam_search(step_fn, batch_size=b, table=self.table, beam_size=beam, top_k=k, state=state,
                           return_codes=True)
