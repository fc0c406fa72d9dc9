"""``onerec edge RUN``: the edge schemes of ``edge.schemes`` on the run's data, SASRec or the run's generator on
every device (``edge.model``) -> RUN/edge/metrics.json.

Two modes, one schedule (:func:`onerec.edge.simulate.schedule`): one process simulates every device
(:mod:`onerec.edge.simulate`), or, under ``torchrun --nproc_per_node=N -m onerec edge RUN edge.n_devices=N``, each
device is a process (:mod:`onerec.edge.distributed`; centralised training, not a device scheme, is skipped there).
They give the same numbers up to rounding when training draws nothing at random (dropout 0)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from onerec.config import EdgeConfig, RunConfig
from onerec.edge.devices import partition_dirichlet, partition_iid, world_clusters
from onerec.edge.simulate import SCHEMES, EdgeSettings, GeneratorSpec, device_data, make_groups, run_scheme
from onerec.edge.tree import _check_periods
from onerec.errors import ConfigError, DataError


def settings_from(cfg: RunConfig) -> EdgeSettings:
    """The simulation settings of a run's ``edge`` section (``edge.lr`` null: 1e-2 for SASRec, ``train.lr`` for the
    generator)."""
    ecfg = cfg.edge
    unknown = [s for s in ecfg.schemes if s not in SCHEMES]
    if unknown or not ecfg.schemes:
        raise ConfigError(f"edge.schemes={ecfg.schemes}: unknown or none ({', '.join(unknown) or 'empty'}). "
                          f"Fix: choose among {', '.join(SCHEMES)}")
    _check_periods(list(ecfg.periods))
    lr = ecfg.lr if ecfg.lr is not None else cfg.train.lr if ecfg.model == "generator" else EdgeSettings.lr
    return EdgeSettings(local_steps=ecfg.local_steps, batch_size=ecfg.batch_size, lr=lr, optimizer=ecfg.optimizer,
                        server_lr=ecfg.server_lr, group_lr=ecfg.group_lr,
                        group_size=ecfg.group_size, public_nodes=ecfg.public_nodes, fanout=list(ecfg.fanout),
                        periods=list(ecfg.periods),
                        grouping=ecfg.grouping, kma_balance=ecfg.kma_balance, gossip_peers=ecfg.gossip_peers,
                        eval_every=ecfg.eval_every, step_ms=ecfg.step_ms, seed=ecfg.seed)


def generator_spec(run: Path, cfg: RunConfig, splits: dict[str, Any] | None = None, *,
                   n_items: int | None = None) -> GeneratorSpec:
    """The generator of ``cfg.model`` for every device, on the run's semantic IDs (RUN/tokenizer), with the
    run's featurizer and the training examples ``cfg.train.objective`` asks for.

    Args:
        splits: the run's splits when the caller has them loaded (the succession pathway reads the train split).
        n_items: the run's item count, when known: semantic IDs for another count are an error.
    """
    from onerec.io import read_json
    from onerec.pipeline import load_codes, make_featurizer, train_examples
    from onerec.rundir import command

    folder = Path(run) / "tokenizer"
    if not (folder / "metrics.json").exists():
        raise DataError("edge.model=generator trains the run's generator on its semantic IDs, and this run has no "
                        "tokenizer stage", path=str(folder),
                        fix=f"run `{command('tokenizer', run)}` first, or use edge.model=sasrec")
    codes = load_codes(run)
    if n_items is not None and len(codes) != n_items:
        raise DataError(f"the semantic IDs cover {len(codes)} items and the run's data {n_items}",
                        path=str(folder), fix=f"run `{command('tokenizer', run)}` again on this data")
    feat = make_featurizer(run, cfg.model, codes, splits=splits)
    return GeneratorSpec(cfg.model, codes, read_json(folder / "metrics.json")["codebook_sizes"],
                         lambda t: train_examples(t, feat, cfg), feat, cfg.train)


def _device_schemes(ecfg: EdgeConfig, world: int) -> tuple[list[str], dict[str, str]]:
    """The schemes that run (and those skipped, with why) when ``world`` processes are the devices."""
    if world == 1:
        return list(ecfg.schemes), {}
    from onerec.edge.distributed import CENTRAL, check_world

    check_world(ecfg.n_devices, world)
    schemes = [s for s in ecfg.schemes if s != "central"]
    if not schemes:
        raise ConfigError(f"edge.schemes={ecfg.schemes}: {CENTRAL}. Fix: run it in one process (`onerec edge RUN` "
                          "without torchrun), or add device schemes (etree, fedavg, gossip, local)")
    return schemes, ({"central": CENTRAL} if "central" in ecfg.schemes else {})


def stage_edge(run: Path, cfg: RunConfig) -> dict[str, Any]:
    """Partition the run's users over ``edge.n_devices`` devices and run every scheme, with ``edge.model`` on every
    device: in one process, or under torchrun one device a process (rank 0 writes RUN/edge).

    Returns:
        ``{"model": "sasrec" | "generator", "model_config": {...}, "schemes": {name: {"final": ...,
        "curve": [...], "model_bytes": ...}}, "settings": {...}, "split": ..., "mode": "simulation" | "processes"}``
        (+ ``"skipped": {scheme: why}`` when torchrun skipped centralised training).
    """
    from onerec.data.schema import FILES
    from onerec.data.simulator import WORLD_DIR, World
    from onerec.data.splits import load_splits
    from onerec.io import read_parquet, write_json
    from onerec.pipeline import log, save_config
    from onerec.rundir import staged
    from onerec.threads import set_threads
    from onerec.train.distributed import launched_world, process_group

    ecfg, run = cfg.edge, Path(run)
    settings = settings_from(cfg)
    world = launched_world()
    schemes, skipped = _device_schemes(ecfg, world)
    split_dir, items_path = run / "data" / "split", run / "data" / FILES["items"]
    if not split_dir.exists() or not items_path.exists():
        raise DataError("the run has no data split", path=str(split_dir), fix=f"run `onerec data --out {run}` first")
    n_items = read_parquet(items_path).num_rows
    splits = load_splits(split_dir, n_items=n_items)
    spec = generator_spec(run, cfg, splits, n_items=n_items) if ecfg.model == "generator" else None
    user_ids = splits["train"]["user_id"].to_numpy()
    n_users = int(max(user_ids.max(), splits["test"]["user_id"].to_numpy().max())) + 1
    if ecfg.partition == "noniid":
        world_dir = run / "data" / WORLD_DIR
        if not (world_dir / "world.json").exists():
            raise DataError("edge.partition=noniid clusters users by the simulated world's interests, and this run "
                            "has no simulated world", path=str(world_dir),
                            fix="use edge.partition=iid, or a simulated run (data.source=simulate)")
        labels = world_clusters(World.load(world_dir).interest, ecfg.n_clusters)
        devices = partition_dirichlet(labels, ecfg.n_devices, alpha=ecfg.alpha, min_users=ecfg.min_users,
                                      seed=ecfg.seed)
    else:
        devices = partition_iid(n_users, ecfg.n_devices, seed=ecfg.seed)
    set_threads(cfg.train.threads)
    model = spec if spec is not None else cfg.eval.sasrec
    data = device_data(devices, splits["train"], splits[cfg.eval.split], cfg.eval.sasrec.max_len, spec)
    result: dict[str, Any] = {"model": ecfg.model,
                              "model_config": dataclasses.asdict(cfg.model if spec is not None else cfg.eval.sasrec),
                              "schemes": {}, "settings": {**dataclasses.asdict(ecfg), "lr": settings.lr},
                              "split": cfg.eval.split, "mode": "simulation" if world == 1 else "processes"}
    if skipped:
        result["skipped"] = skipped
    with process_group("cpu", recovery="Nothing was written: run the same command again.") as d:
        if d.main:
            for scheme, why in skipped.items():
                log(f"note: edge scheme {scheme} skipped under torchrun: {why} (`onerec edge RUN` runs it)")
        if world == 1:
            train, grouping = run_scheme, make_groups
        else:  # rank d trains device d; KMA's signatures are gathered from the ranks
            from onerec.edge.distributed import rank_groups, train_rank

            train, grouping = train_rank, rank_groups
        groups = grouping(devices, data, n_items, model, settings) if "etree" in schemes else None
        for scheme in schemes:
            out = train(scheme, devices, data, n_items, model, settings, groups=groups)
            result["schemes"][scheme] = {k: out[k] for k in ("final", "curve", "model_bytes")}
    if d.main:
        with staged(run, "edge") as folder:
            write_json(folder / "metrics.json", result)
            save_config(folder, cfg)
        save_config(run, cfg)
    return result
