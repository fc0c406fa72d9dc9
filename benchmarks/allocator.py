"""glibc's allocator policy: the ``onerec`` command's :func:`onerec.threads.keep_freed_memory` against glibc's defaults.

The policy is process-wide and set once, so each measurement runs in its own process (``ONEREC_MALLOC=system`` for
glibc's defaults, ``keep`` for the policy the ``onerec`` command sets at start), the two taking turns over
``--rounds`` rounds (which goes first alternates). A process builds its case, warms it up twice, times ``--reps``
calls and reports their median and its peak resident memory (``VmHWM``). Per case: the median over rounds of each
policy's time, the median of the per-round ratios (system / keep: above 1 means the policy is faster) and both
peaks.

Cases (one torch thread; the model and catalogue of ``benchmarks/generation.py``: d_model 128, 4 + 4 layers,
50,000 items on 3 x 256 codes, histories of 50):

* ``search_b1_beam128`` / ``search_b64_beam128``: ``GenerativeRecommender.generate``, top 10 (encoder included);
* ``search_b64_beam128_thread``: the same search on a worker thread, as ``onerec serve``'s batcher runs it;
* ``pass512_b4``: the ``onerec-0.015b`` preset at beam 512, all 512 returned, 1,000,000 items, 4 requests
  (``benchmarks/pass512.py``'s setting);
* with ``--run RUN`` (a trained or training run directory, e.g. one seed of ``onerec bench amazon``):
  ``train_step`` (forward, backward, AdamW on the run's train split, its batch size) and ``valid_per_1000`` (the
  run's constrained beam search, its beam and batch size, over 2,000 valid users, seconds per 1,000 users): the two
  parts of a training epoch.

    python benchmarks/allocator.py [--rounds 5] [--run runs/beauty-lazy4/seed0]

Writes ``benchmarks/results/generation/allocator.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generation import HISTORY, RESULTS, catalogue, histories
from onerec.bench.machine import machine_info
from onerec.config import ModelConfig, load_config
from onerec.generate.generative import GenerativeRecommender
from onerec.io import write_json
from onerec.model import build_generator
from onerec.model.generator import Generator
from onerec.threads import keep_freed_memory
from pass512 import peak_rss_mib

SIZES = [256, 256, 256]
CASES = ["search_b1_beam128", "search_b64_beam128", "search_b64_beam128_thread", "pass512_b4"]
RUN_CASES = ["train_step", "valid_per_1000"]


def _search(users: int, beam: int, top_k: int, items: int, preset: str | None):
    """A callable running one constrained search of ``users`` synthetic requests."""
    if preset is None:
        model = Generator(ModelConfig(d_model=128, n_heads=4, enc_layers=4, dec_layers=4, ffn_mult=3.0, dropout=0.0,
                                      max_history=HISTORY), SIZES).eval()
    else:
        cfg = load_config(preset).model
        cfg.pathways, cfg.max_history = ["positive"], HISTORY
        cfg.behaviour_features = ModelConfig().behaviour_features
        model = build_generator(cfg, SIZES).eval()
    codes = catalogue(SIZES, items, seed=0)
    rec = GenerativeRecommender(model, codes, beam_size=beam)
    batch, _ = histories(codes, users, seed=users)

    def call() -> None:
        with torch.no_grad():
            rec.generate(batch, top_k, beam_size=beam)

    return call


def _run_case(case: str, run: Path | None):
    """A callable for ``case`` and the factor that turns its time into the reported unit."""
    if case == "search_b1_beam128":
        return _search(1, 128, 10, 50_000, None), 1.0
    if case == "search_b64_beam128":
        return _search(64, 128, 10, 50_000, None), 1.0
    if case == "search_b64_beam128_thread":  # onerec.serve.batching runs searches on one worker thread
        pool, search = ThreadPoolExecutor(max_workers=1), _search(64, 128, 10, 50_000, None)
        return (lambda: pool.submit(search).result()), 1.0
    if case == "pass512_b4":
        return _search(4, 512, 512, 1_000_000, "onerec-0.015b"), 1.0
    from model_throughput import _run_data

    cfg, codes, sizes, train, every_valid, feat = _run_data(run, 1 << 62)
    model = build_generator(cfg.model, sizes)
    if case == "train_step":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
        rng = np.random.default_rng(0)
        rows = train.rows_per_batch(cfg.train.batch_size)

        def step() -> None:
            loss = model(train.batch(rng.choice(len(train), rows, replace=False)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            float(loss.detach())

        return step, 1.0
    model.eval()
    users = every_valid.slice(0, 2000).drop_columns(["targets"])
    rec = GenerativeRecommender(model, codes, beam_size=cfg.generate.beam_size, batch_size=cfg.generate.batch_size,
                                featurizer=feat)
    return (lambda: rec.recommend(users, k=10)), 1000 / users.num_rows


def worker(case: str, run: Path | None, reps: int) -> dict:
    """One process's measurement (its allocator policy from ``ONEREC_MALLOC``, set by the parent)."""
    kept = keep_freed_memory(one_arena=case.endswith("_thread"))  # as onerec serve, whose searches run on a thread
    torch.set_num_threads(1)
    torch.manual_seed(0)
    call, scale = _run_case(case, run)
    for _ in range(2):
        call()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * scale)
    return {"kept": kept, "median_s": statistics.median(times), "times_s": times, "peak_rss_mib": peak_rss_mib()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5, help="timed calls per process")
    ap.add_argument("--cases", nargs="*", default=None, help=f"default: {' '.join(CASES)} (+ {' '.join(RUN_CASES)} "
                                                              "with --run)")
    ap.add_argument("--run", type=Path, help="a run directory for the train_step and valid_per_1000 cases")
    ap.add_argument("--out", type=Path, default=RESULTS / "allocator.json")
    ap.add_argument("--note", default="torch.set_num_threads(1)", help="stored with the machine (e.g. its load)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one case in this process
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.run, args.reps)))
        return
    cases = args.cases or CASES + (RUN_CASES if args.run else [])
    if any(c in RUN_CASES for c in cases) and args.run is None:
        ap.error(f"the cases {RUN_CASES} need --run RUN")
    policies = ["system", "keep"]
    got: dict[str, dict[str, list[dict]]] = {c: {p: [] for p in policies} for c in cases}
    for r in range(args.rounds):
        for case in cases:
            for policy in (policies if r % 2 == 0 else policies[::-1]):
                cmd = [sys.executable, __file__, "--worker", case, "--reps", str(args.reps)]
                cmd += ["--run", str(args.run)] if args.run else []
                done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True,
                                      env={**os.environ, "ONEREC_MALLOC": policy})
                one = json.loads(done.stdout.strip().splitlines()[-1])
                if one["kept"] != (policy == "keep"):
                    raise RuntimeError(f"{case}: the {policy} process reports kept={one['kept']}")
                got[case][policy].append(one)
                print(f"round {r} {case:>20} {policy:>6}: {one['median_s'] * 1e3:9.1f} ms, peak "
                      f"{one['peak_rss_mib']:.0f} MiB", file=sys.stderr, flush=True)
    rows = {}
    for case in cases:
        sys_, keep = got[case]["system"], got[case]["keep"]
        rows[case] = {
            "system_s": statistics.median(x["median_s"] for x in sys_),
            "keep_s": statistics.median(x["median_s"] for x in keep),
            "speedup": statistics.median(a["median_s"] / b["median_s"] for a, b in zip(sys_, keep)),
            "speedup_per_round": [a["median_s"] / b["median_s"] for a, b in zip(sys_, keep)],
            "system_peak_rss_mib": statistics.median(x["peak_rss_mib"] for x in sys_),
            "keep_peak_rss_mib": statistics.median(x["peak_rss_mib"] for x in keep),
        }
        print(f"{case:>20}: system {rows[case]['system_s'] * 1e3:.1f} ms, keep {rows[case]['keep_s'] * 1e3:.1f} ms, "
              f"x{rows[case]['speedup']:.2f}; peak {rows[case]['system_peak_rss_mib']:.0f} -> "
              f"{rows[case]['keep_peak_rss_mib']:.0f} MiB", flush=True)
    result = {"benchmark": "allocator", "command": " ".join(["python", "benchmarks/allocator.py", *sys.argv[1:]]),
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info(note=args.note), "torch": torch.__version__, "rounds": args.rounds,
              "reps": args.reps, "run": str(args.run) if args.run else None,
              "units": {c: "seconds per 1,000 users" if c == "valid_per_1000" else "seconds per call" for c in cases},
              "cases": rows}
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
