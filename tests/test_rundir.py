"""Run-directory integrity (:mod:`onerec.rundir`): stage folders appear whole or not at all, a stale or damaged
stage is refused with the command to rerun, a killed or failed stage leaves the run as it was."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onerec.config import load_config
from onerec.errors import CheckpointError, DataError
from onerec.pipeline import (
    load_codes,
    load_generator,
    recommend_users,
    stage_align,
    stage_data,
    stage_eval,
    stage_reward,
    stage_tokenize,
    stage_train,
)
from onerec.rundir import STAGE_INPUTS, fingerprint, read_manifest, recover, staged, staging_folder

TINY = ["train.max_steps=2", "eval.baselines=popular"]
STAGES = ("data", "tokenizer", "train", "eval")


def _cfg(*extra: str):
    return load_config(preset="tiny", overrides=[*TINY, *extra])


@pytest.fixture(scope="module")
def base(tmp_path_factory, one_thread) -> Path:
    """A tiny run with every stage of the quickstart."""
    run = tmp_path_factory.mktemp("rundir") / "run"
    cfg = _cfg()
    for stage in (stage_data, stage_tokenize, stage_train, stage_eval):
        stage(run, cfg, progress=False)
    return run


@pytest.fixture
def run(base, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(base, copy)
    return copy


def _fingerprints(run: Path) -> dict[str, str]:
    return {s: read_manifest(run / s)["fingerprint"] for s in STAGE_INPUTS if (run / s / "manifest.json").is_file()}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_stage_writes_a_manifest_of_its_files_and_inputs(base):
    for stage in STAGES:
        m = read_manifest(base / stage)
        assert m["stage"] == stage and set(m["inputs"]) == set(STAGE_INPUTS[stage])
        assert "config.yaml" in m["files"]  # the config the stage ran with
        assert fingerprint(base, stage) == m["fingerprint"]
    assert "checkpoints/" not in " ".join(read_manifest(base / "train")["files"])  # resume state is not output
    assert not any(p.name.endswith((".staging", ".old")) for p in base.iterdir())


def test_new_data_makes_the_later_stages_stale(run):
    stage_data(run, _cfg("data.sim.n_items=150"), progress=False)
    with pytest.raises(DataError, match=r"stage 'tokenizer' is stale.*another 'data'.*onerec tokenize"):
        stage_train(run, _cfg(), progress=False)
    with pytest.raises(DataError, match="onerec tokenize"):  # generate and serve load through the same check
        recommend_users(run, _cfg(), ["sim_u0"], 3)
    stage_tokenize(run, _cfg(), progress=False)
    with pytest.raises(DataError, match=r"stage 'train' is stale.*onerec train"):
        stage_eval(run, _cfg(), progress=False)
    stage_train(run, _cfg(), progress=False)
    stage_eval(run, _cfg(), progress=False)
    assert len(load_codes(run)) == 150


def test_a_changed_or_missing_file_names_the_stage_to_rerun(run):
    codes = run / "tokenizer" / "codes.parquet"
    codes.write_bytes(codes.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(DataError, match=r"tokenizer.*codes.parquet is not the one.*Fix: rerun `onerec tokenize"):
        stage_train(run, _cfg(), progress=False)
    codes.unlink()
    with pytest.raises(DataError, match=r"codes.parquet is missing"):
        stage_eval(run, _cfg(), progress=False)


def test_a_failed_stage_leaves_the_run_as_it_was(run):
    before = {s: _files(run / s) for s in STAGES}
    with pytest.raises(DataError, match="codebook_size"):  # fails after the content vectors are written
        stage_tokenize(run, _cfg("tokenizer.codebook_size=100000"), progress=False)
    with pytest.raises(DataError):
        stage_data(run, _cfg("data.source=parquet", f"data.path={run / 'nowhere'}"), progress=False)
    assert {s: _files(run / s) for s in STAGES} == before
    assert not staging_folder(run, "data").exists()
    stage_train(run, _cfg(), progress=False)  # the old run is still whole


def test_runs_written_before_manifests_are_read_until_a_stage_is_rewritten(run):
    for stage in STAGES:
        (run / stage / "manifest.json").unlink()
    stage_eval(run, _cfg(), progress=False)  # legacy data, tokenizer and train: accepted
    stage_data(run, _cfg(), progress=False)
    with pytest.raises(DataError, match=r"'tokenizer' is stale: it has no manifest.*'data' was rewritten"):
        stage_train(run, _cfg(), progress=False)


def test_recover_finishes_or_rolls_back_an_interrupted_swap(run):
    data_before = _files(run / "data")
    # killed between the two renames, after the new folder completed: the swap is finished
    new = staging_folder(run, "train")
    shutil.copytree(run / "train", new)
    (new / "extra.txt").write_text("new")
    os.replace(run / "train", run / "train.old")
    assert recover(run) == ["train: finished an interrupted swap"]
    assert (run / "train" / "extra.txt").read_text() == "new" and not (run / "train.old").exists()
    # killed between the renames with an unfinished staging folder (cannot happen, but): rolled back
    shutil.rmtree(run / "train")
    shutil.copytree(run / "data", run / "data.staging")
    (run / "data.staging" / "manifest.json").unlink()
    os.replace(run / "data", run / "data.old")
    out = recover(run)
    assert "data: rolled back an interrupted swap" in out and (run / "data" / "manifest.json").is_file()
    assert _files(run / "data") == data_before and not (run / "data.old").exists()
    assert not (run / "train").exists()  # nothing is made up for a stage that is gone


def test_orphaned_temporary_files_are_removed(run):
    old = run / "train" / ".model.safetensors.abc123.tmp"
    fresh = run / ".config.yaml.def456.tmp"  # a writer that may still be running
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    done = recover(run)
    assert not old.exists() and fresh.exists() and any("orphaned" in line for line in done)
    fingerprint(run, "train")  # temporary names are never part of a manifest


def test_staged_keeps_resume_state_of_a_failed_training_and_resumes_in_it(run):
    with pytest.raises(RuntimeError), staged(run, "train") as out:
        (out / "checkpoints").mkdir()
        raise RuntimeError("killed")
    assert (staging_folder(run, "train") / "checkpoints").is_dir()  # kept for --resume
    with pytest.raises(RuntimeError), staged(run, "eval") as out:
        raise RuntimeError("failed")
    assert not staging_folder(run, "eval").exists()


def test_a_crafted_model_json_is_refused_before_allocating(run):
    meta_path = run / "train" / "model.json"
    meta = json.loads(meta_path.read_text())
    d_model = meta["model"]["d_model"]
    meta["model"]["d_model"] = 1 << 16  # a ~100 GB model if it were built
    meta_path.write_text(json.dumps(meta))
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"model.safetensors: key .* but .*model.json describes"):
        load_generator(run)
    assert time.perf_counter() - t0 < 5
    meta["model"]["d_model"] = d_model
    meta["codebook_sizes"] = [2] * len(meta["codebook_sizes"])
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"model.json.*codebook_sizes\[0\] = 2 does not cover"):
        load_generator(run, codes=load_codes(run))


# ------------------------------------------------------------------ kill -9 at any point
def _onerec(*args: str) -> list[str]:
    return [sys.executable, "-m", "onerec", *map(str, args)]


def _check_old_or_new(run: Path, old: dict[str, str], killed: str) -> str:
    """After a kill of ``killed``: its folder is the old one or a whole new one, every other stage is as it was,
    and a stage made from a new one is refused (never read as if it matched)."""
    recover(run)
    assert not any(p.name.endswith(".old") for p in run.iterdir())
    now = fingerprint(run, killed)
    for stage in old:
        if stage != killed:
            assert read_manifest(run / stage)["fingerprint"] == old[stage]
    if now == old[killed]:
        for stage in old:
            fingerprint(run, stage)
        return "old"
    for stage in old:
        if killed in STAGE_INPUTS[stage]:
            with pytest.raises(DataError, match="is stale"):
                fingerprint(run, stage)
    return "new"


REWARD = ("reward.ablations=false", "reward.epochs=1")
ALIGN = ("align.users_per_iter=64", "align.steps_per_iter=4", "align.eval_users=50", "align.beam_size=8")


@pytest.fixture(scope="module")
def base_aligned(base, tmp_path_factory) -> Path:
    """:func:`base` with the reward and align stages (small settings)."""
    run = tmp_path_factory.mktemp("rundir-aligned") / "run"
    shutil.copytree(base, run)
    stage_reward(run, _cfg(*REWARD), progress=False)
    stage_align(run, _cfg(*REWARD, *ALIGN), progress=False)
    return run


KILLS = [
    ("data", ("data", "--out", "{run}", "data.sim.n_items=150", "data.sim.seed=5"), (0.55, 0.8, 0.95)),
    ("tokenizer", ("tokenize", "{run}", "tokenizer.seed=7"), (0.55, 0.8, 0.95)),
    ("train", ("train", "{run}", "train.max_steps=6", "train.seed=3"), (0.55, 0.8, 0.95)),
    ("eval", ("eval", "{run}", "eval.ks=5,10"), (0.55, 0.8, 0.95)),
    ("reward", ("reward", "{run}", *REWARD, "reward.seed=4"), (0.6, 0.9)),
    ("align", ("align", "{run}", *REWARD, *ALIGN, "align.seed=5"), (0.6, 0.9)),
]


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "args", "fractions"), KILLS, ids=[k[0] for k in KILLS])
def test_a_stage_killed_at_any_point_leaves_the_old_run_or_the_new(request, tmp_path, stage, args, fractions):
    base = request.getfixturevalue("base_aligned" if stage in ("reward", "align") else "base")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    old = _fingerprints(base)

    def start(name: str) -> tuple[Path, subprocess.Popen, float]:
        run = tmp_path / name
        shutil.copytree(base, run)
        cmd = _onerec(*(a.format(run=run) for a in args))
        return run, subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), \
            time.perf_counter()

    run, proc, t0 = start("whole")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    seconds = time.perf_counter() - t0
    assert _check_old_or_new(run, old, stage) == "new"
    for i, frac in enumerate(fractions):
        run, proc, _ = start(f"killed{i}")
        time.sleep(seconds * frac)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        _check_old_or_new(run, old, stage)


def test_every_rerun_hint_is_a_command_that_parses(tmp_path):
    """The fix a stale or missing stage names (:func:`onerec.rundir.command`) is a command the CLI accepts as
    written (`onerec data` needs --out, the other verbs the run directory)."""
    import shlex

    import click

    from onerec.cli import cli
    from onerec.rundir import command

    for stage in STAGE_INPUTS:
        argv = shlex.split(command(stage, tmp_path / "run"))
        assert argv[0] == "onerec"
        verb = cli.get_command(click.Context(cli), argv[1])
        assert verb is not None, argv
        verb.make_context(argv[1], argv[2:])  # raises a UsageError for a missing option or argument
