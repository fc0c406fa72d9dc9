"""How much of a trained onerec run's valid split is plain item succession, and how much of it the model gets.

    python benchmarks/succession_probe.py RUN [RUN ...] [--out FILE.json]
    python benchmarks/succession_probe.py --quick RUN     # the first 2,000 valid users (~10 s)

RUN is a run directory with a trained generator (e.g. a seed folder of `onerec bench amazon`). On the
valid split only (the selection split, so test is never read), it reports:

* the share of valid users whose target is the top successor of their last history item in the train
  split (the pair counts of :class:`onerec.features.succession.Succession`), and onerec's Recall@10 and
  rank-1 rate on them and on everyone else;
* onerec's Recall@10 / NDCG@10 by history length.

This is the probe behind docs/BENCHMARKS.md, "A baseline with no training: item-to-item transitions".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from onerec.config import load_config
from onerec.data.splits import list_column, load_splits
from onerec.eval.metrics import per_user_metrics
from onerec.features.succession import Succession
from onerec.pipeline import load_codes, load_recommender

HISTORY_BINS = ((1, 5), (5, 10), (10, 1 << 30))


def probe(run: Path, users: int | None = None) -> dict:
    cfg = load_config(file=run / "config.yaml")
    codes = load_codes(run)
    splits = load_splits(run / "data" / "split", n_items=len(codes))
    valid = splits["valid"] if users is None else splits["valid"].slice(0, users)
    rec = load_recommender(run, cfg, "cpu", codes=codes)
    recs = np.concatenate([rec.recommend(valid.slice(s, 512).drop_columns(["targets"]), 10)
                           for s in range(0, valid.num_rows, 512)])
    targets = list_column(valid, "targets")
    first = np.array([t[0] for t in targets])
    per = per_user_metrics(recs, targets, (10,))
    hist = list_column(valid, "history")
    top, _ = Succession.from_train(splits["train"], len(codes)).candidates(hist, 1, window=1, decay=1.0)
    is_top = top[:, 0] == first
    rank1 = recs[:, 0] == first
    lengths = np.array([len(h) for h in hist])
    out = {"run": str(run), "valid_users": int(valid.num_rows),
           "recall@10": float(per["recall@10"].mean()), "ndcg@10": float(per["ndcg@10"].mean()),
           "target_is_top_successor_of_last_item": float(is_top.mean()),
           "on_those": {"recall@10": float(per["recall@10"][is_top].mean()), "rank1": float(rank1[is_top].mean())},
           "elsewhere": {"recall@10": float(per["recall@10"][~is_top].mean()), "rank1": float(rank1[~is_top].mean())},
           "rank1_is_top_successor_of_last_item": float((recs[:, 0] == top[:, 0]).mean()),
           "by_history_length": {}}
    for lo, hi in HISTORY_BINS:
        m = (lengths >= lo) & (lengths < hi)
        if m.any():
            out["by_history_length"][f"[{lo},{hi if hi < 1 << 30 else 'inf'})"] = {
                "share": float(m.mean()), "recall@10": float(per["recall@10"][m].mean()),
                "ndcg@10": float(per["ndcg@10"][m].mean())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--quick", action="store_true", help="the first 2,000 valid users only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = [probe(r, 2000 if args.quick else None) for r in args.runs]
    for r in results:
        print(json.dumps(r, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
