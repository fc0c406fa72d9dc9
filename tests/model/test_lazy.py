"""OneRec-V2's lazy decoder-only generator: every-position training against per-prefix samples, cached against
uncached decoding, the key/value sharing of the paper, and the model in the pipeline's other uses."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from onerec.config import ModelConfig
from onerec.errors import ConfigError
from onerec.features import HistoryFeaturizer, SequenceExamples, TrainExamples
from onerec.model import build_generator
from onerec.model.lazy import ContextProcessor, LazyGenerator

SIZES = [7, 6, 5, 3]


def _codes(n_items: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, v, n_items) for v in SIZES], axis=1)


def _train(n_users: int, n_items: int, seed: int, max_len: int = 14) -> pa.Table:
    """A train split: users with 0..max_len positives, irregular timestamps, random feedback flags."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        n = int(rng.integers(0, max_len + 1))
        ts = np.cumsum(rng.integers(1, 10 ** int(rng.integers(1, 7)), n)).tolist()
        rows.append({"user_id": u, "items": rng.integers(0, n_items, n).tolist(), "ts": ts,
                     "flags": rng.integers(0, 8, n).tolist()})
    return pa.Table.from_pylist(rows, schema=pa.schema([
        ("user_id", pa.int64()), ("items", pa.list_(pa.int64())), ("ts", pa.list_(pa.int64())),
        ("flags", pa.list_(pa.int16()))]))


def _model(seed: int = 0, **kw) -> LazyGenerator:
    torch.manual_seed(seed)
    cfg = ModelConfig(**{"arch": "lazy", "d_model": 32, "n_heads": 4, "dec_layers": 3, "max_history": 5,
                         "dropout": 0.0, "behaviour_features": ["sid", "label", "time"], **kw})
    model = build_generator(cfg, SIZES)
    with torch.no_grad():  # non-zero biases, so that the test sees them
        for table in (model.pos_bias, model.age_bias):
            if table is not None:
                table.weight.normal_(0, 1.0)
    return model.eval()


@pytest.mark.parametrize("kw", [{}, {"kv_heads": 2, "kv_layers": 2, "kv_split": 2},
                                {"kv_layers": 3, "moe_experts": 3, "moe_top_k": 1, "moe_dense_layers": 1},
                                {"behaviour_features": ["sid", "label"]}])
@pytest.mark.parametrize("per_row", [1, 3, 50])
def test_all_position_loss_equals_the_per_prefix_losses(kw: dict, per_row: int) -> None:
    """One pass over each sequence window gives every target the loss its own per-prefix sample gives it."""
    codes = _codes(30)
    train = _train(12, 30, seed=1)
    model = _model(**kw)
    feat = HistoryFeaturizer(codes, model.cfg.max_history, cfg=model.cfg)
    prefix, seqs = TrainExamples(train, feat), SequenceExamples(train, feat, targets_per_row=per_row)
    assert seqs.targets == len(prefix) and len(prefix) > 40
    with torch.no_grad():
        per_prefix = float(model(prefix.batch(np.arange(len(prefix))))) * len(prefix)
        order = np.random.default_rng(0).permutation(len(seqs))
        total = 0.0
        for part in np.array_split(order, 3):  # windows of different lengths padded together
            batch = seqs.batch(part)
            total += float(model(batch)) * int(batch["seq_target"].sum())
    assert total == pytest.approx(per_prefix, rel=1e-5)


def test_all_position_gradients_equal_the_per_prefix_gradients() -> None:
    codes = _codes(20)
    train = _train(6, 20, seed=3, max_len=9)
    model = _model(kv_layers=2)
    feat = HistoryFeaturizer(codes, model.cfg.max_history, cfg=model.cfg)
    prefix, seqs = TrainExamples(train, feat), SequenceExamples(train, feat)
    model.zero_grad()
    (model(prefix.batch(np.arange(len(prefix)))) * len(prefix)).backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    (model(seqs.batch(np.arange(len(seqs)))) * seqs.targets).backward()
    for name, grad in want.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("kw", [{}, {"kv_heads": 2, "kv_layers": 3, "kv_split": 2}, {"moe_experts": 4}])
