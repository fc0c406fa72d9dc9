"""``onerec bench amazon``: the TIGER protocol on Amazon 2014 Beauty / Sports / Toys, with the
published generative recommenders beside our rows.

Protocol (TIGER, arXiv 2305.05065, Sec. 4.1, and the papers that quote it):

* data: the S3Rec 5-core files ``amazon2014_s3rec/<Cat>.txt`` (one chronological line per user);
* split: leave-one-out per user: last item = test target, second to last = valid target, the
  rest = train (:func:`onerec.data.splits.leave_one_out`);
* history: the 20 most recent items before the target (``model.max_history`` for onerec,
  ``eval.sasrec.max_len`` for SASRec; both must equal ``--max-history``);
* full ranking over every item of the catalogue; Recall@5/10 and NDCG@5/10 (one target, so
  Recall@K is the hit rate), means over all users (:mod:`onerec.eval.harness`);
* model selection and early stopping on the valid split only; the test split is scored once,
  after training.

:func:`check_protocol` verifies the split and the truncation on the written run directory and
records what it checked in the results file. Item content: the S3Rec attribute ids (category
and brand, anonymous ids, as tokens ``attr:<id>``) and, where ``amazon2014_text/`` has the
category (Beauty, Toys), the title and first category path, all embedded by the default content
backend (TF-IDF + SVD). Each seed re-fits the tokenizer (k-means initialisation), the generator
and both SASRec variants.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from onerec.bench.machine import machine_info, record_machines
from onerec.config import RunConfig, load_config, to_dict
from onerec.config import config_differences as _config_differences
from onerec.errors import ConfigError, DataError
from onerec.io import read_json, read_yaml, write_json
from onerec.threads import set_threads

METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")
PROTOCOL_HISTORY = 20
MODELS = ("onerec", "onerec_prior", "sasrec_ce", "sasrec_bce", "transitions")

# category flag -> (S3Rec file name, amazon2014_text file prefix or None)
CATEGORIES: dict[str, tuple[str, str | None]] = {
    "beauty": ("Beauty", "Beauty"),
    "sports": ("Sports_and_Outdoors", None),
    "toys": ("Toys_and_Games", "Toys"),
}

# /work/shared/design/PAPERS.md, "Published results (Amazon 2014, TIGER protocol)":
# Recall@5, NDCG@5, Recall@10, NDCG@10.
PUBLISHED: dict[str, dict[str, tuple[float, ...]]] = {
    "beauty": {
        "SASRec (BCE, as quoted by TIGER)": (.0387, .0249, .0605, .0318),
        "TIGER": (.0454, .0321, .0648, .0384),
        "ActionPiece": (.0511, .0340, .0775, .0424),
        "RPG (history 50)": (.0550, .0381, .0809, .0464),
    },
    "sports": {
        "SASRec (BCE, as quoted by TIGER)": (.0233, .0154, .0350, .0192),
        "TIGER": (.0264, .0181, .0400, .0225),
        "ActionPiece": (.0316, .0205, .0500, .0264),
        "RPG (history 50)": (.0314, .0216, .0463, .0263),
    },
    "toys": {
        "SASRec (BCE, as quoted by TIGER)": (.0463, .0306, .0675, .0374),
        "TIGER": (.0521, .0371, .0712, .0432),
        "RPG (history 50)": (.0592, .0401, .0869, .0490),
    },
}


def result_key(model: str) -> str:
    """Name of a model in the results file: ``sasrec_ce`` -> ``sasrec-ce``."""
    return model.replace("_", "-")


# -------------------------------------------------------------------------- config
def bench_config(category: str, datasets: str | Path, *, preset: str = "amazon", config_file: str | None = None,
                 overrides: tuple[str, ...] | list[str] = (), text: bool = True,
                 max_history: int = PROTOCOL_HISTORY) -> RunConfig:
    """The run config of one category: the preset, then the dataset paths, then ``overrides``."""
    if category not in CATEGORIES:
        raise ConfigError(f"unknown category '{category}'; choose one of {', '.join(CATEGORIES)}")
    name, text_prefix = CATEGORIES[category]
    datasets = Path(datasets)
    s3rec = datasets / "amazon2014_s3rec"
    if not (s3rec / f"{name}.txt").is_file():
        raise DataError(f"{name}.txt not found", path=str(s3rec),
                        fix="pass --datasets pointing at the folder that holds amazon2014_s3rec/")
    paths = [f"data.path={s3rec}", f"data.name={name}", f"model.max_history={max_history}",
             f"eval.sasrec.max_len={max_history}"]
    text_dir = datasets / "amazon2014_text"
    # without titles (Sports) the content is the attribute ids alone, identical for most items; the
    # preset's per-item alignment token (content.alignment.id_token) lets interactions separate them
    if text and text_prefix and (text_dir / f"{text_prefix}_items.tsv").is_file():
        paths.append(f"data.options.text_path={text_dir}")
    cfg = load_config(preset=preset, file=config_file, overrides=[*paths, *overrides])
    if cfg.data.source != "amazon2014" or cfg.data.split != "loo":
        raise ConfigError("the TIGER protocol needs data.source=amazon2014 and data.split=loo "
                          f"(got {cfg.data.source}, {cfg.data.split})")
    return cfg


def seed_config(cfg: RunConfig, seed: int) -> RunConfig:
    """``cfg`` with the tokenizer's, generator's and SASRec's random seeds set to ``seed``.

    The collaborative alignment keeps ``content.alignment.seed`` (0 unless set): every results file
    so far was measured that way, so its seeds vary the IDs' k-means and the model, not the aligned
    vectors. Varying it too would change all seeds but 0 of every row, so it waits for a re-run of
    all categories."""
    cfg = dataclasses.replace(cfg)  # shallow: replace the sections we change
    cfg.tokenizer = dataclasses.replace(cfg.tokenizer, seed=seed)
    cfg.train = dataclasses.replace(cfg.train, seed=seed)
    cfg.eval = dataclasses.replace(cfg.eval, sasrec=dataclasses.replace(cfg.eval.sasrec, seed=seed))
    return cfg


# ------------------------------------------------------------------------ protocol
def check_protocol(run: Path, cfg: RunConfig, codes: np.ndarray | None = None, *, sample: int = 2000) -> dict[str, Any]:
    """Verify that RUN/data holds the TIGER protocol exactly; return what was checked.

    * every user of the dataset appears once in each split;
    * train = the sequence without its last two items; valid = (all but the last two -> the
      second to last); test = (all but the last -> the last);
    * onerec and SASRec both see the ``model.max_history`` most recent items (checked on the
      generator's featurized test histories of up to ``sample`` users, longest first);
    * with ``codes``: every item has a distinct semantic ID, so beam search ranks the whole
      catalogue (full ranking).

    Raises:
        DataError: a property of the data that does not hold, named.
        ConfigError: a property of the config that does not hold, named.
    """
    from onerec.data.schema import Dataset
    from onerec.data.splits import Sequences, list_column, load_splits

    if cfg.model.max_history != cfg.eval.sasrec.max_len:
        raise ConfigError(f"model.max_history={cfg.model.max_history} but eval.sasrec.max_len="
                          f"{cfg.eval.sasrec.max_len}: both models must see the same history length")
    ds = Dataset.load(run / "data", validate=False)
    seq = Sequences.from_interactions(ds.interactions, ds.n_users, cfg.data.positive)
    splits = load_splits(run / "data" / "split", n_items=ds.n_items)
    lens = seq.lengths()
    users = np.flatnonzero(lens >= 3)
    where = str(run / "data" / "split")
    for name, table in splits.items():
        got = table["user_id"].to_numpy()
        if not np.array_equal(got, users):
            raise DataError(f"{name} split has {len(got)} users, expected the {len(users)} users with >= 3 items",
                            path=where, fix="rerun the data stage with data.split=loo")
    full = [seq.items[seq.offsets[u]:seq.offsets[u + 1]] for u in users]
    checks = {
        "train": (list_column(splits["train"], "items"), [s[:-2] for s in full]),
        "valid history": (list_column(splits["valid"], "history"), [s[:-2] for s in full]),
        "valid target": (list_column(splits["valid"], "targets"), [s[-2:-1] for s in full]),
        "test history": (list_column(splits["test"], "history"), [s[:-1] for s in full]),
        "test target": (list_column(splits["test"], "targets"), [s[-1:] for s in full]),
    }
    for what, (got, want) in checks.items():
        bad = next((i for i, (g, w) in enumerate(zip(got, want)) if not np.array_equal(g, w)), None)
        if bad is not None:
            raise DataError(f"{what} of user {int(users[bad])} is not leave-one-out", path=where,
                            fix="rerun the data stage with data.split=loo")
    out: dict[str, Any] = {
        "split": "leave-one-out (last = test, second to last = valid, rest = train)",
        "users": len(users), "items": int(ds.n_items), "interactions": int(ds.interactions.num_rows),
        "max_history": cfg.model.max_history, "sasrec_max_len": cfg.eval.sasrec.max_len,
        "ranking": "full (all items)", "selection": "valid split only",
    }
    if cfg.tokenizer.index:
        out.update(_check_index_data(cfg, ds, seq))
    if codes is not None:
        out.update(_check_codes_and_truncation(codes, splits["test"], full, cfg.model.max_history, sample))
    return out


def _check_index_data(cfg: RunConfig, ds: Any, seq: Any) -> dict[str, Any]:
    """``tokenizer.index``: prove that the published index numbers *these* items, through the
    ``<Name>.inter.json`` beside it (LC-Rec layout, ``{user key: [item keys in order]}``): every
    user's sequence, mapped to index keys, must be the file's sequence for that user."""
    from onerec.tokenizer.published import index_keys

    index = Path(cfg.tokenizer.index)
    inter_path = index.with_name(index.name.removesuffix(".index.json") + ".inter.json")
    if not inter_path.is_file():
        raise DataError("a published index is compared only with the interactions file it was made for beside it",
                        path=str(inter_path), fix="put the index's <Name>.inter.json (LC-Rec layout) next to it")
    inter = read_json(inter_path)
    off = cfg.tokenizer.index_offset
    users = index_keys(ds.users["raw_id"].to_pylist(), off)
    items = np.array(index_keys(ds.items["raw_id"].to_pylist(), off))
    if len(inter) != len(users):
        raise DataError(f"{len(inter)} users, but the dataset has {len(users)}", path=str(inter_path),
                        fix="use the index made for this dataset (and the right tokenizer.index_offset)")
    for u, key in enumerate(users):
        want = items[seq.items[seq.offsets[u]:seq.offsets[u + 1]]].tolist()
        if [str(i) for i in inter.get(key, [])] != want:
            raise DataError(f"user '{key}' (our user {u}) has another item sequence there", path=str(inter_path),
                            fix="use the index made for this dataset (and the right tokenizer.index_offset)")
    return {"index": str(index), "index_sequences_checked": len(users)}


def _check_codes_and_truncation(codes: np.ndarray, test: pa.Table, full: list[np.ndarray], h: int,
                                sample: int) -> dict[str, Any]:
    from onerec.features import EvalExamples, HistoryFeaturizer

    codes = np.asarray(codes)
    if len(np.unique(codes, axis=0)) != len(codes):
        raise DataError("two items share a semantic ID, so beam search cannot rank every item",
                        fix="keep tokenizer.unique_level=true")
    lens = np.array([len(s) for s in full])
    rows = np.sort(np.argsort(-lens, kind="stable")[:sample])  # the longest histories exercise truncation
    batch = EvalExamples(test, HistoryFeaturizer(codes, h)).batch(rows)
    for j, r in enumerate(rows):
        want = full[r][:-1][-h:]
        mask = batch["hist_mask"][j].numpy()
        got = batch["hist_codes"][j].numpy()[mask]
        if not np.array_equal(got, codes[want]):
            raise DataError(f"the generator's test history of row {int(r)} is not the {h} most recent items")
    return {"full_ranking_items": len(codes), "history_checked_users": len(rows),
            "longest_history": int(lens.max() - 1)}


# --------------------------------------------------------------------------- runs
# fields a resumed run may change: where and how fast it runs, and how long it may train in all
RESUMABLE_CHANGES = ("train.time_budget_s", "eval.sasrec.time_budget_s", "train.threads", "train.device",
                     "generate.compile",  # how the decode step runs (the same search up to float rounding)
                     # decoding only (onerec_prior's weight; the onerec row ranks by the generator alone)
                     "generate.succession_prior", "generate.succession_pool", "generate.succession_window",
                     "generate.succession_decay")
# where the dataset files lay, not what they hold: results that differ only here may be joined (recorded, not refused)
LOCATION_FIELDS = ("data.path", "data.options.text_path")


def check_resumable(run: Path, cfg: RunConfig) -> None:
    """``--resume``: the run directory must have been made by the same configuration (apart from
    :data:`RESUMABLE_CHANGES`), else its data, IDs and checkpoints would mix two experiments."""
    saved = run / "config.yaml"
    if not saved.is_file():
        return
    differ = [k for k in config_differences(read_yaml(saved), to_dict(cfg)) if k not in RESUMABLE_CHANGES]
    if differ:
        raise ConfigError(f"{run}: cannot resume, the run was made with another config ({', '.join(differ[:5])} "
                          "differ). Fix: resume with the command that started it, or pass a new --out.")


def prepared_data(run: Path, cfg: RunConfig, *, progress: bool = False, resume: bool = False) -> dict[str, Any]:
    """The run's data summary: prepare the data (tables, split), or with ``resume`` keep what a run already
    wrote (``check_protocol`` re-reads and checks it)."""
    from onerec.pipeline import stage_data

    if resume and (run / "data" / "summary.json").is_file():
        return read_json(run / "data" / "summary.json")
    return stage_data(run, cfg, progress=progress)


def semantic_ids(run: Path, cfg: RunConfig, *, progress: bool = False, resume: bool = False) -> dict[str, Any]:
    """The run's tokenizer metrics: tokenize (content vectors -> semantic IDs), or with ``resume`` keep
    the IDs a run already finished (a SASRec behind ``content.collaborative`` continues its fit)."""
    from onerec.pipeline import stage_tokenize

    tok_dir = run / "tokenizer"
    if resume and (tok_dir / "codes.parquet").is_file() and (tok_dir / "metrics.json").is_file():
        return read_json(tok_dir / "metrics.json")
    return stage_tokenize(run, cfg, progress=progress, resume=resume)


def train_onerec(run: Path, cfg: RunConfig, codes: np.ndarray, test: Any, device: torch.device, *,
                 resume: bool = False, progress: bool = False, log=print) -> tuple[dict[str, float], dict[str, Any]]:
    """Train the generator of ``run`` (whose semantic IDs are ``codes``), with ``resume`` from its latest
    checkpoint (model selection included), and score the selected model on ``test`` (full ranking,
    Recall/NDCG@5/10). Returns the metrics and what the results file records of the training."""
    from onerec.eval.harness import evaluate
    from onerec.pipeline import load_recommender, resumable_checkpoint, stage_train

    t0 = time.perf_counter()
    ckpt = resumable_checkpoint(run) if resume else None
    if ckpt is not None:
        log(f"  resuming from {ckpt}")
    summary = stage_train(run, cfg, resume=ckpt is not None, progress=progress, log=None if progress else log)
    # resumed: the training loop's own clock, summed over every part (the lost tail of a killed part,
    # back to its last checkpoint, is not in it)
    train_s = summary["seconds"] if ckpt is not None else time.perf_counter() - t0
    gen = load_recommender(run, cfg, device, codes=codes)
    gen.prior_weight = 0.0  # the generator alone: the succession prior is the onerec_prior row
    metrics = evaluate(gen, test, ks=(5, 10), batch_size=cfg.generate.batch_size)
    info = {"train_seconds": round(train_s, 1), "parameters": summary["parameters"],
            "steps": summary["steps"], "best_epoch": summary.get("best_epoch"),
            "stopped": summary.get("stopped"), "valid_curve": summary.get("valid_curve")}
    if ckpt is not None:
        info["resumed_from_step"] = int(ckpt.name.removeprefix("step-"))
    return metrics, info


def score_with_prior(run: Path, cfg: RunConfig, codes: np.ndarray, splits: dict[str, Any],
                     device: torch.device) -> tuple[dict[str, float], dict[str, Any]]:
    """``onerec_prior``: the run's trained generator with the succession prior at decoding
    (``generate.succession_prior``, :mod:`onerec.generate.generative`), its weight and succession rule chosen on
    the valid split (best NDCG@10 over ``PRIOR_WEIGHTS`` x ``PRIOR_RULES`` of that module, by
    ``GenerativeRecommender.choose_prior``; or the configured prior when its weight is > 0), then the test split
    scored once. Returns the test metrics and what the results file records."""
    from onerec.eval.harness import evaluate
    from onerec.generate.generative import PRIOR_RULES, PRIOR_WEIGHTS
    from onerec.pipeline import load_recommender

    t0 = time.perf_counter()
    g = cfg.generate
    rec = load_recommender(run, cfg, device, codes=codes, splits=splits, prior=True)
    fixed = g.succession_prior > 0
    weights = [g.succession_prior] if fixed else list(PRIOR_WEIGHTS)
    rules = [(g.succession_window, g.succession_decay)] if fixed else list(PRIOR_RULES)
    valid = rec.choose_prior(splits["valid"], weights, rules, "ndcg@10")
    metrics = evaluate(rec, splits["test"], ks=(5, 10), batch_size=g.batch_size)
    grid = {f"window={w},decay={d},weight={x}": round(v, 6) for (w, d, x), v in valid.items()}
    return metrics, {"train_seconds": 0.0, "prior_weight": rec.prior_weight, "prior_window": rec.prior_window,
                     "prior_decay": rec.prior_decay, "prior_pool": rec.prior_pool, "valid_ndcg@10": grid,
                     "selection_seconds": round(time.perf_counter() - t0, 1)}


def run_seed(run: Path, cfg: RunConfig, models: tuple[str, ...] | list[str], *, progress: bool = False,
             resume: bool = False, log=print) -> dict[str, Any]:
    """Tokenize (when onerec is among ``models``), train and score every model of one seed in ``run``
    (whose data/ is already written).

    ``resume``: keep the run's semantic IDs and continue onerec's training from its latest checkpoint
    (model selection included), e.g. after a machine session ended, and the SASRec baselines' from the
    last epoch each finished (``RUN/baselines/<name>/``)."""
    from onerec.baselines import build_baseline
    from onerec.baselines.sasrec import latest_progress
    from onerec.data.splits import load_splits
    from onerec.eval.harness import evaluate
    from onerec.pipeline import load_codes, save_config
    from onerec.train.loop import resolve_device

    device = resolve_device(cfg.train.device)
    set_threads(cfg.train.threads)
    out: dict[str, Any] = {"seed": cfg.train.seed, "models": {}}
    t0 = time.perf_counter()
    if resume:
        check_resumable(run, cfg)
    # this seed's config: the data stage wrote the first seed's folder before the seeds were set, and a
    # SASRec-only run has no stage that would rewrite it (its --resume would then be refused)
    save_config(run, cfg)
    trained = resume and (run / "train" / "metrics.json").is_file()
    if "onerec_prior" in models and "onerec" not in models and not trained:
        raise ConfigError(f"{run}: onerec_prior ranks with the run's trained generator: add onerec to --models, or "
                          "pass --resume on a run whose onerec training has finished")
    if "onerec" in models or "onerec_prior" in models:
        tok = semantic_ids(run, cfg, progress=progress, resume=resume)
        out["tokenizer"] = {k: v for k, v in tok.items() if not isinstance(v, (list, dict))}
        codes = load_codes(run)
    else:  # the SASRec baselines rank item ids: no content vectors or semantic IDs to build
        out["tokenizer"], codes = {"skipped": "no onerec model in this run"}, None
    out["protocol"] = check_protocol(run, cfg, codes)
    splits = load_splits(run / "data" / "split", n_items=out["protocol"]["items"])
    ks = (5, 10)
    for name in models:
        t1 = time.perf_counter()
        if name == "onerec":
            metrics, info = train_onerec(run, cfg, codes, splits["test"], device, resume=resume, progress=progress,
                                         log=log)
        elif name in ("sasrec_ce", "sasrec_bce"):
            rec = build_baseline(name, cfg.eval.sasrec, device=device)
            metric = cfg.eval.sasrec.early_stop_metric
            rec.on_epoch = lambda row, name=name, metric=metric: log(
                f"  seed {cfg.train.seed} {name}: epoch {row['epoch']}, loss {row['loss']:.4f}"
                + (f", valid {metric} {row[f'valid_{metric}']:.4f}" if f"valid_{metric}" in row else ""))
            # the whole training state after every epoch: --resume continues from it
            ckpt_dir = run / "baselines" / name
            done = latest_progress(ckpt_dir) if resume else None
            if done is not None:
                log(f"  resuming {name} from {done}")
            rec.fit(splits["train"], n_items=out["protocol"]["items"], valid=splits["valid"], checkpoint=ckpt_dir,
                    resume=resume)
            # resumed: the epochs' own clocks summed over every part (as onerec's training clock)
            train_s = sum(row["seconds"] for row in rec.train_log) if done is not None else time.perf_counter() - t1
            metrics = evaluate(rec, splits["test"], ks=ks)
            info = {"train_seconds": round(train_s, 1), "epochs": len(rec.train_log), "best_epoch": rec.best_epoch,
                    "parameters": sum(p.numel() for p in rec.model.parameters()),
                    # the same shape as onerec's: selection is visible in the results file
                    "valid_curve": rec.valid_curve}
            if done is not None:
                info["resumed_from_epoch"] = int(done.name.removeprefix("epoch-"))
        elif name == "onerec_prior":  # the trained generator + the succession prior, its weight chosen on valid
            metrics, info = score_with_prior(run, cfg, codes, splits, device)
        elif name == "transitions":  # no training: counts, window and decay chosen on valid
            rec = build_baseline(name)
            rec.fit(splits["train"], n_items=out["protocol"]["items"], valid=splits["valid"])
            train_s = time.perf_counter() - t1
            metrics = evaluate(rec, splits["test"], ks=ks)
            info = {"train_seconds": round(train_s, 1), "window": rec.window, "decay": rec.decay,
                    "valid_ndcg@10": rec.chosen}
        else:
            raise ConfigError(f"unknown model '{name}'; choose from {', '.join(MODELS)}")
        info["seconds"] = round(time.perf_counter() - t1, 1)
        out["models"][name] = {**{m: metrics[m] for m in METRICS}, **info}
        log(f"  seed {cfg.train.seed} {name}: " + " ".join(f"{m} {metrics[m]:.4f}" for m in METRICS)
            + f"  ({info['seconds']:.0f}s)")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def mean_std(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``{metric: mean, ..., "std": {metric: sample std}}`` over per-seed rows (std 0 for one row)."""
    entry: dict[str, Any] = {m: statistics.fmean(r[m] for r in rows) for m in METRICS}
    entry["std"] = {m: (statistics.stdev(r[m] for r in rows) if len(rows) > 1 else 0.0) for m in METRICS}
    return entry


def metric_cells(entry: dict[str, Any]) -> list[str]:
    """Table cells of an entry made by :func:`mean_std`: the mean, ``± std`` when over several seeds."""
    n = len(entry["per_seed"])
    return [f"{entry[m]:.4f}" + (f" ± {entry['std'][m]:.4f}" if n > 1 else "") for m in METRICS]


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and (sample) standard deviation over seeds of each model's metrics."""
    out: dict[str, dict[str, Any]] = {}
    for name in runs[0]["models"]:
        rows = [r["models"][name] for r in runs]
        entry = mean_std(rows)
        entry["per_seed"] = [{"seed": run["seed"], **{m: r[m] for m in METRICS}} for run, r in zip(runs, rows)]
        entry["train_seconds"] = [r["train_seconds"] for r in rows]
        for key in ("parameters", "best_epoch", "stopped", "steps", "epochs"):
            if key in rows[0]:
                entry[key] = [r.get(key) for r in rows] if key != "parameters" else rows[0][key]
        out[result_key(name)] = entry
    return out


def format_table(result: dict[str, Any], category: str) -> str:
    """Our rows (mean ± std over seeds) and the published rows, as a Markdown table."""
    head = "| model | R@5 | N@5 | R@10 | N@10 | seeds |\n|---|---:|---:|---:|---:|---:|"
    lines = [head]
    for name in result["models"]:
        e = result[name]
        lines.append(f"| {name} (ours) | " + " | ".join(metric_cells(e)) + f" | {len(e['per_seed'])} |")
    for name, vals in PUBLISHED.get(category, {}).items():
        lines.append(f"| {name} (published) | " + " | ".join(f"{v:.4f}" for v in vals) + " | - |")
    return "\n".join(lines)


def item_id_rows(cfg: RunConfig, n_items: int, log=print) -> RunConfig:
    """With the item-id behaviour feature, give every item its own embedding row: ``sparse_buckets``
    becomes the next power of two above the item count when it is smaller (ids are hashed into
    ``1 + id % (buckets - 1)``, so fewer rows would make items share an embedding). ``cfg`` itself
    is left as it is."""
    if "item" not in cfg.model.behaviour_features or cfg.model.sparse_buckets - 1 >= n_items:
        return cfg
    rows = 1 << int(n_items).bit_length()
    log(f"  model.sparse_buckets {cfg.model.sparse_buckets} -> {rows}: one item-id row per item ({n_items} items)")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, sparse_buckets=rows))


