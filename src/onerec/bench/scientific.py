"""``onerec bench scientific``: is our tokenizer competitive with published semantic-ID indexes?

Amazon 2018 Industrial & Scientific in the LC-Rec layout (``amazon2018_scientific_lcrec/``) has
real item text (title, description, brand, categories) and, in ``indexes/``, ten published
semantic-ID indexes (``<name>.index.json``: ``{"<item id>": ["<a_12>", "<b_7>", ...]}``, one
token per level; ``*_zcr`` are collision-free, ``*_native`` may give two items the same ID).

Every index -- ours (item text -> default content backend -> residual k-means, the run's
``tokenizer.*``) and each published one -- is trained and scored with the *same* generator,
training budget, seed and protocol (leave-one-out, history 20, full ranking, valid-only model
selection), so only the item IDs differ. A published index whose IDs collide gets the same
extra collision level as ours (:func:`onerec.tokenizer.add_unique_level`).
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

from onerec.bench.amazon import (
    METRICS,
    PROTOCOL_HISTORY,
    check_protocol,
    check_resumable,
    config_differences,
    config_value,
    mean_std,
    metric_cells,
    pooling_differences,
    prepared_data,
    seed_config,
    semantic_ids,
    train_onerec,
)
from onerec.bench.machine import machine_info, record_machines
from onerec.config import RunConfig, load_config, to_dict
from onerec.errors import ConfigError, DataError
from onerec.io import read_parquet, write_json
from onerec.threads import set_threads
from onerec.tokenizer.published import load_index

FOLDER = "amazon2018_scientific_lcrec"


def scientific_config(datasets: str | Path, *, preset: str = "amazon",
                      overrides: tuple[str, ...] | list[str] = ()) -> RunConfig:
    folder = Path(datasets) / FOLDER
    if not (folder / "Scientific.inter.json").is_file():
        raise DataError("Scientific.inter.json not found", path=str(folder),
                        fix="pass --datasets pointing at the folder that holds amazon2018_scientific_lcrec/")
    base = ["data.source=lcrec", f"data.path={folder}", "data.name=Scientific",
            "content.text_fields=[title,brand,category,text]", f"model.max_history={PROTOCOL_HISTORY}",
            f"eval.sasrec.max_len={PROTOCOL_HISTORY}",
            # the tokenizer comparison reads our IDs from content (+ the collaborative alignment), as every
            # figure in docs/BENCHMARKS.md was made; the `amazon` preset's per-item alignment token is an
            # override here (content.alignment.id_token=true): on Scientific it scored 5.5% lower best valid
            # NDCG@10 (30 epochs, seed 0; docs/benchmarks/ablations.md, "Not on Scientific")
            "content.alignment.id_token=false"]
    return load_config(preset=preset, overrides=[*base, *overrides])


def run_scientific(datasets: str | Path, out: str | Path, *, indexes: list[str], seeds: list[int],
                   preset: str = "amazon", overrides: tuple[str, ...] | list[str] = (),
                   results: str | Path | None = None, command: str = "", note: str = "", resume: bool = False,
                   log=print) -> dict[str, Any]:
    """Train and score the same generator on each index; write ``results`` when given.

    Layout: ``OUT/data-run/`` holds the data, ``OUT/<index>-seed<s>/`` one run directory per index and
    seed. ``resume``: continue the runs already in ``OUT`` (made by the same configuration): keep the
    data and our semantic IDs, and continue each generator from its latest checkpoint, as
    ``bench amazon --resume`` does."""
    from onerec.data.splits import load_splits
    from onerec.pipeline import load_codes, save_index_codes
    from onerec.rundir import staged
    from onerec.train.loop import resolve_device

    if not indexes or not seeds:
        raise ConfigError("give at least one index and one seed")
    cfg = scientific_config(datasets, preset=preset, overrides=overrides)
    index_dir = Path(datasets) / FOLDER / "indexes"
    out = Path(out)
    base = out / "data-run"
    t0 = time.perf_counter()
    summary = prepared_data(base, cfg, progress=True, resume=resume)
    check_protocol(base, cfg)
    raw_ids = [str(r) for r in read_parquet(base / "data" / "items.parquet")["raw_id"].to_pylist()]
    log(f"Scientific: {summary['users']} users, {summary['items']} items, {summary['interactions']} interactions")
    device = resolve_device(cfg.train.device)
    set_threads(cfg.train.threads)
    per: dict[str, list[dict[str, Any]]] = {}
    for name in indexes:
        for seed in seeds:
            scfg = seed_config(cfg, seed)
            run = out / f"{name}-seed{seed}"
            if resume:
                check_resumable(run, scfg)
            run.mkdir(parents=True, exist_ok=True)
            if not (run / "data").exists():
                (run / "data").symlink_to((base / "data").resolve(), target_is_directory=True)
            t1 = time.perf_counter()
            if name == "ours":
                tok = semantic_ids(run, scfg, resume=resume)
            else:
                with staged(run, "tokenizer") as folder:
                    tok = save_index_codes(folder, load_index(index_dir / f"{name}.index.json", raw_ids),
                                           {"index": name})
            stats = {k: v for k, v in tok.items() if not isinstance(v, (list, dict))}
            stats["codebook_sizes"] = tok["codebook_sizes"]
            codes = load_codes(run)
            check_protocol(run, scfg, codes)
            prefix = f"  {name} seed {seed}: "
            splits = load_splits(run / "data" / "split", n_items=len(codes))
            metrics, info = train_onerec(run, scfg, codes, splits["test"], device, resume=resume,
                                         log=lambda line, prefix=prefix: log(prefix + line.strip()))
            row = {"seed": seed, **{m: metrics[m] for m in METRICS}, **info, "codes": stats,
                   "seconds": round(time.perf_counter() - t1, 1)}
            per.setdefault(name, []).append(row)
            log(f"  {name} seed {seed}: " + " ".join(f"{m} {row[m]:.4f}" for m in METRICS)
                + f"  (collision rate {stats.get('collision_rate', 0):.3f}, {row['seconds']:.0f}s)")
    table = {name: summarise(rows) for name, rows in per.items()}
    result = {"benchmark": "amazon2018-scientific-indexes", "date": dt.datetime.now(dt.timezone.utc).isoformat(
        timespec="seconds"), "command": command, "note": note, "machine": machine_info(), "seeds": list(seeds),
        "indexes": table, "dataset": summary, "seconds": round(time.perf_counter() - t0, 1), "config": to_dict(cfg)}
    if results is not None:
        write_json(results, result)
    return result


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One index's table entry: mean and (sample) std over its per-seed rows, and the rows."""
    entry = mean_std(rows)
    entry["per_seed"] = rows
    return entry


