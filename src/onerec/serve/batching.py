"""Micro-batching of concurrent requests into one beam search, its bounded queue, and the Prometheus metrics."""

import asyncio
import contextlib
import math
import threading
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from onerec.serve.service import Query, RecommendService

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
