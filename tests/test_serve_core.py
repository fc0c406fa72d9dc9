"""The parts of `onerec.serve` that need no web framework (the core package imports without the extra)."""

from __future__ import annotations

import subprocess
import sys

from onerec.serve import Histogram, Metrics


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
