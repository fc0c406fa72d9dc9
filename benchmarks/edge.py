"""Training across edge devices (issue 42): E-Tree against FedAvg, gossip, local-only and centralised.

Claim measured (issue 42's goal): under non-IID data, E-Tree (arXiv 2008.01553) beats FedAvg and gossip
learning at equal local steps and at equal bytes, and comes within 5% of centralised training; KMA grouping
against random and distance-only grouping. This first version measures the simulated world only (not Amazon
Beauty), with SASRec only (not the generator), in the single-process simulation (``onerec.edge.simulate``).

Per seed: one simulated world (``WORLD``, seeded by the seed), leave-one-out split; its users partitioned over
``--devices`` devices, non-IID (Dirichlet(``--alpha``) over ``--clusters`` clusters of the users' dominant
interest, at least 10 users a device, devices placed near their main cluster) and IID (the control). Every
scheme starts from the same weights and gives every device ``--steps`` local Adam steps (batch 16, lr 1e-2);
centralised: the same number of steps on the pooled data with batches of 16 x devices (synchronous data
parallel, the same samples).
E-Tree: groups of 10 devices (KMA, distance-only or random), groups average every 5 local steps, the root
every 20; FedAvg and gossip (one random peer) exchange every 5 local steps. Faults (non-IID): after half the
local steps the aggregator of group 0 dies; E-Tree re-attaches its devices to the root, FedAvg loses its server.
Metrics: recall@10 / ndcg@10 on the test split, each user scored by their own device's model. Bytes and the
wall-clock are *simulated* from the cost model in ``onerec.edge.tree`` (latency 5 ms + 100 ms per unit of
distance, 100 Mbit/s, 20 ms per local step), not measured on a network.

    PYTHONPATH=src python benchmarks/edge.py [--seeds 0 1 2] [--devices 50] [--steps 80] [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onerec.bench.machine import machine_info
from onerec.config import SasrecConfig, SimConfig
from onerec.data.simulator import simulate
from onerec.data.splits import make_splits
from onerec.edge.devices import partition_dirichlet, partition_iid, world_clusters
from onerec.edge.simulate import EdgeSettings, device_data, make_groups, run_scheme
from onerec.io import write_json

RESULTS = Path(__file__).parent / "results"
WORLD = SimConfig(n_users=2000, n_items=400, n_events=80_000, n_topics=12, calib_pairs=20_000)
MODEL = SasrecConfig(d_model=32, n_layers=1, n_heads=1, dropout=0.2, max_len=20)
#: result name -> (scheme, grouping)
SCHEMES = {"etree": ("etree", "kma"), "etree_distance": ("etree", "distance"), "etree_random": ("etree", "random"),
           "fedavg": ("fedavg", "kma"), "gossip": ("gossip", "kma"), "local": ("local", "kma"),
           "central": ("central", "kma"),
           # faults (non-IID only): after half the local steps the aggregator of level-1 group 0 dies
           "etree_fault": ("etree", "kma"), "fedavg_fault": ("fedavg", "kma")}
METRICS = ("ndcg@10", "recall@10", "bytes", "sim_s")


def one_seed(seed: int, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    ds, world = simulate(dataclasses.replace(WORLD, seed=seed))
    splits = make_splits(ds)
    n_users = ds.n_users
    settings = EdgeSettings(local_steps=args.steps, eval_every=args.eval_every, seed=seed)
    out: dict[str, dict[str, Any]] = {}
    for part in args.partitions:
        if part == "noniid":
            devices = partition_dirichlet(world_clusters(world.interest, args.clusters), args.devices,
                                          alpha=args.alpha, min_users=10, seed=seed)
        else:
            devices = partition_iid(n_users, args.devices, seed=seed)
        data = device_data(devices, splits["train"], splits["test"], MODEL.max_len)
        groups = {g: make_groups(devices, data, ds.n_items, MODEL, dataclasses.replace(settings, grouping=g))
                  for g in ("kma", "distance", "random")}
        for name, (scheme, grouping) in SCHEMES.items():
            if part == "iid" and name in ("etree_distance", "etree_random", "etree_fault", "fedavg_fault"):
                continue  # the grouping and fault comparisons are non-IID questions; IID is the control
            t0 = time.monotonic()
            fail = args.steps // 2 if name.endswith("_fault") else None
            run = run_scheme(scheme, devices, data, ds.n_items, MODEL,
                             dataclasses.replace(settings, grouping=grouping, fail_step=fail),
                             groups=groups[grouping] if scheme == "etree" else None)
            out[f"{part}.{name}"] = run
            f = run["final"]
            print(f"seed {seed} {part:6s} {name:15s} ndcg@10 {f['ndcg@10']:.4f} recall@10 {f['recall@10']:.4f} "
                  f"MB {f['bytes'] / 1e6:9.1f} sim {f['sim_s']:7.2f}s ({time.monotonic() - t0:.0f}s)", flush=True)
    return out


def rounds_to_target(curve: list[dict[str, Any]], target: float) -> int | None:
    """The first curve point's local steps at which ndcg@10 reaches ``target`` (None: never)."""
    return next((int(c["step"]) for c in curve if c["ndcg@10"] >= target), None)


