"""The packed encoder (model.encoder_impl=packed, the fast path) against the padded reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from equivalence import assert_same_loss_and_grads
from onerec.config import ModelConfig, SimConfig
from onerec.data.simulator import simulate
from onerec.data.splits import make_splits
from onerec.features import EvalExamples, HistoryFeaturizer
from onerec.features.side import SideInfo
from onerec.generate.generative import GenerativeRecommender
from onerec.model.generator import Generator
from onerec.model.layers import Packing

ALL = ["static", "short", "positive", "lifelong"]
FEATS = ["sid", "item", "author", "tag", "time", "play", "duration", "label"]


def _pair(cfg: ModelConfig, sizes: list[int]) -> tuple[Generator, Generator]:
    """The same weights under both implementations."""
    torch.manual_seed(0)
    fast = Generator(ModelConfig(**{**cfg.__dict__, "encoder_impl": "packed"}), sizes)
    ref = Generator(ModelConfig(**{**cfg.__dict__, "encoder_impl": "padded"}), sizes)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def _batch(n: int, h: int, sizes: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Histories of every length 0..h (right-aligned, as onerec.features builds them)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.arange(n) % (h + 1)
    mask = torch.arange(h)[None, :] >= (h - lengths)[:, None]
    codes = torch.stack([torch.randint(0, v, (n, h), generator=g) for v in sizes], -1)
    return {"hist_codes": torch.where(mask[..., None], codes, -1), "hist_mask": mask,
            "hist_flags": torch.randint(0, 4, (n, h), generator=g) * mask,
            "hist_age": torch.randint(0, 5, (n, h), generator=g) * mask,
            "target": torch.stack([torch.randint(0, v, (n,), generator=g) for v in sizes], -1)}


def test_packing_round_trip():
    keep = torch.tensor([[False, True, True], [False, False, False], [True, True, True]])
    x = torch.arange(18.0).view(3, 3, 2)
    packing = Packing(keep)
    packed = packing.pack(x)
    assert packed.shape == (5, 2)
    torch.testing.assert_close(packing.unpack(packed), x * keep[..., None])


@pytest.mark.parametrize("moe", [False, True])
def test_packed_equals_padded_loss_memory_and_gradients(moe: bool):
    sizes = [6, 5, 4]
    extra = dict(moe_experts=4, moe_top_k=2, moe_where="both") if moe else {}
    cfg = ModelConfig(d_model=32, n_heads=4, enc_layers=2, dec_layers=2, max_history=9, dropout=0.0, **extra)
    fast, ref = _pair(cfg, sizes)
    fast.eval(), ref.eval()  # eval: the MoE's balancing bias is not updated by a forward pass
    batch = _batch(23, 9, sizes)  # lengths 0..9: an empty history and a full one included
    mem_f, mask_f = fast.encode_batch(batch)
    mem_r, mask_r = ref.encode_batch(batch)
    assert torch.equal(mask_f, mask_r)
    real = mask_r | ~mask_r.any(1, keepdim=True)  # what the decoder reads
    torch.testing.assert_close(mem_f[real], mem_r[real], rtol=1e-5, atol=1e-5)
    assert (mem_f[~real] == 0).all()
    assert_same_loss_and_grads(fast, ref, batch)


@pytest.mark.parametrize("history_tokens", ["item", "code"])
def test_packed_equals_padded_with_every_pathway(history_tokens: str):
    ds, _ = simulate(SimConfig(n_users=50, n_items=60, n_events=3000, n_authors=8, calib_pairs=20000, seed=2))
    splits = make_splits(ds, protocol="loo", min_positives=3)
    rng = np.random.default_rng(0)
    codes = np.stack([rng.integers(0, 4, ds.n_items), rng.integers(0, 4, ds.n_items), np.arange(ds.n_items)], 1)
    cfg = ModelConfig(d_model=32, n_heads=2, enc_layers=2, dec_layers=1, max_history=8, dropout=0.0, pathways=ALL,
                      behaviour_features=FEATS, sparse_buckets=64, short_len=5, lifelong_max=500, lifelong_reps=6,
                      qformer_queries=3, qformer_layers=1, pathway_mlp=True, history_tokens=history_tokens)
    sizes = [4, 4, ds.n_items]
    fast, ref = _pair(cfg, sizes)
    ex = EvalExamples(splits["test"], HistoryFeaturizer(codes, 8, side=SideInfo.from_dataset(ds), cfg=cfg))
    batch = ex.batch(np.arange(len(ex)))
    batch["target"] = torch.as_tensor(codes[rng.integers(0, ds.n_items, len(ex))])
    fast.eval(), ref.eval()
    torch.testing.assert_close(fast(batch), ref(batch), rtol=1e-5, atol=1e-6)


def test_packed_beam_search_returns_the_reference_items(cyclic):
    ds, splits = cyclic
    codes = np.stack([np.arange(ds.n_items) // 8, np.arange(ds.n_items) % 8], axis=1)
    cfg = ModelConfig(d_model=32, n_heads=2, enc_layers=2, dec_layers=2, max_history=8, dropout=0.0)
    fast, ref = _pair(cfg, [int(codes[:, 0].max()) + 1, 8])
    users = splits["test"].drop_columns(["targets"])
    got = GenerativeRecommender(fast, codes, beam_size=12).recommend(users, k=10)
    want = GenerativeRecommender(ref, codes, beam_size=12).recommend(users, k=10)
    np.testing.assert_array_equal(got, want)
