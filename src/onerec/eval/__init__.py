"""Offline evaluation: full-ranking Recall@K / NDCG@K and a harness that scores any recommender."""

from onerec.eval.harness import evaluate, evaluate_many, format_table
from onerec.eval.metrics import (
    DEFAULT_KS,
    auc,
    compute_metrics,
    gauc,
    hit_matrix,
    metric_names,
    per_user_metrics,
    topk_from_scores,
)

__all__ = [
    "DEFAULT_KS",
    "auc",
    "compute_metrics",
    "evaluate",
    "evaluate_many",
    "format_table",
    "gauc",
    "hit_matrix",
    "metric_names",
    "per_user_metrics",
    "topk_from_scores",
]
