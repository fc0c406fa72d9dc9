"""Data: canonical tables, dataset adapters, splits and the simulated short-video world."""

from onerec.data.schema import SIGNALS, Dataset, make_dataset, positive_mask, signal_flags

__all__ = ["SIGNALS", "Dataset", "make_dataset", "positive_mask", "signal_flags"]
