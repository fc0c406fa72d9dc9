"""`onerec serve` against hostile HTTP: a real uvicorn process on 127.0.0.1 driven over raw sockets.

Idle, half-sent, slow-body and huge-header connections must be closed within the configured
timeouts (set small here through ``serve.*`` overrides); a full queue answers 503 with Retry-After,
a passed deadline 504, and work for clients that went away is dropped before it is decoded; no
client input gets a 5xx; every answer carries an X-Request-ID and every 5xx is logged with it.
``--workers 2`` runs two worker processes on one port, both answering.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from test_serve import run  # noqa: F401  (the module's tiny trained run, reused)

KEEP_ALIVE_S, READ_TIMEOUT_S, MAX_HEADER = 1.0, 1.5, 8192
SLACK_S = 2.5  # scheduling slack on a busy shared CPU


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run_dir: Path, log: Path, overrides: list[str]):
    port = free_port()
    cmd = [sys.executable, "-c", "from onerec.cli import main; main()", "serve", str(run_dir), "--port", str(port),
           "serve.torch_threads=1", *overrides]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {log.read_text()[-3000:]}")
        try:
            if request(port, "GET", "/healthz")[0] == 200:
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    pytest.fail("server did not start within 90 s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one answer on a Connection: close request (read to EOF)."""
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def request(port: int, method: str, path: str, body: bytes = b"", headers: str = "") -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n{headers}\r\n".encode() + body)
        return read_response(s)


def post(port: int, payload, headers: str = "") -> tuple[int, dict, bytes]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return request(port, "POST", "/recommend", body, headers)


def seconds_until_closed(s: socket.socket, limit: float) -> tuple[float, bytes]:
    """Reads until the server closes the connection; (seconds it took, what was received)."""
    t0, got = time.monotonic(), b""
    s.settimeout(limit)
    try:
        while chunk := s.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"connection still open after {limit} s (received {got[:80]!r})")
    return time.monotonic() - t0, got


def metric(port: int, name: str) -> float:
    text = request(port, "GET", "/metrics")[2].decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):  # noqa: F811
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    proc, port = start_server(run[0], log, [
        f"serve.keep_alive_s={KEEP_ALIVE_S}", f"serve.read_timeout_s={READ_TIMEOUT_S}",
        f"serve.max_header_bytes={MAX_HEADER}", "serve.limit_concurrency=400"])
    yield port, log
    stop(proc)


@pytest.fixture(scope="module")
def strained(run, tmp_path_factory):  # noqa: F811
    """A server whose batching window (300 ms) outlasts its request deadline (150 ms) and whose queue
    holds 4: queued requests time out (504), a burst overflows the queue (503)."""
    log = tmp_path_factory.mktemp("strained") / "server.log"
    proc, port = start_server(run[0], log, ["serve.max_queue=4", "serve.batch_wait_ms=300",
                                            "serve.request_timeout_ms=150"])
    yield port, log
    stop(proc)


def test_idle_connections_are_closed_after_the_keep_alive_timeout(server):
    port, _ = server
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(200)]
    try:
        assert post(port, {"history_index": [1, 2], "k": 3})[0] == 200  # the server still answers meanwhile
        waited, got = seconds_until_closed(socks[0], KEEP_ALIVE_S + SLACK_S)
        assert got == b"" and waited < KEEP_ALIVE_S + SLACK_S
        for s in socks[1:]:  # the others closed at about the same time
            assert seconds_until_closed(s, SLACK_S)[1] == b""
    finally:
        for s in socks:
            s.close()
    # between requests too: a keep-alive connection that stays silent after its answer is closed
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        waited, got = seconds_until_closed(s, KEEP_ALIVE_S + SLACK_S)
        assert got.startswith(b"HTTP/1.1 200") and waited < KEEP_ALIVE_S + SLACK_S


