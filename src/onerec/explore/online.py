"""Online evaluation of the exploration policies in the simulated world, with new videos arriving every day.

What runs (``onerec explore RUN`` with ``explore.evaluations`` holding ``online``; ``benchmarks/exploration.py``):

* **Catalogue** (:func:`build_catalogue`, one per seed). ``explore.online_initial`` videos are live before day 0;
  ``explore.online_new_per_day`` more arrive at the start of each of the ``explore.online_days`` days, with their
  content (caption, tags, author, duration) but no history. Every video's semantic ID comes from its content
  vector: a two-level residual k-means tokenizer is fitted on the *initial* catalogue's content vectors only, and
  the new videos get theirs from :meth:`~onerec.tokenizer.ResidualKMeansTokenizer.encode`, the generator's
  cold-start path. The CTR model reads the first SID level as the category (as the ranker of the pipeline does,
  ``ItemSide.build``), so a new video is scored from its SID, author and duration until its own embedding learns.
  The catalogue and the arrivals are random draws of the world's videos; ``explore.online_new_appeal`` > 0 draws
  the arrivals with weights growing with their appeal instead (a freshness effect: new videos better on average).
* **Serving: a cascade, not the generator.** Per request (a user drawn by activity, with a current interest drawn
  from their interests): candidates = ``explore.online_candidates`` older videos retrieved by popularity (1 +
  clicks so far, drawn without replacement) + ``explore.online_new_candidates`` videos drawn uniformly from the new
  ones (arrived less than ``explore.online_new_days`` days ago). The exploration CTR model
  (:class:`~onerec.explore.model.ExplorationCTR`) ranks them; ``explore.online_slate`` - N slots take its best
  candidates, and the N = ``explore.online_explore_slots`` exploration slots take the policy's best *new*
  candidates not already shown (:func:`fill_slate`); with ``explore.online_explore_budget`` < 1 a slot explores
  only where that candidate's exploration score is at least (1 - budget) x the CTR model's prediction for the
  candidate it displaces, else the displaced one keeps it. The reference ``none`` is no exploration: every slot takes
  the CTR model's best. With ``explore.online_explore_slots=0`` no slot is reserved: the policy's own scores
  (AGE's f(h'), UCB's mean + alpha * spread, ...) rank every candidate, new or old.
* **Daily retrain.** The CTR model (and the gate) first train on a uniformly random warm-up log of the initial
  catalogue (day -1, the same for every policy of a seed); at the end of every day they train
  ``explore.online_epochs`` passes over that day's exposures, with the responses the world sampled, and the users'
  histories (their positives) grow by the day's log. Within a day the model is fixed.
* **Ground truth.** Watch time, clicks and long views are the world's *expected* values
  (:meth:`World.expected`) of every exposure, summed; the sampled responses only train the model and count clicks
  for popularity. A video's appeal is its expected watch time averaged over a fixed sample of users
  (:func:`appeal`); the top ``explore.online_good`` share of the new videos by appeal are the good ones.

Metrics (:func:`new_item_coverage`, :func:`days_to_fair`): a new video reaches a *fair amount of exposure* when it
has been shown ``explore.online_fair`` times; new-item coverage is the share of the new videos that reach it within
``explore.online_new_days`` days of arriving, over the videos that arrived early enough to have those days inside
the run; days to fair counts its arrival day as day 1. First-day cost: 1 - watch time of the policy on day 0 /
watch time of ``none`` on day 0, on the same seed.

Common random numbers: for one seed, every policy meets the same users, current interests, request times and
random draws (candidate noise, response noise) day by day, so day 0 -- where the popularity is still the warm-up's
-- differs between policies only by what they showed.
"""

from __future__ import annotations

import copy
import datetime as _dt
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from onerec.config import ContentConfig, ExploreConfig, TokenizerConfig
from onerec.data.schema import SIGNALS
from onerec.errors import ConfigError
from onerec.explore.model import OBJECTIVES, ExplorationCTR, ItemGate
from onerec.explore.policies import POLICIES, fresh_rows, row_counts, score_candidates
from onerec.reward.data import ItemSide, Positives, RankFeaturizer, duration_bucket

