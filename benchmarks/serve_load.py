"""Load test of ``onerec serve``: a real HTTP client over loopback against a real uvicorn process.

For each model size it builds a small run (simulated data, tokenizer, a briefly trained generator;
latency does not depend on how well the model is trained), starts ``onerec serve`` in a subprocess
on 127.0.0.1, and drives ``POST /recommend`` (a random known ``user_id``, k = ``--k``) from C
concurrent clients (each a keep-alive HTTP/1.1 connection of a minimal asyncio client) for C in
``--concurrency``, until ``--requests`` requests or ``--seconds`` have passed. Reports p50 / p99
latency, throughput and errors (any non-200 answer or transport error) per size and concurrency,
the CPU time per request of the server and of the client (robust to other jobs on shared cores,
unlike latency), and the mean number of requests per beam search (micro-batch size, from /metrics).

Sizes: ``tiny`` (the tiny preset) and ``0.015B`` (the Technical Report's 0.015B layout without its
mixture of experts: d_model 128, 4 heads, 4 encoder + 4 decoder layers, FFN 256, given as config
overrides on top of the tiny preset's data; issue 4 adds it as a preset).

    python benchmarks/serve_load.py            # tiny and 0.015B, concurrency 1 / 16 / 64
    python benchmarks/serve_load.py --quick    # fewer requests

Writes ``benchmarks/results/serve_load[.quick].json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq

from onerec.bench.machine import machine_info
from onerec.io import write_json

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = {
    "tiny": [],
    "0.015B": ["model.d_model=128", "model.n_heads=4", "model.enc_layers=4", "model.dec_layers=4",
               "model.ffn_mult=3.0", "model.max_history=50"],
}


def build_run(run: Path, overrides: list[str]) -> None:
    from onerec.config import load_config
    from onerec.pipeline import stage_data, stage_tokenize, stage_train

    cfg = load_config(preset="tiny", overrides=[*overrides, "train.max_steps=20", "generate.beam_size=32"])
    for stage in (stage_data, stage_tokenize, stage_train):
        stage(run, cfg, progress=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, port: int, threads: int, log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-c", f"import torch; torch.set_num_threads({threads}); from onerec.cli import main; main()",
           "serve", str(run), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start within 120 s")


class Connection:
    """A minimal keep-alive HTTP/1.1 client over asyncio streams. httpx costs several ms of CPU per
    request, so on two shared cores it, not the server, set the pace at concurrency 64."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post_json(self, path: str, payload: dict) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        body = json.dumps(payload).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await self.writer.drain()
        status = int((await self.reader.readline()).split()[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and "close" in value.lower():
                close = True
        data = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def drive(url: str, users: list[str], k: int, concurrency: int, n_requests: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    sent = 0
    rng = random.Random(concurrency)
    start = time.perf_counter()

    host, port = url.removeprefix("http://").split(":")

    async def worker() -> None:
        nonlocal sent, errors
        conn = Connection(host, int(port))
        while sent < n_requests and time.perf_counter() - start < seconds:
            sent += 1
            t0 = time.perf_counter()
            try:
                status, data = await asyncio.wait_for(conn.post_json("/recommend", {"user_id": rng.choice(users),
                                                                                    "k": k}), 60)
                ok = status == 200 and len(json.loads(data)["items"]) > 0
            except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                ok = False
                await conn.close()
            latencies.append(time.perf_counter() - t0)
            errors += not ok
        await conn.close()

    cpu0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    client_cpu = time.process_time() - cpu0
    lat = sorted(latencies)
    return {"concurrency": concurrency, "requests": len(lat), "errors": errors, "wall_s": wall,
            "throughput_rps": len(lat) / wall, "p50_ms": 1e3 * statistics.median(lat),
            "client_cpu_ms_per_request": 1e3 * client_cpu / len(lat),
            "p99_ms": 1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): a contention-robust measure of server cost."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (float(fields[11]) + float(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_totals(url: str) -> tuple[float, float]:
    """(requests, beam searches) so far, from the server's onerec_batch_size histogram."""
    text = httpx.get(f"{url}/metrics").text
    vals = {line.split()[0]: float(line.split()[1])
            for line in text.splitlines() if line.startswith("onerec_batch_size_")}
    return vals["onerec_batch_size_sum"], vals["onerec_batch_size_count"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer requests per level")
    ap.add_argument("--sizes", nargs="*", default=list(SIZES))
    ap.add_argument("--concurrency", type=int, nargs="*", default=[1, 16, 64])
    ap.add_argument("--requests", type=int, default=None,
                    help="requests per concurrency level (default 400; quick 100)")
    ap.add_argument("--seconds", type=float, default=60.0, help="time bound per concurrency level")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    args = ap.parse_args()
    n_requests = args.requests or (100 if args.quick else 400)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            run = Path(tmp) / size
            build_run(run, SIZES[size])
            users = pq.read_table(run / "data" / "users.parquet", columns=["raw_id"])["raw_id"].to_pylist()
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            proc = start_server(run, port, args.threads, Path(tmp) / f"{size}.log")
            try:
                asyncio.run(drive(url, users, args.k, 4, 20, 30))  # warm-up
                for c in args.concurrency:
                    cpu0, (req0, searches0) = cpu_seconds(proc.pid), batch_totals(url)
                    row = {"size": size, **asyncio.run(drive(url, users, args.k, c, n_requests, args.seconds))}
                    row["server_cpu_ms_per_request"] = 1e3 * (cpu_seconds(proc.pid) - cpu0) / row["requests"]
                    req1, searches1 = batch_totals(url)
                    row["mean_batch"] = (req1 - req0) / max(searches1 - searches0, 1)
                    rows.append(row)
                    print(f"{size:>7} c={c:>3}: p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
                          f"{row['throughput_rps']:7.1f} req/s  "
                          f"CPU/req server {row['server_cpu_ms_per_request']:.1f} ms, "
                          f"client {row['client_cpu_ms_per_request']:.1f} ms  batch {row['mean_batch']:.1f}  "
                          f"errors {row['errors']}", flush=True)
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    result = {
        "command": "python benchmarks/serve_load.py" + (" --quick" if args.quick else ""),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(note=f"client and server on the same cores; server torch threads {args.threads}"),
        "setup": {"k": args.k, "beam_size": 32, "preset": "tiny data + sizes overrides", "sizes": SIZES,
                  "requests_per_level": n_requests, "seconds_per_level": args.seconds},
        "total_errors": sum(r["errors"] for r in rows),
        "rows": rows,
    }
    out = RESULTS / f"serve_load{'.quick' if args.quick else ''}.json"
    write_json(out, result)  # atomic; creates the folder
    print(f"wrote {out}; errors {result['total_errors']}")


if __name__ == "__main__":
    main()
