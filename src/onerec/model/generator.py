"""Generator v0: an encoder over the user's positive history, a decoder over semantic IDs.

This is the T5-style encoder-decoder of OneRec V1 (arXiv 2502.18965, Sec. 3.2) at its
simplest: the encoder reads the behaviour tokens with full self-attention; the decoder reads
``[BOS] s_1 .. s_{D-1}`` and predicts ``s_1 .. s_D`` of the next item with causal
self-attention and cross-attention to the encoder (next-token cross-entropy). The full
Technical Report model (four pathways, MoE decoder) builds on the same blocks.

Shapes: B = batch, H = history length, D = semantic-ID length (levels incl. the collision
level), V_t = codebook size of level t, E = d_model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onerec.config import ModelConfig
from onerec.data.schema import SIGNALS
from onerec.features.history import N_AGE_BUCKETS
from onerec.model.layers import DecoderBlock, EncoderBlock, RMSNorm, ffn_hidden


class CodeEmbedding(nn.Module):
    """Embeds a semantic ID as the sum of one embedding per level (padding code -1 -> zero)."""

    def __init__(self, codebook_sizes: list[int], dim: int) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(v + 1, dim, padding_idx=v) for v in codebook_sizes)

    def level(self, t: int, codes: Tensor) -> Tensor:
        pad = self.tables[t].padding_idx
        return self.tables[t](torch.where(codes < 0, torch.full_like(codes, pad), codes))

    def forward(self, codes: Tensor) -> Tensor:
        """codes [..., D] -> [..., E]."""
        return sum(self.level(t, codes[..., t]) for t in range(len(self.tables)))


class Generator(nn.Module):
    """Encoder-decoder over semantic IDs.

    Args:
        cfg: sizes (d_model, heads, layers, ffn_mult, dropout, max_history).
        codebook_sizes: V_t per semantic-ID position, e.g. [64, 64, 64, 3].
    """

    def __init__(self, cfg: ModelConfig, codebook_sizes: list[int]) -> None:
        super().__init__()
        self.cfg, self.codebook_sizes = cfg, list(codebook_sizes)
        e, depth = cfg.d_model, len(codebook_sizes)
        ffn = ffn_hidden(e, cfg.ffn_mult)
        self.codes = CodeEmbedding(self.codebook_sizes, e)
        self.flag_emb = nn.Linear(len(SIGNALS), e, bias=False)  # sum of the set signals' vectors
        self.age_emb = nn.Embedding(N_AGE_BUCKETS, e)
        self.hist_pos = nn.Embedding(cfg.max_history, e)  # learnable positions (Technical Report)
        self.encoder = nn.ModuleList(EncoderBlock(e, cfg.n_heads, ffn, cfg.dropout) for _ in range(cfg.enc_layers))
        self.enc_norm = RMSNorm(e)
        self.bos = nn.Parameter(torch.zeros(e))
        self.dec_pos = nn.Embedding(depth, e)
        self.decoder = nn.ModuleList(DecoderBlock(e, cfg.n_heads, ffn, cfg.dropout) for _ in range(cfg.dec_layers))
        self.dec_norm = RMSNorm(e)
        self.heads = nn.ModuleList(nn.Linear(e, v, bias=False) for v in self.codebook_sizes)
        self.drop = nn.Dropout(cfg.dropout)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    # ------------------------------------------------------------------ encoder
    def encode(self, hist_codes: Tensor, hist_flags: Tensor, hist_age: Tensor, hist_mask: Tensor) -> Tensor:
        """Behaviour tokens -> memory [B, H, E]."""
        h = hist_codes.shape[1]
        bits = (hist_flags.unsqueeze(-1) >> torch.arange(len(SIGNALS), device=hist_flags.device)) & 1
        x = self.codes(hist_codes) + self.flag_emb(bits.float()) + self.age_emb(hist_age)
        x = self.drop(x + self.hist_pos(torch.arange(h, device=x.device)))
        # every query may attend to real tokens; rows with no history at all attend to everything
        # (their output is ignored by the mask in cross-attention, so the choice only avoids NaN)
        key_ok = hist_mask | ~hist_mask.any(dim=1, keepdim=True)
        mask = key_ok[:, None, :]
        for block in self.encoder:
            x = block(x, mask)
        return self.enc_norm(x)

    def encode_batch(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The one entry point from a featurized batch (see :mod:`onerec.features`) to the
        encoder: -> (memory [B, S, E], memory_mask bool [B, S], True = real token). Training,
        generation, serving and alignment all call this, so new encoder inputs only change here."""
        return self.encode(batch["hist_codes"], batch["hist_flags"], batch["hist_age"], batch["hist_mask"]), \
            batch["hist_mask"]

    # ------------------------------------------------------------------ decoder
    def decoder_inputs(self, prefix: Tensor) -> Tensor:
        """[BOS] + embedded prefix codes: prefix [B, t] -> [B, t+1, E]."""
        b, t = prefix.shape
        parts = [self.bos.expand(b, 1, -1)]
        if t:
            parts.append(torch.stack([self.codes.level(i, prefix[:, i]) for i in range(t)], dim=1))
        x = torch.cat(parts, dim=1)
        return self.drop(x + self.dec_pos(torch.arange(t + 1, device=x.device)))

    def decode(self, prefix: Tensor, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """Hidden states [B, t+1, E] for prefix [B, t]."""
        x = self.decoder_inputs(prefix)
        mask = (memory_mask | ~memory_mask.any(dim=1, keepdim=True))[:, None, :]
        for block in self.decoder:
            x = block(x, memory, mask)
        return self.dec_norm(x)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Teacher-forced next-token cross-entropy, averaged over the D positions (a scalar).

        Each position has its own vocabulary (level t's codebook), so the loss is computed per
        level rather than over one padded [B, D, max V] logits tensor."""
        memory, memory_mask = self.encode_batch(batch)
        target = batch["target"]
        hidden = self.decode(target[:, :-1], memory, memory_mask)
        losses = [F.cross_entropy(self.heads[t](hidden[:, t]), target[:, t]) for t in range(target.shape[1])]
        return torch.stack(losses).mean()

    def step_log_probs(self, prefix: Tensor, step: int, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """log p(s_step | prefix, history): prefix [M, step] -> [M, V_step] (for beam search)."""
        hidden = self.decode(prefix, memory, memory_mask)
        return F.log_softmax(self.heads[step](hidden[:, -1]).float(), dim=-1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ incremental decoding
    def start_decoding(self, memory: Tensor, memory_mask: Tensor, beams: int) -> DecodingContext:
        """Everything decoding needs from the encoder, computed once per user: each decoder layer's
        cross-attention K/V [U, heads, S, E/heads] (shared by the user's ``beams`` beams, not repeated)
        and the memory mask. Pair with :meth:`decode_step`."""
        if beams < 1:
            raise ValueError(f"beams must be >= 1, got {beams}")
        mask = (memory_mask | ~memory_mask.any(dim=1, keepdim=True))[:, None, None, :]
        cross = [block.cross_attn.project_kv(memory) for block in self.decoder]
        return DecodingContext(cross=cross, mask=mask, beams=beams, users=memory.shape[0])

    def decode_step(self, prefix: Tensor, step: int, ctx: DecodingContext,
                    cache: list[tuple[Tensor, Tensor]] | None) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """log p(s_step | prefix, history) with a self-attention KV cache: equals
        :meth:`step_log_probs` but feeds only the newest token through the decoder.

        Args:
            prefix: [U*beams, step] codes so far (row ``u*beams + k`` is user u's beam k; only the
                last column is read). At step 0 every row starts from [BOS], so the step runs once per
                user and its outputs are repeated to the beams.
            ctx: from :meth:`start_decoding`.
            cache: None at step 0, else the cache this method returned at the previous step, its rows
                re-ordered to follow ``prefix`` (beam search's ``index_select`` on each tensor).

        Returns:
            (log-probs [U*beams, V_step] float32, the extended cache: per layer (k, v), each
            [U*beams, heads, step+1, E/heads]).
        """
        u, g = ctx.users, ctx.beams
        if step == 0:
            x, group = self.bos.expand(u, 1, -1), 1
        else:
            x, group = self.codes.level(step - 1, prefix[:, step - 1])[:, None, :], g
        x = x + self.dec_pos.weight[step]
        new_cache = []
        for i, block in enumerate(self.decoder):
            x, kv = block.step(x, None if cache is None else cache[i], ctx.cross[i], ctx.mask, group)
            new_cache.append(kv)
        log_probs = F.log_softmax(self.heads[step](self.dec_norm(x[:, 0])).float(), dim=-1)
        if step == 0 and g > 1:
            log_probs = log_probs.repeat_interleave(g, dim=0)
            new_cache = [(k.repeat_interleave(g, dim=0), v.repeat_interleave(g, dim=0)) for k, v in new_cache]
        return log_probs, new_cache

    def beam_step_fn(self, memory: Tensor, memory_mask: Tensor, beams: int):
        """A ``step_fn`` for :func:`onerec.generate.beam_search` over this model with the KV cache:
        -> (step_fn, initial state). The state is the self-attention cache (leading dim U*beams, so beam
        search re-orders it); the per-user cross-attention K/V live in the closure."""
        ctx = self.start_decoding(memory, memory_mask, beams)

        def step_fn(tokens: Tensor, step: int, cache):
            return self.decode_step(tokens, step, ctx, cache)

        return step_fn, None


@dataclass
class DecodingContext:
    """Per-user decoding inputs from :meth:`Generator.start_decoding` (U users, ``beams`` each)."""

    cross: list[tuple[Tensor, Tensor]]  # per decoder layer (k, v) [U, heads, S, E/heads]
    mask: Tensor  # bool [U, 1, 1, S]
    beams: int
    users: int
