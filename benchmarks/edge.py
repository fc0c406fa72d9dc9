"""Training across edge devices (issue 42): E-Tree against FedAvg, gossip, local-only and centralised.

Claim measured (issue 42's goal): under non-IID data, E-Tree (arXiv 2008.01553) beats FedAvg and gossip
learning at equal rounds and at equal bytes, and comes within 5% of centralised training; KMA grouping
against random and distance-only grouping. All in the single-process simulation (``onerec.edge.simulate``).
"Rounds" two ways: equal local steps (FedAvg exchanging as often as E-Tree's groups, ``fedavg``) and equal
global rounds (FedAvg's server averaging as often as E-Tree's root, ``fedavg_root``); bytes two ways: bytes moved,
and byte-distance (bytes x the length of the links they cross: the load on the network).
Data sets (``--dataset``): the simulated world, or Amazon 2014 Beauty (``beauty``: users clustered by the
top-level category of most of their train items, see :func:`load_data`). Models (``--model``): SASRec, or the
generator of ``--preset`` (simulated world only; its data and semantic IDs from ``onerec data`` / ``tokenize``).

Per seed: one simulated world (``WORLD``, seeded by the seed), leave-one-out split; its users partitioned over
``--devices`` devices, non-IID (Dirichlet(``--alpha``) over ``--clusters`` clusters of the users' dominant
interest, at least 10 users a device, devices placed near their main cluster) and IID (the control). Every
scheme starts from the same weights and gives every device ``--steps`` local Adam steps (batch 16, lr 1e-2);
centralised: the same number of steps on the pooled data with batches of 16 x devices (synchronous data
parallel, the same samples).
E-Tree: groups of 10 devices (KMA, distance-only, random, or ``similar``: near devices with alike models, see
:func:`onerec.edge.grouping.similar_groups`), groups average every 5 local steps, the root
every 20; FedAvg and gossip (one random peer) exchange every 5 local steps; ``fedavg_root``: FedAvg every 20,
``fedavg_10``: every 10, ``fedavg_1``: after every local step; ``etree_10``: E-Tree at half the rate (groups
every 10, the root every 40), about fedavg_10's raw bytes (the equal-bytes pair). Faults (non-IID): after half the
local steps the aggregator of group 0 dies; E-Tree re-attaches its devices to the root, FedAvg loses its server;
``etree_root_fault``: E-Tree's root aggregator dies instead, and its groups go on without global rounds;
``etree_public``: E-Tree with public nodes (each group also takes in the 2 devices of other groups nearest to its
head); ``etree3``: three levels (regions of up to 3 near groups between groups and root, every 5 / 10 / 20 local
steps), ``etree3_mid_fault``: the same with region 0's aggregator dying after half the steps.
Metrics: recall@10 / ndcg@10 on the test split (``--split valid`` to choose settings), each user scored by their
own device's model. Bytes and the
wall-clock are *simulated* from the cost model in ``onerec.edge.tree`` (latency 5 ms + 100 ms per unit of
distance, 100 Mbit/s, 20 ms per local step), not measured on a network.

    PYTHONPATH=src python benchmarks/edge.py [--seeds 0 1 2] [--devices 50] [--steps 80] [--quick] [--out PATH]
        [--dataset simulated|beauty] [--model sasrec|generator] [--schemes ...] [--split test|valid]
    PYTHONPATH=src python benchmarks/edge.py --merge FILE... --out PATH   # join per-seed (or per-scheme) files
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
from onerec.edge.devices import item_label_clusters, partition_dirichlet, partition_iid, world_clusters
from onerec.edge.simulate import EdgeSettings, device_data, make_groups, run_scheme
from onerec.io import write_json

RESULTS = Path(__file__).parent / "results"
WORLD = SimConfig(n_users=2000, n_items=400, n_events=80_000, n_topics=12, calib_pairs=20_000)
MODEL = SasrecConfig(d_model=32, n_layers=1, n_heads=1, dropout=0.2, max_len=20)
#: result name -> (scheme, grouping, periods: None for EdgeSettings' own, or "root" for its last (top) one)
SCHEMES = {"etree": ("etree", "kma", None), "etree_distance": ("etree", "distance", None),
           "etree_random": ("etree", "random", None),
           # groups of near devices with alike models (a third party's reading of the paper's KMA)
           "etree_similar": ("etree", "similar", None),
           # E-Tree's public nodes: each group also takes in the 2 devices of other groups nearest to its head
           "etree_public": ("etree", "kma", None), "fedavg": ("fedavg", "kma", None),
           # FedAvg at E-Tree's root period: as many global (server / root) rounds as E-Tree at every step
           "fedavg_root": ("fedavg", "kma", "root"),
           # FedAvg every 10 local steps: between the two in rounds, bytes and byte-distance
           "fedavg_10": ("fedavg", "kma", [10]),
           # E-Tree at half the rate (groups every 10 steps, the root every 40): about the raw bytes of fedavg_10,
           # so the two compare at equal bytes as etree and fedavg do at equal local steps
           "etree_10": ("etree", "kma", [10, 40]),
           # FedAvg after every local step: what is left of the gap to centralised training is the local optimizer
           "fedavg_1": ("fedavg", "kma", [1]),
           "gossip": ("gossip", "kma", None), "local": ("local", "kma", None), "central": ("central", "kma", None),
           # faults (non-IID only): after half the local steps the aggregator of level-1 group 0 dies
           "etree_fault": ("etree", "kma", None), "fedavg_fault": ("fedavg", "kma", None),
           # the same step, E-Tree's root aggregator dies: its groups go on alone
           "etree_root_fault": ("etree", "kma", None),
           # a three-level tree (THREE_LEVEL: groups every 5 steps, regions of up to 3 near groups every 10, the
           # root every 20), and the same with region 0's aggregator dying after half the steps (its groups are
           # re-attached to the root)
           "etree3": ("etree", "kma", [5, 10, 20]), "etree3_mid_fault": ("etree", "kma", [5, 10, 20])}
THREE_LEVEL = {"fanout": [3]}  # the level between groups and root of etree3*: up to 3 groups a node
METRICS = ("ndcg@10", "recall@10", "bytes", "byte_distance", "sim_s")
#: EdgeSettings fields added after results files were written, with the value those runs had
LATER_SETTINGS = {"fail_level": 1, "public_nodes": 0}


def generator_world(seed: int, preset: str, workdir: Path) -> tuple[Any, int, int, dict[str, Any], np.ndarray]:
    """The simulated world ``WORLD`` (seeded) through the project's own stages under ``preset``: ``onerec data``
    and ``onerec tokenize`` into ``workdir``; returns (the generator spec, users, items, splits, the world's
    interests)."""
    from onerec.config import load_config
    from onerec.data.simulator import WORLD_DIR, World
    from onerec.data.splits import load_splits
    from onerec.edge.stage import generator_spec
    from onerec.io import read_json
    from onerec.pipeline import stage_data, stage_tokenize

    sim = {**dataclasses.asdict(WORLD), "seed": seed}
    cfg = load_config(preset=preset, overrides=[f"data.sim.{k}={sim[k]}" for k in
                                                ("n_users", "n_items", "n_events", "n_topics", "calib_pairs",
                                                 "seed")] + [f"tokenizer.seed={seed}", f"train.seed={seed}"])
    run = workdir / f"{preset}-seed{seed}"
    if not (run / "tokenizer" / "metrics.json").exists():
        stage_data(run, cfg, progress=False)
        stage_tokenize(run, cfg, progress=False)
    spec = generator_spec(run, cfg)  # the generator `onerec edge RUN edge.model=generator` trains
    splits = load_splits(run / "data" / "split", n_items=len(spec.codes))
    users = int(read_json(run / "data" / "summary.json").get("users", 0)) or sim["n_users"]
    interest = World.load(run / "data" / WORLD_DIR).interest
    return spec, max(users, len(interest)), len(spec.codes), splits, interest


def load_data(args: argparse.Namespace, seed: int) -> tuple[int, int, dict[str, Any], np.ndarray]:
    """(users, items, splits, non-IID cluster of each user) of ``args.dataset``.

    simulated: one world per seed, users clustered by their dominant interest (topic mod ``--clusters``).
    beauty: Amazon 2014 Beauty (the same data for every seed), users clustered by the top-level category
    (under "Beauty") that most of their *train* items belong to: Skin Care, Hair Care, Makeup, Tools &
    Accessories, Bath & Body, Fragrance."""
    if args.model == "generator":
        spec, n_users, n_items, splits, interest = generator_world(seed, args.preset, Path(args.workdir))
        _CACHE["spec"] = spec
        return n_users, n_items, splits, world_clusters(interest, args.clusters)
    if args.dataset == "simulated":
        ds, world = simulate(dataclasses.replace(WORLD, seed=seed))
        return ds.n_users, ds.n_items, make_splits(ds), world_clusters(world.interest, args.clusters)
    if "beauty" not in _CACHE:
        from onerec.data.adapters.amazon2014 import load_amazon2014
        from onerec.data.splits import list_column

        root = Path(args.datasets)
        ds = load_amazon2014(root / "amazon2014_s3rec", "Beauty", text_path=root / "amazon2014_text")
        splits = make_splits(ds)  # leave-one-out, as `onerec bench amazon`
        top = [(c or "").split(" > ")[1] if len((c or "").split(" > ")) > 1 else "" for c in
               ds.items["category"].to_pylist()]
        names = sorted({t for t in top if t})
        item_labels = np.array([names.index(t) if t else -1 for t in top], dtype=np.int64)
        train = splits["train"]
        labels = item_label_clusters(train["user_id"].to_numpy(), list_column(train, "items"), item_labels,
                                     ds.n_users)
        _CACHE["beauty"] = (ds.n_users, ds.n_items, splits, labels)
    return _CACHE["beauty"]


_CACHE: dict[str, Any] = {}


def edge_settings(args: argparse.Namespace, seed: int = 0) -> EdgeSettings:
    """The simulation settings of a seed's runs (what the results file's ``settings`` records)."""
    return EdgeSettings(local_steps=args.steps, eval_every=args.eval_every, seed=seed, optimizer=args.optimizer,
                        server_lr=args.server_lr, group_lr=args.group_lr,
                        **({"lr": args.lr} if args.lr is not None else {}))


def one_seed(seed: int, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    n_users, n_items, splits, labels = load_data(args, seed)
    spec = _CACHE.get("spec") if args.model == "generator" else None
    model = spec if spec is not None else MODEL
    settings = edge_settings(args, seed)
    out: dict[str, dict[str, Any]] = {}
    for part in args.partitions:
        if part == "noniid":
            devices = partition_dirichlet(labels, args.devices, alpha=args.alpha, min_users=10, seed=seed)
        else:
            devices = partition_iid(n_users, args.devices, seed=seed)
        data = device_data(devices, splits["train"], splits[args.split], MODEL.max_len, spec)
        names = [n for n in SCHEMES if n in args.schemes
                 and not (part == "iid" and n in ("etree_distance", "etree_random", "etree_similar", "etree_fault",
                                                  "fedavg_fault", "etree_root_fault", "etree3_mid_fault"))]
        # the grouping and fault comparisons are non-IID questions; IID is the control
        groups = {g: make_groups(devices, data, n_items, model, dataclasses.replace(settings, grouping=g))
                  for g in {SCHEMES[n][1] for n in names if SCHEMES[n][0] == "etree"}}
        for name in names:
            scheme, grouping, periods = SCHEMES[name]
            periods = settings.periods[-1:] if periods == "root" else periods or settings.periods
            t0 = time.monotonic()
            fail = args.steps // 2 if name.endswith("_fault") else None
            # the top level (the root) for etree_root_fault, the middle one for etree3_mid_fault, else the groups'
            level = len(periods) if name == "etree_root_fault" else 2 if name == "etree3_mid_fault" else 1
            public = 2 if name == "etree_public" else 0
            shape = THREE_LEVEL if name.startswith("etree3") else {}
            run = run_scheme(scheme, devices, data, n_items, model,
                             dataclasses.replace(settings, grouping=grouping, fail_step=fail, fail_level=level,
                                                 periods=periods, public_nodes=public, **shape),
                             groups=groups[grouping] if scheme == "etree" else None)
            out[f"{part}.{name}"] = run
            f = run["final"]
            print(f"seed {seed} {part:6s} {name:15s} ndcg@10 {f['ndcg@10']:.4f} recall@10 {f['recall@10']:.4f} "
                  f"MB {f['bytes'] / 1e6:9.1f} sim {f['sim_s']:7.2f}s ({time.monotonic() - t0:.0f}s)", flush=True)
    return out


def rounds_to_target(curve: list[dict[str, Any]], target: float) -> int | None:
    """The first curve point's local steps at which ndcg@10 reaches ``target`` (None: never)."""
    return next((int(c["step"]) for c in curve if c["ndcg@10"] >= target), None)


