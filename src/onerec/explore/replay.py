"""Unbiased offline replay (Li, Chu, Langford & Wang, WSDM 2011) of a uniformly random policy's log.

The log (:func:`replay_log`), drawn in the simulated world the way Yahoo!'s R6B was logged: every event shows
one user K candidate items and logs one of them, picked uniformly at random, with the user's response (the
world's response model, whose random-exposure rates are calibrated to KuaiRand's). Items arrive one by one over
the stream; an event's candidates are K distinct items of the ``pool`` latest arrivals, so the catalogue keeps
turning over and every item starts with no history -- the setting exploration is for.

The replay (:func:`replay_policy`) streams the log in time order, a block of events at a time: the policy scores
every candidate of the block with the model as it stands and picks one per event; an event counts only where the
pick is the logged item (on average 1/K of them); the model (and the gate) then take ``updates`` gradient steps
on the block's accepted events. Because the logged item is uniform among the candidates, the accepted events are
an unbiased sample of what the policy would have met online, so clicks per accepted event estimate its online
CTR. Users' DIN histories are their positives logged before the event (the log's context, as R6B ships user
features with every event), whatever any policy picked.

The replay's estimate rests on the ~1/K of events it accepts, so its own sampling noise is large (at 60,000 events
and K = 10, about +-5 clicks per 1,000 a seed). A simulated log also knows the truth: the world's probability of
each response for every candidate shown (:meth:`onerec.data.simulator.World.expected`). Beside the replay's
figures, each run reports the **expected** clicks and long views per 1,000 events of the items the policy picked at
*every* event, accepted or not (``expected_clicks_per_1000``): the policy's online rate, without the replay's
sampling noise. What the policy learns from is unchanged (its accepted events only), so the two estimate the same
thing; the expected one is what only a simulator can give.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from onerec.config import ExploreConfig, RunConfig
from onerec.data.schema import SIGNALS
from onerec.errors import ConfigError, DataError
from onerec.explore.model import OBJECTIVES, ExplorationCTR, ItemGate
from onerec.explore.policies import MC_POLICIES, POLICIES, fresh_rows, row_counts, score_candidates
from onerec.reward.data import ItemSide, Positives, RankFeaturizer, duration_bucket

EVENT_GAP_S = 30  # seconds between consecutive events of the stream
CURVE_POINTS = 50  # points of the cumulative-clicks curve kept per run


@dataclass
class ReplayLog:
    """A random-exposure log: event e showed user ``user[e]`` the items ``cand[e]`` and logged ``cand[e, logged[e]]``.

    Shapes (E events, K candidates): user, logged, ts [E] int64; cand [E, K] int64; labels [E, 2] float32
    (:data:`onerec.explore.model.OBJECTIVES`); arrival [N] int64, the event at which each item entered the pool;
    truth [E, K, 2] float32, the world's probability of each objective for every candidate (None: a log without a
    world that knows it).
    """

    user: np.ndarray
    cand: np.ndarray
    logged: np.ndarray
    ts: np.ndarray
    labels: np.ndarray
    arrival: np.ndarray
    featurizer: RankFeaturizer
    n_users: int
    truth: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.user)

    @property
    def logged_item(self) -> np.ndarray:
        return self.cand[np.arange(len(self)), self.logged]

    def rates(self) -> dict[str, float]:
        """The logged (random-policy) rate of each objective per event."""
        return {o: float(self.labels[:, j].mean()) for j, o in enumerate(OBJECTIVES)}


def check_explore(cfg: ExploreConfig, n_items: int | None = None) -> None:
    """ConfigError naming the explore key and the fix for a setting the replay cannot run with."""
    def bad(key: str, why: str, fix: str) -> ConfigError:
        return ConfigError(f"explore.{key}={getattr(cfg, key)!r}: {why}. Fix: {fix}")

    unknown = [p for p in cfg.policies if p not in POLICIES]
    if not cfg.policies or unknown:
        raise bad("policies", f"unknown policy {unknown[0]!r}" if unknown else "no policy given",
                  f"pick from {', '.join(POLICIES)}, e.g. explore.policies=[greedy,age_ts]")
    if not cfg.seeds:
        raise bad("seeds", "no seed given", "e.g. explore.seeds=[0,1,2]")
    wrong = [e for e in cfg.evaluations if e not in ("replay", "online")]
    if not cfg.evaluations or wrong:
        raise bad("evaluations", f"unknown evaluation {wrong[0]!r}" if wrong else "nothing to run",
                  "pick from replay, online, e.g. explore.evaluations=[replay,online]")
    for key, low in (("events", 1), ("candidates", 2), ("block", 1), ("updates", 0), ("d_model", 1),
                     ("tower_hidden", 1), ("history", 1), ("mc_passes", 2), ("pgd_steps", 1)):
        if getattr(cfg, key) < low:
            raise bad(key, f"must be at least {low}", f"set explore.{key} to {low} or more")
    if cfg.pool < cfg.candidates:
        raise bad("pool", f"fewer live items than explore.candidates={cfg.candidates}",
                  f"set explore.pool >= {cfg.candidates}")
    if n_items is not None and cfg.pool > n_items:
        raise bad("pool", f"more live items than the world's {n_items}", f"set explore.pool <= {n_items}")
    if not 0.0 <= cfg.epsilon <= 1.0:
        raise bad("epsilon", "must be in [0, 1]", "e.g. explore.epsilon=0.1")
    mc = [p for p in cfg.policies if p in MC_POLICIES] if cfg.uncertainty == "mc_dropout" else []
    if not 0.0 <= cfg.dropout < 1.0 or (mc and cfg.dropout == 0.0):
        raise bad("dropout", f"must be in (0, 1){' for ' + mc[0] + ' (MC dropout)' if mc else ''}",
                  "e.g. explore.dropout=0.1")
    if cfg.max_impressions is not None and cfg.max_impressions < 1:
        raise bad("max_impressions", "must be at least 1 (or null: explore every item)",
                  "e.g. explore.max_impressions=50")
    for key, example in (("pgd_step", 0.5), ("lr", 5e-3), ("count_sigma", 0.1)):
        if getattr(cfg, key) <= 0.0:
            raise bad(key, "must be positive", f"e.g. explore.{key}={example}")


def item_side(world: Any) -> ItemSide:
    """The ranker's item features in the world: category = topic, author (1-based, 0 unknown), duration bucket."""
    return ItemSide(cat=world.item_topic.astype(np.int64), author=world.item_author.astype(np.int64) + 1,
                    dur=duration_bucket(world.item_duration_ms), n_cats=int(world.cfg.n_topics),
                    n_authors=int(world.item_author.max()) + 2)


