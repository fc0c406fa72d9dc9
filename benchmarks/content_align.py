"""Content-only vs collaboratively aligned item vectors: the generator's Recall/NDCG@10 and the
semantic IDs' codebook utilisation and collisions (issue 6, the Keye-VL / alignment stage).

For each dataset, one ``onerec data`` run is tokenised twice (``content.align=false`` / ``true``),
then each variant is trained and evaluated with the same small quickstart-sized generator::

    python benchmarks/content_align.py --out /tmp/content-bench                  # both datasets
    python benchmarks/content_align.py --out /tmp/cb --datasets simulated --seeds 0 1 2
    python benchmarks/content_align.py --quick --out /tmp/cbq   # tiny simulated world, ~2 min

Datasets: ``simulated`` (the quickstart world) and ``scientific`` (LC-Rec Amazon 2018 Industrial
& Scientific, real item text, from ``--datasets-dir``). Stages whose outputs already exist in
``--out`` are reused (so an interrupted benchmark resumes). Writes
``benchmarks/results/content/content.json``: per dataset and variant the median over seeds of
recall@10 / ndcg@10, and the tokenizer's per-level utilisation and collision rate.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from onerec.bench.machine import machine_info

RESULTS = Path(__file__).resolve().parent / "results" / "content"
REPO = Path(__file__).resolve().parents[1]
COMMON = ["train.threads=1", "eval.baselines=[popular]", "eval.ks=[10,50]"]


def onerec(*args: str) -> None:
    cmd = [sys.executable, "-m", "onerec.cli", *args]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def data_args(name: str, datasets_dir: Path, seed: int, quick: bool = False) -> list[str]:
    if name == "simulated":
        return ["--preset", "tiny" if quick else "quickstart", f"data.sim.seed={seed}"]
    if name == "scientific":
        return ["--preset", "quickstart", "data.source=lcrec",
                f"data.path={datasets_dir / 'amazon2018_scientific_lcrec'}", "data.name=Scientific"]
    raise SystemExit(f"unknown dataset {name}")


def codebook_metrics(run: Path) -> dict:
    """The tokenizer's own figures: per-level utilisation (share of codes used), the share of items
    whose L-level code collides with another item's (before the extra uniqueness level), the number
    of distinct codes and the largest group sharing one code."""
    tok = json.loads((run / "tokenizer" / "metrics.json").read_text())
    return {k: tok[k] for k in ("utilisation", "collision_rate", "distinct_codes", "max_group", "recon_rel")}


def run_variant(base: Path, run: Path, aligned: bool, seed: int, extra: list[str]) -> dict:
    if not (run / "data").exists():
        shutil.copytree(base / "data", run / "data")
        shutil.copy(base / "config.yaml", run / "config.yaml")
    t0 = time.perf_counter()
    if not (run / "tokenizer" / "codes.parquet").exists():
        onerec("tokenize", str(run), f"content.align={str(aligned).lower()}", f"content.alignment.seed={seed}")
    if not (run / "train" / "metrics.json").exists():
        onerec("train", str(run), f"train.seed={seed}", *COMMON, *extra)
    if not (run / "eval" / "metrics.json").exists():
        onerec("eval", str(run), *COMMON, *extra)
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    tok = json.loads((run / "tokenizer" / "metrics.json").read_text())
    return {"seed": seed, "onerec": metrics["models"]["onerec"], "popular": metrics["models"]["popular"],
            **codebook_metrics(run), "align": tok.get("align"), "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="working folder (reused: stages resume)")
    ap.add_argument("--datasets", nargs="+", default=["simulated", "scientific"])
    ap.add_argument("--datasets-dir", type=Path, default=REPO.parent / "shared" / "datasets")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--quick", action="store_true", help="tiny simulated world only -> content.quick.json")
    ap.add_argument("--overrides", nargs="*", default=[], help="extra config overrides for train and eval, "
                    "e.g. generate.beam_size=20 (the same for both variants)")
    ap.add_argument("--note", default="2-core CPU shared with other jobs, no GPU; 1 torch thread")
    args = ap.parse_args()
    if args.quick:
        args.datasets = ["simulated"]
    out_file = RESULTS / ("content.quick.json" if args.quick else "content.json")
    results = json.loads(out_file.read_text()) if out_file.exists() else {}
    for name in args.datasets:
        runs: dict[str, list[dict]] = {"content_only": [], "aligned": []}
        for seed in args.seeds:
            base = args.out / name / f"seed{seed}" / "base"
            if not (base / "data" / "summary.json").exists():
                onerec("data", "--out", str(base), *data_args(name, args.datasets_dir, seed, args.quick))
            for variant in runs:
                r = run_variant(base, args.out / name / f"seed{seed}" / variant, variant == "aligned", seed,
                                args.overrides)
                runs[variant].append(r)
                print(f"{name} seed {seed} {variant}: recall@10 {r['onerec']['recall@10']:.4f} "
                      f"ndcg@10 {r['onerec']['ndcg@10']:.4f} util {r['utilisation']} "
                      f"collisions {r['collision_rate']}", flush=True)
        entry = {}
        for variant, rs in runs.items():
            entry[variant] = {
                "recall@10": statistics.median(r["onerec"]["recall@10"] for r in rs),
                "ndcg@10": statistics.median(r["onerec"]["ndcg@10"] for r in rs),
                "utilisation": rs[0]["utilisation"] if len(rs) == 1 else
                [statistics.median(r["utilisation"][i] for r in rs) for i in range(len(rs[0]["utilisation"]))],
                "collision_rate": statistics.median(r["collision_rate"] for r in rs),
                "distinct_codes": statistics.median(r["distinct_codes"] for r in rs),
                "popular_recall@10": statistics.median(r["popular"]["recall@10"] for r in rs),
                "runs": rs,
            }
        entry["seeds"] = args.seeds
        entry["command"] = "python benchmarks/content_align.py " + " ".join(sys.argv[1:])
        entry["date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        entry["machine"] = machine_info(note=args.note)
        results[name] = entry
        RESULTS.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