def summarise(per_seed: list[dict[str, dict[str, Any]]], dataset: str = "simulated") -> dict[str, Any]:
    keys: dict[str, Any] = {}
    for key in per_seed[0]:
        part = key.split(".")[0]
        for m in METRICS:
            if any(m not in s[key]["final"] for s in per_seed):
                continue  # a file from before the metric existed
            vals = np.array([float(s[key]["final"][m]) for s in per_seed])
            keys[f"{dataset}.{key}.{m}"] = {"mean": float(vals.mean()), "std": float(vals.std())}
        # target: 95% of the centralised model's final ndcg@10 in the same seed and partition
        if f"{part}.central" in per_seed[0]:
            reach = [rounds_to_target(s[key]["curve"], 0.95 * s[f"{part}.central"]["final"]["ndcg@10"])
                     for s in per_seed]
            keys[f"{dataset}.{key}.rounds_to_target"] = reach
    return keys


def table(keys: dict[str, Any], partition: str, dataset: str = "simulated") -> str:
    lines = [f"| {partition} scheme | ndcg@10 | recall@10 | MB moved | MB x distance | simulated s | "
             "steps to 95% of central |", "|---|---|---|---|---|---|---|"]
    nan = {"mean": float("nan")}
    for name in SCHEMES:
        k = f"{dataset}.{partition}.{name}"
        if f"{k}.ndcg@10" not in keys:
            continue
        n, r, b, bd, s = (keys.get(f"{k}.{m}", nan) for m in METRICS)
        lines.append(f"| {name} | {n['mean']:.4f} +- {n['std']:.4f} | {r['mean']:.4f} +- {r['std']:.4f} | "
                     f"{b['mean'] / 1e6:.1f} | {bd['mean'] / 1e6:.1f} | {s['mean']:.1f} | "
                     f"{keys.get(f'{k}.rounds_to_target', '-')} |")
    return "\n".join(lines)


