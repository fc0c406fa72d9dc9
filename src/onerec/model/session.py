"""OneRec V1's session-wise generation: m items per request, each conditioned on the ones before.

A model trained with ``model.session_len = m`` (arXiv 2502.18965, Sec. 3) reads ``[BOS]`` and the
semantic IDs of the session's items one after another. At serving time the session is generated
item by item: a constrained beam search (:func:`onerec.generate.beam.beam_search`) over the next
item's D tokens, with the already chosen items' tokens as a fixed decoder prefix; the best item not
yet in the session is appended. Point-wise generation is the case m = 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from onerec.generate.beam import beam_search
from onerec.model.generator import Generator
from onerec.tokenizer.constraints import PrefixTable


@torch.no_grad()
def generate_sessions(model: Generator, batch: dict[str, Tensor], table: PrefixTable, m: int,
                      beam_size: int = 16) -> Tensor:
    """Sessions of ``m`` distinct items per user: LongTensor [B, m] (-1 where fewer items exist)."""
    model.eval()
    depth = len(model.codebook_sizes)
    memory, memory_mask = model.encode_batch(batch)
    b, dev = memory.shape[0], memory.device
    items = torch.full((b, m), -1, dtype=torch.long, device=dev)
    prev = torch.zeros((b, 0), dtype=torch.long, device=dev)  # chosen items' codes, flattened
    for j in range(m):
        k = j + 1  # top j+1 distinct items always hold one not yet chosen
        beam = max(beam_size, k)
        start = prev.shape[1]

        def step_fn(tokens: Tensor, step: int, st: dict[str, Tensor], start: int = start):
            prefix = torch.cat([st["prev"], tokens], dim=1)
            hidden = model.decode(prefix, st["memory"], st["mask"])[:, -1]
            return F.log_softmax(model.heads[(start + step) % depth](hidden).float(), dim=-1), st

        state = {"memory": memory.repeat_interleave(beam, 0), "mask": memory_mask.repeat_interleave(beam, 0),
                 "prev": prev.repeat_interleave(beam, 0)}
        got, _, codes = beam_search(step_fn, batch_size=b, table=table, beam_size=beam, top_k=k, state=state,
                                    return_codes=True)
        fresh = (got[:, :, None] != items[:, None, :j]).all(-1) & (got >= 0)  # [B, k]
        first = torch.argmax(fresh.int(), dim=1)  # first fresh candidate (0 when none)
        ok = fresh.any(dim=1)
        items[:, j] = torch.where(ok, got[torch.arange(b, device=dev), first], -1)
        chosen = codes[torch.arange(b, device=dev), first]
        prev = torch.cat([prev, chosen.clamp_min(0)], dim=1)
    return items
