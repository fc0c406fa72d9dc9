"""Training, evaluation (AUC / GAUC per objective on held-out exposures) and persistence of P-Score."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onerec.config import RewardConfig, from_dict, to_dict
from onerec.errors import CheckpointError
from onerec.eval.metrics import auc, gauc
from onerec.io import atomic_path, read_json, write_json
from onerec.reward.data import Exposures, RankFeaturizer
from onerec.reward.model import PScoreModel
from onerec.train.checkpoint import build_checked

#: the ablations `onerec reward` compares (name -> overrides of the config)
VARIANTS: dict[str, dict[str, Any]] = {
    "pscore": {},
    "no_sim": {"sim": False},
    "no_can": {"can": False},
    "din": {"sim": False, "can": False},
}


def build_pscore(cfg: RewardConfig, feat: RankFeaturizer, n_users: int) -> PScoreModel:
    side = feat.side
    return PScoreModel(cfg, n_users, len(side.cat), side.n_cats, side.n_authors)


def train_pscore(model: PScoreModel, train: Exposures, cfg: RewardConfig, *, log_every: int = 0,
                 desc: str = "p-score") -> list[float]:
    """Adam over shuffled exposures for ``cfg.epochs``; returns the loss of every step. ``log_every`` > 0: a tqdm
    bar (``desc``) of the steps, showing the mean loss of the last ``log_every`` steps.

    In a job of several processes (``torchrun -m onerec reward RUN``) the model is wrapped in DDP and each step's
    global batch (``reward.batch_size`` x processes) is split over them as in generator training
    (:mod:`onerec.train.distributed`): the same steps as one process at that batch."""
    from tqdm.auto import tqdm

    from onerec.train import distributed

    d = distributed.current()
    torch.manual_seed(cfg.seed)
    net = distributed.wrap(distributed.LossOf(model, "loss"), "ddp" if d.world > 1 else "none", torch.device("cpu"))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    losses = []
    model.train()
    step_size = cfg.batch_size * d.world
    steps = -(-len(train) // step_size)
    bar = tqdm(total=cfg.epochs * steps, desc=desc, unit="step", disable=not log_every or not d.main,
               dynamic_ncols=True)
    for _ in range(cfg.epochs):
        order = rng.permutation(len(train))
        for start in range(0, len(order), step_size):
            idx = order[start:start + step_size]
            mine = distributed.rank_chunks(idx, d.world, 1, d.rank)[0]
            loss = net(train.batch(mine if len(mine) else idx[:1]))
            total = len(idx)
            opt.zero_grad(set_to_none=True)
            scale = distributed.loss_scale(len(mine), total, d.world)
            (loss if scale == 1.0 else loss * scale).backward()
            opt.step()
            losses.append(d.sum([float(loss.detach()) * (len(mine) / total)])[0])
            bar.update(1)
            if log_every and len(losses) % log_every == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-log_every:]):.4f}", refresh=False)
    bar.close()
    model.eval()
    return losses


@torch.no_grad()
def predict_exposures(model: PScoreModel, ex: Exposures, batch_size: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    probs, score = [], []
    for start in range(0, len(ex), batch_size):
        out = model.predict(ex.batch(np.arange(start, min(len(ex), start + batch_size))))
        probs.append(out["probs"].numpy())
        score.append(out["pscore"].numpy())
    return np.concatenate(probs), np.concatenate(score)


def evaluate_pscore(model: PScoreModel, ex: Exposures) -> dict[str, Any]:
    """AUC and GAUC (per user) of every tower on its own label, and of the fused P-Score on long_view
    and on watch time above the median (how well the one score ranks what users value)."""
    probs, score = predict_exposures(model, ex)
    out: dict[str, Any] = {"n": len(ex)}
    for j, name in enumerate(ex.objectives):
        y = ex.labels[:, j]
        out[name] = {"auc": auc(probs[:, j], y), "gauc": gauc(probs[:, j], y, ex.user), "rate": float(y.mean())}
    watched = (ex.watch_ms > np.median(ex.watch_ms[ex.watch_ms > 0])).astype(np.int64) if (ex.watch_ms > 0).any() \
        else np.zeros(len(ex), np.int64)
    out["pscore_watch"] = {"auc": auc(score, watched), "gauc": gauc(score, watched, ex.user),
                           "rate": float(watched.mean())}
    return out


def save_pscore(folder: str | Path, model: PScoreModel, meta: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "pscore.safetensors") as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    write_json(folder / "pscore.json", {"format": "onerec-pscore", "version": 1, "config": to_dict(model.cfg),
                                        **meta})
    return folder


def load_pscore(folder: str | Path) -> tuple[PScoreModel, dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder / "pscore.json"
    if not path.exists():
        raise CheckpointError(f"{path} not found. Fix: run `onerec reward {folder.parent}` first.")
    meta = read_json(path)
    if meta.get("format") != "onerec-pscore":
        raise CheckpointError(f"{path}: not a P-Score model file. Fix: point at RUN/reward.")
    missing = [k for k in ("config", "n_users", "n_items", "n_cats", "n_authors") if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: missing key '{missing[0]}'. Fix: re-run `onerec reward {folder.parent}`.")
    cfg = from_dict(RewardConfig, meta["config"])
    model = build_checked(folder, lambda: PScoreModel(cfg, meta["n_users"], meta["n_items"], meta["n_cats"],
                                                      meta["n_authors"]), weights="pscore.safetensors",
                          meta="pscore.json")
    try:
        state = load_file(str(folder / "pscore.safetensors"))
        model.load_state_dict(state)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{folder / 'pscore.safetensors'}: unreadable or mismatched ({e}). "
                              f"Fix: re-run `onerec reward {folder.parent}`.") from None
    return model.eval(), meta


def fit_variants(cfg: RewardConfig, splits: dict[str, Exposures], feat: RankFeaturizer, n_users: int, *,
                 variants: dict[str, dict[str, Any]] | None = None,
                 log_every: int = 0) -> tuple[dict[str, PScoreModel], dict[str, Any]]:
    """Train each variant (the full P-Score and its ablations) and evaluate it on the held-out exposures."""
    from onerec.train.distributed import current

    models, metrics = {}, {}
    variants = variants or VARIANTS
    main = current().main
    for i, (name, over) in enumerate(variants.items(), 1):
        vcfg = dataclasses.replace(cfg, **over)
        t0 = time.perf_counter()
        torch.manual_seed(vcfg.seed)  # the initialisation, whatever ran before in this process
        model = build_pscore(vcfg, feat, n_users)
        losses = train_pscore(model, splits["train"], vcfg, log_every=log_every,
                              desc=f"reward {name} ({i}/{len(variants)})")
        scores = evaluate_pscore(model, splits["test"]) if main else {}  # several processes: rank 0 reports
        metrics[name] = {**scores, "parameters": sum(p.numel() for p in model.parameters()),
                         "final_loss": float(np.mean(losses[-20:])), "seconds": round(time.perf_counter() - t0, 1)}
        models[name] = model
    return models, metrics
