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
    # the same SASRec fitted again (same seed, same splits) has exactly these item embeddings
    splits = load_splits(tmp_path / "data" / "split", n_items=80)
    rec = build_baseline("sasrec_ce", cfg.eval.sasrec)
    rec.fit(splits["train"], n_items=80, valid=splits["valid"])
    np.testing.assert_array_equal(got, rec.model.item_emb.weight[1:].detach().numpy())
    assert not (tmp_path / "tokenizer" / "align").exists()


def test_collaborative_vectors_and_alignment_are_exclusive(tmp_path):
    cfg = load_config(preset="tiny", overrides=[*BASE, "content.collaborative=sasrec", "content.align=true"])
    stage_data(tmp_path, cfg, progress=False)
    with pytest.raises(ConfigError, match=r"content\.align=false"):
        stage_tokenize(tmp_path, cfg, progress=False)
    assert not (tmp_path / "tokenizer" / "codes.parquet").exists()
    with pytest.raises(ConfigError, match="collaborative"):
        load_config(preset="tiny", overrides=["content.collaborative=bert"])
