"""Scale benchmark of the simulated world (``onerec.data.simulator``).

Each size runs :func:`simulate_to_dir` into a temporary folder in a fresh subprocess (so the peak RSS,
``resource.getrusage(...).ru_maxrss``, is that run's own), ``--repeats`` times, and reports the median
wall time, events per second and peak RSS. The same run times the vectorised response model
(:meth:`World.expected`) against the plain per-pair reference (:meth:`World.expected_reference`) on
the same pairs, and reads back the logged feedback rates of each policy.

    python benchmarks/simulator_scale.py --quick    # quickstart + 10k users x 5k items x 1M events (~1 min)
    python benchmarks/simulator_scale.py            # + 100k users x 50k items x 10M events (run once)

Prints a Markdown table and writes ``benchmarks/results/simulator/simulator_scale[.quick].json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "simulator"
# name, n_users, n_items, n_events, n_authors, default repeats
QUICKSTART = ("quickstart (defaults)", 3000, 2000, 300_000, 300, 3)
QUICK = ("quick", 10_000, 5_000, 1_000_000, 700, 3)
FULL = ("full", 100_000, 50_000, 10_000_000, 7000, 1)
REF_PAIRS = 20_000


def _worker(args: argparse.Namespace) -> None:
    """One timed simulate_to_dir in this (fresh) process; prints a JSON line."""
    import resource

    from onerec.config import SimConfig
    from onerec.data.simulator import simulate_to_dir

    cfg = SimConfig(n_users=args.n_users, n_items=args.n_items, n_events=args.n_events, n_authors=args.n_authors,
                    seed=args.seed)
    t0 = time.perf_counter()
    simulate_to_dir(cfg, args.out, chunk_users=args.chunk_users)
    wall = time.perf_counter() - t0
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes
    print(json.dumps({"wall_s": wall, "peak_rss_mb": rss_kb / 1024}))


def _run_once(size: tuple, out: Path, seed: int, chunk_users: int) -> dict[str, float]:
    _, n_users, n_items, n_events, n_authors, _ = size
    cmd = [sys.executable, __file__, "--worker", "--out", str(out), "--n-users", str(n_users),
           "--n-items", str(n_items), "--n-events", str(n_events), "--n-authors", str(n_authors),
           "--seed", str(seed), "--chunk-users", str(chunk_users)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"worker failed ({res.returncode}):\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _response_speed(folder: Path, n_pairs: int) -> dict[str, float]:
    """Vectorised vs plain per-pair response model on the same random pairs of the run's world."""
    from onerec.data.simulator import World

    world = World.load(folder / "world")
    rng = np.random.default_rng(0)
    u = rng.integers(0, world.n_users, n_pairs)
    i = rng.integers(0, world.n_items, n_pairs)
    t0 = time.perf_counter()
    ref = world.expected_reference(u, i)
    t_ref = time.perf_counter() - t0
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        fast = world.expected(u, i)
        times.append(time.perf_counter() - t0)
    t_vec = statistics.median(times)
    err = max(float(np.max(np.abs(fast[k] - ref[k]) / np.maximum(np.abs(ref[k]), 1e-12))) for k in ref)
    return {"pairs": n_pairs, "reference_s": t_ref, "vectorised_s": t_vec, "speedup": t_ref / t_vec,
            "reference_us_per_pair": 1e6 * t_ref / n_pairs, "vectorised_us_per_pair": 1e6 * t_vec / n_pairs,
            "max_rel_diff": err}


def _rates(folder: Path) -> dict[str, dict[str, float]]:
    import pyarrow.parquet as pq

    from onerec.data.schema import SIGNALS
    from onerec.data.simulator import feedback_rates

    table = pq.read_table(folder / "interactions.parquet", columns=[*SIGNALS, "policy"])
    return {p: feedback_rates(table, p) for p in ("random", "production")}


def _bench_size(size: tuple, args: argparse.Namespace) -> dict[str, Any]:
    name, n_users, n_items, n_events, n_authors, default_repeats = size
    repeats = args.repeats or default_repeats
    walls, rss = [], []
    extra: dict[str, Any] = {}
    for r in range(repeats):
        with tempfile.TemporaryDirectory(prefix="onerec_sim_") as tmp:
            res = _run_once(size, Path(tmp) / "data", args.seed, args.chunk_users)
            walls.append(res["wall_s"])
            rss.append(res["peak_rss_mb"])
            if r == 0:  # measured outside the timed subprocess
                extra["response_model"] = _response_speed(Path(tmp) / "data", args.ref_pairs)
                extra["rates"] = _rates(Path(tmp) / "data")
        print(f"  {name}: run {r + 1}/{repeats}: {res['wall_s']:.2f} s, {res['peak_rss_mb']:.0f} MB", flush=True)
    med = statistics.median(walls)
    return {"name": name, "n_users": n_users, "n_items": n_items, "n_events": n_events, "n_authors": n_authors,
            "repeats": repeats, "wall_s": walls, "wall_s_median": med, "events_per_s": n_events / med,
            "peak_rss_mb": rss, "peak_rss_mb_max": max(rss), **extra}


def _table(runs: list[dict[str, Any]]) -> str:
    lines = ["| size | users | items | events | runs | wall s (median) | events/s | peak RSS MB | "
             "vectorised vs per-pair response model |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        rm = r["response_model"]
        lines.append(f"| {r['name']} | {r['n_users']:,} | {r['n_items']:,} | {r['n_events']:,} | {r['repeats']} | "
                     f"{r['wall_s_median']:.2f} | {r['events_per_s']:,.0f} | {r['peak_rss_mb_max']:.0f} | "
                     f"{rm['speedup']:,.0f}x ({rm['vectorised_us_per_pair']:.2f} vs "
                     f"{rm['reference_us_per_pair']:.1f} us/pair) |")
    lines += ["", "| size | policy | click | long view | complete | like/cmt/follow/fwd | profile | hate | "
              "long view / click |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        for policy, rates in r["rates"].items():
            lines.append(f"| {r['name']} | {policy} | " + " | ".join(
                f"{100 * rates[k]:.2f}%" for k in ("click", "long_view", "complete_play", "engage_any",
                                                   "profile_enter", "hate", "long_view_given_click")) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="skip the 100k x 50k x 10M size")
    ap.add_argument("--repeats", type=int, default=None, help="runs per size (default: 3, the full size once)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk-users", type=int, default=8192)
    ap.add_argument("--ref-pairs", type=int, default=REF_PAIRS, help="pairs timed through the per-pair reference")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    for k in ("n-users", "n-items", "n-events", "n-authors"):
        ap.add_argument(f"--{k}", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args)
        return
    sizes = [QUICKSTART, QUICK] if args.quick else [QUICKSTART, QUICK, FULL]
    runs = [_bench_size(s, args) for s in sizes]
    import pyarrow

    from onerec.bench.machine import machine_info

    result = {
        "benchmark": "simulator_scale",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/simulator_scale.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(numpy=np.__version__, pyarrow=pyarrow.__version__),
        "notes": "wall time = simulate_to_dir (world build + calibration + logging + Parquet writes), fresh "
                 "subprocess per run; peak RSS = that subprocess's ru_maxrss. The full size runs once by default.",
        "runs": runs,
    }
    table = _table(runs)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    from onerec.io import write_json

    path = RESULTS / ("simulator_scale.quick.json" if args.quick else "simulator_scale.json")
    write_json(path, {**result, "markdown": table})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
