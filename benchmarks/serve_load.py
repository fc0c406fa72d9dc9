"""Load test of ``onerec serve``: a real HTTP client over loopback against a real uvicorn process.

For each model size it builds a small run (simulated data, tokenizer, a briefly trained generator;
latency does not depend on how well the model is trained), starts ``onerec serve`` in a subprocess
on 127.0.0.1, and drives ``POST /recommend`` (a random known ``user_id``, k = ``--k``) from C
concurrent clients (each a keep-alive HTTP/1.1 connection of a minimal asyncio client) for C in
``--concurrency``, until ``--requests`` requests or ``--seconds`` have passed, in three mixes:

* ``plain``: every client waits for its answers.
* ``abandon``: 10% of the requests are sent on a fresh connection that is closed 0-10 ms later
  without reading the answer (a client that went away); latency is that of the others.
* ``slow``: one client in eight sends its body in three pieces 50 ms apart, and 8 extra
  connections send half a request and then stall (the server must close them after
  ``serve.read_timeout_s``, set to 2 s here); latency is that of the normal clients.

Reports p50 / p99 latency, throughput, 5xx answers (goal 0), other errors, the server's RSS before
and after each level (goal: no growth), its CPU time per request, and the mean number of requests per
beam search (micro-batch size, from /metrics). Then a sequential client (C = 1) against the last size
with ``serve.torch_threads`` 0 (torch's default: one thread per core) and 1: the share of requests over
500 ms shows the cost of intra-op threads on busy shared cores.

Sizes: ``tiny`` (the tiny preset) and ``0.015B`` (the Technical Report's 0.015B layout without its
mixture of experts: d_model 128, 4 heads, 4 encoder + 4 decoder layers, FFN 256, given as config
overrides on top of the tiny preset's data).

    python benchmarks/serve_load.py            # tiny and 0.015B, 2,000 requests (or 60 s) per level
    python benchmarks/serve_load.py --quick    # tiny only, 150 requests (or 10 s) per level: ~1 minute

Writes ``benchmarks/results/serving/serve_load[.quick].json`` and prints a Markdown table.

``--sweep`` measures how the micro-batch settings trade latency for throughput: for the 0.015B size it
starts the server once per combination of ``serve.max_batch`` in {1, 4, 16, 64} and
``serve.batch_wait_ms`` in {0, 2, 10} and drives the ``plain`` mix at concurrency 16 and 64, 1,000
requests (or 30 s) per level. It writes ``benchmarks/results/serving/serve_sweep[.quick].json`` and the
plot ``docs/benchmarks/serve_sweep.png`` (throughput against p99 latency, one line per
``batch_wait_ms``, one panel per concurrency; ``--quick``: tiny, 100 requests or 10 s per level, plot
next to the JSON).

    python benchmarks/serve_load.py --sweep          # ~15-20 minutes on 2 shared cores
    python benchmarks/serve_load.py --sweep --quick  # tiny: ~2 minutes

Loopback only; every loop is bounded in requests and seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

RESULTS = Path(__file__).resolve().parent / "results" / "serving"
PLOT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / "serve_sweep.png"
SWEEP_MAX_BATCH = (1, 4, 16, 64)
SWEEP_WAIT_MS = (0, 2, 10)
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


SERVER_OVERRIDES = ["serve.read_timeout_s=2"]  # stalled connections of the slow mix are closed within a level
MIXES = ("plain", "abandon", "slow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, port: int, threads: int, log: Path, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads) if threads > 0 else str(os.cpu_count()))
    cmd = [sys.executable, "-c", "from onerec.cli import main; main()", "serve", str(run), "--port", str(port),
           f"serve.torch_threads={threads}", *SERVER_OVERRIDES, *extra]
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


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def request_bytes(host: str, path: str, payload: dict) -> tuple[bytes, bytes]:
    body = json.dumps(payload).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode(), body)


class Connection:
    """A minimal keep-alive HTTP/1.1 client over asyncio streams. httpx costs several ms of CPU per
    request, so on two shared cores it, not the server, set the pace at concurrency 64."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post_json(self, path: str, payload: dict, pieces: int = 1, pause: float = 0.0) -> tuple[int, bytes]:
        """(status, body); with ``pieces`` > 1 the body is sent in that many parts ``pause`` s apart."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head, body = request_bytes(self.host, path, payload)
        step = -(-len(body) // pieces)
        self.writer.write(head + body[:step])
        for i in range(1, pieces):
            await self.writer.drain()
            await asyncio.sleep(pause)
            self.writer.write(body[i * step:(i + 1) * step])
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


async def abandon(host: str, port: int, payload: dict, rng: random.Random) -> None:
    """Send a request on a fresh connection and close it 0-10 ms later without reading the answer."""
    _, writer = await asyncio.open_connection(host, port)
    head, body = request_bytes(host, "/recommend", payload)
    writer.write(head + body)
    await writer.drain()
    await asyncio.sleep(rng.uniform(0, 0.01))
    writer.close()


async def stall(host: str, port: int, limit: float) -> bool:
    """Send half a request and wait; True if the server closed the connection within ``limit`` s."""
    reader, writer = await asyncio.open_connection(host, port)
    head, body = request_bytes(host, "/recommend", {"history_index": [1, 2, 3], "k": 5})
    writer.write(head + body[: len(body) // 2])
    await writer.drain()
    try:
        await asyncio.wait_for(reader.read(), limit)  # returns at EOF (after the 408)
        return True
    except (asyncio.TimeoutError, OSError):
        return False
    finally:
        writer.close()


async def drive(url: str, users: list[str], k: int, concurrency: int, n_requests: int, seconds: float,
                mix: str = "plain") -> dict:
    latencies: list[float] = []
    errors = server_errors = abandoned = 0
    sent = 0
    rng = random.Random(concurrency)
    start = time.perf_counter()
    host, port = url.removeprefix("http://").split(":")

    async def worker(slow: bool) -> None:
        nonlocal sent, errors, server_errors, abandoned
        conn = Connection(host, int(port))
        while sent < n_requests and time.perf_counter() - start < seconds:
            sent += 1
            payload = {"user_id": rng.choice(users), "k": k}
            if mix == "abandon" and rng.random() < 0.1:
                with contextlib.suppress(OSError, asyncio.TimeoutError):
                    await asyncio.wait_for(abandon(host, int(port), payload, rng), 10)
                abandoned += 1
                continue
            t0 = time.perf_counter()
            try:
                status, data = await asyncio.wait_for(
                    conn.post_json("/recommend", payload, *((3, 0.05) if slow else (1, 0.0))), 60)
                ok = status == 200 and len(json.loads(data)["items"]) > 0
                server_errors += status >= 500
            except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                ok = False
                await conn.close()
            if not slow:
                latencies.append(time.perf_counter() - t0)
            errors += not ok
        await conn.close()

    stalled = [asyncio.ensure_future(stall(host, int(port), seconds + 10)) for _ in range(8 if mix == "slow" else 0)]
    cpu0 = time.process_time()
    await asyncio.gather(*(worker(mix == "slow" and i % 8 == 7) for i in range(concurrency)))
    wall = time.perf_counter() - start
    client_cpu = time.process_time() - cpu0
    closed = sum(await asyncio.gather(*stalled)) if stalled else None
    lat = sorted(latencies)
    return {"mix": mix, "concurrency": concurrency, "requests": sent, "measured": len(lat),
            "abandoned": abandoned, "errors": errors, "server_errors": server_errors, "wall_s": wall,
            "throughput_rps": (sent - abandoned) / wall, "p50_ms": 1e3 * statistics.median(lat),
            "p99_ms": 1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "over_500ms": sum(x > 0.5 for x in lat) / len(lat),
            "client_cpu_ms_per_request": 1e3 * client_cpu / max(sent, 1),
            "stalled_closed": None if closed is None else f"{closed}/{len(stalled)}"}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): a contention-robust measure of server cost."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (float(fields[11]) + float(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scrape(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("#") and line.strip():
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def level(proc: subprocess.Popen, url: str, users: list[str], size: str, args, c: int, n: int, mix: str) -> dict:
    cpu0, m0, rss0 = cpu_seconds(proc.pid), scrape(url), rss_mb(proc.pid)
    row = {"size": size, **asyncio.run(drive(url, users, args.k, c, n, args.seconds, mix))}
    m1 = scrape(url)
    served = max(row["requests"] - row["abandoned"], 1)
    row["server_cpu_ms_per_request"] = 1e3 * (cpu_seconds(proc.pid) - cpu0) / served
    row["mean_batch"] = ((m1["onerec_batch_size_sum"] - m0["onerec_batch_size_sum"])
                         / max(m1["onerec_batch_size_count"] - m0["onerec_batch_size_count"], 1))
    row["dropped"] = int(m1["onerec_dropped_total"] - m0["onerec_dropped_total"])
    row["rss_before_mb"], row["rss_after_mb"] = rss0, rss_mb(proc.pid)
    print(f"{size:>7} {mix:>7} c={c:>3}: p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
          f"{row['throughput_rps']:6.1f} req/s  5xx {row['server_errors']}  errors {row['errors']}  "
          f"batch {row['mean_batch']:.1f}  dropped {row['dropped']}  "
          f"RSS {row['rss_before_mb']:.0f}->{row['rss_after_mb']:.0f} MiB", flush=True)
    return row


def table(rows: list[dict], probes: list[dict]) -> str:
    out = ["| size | mix | C | requests | p50 | p99 | throughput | 5xx | other errors | batch | dropped | "
           "stalled closed | server RSS before -> after |", "|---|---|" + "---:|" * 10 + "---|"]
    for r in rows:
        out.append(f"| {r['size']} | {r['mix']} | {r['concurrency']} | {r['requests']:,} | {r['p50_ms']:,.0f} ms | "
                   f"{r['p99_ms']:,.0f} ms | {r['throughput_rps']:,.0f} req/s | {r['server_errors']} | "
                   f"{r['errors'] - r['server_errors']} | {r['mean_batch']:.1f} | {r['dropped']} | "
                   f"{r['stalled_closed'] or '-'} | "
                   f"{r['rss_before_mb']:.0f} -> {r['rss_after_mb']:.0f} MiB |")
    if probes:
        out += ["", "| size | serve.torch_threads | requests | p50 | p99 | over 500 ms | server CPU / request |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        out += [f"| {p['size']} | {p['torch_threads']} | {p['requests']:,} | {p['p50_ms']:,.0f} ms | "
                f"{p['p99_ms']:,.0f} ms | {100 * p['over_500ms']:.1f}% | {p['server_cpu_ms_per_request']:.1f} ms |"
                for p in probes]
    return "\n".join(out)


def sweep_table(rows: list[dict]) -> str:
    out = ["| C | serve.max_batch | serve.batch_wait_ms | requests | p50 | p99 | throughput | mean batch | "
           "server CPU / request | 5xx | other errors |", "|" + "---:|" * 11]
    for r in sorted(rows, key=lambda r: (r["concurrency"], r["max_batch"], r["batch_wait_ms"])):
        out.append(f"| {r['concurrency']} | {r['max_batch']} | {r['batch_wait_ms']:g} | {r['requests']:,} | "
                   f"{r['p50_ms']:,.0f} ms | {r['p99_ms']:,.0f} ms | {r['throughput_rps']:,.0f} req/s | "
                   f"{r['mean_batch']:.1f} | {r['server_cpu_ms_per_request']:.1f} ms | {r['server_errors']} | "
                   f"{r['errors'] - r['server_errors']} |")
    return "\n".join(out)


def sweep_plot(rows: list[dict], path: Path, title: str) -> None:
    """Throughput (x) against p99 latency (y): one panel per concurrency, one line per batch_wait_ms,
    each point labelled with its max_batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    levels = sorted({r["concurrency"] for r in rows})
    waits = sorted({r["batch_wait_ms"] for r in rows})
    fig, axes = plt.subplots(1, len(levels), figsize=(6 * len(levels), 4), squeeze=False)
    for ax, c in zip(axes[0], levels):
        for i, w in enumerate(waits):
            pts = sorted((r for r in rows if r["concurrency"] == c and r["batch_wait_ms"] == w),
                         key=lambda r: r["max_batch"])
            xs, ys = [r["throughput_rps"] for r in pts], [r["p99_ms"] for r in pts]
            ax.plot(xs, ys, marker="o", color=f"C{i}", label=f"batch_wait_ms {w:g}")
            for r, x, y in zip(pts, xs, ys):
                ax.annotate(str(r["max_batch"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8,
                            color=f"C{i}")
        ax.set(title=f"{title}, {c} concurrent clients", xlabel="throughput (requests/s)", ylabel="p99 latency (ms)")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 3, 5)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="labels: max_batch", title_fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_sweep(args) -> None:
    """Each (serve.max_batch, serve.batch_wait_ms) setting on a fresh server; the plain mix at each concurrency."""
    size = (args.sizes or (["tiny"] if args.quick else ["0.015B"]))[0]
    levels = args.concurrency if args.concurrency_given else [16, 64]
    n_requests = args.requests or (100 if args.quick else 1000)
    args.seconds = args.seconds or (10.0 if args.quick else 30.0)
    load0 = os.getloadavg()
    rows = []
    t_start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / size
        build_run(run, SIZES[size])
        users = pq.read_table(run / "data" / "users.parquet", columns=["raw_id"])["raw_id"].to_pylist()
        for max_batch in SWEEP_MAX_BATCH:
            for wait in SWEEP_WAIT_MS:
                setting = (f"serve.max_batch={max_batch}", f"serve.batch_wait_ms={wait}")
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                proc = start_server(run, port, args.threads, Path(tmp) / f"sweep-{max_batch}-{wait}.log", setting)
                try:
                    asyncio.run(drive(url, users, args.k, max(levels), 2 * max(levels), 30))  # warm-up
                    for c in levels:
                        row = level(proc, url, users, size, args, c, n_requests, "plain")
                        rows.append({"max_batch": max_batch, "batch_wait_ms": wait, **row})
                finally:
                    stop_server(proc)
    load1 = os.getloadavg()
    result = {
        "command": "python benchmarks/serve_load.py --sweep" + (" --quick" if args.quick else ""),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(time.time() - t_start, 1),
        "machine": machine_info(note="client and server on the same cores, shared with other jobs (a training job); "
                                     f"load average (1/5/15 min) {load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f} at the "
                                     f"start, {load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f} at the end; read ratios "
                                     "within the run, not absolute times"),
        "setup": {"size": size, "k": args.k, "beam_size": 32, "mix": "plain", "concurrency": levels,
                  "requests_per_level": n_requests, "seconds_per_level": args.seconds,
                  "max_batch": list(SWEEP_MAX_BATCH), "batch_wait_ms": list(SWEEP_WAIT_MS),
                  "server_overrides": [f"serve.torch_threads={args.threads}", *SERVER_OVERRIDES],
                  "warm_up": "2 x max(concurrency) requests at max(concurrency) after each server start"},
        "total_server_errors": sum(r["server_errors"] for r in rows),
        "total_errors": sum(r["errors"] for r in rows),
        "rows": rows,
    }
    out = RESULTS / f"serve_sweep{'.quick' if args.quick else ''}.json"
    write_json(out, result)
    plot = RESULTS / "serve_sweep.quick.png" if args.quick else PLOT
    sweep_plot(rows, plot, size)
    print()
    print(sweep_table(rows))
    print(f"\nwrote {out} and {plot}; 5xx {result['total_server_errors']}, errors {result['total_errors']}; "
          f"{result['elapsed_s']:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny only, 150 requests or 10 s per level")
    ap.add_argument("--sizes", nargs="*", default=None, help=f"of {list(SIZES)} (default all; quick: tiny)")
    ap.add_argument("--sweep", action="store_true",
                    help="micro-batch sweep: serve.max_batch x serve.batch_wait_ms, plain mix (see above)")
    ap.add_argument("--concurrency", type=int, nargs="*", default=None,
                    help="client counts per level (default 1 16 64; sweep: 16 64)")
    ap.add_argument("--mixes", nargs="*", default=list(MIXES), choices=MIXES)
    ap.add_argument("--requests", type=int, default=None,
                    help="requests per level (default 2000; quick 150; sweep 1000, sweep quick 100)")
    ap.add_argument("--seconds", type=float, default=None, help="time bound per level (default 60; quick 10; sweep 30)")
    ap.add_argument("--probe-requests", type=int, default=None,
                    help="sequential requests per torch-threads setting (default 400; quick 60; 0: skip)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="serve.torch_threads of the server in the load levels")
    args = ap.parse_args()
    args.concurrency_given = args.concurrency is not None
    if args.sweep:
        run_sweep(args)
        return
    args.concurrency = args.concurrency or [1, 16, 64]
    sizes = args.sizes or (["tiny"] if args.quick else list(SIZES))
    n_requests = args.requests or (150 if args.quick else 2000)
    args.seconds = args.seconds or (10.0 if args.quick else 60.0)
    n_probe = args.probe_requests if args.probe_requests is not None else (60 if args.quick else 400)
    rows, probes, rss = [], [], {}
    t_start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            run = Path(tmp) / size
            build_run(run, SIZES[size])
            users = pq.read_table(run / "data" / "users.parquet", columns=["raw_id"])["raw_id"].to_pylist()
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            proc = start_server(run, port, args.threads, Path(tmp) / f"{size}.log")
            try:
                asyncio.run(drive(url, users, args.k, 4, 40, 30))  # warm-up
                rss0 = rss_mb(proc.pid)
                for mix in args.mixes:
                    for c in args.concurrency:
                        rows.append(level(proc, url, users, size, args, c, n_requests, mix))
                rss[size] = {"after_warmup_mb": rss0, "after_all_mb": rss_mb(proc.pid)}
            finally:
                stop_server(proc)
            if size == sizes[-1] and n_probe:
                for threads in (0, 1):  # 0: torch's default (one intra-op thread per core)
                    port = free_port()
                    url = f"http://127.0.0.1:{port}"
                    proc = start_server(run, port, threads, Path(tmp) / f"{size}-probe{threads}.log")
                    try:
                        asyncio.run(drive(url, users, args.k, 1, 20, 30))  # warm-up
                        cpu0 = cpu_seconds(proc.pid)
                        p = {"size": size, "torch_threads": threads,
                             **asyncio.run(drive(url, users, args.k, 1, n_probe, args.seconds))}
                        p["server_cpu_ms_per_request"] = 1e3 * (cpu_seconds(proc.pid) - cpu0) / p["requests"]
                        probes.append(p)
                        print(f"{size:>7} sequential, torch_threads {threads}: p50 {p['p50_ms']:.1f} ms  "
                              f"p99 {p['p99_ms']:.1f} ms  over 500 ms {100 * p['over_500ms']:.1f}%  "
                              f"server CPU/req {p['server_cpu_ms_per_request']:.1f} ms", flush=True)
                    finally:
                        stop_server(proc)
    result = {
        "command": "python benchmarks/serve_load.py" + (" --quick" if args.quick else ""),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(time.time() - t_start, 1),
        "machine": machine_info(note="client and server on the same cores"),
        "setup": {"k": args.k, "beam_size": 32, "preset": "tiny data + sizes overrides", "sizes": SIZES,
                  "requests_per_level": n_requests, "seconds_per_level": args.seconds,
                  "server_overrides": [f"serve.torch_threads={args.threads}", *SERVER_OVERRIDES], "mixes": args.mixes},
        "total_server_errors": sum(r["server_errors"] for r in rows),
        "total_errors": sum(r["errors"] for r in rows),
        "rss_mb": rss,
        "rows": rows,
        "sequential_probe": probes,
    }
    out = RESULTS / f"serve_load{'.quick' if args.quick else ''}.json"
    write_json(out, result)  # atomic; creates the folder
    print()
    print(table(rows, probes))
    print(f"\nwrote {out}; 5xx {result['total_server_errors']}, errors {result['total_errors']}; "
          f"{result['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
