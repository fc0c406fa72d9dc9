"""``onerec serve RUN``: the trained generator behind HTTP (FastAPI + uvicorn, the ``serve`` extra).

Endpoints::

    POST /recommend   {"user_id": "u17", "k": 10}  or  {"history": ["50", "181"], "k": 10}  (the dataset's ids)
                      or {"history_index": [49, 180], "k": 10}  (onerec's dense indices)
                      -> {"items": [{"item_id" (the dataset's), "item_index", "score", "title"}, ...], "k", ...}
                      optional "model" (onerec | onerec_generator | onerec_prior | popular | transitions) and
                      "exclude_seen" (default generate.exclude_seen)
    GET  /healthz     {"status": "ok", ...}
    GET  /metrics     Prometheus text: request counts by status, a latency histogram, batch sizes
    GET  /openapi.json, /docs
    GET  /ui          a page to look at recommendations (one static HTML file, :mod:`onerec.ui`), over:
    GET  /ui/models   the models it compares;  GET /ui/users?limit=N  user ids to pick from
    GET  /ui/history?user_id=U  a user's stored history;  POST /ui/compare  one history, several models
    GET  /ui/cover/{item_index}  an item's cover image, where the data has one (inside RUN/data only)

Concurrent requests are queued and decoded together (micro-batching): the first request waits at
most ``serve.batch_wait_ms`` for others, up to ``serve.max_batch`` users, then one constrained beam
search (KV-cached, :meth:`GenerativeRecommender.generate`) runs for the whole batch in a worker
thread. Requests whose beam width differs (``max(generate.beam_size, k)``) are decoded in separate
searches, so a request's answer never depends on what it was batched with (beyond float rounding).

:class:`RecommendService` (histories -> items) needs no web framework; :func:`create_app` imports
FastAPI only when called, so the core package works without the extra.
"""

# No ``from __future__ import annotations``: FastAPI must see the request models defined in create_app.
import asyncio
import contextlib
import json
import logging
import math
import re
import threading
import time
import uuid
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onerec.config import RunConfig

DEFAULT_FLAGS = 1  # an explicit history's behaviours count as clicks unless flags are given
MAX_TIMESTAMP = 2**62  # explicit timestamps lie in [0, 2**62): request time (the latest + 1) stays in int64
MAX_JSON_DEPTH = 32  # deeper request bodies are refused with 400 (a valid request nests two levels)
REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")  # an incoming X-Request-ID is kept when it matches
log = logging.getLogger("onerec.serve")

#: what a request's ``model`` may name: the run's generator as configured (``generate.succession_prior``), the
#: generator alone (prior weight 0), the generator fused with the succession prior, and two baselines fitted on the
#: run's train split at start-up (SASRec is not served: it trains for minutes and a run keeps no fitted SASRec)
MODELS = ("onerec", "onerec_generator", "onerec_prior", "popular", "transitions")
BASELINES = ("popular", "transitions")
#: the prior weight of ``onerec_prior`` when the run's ``generate.succession_prior`` is 0 (``onerec tune-prior``
#: chooses one on the valid split and saves it in the run's config, which then takes its place)
UI_PRIOR_WEIGHT = 1.0
#: at most this many valid rows choose the transitions baseline's window and decay at start-up (as eval does,
#: on a fixed sample so a large dataset still starts in seconds)
TRANSITIONS_VALID_ROWS = 2000
COVER_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp"}
MAX_COVER_BYTES = 8 << 20


@dataclass
class Query:
    """One validated request: a user's history (item ids, oldest first), k, the model that ranks and whether the
    history's items are left out of the answer."""

    items: np.ndarray
    ts: np.ndarray
    flags: np.ndarray
    request_ts: int
    k: int
    user_id: str | None = None
    user: int | None = None  # the dataset's user index (known users): their full log and user features
    model: str = "onerec"
    exclude_seen: bool = False


def item_covers(items: Any, data_dir: Path, column: str, relative_to: Path | None = None) -> list[Path | None]:
    """Each item's cover image (by dense index) from the items table's ``column`` (a path relative to
    ``relative_to``, default ``data_dir``, or absolute), None where there is none or where it does not resolve
    (symlinks followed) to an image file inside ``data_dir``: a path in the data can never make the service read a
    file outside RUN/data."""
    if column not in items.column_names:
        return [None] * items.num_rows
    return [inside(data_dir, p, relative_to) for p in items[column].to_pylist()]


def inside(root: Path, path: Any, relative_to: Path | None = None) -> Path | None:
    """``path`` (relative to ``relative_to``, default ``root``, unless absolute) resolved, if it is an image file
    (:data:`COVER_TYPES`) inside ``root``; else None."""
    if not isinstance(path, (str, Path)) or not str(path) or "\x00" in str(path):
        return None
    try:
        base = root.resolve(strict=True)
        p = ((relative_to or root) / path).resolve(strict=True)  # an absolute ``path`` replaces the base
    except (OSError, RuntimeError, ValueError):  # missing, a symlink loop
        return None
    if not p.is_relative_to(base) or not p.is_file() or p.suffix.lower() not in COVER_TYPES:
        return None
    return p


