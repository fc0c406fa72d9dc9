"""What the collision level costs a trained run's ranking (the valid split, never test).

Items whose first L codes are equal (a collision group) differ only in the last, collision code, a
number with no content meaning. This script beam-searches a trained run's valid users (the run's
own beam width, top 10) and, for the users whose valid item is in their top 10 (hits), reports:
the share of hits whose item is in a collision group; the share with a sibling (an item of the
same group) ranked above it; and NDCG@10 as it would be if each hit had led its group (its rank
minus the siblings above it), an upper bound on what telling siblings apart could gain.

    python benchmarks/collision_ranking.py RUN [--users N]

RUN: a finished run folder (e.g. one seed of ``onerec bench amazon``). Prints one JSON object;
``--out FILE`` also writes it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from onerec.io import write_json
from onerec.pipeline import load_codes, load_recommender, load_splits, run_config


def collision_ranking(top: np.ndarray, targets: np.ndarray, codes: np.ndarray) -> dict:
    """Collision statistics of top-k lists ``top`` [U, k] (item ids, -1 = none) against one target
    item per user ``targets`` [U]; the group of an item is its codes without the last (collision) one."""
    group = [tuple(c) for c in codes[:, :-1].tolist()]
    size = Counter(group)
    ndcg = led = 0.0
    hits = in_group = sibling_above = 0
    ranks = np.zeros(top.shape[1], dtype=np.int64)
    for row, t in zip(top.tolist(), targets.tolist()):
        if t not in row:
            continue
        r = row.index(t)
        above = sum(i >= 0 and group[i] == group[t] for i in row[:r])
        hits += 1
        ranks[r] += 1
        in_group += size[group[t]] > 1
        sibling_above += above > 0
        ndcg += 1.0 / np.log2(r + 2)
        led += 1.0 / np.log2(r - above + 2)
    users = len(targets)
    return {
        "users": users, "k": top.shape[1], "hits": hits, "recall": hits / users, "ndcg": float(ndcg / users),
        "targets_in_collision_group": float(np.mean([size[group[t]] > 1 for t in targets.tolist()])),
        "hits_in_collision_group": in_group / max(hits, 1),
        "hits_with_sibling_above": sibling_above / max(hits, 1),
        "ndcg_if_target_led_its_group": float(led / users),
        "hit_rank_counts": ranks.tolist(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--users", type=int, default=None, help="only the first N valid users (default: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = run_config(args.run)
    codes = load_codes(args.run)
    valid = load_splits(args.run / "data" / "split", n_items=len(codes))["valid"]
    if args.users:
        valid = valid.slice(0, args.users)
    gen = load_recommender(args.run, cfg, beam_size=max(cfg.generate.beam_size, 10), codes=codes)
    top = gen.recommend(valid.drop_columns(["targets"]), 10)
    targets = np.array([t[0] for t in valid.column("targets").to_pylist()])
    result = {"command": "python " + " ".join(sys.argv), "date": dt.date.today().isoformat(), "split": "valid",
              "beam_size": gen.beam_size, **collision_ranking(top, targets, codes)}
    print(json.dumps(result, indent=1))
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
