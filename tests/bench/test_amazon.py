"""`onerec bench amazon` end to end on a tiny synthetic dataset written in the S3Rec / TIGER layout,
and the protocol checks (leave-one-out, history truncated to 20, full ranking)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onerec.bench.amazon import METRICS, bench_config, check_protocol, item_id_rows, merge_results
from onerec.cli import cli
from onerec.data.splits import list_column, load_splits
from onerec.errors import ConfigError, DataError
from onerec.pipeline import stage_data

N_USERS, N_ITEMS = 40, 30
TINY = ["content.dim=8", "content.alignment.steps=20", "content.alignment.d_model=16", "tokenizer.levels=2",
        "tokenizer.codebook_size=4", "tokenizer.iters=5",
        "model.d_model=16", "model.n_heads=2", "model.enc_layers=1", "model.dec_layers=1",
        "train.epochs=2", "train.batch_size=64", "train.warmup_steps=2", "train.valid_users=20",
        "train.checkpoint_every=1000", "generate.beam_size=10", "generate.batch_size=64",
        "eval.sasrec.epochs=2", "eval.sasrec.d_model=8", "eval.sasrec.patience=1"]


def write_amazon(root: Path, n_users: int = N_USERS, n_items: int = N_ITEMS, seed: int = 0) -> Path:
    """Beauty.txt (users walk item ids upward; user 1 has 30 items), attributes and a text TSV."""
    rng = np.random.default_rng(seed)
    s3rec, text = root / "amazon2014_s3rec", root / "amazon2014_text"
    s3rec.mkdir(parents=True)
    text.mkdir()
    lines = []
    for u in range(1, n_users + 1):
        length = 30 if u == 1 else int(rng.integers(5, 12))
        start = int(rng.integers(n_items))
        lines.append(" ".join(str(x) for x in [u, *((start + t) % n_items + 1 for t in range(length))]))
    (s3rec / "Beauty.txt").write_text("\n".join(lines) + "\n")
    attrs = {str(i): [i % 5, 100 + i % 3] for i in range(1, n_items + 1)}
    (s3rec / "Beauty_item2attributes.json").write_text(json.dumps(attrs))
    rows = ["item_id\tasin\ttitle\tcategories"]
    for i in range(1, n_items + 1):
        rows.append(f'{i}\tB{i:09d}\tShade {i % 7} lipstick &amp; gloss {i}\t[["Beauty", "Makeup", "Lips {i % 4}"]]')
    (text / "Beauty_items.tsv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def amazon_dir(tmp_path):
    return write_amazon(tmp_path / "datasets")


def test_bench_amazon_end_to_end(amazon_dir, tmp_path):
    results = tmp_path / "amazon-beauty.json"
    args = ["bench", "amazon", "--category", "beauty", "--datasets", str(amazon_dir), "--out", str(tmp_path / "runs"),
            "--results", str(results), "--seeds", "0,1", *TINY]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "TIGER (published)" in res.output and "onerec (ours)" in res.output and "onerec-prior (ours)" in res.output
    out = json.loads(results.read_text())
    assert out["seeds"] == [0, 1]
    assert out["models"] == ["onerec", "onerec-prior", "sasrec-ce", "sasrec-bce", "transitions"]
    for name in out["models"]:
        entry = out[name]
        assert set(METRICS) <= set(entry) and len(entry["per_seed"]) == 2 and len(entry["train_seconds"]) == 2
        for m in METRICS:
            vals = [r[m] for r in entry["per_seed"]]
            assert 0.0 <= entry[m] <= 1.0 and entry[m] == pytest.approx(np.mean(vals))
            assert entry["std"][m] == pytest.approx(np.std(vals, ddof=1))
    assert out["onerec"]["best_epoch"][0] is not None  # validation early stopping was on
    assert out["published"]["TIGER"]["recall@10"] == 0.0648
    proto = out["protocol"]
    assert proto["users"] == N_USERS and proto["items"] == N_ITEMS and proto["max_history"] == 20
    assert proto["full_ranking_items"] == N_ITEMS and proto["longest_history"] == 29
    assert out["machine"]["cpu_count"] and out["config"]["content"]["text_fields"]
    # the title text reached the items table (HTML-unescaped) for the content backend
    items = (tmp_path / "runs" / "seed0" / "data" / "items.parquet")
    assert items.exists() and (tmp_path / "runs" / "seed1" / "data").is_symlink()


def test_a_baselines_only_run_builds_no_semantic_ids(amazon_dir, tmp_path):
    """SASRec and the transitions rank item ids: a run without onerec skips the content vectors and the
    tokenizer."""
    results = tmp_path / "sasrec.json"
    res = CliRunner().invoke(cli, ["bench", "amazon", "--category", "beauty", "--datasets", str(amazon_dir),
                                   "--out", str(tmp_path / "runs"), "--results", str(results), "--seeds", "0",
                                   "--models", "sasrec_ce,transitions", *TINY])
    assert res.exit_code == 0, res.output + repr(res.exception)
    out = json.loads(results.read_text())
    assert out["models"] == ["sasrec-ce", "transitions"] and 0.0 <= out["sasrec-ce"]["recall@10"] <= 1.0
    # users walk the item ids upward: the item after the last one is the target (bar the wrap-around)
    trans = out["runs"][0]["models"]["transitions"]
    assert trans["recall@5"] > 0.9 and trans["window"] in (1, 2, 3, 5, 10, 20)
    assert trans["valid_ndcg@10"][f"window={trans['window']},decay={trans['decay']}"] == \
        max(trans["valid_ndcg@10"].values())
    assert out["protocol"]["items"] == N_ITEMS and "full_ranking_items" not in out["protocol"]
    assert out["tokenizer"] == [{"skipped": "no onerec model in this run"}]
    assert not (tmp_path / "runs" / "seed0" / "tokenizer" / "codes.parquet").exists()
    # SASRec's selection is in the file and on screen, epoch by epoch
    row = out["runs"][0]["models"]["sasrec_ce"]
    assert [p["epoch"] for p in row["valid_curve"]] == list(range(1, row["epochs"] + 1))
    assert all(0.0 <= p["ndcg@10"] <= 1.0 for p in row["valid_curve"])
    assert "seed 0 sasrec_ce: epoch 1, loss " in res.output and ", valid ndcg@10 " in res.output


def _bench_row(tmp_path: Path, base: list[str], name: str, model: str, *extra: str):
    """Run ``onerec bench amazon`` (``base`` + extra arguments) into ``tmp_path/name``; return the
    output and the first seed's row of ``model`` in its results file."""
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / name), "--results", str(tmp_path / f"{name}.json"),
                                   *extra])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res, json.loads((tmp_path / f"{name}.json").read_text())["runs"][0]["models"][model]