#: arrival day of the initial catalogue (live before day 0, with a warm-up history)
INITIAL = -1
#: arrival day of a video the run never uses; also "never reached a fair amount of exposure"
NEVER = np.iinfo(np.int64).max // 4
DAY_S = 86_400
TRAIN_BATCH = 256  # exposures per gradient step of the daily retrain
SCORE_CHUNK = 250  # requests scored in one batch
APPEAL_USERS = 500  # users in the sample that a video's ground-truth appeal averages over
#: the online reference without exploration, run beside explore.policies
NONE = "none"


@dataclass
class Catalogue:
    """Which videos are live when, their features and their ground truth, for one seed.

    arrival [N] int64: the day each video enters (:data:`INITIAL` for the initial catalogue, :data:`NEVER` for the
    videos the run does not use); codes [N, 2] int64: semantic IDs from the content vectors (-1 where unused);
    side: the CTR model's item features (category = first SID level); appeal [N] float64: expected watch time (ms)
    averaged over a fixed user sample (NaN where unused).
    """

    arrival: np.ndarray
    codes: np.ndarray
    side: ItemSide
    appeal: np.ndarray

    def new_items(self) -> np.ndarray:
        return np.flatnonzero((self.arrival >= 0) & (self.arrival < NEVER))


def check_online(cfg: ExploreConfig, n_items: int | None = None) -> None:
    """ConfigError naming the explore.online_* key and the fix for a setting the online run cannot use."""
    def bad(key: str, why: str, fix: str) -> ConfigError:
        return ConfigError(f"explore.{key}={getattr(cfg, key)!r}: {why}. Fix: {fix}")

    for key, low in (("online_days", 1), ("online_initial", 2), ("online_new_per_day", 1), ("online_new_days", 1),
                     ("online_requests", 1), ("online_slate", 1), ("online_explore_slots", 0),
                     ("online_candidates", 1), ("online_new_candidates", 1), ("online_warmup", 1),
                     ("online_epochs", 0), ("online_fair", 1), ("online_codebook", 2)):
        if getattr(cfg, key) < low:
            raise bad(key, f"must be at least {low}", f"set explore.{key} to {low} or more")
    if cfg.online_explore_slots > cfg.online_slate:
        raise bad("online_explore_slots", f"more than the explore.online_slate={cfg.online_slate} slots shown",
                  f"set explore.online_explore_slots <= {cfg.online_slate}")
    if cfg.online_explore_slots > cfg.online_new_candidates:
        raise bad("online_explore_slots", f"more than the explore.online_new_candidates={cfg.online_new_candidates} "
                  "new candidates they choose from", f"set explore.online_explore_slots <= {cfg.online_new_candidates}")
    if cfg.online_slate > cfg.online_candidates + cfg.online_new_candidates:
        raise bad("online_slate", "more slots than candidates",
                  f"set explore.online_slate <= {cfg.online_candidates + cfg.online_new_candidates}")
    if cfg.online_candidates > cfg.online_initial:
        raise bad("online_candidates", f"more than the explore.online_initial={cfg.online_initial} older videos",
                  f"set explore.online_candidates <= {cfg.online_initial}")
    if cfg.online_new_candidates > cfg.online_new_per_day:
        raise bad("online_new_candidates", f"more than the explore.online_new_per_day={cfg.online_new_per_day} new "
                  "videos of day 0", f"set explore.online_new_candidates <= {cfg.online_new_per_day}")
    if cfg.online_codebook > cfg.online_initial:
        raise bad("online_codebook", f"more codes than the explore.online_initial={cfg.online_initial} videos the "
                  "tokenizer is fitted on", f"set explore.online_codebook <= {cfg.online_initial}")
    if cfg.online_explore_budget < 0.0:
        raise bad("online_explore_budget", "must be at least 0", "e.g. explore.online_explore_budget=1 (always "
                  "explore) or 0 (only where the new candidate scores at least as high)")
    if not 0.0 < cfg.online_good < 1.0:
        raise bad("online_good", "must be in (0, 1)", "e.g. explore.online_good=0.2")
    need = cfg.online_initial + cfg.online_days * cfg.online_new_per_day
    if n_items is not None and need > n_items:
        raise bad("online_days", f"explore.online_initial + online_days * online_new_per_day = {need} videos, more "
                  f"than the world's {n_items}", "lower explore.online_initial, online_days or online_new_per_day")


