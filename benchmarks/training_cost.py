"""What an epoch of generator training costs: the encoder-decoder trained per prefix (one encoder pass per
next-item sample) against OneRec-V2's lazy decoder trained on every position of a sequence in one pass, at
(nearly) equal parameters, on a run directory's real train split.

Variants, all with the run's config otherwise (d_model, heads, max_history, dropout, batch size, AdamW):

* ``encdec_prefix``: ``model.arch=encdec``, ``train.objective=prefix`` (today's default);
* ``lazy_prefix``: ``model.arch=lazy`` with ``dec_layers`` chosen so its parameter count is closest to the
  encoder-decoder's, trained per prefix (the architecture alone);
* ``lazy_all_positions``: the same lazy model trained on every position (``train.objective=all_positions``).

Each variant's training step (featurizing its batch, forward, backward, gradient clipping, AdamW) is timed
in rounds that alternate the variants, so that a machine whose load changes slows all of them alike; the
figures are medians over rounds. Seconds per epoch = steps per epoch x median step (both objectives take
about ``batch_size`` targets a step, so the epochs have the same targets). Also counted: the forward+backward
FLOPs of a step (``torch.utils.flop_counter``) and the achieved rate against a plain 2048^3 fp32 matmul in the
same process.

    python benchmarks/training_cost.py RUN [--steps 10] [--rounds 3] [--threads 1] [--quick]
    python benchmarks/training_cost.py LAZY_RUN --encdec model.dec_layers=2   # a lazy run: name its encdec

Writes ``benchmarks/results/model/training_cost.json`` (one section per run name).
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
from torch.utils.flop_counter import FlopCounterMode

from onerec.bench.machine import matmul_rate_cpu
from onerec.config import from_dict, load_config, to_dict
from onerec.data.splits import load_splits
from onerec.io import read_json, write_json
from onerec.model import build_generator
from onerec.pipeline import load_codes, make_featurizer, train_examples

RESULTS = Path(__file__).resolve().parent / "results" / "model" / "training_cost.json"


def equal_size_lazy(cfg, sizes: list[int]) -> tuple[dict, int, int]:
    """The lazy model config whose parameter count is closest to ``cfg.model``'s (varying dec_layers); its
    lazy-only keys (kv_heads, kv_layers, kv_split) are onerec's defaults, not the run's saved values."""
    target = build_generator(cfg.model, sizes).num_parameters()
    defaults = {k: getattr(type(cfg.model)(), k) for k in ("kv_heads", "kv_layers", "kv_split")}
    best = None
    for layers in range(1, 4 * (cfg.model.enc_layers + cfg.model.dec_layers) + 1):
        m = from_dict(type(cfg.model), {**to_dict(cfg.model), **defaults, "arch": "lazy", "dec_layers": layers})
        with torch.device("meta"):
            n = build_generator(m, sizes).num_parameters()
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (m, n)
    return best[0], best[1], target


def encdec_config(run: Path, overrides: list[str]):
    """The run's config with the encoder-decoder as its model: the run's own for an encdec run; for a run of
    another architecture its model section with ``arch=encdec`` and ``overrides`` (``model.KEY=VALUE``: e.g. the
    preset's ``model.dec_layers=2``, which a lazy run has overridden), which must then be given."""
    cfg = load_config(file=run / "config.yaml")
    if cfg.model.arch == "encdec" and not overrides:
        return cfg
    if not overrides:
        raise SystemExit(f"this run's model.arch is {cfg.model.arch}: name the encoder-decoder to compare with by "
                         "the model keys it differs in, e.g. --encdec model.dec_layers=2 (the amazon preset's)")
    return load_config(file=run / "config.yaml", overrides=["model.arch=encdec", *overrides])


def measure(run: Path, steps: int, rounds: int, encdec: list[str] = ()) -> dict:
    cfg = encdec_config(run, list(encdec))
    codes = load_codes(run)
    splits = load_splits(run / "data" / "split", n_items=len(codes))
    sizes = read_json(run / "tokenizer" / "metrics.json")["codebook_sizes"]
    lazy_model, lazy_n, encdec_n = equal_size_lazy(cfg, sizes)
    plans = {"encdec_prefix": (cfg.model, "prefix"), "lazy_prefix": (lazy_model, "prefix"),
             "lazy_all_positions": (lazy_model, "all_positions")}
    tc = cfg.train
    variants = {}
    for name, (mcfg, objective) in plans.items():
        vcfg = from_dict(type(cfg), {**to_dict(cfg), "model": to_dict(mcfg), "train": {**to_dict(tc),
                                                                                      "objective": objective}})
        feat = make_featurizer(run, mcfg, codes, splits=splits)
        ex = train_examples(splits["train"], feat, vcfg)
        torch.manual_seed(0)
        model = build_generator(mcfg, sizes).train()
        opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.98))
        bs = ex.rows_per_batch(tc.batch_size)
        variants[name] = {"model": model, "opt": opt, "ex": ex, "bs": bs,
                          "targets": ex.targets, "rows": len(ex)}
    rng = np.random.default_rng(0)

    def step(v: dict, idx: np.ndarray) -> int:
        batch = v["ex"].batch(idx)
        loss = v["model"](batch, label_smoothing=tc.label_smoothing)
        v["opt"].zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(v["model"].parameters(), tc.grad_clip)
        v["opt"].step()
        float(loss.detach())
        return int(batch["seq_target"].sum()) if "seq_target" in batch else len(idx)

    def draw(v: dict) -> np.ndarray:
        return rng.choice(v["rows"], min(v["bs"], v["rows"]), replace=False)

    for v in variants.values():  # AdamW state, allocator
        step(v, draw(v))
    for v in variants.values():
        counter = FlopCounterMode(display=False)
        idx = draw(v)
        with counter:
            v["flop_targets"] = step(v, idx)
        v["flops"] = counter.get_total_flops()
    per_round = []
    for _ in range(rounds):
        times = {n: [] for n in variants}
        targets = {n: [] for n in variants}
        for _ in range(steps):
            for n, v in variants.items():
                idx = draw(v)
                t0 = time.perf_counter()
                targets[n].append(step(v, idx))
                times[n].append(time.perf_counter() - t0)
        per_round.append({"matmul_flops_per_s": matmul_rate_cpu(),
                          **{n: (statistics.median(times[n]), float(np.mean(targets[n]))) for n in variants}})
    out = {"run": str(run), "threads": torch.get_num_threads(), "steps_per_round": steps, "rounds": rounds,
           "batch_size": tc.batch_size,
           "model": {"encdec": to_dict(cfg.model), "lazy_dec_layers": lazy_model.dec_layers},
           "parameters": {"encdec": encdec_n, "lazy": lazy_n},
           "matmul_2048_gflops": round(statistics.median(r["matmul_flops_per_s"] for r in per_round) / 1e9, 1),
           "variants": {}}
    base = None
    for n, v in variants.items():
        s = statistics.median(r[n][0] for r in per_round)
        per_step = statistics.median(r[n][1] for r in per_round)
        steps_per_epoch = -(-v["rows"] // v["bs"])
        epoch = steps_per_epoch * s
        rate = v["flops"] / v["flop_targets"] * per_step / s
        row = {"step_s": round(s, 4), "targets_per_step": round(per_step, 1), "steps_per_epoch": steps_per_epoch,
               "epoch_s": round(epoch, 1), "targets_per_s": round(v["targets"] / epoch, 1),
               "flops_per_target": round(v["flops"] / v["flop_targets"]),
               "achieved_gflops": round(rate / 1e9, 2),
               "vs_matmul_2048": round(rate / (out["matmul_2048_gflops"] * 1e9), 3),
               "epoch_ratio_per_round": [round(r[n][0] * steps_per_epoch, 2) for r in per_round]}
        out["variants"][n] = row
        if base is None:
            base = (n, epoch, [r[n][0] for r in per_round], steps_per_epoch)
    for n, v in out["variants"].items():
        spe = v["steps_per_epoch"]
        ratios = [base[3] * b / (spe * r[n][0]) for b, r in zip(base[2], per_round)]
        v["epoch_speedup_vs_" + base[0]] = round(statistics.median(ratios), 2)
        del v["epoch_ratio_per_round"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--name", default=None, help="section name in the results file (default: the run's folder name)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--machine", default="", help="describe the machine (sharing, load)")
    ap.add_argument("--quick", action="store_true", help="2 steps, 1 round: a smoke run (seconds to a minute)")
    ap.add_argument("--encdec", nargs="+", default=[], metavar="model.KEY=VALUE",
                    help="a run of another architecture (e.g. lazy): the encoder-decoder to compare with, as the "
                         "model keys it differs in (model.arch=encdec is implied)")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.rounds = 2, 1
    torch.set_num_threads(args.threads)
    res = measure(args.run, args.steps, args.rounds, args.encdec)
    res.update(command="python " + " ".join(sys.argv), date=dt.date.today().isoformat(), machine=args.machine)
    print(json.dumps(res, indent=1))
    path = RESULTS.with_suffix(".quick.json") if args.quick else RESULTS  # a smoke run never joins the results
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc[args.name or args.run.name] = res
    write_json(path, doc)


if __name__ == "__main__":
    main()