def merge_scientific(parts: list[dict[str, Any]], allow: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """One results dict from several ``bench scientific`` files (indexes or seeds run in separate
    processes). An index's rows from files that ran one configuration (apart from the seed and the
    fields in ``allow``) are pooled, and its mean and spread recomputed; a seed may appear once per
    index. A file whose config differs from the first file's in other fields keeps its rows apart,
    under the index name followed by the differing fields (``ours (content.align=False)``), with
    those fields' values in the entry's ``config_differences``."""
    if not parts:
        raise ConfigError("nothing to merge")
    for p in parts:
        if p.get("benchmark") != "amazon2018-scientific-indexes":
            raise ConfigError(f"cannot merge a '{p.get('benchmark')}' results file with Scientific index results")
    base = parts[0].get("config") or {}
    groups: dict[str, dict[str, Any]] = {}  # key -> rows, source files and the fields that set it apart
    for p in parts:
        cfg = p.get("config") or {}
        differ = {k: config_value(cfg, k) for k in config_differences(base, cfg)
                  if k != "train.seed" and k not in allow}
        suffix = f" ({', '.join(f'{k}={v}' for k, v in differ.items())})" if differ else ""
        for name, entry in p["indexes"].items():
            key = name + suffix
            group = groups.setdefault(key, {"rows": [], "sources": [], "differ": differ})
            seen = {r["seed"] for r in group["rows"]}
            for r in entry["per_seed"]:
                if r["seed"] in seen:
                    raise ConfigError(f"seed {r['seed']} of index '{key}' appears in two results files: merge each "
                                      f"seed once")
            group["rows"].extend(entry["per_seed"])
            group["sources"].append(p)
    table = {}
    for key, group in groups.items():
        table[key] = summarise(sorted(group["rows"], key=lambda r: r["seed"]))
        if group["differ"]:
            table[key]["config_differences"] = group["differ"]
        allowed = pooling_differences(group["sources"], allow, what="an index's seeds")
        if allowed:
            table[key]["config_pooled_over"] = allowed
    out = dict(parts[0])
    out["indexes"] = table
    out["seeds"] = sorted({s for p in parts for s in p["seeds"]})
    out["seconds"] = round(sum(p["seconds"] for p in parts), 1)
    out["date"] = max(p["date"] for p in parts)
    out["command"] = " && ".join(p["command"] for p in parts if p.get("command"))
    out["note"] = " | ".join(f"{', '.join(p['indexes'])} seeds {p['seeds']}: {p['note']}" for p in parts
                             if p.get("note"))
    record_machines(out, parts, lambda p: {"indexes": list(p["indexes"]), "seeds": p["seeds"]})
    return out


def format_table(result: dict[str, Any]) -> str:
    lines = ["| item IDs | R@5 | N@5 | R@10 | N@10 | collision rate | seeds |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, e in result["indexes"].items():
        coll = e["per_seed"][0]["codes"].get("collision_rate", 0.0)
        lines.append(f"| {name} | " + " | ".join(metric_cells(e)) + f" | {coll:.3f} | {len(e['per_seed'])} |")
    return "\n".join(lines)