def replay_log(world: Any, *, events: int, candidates: int, pool: int, history: int, seed: int) -> ReplayLog:
    """Draw a uniformly random policy's log of ``events`` events in ``world`` (see the module docstring).

    Users come by their activity, each event's current interest from the user's interest weights (the
    calibration's draw), so the logged rates are the world's random-exposure rates."""
    rng = np.random.default_rng([seed, 41])
    n_items, K = world.n_items, candidates
    order = rng.permutation(n_items)  # arrival order of the items
    step = events / max(1, n_items - pool)  # events between two arrivals
    arrived = np.minimum(pool + (np.arange(events) / step).astype(np.int64), n_items)  # items in by event e
    arrival = np.zeros(n_items, np.int64)
    arrival[order[pool:]] = np.ceil((np.arange(1, n_items - pool + 1)) * step).astype(np.int64)
    offs = np.argpartition(rng.random((events, pool)), K - 1, axis=1)[:, :K]  # K distinct slots of the pool
    cand = order[(arrived - pool)[:, None] + offs]
    user = rng.choice(world.n_users, events, p=world.activity / world.activity.sum())
    cdf = np.cumsum(world.interest[user].astype(np.float64), axis=1)
    cur = np.minimum((rng.random(events)[:, None] * cdf[:, -1:] > cdf).sum(axis=1), world.cfg.n_topics - 1)
    logged = rng.integers(0, K, events)
    item = cand[np.arange(events), logged]
    resp = world.respond(user, item, rng, current_topic=cur)
    start = _dt.date.fromisoformat(world.cfg.start_date)
    t0 = int(_dt.datetime(start.year, start.month, start.day, tzinfo=_dt.timezone.utc).timestamp())
    ts = t0 + EVENT_GAP_S * np.arange(events, dtype=np.int64)
    table = pa.table({"user_id": user, "item_id": item, "timestamp": ts, **{s: resp[s] for s in SIGNALS},
                      "watch_time_ms": resp["watch_time_ms"]})
    feat = RankFeaturizer(Positives.from_interactions(table, world.n_users, "auto"), item_side(world), history)
    labels = np.stack([resp[o].astype(np.float32) for o in OBJECTIVES], axis=1)
    # the truth of every candidate, under the event's own current interest (the logged one's response used it)
    exp = world.expected(np.repeat(user, K), cand.ravel(), current_topic=np.repeat(cur, K))
    truth = np.stack([exp[o].reshape(events, K).astype(np.float32) for o in OBJECTIVES], axis=2)
    return ReplayLog(user.astype(np.int64), cand.astype(np.int64), logged.astype(np.int64), ts, labels, arrival,
                     feat, world.n_users, truth)


