"""The FastAPI application around a :class:`~onerec.serve.service.RecommendService` (``POST /recommend``, ``/healthz``,
``/metrics``, the page at ``/ui`` and its JSON endpoints) and ``onerec serve``, which runs it under uvicorn."""

# No ``from __future__ import annotations``: FastAPI must see the request models defined in create_app.
import asyncio
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onerec.config import RunConfig
from onerec.serve.batching import Metrics, MicroBatcher, Overloaded
from onerec.serve.http import BadJSON, Guard, clean_errors, client_gone, parse_json, uvicorn_config
from onerec.serve.service import COVER_TYPES, MAX_COVER_BYTES, MAX_TIMESTAMP, MODELS, Query, RecommendService


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
        explore: bool = Field(False, description="serve.explore_slots: a new item that AGE put into one of the last "
                                                 "positions; its score is then AGE's click probability")

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
            return JSONResponse({"error": "malformed JSON body", "detail": clean_errors(errors)}, status_code=400)
        msgs = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}" for e in errors]
        return JSONResponse({"error": "; ".join(msgs), "detail": clean_errors(errors)}, status_code=422)

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
        gone = loop.create_task(client_gone(request.receive))  # resolves when the client goes away
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
        explored = [False] * len(items)
        if service.explorer is not None:
            items, scores, explored = await asyncio.to_thread(service.explore, query, items, scores)
        return RecommendResponse(
            user_id=req.user_id, k=req.k, model=req.model, exclude_seen=query.exclude_seen,
            history_length=len(query.items),
            items=[Item(item_id=service.item_ids[i], item_index=i, score=finite(s), title=service.titles[i],
                        explore=e) for i, s, e in zip(items, scores, explored)])

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "items": n_items, "users": len(service.user_index),
                "beam_size": service.cfg.generate.beam_size, "max_k": max_k,
                "queued": batcher.queued(), "pid": os.getpid()}  # pid: which worker process answered

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


def serve(run: Path, cfg: RunConfig, device: str = "cpu") -> None:
    """Load the run and serve it with uvicorn on ``serve.host:serve.port`` until interrupted; with
    ``serve.workers`` > 1 in that many processes (:mod:`onerec.serve.workers`)."""
    import uvicorn

    if cfg.serve.workers < 1:
        raise ValueError(f"serve.workers={cfg.serve.workers}: give at least 1 worker process")
    if cfg.serve.workers > 1:
        from onerec.serve.workers import serve_workers

        return serve_workers(run, cfg, device)
    from onerec.threads import keep_freed_memory

    keep_freed_memory(one_arena=True)  # the batcher searches on a worker thread: one arena keeps its blocks too
    if cfg.serve.torch_threads > 0:
        torch.set_num_threads(cfg.serve.torch_threads)
    app = create_app(RecommendService(run, cfg, device), cfg)
    uvicorn.Server(uvicorn_config(app, cfg)).run()
