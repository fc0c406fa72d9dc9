"""Benchmark: onerec's k-means against faiss and scikit-learn, and the RQ-Kmeans tokenizer fit.

What it measures, all on the SAME synthetic data (a hierarchical mixture of Gaussians: 64 topics
x 16 sub-topics, generated from a fixed seed):

1. one k-means level with the same K and the same number of Lloyd iterations:
   onerec ``kmeans`` vs ``faiss.Kmeans`` (CPU, trained on all points, and with its default
   256-points-per-centroid subsample) vs scikit-learn ``KMeans`` (full Lloyd, n_init=1, tol=0);
   wall time (median of ``--repeats``), ratio ours/baseline, and the k-means objective
   (inertia on all points, computed by one shared function) so speed is not bought with quality;
2. OneRec V1 balanced k-means (Algorithm 1) vs plain k-means, same K and iterations;
3. the full L-level RQ-Kmeans tokenizer fit (plain; ``--rq-balanced`` adds the balanced one)
   and its metrics (utilisation, entropy, reconstruction error, collisions);
4. optionally one level with a large K (``--large-k 8192``): seeding time and time per iteration.

``--chunking`` instead times only the distance blocks of one Lloyd level (issue 43): onerec's cache-sized
blocks (the default on CPU) against its previous blocks of ~2^25 distances (one ``[N, K]`` block up to
N = 131,072 at K = 256) and against ``faiss.Kmeans`` (all points) where faiss is installed, interleaved
in one process (A, B, faiss, A, B, faiss, ...), median of ``--repeats``, the same initial centroids for
both onerec variants, whose assignments must be identical; every method runs exactly ``--iters`` Lloyd
iterations and a final assignment. Writes ``kmeans_chunking.json``.

Usage::

    python benchmarks/tokenizer_kmeans.py --quick   # ~2 min: 100k x 64, K=256, 25 iters, 3 repeats
    python benchmarks/tokenizer_kmeans.py           # ~12 min: 1M x 256, K=256, 10 iters, 1 repeat,
                                                    #   + one K=8192 level (1 iteration)
    python benchmarks/tokenizer_kmeans.py --chunking --n 100000 --dim 64 --threads 1   # ~2 min

Writes ``benchmarks/results/tokenizer/tokenizer_kmeans[.quick].json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onerec.bench.machine import machine_info
from onerec.config import TokenizerConfig
from onerec.tokenizer import (
    ResidualKMeansTokenizer,
    assignment_cost,
    balanced_kmeans,
    inertia,
    kmeans_plus_plus,
)
from onerec.tokenizer.kmeans import (
    _BLOCK_ELEMENTS,
    _update_centroids,
    auto_chunk,
    kmeans,
    nearest_centroid,
    nearest_centroid_reference,
    sq_norms,
)

RESULTS = Path(__file__).parent / "results" / "tokenizer"


# ----------------------------------------------------------------------------------- data
def make_data(n: int, dim: int, seed: int) -> np.ndarray:
    """Hierarchical Gaussian mixture ``[N, D]`` float32: 64 topics x 16 sub-topics + noise.

    Topic centres ~ N(0, I); sub-topic centres = topic + N(0, 0.5^2 I); items = sub-topic +
    N(0, 0.35^2 I). Clear structure at two scales, like content embeddings of a catalogue.
    """
    g = torch.Generator().manual_seed(seed)
    topics = torch.randn(64, dim, generator=g)
    subs = topics.repeat_interleave(16, dim=0) + 0.5 * torch.randn(64 * 16, dim, generator=g)
    labels = torch.randint(0, len(subs), (n,), generator=g)
    x = torch.randn(n, dim, generator=g).mul_(0.35)
    for s in range(0, n, 1 << 17):  # chunked so the gather never needs a second [N, D] buffer
        x[s:s + (1 << 17)] += subs[labels[s:s + (1 << 17)]]
    return x.numpy()


# ---------------------------------------------------------------------------------- timing
def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Wall times of ``repeats`` calls and the last result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def run_ours(x: np.ndarray, k: int, iters: int, seed: int) -> np.ndarray:
    c, _ = kmeans(torch.from_numpy(x), k, iters=iters, seed=seed)
    return c.numpy()


def run_faiss(x: np.ndarray, k: int, iters: int, seed: int, *, all_points: bool) -> np.ndarray:
    import faiss

    # all_points: train on every point (faiss otherwise subsamples 256 points per centroid),
    # and label them with one search, like the final assignment the others return.
    extra = {"max_points_per_centroid": math.ceil(len(x) / k) + 1} if all_points else {}
    km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed, nredo=1, verbose=False, **extra)
    km.train(x)
    km.index.search(x, 1)
    return km.centroids


def run_sklearn(x: np.ndarray, k: int, iters: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, init="k-means++", n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd",
                random_state=seed).fit(x)
    return km.cluster_centers_.astype(np.float32)


def one_level(x: np.ndarray, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Ours vs baselines on one level: same data, K and iterations."""
    methods: list[tuple[str, Callable[[], np.ndarray]]] = [
        ("onerec kmeans (torch)", lambda: run_ours(x, args.k, args.iters, args.seed))]
    if not args.no_faiss:
        methods.append(("faiss.Kmeans, all points", lambda: run_faiss(x, args.k, args.iters, args.seed,
                                                                       all_points=True)))
        methods.append(("faiss.Kmeans, default 256/centroid sample",
                        lambda: run_faiss(x, args.k, args.iters, args.seed, all_points=False)))
    if not args.no_sklearn:
        methods.append(("sklearn KMeans (lloyd, full)", lambda: run_sklearn(x, args.k, args.iters, args.seed)))
    rows = []
    for name, fn in methods:
        times, centroids = timed(fn, args.repeats)
        rows.append({"method": name, "k": args.k, "iters": args.iters, "times_s": times,
                     "median_s": statistics.median(times), "inertia": inertia(x, centroids)})
        print(f"  {name}: {statistics.median(times):.2f} s, inertia {rows[-1]['inertia']:.6g}", flush=True)
    ours = rows[0]
    for row in rows:
        row["ours_over_this_time"] = ours["median_s"] / row["median_s"]
        row["inertia_over_ours"] = row["inertia"] / ours["inertia"]
    return rows


