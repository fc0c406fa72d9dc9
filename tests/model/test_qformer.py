"""The one QFormer (learnable queries -> cross-attention -> RMSNorm -> FFN) that the lifelong pathway
and the content alignment share."""

from __future__ import annotations

import torch

from onerec.config import ContentAlignConfig, ModelConfig
from onerec.content.align import ItemQFormer
from onerec.model.generator import Generator
from onerec.model.qformer import QFormer


def test_qformer_ignores_padding_and_survives_empty_rows():
    torch.manual_seed(0)
    q = QFormer(dim=8, n_heads=2, ffn=16, n_queries=3, n_layers=2, dropout=0.0).eval()
    x = torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    out = q(x, mask)
    assert out.shape == (3, 3, 8) and torch.isfinite(out).all()  # the empty row attends to everything
    y = x.clone()
    y[0, 3:] = 100.0  # padding content changes nothing
    torch.testing.assert_close(q(y, mask)[0], out[0])
    torch.testing.assert_close(q(x)[1], out[1])  # no mask = every token is real
    assert (q(x[:1, :3])[0] - out[0]).abs().max() < 1e-5  # = the unpadded sequence
    assert (out[0] - out[1]).abs().max() > 1e-3  # the tokens matter


def test_lifelong_pathway_and_alignment_share_the_module():
    align = ItemQFormer(6, ContentAlignConfig(queries=4, layers=1, d_model=16, heads=2, dim=8))
    assert type(align.qformer) is QFormer and align.qformer.queries.shape == (4, 16)
    cfg = ModelConfig(d_model=16, n_heads=2, enc_layers=1, dec_layers=1, pathways=["short", "lifelong"],
                      qformer_queries=3, qformer_layers=1)
    gen = Generator(cfg, [8, 8])
    assert type(gen.qformer) is QFormer and gen.qformer.queries.shape[0] == 3
