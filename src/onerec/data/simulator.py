"""A simulated short-video world: users, videos, a ground-truth response model and two logging policies.

The world is the default data of the quickstart and of most tests: it needs no download, is
deterministic by seed, and can be queried for the *true* response to any (user, video) pair, so
later stages can score recommendations against it (an "online" test that real logs cannot give).

World
    * ``n_topics`` topics. Users hold 2-5 interests with Dirichlet weights; which topics depends a
      little on their demographic group (gender x age), so user features are informative.
      Activity (exposures per user) is log-normal: a heavy tail of very active users.
    * Each user carries a *current interest*: one of their interests, kept from one session to the
      next with probability ``interest_stay`` and otherwise redrawn. Videos of the current interest
      get a logit boost, so the recent history predicts the topic of the next positive.
    * Videos: an author (authors have a home topic), a topic, a log-normal duration clipped to
      5 s..5 min, a quality and a power-law popularity (rank^-1). Captions mix per-topic words,
      generic words and a little noise, so TF-IDF vectors cluster by topic; which topic words a
      caption uses depends on the video's latent vector, so text carries within-topic signal too.

Response model, per exposure (user u, video i, current interest c)::

    a      = w_int*sqrt(interest[u, topic_i]) + drift*[topic_i == c] + w_lat*<user_vec_u, item_vec_i>
             + w_q*quality_i + user_bias_u                                    (affinity)
    click  ~ Bernoulli(sigmoid(b_click + a - w_dc*log(dur/60s)))
    z      = b_watch + w_wa*a - w_dw*log(dur/60s) + Logistic(0, 1/2)         (log watch fraction)
    watch_time_ms = floor(dur * exp(clip(z, log(1s/dur), log 2)))   if click else 0
    complete_play = click and z >= 0                (watch time >= duration)
    long_view     = click and watch >= min(dur, L)  (L, the long-view threshold, is solved for)
    like/comment/forward/follow ~ Bernoulli(sigmoid(b_s + ...)) only after a long view
    profile_enter ~ Bernoulli(sigmoid(b_p + ...)) only after a click
    hate          ~ Bernoulli(sigmoid(b_h - ...)) only without a long view

so ``complete_play => long_view => click``, engagement implies a long view and hate excludes it.
Every probability and the expected watch time have closed forms (the logistic noise of scale 1/2
integrates to elementary functions), which :meth:`World.expected` returns and
:meth:`World.expected_reference` recomputes pair by pair in plain Python.

Calibration: the bias terms ``b_*`` and ``L`` are solved by bracketed root finding so that,
averaged over ``calib_pairs`` random (user, video) pairs drawn as the random policy draws them, the
rates equal KuaiRand-Pure's random-exposure rates (:data:`RANDOM_TARGETS`); this holds for any seed
and size. The *structural* weights (:data:`DEFAULT_WEIGHTS`) were chosen once so the production
policy lands near KuaiRand's production column (:data:`PRODUCTION_REFERENCE`).

Production policy (retrieve, then rank), per exposure: a topic, which follows the user's current
interest with probability ``policy_recent`` (feeds react to in-session behaviour) and otherwise comes
from what the policy knows of the taste (``taste_known`` of the true interest weights, the rest the
demographic prior); a few videos of that topic retrieved by popularity; shown: the best of them by a
partially known latent score plus noise. Videos the user has already been shown are re-drawn.

Logs are generated per fixed block of users with a random stream per block, so the in-memory
:func:`simulate` and the streaming :func:`simulate_to_dir` give identical tables whatever the chunk
size, and memory stays bounded by the chunk.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from onerec.config import SimConfig
from onerec.data.schema import FILES, INTERACTION_TYPES, SCHEMA_VERSION, SIGNALS, Dataset, conform
from onerec.errors import ConfigError, DataError
from onerec.io import atomic_path, read_json, write_json, write_parquet

__all__ = [
    "PRODUCTION_REFERENCE", "RANDOM_TARGETS", "World", "build_world", "feedback_rates", "simulate",
    "simulate_to_dir",
]

#: KuaiRand-Pure random-exposure rates per exposure; the world is calibrated to these.
#: ``engage_any`` = any of like/comment/follow/forward.
RANDOM_TARGETS: dict[str, float] = {
    "click": 0.176, "long_view": 0.085, "complete_play": 0.033,
    "engage_any": 0.0056, "profile_enter": 0.0056, "hate": 0.0011,
}
#: KuaiRand-Pure production-policy rates (reported against, not calibrated to).
PRODUCTION_REFERENCE: dict[str, float] = {
    "click": 0.451, "long_view": 0.318, "complete_play": 0.143,
    "engage_any": 0.0214, "profile_enter": 0.019, "hate": 0.0008, "long_view_given_click": 0.703,
}
#: Assumed split of ``engage_any`` over the four engagement signals (KuaiRand does not publish it here;
#: likes dominate in every public short-video log).
ENGAGE_SHARE: dict[str, float] = {"like": 0.62, "comment": 0.16, "follow": 0.12, "forward": 0.10}
ENGAGE = tuple(ENGAGE_SHARE)

#: Structural weights of the response model and the production policy. They shape the world; the
#: calibration solves the biases on top of them. Stored in world.json so a loaded world is exact.
DEFAULT_WEIGHTS: dict[str, float] = {
    "interest": 3.0,  # x sqrt(interest weight of the video's topic)
    "latent": 0.6,  # x <user_vec, item_vec>, within-topic taste (sd 1)
    "quality": 0.4,  # x video quality (sd ~1)
    "dur_click": 0.1,  # long videos are clicked slightly less
    "watch_aff": 0.33,  # affinity -> log watch fraction
    "dur_watch": 0.45,  # long videos are watched to a smaller fraction
    # engagement, profile entry and hate depend little on affinity beyond the click / long view they
    # need: in KuaiRand their rate per long view (per click) barely differs between the two policies
    "eng_aff": 0.1,
    "social": 1.0,  # x user's engagement propensity
    "eng_quality": 0.2,  # quality -> like/forward
    "author": 0.5,  # x author charisma -> follow/profile_enter
    "profile_aff": 0.1,
    "hate_aff": 0.05,  # low affinity -> hate
    "hate_quality": 0.2,
    # production policy; set (with the weights above) so its rates land near KuaiRand's production column
    "policy_topic": 0.6,  # topic ~ (known interest + 0.01)^this
    "policy_pop": 0.5,  # retrieval within the topic ~ popularity^this
    "policy_latent": 0.5,  # ranking: x <known vec, item_vec> + Gumbel noise
    "policy_recent": 0.3,  # share of picks that follow the user's current (in-session) interest
}
WATCH_SCALE = 0.5  # scale of the logistic watch noise; the closed forms below assume exactly 1/2
MIN_WATCH_MS = 1000.0  # a click plays at least a second
MAX_WATCH_FRAC = 2.0  # replays: up to twice the duration
DUR_REF_MS = 60_000.0
DUR_RANGE_MS = (5_000, 300_000)
BLOCK = 256  # users per random stream: fixed so results do not depend on the chunk size
POLICY_CANDIDATES = 8  # videos the production policy retrieves per exposure before ranking
POLICY_REDRAWS = 3  # rounds of re-drawing videos already shown to the user
LATENT_DIM = 16
WORDS_PER_TOPIC = 16
WORLD_DIR = "world"  # sub-folder of a simulated dataset folder holding the world files
SESSION_GAP_S = 60  # at least a minute between a user's sessions
# Hour-of-day weights of session starts: low at night, evening peak (short-video usage pattern).
DIURNAL = np.array([3, 2, 1, 1, 1, 1, 2, 3, 4, 4, 4, 5, 6, 5, 4, 4, 5, 6, 7, 8, 9, 9, 7, 5], dtype=np.float64)

# Named topics with a few real words each (tags come from the first words); more topics, and the
# rest of each topic's vocabulary, are generated pseudo-words.
TOPIC_WORDS: tuple[tuple[str, str], ...] = (
    ("food", "recipe noodles spicy dumpling streetfood kitchen chef hotpot bbq dessert"),
    ("travel", "trip mountain beach hotel roadtrip island backpack sunset scenery flight"),
    ("pets", "cat puppy kitten dog hamster cute paws fluffy rescue parrot"),
    ("gaming", "gameplay esports boss ranked mobilegame console speedrun clutch headshot loot"),
    ("music", "song cover guitar piano singer concert melody karaoke beat album"),
    ("dance", "choreo dancer routine moves hiphop ballet kpop rhythm duet freestyle"),
    ("comedy", "prank sketch joke skit parody laugh standup meme blooper punchline"),
    ("sports", "football basketball goal match highlights athlete league dunk marathon tennis"),
    ("fashion", "outfit style streetwear dress sneakers haul lookbook trend jacket runway"),
    ("beauty", "makeup skincare lipstick foundation eyeliner serum glow nails hairstyle mascara"),
    ("tech", "smartphone unboxing gadget laptop chip camera battery upgrade app specs"),
    ("cars", "engine drift supercar racing tuning motorcycle garage horsepower offroad sedan"),
    ("fitness", "workout gym squat abs cardio yoga stretching muscle pushup protein"),
    ("education", "lesson math physics exam study grammar lecture homework tutor quiz"),
    ("parenting", "baby toddler mom dad family kids newborn bedtime toys preschool"),
    ("news", "breaking report update weather policy interview headline local press briefing"),
    ("film", "movie trailer scene actor cinema drama series plot director boxoffice"),
    ("anime", "manga cosplay character otaku figure opening fanart chibi shonen mecha"),
    ("diy", "craft handmade woodworking repair glue tools project upcycle sewing knitting"),
    ("nature", "forest wildlife bird flower ocean waterfall camping hiking storm volcano"),
    ("art", "drawing painting canvas watercolor sculpture calligraphy portrait ink gallery mural"),
    ("finance", "stocks money invest saving budget crypto market salary fund trading"),
    ("health", "doctor sleep diet medicine wellness nutrition therapy symptoms clinic habit"),
    ("home", "decor cleaning organize interior renovation apartment garden furniture storage laundry"),
    ("photography", "photo lens shot editing tripod drone timelapse lighting filter aperture"),
    ("fishing", "fish rod bait catch lake carp angler reel boat lure"),
    ("farming", "farm harvest tractor crops village orchard rice cattle chickens greenhouse"),
    ("military", "army soldier tank jet navy drill uniform parade warship aircraft"),
    ("history", "ancient dynasty empire museum relic legend emperor castle archive dynasties"),
    ("science", "experiment chemistry space planet rocket lab biology telescope atoms robot"),
)
GENERIC_WORDS = (
    "today", "my", "new", "the", "best", "video", "watch", "this", "so", "wow", "look", "first", "time", "day",
    "life", "share", "try", "real", "how", "top", "part", "easy", "quick", "amazing", "daily", "vlog", "again",
    "finally", "must", "challenge", "love", "moment", "with", "you",
)
N_TAG_WORDS = 8  # tags come from each topic's first words

GENDERS = ("F", "M")
AGE_RANGES = ("12-17", "18-23", "24-30", "31-40", "41-49", "50+")
AGE_P = (0.06, 0.20, 0.26, 0.25, 0.14, 0.09)
N_REGIONS = 34
# KuaiRand-Pure's user_active_degree labels and shares (most active first).
ACTIVE_DEGREES = (("full_active", 0.66), ("high_active", 0.23), ("middle_active", 0.08), ("low_active", 0.03))
FANS_RANGES = ("0", "[1,10)", "[10,100)", "[100,1k)", "[1k,5k)", "[5k,1w)", "[1w,10w)")
FOLLOW_RANGES = ("0", "(0,10]", "(10,50]", "(50,100]", "(100,150]", "(150,250]", "(250,500]", "500+")
REGISTER_RANGES = ("15-30", "31-60", "61-90", "91-180", "181-365", "366-730", "730+")
REGISTER_P = (0.006, 0.014, 0.015, 0.038, 0.065, 0.127, 0.735)  # KuaiRand-Pure's register_days_range shares

# ----------------------------------------------------------------------------- the world


@dataclass(eq=False, repr=False)
class World:
    """The ground truth of a simulated world: its users, videos, response model and production policy.

    Arrays are indexed by the dense ids of the dataset tables. ``current_topic`` is each user's
    current interest: :func:`build_world` draws the initial one and :func:`simulate` leaves the one
    of the user's last logged session, so queries made after the log see the latest interest.
    ``items`` / ``users`` hold the side tables when the world was built in this process (they are
    saved with the dataset, not with the world).
    """

    cfg: SimConfig
    topic_names: list[str]
    # users
    interest: np.ndarray  # [U, T] float32, rows sum to 1
    user_vec: np.ndarray  # [U, D] float32
    user_bias: np.ndarray  # [U] float32, clickiness
    user_social: np.ndarray  # [U] float32, engagement propensity
    activity: np.ndarray  # [U] float64, relative activity weight
    current_topic: np.ndarray  # [U] int64
    policy_interest: np.ndarray  # [U, T] float32, the production policy's belief about the taste
    policy_vec: np.ndarray  # [U, D] float32
    # videos and authors
    item_topic: np.ndarray  # [N] int64
    item_author: np.ndarray  # [N] int64
    item_quality: np.ndarray  # [N] float32
    item_log_pop: np.ndarray  # [N] float32, log of the power-law popularity (0 for the top video)
    item_duration_ms: np.ndarray  # [N] int64
    item_vec: np.ndarray  # [N, D] float32
    author_topic: np.ndarray  # [A] int64
    author_quality: np.ndarray  # [A] float32
    # response model
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    bias: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, float] = field(default_factory=dict)
    items: pa.Table | None = None
    users: pa.Table | None = None

    ARRAYS: ClassVar[tuple[str, ...]] = (
        "interest", "user_vec", "user_bias", "user_social", "activity", "current_topic", "policy_interest",
        "policy_vec", "item_topic", "item_author", "item_quality", "item_log_pop", "item_duration_ms", "item_vec",
        "author_topic", "author_quality",
    )

    def __repr__(self) -> str:
        return (f"World(n_users={self.n_users}, n_items={self.n_items}, n_topics={self.cfg.n_topics}, "
                f"seed={self.cfg.seed})")

    @property
    def n_users(self) -> int:
        return int(self.interest.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_topic.shape[0])

    # ------------------------------------------------------------------ vectorised response
    def _check_ids(self, user_ids: Any, item_ids: Any, current_topic: Any) -> tuple[np.ndarray, ...]:
        u = np.asarray(user_ids, dtype=np.int64).ravel()
        i = np.asarray(item_ids, dtype=np.int64).ravel()
        if u.shape != i.shape:
            raise DataError(f"user_ids ({u.size}) and item_ids ({i.size}) differ in length",
                            fix="pass one user id per item id")
        for name, ids, n in (("user_id", u, self.n_users), ("item_id", i, self.n_items)):
            if ids.size and (ids.min() < 0 or ids.max() >= n):
                bad = int(np.flatnonzero((ids < 0) | (ids >= n))[0])
                raise DataError(f"id {ids[bad]} outside 0..{n - 1}", row=bad, column=name,
                                fix="query ids of this world's dataset tables")
        c = self.current_topic[u] if current_topic is None else np.broadcast_to(
            np.asarray(current_topic, dtype=np.int64), u.shape)
        return u, i, c

    def _logits(self, u: np.ndarray, i: np.ndarray, cur: np.ndarray) -> dict[str, np.ndarray]:
        """Per-pair logits / locations of every response, float64."""
        w, b = self.weights, self.bias
        topic = self.item_topic[i]
        x = self.interest[u, topic].astype(np.float64)
        lat = np.einsum("nd,nd->n", self.user_vec[u].astype(np.float64), self.item_vec[i].astype(np.float64))
        q = self.item_quality[i].astype(np.float64)
        aff = (w["interest"] * np.sqrt(x) + self.cfg.drift_boost * (topic == cur) + w["latent"] * lat
               + w["quality"] * q + self.user_bias[u])
        log_dur = np.log(self.item_duration_ms[i] / DUR_REF_MS)
        social = w["social"] * self.user_social[u].astype(np.float64)
        author = w["author"] * self.author_quality[self.item_author[i]].astype(np.float64)
        eng = w["eng_aff"] * aff + social
        return {
            "click": b["click"] + aff - w["dur_click"] * log_dur,
            "watch": b["watch"] + w["watch_aff"] * aff - w["dur_watch"] * log_dur,
            "like": b["like"] + eng + w["eng_quality"] * q,
            "comment": b["comment"] + eng,
            "forward": b["forward"] + eng + w["eng_quality"] * q,
            "follow": b["follow"] + eng + author,
            "profile_enter": b["profile_enter"] + w["profile_aff"] * aff + author,
            "hate": b["hate"] - w["hate_aff"] * aff - w["hate_quality"] * q,
        }

    def _watch_bounds(self, i: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Duration (ms), lower clip and long-view threshold of the log watch fraction."""
        dur = self.item_duration_ms[i].astype(np.float64)
        lo = np.log(np.minimum(MIN_WATCH_MS, dur) / dur)
        long_z = np.minimum(0.0, self.bias["long_view_log_ms"] - np.log(dur))
        return dur, lo, long_z

    def expected(self, user_ids: Any, item_ids: Any, current_topic: Any = None) -> dict[str, np.ndarray]:
        """True probability of each signal and expected ``watch_time_ms`` per (user, item) pair.

        Args:
            user_ids: user ids (any int array-like).
            item_ids: item ids, same length.
            current_topic: the users' current interest per pair (or one for all; -1: none, no
                boost); default: each user's stored ``current_topic``.

        Returns:
            ``{signal: float64 array}`` for every name in :data:`onerec.data.schema.SIGNALS`, plus
            ``watch_time_ms`` (expected play time, 0 for unclicked exposures) and ``engage_any``.
        """
        u, i, cur = self._check_ids(user_ids, item_ids, current_topic)
        lg = self._logits(u, i, cur)
        dur, lo, long_z = self._watch_bounds(i)
        mu = lg["watch"]
        p_click = _sigmoid(lg["click"])
        p_long = p_click * _sigmoid((mu - long_z) / WATCH_SCALE)
        q = {s: _sigmoid(lg[s]) for s in (*ENGAGE, "profile_enter", "hate")}
        out = {"click": p_click, "long_view": p_long, "complete_play": p_click * _sigmoid(mu / WATCH_SCALE)}
        out.update({s: p_long * q[s] for s in ENGAGE})
        out["profile_enter"] = p_click * q["profile_enter"]
        out["hate"] = (1.0 - p_long) * q["hate"]
        out["engage_any"] = p_long * (1.0 - np.prod([1.0 - q[s] for s in ENGAGE], axis=0))
        out["watch_time_ms"] = p_click * dur * _mean_exp_clipped(mu, lo, math.log(MAX_WATCH_FRAC))
        return {k: out[k] for k in (*SIGNALS, "watch_time_ms", "engage_any")}

    def respond(self, user_ids: Any, item_ids: Any, rng: np.random.Generator | int,
                current_topic: Any = None) -> dict[str, np.ndarray]:
        """Sample one response per (user, item) pair from the model :meth:`expected` describes.

        Returns:
            ``{signal: int8 array}`` for every signal plus ``watch_time_ms`` (int64).
        """
        rng = np.random.default_rng(rng)
        u, i, cur = self._check_ids(user_ids, item_ids, current_topic)
        return self._respond(u, i, cur, rng)

    def _respond(self, u: np.ndarray, i: np.ndarray, cur: np.ndarray,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
        lg = self._logits(u, i, cur)
        dur, lo, long_z = self._watch_bounds(i)
        n = u.size
        draws = rng.random((7, n))  # click, 4 engagement, profile, hate: one fixed draw order
        z = rng.logistic(lg["watch"], WATCH_SCALE) if n else np.zeros(0)
        click = draws[0] < _sigmoid(lg["click"])
        long = click & (z >= long_z)
        out = {"click": click, "long_view": long, "complete_play": click & (z >= 0.0)}
        for k, s in enumerate(ENGAGE, start=1):
            out[s] = long & (draws[k] < _sigmoid(lg[s]))
        out["profile_enter"] = click & (draws[5] < _sigmoid(lg["profile_enter"]))
        out["hate"] = ~long & (draws[6] < _sigmoid(lg["hate"]))
        # floor keeps complete_play <=> watch_time_ms >= duration exactly (durations are whole ms)
        watch = np.floor(dur * np.exp(np.clip(z, lo, math.log(MAX_WATCH_FRAC))))
        res = {s: out[s].astype(np.int8) for s in SIGNALS}
        res["watch_time_ms"] = np.where(click, watch, 0.0).astype(np.int64)
        return res

    # ------------------------------------------------------------------ plain reference
    def expected_reference(self, user_ids: Any, item_ids: Any, current_topic: Any = None) -> dict[str, np.ndarray]:
        """Pair-by-pair plain-Python version of :meth:`expected` (slow; the check of the fast one)."""
        u_arr, i_arr, c_arr = self._check_ids(user_ids, item_ids, current_topic)
        rows = [self._reference_pair(int(u), int(i), int(c)) for u, i, c in zip(u_arr, i_arr, c_arr)]
        keys = (*SIGNALS, "watch_time_ms", "engage_any")
        return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in keys}

    def _reference_pair(self, u: int, i: int, cur: int) -> dict[str, float]:
        w, b = self.weights, self.bias

        def sig(x: float) -> float:
            return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))

        topic = int(self.item_topic[i])
        lat = sum(float(a) * float(c) for a, c in zip(self.user_vec[u], self.item_vec[i]))
        q = float(self.item_quality[i])
        boost = self.cfg.drift_boost if topic == cur else 0.0
        aff = (w["interest"] * math.sqrt(float(self.interest[u, topic])) + boost + w["latent"] * lat
               + w["quality"] * q + float(self.user_bias[u]))
        dur = float(self.item_duration_ms[i])
        log_dur = math.log(dur / DUR_REF_MS)
        eng = w["eng_aff"] * aff + w["social"] * float(self.user_social[u])
        author = w["author"] * float(self.author_quality[int(self.item_author[i])])
        p_click = sig(b["click"] + aff - w["dur_click"] * log_dur)
        mu = b["watch"] + w["watch_aff"] * aff - w["dur_watch"] * log_dur
        long_z = min(0.0, b["long_view_log_ms"] - math.log(dur))
        p_long = p_click * sig((mu - long_z) / WATCH_SCALE)
        q_eng = {"like": sig(b["like"] + eng + w["eng_quality"] * q), "comment": sig(b["comment"] + eng),
                 "forward": sig(b["forward"] + eng + w["eng_quality"] * q), "follow": sig(b["follow"] + eng + author)}
        res = {"click": p_click, "long_view": p_long, "complete_play": p_click * sig(mu / WATCH_SCALE)}
        res.update({s: p_long * q_eng[s] for s in ENGAGE})
        res["profile_enter"] = p_click * sig(b["profile_enter"] + w["profile_aff"] * aff + author)
        res["hate"] = (1.0 - p_long) * sig(b["hate"] - w["hate_aff"] * aff - w["hate_quality"] * q)
        none = 1.0
        for s in ENGAGE:
            none *= 1.0 - q_eng[s]
        res["engage_any"] = p_long * (1.0 - none)
        # E[exp(clip(z))] for z = mu + Logistic(0, 1/2): the two clipped tails plus the middle integral,
        # which under p = P(z <= x) becomes exp(mu) * int sqrt(p / (1 - p)) dp.
        lo, hi = math.log(min(MIN_WATCH_MS, dur) / dur), math.log(MAX_WATCH_FRAC)
        p_lo, p_hi = sig((lo - mu) / WATCH_SCALE), sig((hi - mu) / WATCH_SCALE)

        def anti(p: float) -> float:
            return math.asin(math.sqrt(p)) - math.sqrt(p * (1.0 - p))

        mean = math.exp(lo) * p_lo + math.exp(mu) * (anti(p_hi) - anti(p_lo)) + math.exp(hi) * (1.0 - p_hi)
        res["watch_time_ms"] = p_click * dur * mean
        return res

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> Path:
        """Write ``world.safetensors`` (arrays) and ``world.json`` (config, weights, biases) into ``folder``."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "world.safetensors") as tmp:
            save_file({k: np.ascontiguousarray(getattr(self, k)) for k in self.ARRAYS}, str(tmp))
        write_json(folder / "world.json", {
            "format": "onerec-sim-world", "version": 1, "config": dataclasses.asdict(self.cfg),
            "topic_names": self.topic_names, "weights": self.weights, "bias": self.bias,
            "calibration": self.calibration,
        })
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> World:
        """Read a world written by :meth:`save` (a simulated dataset folder holds one)."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        folder = Path(folder)
        meta = read_json(folder / "world.json")
        if meta.get("format") != "onerec-sim-world":
            raise DataError("not a simulated-world file", path=str(folder / "world.json"),
                            fix="point at a folder written by simulate_to_dir or World.save")
        path = folder / "world.safetensors"
        if not path.exists():
            raise DataError("file not found", path=str(path), fix="re-run the simulation that wrote this folder")
        try:
            arrays = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise DataError(f"unreadable world arrays ({e})", path=str(path), fix="re-run the simulation") from None
        missing = [k for k in cls.ARRAYS if k not in arrays]
        if missing:
            raise DataError(f"missing arrays {missing}", path=str(path), fix="re-run the simulation")
        cfg = SimConfig(**{f.name: meta["config"][f.name] for f in dataclasses.fields(SimConfig)
                           if f.name in meta["config"]})
        return cls(cfg=cfg, topic_names=list(meta["topic_names"]), weights=dict(meta["weights"]),
                   bias=dict(meta["bias"]), calibration=dict(meta.get("calibration", {})),
                   **{k: arrays[k] for k in cls.ARRAYS})


    def render_covers(self, items: pa.Table, folder: str | Path, *, size: int = 64, frames: int = 0,
                      relative_to: str | Path | None = None) -> pa.Table:
        """Cover (and frame) images for the videos, drawn from their topic and latent vector
        (:func:`onerec.data.covers.render_covers`); returns ``items`` with the path columns added."""
        from onerec.data.covers import render_covers

        return render_covers(items, folder, item_vec=self.item_vec, n_topics=self.cfg.n_topics, size=size,
                             frames=frames, relative_to=relative_to)


