"""How much of a trained onerec run's valid split is plain item succession, and how much of it the model gets.

    python benchmarks/succession_probe.py RUN [RUN ...] [--out FILE.json]
    python benchmarks/succession_probe.py --quick RUN     # the first 2,000 valid users (~10 s)
    python benchmarks/succession_probe.py --speed RUN [--out FILE.json]   # the prior's cost at decoding

RUN is a run directory with a trained generator (e.g. a seed folder of `onerec bench amazon`). On the
valid split only (the selection split, so test is never read), it reports:

* the share of valid users whose target is the top successor of their last history item in the train
  split (the pair counts of :class:`onerec.features.succession.Succession`), and onerec's Recall@10 and
  rank-1 rate on them and on everyone else;
* onerec's Recall@10 / NDCG@10 by history length;
* with ``--fusion``: valid NDCG/Recall when the generator's beam (20 items) and the transitions rule's top 20 are
  pooled and ranked by log p_onerec(item) + lambda * log(1 + transition score), for each lambda of
  :data:`LAMBDAS` (lambda 0 is onerec's own ranking of the pool), beside the rule alone (window 10, decay 0.1).

* with ``--fusion --rules 10:0.1,10:0.5,...``: also the valid NDCG@10 of every succession rule (window:decay) and
  lambda, the rules that ``onerec bench amazon --models onerec_prior`` chooses among;
* with ``--speed``: the cost of the prior at decoding on the first 2,048 valid users (batches of 256, one thread):
  the beam search alone, the fused ranking as :meth:`GenerativeRecommender.pool` computes it (the beam's own
  log-probabilities, a cached teacher-forced pass for the succession candidates outside the beam) and its plain
  reference (``rescore_beam=True``: every pool item through the full decoder, as the prior was first computed),
  taking turns, median of 3 rounds, and whether the two give the same top 10.

This is the probe behind docs/benchmarks/amazon2014.md, "A baseline with no training: item-to-item transitions".
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from onerec.bench.machine import machine_info
from onerec.config import load_config
from onerec.data.splits import list_column, load_splits
from onerec.eval.metrics import per_user_metrics
from onerec.features.succession import Succession
from onerec.pipeline import load_codes, load_recommender

HISTORY_BINS = ((1, 5), (5, 10), (10, 1 << 30))
LAMBDAS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
WINDOW, DECAY, POOL = 10, 0.1, 20


def _load(run: Path, users: int | None, *, prior: bool = False):
    """(codes, splits, the valid split or its first ``users`` rows, the run's trained recommender); ``prior``: the
    recommender carries the probe's succession prior (the train split's counts, window 10, decay 0.1, beam 20 +
    the rule's top 20), its weight left to the caller."""
    cfg = load_config(file=run / "config.yaml")
    codes = load_codes(run)
    splits = load_splits(run / "data" / "split", n_items=len(codes))
    valid = splits["valid"] if users is None else splits["valid"].slice(0, users)
    rec = load_recommender(run, cfg, "cpu", codes=codes, splits=splits, prior=prior)
    if prior:
        rec.prior_pool, rec.prior_window, rec.prior_decay, rec.beam_size = POOL, WINDOW, DECAY, POOL
    return codes, splits, valid, rec


def fusion(run: Path, users: int | None = None, rules: list[tuple[int, float]] | None = None) -> dict:
    """Valid metrics of the pooled ranking for every lambda (see the module doc); with ``rules``, also the valid
    NDCG@10 of every (window, decay, lambda > 0), one beam search for all."""
    from onerec.baselines.transitions import ItemTransitions

    # the pool of generate.succession_prior (onerec.generate.generative), scored once for every lambda
    codes, splits, valid, rec = _load(run, users, prior=True)
    targets = list_column(valid, "targets")
    extra = [r for r in rules or [] if r != (WINDOW, DECAY)]
    every = rec.rank_by_priors(valid, list(LAMBDAS), [(WINDOW, DECAY), *extra])
    ranked = {w: top for (win, dec, w), top in every.items() if (win, dec) == (WINDOW, DECAY)}
    out = {"run": str(run), "valid_users": int(valid.num_rows), "pool": f"beam {POOL} + rule top {POOL}",
           "lambda": {}}
    if rules:
        out["ndcg@10_by_rule"] = {f"window={win},decay={dec}": {str(w): float(per_user_metrics(
            every[win, dec, w], targets, (10,))["ndcg@10"].mean()) for w in LAMBDAS if w > 0} for win, dec in rules}
    for lam in LAMBDAS:
        per = per_user_metrics(ranked[lam], targets, (5, 10))
        out["lambda"][str(lam)] = {m: float(per[m].mean()) for m in ("recall@5", "ndcg@5", "recall@10", "ndcg@10")}
    rule = ItemTransitions(window=WINDOW, decay=DECAY)
    rule.fit(splits["train"], n_items=len(codes))
    per = per_user_metrics(rule.recommend(valid, 10), targets, (5, 10))
    out["rule_alone"] = {m: float(per[m].mean()) for m in ("recall@5", "ndcg@5", "recall@10", "ndcg@10")}
    return out


def speed(run: Path, users: int = 2048, rounds: int = 3, weight: float = 8.0) -> dict:
    """Seconds to rank ``users`` valid users: beam alone, the prior's fast pool, its plain reference."""
    from onerec.features.history import EvalExamples
    from onerec.generate.generative import top_fused

    _, _, valid, rec = _load(run, users, prior=True)
    ex = EvalExamples(valid, rec.featurizer)
    batches = [ex.batch(np.arange(s, min(len(ex), s + rec.batch_size))) for s in range(0, len(ex), rec.batch_size)]
    times: dict[str, list[float]] = {"beam": [], "prior": [], "prior_reference": []}
    tops = {}
    for _ in range(rounds):
        t0 = time.perf_counter()
        for b in batches:
            rec.generate(b, POOL)
        times["beam"].append(time.perf_counter() - t0)
        for name, ref in (("prior", False), ("prior_reference", True)):
            t0, out = time.perf_counter(), []
            for b in batches:
                pool, log_p, prior = rec.pool(b, 10, rescore_beam=ref)
                out.append(top_fused(pool, log_p + weight * prior, 10)[0])
            times[name].append(time.perf_counter() - t0)
            tops[name] = np.concatenate(out)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"command": "python " + " ".join(sys.argv), "date": dt.date.today().isoformat(),
            "machine": machine_info(note="one torch thread"), "run": str(run), "valid_users": int(valid.num_rows),
            "batch_size": rec.batch_size, "rounds": rounds,
            "lambda": weight, "seconds_median": {k: round(v, 3) for k, v in med.items()},
            "prior_vs_beam": round(med["prior"] / med["beam"], 2),
            "reference_vs_prior": round(med["prior_reference"] / med["prior"], 2),
            "same_top10_share": float((tops["prior"] == tops["prior_reference"]).all(1).mean())}


def probe(run: Path, users: int | None = None) -> dict:
    codes, splits, valid, rec = _load(run, users)
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
    ap.add_argument("--fusion", action="store_true", help="also the pooled beam + rule ranking for each lambda")
    ap.add_argument("--rules", default="", help="--fusion: also these succession rules, WINDOW:DECAY,... "
                    "(e.g. 10:0.1,10:0.5,10:1,20:0.5), valid NDCG@10 for each lambda")
    ap.add_argument("--speed", action="store_true", help="only time the prior's ranking (see the module doc)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    users = 2000 if args.quick else None
    rules = [(int(w), float(d)) for w, d in (r.split(":") for r in args.rules.split(",") if r)]
    results = [speed(r) if args.speed else probe(r, users) for r in args.runs]
    if args.fusion and not args.speed:
        for r, run in zip(results, args.runs):
            r["fusion"] = fusion(run, users, rules)
    for r in results:
        print(json.dumps(r, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
