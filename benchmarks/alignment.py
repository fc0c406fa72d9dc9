"""Preference alignment measured in the simulated world: pretrained vs IPA/DPO vs ECPO vs GBPO vs the cascade.

Per seed: simulate a world (its ground-truth response model plays the users), tokenize, pretrain the
generator with next-token loss, train the P-Score reward model (and its DIN / no-SIM / no-CAN
ablations; AUC / GAUC on held-out exposures), then, from the same pretrained generator:

* ``pretrained``: constrained beam search, top-K;
* ``dpo``: OneRec V1 iterative preference alignment (beam-searched candidates, best / worst by
  P-Score form DPO pairs, NTP + lambda * DPO, rejection-sampling fine-tuning), then top-K;
* ``ecpo``: Technical Report ECPO (unconstrained beam rollouts, format reward, group advantages,
  early clipping, NTP alongside, rejection-sampling fine-tuning), then top-K;
* ``gbpo``: OneRec-V2 GBPO with its duration-aware real-feedback reward (the same unconstrained beam
  rollouts; each legal one is shown to its user in the world and one response sampled; the play time's
  percentile in its duration bucket gives A = +1 to the round's top 25%, a dislike or an illegal code
  A = -1; gradient-bounded surrogate, NTP alongside, rejection-sampling fine-tuning), then top-K;
* ``gbpo-log``: the same, with the other reading of "top 25%" (``align.top_of=log``: plays in the top
  quarter of the logged plays of their duration bucket);
* ``gbpo-pscore``: the GBPO loss on ECPO's P-Score advantages (``align.gbpo_reward=pscore``): the loss
  alone, with the reward DPO and ECPO get;
* ``cascade``: SASRec retrieves candidates, the P-Score ranks them, top-K.

Every list is scored on held-out users by the world's closed-form expected watch time, click, like
and long-view per shown item; also the mean P-Score and the legality of unconstrained generation.
DPO, ECPO and gbpo-pscore align to the learned P-Score only. ``gbpo`` learns from sampled responses of
the world's (other, non-held-out) users -- V2's setting, and more information about the world than a
reward model fitted to the log: it is not a like-for-like comparison of the losses (gbpo-pscore is).

    PYTHONPATH=src python benchmarks/alignment.py [--seeds 0 1 2] [--methods dpo ecpo gbpo gbpo-log gbpo-pscore] \\
        [--out benchmarks/results/reward-alignment/alignment.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from onerec.align.evaluate import evaluate_cascade, evaluate_generator, oracle_scores
from onerec.align.loop import AlignContext, align, clone_model
from onerec.baselines import build_baseline
from onerec.bench.machine import machine_info
from onerec.config import load_config, to_dict
from onerec.data.splits import load_splits
from onerec.io import read_json, write_json
from onerec.pipeline import align_setup, stage_data, stage_reward, stage_tokenize, stage_train

OVERRIDES = [
    "data.sim.n_users=2000", "data.sim.n_items=1000", "data.sim.n_events=150000",
    "tokenizer.codebook_size=16", "model.d_model=64", "train.epochs=3", "train.threads=1",
    "generate.beam_size=32", "eval.sasrec.epochs=30", "eval.sasrec.time_budget_s=90",
    "reward.epochs=2", "align.iterations=12", "align.users_per_iter=256", "align.steps_per_iter=16",
    "align.batch_users=32", "align.beam_size=16", "align.eval_users=400", "align.top_k=10", "align.lr=5e-4",
]
QUICK = ["data.sim.n_users=400", "data.sim.n_items=300", "data.sim.n_events=20000", "train.epochs=2",
         "align.iterations=2", "align.users_per_iter=64", "align.eval_users=100", "eval.sasrec.epochs=5"]
METRICS = ("watch_time", "click", "like", "long_view", "complete_play", "duration", "play_fraction", "pscore",
           "legality", "distinct_items")
METHODS = ("dpo", "ecpo", "gbpo", "gbpo-log", "gbpo-pscore")
VARIANTS = {"gbpo-log": {"method": "gbpo", "top_of": "log"}, "gbpo-pscore": {"method": "gbpo", "gbpo_reward": "pscore"}}


def method_config(ac, method: str):
    """The align config of a compared method (``gbpo-log``, ``gbpo-pscore``: GBPO with other rewards)."""
    return dataclasses.replace(ac, **VARIANTS.get(method, {"method": method}))


def run_seed(seed: int, workdir: Path, extra: list[str], *, reuse: bool = False, prepare_only: bool = False,
             methods: tuple[str, ...] = METHODS) -> dict:
    torch.set_num_threads(1)
    run = workdir / f"seed{seed}"
    cfg = load_config(preset="quickstart", overrides=[*OVERRIDES, f"data.sim.seed={seed}", f"train.seed={seed}",
                                                      f"reward.seed={seed}", f"align.seed={seed}", *extra])
    t0 = time.perf_counter()
    if not (reuse and (run / "train" / "model.json").exists()):
        stage_data(run, cfg, progress=False)
        stage_tokenize(run, cfg, progress=False)
        stage_train(run, cfg, progress=False)
    t_pre = time.perf_counter() - t0
    if reuse and (run / "reward" / "metrics.json").exists():
        reward = read_json(run / "reward" / "metrics.json")
    else:
        reward = stage_reward(run, cfg, progress=False)
    if prepare_only:
        return {}
    print(f"seed {seed}: reward AUC " + ", ".join(f"{k}={v['long_view']['auc']:.3f}"
                                                   for k, v in reward["models"].items()), flush=True)
    ctx, world, eval_rows, pool = align_setup(run, cfg)
    pretrained = ctx.model
    ac, k, beam = cfg.align, cfg.align.top_k, cfg.generate.beam_size
    out = {"seed": seed, "reward": reward["models"], "seconds": {"pretrain": round(t_pre, 1)}}
    res = {"pretrained": evaluate_generator(ctx, world, eval_rows, k=k, beam=beam)}
    for method in methods:
        t1 = time.perf_counter()
        mctx = AlignContext(clone_model(pretrained), ctx.codes, ctx.requests, ctx.ranker, ctx.rank_feat,
                            ctx.train_examples, ctx.featurizer, ctx.feedback)

        out[f"{method}_history"] = align(mctx, method_config(ac, method), pool)
        res[method] = evaluate_generator(mctx, world, eval_rows, k=k, beam=beam)
        out["seconds"][method] = round(time.perf_counter() - t1, 1)
        print(f"seed {seed}: {method} {res[method]}", flush=True)
    t1 = time.perf_counter()
    splits = load_splits(run / "data" / "split", n_items=len(ctx.codes))
    sasrec = build_baseline("sasrec", cfg.eval.sasrec)
    sasrec.fit(splits["train"], n_items=len(ctx.codes), valid=splits["valid"])
    res["cascade"] = evaluate_cascade(ctx, world, eval_rows, sasrec, k=k, retrieve=ac.cascade_retrieve)
    out["seconds"]["cascade"] = round(time.perf_counter() - t1, 1)
    res["oracle"] = oracle_scores(world, ctx.users[eval_rows], len(ctx.codes), k)
    print(f"seed {seed}: pretrained {res['pretrained']}\nseed {seed}: cascade {res['cascade']}", flush=True)
    out["simulated"] = res
    out["config"] = {"align": to_dict(cfg.align), "reward": to_dict(cfg.reward), "sim": to_dict(cfg.data.sim)}
    return out


def summarise(runs: list[dict]) -> dict:
    sim: dict = {}
    for name in runs[0]["simulated"]:
        row: dict = {}
        for m in METRICS:
            vals = [r["simulated"][name][m] for r in runs if m in r["simulated"][name]]
            if not vals:
                continue
            row[m] = float(np.mean(vals))
            row[f"{m}_median"] = float(np.median(vals))
            row[f"{m}_std"] = float(np.std(vals))
            row[f"{m}_runs"] = vals
        sim[name] = row
    base = [r["simulated"]["pretrained"]["watch_time"] for r in runs]
    for name in [n for n in sim if n not in ("pretrained", "oracle")]:
        gain = [100.0 * (r["simulated"][name]["watch_time"] / b - 1.0) for r, b in zip(runs, base)]
        sim[name]["watch_time_gain_pct"] = float(np.mean(gain))
        sim[name]["watch_time_gain_pct_median"] = float(np.median(gain))
        sim[name]["watch_time_gain_pct_std"] = float(np.std(gain))
        sim[name]["watch_time_gain_pct_runs"] = gain
    reward: dict = {}
    for variant in runs[0]["reward"]:
        reward[variant] = {}
        for obj, v in runs[0]["reward"][variant].items():
            if isinstance(v, dict):
                reward[variant][obj] = {s: float(np.mean([r["reward"][variant][obj][s] for r in runs]))
                                        for s in ("auc", "gauc")}
    return {"simulated": sim, "reward_heldout": reward}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="benchmarks/results/reward-alignment/alignment.json")
    ap.add_argument("--workdir", default=None, help="keep run directories here (default: a temp dir)")
    ap.add_argument("--reuse", action="store_true", help="reuse trained generators / P-Scores found in --workdir")
    ap.add_argument("--prepare-only", action="store_true", help="only pretrain and fit the P-Score (with --workdir)")
    ap.add_argument("--merge", nargs="+", default=None, help="summarise the runs of these result files into --out")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                    help="the alignments to compare (default: all)")
    ap.add_argument("--quick", action="store_true", help="a small world, one seed (writes alignment.quick.json)")
    ap.add_argument("overrides", nargs="*", help="extra KEY=VALUE config overrides")
    args = ap.parse_args()
    if args.quick:
        args.seeds = args.seeds[:1]
        args.out = args.out.replace(".json", ".quick.json")
        args.overrides = [*QUICK, *args.overrides]
    t0 = time.perf_counter()
    if args.merge:
        from onerec.io import read_json as _read

        parts = [_read(f) for f in args.merge]
        runs = [r for p in parts for r in p["runs"]]
        args.seeds = [r["seed"] for r in runs]
        write_json(args.out, {**parts[0], "date": parts[-1]["date"], "seeds": args.seeds, **summarise(runs),
                              "runs": runs, "wall_s": sum(p["wall_s"] for p in parts),
                              "command": " ; ".join(p["command"] for p in parts) + " ; python benchmarks/alignment.py "
                              + " ".join(sys.argv[1:])})
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        runs = [run_seed(s, work, args.overrides, reuse=args.reuse, prepare_only=args.prepare_only,
                         methods=tuple(args.methods)) for s in args.seeds]
    if args.prepare_only:
        return
    result = {
        "benchmark": "alignment",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/alignment.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "overrides": OVERRIDES + args.overrides, "seeds": args.seeds,
        **summarise(runs), "runs": runs, "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_json(args.out, result)
    sim = result["simulated"]
    for name, row in sim.items():
        print(f"{name:11s} watch {row['watch_time']:.2f}s ±{row['watch_time_std']:.2f} (median "
              f"{row['watch_time_median']:.2f})  click {row['click']:.4f}  "
              f"like {row['like']:.4f}  legality {row.get('legality', float('nan')):.3f}  "
              f"gain {row.get('watch_time_gain_pct', 0.0):+.1f}%")


if __name__ == "__main__":
    main()
