"""``onerec edge RUN``: the edge schemes of ``edge.schemes`` on the run's data -> RUN/edge/metrics.json."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from onerec.config import EdgeConfig, RunConfig
from onerec.edge.devices import partition_dirichlet, partition_iid, world_clusters
from onerec.edge.simulate import SCHEMES, EdgeSettings, device_data, make_groups, run_scheme
from onerec.edge.tree import _check_periods
from onerec.errors import ConfigError, DataError


def settings_from(ecfg: EdgeConfig) -> EdgeSettings:
    """The simulation settings of an ``edge`` config section."""
    unknown = [s for s in ecfg.schemes if s not in SCHEMES]
    if unknown or not ecfg.schemes:
        raise ConfigError(f"edge.schemes={ecfg.schemes}: unknown or none ({', '.join(unknown) or 'empty'}). "
                          f"Fix: choose among {', '.join(SCHEMES)}")
    _check_periods(list(ecfg.periods))
    return EdgeSettings(local_steps=ecfg.local_steps, batch_size=ecfg.batch_size, lr=ecfg.lr,
                        group_size=ecfg.group_size, fanout=list(ecfg.fanout), periods=list(ecfg.periods),
                        grouping=ecfg.grouping, kma_balance=ecfg.kma_balance, gossip_peers=ecfg.gossip_peers,
                        eval_every=ecfg.eval_every, step_ms=ecfg.step_ms, seed=ecfg.seed)


def stage_edge(run: Path, cfg: RunConfig) -> dict[str, Any]:
    """Partition the run's users over ``edge.n_devices`` devices and run every scheme (single process).

    Returns:
        ``{"schemes": {name: {"final": ..., "curve": [...], "model_bytes": ...}}, "settings": {...}}``.
    """
    from onerec.data.schema import FILES
    from onerec.data.simulator import WORLD_DIR, World
    from onerec.data.splits import load_splits
    from onerec.io import read_parquet, write_json
    from onerec.pipeline import save_config
    from onerec.rundir import staged
    from onerec.threads import set_threads

    ecfg, run = cfg.edge, Path(run)
    settings = settings_from(ecfg)
    split_dir, items_path = run / "data" / "split", run / "data" / FILES["items"]
    if not split_dir.exists() or not items_path.exists():
        raise DataError("the run has no data split", path=str(split_dir), fix=f"run `onerec data --out {run}` first")
    n_items = read_parquet(items_path).num_rows
    splits = load_splits(split_dir, n_items=n_items)
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
    model = cfg.eval.sasrec
    data = device_data(devices, splits["train"], splits[cfg.eval.split], model.max_len)
    groups = make_groups(devices, data, n_items, model, settings) if "etree" in ecfg.schemes else None
    result: dict[str, Any] = {"schemes": {}, "settings": dataclasses.asdict(ecfg), "split": cfg.eval.split}
    for scheme in ecfg.schemes:
        out = run_scheme(scheme, devices, data, n_items, model, settings, groups=groups)
        result["schemes"][scheme] = {k: out[k] for k in ("final", "curve", "model_bytes")}
    with staged(run, "edge") as folder:
        write_json(folder / "metrics.json", result)
        save_config(folder, cfg)
    save_config(run, cfg)
    return result
