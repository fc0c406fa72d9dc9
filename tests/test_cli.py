"""The quickstart and every stage verb, end to end on the tiny preset (seconds)."""

import json

import pytest
from click.testing import CliRunner

from onerec.cli import cli


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    _ok(CliRunner().invoke(cli, ["quickstart", "--preset", "tiny", "--out", str(run)]))
    return run


def test_quickstart_writes_a_complete_run(quick_run):
    metrics = json.loads((quick_run / "metrics.json").read_text())
    assert set(metrics["models"]) == {"onerec", "popular", "sasrec"}
    for model in metrics["models"].values():
        for k in (1, 5, 10, 20):
            assert 0.0 <= model[f"recall@{k}"] <= 1.0 and 0.0 <= model[f"ndcg@{k}"] <= model[f"recall@{k}"] + 1e-9
    for path in ("config.yaml", "report.md", "plots/training.png", "plots/metrics.png", "train/model.safetensors",
                 "train/model.json", "tokenizer/codes.parquet", "data/split/test.parquet", "data/world/world.json"):
        assert (quick_run / path).exists(), path
    assert "plots/metrics.png" in (quick_run / "report.md").read_text()


def test_stage_verbs_rerun_on_the_run_directory(quick_run):
    runner = CliRunner()
    _ok(runner.invoke(cli, ["tokenize", str(quick_run), "tokenizer.iters=5"]))
    assert "iters: 5" in (quick_run / "config.yaml").read_text()
    _ok(runner.invoke(cli, ["train", str(quick_run), "train.max_steps=6", "train.checkpoint_every=3"]))
    _ok(runner.invoke(cli, ["train", str(quick_run), "--resume", "train.max_steps=9", "train.checkpoint_every=3"]))
    res = _ok(runner.invoke(cli, ["eval", str(quick_run), "eval.baselines=[popular]"]))
    assert "recall@10" in res.output
    res = _ok(runner.invoke(cli, ["eval", str(quick_run), "eval.baselines=[]", "generate.succession_prior=2"]))
    assert "recall@10" in res.output
    import pyarrow.parquet as pq

    user = pq.read_table(quick_run / "data" / "users.parquet")["raw_id"][0].as_py()
    res = _ok(runner.invoke(cli, ["generate", str(quick_run), "--user", user, "-k", "5"]))
    assert res.output.count("item ") == 5


def test_errors_are_one_clear_line(tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["train", str(tmp_path / "nowhere")], standalone_mode=False)
    assert res.exception is not None and "onerec tokenize" in str(res.exception)
    res = runner.invoke(cli, ["data", "--out", str(tmp_path / "r"), "train.lrr=1"], standalone_mode=False)
    assert "Did you mean 'train.lr'" in str(res.exception)


def test_every_verb_has_help():
    runner = CliRunner()
    for verb in ("data", "tokenize", "train", "eval", "generate", "quickstart", "config", "reward", "align"):
        res = _ok(runner.invoke(cli, [verb, "--help"]))
        assert "Usage" in res.output