@pytest.mark.parametrize("partial", [
    b"POST /recommend HTTP/1.1\r\nHost: t\r\nContent-",  # half-sent headers
    b"POST /recommend HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"history_index\": [1",  # half-sent body
])
def test_half_sent_requests_get_408_and_are_closed(server, partial):
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(partial)
        waited, got = seconds_until_closed(s, READ_TIMEOUT_S + SLACK_S)
    assert got.startswith(b"HTTP/1.1 408"), got[:100]
    assert READ_TIMEOUT_S - 0.3 < waited < READ_TIMEOUT_S + SLACK_S


def test_a_drip_fed_body_does_not_renew_the_read_timeout(server):
    port, _ = server
    body = json.dumps({"history_index": list(range(1, 30)), "k": 3}).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    t0 = time.monotonic()
    s.sendall(f"POST /recommend HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode())
    closed = False
    try:
        for byte in body:  # one byte every 0.2 s would take ~20 s
            s.sendall(bytes([byte]))
            time.sleep(0.2)
            if time.monotonic() - t0 > READ_TIMEOUT_S + SLACK_S:
                break
    except (BrokenPipeError, ConnectionResetError):
        closed = True
    if not closed:
        got = seconds_until_closed(s, SLACK_S)[1]
        assert got.startswith(b"HTTP/1.1 408"), got[:100]
    s.close()
    assert time.monotonic() - t0 < READ_TIMEOUT_S + 2 * SLACK_S


@pytest.mark.parametrize("size", [12 * 1024, 16 * 1024 * 1024])
def test_huge_headers_are_refused(server, size):
    port, _ = server
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    t0 = time.monotonic()
    head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused before it was all sent
        s.sendall(head)
    try:
        _, got = seconds_until_closed(s, SLACK_S + 5)
    finally:
        s.close()
    assert time.monotonic() - t0 < SLACK_S + 10
    if got:
        status = int(got.split()[1])
        assert status in (400, 431), got[:200]
    assert request(port, "GET", "/healthz")[0] == 200


def test_strict_types_duplicates_nesting_and_overflow_never_5xx(server):
    port, _ = server
    cases = [
        ({"history_index": [1], "k": "5"}, 422), ({"history_index": [1], "k": 5.0}, 422),
        ({"history_index": [1], "k": True}, 422),
        ({"history_index": [True, 2]}, 422), ({"user_id": 17}, 422),
        ({"history_index": [1], "timestamps": [2**63 + 5]}, 422), ({"history_index": [1], "timestamps": [2**64]}, 422),
        (b'{"history_index": [1], "k": 3, "k": 4}', 400), (b'{"history_index": [1], "history_index": [2]}', 400),
        (b"[" * 2000 + b"]" * 2000, 400), (b'{"history_index": ' + b"[" * 100 + b"]" * 100 + b"}", 400),
        (b'{"history_index": [1], "timestamps": [' + b"9" * 4000 + b"]}", 422),
        (b"\x00\x01\x02", 400), (b'{"history_index": [1e999]}', 422), (b'"just a string"', 422),
    ]
    for payload, expected in cases:
        status, headers, body = post(port, payload)
        assert status == expected, (payload if isinstance(payload, dict) else payload[:60], status, body[:200])
        assert headers.get("x-request-id")
    assert post(port, {"history_index": [1, 2, 3], "k": 2})[0] == 200


def test_request_ids_are_kept_when_sane_and_made_otherwise(server):
    port, _ = server
    status, headers, _ = post(port, {"history_index": [1], "k": 2}, "X-Request-ID: abc-123.ok\r\n")
    assert status == 200 and headers["x-request-id"] == "abc-123.ok"
    status, headers, _ = post(port, {"history_index": []}, "X-Request-ID: bad id; <script>\r\n")
    assert status == 422 and headers["x-request-id"] not in ("", "bad id; <script>")
    assert len({post(port, b"{oops")[1]["x-request-id"] for _ in range(3)}) == 3


def test_a_full_queue_gets_503_with_retry_after_and_a_passed_deadline_504(strained):
    port, log = strained
    results: list[tuple[int, dict, bytes]] = []
    barrier = threading.Barrier(20)

    def one() -> None:
        barrier.wait(timeout=20)
        results.append(post(port, {"history_index": [1, 2, 3], "k": 3}))

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    statuses = sorted(r[0] for r in results)
    assert len(statuses) == 20 and set(statuses) <= {200, 503, 504}, statuses
    assert 503 in statuses and 504 in statuses, statuses
    busy = next(r for r in results if r[0] == 503)
    assert busy[1]["retry-after"] == "1" and json.loads(busy[2])["error"].startswith("server busy")
    late = next(r for r in results if r[0] == 504)
    time.sleep(0.5)
    text = log.read_text()  # every 5xx is logged with its request id
    for r in (busy, late):
        assert f"request {r[1]['x-request-id']} (POST /recommend) answered {r[0]}" in text


def test_work_of_clients_that_went_away_is_dropped_before_decoding(strained):
    port, _ = strained
    time.sleep(0.5)
    dropped0, searches0 = metric(port, "onerec_dropped_total"), metric(port, "onerec_batch_size_count")
    socks = []
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        body = json.dumps({"history_index": [1, 2, 3], "k": 3}).encode()
        s.sendall(f"POST /recommend HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        socks.append(s)
    time.sleep(0.05)  # queued, inside the 300 ms batching window
    for s in socks:
        s.close()
    time.sleep(0.8)
    assert metric(port, "onerec_dropped_total") - dropped0 == 3
    assert metric(port, "onerec_batch_size_count") == searches0  # no beam search ran for them


def test_an_exception_is_a_logged_500_with_the_request_id(run, caplog):  # noqa: F811
    from fastapi.testclient import TestClient

    from onerec.serve import RecommendService, create_app

    service = RecommendService(run[0], run[1])

    def broken(queries):
        raise RuntimeError("beam search exploded")

    service.recommend = broken
    with TestClient(create_app(service), raise_server_exceptions=False) as client, \
            caplog.at_level(logging.ERROR, logger="onerec.serve"):
        r = client.post("/recommend", json={"history_index": [1, 2], "k": 2}, headers={"X-Request-ID": "req-42"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "req-42"
    assert "beam search exploded" not in r.text  # no internals leak to the client
    record = next(rec for rec in caplog.records if "req-42" in rec.getMessage())
    assert record.exc_info is not None and "beam search exploded" in str(record.exc_info[1])


# ---------------------------------------------------------------------- onerec serve --workers N
def spawned_workers(parent: int) -> set[int]:
    """Pids of the live processes that ``parent`` spawned with multiprocessing (uvicorn's workers), read from /proc."""
    pids = set()
    for d in Path("/proc").iterdir():
        try:
            if not d.name.isdigit() or int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) != parent:
                continue
            if b"spawn_main" in (d / "cmdline").read_bytes():
                pids.add(int(d.name))
        except (OSError, IndexError, ValueError):
            continue
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads worker processes from /proc (Linux)")
def test_two_workers_each_load_the_model_and_answer(run, tmp_path):  # noqa: F811
    proc, port = start_server(run[0], tmp_path / "server.log", ["--workers", "2"])
    try:
        deadline = time.time() + 60
        while len(workers := spawned_workers(proc.pid)) < 2 and time.time() < deadline:
            time.sleep(0.2)
        assert len(workers) == 2, f"expected 2 worker processes of {proc.pid}, found {workers}"
        answered, answers = set(), []
        deadline = time.time() + 60
        while answered != workers and time.time() < deadline:  # each connection goes to whichever worker accepts
            status, _, body = request(port, "GET", "/healthz")
            if status == 200:  # a worker still loading its model does not accept yet
                answered.add(json.loads(body)["pid"])
            status, _, body = post(port, {"history_index": [1, 2, 3], "k": 4})
            assert status == 200, body
            answers.append([it["item_index"] for it in json.loads(body)["items"]])
        assert answered == workers  # both workers answered, from their own process
        assert all(a == answers[0] and len(set(a)) == 4 for a in answers)  # the same model gives the same answer
    finally:
        stop(proc)
    assert proc.returncode is not None
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)  # stopping the parent stops its workers