class RecommendService:
    """Loads a run (dataset, codes, trained generator) and answers batches of :class:`Query`.

    Args:
        run: the run directory (needs data/, tokenizer/, train/).
        cfg: the run's config (``generate.beam_size``, ``serve.*``, ``data.positive``).
        device: torch device for the model.
    """

    def __init__(self, run: Path, cfg: RunConfig, device: str | torch.device = "cpu") -> None:
        from onerec.data.schema import Dataset
        from onerec.data.splits import Sequences, load_splits
        from onerec.pipeline import _item_titles, _require, load_recommender, raw_ids

        self.cfg = cfg
        data = _require(run / "data" / "dataset.json", "data").parent
        ds = Dataset.load(data, validate=False)
        self.user_ids = [str(r) for r in ds.users["raw_id"].to_pylist()]
        self.user_index = {r: i for i, r in enumerate(self.user_ids)}
        self.seq = Sequences.from_interactions(ds.interactions, ds.n_users, cfg.data.positive)
        self.titles = _item_titles(ds.items)
        self.item_ids = raw_ids(ds.items)  # the dataset's own item ids, by onerec's dense index
        self.item_index = {r: i for i, r in enumerate(self.item_ids)}
        splits = load_splits(_require(data / "split", "data"), n_items=ds.items.num_rows)
        # prior=True: the train split's succession counts, so the prior can be compared even where the run ranks
        # without it (generate.succession_prior = 0 keeps rank() the generator alone)
        self.rec = load_recommender(run, cfg, device, dataset=ds, splits=splits, prior=True)
        self.n_items = len(self.rec.codes)
        self.prior_weight = cfg.generate.succession_prior or UI_PRIOR_WEIGHT
        self.baselines = self._fit_baselines(splits)
        self.data_dir = data
        self.covers = self._covers(data, ds.items)
        self.lock = threading.Lock()  # one search at a time per model

    def _fit_baselines(self, splits: dict) -> dict[tuple[str, bool], Any]:
        """Most-popular and transitions fitted on the train split (the transitions' window and decay chosen on at
        most :data:`TRANSITIONS_VALID_ROWS` valid rows), each also as a copy that leaves the history out."""
        import copy

        from onerec.baselines import ItemTransitions, MostPopular
        from onerec.pipeline import sample_rows

        valid = splits.get("valid")
        if valid is not None:
            valid = sample_rows(valid, TRANSITIONS_VALID_ROWS, self.cfg.train.seed)
            valid = valid if valid.num_rows else None
        out: dict[tuple[str, bool], Any] = {}
        for b in (MostPopular(), ItemTransitions()):
            b.fit(splits["train"], n_items=self.n_items, valid=valid)
            excluding = copy.copy(b)  # shares the fitted counts
            excluding.exclude_seen = True
            out[b.name, False], out[b.name, True] = b, excluding
        return out

    def _covers(self, data: Path, items: Any) -> list[Path | None]:
        """Each item's cover inside RUN/data: from the items' ``content.image_field`` column (relative paths against
        ``content.media_root``, default RUN/data), else a simulated world's covers that the vlm content backend
        rendered into RUN/data/covers (``<index>.png``, :func:`onerec.data.covers.render_covers`, which adds its
        column to the items only in memory); None for an item without one."""
        c = self.cfg.content
        if c.image_field in items.column_names:
            return item_covers(items, data, c.image_field, Path(c.media_root) if c.media_root else None)
        if (data / "covers").is_dir() and (data / "world" / "world.json").is_file():
            return [inside(data, f"covers/{i}.png") for i in range(items.num_rows)]
        return [None] * items.num_rows

    def cover(self, item: int) -> Path | None:
        """The cover file of item ``item`` if it has one that is (still) a file inside RUN/data, else None."""
        if not 0 <= item < len(self.covers) or self.covers[item] is None:
            return None
        return inside(self.data_dir, self.covers[item])

    def item_info(self, item: int) -> dict[str, Any]:
        """What the page shows of an item: its ids, title, semantic ID and cover URL (None without one)."""
        return {"item_id": self.item_ids[item], "item_index": item, "title": self.titles[item],
                "semantic_id": [int(c) for c in self.rec.codes[item]],
                "cover": f"/ui/cover/{item}" if self.covers[item] is not None else None}

    # ------------------------------------------------------------------ queries
    def user_query(self, user_id: str, k: int, model: str = "onerec", exclude_seen: bool = False) -> Query:
        """The stored positive history of a known user. Raises KeyError for an unknown id."""
        u = self.user_index[user_id]
        s, e = self.seq.offsets[u], self.seq.offsets[u + 1]
        ts = self.seq.ts[s:e]
        return Query(self.seq.items[s:e], ts, self.seq.flags[s:e].astype(np.int64),
                     int(ts[-1]) + 1 if e > s else 0, k, user_id, u, model, exclude_seen)

    def item_indices(self, ids: list[str | int]) -> list[int]:
        """Dense indices of the dataset's item ids (``raw_id``; an integer stands for its decimal text). Raises
        KeyError naming the first unknown id."""
        try:
            return [self.item_index[str(i)] for i in ids]
        except KeyError as e:
            raise KeyError(e.args[0]) from None

    def history_query(self, items: list[int], k: int, ts: list[int] | None = None,
                      flags: list[int] | None = None, model: str = "onerec", exclude_seen: bool = False) -> Query:
        """An explicit history (validated by the caller: known items, equal lengths)."""
        n = len(items)
        t = np.asarray(ts if ts is not None else [0] * n, dtype=np.int64)
        f = np.asarray(flags if flags is not None else [DEFAULT_FLAGS] * n, dtype=np.int64)
        return Query(np.asarray(items, dtype=np.int64), t, f, int(t.max()) + 1 if ts is not None else 0, k,
                     model=model, exclude_seen=exclude_seen)

    def beam_width(self, k: int) -> int:
        return max(self.cfg.generate.beam_size, k)

    @torch.no_grad()
    def recommend(self, queries: list[Query]) -> list[tuple[list[int], list[float]]]:
        """(items, scores) per query, in order; one beam search per distinct model, beam width, kind (known
        users, whose features include their full log and user features; explicit histories) and ``exclude_seen``
        (which leaves the query's whole history out of its answer: ``min(k, items not in it)`` items)."""
        out: list[Any] = [None] * len(queries)
        groups: dict[tuple[str, int, bool, bool], list[int]] = defaultdict(list)
        for i, q in enumerate(queries):
            if q.model in BASELINES:
                groups[q.model, 0, False, q.exclude_seen].append(i)
            else:
                groups[q.model, self.beam_width(q.k), q.user is not None, q.exclude_seen].append(i)
        with self.lock:
            for (model, beam, known, exclude), idx in groups.items():
                qs = [queries[i] for i in idx]
                k_max = max(q.k for q in qs)
                if model in BASELINES:
                    items, scores = self._baseline(model, qs, k_max, exclude)
                else:
                    items, scores = self._generate(model, qs, k_max, beam, known, exclude)
                items, scores = items.tolist(), scores.tolist()
                for j, i in enumerate(idx):
                    keep = [(it, sc) for it, sc in zip(items[j][: qs[j].k], scores[j][: qs[j].k]) if it >= 0]
                    out[i] = ([it for it, _ in keep], [sc for _, sc in keep])
        return out

    def _generate(self, model: str, qs: list[Query], k: int, beam: int, known: bool, exclude: bool
                  ) -> tuple[np.ndarray, np.ndarray]:
        """The generator's top ``k`` of queries of one kind: as the run ranks (``onerec``: fused with the prior when
        ``generate.succession_prior`` > 0), alone (beam items by log-probability) or fused with the prior."""
        from onerec.features.history import Ragged
        from onerec.generate.generative import top_fused

        offsets = np.zeros(len(qs) + 1, dtype=np.int64)
        np.cumsum([len(q.items) for q in qs], out=offsets[1:])
        seqs = Ragged(offsets, np.concatenate([q.items for q in qs]), np.concatenate([q.ts for q in qs]),
                      np.concatenate([q.flags for q in qs]))
        users = np.array([q.user for q in qs], dtype=np.int64) if known else None
        batch = self.rec.featurizer.histories(seqs, np.arange(len(qs)), offsets[1:],
                                              np.array([q.request_ts for q in qs]), users)
        seen = [q.items for q in qs] if exclude else None
        if model == "onerec":
            return self.rec.rank(batch, k, beam_size=beam, exclude=seen)  # fused when generate.succession_prior
        if model == "onerec_generator":
            items, scores, _ = self.rec.generate(batch, k, beam_size=beam, exclude=seen)
            return items.cpu().numpy(), scores.cpu().numpy()
        pool, log_p, prior = self.rec.pool(batch, k, beam_size=beam, exclude=seen)
        return top_fused(pool, log_p + self.prior_weight * prior, k)

    def _baseline(self, model: str, qs: list[Query], k: int, exclude: bool) -> tuple[np.ndarray, np.ndarray]:
        """A baseline's top ``k`` and their scores (most-popular: train interactions; transitions: its score)."""
        import pyarrow as pa

        b = self.baselines[model, exclude]
        hist = [q.items for q in qs]
        items = b.recommend(pa.table({"history": pa.array(hist, type=pa.list_(pa.int64()))}), k)
        if model == "popular":
            scores = b.counts[np.maximum(items, 0)].astype(np.float64)
        else:
            scores = np.take_along_axis(b.scores(hist), np.maximum(items, 0), 1)
        return items, scores