#: x axes of the plot: curve key, label, scale
AXES = (("step", "local steps per device", 1.0), ("bytes", "MB moved", 1e-6),
        ("byte_distance", "MB x link length moved", 1e-6), ("sim_s", "simulated seconds", 1.0))


def plot(result: dict[str, Any], path: Path) -> None:
    """ndcg@10 (mean over seeds) of each scheme against local steps, bytes moved, byte-distance and the simulated
    clock: one row per partition, one column per axis (axes a results file lacks are left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = result["settings"].get("partitions", ["noniid", "iid"])
    tab = plt.get_cmap("tab20").colors
    colors = tab[::2] + tab[1::2]  # 20 colours, the 10 strong ones first: one per scheme
    first = next(iter(result["curves"].values()))[0]
    axes_used = [a for a in AXES if a[0] in first]
    fig, axes = plt.subplots(len(parts), len(axes_used), figsize=(5 * len(axes_used), 3.8 * len(parts)),
                             squeeze=False)
    for row, part in zip(axes, parts):
        for ax, (key, label, scale) in zip(row, axes_used):
            for i, name in enumerate(SCHEMES):
                runs = [c for k, c in result["curves"].items() if k.split(".", 1)[1] == f"{part}.{name}"]
                if not runs or (key != "step" and (name in ("central", "local") or name.endswith("_fault"))):
                    continue  # the cost panels: the schemes that exchange models, without faults
                x = np.mean([[p[key] * scale for p in c] for c in runs], axis=0)
                y = np.mean([[p["ndcg@10"] for p in c] for c in runs], axis=0)
                ax.plot(x, y, marker="o", markersize=3, label=name, color=colors[i],
                        linestyle="--" if name == "central" else "-")
            ax.set(title=f"{result.get('dataset', 'simulated')} {part}: {result['settings']['devices']} devices",
                   xlabel=label + (" (mean over seeds)" if key != "step" else ""), ylabel="test ndcg@10")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def merge(files: list[Path], out: Path | None) -> None:
    """One results file from several of the same settings and different seeds, schemes or partitions (e.g. run
    as parallel processes): the curves joined, the keys summarised again over all seeds."""
    from onerec.io import read_json

    parts = [read_json(f) for f in files]
    first = parts[0]
    def same(p: dict[str, Any]) -> dict[str, Any]:  # what must agree (files may hold other schemes or partitions)
        # a file from before a setting existed ran with its default (LATER_SETTINGS)
        return {k: p.get(k) if k != "settings" else {**LATER_SETTINGS, **p[k], "schemes": None, "partitions": None}
                for k in ("dataset", "split", "model", "settings")}

    for f, p in zip(files[1:], parts[1:]):
        if same(p) != same(first):
            raise SystemExit(f"cannot merge {f} with {files[0]}: dataset, split, model or settings differ")
    curves = {k: c for p in parts for k, c in p["curves"].items()}
    seeds = sorted({int(k.split(".")[0].removeprefix("seed")) for k in curves})
    per_seed = [{k.split(".", 1)[1]: {"curve": c, "final": c[-1]} for k, c in curves.items()
                 if k.split(".")[0] == f"seed{s}"} for s in seeds]
    keys = summarise(per_seed, first.get("dataset", "simulated"))
    schemes = [n for n in SCHEMES if any(n in p["settings"].get("schemes", SCHEMES) for p in parts)]
    first["settings"]["schemes"] = schemes
    first["settings"]["partitions"] = [q for q in ("noniid", "iid")
                                       if any(q in p["settings"].get("partitions", []) for p in parts)]
    result = {**first, "command": " ; ".join(p["command"] for p in parts) + " ; then --merge",
              "seconds": sum(p["seconds"] for p in parts), "seeds": seeds, "keys": keys, "curves": curves}
    stem = "edge" if first.get("dataset", "simulated") == "simulated" else f"edge-{first['dataset']}"
    out = out or RESULTS / f"{stem}.json"
    write_json(out, result)
    for part in first["settings"]["partitions"]:
        print(table(keys, part, first.get("dataset", "simulated")))
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--clusters", type=int, default=6)
    ap.add_argument("--partitions", nargs="+", default=["noniid", "iid"], choices=["noniid", "iid"])
    ap.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    ap.add_argument("--dataset", default="simulated", choices=["simulated", "beauty"],
                    help="beauty: Amazon 2014 Beauty from --datasets (users clustered by their items' category)")
    ap.add_argument("--datasets", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"),
                    help="folder holding amazon2014_s3rec/ and amazon2014_text/")
    ap.add_argument("--model", default="sasrec", choices=["sasrec", "generator"],
                    help="generator: the --preset generator on every device (simulated world only)")
    ap.add_argument("--preset", default="tiny", help="the generator's preset (data and tokenizer stages too)")
    ap.add_argument("--workdir", default="runs/edge-bench", help="run folders of the generator's data and IDs")
    ap.add_argument("--lr", type=float, default=None, help="local learning rate (default: EdgeSettings.lr)")
    ap.add_argument("--optimizer", default="adam", choices=["adam", "sgd"],
                    help="each device's optimizer (and centralised training's): adam, or plain sgd as FedAvg")
    ap.add_argument("--server-lr", type=float, default=None,
                    help="Adam at the top of every tree (E-Tree's root, FedAvg's server) with this rate (FedAdam)")
    ap.add_argument("--group-lr", type=float, default=None,
                    help="Adam at every E-Tree aggregator below the root with this rate (hierarchical FedAdam)")
    ap.add_argument("--split", default="test", choices=["test", "valid"],
                    help="the split scored (choose settings on valid, report test)")
    ap.add_argument("--quick", action="store_true", help="1 seed, 20 devices, 40 local steps")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--plot-from", type=Path, default=None, help="only draw the plot of a results file")
    ap.add_argument("--plot-to", type=Path, default=Path("docs/benchmarks/edge.png"), help="where --plot-from draws")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="join results files of single seeds (same settings, run apart) into --out")
    args = ap.parse_args()
    if args.merge:
        merge(args.merge, args.out)
        return
    if args.plot_from is not None:
        from onerec.io import read_json

        plot(read_json(args.plot_from), args.plot_to)
        return
    if args.quick:
        args.seeds, args.devices, args.steps = [0], 20, 40
    if args.model == "generator" and args.dataset != "simulated":
        ap.error("--model generator runs on the simulated world only")
    torch.set_num_threads(1)
    t0 = time.monotonic()
    per_seed = [one_seed(s, args) for s in args.seeds]
    keys = summarise(per_seed, args.dataset)
    result = {
        "command": "PYTHONPATH=src python benchmarks/edge.py " + " ".join(sys.argv[1:]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(note="torch.set_num_threads(1); the 2 cores shared with other engineers' jobs"),
        "seconds": time.monotonic() - t0,
        "dataset": args.dataset, "split": args.split,
        "world": dataclasses.asdict(WORLD) if args.dataset == "simulated" else None,
        "model": dataclasses.asdict(MODEL) if args.model == "sasrec" else
        {"generator": args.preset, **dataclasses.asdict(_CACHE["spec"].model)},
        "settings": {"devices": args.devices, "partitions": args.partitions, "steps": args.steps, "alpha": args.alpha,
                     "clusters": args.clusters, "schemes": args.schemes,
                     **{k: v for k, v in dataclasses.asdict(edge_settings(args)).items()
                        if k not in ("local_steps", "seed", "eval_every")}},
        "keys": keys,
        "curves": {f"seed{s}.{k}": run["curve"] for s, runs in zip(args.seeds, per_seed) for k, run in runs.items()},
    }
    stem = "edge" if args.dataset == "simulated" else f"edge-{args.dataset}"
    stem += "-generator" if args.model == "generator" else ""
    out = args.out or RESULTS / (f"{stem}.quick.json" if args.quick else f"{stem}.json")
    write_json(out, result)
    for part in args.partitions:
        print(table(keys, part, args.dataset))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