def test_bench_amazon_resumes_a_killed_run(amazon_dir, tmp_path, monkeypatch):
    """A run killed in its last epoch and continued with --resume ends as the uninterrupted run did."""
    base = ["bench", "amazon", "--category", "beauty", "--datasets", str(amazon_dir), "--seeds", "0",
            "--models", "onerec", *TINY, "train.epochs=3"]

    def bench(name, *extra):
        monkeypatch.setattr("sys.argv", ["onerec", *base, *extra])  # what the CLI records as the command
        return _bench_row(tmp_path, base, name, "onerec", *extra)

    _, full = bench("full")
    # the state a kill during epoch 3 leaves: checkpoints up to epoch 2, no final model
    shutil.copytree(tmp_path / "full", tmp_path / "killed", symlinks=True)
    train = tmp_path / "killed" / "seed0" / "train"
    last = sorted((train / "checkpoints").glob("step-*"))[-1]
    shutil.rmtree(last)
    for f in ("model.safetensors", "metrics.json", "history.json"):
        (train / f).unlink()
    res, resumed = bench("killed", "--resume", "--budget-s", "9999")  # a new time cap is allowed
    # the results file names every invocation that trained the run: the first one's and the resume's
    history = json.loads((tmp_path / "killed.json").read_text())["commands"]
    assert len(history) == 2 and "--resume" not in history[0]["command"] and "--resume" in history[1]["command"]
    assert f"resuming from {sorted((train / 'checkpoints').glob('step-*'))[0]}" in res.output
    assert resumed["resumed_from_step"] < full["steps"] == resumed["steps"]
    assert resumed["best_epoch"] == full["best_epoch"] and resumed["stopped"] == full["stopped"]
    assert [r["epoch"] for r in resumed["valid_curve"]] == [r["epoch"] for r in full["valid_curve"]]
    for r, f in zip(resumed["valid_curve"], full["valid_curve"]):
        assert r["ndcg@10"] == pytest.approx(f["ndcg@10"], abs=1e-6)
    for m in METRICS:
        assert resumed[m] == pytest.approx(full[m], abs=1e-6)
    # another experiment must not reuse the run directory
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "killed"), "--resume", "train.lr=0.1"])
    assert isinstance(res.exception, ConfigError) and "train.lr" in str(res.exception)


