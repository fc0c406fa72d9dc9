"""`onerec bench scientific` on a tiny LC-Rec-layout dataset with two published-style indexes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onerec.bench.scientific import merge_scientific, scientific_config
from onerec.cli import cli
from onerec.errors import ConfigError, DataError
from onerec.tokenizer.published import load_index

N_USERS, N_ITEMS = 40, 30
TINY = ["content.dim=8", "content.alignment.steps=20", "content.alignment.d_model=16", "tokenizer.levels=2",
        "tokenizer.codebook_size=4", "tokenizer.iters=5",
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
    assert "ours seed 0: epoch 1/1 (step " in res.output  # training progress, one line per epoch
    out = json.loads(results.read_text())
    assert list(out["indexes"]) == ["ours", "toy_zcr", "toy_native"]
    zcr, native = out["indexes"]["toy_zcr"]["per_seed"][0], out["indexes"]["toy_native"]["per_seed"][0]
    assert zcr["codes"]["collision_rate"] == 0.0 and zcr["codes"]["codebook_sizes"] == [5, 6]
    # 30 items over 10 (a, b) pairs: every item collides, the collision level numbers the 3 items of a pair
    assert native["codes"]["collision_rate"] == 1.0 and native["codes"]["codebook_sizes"] == [5, 2, 3]
    assert out["config"]["model"]["d_model"] == 16  # one model config for every index
    for e in out["indexes"].values():
        assert 0.0 <= e["recall@10"] <= 1.0



def test_bench_scientific_resumes_killed_runs(tmp_path):
    """Runs killed in their last epoch continue with --resume and end as the uninterrupted runs did;
    our semantic IDs are kept, and another configuration may not reuse the folder."""
    root = write_scientific(tmp_path / "datasets")
    base = ["bench", "scientific", "--datasets", str(root), "--indexes", "ours,toy_native", *TINY, "train.epochs=3"]

    def bench(name, *extra):
        res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / name), "--results",
                                       str(tmp_path / f"{name}.json"), *extra])
        assert res.exit_code == 0, res.output + repr(res.exception)
        return res, json.loads((tmp_path / f"{name}.json").read_text())["indexes"]

    _, full = bench("full")
    shutil.copytree(tmp_path / "full", tmp_path / "killed", symlinks=True)
    for name in ("ours", "toy_native"):  # the state a kill during epoch 3 leaves
        train = tmp_path / "killed" / f"{name}-seed0" / "train"
        shutil.rmtree(sorted((train / "checkpoints").glob("step-*"))[-1])
        for f in ("model.safetensors", "metrics.json", "history.json"):
            (train / f).unlink()
    codes = (tmp_path / "killed" / "ours-seed0" / "tokenizer" / "codes.parquet").stat().st_mtime_ns
    res, resumed = bench("killed", "--resume", "--budget-s", "9999")
    assert "ours seed 0: resuming from " in res.output and "toy_native seed 0: resuming from " in res.output
    assert (tmp_path / "killed" / "ours-seed0" / "tokenizer" / "codes.parquet").stat().st_mtime_ns == codes
    for name in ("ours", "toy_native"):
        f, r = full[name]["per_seed"][0], resumed[name]["per_seed"][0]
        assert r["resumed_from_step"] < f["steps"] == r["steps"] and r["best_epoch"] == f["best_epoch"]
        assert [p["ndcg@10"] for p in r["valid_curve"]] == pytest.approx([p["ndcg@10"] for p in f["valid_curve"]],
                                                                        abs=1e-6)
        for m in ("recall@5", "ndcg@5", "recall@10", "ndcg@10"):
            assert r[m] == pytest.approx(f[m], abs=1e-6)
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "killed"), "--resume", "train.lr=0.1"])
    assert isinstance(res.exception, ConfigError) and "train.lr" in str(res.exception)

def test_scientific_keeps_content_ids_unless_told(tmp_path):
    """The Scientific figures compare IDs read from content; the amazon preset's per-item token is opt-in here."""
    root = write_scientific(tmp_path / "datasets")
    assert not scientific_config(root).content.alignment.id_token
    assert scientific_config(root, overrides=["content.alignment.id_token=true"]).content.alignment.id_token


