"""Preference alignment loops: IPA with DPO (OneRec V1), ECPO (OneRec Technical Report) and GBPO
(OneRec-V2), each with next-token training kept alongside and rejection-sampling fine-tuning.

IPA / DPO (arXiv 2502.18965, Sec. 2.3): each round, the current model beam-searches N candidates
per sampled user (constrained to real items); the reward model scores them; the best and the
worst form a preference pair; the model of the round start is the frozen reference; loss =
NTP + lambda * DPO; rounds repeat with the updated model.

ECPO (arXiv 2506.13695, Sec. 4.2): each round, a group of G rollouts per user by *unconstrained*
beam search (the Technical Report found beam rollouts better than sampling); rewards = P-Score for
legal codes; the format reward gives an illegal code a reward below the group's worst legal one
(so legality is learned rather than enforced); advantages normalised within the group; the
early-clipped surrogate (:func:`onerec.align.losses.ecpo_loss`) with ``pi_old`` = the model of the
round start; NTP alongside instead of a KL term.

GBPO (OneRec-V2, arXiv 2508.20900, Sec. 4): the same group of G unconstrained beam rollouts per user; by
default (``align.gbpo_reward=duration``) V2's real-feedback reward -- each rollout that maps to an item is
shown to its user in the simulated world (:class:`onerec.align.feedback.SimulatedFeedback`), and the sampled
play time and dislike are shaped into A in {-1, 0, +1} by duration-aware percentiles, the round's shown
rollouts being the batch whose top 25% earns +1 (:class:`onerec.reward.duration.DurationShaping`); an
illegal code gets A = -1 (the format reward: V2 only ever shows real items, the choice is ours).
``gbpo_reward=pscore`` uses ECPO's advantages instead. The loss is the gradient-bounded surrogate
(:func:`onerec.align.losses.gbpo_loss`), ``pi_old`` = the model of the round start, NTP alongside.

Rejection-sampling fine-tuning (Technical Report Sec. 4): next-token loss on the top
``rsft_keep`` share of each round's legal samples by reward (the bottom ones are dropped).

DPO and ECPO align to the learned P-Score, never to the simulator's ground truth. GBPO's duration reward
sees one *sampled* response of the world per shown rollout (what V2 learns from); the world's closed-form
expectations only score the final lists (see :mod:`onerec.align.evaluate`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from onerec.align.feedback import SimulatedFeedback
from onerec.align.losses import dpo_loss, ecpo_loss, gbpo_loss, sequence_log_probs
from onerec.config import AlignConfig
from onerec.errors import ConfigError
from onerec.features.history import EvalExamples, HistoryFeaturizer, TrainExamples, default_featurizer
from onerec.generate.beam import beam_search
from onerec.generate.sampling import unconstrained_beam_search
from onerec.reward.data import Positives, RankFeaturizer
from onerec.reward.model import PScoreModel
from onerec.reward.rewards import CodeIndex, group_advantages, industrial_reward
from onerec.tokenizer.constraints import PrefixTable
from onerec.train import distributed


def request_table(pos: Positives, users: np.ndarray, request_ts: np.ndarray) -> pa.Table:
    """Generator inputs for users at a request time: their positives before it (an eval-style table)."""
    users = np.asarray(users, dtype=np.int64)
    ends = pos.end_before(users, np.asarray(request_ts, dtype=np.int64))
    starts = pos.offsets[users]
    lens = ends - starts
    offs = np.r_[0, np.cumsum(lens)].astype(np.int32)
    idx = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)]) if len(users) else np.zeros(0, np.int64)
    idx = idx.astype(np.int64)

    def lst(values: np.ndarray, typ: pa.DataType) -> pa.Array:
        return pa.ListArray.from_arrays(pa.array(offs), pa.array(values, type=typ))

    return pa.table({"user_id": users, "history": lst(pos.items[idx], pa.int64()),
                     "history_ts": lst(pos.ts[idx], pa.int64()),
                     "history_flags": lst(pos.flags[idx].astype(np.int16), pa.int16()),
                     "target_ts": np.asarray(request_ts, dtype=np.int64)})


@dataclass
class AlignContext:
    """Everything a round needs: the policy, the catalogue, the users' requests and the reward model."""

    model: Any  # onerec.model.generator.Generator
    codes: np.ndarray  # [N, D]
    requests: pa.Table  # request_table of every user the loop may sample
    ranker: PScoreModel
    rank_feat: RankFeaturizer
    train_examples: TrainExamples | None = None  # logged next-item examples for the NTP loss
    # the generator's featurizer (see onerec.pipeline.make_featurizer); default: without side information,
    # refused for a model that needs it
    featurizer: HistoryFeaturizer | None = None
    # users' sampled responses to shown items (GBPO's duration reward); None without a simulated world
    feedback: SimulatedFeedback | None = None

    def __post_init__(self) -> None:
        self.sizes = list(self.model.codebook_sizes)
        self.table = PrefixTable.from_codes(torch.from_numpy(self.codes), self.sizes)
        self.index = CodeIndex(self.codes, self.sizes)
        if self.featurizer is None:
            self.featurizer = default_featurizer(self.codes, self.model.cfg, "AlignContext")
        self.examples = EvalExamples(self.requests, self.featurizer)
        self.users = self.requests["user_id"].to_numpy()
        self.request_ts = self.requests["target_ts"].to_numpy()

    def batch(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        return self.examples.batch(np.asarray(rows))


# ------------------------------------------------------------------------------ generation
@torch.no_grad()
def generate_constrained(ctx: AlignContext, rows: np.ndarray, beam: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k real items per request row by constrained beam search: items [B, k], codes [B, k, D]."""
    step_fn, state = ctx.model.beam_step_fn(*ctx.model.encode_batch(ctx.batch(rows)), beam)  # KV-cached decoder
    items, _, codes = beam_search(step_fn, batch_size=len(rows), table=ctx.table, beam_size=beam, top_k=k,
                                  state=state, return_codes=True)
    return items.numpy(), codes.numpy()


@torch.no_grad()
def generate_unconstrained(ctx: AlignContext, rows: np.ndarray, beam: int) -> np.ndarray:
    """Top-``beam`` code sequences per row over the full codebooks (may be illegal): [B, beam, D]."""
    step_fn, state = ctx.model.beam_step_fn(*ctx.model.encode_batch(ctx.batch(rows)), beam)  # KV-cached decoder
    codes, _ = unconstrained_beam_search(step_fn, batch_size=len(rows), depth=len(ctx.sizes), beam_size=beam,
                                         state=state)
    return codes.numpy()


@torch.no_grad()
def pscore(ctx: AlignContext, rows: np.ndarray, items: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """P-Score of each (request row, item) [B, K]; NaN for item -1."""
    rows = np.asarray(rows)
    b, k = items.shape
    users = np.repeat(ctx.users[rows], k)
    ts = np.repeat(ctx.request_ts[rows], k)
    flat = items.reshape(-1)
    ok = flat >= 0
    out = np.full(len(flat), np.nan)
    sel = np.flatnonzero(ok)
    for s in range(0, len(sel), batch_size):
        j = sel[s:s + batch_size]
        out[j] = ctx.ranker.predict(ctx.rank_feat.batch(users[j], flat[j], ts[j]))["pscore"].numpy()
    return out.reshape(b, k)


def shaped_reward(ctx: AlignContext, cfg: AlignConfig, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    """P-Score with the industrial reward applied (in list order); NaN for illegal items."""
    r = pscore(ctx, rows, items)
    if cfg.industrial_class >= 0 and cfg.industrial_f < 1.0:
        cls = np.where(items >= 0, ctx.codes[np.maximum(items, 0), 0], -1)
        r = industrial_reward(r, cls, cfg.industrial_class, cfg.industrial_f, cfg.industrial_scale)
    return r


def format_shaped_reward(reward: np.ndarray, illegal_reward: float) -> np.ndarray:
    """The format reward folded into each group's rewards [B, G] (NaN = illegal code): an illegal
    sample scores ``|illegal_reward|`` group standard deviations below the group's worst legal one
    (0.1 when the group has fewer than two legal samples), so its advantage is the lowest."""
    legal = ~np.isnan(reward)
    lo = np.array([r[m].min() if m.any() else 0.0 for r, m in zip(reward, legal)])
    sd = np.array([r[m].std() if m.sum() > 1 else 0.1 for r, m in zip(reward, legal)])
    return np.where(legal, reward, (lo - abs(illegal_reward) * np.maximum(sd, 1e-3))[:, None])


# ------------------------------------------------------------------------------ losses
def _ntp(ctx: AlignContext, rng: np.random.Generator, n: int) -> torch.Tensor:
    ex = ctx.train_examples
    if ex is None or len(ex) == 0:
        return torch.zeros(())
    return ctx.model(ex.batch(rng.choice(len(ex), size=min(n, len(ex)), replace=False)))


def _rsft(ctx: AlignContext, batch: dict[str, torch.Tensor], codes: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean per-level NLL of the kept samples (rejection-sampling fine-tuning)."""
    if not bool(keep.any()):
        return torch.zeros(())
    logp = sequence_log_probs(ctx.model, batch, codes.clamp_min(0))
    return -(logp * keep).sum() / keep.sum() / codes.shape[-1]


def _keep_top(reward: np.ndarray, share: float) -> np.ndarray:
    """Bool [B, G]: legal samples whose reward is in the top ``share`` of the round (NaN = illegal)."""
    if share <= 0:
        return np.zeros(reward.shape, bool)
    legal = ~np.isnan(reward)
    if not legal.any():
        return legal
    cut = np.quantile(reward[legal], 1.0 - share)
    return legal & (np.nan_to_num(reward, nan=-np.inf) >= cut)


# ------------------------------------------------------------------------------ rounds
def _frozen_log_probs(ctx: AlignContext, rows: np.ndarray, codes: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Sequence log-probs [B, G] of ``codes [B, G, D]`` under the current model, without gradients
    (the round's reference / old policy), in chunks of users."""
    if not len(rows):
        return torch.zeros(0, codes.shape[1])
    with torch.no_grad():
        return torch.cat([sequence_log_probs(ctx.model, ctx.batch(rows[s:s + chunk]), codes[s:s + chunk])
                          for s in range(0, len(rows), chunk)])


def _policy_steps(ctx: AlignContext, cfg: AlignConfig, rows: np.ndarray, opt: torch.optim.Optimizer,
                  rng: np.random.Generator, steps: int, method_loss, rsft_codes: torch.Tensor,
                  keep: torch.Tensor, bar=None) -> list[float]:
    """The optimisation shared by DPO, ECPO and GBPO rounds: per step, a batch of users, the method's loss
    ``method_loss(j, batch)`` + NTP (+ rejection-sampling fine-tuning on the kept samples). ``bar``: a tqdm bar
    advanced by each step."""
    losses = []
    for _ in range(steps):
        j = rng.choice(len(rows), size=min(cfg.batch_users, len(rows)), replace=False)
        batch = ctx.batch(rows[j])
        loss = method_loss(j, batch)
        loss = loss + cfg.ntp_weight * _ntp(ctx, rng, cfg.batch_users * 4)
        if cfg.rsft_keep > 0:
            loss = loss + _rsft(ctx, batch, rsft_codes[j], keep[j])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(ctx.model)  # several processes: the mean of their batches' gradients
        torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.set_postfix_str(f"loss {losses[-1]:.4f}", refresh=False)
            bar.update(1)
    return losses


def dpo_round(ctx: AlignContext, cfg: AlignConfig, rows: np.ndarray, opt: torch.optim.Optimizer,
              rng: np.random.Generator, bar=None) -> dict[str, float]:
    """One IPA round: beam-search N candidates, best/worst pairs by reward, NTP + lambda * DPO."""
    model = ctx.model
    model.eval()
    items, codes = generate_constrained(ctx, rows, cfg.beam_size, cfg.beam_size)
    reward = shaped_reward(ctx, cfg, rows, items)
    filled = np.where(np.isnan(reward), -np.inf, reward)  # illegal samples never win ...
    floor = np.where(np.isnan(reward), np.inf, reward)  # ... nor lose
    best, worst = filled.argmax(1), floor.argmin(1)
    ok = np.isfinite(filled.max(1)) & (filled.max(1) > floor.min(1))
    rows, best, worst = rows[ok], best[ok], worst[ok]
    ar = np.arange(len(rows))
    pair = torch.from_numpy(np.stack([codes[ok][ar, best], codes[ok][ar, worst]], axis=1))  # [B, 2, D]
    keep = torch.from_numpy(_keep_top(reward[ok], cfg.rsft_keep).astype(np.float32))
    all_codes = torch.from_numpy(codes[ok])
    ref = _frozen_log_probs(ctx, rows, pair)
    stats = {"pairs": float(len(rows)), "reward_best": float(filled[ok].max(1).mean()) if len(rows) else 0.0,
             "reward_mean": float(np.nanmean(reward))}

    def method_loss(j: np.ndarray, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pol = sequence_log_probs(model, batch, pair[j])
        return cfg.dpo_weight * dpo_loss(pol[:, 0], pol[:, 1], ref[j, 0], ref[j, 1], cfg.beta)

    losses = _policy_steps(ctx, cfg, rows, opt, rng, cfg.steps_per_iter if len(rows) else 0, method_loss,
                           all_codes, keep, bar)
    stats["loss"] = float(np.mean(losses)) if losses else 0.0
    return stats


def ecpo_round(ctx: AlignContext, cfg: AlignConfig, rows: np.ndarray, opt: torch.optim.Optimizer,
               rng: np.random.Generator, bar=None) -> dict[str, float]:
    """One ECPO round: G unconstrained beam rollouts per user, format + P-Score rewards, group
    advantages, early-clipped surrogate + NTP (+ rejection-sampling fine-tuning)."""
    model = ctx.model
    model.eval()
    codes = generate_unconstrained(ctx, rows, cfg.beam_size)  # [B, G, D]
    items = ctx.index.lookup(codes)
    reward = shaped_reward(ctx, cfg, rows, items)
    legal = ~np.isnan(reward)
    shaped = format_shaped_reward(reward, cfg.illegal_reward)
    adv = group_advantages(torch.from_numpy(shaped).float())
    codes_t = torch.from_numpy(codes)
    keep = torch.from_numpy(_keep_top(reward, cfg.rsft_keep).astype(np.float32))
    old = _frozen_log_probs(ctx, rows, codes_t)
    stats = {"legal": float(legal.mean()), "reward_mean": float(np.nanmean(reward)) if legal.any() else 0.0}

    def method_loss(j: np.ndarray, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logp = sequence_log_probs(model, batch, codes_t[j])
        return ecpo_loss(logp, old[j], adv[j], cfg.clip_eps, cfg.clip_delta)

    losses = _policy_steps(ctx, cfg, rows, opt, rng, cfg.steps_per_iter, method_loss, codes_t, keep, bar)
    stats["loss"] = float(np.mean(losses))
    return stats


def _duration_advantages(ctx: AlignContext, cfg: AlignConfig, rows: np.ndarray, items: np.ndarray,
                         rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray, dict[str, float]]:
    """V2's real-feedback advantages [B, G]: shown items' sampled responses, duration-shaped; illegal codes
    get A = -1. Also the play-time percentile [B, G] (NaN = illegal, for rejection sampling) and stats."""
    fb = ctx.feedback(ctx.users[rows], items, rng, top_share=cfg.top_share, top_of=cfg.top_of)
    legal = items >= 0
    adv = np.where(legal, fb["advantage"], -1.0)
    stats = {"legal": float(legal.mean()), "positive": float((adv > 0).mean()), "negative": float((adv < 0).mean()),
             "play_s": float(fb["play_ms"][legal].mean() / 1000.0) if legal.any() else 0.0,
             "dislike": float(fb["dislike"][legal].mean()) if legal.any() else 0.0}
    return torch.from_numpy(adv).float(), fb["percentile"], stats


def gbpo_round(ctx: AlignContext, cfg: AlignConfig, rows: np.ndarray, opt: torch.optim.Optimizer,
               rng: np.random.Generator, bar=None) -> dict[str, float]:
    """One GBPO round: G unconstrained beam rollouts per user, V2's duration-shaped real-feedback advantages
    (or ECPO's P-Score ones), gradient-bounded surrogate + NTP (+ rejection-sampling fine-tuning)."""
    model = ctx.model
    model.eval()
    codes = generate_unconstrained(ctx, rows, cfg.beam_size)  # [B, G, D]
    items = ctx.index.lookup(codes)
    if cfg.gbpo_reward == "duration":
        adv, reward, stats = _duration_advantages(ctx, cfg, rows, items, rng)
    else:
        reward = shaped_reward(ctx, cfg, rows, items)
        adv = group_advantages(torch.from_numpy(format_shaped_reward(reward, cfg.illegal_reward)).float())
        legal = ~np.isnan(reward)
        stats = {"legal": float(legal.mean()), "reward_mean": float(np.nanmean(reward)) if legal.any() else 0.0}
    codes_t = torch.from_numpy(codes)
    keep = torch.from_numpy(_keep_top(reward, cfg.rsft_keep).astype(np.float32))
    old = _frozen_log_probs(ctx, rows, codes_t)

    def method_loss(j: np.ndarray, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return gbpo_loss(sequence_log_probs(model, batch, codes_t[j]), old[j], adv[j])

    losses = _policy_steps(ctx, cfg, rows, opt, rng, cfg.steps_per_iter, method_loss, codes_t, keep, bar)
    stats["loss"] = float(np.mean(losses))
    return stats


def align(ctx: AlignContext, cfg: AlignConfig, pool: np.ndarray | None = None, *,
          log: bool = False) -> list[dict[str, float]]:
    """Run ``cfg.iterations`` rounds of ``cfg.method`` on ``ctx.model`` in place; returns per-round stats.

    Args:
        pool: request rows users are sampled from (default: all of ``ctx.requests``).
        log: a tqdm bar of the rounds' optimizer steps (it says when a round is sampling), and each round's
            stats as a line.
    """
    from tqdm.auto import tqdm

    if cfg.method == "gbpo" and cfg.gbpo_reward == "duration" and ctx.feedback is None:
        raise ConfigError("align.method=gbpo with align.gbpo_reward=duration learns from users' responses to the "
                          "items it shows, which only a simulated world gives; this run has none. Fix: set "
                          "align.gbpo_reward=pscore (ECPO's P-Score advantages), or use a simulated run")
    d = distributed.current()
    torch.manual_seed(cfg.seed + 1_000_003 * d.rank)
    rng = np.random.default_rng(cfg.seed)
    pool = np.arange(len(ctx.users)) if pool is None else np.asarray(pool)
    opt = torch.optim.Adam(ctx.model.parameters(), lr=cfg.lr)
    round_fn = {"dpo": dpo_round, "ecpo": ecpo_round, "gbpo": gbpo_round}[cfg.method]
    history = []
    bar = tqdm(total=cfg.iterations * cfg.steps_per_iter, desc=f"align {cfg.method}", unit="step",
               disable=not log or not d.main, dynamic_ncols=True)
    for it in range(cfg.iterations):
        t0 = time.perf_counter()
        rows = rng.choice(pool, size=min(cfg.users_per_iter, len(pool)), replace=False)
        bar.set_postfix_str(f"round {it + 1}/{cfg.iterations}: sampling and scoring {len(rows)} users")
        if d.world == 1:
            stats = round_fn(ctx, cfg, rows, opt, rng, bar if log else None)
        else:  # each process rolls out and trains on its share of the round's users, with its own draws
            mine = distributed.rank_chunks(rows, d.world, 1, d.rank)[0]
            stats = round_fn(ctx, cfg, mine, opt, np.random.default_rng([cfg.seed, it, d.rank]),
                             bar if log and d.main else None)
            numeric = [k for k, v in stats.items() if isinstance(v, (int, float))]
            stats.update(zip(numeric, (v / d.world for v in d.sum([float(stats[k]) for k in numeric]))))
        stats = {"iteration": it + 1, **stats, "seconds": round(time.perf_counter() - t0, 1)}
        history.append(stats)
        if log and d.main:
            bar.write(f"  {cfg.method} round {it + 1}: {stats}")
    bar.close()
    ctx.model.eval()
    return history


def average_gradients(model: torch.nn.Module) -> None:
    """In a job of several processes (``torchrun -m onerec align RUN``), replace every gradient by its mean over the
    processes, in one all-reduce (a parameter without a gradient counts as zeros). DDP does the same inside its
    wrapper's forward and backward; here the loss combines several of the model's methods (sequence log-probs, NTP),
    so the mean is taken after the backward pass. Nothing on one process."""
    d = distributed.current()
    if d.world == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    torch.distributed.all_reduce(flat)
    flat /= d.world
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def clone_model(model: torch.nn.Module) -> torch.nn.Module:
    """An independent trainable copy (to align several methods from one pretrained model)."""
    return copy.deepcopy(model)