def balanced_vs_plain(x: np.ndarray, args: argparse.Namespace, plain: dict[str, Any]) -> dict[str, Any]:
    times, (c, a) = timed(lambda: balanced_kmeans(torch.from_numpy(x), args.k, iters=args.iters, seed=args.seed),
                          args.balanced_repeats)
    sizes = torch.bincount(a, minlength=args.k)
    out = {"k": args.k, "iters": args.iters, "times_s": times, "median_s": statistics.median(times),
           "cost": assignment_cost(x, c, a), "cluster_size_min": int(sizes.min()), "cluster_size_max": int(sizes.max()),
           "plain_median_s": plain["median_s"], "plain_inertia": plain["inertia"]}
    out["balanced_over_plain_time"] = out["median_s"] / plain["median_s"]
    out["cost_over_plain_inertia"] = out["cost"] / plain["inertia"]
    print(f"  balanced: {out['median_s']:.2f} s, cost {out['cost']:.6g}", flush=True)
    return out


def rq_fit(x: np.ndarray, args: argparse.Namespace, balanced: bool) -> dict[str, Any]:
    cfg = TokenizerConfig(levels=args.levels, codebook_size=args.k, iters=args.iters, balanced=balanced,
                          unique_level=True, normalize=True, seed=args.seed)
    tok = ResidualKMeansTokenizer(cfg)
    t0 = time.perf_counter()
    tok.fit(x)
    took = time.perf_counter() - t0
    print(f"  RQ fit (balanced={balanced}): {took:.1f} s, recon_rel {tok.metrics['recon_rel']:.4f}", flush=True)
    return {"balanced": balanced, "levels": args.levels, "k": args.k, "iters": args.iters, "time_s": took,
            "codebook_sizes": tok.codebook_sizes, "metrics": tok.metrics}


