"""Model selection on the valid split in ``train_generator`` (``train.early_stop_metric``, on by default) and the
wall-time budget; without selection training runs every planned step and saves the last weights."""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from onerec.config import RunConfig, TrainConfig
from onerec.errors import ConfigError
from onerec.io import read_json
from onerec.model.generator import Generator
from onerec.train import train_generator
from onerec.train.checkpoint import model_meta


def test_keeps_best_epoch_and_stops_after_patience(tiny_train, scripted_scorer, tmp_path):
    mcfg, sizes, ex = tiny_train
    steps_per_epoch = int(np.ceil(len(ex) / 128))
    tcfg = TrainConfig(epochs=10, batch_size=128, warmup_steps=2, checkpoint_every=1000, device="cpu",
                       early_stop_metric="ndcg@10", patience=2)
    score, seen = scripted_scorer([0.1, 0.3, 0.2, 0.25, 0.9, 0.9])
    torch.manual_seed(0)
    lines: list[str] = []
    res = train_generator(Generator(mcfg, sizes), ex, tcfg, tmp_path, meta=model_meta(mcfg, sizes), progress=False,
                          score_valid=score, log=lines.append)
    assert len(seen) == 4 and res.stopped == "patience" and res.best_epoch == 2.0
    # one log line per epoch: the epoch's mean loss, the valid score and the best so far
    assert len(lines) == 4 and lines[0].startswith(f"epoch 1/10 (step {steps_per_epoch}): loss ")
    assert "ndcg@10 0.2500 (best 0.3000, epoch 2)" in lines[3]
    mean_loss = float(np.mean(res.loss[3 * steps_per_epoch:]))
    assert f"loss {mean_loss:.3f}," in lines[3]
    assert len(res.loss) == 4 * steps_per_epoch
    saved = load_file(str(tmp_path / "model.safetensors"))
    for k, v in seen[1].items():  # the weights scored at epoch 2
        assert torch.equal(saved[k], v), k
    meta = read_json(tmp_path / "model.json")
    assert meta["best_epoch"] == 2.0 and meta["stopped"] == "patience"
    assert [r["ndcg@10"] for r in res.valid] == [0.1, 0.3, 0.2, 0.25]


def test_valid_every_scores_every_nth_epoch_and_the_last(tiny_train, scripted_scorer, tmp_path):
    mcfg, sizes, ex = tiny_train
    steps_per_epoch = int(np.ceil(len(ex) / 128))
    # 5 epochs, scored at epochs 2, 4 and at the last step (5): patience counts scorings, not epochs
    tcfg = TrainConfig(epochs=5, batch_size=128, warmup_steps=2, checkpoint_every=1000, device="cpu",
                       early_stop_metric="ndcg@10", patience=2, valid_every=2)
    score, seen = scripted_scorer([0.3, 0.2, 0.25])
    torch.manual_seed(0)
    res = train_generator(Generator(mcfg, sizes), ex, tcfg, tmp_path / "a", meta=model_meta(mcfg, sizes),
                          progress=False, score_valid=score)
    assert len(seen) == 3 and res.stopped is None and res.best_epoch == 2.0
    scored = [r for r in res.valid if "ndcg@10" in r]
    assert [r["epoch"] for r in scored] == [2.0, 4.0, 5.0] and [r["ndcg@10"] for r in scored] == [0.3, 0.2, 0.25]
    saved = load_file(str(tmp_path / "a" / "model.safetensors"))
    for k, v in seen[0].items():  # the weights scored at epoch 2
        assert torch.equal(saved[k], v), k
    assert len(res.loss) == 5 * steps_per_epoch
    # stopped after epoch 3 and resumed: the same epochs are scored, the same result
    score2, seen2 = scripted_scorer([0.3, 0.2, 0.25])
    torch.manual_seed(0)
    train_generator(Generator(mcfg, sizes), ex, tcfg, tmp_path / "b", meta=model_meta(mcfg, sizes), progress=False,
                    score_valid=score2, stop_at=3 * steps_per_epoch)
    assert len(seen2) == 1
    res2 = train_generator(Generator(mcfg, sizes), ex, tcfg, tmp_path / "b", meta=model_meta(mcfg, sizes),
                           progress=False, score_valid=score2, resume=True)
    assert len(seen2) == 3 and res2.best_epoch == 2.0
    assert [r.get("ndcg@10") for r in res2.valid] == [r.get("ndcg@10") for r in res.valid]
    with pytest.raises(ConfigError, match=r"train\.valid_every=0"):
        train_generator(Generator(mcfg, sizes), ex, TrainConfig(valid_every=0, device="cpu"), tmp_path / "c",
                        meta=model_meta(mcfg, sizes), progress=False)