def test_load_index_checks_the_format(tmp_path):
    path = tmp_path / "x.index.json"
    path.write_text(json.dumps({"0": ["<a_1>", "<b_2>"], "1": ["<a_3>", "<b_0>"]}))
    assert load_index(path, ["0", "1"]).tolist() == [[1, 2], [3, 0]]
    with pytest.raises(DataError, match="no semantic ID"):
        load_index(path, ["0", "2"])
    path.write_text(json.dumps({"0": ["<b_1>", "<a_2>"]}))
    with pytest.raises(DataError, match="level 0"):
        load_index(path, ["0"])


def part(indexes: dict[str, list[tuple[int, float]]], align: bool = True, patience: int = 3) -> dict:
    """A `bench scientific` results file: per index, (seed, value of every metric) rows."""
    table = {name: {"per_seed": [{"seed": s, "recall@5": v, "ndcg@5": v, "recall@10": v, "ndcg@10": v,
                                  "codes": {"collision_rate": 0.0}} for s, v in rows]}
             for name, rows in indexes.items()}
    seeds = sorted({s for rows in indexes.values() for s, _ in rows})
    return {"benchmark": "amazon2018-scientific-indexes", "date": f"2026-01-0{1 + seeds[0]}", "seeds": seeds,
            "indexes": table, "seconds": 1.5, "command": "c", "note": "n",
            "config": {"content": {"align": align}, "train": {"seed": 0, "patience": patience}}}


def test_merge_scientific_pools_seeds_and_keeps_other_configs_apart():
    out = merge_scientific([part({"ours": [(0, 0.1)], "letter": [(0, 0.3)]}), part({"ours": [(1, 0.2)]}),
                            part({"ours": [(0, 0.05)]}, align=False)])
    assert list(out["indexes"]) == ["ours", "letter", "ours (content.align=False)"]
    ours = out["indexes"]["ours"]
    assert [r["seed"] for r in ours["per_seed"]] == [0, 1] and out["seeds"] == [0, 1]
    assert ours["recall@10"] == pytest.approx(0.15) and ours["std"]["recall@10"] == pytest.approx(0.0707, abs=1e-4)
    assert out["indexes"]["ours (content.align=False)"]["config_differences"] == {"content.align": False}
    assert out["indexes"]["letter"]["std"]["recall@10"] == 0.0 and out["seconds"] == 4.5
    with pytest.raises(ConfigError, match="seed 0 of index 'ours' appears in two"):
        merge_scientific([part({"ours": [(0, 0.1)]}), part({"ours": [(0, 0.2)]})])
    # an allowed difference pools, and the entry records each seed's value
    out = merge_scientific([part({"ours": [(0, 0.1)]}), part({"ours": [(1, 0.2)]}, patience=10)],
                           allow=["train.patience"])
    assert out["indexes"]["ours"]["config_pooled_over"] == {"train.patience": {"0": 3, "1": 10}}
    with pytest.raises(ConfigError, match="cannot merge a 'amazon-beauty'"):
        merge_scientific([part({"ours": [(0, 0.1)]}), {"benchmark": "amazon-beauty"}])


def test_bench_merge_cli_reads_scientific_files(tmp_path):
    paths = []
    for i, p in enumerate([part({"ours": [(0, 0.1)]}), part({"ours": [(1, 0.2)]}, patience=10)]):
        paths.append(tmp_path / f"p{i}.json")
        paths[-1].write_text(json.dumps(p))
    out = tmp_path / "merged.json"
    res = CliRunner().invoke(cli, ["bench", "merge", *map(str, paths), "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)  # another config: kept apart, named by the field
    assert list(json.loads(out.read_text())["indexes"]) == ["ours", "ours (train.patience=10)"]
    res = CliRunner().invoke(cli, ["bench", "merge", *map(str, paths), "--out", str(out),
                                   "--allow-difference", "train.patience"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "| ours | 0.1500 ± 0.0707 |" in res.output
    assert json.loads(out.read_text())["indexes"]["ours"]["config_pooled_over"]["train.patience"] == {"0": 3, "1": 10}
