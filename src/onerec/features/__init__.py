"""Features: user pathways built from split tables (v0: the positive-feedback pathway)."""

from onerec.features.history import (
    EvalExamples,
    HistoryFeaturizer,
    SequenceExamples,
    TrainExamples,
    age_bucket,
    needs_side,
)

__all__ = ["EvalExamples", "HistoryFeaturizer", "SequenceExamples", "TrainExamples", "age_bucket", "needs_side"]
