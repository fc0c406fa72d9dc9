"""The layers' fast CPU training paths (onerec.model.layers: Dropout, attention, fused projections)
against their plain references."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from equivalence import assert_same_loss_and_grads
from onerec.config import ModelConfig
from onerec.model import layers
from onerec.model.generator import Generator
from onerec.model.layers import Attention, Dropout, Packing, attention, dropout_mask, use_reference


def _drop_prob(p: float) -> float:
    return round(p * 65536) / 65536


@pytest.mark.parametrize("p", [0.1, 0.5, 0.03])
def test_dropout_mask_values_rate_and_every_16_bit_lane(p: float):
    torch.manual_seed(0)
    n = 400_003  # not a multiple of 4: the last 64-bit draw is used in part
    mask = dropout_mask((n,), p)
    q = _drop_prob(p)
    kept = mask != 0
    assert torch.equal(mask[kept], torch.full_like(mask[kept], 1 / (1 - q)))
    sd = (q * (1 - q) / n) ** 0.5
    assert abs((~kept).float().mean().item() - q) < 5 * sd
    # each of a draw's four 16-bit lanes drops at rate q (a 63-bit draw would never drop in its top lane)
    lanes = (~kept)[: n - n % 4].view(-1, 4).float().mean(0)
    assert ((lanes - q).abs() < 5 * sd * 2).all(), lanes
    assert abs(mask.double().mean().item() - 1) < 5 * sd / (1 - q)


def test_dropout_mask_rejects_p_that_rounds_to_0_or_1():
    for p in (0.0, 1e-7, 1.0):
        with pytest.raises(ValueError):
            dropout_mask((4,), p)


def test_dropout_module_train_eval_and_reference():
    x = torch.randn(64, 33)
    d = Dropout(0.2)
    assert d.eval()(x) is x  # eval: identity
    d.train()
    y = d(x)
    scaled = x / (1 - _drop_prob(0.2))
    assert torch.all((y == 0) | torch.isclose(y, scaled))
    assert Dropout(0.0).train()(x) is x
    ref = Dropout(0.2).train()
    ref.fast = False  # torch's own dropout, the same random stream as nn.Dropout
    torch.manual_seed(3)
    a = ref(x)
    torch.manual_seed(3)
    torch.testing.assert_close(a, torch.nn.Dropout(0.2).train()(x))


def _qkv(b=3, h=2, t=5, s=7, dk=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, dk, generator=g, requires_grad=True) for n in (t, s, s)]


MASKS = {
    "none": lambda b, t, s: None,
    "keys": lambda b, t, s: torch.rand(b, 1, 1, s, generator=torch.Generator().manual_seed(1)) > 0.3,
    "per-query": lambda b, t, s: torch.rand(b, 1, t, s, generator=torch.Generator().manual_seed(2)) > 0.4,
    "float": lambda b, t, s: torch.randn(b, 1, t, s, generator=torch.Generator().manual_seed(4)),
}


def _math(q, k, v, mask, keep=None, causal=False):
    """The reference formula written out: softmax(q k^T / sqrt(dk) + mask) [* keep] @ v, fully masked
    queries -> 0 (SDPA's math path)."""
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    if causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    w = torch.softmax(scores, -1).nan_to_num(0.0)
    return (w if keep is None else w * keep) @ v


@pytest.mark.parametrize("kind", [*MASKS, "causal"])
def test_attention_fast_path_is_sdpa_with_the_given_keep_mask(monkeypatch, kind: str):
    q, k, v = _qkv(t=7 if kind == "causal" else 5)
    mask = None if kind == "causal" else MASKS[kind](3, q.shape[-2], k.shape[-2])
    causal = kind == "causal"
    # an all-ones keep mask: the fast path must give SDPA's answer without dropout, values and gradients
    monkeypatch.setattr(layers, "dropout_mask", lambda shape, p, device="cpu": torch.ones(shape))
    out = attention(q, k, v, mask, 0.1, causal)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    grads_ref = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # a random keep mask: the formula with that mask on the attention weights
    keep = dropout_mask((3, 2, q.shape[-2], k.shape[-2]), 0.3)
    monkeypatch.setattr(layers, "dropout_mask", lambda shape, p, device="cpu": keep)
    torch.testing.assert_close(attention(q, k, v, mask, 0.3, causal), _math(q, k, v, mask, keep, causal),
                               rtol=1e-5, atol=1e-6)


def test_attention_query_with_no_visible_key_gets_zeros_like_sdpa_math():
    q, k, v = _qkv()
    mask = torch.ones(3, 1, 5, 7, dtype=torch.bool)
    mask[1, 0, 2] = False
    out = attention(q, k, v, mask, 0.2)
    assert torch.isfinite(out).all() and (out[1, :, 2] == 0).all()
    torch.manual_seed(0)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.2)  # CPU: the math path
    assert (ref[1, :, 2] == 0).all()


