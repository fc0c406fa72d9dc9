"""``train.precision=bf16``: the forward pass runs under bfloat16 autocast while the weights, the
optimizer and the saved model stay fp32; training tracks the fp32 run without equalling it."""

import pytest
import torch
from safetensors.torch import load_file

from onerec.config import TrainConfig, load_config
from onerec.errors import ConfigError


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(max_steps=40, batch_size=32, lr=3e-3, warmup_steps=1, checkpoint_every=10,
                                 device="cpu"), **kw})


def test_bf16_trains_in_bf16_and_saves_fp32(train_tiny, tmp_path):
    fp32 = train_tiny(tmp_path / "fp32", _cfg())
    bf16 = train_tiny(tmp_path / "bf16", _cfg(precision="bf16"))
    w16 = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    assert all(v.dtype == torch.float32 for v in w16.values() if v.is_floating_point())
    # autocast was on: the first loss, from the same initial weights and batch, is not fp32's ...
    assert bf16.loss[0] != fp32.loss[0]
    # ... but bf16 rounding (~3 significant digits) keeps it close, and training learns as much
    assert bf16.loss[0] == pytest.approx(fp32.loss[0], rel=2e-2)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert mean(bf16.loss[-10:]) < 0.9 * mean(bf16.loss[:10])
    assert mean(bf16.loss[-10:]) == pytest.approx(mean(fp32.loss[-10:]), rel=0.05)


def test_bf16_resumes(train_tiny, tmp_path):
    cfg = _cfg(max_steps=8, checkpoint_every=3, precision="bf16")
    train_tiny(tmp_path / "full", cfg)
    full = load_file(str(tmp_path / "full" / "model.safetensors"))
    train_tiny(tmp_path / "part", cfg, stop_at=5)
    train_tiny(tmp_path / "part", cfg, seed=1, resume=True)  # another initial model: the checkpoint must replace it
    torch.testing.assert_close(load_file(str(tmp_path / "part" / "model.safetensors")), full)


def test_unknown_precision_is_a_config_error(train_tiny, tmp_path):
    with pytest.raises(ConfigError, match="precision"):
        load_config(preset="quickstart", overrides=["train.precision=fp16"])
    with pytest.raises(ConfigError, match="precision"):
        train_tiny(tmp_path, _cfg(precision="fp16"))