def large_k(x: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """One level with a large K: seeding and Lloyd timed apart (Lloyd = iters + final assignment)."""
    xt = torch.from_numpy(x)
    t0 = time.perf_counter()
    init = kmeans_plus_plus(xt, args.large_k, seed=args.seed)
    t1 = time.perf_counter()
    c, a = kmeans(xt, args.large_k, iters=args.large_k_iters, seed=args.seed, init=init)
    t2 = time.perf_counter()
    used = int((torch.bincount(a, minlength=args.large_k) > 0).sum())
    out = {"k": args.large_k, "iters": args.large_k_iters, "init_s": t1 - t0, "lloyd_s": t2 - t1,
           "per_assignment_pass_s": (t2 - t1) / (args.large_k_iters + 1), "inertia": inertia(x, c),
           "utilisation": used / args.large_k}
    print(f"  K={args.large_k}: seeding {out['init_s']:.1f} s, {out['per_assignment_pass_s']:.1f} s per pass",
          flush=True)
    return out


def lloyd_fixed(x: torch.Tensor, init: torch.Tensor, iters: int,
                chunk: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly ``iters`` Lloyd iterations of onerec's k-means from ``init`` (``kmeans`` itself stops once the
    assignment repeats; faiss does not), then the final assignment, as ``run_faiss`` does."""
    c, x_sq = init.clone(), sq_norms(x)
    for _ in range(iters):
        a, d = nearest_centroid(x, c, chunk=chunk, x_sq=x_sq)
        c = _update_centroids(x, a, d, c)
    return c, nearest_centroid(x, c, chunk=chunk, x_sq=x_sq)[0]


def chunking(x: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Cache-sized distance blocks against the previous ~2^25-element blocks and faiss, interleaved (see the
    module docstring): one assignment pass, and one Lloyd level of ``iters`` iterations from the same start."""
    xt = torch.from_numpy(x)
    n, k = xt.shape[0], args.k
    new_rows, old_rows = auto_chunk(n, k, "cpu"), max(1, min(n, _BLOCK_ELEMENTS // k))
    init = kmeans_plus_plus(xt, k, seed=args.seed)
    a_new, _ = nearest_centroid(xt, init)
    a_ref, _ = nearest_centroid_reference(xt, init) if old_rows >= n else nearest_centroid(xt, init, chunk=old_rows)
    lloyd_new = lloyd_fixed(xt, init, args.iters, None)
    lloyd_old = lloyd_fixed(xt, init, args.iters, old_rows)
    try:
        import faiss  # noqa: F401

        has_faiss = True
    except ImportError:
        has_faiss = False
    timings: dict[str, Callable[[], Any]] = {
        "assign_chunked": lambda: nearest_centroid(xt, init),
        "assign_previous": lambda: nearest_centroid(xt, init, chunk=old_rows),
        "lloyd_chunked": lambda: lloyd_fixed(xt, init, args.iters, None),
        "lloyd_previous": lambda: lloyd_fixed(xt, init, args.iters, old_rows)}
    if has_faiss:
        timings["lloyd_faiss_all_points"] = lambda: run_faiss(x, k, args.iters, args.seed, all_points=True)
    times: dict[str, list[float]] = {name: [] for name in timings}
    for fn in timings.values():
        fn()  # warm-up
    for _ in range(args.repeats):  # interleaved: every variant once per round
        for name, fn in timings.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    out: dict[str, Any] = {
        "n": n, "dim": x.shape[1], "k": k, "iters": args.iters, "repeats": args.repeats,
        "rows_per_block_chunked": new_rows, "rows_per_block_previous": old_rows,
        "identical_assignments_one_pass": bool(torch.equal(a_new, a_ref)),
        "identical_lloyd_result": bool(torch.equal(lloyd_new[1], lloyd_old[1])
                                       and torch.equal(lloyd_new[0], lloyd_old[0])),
        "times_s": times, "median_s": med,
        "assign_speedup": med["assign_previous"] / med["assign_chunked"],
        "lloyd_speedup": med["lloyd_previous"] / med["lloyd_chunked"],
        "inertia_chunked": inertia(x, lloyd_new[0]), "faiss": None if has_faiss else "not installed"}
    if has_faiss:
        out["faiss"] = __import__("faiss").__version__
        out["faiss_over_chunked_time"] = med["lloyd_faiss_all_points"] / med["lloyd_chunked"]
    print(json.dumps({key: v for key, v in out.items() if key != "times_s"}, indent=1), flush=True)
    return out


def chunking_main(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
        versions = {"faiss": faiss.__version__}
    except ImportError:
        versions = {"faiss": None}
    cmd = " ".join(["python", "benchmarks/tokenizer_kmeans.py", *sys.argv[1:]])
    res: dict[str, Any] = {"benchmark": "tokenizer_kmeans --chunking", "command": cmd,
                           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                           "machine": machine_info(note="shared machine (up to 3 jobs)", numpy=np.__version__,
                                                   **versions)}
    x = make_data(args.n, args.dim, args.seed)
    res["result"] = chunking(x, args)
    res["machine"]["loadavg_1m_end"] = machine_info()["loadavg_1m"]
    out = args.out if args.out_given else RESULTS / "kmeans_chunking.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")
    return res


# --------------------------------------------------------------------------------- report
def markdown(res: dict[str, Any]) -> str:
    d = res["data"]
    lines = [f"### k-means, one level: N={d['n']:,} x D={d['dim']}, K={res['settings']['k']}, "
             f"{res['settings']['iters']} iterations, median of {res['settings']['repeats']}",
             "", "| method | time (s) | ours / this (time) | inertia | inertia / ours |", "|---|---:|---:|---:|---:|"]
    for r in res["one_level"]:
        lines.append(f"| {r['method']} | {r['median_s']:.2f} | {r['ours_over_this_time']:.2f} | "
                     f"{r['inertia']:.5g} | {r['inertia_over_ours']:.4f} |")
    b = res["balanced"]
    lines += ["", "| balanced (Algorithm 1) vs plain | time (s) | objective | sizes min..max |", "|---|---:|---:|---|",
              f"| plain kmeans | {b['plain_median_s']:.2f} | {b['plain_inertia']:.5g} | - |",
              f"| balanced_kmeans | {b['median_s']:.2f} | {b['cost']:.5g} | "
              f"{b['cluster_size_min']}..{b['cluster_size_max']} |"]
    lines += ["", "| RQ-Kmeans fit | time (s) | recon_rel by level | utilisation | collision rate | "
              "distinct codes | extra level |", "|---|---:|---|---|---:|---:|---:|"]
    for r in res["rq"]:
        m = r["metrics"]
        rel = " / ".join(f"{v:.4f}" for v in m["rel_error_by_level"])
        util = " / ".join(f"{v:.3f}" for v in m["utilisation"])
        lines.append(f"| {r['levels']} x {r['k']}{' balanced' if r['balanced'] else ''}, {r['iters']} iters | "
                     f"{r['time_s']:.1f} | {rel} | {util} | {m['collision_rate']:.4f} | {m['distinct_codes']:,} | "
                     f"{m['extra_level_size']} |")
    if res.get("large_k"):
        g = res["large_k"]
        lines += ["", f"Large K = {g['k']} (one level, {g['iters']} iterations): seeding {g['init_s']:.1f} s, "
                      f"{g['per_assignment_pass_s']:.1f} s per assignment+update pass, utilisation "
                      f"{g['utilisation']:.3f}, inertia {g['inertia']:.5g}."]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import faiss
    import sklearn

    return machine_info(faiss=faiss.__version__, sklearn=sklearn.__version__, numpy=np.__version__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="100k x 64, 3 repeats (about a minute or two)")
    p.add_argument("--n", type=int, help="items (default 1M, quick 100k)")
    p.add_argument("--dim", type=int, help="dimension (default 256, quick 64)")
    p.add_argument("--k", type=int, default=256, help="codebook size K of the compared level")
    p.add_argument("--iters", type=int, help="Lloyd iterations for every method (default 10, quick 25)")
    p.add_argument("--repeats", type=int, help="timed repeats per method (default 1, quick 3)")
    p.add_argument("--balanced-repeats", type=int, help="repeats of balanced k-means (default as --repeats)")
    p.add_argument("--levels", type=int, default=3, help="RQ levels L")
    p.add_argument("--rq-balanced", action="store_true", help="also fit the balanced RQ tokenizer")
    p.add_argument("--large-k", type=int, help="also time one level with this K (default 8192; quick: off)")
    p.add_argument("--large-k-iters", type=int, default=1, help="Lloyd iterations of the large-K level")
    p.add_argument("--no-faiss", action="store_true")
    p.add_argument("--no-sklearn", action="store_true")
    p.add_argument("--threads", type=int, default=2, help="torch / faiss threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunking", action="store_true",
                   help="only time cache-sized distance blocks against the previous ones and faiss (interleaved)")
    p.add_argument("--out", type=Path,
                   help="JSON path (default benchmarks/results/tokenizer/tokenizer_kmeans[.quick].json)")
    a = p.parse_args(argv)
    q = a.quick
    a.n = a.n or (100_000 if q else 1_000_000)
    a.dim = a.dim or (64 if q else 256)
    a.iters = a.iters or (25 if q else 10)
    a.repeats = a.repeats or (3 if q else 1)
    a.balanced_repeats = a.balanced_repeats or a.repeats
    a.large_k = a.large_k if a.large_k is not None else (0 if q else 8192)
    a.out_given = a.out is not None
    a.out = a.out or RESULTS / f"tokenizer_kmeans{'.quick' if q else ''}.json"
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.chunking:
        return chunking_main(args)
    torch.set_num_threads(args.threads)
    if not args.no_faiss:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    res: dict[str, Any] = {"benchmark": "tokenizer_kmeans", "date": dt.datetime.now(dt.timezone.utc).isoformat(),
                           "command": " ".join(["python", *sys.argv]), "machine": machine()}
    t0 = time.perf_counter()
    x = make_data(args.n, args.dim, args.seed)
    res["data"] = {"n": args.n, "dim": args.dim, "kind": "64 topics x 16 sub-topics Gaussian mixture",
                   "seed": args.seed, "generate_s": time.perf_counter() - t0}
    res["settings"] = {"k": args.k, "iters": args.iters, "repeats": args.repeats, "levels": args.levels,
                       "threads": args.threads}
    print(f"data {x.shape} in {res['data']['generate_s']:.1f} s", flush=True)
    res["one_level"] = one_level(x, args)
    res["balanced"] = balanced_vs_plain(x, args, res["one_level"][0])
    res["rq"] = [rq_fit(x, args, balanced=False)] + ([rq_fit(x, args, balanced=True)] if args.rq_balanced else [])
    res["large_k"] = large_k(x, args) if args.large_k else None
    res["machine"]["loadavg_1m_end"] = machine_info()["loadavg_1m"]
    res["total_s"] = time.perf_counter() - t0
    res["markdown"] = markdown(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(res["markdown"])
    print(f"\nwrote {args.out} ({res['total_s']:.0f} s total)")
    return res


if __name__ == "__main__":
    main()