def command_history(runs: list[Path], command: str, resume: bool) -> list[dict[str, str]]:
    """Every invocation that made the seed runs ``runs``, oldest first, each once (``RUN/commands.json`` per seed:
    a list of {date, command}). A ``--resume`` adds ``command`` to a run's list, a new run starts it: per seed, since
    the seeds of one ``OUT`` are often run by separate invocations. A results file records them all, since the last
    command alone does not say how a resumed run was trained."""
    entry = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": command}
    history: list[dict[str, str]] = []
    for run in runs:
        path = run / "commands.json"
        entries = read_json(path) if resume and path.is_file() else []
        if command:
            entries.append(entry)
            run.mkdir(parents=True, exist_ok=True)
            write_json(path, entries)
        history += [e for e in entries if e not in history]
    return history


def run_amazon(category: str, datasets: str | Path, out: str | Path, *, seeds: list[int],
               models: tuple[str, ...] | list[str] = MODELS, preset: str = "amazon", config_file: str | None = None,
               overrides: tuple[str, ...] | list[str] = (), text: bool = True, max_history: int = PROTOCOL_HISTORY,
               results: str | Path | None = None, command: str = "", note: str = "", progress: bool = False,
               resume: bool = False, log=print) -> dict[str, Any]:
    """The whole benchmark of one category; writes ``results`` (JSON) when given and returns it.

    Layout: ``OUT/seed<s>/`` is a complete run directory per seed (data/ is written once, in
    ``OUT/seed<first>``, and linked from the others). ``resume``: continue the runs already in ``OUT``
    (see :func:`run_seed`).
    """
    if not seeds:
        raise ConfigError("give at least one seed")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ConfigError(f"unknown model '{unknown[0]}'; choose from {', '.join(MODELS)}")
    order = list(models)
    if "onerec" in order and "onerec_prior" in order and order.index("onerec_prior") < order.index("onerec"):
        raise ConfigError("--models: onerec_prior ranks with the generator that onerec trains: list onerec first")
    cfg = bench_config(category, datasets, preset=preset, config_file=config_file, overrides=overrides, text=text,
                       max_history=max_history)
    out = Path(out)
    first = out / f"seed{seeds[0]}"
    t0 = time.perf_counter()
    history = command_history([out / f"seed{s}" for s in seeds], command, resume)
    log(f"== data: {cfg.data.name} ==")
    summary = prepared_data(first, cfg, progress=progress, resume=resume)
    check_protocol(first, cfg)
    log(f"  {summary['users']} users, {summary['items']} items, {summary['interactions']} interactions")
    cfg = item_id_rows(cfg, int(summary["items"]), log)
    runs = []
    for seed in seeds:
        run = out / f"seed{seed}"
        if run != first:
            run.mkdir(parents=True, exist_ok=True)
            link = run / "data"
            if not link.exists():
                link.symlink_to((first / "data").resolve(), target_is_directory=True)
        log(f"== seed {seed} ==")
        runs.append(run_seed(run, seed_config(cfg, seed), models, progress=progress, resume=resume, log=log))
    result: dict[str, Any] = {
        "benchmark": f"amazon-{category}", "category": cfg.data.name,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command, "commands": history, "note": note, "machine": machine_info(), "seeds": list(seeds),
        "models": [result_key(m) for m in models],
        **aggregate(runs),
        "published": {k: dict(zip(METRICS, v)) for k, v in PUBLISHED.get(category, {}).items()},
        "protocol": runs[0]["protocol"], "dataset": summary,
        "tokenizer": [r["tokenizer"] for r in runs],
        "runs": runs, "seconds": round(time.perf_counter() - t0, 1), "config": to_dict(cfg),
    }
    if results is not None:
        write_json(results, result)
    return result