def content_vectors(items: pa.Table, content: ContentConfig) -> np.ndarray:
    """Every video's content vector [N, D] (``content.*``; TF-IDF + SVD by default, from caption, title, tags)."""
    from onerec.content import item_vectors

    return item_vectors(items, content)


def _interest_draw(world: Any, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each user's current interest, drawn from their interest weights."""
    cdf = np.cumsum(world.interest[users].astype(np.float64), axis=1)
    return np.minimum((rng.random(len(users))[:, None] * cdf[:, -1:] > cdf).sum(axis=1), world.cfg.n_topics - 1)


def _users(world: Any, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(world.n_users, n, p=world.activity / world.activity.sum())


def appeal(world: Any, items: np.ndarray, seed: int, n_users: int = APPEAL_USERS) -> np.ndarray:
    """Ground-truth appeal [len(items)]: each video's expected watch time (ms, :meth:`World.expected`) averaged
    over one fixed sample of ``n_users`` users drawn by activity, each with a current interest drawn from theirs."""
    rng = np.random.default_rng([seed, 41, 5])
    u = _users(world, n_users, rng)
    cur = _interest_draw(world, u, rng)
    exp = world.expected(np.tile(u, len(items)), np.repeat(items, n_users), current_topic=np.tile(cur, len(items)))
    return exp["watch_time_ms"].reshape(len(items), n_users).mean(axis=1)


def build_catalogue(world: Any, vectors: np.ndarray, cfg: ExploreConfig, seed: int) -> Catalogue:
    """The seed's arrival order, cold-start semantic IDs and ground-truth appeal (see the module docstring)."""
    from onerec.tokenizer import ResidualKMeansTokenizer

    check_online(cfg, world.n_items)
    rng = np.random.default_rng([seed, 41, 4])
    n, n0 = world.n_items, cfg.online_initial
    order = rng.permutation(n)
    n_new = cfg.online_days * cfg.online_new_per_day
    worth = None  # every video's appeal, when the arrivals depend on it
    if cfg.online_new_appeal != 0.0:  # better videos arrive more often: weights exp(s * z) over the rest
        worth = appeal(world, np.arange(n), seed)
        rest = order[n0:]
        z = (worth[rest] - worth[rest].mean()) / max(float(worth[rest].std()), 1e-12)
        w = np.exp(cfg.online_new_appeal * (z - z.max()))
        pick = np.random.default_rng([seed, 41, 6]).choice(len(rest), size=n_new, replace=False, p=w / w.sum())
        order = np.concatenate([order[:n0], rest[np.sort(pick)]])  # arrival order: the permutation's
    used = order[:n0 + n_new]
    arrival = np.full(n, NEVER, np.int64)
    arrival[order[:n0]] = INITIAL
    arrival[used[n0:]] = np.repeat(np.arange(cfg.online_days), cfg.online_new_per_day)
    tok = ResidualKMeansTokenizer(TokenizerConfig(levels=2, codebook_size=cfg.online_codebook, unique_level=False,
                                                  seed=seed))
    tok.fit(vectors[order[:n0]])  # the initial catalogue only: the new videos are encoded, never fitted on
    codes = np.full((n, 2), -1, np.int64)
    codes[used] = tok.encode(vectors[used]).numpy()
    side = ItemSide(cat=np.maximum(codes[:, 0], 0), author=world.item_author.astype(np.int64) + 1,
                    dur=duration_bucket(world.item_duration_ms), n_cats=cfg.online_codebook,
                    n_authors=int(world.item_author.max()) + 2)
    value = np.full(n, np.nan)
    value[used] = appeal(world, used, seed) if worth is None else worth[used]
    return Catalogue(arrival, codes, side, value)


# ----------------------------------------------------------------------------- metrics
def new_item_coverage(arrival: np.ndarray, fair_day: np.ndarray, *, new_days: int, days: int,
                      items: np.ndarray | None = None) -> float:
    """Share of the new videos (``items``, default all) that reach a fair amount of exposure within ``new_days``
    days of arriving, i.e. ``fair_day - arrival < new_days``; only videos that arrived by day ``days - new_days``
    count (the others did not have the whole window inside the run). NaN when none counts.

    Example: new_days 3, days 7; arrivals 0, 2, 4, 5 with fair days 2, 6, 4, 5 -> videos 0, 2 count (4 <= 7 - 3,
    5 > 4 leaves video 3 out), video 0 reached it in time (2 - 0 < 3), video 1 did not (6 - 2 = 4), video 2 did
    (4 - 4 = 0): 2 of 3.
    """
    idx = np.flatnonzero((arrival >= 0) & (arrival < NEVER)) if items is None else np.asarray(items)
    idx = idx[arrival[idx] <= days - new_days]
    if idx.size == 0:
        return float("nan")
    return float(np.mean(fair_day[idx] - arrival[idx] < new_days))


def days_to_fair(arrival: np.ndarray, fair_day: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Days [len(items)] from arrival until a fair amount of exposure, the arrival day being day 1 (reached on
    the day it arrived: 1); inf where it never did within the run."""
    a, f = arrival[items].astype(np.float64), fair_day[items]
    return np.where(f >= NEVER, np.inf, f - a + 1.0)


def median_or_none(x: np.ndarray) -> float | None:
    """The median, or None where it is infinite (at least half never got there) or there is nothing."""
    if len(x) == 0:
        return None
    m = float(np.median(x))
    return m if np.isfinite(m) else None


# ----------------------------------------------------------------------------- serving
def fill_slate(plain: np.ndarray, explore: np.ndarray | None, n_old: int, slate: int, slots: int,
               budget: float = 1.0) -> np.ndarray:
    """Columns [R, slate] of the shown candidates of each request: the ``slate - slots`` best by the CTR model's
    ``plain`` scores [R, K] (all candidates), then ``slots`` exploration slots, one at a time: the best new
    candidate (columns ``n_old..K-1``) by the policy's ``explore`` scores [R, K - n_old] among those not shown yet
    -- or, where every new candidate is already shown, the CTR model's best remaining one. ``explore`` None (no
    exploration): all ``slate`` slots by ``plain``.

    Example: plain [.9, .1, .5, .8], n_old 2, slate 2, slots 1, explore [.3, .7] -> column 0 (plain's best), then
    the new columns 2, 3 score .3, .7: column 3 -> [0, 3]. With plain [.9, .1, .5, .95] column 3 is already the
    CTR model's best, so the exploration slot takes column 2: [3, 2]; a second exploration slot would find no new
    column left and take plain's best remaining, column 0: [3, 2, 0].

    ``budget`` (``explore.online_explore_budget``) makes the slot conditional: it explores only where the policy's
    score of its best new candidate is at least ``(1 - budget)`` times the CTR model's prediction for the candidate
    it would displace (plain's best remaining one); elsewhere that candidate keeps the slot. With budget 1 (the
    default) the slot always explores. Example: plain [.9, .1, .5, .8], explore [.3, .7], slate 2, slots 1: the
    slot would displace column 3 (.8); budget 0.2 needs .7 >= .8 * .8 = .64: explore, [0, 3] -- the same column
    here, as column 3 is new; with plain [.9, .8, .5, .1] it would displace column 1 (.8), and budget 0.1 needs
    explore >= .72: .7 is not, so the slot keeps column 1: [0, 1]; budget 0.2 (.64) explores: [0, 3].
    """
    order = np.argsort(-plain, axis=1, kind="stable")
    if explore is None or slots == 0:
        return order[:, :slate]
    main = order[:, :slate - slots]
    rows = np.arange(len(plain))
    taken = np.zeros(plain.shape, bool)
    taken[rows[:, None], main] = True
    cols = [main]
    for _ in range(slots):
        ex = np.where(taken[:, n_old:], -np.inf, explore)
        j = np.argmax(ex, axis=1)
        fallback = np.argmax(np.where(taken, -np.inf, plain), axis=1)
        worth = explore[rows, j] >= (1.0 - budget) * plain[rows, fallback]
        col = np.where(np.isfinite(ex[rows, j]) & worth, j + n_old, fallback)
        taken[rows, col] = True
        cols.append(col[:, None])
    return np.concatenate(cols, axis=1)


def _draw_day(world: Any, cat: Catalogue, cfg: ExploreConfig, day: int, clicks: np.ndarray, seed: int,
              t0: int) -> dict[str, np.ndarray]:
    """The day's requests: users, current interests, times and candidates (older by popularity, then new)."""
    rng = np.random.default_rng([seed, 43, day])
    R = cfg.online_requests
    users = _users(world, R, rng)
    cur = _interest_draw(world, users, rng)
    ts = t0 + day * DAY_S + np.sort(rng.integers(0, DAY_S, R))
    age = day - cat.arrival
    old = np.flatnonzero((cat.arrival == INITIAL) | ((cat.arrival < NEVER) & (age >= cfg.online_new_days)))
    new = np.flatnonzero((cat.arrival >= 0) & (age >= 0) & (age < cfg.online_new_days))
    keys = np.log1p(clicks[old])[None, :] + rng.gumbel(size=(R, len(old)))  # without replacement, ~ 1 + clicks
    C, M = cfg.online_candidates, cfg.online_new_candidates
    old_cand = old[np.argpartition(-keys, C - 1, axis=1)[:, :C]]
    new_cand = new[np.argpartition(rng.random((R, len(new))), M - 1, axis=1)[:, :M]]
    return {"user": users, "cur": cur, "ts": ts, "cand": np.concatenate([old_cand, new_cand], axis=1)}


def _take(b: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in b.items()}


def _serve(policy: str, model: ExplorationCTR, gate: ItemGate, feat: RankFeaturizer, req: dict[str, np.ndarray],
           cfg: ExploreConfig, gen: torch.Generator, rng: np.random.Generator,
           shows: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Shown videos [R, slate] of the day's requests under ``policy``, and the AGE gate's explore shares
    (``shows`` [N]: each video's exposures so far, for ``explore.max_impressions``).

    With ``explore.online_explore_slots`` = N > 0: N exploration slots (:func:`fill_slate`); with 0, no slot is
    reserved and the policy's scores rank every candidate (epsilon: a share ``explore.epsilon`` of the requests get
    a uniformly random slate). :data:`NONE` always ranks by the CTR model alone."""
    C = cfg.online_candidates
    R, K = req["cand"].shape
    slots = cfg.online_explore_slots
    whole = slots == 0 and policy != NONE  # no reserved slot: the policy's scores rank every candidate
    shown, shares = [], []
    model.eval()
    for s in range(0, R, SCORE_CHUNK):
        r = np.arange(s, min(R, s + SCORE_CHUNK))
        items = req["cand"][r].ravel()
        b = feat.batch(np.repeat(req["user"][r], K), items, np.repeat(req["ts"][r], K))
        counts = row_counts(shows, items)
        fresh = fresh_rows(counts, cfg.max_impressions)
        plain_t, share = score_candidates(policy if whole else "greedy", model, gate, b, cfg, gen, fresh, counts)
        plain = plain_t.view(len(r), K).numpy()
        if share is not None:
            shares.append(share)
        explore = None
        if slots and policy != NONE:
            rows = (np.arange(len(r))[:, None] * K + np.arange(C, K)[None, :]).ravel()
            ex, share = score_candidates(policy, model, gate, _take(b, torch.from_numpy(rows)), cfg, gen,
                                         None if fresh is None else fresh[rows], counts[rows])
            if share is not None:
                shares.append(share)
            explore = ex.view(len(r), K - C).numpy()
        if policy == "epsilon":
            wild = rng.random(len(r)) < cfg.epsilon
            if whole:
                plain = np.where(wild[:, None], rng.random(plain.shape), plain)
            else:
                explore = np.where(wild[:, None], rng.random(explore.shape), explore)
        cols = fill_slate(plain, explore, C, cfg.online_slate, slots if policy != NONE else 0,
                          cfg.online_explore_budget)
        shown.append(np.take_along_axis(req["cand"][r], cols, axis=1))
    return np.concatenate(shown), shares


def _log_table(user: np.ndarray, item: np.ndarray, ts: np.ndarray, resp: dict[str, np.ndarray]) -> pa.Table:
    return pa.table({"user_id": user, "item_id": item, "timestamp": ts, **{s: resp[s] for s in SIGNALS},
                     "watch_time_ms": resp["watch_time_ms"]})


def _train(model: ExplorationCTR, gate: ItemGate, opt: torch.optim.Optimizer, feat: RankFeaturizer,
           log: pa.Table, epochs: int, rng: np.random.Generator) -> None:
    """``epochs`` passes of the CTR model and the gate over the exposures of ``log``, in shuffled mini-batches."""
    user, item, ts = (log[c].to_numpy() for c in ("user_id", "item_id", "timestamp"))
    labels = np.stack([log[o].fill_null(0).to_numpy().astype(np.float32) for o in OBJECTIVES], axis=1)
    model.train()
    for _ in range(epochs):
        perm = rng.permutation(len(user))
        for s in range(0, len(perm), TRAIN_BATCH):
            idx = perm[s:s + TRAIN_BATCH]
            b = feat.batch(user[idx], item[idx], ts[idx])
            b["labels"] = torch.from_numpy(labels[idx])
            loss = model.loss(b) + gate.loss(b, b["labels"][:, 0])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


@dataclass
class Warm:
    """A seed's starting point, the same for every policy: the model after the warm-up log, and that log."""

    model: ExplorationCTR
    gate: ItemGate
    opt: torch.optim.Optimizer
    log: pa.Table
    clicks: np.ndarray  # [N] sampled clicks of each video so far (popularity)
    t0: int  # unix time of day 0's start


def warm_start(world: Any, cat: Catalogue, cfg: ExploreConfig, seed: int) -> Warm:
    """Train the CTR model and the gate on a uniformly random log of the initial catalogue (day -1)."""
    rng = np.random.default_rng([seed, 42])
    start = _dt.date.fromisoformat(world.cfg.start_date)
    t0 = int(_dt.datetime(start.year, start.month, start.day, tzinfo=_dt.timezone.utc).timestamp()) + DAY_S
    W = cfg.online_warmup
    user = _users(world, W, rng)
    cur = _interest_draw(world, user, rng)
    item = rng.choice(np.flatnonzero(cat.arrival == INITIAL), W)
    ts = t0 - DAY_S + np.sort(rng.integers(0, DAY_S, W))
    log = _log_table(user, item, ts, world.respond(user, item, rng, current_topic=cur))
    torch.manual_seed(seed)
    model = ExplorationCTR(cfg, world.n_users, world.n_items, cat.side.n_cats, cat.side.n_authors)
    gate = ItemGate(cfg, cat.side.n_cats, cat.side.n_authors)
    opt = torch.optim.Adam([*model.parameters(), *gate.parameters()], lr=cfg.lr)
    feat = RankFeaturizer(Positives.from_interactions(log, world.n_users, "auto"), cat.side, cfg.history)
    _train(model, gate, opt, feat, log, max(1, cfg.online_epochs), rng)
    clicks = np.bincount(item, weights=log["click"].to_numpy(), minlength=world.n_items)
    return Warm(model, gate, opt, log, clicks, t0)


def online_policy(world: Any, cat: Catalogue, warm: Warm, policy: str, cfg: ExploreConfig,
                  seed: int) -> dict[str, Any]:
    """``explore.online_days`` days of serving ``policy`` (or :data:`NONE`) from ``warm``, retraining daily."""
    if policy != NONE and policy not in POLICIES:
        raise ConfigError(f"unknown policy {policy!r}; one of {NONE}, {', '.join(POLICIES)}")
    t_start = time.perf_counter()
    model, gate, opt = copy.deepcopy((warm.model, warm.gate, warm.opt))
    clicks = warm.clicks.copy()
    logs = [warm.log]
    feat = RankFeaturizer(Positives.from_interactions(warm.log, world.n_users, "auto"), cat.side, cfg.history)
    n = world.n_items
    shows = np.zeros(n, np.int64)
    fair_day = np.full(n, NEVER, np.int64)
    per_day: dict[str, list[float]] = {k: [] for k in ("watch_time_h", "clicks", "long_views", "new_share",
                                                        "good_grown_share")}
    new = cat.new_items()
    good_mask = np.zeros(world.n_items, bool)
    good_mask[new[cat.appeal[new] >= np.quantile(cat.appeal[new], 1.0 - cfg.online_good)]] = True
    shares: list[float] = []
    S = cfg.online_slate
    for day in range(cfg.online_days):
        req = _draw_day(world, cat, cfg, day, clicks, seed, warm.t0)
        torch.manual_seed(seed * 1000 + day)  # the dropout masks of the day
        gen = torch.Generator().manual_seed(seed * 1000 + day)
        shown, sh = _serve(policy, model, gate, feat, req, cfg, gen, np.random.default_rng([seed, 46, day]), shows)
        shares += sh
        user, item = np.repeat(req["user"], S), shown.ravel()
        cur, ts = np.repeat(req["cur"], S), np.repeat(req["ts"], S)
        exp = world.expected(user, item, current_topic=cur)
        per_day["watch_time_h"].append(float(exp["watch_time_ms"].sum()) / 3.6e6)
        per_day["clicks"].append(float(exp["click"].sum()))
        per_day["long_views"].append(float(exp["long_view"].sum()))
        is_new = (cat.arrival[item] >= 0) & (day - cat.arrival[item] < cfg.online_new_days)
        per_day["new_share"].append(float(is_new.mean()))
        # good new videos past their new window, shown as ordinary catalogue (did what was learnt stick?)
        per_day["good_grown_share"].append(float((good_mask[item] & ~is_new).mean()))
        shows += np.bincount(item, minlength=n)
        fair_day[(shows >= cfg.online_fair) & (fair_day == NEVER)] = day
        resp = world.respond(user, item, np.random.default_rng([seed, 44, day]), current_topic=cur)
        clicks += np.bincount(item, weights=resp["click"], minlength=n)
        log = _log_table(user, item, ts, resp)
        logs.append(log)
        feat = RankFeaturizer(Positives.from_interactions(pa.concat_tables(logs), world.n_users, "auto"), cat.side,
                              cfg.history)
        if day < cfg.online_days - 1:  # the last day's retrain would serve nobody
            _train(model, gate, opt, feat, log, cfg.online_epochs, np.random.default_rng([seed, 47, day]))
    good = np.flatnonzero(good_mask)
    days = days_to_fair(cat.arrival, fair_day, good[cat.arrival[good] <= cfg.online_days - cfg.online_new_days])
    cover = dict(new_days=cfg.online_new_days, days=cfg.online_days)
    out: dict[str, Any] = {
        "watch_time_h": float(sum(per_day["watch_time_h"])), "clicks": float(sum(per_day["clicks"])),
        "long_views": float(sum(per_day["long_views"])),
        "new_item_coverage": new_item_coverage(cat.arrival, fair_day, **cover),
        "good_new_item_coverage": new_item_coverage(cat.arrival, fair_day, items=good, **cover),
        "good_days_to_fair": median_or_none(days), "good_reached_fair": float(np.isfinite(days).mean()),
        "new_exposure_share": float(np.mean(per_day["new_share"])),
        "good_grown_share_last_day": per_day["good_grown_share"][-1],
        "first_day_watch_time_h": per_day["watch_time_h"][0], "per_day": per_day,
        "seconds": round(time.perf_counter() - t_start, 2),
    }
    if shares:
        out["explored_share"] = float(np.mean(shares))
    return out


# ----------------------------------------------------------------------------- over seeds
def summarise_online(runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Mean and std (over seeds, population form) with the per-seed values of each policy's online figures, and
    against :data:`NONE` on the same seed: ``watch_time_gain`` = watch time / none's - 1 and ``first_day_cost`` =
    1 - day-0 watch time / none's (positive: exploring cost watch time on the first day)."""
    out: dict[str, dict[str, Any]] = {}
    ref = runs.get(NONE, {})

    def stat(vals: list[float]) -> dict[str, Any]:
        return {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "values": vals}

    for policy, by_seed in runs.items():
        row: dict[str, Any] = {}
        for key, name in (("watch_time_h", "watch_time"), ("clicks", "clicks"), ("long_views", "long_views"),
                          ("new_item_coverage", "new_item_coverage"),
                          ("good_new_item_coverage", "good_new_item_coverage"),
                          ("good_reached_fair", "good_reached_fair"), ("new_exposure_share", "new_exposure_share"),
                          ("good_grown_share_last_day", "good_grown_share_last_day"),
                          ("first_day_watch_time_h", "first_day_watch_time"), ("explored_share", "explored_share")):
            vals = [r[key] for r in by_seed.values() if key in r]
            if vals:
                row[name] = stat(vals)
        days = [r["good_days_to_fair"] for r in by_seed.values()]
        row["good_days_to_fair"] = {**(stat([d for d in days if d is not None]) if any(d is not None for d in days)
                                       else {}), "values": days}
        same = [s for s in by_seed if s in ref]
        if same:
            row["watch_time_gain"] = stat([by_seed[s]["watch_time_h"] / ref[s]["watch_time_h"] - 1.0 for s in same])
            row["first_day_cost"] = stat([1.0 - by_seed[s]["first_day_watch_time_h"]
                                          / ref[s]["first_day_watch_time_h"] for s in same])
        out[policy] = row
    return out


def run_online(world: Any, items: pa.Table, cfg: ExploreConfig, content: ContentConfig | None = None, *,
               progress: bool = False) -> dict[str, Any]:
    """:data:`NONE` and every policy of ``cfg.policies`` online on every seed of ``cfg.seeds``: per-seed runs and
    the summary ``{policy: {watch_time: {mean, std, values}, new_item_coverage: ..., ...}}``."""
    from tqdm.auto import tqdm

    check_online(cfg, world.n_items)
    policies = [NONE, *[p for p in cfg.policies if p != NONE]]
    vectors = content_vectors(items, content or ContentConfig(cache=False))
    runs: dict[str, dict[int, dict[str, Any]]] = {p: {} for p in policies}
    bar = tqdm(total=len(cfg.seeds) * len(policies), desc="explore online", disable=not progress)
    catalogue = {}
    for seed in cfg.seeds:
        cat = build_catalogue(world, vectors, cfg, seed)
        warm = warm_start(world, cat, cfg, seed)
        new = cat.new_items()
        catalogue[seed] = {"new_items": len(new), "appeal_new_mean_ms": float(np.mean(cat.appeal[new])),
                           "sid_level0_codes_new": len(np.unique(cat.codes[new, 0]))}
        for policy in policies:
            bar.set_postfix(seed=seed, policy=policy)
            runs[policy][seed] = online_policy(world, cat, warm, policy, cfg, seed)
            bar.update(1)
    bar.close()
    return {"summary": summarise_online(runs), "runs": runs, "catalogue": catalogue}