def test_bench_amazon_resumes_sasrec_from_its_last_epoch(amazon_dir, tmp_path):
    """A SASRec baseline stopped after its first epoch continues from it with --resume and ends as
    the uninterrupted run did (seed 1: the first seed's folder, where the data stage wrote the unseeded
    config); a run without --resume over the same folder starts afresh."""
    base = ["bench", "amazon", "--category", "beauty", "--datasets", str(amazon_dir), "--seeds", "1",
            "--models", "sasrec_bce", *TINY, "eval.sasrec.epochs=4", "eval.sasrec.patience=4"]

    def bench(name, *extra):
        return _bench_row(tmp_path, base, name, "sasrec_bce", *extra)

    _, full = bench("full")
    assert full["epochs"] == 4 and sorted(p.name for p in (tmp_path / "full/seed1/baselines/sasrec_bce").iterdir()) \
        == ["epoch-0004"]
    _, cut = bench("cut", "eval.sasrec.time_budget_s=0")  # ends after its first epoch, as a kill would
    assert cut["epochs"] == 1
    res, resumed = bench("cut", "--resume")  # a new time cap is allowed
    assert "resuming sasrec_bce from " in res.output and resumed["resumed_from_epoch"] == 1
    assert resumed["epochs"] == full["epochs"] and resumed["best_epoch"] == full["best_epoch"]
    for r, f in zip(resumed["valid_curve"], full["valid_curve"], strict=True):
        assert r["ndcg@10"] == pytest.approx(f["ndcg@10"], abs=1e-6)
    for m in METRICS:
        assert resumed[m] == pytest.approx(full[m], abs=1e-6)
    res, again = bench("cut", "eval.sasrec.time_budget_s=0")  # no --resume: trains from epoch 1 again
    assert "resuming" not in res.output and again["epochs"] == 1 and "resumed_from_epoch" not in again


def test_item_id_feature_gets_one_row_per_item(amazon_dir):
    feats = "model.behaviour_features=[sid,label,time,item]"
    cfg = bench_config("beauty", amazon_dir, overrides=[feats, "model.sparse_buckets=8"])
    assert item_id_rows(cfg, N_ITEMS, log=lambda _: None).model.sparse_buckets == 32  # 31 rows for 30 items
    cfg = bench_config("beauty", amazon_dir, overrides=[feats, "model.sparse_buckets=100"])
    assert item_id_rows(cfg, N_ITEMS).model.sparse_buckets == 100  # already enough: left alone
    cfg = bench_config("beauty", amazon_dir, overrides=["model.behaviour_features=[sid]", "model.sparse_buckets=0"])
    assert item_id_rows(cfg, N_ITEMS).model.sparse_buckets == 0  # no item feature: no table


