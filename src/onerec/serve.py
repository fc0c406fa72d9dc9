"""``onerec serve RUN``: the trained generator behind HTTP (FastAPI + uvicorn, the ``serve`` extra).

Endpoints::

    POST /recommend   {"user_id": "u17", "k": 10}  or  {"history": [3, 41, 7], "k": 10}
                      -> {"items": [{"item_id", "score", "title"}, ...], "k", "history_length", ...}
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
import math
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onerec.config import RunConfig

DEFAULT_FLAGS = 1  # an explicit history's behaviours count as clicks unless flags are given


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
        from onerec.pipeline import _item_titles, _require, load_recommender

        self.cfg = cfg
        ds = Dataset.load(_require(run / "data" / "dataset.json", "data").parent, validate=False)
        self.user_index = {r: i for i, r in enumerate(ds.users["raw_id"].to_pylist())}
        self.seq = Sequences.from_interactions(ds.interactions, ds.n_users, cfg.data.positive)
        self.titles = _item_titles(ds.items)
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

    def observe(self, path: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(path, status)] += 1
            self.latency.setdefault(path, Histogram(LATENCY_BUCKETS)).observe(seconds)
            if status >= 400:
                self.errors["client" if status < 500 else "server"] += 1

    def observe_batch(self, size: int) -> None:
        with self.lock:
            self.batch.observe(size)

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
            return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- micro-batching
class MicroBatcher:
    """Collects concurrent queries and answers them with one :meth:`RecommendService.recommend` call.

    ``submit`` is awaited by request handlers; a single worker task drains the queue: it waits for a
    first query, then up to ``wait_s`` for more (at most ``max_batch``), and runs the batch in a
    worker thread so the event loop keeps accepting requests meanwhile.
    """

    def __init__(self, service: RecommendService, max_batch: int, wait_s: float, metrics: Metrics) -> None:
        self.service, self.max_batch, self.wait_s, self.metrics = service, max_batch, wait_s, metrics
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onerec-beam")

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.pool.shutdown(wait=True)

    async def submit(self, query: Query) -> tuple[list[int], list[float]]:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((query, fut))
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pending = [await self.queue.get()]
            deadline = loop.time() + self.wait_s
            while len(pending) < self.max_batch:
                timeout = deadline - loop.time()
                try:
                    pending.append(self.queue.get_nowait() if timeout <= 0 else
                                   await asyncio.wait_for(self.queue.get(), timeout))
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
            pending = [(q, f) for q, f in pending if not f.cancelled()]
            if not pending:
                continue
            self.metrics.observe_batch(len(pending))
            try:
                results = await loop.run_in_executor(self.pool, self.service.recommend, [q for q, _ in pending])
            except Exception as e:  # a failed search fails its requests, never the worker
                for _, f in pending:
                    if not f.done():
                        f.set_exception(e)
                continue
            for (_, f), r in zip(pending, results):
                if not f.done():
                    f.set_result(r)


# ---------------------------------------------------------------------- the app
def create_app(service: RecommendService, cfg: RunConfig | None = None):
    """The FastAPI application around ``service`` (needs the ``serve`` extra: fastapi, uvicorn)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from pydantic import BaseModel, ConfigDict, Field, model_validator

    sc = (cfg or service.cfg).serve
    metrics = Metrics()
    batcher = MicroBatcher(service, sc.max_batch, sc.batch_wait_ms / 1000.0, metrics)
    n_items, max_k, max_hist = service.n_items, sc.max_k, sc.max_history

    class RecommendRequest(BaseModel):
        """Give exactly one of ``user_id`` (a user of the run's dataset, raw id) or ``history``."""

        model_config = ConfigDict(extra="forbid")
        user_id: str | None = Field(None, max_length=256, description="raw user id from the run's users.parquet")
        history: list[int] | None = Field(None, description="item ids the user engaged with, oldest first")
        timestamps: list[int] | None = Field(None, description="unix seconds of each history item (optional)")
        flags: list[int] | None = Field(None, description="signal bitmask of each history item (optional)")
        k: int = Field(10, ge=1, le=max_k, description=f"items to return (1..{max_k})")

        @model_validator(mode="after")
        def _check(self):
            if (self.user_id is None) == (self.history is None):
                raise ValueError("give exactly one of 'user_id' or 'history'")
            if self.history is not None:
                if not self.history:
                    raise ValueError("'history' is empty: give at least one item id (or a 'user_id')")
                if len(self.history) > max_hist:
                    raise ValueError(f"'history' has {len(self.history)} items; at most {max_hist} allowed")
                bad = next((i for i in self.history if not 0 <= i < n_items), None)
                if bad is not None:
                    raise ValueError(f"unknown item id {bad} in 'history': item ids are 0..{n_items - 1}")
                for name in ("timestamps", "flags"):
                    extra = getattr(self, name)
                    if extra is not None and len(extra) != len(self.history):
                        raise ValueError(f"'{name}' has {len(extra)} entries but 'history' has {len(self.history)}")
                if self.flags is not None and any(not 0 <= f < 2**16 for f in self.flags):
                    raise ValueError("'flags' entries must be in 0..65535")
            elif self.timestamps is not None or self.flags is not None:
                raise ValueError("'timestamps' and 'flags' go with 'history', not 'user_id'")
            return self

    class Item(BaseModel):
        item_id: int
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

    @app.middleware("http")
    async def guard(request: Request, call_next):
        t0 = time.perf_counter()
        path = request.url.path if request.url.path in ("/recommend", "/healthz", "/metrics") else "other"
        try:
            length = request.headers.get("content-length")
            too_big = length is not None and (not length.isdigit() or int(length) > sc.max_body_bytes)
            if too_big or (request.method == "POST" and not await _body_within(request, sc.max_body_bytes)):
                response = JSONResponse({"error": f"request body over {sc.max_body_bytes} bytes"}, status_code=413)
            else:
                response = await call_next(request)
        except Exception:  # never let one request take the server down
            response = JSONResponse({"error": "internal error"}, status_code=500)
        metrics.observe(path, response.status_code, time.perf_counter() - t0)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse({"error": "malformed JSON body", "detail": _clean(errors)}, status_code=400)
        msgs = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}" for e in errors]
        return JSONResponse({"error": "; ".join(msgs), "detail": _clean(errors)}, status_code=422)

    @app.post("/recommend", response_model=RecommendResponse,
              responses={400: {"description": "malformed JSON"}, 404: {"description": "unknown user"},
                         413: {"description": "body too large"}, 422: {"description": "invalid request"}})
    async def recommend(req: RecommendRequest) -> RecommendResponse:
        if req.user_id is not None:
            try:
                query = service.user_query(req.user_id, req.k)
            except KeyError:
                raise HTTPException(404, f"unknown user_id {req.user_id!r}") from None
        else:
            query = service.history_query(req.history, req.k, req.timestamps, req.flags)
        items, scores = await batcher.submit(query)
        return RecommendResponse(
            user_id=req.user_id, k=req.k, history_length=len(query.items),
            items=[Item(item_id=i, score=s if math.isfinite(s) else -1e30, title=service.titles[i])
                   for i, s in zip(items, scores)])

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "items": n_items, "users": len(service.user_index),
                "beam_size": service.cfg.generate.beam_size, "max_k": max_k}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    app.state.metrics, app.state.batcher = metrics, batcher
    return app


async def _body_within(request, limit: int) -> bool:
    """Reads the body in chunks, stopping as soon as it passes ``limit`` bytes (a chunked upload
    without content-length cannot make the server buffer more). Keeps what was read for the handler,
    as ``Request.body()`` does."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return False
        chunks.append(chunk)
    request._body = b"".join(chunks)
    return True


def _clean(errors: list[dict]) -> list[dict]:
    """Validation errors without echoing the (possibly huge or hostile) input back."""
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg")), "type": e.get("type")} for e in errors]


def serve(run: Path, cfg: RunConfig, device: str = "cpu") -> None:
    """Load the run and serve it with uvicorn on ``serve.host:serve.port`` until interrupted."""
    import uvicorn

    app = create_app(RecommendService(run, cfg, device), cfg)
    uvicorn.run(app, host=cfg.serve.host, port=cfg.serve.port, log_level="info", timeout_keep_alive=5)
