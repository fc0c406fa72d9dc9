"""`onerec edge RUN` on a tiny simulated run; bad settings stop with the key named."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from onerec.cli import cli
from onerec.io import read_json

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow  # simulates a world and trains 3 schemes: ~10 s alone, ~50 s on a busy 2-core machine
def test_cli_edge_runs_on_a_simulated_run(tmp_path):
    run = tmp_path / "run"
    runner = CliRunner()
    sim = ["data.sim.n_users=120", "data.sim.n_items=60", "data.sim.n_events=3000", "data.sim.calib_pairs=2000",
           "data.sim.n_topics=6"]
    res = runner.invoke(cli, ["data", "--out", str(run), "--preset", "tiny", *sim])
    assert res.exit_code == 0, res.output
    small = ["edge.n_devices=8", "edge.group_size=4", "edge.periods=[2,4]", "edge.local_steps=4",
             "edge.eval_every=4", "edge.min_users=8", "edge.n_clusters=3", "eval.sasrec.d_model=8",
             "eval.sasrec.n_layers=1", "eval.sasrec.max_len=8"]
    res = runner.invoke(cli, ["edge", str(run), "edge.schemes=[etree,fedavg,local]", *small])
    assert res.exit_code == 0, res.output
    metrics = read_json(run / "edge" / "metrics.json")
    assert set(metrics["schemes"]) == {"etree", "fedavg", "local"}
    assert metrics["schemes"]["local"]["final"]["bytes"] == 0 and metrics["schemes"]["fedavg"]["final"]["bytes"] > 0
    assert "edge: ndcg@10" in res.output
    res = runner.invoke(cli, ["edge", str(run), *small, "edge.schemes=[etree,fedprox]"])
    assert res.exit_code != 0 and "edge.schemes" in str(res.exception or res.output)
    res = runner.invoke(cli, ["edge", str(run), *small, "edge.periods=[3,4]"])
    assert res.exit_code != 0 and "edge.periods" in str(res.exception or res.output)