# config sections no benchmark stage reads (serving, the reward model, alignment, exploration, edge training): a
# change of their defaults must not make a run unresumable or two results files unpoolable
UNREAD_SECTIONS = ("serve", "reward", "align", "explore", "edge")


def config_differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the config fields whose values differ between two results files (or run configs), the
    sections in :data:`UNREAD_SECTIONS` left out (:func:`onerec.config.config_differences`)."""
    return _config_differences(a, b, prefix, skip=UNREAD_SECTIONS)


def config_value(config: dict[str, Any], dotted: str) -> Any:
    """The value of a dotted config field (``train.patience``) in a results file's config dict; None
    where the file predates the field."""
    for key in dotted.split("."):
        if not isinstance(config, dict) or key not in config:
            return None
        config = config[key]
    return config


def pooling_differences(parts: list[dict[str, Any]], allow: tuple[str, ...] | list[str] = (),
                        what: str = "seeds") -> dict[str, dict[str, Any]]:
    """Check that the results files in ``parts`` ran one configuration apart from the seed and the
    fields in ``allow``; return, for each allowed field whose value differs, its value per seed
    (``{"train.patience": {"0": 10, "1": 3}}``), which the merged file records."""
    base = parts[0].get("config")
    differing: set[str] = set()
    for p in parts[1:]:
        cfg = p.get("config")
        if (base is None) != (cfg is None):
            differ = ["config (one file has none)"]
        else:
            differ = [k for k in config_differences(base or {}, cfg or {}) if k != "train.seed"]
        bad = [k for k in differ if k not in allow]
        if bad:
            raise ConfigError(f"cannot pool {what} of runs with different configs (apart from train.seed): "
                              f"{', '.join(bad[:5])} differ; rerun with the same overrides, or pass "
                              f"--allow-difference FIELD for a field that provably did not change the result")
        differing |= set(differ)
    return {k: {str(s): config_value(p["config"], k) for p in parts for s in p["seeds"]} for k in sorted(differing)}


def _merge_seeds(parts: list[dict[str, Any]], allow: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """Same models, disjoint seeds -> one result over all of them (see :func:`merge_results`)."""
    seen: set[int] = set()
    for p in parts:
        overlap = seen & set(p["seeds"])
        if overlap:
            raise ConfigError(f"seed {min(overlap)} appears in two results files: merge each seed once")
        seen |= set(p["seeds"])
    allowed = pooling_differences(parts, allow)
    order = sorted(range(len(parts)), key=lambda i: min(parts[i]["seeds"]))
    runs = [r for i in order for r in parts[i]["runs"]]
    out = dict(parts[order[0]])
    out.update(aggregate(runs))
    out["seeds"] = [r["seed"] for r in runs]
    out["runs"] = runs
    out["tokenizer"] = [t for i in order for t in parts[i].get("tokenizer", [])]
    out["seconds"] = sum(p["seconds"] for p in parts)
    out["command"] = " && ".join(parts[i].get("command", "") for i in order if parts[i].get("command"))
    out["commands"] = [c for i in order for c in parts[i].get("commands", [])]
    out["note"] = " | ".join(f"seeds {parts[i]['seeds']}: {parts[i]['note']}" for i in order if parts[i].get("note"))
    if allowed:
        out["config_differences"] = allowed
    record_machines(out, [parts[i] for i in order], _ran)
    return out


def _ran(part: dict[str, Any]) -> dict[str, Any]:
    """What a results file ran: its models and seeds (labels its machine in a merged file)."""
    return {"models": part["models"], "seeds": part["seeds"]}


def load_result(path: str | Path) -> dict[str, Any]:
    return read_json(path)


def merge_results(parts: list[dict[str, Any]], allow: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """One results dict from several files: either runs of different models (e.g. onerec and SASRec
    trained in two processes at once, or apart: model entries side by side, each with its own
    seeds, per-seed runs joined by seed), or runs of the same models over different seeds (seeds
    trained in parallel: the runs are pooled and every model's mean and spread recomputed over all
    seeds; the files' configs must be identical apart from the seed and the fields in ``allow``,
    whose per-seed values the merged file keeps under ``config_differences``)."""
    if not parts:
        raise ConfigError("nothing to merge")
    if len(parts) > 1 and all(p["models"] == parts[0]["models"] for p in parts):
        return _merge_seeds(parts, allow)
    differing = _model_config_differences(parts)
    out = dict(parts[0])
    out["models"] = []
    runs: dict[int, dict[str, Any]] = {}
    for p in parts:
        for name in p["models"]:
            if name in out["models"]:
                raise ConfigError(f"model '{name}' appears in two results files")
            out["models"].append(name)
            out[name] = p[name]
            if p.get("config_differences") and not _joined_differences(p):
                # fields its pooled seeds differ in stay with the model's rows
                out[name] = {**p[name], "config_differences": p["config_differences"]}
        for r in p["runs"]:
            run = runs.setdefault(r["seed"], {**r, "models": {}})
            run["models"].update(r["models"])
    out["seeds"] = sorted(runs)
    out["runs"] = [runs[s] for s in out["seeds"]]
    out["seconds"] = sum(p["seconds"] for p in parts)
    out["command"] = " && ".join(p.get("command", "") for p in parts if p.get("command"))
    out["commands"] = [c for p in parts for c in p.get("commands", [])]
    out["note"] = " | ".join(f"{', '.join(p['models'])}: {p['note']}" for p in parts if p.get("note"))
    out.pop("config_differences", None)
    if differing:
        out["config_differences"] = differing
    record_machines(out, parts, _ran)
    return out


def _joined_differences(part: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-model config differences of a file that is itself a join of models' files (values keyed
    by its model names; a file of pooled seeds keys them by seed)."""
    diffs = part.get("config_differences") or {}
    return {k: v for k, v in diffs.items() if isinstance(v, dict) and v and set(v) <= set(part["models"])}