# ---------------------------------------------------------------------- metrics
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        self.n += 1
        self.total += value
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{b:g}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}')
        tail = f"{{{labels}}}" if labels else ""
        return [*out, f"{name}_sum{tail} {self.total:.6f}", f"{name}_count{tail} {self.n}"]


class Metrics:
    """Prometheus counters and histograms in the text exposition format (no client library needed)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.batch = Histogram(BATCH_BUCKETS)
        self.errors: dict[str, int] = defaultdict(int)
        self.dropped = 0

    def observe(self, path: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(path, status)] += 1
            self.latency.setdefault(path, Histogram(LATENCY_BUCKETS)).observe(seconds)
            if status >= 400:
                self.errors["client" if status < 500 else "server"] += 1

    def observe_batch(self, size: int) -> None:
        with self.lock:
            self.batch.observe(size)

    def observe_dropped(self, n: int) -> None:
        with self.lock:
            self.dropped += n

    def render(self) -> str:
        with self.lock:
            lines = ["# HELP onerec_requests_total HTTP requests by path and status.",
                     "# TYPE onerec_requests_total counter"]
            lines += [f'onerec_requests_total{{path="{p}",status="{s}"}} {n}'
                      for (p, s), n in sorted(self.requests.items())]
            lines += ["# HELP onerec_errors_total Requests answered with 4xx (client) or 5xx (server).",
                      "# TYPE onerec_errors_total counter"]
            lines += [f'onerec_errors_total{{kind="{kind}"}} {self.errors.get(kind, 0)}'
                      for kind in ("client", "server")]
            lines += ["# HELP onerec_request_latency_seconds Request latency.",
                      "# TYPE onerec_request_latency_seconds histogram"]
            for p, h in sorted(self.latency.items()):
                lines += h.lines("onerec_request_latency_seconds", f'path="{p}"')
            lines += ["# HELP onerec_batch_size Requests decoded together in one beam search.",
                      "# TYPE onerec_batch_size histogram", *self.batch.lines("onerec_batch_size")]
            lines += ["# HELP onerec_dropped_total Queued requests dropped before decoding (client gone or "
                      "deadline passed).", "# TYPE onerec_dropped_total counter",
                      f"onerec_dropped_total {self.dropped}"]
            return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- micro-batching
class Overloaded(Exception):
    """The queue of requests waiting for a beam search is full (answered 503 with Retry-After)."""


class MicroBatcher:
    """Collects concurrent queries and answers them with one :meth:`RecommendService.recommend` call.

    ``submit`` queues a query and returns its future; a single worker task drains the queue: it waits
    for a first query, then up to ``wait_s`` for more (at most ``max_batch``), and runs the batch in a
    worker thread so the event loop keeps accepting requests meanwhile. The queue holds at most
    ``max_queue`` live queries (``submit`` raises :class:`Overloaded` beyond; 0: unbounded). A query
    whose future was cancelled (its client went away or its deadline passed) or whose deadline passed
    while it waited is dropped before it is batched, so no search is spent on it, and it does not
    hold a place in the queue: dead entries are purged before a query is refused.
    """

    def __init__(self, service: RecommendService, max_batch: int, wait_s: float, metrics: Metrics,
                 max_queue: int = 0) -> None:
        self.service, self.max_batch, self.wait_s, self.metrics = service, max_batch, wait_s, metrics
        self.max_queue = max_queue
        self.waiting: deque[tuple[Query, asyncio.Future, float]] = deque()
        self.arrived: asyncio.Event | None = None
        self.task: asyncio.Task | None = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onerec-beam")

    def start(self) -> None:
        self.arrived = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.pool.shutdown(wait=True)

    def queued(self) -> int:
        return len(self.waiting)

    def submit(self, query: Query, deadline: float = math.inf) -> asyncio.Future:
        """Queue ``query`` (to be dropped if still queued at loop time ``deadline``); its future gets
        (items, scores). Raises :class:`Overloaded` when ``max_queue`` live queries are waiting."""
        loop = asyncio.get_running_loop()
        if 0 < self.max_queue <= len(self.waiting):
            self.waiting = deque(self._live(list(self.waiting), loop.time(), keep_entries=True))
            if len(self.waiting) >= self.max_queue:
                raise Overloaded
        fut = loop.create_future()
        self.waiting.append((query, fut, deadline))
        self.arrived.set()
        return fut

    def _live(self, entries: list, now: float, keep_entries: bool = False) -> list:
        """The entries still wanted (cancelling those past their deadline); counts the others as dropped."""
        live = []
        for entry in entries:
            _, f, deadline = entry
            if not f.done() and now >= deadline:
                f.cancel()
            if not f.cancelled():
                live.append(entry if keep_entries else entry[:2])
        if len(live) < len(entries):
            self.metrics.observe_dropped(len(entries) - len(live))
        return live

    async def _wait_arrival(self, timeout: float | None) -> None:
        self.arrived.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.arrived.wait(), timeout)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.waiting:
                await self._wait_arrival(None)
            window_end = loop.time() + self.wait_s
            while len(self.waiting) < self.max_batch and (left := window_end - loop.time()) > 0:
                await self._wait_arrival(left)
            live: list = []
            while self.waiting and len(live) < self.max_batch:
                live += self._live([self.waiting.popleft()], loop.time())
            if not live:
                continue
            self.metrics.observe_batch(len(live))
            try:
                results = await loop.run_in_executor(self.pool, self.service.recommend, [q for q, _ in live])
            except Exception as e:  # a failed search fails its requests, never the worker
                for _, f in live:
                    if not f.done():
                        f.set_exception(e)
                continue
            for (_, f), r in zip(live, results):
                if not f.done():
                    f.set_result(r)


# ---------------------------------------------------------------------- the app
class BadJSON(ValueError):
    """A request body that is not acceptable JSON (answered 400)."""


def parse_json(body: bytes) -> Any:
    """The JSON value of a request body. Raises :class:`BadJSON` for malformed JSON, a key given twice
    in one object (``json.loads`` would keep the last silently) or nesting deeper than ``MAX_JSON_DEPTH``."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
        out = dict(pairs)
        if len(out) != len(pairs):
            seen: set[str] = set()
            dup = next(k for k, _ in pairs if k in seen or seen.add(k))
            raise BadJSON(f"duplicate key {dup[:64]!r} in a JSON object")
        return out

    try:
        value = json.loads(body, object_pairs_hook=no_duplicates)
    except RecursionError:
        raise BadJSON(f"JSON nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
    except BadJSON:
        raise
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise BadJSON(f"malformed JSON body: {str(e)[:200]}") from None
    stack = [(value, 1)]  # iterative, so the check itself cannot recurse too deep
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (list, dict)):
            if depth > MAX_JSON_DEPTH:
                raise BadJSON(f"JSON nested too deeply (at most {MAX_JSON_DEPTH} levels)")
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
    return value


