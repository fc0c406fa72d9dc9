"""Watching training live (``train.logger``): the scalars the loop records, as CSV and as TensorBoard events."""

import csv

import numpy as np
import pytest

from onerec.config import TrainConfig
from onerec.errors import ConfigError
from onerec.train.logger import make_logger


def _train(train_tiny, tmp_path, kind, scripted_scorer):
    logger = make_logger(kind, tmp_path / "run")
    cfg = TrainConfig(epochs=2, batch_size=32, log_every=2, warmup_steps=2, checkpoint_every=1000, device="cpu",
                      early_stop_metric="ndcg@10")
    score, _ = scripted_scorer([0.1, 0.2])
    try:
        res = train_tiny(tmp_path / "out", cfg, logger=logger, score_valid=score)
    finally:
        logger.close()
    return res, logger, cfg


def test_csv_logger_records_loss_lr_throughput_and_valid(train_tiny, scripted_scorer, tmp_path):
    res, logger, cfg = _train(train_tiny, tmp_path, "csv", scripted_scorer)
    assert logger.folder.parent == tmp_path / "run" / "logs" and logger.folder.name.startswith("train-")
    with open(logger.folder / "scalars.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by = {}
    for r in rows:
        by.setdefault(r["name"], []).append((int(r["step"]), float(r["value"])))
    steps = [s for s, _ in by["train/loss"]]
    assert steps == list(range(cfg.log_every, len(res.loss) + 1, cfg.log_every))
    for step, value in by["train/loss"]:  # the mean of the log_every losses up to that step
        assert value == pytest.approx(np.mean(res.loss[step - cfg.log_every:step]), rel=1e-4)
    assert all(v > 0 for _, v in by["train/steps_per_s"]) and len(by["train/lr"]) == len(steps)
    assert [v for _, v in by["valid/ndcg@10"]] == [0.1, 0.2]
    assert logger.watch_hint() == f"tail -f {logger.folder / 'scalars.csv'}"


def test_tensorboard_logger_writes_events(train_tiny, scripted_scorer, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, logger, _ = _train(train_tiny, tmp_path, "tensorboard", scripted_scorer)
    events = EventAccumulator(str(logger.folder))
    events.Reload()
    assert {"train/loss", "train/lr", "train/examples_per_s", "valid/ndcg@10"} <= set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("valid/ndcg@10")] == pytest.approx([0.1, 0.2])
    assert logger.watch_hint() == f"tensorboard --logdir {tmp_path / 'run' / 'logs'}"


def test_none_and_unknown_loggers(tmp_path):
    assert make_logger("none", tmp_path).folder is None and not (tmp_path / "logs").exists()
    with pytest.raises(ConfigError, match="not one of csv, tensorboard, none"):
        make_logger("wandb", tmp_path)