def test_every_category_aligns_with_the_per_item_token_unless_overridden(amazon_dir):
    # one configuration for all categories: with titles and without (Sports has attribute ids alone)
    assert bench_config("beauty", amazon_dir).content.alignment.id_token
    assert bench_config("beauty", amazon_dir, text=False).content.alignment.id_token
    cfg = bench_config("beauty", amazon_dir, text=False, overrides=["content.alignment.id_token=false"])
    assert not cfg.content.alignment.id_token  # the user's override wins


def test_protocol_is_leave_one_out_with_history_20(amazon_dir, tmp_path):
    run = tmp_path / "run"
    cfg = bench_config("beauty", amazon_dir, overrides=TINY)
    stage_data(run, cfg)
    splits = load_splits(run / "data" / "split")
    # user 1 (dense 0) has 30 items: raw ids 1-based -> dense 0-based
    seq = np.array([int(x) - 1 for x in (amazon_dir / "amazon2014_s3rec" / "Beauty.txt").read_text().split("\n")[0]
                    .split()[1:]])
    assert list_column(splits["test"], "targets")[0].tolist() == [seq[-1]]
    assert list_column(splits["valid"], "targets")[0].tolist() == [seq[-2]]
    assert list_column(splits["train"], "items")[0].tolist() == seq[:-2].tolist()
    codes = np.arange(N_ITEMS)[:, None] * np.array([[1, 0]]) + np.array([[0, 0]])  # distinct code per item
    info = check_protocol(run, cfg, codes)
    assert info["history_checked_users"] == N_USERS and info["longest_history"] == 29

    # the generator's featurizer sees exactly the 20 most recent items of user 1's test history
    from onerec.features import EvalExamples, HistoryFeaturizer

    batch = EvalExamples(splits["test"], HistoryFeaturizer(codes, 20)).batch(np.array([0]))
    assert batch["hist_mask"].sum() == 20
    assert batch["hist_codes"][0, :, 0].tolist() == seq[-21:-1].tolist()

    # SASRec truncates to the same 20 items: its scores ignore anything older
    from onerec.baselines import build_baseline

    rec = build_baseline("sasrec_ce", cfg.eval.sasrec)
    rec.fit(splits["train"], n_items=N_ITEMS)
    test = splits["test"].slice(0, 1)
    import pyarrow as pa

    older = test.set_column(test.schema.get_field_index("history"), "history",
                            pa.array([[(x + 3) % N_ITEMS for x in seq[:-21]] + seq[-21:-1].tolist()]))
    assert np.array_equal(rec.recommend(test.drop_columns(["targets"]), N_ITEMS),
                          rec.recommend(older.drop_columns(["targets"]), N_ITEMS))  # full ranking: all N items


def test_protocol_violations_are_errors(amazon_dir, tmp_path):
    run = tmp_path / "run"
    cfg = bench_config("beauty", amazon_dir, overrides=TINY)
    stage_data(run, cfg)
    dup = np.zeros((N_ITEMS, 2), dtype=np.int64)
    with pytest.raises(DataError, match="share a semantic ID"):
        check_protocol(run, cfg, dup)
    cfg.eval.sasrec.max_len = 50
    with pytest.raises(ConfigError, match="same history length"):
        check_protocol(run, cfg)
    with pytest.raises(ConfigError, match="unknown category"):
        bench_config("books", amazon_dir)
    with pytest.raises(DataError, match=r"Beauty\.txt not found"):
        bench_config("beauty", tmp_path / "nowhere")


