import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from onerec.config import ModelConfig, TrainConfig
from onerec.errors import CheckpointError
from onerec.model.generator import Generator
from onerec.train import train_generator
from onerec.train.checkpoint import model_meta


def test_resume_reproduces_loss_curve(tiny_train, tmp_path):
    mcfg, sizes, ex = tiny_train
    tcfg = TrainConfig(max_steps=12, batch_size=32, lr=3e-3, warmup_steps=3, checkpoint_every=5, device="cpu")
    meta = model_meta(mcfg, sizes)

    torch.manual_seed(0)
    full = train_generator(Generator(mcfg, sizes), ex, tcfg, tmp_path / "a", meta=meta, progress=False)

    torch.manual_seed(0)
    part = train_generator(Generator(mcfg, sizes), ex, tcfg, tmp_path / "b", meta=meta, stop_at=7, progress=False)
    assert len(part.loss) == 7
    # a different initial model: resuming must overwrite it entirely from the checkpoint
    torch.manual_seed(1)
    resumed = train_generator(Generator(mcfg, sizes), ex, tcfg, tmp_path / "b", meta=meta, resume=True, progress=False)
    assert resumed.steps == full.steps
    np.testing.assert_allclose(resumed.loss, full.loss, rtol=1e-6, atol=1e-7)
    assert (tmp_path / "b" / "model.safetensors").exists()


def test_resume_rejects_other_config(tiny_train, tmp_path):
    mcfg, sizes, ex = tiny_train
    tcfg = TrainConfig(max_steps=4, batch_size=32, checkpoint_every=2, device="cpu")
    train_generator(Generator(mcfg, sizes), ex, tcfg, tmp_path, meta=model_meta(mcfg, sizes), stop_at=2,
                    progress=False)
    other = ModelConfig(d_model=64, n_heads=2, enc_layers=1, dec_layers=1, max_history=8)
    with pytest.raises(CheckpointError, match="another config"):
        train_generator(Generator(other, sizes), ex, tcfg, tmp_path, meta=model_meta(other, sizes), resume=True,
                        progress=False)


def test_training_lowers_loss(tiny_train, tmp_path):
    mcfg, sizes, ex = tiny_train
    tcfg = TrainConfig(max_steps=60, batch_size=64, lr=5e-3, warmup_steps=5, checkpoint_every=1000, device="cpu")
    res = train_generator(Generator(mcfg, sizes), ex, tcfg, tmp_path, meta=model_meta(mcfg, sizes), progress=False)
    assert np.mean(res.loss[-10:]) < 0.6 * np.mean(res.loss[:5])


def test_resume_keeps_the_model_selection(train_tiny, tiny_train, scripted_scorer, tmp_path):
    """Stopped after epoch 3 and resumed, a run that selects on valid keeps the best epoch's weights and
    its patience count: it ends where the uninterrupted run ends, with the same weights."""
    spe = int(np.ceil(len(tiny_train[2]) / 128))
    tcfg = TrainConfig(epochs=8, batch_size=128, warmup_steps=2, checkpoint_every=1000, device="cpu",
                       early_stop_metric="ndcg@10", patience=2)
    scores = [0.1, 0.5, 0.2, 0.3, 0.9, 0.9, 0.9, 0.9]  # best epoch 2; patience ends the run after epoch 4
    full = train_tiny(tmp_path / "a", tcfg, score_valid=scripted_scorer(scores)[0])
    part = train_tiny(tmp_path / "b", tcfg, score_valid=scripted_scorer(scores)[0], stop_at=3 * spe)
    assert part.stopped is None and len(part.loss) == 3 * spe
    assert (tmp_path / "b" / "checkpoints" / f"step-{3 * spe:07d}" / "best.safetensors").is_file()
    # the resumed run's scorer sees epochs 4.. only; a fresh selection would take 0.3 as a new best and go on
    resumed = train_tiny(tmp_path / "b", tcfg, seed=1, resume=True, score_valid=scripted_scorer(scores[3:])[0])
    assert full.stopped == resumed.stopped == "patience" and full.best_epoch == resumed.best_epoch == 2.0
    assert len(resumed.loss) == len(full.loss) == 4 * spe
    assert [r["ndcg@10"] for r in resumed.valid] == [r["ndcg@10"] for r in full.valid] == scores[:4]
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    # resuming a run that patience ended trains no further
    again = train_tiny(tmp_path / "b", tcfg, resume=True, score_valid=scripted_scorer([0.99])[0])
    assert len(again.loss) == 4 * spe and again.best_epoch == 2.0


def test_resume_refuses_another_selection_metric(train_tiny, tiny_train, tmp_path):
    tcfg = TrainConfig(epochs=3, batch_size=128, warmup_steps=2, checkpoint_every=1000, device="cpu",
                       early_stop_metric="ndcg@10")
    train_tiny(tmp_path, tcfg, score_valid=lambda m: 0.1, stop_at=int(np.ceil(len(tiny_train[2]) / 128)))
    other = TrainConfig(**{**tcfg.__dict__, "early_stop_metric": "recall@10"})
    with pytest.raises(CheckpointError, match="selected on ndcg@10"):
        train_tiny(tmp_path, other, resume=True, score_valid=lambda m: 0.1)
