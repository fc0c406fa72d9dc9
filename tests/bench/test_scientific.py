"""`onerec bench scientific` on a tiny LC-Rec-layout dataset with two published-style indexes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onerec.bench.scientific import load_index
from onerec.cli import cli
from onerec.errors import DataError

N_USERS, N_ITEMS = 40, 30
TINY = ["content.dim=8", "tokenizer.levels=2", "tokenizer.codebook_size=4", "tokenizer.iters=5",
        "model.d_model=16", "model.n_heads=2", "model.enc_layers=1", "model.dec_layers=1",
        "train.epochs=1", "train.batch_size=64", "train.warmup_steps=2", "train.valid_users=20",
        "train.checkpoint_every=1000", "generate.beam_size=10", "generate.batch_size=64"]


def write_scientific(root: Path) -> Path:
    rng = np.random.default_rng(0)
    folder = root / "amazon2018_scientific_lcrec"
    (folder / "indexes").mkdir(parents=True)
    inter = {}
    for u in range(N_USERS):
        start = int(rng.integers(N_ITEMS))
        inter[str(u)] = [(start + t) % N_ITEMS for t in range(int(rng.integers(5, 10)))]
    (folder / "Scientific.inter.json").write_text(json.dumps(inter))
    items = {str(i): {"title": f"lab pipette {i % 6}", "description": f"glass tube size {i % 4}", "brand": f"b{i % 3}",
                      "categories": "Industrial & Scientific,Lab,Tubes"} for i in range(N_ITEMS)}
    (folder / "Scientific.item.json").write_text(json.dumps(items))
    zcr = {str(i): [f"<a_{i % 5}>", f"<b_{i // 5}>"] for i in range(N_ITEMS)}  # collision-free
    native = {str(i): [f"<a_{i % 5}>", f"<b_{i % 2}>"] for i in range(N_ITEMS)}  # collides
    (folder / "indexes" / "toy_zcr.index.json").write_text(json.dumps(zcr))
    (folder / "indexes" / "toy_native.index.json").write_text(json.dumps(native))
    return root


def test_bench_scientific_compares_indexes_under_one_model(tmp_path):
    root = write_scientific(tmp_path / "datasets")
    results = tmp_path / "sci.json"
    res = CliRunner().invoke(cli, ["bench", "scientific", "--datasets", str(root), "--out", str(tmp_path / "runs"),
                                   "--results", str(results), "--indexes", "ours,toy_zcr,toy_native", *TINY])
    assert res.exit_code == 0, res.output + repr(res.exception)
    out = json.loads(results.read_text())
    assert list(out["indexes"]) == ["ours", "toy_zcr", "toy_native"]
    zcr, native = out["indexes"]["toy_zcr"]["per_seed"][0], out["indexes"]["toy_native"]["per_seed"][0]
    assert zcr["codes"]["collision_rate"] == 0.0 and zcr["codes"]["codebook_sizes"] == [5, 6]
    # 30 items over 10 (a, b) pairs: every item collides, the collision level numbers the 3 items of a pair
    assert native["codes"]["collision_rate"] == 1.0 and native["codes"]["codebook_sizes"] == [5, 2, 3]
    assert out["config"]["model"]["d_model"] == 16  # one model config for every index
    for e in out["indexes"].values():
        assert 0.0 <= e["recall@10"] <= 1.0


def test_load_index_checks_the_format(tmp_path):
    path = tmp_path / "x.index.json"
    path.write_text(json.dumps({"0": ["<a_1>", "<b_2>"], "1": ["<a_3>", "<b_0>"]}))
    assert load_index(path, ["0", "1"]).tolist() == [[1, 2], [3, 0]]
    with pytest.raises(DataError, match="no semantic ID"):
        load_index(path, ["0", "2"])
    path.write_text(json.dumps({"0": ["<b_1>", "<a_2>"]}))
    with pytest.raises(DataError, match="level 0"):
        load_index(path, ["0"])