def test_merge_results_combines_models_of_the_same_seeds(tmp_path):
    a = {"seeds": [0], "models": ["onerec"], "onerec": {"recall@10": 0.1}, "runs": [{"seed": 0, "models": {}}],
         "seconds": 5.0}
    b = {"seeds": [0], "models": ["sasrec-ce"], "sasrec-ce": {"recall@10": 0.2}, "runs": [{"seed": 0, "models": {}}],
         "seconds": 7.0}
    out = merge_results([a, b])
    assert out["models"] == ["onerec", "sasrec-ce"] and out["sasrec-ce"]["recall@10"] == 0.2
    assert out["seconds"] == 12.0
    # a model run on other seeds keeps its own seeds; the runs are joined by seed
    c = {"seeds": [0, 1], "models": ["sasrec-bce"], "sasrec-bce": {"recall@10": 0.05}, "seconds": 1.0,
         "runs": [{"seed": s, "models": {"sasrec-bce": {"steps": s + 1}}} for s in (0, 1)]}
    out = merge_results([a, c])
    assert out["seeds"] == [0, 1] and [sorted(r["models"]) for r in out["runs"]] == [["sasrec-bce"], ["sasrec-bce"]]
    out = merge_results([{**a, "runs": [{"seed": 0, "models": {"onerec": {"steps": 9}}}]}, c])
    assert out["runs"][0]["models"] == {"onerec": {"steps": 9}, "sasrec-bce": {"steps": 1}}
    with pytest.raises(ConfigError, match="appears in two"):
        merge_results([a, b, {**b, "seeds": [1]}])
    # the merged file keeps the first config and says, per model, how the others' configs differ
    a["config"] = {"data": {"name": "Beauty"}, "train": {"time_budget_s": 6900.0}}
    b["config"] = {"data": {"name": "Beauty"}, "train": {"time_budget_s": 2400.0}}
    out = merge_results([a, b])
    assert out["config"] == a["config"]
    assert out["config_differences"] == {"train.time_budget_s": {"onerec": 6900.0, "sasrec-ce": 2400.0}}
    assert "config_differences" not in merge_results([a, {**b, "config": a["config"]}])
    pooled = {**b, "config": a["config"], "config_differences": {"train.lr": {"0": 0.001}}}
    out = merge_results([a, pooled])
    assert "config_differences" not in out and out["sasrec-ce"]["config_differences"] == {"train.lr": {"0": 0.001}}
    elsewhere = {"data": {"name": "Beauty", "path": "/elsewhere"}, "train": {"time_budget_s": 2400.0}}
    a["config"]["data"]["path"] = "/here"
    joined = merge_results([a, {**b, "config": elsewhere}])
    assert joined["config_differences"]["data.path"] == {"onerec": "/here", "sasrec-ce": "/elsewhere"}
    with pytest.raises(ConfigError, match=r"different data.*data\.name"):
        merge_results([a, {**b, "config": {"data": {"name": "Toys"}, "train": {"time_budget_s": 6900.0}}}])
    # joining a joined file again keeps each of its models' own values
    del a["config"]["data"]["path"]
    c = {**c, "config": {"data": {"name": "Beauty"}, "train": {"time_budget_s": 6900.0}}}
    again = merge_results([merge_results([a, b]), c])
    assert again["models"] == ["onerec", "sasrec-ce", "sasrec-bce"]
    assert again["config_differences"] == {"train.time_budget_s": {"onerec": 6900.0, "sasrec-ce": 2400.0,
                                                                   "sasrec-bce": 6900.0}}
    assert "config_differences" not in again["sasrec-ce"]


