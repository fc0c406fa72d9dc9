"""`onerec edge RUN` on a tiny simulated run, with SASRec and with the generator; bad settings and a missing
stage stop with the key or the command named."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
from click.testing import CliRunner

from onerec.cli import cli
from onerec.config import load_config
from onerec.edge.simulate import check_settings
from onerec.edge.stage import settings_from
from onerec.errors import ConfigError
from onerec.io import read_json
from onerec.pipeline import run_config

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["edge.n_devices=8", "edge.group_size=4", "edge.periods=[2,4]", "edge.local_steps=4", "edge.eval_every=4",
         "edge.min_users=8", "edge.n_clusters=3", "eval.sasrec.d_model=8", "eval.sasrec.n_layers=1",
         "eval.sasrec.max_len=8", "train.threads=1"]  # stage_edge sets train.threads: tiny models, busy cores


@pytest.mark.slow  # trains SASRec under 3 schemes on 8 devices: a few seconds
def test_cli_edge_runs_on_a_simulated_run(data_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(data_run, run)
    runner = CliRunner()
    res = runner.invoke(cli, ["edge", str(run), "edge.schemes=[etree,fedavg,local]", *SMALL])
    assert res.exit_code == 0, res.output
    metrics = read_json(run / "edge" / "metrics.json")
    assert set(metrics["schemes"]) == {"etree", "fedavg", "local"}
    assert metrics["model"] == "sasrec" and metrics["model_config"]["d_model"] == 8
    assert metrics["mode"] == "simulation" and metrics["settings"]["lr"] == 1e-2  # edge.lr null: SASRec's 1e-2
    assert metrics["schemes"]["local"]["final"]["bytes"] == 0 and metrics["schemes"]["fedavg"]["final"]["bytes"] > 0
    assert "edge (sasrec on every device): ndcg@10" in res.output
    res = runner.invoke(cli, ["edge", str(run), *SMALL, "edge.schemes=[etree,fedprox]"])
    assert res.exit_code != 0 and "edge.schemes" in str(res.exception or res.output)
    res = runner.invoke(cli, ["edge", str(run), *SMALL, "edge.periods=[3,4]"])
    assert res.exit_code != 0 and "edge.periods" in str(res.exception or res.output)


def test_cli_edge_generator_without_semantic_ids_names_the_tokenize_command(data_run):
    res = CliRunner().invoke(cli, ["edge", str(data_run), *SMALL, "edge.model=generator"])
    message = str(res.exception)
    assert res.exit_code != 0 and str(data_run / "tokenizer") in message
    assert f"onerec tokenize {data_run}" in message and "edge.model=sasrec" in message
    assert not (data_run / "edge.staging").exists()


@pytest.mark.slow  # tokenizes, then trains the tiny generator under 5 schemes on 8 devices: ~10 s
def test_cli_edge_trains_the_generator(data_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(data_run, run)
    runner = CliRunner()
    res = runner.invoke(cli, ["tokenize", str(run)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["edge", str(run), *SMALL, "edge.model=generator", "edge.batch_size=8"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    metrics = read_json(run / "edge" / "metrics.json")
    assert metrics["model"] == "generator" and metrics["settings"]["model"] == "generator"
    assert metrics["model_config"] == dataclasses.asdict(run_config(run).model)
    assert metrics["settings"]["lr"] == run_config(run).train.lr  # edge.lr null: the generator's train.lr
    assert set(metrics["schemes"]) == {"etree", "fedavg", "gossip", "local", "central"}
    for name, scheme in metrics["schemes"].items():
        final = scheme["final"]
        assert 0.0 <= final["ndcg@10"] <= final["recall@10"] <= 1.0, name
        assert final["step"] == 4 and (final["bytes"] > 0) == (name in ("etree", "fedavg", "gossip")), name
    assert "edge (generator on every device): ndcg@10" in res.output


def test_edge_lr_defaults_to_the_models_own() -> None:
    cfg = load_config(preset="tiny")
    assert cfg.edge.lr is None and settings_from(cfg).lr == 1e-2  # SASRec: the edge studies' rate
    assert settings_from(load_config(preset="tiny", overrides=["edge.model=generator"])).lr == cfg.train.lr
    assert settings_from(load_config(preset="tiny", overrides=["edge.model=generator", "edge.lr=0.05"])).lr == 0.05


def test_edge_public_nodes_reach_the_settings_and_are_checked() -> None:
    assert settings_from(load_config(preset="tiny", overrides=["edge.public_nodes=2"])).public_nodes == 2
    bad = settings_from(load_config(preset="tiny", overrides=["edge.public_nodes=1", "edge.server_lr=0.05"]))
    with pytest.raises(ConfigError, match=r"edge\.public_nodes with edge\.server_lr"):
        check_settings(bad, "etree")