# ----------------------------------------------------------------------------- closed forms


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: no overflow warnings for large |x|
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def _mean_exp_clipped(mu: np.ndarray, lo: np.ndarray, hi: float) -> np.ndarray:
    """E[exp(clip(z, lo, hi))] for z ~ Logistic(mu, 1/2), elementwise (see ``_reference_pair``)."""
    p_lo = _sigmoid((lo - mu) / WATCH_SCALE)
    p_hi = _sigmoid((hi - mu) / WATCH_SCALE)

    def anti(p: np.ndarray) -> np.ndarray:
        return np.arcsin(np.sqrt(p)) - np.sqrt(p * (1.0 - p))

    return np.exp(lo) * p_lo + np.exp(mu) * (anti(p_hi) - anti(p_lo)) + math.exp(hi) * (1.0 - p_hi)


# ----------------------------------------------------------------------------- building


def _check_config(cfg: SimConfig) -> None:
    problems = []
    if cfg.n_users < 1 or cfg.n_items < 2 or cfg.n_events < 1:
        problems.append("n_users >= 1, n_items >= 2 and n_events >= 1")
    if cfg.n_topics < 2 or cfg.n_authors < 1:
        problems.append("n_topics >= 2 and n_authors >= 1")
    if not (0.0 <= cfg.random_share <= 1.0 and 0.0 <= cfg.taste_known <= 1.0 and 0.0 <= cfg.interest_stay <= 1.0):
        problems.append("random_share, taste_known and interest_stay in [0, 1]")
    if cfg.days < 1 or cfg.session_len < 1.0 or cfg.min_exposures < 0 or cfg.calib_pairs < 1000:
        problems.append("days >= 1, session_len >= 1, min_exposures >= 0 and calib_pairs >= 1000")
    if problems:
        raise ConfigError(f"data.sim: need {'; '.join(problems)} (got {dataclasses.asdict(cfg)})")
    try:
        _start_epoch(cfg)
    except ValueError:
        raise ConfigError(f"data.sim.start_date = {cfg.start_date!r} is not a YYYY-MM-DD date") from None


