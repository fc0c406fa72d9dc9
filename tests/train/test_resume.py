import numpy as np
import pytest
import torch

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
