"""The parts of `onerec.serve` that need no web framework (the core package imports without the extra)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest

from onerec.serve import Histogram, Metrics, MicroBatcher, Overloaded, Query


def test_importing_serve_does_not_import_fastapi():
    code = "import sys, onerec.serve, onerec.cli; assert 'fastapi' not in sys.modules and 'uvicorn' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_histogram_is_cumulative_and_metrics_render_prometheus_text():
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.5, 5.0):
        h.observe(v)
    assert h.counts == [1, 2] and h.n == 3
    assert h.lines("x") == ['x_bucket{le="0.1"} 1', 'x_bucket{le="1"} 2', 'x_bucket{le="+Inf"} 3', "x_sum 5.550000",
                            "x_count 3"]
    m = Metrics()
    m.observe("/recommend", 200, 0.02)
    m.observe("/recommend", 422, 0.001)
    m.observe("/recommend", 500, 0.3)
    m.observe_batch(7)
    text = m.render()
    assert 'onerec_requests_total{path="/recommend",status="422"} 1' in text
    assert 'onerec_errors_total{kind="client"} 1' in text and 'onerec_errors_total{kind="server"} 1' in text
    assert 'onerec_request_latency_seconds_bucket{path="/recommend",le="0.025"} 2' in text
    assert "onerec_batch_size_sum 7.000000" in text
    assert all(line.startswith("#") or len(line.split()) == 2 for line in text.strip().splitlines())


def test_the_queue_is_bounded_by_live_requests_and_drops_dead_ones_before_decoding():
    """A full queue refuses (503 upstream), but requests whose client went away or whose deadline
    passed neither hold a place nor reach the beam search."""
    decoded: list[int] = []

    class Service:  # stands in for RecommendService: records what reaches the search
        def recommend(self, queries):
            decoded.extend(q.k for q in queries)
            return [([q.k], [0.0]) for q in queries]

    def query(k: int) -> Query:
        one = np.ones(1, dtype=np.int64)
        return Query(one, one, one, 2, k)

    async def go():
        metrics = Metrics()
        batcher = MicroBatcher(Service(), max_batch=1, wait_s=0.0, metrics=metrics, max_queue=3)
        batcher.start()
        try:
            gone = [batcher.submit(query(k)) for k in (1, 2, 3)]  # the worker has not run yet: 3 queued
            with pytest.raises(Overloaded):
                batcher.submit(query(4))
            for f in gone:
                f.cancel()  # their clients disconnected
            late = batcher.submit(query(5), deadline=asyncio.get_running_loop().time() - 1)
            ok = batcher.submit(query(6))  # the cancelled three were purged: room again
            assert await asyncio.wait_for(ok, 10) == ([6], [0.0])
            assert late.cancelled()
        finally:
            await batcher.stop()
        return metrics

    metrics = asyncio.run(go())
    assert decoded == [6] and metrics.dropped == 4
    assert "onerec_dropped_total 4" in metrics.render()
