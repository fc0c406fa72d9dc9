"""How well a run's item vectors place items, read on the valid split without training a generator.

Collaborative alignment (``content.align=true``, ``onerec.content.align``) trains a QFormer so that
items the same users engage with sit close. This script re-trains the alignment of a prepared run
(its data and content cache; the run's own config, plus each setting's overrides) and scores the
vectors two ways:

* item-to-item retrieval on the **valid split** (never test): each valid user's query is the vector
  of their last history item; every other item is ranked by cosine; Recall/NDCG@10 of the valid item;
* the semantic IDs the run's tokenizer settings make of them: the collision rate of the first
  ``tokenizer.levels`` codes and the relative reconstruction error.

    python benchmarks/alignment_retrieval.py RUN --setting content.alignment.steps=800 \\
        --setting content.alignment.steps=2400 --out benchmarks/results/amazon2014/alignment-retrieval-beauty.json

RUN: a run folder after ``onerec data`` (e.g. one seed of ``onerec bench amazon``). Each
``--setting`` is one variant (space-separated overrides); the content-only vectors are always
scored first. Prints one line per variant; ``--out`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from onerec.bench.machine import machine_info
from onerec.data.splits import load_splits
from onerec.eval.metrics import compute_metrics, topk_from_scores
from onerec.io import read_parquet, write_json
from onerec.pipeline import run_config, train_alignment


def valid_queries(run: Path, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(last history item, valid item) of every valid user with a history."""
    rows = load_splits(run / "data" / "split", n_items=n_items)["valid"].select(["history", "targets"]).to_pylist()
    rows = [r for r in rows if r["history"] and r["targets"]]
    return (np.array([r["history"][-1] for r in rows], dtype=np.int64),
            np.array([r["targets"][0] for r in rows], dtype=np.int64))


def retrieval(vectors: np.ndarray, queries: np.ndarray, targets: np.ndarray, k: int = 10,
              chunk: int = 2048) -> dict[str, float]:
    """Recall/NDCG@k of ``targets`` when each query item's nearest items (cosine, the query itself
    excluded) are the list (ranked and scored by the library's own ``onerec.eval.metrics``)."""
    v = torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)), dim=1)
    recs = []
    for s in range(0, len(queries), chunk):
        q = torch.from_numpy(queries[s:s + chunk])
        recs.append(topk_from_scores(v[q] @ v.T, k, exclude=q[:, None].numpy()).numpy())
    return compute_metrics(np.concatenate(recs), [np.array([t]) for t in targets.tolist()], ks=[k])


def id_metrics(vectors: np.ndarray, cfg) -> dict[str, float]:
    """Collision rate (before any collision level) and relative reconstruction error of the
    residual k-means IDs of ``vectors`` under the run's tokenizer settings."""
    from onerec.tokenizer import ResidualKMeansTokenizer

    tok = ResidualKMeansTokenizer(cfg.tokenizer)
    tok.fit(vectors)
    m = tok.metrics
    return {"collision_rate": m["collision_rate"], "max_group": m["max_group"], "recon_rel": m["recon_rel"]}


def score_variant(run: Path, items, overrides: list[str], queries: np.ndarray, targets: np.ndarray,
                  aligned: bool, threads: int) -> dict:
    from onerec.content import item_vectors

    cfg = run_config(run, overrides=[*overrides, f"train.threads={threads}"])
    t0 = time.perf_counter()
    vectors = item_vectors(items, cfg.content, cache_dir=run / "data" / "cache")
    out: dict = {"overrides": overrides, "aligned": aligned}
    if aligned:
        vectors, _, out["align"] = train_alignment(run, cfg, cfg.content, items, vectors)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["valid"] = retrieval(vectors, queries, targets)
    out["ids"] = id_metrics(vectors, cfg)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--setting", action="append", default=[],
                    help="one variant: space-separated config overrides (repeat for more variants)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    items = read_parquet(args.run / "data" / "items.parquet")
    queries, targets = valid_queries(args.run, items.num_rows)
    rows = []
    for overrides, aligned in [([], False)] + [(shlex.split(s), True) for s in args.setting]:
        row = score_variant(args.run, items, overrides, queries, targets, aligned, args.threads)
        rows.append(row)
        label = "content only" if not aligned else " ".join(overrides) or "the run's alignment"
        loss = f", align loss {row['align']['loss_last']:.3f}" if aligned else ""
        print(f"{label}: valid R@10 {row['valid']['recall@10']:.4f} N@10 {row['valid']['ndcg@10']:.4f}; "
              f"collision {row['ids']['collision_rate']:.3f}, recon {row['ids']['recon_rel']:.3f}{loss} "
              f"({row['seconds']} s)", flush=True)
    if args.out:
        write_json(args.out, {
            "benchmark": "alignment_retrieval", "run": str(args.run), "date": dt.date.today().isoformat(),
            "command": shlex.join(["python", *sys.argv]), "machine": machine_info(),
            "threads": args.threads, "valid_users": len(queries), "variants": rows,
        })


if __name__ == "__main__":
    main()