def summarise(per_seed: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    for key in per_seed[0]:
        part = key.split(".")[0]
        for m in METRICS:
            vals = np.array([float(s[key]["final"][m]) for s in per_seed])
            keys[f"simulated.{key}.{m}"] = {"mean": float(vals.mean()), "std": float(vals.std())}
        # target: 95% of the centralised model's final ndcg@10 in the same seed and partition
        reach = [rounds_to_target(s[key]["curve"], 0.95 * s[f"{part}.central"]["final"]["ndcg@10"]) for s in per_seed]
        keys[f"simulated.{key}.rounds_to_target"] = reach
    return keys


def table(keys: dict[str, Any], partition: str) -> str:
    lines = [f"| {partition} scheme | ndcg@10 | recall@10 | MB moved | simulated s | steps to 95% of central |",
             "|---|---|---|---|---|---|"]
    for name in SCHEMES:
        k = f"simulated.{partition}.{name}"
        if f"{k}.ndcg@10" not in keys:
            continue
        n, r, b, s = (keys[f"{k}.{m}"] for m in METRICS)
        lines.append(f"| {name} | {n['mean']:.4f} +- {n['std']:.4f} | {r['mean']:.4f} +- {r['std']:.4f} | "
                     f"{b['mean'] / 1e6:.1f} | {s['mean']:.1f} | {keys[f'{k}.rounds_to_target']} |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """ndcg@10 against local steps, per scheme (mean over seeds), one panel per partition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = result["settings"].get("partitions", ["noniid", "iid"])
    fig, axes = plt.subplots(1, len(parts), figsize=(6 * len(parts), 4), squeeze=False)
    for ax, part in zip(axes[0], parts):
        for i, name in enumerate(SCHEMES):
            runs = [c for k, c in result["curves"].items() if k.split(".", 1)[1] == f"{part}.{name}"]
            if not runs:
                continue
            steps = [p["step"] for p in runs[0]]
            mean = np.mean([[p["ndcg@10"] for p in c] for c in runs], axis=0)
            ax.plot(steps, mean, marker="o", label=name, color=f"C{i}", linestyle="--" if name == "central" else "-")
        ax.set(title=f"{part}: {result['settings']['devices']} devices", xlabel="local steps per device",
               ylabel="test ndcg@10 (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--clusters", type=int, default=6)
    ap.add_argument("--partitions", nargs="+", default=["noniid", "iid"], choices=["noniid", "iid"])
    ap.add_argument("--quick", action="store_true", help="1 seed, 20 devices, 40 local steps")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--plot-from", type=Path, default=None, help="only draw the plot of a results file")
    args = ap.parse_args()
    if args.plot_from is not None:
        from onerec.io import read_json

        plot(read_json(args.plot_from), Path("docs/benchmarks/edge.png"))
        return
    if args.quick:
        args.seeds, args.devices, args.steps = [0], 20, 40
    torch.set_num_threads(1)
    t0 = time.monotonic()
    per_seed = [one_seed(s, args) for s in args.seeds]
    keys = summarise(per_seed)
    result = {
        "command": "PYTHONPATH=src python benchmarks/edge.py " + " ".join(sys.argv[1:]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(note="torch.set_num_threads(1); the 2 cores shared with other engineers' jobs"),
        "seconds": time.monotonic() - t0,
        "world": dataclasses.asdict(WORLD), "model": dataclasses.asdict(MODEL),
        "settings": {"devices": args.devices, "partitions": args.partitions, "steps": args.steps, "alpha": args.alpha,
                     "clusters": args.clusters,
                     **{k: v for k, v in dataclasses.asdict(EdgeSettings()).items()
                        if k not in ("local_steps", "seed", "eval_every")}},
        "keys": keys,
        "curves": {f"seed{s}.{k}": run["curve"] for s, runs in zip(args.seeds, per_seed) for k, run in runs.items()},
    }
    out = args.out or RESULTS / ("edge.quick.json" if args.quick else "edge.json")
    write_json(out, result)
    for part in args.partitions:
        print(table(keys, part))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
