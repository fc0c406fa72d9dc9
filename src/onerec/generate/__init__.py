"""Generation: batched beam search constrained to valid semantic IDs (see :mod:`onerec.generate.beam`)."""

from onerec.generate.beam import (
    StepFn,
    beam_search,
    beam_search_reference,
    expand_to_beams,
    map_state,
    reorder_state,
)
from onerec.tokenizer.constraints import PrefixTable

__all__ = [
    "PrefixTable",
    "StepFn",
    "beam_search",
    "beam_search_reference",
    "expand_to_beams",
    "map_state",
    "reorder_state",
]
