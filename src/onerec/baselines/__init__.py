"""Reference recommenders scored in the same harness as the generator: most-popular, item-to-item
transitions and SASRec."""

from __future__ import annotations

import dataclasses

import torch

from onerec.baselines.base import Recommender
from onerec.baselines.popular import MostPopular
from onerec.baselines.sasrec import SASRec, SASRecRecommender
from onerec.baselines.transitions import ItemTransitions
from onerec.config import SasrecConfig

BASELINE_NAMES: tuple[str, ...] = ("popular", "transitions", "sasrec", "sasrec_bce", "sasrec_ce")


def build_baseline(name: str, sasrec: SasrecConfig | None = None,
                   device: str | torch.device = "cpu", *, exclude_seen: bool = False) -> Recommender:
    """An unfitted baseline by name (``EvalConfig.baselines``).

    ``sasrec`` uses ``sasrec.loss``; ``sasrec_bce`` / ``sasrec_ce`` force that loss. ``exclude_seen``
    (``eval.exclude_seen``): the baseline never recommends an item of the row's history (SASRec: its
    ``exclude_history``, which may also be set on its own).
    """
    if name == "popular":
        return MostPopular(exclude_seen=exclude_seen)
    if name == "transitions":
        return ItemTransitions(exclude_seen=exclude_seen)
    if name in ("sasrec", "sasrec_bce", "sasrec_ce"):
        cfg = sasrec or SasrecConfig()
        if name != "sasrec":
            cfg = dataclasses.replace(cfg, loss=name.split("_")[1])
        if exclude_seen and not cfg.exclude_history:
            cfg = dataclasses.replace(cfg, exclude_history=True)
        return SASRecRecommender(cfg, device=device, name=name)
    raise ValueError(f"unknown baseline '{name}'; choose from {', '.join(BASELINE_NAMES)}")


__all__ = ["BASELINE_NAMES", "ItemTransitions", "MostPopular", "Recommender", "SASRec", "SASRecRecommender",
           "build_baseline"]