def test_attention_dropout_has_the_reference_expectation():
    """Averaged over many draws, the fast path and SDPA's own dropout both give the dropout-free output."""
    q, k, v = (x.detach() for x in _qkv(b=2, h=2, t=3, s=6, dk=4))
    mask = MASKS["keys"](2, 3, 6)
    exact = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.manual_seed(0)
    n = 4000
    fast = sum(attention(q, k, v, mask, 0.3) for _ in range(n)) / n
    ref = sum(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.3) for _ in range(n)) / n
    scale = exact.abs().max()
    assert (fast - exact).abs().max() < 0.05 * scale
    assert (ref - exact).abs().max() < 0.05 * scale
    # and the same spread around it
    sq_fast = sum((attention(q, k, v, mask, 0.3) - exact).square().mean() for _ in range(500)) / 500
    sq_ref = sum((F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.3) - exact).square().mean()
                 for _ in range(500)) / 500
    assert 0.8 < float(sq_fast / sq_ref) < 1.25


def test_attention_module_fast_equals_reference():
    torch.manual_seed(0)
    fast = Attention(16, 4, dropout=0.1)
    ref = copy.deepcopy(fast)
    use_reference(ref)
    assert fast.fast and not ref.fast
    x, mem = torch.randn(5, 6, 16), torch.randn(5, 9, 16)
    keep = torch.arange(6)[None, :] >= torch.tensor([0, 2, 5, 3, 1])[:, None]
    mask = keep[:, None, :]
    for m in (fast, ref):
        m.eval()
    torch.testing.assert_close(fast(x, mask=mask), ref(x, mask=mask), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast(x, causal=True), ref(x, causal=True), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast(x, mem), ref(x, mem), rtol=1e-5, atol=1e-6)
    packing = Packing(keep)
    h = packing.pack(x)
    torch.testing.assert_close(fast.forward_packed(h, packing, mask), ref.forward_packed(h, packing, mask),
                               rtol=1e-5, atol=1e-6)
    # gradients (training mode, no attention dropout)
    for m in (fast, ref):
        m.train().dropout = 0.0
        m.forward_packed(h, packing, mask).square().sum().backward()
    for (name, a), (_, b) in zip(fast.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("keys", [1, 2, 3, 7])
def test_single_query_attention_equals_sdpa(keys: int, monkeypatch):
    """A decode step's self-attention (one query, every key visible) by elementwise sums against SDPA, also on
    keys that are strided views of a larger buffer (the static cache's slots); and Attention.attend takes that
    path only in eval, for one query without a mask (on CPU), and agrees with the reference module there."""
    torch.manual_seed(keys)
    q = torch.randn(6, 4, 1, 8) * 3
    buf = torch.randn(2, 6, 4, keys + 5, 8) * 3
    for k, v in ((buf[0, :, :, :keys].contiguous(), buf[1, :, :, :keys].contiguous()),
                 (buf[0, :, :, :keys], buf[1, :, :, :keys])):
        want = F.scaled_dot_product_attention(q, k, v)[..., 0, :]
        torch.testing.assert_close(layers.single_query_attention(q, k, v), want, rtol=1e-5, atol=1e-6)
    fast = Attention(32, 4).eval()
    ref = copy.deepcopy(fast)
    use_reference(ref)
    x, kk, vv = torch.randn(6, 1, 32), buf[0, :, :, :keys], buf[1, :, :, :keys]
    calls = []
    real = layers.single_query_attention
    monkeypatch.setattr(layers, "single_query_attention", lambda *a: calls.append(1) or real(*a))
    torch.testing.assert_close(fast.attend(x, kk, vv), ref.attend(x, kk, vv), rtol=1e-5, atol=1e-6)
    assert calls == [1]
    fast.attend(torch.randn(6, 2, 32), kk, vv)  # two queries: SDPA
    fast.attend(x, kk, vv, torch.ones(6, 1, 1, keys, dtype=torch.bool))  # a mask: SDPA
    fast.train().attend(x, kk, vv)  # training: SDPA (its dropout)
    assert calls == [1]


def test_generator_fast_equals_reference_in_eval_and_without_dropout():
    sizes = [6, 5, 4]
    h, n = 9, 23
    g = torch.Generator().manual_seed(0)
    lengths = torch.arange(n) % (h + 1)
    mask = torch.arange(h)[None, :] >= (h - lengths)[:, None]
    codes = torch.stack([torch.randint(0, v, (n, h), generator=g) for v in sizes], -1)
    batch = {"hist_codes": torch.where(mask[..., None], codes, -1), "hist_mask": mask,
             "hist_flags": torch.randint(0, 4, (n, h), generator=g) * mask,
             "hist_age": torch.randint(0, 5, (n, h), generator=g) * mask,
             "target": torch.stack([torch.randint(0, v, (n,), generator=g) for v in sizes], -1)}
    for dropout in (0.1, 0.0):
        torch.manual_seed(0)
        fast = Generator(ModelConfig(d_model=32, n_heads=4, enc_layers=2, dec_layers=2, max_history=h,
                                     dropout=dropout), sizes)
        ref = copy.deepcopy(fast)
        use_reference(ref)
        if dropout:  # eval mode: dropout off, the same function
            fast.eval(), ref.eval()
        assert_same_loss_and_grads(fast, ref, batch)


def test_rmsnorm_fast_backward_equals_reference():
    torch.manual_seed(0)
    fast = layers.RMSNorm(24)
    with torch.no_grad():
        fast.weight.normal_()
    ref = copy.deepcopy(fast)
    use_reference(ref)
    assert fast.fast and not ref.fast
    x = (torch.randn(3, 5, 24) * 3).requires_grad_()
    out_f, out_r = fast(x), ref(x)
    torch.testing.assert_close(out_f, out_r, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(out_f)
    for a, b in zip(torch.autograd.grad(out_f, (x, fast.weight), g), torch.autograd.grad(out_r, (x, ref.weight), g)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # inference: the reference formula itself, bit for bit
        assert torch.equal(fast(x), ref(x))


@pytest.mark.parametrize("fill", [0.4, 1.0, 0.0])
def test_unpack_fast_equals_reference(monkeypatch, fill: float):
    keep = torch.rand(5, 7, generator=torch.Generator().manual_seed(0)) < fill
    packing = Packing(keep)
    y = torch.randn(int(keep.sum()), 3, requires_grad=True)
    g = torch.randn(5, 7, 3)
    outs = []
    for fast in (True, False):
        monkeypatch.setattr(Packing, "fast", fast)
        out = packing.unpack(y)
        outs.append((out, torch.autograd.grad(out, y, g)[0]))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert (outs[0][0][~keep] == 0).all()
