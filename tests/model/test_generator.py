import numpy as np
import torch

from onerec.config import ModelConfig
from onerec.features import EvalExamples, HistoryFeaturizer, TrainExamples, age_bucket
from onerec.generate.generative import GenerativeRecommender
from onerec.model.generator import V0_KEYS, Generator


def _codes(n_items: int) -> np.ndarray:
    return np.stack([np.arange(n_items) // 8, np.arange(n_items) % 8], axis=1)


def test_history_features_are_right_aligned_and_leak_free(cyclic):
    ds, splits = cyclic
    codes = _codes(ds.n_items)
    ex = TrainExamples(splits["train"], HistoryFeaturizer(codes, max_history=4))
    b = ex.batch(np.arange(len(ex)))
    seqs = ex.seqs
    for j in range(0, len(ex), 17):
        row, tgt = ex.rows[j], ex.target_idx[j]
        hist = seqs.items[max(seqs.offsets[row], tgt - 4):tgt]
        got = b["hist_codes"][j][b["hist_mask"][j]].numpy()
        np.testing.assert_array_equal(got, codes[hist])  # exactly the events before the target
        np.testing.assert_array_equal(b["target"][j].numpy(), codes[seqs.items[tgt]])
        assert b["hist_mask"][j, -1]  # the most recent behaviour sits at the last position


def test_age_buckets_monotone():
    b = age_bucket(np.array([0, 1, 60, 3600, 86400, 10**9]))
    assert b[0] == 0 and np.all(np.diff(b) > 0)


def test_forward_backward_and_padding_invariance():
    torch.manual_seed(0)
    m = Generator(ModelConfig(d_model=32, n_heads=2, enc_layers=1, dec_layers=1, max_history=6, dropout=0.0), [4, 8])
    m.eval()
    codes = torch.randint(0, 4, (2, 6, 2))
    mask = torch.tensor([[False, False, True, True, True, True]] * 2)
    batch = {"hist_codes": torch.where(mask[..., None], codes, -1), "hist_flags": torch.zeros(2, 6, dtype=torch.long),
             "hist_age": torch.zeros(2, 6, dtype=torch.long), "hist_mask": mask,
             "target": torch.tensor([[1, 2], [3, 7]])}
    loss = m(batch)
    assert torch.isfinite(loss)
    # the content of padded positions must not change the result
    batch2 = dict(batch, hist_codes=torch.where(mask[..., None], codes, 0))
    torch.testing.assert_close(m(batch2), loss)


def test_label_smoothing_is_the_smoothed_cross_entropy_of_each_level():
    torch.manual_seed(0)
    m = Generator(ModelConfig(d_model=32, n_heads=2, enc_layers=1, dec_layers=1, max_history=6, dropout=0.0), [4, 8])
    m.eval()
    mask = torch.ones(3, 6, dtype=torch.bool)
    batch = {"hist_codes": torch.randint(0, 4, (3, 6, 2)), "hist_flags": torch.zeros(3, 6, dtype=torch.long),
             "hist_age": torch.zeros(3, 6, dtype=torch.long), "hist_mask": mask,
             "target": torch.tensor([[1, 2], [3, 7], [0, 0]])}
    eps = 0.2
    memory, memory_mask = m.encode_batch(batch)
    hidden = m.decode(batch["target"][:, :-1], memory, memory_mask)
    expected = []
    for t in range(2):  # (1 - eps) * NLL(target) + eps * mean over the level's codes of -log p
        logp = torch.log_softmax(m.heads[t](hidden[:, t]), dim=-1)
        nll = -logp.gather(1, batch["target"][:, t:t + 1]).squeeze(1)
        expected.append(((1 - eps) * nll - eps * logp.mean(-1)).mean())
    torch.testing.assert_close(m(batch, label_smoothing=eps), torch.stack(expected).mean())


def test_generative_recommender_returns_valid_distinct_items(cyclic):
    ds, splits = cyclic
    codes = _codes(ds.n_items)
    torch.manual_seed(0)
    model = Generator(ModelConfig(d_model=32, n_heads=2, enc_layers=1, dec_layers=1, max_history=8),
                      [int(codes[:, 0].max()) + 1, 8])
    rec = GenerativeRecommender(model, codes, beam_size=12)
    out = rec.recommend(splits["test"].drop_columns(["targets"]), k=10)
    assert out.shape == (splits["test"].num_rows, 10)
    assert ((out >= 0) & (out < ds.n_items)).all()
    assert all(len(set(r)) == 10 for r in out)
    ex = EvalExamples(splits["test"], HistoryFeaturizer(codes, 8))
    assert len(ex) == splits["test"].num_rows


def test_generator_v0_checkpoints_still_load(tmp_path):
    from safetensors.torch import save_file

    from onerec.train.checkpoint import load_state

    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, n_heads=2, enc_layers=1, dec_layers=1, max_history=4)
    m = Generator(cfg, [4, 8])
    old_names = {v: k for k, v in V0_KEYS.items()}
    old_state = {old_names.get(k, k): v.contiguous() for k, v in m.state_dict().items()}
    assert "hist_pos.weight" in old_state
    save_file(old_state, str(tmp_path / "model.safetensors"))
    fresh = Generator(cfg, [4, 8])
    load_state(tmp_path, fresh)
    for k, v in m.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v)
