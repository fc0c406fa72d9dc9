"""Next-token pretraining of the generator: AdamW, warm-up + cosine, resumable checkpoints.

The order of examples is a pure function of (seed, epoch), and every checkpoint stores the
optimizer moments and the torch RNG state, so a run resumed from a checkpoint reproduces the
loss curve of the uninterrupted run step for step (see tests/train/test_resume.py).

Optional model selection on the valid split (``train.early_stop_metric``, off by default): after
every epoch a caller-supplied ``score_valid(model) -> float`` (the eval harness: beam search,
full ranking, see :func:`onerec.pipeline.valid_scorer`) scores the model; the best epoch's
weights are kept and written as the final model, and training stops after ``train.patience``
epochs without improvement. ``train.time_budget_s`` stops a run early on wall time (counted over
every resumed part). Each checkpoint also stores the best weights so far (``best.safetensors``);
with the valid history it already holds, that restores the selection (best score, epochs since), so a
run stopped and resumed, e.g. across machine sessions, keeps the same epoch and weights as the
uninterrupted run.

``train.ema_decay`` keeps an exponential moving average of the weights (torch's
``AveragedModel``), updated after every optimizer step; validation loss, the valid score and the
saved model then use the average, while the optimizer keeps training the raw weights. Checkpoints
store the average, so a resumed run continues it exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from onerec.config import TrainConfig, check_choices, to_dict
from onerec.errors import CheckpointError, ConfigError
from onerec.features.history import EvalExamples, SequenceExamples, TrainExamples
from onerec.io import write_json
from onerec.model.generator import Generator
from onerec.threads import set_threads
from onerec.train.checkpoint import (
    latest_checkpoint,
    load_selection,
    load_training_checkpoint,
    save_model,
    save_training_checkpoint,
)
from onerec.train.logger import ScalarLogger


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
                    limit: int = 2000) -> float:
    model.eval()
    n = min(len(examples), limit)
    total, count = 0.0, 0
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(n, start + batch_size))
        loss = model(to_device(examples.batch(idx, with_target=True), device))
        total += float(loss) * len(idx)
        count += len(idx)
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
            ``train/loss``, ``train/lr``, ``train/steps_per_s``, ``train/examples_per_s`` and the MoE layers'
            ``moe/<layer>/max_share``; every epoch ``valid/loss`` and the valid metric. The caller closes it.
    """
    out_dir = Path(out_dir)
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    average = None
    if cfg.ema_decay is not None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        if not 0.0 <= cfg.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay={cfg.ema_decay}: must be in [0, 1). Fix: e.g. 0.999, or null "
                              "for no weight average.")
        # buffers too: an MoE layer's routing bias is part of the function the average computes
        average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    check_choices(cfg, "train.")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise ConfigError(f"train.label_smoothing={cfg.label_smoothing}: must be in [0, 1). Fix: e.g. 0.1, or 0 "
                          "for plain cross-entropy.")
    bf16 = cfg.precision == "bf16"
    scored = model if average is None else average.module  # the weights validation and selection see
    n = len(train)
    if n == 0:
        raise CheckpointError("no training examples: every user has a single positive event in the train split. "
                              "Fix: use more data or a looser data.positive rule.")
    # a batch of sequences (train.objective=all_positions) holds about batch_size targets
    batch_size = train.rows_per_batch(cfg.batch_size)
    steps_per_epoch = math.ceil(n / batch_size)
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    result, step = TrainResult(), 0
    if not resume and (out_dir / "checkpoints").exists():
        import shutil

        shutil.rmtree(out_dir / "checkpoints")  # a fresh run must not mix with an older run's checkpoints
    if resume:
        ckpt = latest_checkpoint(out_dir)
        if ckpt is None:
            raise CheckpointError(f"{out_dir / 'checkpoints'}: nothing to resume. Fix: train without --resume.")
        state = load_training_checkpoint(ckpt, model, opt, average)
        if state["meta"] != meta:
            raise CheckpointError(f"{ckpt}: checkpoint was made for another model config or tokenizer. Fix: resume "
                                  "with the same config, or train from scratch in a new run directory.")
        step = state["step"]
        result = TrainResult(state["steps"], state["loss"], state["valid"], state["seconds"],
                             state.get("expert_load", []), state.get("best_epoch"),
                             # a run that patience ended stays ended; one that ran out of time goes on
                             "patience" if state.get("stopped") == "patience" else None)
    t0 = time.perf_counter() - result.seconds
    select = cfg.early_stop_metric is not None and score_valid is not None
    best_score, best_state, bad_epochs = -math.inf, None, 0
    if resume and select:
        best_score, best_state, bad_epochs = load_selection(ckpt, result.valid, cfg.early_stop_metric)
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
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
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(to_device(train.batch(idx), device), label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if average is not None:
            average.update_parameters(model)
        step += 1
        result.steps.append(step)
        result.loss.append(float(loss.detach()))
        bar.update(1)
        if step % cfg.log_every == 0:
            recent = float(np.mean(result.loss[-cfg.log_every:]))
            bar.set_postfix(loss=f"{recent:.3f}")
            now = time.perf_counter()
            rate = (step - tick_step) / max(now - tick, 1e-9)
            logger.scalars({"loss": recent, "lr": opt.param_groups[0]["lr"], "steps_per_s": rate,
                            "examples_per_s": rate * cfg.batch_size}, step, prefix="train/")
            tick, tick_step = now, step
            load = model.expert_load() if hasattr(model, "expert_load") else {}
            if load:  # loss-free balancing at work: max share 1/X is perfectly even
                result.expert_load.append({"step": step, "max_share": max(max(v) for v in load.values()),
                                           "layers": load})
                logger.scalars({f"{layer}/max_share": max(v) for layer, v in load.items()}, step, prefix="moe/")
        over_time = cfg.time_budget_s is not None and time.perf_counter() - t0 > cfg.time_budget_s
        epoch_end = step % steps_per_epoch == 0 or step == total or over_time
        if valid is not None and epoch_end:
            result.valid.append({"step": step, "epoch": step / steps_per_epoch,
                                 "loss": validation_loss(scored, valid, device)})
        if select and epoch_end:
            score = float(score_valid(scored))
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
        if epoch_end and result.valid and result.valid[-1]["step"] == step:
            logger.scalars({k: v for k, v in result.valid[-1].items() if k not in ("step", "epoch")}, step,
                           prefix="valid/")
        if log is not None and epoch_end:
            log(_epoch_line(result, step, steps_per_epoch, total, cfg, time.perf_counter() - t0))
        # re-read the clock: an epoch-end evaluation may itself have used up the budget
        over_time = cfg.time_budget_s is not None and time.perf_counter() - t0 > cfg.time_budget_s
        if over_time and step < total and result.stopped is None:
            result.stopped = "time_budget"
        done = step == total or (stop_at is not None and step >= stop_at) or result.stopped is not None
        # selecting on valid: also at every epoch end, so that a killed run loses at most one epoch
        if step % cfg.checkpoint_every == 0 or done or (select and epoch_end):
            result.seconds = time.perf_counter() - t0
            _checkpoint(out_dir, model, opt, meta, step, result, average, best_state if select else None)
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
        save_model(out_dir, model, {**meta, "train": to_dict(cfg), "steps": step, **extra})
        write_json(out_dir / "history.json", result.to_dict())
    return result


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


def _checkpoint(out_dir: Path, model: Generator, opt: torch.optim.Optimizer, meta: dict[str, Any], step: int,
                result: TrainResult, average: torch.nn.Module | None,
                best_state: dict[str, torch.Tensor] | None = None) -> None:
    folder = out_dir / "checkpoints" / f"step-{step:07d}"
    state = {"step": step, "meta": meta, **result.to_dict()}
    save_training_checkpoint(folder, model, opt, meta, state, average, best=best_state)
    # keep the two most recent checkpoints
    import shutil

    for old in sorted((out_dir / "checkpoints").glob("step-*"))[:-2]:
        shutil.rmtree(old, ignore_errors=True)
