"""``content.collaborative=sasrec``: the tokenizer reads a SASRec's item embeddings (trained on the train split,
early-stopped on valid) instead of content vectors."""

import numpy as np
import pytest

from onerec.baselines import build_baseline
from onerec.config import load_config
from onerec.content import load_vectors
from onerec.data.splits import load_splits
from onerec.errors import ConfigError
from onerec.pipeline import stage_data, stage_tokenize
from onerec.train.loop import resolve_device

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread

BASE = ["data.sim.n_items=80", "data.sim.n_users=120", "data.sim.n_events=5000", "train.threads=1",
        "eval.sasrec.d_model=8", "eval.sasrec.n_heads=1", "eval.sasrec.epochs=3", "eval.sasrec.max_len=10",
        "tokenizer.codebook_size=8"]


def test_ids_come_from_the_sasrec_item_embeddings(tmp_path):
    cfg = load_config(preset="tiny", overrides=[*BASE, "content.collaborative=sasrec"])
    stage_data(tmp_path, cfg, progress=False)
    metrics = stage_tokenize(tmp_path, cfg, progress=False)
    got = load_vectors(tmp_path / "tokenizer" / "item_vectors.safetensors")
    assert got.shape == (80, 8)
    col = metrics["collaborative"]
    assert col["model"] == "sasrec_ce" and col["dim"] == 8 and col["epochs"] == 3 and 1 <= col["best_epoch"] <= 3
    assert len(col["valid_curve"]) == 3
    # the same SASRec fitted again (same seed, same splits, on the device the pipeline chose) has exactly
    # these item embeddings
    splits = load_splits(tmp_path / "data" / "split", n_items=80)
    rec = build_baseline("sasrec_ce", cfg.eval.sasrec, device=resolve_device(cfg.train.device))
    rec.fit(splits["train"], n_items=80, valid=splits["valid"])
    np.testing.assert_array_equal(got, rec.model.item_emb.weight[1:].detach().cpu().numpy())
    assert not (tmp_path / "tokenizer" / "align").exists()


def test_collaborative_vectors_and_alignment_are_exclusive(tmp_path):
    cfg = load_config(preset="tiny", overrides=[*BASE, "content.collaborative=sasrec", "content.align=true"])
    stage_data(tmp_path, cfg, progress=False)
    with pytest.raises(ConfigError, match=r"content\.align=false"):
        stage_tokenize(tmp_path, cfg, progress=False)
    assert not (tmp_path / "tokenizer" / "codes.parquet").exists()
    with pytest.raises(ConfigError, match="collaborative"):
        load_config(preset="tiny", overrides=["content.collaborative=bert"])


def test_a_resumed_tokenize_continues_the_sasrec_fit(tmp_path):
    """The SASRec's state is kept after every epoch (RUN/tokenizer/sasrec); a tokenize resumed after the fit
    stopped at epoch 1 ends with the uninterrupted fit's vectors; a fresh tokenize starts over."""
    cfg = load_config(preset="tiny", overrides=[*BASE, "content.collaborative=sasrec"])
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for run in (whole, cut):
        stage_data(run, cfg, progress=False)
    stage_tokenize(whole, cfg, progress=False)
    stopped = load_config(preset="tiny", overrides=[*BASE, "content.collaborative=sasrec",
                                                    "eval.sasrec.time_budget_s=0"])  # ends after epoch 1, as a kill
    assert stage_tokenize(cut, stopped, progress=False)["collaborative"]["epochs"] == 1
    assert [p.name for p in (cut / "tokenizer" / "sasrec").iterdir()] == ["epoch-0001"]
    metrics = stage_tokenize(cut, cfg, progress=False, resume=True)
    assert metrics["collaborative"]["epochs"] == 3
    np.testing.assert_array_equal(load_vectors(cut / "tokenizer" / "item_vectors.safetensors"),
                                  load_vectors(whole / "tokenizer" / "item_vectors.safetensors"))
    assert stage_tokenize(cut, stopped, progress=False)["collaborative"]["epochs"] == 1  # not resumed: afresh
