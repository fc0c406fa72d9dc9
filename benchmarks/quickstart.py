"""Quality and wall time of ``onerec quickstart`` over several seeds (the README's table).

Each repeat runs the whole quickstart (simulate -> tokenize -> train -> generate -> evaluate) in a
fresh subprocess with its own seed for the world, the generator and SASRec, and reports per-model
Recall/NDCG@K as the median over seeds, plus the median wall time.

    python benchmarks/quickstart.py --quick    # the tiny preset, 3 seeds (~1 min)
    python benchmarks/quickstart.py            # the quickstart preset, 3 seeds

Prints a Markdown table and writes ``benchmarks/results/quickstart/quickstart[.quick].json``.
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

from onerec.bench.machine import machine_info

RESULTS = Path(__file__).resolve().parent / "results" / "quickstart"
KEYS = ("recall@10", "ndcg@10", "recall@50", "ndcg@50")


def run_once(preset: str, seed: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "onerec.cli", "quickstart", "--preset", preset, "--out", str(out),
           f"data.sim.seed={seed}", f"train.seed={seed}", f"eval.sasrec.seed={seed}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    metrics = json.loads((out / "metrics.json").read_text())
    return {"seed": seed, "wall_s": wall, "models": metrics["models"], "stage_seconds": metrics["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny preset (about a minute)")
    ap.add_argument("--seeds", type=int, default=3, help="repeats, one seed each")
    args = ap.parse_args()
    preset = "tiny" if args.quick else "quickstart"
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            runs.append(run_once(preset, seed, Path(tmp) / f"seed{seed}"))
            print(f"seed {seed}: {runs[-1]['wall_s']:.0f}s "
                  f"onerec recall@10 {runs[-1]['models']['onerec']['recall@10']:.4f}", flush=True)
    models = list(runs[0]["models"])
    median = {m: {k: statistics.median(r["models"][m][k] for r in runs) for k in KEYS if k in runs[0]["models"][m]}
              for m in models}
    wall = statistics.median(r["wall_s"] for r in runs)
    cols = [k for k in KEYS if k in median[models[0]]]
    print(f"\n`python benchmarks/quickstart.py{' --quick' if args.quick else ''}`, median of {len(runs)} seeds, "
          f"wall {wall:.0f} s per quickstart\n")
    print("| model | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols))
    for m in models:
        print(f"| {m} | " + " | ".join(f"{median[m][k]:.4f}" for k in cols) + " |")
    for m in models[1:]:
        print(f"onerec / {m} recall@10: {median['onerec']['recall@10'] / max(median[m]['recall@10'], 1e-12):.2f}x")
    result = {
        "benchmark": "quickstart", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/quickstart.py" + (" --quick" if args.quick else ""), "preset": preset,
        "machine": machine_info(),
        "median": median, "wall_s_median": wall, "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"quickstart{'.quick' if args.quick else ''}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
