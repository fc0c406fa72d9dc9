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

from onerec.serve.app import create_app, serve, ui_page
from onerec.serve.batching import Histogram, Metrics, MicroBatcher, Overloaded
from onerec.serve.http import BadJSON, Guard, guarded_protocol, parse_json, uvicorn_config
from onerec.serve.service import (
    MODELS,
    TRANSITIONS_VALID_ROWS,
    UI_PRIOR_WEIGHT,
    Query,
    RecommendService,
    item_covers,
)

__all__ = ["MODELS", "TRANSITIONS_VALID_ROWS", "UI_PRIOR_WEIGHT", "BadJSON", "Guard", "Histogram", "Metrics",
           "MicroBatcher", "Overloaded", "Query", "RecommendService", "create_app", "guarded_protocol", "item_covers",
           "parse_json", "serve", "ui_page", "uvicorn_config"]