METRIC_PATHS = ("/recommend", "/healthz", "/metrics", "/ui", "/ui/models", "/ui/users", "/ui/history", "/ui/compare")


def metric_path(path: str) -> str:
    """The ``path`` label of a request's metrics: a known route, ``/ui/cover`` for every cover, else ``other``."""
    if path in METRIC_PATHS:
        return path
    return "/ui/cover" if path.startswith("/ui/cover/") else "other"


class Guard:
    """Pure ASGI middleware around the app: request ids, header and body limits, metrics, and the
    logging of every 5xx.

    * ``X-Request-ID``: an incoming id is kept if it matches ``REQUEST_ID`` (else a new one is made)
      and returned on every response the app sends; it is in ``scope["state"]["request_id"]``.
    * Request line plus headers over ``max_header_bytes``: 431 (the HTTP parser's own limit may stop
      larger ones first, with 400).
    * Body over ``max_body_bytes`` (by Content-Length, or counted while a chunked body streams in):
      413. The body is read here and replayed to the app, so the app's later ``receive()`` calls reach
      the server directly and report a client that disconnects.
    * An exception escaping the app: 500, logged with its traceback and the request id; any other 5xx
      is logged with the request id. A client that went away before its answer is counted as 499.
    """

    def __init__(self, app, metrics: Metrics, max_body_bytes: int, max_header_bytes: int) -> None:
        self.app, self.metrics = app, metrics
        self.max_body_bytes, self.max_header_bytes = max_body_bytes, max_header_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        path = metric_path(scope["path"])
        headers = scope.get("headers") or []
        incoming = next((v for k, v in headers if k == b"x-request-id"), b"").decode("latin-1")
        rid = incoming if REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        status = [0]
        logged = False

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*(message.get("headers") or []),
                                                  (b"x-request-id", rid.encode("latin-1"))]}
            await send(message)

        async def answer(code: int, error: str, extra: tuple = ()) -> None:
            body = json.dumps({"error": error, "request_id": rid}).encode()
            await send_with_id({"type": "http.response.start", "status": code,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode()), *extra]})
            await send_with_id({"type": "http.response.body", "body": body})

        try:
            head = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + sum(
                len(k) + len(v) + 4 for k, v in headers)
            length = next((v for k, v in headers if k == b"content-length"), None)
            if head > self.max_header_bytes:
                await answer(431, f"request headers over {self.max_header_bytes} bytes")
            elif length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                await answer(413, f"request body over {self.max_body_bytes} bytes", ((b"connection", b"close"),))
            elif scope["method"] in ("POST", "PUT", "PATCH"):
                body = await self._read_body(receive)
                if body is None:
                    await answer(413, f"request body over {self.max_body_bytes} bytes", ((b"connection", b"close"),))
                elif body is not False:
                    await self.app(scope, _replay(body, receive), send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception:  # never let one request take the server down; say which one failed
            logged = True
            log.exception("request %s (%s %s) failed", rid, scope.get("method"), path)
            if status[0] == 0:
                await answer(500, "internal error")
            else:
                raise  # the answer had started: the server closes the connection
        if status[0] == 0:
            status[0] = 499  # the client went away before an answer was sent
        elif status[0] >= 500 and not logged:
            log.warning("request %s (%s %s) answered %d", rid, scope.get("method"), path, status[0])
        self.metrics.observe(path, status[0], time.perf_counter() - t0)

    async def _read_body(self, receive) -> bytes | bool | None:
        """The whole body; None once it passes ``max_body_bytes`` (a chunked upload without
        Content-Length cannot make the server buffer more); False if the client disconnected."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return False
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive):
    """An ASGI receive that gives ``body`` once, then defers to the server's ``receive``."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def create_app(service: RecommendService, cfg: RunConfig | None = None):
    """The FastAPI application around ``service`` (needs the ``serve`` extra: fastapi, uvicorn)."""
    from contextlib import asynccontextmanager
    from typing import Literal

    from fastapi import FastAPI, HTTPException, Request
    from fastapi import Query as Param
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, model_validator

    cfg = cfg or service.cfg
    sc = cfg.serve
    metrics = Metrics()
    batcher = MicroBatcher(service, sc.max_batch, sc.batch_wait_ms / 1000.0, metrics, sc.max_queue)
    n_items, max_k, max_hist = service.n_items, sc.max_k, sc.max_history
    timeout_s = sc.request_timeout_ms / 1000.0
    default_exclude = cfg.generate.exclude_seen
    Model = Literal[MODELS]  # type: ignore[valid-type]

    class HistoryRequest(BaseModel):
        """Give exactly one of ``user_id`` (a user of the run's dataset, its own id), ``history`` (the dataset's own
        item ids) or ``history_index`` (onerec's dense item indices). Types are strict: ``k`` and indices are JSON
        integers (not strings, floats or booleans)."""

        model_config = ConfigDict(extra="forbid", strict=True)
        user_id: str | None = Field(None, max_length=256, description="the dataset's user id (users.parquet raw_id)")
        history: list[StrictStr | StrictInt] | None = Field(
            None, description="the dataset's item ids (items.parquet raw_id, as in `item_id` of the answer) the user "
                              "engaged with, oldest first; a JSON integer stands for its decimal text (50 is '50')")
        history_index: list[int] | None = Field(
            None, description="the same history as onerec's dense item indices 0..N-1 (`item_index` of the answer)")
        timestamps: list[int] | None = Field(None, description="unix seconds of each history item (optional)")
        flags: list[int] | None = Field(None, description="signal bitmask of each history item (optional)")
        k: int = Field(10, ge=1, le=max_k, description=f"items to return (1..{max_k})")
        exclude_seen: bool | None = Field(
            None, description="leave the items of the history (the user's whole stored positive history, or the "
                              f"given one) out of the answer; k items still come back when the catalogue has them. "
                              f"Default: generate.exclude_seen ({str(default_exclude).lower()} for this run)")

        @model_validator(mode="after")
        def _check(self):
            given = [name for name in ("user_id", "history", "history_index") if getattr(self, name) is not None]
            if len(given) != 1:
                raise ValueError("give exactly one of 'user_id', 'history' or 'history_index'")
            field = given[0]
            hist = getattr(self, field)
            if field == "history":
                try:
                    self.history_index = service.item_indices(hist)
                except KeyError as e:
                    raise ValueError(f"unknown item id {e.args[0]!r} in 'history': give the dataset's item ids "
                                     f"(items.parquet raw_id, e.g. {service.item_ids[0]!r}), or onerec's indices "
                                     f"0..{n_items - 1} as 'history_index'") from None
            if field != "user_id":
                if not hist:
                    raise ValueError(f"'{field}' is empty: give at least one item (or a 'user_id')")
                if len(hist) > max_hist:
                    raise ValueError(f"'{field}' has {len(hist)} items; at most {max_hist} allowed")
                bad = next((i for i in self.history_index if not 0 <= i < n_items), None)
                if bad is not None:
                    raise ValueError(f"unknown item index {bad} in 'history_index': indices are 0..{n_items - 1}")
                for name in ("timestamps", "flags"):
                    extra = getattr(self, name)
                    if extra is not None and len(extra) != len(hist):
                        raise ValueError(f"'{name}' has {len(extra)} entries but '{field}' has {len(hist)}")
                if self.flags is not None and any(not 0 <= f < 2**16 for f in self.flags):
                    raise ValueError("'flags' entries must be in 0..65535")
                if self.timestamps is not None and any(not 0 <= t < MAX_TIMESTAMP for t in self.timestamps):
                    raise ValueError("'timestamps' entries are unix seconds in 0..2**62-1")
            elif self.timestamps is not None or self.flags is not None:
                raise ValueError("'timestamps' and 'flags' go with a history, not 'user_id'")
            return self

    class RecommendRequest(HistoryRequest):
        __doc__ = HistoryRequest.__doc__
        model: Model = Field("onerec", description="onerec: the run's generator as configured (with the succession "
                                                   "prior when generate.succession_prior > 0); onerec_generator: the "
                                                   "generator alone; onerec_prior: fused with the succession prior; "
                                                   "popular, transitions: baselines fitted on the train split")

    class CompareRequest(HistoryRequest):
        """One history ranked by several models (the page's columns); each model's search is queued like a
        /recommend request."""

        models: list[Model] = Field(  # type: ignore[valid-type]
            ["onerec_generator", "onerec_prior", "popular", "transitions"], min_length=1, max_length=len(MODELS),
            description="the models to compare, each at most once")

        @model_validator(mode="after")
        def _distinct(self):
            if len(set(self.models)) != len(self.models):
                raise ValueError("'models' names a model twice")
            return self

    class Item(BaseModel):
        item_id: str = Field(description="the dataset's item id (items.parquet raw_id)")
        item_index: int = Field(description="onerec's dense index of the item (0..N-1)")
        score: float = Field(description="onerec: total log-probability of the item's semantic ID (with the prior: "
                                         "plus prior weight x log(1 + succession score)); popular: train "
                                         "interactions; transitions: its succession score")
        title: str

    class RecommendResponse(BaseModel):
        user_id: str | None
        k: int
        model: str
        exclude_seen: bool
        history_length: int
        items: list[Item]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="onerec", version="0.1.0", lifespan=lifespan,
                  description="Generative recommendations: constrained beam search over semantic IDs.")
    app.add_middleware(Guard, metrics=metrics, max_body_bytes=sc.max_body_bytes, max_header_bytes=sc.max_header_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse({"error": "malformed JSON body", "detail": _clean(errors)}, status_code=400)
        msgs = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}" for e in errors]
        return JSONResponse({"error": "; ".join(msgs), "detail": _clean(errors)}, status_code=422)

    @app.exception_handler(BadJSON)
    async def bad_json(request: Request, exc: BadJSON):
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded):
        return JSONResponse({"error": f"server busy: {sc.max_queue} requests already queued; retry later"},
                            status_code=503, headers={"Retry-After": str(sc.retry_after_s)})

    async def parse(request: Request, model: type[HistoryRequest]) -> HistoryRequest:
        """The request body validated strictly as ``model`` (400 / 422 as for /recommend)."""
        body = await request.body()
        if not body.strip():
            raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
        try:
            return model.model_validate(parse_json(body), strict=True)
        except ValidationError as e:
            raise RequestValidationError([{**err, "loc": ("body", *err["loc"])}
                                          for err in e.errors(include_url=False, include_input=False)]) from None

    def queries(req: HistoryRequest, models: list[str]) -> list[Query]:
        """One query per model (404 for an unknown user)."""
        exclude = default_exclude if req.exclude_seen is None else req.exclude_seen
        if req.user_id is not None:
            try:
                return [service.user_query(req.user_id, req.k, m, exclude) for m in models]
            except KeyError:
                raise HTTPException(404, f"unknown user_id {req.user_id!r}") from None
        return [service.history_query(req.history_index, req.k, req.timestamps, req.flags, m, exclude)
                for m in models]

    async def answer(request: Request, qs: list[Query], deadline: float) -> list | Response:
        """Queues ``qs`` (all or none: the queue's limit holds for each) and waits for all their answers until
        ``deadline``; a Response (499, 504) when the client went away or time ran out (what is still queued is
        dropped)."""
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future] = []
        try:
            for q in qs:
                futs.append(batcher.submit(q, deadline))
        except Overloaded:
            for f in futs:
                f.cancel()
            raise
        together = asyncio.gather(*futs, return_exceptions=True)
        gone = loop.create_task(_disconnected(request.receive))  # resolves when the client goes away
        try:
            await asyncio.wait({together, gone}, timeout=max(deadline - loop.time(), 0),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not together.done():
            for f in futs:
                f.cancel()  # dropped by the batcher unless its search already runs
            if gone.done() and not gone.cancelled():
                return Response(status_code=499)  # nobody to answer
            return JSONResponse({"error": f"not answered within {sc.request_timeout_ms:g} ms"}, status_code=504)
        return [f.result() for f in futs]  # a failed search raises: 500, logged by Guard

    def finite(s: float) -> float:
        return s if math.isfinite(s) else -1e30

    schema = RecommendRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    errors_4xx = {400: {"description": "malformed JSON, a duplicate key, or nesting too deep"},
                  404: {"description": "unknown user"}, 413: {"description": "body too large"},
                  422: {"description": "invalid request"},
                  503: {"description": "queue full (Retry-After)"},
                  504: {"description": "not answered within serve.request_timeout_ms"}}

    @app.post("/recommend", response_model=RecommendResponse,
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}},
              responses=errors_4xx)
    async def recommend(request: Request):
        deadline = asyncio.get_running_loop().time() + timeout_s
        req = await parse(request, RecommendRequest)
        (query,) = queries(req, [req.model])
        got = await answer(request, [query], deadline)
        if isinstance(got, Response):
            return got
        items, scores = got[0]
        return RecommendResponse(
            user_id=req.user_id, k=req.k, model=req.model, exclude_seen=query.exclude_seen,
            history_length=len(query.items),
            items=[Item(item_id=service.item_ids[i], item_index=i, score=finite(s), title=service.titles[i])
                   for i, s in zip(items, scores)])

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "items": n_items, "users": len(service.user_index),
                "beam_size": service.cfg.generate.beam_size, "max_k": max_k,
                "queued": batcher.queued()}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    # ------------------------------------------------------------------ the page and its JSON
    page, csp = ui_page()
    prior_note = (f"weight {service.prior_weight:g} (generate.succession_prior)" if cfg.generate.succession_prior
                  else f"weight {service.prior_weight:g}; the run itself ranks without it (onerec tune-prior "
                       "chooses a weight)")
    # score: the column header (short), score_about: what it is
    model_info = {
        "onerec": {"label": "onerec (as configured)", "score": "fused" if cfg.generate.succession_prior else "log p",
                   "about": "the run's ranking, as /recommend answers by default"},
        "onerec_generator": {"label": "onerec generator", "score": "log p",
                             "about": "constrained beam search alone; score: log-probability of the semantic ID"},
        "onerec_prior": {"label": "onerec + succession prior", "score": "fused",
                         "about": f"the beam and the train split's successors; score: log p + w·log(1 + succession "
                                  f"score), {prior_note}"},
        "popular": {"label": "most popular", "score": "count",
                    "about": "score: the item's interactions in the train split"},
        "transitions": {"label": "transitions", "score": "score",
                        "about": "the items that followed the history's last items in the train split"},
    }
    lengths = np.diff(service.seq.offsets)
    with_history = np.flatnonzero(lengths > 0)

    @app.get("/ui", response_class=HTMLResponse, include_in_schema=False)
    async def ui() -> HTMLResponse:
        return HTMLResponse(page, headers={"content-security-policy": csp, "x-content-type-options": "nosniff",
                                           "referrer-policy": "no-referrer", "cache-control": "no-cache"})

    @app.get("/ui/models")
    async def ui_models() -> dict[str, Any]:
        """The models the page compares, and the settings it starts from."""
        return {"models": [{"name": m, **model_info[m]} for m in MODELS],
                "compare": ["onerec_generator", "onerec_prior", "popular", "transitions"],
                "not_served": [{"name": "sasrec", "why": "SASRec trains for minutes and a run keeps no fitted "
                                                         "SASRec, so the service does not fit it at start-up; its "
                                                         "scores are in RUN/metrics.json (onerec eval)"}],
                "prior_weight": service.prior_weight, "exclude_seen": default_exclude, "max_k": max_k,
                "max_history": max_hist, "items": n_items, "users": len(service.user_ids),
                "covers": any(c is not None for c in service.covers)}

    def count(value: str) -> int:
        """A ``limit`` query parameter, strictly: decimal digits, 1..1000 (not '5.0', 'true' or '+5')."""
        if not re.fullmatch(r"[0-9]{1,4}", value) or not 1 <= int(value) <= 1000:
            raise RequestValidationError([{"type": "int_parsing", "loc": ("query", "limit"),
                                           "msg": "Input should be a whole number from 1 to 1000"}])
        return int(value)

    limit_param = Param("50", max_length=8, description="how many (1..1000)")

    @app.get("/ui/users")
    async def ui_users(limit: str = limit_param) -> dict[str, Any]:
        """The first ``limit`` users with a stored history: their ids and history lengths."""
        return {"users": [{"user_id": service.user_ids[u], "history_length": int(lengths[u])}
                          for u in with_history[:count(limit)]], "total": len(service.user_ids)}

    @app.get("/ui/history", responses={404: {"description": "unknown user"}})
    async def ui_history(user_id: str = Param(..., max_length=256), limit: str = limit_param) -> dict[str, Any]:
        """A known user's stored positive history (its latest ``limit`` items, oldest first)."""
        n = count(limit)
        u = service.user_index.get(user_id)
        if u is None:
            raise HTTPException(404, f"unknown user_id {user_id!r}")
        hist = service.seq.items[service.seq.offsets[u]:service.seq.offsets[u + 1]]
        return {"user_id": user_id, "history_length": len(hist),
                "history": [service.item_info(int(i)) for i in hist[-n:]]}

    compare_schema = CompareRequest.model_json_schema(ref_template="#/components/schemas/{model}")

    @app.post("/ui/compare",
              openapi_extra={"requestBody": {"required": True,
                                             "content": {"application/json": {"schema": compare_schema}}}},
              responses=errors_4xx)
    async def ui_compare(request: Request):
        """One history (as /recommend takes it) ranked by each of ``models``, side by side, with the history's
        latest 50 items; each item with its title, semantic ID and cover URL."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        req = await parse(request, CompareRequest)
        qs = queries(req, req.models)
        got = await answer(request, qs, deadline)
        if isinstance(got, Response):
            return got
        hist = qs[0].items
        return {"user_id": req.user_id, "k": req.k, "exclude_seen": qs[0].exclude_seen,
                "history_length": len(hist), "history": [service.item_info(int(i)) for i in hist[-50:]],
                "columns": [{"model": m, **model_info[m],
                             "items": [{**service.item_info(i), "score": finite(s)} for i, s in zip(items, scores)]}
                            for m, (items, scores) in zip(req.models, got)]}

    @app.get("/ui/cover/{item_index}", include_in_schema=False)
    async def ui_cover(item_index: int) -> Response:
        """Item ``item_index``'s cover: only a file the items table lists, inside RUN/data (checked again here)."""
        path = service.cover(item_index)
        if path is None:
            raise HTTPException(404, "no cover for this item")
        try:
            data = path.read_bytes() if path.stat().st_size <= MAX_COVER_BYTES else None
        except OSError:
            data = None
        if data is None:
            raise HTTPException(404, "no cover for this item")
        return Response(data, media_type=COVER_TYPES[path.suffix.lower()],
                        headers={"x-content-type-options": "nosniff", "cache-control": "max-age=3600"})

    app.state.metrics, app.state.batcher = metrics, batcher
    return app


