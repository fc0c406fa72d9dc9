"""Preference alignment of the generator: IPA with DPO (OneRec V1), ECPO (Technical Report), GBPO with
real-feedback rewards (OneRec-V2), rejection-sampling fine-tuning, and scoring in the simulated world."""

from onerec.align.feedback import SimulatedFeedback
from onerec.align.loop import AlignContext, align, request_table
from onerec.align.losses import dpo_loss, ecpo_loss, gbpo_loss, grpo_loss, sequence_log_probs

__all__ = ["AlignContext", "SimulatedFeedback", "align", "dpo_loss", "ecpo_loss", "gbpo_loss", "grpo_loss",
           "request_table", "sequence_log_probs"]