def test_cached_decoding_equals_uncached(kw: dict) -> None:
    from onerec.features import EvalExamples

    codes = _codes(25)
    model = _model(**kw)
    feat = HistoryFeaturizer(codes, model.cfg.max_history, cfg=model.cfg)
    rng = np.random.default_rng(4)
    rows = [{"history": rng.integers(0, 25, n).tolist(), "history_ts": list(range(0, 70 * n, 70)),
             "history_flags": [1] * n, "target_ts": 9000} for n in (0, 1, 4, 9)]
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("history", pa.list_(pa.int64())), ("history_ts", pa.list_(pa.int64())),
        ("history_flags", pa.list_(pa.int16())), ("target_ts", pa.int64())]))
    batch = EvalExamples(table, feat).batch(np.arange(4))
    beams = 5
    with torch.no_grad():
        memory, mask = model.encode_batch(batch)
        ctx = model.start_decoding(memory, mask, beams)
        prefix = torch.from_numpy(codes[rng.integers(0, 25, 4 * beams)])
        cache = None
        for step in range(len(SIZES)):
            cached, cache = model.decode_step(prefix, step, ctx, cache)
            plain = model.step_log_probs(prefix[:, :step], step, memory.repeat_interleave(beams, 0),
                                         mask.repeat_interleave(beams, 0))
            torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)
            assert torch.isfinite(cached).all()


def test_layers_share_key_value_sets_as_the_paper_says() -> None:
    """Layer l reads set floor(l * L_kv / N); with S_kv = 1 keys and values are one tensor (tied)."""
    model = _model(dec_layers=4, kv_layers=2)
    assert [model.kv_set(layer) for layer in range(4)] == [0, 0, 1, 1]
    assert [model.kv_set(layer) for layer in range(4)] == [layer * 2 // 4 for layer in range(4)]
    proc = ContextProcessor(32, kv_sets=2, kv_split=1, kv_heads=1, d_head=8)
    states = proc(torch.randn(2, 5, 32))
    k, v = proc.kv(states, 1)
    assert k.shape == (2, 1, 5, 8) and k.data_ptr() == v.data_ptr()
    assert torch.equal(k, states.view(2, 5, 2, 8)[:, :, 1].unsqueeze(1))
    assert not any("cross_attn.kv" in name for name, _ in model.named_parameters())  # no per-layer K/V projections
    # each head's states are RMS-normalised
    torch.testing.assert_close(states.view(2, 5, 2, 8).pow(2).mean(-1), torch.ones(2, 5, 2), atol=1e-4, rtol=0)


def test_context_sets_change_only_their_layers() -> None:
    """Perturbing key/value set 1 leaves layers 0-1 (set 0) alone: the decoder reads set floor(l * 2 / 4)."""
    model = _model(dec_layers=4, kv_layers=2)
    seen = {}
    for i, block in enumerate(model.decoder):
        block.cross_attn.register_forward_hook(lambda mod, args, out, i=i: seen.__setitem__(i, args[1].clone()))
    codes = _codes(10)
    feat = HistoryFeaturizer(codes, model.cfg.max_history, cfg=model.cfg)
    batch = TrainExamples(_train(3, 10, seed=5), feat).batch(np.arange(3))
    with torch.no_grad():
        model(batch)
    assert torch.equal(seen[0], seen[1]) and torch.equal(seen[2], seen[3]) and not torch.equal(seen[0], seen[2])


def test_config_errors_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="history_tokens=item"):
        _model(history_tokens="code")
    with pytest.raises(ConfigError, match="kv_layers"):
        _model(kv_layers=9)
    with pytest.raises(ConfigError, match="divisible"):
        _model(kv_heads=3)
    model = _model(pathways=["positive", "succession"])
    codes = _codes(10)
    feat = HistoryFeaturizer(codes, 5)
    with pytest.raises(ConfigError, match=r"train\.objective=prefix"):
        model(SequenceExamples(_train(3, 10, seed=5), feat).batch(np.arange(2)))