def ui_page() -> tuple[str, str]:
    """The page (``onerec/ui/index.html``) and its Content-Security-Policy: only its own inline script and style
    (by hash), images and requests from this server; nothing from elsewhere."""
    import base64
    import hashlib
    from importlib.resources import files

    page = files("onerec").joinpath("ui", "index.html").read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    csp = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; img-src 'self' data:; "
           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return page, csp


async def _disconnected(receive) -> None:
    """Returns once the server reports that the client disconnected (the body was already read, so
    the next ASGI message is ``http.disconnect``; servers send it when the connection closes)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _clean(errors: list[dict]) -> list[dict]:
    """Validation errors without echoing the (possibly huge or hostile) input back."""
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg")), "type": e.get("type")} for e in errors]


# ---------------------------------------------------------------------- the HTTP server
def guarded_protocol(read_timeout_s: float):
    """uvicorn's h11 protocol with the connection timeouts uvicorn 0.55 lacks.

    uvicorn has ``timeout_keep_alive``, but arms it only after a response: a connection that never
    sends a byte, or sends half a request (part of its headers, or a body slower than it promised),
    is held forever, and uvicorn has no read timeout. This subclass (used for ``onerec serve``):

    * arms the keep-alive timer as soon as a connection opens (idle connections close after
      ``serve.keep_alive_s``);
    * gives each request ``read_timeout_s`` from its first byte to deliver its headers and whole body
      (not renewed per chunk, so a drip-fed body cannot hold the connection): past it the client gets
      408 if no answer has started, and the connection is closed (the app sees a disconnect).
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        read_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch_read()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch_read()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_read_timer()
            super().connection_lost(exc)

        def _stop_read_timer(self) -> None:
            if self.read_timer is not None:
                self.read_timer.cancel()
                self.read_timer = None

        def _watch_read(self) -> None:
            """Arms the read timer while a request is partly received, stops it once it is whole."""
            state = self.conn.their_state
            receiving = state is h11.SEND_BODY or (state is h11.IDLE and bool(self.conn.trailing_data[0]))
            if not receiving or self.transport.is_closing():
                self._stop_read_timer()
            elif self.read_timer is None:
                self.read_timer = self.loop.call_later(read_timeout_s, self._read_timeout)

        def _read_timeout(self) -> None:
            self.read_timer = None
            if self.transport.is_closing():
                return
            log.warning("closing a connection from %s: request not received within %g s",
                        f"{self.client[0]}:{self.client[1]}" if self.client else "?", read_timeout_s)
            started = self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete
            if not started:  # written raw: h11 cannot answer a request it has not fully parsed
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n"
                                     b"content-length: 16\r\nconnection: close\r\n\r\nrequest timeout\n")
            self.transport.close()

    return GuardedH11Protocol


