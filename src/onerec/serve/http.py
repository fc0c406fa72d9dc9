"""The HTTP layer's protections: strict JSON parsing, the request guard (body and header limits, request ids, logged
5xx), uvicorn's limits from ``serve.*`` and a protocol with connection and read timeouts."""

import asyncio
import json
import logging
import math
import re
import time
import uuid
from typing import Any

from onerec.config import RunConfig
from onerec.data.checks import DuplicateKey, unique_keys
from onerec.serve.batching import Metrics

MAX_JSON_DEPTH = 32  # deeper request bodies are refused with 400 (a valid request nests two levels)
REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")  # an incoming X-Request-ID is kept when it matches
log = logging.getLogger("onerec.serve")


# ---------------------------------------------------------------------- requests
class BadJSON(ValueError):
    """A request body that is not acceptable JSON (answered 400)."""


def parse_json(body: bytes) -> Any:
    """The JSON value of a request body. Raises :class:`BadJSON` for malformed JSON, a key given twice
    in one object (``json.loads`` would keep the last silently) or nesting deeper than ``MAX_JSON_DEPTH``."""
    try:
        value = json.loads(body, object_pairs_hook=unique_keys)
    except DuplicateKey as e:
        raise BadJSON(f"duplicate key {e.key[:64]!r} in a JSON object") from None
    except RecursionError:
        raise BadJSON(f"JSON nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
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


async def client_gone(receive) -> None:
    """Returns once the server reports that the client disconnected (the body was already read, so
    the next ASGI message is ``http.disconnect``; servers send it when the connection closes)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def clean_errors(errors: list[dict]) -> list[dict]:
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


def uvicorn_options(cfg: RunConfig, log_level: str = "info") -> dict[str, Any]:
    """uvicorn's settings of ``onerec serve`` from ``serve.*``, apart from the app and the HTTP protocol
    (``guarded_protocol(serve.read_timeout_s)``): keyword arguments of ``uvicorn.Config`` / ``uvicorn.run``."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    sc = cfg.serve
    log_config = copy.deepcopy(LOGGING_CONFIG)  # onerec.serve's 5xx reports go where uvicorn's logs go
    log_config["loggers"]["onerec"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return dict(
        host=sc.host, port=sc.port, log_level=log_level, log_config=log_config,
        timeout_keep_alive=sc.keep_alive_s,  # a float works (loop.call_later)
        limit_concurrency=sc.limit_concurrency,
        h11_max_incomplete_event_size=sc.max_header_bytes,  # h11 refuses an unfinished head over this with 400
        timeout_graceful_shutdown=max(1, math.ceil(sc.request_timeout_ms / 1000.0)))


def uvicorn_config(app, cfg: RunConfig, log_level: str = "info"):
    """The uvicorn Config of ``onerec serve`` in one process: every limit from ``serve.*``."""
    import uvicorn

    return uvicorn.Config(app, http=guarded_protocol(cfg.serve.read_timeout_s), **uvicorn_options(cfg, log_level))