def _start_epoch(cfg: SimConfig) -> int:
    day = _dt.date.fromisoformat(cfg.start_date)
    return int(_dt.datetime(day.year, day.month, day.day, tzinfo=_dt.timezone.utc).timestamp())


def _rng(cfg: SimConfig, *stream: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, *stream])


def _zipf(n: int, alpha: float) -> np.ndarray:
    p = (np.arange(n) + 1.0) ** -alpha
    return p / p.sum()


def _categorical(prob_rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """One draw per row of a row-stochastic matrix, by inverse CDF."""
    cdf = np.cumsum(prob_rows, axis=1)
    idx = (u[:, None] * cdf[:, -1:] > cdf).sum(axis=1)
    return np.minimum(idx, prob_rows.shape[1] - 1)


def build_world(cfg: SimConfig) -> World:
    """Draw the users, videos and authors of a world and calibrate its response model.

    Deterministic by ``cfg.seed``. The returned world holds the side tables in ``items`` / ``users``.
    """
    _check_config(cfg)
    rng = _rng(cfg, 0)
    names = _topic_names(cfg.n_topics)
    topic_prior = rng.permutation(_zipf(cfg.n_topics, 0.6))  # some topics are bigger than others
    users = _draw_users(cfg, rng, topic_prior)
    items = _draw_items(cfg, rng, topic_prior)
    world = World(cfg=cfg, topic_names=names, **users["arrays"], **items["arrays"])
    world.calibration = _calibrate(world, _rng(cfg, 1))
    world.users = _users_table(users["features"], cfg.n_users)
    world.items = _items_table(world, items["text"], names)
    return world


def _topic_names(n_topics: int) -> list[str]:
    named = [t for t, _ in TOPIC_WORDS]
    return named[:n_topics] + [f"topic{k}" for k in range(len(named), n_topics)]


def _draw_users(cfg: SimConfig, rng: np.random.Generator, topic_prior: np.ndarray) -> dict[str, Any]:
    U, T = cfg.n_users, cfg.n_topics
    gender = rng.integers(0, len(GENDERS), U)
    age = rng.choice(len(AGE_RANGES), U, p=AGE_P)
    group = gender * len(AGE_RANGES) + age
    # each demographic group leans toward some topics: makes user features informative
    group_prior = rng.dirichlet(np.full(T, 2.0), size=len(GENDERS) * len(AGE_RANGES)) * topic_prior
    group_prior /= group_prior.sum(axis=1, keepdims=True)
    k = rng.integers(2, min(5, T) + 1, U)
    keys = np.log(group_prior[group]) + rng.gumbel(size=(U, T))  # Gumbel top-k: k topics w/o replacement
    ranks = np.argsort(np.argsort(-keys, axis=1), axis=1)
    weights = rng.gamma(1.0, size=(U, T)) * (ranks < k[:, None])  # Dirichlet(1) over the chosen topics
    interest = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
    user_vec = (rng.standard_normal((U, LATENT_DIM)) / LATENT_DIM**0.25).astype(np.float32)
    activity = np.exp(cfg.activity_sigma * rng.standard_normal(U))
    current = _categorical(interest.astype(np.float64), rng.random(U)).astype(np.int64)
    known = cfg.taste_known
    policy_interest = (known * interest + (1.0 - known) * group_prior[group]).astype(np.float32)
    noise = rng.standard_normal((U, LATENT_DIM)) / LATENT_DIM**0.25
    policy_vec = (math.sqrt(known) * user_vec + math.sqrt(1.0 - known) * noise).astype(np.float32)
    arrays = {
        "interest": interest, "user_vec": user_vec,
        "user_bias": (0.5 * rng.standard_normal(U)).astype(np.float32),
        "user_social": (0.6 * rng.standard_normal(U)).astype(np.float32),
        "activity": activity, "current_topic": current, "policy_interest": policy_interest, "policy_vec": policy_vec,
    }
    return {"arrays": arrays, "features": _user_features(rng, gender, age, activity)}


def _user_features(rng: np.random.Generator, gender: np.ndarray, age: np.ndarray,
                   activity: np.ndarray) -> dict[str, np.ndarray]:
    U = len(gender)
    act_rank = np.argsort(np.argsort(-activity)) / max(U, 1)  # 0 = most active
    degree = np.searchsorted(np.cumsum([p for _, p in ACTIVE_DEGREES])[:-1], act_rank, side="right")
    is_author = (rng.random(U) < 0.8).astype(np.int8)
    fans_score = 2.0 + 1.2 * rng.standard_normal(U) - 1.5 * (1 - is_author)  # ~[10,100) typical, authors more
    fans = np.clip(np.round(fans_score), 0, len(FANS_RANGES) - 1).astype(np.int64)
    follow_score = 3.5 + 0.8 * np.log(activity) + 1.3 * rng.standard_normal(U)  # active users follow more
    follow = np.clip(np.round(follow_score), 0, len(FOLLOW_RANGES) - 1).astype(np.int64)
    return {
        "gender": np.array(GENDERS)[gender], "age_range": np.array(AGE_RANGES)[age],
        "region": rng.choice(N_REGIONS, U, p=_zipf(N_REGIONS, 0.8)).astype(np.int64),
        "user_active_degree": np.array([d for d, _ in ACTIVE_DEGREES])[degree],
        "is_video_author": is_author, "fans_user_num_range": np.array(FANS_RANGES)[fans],
        "follow_user_num_range": np.array(FOLLOW_RANGES)[follow],
        "register_days_range": np.array(REGISTER_RANGES)[rng.choice(len(REGISTER_RANGES), U, p=REGISTER_P)],
    }


def _users_table(features: dict[str, np.ndarray], n_users: int) -> pa.Table:
    cols: dict[str, Any] = {"user_id": np.arange(n_users, dtype=np.int64),
                            "raw_id": pa.array([f"sim_u{u}" for u in range(n_users)])}
    cols.update({k: pa.array(v) for k, v in features.items()})
    return pa.table(cols)


def _draw_items(cfg: SimConfig, rng: np.random.Generator, topic_prior: np.ndarray) -> dict[str, Any]:
    N, T, A = cfg.n_items, cfg.n_topics, cfg.n_authors
    author_topic = rng.choice(T, A, p=topic_prior).astype(np.int64)
    author_quality = rng.standard_normal(A).astype(np.float32)
    author = rng.choice(A, N, p=rng.permutation(_zipf(A, 1.0))).astype(np.int64)  # prolific few
    stray = rng.random(N) < 0.15  # authors mostly stay on their home topic
    topic = np.where(stray, rng.choice(T, N, p=topic_prior), author_topic[author]).astype(np.int64)
    quality = (0.6 * author_quality[author] + 0.8 * rng.standard_normal(N)).astype(np.float32)
    hype = quality + rng.standard_normal(N)  # popularity follows quality, loosely
    rank = np.empty(N, dtype=np.int64)
    rank[np.argsort(-hype)] = np.arange(N)
    log_pop = (-np.log1p(rank)).astype(np.float32)  # power law: popularity ~ rank^-1
    topic_dur = 0.3 * rng.standard_normal(T)  # e.g. films run longer than memes
    log_dur = math.log(55_000.0) + topic_dur[topic] + 0.9 * rng.standard_normal(N)
    duration = np.clip(np.round(np.exp(log_dur)), *DUR_RANGE_MS).astype(np.int64)
    item_vec = (rng.standard_normal((N, LATENT_DIM)) / LATENT_DIM**0.25).astype(np.float32)
    arrays = {
        "item_topic": topic, "item_author": author, "item_quality": quality, "item_log_pop": log_pop,
        "item_duration_ms": duration, "item_vec": item_vec, "author_topic": author_topic,
        "author_quality": author_quality,
    }
    return {"arrays": arrays, "text": _draw_text(rng, topic, item_vec, T)}


# ----------------------------------------------------------------------------- captions


def _vocabulary(rng: np.random.Generator, n_topics: int) -> list[list[str]]:
    """WORDS_PER_TOPIC words per topic: the named topics' real words, then pronounceable pseudo-words."""
    onset = ("b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch", "sh")
    vowel = ("a", "e", "i", "o", "u", "ai", "ou")
    seen = set(GENERIC_WORDS)
    vocab = []
    for t in range(n_topics):
        words = [w for w in TOPIC_WORDS[t][1].split() if w not in seen] if t < len(TOPIC_WORDS) else []
        seen.update(words)
        while len(words) < WORDS_PER_TOPIC:
            n_syl = int(rng.integers(2, 4))
            w = "".join(onset[rng.integers(len(onset))] + vowel[rng.integers(len(vowel))] for _ in range(n_syl))
            if w not in seen:
                seen.add(w)
                words.append(w)
        vocab.append(words)
    return vocab


def _draw_text(rng: np.random.Generator, topic: np.ndarray, item_vec: np.ndarray, n_topics: int) -> dict[str, Any]:
    """Word-id matrices for captions, titles and tags (strings are joined in ``_items_table``)."""
    N, V = len(topic), WORDS_PER_TOPIC
    vocab = _vocabulary(rng, n_topics)
    word_vec = rng.standard_normal((n_topics, V, LATENT_DIM)) / LATENT_DIM**0.25
    base = np.log(_zipf(V, 0.7))
    n_max = 12
    topic_words = np.empty((N, n_max), dtype=np.int64)
    for t in range(n_topics):  # a video's latent vector tilts which of its topic's words it uses
        idx = np.flatnonzero(topic == t)
        if idx.size == 0:
            continue
        logits = base + 1.0 * (item_vec[idx].astype(np.float64) @ word_vec[t].T)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        cdf = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
        draws = (rng.random((idx.size, n_max))[:, :, None] > cdf[:, None, :]).sum(axis=2)
        topic_words[idx] = t * V + np.minimum(draws, V - 1)
    n_topic = np.minimum(4 + rng.poisson(3.0, N), n_max)
    generic = n_topics * V + rng.integers(0, len(GENERIC_WORDS), (N, 8))
    n_generic = np.minimum(2 + rng.poisson(2.0, N), 8)
    noise = rng.integers(0, n_topics * V, N)  # a stray word of some other topic
    has_noise = rng.random(N) < 0.3
    order_keys = rng.random((N, n_max + 9))
    tag_pick = rng.integers(0, min(N_TAG_WORDS, V), (N, 2))
    n_tags = rng.integers(1, 3, N)
    stray_tag = np.where(rng.random(N) < 0.1, rng.integers(0, n_topics, N), -1)
    words = [w for ws in vocab for w in ws] + list(GENERIC_WORDS)
    return {"words": words, "vocab": vocab, "topic_words": topic_words, "n_topic": n_topic, "generic": generic,
            "n_generic": n_generic, "noise": noise, "has_noise": has_noise, "order_keys": order_keys,
            "tag_pick": tag_pick, "n_tags": n_tags, "stray_tag": stray_tag}


def _items_table(world: World, text: dict[str, Any], names: list[str]) -> pa.Table:
    N = world.n_items
    words, vocab = text["words"], text["vocab"]
    # caption: pad unused slots with -1, shuffle the slots per video with the drawn keys
    n_max = text["topic_words"].shape[1]
    slots = np.full((N, n_max + 9), -1, dtype=np.int64)
    slots[:, :n_max] = np.where(np.arange(n_max) < text["n_topic"][:, None], text["topic_words"], -1)
    slots[:, n_max:n_max + 8] = np.where(np.arange(8) < text["n_generic"][:, None], text["generic"], -1)
    slots[:, -1] = np.where(text["has_noise"], text["noise"], -1)
    shuffled = np.take_along_axis(slots, np.argsort(text["order_keys"], axis=1), axis=1)
    captions, titles, tags = [], [], []
    for i in range(N):
        captions.append(" ".join(words[w] for w in shuffled[i] if w >= 0))
        titles.append(f"{words[text['topic_words'][i, 0]]} {words[text['topic_words'][i, 1]]} "
                      f"{words[text['generic'][i, 0]]}")
        t = int(world.item_topic[i])
        tag = [names[t]] + [vocab[t][k] for k in text["tag_pick"][i, : text["n_tags"][i]]]
        if text["stray_tag"][i] >= 0:
            tag.append(names[text["stray_tag"][i]])
        tags.append(list(dict.fromkeys(tag)))  # dedupe, keep order
    return pa.table({
        "item_id": np.arange(N, dtype=np.int64), "raw_id": pa.array([f"sim_v{i}" for i in range(N)]),
        "title": pa.array(titles), "text": pa.array(captions), "tags": pa.array(tags, type=pa.list_(pa.string())),
        "category": pa.array([names[t] for t in world.item_topic]), "author_id": world.item_author,
        "duration_ms": world.item_duration_ms, "topic": world.item_topic,
    })


# ----------------------------------------------------------------------------- calibration


def _bisect(mean_prob: Any, target: float, lo: float = -40.0, hi: float = 40.0, tol: float = 1e-9) -> float:
    """Solve ``mean_prob(b) == target`` for an increasing ``mean_prob`` on [lo, hi].

    Bracketing regula falsi with the Illinois fix: as safe as bisection (the root stays bracketed)
    but converges in ~10 evaluations instead of ~60, which matters over 200k calibration pairs.
    """
    f_lo, f_hi = mean_prob(lo) - target, mean_prob(hi) - target
    if f_lo >= 0 or f_hi <= 0:  # target out of reach: the nearest end
        return lo if f_lo >= 0 else hi
    side = 0
    for _ in range(100):
        x = hi - f_hi * (hi - lo) / (f_hi - f_lo)
        f = mean_prob(x) - target
        if abs(f) <= tol * target or hi - lo < 1e-12:
            return x
        if f < 0:
            lo, f_lo = x, f
            if side == -1:
                f_hi *= 0.5  # the same end moved twice: halve the other's weight
            side = -1
        else:
            hi, f_hi = x, f
            if side == 1:
                f_lo *= 0.5
            side = 1
    return x


def _calibration_pairs(world: World, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(user, item, current topic) as the random policy meets them: users by expected exposures,
    videos uniform, current interest from the stationary distribution (the interest weights)."""
    cfg = world.cfg
    m = cfg.calib_pairs
    share = world.activity / world.activity.sum()
    base = min(cfg.min_exposures, cfg.n_events // cfg.n_users)
    expected_n = base + (cfg.n_events - base * cfg.n_users) * share
    u = rng.choice(world.n_users, m, p=expected_n / expected_n.sum())
    i = rng.integers(0, world.n_items, m)
    cur = _categorical(world.interest[u].astype(np.float64), rng.random(m))
    return u, i, cur


def _calibrate(world: World, rng: np.random.Generator) -> dict[str, float]:
    """Solve the response biases so the random-exposure rates equal :data:`RANDOM_TARGETS`.

    Each step solves one bias with the earlier ones fixed, in dependency order: click; the watch
    location (complete play); the long-view threshold; the engagement signals (each to its share,
    then one common shift for "any"); profile entry; hate. Returns the rates the solution gives.
    """
    u, i, cur = _calibration_pairs(world, rng)
    world.bias = {k: 0.0 for k in ("click", "watch", *ENGAGE, "profile_enter", "hate")}
    world.bias["long_view_log_ms"] = math.log(20_000.0)
    base = world._logits(u, i, cur)  # all biases 0: logits are offsets to add biases to
    dur, _, _ = world._watch_bounds(i)
    log_dur = np.log(dur)
    tgt = RANDOM_TARGETS
    b = world.bias
    b["click"] = _bisect(lambda x: _sigmoid(x + base["click"]).mean(), tgt["click"])
    p_click = _sigmoid(b["click"] + base["click"])
    b["watch"] = _bisect(lambda x: (p_click * _sigmoid((x + base["watch"]) / WATCH_SCALE)).mean(),
                         tgt["complete_play"])
    mu = b["watch"] + base["watch"]

    def long_rate(log_ms: float) -> float:
        return float((p_click * _sigmoid((mu - np.minimum(0.0, log_ms - log_dur)) / WATCH_SCALE)).mean())

    # a higher threshold means fewer long views: bisect on the negated threshold
    b["long_view_log_ms"] = -_bisect(lambda x: long_rate(-x), tgt["long_view"], -math.log(1e7), 0.0)
    p_long = p_click * _sigmoid((mu - np.minimum(0.0, b["long_view_log_ms"] - log_dur)) / WATCH_SCALE)
    for s in ENGAGE:
        b[s] = _bisect(lambda x, s=s: (p_long * _sigmoid(x + base[s])).mean(), tgt["engage_any"] * ENGAGE_SHARE[s])

    def any_rate(shift: float) -> float:
        none = np.prod([1.0 - _sigmoid(b[s] + shift + base[s]) for s in ENGAGE], axis=0)
        return float((p_long * (1.0 - none)).mean())

    shift = _bisect(any_rate, tgt["engage_any"], -5.0, 5.0)  # overlaps make "any" a bit short of the sum
    for s in ENGAGE:
        b[s] += shift
    b["profile_enter"] = _bisect(lambda x: (p_click * _sigmoid(x + base["profile_enter"])).mean(),
                                 tgt["profile_enter"])
    b["hate"] = _bisect(lambda x: ((1.0 - p_long) * _sigmoid(x + base["hate"])).mean(), tgt["hate"])
    exp = world.expected(u, i, cur)
    rates = {s: float(exp[s].mean()) for s in ("click", "long_view", "complete_play", "engage_any",
                                                 "profile_enter", "hate")}
    rates["long_view_given_click"] = rates["long_view"] / rates["click"]
    rates["long_view_threshold_ms"] = math.exp(b["long_view_log_ms"])
    return rates


# ----------------------------------------------------------------------------- logging


def _exposure_counts(cfg: SimConfig, world: World) -> tuple[np.ndarray, np.ndarray]:
    """Exposures per user (heavy-tailed, summing to n_events) and how many are random (exact share)."""
    rng = _rng(cfg, 2)
    base = min(cfg.min_exposures, cfg.n_events // cfg.n_users)
    rest = cfg.n_events - base * cfg.n_users
    n = base + rng.multinomial(rest, world.activity / world.activity.sum())
    n_random = round(cfg.random_share * cfg.n_events)
    method = "count" if cfg.n_events < 1_000_000 else "marginals"  # 'count' allocates O(n_events)
    rand = rng.multivariate_hypergeometric(n, n_random, method=method)
    return n.astype(np.int64), rand.astype(np.int64)


@dataclass
class _Catalogue:
    """The production policy's retrieval index: videos grouped by topic with popularity CDFs."""

    order: np.ndarray  # item ids sorted by topic
    cdf: np.ndarray  # topic + cumulative popularity share within the topic, so one searchsorted serves all
    end: np.ndarray  # [T] one past each topic's last position in ``order``
    has_items: np.ndarray  # [T] bool


def _catalogue(world: World) -> _Catalogue:
    T = world.cfg.n_topics
    order = np.argsort(world.item_topic, kind="stable")
    topic = world.item_topic[order]
    weight = np.exp(world.weights["policy_pop"] * world.item_log_pop[order].astype(np.float64))
    counts = np.bincount(topic, minlength=T)
    end = np.cumsum(counts)
    cum = np.cumsum(weight)
    before = np.r_[0.0, cum][end - counts]  # popularity mass of earlier topics
    total = np.r_[0.0, cum][end] - before
    within = (cum - before[topic]) / total[topic]
    within[end[counts > 0] - 1] = 1.0  # exact segment ends
    return _Catalogue(order, topic + within, end, counts > 0)


def _production_items(world: World, cat: _Catalogue, ev_user: np.ndarray, ev_current: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
    """The production policy's exposures, retrieve-then-rank, O(exposures x candidates).

    Per exposure: a topic, which with probability ``policy_recent`` is the user's current interest (real
    feeds react to in-session behaviour) and otherwise comes from the policy's belief about the user's
    taste (``taste_known`` of the true interests, the rest the demographic prior); ``POLICY_CANDIDATES``
    videos of that topic retrieved by popularity; shown: the best of them by the policy's partial latent
    score plus Gumbel noise. Videos already shown to the user are re-drawn a few times (feeds rarely repeat).
    """
    w = world.weights
    users, ev_rank = np.unique(ev_user, return_inverse=True)
    topic_p = (world.policy_interest[users].astype(np.float64) + 0.01) ** w["policy_topic"] * cat.has_items
    topic = _categorical(topic_p[ev_rank], rng.random(len(ev_rank)))
    follow = (rng.random(len(ev_rank)) < w["policy_recent"]) & cat.has_items[ev_current]
    topic = np.where(follow, ev_current, topic)
    items = _retrieve_and_rank(world, cat, ev_user, topic, rng)
    for _ in range(POLICY_REDRAWS):
        key = ev_user * world.n_items + items
        srt = np.argsort(key, kind="stable")
        dup = np.zeros(len(key), bool)
        dup[srt[1:]] = key[srt[1:]] == key[srt[:-1]]  # every repeat after the first showing
        redo = np.flatnonzero(dup)
        if redo.size == 0:
            break
        items[redo] = _retrieve_and_rank(world, cat, ev_user[redo], topic[redo], rng)
    return items


def _retrieve_and_rank(world: World, cat: _Catalogue, ev_user: np.ndarray, topic: np.ndarray,
                       rng: np.random.Generator) -> np.ndarray:
    draws = topic[:, None] + rng.random((len(topic), POLICY_CANDIDATES))
    pos = np.minimum(np.searchsorted(cat.cdf, draws, side="right"), cat.end[topic][:, None] - 1)
    cand = cat.order[pos]  # [E, C]
    score = np.einsum("ed,ecd->ec", world.policy_vec[ev_user], world.item_vec[cand])
    score = world.weights["policy_latent"] * score + rng.gumbel(size=score.shape)
    return cand[np.arange(len(cand)), np.argmax(score, axis=1)]


def _segment_starts(counts: np.ndarray) -> np.ndarray:
    return np.cumsum(counts) - counts


def _simulate_block(world: World, cat: _Catalogue, users: np.ndarray, n: np.ndarray, n_rand: np.ndarray,
                    rng: np.random.Generator, start_epoch: int) -> dict[str, np.ndarray]:
    """Log the exposures of one block of users: sessions, current interests, items, responses, times."""
    cfg = world.cfg
    ev_user = np.repeat(users, n)
    # which of a user's exposures are random: n_rand of them, at random positions of the timeline
    pos = np.arange(len(ev_user)) - np.repeat(_segment_starts(n), n)
    order = np.lexsort((rng.random(len(ev_user)), ev_user))
    is_rand = np.empty(len(ev_user), bool)
    is_rand[order] = pos < np.repeat(n_rand, n)
    # sessions: the user's first exposure opens one, then each exposure does with prob 1/session_len
    first = pos == 0
    new_sess = first | (rng.random(len(ev_user)) < 1.0 / cfg.session_len)
    sess_id = np.cumsum(new_sess) - 1
    sess_user = ev_user[new_sess]
    sess_first = first[new_sess]
    sess_topic = _session_topics(world, sess_user, sess_first, rng)
    ev_current = sess_topic[sess_id]
    ev_item = np.empty(len(ev_user), np.int64)
    ev_item[is_rand] = rng.integers(0, world.n_items, int(is_rand.sum()))
    prod = ~is_rand
    ev_item[prod] = _production_items(world, cat, ev_user[prod], ev_current[prod], rng)
    resp = world._respond(ev_user, ev_item, ev_current, rng)
    ts = _timestamps(cfg, users, sess_user, sess_id, new_sess, resp["watch_time_ms"], rng) + start_epoch
    last = np.flatnonzero(np.r_[sess_first[1:], True])  # each user's last session
    world.current_topic[sess_user[last]] = sess_topic[last]
    return {"user_id": ev_user, "item_id": ev_item, "timestamp": ts, **resp, "is_random": is_rand}


def _session_topics(world: World, sess_user: np.ndarray, sess_first: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """The Markov chain of current interests: keep with prob interest_stay, else redraw from the interests.

    The first session continues the user's stored current interest. Vectorised with a forward fill of
    the index of the last switching session (a user's first session always "switches", so fills never
    cross users).
    """
    S = len(sess_user)
    cand = _categorical(world.interest[sess_user].astype(np.float64), rng.random(S))
    switch = sess_first | (rng.random(S) >= world.cfg.interest_stay)
    cand = np.where(sess_first, world.current_topic[sess_user], cand)
    src = np.maximum.accumulate(np.where(switch, np.arange(S), 0))
    return cand[src]


def _timestamps(cfg: SimConfig, users: np.ndarray, sess_user: np.ndarray, sess_id: np.ndarray,
                new_sess: np.ndarray, watch_ms: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unix seconds (from the period start) of each exposure, strictly increasing per user."""
    S = len(sess_user)
    hour = rng.choice(24, S, p=DIURNAL / DIURNAL.sum())
    raw = rng.integers(0, cfg.days, S) * 86_400 + hour * 3600 + rng.integers(0, 3600, S)
    user_rank = np.searchsorted(users, sess_user)
    raw = raw[np.lexsort((raw, user_rank))]  # a user's sessions, in time order (sess_user is grouped)
    step = np.ceil(watch_ms / 1000.0).astype(np.int64) + 1 + rng.poisson(2.0, len(watch_ms))  # play + scroll
    excl = np.cumsum(step) - step
    offset = excl - excl[new_sess][sess_id]  # seconds since the session opened
    dur = np.bincount(sess_id, weights=step, minlength=S).astype(np.int64) + SESSION_GAP_S
    # sessions must not overlap: start'_k = c_k + max_{j<=k}(start_j - c_j), c = the user's earlier durations
    c = np.cumsum(dur) - dur
    first_of_user = np.r_[True, user_rank[1:] != user_rank[:-1]]
    c = c - np.maximum.accumulate(np.where(first_of_user, c, 0))
    big = np.int64(1) << 40  # separates users in one running maximum
    start = c + np.maximum.accumulate(raw - c + user_rank * big) - user_rank * big
    return start[sess_id] + offset


def _event_tables(world: World, chunk_users: int) -> Iterator[pa.Table]:
    """The interactions table in chunks of whole blocks of users (row order = final order)."""
    cfg = world.cfg
    n, n_rand = _exposure_counts(cfg, world)
    start_epoch = _start_epoch(cfg)
    cat = _catalogue(world)
    blocks_per_chunk = max(1, chunk_users // BLOCK)
    n_blocks = -(-cfg.n_users // BLOCK)
    policy_names = pa.array(["production", "random"])
    for c0 in range(0, n_blocks, blocks_per_chunk):
        parts = []
        for blk in range(c0, min(n_blocks, c0 + blocks_per_chunk)):
            users = np.arange(blk * BLOCK, min(cfg.n_users, (blk + 1) * BLOCK), dtype=np.int64)
            rng = _rng(cfg, 3, blk)
            parts.append(_simulate_block(world, cat, users, n[users], n_rand[users], rng, start_epoch))
        ev = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if len(ev["user_id"]) == 0:
            continue
        policy = pa.DictionaryArray.from_arrays(pa.array(ev.pop("is_random").astype(np.int8)), policy_names)
        cols = {k: pa.array(ev[k], type=INTERACTION_TYPES[k]) for k in ("user_id", "item_id", "timestamp",
                                                                         *SIGNALS, "watch_time_ms")}
        cols["policy"] = policy.cast(pa.string())
        yield pa.table(cols)


def _meta(cfg: SimConfig, world: World) -> dict[str, Any]:
    return {"name": "simulated", "source": "simulate", "sim": dataclasses.asdict(cfg),
            "calibration": world.calibration}


def simulate(cfg: SimConfig) -> tuple[Dataset, World]:
    """Build the world and log ``cfg.n_events`` exposures in memory.

    Returns:
        The validated canonical :class:`Dataset` (interactions sorted by (user_id, timestamp), with
        the nine signals, ``watch_time_ms`` and ``policy``; items; users) and the world, whose
        ``current_topic`` is left at each user's last logged session.
    """
    world = build_world(cfg)
    inter = pa.concat_tables(list(_event_tables(world, chunk_users=cfg.n_users + BLOCK))).combine_chunks()
    ds = Dataset(inter, world.items, world.users, meta=_meta(cfg, world))
    return ds.validate(), world


def simulate_to_dir(cfg: SimConfig, out_dir: str | Path, *, chunk_users: int = 8192) -> Path:
    """Simulate straight to a dataset folder (the layout of :meth:`Dataset.save`) plus ``world/``.

    Users are logged ``chunk_users`` at a time (rounded to blocks of 256) and streamed into
    ``interactions.parquet`` through a temporary file renamed at the end, so memory is bounded by the
    chunk, not by ``n_events``. Gives the same tables as :func:`simulate` for the same config. The world
    (after the log) goes to ``out_dir/world`` (:meth:`World.save`), where the pipeline keeps it too.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = build_world(cfg)
    path = out / FILES["interactions"]
    n_rows = 0
    with atomic_path(path) as tmp:
        writer: pq.ParquetWriter | None = None
        try:
            for table in _event_tables(world, chunk_users):
                table = conform(table, "interactions", path=str(path))
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
                writer.write_table(table, row_group_size=1 << 20)
                n_rows += table.num_rows
        finally:
            if writer is not None:
                writer.close()
    for kind in ("items", "users"):
        write_parquet(out / FILES[kind], conform(getattr(world, kind), kind, path=str(out / FILES[kind])))
    meta = {**_meta(cfg, world), "schema_version": SCHEMA_VERSION, "n_users": cfg.n_users,
            "n_items": cfg.n_items, "n_interactions": n_rows,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    write_json(out / "dataset.json", meta)
    world.save(out / WORLD_DIR)
    return out


# ----------------------------------------------------------------------------- reporting


def feedback_rates(interactions: pa.Table | dict[str, np.ndarray], policy: str | None = None) -> dict[str, float]:
    """Per-exposure feedback rates of a log, in the terms of :data:`RANDOM_TARGETS`.

    Args:
        interactions: a table (or dict of arrays) with the signal columns (and ``policy`` to filter).
        policy: only rows logged by this policy ("random" / "production"); all rows when None.
    """
    def col(name: str) -> np.ndarray:
        v = interactions[name]
        return v.to_numpy(zero_copy_only=False) if isinstance(v, (pa.ChunkedArray, pa.Array)) else np.asarray(v)

    if policy is None:
        keep: Any = slice(None)
    elif isinstance(interactions, pa.Table):  # compare in Arrow: no per-row Python strings
        keep = pc.equal(interactions["policy"], policy).to_numpy(zero_copy_only=False)
    else:
        keep = col("policy") == policy
    sig = {s: col(s)[keep].astype(bool) for s in SIGNALS}
    n = len(sig["click"])
    if n == 0:
        raise DataError(f"no rows logged by policy '{policy}'", column="policy",
                        fix="use a policy present in the log, or policy=None")
    any_eng = np.logical_or.reduce([sig[s] for s in ENGAGE])
    rates = {s: float(sig[s].mean()) for s in ("click", "long_view", "complete_play")}
    rates.update(engage_any=float(any_eng.mean()), profile_enter=float(sig["profile_enter"].mean()),
                 hate=float(sig["hate"].mean()))
    rates["long_view_given_click"] = rates["long_view"] / max(rates["click"], 1e-12)
    rates["n"] = float(n)
    return rates
