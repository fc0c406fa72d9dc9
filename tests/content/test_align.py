import numpy as np
import pyarrow as pa
import pytest
import torch

from onerec.config import ContentAlignConfig
from onerec.content.align import ItemQFormer, align_vectors, info_nce
from onerec.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


def _grouped_world(n_items=40, n_groups=4, n_users=120, length=10, seed=0):
    """Users engage only within one group of items; content tokens are pure noise."""
    rng = np.random.default_rng(seed)
    group = np.arange(n_items) % n_groups
    seqs = []
    for u in range(n_users):
        members = np.flatnonzero(group == u % n_groups)
        seqs.append(rng.choice(members, length).tolist())
    train = pa.table({"user_id": np.arange(n_users), "items": seqs})
    tokens = rng.standard_normal((n_items, 3, 16)).astype(np.float32)
    return tokens, train, group


def _separation(v, group):
    sims = v @ v.T
    same = group[:, None] == group[None, :]
    off = ~np.eye(len(v), dtype=bool)
    return sims[same & off].mean() - sims[~same].mean()


def test_alignment_pulls_co_engaged_items_together():
    tokens, train, group = _grouped_world()
    cfg = ContentAlignConfig(steps=80, batch_size=64, d_model=32, dim=16, layers=1, queries=2, swing_k=5)
    before = tokens.mean(axis=1)
    before /= np.linalg.norm(before, axis=1, keepdims=True)
    vectors, _, metrics = align_vectors(tokens, train, cfg)
    assert vectors.shape == (40, 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert metrics["user_item_pairs"] > 0 and metrics["swing_pairs"] > 0
    assert metrics["loss_last"] < metrics["loss_first"]
    assert _separation(vectors, group) > 0.2 > abs(_separation(before, group))


def test_alignment_is_deterministic_and_caption_loss_runs():
    tokens, train, group = _grouped_world(seed=1)
    texts = [f"group{g} word{i % 3}" for i, g in enumerate(group)]
    cfg = ContentAlignConfig(steps=20, batch_size=32, d_model=16, dim=8, layers=1, queries=2, caption_weight=0.5)
    a, _, _ = align_vectors(tokens, train, cfg, texts=texts)
    b, _, _ = align_vectors(tokens, train, cfg, texts=texts)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(DataError, match="texts"):
        align_vectors(tokens, train, cfg)


def test_id_token_separates_items_with_identical_content():
    """Every item has the same content: without the id token all vectors are one point; with it the
    co-engaged groups separate (what Amazon Sports, attribute ids only, needs)."""
    tokens, train, group = _grouped_world()
    tokens[:] = tokens[0]
    cfg = ContentAlignConfig(steps=120, batch_size=64, d_model=32, dim=16, layers=1, queries=2, swing_k=5)
    plain, _, _ = align_vectors(tokens, train, cfg)
    assert np.ptp(plain, axis=0).max() < 1e-5  # identical content -> identical vectors
    with_id, model, _ = align_vectors(tokens, train, ContentAlignConfig(**{**cfg.__dict__, "id_token": True}))
    assert model.id_token is not None and model.id_token.num_embeddings == 40
    assert _separation(with_id, group) > 0.2
    with pytest.raises(ValueError, match="ids"):
        model.embed(torch.from_numpy(tokens[:2]))


def test_qformer_masks_padding_tokens():
    torch.manual_seed(0)
    cfg = ContentAlignConfig(d_model=16, dim=8, layers=2, queries=3, heads=2)
    q = ItemQFormer(5, cfg).eval()
    x = torch.randn(2, 4, 5)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    y = x.clone()
    y[0, 2:] = 100.0  # garbage in the padded positions must not matter
    assert q(x, mask).shape == (2, 3, 16)
    torch.testing.assert_close(q.embed(x, mask)[0], q.embed(y, mask)[0])


def test_info_nce_ignores_duplicate_items_as_negatives():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    b[1] = b[0]  # rows 0 and 1 have the same positive item
    ids_a, ids_b = torch.tensor([10, 11, 12]), torch.tensor([20, 20, 22])
    loss = info_nce(a, b, ids_a, ids_b, 0.1)
    logits = a @ b.T / 0.1
    ce = torch.nn.functional.cross_entropy
    row0 = ce(logits[0, [0, 2]][None], torch.tensor([0]))  # column 1 is item 20 again: no negative
    row1 = ce(logits[1, [1, 2]][None], torch.tensor([0]))
    row2 = ce(logits[2][None], torch.tensor([2]))
    cols = ce(logits.T, torch.arange(3), reduction="none")  # the a side has no duplicates
    expected = 0.5 * ((row0 + row1 + row2) / 3 + cols.mean())
    torch.testing.assert_close(loss, expected)


def test_alignment_rejects_unknown_items():
    tokens, _, _ = _grouped_world(n_items=8)
    bad = pa.table({"user_id": [0], "items": [[1, 50]]})
    with pytest.raises(DataError, match="item 50"):
        align_vectors(tokens[:8], bad, ContentAlignConfig(steps=1))


def test_tokenize_switch_uses_aligned_vectors(tmp_path):
    from onerec.config import load_config
    from onerec.content import load_vectors
    from onerec.io import read_json
    from onerec.pipeline import stage_data, stage_tokenize

    base = ["data.sim.n_items=80", "data.sim.n_users=120", "data.sim.n_events=5000", "train.threads=1"]
    plain, aligned = tmp_path / "plain", tmp_path / "aligned"
    stage_data(plain, load_config(preset="tiny", overrides=base), progress=False)
    stage_tokenize(plain, load_config(preset="tiny", overrides=base), progress=False)
    cfg = load_config(preset="tiny", overrides=[*base, "content.align=true", "content.alignment.steps=15",
                                                "content.alignment.batch_size=32", "content.alignment.dim=8"])
    stage_data(aligned, cfg, progress=False)
    metrics = stage_tokenize(aligned, cfg, progress=False)
    assert metrics["align"]["user_item_pairs"] > 0 and metrics["align"]["swing_pairs"] > 0
    v_plain = load_vectors(plain / "tokenizer" / "item_vectors.safetensors")
    v_aligned = load_vectors(aligned / "tokenizer" / "item_vectors.safetensors")
    assert v_plain.shape == (80, 16) and v_aligned.shape == (80, 8)
    assert read_json(aligned / "tokenizer" / "align" / "qformer.json")["in_dim"] == 16
    assert (aligned / "tokenizer" / "align" / "qformer.safetensors").exists()
    assert not (plain / "tokenizer" / "align").exists()
