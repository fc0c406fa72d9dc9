"""What each encoder pathway of the Technical Report's model adds (an ablation), bounded for a CPU.

One dataset is prepared once (data -> content vectors -> semantic IDs, as the pipeline does), then
the same small generator is trained with different ``model.pathways`` / ``model.behaviour_features``
and scored on the test split (Recall/NDCG@10, full ranking, constrained beam search), for each
seed. The simulated world has every feature (authors, tags, durations, watch times, exposures,
user features); Amazon Beauty (``amazon2014``) has only the positive review log and categories, so
there the short-term and lifelong pathways read the positive sequence and the static pathway the
user id.

    python benchmarks/model_pathways.py --dataset sim     [--seeds 3 --epochs 1 --eval-users 3000]
    python benchmarks/model_pathways.py --dataset beauty  (needs ../shared/datasets/amazon2014_s3rec)
    python benchmarks/model_pathways.py --dataset sim --table   (print the stored table: mean ± std over seeds)

Results merge into ``benchmarks/results/model/model.json`` under ``"pathways"`` (after every variant, so a
cut-short run keeps what it measured).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from onerec.bench.machine import machine_info
from onerec.config import load_config
from onerec.data.splits import load_splits
from onerec.eval.harness import evaluate
from onerec.features import TrainExamples
from onerec.generate.generative import GenerativeRecommender
from onerec.io import read_json, write_json
from onerec.model.generator import Generator
from onerec.pipeline import load_codes, make_featurizer, stage_data, stage_tokenize
from onerec.train import train_generator
from onerec.train.checkpoint import model_meta

RESULTS = Path(__file__).resolve().parent / "results" / "model"
ALL_FEATS = ["sid", "item", "author", "tag", "time", "play", "duration", "label"]
VARIANTS: dict[str, list[str]] = {
    # name: overrides on top of the dataset's base config (the quickstart model: positive pathway)
    "positive (v0)": [],
    "positive + item features": [f"model.behaviour_features=[{','.join(ALL_FEATS)}]", "model.sparse_buckets=4096"],
    "+ short-term": ["model.pathways=[short,positive]"],
    "+ static": ["model.pathways=[static,positive]", "model.sparse_buckets=4096"],
    "+ lifelong": ["model.pathways=[positive,lifelong]"],
    "all four + item features": ["model.pathways=[static,short,positive,lifelong]",
                                 f"model.behaviour_features=[{','.join(ALL_FEATS)}]", "model.sparse_buckets=4096",
                                 "model.pathway_mlp=true"],
}
COMMON = ["model.short_len=20", "model.lifelong_max=2000", "model.lifelong_reps=64", "model.qformer_queries=16",
          "train.threads=1"]


def dataset_overrides(name: str, datasets: Path) -> list[str]:
    if name == "sim":
        return []
    if name == "beauty":
        return ["data.source=amazon2014", f"data.path={datasets / 'amazon2014_s3rec'}", "data.name=Beauty",
                f"data.options.text_path={datasets / 'amazon2014_text'}", "data.positive=all",
                "tokenizer.codebook_size=64"]
    raise SystemExit(f"unknown dataset {name!r}: sim | beauty")


def run_variant(run: Path, cfg, seed: int, eval_users: int) -> dict:
    codes = load_codes(run)
    splits = load_splits(run / "data" / "split", n_items=len(codes))
    sizes = read_json(run / "tokenizer" / "metrics.json")["codebook_sizes"]
    cfg.train.seed = seed
    feat = make_featurizer(run, cfg.model, codes)
    torch.manual_seed(seed)
    model = Generator(cfg.model, sizes)
    t0 = time.perf_counter()
    train_generator(model, TrainExamples(splits["train"], feat), cfg.train, run / "train",
                    meta=model_meta(cfg.model, sizes, n_items=len(codes)), valid=None, progress=False)
    train_s = time.perf_counter() - t0
    test = splits["test"]
    if eval_users and test.num_rows > eval_users:
        test = test.take(np.random.default_rng(0).choice(test.num_rows, eval_users, replace=False))
    gen = GenerativeRecommender(model.eval(), codes, beam_size=cfg.generate.beam_size, featurizer=feat)
    t0 = time.perf_counter()
    m = evaluate(gen, test, ks=[10, 50])
    return {"recall@10": m["recall@10"], "ndcg@10": m["ndcg@10"], "recall@50": m["recall@50"],
            "parameters": model.num_parameters(), "train_s": round(train_s, 1),
            "eval_s": round(time.perf_counter() - t0, 1), "eval_users": test.num_rows}


METRICS = ("recall@10", "ndcg@10", "recall@50")


def summarize(runs: list[dict]) -> dict:
    """Median, mean and sample standard deviation over seeds of each metric (std 0 for one seed)."""
    out: dict = {"median": {}, "mean": {}, "std": {}}
    for k in METRICS:
        vals = [r[k] for r in runs]
        out["median"][k], out["mean"][k] = statistics.median(vals), statistics.fmean(vals)
        out["std"][k] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return out


def table(out_path: Path, dataset: str) -> None:
    """Print the markdown table of one dataset's variants: mean +- std over seeds, and the change of
    recall@10 against "positive (v0)" paired by seed (same seed = same initialisation and batch order)."""
    entry = json.loads(out_path.read_text())["pathways"][dataset]
    base = {r.get("seed", i): r for i, r in enumerate(entry["variants"].get("positive (v0)", {}).get("runs", []))}
    print("| variant | seeds | recall@10 | ndcg@10 | recall@50 | recall@10 - v0 (paired) | parameters | train s/run |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in sorted(entry["variants"], key=lambda n: list(VARIANTS).index(n) if n in VARIANTS else len(VARIANTS)):
        runs = entry["variants"][name]["runs"]
        s = summarize(runs)
        cells = [f"{s['mean'][k]:.4f} ± {s['std'][k]:.4f}" for k in METRICS]
        diffs = [r["recall@10"] - base[r.get("seed", i)]["recall@10"] for i, r in enumerate(runs)
                 if r.get("seed", i) in base]
        d = (f"{statistics.fmean(diffs):+.4f} ± {statistics.stdev(diffs):.4f}" if len(diffs) > 1
             else f"{diffs[0]:+.4f}" if diffs else "-")
        print(f"| {name} | {len(runs)} | {' | '.join(cells)} | {d if name != 'positive (v0)' else '-'} | "
              f"{runs[0]['parameters']:,} | {statistics.median(r['train_s'] for r in runs):.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="sim")
    ap.add_argument("--seeds", type=int, default=1, help="number of seeds")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1; runs of "
                    "other seeds already in the results file under the same setup are kept and merged")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--eval-users", type=int, default=1500, help="test users scored (a fixed random subset)")
    ap.add_argument("--preset", default="quickstart", help="base preset (tiny: a smoke test)")
    ap.add_argument("--variants", default="", help="comma-separated subset of variant names (default: all)")
    ap.add_argument("--datasets", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))
    ap.add_argument("--out", default="", help="results file (default benchmarks/results/model/model.json)")
    ap.add_argument("--run-dir", default="", help="keep the prepared dataset here and reuse it when present")
    ap.add_argument("--table", action="store_true", help="only print the results file's table for --dataset")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = dataset_overrides(args.dataset, Path(args.datasets)) + COMMON + [f"train.epochs={args.epochs}"]
    names = [v for v in VARIANTS if not args.variants or v in args.variants.split(",")]
    out_path = (Path(args.out) if args.out
                else RESULTS / ("model.json" if args.preset == "quickstart" else f"model.{args.preset}.json"))
    if args.table:
        return table(out_path, args.dataset)
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run_dir) if args.run_dir else Path(tmp) / "run"
        cfg0 = load_config(preset=args.preset, overrides=base)
        t0 = time.perf_counter()
        if not (run / "tokenizer" / "metrics.json").exists():
            stage_data(run, cfg0, progress=False)
            stage_tokenize(run, cfg0, progress=False)
        print(f"prepared {args.dataset} in {time.perf_counter() - t0:.0f}s", flush=True)
        for name in names:
            per_seed = []
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                cfg = load_config(preset=args.preset, overrides=base + VARIANTS[name])
                per_seed.append({"seed": seed, **run_variant(run, cfg, seed, args.eval_users)})
                print(f"{name} seed {seed}: {per_seed[-1]}", flush=True)
            doc = json.loads(out_path.read_text()) if out_path.exists() else {}
            entry = doc.setdefault("pathways", {}).setdefault(args.dataset, {})
            base_str = f"{args.preset} preset model + " + " ".join(base)
            old = entry.get("variants", {}).get(name, {}).get("runs", [])
            if entry.get("base") == base_str:  # same setup: runs of other seeds (separate invocations) merge
                new_seeds = {r["seed"] for r in per_seed}
                per_seed = sorted([r for r in old if r.get("seed") not in new_seeds and r.get("eval_users")
                                   == per_seed[0]["eval_users"]] + per_seed, key=lambda r: r["seed"])
            else:  # another setup: variants measured under the old one no longer compare, drop them
                entry["variants"] = {}
            results[name] = {"overrides": VARIANTS[name], "command": "python " + shlex.join(sys.argv),
                             **summarize(per_seed), "runs": per_seed}
            entry.setdefault("variants", {})[name] = results[name]
            entry.update({
                "date": dt.date.today().isoformat(),
                "machine": machine_info(), "base": base_str,
                "seeds": max(len(v["runs"]) for v in entry["variants"].values()),
            })
            write_json(out_path, doc)
    table(out_path, args.dataset)


if __name__ == "__main__":
    main()
