"""Training on several processes (torch.distributed, gloo, 2 CPU processes): DDP and FSDP2 give the one-process
loss curve at the same global batch, resuming across world sizes continues the curve, only rank 0 writes files
(FSDP: plus each rank's checkpoint shard), and a rank killed under torchrun stops the job naming it while
``--resume`` recovers.

Tolerance: the runs differ only in how float32 sums are grouped (two ranks' mean gradients averaged instead of
one mean over the whole batch), a relative error of ~1e-7 per step that training can amplify; over 10 steps of a
tiny model the curves agree to ~1e-6, and 1e-4 (relative) leaves room for other CPUs' kernels while still failing
on any real difference (a wrong shard, a missing sync or a mis-scaled loss moves the loss by 1e-2 or more)."""

from __future__ import annotations

import faulthandler
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from onerec.config import ModelConfig, TrainConfig
from onerec.features import HistoryFeaturizer, SequenceExamples, TrainExamples
from onerec.model import build_generator
from onerec.model.generator import Generator
from onerec.train import train_generator
from onerec.train.checkpoint import model_meta
from onerec.train.distributed import process_group

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="this torch build has no torch.distributed")

RTOL = 1e-4
MODEL = ModelConfig(d_model=32, n_heads=2, enc_layers=1, dec_layers=2, max_history=8, dropout=0.0, moe_experts=4,
                    moe_top_k=2)  # MoE: its routing biases must stay equal across the ranks
SIZES = [8, 5]