def _model_config_differences(parts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """For files of different models joined into one: the config fields whose values differ
    between the models, each with its value per model (``{"train.time_budget_s": {"onerec": 6900,
    "sasrec-ce": 2400}}``), so the merged file says how each model's rows were made (it keeps the
    first file's config). A file that is itself such a join contributes each model's own value (from its
    ``config_differences``), so joining again loses nothing. Files over different data (a ``data.*`` field
    other than the dataset's location) or evaluation cut-offs (``eval.ks``) cannot be joined: their rows
    would not be comparable."""
    configs = [p.get("config") or {} for p in parts]
    fields = {k for cfg in configs[1:] for k in config_differences(configs[0], cfg)}
    fields |= {k for p in parts for k in _joined_differences(p)}

    def value(p: dict[str, Any], cfg: dict[str, Any], k: str, name: str) -> Any:
        own = _joined_differences(p).get(k, {})
        return own[name] if name in own else config_value(cfg, k)

    per_model = {k: {name: value(p, cfg, k, name) for p, cfg in zip(parts, configs) for name in p["models"]}
                 for k in sorted(fields)}
    differing = {k: v for k, v in per_model.items() if len({json.dumps(x, sort_keys=True) for x in v.values()}) > 1}
    bad = [k for k in differing if (k.startswith("data.") and k not in LOCATION_FIELDS) or k == "eval.ks"]
    if bad:
        raise ConfigError(f"cannot join results over different data or cut-offs: {', '.join(bad[:5])} differ "
                          f"between the files; rerun the models on the same data")
    return differing