def _take(b: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in b.items()}


def replay_policy(log: ReplayLog, policy: str, cfg: ExploreConfig, seed: int) -> dict[str, Any]:
    """Replay ``policy`` over ``log`` (see the module docstring): accepted events, clicks and long views (and per
    1,000 accepted events), the gate's explore share for AGE, and the cumulative-clicks curve."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng([seed, 7])
    side = log.featurizer.side
    model = ExplorationCTR(cfg, log.n_users, len(side.cat), side.n_cats, side.n_authors)
    gate = ItemGate(cfg, side.n_cats, side.n_authors)
    opt = torch.optim.Adam([*model.parameters(), *gate.parameters()], lr=cfg.lr)
    E, K = log.cand.shape
    got, expected = np.zeros(len(OBJECTIVES)), np.zeros(len(OBJECTIVES))
    accepted, explored, curve = 0, [], []
    shown = np.zeros(len(side.cat), np.int64)  # accepted events per item: what the model has learnt from
    logged_item = log.logged_item
    t0 = time.perf_counter()
    for start in range(0, E, cfg.block):
        ev = np.arange(start, min(E, start + cfg.block))
        items = log.cand[ev].ravel()
        b = log.featurizer.batch(np.repeat(log.user[ev], K), items, np.repeat(log.ts[ev], K))
        model.eval()
        counts = row_counts(shown, items)
        scores, share = score_candidates(policy, model, gate, b, cfg, gen, fresh_rows(counts, cfg.max_impressions),
                                         counts)
        if share is not None:
            explored.append(share)
        pick = scores.view(len(ev), K).argmax(dim=1).numpy()
        if policy == "epsilon":
            wild = rng.random(len(ev)) < cfg.epsilon
            pick = np.where(wild, rng.integers(0, K, len(ev)), pick)
        if log.truth is not None:
            expected += log.truth[ev, pick].sum(axis=0, dtype=np.float64)
        hit = np.flatnonzero(pick == log.logged[ev])
        accepted += len(hit)
        np.add.at(shown, logged_item[ev[hit]], 1)
        got += log.labels[ev[hit]].sum(axis=0)
        curve.append((int(ev[-1]) + 1, accepted, int(got[0])))
        if len(hit) and policy != "random":
            ba = _take(b, torch.from_numpy(hit * K + pick[hit]))
            ba["labels"] = torch.from_numpy(log.labels[ev[hit]])
            model.train()
            for _ in range(cfg.updates):
                loss = model.loss(ba) + gate.loss(ba, ba["labels"][:, 0])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    keep = np.unique(np.linspace(0, len(curve) - 1, CURVE_POINTS).round().astype(int))
    per = 1000.0 / max(accepted, 1)
    out: dict[str, Any] = {"accepted": accepted, **{f"{o}s": int(got[j]) for j, o in enumerate(OBJECTIVES)},
                           **{f"{o}s_per_1000": float(got[j] * per) for j, o in enumerate(OBJECTIVES)},
                           "seconds": round(time.perf_counter() - t0, 2)}
    if log.truth is not None:
        out.update({f"expected_{o}s_per_1000": float(expected[j] * 1000.0 / E) for j, o in enumerate(OBJECTIVES)})
    if explored:
        out["explored_share"] = float(np.mean(explored))
    out["curve"] = {"events": [curve[i][0] for i in keep], "accepted": [curve[i][1] for i in keep],
                    "clicks": [curve[i][2] for i in keep]}
    return out


def summarise(runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Mean and std (over seeds, population form) of each policy's per-1,000 figures, with the per-seed values."""
    out: dict[str, dict[str, Any]] = {}
    for policy, by_seed in runs.items():
        row: dict[str, Any] = {}
        for key in ("clicks_per_1000", "long_views_per_1000", "expected_clicks_per_1000",
                    "expected_long_views_per_1000", "accepted", "explored_share"):
            vals = [r[key] for r in by_seed.values() if key in r]
            if vals:
                row[key] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "values": vals}
        out[policy] = row
    return out