def _examples(model: ModelConfig) -> TrainExamples | SequenceExamples:
    """The cyclic dataset's training examples: per prefix, or (a lazy model) whole sequences (every position)."""
    from conftest import cyclic_dataset
    from onerec.data.splits import make_splits

    ds = cyclic_dataset()
    splits = make_splits(ds, protocol="loo")
    codes = np.stack([np.arange(ds.n_items) // 5, np.arange(ds.n_items) % 5], axis=1)
    np.random.default_rng(0).shuffle(codes)
    kind = SequenceExamples if model.arch == "lazy" else TrainExamples
    return kind(splits["train"], HistoryFeaturizer(codes, model.max_history))


def _cfg(batch_size: int, **kw) -> TrainConfig:
    return TrainConfig(batch_size=batch_size, lr=3e-3, warmup_steps=2, checkpoint_every=5, device="cpu", threads=1,
                       **{"max_steps": 10, "logger": "none", **kw})


def _train(out: Path, cfg: TrainConfig, model: ModelConfig | None = None, **kw):
    model = model or MODEL
    torch.manual_seed(0)
    return train_generator(build_generator(model, SIZES), _examples(model), cfg, out, meta=model_meta(model, SIZES),
                           progress=False, **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_ranks(fn, *args) -> None:
    """``mp.spawn(fn, args=(2, port, *args), nprocs=2)`` with the job's store hosted here, as torchrun's agent
    hosts it (``TORCHELASTIC_USE_AGENT_STORE``: every rank a client), not in rank 0, whose exit would take the
    store away from a rank still leaving the group."""
    port = _free_port()
    store = dist.TCPStore("127.0.0.1", port, world_size=2, is_master=True, wait_for_workers=False)
    try:
        mp.spawn(fn, args=(2, port, *args), nprocs=2)
    finally:
        del store


def _worker(rank: int, world: int, port: int, out: str, cfg: TrainConfig, kw: dict) -> None:
    """One rank: join the job, train, and report (rank 0: the loss curve; rank 1: every file it wrote)."""
    faulthandler.enable(all_threads=True)  # a rank that aborts (SIGABRT) prints where its threads were
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), TORCHELASTIC_USE_AGENT_STORE="True")
    written: list[str] = []
    recording = [True]

    def audit(event: str, args: tuple) -> None:  # every file this process opens for writing, makes or moves
        if not recording[0]:
            return
        if event == "open" and len(args) >= 3:
            path, mode, flags = args[0], args[1], args[2]
            writes = (mode and any(c in str(mode) for c in "wax+")) or \
                (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writes and str(path).startswith(out):
                written.append(str(path))
        elif event in ("os.rename", "os.mkdir", "os.remove", "shutil.rmtree") and str(args[0]).startswith(out):
            written.append(f"{event} {args[0]}")

    sys.addaudithook(audit)
    with process_group("cpu"):  # the product's join and leave (a barrier, then destroy)
        result = _train(Path(out), cfg, **kw)
    recording[0] = False
    if rank == 0:
        Path(out, "loss.json").write_text(json.dumps(result.loss))
    else:
        Path(out, "rank1-writes.json").write_text(json.dumps(written))


def _no_scoring(model) -> float:
    raise AssertionError("valid scoring under fsdp: train.early_stop_metric should not apply there")


def _spawn(out: Path, cfg: TrainConfig, **kw) -> tuple[list[float], list[str]]:
    _spawn_ranks(_worker, str(out), cfg, kw)
    return json.loads((out / "loss.json").read_text()), json.loads((out / "rank1-writes.json").read_text())


def test_ddp_and_fsdp_give_the_one_process_curve(tmp_path):
    """Global batch 32: one process x 32, one process x 16 x grad_accum 2 (dense forward path, no MoE difference
    here since the routing counts each micro-batch), two processes x 16 under DDP and under FSDP."""
    one = _train(tmp_path / "one", _cfg(32))
    ddp, ddp_writes = _spawn(tmp_path / "ddp", _cfg(16, strategy="ddp"))
    # early_stop_metric (the default) with fsdp: no selection (no valid scoring), the last weights, a note
    fsdp, fsdp_writes = _spawn(tmp_path / "fsdp", _cfg(16, strategy="fsdp", early_stop_metric="ndcg@10"),
                               score_valid=_no_scoring)
    np.testing.assert_allclose(ddp, one.loss, rtol=RTOL)
    np.testing.assert_allclose(fsdp, one.loss, rtol=RTOL)
    # the exported model is one whole model.safetensors either way, with the one process's weights
    from safetensors.torch import load_file

    ref = load_file(str(tmp_path / "one" / "model.safetensors"))
    torch.manual_seed(0)
    init = Generator(MODEL, SIZES).state_dict()
    assert max(float((ref[k] - init[k]).abs().max()) for k in ref) > 1e-3  # it trained: not two idle models
    for name in ("ddp", "fsdp"):
        got = load_file(str(tmp_path / name / "model.safetensors"))
        assert set(got) == set(ref)
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-3, atol=1e-4)
    assert (tmp_path / "fsdp" / "checkpoints" / "step-0000010" / "sharded").is_dir()
    # rank 1 wrote nothing under DDP, and only its own checkpoint shards under FSDP
    assert ddp_writes == []
    shard = re.compile(r"\.tmp/sharded(/shard-[^/]*\.safetensors)?$")
    assert fsdp_writes and all(shard.search(w) for w in fsdp_writes), fsdp_writes


def test_lazy_every_position_under_fsdp_gives_the_one_process_curve(tmp_path):
    """OneRec-V2's lazy decoder trained on every position (sequence batches: targets per row vary, so the loss
    weights count targets, not rows), sharded by FSDP over 2 processes."""
    lazy = ModelConfig(**{**vars(MODEL), "arch": "lazy", "moe_experts": 0})
    one = _train(tmp_path / "one", _cfg(32), model=lazy)
    fsdp, _ = _spawn(tmp_path / "fsdp", _cfg(16, strategy="fsdp"), model=lazy)
    np.testing.assert_allclose(fsdp, one.loss, rtol=RTOL)


def test_grad_accum_is_the_larger_batch(tmp_path):
    """One process: 2 micro-batches of 16 accumulated make the step of one batch of 32 (a dense model: an MoE's
    routing bias moves once per forward, so there the two differ by design)."""
    global MODEL
    dense, MODEL = MODEL, ModelConfig(d_model=32, n_heads=2, enc_layers=1, dec_layers=1, max_history=8, dropout=0.0)
    try:
        one = _train(tmp_path / "one", _cfg(32))
        acc = _train(tmp_path / "acc", _cfg(16, grad_accum=2))
    finally:
        MODEL = dense
    np.testing.assert_allclose(acc.loss, one.loss, rtol=RTOL)


def test_resume_across_world_sizes(tmp_path):
    """FSDP on 2 processes stopped at step 5 and resumed on 1 process; 1 process stopped at 5 and resumed under FSDP
    on 2: both continue the uninterrupted one-process curve."""
    full = _train(tmp_path / "full", _cfg(32))
    _spawn(tmp_path / "two-one", _cfg(16, strategy="fsdp"), stop_at=5)
    assert (tmp_path / "two-one" / "checkpoints" / "step-0000005" / "sharded").is_dir()
    resumed = _train(tmp_path / "two-one", _cfg(32), resume=True)
    np.testing.assert_allclose(resumed.loss, full.loss, rtol=RTOL)

    _train(tmp_path / "one-two", _cfg(32), stop_at=5)
    loss, _ = _spawn(tmp_path / "one-two", _cfg(16, strategy="fsdp"), resume=True)
    np.testing.assert_allclose(loss, full.loss, rtol=RTOL)


def test_resume_refuses_another_global_batch(tmp_path):
    from onerec.errors import CheckpointError

    _train(tmp_path, _cfg(32), stop_at=5)
    with pytest.raises(CheckpointError, match=r"32 examples per optimizer step.*takes 16.*Fix: keep the global batch"):
        _train(tmp_path, _cfg(16), resume=True)


# ------------------------------------------------------------------------------------------------ torchrun, end to end
def _torchrun(run: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             f"--master_port={_free_port()}", "-m", "onerec", "train", str(run), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)


def _workers(pid: int) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            rank = [e for e in env if e.startswith(b"RANK=")]
            if rank:
                found[int(rank[0][5:])] = int(child)
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finding torchrun's workers reads /proc (Linux)")
def test_torchrun_rank_killed_then_resumed(tmp_path):
    from click.testing import CliRunner

    from onerec.cli import cli

    run = tmp_path / "run"
    for args in (["data", "--out", str(run), "--preset", "tiny"], ["tokenize", str(run)]):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, res.output
    keys = ["train.checkpoint_every=5", "train.logger=none", "train.strategy=fsdp"]
    job = _torchrun(run, "train.max_steps=300", *keys)
    deadline = time.time() + 120
    while not list((run / "train.staging" / "checkpoints").glob("step-0000010")) and time.time() < deadline:
        assert job.poll() is None, job.communicate()[0]
        time.sleep(0.05)
    os.kill(_workers(job.pid)[1], signal.SIGKILL)
    out, _ = job.communicate(timeout=120)
    assert job.returncode != 0
    assert re.search(r"Root Cause.*?rank\s*:\s*1 ", out, re.S), out[-2000:]  # torchrun names the dead rank
    assert not (run / "train").exists()  # nothing half-written took RUN/train's place

    job = _torchrun(run, "--resume", "train.max_steps=40", *keys)
    out, _ = job.communicate(timeout=300)
    assert job.returncode == 0, out[-3000:]
    history = json.loads((run / "train" / "history.json").read_text())
    assert history["steps"] == list(range(1, 41))  # the killed part's steps, then the resumed ones
    assert (run / "train" / "model.safetensors").is_file() and (run / "train" / "metrics.json").is_file()


# -------------------------------------------------------------------------------------------- memory and speed options
@pytest.mark.parametrize("arch", ["encdec", "lazy"])
def test_activation_checkpointing_keeps_the_curve(tmp_path, arch):
    """Recomputing every block's activations in backward changes memory, not the arithmetic (MoE included: the
    recomputed forward does not nudge the routing bias a second time)."""
    global MODEL
    base = MODEL
    MODEL = ModelConfig(**{**vars(base), "arch": arch})
    try:
        plain = _train(tmp_path / "plain", _cfg(32))
        ckpt = _train(tmp_path / "ckpt", _cfg(32, activation_checkpointing=True))
    finally:
        MODEL = base
    np.testing.assert_allclose(ckpt.loss, plain.loss, rtol=RTOL)


def test_compiled_training_keeps_the_curve(tmp_path):
    try:
        torch.compile(lambda x: x + 1)(torch.ones(2))
    except Exception as e:  # no C++ compiler for inductor, or no inductor on this platform
        pytest.skip(f"torch.compile unavailable here: {str(e).splitlines()[0][:200]}")
    global MODEL
    base = MODEL
    MODEL = ModelConfig(**{**vars(base), "moe_experts": 0})  # dense: compiling the MoE's routing takes long
    try:
        plain = _train(tmp_path / "plain", _cfg(32, max_steps=3))
        compiled = _train(tmp_path / "compiled", _cfg(32, max_steps=3, compile=True))
    finally:
        MODEL = base
    np.testing.assert_allclose(compiled.loss, plain.loss, rtol=1e-3)  # inductor fuses: float sums regrouped


# ------------------------------------------------------------------------------------------------ reward and alignment
TINY = ["data.sim.n_users=200", "data.sim.n_items=150", "data.sim.n_events=10000", "train.max_steps=20",
        "train.threads=1", "reward.epochs=1", "reward.ablations=false", "align.iterations=1", "align.users_per_iter=24",
        "align.steps_per_iter=2", "align.batch_users=8", "align.beam_size=6", "align.eval_users=20",
        "generate.beam_size=8"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny simulated run with data and tokenizer (tests copy it before writing to it)."""
    from click.testing import CliRunner

    from onerec.cli import cli

    run = tmp_path_factory.mktemp("dist") / "run"
    for args in (["data", "--out", str(run), "--preset", "tiny", *TINY], ["tokenize", str(run)]):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, res.output + repr(res.exception)
    return run


def _cli(*args: str) -> None:
    from click.testing import CliRunner

    from onerec.cli import cli

    res = CliRunner().invoke(cli, list(args))
    assert res.exit_code == 0, res.output + repr(res.exception)


def _torchrun_ok(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={_free_port()}", "-m", "onerec", *args], env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="runs torchrun (Linux)")
def test_torchrun_early_stopping_and_eval_score_the_users_in_shares(tiny_run, tmp_path):
    """With train.early_stop_metric each process beam-searches a share of the valid users; the combined score,
    the selected epoch and the curve are one process's at the same global batch. `onerec eval` likewise."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    keys = ["train.max_steps=null", "train.epochs=3", "train.early_stop_metric=ndcg@10", "train.valid_users=80",
            "model.dropout=0", "train.logger=none"]
    _cli("train", str(run), *keys, "train.batch_size=256")
    one = json.loads((run / "train" / "metrics.json").read_text())
    _torchrun_ok("train", str(run), *keys, "train.batch_size=128")
    two = json.loads((run / "train" / "metrics.json").read_text())
    assert [r["epoch"] for r in two["valid_curve"]] == [r["epoch"] for r in one["valid_curve"]] == [1, 2, 3]
    np.testing.assert_allclose([r["ndcg@10"] for r in two["valid_curve"]], [r["ndcg@10"] for r in one["valid_curve"]],
                               atol=1e-6)
    assert two["best_epoch"] == one["best_epoch"]
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=RTOL)

    # evaluation: every process beam-searches a share of the test users; the means are one process's
    _cli("eval", str(run), "eval.baselines=[popular]")
    single = json.loads((run / "metrics.json").read_text())["models"]
    _torchrun_ok("eval", str(run), "eval.baselines=[popular]")
    shared = json.loads((run / "metrics.json").read_text())["models"]
    assert shared["onerec"]["n_users"] == single["onerec"]["n_users"] > 0
    for key, value in single["onerec"].items():
        assert shared["onerec"][key] == pytest.approx(value, abs=1e-9), key
    assert shared["popular"] == single["popular"]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="runs torchrun (Linux)")