def test_merge_results_pools_seeds_of_the_same_models():
    def part(seed: int, r10: float, lr: float = 0.002) -> dict:
        metrics = {m: r10 for m in METRICS}
        run = {"seed": seed, "models": {"onerec": {**metrics, "train_seconds": 10.0 + seed, "steps": 5}}}
        return {"seeds": [seed], "models": ["onerec"], "onerec": {}, "runs": [run], "seconds": 3.0,
                "tokenizer": [{"seed": seed}], "note": f"n{seed}",
                "config": {"train": {"seed": seed, "lr": lr}, "model": {"d_model": 128}}}

    out = merge_results([part(2, 0.30), part(0, 0.10), part(1, 0.20)])
    assert out["seeds"] == [0, 1, 2] and [r["seed"] for r in out["runs"]] == [0, 1, 2]
    assert out["onerec"]["recall@10"] == pytest.approx(0.20)
    assert out["onerec"]["std"]["recall@10"] == pytest.approx(0.10)
    assert out["onerec"]["train_seconds"] == [10.0, 11.0, 12.0] and out["seconds"] == 9.0
    assert out["tokenizer"] == [{"seed": 0}, {"seed": 1}, {"seed": 2}]
    with pytest.raises(ConfigError, match="seed 0 appears in two"):
        merge_results([part(0, 0.1), part(0, 0.2)])
    with pytest.raises(ConfigError, match=r"different configs.*train\.lr"):
        merge_results([part(0, 0.1), part(1, 0.2, lr=0.01)])
    newer = part(1, 0.2)
    newer["config"]["model"]["added_later"] = False  # a field the older file predates is no difference
    assert merge_results([part(0, 0.1), newer])["seeds"] == [0, 1]
    # a field named as allowed may differ; the merged file keeps each seed's value
    out = merge_results([part(0, 0.1), part(1, 0.2, lr=0.01), part(2, 0.3)], allow=["train.lr"])
    assert out["config_differences"] == {"train.lr": {"0": 0.002, "1": 0.01, "2": 0.002}}
    assert "config_differences" not in merge_results([part(0, 0.1), part(1, 0.2)], allow=["train.lr"])
    with pytest.raises(ConfigError, match=r"train\.lr differ.*--allow-difference"):
        merge_results([part(0, 0.1), part(1, 0.2, lr=0.01)], allow=["model.d_model"])


def test_real_beauty_counts_match_the_papers(dataset):
    from onerec.data.adapters import load_amazon2014

    ds = load_amazon2014(dataset("amazon2014_s3rec"), "Beauty")
    assert (ds.n_users, ds.n_items, ds.interactions.num_rows) == (22363, 12101, 198502)


def write_lcrec_index(amazon_dir: Path, collide: bool = True) -> Path:
    """Beauty.inter.json + Beauty.index.json in the LC-Rec layout (0-based ids of the S3Rec file),
    a 2-level index whose items 0 and 1 share an ID when ``collide``."""
    folder = amazon_dir / "amazon2014_beauty_lcrec"
    folder.mkdir()
    inter = {}
    for line in (amazon_dir / "amazon2014_s3rec" / "Beauty.txt").read_text().split("\n"):
        if line:
            u, *items = (int(x) for x in line.split())
            inter[str(u - 1)] = [i - 1 for i in items]
    (folder / "Beauty.inter.json").write_text(json.dumps(inter))
    index = {str(i): [f"<a_{i % 4}>", f"<b_{i // 4}>"] for i in range(N_ITEMS)}
    if collide:
        index["1"] = index["0"]
    (folder / "Beauty.index.json").write_text(json.dumps(index))
    return folder / "Beauty.index.json"


