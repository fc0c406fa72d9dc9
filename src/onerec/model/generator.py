"""Generator v0: an encoder over the user's positive history, a decoder over semantic IDs.

This is the T5-style encoder-decoder of OneRec V1 (arXiv 2502.18965, Sec. 3.2) at its
simplest: the encoder reads the behaviour tokens with full self-attention; the decoder reads
``[BOS] s_1 .. s_{D-1}`` and predicts ``s_1 .. s_D`` of the next item with causal
self-attention and cross-attention to the encoder (next-token cross-entropy).

The same class is the Technical Report's model (arXiv 2506.13695) when its config asks for it:
four encoder pathways (``model.pathways``, see :mod:`onerec.model.pathways`), decoder (and
optionally encoder) feed-forwards that are mixtures of SwiGLU experts with loss-free load
balancing (``model.moe_*``, :mod:`onerec.model.moe`), and the paper's sizes as presets
(``presets/onerec-*.yaml``). ``model.session_len = m > 1`` trains OneRec V1's session-wise
target (the next m positives as one token sequence) instead of the point-wise next item.

Shapes: B = batch, H = history length, D = semantic-ID length (levels incl. the collision
level), V_t = codebook size of level t, E = d_model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onerec.config import ModelConfig
from onerec.errors import ConfigError
from onerec.features.side import N_LOG_BUCKETS
from onerec.model.kv_cache import StaticKVCache
from onerec.model.layers import DecoderBlock, Dropout, EncoderBlock, Packing, RMSNorm, ffn_hidden
from onerec.model.moe import MoE
from onerec.model.pathways import (
    PATHWAYS,
    PREFIX,
    BehaviourEmbedding,
    StaticEmbedding,
    projection,
)
from onerec.model.qformer import QFormer

#: state-dict keys of generator v0 checkpoints (before the pathways) -> today's names
V0_KEYS = {"hist_pos.weight": "enc_pos.weight", "flag_emb.weight": "behaviour.flag_emb.weight",
           "age_emb.weight": "behaviour.age_emb.weight"}


class CodeEmbedding(nn.Module):
    """Embeds a semantic ID as the sum of one embedding per level (padding code -1 -> zero)."""

    def __init__(self, codebook_sizes: list[int], dim: int) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(v + 1, dim, padding_idx=v) for v in codebook_sizes)

    def level(self, t: int, codes: Tensor) -> Tensor:
        pad = self.tables[t].padding_idx
        return self.tables[t](torch.where(codes < 0, torch.full_like(codes, pad), codes))

    def levels(self, codes: Tensor) -> Tensor:
        """codes [..., D] -> one embedding per level, [..., D, E] (not summed)."""
        return torch.stack([self.level(t, codes[..., t]) for t in range(len(self.tables))], dim=-2)

    def forward(self, codes: Tensor) -> Tensor:
        """codes [..., D] -> [..., E]."""
        return sum(self.level(t, codes[..., t]) for t in range(len(self.tables)))


class TiedHead(nn.Module):
    """Output head of one semantic-ID level that reuses that level's input embedding (without its
    padding row): logits = h @ table[:V]^T (``model.tie_code_embeddings``)."""

    def __init__(self, table: nn.Embedding) -> None:
        super().__init__()
        self._table = [table]  # a reference, not a second registration (it would be saved twice)

    @property
    def weight(self) -> Tensor:
        return self._table[0].weight[:-1]

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class SemanticIDModel(nn.Module):
    """What every generator over semantic IDs shares, whatever reads the user: the semantic-ID embedding,
    the pathways' behaviour tokens (Technical Report Sec. 2), the decoder's input ``[BOS] s_1 .. s_{D-1}``,
    the per-level heads, the teacher-forced losses and the parameter accounting. :class:`Generator` (the
    encoder-decoder of OneRec V1 / the Technical Report) and :class:`onerec.model.lazy.LazyGenerator`
    (OneRec-V2's lazy decoder-only model) add the part that turns those tokens into what the decoder reads.

    Subclasses implement ``encode_batch(batch) -> (memory, memory_mask)`` and ``decode(prefix, memory,
    memory_mask) -> hidden [B, t+1, E]``, plus the KV-cached ``start_decoding`` / ``decode_step``.
    """

    @property
    def memory_width(self) -> int:
        """The last dimension of ``encode_batch``'s memory."""
        return self.cfg.d_model

    def _build_inputs(self, cfg: ModelConfig, codebook_sizes: list[int], features: list[str]) -> tuple[int, int]:
        """The semantic-ID embedding and the pathways' behaviour tokens; sets ``pathways``, ``enc_len``
        (context tokens) and ``lengths`` -> (dense feed-forward width, feature width)."""
        self.cfg, self.codebook_sizes = cfg, list(codebook_sizes)
        e, depth = cfg.d_model, len(codebook_sizes)
        unknown = sorted(set(cfg.pathways) - set(PATHWAYS))
        if unknown or not cfg.pathways:
            raise ConfigError(f"model.pathways={cfg.pathways}: choose one or more of {', '.join(PATHWAYS)}")
        self.pathways = [p for p in PATHWAYS if p in cfg.pathways]
        ffn = cfg.ffn_hidden or ffn_hidden(e, cfg.ffn_mult)
        self.codes = CodeEmbedding(self.codebook_sizes, e)
        # ---- encoder pathways (Technical Report Sec. 2)
        fd = cfg.feature_dim or e  # behaviour features live in fd dims and are projected to e per pathway
        # at fd == e behaviours share the decoder's semantic-ID embedding; else they get their own
        self.feature_codes = CodeEmbedding(self.codebook_sizes, fd) if fd != e else None
        sid_emb = self.behaviour_codes
        self.per_code = cfg.history_tokens == "code"  # TIGER's flattened history in short/positive
        self.behaviour = BehaviourEmbedding(sid_emb, fd, features, cfg.sparse_buckets,
                                            code_levels=depth if self.per_code else 0)
        self.proj = nn.ModuleDict({p: projection(fd, e, cfg.pathway_mlp) for p in self.pathways})
        self.path_type = nn.Embedding(len(PATHWAYS), e) if len(self.pathways) > 1 else None
        per_behaviour = depth if self.per_code else 1
        self.lengths = {"static": 1, "short": cfg.short_len * per_behaviour,
                        "positive": cfg.max_history * per_behaviour, "lifelong": cfg.qformer_queries,
                        "succession": cfg.succession_len}
        self.enc_len = sum(self.lengths[p] for p in self.pathways)
        return ffn, fd

    def _build_side_pathways(self, ffn: int, fd: int) -> None:
        """The static, lifelong and succession pathways' own tables (those enabled)."""
        cfg, e = self.cfg, self.cfg.d_model
        self.static = StaticEmbedding(fd, cfg.sparse_buckets) if "static" in self.pathways else None
        if "lifelong" in self.pathways:
            self.life_count = nn.Embedding(N_LOG_BUCKETS, fd, padding_idx=0)  # size of each representative's cluster
            q_heads = cfg.n_heads if fd % cfg.n_heads == 0 else 1
            q_ffn = ffn if fd == e else ffn_hidden(fd, cfg.ffn_mult)
            self.qformer = QFormer(fd, q_heads, q_ffn, cfg.qformer_queries, cfg.qformer_layers, cfg.dropout)
        else:
            self.life_count = self.qformer = None
        # each succession candidate: its semantic ID (the behaviours' embedding) + its score's log bucket
        self.succ_count = nn.Embedding(N_LOG_BUCKETS, fd, padding_idx=0) if "succession" in self.pathways else None

    def _build_decoder_inputs(self) -> None:
        """The decoder's BOS vector and positions (D per generated item)."""
        e, depth = self.cfg.d_model, len(self.codebook_sizes)
        self.bos = nn.Parameter(torch.zeros(e))
        self.dec_pos = nn.Embedding(depth * max(self.cfg.session_len, 1), e)

    def _build_heads(self) -> None:
        """One output head per semantic-ID level (tied to that level's input embedding when asked)."""
        cfg, e = self.cfg, self.cfg.d_model
        if cfg.tie_code_embeddings:
            self.heads = nn.ModuleList(TiedHead(t) for t in self.codes.tables)
        else:
            self.heads = nn.ModuleList(nn.Linear(e, v, bias=False) for v in self.codebook_sizes)
        self.drop = Dropout(cfg.dropout)

    @property
    def behaviour_codes(self) -> CodeEmbedding:
        """The semantic-ID embedding of encoder inputs: the decoder's own, or its own table at feature_dim."""
        return self.codes if self.feature_codes is None else self.feature_codes

    def _ffn(self, dense_hidden: int, stack: str) -> nn.Module | int:
        """The feed-forward of one block: a MoE where ``moe_where`` covers the stack, else a width."""
        cfg = self.cfg
        if cfg.moe_experts and (stack == "decoder" or cfg.moe_where == "both"):
            return MoE(cfg.d_model, cfg.moe_hidden or dense_hidden, cfg.moe_experts, cfg.moe_top_k, cfg.dropout,
                       bias_step=cfg.moe_bias_step, impl=cfg.moe_impl)
        return dense_hidden

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    def _pathway(self, name: str, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Tokens [B, T, E] and mask [B, T] of one pathway."""
        if name == "static":
            if "user_act" not in batch:
                raise ValueError("the static pathway needs the batch keys user_id/user_cats/user_act. Fix: build "
                                 "the HistoryFeaturizer with cfg=model.cfg")
            x = self.proj[name](self.static(batch))
            return x, torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if name == "succession":
            if "succ_mask" not in batch:
                raise ValueError("the succession pathway needs the batch keys succ_*. Fix: build the "
                                 "HistoryFeaturizer with cfg=model.cfg and the train split's Succession counts")
            mask = batch["succ_mask"]
            x = (self.behaviour_codes(batch["succ_codes"]) + self.succ_count(batch["succ_count"])) * mask.unsqueeze(-1)
            return self.proj[name](x), mask
        prefix = PREFIX[name]
        if f"{prefix}_mask" not in batch:
            raise ValueError(f"the {name} pathway needs the batch keys {prefix}_*. Fix: build the "
                             "HistoryFeaturizer with cfg=model.cfg")
        x, mask = self.behaviour(batch, prefix, per_code=self.per_code and name != "lifelong")
        if name == "lifelong":
            x = self.proj[name](self.qformer(x + self.life_count(batch["life_count"]), mask))
            return x, mask.any(dim=1, keepdim=True).expand(-1, x.shape[1])
        return self.proj[name](x), mask

    def _typed_pathways(self, batch: dict[str, Tensor]) -> list[tuple[str, Tensor, Tensor]]:
        """(name, tokens [B, T, E] with the pathway-type embedding added, mask [B, T]) of every enabled pathway,
        in :data:`PATHWAYS` order."""
        out = []
        for name in self.pathways:
            x, m = self._pathway(name, batch)
            if self.path_type is not None:
                x = x + self.path_type.weight[PATHWAYS.index(name)]
            out.append((name, x, m))
        return out

    def decoder_inputs(self, prefix: Tensor) -> Tensor:
        """[BOS] + embedded prefix codes: prefix [B, t] -> [B, t+1, E]."""
        b, t = prefix.shape
        parts = [self.bos.expand(b, 1, -1)]
        if t:
            depth = len(self.codebook_sizes)  # session-wise prefixes cycle through the levels
            parts.append(torch.stack([self.codes.level(i % depth, prefix[:, i]) for i in range(t)], dim=1))
        x = torch.cat(parts, dim=1)
        return self.drop(x + self.dec_pos(torch.arange(t + 1, device=x.device)))

    def forward(self, batch: dict[str, Tensor], *, label_smoothing: float = 0.0) -> Tensor:
        """Teacher-forced next-token cross-entropy, averaged over the D positions (a scalar).

        Each position has its own vocabulary (level t's codebook), so the loss is computed per
        level rather than over one padded [B, D, max V] logits tensor. With ``session_len`` > 1 and
        a ``session`` key in the batch, the target is the session's m*D tokens (OneRec V1), padded
        items of short sessions masked out. ``label_smoothing`` (training only; validation losses
        use 0) spreads that share of each target's probability uniformly over its level's codebook."""
        memory, memory_mask = self.encode_batch(batch)
        if self.cfg.session_len > 1 and "session" in batch:
            return self._session_loss(batch["session"], batch["session_mask"], memory, memory_mask, label_smoothing)
        target = batch["target"]
        hidden = self.decode(target[:, :-1], memory, memory_mask)
        losses = [F.cross_entropy(self.heads[t](hidden[:, t]), target[:, t], label_smoothing=label_smoothing)
                  for t in range(target.shape[1])]
        return torch.stack(losses).mean()

    def _session_loss(self, session: Tensor, session_mask: Tensor, memory: Tensor, memory_mask: Tensor,
                      label_smoothing: float = 0.0) -> Tensor:
        b, m, depth = session.shape
        tokens = session.reshape(b, m * depth)
        valid = session_mask.repeat_interleave(depth, dim=1)
        hidden = self.decode(tokens[:, :-1], memory, memory_mask)
        total = hidden.new_zeros(())
        for t in range(m * depth):
            ce = F.cross_entropy(self.heads[t % depth](hidden[:, t]), tokens[:, t].clamp_min(0), reduction="none",
                                 label_smoothing=label_smoothing)
            total = total + (ce * valid[:, t]).sum()
        return total / valid.sum().clamp_min(1)

    def step_log_probs(self, prefix: Tensor, step: int, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """log p(s_step | prefix, history): prefix [M, step] -> [M, V_step] (for beam search)."""
        hidden = self.decode(prefix, memory, memory_mask)
        return F.log_softmax(self.heads[step](hidden[:, -1]).float(), dim=-1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def moe_layers(self) -> list[tuple[str, MoE]]:
        return [(name, m) for name, m in self.named_modules() if isinstance(m, MoE)]

    def parameter_counts(self) -> dict[str, int]:
        """Total parameters and those active for one token (all but the unchosen experts)."""
        total = self.num_parameters()
        idle = sum((m.n - m.k) * m.expert_params() for _, m in self.moe_layers())
        return {"total": total, "active": total - idle}

    def expert_load(self) -> dict[str, list[float]]:
        """Share of routed tokens per expert in the last training step, per MoE layer (empty when dense)."""
        return {name: [round(float(v), 4) for v in m.load_fraction()] for name, m in self.moe_layers()}

    def decode_step(self, prefix: Tensor, step: int, ctx: DecodingContext,
                    cache: list[tuple[Tensor, Tensor]] | StaticKVCache | None
                    ) -> tuple[Tensor, list[tuple[Tensor, Tensor]] | StaticKVCache]:
        """log p(s_step | prefix, history) with a self-attention KV cache: equals
        :meth:`step_log_probs` but feeds only the newest token through the decoder.

        Args:
            prefix: [U*beams, step] codes so far (row ``u*beams + k`` is user u's beam k; only the
                last column is read). At step 0 every row starts from [BOS], so the step runs once per
                user and its outputs are repeated to the beams.
            ctx: from :meth:`start_decoding`.
            cache: the plain cache (the reference): None at step 0, else the cache this method returned at
                the previous step, its rows re-ordered to follow ``prefix`` (beam search's ``index_select``
                on each tensor). Or a :class:`StaticKVCache` of U*beams rows, empty at step 0: written in
                place at every step and returned (beam search re-orders it in place, ``reorder_``).

        Returns:
            (log-probs [U*beams, V_step] float32, the cache: the plain one extended, per layer (k, v), each
            [U*beams, heads, step+1, E/heads]; or the same StaticKVCache, one position further).
        """
        # users and beams read off tensors (== ctx.users, ctx.beams): under torch.compile both stay dynamic
        u = ctx.mask.shape[0]
        g = prefix.shape[0] // u
        static = isinstance(cache, StaticKVCache)
        if step == 0:
            x, group = self.bos.expand(u, 1, -1), 1
        else:
            x, group = self.codes.level(step - 1, prefix[:, step - 1])[:, None, :], g
        x = x + self.dec_pos.weight[step]
        new_cache = []
        for i, block in enumerate(self.decoder):
            if cache is None or step == 0:
                layer_cache = None
            else:
                layer_cache = cache.slot(i) if static else cache[i]
            x, kv = block.step(x, layer_cache, ctx.cross[i], ctx.mask, group)
            new_cache.append(kv)
        log_probs = F.log_softmax(self.heads[step](self.dec_norm(x[:, 0])).float(), dim=-1)
        if step == 0 and g > 1:
            log_probs = log_probs.repeat_interleave(g, dim=0)
        if static:
            if step == 0:
                cache.fill_first(new_cache, g)
            else:
                cache.advance()
            return log_probs, cache
        if step == 0 and g > 1:
            new_cache = [(k.repeat_interleave(g, dim=0), v.repeat_interleave(g, dim=0)) for k, v in new_cache]
        return log_probs, new_cache

    def beam_step_fn(self, memory: Tensor, memory_mask: Tensor, beams: int, *, static_cache: bool | None = None,
                     compiled: bool | str = False, aot_dir: str | None = None):
        """A ``step_fn`` for :func:`onerec.generate.beam_search` over this model with the KV cache:
        -> (step_fn, initial state). The state is the self-attention cache (U*beams rows, so beam search
        re-orders it): with ``static_cache=True`` a preallocated :class:`StaticKVCache`, re-ordered in place;
        with ``False`` the plain cache grown by concatenation (the reference, state None). ``None`` (the default)
        picks the plain cache on CPU, where it measured as fast or faster (attention reads contiguous keys;
        ``benchmarks/decode_step.py``), and the static one on other devices. The per-user cross-attention K/V
        live in the closure. ``compiled``: True, the step through ``torch.compile`` (``generate.compile=true``,
        :mod:`onerec.model.compiled`); ``"aot"``, through AOTInductor packages (``generate.compile=aot``,
        :mod:`onerec.model.aot`, kept under ``aot_dir``); both with the plain cache."""
        if static_cache is None:
            static_cache = memory.device.type != "cpu"
        ctx = self.start_decoding(memory, memory_mask, beams)
        step_call = self.decode_step
        if compiled == "aot":
            from onerec.model.aot import aot_decode_step

            step_call, static_cache = aot_decode_step(self, aot_dir), False
        elif compiled:
            from onerec.model.compiled import compiled_decode_step

            step_call, static_cache = compiled_decode_step(self), False

        def step_fn(tokens: Tensor, step: int, cache):
            return step_call(tokens, step, ctx, cache)

        if not static_cache:
            return step_fn, None
        return step_fn, StaticKVCache(len(self.decoder), ctx.users * beams, self.dec_pos.num_embeddings)


class Generator(SemanticIDModel):
    """Encoder-decoder over semantic IDs.

    Args:
        cfg: sizes (d_model, heads, layers, ffn_mult, dropout, max_history).
        codebook_sizes: V_t per semantic-ID position, e.g. [64, 64, 64, 3].
    """

    def __init__(self, cfg: ModelConfig, codebook_sizes: list[int]) -> None:
        super().__init__()
        ffn, fd = self._build_inputs(cfg, codebook_sizes, cfg.behaviour_features)
        e = cfg.d_model
        self.enc_pos = nn.Embedding(self.enc_len, e)  # learnable positions over all pathway tokens
        self._build_side_pathways(ffn, fd)
        self.encoder = nn.ModuleList(EncoderBlock(e, cfg.n_heads, self._ffn(ffn, "encoder"), cfg.dropout)
                                     for _ in range(cfg.enc_layers))
        self.enc_norm = RMSNorm(e)
        # ---- decoder
        self._build_decoder_inputs()
        self.decoder = nn.ModuleList(DecoderBlock(e, cfg.n_heads, self._ffn(ffn, "decoder"), cfg.dropout)
                                     for _ in range(cfg.dec_layers))
        self.dec_norm = RMSNorm(e)
        self._build_heads()
        self.apply(self._init)

    # ------------------------------------------------------------------ encoder
    def encode_batch(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The one entry point from a featurized batch (see :mod:`onerec.features`) to the
        encoder: -> (memory [B, S, E], memory_mask bool [B, S], True = real token). Training,
        generation, serving and alignment all call this, so new encoder inputs only change here.

        S = the sum of the enabled pathways' token counts (static 1, short ``short_len``,
        positive ``max_history``, lifelong ``qformer_queries``), in that order; short and positive
        count D tokens per behaviour under ``history_tokens=code``."""
        parts = [(x, m) for _, x, m in self._typed_pathways(batch)]
        x, memory_mask = torch.cat([x for x, _ in parts], dim=1), torch.cat([m for _, m in parts], dim=1)
        x = self.drop(x + self.enc_pos(torch.arange(x.shape[1], device=x.device)))
        key_ok, packing = self._memory_keys(memory_mask)
        mask = key_ok[:, None, :]
        if packing is not None:
            # the same function on the kept tokens only; positions hidden by key_ok come out as zeros
            # (every reader masks them: decoder cross-attention uses the same key_ok)
            h = packing.pack(x)
            for block in self.encoder:
                h = block.forward_packed(h, packing, mask)
            return packing.unpack(self.enc_norm(h)), memory_mask
        for block in self.encoder:
            x = block(x, mask)
        return self.enc_norm(x), memory_mask

    def _memory_keys(self, memory_mask: Tensor) -> tuple[Tensor, Packing | None]:
        """-> (key_ok [B, S]: the memory positions a query may attend to; their :class:`Packing`, or
        None to compute every position). Every query attends to the real tokens; rows with no history
        at all attend to everything (their output is ignored by the mask in cross-attention, so the
        choice only avoids NaN). ``model.encoder_impl=packed`` computes only the attended positions
        when some are hidden."""
        key_ok = memory_mask | ~memory_mask.any(dim=1, keepdim=True)
        packed = self.cfg.encoder_impl == "packed" and not bool(key_ok.all())
        return key_ok, Packing(key_ok) if packed else None

    def encode(self, hist_codes: Tensor, hist_flags: Tensor, hist_age: Tensor, hist_mask: Tensor) -> Tensor:
        """Positive-pathway-only encoder (kept for callers of v0): behaviour tokens -> memory [B, H, E]."""
        batch = {"hist_codes": hist_codes, "hist_flags": hist_flags, "hist_age": hist_age, "hist_mask": hist_mask}
        return self.encode_batch(batch)[0]

    # ------------------------------------------------------------------ decoder
    def decode(self, prefix: Tensor, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """Hidden states [B, t+1, E] for prefix [B, t]."""
        x = self.decoder_inputs(prefix)
        key_ok, packing = self._memory_keys(memory_mask)
        for block in self.decoder:
            x = block(x, memory, key_ok[:, None, :], packing)
        return self.dec_norm(x)

    def upgrade_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Rename the keys of a generator v0 checkpoint (same model, older names) and give a pathway-type
        table saved before the succession pathway existed its (unused) new rows; others pass unchanged."""
        state = {V0_KEYS.get(k, k): v for k, v in state.items()}
        old = state.get("path_type.weight")
        if old is not None and old.shape[0] < len(PATHWAYS):
            state["path_type.weight"] = torch.cat([old, old.new_zeros(len(PATHWAYS) - old.shape[0], old.shape[1])])
        return state

    # ------------------------------------------------------------------ incremental decoding
    def start_decoding(self, memory: Tensor, memory_mask: Tensor, beams: int) -> DecodingContext:
        """Everything decoding needs from the encoder, computed once per user: each decoder layer's
        cross-attention K/V [U, heads, S, E/heads] (shared by the user's ``beams`` beams, not repeated)
        and the memory mask. Pair with :meth:`decode_step`."""
        if beams < 1:
            raise ValueError(f"beams must be >= 1, got {beams}")
        key_ok, packing = self._memory_keys(memory_mask)
        cross = [block.cross_attn.project_kv(memory, packing) for block in self.decoder]
        return DecodingContext(cross=cross, mask=key_ok[:, None, None, :], beams=beams, users=memory.shape[0])

@dataclass
class DecodingContext:
    """Per-user decoding inputs from :meth:`Generator.start_decoding` (U users, ``beams`` each)."""

    cross: list[tuple[Tensor, Tensor]]  # per decoder layer (k, v) [U, heads (lazy: G_kv), S, E/heads]
    mask: Tensor  # bool [U, 1, 1, S] (lazy: the float attention bias [U, heads, 1, S], -inf on hidden keys)
    beams: int
    users: int
