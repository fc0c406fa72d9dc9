"""Shared by the `onerec edge` command's tests: a tiny simulated run with its data stage only."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from onerec.cli import cli


@pytest.fixture(scope="session")
def data_run(tmp_path_factory):
    """A tiny simulated run with its data stage only (the tiny preset's generator in its config); copy it before
    writing into it."""
    run = tmp_path_factory.mktemp("edge") / "run"
    sim = ["data.sim.n_users=120", "data.sim.n_items=60", "data.sim.n_events=3000", "data.sim.calib_pairs=2000",
           "data.sim.n_topics=6"]
    res = CliRunner().invoke(cli, ["data", "--out", str(run), "--preset", "tiny", *sim])
    assert res.exit_code == 0, res.output
    return run
