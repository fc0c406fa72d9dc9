"""Tokenizer ablations on Amazon 2014 item content (the ID side of the ablation table, docs/benchmarks/ablations.md).

For one category, builds the item content vectors exactly as ``onerec bench amazon`` does (preset
``amazon``: title + category path + attribute ids, TF-IDF + SVD) and fits the residual k-means
tokenizer under each setting, reporting what the IDs look like: share of items whose L-level ID
collides with another item's, the largest collision group (= the collision level's vocabulary),
first-level utilisation and normalised entropy, and reconstruction error. Recommendation quality of
each setting needs a full train per setting (``onerec bench amazon ... tokenizer.X=Y``).

    python benchmarks/amazon_tokenizer_ablation.py --category beauty
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import torch

from onerec.bench.amazon import bench_config
from onerec.bench.machine import machine_info
from onerec.content import item_vectors
from onerec.io import read_parquet
from onerec.pipeline import stage_data
from onerec.tokenizer import ResidualKMeansTokenizer

RESULTS = Path(__file__).resolve().parent / "results" / "amazon2014"
SETTINGS = [  # (levels, codebook size, balanced, content dim)
    (3, 256, False, 128), (3, 256, True, 128),
    (2, 256, False, 128), (4, 256, False, 128),
    (3, 64, False, 128), (3, 128, False, 128), (3, 512, False, 128),
    (3, 256, False, 64), (3, 256, False, 256),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--category", default="beauty")
    ap.add_argument("--datasets", default="../shared/datasets")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cfg = bench_config(args.category, args.datasets)
        stage_data(run, cfg)
        items = read_parquet(run / "data" / "items.parquet")
        for levels, k, balanced, dim in SETTINGS:
            cfg = bench_config(args.category, args.datasets, overrides=[f"content.dim={dim}"])
            vectors = item_vectors(items, cfg.content, cache_dir=run / "data" / "cache")
            tc = cfg.tokenizer
            tc.levels, tc.codebook_size, tc.balanced = levels, k, balanced
            t0 = time.perf_counter()
            tok = ResidualKMeansTokenizer(tc)
            tok.fit(vectors)
            m = tok.metrics
            rows.append({"levels": levels, "codebook_size": k, "balanced": balanced, "content_dim": dim,
                         "collision_rate": m["collision_rate"], "max_group": m["max_group"],
                         "distinct_codes": m["distinct_codes"], "utilisation_l1": m["utilisation"][0],
                         "entropy_norm_l1": m["entropy_norm"][0], "recon_rel": m["recon_rel"],
                         "seconds": round(time.perf_counter() - t0, 2)})
            print(rows[-1], flush=True)
    out = {"benchmark": f"amazon-{args.category}-tokenizer-ablation",
           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "command": f"python benchmarks/amazon_tokenizer_ablation.py --category {args.category}",
           "machine": machine_info(),
           "n_items": items.num_rows, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"amazon-{args.category}-tokenizer-ablation.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
