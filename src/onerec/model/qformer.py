"""The QFormer of the OneRec Technical Report (arXiv 2506.13695): a few learnable queries that
cross-attend to a variable set of tokens and summarise them, each block cross-attention -> RMSNorm
-> FFN with pre-norm residuals. One module, used twice:

* the encoder's lifelong pathway (:mod:`onerec.model.pathways`): 128 queries, 2 blocks in the report,
  over the user's clustered long-term behaviours;
* the collaborative alignment of item content (:mod:`onerec.content.align`): 4 queries, 4 blocks in
  the report, over the multimodal LLM's token vectors of one item.

Shapes: B = batch, S = input tokens, Q = queries, E = width.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from onerec.model.layers import Attention, RMSNorm, SwiGLU


class QFormerBlock(nn.Module):
    """Queries cross-attend to the inputs -> RMSNorm -> FFN (the report's QFormer block), pre-norm residuals."""

    def __init__(self, dim: int, n_heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.nq, self.nkv, self.n2 = RMSNorm(dim), RMSNorm(dim), RMSNorm(dim)
        self.attn = Attention(dim, n_heads, dropout)
        self.ffn = SwiGLU(dim, ffn, dropout)

    def forward(self, q: Tensor, kv: Tensor, mask: Tensor | None) -> Tensor:
        q = q + self.attn(self.nq(q), self.nkv(kv), mask=mask)
        return q + self.ffn(self.n2(q))


class QFormer(nn.Module):
    """``n_queries`` learnable queries summarising a variable set of tokens ``[B, S, E] -> [B, Q, E]``.

    Args:
        dim: token and query width E. n_heads: attention heads. ffn: SwiGLU hidden width.
        n_queries: Q. n_layers: blocks. dropout: in attention and FFN.
    """

    def __init__(self, dim: int, n_heads: int, ffn: int, n_queries: int, n_layers: int, dropout: float) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(n_queries, dim) * 0.02)
        self.blocks = nn.ModuleList(QFormerBlock(dim, n_heads, ffn, dropout) for _ in range(n_layers))
        self.norm = RMSNorm(dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``mask`` [B, S], True = a real token (None: all are). Rows with no real token attend to
        everything rather than producing NaN; callers mask such rows' outputs themselves."""
        key_ok = None if mask is None else (mask | ~mask.any(dim=1, keepdim=True))[:, None, :]
        q = self.queries.expand(x.shape[0], -1, -1)
        for block in self.blocks:
            q = block(q, x, key_ok)
        return self.norm(q)
