"""OneRec-V2's lazy decoder-only generator (arXiv 2508.20900, Sec. 2, "Lazy Decoder-Only Architecture").

The encoder-decoder of OneRec V1 and the Technical Report spends almost all of its compute on the
encoder (97.66% of the FLOPs in V2's accounting): every behaviour token goes through every encoder
layer, for every training sample. V2 drops the encoder. A *context processor* maps each context
token once to key/value states, and the decoder's cross-attention reads those states directly, with
no key/value projection of its own ("lazy" cross-attention). The parameters and the compute go to
the decoder, which only runs over the D tokens of the item being generated.

Pieces, each cited where it is implemented:

* :class:`ContextProcessor`: one linear map of every context token to
  ``d_context = S_kv * L_kv * G_kv * d_head`` dims, split into ``S_kv * L_kv`` parts of ``G_kv``
  heads each, each head RMS-normalised. Part set ``i`` gives the keys and values of the decoder
  layers that use set ``i``; with ``S_kv = 1`` keys and values are *tied* (the same vectors).
* :class:`LazyBlock`: cross-attention (grouped-query: ``G_kv`` key/value heads shared by the
  ``n_heads`` query heads) -> causal self-attention over the item's tokens -> feed-forward (a
  mixture of experts in the deeper layers when ``model.moe_experts`` is set).
* Decoder layer ``l`` of ``N`` reads key/value set ``floor(l * L_kv / N)``.

What onerec adds, because its training reads every position of a sequence at once (see below):
a context token carries only what the behaviour *is* (semantic ID, feedback, item/author/tag ids,
play time, duration). Where it sits relative to the request (its position among the pathway's
tokens, and the log-bucketed time between it and the request: the ``time`` behaviour feature) enters
as a learned per-head *attention bias* instead of an embedding added to the token. The token's
key/value states are then the same for every request that sees it.

**Training on every position.** A user's positives ``i_0 .. i_{n-1}`` give n-1 next-item samples.
Per-prefix training (the encoder-decoder's, :class:`onerec.features.TrainExamples`) featurizes and maps the
history of each sample separately. Here one pass over a window of the sequence
(:class:`onerec.features.SequenceExamples`) maps every behaviour to its context states once; each target
``i_t`` then gathers the states of ``i_{t-H} .. i_{t-1}`` (H = ``model.max_history``; nothing at or after
``t``: block-causal) into the layout its own sample would have, with that sample's biases, and the decoder
runs on every target at once. The loss and gradients equal those of the per-prefix samples of the same
targets (``tests/model/test_lazy.py``).

Memory layout of :meth:`LazyGenerator.encode_batch` (what generation, serving and alignment pass
around, so they work unchanged): ``[B, S, d_context + n_heads]``, the context states followed by
each key's attention bias per head.

Shapes: B = batch, S = context tokens, L = tokens of a sequence window, D = semantic-ID length,
E = d_model, H = query heads, G = key/value heads (G_kv), dh = head width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onerec.config import ModelConfig
from onerec.errors import ConfigError
from onerec.features.history import N_AGE_BUCKETS
from onerec.model.generator import DecodingContext, SemanticIDModel
from onerec.model.kv_cache import CacheSlot, extend_cache
from onerec.model.layers import Attention, Dropout, RMSNorm, SwiGLU, attention
from onerec.model.pathways import PREFIX

NEG_INF = float("-inf")


class ContextProcessor(nn.Module):
    """Context tokens [B, S, E] -> layer-shared key/value states [B, S, S_kv * L_kv * G_kv * dh]
    (arXiv 2508.20900, Sec. 2.1: one projection to d_context, split into S_kv * L_kv parts, each head
    RMS-normalised; no per-layer K/V projections anywhere).

    Args:
        d_model: E, the width of a context token.
        kv_sets: L_kv, sets of key/value states (decoder layers are grouped onto them).
        kv_split: S_kv, 1 = keys and values tied (one part per set), 2 = separate key and value parts.
        kv_heads: G_kv, key/value heads.
        d_head: dh.
    """

    def __init__(self, d_model: int, kv_sets: int, kv_split: int, kv_heads: int, d_head: int) -> None:
        super().__init__()
        self.l, self.s, self.g, self.dh = kv_sets, kv_split, kv_heads, d_head
        self.dim = kv_split * kv_sets * kv_heads * d_head  # d_context
        self.proj = nn.Linear(d_model, self.dim, bias=False)
        self.weight = nn.Parameter(torch.ones(kv_sets * kv_split, 1, d_head))  # each part's RMSNorm gain

    def forward(self, x: Tensor) -> Tensor:
        """[B, S, E] -> normalised states [B, S, d_context]."""
        b, s, _ = x.shape
        parts = self.proj(x).view(b, s, self.l * self.s, self.g, self.dh)
        return (F.rms_norm(parts, (self.dh,), eps=1e-6) * self.weight).view(b, s, self.dim)

    def kv(self, states: Tensor, kv_set: int) -> tuple[Tensor, Tensor]:
        """Keys and values of one set: states [B, S, d_context] -> (k, v), each [B, G, S, dh]. Tied
        (the same tensor) when S_kv = 1."""
        b, s, _ = states.shape
        parts = states.view(b, s, self.l, self.s, self.g, self.dh)
        k = parts[:, :, kv_set, 0].transpose(1, 2)
        v = parts[:, :, kv_set, self.s - 1].transpose(1, 2)
        return k, v


class LazyCrossAttention(nn.Module):
    """Grouped-query cross-attention over precomputed keys/values: only query and output projections
    (arXiv 2508.20900, Sec. 2.2, "lazy cross-attention" with GQA). The H / G query heads of a group are
    folded into the query length, so the G key/value heads are never repeated."""

    def __init__(self, d_model: int, n_heads: int, kv_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads or n_heads % kv_heads:
            raise ConfigError(f"model.d_model={d_model}, model.n_heads={n_heads}, model.kv_heads={kv_heads}: d_model "
                              "must be divisible by n_heads and n_heads by kv_heads")
        self.h, self.g, self.dh = n_heads, kv_heads, d_model // n_heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.o = nn.Linear(d_model, d_model, bias=False)
        self.dropout = dropout
        self.fast = True  # :func:`onerec.model.layers.attention`'s CPU path for weight dropout (False: SDPA's own)

    def forward(self, x: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
        """x [B, T, E] against k, v [B, G, S, dh]; ``bias`` float [B, H, T or 1, S] (-inf = hidden) -> [B, T, E]."""
        b, t, e = x.shape
        r = self.h // self.g
        q = self.q(x).view(b, t, self.g, r, self.dh).permute(0, 2, 3, 1, 4).reshape(b, self.g, r * t, self.dh)
        mask = bias.expand(b, self.h, t, bias.shape[-1]).reshape(b, self.g, r * t, bias.shape[-1])
        out = attention(q, k, v, mask, self.dropout if self.training else 0.0, fast=self.fast)
        return self.o(out.view(b, self.g, r, t, self.dh).permute(0, 3, 1, 2, 4).reshape(b, t, e))


class LazyBlock(nn.Module):
    """Lazy decoder block (arXiv 2508.20900, Sec. 2.2): x + CrossAttn(norm x) -> x + causal SelfAttn(norm x)
    -> x + FFN(norm x), in that order; pre-RMSNorm. ``ffn``: a SwiGLU width or a module (MoE)."""

    def __init__(self, d_model: int, n_heads: int, kv_heads: int, ffn: nn.Module | int, dropout: float) -> None:
        super().__init__()
        self.n1, self.n2, self.n3 = RMSNorm(d_model), RMSNorm(d_model), RMSNorm(d_model)
        self.cross_attn = LazyCrossAttention(d_model, n_heads, kv_heads, dropout)
        self.self_attn = Attention(d_model, n_heads, dropout)
        self.ffn = SwiGLU(d_model, ffn, dropout) if isinstance(ffn, int) else ffn
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor, k: Tensor, v: Tensor, bias: Tensor, block: int) -> Tensor:
        """x [B, Q, E]: Q queries in consecutive blocks of ``block`` tokens (one block per generated item);
        self-attention is causal within each block and never crosses blocks."""
        b, q, e = x.shape
        x = x + self.drop(self.cross_attn(self.n1(x), k, v, bias))
        h = self.n2(x).reshape(b * q // block, block, e)
        x = x + self.drop(self.self_attn(h, causal=True).view(b, q, e))
        return x + self.ffn(self.n3(x))

    def step(self, x: Tensor, cache: tuple[Tensor, Tensor] | CacheSlot | None, kv: tuple[Tensor, Tensor],
             bias: Tensor, group: int) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One incremental decoding step (equals :meth:`forward`'s last position).

        Args:
            x: the new token [M, 1, E], M = U * group rows (user-major).
            cache: this layer's self-attention (k, v) of the earlier positions [M, H, t, dh], or None, or its slot
                of a preallocated :class:`~onerec.model.kv_cache.StaticKVCache`.
            kv: the user's context keys/values [U, G, S, dh], shared by its ``group`` beams.
            bias: [U, H, 1, S].
        """
        m, _, e = x.shape
        c = self.cross_attn(self.n1(x).view(m // group, group, e), *kv, bias)  # a user's beams are its queries
        x = x + c.view(m, 1, e)
        h = self.n2(x)
        k, v = extend_cache(cache, *self.self_attn.project_kv(h))
        x = x + self.self_attn.attend(h, k, v)
        return x + self.ffn(self.n3(x)), (k, v)


class LazyGenerator(SemanticIDModel):
    """OneRec-V2's lazy decoder-only generator (``model.arch=lazy``); same interface as
    :class:`onerec.model.generator.Generator`.

    Args:
        cfg: ``n_heads``, ``dec_layers`` (N), ``kv_heads`` (G_kv), ``kv_layers`` (L_kv), ``kv_split`` (S_kv),
            ``moe_*`` (``moe_dense_layers`` first layers stay dense), the pathways and behaviour features.
        codebook_sizes: V_t per semantic-ID level.
    """

    def __init__(self, cfg: ModelConfig, codebook_sizes: list[int]) -> None:
        super().__init__()
        if cfg.history_tokens != "item":
            raise ConfigError("model.arch=lazy reads one context token per behaviour. Fix: set "
                              "model.history_tokens=item")
        kv_heads = cfg.n_heads if cfg.kv_heads is None else cfg.kv_heads
        if not 1 <= cfg.kv_layers <= max(cfg.dec_layers, 1) or cfg.kv_split not in (1, 2) or kv_heads < 1:
            raise ConfigError(f"model.kv_layers={cfg.kv_layers}, model.kv_split={cfg.kv_split}, model.kv_heads="
                              f"{cfg.kv_heads}: kv_layers must be in 1..dec_layers, kv_split 1 (keys and values "
                              "tied) or 2, kv_heads >= 1 and divide n_heads")
        # where a behaviour sits in time is an attention bias, not part of its token (see the module docstring)
        content = [f for f in cfg.behaviour_features if f != "time"] or ["sid"]
        ffn, fd = self._build_inputs(cfg, codebook_sizes, content)
        e, h = cfg.d_model, cfg.n_heads
        self._build_side_pathways(ffn, fd)
        self.pos_bias = nn.Embedding(self.enc_len, h)  # per head, by position in the context layout
        self.age_bias = nn.Embedding(N_AGE_BUCKETS, h) if "time" in cfg.behaviour_features else None
        self.context = ContextProcessor(e, cfg.kv_layers, cfg.kv_split, kv_heads, e // h)
        self._build_decoder_inputs()
        self.decoder = nn.ModuleList(LazyBlock(e, h, kv_heads, self._layer_ffn(ffn, i), cfg.dropout)
                                     for i in range(cfg.dec_layers))
        self.dec_norm = RMSNorm(e)
        self._build_heads()
        self.apply(self._init)
        offsets, start = {}, 0
        for p in self.pathways:
            offsets[p], start = start, start + self.lengths[p]
        self.offsets = offsets  # first position of each pathway in the context layout

    def _layer_ffn(self, dense_hidden: int, layer: int) -> nn.Module | int:
        """V2 puts the mixture of experts in the deeper layers: the first ``moe_dense_layers`` stay dense."""
        return dense_hidden if layer < self.cfg.moe_dense_layers else self._ffn(dense_hidden, "decoder")

    def kv_set(self, layer: int) -> int:
        """The key/value set decoder layer ``layer`` reads: floor(l * L_kv / N_layer) (arXiv 2508.20900, Sec. 2.2)."""
        return layer * self.cfg.kv_layers // len(self.decoder)

    # ------------------------------------------------------------------ context
    def _tokens(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Every pathway's tokens [B, S, E], mask [B, S] and each token's attention bias [B, S, H]."""
        xs, ms, ages = [], [], []
        for name, x, m in self._typed_pathways(batch):
            xs.append(x)
            ms.append(m)
            key = f"{PREFIX.get(name)}_age"
            ages.append(batch[key] if name in ("positive", "short") and key in batch
                        else torch.full(m.shape, -1, dtype=torch.long, device=m.device))
        x, mask, age = torch.cat(xs, dim=1), torch.cat(ms, dim=1), torch.cat(ages, dim=1)
        bias = self.pos_bias.weight.unsqueeze(0)
        if self.age_bias is not None:  # tokens without an age (static, lifelong, succession) get none
            bias = bias + self.age_bias(age.clamp_min(0)) * (age >= 0).unsqueeze(-1)
        return self.drop(x), mask, bias.expand(x.shape[0], -1, -1)

    @property
    def memory_width(self) -> int:
        """The context states and the attention bias of every query head, side by side (:meth:`encode_batch`)."""
        return self.context.dim + self.cfg.n_heads

    def encode_batch(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """A featurized batch -> (memory [B, S, d_context + H]: the context processor's states and each token's
        attention bias per head, memory_mask [B, S] bool, True = real token). The one entry point of training,
        generation, serving and alignment (as :meth:`Generator.encode_batch`)."""
        x, mask, bias = self._tokens(batch)
        return torch.cat([self.context(x), bias], dim=-1), mask

    def _attention_bias(self, memory: Tensor, memory_mask: Tensor) -> tuple[Tensor, Tensor]:
        """memory -> (context states [B, S, d_context], float bias [B, H, 1, S] with -inf on hidden keys). Rows with
        no context at all attend to everything (their output is ignored; this only avoids NaN)."""
        states, bias = memory[..., :self.context.dim], memory[..., self.context.dim:]
        key_ok = memory_mask | ~memory_mask.any(dim=1, keepdim=True)
        bias = bias.transpose(1, 2).masked_fill(~key_ok[:, None, :], NEG_INF)
        return states, bias.unsqueeze(2)

    def _kv(self, states: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Each decoder layer's (k, v), computed once per set and shared by the layers of that set."""
        sets = [self.context.kv(states, i) for i in range(self.cfg.kv_layers)]
        return [sets[self.kv_set(layer)] for layer in range(len(self.decoder))]

    # ------------------------------------------------------------------ decoder
    def decode(self, prefix: Tensor, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """Hidden states [B, t+1, E] for prefix [B, t] (input [BOS, s_1 .. s_t], arXiv 2508.20900 Sec. 2.2)."""
        x = self.decoder_inputs(prefix)
        states, bias = self._attention_bias(memory, memory_mask)
        for block, (k, v) in zip(self.decoder, self._kv(states)):
            x = block(x, k, v, bias, block=x.shape[1])
        return self.dec_norm(x)

    def forward(self, batch: dict[str, Tensor], *, label_smoothing: float = 0.0) -> Tensor:
        """Teacher-forced next-token cross-entropy (see :meth:`SemanticIDModel.forward`); a sequence batch
        (:class:`onerec.features.SequenceExamples`, key ``seq_target``) trains every position at once."""
        if "seq_target" in batch:
            return self._all_positions_loss(batch, label_smoothing)
        return super().forward(batch, label_smoothing=label_smoothing)

    def _all_positions_loss(self, batch: dict[str, Tensor], label_smoothing: float) -> Tensor:
        """The mean next-item loss of every target of a sequence batch, each behaviour's context states computed once.

        Batch: ``hist_*`` [B, L] the windows' behaviours in order (left-aligned, ``hist_mask`` on real ones),
        ``seq_target`` [B, L] bool (positions that are targets), ``seq_age`` [B, L, L] the age bucket of
        behaviour j at the time of behaviour t (the request time of the sample whose target is t).

        Target t's keys are the states of behaviours t-H .. t-1 gathered into the right-aligned layout its
        per-prefix sample has, with that sample's biases (block-causal: nothing at or after t, nothing older
        than H), so the decoder does exactly the per-prefix sample's work and no more."""
        if self.pathways != ["positive"]:
            raise ConfigError(f"training every position at once reads the positive pathway only (model.pathways="
                              f"{self.cfg.pathways}). Fix: train.objective=prefix, or model.pathways=[positive]")
        codes, mask, target = batch["hist_codes"], batch["hist_mask"], batch["seq_target"]
        hist = self.cfg.max_history
        x, _ = self._pathway("positive", batch)
        states = self.context(self.drop(x))  # [B, L, d_context]: every behaviour's keys/values, once
        row, t = target.nonzero(as_tuple=True)  # [N] each target's row and position
        pos = t[:, None] - hist + torch.arange(hist, device=t.device)  # [N, H] slot p holds behaviour t - H + p
        ok = pos >= 0
        pos = pos.clamp_min(0)
        ok = ok & mask[row[:, None], pos]
        bias = self.pos_bias.weight[self.offsets["positive"]:self.offsets["positive"] + hist].unsqueeze(0)
        if self.age_bias is not None:
            bias = bias + self.age_bias(batch["seq_age"][row[:, None], t[:, None], pos])
        memory = torch.cat([states[row[:, None], pos], bias.expand(len(row), -1, -1)], dim=-1)
        goal = codes[row, t]  # [N, D]
        hidden = self.decode(goal[:, :-1], memory, ok)
        losses = [F.cross_entropy(self.heads[i](hidden[:, i]), goal[:, i], label_smoothing=label_smoothing)
                  for i in range(goal.shape[1])]
        return torch.stack(losses).mean()

    # ------------------------------------------------------------------ incremental decoding
    def start_decoding(self, memory: Tensor, memory_mask: Tensor, beams: int) -> DecodingContext:
        """Per-user keys/values of every layer (shared by its ``beams`` beams) and the bias; pair with
        :meth:`decode_step`."""
        if beams < 1:
            raise ValueError(f"beams must be >= 1, got {beams}")
        states, bias = self._attention_bias(memory, memory_mask)
        return DecodingContext(cross=self._kv(states), mask=bias, beams=beams, users=memory.shape[0])
