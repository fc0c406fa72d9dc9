"""``onerec serve RUN``: the trained generator behind HTTP (FastAPI + uvicorn, the ``serve`` extra).

Endpoints::

    POST /recommend   {"user_id": "u17", "k": 10}  or  {"history": ["50", "181"], "k": 10}  (the dataset's ids)
                      or {"history_index": [49, 180], "k": 10}  (onerec's dense indices)
                      -> {"items": [{"item_id" (the dataset's), "item_index", "score", "title"}, ...], "k", ...}
    GET  /healthz     {"status": "ok", ...}
    GET  /metrics     Prometheus text: request counts by status, a latency histogram, batch sizes
    GET  /openapi.json, /docs

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


@dataclass
class Query:
    """One validated request: a user's history (item ids, oldest first) and k."""

    items: np.ndarray
    ts: np.ndarray
    flags: np.ndarray
    request_ts: int
    k: int
    user_id: str | None = None
    user: int | None = None  # the dataset's user index (known users): their full log and user features


class RecommendService:
    """Loads a run (dataset, codes, trained generator) and answers batches of :class:`Query`.

    Args:
        run: the run directory (needs data/, tokenizer/, train/).
        cfg: the run's config (``generate.beam_size``, ``serve.*``, ``data.positive``).
        device: torch device for the model.
    """

    def __init__(self, run: Path, cfg: RunConfig, device: str | torch.device = "cpu") -> None:
        from onerec.data.schema import Dataset
        from onerec.data.splits import Sequences
        from onerec.pipeline import _item_titles, _require, load_recommender, raw_ids

        self.cfg = cfg
        ds = Dataset.load(_require(run / "data" / "dataset.json", "data").parent, validate=False)
        self.user_index = {r: i for i, r in enumerate(ds.users["raw_id"].to_pylist())}
        self.seq = Sequences.from_interactions(ds.interactions, ds.n_users, cfg.data.positive)
        self.titles = _item_titles(ds.items)
        self.item_ids = raw_ids(ds.items)  # the dataset's own item ids, by onerec's dense index
        self.item_index = {r: i for i, r in enumerate(self.item_ids)}
        self.rec = load_recommender(run, cfg, device, dataset=ds)
        self.n_items = len(self.rec.codes)
        self.lock = threading.Lock()  # one search at a time per model

    # ------------------------------------------------------------------ queries
    def user_query(self, user_id: str, k: int) -> Query:
        """The stored positive history of a known user. Raises KeyError for an unknown id."""
        u = self.user_index[user_id]
        s, e = self.seq.offsets[u], self.seq.offsets[u + 1]
        ts = self.seq.ts[s:e]
        return Query(self.seq.items[s:e], ts, self.seq.flags[s:e].astype(np.int64),
                     int(ts[-1]) + 1 if e > s else 0, k, user_id, u)

    def item_indices(self, ids: list[str | int]) -> list[int]:
        """Dense indices of the dataset's item ids (``raw_id``; an integer stands for its decimal text). Raises
        KeyError naming the first unknown id."""
        try:
            return [self.item_index[str(i)] for i in ids]
        except KeyError as e:
            raise KeyError(e.args[0]) from None

    def history_query(self, items: list[int], k: int, ts: list[int] | None = None,
                      flags: list[int] | None = None) -> Query:
        """An explicit history (validated by the caller: known items, equal lengths)."""
        n = len(items)
        t = np.asarray(ts if ts is not None else [0] * n, dtype=np.int64)
        f = np.asarray(flags if flags is not None else [DEFAULT_FLAGS] * n, dtype=np.int64)
        return Query(np.asarray(items, dtype=np.int64), t, f, int(t.max()) + 1 if ts is not None else 0, k)

    def beam_width(self, k: int) -> int:
        return max(self.cfg.generate.beam_size, k)

    @torch.no_grad()
    def recommend(self, queries: list[Query]) -> list[tuple[list[int], list[float]]]:
        """(items, scores) per query, in order; one beam search per distinct beam width and kind
        (known users, whose features include their full log and user features; explicit histories)."""
        from onerec.features.history import Ragged

        out: list[Any] = [None] * len(queries)
        groups: dict[tuple[int, bool], list[int]] = defaultdict(list)
        for i, q in enumerate(queries):
            groups[self.beam_width(q.k), q.user is not None].append(i)
        with self.lock:
            for (beam, known), idx in groups.items():
                qs = [queries[i] for i in idx]
                offsets = np.zeros(len(qs) + 1, dtype=np.int64)
                np.cumsum([len(q.items) for q in qs], out=offsets[1:])
                seqs = Ragged(offsets, np.concatenate([q.items for q in qs]), np.concatenate([q.ts for q in qs]),
                              np.concatenate([q.flags for q in qs]))
                rows = np.arange(len(qs))
                users = np.array([q.user for q in qs], dtype=np.int64) if known else None
                batch = self.rec.featurizer.histories(seqs, rows, offsets[1:], np.array([q.request_ts for q in qs]),
                                                      users)
                k_max = max(q.k for q in qs)
                items, scores = self.rec.rank(batch, k_max, beam_size=beam)  # fused when generate.succession_prior
                items, scores = items.tolist(), scores.tolist()
                for j, i in enumerate(idx):
                    keep = [(it, sc) for it, sc in zip(items[j][: qs[j].k], scores[j][: qs[j].k]) if it >= 0]
                    out[i] = ([it for it, _ in keep], [sc for _, sc in keep])
        return out


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
        path = scope["path"] if scope["path"] in ("/recommend", "/healthz", "/metrics") else "other"
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

    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, model_validator

    sc = (cfg or service.cfg).serve
    metrics = Metrics()
    batcher = MicroBatcher(service, sc.max_batch, sc.batch_wait_ms / 1000.0, metrics, sc.max_queue)
    n_items, max_k, max_hist = service.n_items, sc.max_k, sc.max_history
    timeout_s = sc.request_timeout_ms / 1000.0

    class RecommendRequest(BaseModel):
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

    class Item(BaseModel):
        item_id: str = Field(description="the dataset's item id (items.parquet raw_id)")
        item_index: int = Field(description="onerec's dense index of the item (0..N-1)")
        score: float = Field(description="total log-probability of the item's semantic ID")
        title: str

    class RecommendResponse(BaseModel):
        user_id: str | None
        k: int
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

    schema = RecommendRequest.model_json_schema(ref_template="#/components/schemas/{model}")

    @app.post("/recommend", response_model=RecommendResponse,
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}},
              responses={400: {"description": "malformed JSON, a duplicate key, or nesting too deep"},
                         404: {"description": "unknown user"}, 413: {"description": "body too large"},
                         422: {"description": "invalid request"},
                         503: {"description": "queue full (Retry-After)"},
                         504: {"description": "not answered within serve.request_timeout_ms"}})
    async def recommend(request: Request):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        body = await request.body()
        if not body.strip():
            raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
        try:
            req = RecommendRequest.model_validate(parse_json(body), strict=True)
        except ValidationError as e:
            raise RequestValidationError([{**err, "loc": ("body", *err["loc"])}
                                          for err in e.errors(include_url=False, include_input=False)]) from None
        if req.user_id is not None:
            try:
                query = service.user_query(req.user_id, req.k)
            except KeyError:
                raise HTTPException(404, f"unknown user_id {req.user_id!r}") from None
        else:
            query = service.history_query(req.history_index, req.k, req.timestamps, req.flags)
        fut = batcher.submit(query, deadline)
        gone = loop.create_task(_disconnected(request.receive))  # resolves when the client goes away
        try:
            await asyncio.wait({fut, gone}, timeout=max(deadline - loop.time(), 0),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not fut.done():
            fut.cancel()  # dropped by the batcher unless its search already runs
            if gone.done() and not gone.cancelled():
                return Response(status_code=499)  # nobody to answer
            return JSONResponse({"error": f"not answered within {sc.request_timeout_ms:g} ms"}, status_code=504)
        items, scores = fut.result()
        return RecommendResponse(
            user_id=req.user_id, k=req.k, history_length=len(query.items),
            items=[Item(item_id=service.item_ids[i], item_index=i, score=s if math.isfinite(s) else -1e30,
                        title=service.titles[i]) for i, s in zip(items, scores)])

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "items": n_items, "users": len(service.user_index),
                "beam_size": service.cfg.generate.beam_size, "max_k": max_k,
                "queued": batcher.queued()}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    app.state.metrics, app.state.batcher = metrics, batcher
    return app


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
