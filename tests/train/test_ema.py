"""``train.ema_decay``: the saved model is the exponential moving average of the raw weights, early
stopping selects among averages, and a resumed run continues the average exactly."""

import pytest
import torch
from safetensors.torch import load_file

from onerec.config import TrainConfig
from onerec.errors import CheckpointError, ConfigError


def _cfg(**kw) -> TrainConfig:
    base = dict(max_steps=3, batch_size=32, lr=3e-3, warmup_steps=1, checkpoint_every=1, device="cpu")
    return TrainConfig(**{**base, **kw})


def test_saved_model_is_the_average_of_the_raw_weights(train_tiny, tmp_path):
    # the raw weights after steps 1, 2, 3 of one trajectory (checkpoints keep the raw weights)
    train_tiny(tmp_path / "raw", _cfg())
    raw = [load_file(str(p / "model.safetensors")) for p in sorted((tmp_path / "raw" / "checkpoints").glob("step-*"))]
    raw.append(load_file(str(tmp_path / "raw" / "model.safetensors")))  # step 3 (the checkpoints keep 2 and 3)
    w2, w3 = raw[0], raw[-1]
    train_tiny(tmp_path / "one", _cfg(), stop_at=1)
    w1 = load_file(str(tmp_path / "one" / "checkpoints" / "step-0000001" / "model.safetensors"))

    train_tiny(tmp_path / "ema", _cfg(ema_decay=0.9))
    got = load_file(str(tmp_path / "ema" / "model.safetensors"))
    moved = 0
    for key, value in got.items():
        if not value.is_floating_point():
            continue
        want = 0.9 * (0.9 * w1[key] + 0.1 * w2[key]) + 0.1 * w3[key]  # the first update copies w1
        torch.testing.assert_close(value, want, rtol=1e-5, atol=1e-6)
        moved += int(not torch.allclose(w3[key], want))
    assert moved > 0  # the average is not the last raw weights
    # the training checkpoints still hold the raw weights (the optimizer's), the average beside them
    last = tmp_path / "ema" / "checkpoints" / "step-0000003"
    torch.testing.assert_close(load_file(str(last / "model.safetensors")), w3)


def test_decay_zero_is_the_raw_weights(train_tiny, tmp_path):
    train_tiny(tmp_path / "raw", _cfg())
    train_tiny(tmp_path / "ema", _cfg(ema_decay=0.0))
    torch.testing.assert_close(load_file(str(tmp_path / "ema" / "model.safetensors")),
                               load_file(str(tmp_path / "raw" / "model.safetensors")))


def test_resume_continues_the_average(train_tiny, tmp_path):
    cfg = _cfg(max_steps=8, checkpoint_every=3, ema_decay=0.8)
    train_tiny(tmp_path / "full", cfg)
    train_tiny(tmp_path / "part", cfg, stop_at=5)
    # another initial model and average: the checkpoint must replace both
    train_tiny(tmp_path / "part", cfg, seed=1, resume=True)
    torch.testing.assert_close(load_file(str(tmp_path / "part" / "model.safetensors")),
                               load_file(str(tmp_path / "full" / "model.safetensors")), rtol=1e-5, atol=1e-6)


def test_selection_scores_the_average(tiny_train, train_tiny, tmp_path):
    seen = []

    def score(model):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return [0.5, 0.1][len(seen) - 1]

    steps_per_epoch = -(-len(tiny_train[2]) // 128)
    assert steps_per_epoch >= 2  # else the average after epoch 1 is the raw weights
    cfg = TrainConfig(epochs=2, batch_size=128, warmup_steps=1, checkpoint_every=steps_per_epoch, device="cpu",
                      early_stop_metric="ndcg@10", patience=5, ema_decay=0.95)
    res = train_tiny(tmp_path, cfg, score_valid=score)
    assert res.best_epoch == 1.0 and len(seen) == 2
    # the scorer saw the average, not the raw weights of that step (kept in the epoch-1 checkpoint) ...
    raw = load_file(str(tmp_path / "checkpoints" / f"step-{steps_per_epoch:07d}" / "model.safetensors"))
    assert any(not torch.allclose(raw[k], v) for k, v in seen[0].items() if v.is_floating_point())
    # ... and the kept model is that average
    torch.testing.assert_close(load_file(str(tmp_path / "model.safetensors")), seen[0])


def test_bad_decay_and_resume_without_average(train_tiny, tmp_path):
    with pytest.raises(ConfigError, match="ema_decay"):
        train_tiny(tmp_path / "bad", _cfg(ema_decay=1.0))
    train_tiny(tmp_path / "plain", _cfg(max_steps=4), stop_at=2)
    with pytest.raises(CheckpointError, match="no weight average"):
        train_tiny(tmp_path / "plain", _cfg(max_steps=4, ema_decay=0.9), resume=True)
