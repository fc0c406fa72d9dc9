"""Next-token pretraining of the generator: AdamW, warm-up + cosine, resumable checkpoints.

The order of examples is a pure function of (seed, epoch), and every checkpoint stores the
optimizer moments and the torch RNG state, so a run resumed from a checkpoint reproduces the
loss curve of the uninterrupted run step for step (see tests/train/test_resume.py).

Model selection on the valid split (``train.early_stop_metric``: NDCG@10 by default, off in the quickstart
and tiny presets; not with fsdp, whose sharded weights are not beam-searched per epoch): after every
epoch a caller-supplied ``score_valid(model) -> float`` (the eval harness: beam search, full ranking,
see :func:`onerec.pipeline.valid_scorer`) scores the model; the best epoch's weights are kept and
written as the final model, and training stops after ``train.patience`` epochs without improvement.
``train.time_budget_s`` stops a run early on wall time (counted over
every resumed part). Each checkpoint also stores the best weights so far (``best.safetensors``);
with the valid history it already holds, that restores the selection (best score, epochs since), so a
run stopped and resumed, e.g. across machine sessions, keeps the same epoch and weights as the
uninterrupted run.

``train.ema_decay`` keeps an exponential moving average of the weights (torch's
``AveragedModel``), updated after every optimizer step; validation loss, the valid score and the
saved model then use the average, while the optimizer keeps training the raw weights. Checkpoints
store the average, so a resumed run continues it exactly.

Several processes (``torchrun --nproc_per_node=N -m onerec train RUN``): ``train.strategy`` wraps the model in
DDP or shards it with FSDP2, each rank trains on its share of every global batch (``train.batch_size x world x
train.grad_accum`` examples) and the loss curve is the one process's at the same global batch; see
:mod:`onerec.train.distributed`. Only rank 0 writes files, except FSDP's sharded checkpoints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from onerec.config import TrainConfig, check_choices, to_dict
from onerec.errors import CheckpointError, ConfigError
from onerec.features.history import EvalExamples, SequenceExamples, TrainExamples
from onerec.io import read_json, whole_folders, write_json
from onerec.model.generator import Generator
from onerec.threads import set_threads
from onerec.train import distributed
from onerec.train.checkpoint import (
    latest_checkpoint,
    load_selection,
    load_training_checkpoint,
    save_training_checkpoint,
    save_weights,
)
from onerec.train.distributed import Dist, resolve_device, unwrap
from onerec.train.logger import ScalarLogger

__all__ = ["TrainResult", "lr_at", "resolve_device", "to_device", "train_generator", "validation_loss"]


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to 10% of it."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@dataclass
class TrainResult:
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    valid: list[dict[str, float]] = field(default_factory=list)  # {"step", "epoch", "loss"}
    seconds: float = 0.0
    # MoE models: every log_every steps, the share of tokens each expert got, per MoE layer
    expert_load: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: float | None = None  # epoch whose weights were kept (early stopping only)
    stopped: str | None = None  # why training ended before its planned steps: "patience" | "time_budget"

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "loss": self.loss, "valid": self.valid, "seconds": self.seconds,
                "expert_load": self.expert_load, "best_epoch": self.best_epoch, "stopped": self.stopped}


@torch.no_grad()
def validation_loss(model: Generator, examples: EvalExamples, device: torch.device, *, batch_size: int = 512,
                    limit: int = 2000, d: Dist | None = None) -> float:
    """The mean next-item loss over the first ``limit`` examples; in a job of several processes each rank scores
    a contiguous share and the sums are gathered (every rank runs the same number of forwards, as FSDP needs)."""
    d = d or distributed.current()
    model.eval()
    n = min(len(examples), limit)
    per = math.ceil(n / d.world)
    lo, hi = d.rank * per, min(n, (d.rank + 1) * per)
    total, count = 0.0, 0
    for start in range(0, per, batch_size):
        idx = np.arange(lo + start, min(hi, lo + start + batch_size))
        real = len(idx)
        loss = model(to_device(examples.batch(idx if real else np.arange(1), with_target=True), device))
        total += float(loss) * real
        count += real
    total, count = d.sum([total, count])
    model.train()
    return total / max(count, 1)


def train_generator(
    model: Generator,
    train: TrainExamples | SequenceExamples,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    meta: dict[str, Any],
    valid: EvalExamples | None = None,
    resume: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
    score_valid: Callable[[Generator], float] | None = None,
    log: Callable[[str], None] | None = None,
    logger: ScalarLogger | None = None,
) -> TrainResult:
    """Train ``model`` on ``train`` and write ``out_dir/{model.safetensors, model.json, history.json}``.

    Args:
        meta: written to model.json (model config, codebook sizes); a resumed checkpoint must match it.
        resume: continue from the latest checkpoint in ``out_dir/checkpoints``.
        stop_at: stop after this global step (used to test resuming); the run is left resumable.
        score_valid: with ``cfg.early_stop_metric``, scores the model on the valid split after each
            epoch (higher is better); the best epoch's weights become the saved model.
        logger: receives the scalars to watch live (:mod:`onerec.train.logger`): every ``cfg.log_every`` steps
            ``train/loss``, ``train/lr``, ``train/steps_per_s``, ``train/examples_per_s`` (on a GPU
            ``train/gpu_peak_gib``) and the MoE layers'
            ``moe/<layer>/max_share``; every epoch ``valid/loss`` and the valid metric. The caller closes it.
    """
    out_dir = Path(out_dir)
    d = distributed.current()
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    check_choices(cfg, "train.")
    strategy = distributed.resolve_strategy(cfg.strategy, model, d.world)
    _check_config(cfg, strategy)
    if strategy == "fsdp" and cfg.early_stop_metric is not None:
        # on by default; sharded weights are not beam-searched per epoch, so fsdp trains without selection
        if d.main:
            print(f"note: train.early_stop_metric={cfg.early_stop_metric} does not apply with train.strategy=fsdp "
                  "(sharded weights): every planned epoch runs and the last weights are kept. Set "
                  "train.strategy=ddp to select on valid, or train.early_stop_metric=null to silence this note",
                  flush=True)
        cfg = replace(cfg, early_stop_metric=None)
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    average = None
    if cfg.ema_decay is not None:  # a copy of the plain model, before checkpointing, compiling or sharding it
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        # buffers too: an MoE layer's routing bias is part of the function the average computes
        average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    if cfg.activation_checkpointing:
        distributed.checkpoint_activations(model)
    if cfg.compile:
        model.compile()
    net = distributed.wrap(model, strategy, device, fsdp_bf16=cfg.fsdp_mixed_precision == "bf16",
                           reshard_after_forward=cfg.fsdp_reshard_after_forward)
    sharded = strategy == "fsdp"
    if d.world > 1:  # each rank its own dropout stream (rank 0 keeps the one process's)
        torch.manual_seed(cfg.seed + 1_000_003 * d.rank)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    bf16 = cfg.precision == "bf16"
    scored = model if average is None else average.module  # the weights validation and selection see
    n = len(train)
    if n == 0:
        raise CheckpointError("no training examples: every user has a single positive event in the train split. "
                              "Fix: use more data or a looser data.positive rule.")
    # one optimizer step reads batch_size targets per rank and accumulation step (a batch of sequences,
    # train.objective=all_positions, holds about that many targets)
    batch_size = train.rows_per_batch(cfg.batch_size * d.world * cfg.grad_accum)
    steps_per_epoch = math.ceil(n / batch_size)
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    result, step = TrainResult(), 0
    if not resume and (out_dir / "checkpoints").exists() and d.main:
        import shutil

        shutil.rmtree(out_dir / "checkpoints")  # a fresh run must not mix with an older run's checkpoints
    d.barrier()
    if resume:
        ckpt = latest_checkpoint(out_dir)
        if ckpt is None:
            raise CheckpointError(f"{out_dir / 'checkpoints'}: nothing to resume. Fix: train without --resume.")
        state = _resume(ckpt, net, opt, average, meta, sharded)
        if state.get("global_batch", batch_size) != batch_size:
            raise CheckpointError(
                f"{ckpt}: the run was trained with {state['global_batch']} examples per optimizer step, this job "
                f"takes {batch_size} (train.batch_size={cfg.batch_size} x {d.world} processes x train.grad_accum="
                f"{cfg.grad_accum}). Fix: keep the global batch, e.g. set train.grad_accum or train.batch_size so "
                "that their product with the number of processes is what it was.")
        step = state["step"]
        if d.rank > 0:
            torch.manual_seed(cfg.seed + 1_000_003 * d.rank + step)
        result = TrainResult(state["steps"], state["loss"], state["valid"], state["seconds"],
                             state.get("expert_load", []), state.get("best_epoch"),
                             # a run that patience ended stays ended; one that ran out of time goes on
                             "patience" if state.get("stopped") == "patience" else None)
    t0 = time.perf_counter() - result.seconds
    select = cfg.early_stop_metric is not None and score_valid is not None
    best_score, best_state, bad_epochs = -math.inf, None, 0
    if resume and select:
        best_score, best_state, bad_epochs = load_selection(ckpt, result.valid, cfg.early_stop_metric)
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not progress or not d.main,
               dynamic_ncols=True)
    postfix: dict[str, str] = {}
    logger = logger or ScalarLogger()
    tick, tick_step = time.perf_counter(), step
    order, order_epoch = None, -1
    while step < total and result.stopped is None:
        epoch, pos = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order = np.random.default_rng([cfg.seed, epoch]).permutation(n)
            order_epoch = epoch
        idx = order[pos * batch_size:(pos + 1) * batch_size]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, cfg)
        loss = _step(net, train, idx, d, cfg, device, bf16)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        if average is not None:
            average.update_parameters(model)
        step += 1
        result.steps.append(step)
        result.loss.append(loss)
        bar.update(1)
        if step % cfg.log_every == 0:
            recent = float(np.mean(result.loss[-cfg.log_every:]))
            postfix["loss"] = f"{recent:.3f}"
            bar.set_postfix(postfix, refresh=False)  # shown by the next update, at its pace
            now = time.perf_counter()
            rate = (step - tick_step) / max(now - tick, 1e-9)
            scalars = {"loss": recent, "lr": opt.param_groups[0]["lr"], "steps_per_s": rate,
                       "examples_per_s": rate * cfg.batch_size * d.world * cfg.grad_accum}
            if device.type == "cuda":  # this process's peak GPU memory so far (weights, optimizer, activations)
                scalars["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            logger.scalars(scalars, step, prefix="train/")
            tick, tick_step = now, step
            load = model.expert_load() if hasattr(model, "expert_load") else {}
            if load:  # loss-free balancing at work: max share 1/X is perfectly even
                result.expert_load.append({"step": step, "max_share": max(max(v) for v in load.values()),
                                           "layers": load})
                logger.scalars({f"{layer}/max_share": max(v) for layer, v in load.items()}, step, prefix="moe/")
        over_time = _over_time(cfg, t0, d)
        epoch_end = step % steps_per_epoch == 0 or step == total or over_time
        if valid is not None and epoch_end:
            result.valid.append({"step": step, "epoch": step / steps_per_epoch,
                                 "loss": validation_loss(scored, valid, device, d=d)})
        # every valid_every epochs and at the last step (a resumed run scores the same epochs as an unbroken one)
        if select and epoch_end and (math.ceil(step / steps_per_epoch) % cfg.valid_every == 0 or step == total):
            score = float(score_valid(scored))  # several processes: each scores a share, combined (the same score)
            model.train()
            if result.valid and result.valid[-1]["step"] == step:
                result.valid[-1][cfg.early_stop_metric] = score
            else:
                result.valid.append({"step": step, "epoch": step / steps_per_epoch, cfg.early_stop_metric: score})
            if score > best_score:
                best_score, bad_epochs, result.best_epoch = score, 0, step / steps_per_epoch
                best_state = {k: v.detach().clone() for k, v in scored.state_dict().items()}
            else:
                bad_epochs += 1
            if bad_epochs >= max(cfg.patience, 1) and step < total:
                result.stopped = "patience"
            # the bar shows the valid metric and the best epoch so far beside the loss
            postfix[f"valid {cfg.early_stop_metric}"] = f"{score:.4f}"
            if result.best_epoch is not None:  # None while every score so far was NaN
                postfix["best"] = f"{best_score:.4f}@{result.best_epoch:.4g}"
        if epoch_end and result.valid and result.valid[-1]["step"] == step:
            logger.scalars({k: v for k, v in result.valid[-1].items() if k not in ("step", "epoch")}, step,
                           prefix="valid/")
        if log is not None and epoch_end and d.main:
            log(_epoch_line(result, step, steps_per_epoch, total, cfg, time.perf_counter() - t0))
        # re-read the clock: an epoch-end evaluation may itself have used up the budget
        over_time = _over_time(cfg, t0, d)
        if over_time and step < total and result.stopped is None:
            result.stopped = "time_budget"
        done = step == total or (stop_at is not None and step >= stop_at) or result.stopped is not None
        # selecting on valid: also at every epoch end, so that a killed run loses at most one epoch
        if step % cfg.checkpoint_every == 0 or done or (select and epoch_end):
            result.seconds = time.perf_counter() - t0
            _checkpoint(out_dir, net, opt, meta, step, result, average, best_state if select else None,
                        sharded=sharded, global_batch=batch_size)
        if (stop_at is not None and step >= stop_at) or result.stopped is not None:
            break
    bar.close()
    result.seconds = time.perf_counter() - t0
    if step == total or result.stopped is not None:
        if best_state is not None:
            model.load_state_dict(best_state)
        elif average is not None:
            model.load_state_dict(average.module.state_dict())
        extra = {k: v for k, v in (("best_epoch", result.best_epoch), ("stopped", result.stopped)) if v is not None}
        weights = distributed.whole_state(net)  # a collective under FSDP
        if d.main:
            save_weights(out_dir, weights, {**meta, "train": to_dict(cfg), "steps": step, **extra})
            write_json(out_dir / "history.json", result.to_dict())
        d.barrier()
    return result


def _over_time(cfg: TrainConfig, t0: float, d: Dist) -> bool:
    """Whether ``train.time_budget_s`` is used up; on several processes, whether it is on any (all stop together)."""
    if cfg.time_budget_s is None:
        return False
    return bool(d.sum([float(time.perf_counter() - t0 > cfg.time_budget_s)])[0])


def _check_config(cfg: TrainConfig, strategy: str) -> None:
    if cfg.ema_decay is not None and not 0.0 <= cfg.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay={cfg.ema_decay}: must be in [0, 1). Fix: e.g. 0.999, or null "
                          "for no weight average.")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise ConfigError(f"train.label_smoothing={cfg.label_smoothing}: must be in [0, 1). Fix: e.g. 0.1, or 0 "
                          "for plain cross-entropy.")
    if cfg.grad_accum < 1:
        raise ConfigError(f"train.grad_accum={cfg.grad_accum}: must be at least 1 (micro-batches per optimizer "
                          "step). Fix: train.grad_accum=1")
    if cfg.valid_every < 1:
        raise ConfigError(f"train.valid_every={cfg.valid_every}: must be at least 1 (epochs between valid "
                          "scorings). Fix: train.valid_every=1")
    if strategy == "fsdp" and cfg.ema_decay is not None:
        raise ConfigError(f"train.ema_decay={cfg.ema_decay} is not supported with train.strategy=fsdp (sharded "
                          "weights). Fix: train.strategy=ddp, or train.ema_decay=null")


def _step(net: torch.nn.Module, train: TrainExamples | SequenceExamples, idx: np.ndarray, d: Dist,
          cfg: TrainConfig, device: torch.device, bf16: bool) -> float:
    """Forward and backward of this rank's micro-batches of the global batch ``idx``; returns the global batch's
    mean loss. Gradients are left in ``net`` (averaged over the ranks by DDP / FSDP)."""
    chunks = distributed.rank_chunks(idx, d.world, cfg.grad_accum, d.rank)
    # a rank whose share of a short last batch is empty still runs a (weightless) step: collectives need all ranks
    batches = [train.batch(c if len(c) else idx[:1]) for c in chunks]
    counts = [distributed.batch_targets(b) if len(c) else 0 for b, c in zip(batches, chunks)]
    total = d.sum([float(sum(counts))])[0]
    net.zero_grad(set_to_none=True)
    mean = 0.0
    for i, (batch, count) in enumerate(zip(batches, counts)):
        with distributed.gradient_sync(net, enabled=i == len(batches) - 1), \
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = net(to_device(batch, device), label_smoothing=cfg.label_smoothing)
            scale = distributed.loss_scale(count, total, d.world)
            (loss if scale == 1.0 else loss * scale).backward()
        mean += float(loss.detach()) * (count / max(total, 1))
    return d.sum([mean])[0]


def _resume(ckpt: Path, net: torch.nn.Module, opt: torch.optim.Optimizer, average: torch.nn.Module | None,
            meta: dict[str, Any], sharded: bool) -> dict[str, Any]:
    """Load the checkpoint ``ckpt`` into the model as this job lays it out (whole, DDP or FSDP), whichever layout
    and world size wrote it; returns its state.json."""
    state = read_json(ckpt / "state.json")
    if state["meta"] != meta:
        raise CheckpointError(f"{ckpt}: checkpoint was made for another config (model or tokenizer). Fix: resume "
                              "with the same config, or train from scratch in a new run directory.")
    if (ckpt / distributed.SHARDED).is_dir():
        from safetensors.torch import load_file

        distributed.load_sharded(ckpt, net, opt, state.pop("optimizer")["param_groups"])
        torch.set_rng_state(load_file(str(ckpt / "rng.safetensors"))["rng.torch"])
    elif sharded:
        from safetensors.torch import load_file

        tensors = load_file(str(ckpt / "optim.safetensors"))
        torch.set_rng_state(tensors.pop("rng.torch"))
        distributed.load_whole_into_sharded(net, opt, load_file(str(ckpt / "model.safetensors")), tensors,
                                            state.pop("optimizer"))
    else:
        state = load_training_checkpoint(ckpt, unwrap(net), opt, average)
    return state


def _epoch_line(result: TrainResult, step: int, steps_per_epoch: int, total: int, cfg: TrainConfig,
                seconds: float) -> str:
    """``epoch 3/30 (step 1542): loss 2.529, valid loss 2.61, ndcg@10 0.0253 (best 0.0253, epoch 3); 495 s``."""
    recent = result.loss[-(step - (math.ceil(step / steps_per_epoch) - 1) * steps_per_epoch):]
    line = (f"epoch {step / steps_per_epoch:.4g}/{math.ceil(total / steps_per_epoch)} (step {step}): "
            f"loss {float(np.mean(recent)):.3f}")
    last = result.valid[-1] if result.valid and result.valid[-1]["step"] == step else {}
    if "loss" in last:
        line += f", valid loss {last['loss']:.3f}"
    metric = cfg.early_stop_metric
    if metric and metric in last:
        best = max((r for r in result.valid if metric in r), key=lambda r: r[metric])
        line += f", valid {metric} {last[metric]:.4f} (best {best[metric]:.4f}, epoch {best['epoch']:.4g})"
    return line + f"; {seconds:.0f} s"


def _checkpoint(out_dir: Path, net: torch.nn.Module, opt: torch.optim.Optimizer, meta: dict[str, Any], step: int,
                result: TrainResult, average: torch.nn.Module | None,
                best_state: dict[str, torch.Tensor] | None = None, *, sharded: bool = False,
                global_batch: int | None = None) -> None:
    """A resumable checkpoint: the whole model and optimizer written by rank 0, or (FSDP) every rank's shards."""
    from safetensors.torch import save_file

    d = distributed.current()
    folder = out_dir / "checkpoints" / f"step-{step:07d}"
    state = {"step": step, "meta": meta, "global_batch": global_batch, **result.to_dict()}
    if sharded:
        tmp = distributed.begin_folder(folder, d)
        groups = distributed.save_sharded(tmp, net, opt)
        if d.main:
            save_file({"rng.torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
            write_json(tmp / "model.json", meta)
            write_json(tmp / "state.json", {**state, "optimizer": {"param_groups": groups}})
        distributed.end_folder(folder, d)
    elif d.main:
        save_training_checkpoint(folder, unwrap(net), opt, meta, state, average, best=best_state)
    if d.main:  # keep the two most recent checkpoints
        import shutil

        for old in whole_folders(out_dir / "checkpoints", "step-*")[:-2]:
            shutil.rmtree(old, ignore_errors=True)
    d.barrier()