def test_torchrun_reward_and_align(tiny_run, tmp_path):
    """The same launcher trains the reward model data-parallel (2 processes x 256 give the one process x 512
    result) and aligns the generator data-parallel (each process rolls out a share of each round's users)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    _cli("train", str(run))
    _cli("reward", str(run), "reward.batch_size=512")
    one = json.loads((run / "reward" / "metrics.json").read_text())["models"]["pscore"]
    _torchrun_ok("reward", str(run), "reward.batch_size=256")
    two = json.loads((run / "reward" / "metrics.json").read_text())["models"]["pscore"]
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=RTOL)
    assert two["click"]["auc"] == pytest.approx(one["click"]["auc"], abs=1e-4)

    _torchrun_ok("align", str(run), "align.method=ecpo")
    metrics = json.loads((run / "align" / "metrics.json").read_text())
    assert metrics["method"] == "ecpo" and len(metrics["history"]) == 1 and "after" in metrics
    assert (run / "align" / "model.safetensors").is_file()


def test_average_gradients_is_the_mean_over_processes(tmp_path):
    _spawn_ranks(_average_worker, str(tmp_path))
    from safetensors.torch import load_file

    got = [load_file(str(tmp_path / f"grad{r}.safetensors")) for r in range(2)]
    torch.testing.assert_close(got[0], got[1])
    torch.testing.assert_close(got[0]["w"], torch.tensor([2.0, 3.0]))  # mean of (1, 2) and (3, 4)
    torch.testing.assert_close(got[0]["b"], torch.tensor([0.5]))  # rank 0 had no gradient: it counts as zero


def _average_worker(rank: int, world: int, port: int, out: str) -> None:
    from onerec.align.loop import average_gradients

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      TORCHELASTIC_USE_AGENT_STORE="True")
    with process_group("cpu"):
        model = torch.nn.Module()
        model.w = torch.nn.Parameter(torch.zeros(2))
        model.b = torch.nn.Parameter(torch.zeros(1))
        model.w.grad = torch.tensor([1.0, 2.0]) if rank == 0 else torch.tensor([3.0, 4.0])
        model.b.grad = None if rank == 0 else torch.tensor([1.0])
        average_gradients(model)
        from safetensors.torch import save_file

        save_file({"w": model.w.grad, "b": model.b.grad}, str(Path(out) / f"grad{rank}.safetensors"))