def uvicorn_config(app, cfg: RunConfig, log_level: str = "info"):
    """The uvicorn Config of ``onerec serve``: every limit from ``serve.*``."""
    import copy

    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    sc = cfg.serve
    log_config = copy.deepcopy(LOGGING_CONFIG)  # onerec.serve's 5xx reports go where uvicorn's logs go
    log_config["loggers"]["onerec"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return uvicorn.Config(
        app, host=sc.host, port=sc.port, log_level=log_level, log_config=log_config,
        http=guarded_protocol(sc.read_timeout_s),
        timeout_keep_alive=sc.keep_alive_s,  # type: ignore[arg-type]  # a float works (loop.call_later)
        limit_concurrency=sc.limit_concurrency,
        h11_max_incomplete_event_size=sc.max_header_bytes,  # h11 refuses an unfinished head over this with 400
        timeout_graceful_shutdown=max(1, math.ceil(sc.request_timeout_ms / 1000.0)))


def serve(run: Path, cfg: RunConfig, device: str = "cpu") -> None:
    """Load the run and serve it with uvicorn on ``serve.host:serve.port`` until interrupted."""
    import uvicorn

    if cfg.serve.torch_threads > 0:
        torch.set_num_threads(cfg.serve.torch_threads)
    app = create_app(RecommendService(run, cfg, device), cfg)
    uvicorn.Server(uvicorn_config(app, cfg)).run()