def test_bench_amazon_on_a_published_index(amazon_dir, tmp_path):
    index = write_lcrec_index(amazon_dir)
    results = tmp_path / "letter.json"
    args = ["bench", "amazon", "--category", "beauty", "--datasets", str(amazon_dir), "--out", str(tmp_path / "runs"),
            "--results", str(results), "--models", "onerec", *TINY, f"tokenizer.index={index}",
            "tokenizer.index_offset=-1"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    out = json.loads(results.read_text())
    assert out["protocol"]["index_sequences_checked"] == N_USERS and out["config"]["tokenizer"]["index"] == str(index)
    assert out["tokenizer"][0]["collision_rate"] == pytest.approx(2 / N_ITEMS)
    from onerec.pipeline import load_codes

    codes = load_codes(tmp_path / "runs" / "seed0")
    want = [[i % 4, i // 4, 0] for i in range(N_ITEMS)]
    want[1] = [0, 0, 1]  # S3Rec item 2 = LC-Rec item 1: shares item 0's ID, so collision code 1
    assert codes.tolist() == want
    # the wrong offset names the users file that does not match
    bad = bench_config("beauty", amazon_dir, overrides=[*TINY, f"tokenizer.index={index}"])
    stage_data(tmp_path / "bad", bad, progress=False)
    with pytest.raises(DataError, match=r"Beauty\.inter\.json.*another item sequence"):
        check_protocol(tmp_path / "bad", bad)


def test_real_beauty_letter_index_is_of_the_s3rec_items(datasets_dir, tmp_path):
    index = datasets_dir / "amazon2014_beauty_lcrec" / "Beauty.index.json"
    if not index.exists():
        pytest.skip(f"{index} not found")
    cfg = bench_config("beauty", datasets_dir, overrides=[f"tokenizer.index={index}", "tokenizer.index_offset=-1"])
    stage_data(tmp_path, cfg, progress=False)
    assert check_protocol(tmp_path, cfg)["index_sequences_checked"] == 22363


def test_onerec_prior_ranks_the_trained_generator_with_the_succession_prior(amazon_dir, tmp_path):
    """onerec_prior reuses the generator onerec trained (or, with --resume, a finished run's), chooses the prior
    weight on valid and scores test once; the weight is recorded with every weight's valid NDCG@10."""
    base = ["bench", "amazon", "--category", "beauty", "--datasets", str(amazon_dir), "--seeds", "0", *TINY]
    _, row = _bench_row(tmp_path, [*base, "--models", "onerec,onerec_prior"], "both", "onerec_prior")
    assert row["prior_weight"] in (0.5, 1.0, 2.0, 4.0, 8.0, 16.0) and row["prior_decay"] in (0.1, 0.5)
    assert len(row["valid_ndcg@10"]) == 12  # 6 weights x 2 rules
    chosen = f"window={row['prior_window']},decay={row['prior_decay']},weight={row['prior_weight']}"
    assert row["valid_ndcg@10"][chosen] == max(row["valid_ndcg@10"].values())
    assert all(0.0 <= row[m] <= 1.0 for m in METRICS)
    # alone, on the finished run: the same choice and test metrics
    _, again = _bench_row(tmp_path, [*base, "--models", "onerec_prior", "--resume"], "both", "onerec_prior")
    assert again["prior_weight"] == row["prior_weight"] and all(again[m] == row[m] for m in METRICS)
    # a configured weight is used as given (no choice)
    _, fixed = _bench_row(tmp_path, [*base, "--models", "onerec_prior", "--resume", "generate.succession_prior=3",
                                     "generate.succession_decay=0.3"], "both", "onerec_prior")
    assert fixed["prior_weight"] == 3.0 and list(fixed["valid_ndcg@10"]) == ["window=10,decay=0.3,weight=3.0"]
    res = CliRunner().invoke(cli, [*base, "--models", "onerec_prior", "--out", str(tmp_path / "fresh")])
    assert isinstance(res.exception, ConfigError) and "add onerec to --models" in str(res.exception)
    res = CliRunner().invoke(cli, [*base, "--models", "onerec_prior,onerec", "--out", str(tmp_path / "fresh")])
    assert isinstance(res.exception, ConfigError) and "list onerec first" in str(res.exception)


def test_resume_refuses_another_experiment_but_not_a_changed_default_it_never_reads(tmp_path):
    """--resume compares the saved config with the new one: a changed model or training field is another
    experiment (refused, naming the field); a section the benchmark never reads (serving, alignment,
    exploration, edge training) may differ, e.g. when onerec changed one of its defaults since the run began."""
    from onerec.bench.amazon import check_resumable
    from onerec.config import load_config, to_dict
    from onerec.io import write_yaml

    run = tmp_path / "seed0"
    run.mkdir()
    write_yaml(run / "config.yaml", to_dict(load_config(overrides=["edge.lr=0.01"])))
    check_resumable(run, load_config(overrides=["edge.lr=0.5", "align.method=dpo", "train.threads=2",
                                                 "generate.compile=aot"]))
    with pytest.raises(ConfigError, match=r"cannot resume.*train\.lr"):
        check_resumable(run, load_config(overrides=["train.lr=0.5"]))
