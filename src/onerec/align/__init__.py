"""Preference alignment of the generator: IPA with DPO (OneRec V1), ECPO (Technical Report),
rejection-sampling fine-tuning, and scoring in the simulated world."""

from onerec.align.loop import AlignContext, align, request_table
from onerec.align.losses import dpo_loss, ecpo_loss, grpo_loss, sequence_log_probs

__all__ = ["AlignContext", "align", "dpo_loss", "ecpo_loss", "grpo_loss", "request_table", "sequence_log_probs"]