def run_replay(world: Any, cfg: ExploreConfig, *, progress: bool = False) -> dict[str, Any]:
    """Every policy of ``cfg.policies`` on the log of every seed of ``cfg.seeds``: per-seed runs and the summary
    ``{policy: {clicks_per_1000: {mean, std, values}, ...}}``."""
    from tqdm.auto import tqdm

    check_explore(cfg, world.n_items)
    runs: dict[str, dict[int, dict[str, Any]]] = {p: {} for p in cfg.policies}
    logged = {}
    bar = tqdm(total=len(cfg.seeds) * len(cfg.policies), desc="explore replay", disable=not progress)
    for seed in cfg.seeds:
        log = replay_log(world, events=cfg.events, candidates=cfg.candidates, pool=cfg.pool, history=cfg.history,
                         seed=seed)
        logged[seed] = log.rates()
        for policy in cfg.policies:
            bar.set_postfix(seed=seed, policy=policy)
            runs[policy][seed] = replay_policy(log, policy, cfg, seed)
            bar.update(1)
    bar.close()
    return {"logged_rates": logged, "summary": summarise(runs), "runs": runs}


def stage_explore(run: Path, cfg: RunConfig, *, progress: bool = True) -> dict[str, Any]:
    """``onerec explore RUN``: the evaluations of ``explore.evaluations`` in the run's simulated world -- the replay
    (:func:`run_replay`) and the online days (:func:`onerec.explore.online.run_online`) -> RUN/explore/metrics.json
    ``{"replay": ..., "online": ..., "settings": ...}``."""
    from onerec.data.schema import FILES
    from onerec.data.simulator import WORLD_DIR, World
    from onerec.explore.online import check_online, run_online
    from onerec.io import read_parquet, write_json
    from onerec.pipeline import save_config
    from onerec.rundir import staged
    from onerec.threads import set_threads

    ecfg = cfg.explore
    check_explore(ecfg)
    if "online" in ecfg.evaluations:
        check_online(ecfg)
    world_dir = Path(run) / "data" / WORLD_DIR
    if not (world_dir / "world.json").exists():
        raise DataError("no simulated world: both evaluations draw their exposures and responses from one",
                        path=str(world_dir),
                        fix=f"start a simulated run first: `onerec data --out {run} data.source=simulate`")
    world = World.load(world_dir)
    items = None
    if "online" in ecfg.evaluations:
        check_online(ecfg, world.n_items)
        items_path = Path(run) / "data" / FILES["items"]
        if not items_path.exists():
            raise DataError("the simulated videos' table is missing (the online run embeds their captions)",
                            path=str(items_path), fix=f"re-run `onerec data --out {run}`")
        items = read_parquet(items_path)
    set_threads(cfg.train.threads)
    with staged(run, "explore") as out:
        result: dict[str, Any] = {}
        if "replay" in ecfg.evaluations:
            result["replay"] = run_replay(world, ecfg, progress=progress)
        if items is not None:
            result["online"] = run_online(world, items, ecfg, cfg.content, progress=progress)
        result["settings"] = dataclasses.asdict(ecfg)
        write_json(out / "metrics.json", result)
        save_config(out, cfg)
    save_config(run, cfg)
    return result
