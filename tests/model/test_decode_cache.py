"""Incremental decoding (self-attention KV cache, per-user cross-attention K/V) against the plain decoder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_search_matches_reference, history_batch, random_codes
from onerec.config import ModelConfig
from onerec.generate import PrefixTable, beam_search
from onerec.generate.generative import GenerativeRecommender
from onerec.model.generator import Generator
from onerec.model.kv_cache import StaticKVCache
from onerec.model.layers import RMSNorm


def _model(sizes: list[int], seed: int = 0, dec_layers: int = 2) -> Generator:
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=32, n_heads=4, enc_layers=1, dec_layers=dec_layers, max_history=8, dropout=0.0)
    return Generator(cfg, sizes).eval()


def _batch(codes: np.ndarray, n_users: int, seed: int) -> dict[str, torch.Tensor]:
    """Featurized histories of random users, one with an empty history."""
    return history_batch(codes, n_users, seed, max_history=8, longest=12)


@pytest.mark.parametrize("dec_layers", [1, 3])
def test_cached_step_equals_uncached_decode_at_every_step(dec_layers: int) -> None:
    sizes = [6, 5, 4, 3]
    model = _model(sizes, dec_layers=dec_layers)
    codes = random_codes(sizes, 50, seed=0).numpy()
    users, beams = 4, 6
    with torch.no_grad():
        memory, memory_mask = model.encode_batch(_batch(codes, users, seed=1))
        ctx = model.start_decoding(memory, memory_mask, beams)
        rep_mem, rep_mask = memory.repeat_interleave(beams, 0), memory_mask.repeat_interleave(beams, 0)
        g = torch.Generator().manual_seed(2)
        prefix, cache = torch.zeros(users * beams, 0, dtype=torch.long), None
        for step in range(len(sizes)):
            cached, cache = model.decode_step(prefix, step, ctx, cache)
            plain = model.step_log_probs(prefix, step, rep_mem, rep_mask)
            assert cached.shape == plain.shape == (users * beams, sizes[step]) and cached.dtype == torch.float32
            torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)
            # beam search re-orders rows within each user: do the same to the prefix and the cache
            within = torch.randint(0, beams, (users, beams), generator=g)
            rows = (within + torch.arange(users)[:, None] * beams).reshape(-1)
            cache = [(k[rows], v[rows]) for k, v in cache]
            new = torch.randint(0, sizes[step], (users * beams, 1), generator=g)
            prefix = torch.cat([prefix[rows], new], dim=1)


@pytest.mark.parametrize("dec_layers", [1, 3])
def test_static_cache_equals_the_plain_cache_through_reorders(dec_layers: int) -> None:
    """The preallocated cache, written and re-ordered in place, gives the plain (concatenated) cache's
    log-probs and holds its keys and values at every step; it never allocates a third buffer."""
    sizes = [6, 5, 4, 3]
    model = _model(sizes, dec_layers=dec_layers)
    codes = random_codes(sizes, 50, seed=0).numpy()
    users, beams = 3, 5
    with torch.no_grad():
        memory, memory_mask = model.encode_batch(_batch(codes, users, seed=1))
        ctx = model.start_decoding(memory, memory_mask, beams)
        _, static = model.beam_step_fn(memory, memory_mask, beams, static_cache=True)
        assert isinstance(static, StaticKVCache)
        g = torch.Generator().manual_seed(3)
        prefix, plain, buffers = torch.zeros(users * beams, 0, dtype=torch.long), None, set()
        for step in range(len(sizes)):
            want, plain = model.decode_step(prefix, step, ctx, plain)
            got, static = model.decode_step(prefix, step, ctx, static)
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
            assert static.t == step + 1
            for i, (k, v) in enumerate(plain):
                sk, sv = static.layer_kv(i)
                assert sk.shape == k.shape
                torch.testing.assert_close(sk, k, atol=1e-6, rtol=1e-6)
                torch.testing.assert_close(sv, v, atol=1e-6, rtol=1e-6)
            within = torch.randint(0, beams, (users, beams), generator=g)
            rows = (within + torch.arange(users)[:, None] * beams).reshape(-1)
            plain = [(k[rows], v[rows]) for k, v in plain]
            static.reorder_(rows)
            buffers |= {static.buf.data_ptr(), static.spare.data_ptr()}
            prefix = torch.cat([prefix[rows], torch.randint(0, sizes[step], (users * beams, 1), generator=g)], dim=1)
        assert len(buffers) == 2  # the two preallocated buffers swap roles; nothing else is allocated


def test_static_cache_reorders_rows_across_users_and_skips_only_no_ops() -> None:
    """2 users x 2 beams, 1 layer, 1 head, dk 1: the worked example of onerec.model.kv_cache, plus a re-order
    across users right after the first position (not a no-op, so it must not be skipped)."""
    cache = StaticKVCache(layers=1, rows=4, length=3)
    k0 = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)  # user 0's [BOS] key 1, user 1's 2
    cache.fill_first([(k0, -k0)], group=2)
    cache.reorder_(torch.tensor([1, 0, 3, 2]))  # within users: nothing changes (skipped)
    assert cache.layer_kv(0)[0].flatten().tolist() == [1, 1, 2, 2]
    cache.reorder_(torch.tensor([2, 2, 0, 1]))  # across users: applied
    assert cache.layer_kv(0)[0].flatten().tolist() == [2, 2, 1, 1]
    k, _ = cache.write(0, torch.tensor([10.0, 11, 12, 13]).view(4, 1, 1, 1), torch.zeros(4, 1, 1, 1))
    cache.advance()
    assert k.shape == (4, 1, 2, 1) and k[:, 0, :, 0].tolist() == [[2, 10], [2, 11], [1, 12], [1, 13]]
    cache.reorder_(torch.tensor([1, 1, 3, 2]))
    assert cache.layer_kv(0)[0][:, 0, :, 0].tolist() == [[2, 11], [2, 11], [1, 13], [1, 12]]
    assert cache.layer_kv(0)[1][:, 0, :, 0].tolist() == [[-2, 0], [-2, 0], [-1, 0], [-1, 0]]


def test_a_finished_search_frees_its_static_cache_without_the_cycle_collector() -> None:
    """The cache's buffers go when the search's last reference does: no reference cycle keeps them for Python's
    cyclic collector (one did: +160 MB a batch of Amazon Beauty's valid scoring, 13 GB at the peak)."""
    import gc
    import weakref

    sizes = [6, 5, 4]
    model = _model(sizes)
    codes = random_codes(sizes, 40, seed=0)
    table = PrefixTable.from_codes(codes, sizes)
    with torch.no_grad():
        memory, mask = model.encode_batch(_batch(codes.numpy(), 3, seed=1))
        gc.disable()
        try:
            step_fn, cache = model.beam_step_fn(memory, mask, 4, static_cache=True)
            assert isinstance(cache, StaticKVCache)
            beam_search(step_fn, batch_size=3, table=table, beam_size=4, top_k=2, state=cache)
            buf = weakref.ref(cache.buf)
            del step_fn, cache
            assert buf() is None
        finally:
            gc.enable()


def test_the_default_cache_is_plain_on_cpu() -> None:
    sizes = [6, 5, 4]
    model = _model(sizes)
    codes = random_codes(sizes, 40, seed=0).numpy()
    with torch.no_grad():
        memory, mask = model.encode_batch(_batch(codes, 2, seed=1))
        assert model.beam_step_fn(memory, mask, 4)[1] is None  # the plain cache: measured as fast or faster on CPU
        assert isinstance(model.beam_step_fn(memory, mask, 4, static_cache=True)[1], StaticKVCache)


def test_static_and_plain_cache_searches_agree() -> None:
    sizes = [8, 8, 4]
    codes = random_codes(sizes, 200, seed=5)
    model = _model(sizes, dec_layers=2)
    table = PrefixTable.from_codes(codes, sizes)

    with torch.no_grad():
        memory, mask = model.encode_batch(_batch(codes.numpy(), 3, seed=6))
        out = []
        for static in (True, False):
            step_fn, state = model.beam_step_fn(memory, mask, 16, static_cache=static)
            out.append(beam_search(step_fn, batch_size=3, table=table, beam_size=16, top_k=16, state=state))
    torch.testing.assert_close(out[0][1], out[1][1], atol=1e-5, rtol=0)
    same = out[0][0] == out[1][0]
    assert same.all() or bool(((out[0][1] - out[1][1]).abs() < 1e-5)[~same].all())


def test_rms_norm_fused_without_gradients_is_one_op_and_equals_the_formula() -> None:
    norm = RMSNorm(16)
    norm.fused_inference = True  # the default off CPU
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        x = torch.randn(7, 3, 16)
        fused = norm(x)
        norm.fast = False
        torch.testing.assert_close(fused, norm(x), atol=1e-6, rtol=1e-5)
        norm.fast = True
    ops: list[str] = []
    with torch.no_grad(), CountOps(ops):
        norm(x)
    assert "rms_norm" in ops and not {"pow", "mean", "rsqrt", "mul", "__mul__"} & set(ops)


class CountOps(torch.overrides.TorchFunctionMode):
    """Names of the torch functions called inside it."""

    def __init__(self, ops: list[str]) -> None:
        super().__init__()
        self.ops = ops

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.ops.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def test_cross_attention_kv_is_per_user_not_per_beam() -> None:
    model = _model([4, 4])
    memory, mask = torch.randn(3, 5, 32), torch.ones(3, 5, dtype=torch.bool)
    ctx = model.start_decoding(memory, mask, beams=64)
    assert all(k.shape[0] == 3 and v.shape[0] == 3 for k, v in ctx.cross)
    _, cache = model.decode_step(torch.zeros(192, 0, dtype=torch.long), 0, ctx, None)
    assert all(k.shape == (192, 4, 1, 8) for k, _ in cache)


@settings(max_examples=24, deadline=None)
@given(sizes=st.lists(st.integers(2, 6), min_size=2, max_size=3), n=st.integers(1, 40), beam=st.integers(1, 12),
       seed=st.integers(0, 2**16), data=st.data())
def test_model_beam_search_matches_reference(sizes, n, beam, seed, data) -> None:
    """Cached fast search, with either KV cache, == plain reference search (uncached decoder, Python trie) on
    random catalogues."""
    n = min(n, math.prod(sizes))
    codes = random_codes(sizes, n, seed)
    model = _model(sizes, seed=seed % 7, dec_layers=1)
    top_k = data.draw(st.integers(1, beam))
    rec = GenerativeRecommender(model, codes.numpy(), beam_size=beam, static_cache=data.draw(st.booleans()))
    batch = _batch(codes.numpy(), 3, seed)
    assert_search_matches_reference(model, codes, sizes, batch, beam, top_k, rec.generate(batch, top_k, beam_size=beam))


@pytest.mark.parametrize("beam", [1, 7, 128, 512])
def test_beam_widths_up_to_512_return_valid_distinct_items(beam: int) -> None:
    sizes = [16, 16, 4]
    codes = random_codes(sizes, 300, seed=3)
    model = _model(sizes, dec_layers=1)
    rec = GenerativeRecommender(model, codes.numpy(), beam_size=beam)
    batch = _batch(codes.numpy(), 2, seed=4)
    items, scores, out = rec.generate(batch, beam)  # the whole beam (Pass@K candidate set)
    assert items.shape == (2, beam)
    want = min(beam, 300)
    assert ((items[:, :want] >= 0).all() and (items[:, want:] == -1).all())
    assert all(len(set(r[:want])) == want for r in items.tolist())
    assert torch.equal(out[:, :want], codes[items[:, :want]])
    assert torch.isinf(scores[:, want:]).all() and (scores[:, 1:want] <= scores[:, : want - 1]).all()
    if beam <= 128:
        plain = rec.generate(batch, beam, cached=False)
        torch.testing.assert_close(plain[1], scores, atol=1e-4, rtol=0)


def test_bf16_decoding_returns_valid_items_with_float32_scores_near_the_exact_ones() -> None:
    """``generate.precision=bf16``: the encoder and decoder under bfloat16 autocast; the search still returns only
    valid, distinct items, its scores stay float32 and within bf16's error of the exact search's, and an item that
    leads the exact search by a clear margin still leads; ``log_probs`` under bf16 agrees with the search to bf16's
    rounding."""
    sizes = [8, 8, 4]
    codes = random_codes(sizes, 200, seed=5)
    model = _model(sizes, dec_layers=2)
    with torch.no_grad():  # peaked next-code distributions, as a trained model has: some users get a clear leader
        for head in model.heads:
            head.weight.mul_(20)
    batch = _batch(codes.numpy(), 4, seed=6)
    exact = GenerativeRecommender(model, codes.numpy(), beam_size=16)
    fast = GenerativeRecommender(model, codes.numpy(), beam_size=16, precision="bf16")
    items, scores, out = fast.generate(batch, 16)
    want_items, want_scores, _ = exact.generate(batch, 16)
    assert scores.dtype == torch.float32 and items.shape == (4, 16)
    assert all(len(set(r)) == 16 and min(r) >= 0 for r in items.tolist())
    assert torch.equal(out, codes[items])  # every item's codes are a real item's
    torch.testing.assert_close(scores, want_scores, atol=0.1, rtol=0)
    clear = want_scores[:, 0] - want_scores[:, 1] > 0.2
    assert clear.sum() >= 2 and torch.equal(items[clear, 0], want_items[clear, 0])
    # teacher-forced scoring under the same autocast: the search's scores up to bf16's rounding (logits of ~20-50
    # here are rounded to ~0.1-0.25; measured 0.05), as close as the exact scores are
    np.testing.assert_allclose(fast.log_probs(batch, items.numpy()), scores.numpy(), atol=0.1)
    with pytest.raises(ValueError, match=r"generate\.precision"):
        GenerativeRecommender(model, codes.numpy(), precision="fp16")
