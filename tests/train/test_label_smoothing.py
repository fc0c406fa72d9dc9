"""``train.label_smoothing``: the training loss is the smoothed cross-entropy (so it changes training), 0 is
plain cross-entropy, and out-of-range values are refused before any step. (That it equals the formula per level is
tests/model/test_generator.py's.)"""

import pytest

from onerec.config import TrainConfig
from onerec.errors import ConfigError


def _cfg(**kw) -> TrainConfig:
    base = dict(max_steps=3, batch_size=32, lr=3e-3, warmup_steps=1, checkpoint_every=3, device="cpu", seed=0)
    return TrainConfig(**{**base, **kw})


def test_smoothing_changes_the_training_loss(train_tiny, tmp_path):
    plain = train_tiny(tmp_path / "plain", _cfg())
    smooth = train_tiny(tmp_path / "smooth", _cfg(label_smoothing=0.3))
    # the same initial weights and first batch: only the loss differs at step 1
    assert smooth.loss[0] != pytest.approx(plain.loss[0], rel=1e-4)
    zero = train_tiny(tmp_path / "zero", _cfg(label_smoothing=0.0))
    assert zero.loss == plain.loss


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_out_of_range_smoothing_is_refused(train_tiny, tmp_path, bad):
    with pytest.raises(ConfigError, match="label_smoothing"):
        train_tiny(tmp_path / "bad", _cfg(label_smoothing=bad))
    assert not (tmp_path / "bad" / "model.safetensors").exists()