def test_time_budget_stops_and_saves(tiny_train, tmp_path):
    mcfg, sizes, ex = tiny_train
    tcfg = TrainConfig(epochs=50, batch_size=32, warmup_steps=2, checkpoint_every=1000, device="cpu",
                       time_budget_s=0.0)
    res = train_generator(Generator(mcfg, sizes), ex, tcfg, tmp_path, meta=model_meta(mcfg, sizes), progress=False)
    assert res.stopped == "time_budget" and len(res.loss) == 1
    assert (tmp_path / "model.safetensors").exists()


def test_without_selection_trains_every_step_and_keeps_the_last(tiny_train, tmp_path):
    mcfg, sizes, ex = tiny_train
    tcfg = TrainConfig(max_steps=6, batch_size=32, warmup_steps=2, checkpoint_every=1000, device="cpu",
                       early_stop_metric=None)
    calls = []
    res = train_generator(Generator(mcfg, sizes), ex, tcfg, tmp_path, meta=model_meta(mcfg, sizes), progress=False,
                          score_valid=lambda m: calls.append(1) or 0.0)  # ignored: early_stop_metric is None
    assert not calls and res.stopped is None and res.best_epoch is None and len(res.loss) == 6
    meta = read_json(tmp_path / "model.json")
    assert "best_epoch" not in meta and "stopped" not in meta


def test_defaults_select_on_valid_and_the_small_presets_do_not():
    """Own data (no preset) trains up to 60 epochs and keeps the best valid NDCG@10, patience 10 (the amazon preset's
    schedule, as SASRec's baseline is trained); the quickstart and tiny presets keep their fixed epochs."""
    from onerec.config import load_config

    train = RunConfig().train
    assert (train.epochs, train.early_stop_metric, train.patience, train.valid_users) == (60, "ndcg@10", 10, None)
    assert train.time_budget_s is None
    for preset in ("quickstart", "tiny"):
        assert load_config(preset=preset).train.early_stop_metric is None, preset


def test_valid_scoring_decodes_with_generate_precision(monkeypatch):
    """The per-epoch valid score searches under ``generate.precision`` and ``generate.compile`` (what eval and
    serving will use; aot packages in the run's folder)."""
    import pyarrow as pa

    import onerec.eval.harness as harness
    import onerec.generate.generative as generative
    from onerec.pipeline import valid_scorer

    made = []

    class Recorder:
        def __init__(self, *args, **kwargs):
            made.append(kwargs)

    monkeypatch.setattr(generative, "GenerativeRecommender", Recorder)
    monkeypatch.setattr(harness, "evaluate_shared", lambda *a, **k: {"ndcg@10": 0.5})
    valid = pa.table({"user": [0, 1], "history": [[1], [2]], "targets": [[3], [4]]})
    for precision, compile in (("fp32", "aot"), ("bf16", "true"), ("fp32", "false")):
        cfg = RunConfig()
        cfg.train.early_stop_metric, cfg.train.device, cfg.generate.precision = "ndcg@10", "cpu", precision
        cfg.generate.compile = compile
        assert valid_scorer(np.zeros((5, 2), dtype=np.int64), valid, cfg, aot_dir=Path("RUN/aot"))(None) == 0.5
        assert made[-1]["precision"] == precision and made[-1]["compile"] == compile
        assert made[-1]["aot_dir"] == str(Path("RUN/aot"))
