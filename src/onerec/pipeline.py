"""The pipeline's stages over one run directory, each callable alone (the CLI verbs) or in a row
(``onerec quickstart``).

Run directory layout::

    RUN/config.yaml               the resolved config (every stage rewrites it with its overrides)
    RUN/<stage>/config.yaml       the config that stage ran with; RUN/<stage>/manifest.json: its files' and its
                                  inputs' fingerprints (:mod:`onerec.rundir`: each stage folder is written into
                                  RUN/<stage>.staging/ and swapped in whole when the stage completes)
    RUN/data/                     canonical tables (interactions/items/users.parquet, dataset.json),
                                  split/{train,valid,test}.parquet, summary.json, world/ (simulator)
    RUN/tokenizer/                codebooks + tokenizer.json, codes.parquet (item_id -> semantic ID),
                                  item_vectors.safetensors, metrics.json
    RUN/train/                    model.safetensors + model.json, history.json, checkpoints/
    RUN/eval/                     metrics.json, recommendations.parquet (onerec's top-K per user),
                                  prior.json (``onerec tune-prior``: the succession prior's valid grid)
    RUN/reward/                   pscore.safetensors + pscore.json (P-Score ranker), metrics.json (AUC/GAUC)
    RUN/align/                    model.safetensors + model.json (aligned generator), metrics.json
    RUN/logs/train-<time>/        training scalars to watch live (``train.logger``: scalars.csv or TensorBoard events)
    RUN/metrics.json              {"models": {"onerec": {...}, "popular": {...}, ...}, ...}
    RUN/report.md, RUN/plots/     the human report
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from onerec.config import RunConfig, check_choices, config_differences, config_get, load_config, to_dict
from onerec.data.schema import Dataset, describe_positive, positive_mask
from onerec.data.splits import item_counts, load_splits, make_splits, save_splits
from onerec.errors import ConfigError, DataError
from onerec.io import read_json, read_parquet, write_json, write_parquet, write_yaml
from onerec.rundir import check_inputs, command, staged, staging_folder
from onerec.threads import set_threads


def log(msg: str) -> None:
    print(msg, flush=True)


# keys that cut a stage's work short: a value saved in a run by an earlier call is announced when a verb uses it
LIMIT_KEYS = ("train.max_steps", "train.time_budget_s", "train.valid_users", "eval.sasrec.time_budget_s")


def run_config(run: Path, preset: str | None = None, file: str | None = None,
               overrides: tuple[str, ...] | list[str] = ()) -> RunConfig:
    """Config of a run: its saved config.yaml (if any) or a preset/file, then ``overrides``.

    Overrides are saved into RUN/config.yaml by the stage that runs with them, so they hold for the verbs after it
    too; a :data:`LIMIT_KEYS` value that comes from there rather than from this call is announced."""
    saved = run / "config.yaml"
    if saved.exists() and not preset and not file:
        cfg = load_config(file=saved, overrides=overrides)
        given = {o.split("=", 1)[0].strip() for o in overrides}
        for key in LIMIT_KEYS:
            value = config_get(cfg, key)
            if value is not None and key not in given:
                log(f"note: {key}={value} comes from {saved} (an earlier call's override, saved in the run); "
                    f"pass {key}=null to lift it")
        return cfg
    return load_config(preset=preset, file=file, overrides=overrides)


def save_config(run: Path, cfg: RunConfig) -> None:
    write_yaml(run / "config.yaml", to_dict(cfg))


def _require(path: Path, stage: str) -> Path:
    """``path`` (a file or folder of ``RUN/<stage>/``), or an error whose fix is the command that writes it."""
    if not path.exists():
        raise DataError(f"{path.name} not found", path=str(path.parent),
                        fix=f"run `{command(stage, path.parent.parent)}` first")
    return path


def sample_rows(table: pa.Table, n: int | None, seed: int) -> pa.Table:
    """A fixed random ``n`` rows of ``table`` in their order (all of them when ``n`` is None or not smaller)."""
    if n is None or n >= table.num_rows:
        return table
    return table.take(pa.array(np.sort(np.random.default_rng(seed).choice(table.num_rows, n, replace=False))))


# ------------------------------------------------------------------------------ data
def stage_data(run: Path, cfg: RunConfig, *, progress: bool = True) -> dict[str, Any]:
    """Simulate or load the dataset, split it, write RUN/data."""
    dc = cfg.data
    t0 = time.perf_counter()
    source, name = data_source(cfg)
    with staged(run, "data", carry=("cache",)) as out:  # the content-vector cache is keyed by the items' content
        if source == "simulate":
            from onerec.data.simulator import simulate

            ds, world = simulate(dc.sim)
            world.save(out / "world")
        else:
            from onerec.data.adapters import load

            ds = load(source, dc.path, name, **dc.options)
        ds.save(out)
        splits = make_splits(ds, protocol=dc.split, positive=dc.positive, min_positives=dc.min_positives,
                             valid_frac=dc.valid_frac, test_frac=dc.test_frac)
        save_splits(splits, out / "split")
        summary = dataset_summary(ds, splits, dc.positive)
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        write_json(out / "summary.json", summary)
        save_config(out, cfg)
    save_config(run, cfg)
    return summary


def data_source(cfg: RunConfig) -> tuple[str, str | None]:
    """The adapter and dataset name ``onerec data`` uses: ``(data.source, data.name)`` as given, or for
    ``data.source=auto`` ``simulate`` without a ``data.path`` and the layout found there with one
    (:func:`onerec.data.adapters.detect_source`, which also infers the name). A ``data.path`` is never ignored:
    ``data.source=simulate`` with one is a ConfigError."""
    dc = cfg.data
    check_choices(dc, "data.")
    if dc.source == "simulate" and dc.path:
        raise ConfigError(f"data.source=simulate simulates a world, which would ignore data.path={dc.path}. Fix: "
                          "pass data.source=auto to read the dataset there (its layout picks the adapter), or "
                          "data.path=null to simulate")
    if dc.source == "simulate" or (dc.source == "auto" and not dc.path):
        return "simulate", dc.name
    if dc.source == "auto":
        from onerec.data.adapters import detect_source

        source, name = detect_source(dc.path, dc.name)
        log(f"data.path {dc.path}: detected data.source={source}" + (f" data.name={name}" if name else ""))
        return source, name
    if not dc.path:
        raise DataError(f"data.source={dc.source} needs data.path", fix="pass data.path=/path/to/the/dataset")
    return dc.source, dc.name


def dataset_summary(ds: Dataset, splits: dict[str, pa.Table], rule: str) -> dict[str, Any]:
    pos = positive_mask(ds.interactions, rule)
    s: dict[str, Any] = {
        "name": ds.meta.get("name"), "source": ds.meta.get("source"),
        "users": ds.n_users, "items": ds.n_items, "interactions": ds.interactions.num_rows,
        "positives": int(pos.sum()), "positive_rule": describe_positive(ds.interactions, rule),
        "train_users": splits["train"].num_rows,
        "valid_examples": splits["valid"].num_rows, "test_examples": splits["test"].num_rows,
    }
    if ds.meta.get("ignored_columns"):  # columns of the input that no stage reads, by table
        s["ignored_columns"] = {k: list(v) for k, v in ds.meta["ignored_columns"].items()}
    if ds.meta.get("normalised"):  # what loading changed in the input and says so (e.g. rows sorted by user, time)
        s["normalised"] = list(ds.meta["normalised"])
    inter = ds.interactions
    if "policy" in inter.column_names and "click" in inter.column_names:
        policy = np.asarray(inter["policy"].to_pylist())
        for name in np.unique(policy):
            sel = policy == name
            for sig in ("click", "long_view", "complete_play"):
                s[f"{name}_{sig}_rate"] = round(float(inter[sig].to_numpy()[sel].mean()), 4)
    return s


# -------------------------------------------------------------------------- tokenize
def stage_tokenize(run: Path, cfg: RunConfig, *, progress: bool = True, resume: bool = False) -> dict[str, Any]:
    """Content vectors (cached per dataset) -> residual k-means semantic IDs -> RUN/tokenizer; or,
    with ``tokenizer.index``, a published index's IDs. ``resume``: a SASRec fit for
    ``content.collaborative=sasrec`` continues from its last finished epoch."""
    with staged(run, "tokenizer", resume=resume) as out:
        metrics = _tokenize(run, out, cfg, progress=progress, resume=resume)
        save_config(out, cfg)
    save_config(run, cfg)
    return metrics


def _tokenize(run: Path, out: Path, cfg: RunConfig, *, progress: bool, resume: bool) -> dict[str, Any]:
    """:func:`stage_tokenize`'s work, written into the folder ``out``."""
    from onerec.content import item_vectors, save_vectors
    from onerec.tokenizer import ResidualKMeansTokenizer

    data = run / "data"
    ds_items = read_parquet(_require(data / "items.parquet", "data"))
    tc = cfg.tokenizer
    if tc.index:
        return _published_index(run, out, cfg, ds_items)
    t0 = time.perf_counter()
    ccfg = cfg.content
    check_choices(ccfg, "content.")
    align_metrics = collab_metrics = None
    if ccfg.collaborative == "sasrec":
        if ccfg.align:
            raise ConfigError("content.collaborative=sasrec replaces the content vectors, so there is nothing for "
                              "content.align to align. Fix: set content.align=false (or content.collaborative=null).")
        vectors, collab_metrics = sasrec_item_vectors(run, cfg, n_items=ds_items.num_rows, resume=resume,
                                                      checkpoint=out / "sasrec", progress=progress)
    else:
        if ccfg.backend == "vlm":
            ds_items, ccfg = _with_media(data, ds_items, ccfg)
        vectors = item_vectors(ds_items, ccfg, cache_dir=data / "cache", progress=progress)
        if ccfg.align:
            vectors, align_metrics = _align(run, out, cfg, ccfg, ds_items, vectors, progress)
    save_vectors(out / "item_vectors.safetensors", vectors, backend=ccfg.collaborative or ccfg.backend,
                 aligned=str(ccfg.align).lower())
    if tc.codebook_size > len(vectors):
        raise DataError(f"tokenizer.codebook_size={tc.codebook_size} exceeds the {len(vectors)} items",
                        fix=f"set tokenizer.codebook_size={max(2, len(vectors) // 8)} or lower")
    popularity = None
    if tc.unique_level and tc.collision_order == "popularity":
        train = load_splits(_require(data / "split", "data"), n_items=len(vectors))["train"]
        popularity = item_counts(train, len(vectors))
    tok = ResidualKMeansTokenizer(tc)
    codes = tok.fit(vectors, popularity=popularity).numpy()
    tok.save(out)
    metrics = {**tok.metrics, "codebook_sizes": tok.codebook_sizes, "seconds": round(time.perf_counter() - t0, 2)}
    if align_metrics is not None:
        metrics["align"] = align_metrics
    if collab_metrics is not None:
        metrics["collaborative"] = collab_metrics
    save_codes(out, codes, metrics)
    return metrics


def _published_index(run: Path, out: Path, cfg: RunConfig, items: pa.Table) -> dict[str, Any]:
    """``tokenizer.index``: every item's ID from a published index file (key = raw id + ``index_offset``),
    written into ``out``."""
    from onerec.tokenizer.published import index_keys, load_index

    tc = cfg.tokenizer
    t0 = time.perf_counter()
    raw = index_keys(items["raw_id"].to_pylist(), tc.index_offset, path=str(run / "data" / "items.parquet"))
    codes = load_index(tc.index, raw)
    # the load time goes into metrics.json, not only the returned dict
    return save_index_codes(out, codes, {"index": str(tc.index), "seconds": round(time.perf_counter() - t0, 2)})


def save_index_codes(out: Path, codes: np.ndarray, metrics: dict[str, Any]) -> dict[str, Any]:
    """A published index's codes, made unique per item (:func:`onerec.tokenizer.published.unique_codes`),
    into the tokenizer folder ``out``; returns ``metrics`` with the index's code metrics and ``codebook_sizes``."""
    from onerec.tokenizer.published import unique_codes

    codes, sizes, stats = unique_codes(codes)
    metrics = {**metrics, **stats, "codebook_sizes": sizes}
    save_codes(out, codes, metrics)
    return metrics


def save_codes(out: Path, codes: np.ndarray, metrics: dict[str, Any]) -> None:
    """A tokenizer folder's codes.parquet (``item_id``, ``sid``) and metrics.json."""
    write_parquet(out / "codes.parquet", pa.table({
        "item_id": np.arange(len(codes), dtype=np.int64),
        "sid": pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1)), codes.shape[1]),
    }))
    write_json(out / "metrics.json", metrics)


def _with_media(data: Path, items: pa.Table, ccfg: Any) -> tuple[pa.Table, Any]:
    """vlm backend: resolve relative media paths against RUN/data; for a simulated world whose items
    have no images, render covers (and frames) into RUN/data/covers on demand."""
    import dataclasses

    if ccfg.media_root is None:
        ccfg = dataclasses.replace(ccfg, media_root=str(data))
    if ccfg.image_field not in items.column_names and (data / "world" / "world.json").exists():
        from onerec.data.simulator import World

        log("rendering simulated covers into " + str(data / "covers"))
        items = World.load(data / "world").render_covers(items, data / "covers", frames=ccfg.frames,
                                                         relative_to=data)
        if ccfg.image_field != "cover" or (ccfg.frames and ccfg.frames_field != "frames"):
            items = items.rename_columns([{"cover": ccfg.image_field, "frames": ccfg.frames_field}.get(c, c)
                                          for c in items.column_names])
    return items, ccfg


def train_alignment(run: Path, cfg: RunConfig, ccfg: Any, items: pa.Table, content: np.ndarray,
                    progress: bool = False) -> tuple[np.ndarray, Any, dict[str, Any]]:
    """Collaborative alignment of a run's items (``content.align``): the QFormer trained on the train
    split's pairs over ``ccfg``'s token vectors. Returns (aligned vectors, the QFormer, metrics); writes
    nothing (:func:`stage_tokenize` saves the model; ``benchmarks/alignment_retrieval.py`` compares settings)."""
    from onerec.content import item_tokens
    from onerec.content.align import align_vectors
    from onerec.content.tfidf import item_texts

    ac = ccfg.alignment
    set_threads(cfg.train.threads)
    tokens = item_tokens(items, ccfg, cache_dir=run / "data" / "cache", progress=progress)
    splits = load_splits(_require(run / "data" / "split", "data"), n_items=items.num_rows)
    texts = item_texts(items, ccfg.text_fields) if ac.caption_weight > 0 else None
    return align_vectors(tokens, splits["train"], ac, texts=texts, content=content, progress=progress)


def _align(run: Path, out: Path, cfg: RunConfig, ccfg: Any, items: pa.Table, content: np.ndarray, progress: bool
           ) -> tuple[np.ndarray, dict[str, Any]]:
    """``content.align=true``: :func:`train_alignment`; its vectors replace the content-only ones and
    the model goes to ``out``/align/ (the tokenizer folder's)."""
    from safetensors.torch import save_file

    from onerec.io import atomic_path

    vectors, model, metrics = train_alignment(run, cfg, ccfg, items, content, progress)
    folder = out / "align"
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "qformer.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    write_json(folder / "qformer.json", {"in_dim": int(model.inp.in_features), "config": to_dict(ccfg.alignment),
                                         "metrics": metrics})
    log(f"aligned {len(vectors)} item vectors: {metrics['user_item_pairs']} user->item + "
        f"{metrics['swing_pairs']} swing pairs, loss {metrics['loss_first']:.3f} -> {metrics['loss_last']:.3f}")
    return vectors, metrics


def sasrec_item_vectors(run: Path, cfg: RunConfig, *, n_items: int, resume: bool = False,
                        checkpoint: Path | None = None, progress: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """``content.collaborative=sasrec``: the item embedding table [n_items, eval.sasrec.d_model] of a SASRec
    trained with the full-softmax CE loss on RUN's train split and early-stopped on its valid split (the
    selection split, as for every model here), and what its training did. Its training state goes to
    ``checkpoint`` (default RUN/tokenizer/sasrec/) after every epoch; ``resume`` continues from there;
    ``progress``: a bar of its epochs."""
    from onerec.baselines import build_baseline
    from onerec.train.loop import resolve_device

    t0 = time.perf_counter()
    set_threads(cfg.train.threads)
    splits = load_splits(_require(run / "data" / "split", "data"), n_items=n_items)
    rec = build_baseline("sasrec_ce", cfg.eval.sasrec, device=resolve_device(cfg.train.device))
    rec.progress = progress
    log("item vectors: fitting SASRec (CE) on the train split")
    rec.fit(splits["train"], n_items=n_items, valid=splits["valid"],
            checkpoint=checkpoint or run / "tokenizer" / "sasrec", resume=resume)
    vectors = rec.model.item_emb.weight[1:].detach().cpu().numpy().astype(np.float32)  # row 0 is padding
    metrics = {"model": "sasrec_ce", "dim": int(vectors.shape[1]), "epochs": len(rec.train_log),
               "best_epoch": int(rec.best_epoch), "valid_curve": rec.valid_curve,
               "seconds": round(time.perf_counter() - t0, 1)}
    log(f"item vectors: SASRec item embeddings ({vectors.shape[1]} dims), best valid epoch {rec.best_epoch} of "
        f"{len(rec.train_log)}")
    return vectors, metrics


def load_codes(run: Path) -> np.ndarray:
    table = read_parquet(_require(run / "tokenizer" / "codes.parquet", "tokenize"))
    sid = table["sid"].combine_chunks()
    return sid.flatten().to_numpy().reshape(len(sid), -1).astype(np.int64)


def succession_counts(run: Path, codes: np.ndarray, splits: dict[str, pa.Table] | None = None):
    """The train split's succession pair counts (:mod:`onerec.features.succession`), from ``splits`` when the
    caller has them loaded, else from RUN/data/split."""
    from onerec.features.succession import Succession

    if splits is None:
        splits = load_splits(_require(run / "data" / "split", "data"), n_items=len(codes))
    return Succession.from_train(splits["train"], len(codes))


def make_featurizer(run: Path, mcfg, codes: np.ndarray, dataset: Dataset | None = None,
                    splits: dict[str, pa.Table] | None = None):
    """The featurizer for ``mcfg``: with side information (item/user features, the full log) from
    RUN/data (or ``dataset``, when the caller has it loaded) when the model's pathways or behaviour
    features need it, and the train split's succession counts for the succession pathway (from ``splits``
    when the caller has them loaded)."""
    from onerec.features import HistoryFeaturizer, needs_side
    from onerec.features.side import SideInfo

    side = succession = None
    if needs_side(mcfg):
        ds = dataset or Dataset.load(_require(run / "data" / "dataset.json", "data").parent, validate=False)
        side = SideInfo.from_dataset(ds)
    if "succession" in mcfg.pathways:
        succession = succession_counts(run, codes, splits)
    return HistoryFeaturizer(codes, mcfg.max_history, side=side, cfg=mcfg, succession=succession)


# ----------------------------------------------------------------------------- train
@contextlib.contextmanager
def stage_on_ranks(run: Path, stage: str, device: str = "auto", *, resume: bool = False
                   ) -> Iterator[tuple[Any, Path]]:
    """:func:`onerec.rundir.staged` for a stage that may run under torchrun: yields (this process's
    :class:`onerec.train.distributed.Dist`, the stage's staging folder). Rank 0 (and a single process) owns the folder,
    swapped in whole when the block completes; the other ranks get its path once rank 0 has made (or, resuming,
    prepared) it, may write there only what is theirs (FSDP's checkpoint shards), and all leave after the swap."""
    from onerec.train.distributed import process_group

    with process_group(device) as d:
        if d.main:
            with staged(run, stage, resume=resume) as out:
                d.barrier()
                yield d, out
        else:
            d.barrier()
            yield d, staging_folder(run, stage)
        d.barrier()


def stage_train(run: Path, cfg: RunConfig, *, resume: bool = False, progress: bool = True,
                log=None) -> dict[str, Any]:
    """Next-token training of the generator -> RUN/train (``log``: one line per epoch, see
    :func:`onerec.train.train_generator`).

    Under ``torchrun --nproc_per_node=N -m onerec train RUN`` every process runs this: they join one job
    (:func:`onerec.train.distributed.process_group`), rank 0 owns RUN/train's staging folder and writes the run's
    files, the others train their share into the same folder (FSDP's checkpoint shards) and write nothing else."""
    with stage_on_ranks(run, "train", cfg.train.device, resume=resume) as (d, out):
        summary = _train_into(run, cfg, out, resume=resume, progress=progress, log=log)
        if d.main:
            write_json(out / "metrics.json", summary)
    return summary


def _train_into(run: Path, cfg: RunConfig, out: Path, *, resume: bool, progress: bool, log) -> dict[str, Any]:
    from onerec.model import build_generator
    from onerec.train import train_generator
    from onerec.train.checkpoint import model_meta
    from onerec.train.distributed import current
    from onerec.train.logger import make_logger

    main = current().main
    codes, splits, sizes, feat, train_ex, valid_ex = training_data(run, cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_generator(cfg.model, sizes)
    meta = model_meta(cfg.model, sizes, n_items=len(codes))
    if main:
        save_config(run, cfg)  # before training: a killed run's `--resume` continues with the same config
        save_config(out, cfg)
    scorer = None
    if cfg.train.early_stop_metric:  # generate.compile=aot keeps its packages where eval and serve will look
        scorer = valid_scorer(codes, splits["valid"], cfg, feat, aot_dir=run / "aot")
    logger = make_logger(cfg.train.logger if main else "none", run, "train")
    if progress and logger.watch_hint():
        print(f"watch training: {logger.watch_hint()}", flush=True)
    try:
        result = train_generator(model, train_ex, cfg.train, out, meta=meta, valid=valid_ex, resume=resume,
                                 progress=progress, score_valid=scorer, log=log, logger=logger)
    finally:
        logger.close()
    return _train_summary(model, train_ex, result)


def training_data(run: Path, cfg: RunConfig):
    """What training ``cfg.model`` on RUN reads: (semantic IDs, splits, codebook sizes, the featurizer, the
    training examples ``cfg.train.objective`` asks for, the valid examples)."""
    from onerec.features import EvalExamples

    codes = load_codes(run)
    splits = load_splits(_require(run / "data" / "split", "data"), n_items=len(codes))
    sizes = read_json(run / "tokenizer" / "metrics.json")["codebook_sizes"]
    feat = make_featurizer(run, cfg.model, codes, splits=splits)
    return codes, splits, sizes, feat, train_examples(splits["train"], feat, cfg), EvalExamples(splits["valid"], feat)


def train_examples(train: pa.Table, featurizer, cfg: RunConfig):
    """The training examples ``cfg.train.objective`` asks for: :class:`onerec.features.SequenceExamples` (every
    position of a sequence in one pass) or :class:`onerec.features.TrainExamples` (one sample per prefix)."""
    from onerec.features import SequenceExamples, TrainExamples

    m, objective = cfg.model, cfg.train.objective
    able = m.arch == "lazy" and list(m.pathways) == ["positive"] and m.session_len == 1
    if objective == "all_positions" and not able:
        raise ConfigError(f"train.objective=all_positions needs model.arch=lazy with model.pathways=[positive] and "
                          f"model.session_len=1 (got arch={m.arch}, pathways={list(m.pathways)}, session_len="
                          f"{m.session_len}). Fix: train.objective=prefix, or change the model")
    if objective == "all_positions" or (objective == "auto" and able):
        return SequenceExamples(train, featurizer)
    return TrainExamples(train, featurizer)


def _train_summary(model, train_ex, result) -> dict[str, Any]:
    """What ``onerec train`` prints and saves; the selection's fields where one was made (a best epoch: scored on
    valid, which fsdp skips)."""
    summary = {
        "parameters": model.num_parameters(), "examples": train_ex.targets,
        "steps": len(result.loss),
        "final_loss": float(np.mean(result.loss[-50:])),
        "valid_loss": result.valid[-1]["loss"] if result.valid else None,
        "seconds": round(result.seconds, 1),
    }
    if result.best_epoch is not None:
        summary.update(best_epoch=result.best_epoch, stopped=result.stopped,
                       valid_curve=[{k: v for k, v in r.items() if k != "loss"} for r in result.valid])
    return summary


def resumable_checkpoint(run: Path) -> Path | None:
    """The checkpoint ``onerec train RUN --resume`` continues from: the latest of the staging folder a killed run
    left, else (none left) of the finished RUN/train, to train it on; None when there is none."""
    from onerec.train.checkpoint import latest_checkpoint

    staging = staging_folder(run, "train")
    return latest_checkpoint(staging if staging.is_dir() else run / "train")


def valid_scorer(codes: np.ndarray, valid: pa.Table, cfg: RunConfig, featurizer=None, aot_dir: Path | None = None):
    """``score(model) -> float``: ``cfg.train.early_stop_metric`` on the valid split (or a fixed random
    subset of ``cfg.train.valid_users`` rows), by the same beam search (``generate.precision`` and
    ``generate.compile`` included: with ``aot`` the packages are kept under ``aot_dir``, compiled at the first
    scoring and reading the training weights as they change), featurizer (the training one: see
    :func:`make_featurizer`) and harness as the test score."""
    from onerec.eval.harness import evaluate_shared
    from onerec.generate.generative import GenerativeRecommender
    from onerec.train.distributed import current
    from onerec.train.loop import resolve_device

    metric = cfg.train.early_stop_metric
    k = int(metric.split("@")[1])
    valid = sample_rows(valid, cfg.train.valid_users, cfg.train.seed)
    device = resolve_device(cfg.train.device)

    def score(model) -> float:
        # several processes (torchrun): each scores a share of the users with its own whole copy of the model (DDP)
        d = current()
        gen = GenerativeRecommender(model, codes, beam_size=max(cfg.generate.beam_size, k),
                                    batch_size=cfg.generate.batch_size, device=device, featurizer=featurizer,
                                    precision=cfg.generate.precision, compile=cfg.generate.compile,
                                    aot_dir=None if aot_dir is None else str(aot_dir))
        return evaluate_shared(gen, valid, rank=d.rank, world=d.world, sum_over_ranks=d.sum, ks=(k,),
                               batch_size=cfg.generate.batch_size)[metric]

    return score


def load_generator(run: Path, device: str = "cpu", codes: np.ndarray | None = None, folder: Path | None = None):
    """The trained generator of RUN/train (or of a model ``folder``: a checkpoint), its config and sizes checked
    against the weights file's header, and against the run's semantic IDs ``codes`` when given, before anything is
    allocated (:func:`onerec.train.checkpoint.build_checked`)."""
    from onerec.model import build_generator
    from onerec.train.checkpoint import build_checked, load_state, read_model_meta

    folder = _require(run / "train" / "model.json", "train").parent if folder is None else Path(folder)
    mcfg, sizes, _ = read_model_meta(folder)
    if codes is not None:
        check_codebook_sizes(folder / "model.json", sizes, codes)
    model = build_checked(folder, lambda: build_generator(mcfg, sizes))
    load_state(folder, model)
    return model.to(device).eval()


def trained_config(run: Path, cfg: RunConfig) -> RunConfig:
    """``cfg`` with the model section of the model RUN/train holds (see :func:`model_config_drift`)."""
    from onerec.train.checkpoint import read_model_meta

    meta = run / "train" / "model.json"
    return dataclasses.replace(cfg, model=read_model_meta(meta.parent)[0]) if meta.is_file() else cfg


def model_config_drift(run: Path, cfg: RunConfig, trained) -> str | None:
    """Why ``cfg.model`` (RUN/config.yaml and this call's overrides) differs from the model RUN/train holds
    (``trained``: its ModelConfig), or None. It differs after a training with other model settings was killed (it
    saves RUN/config.yaml first, so that ``--resume`` continues with them) or when model.* keys are overridden at
    scoring time; either way the trained model is what gets scored, and the message says so."""
    have, want = to_dict(trained), to_dict(cfg.model)
    keys = config_differences(have, want)  # ModelConfig is flat: the keys are its fields
    if not keys:
        return None
    more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
    trained_as = ", ".join(f"model.{k}={have[k]!r}" for k in keys[:4]) + more
    config_as = ", ".join(f"model.{k}={want[k]!r}" for k in keys[:4]) + more
    if staging_folder(run, "train").is_dir():
        why = (f"a later training with those settings did not finish: `{command('train', run)} --resume` "
               "finishes it")
    else:
        why = f"model settings change a model only by training it again: `{command('train', run)}`"
    return (f"{run / 'train'} holds a model trained with {trained_as}, and that model is what is scored here; the "
            f"run's config (with this call's overrides) has {config_as} ({why})")


def check_codebook_sizes(path: Path, sizes: list[int], codes: np.ndarray) -> None:
    """A model's semantic-ID vocabulary (``codebook_sizes`` in its model.json) must cover the run's codes."""
    if len(sizes) != codes.shape[1]:
        raise DataError(f"the model generates {len(sizes)}-level semantic IDs but the run's tokenizer has "
                        f"{codes.shape[1]} levels", path=str(path), column="codebook_sizes",
                        fix=f"retrain on this run's semantic IDs (`{command('train', path.parent.parent)}`)")
    top = codes.max(axis=0) if len(codes) else np.zeros(len(sizes), dtype=np.int64)
    for level, (size, need) in enumerate(zip(sizes, top.tolist())):
        if int(size) <= 0 or need >= int(size):
            raise DataError(f"codebook_sizes[{level}] = {size} does not cover the run's codes (up to {need})",
                            path=str(path), column="codebook_sizes",
                            fix=f"retrain on this run's semantic IDs (`{command('train', path.parent.parent)}`)")


def load_recommender(run: Path, cfg: RunConfig, device: str | torch.device = "cpu", *, beam_size: int | None = None,
                     codes: np.ndarray | None = None, dataset: Dataset | None = None,
                     splits: dict[str, pa.Table] | None = None, prior: bool = False, exclude_seen: bool = False,
                     note_drift: bool = True):
    """The run's trained generator behind constrained beam search (a
    :class:`~onerec.generate.generative.GenerativeRecommender`), with the featurizer it was trained
    with (side information from RUN/data where its pathways need it); ``beam_size`` defaults to
    ``cfg.generate.beam_size``; ``codes`` / ``dataset`` / ``splits``: the run's, when the caller has them loaded.
    The succession counts of the prior (from the train split) are built when ``generate.succession_prior`` > 0 or
    ``prior`` (to choose it). ``exclude_seen``: its ``recommend`` leaves out each row's history (the caller picks
    the setting: ``eval.exclude_seen`` to evaluate, ``generate.exclude_seen`` to recommend). ``note_drift``: print
    :func:`model_config_drift`'s note when the run's config and its trained model differ."""
    from onerec.generate.generative import GenerativeRecommender

    check_inputs(run, "eval")  # data, tokenizer and train, made one from the other
    codes = load_codes(run) if codes is None else codes
    model = load_generator(run, str(device), codes=codes)
    drift = model_config_drift(run, cfg, model.cfg) if note_drift else None
    if drift:
        log(f"note: {drift}")
    feat = make_featurizer(run, model.cfg, codes, dataset, splits)
    g = cfg.generate
    counts = None
    if g.succession_prior or prior:  # shallow fusion with the train split's succession counts
        counts = feat.succession if feat.succession is not None else succession_counts(run, codes, splits)
    return GenerativeRecommender(model, codes, beam_size=beam_size or g.beam_size, batch_size=g.batch_size,
                                 device=device, featurizer=feat, prior=counts, prior_weight=g.succession_prior,
                                 prior_pool=g.succession_pool, prior_window=g.succession_window,
                                 prior_decay=g.succession_decay, exclude_seen=exclude_seen, compile=g.compile,
                                 precision=g.precision, aot_dir=str(run / "aot"))


# ------------------------------------------------------------------------------ eval
def stage_eval(run: Path, cfg: RunConfig, *, progress: bool = True) -> dict[str, Any]:
    """Score the generator and the baselines on the held-out split -> RUN/eval; then RUN/metrics.json and the
    report."""
    from onerec.eval.report import write_report
    from onerec.train.loop import resolve_device

    device = resolve_device(cfg.train.device)
    set_threads(cfg.train.threads)
    # torchrun -m onerec eval RUN: every process beam-searches a share of the users; rank 0 fits the baselines
    # and writes
    with stage_on_ranks(run, "eval", cfg.train.device) as (d, out):
        codes = load_codes(run)
        splits = load_splits(_require(run / "data" / "split", "data"), n_items=len(codes))
        if not d.main:
            _score_generator(run, cfg, codes, splits, device, False)
            return {}
        metrics, curves = _evaluate(run, out, cfg, codes, splits, device, progress)
        save_config(out, trained_config(run, cfg))  # what was scored: the model RUN/train holds
    write_json(run / "metrics.json", metrics)
    history = read_json(run / "train" / "history.json") if (run / "train" / "history.json").exists() else {}
    write_report(run, metrics, history, curves, sorted(cfg.eval.ks))
    save_config(run, cfg)
    return metrics


def _score_generator(run: Path, cfg: RunConfig, codes: np.ndarray, splits: dict[str, pa.Table], device,
                     progress: bool):
    """(the generator as a recommender, its scores on ``eval.split``): on several processes each scores a share."""
    from onerec.eval.harness import evaluate_shared
    from onerec.train.distributed import current

    d = current()
    gen = load_recommender(run, cfg, device, codes=codes, splits=splits, exclude_seen=cfg.eval.exclude_seen)
    return gen, evaluate_shared(gen, splits[cfg.eval.split], rank=d.rank, world=d.world, sum_over_ranks=d.sum,
                                ks=sorted(cfg.eval.ks), batch_size=cfg.generate.batch_size,
                                progress=progress and d.main)


def _evaluate(run: Path, out: Path, cfg: RunConfig, codes: np.ndarray, splits: dict[str, pa.Table], device,
              progress: bool) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """:func:`stage_eval`'s scores (and the baselines' loss curves), its files written into ``out``."""
    from onerec.baselines import build_baseline
    from onerec.eval.harness import evaluate

    examples = splits[cfg.eval.split]
    ks = sorted(cfg.eval.ks)
    models: dict[str, dict[str, float]] = {}
    curves: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    gen, models["onerec"] = _score_generator(run, cfg, codes, splits, device, progress)
    seconds["onerec"] = round(time.perf_counter() - t0, 1)
    for name in cfg.eval.baselines:
        t0 = time.perf_counter()
        rec = build_baseline(name, cfg.eval.sasrec, device=device, exclude_seen=cfg.eval.exclude_seen)
        log(f"fitting baseline {name}")
        if hasattr(rec, "progress"):  # SASRec's epochs take minutes; the others fit in seconds
            rec.progress = progress
        rec.fit(splits["train"], n_items=len(codes), valid=splits["valid"])
        models[name] = evaluate(rec, examples, ks=ks, progress=progress)
        if getattr(rec, "losses", None):
            curves[name] = rec.losses
        seconds[name] = round(time.perf_counter() - t0, 1)

    gen.progress = progress  # a bar of its own: these users' top-50 lists take a while too
    recs = gen.recommend(examples.slice(0, min(examples.num_rows, 1000)), min(ks[-1], 50))
    write_parquet(out / "recommendations.parquet", pa.table({
        "user_id": examples["user_id"].slice(0, len(recs)),
        "items": pa.array(list(recs), type=pa.list_(pa.int64())),
    }))
    dataset = read_json(run / "data" / "summary.json")
    tokenizer = read_json(run / "tokenizer" / "metrics.json")
    train = read_json(run / "train" / "metrics.json") if (run / "train" / "metrics.json").exists() else {}
    metrics = {
        "models": models, "split": cfg.eval.split, "protocol": cfg.data.split, "exclude_seen": cfg.eval.exclude_seen,
        "seconds": seconds,
        "dataset": dataset,
        "tokenizer": {k: v for k, v in tokenizer.items() if not isinstance(v, (list, dict))},
        "train": train,
    }
    write_json(out / "metrics.json", metrics)
    return metrics, curves


def stage_tune_prior(run: Path, cfg: RunConfig, *, weights: Sequence[float] | None = None,
                     rules: Sequence[tuple[int, float]] | None = None, users: int | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """Choose the succession prior on the valid split (not in the papers, see
    :mod:`onerec.generate.generative`): every succession rule ``(window, decay)`` x prior weight (default weight 0,
    the generator alone, and ``PRIOR_WEIGHTS``; rules ``PRIOR_RULES``), scored by ``train.early_stop_metric``
    (NDCG@10 when it is unset) on all valid users or a fixed random ``users`` of them (seed ``train.seed``); the
    best goes into ``generate.succession_prior`` / ``_window`` / ``_decay`` of RUN/config.yaml, which ``eval``,
    ``generate`` and ``serve`` then use. Writes RUN/eval/prior.json (the grid and the choice)."""
    from onerec.generate.generative import PRIOR_RULES, PRIOR_WEIGHTS, check_prior_grid
    from onerec.train.loop import resolve_device

    weights = (0.0, *PRIOR_WEIGHTS) if weights is None else tuple(float(w) for w in weights)
    rules = PRIOR_RULES if rules is None else tuple((int(w), float(d)) for w, d in rules)
    try:  # before the model is loaded
        check_prior_grid(weights, rules)
    except ValueError as e:
        raise ConfigError(f"tune-prior: {e}") from None
    check_inputs(run, "eval")
    set_threads(cfg.train.threads)
    codes = load_codes(run)
    split_dir = _require(run / "data" / "split", "data")
    splits = load_splits(split_dir, n_items=len(codes))
    valid = sample_rows(splits["valid"], users, cfg.train.seed)
    if valid.num_rows == 0:
        raise DataError("the valid split has no rows to choose the prior on", path=str(split_dir / "valid.parquet"),
                        fix=f"rerun `{command('data', run)} data.split=loo` (a split that keeps a valid item per user)")
    metric = cfg.train.early_stop_metric or "ndcg@10"
    t0 = time.perf_counter()
    rec = load_recommender(run, cfg, resolve_device(cfg.train.device), codes=codes, splits=splits, prior=True,
                           exclude_seen=cfg.eval.exclude_seen)
    rec.progress = progress
    grid = rec.choose_prior(valid, weights, rules, metric)
    g = cfg.generate
    g.succession_prior, g.succession_window, g.succession_decay = rec.prior_weight, rec.prior_window, rec.prior_decay
    out = {"split": "valid", "users": valid.num_rows, "metric": metric,
           "chosen": {"generate.succession_prior": g.succession_prior,
                      "generate.succession_window": g.succession_window,
                      "generate.succession_decay": g.succession_decay,
                      metric: grid[rec.prior_window, rec.prior_decay, rec.prior_weight]},
           "pool": rec.prior_pool, "beam_size": rec.beam_size,
           "grid": [{"window": w, "decay": d, "weight": x, metric: v} for (w, d, x), v in grid.items()],
           "seconds": round(time.perf_counter() - t0, 1)}
    write_json(run / "eval" / "prior.json", out)
    save_config(run, cfg)
    return out


# -------------------------------------------------------------------------- generate
def recommend_users(run: Path, cfg: RunConfig, raw_user_ids: list[str], k: int, *, exclude_seen: bool | None = None
                    ) -> dict[str, list[tuple[int, str, str]]]:
    """Top-``k`` (item index, raw item id, title) for users given by raw id, from their whole positive history;
    ``exclude_seen`` (default ``generate.exclude_seen``): none of the items in that history."""
    from onerec.data.splits import Sequences
    from onerec.train.loop import resolve_device

    check_inputs(run, "eval")
    set_threads(cfg.train.threads)
    ds = Dataset.load(_require(run / "data" / "dataset.json", "data").parent, validate=False)
    raw = ds.users["raw_id"].to_pylist()
    index = {r: i for i, r in enumerate(raw)}
    missing = [u for u in raw_user_ids if u not in index]
    if missing:
        raise DataError(f"unknown user id '{missing[0]}'", path=str(run / "data" / "users.parquet"),
                        column="raw_id", fix=f"use a raw_id from users.parquet, e.g. {raw[0]!r}")
    seq = Sequences.from_interactions(ds.interactions, ds.n_users, cfg.data.positive)
    uids = np.array([index[u] for u in raw_user_ids], dtype=np.int64)
    rows = []
    for u in uids:
        s, e = seq.offsets[u], seq.offsets[u + 1]
        rows.append({"user_id": int(u), "history": seq.items[s:e].tolist(), "history_ts": seq.ts[s:e].tolist(),
                     "history_flags": seq.flags[s:e].astype(int).tolist(),
                     "target_ts": int(seq.ts[e - 1]) + 1 if e > s else 0})
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("user_id", pa.int64()), ("history", pa.list_(pa.int64())), ("history_ts", pa.list_(pa.int64())),
        ("history_flags", pa.list_(pa.int16())), ("target_ts", pa.int64())]))
    exclude = cfg.generate.exclude_seen if exclude_seen is None else exclude_seen
    gen = load_recommender(run, cfg, resolve_device(cfg.train.device), beam_size=max(cfg.generate.beam_size, k),
                           dataset=ds, exclude_seen=exclude)
    recs = gen.recommend(table, k)
    titles, raw_items = _item_titles(ds.items), raw_ids(ds.items)
    return {u: [(int(i), raw_items[i], titles[i]) for i in r if i >= 0] for u, r in zip(raw_user_ids, recs)}


def raw_ids(table: pa.Table) -> list[str]:
    """The dataset's own ids of a canonical items or users table (``raw_id``), by dense index."""
    return [str(r) for r in table["raw_id"].to_pylist()]


def _item_titles(items: pa.Table) -> list[str]:
    for col in ("title", "text", "raw_id"):
        if col in items.column_names:
            return [("" if t is None else str(t))[:80] for t in items[col].to_pylist()]
    return [""] * items.num_rows


# ---------------------------------------------------------------------------- reward
def _reward_inputs(run: Path, cfg: RunConfig):
    from onerec.reward.data import exposure_splits

    ds = Dataset.load(_require(run / "data" / "dataset.json", "data").parent, validate=False)
    codes = load_codes(run)
    splits, feat = exposure_splits(ds.interactions, ds.n_users, codes, ds.items, objectives=cfg.reward.objectives,
                                   long_len=cfg.reward.long_len, test_frac=cfg.reward.test_frac,
                                   pref_cap_s=cfg.reward.pref_cap_s, positive=cfg.data.positive)
    return ds, codes, splits, feat


def stage_reward(run: Path, cfg: RunConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train the P-Score model on the train exposures (and, with reward.ablations, the DIN baseline and
    the no-SIM / no-CAN ablations); AUC / GAUC per objective on held-out exposures -> RUN/reward."""
    from onerec.reward.train import VARIANTS

    set_threads(cfg.train.threads)
    variants = VARIANTS if cfg.reward.ablations else {"pscore": VARIANTS["pscore"]}
    # torchrun -m onerec reward RUN: data parallel (the reward model trains on CPU); rank 0 evaluates and writes
    with stage_on_ranks(run, "reward", "cpu") as (d, out):
        summary = _fit_reward(run, cfg, out, variants, progress, d.main)
    if d.main:
        save_config(run, cfg)
    return summary


def _fit_reward(run: Path, cfg: RunConfig, out: Path, variants, progress: bool, main: bool) -> dict[str, Any]:
    from onerec.reward.train import fit_variants, save_pscore

    ds, codes, splits, feat = _reward_inputs(run, cfg)
    models, metrics = fit_variants(cfg.reward, splits, feat, ds.n_users, variants=variants,
                                   log_every=200 if progress and main else 0)
    if not main:  # another rank of a torchrun job: it trained its shares, rank 0 writes
        return {}
    side = feat.side
    meta = {"n_users": ds.n_users, "n_items": len(codes), "n_cats": side.n_cats, "n_authors": side.n_authors,
            "author_ids": "dense"}  # ItemSide.build's numbering of authors
    save_pscore(out, models["pscore"], meta)
    summary = {"train_exposures": len(splits["train"]), "test_exposures": len(splits["test"]), "models": metrics}
    write_json(out / "metrics.json", summary)
    save_config(out, cfg)
    return summary


def load_ranker(run: Path, cfg: RunConfig):
    """The trained P-Score model and its featurizer over the run's logged positives."""
    from onerec.reward.data import ItemSide, Positives, RankFeaturizer
    from onerec.reward.train import load_pscore

    model, meta = load_pscore(_require(run / "reward" / "pscore.json", "reward").parent)
    ds = Dataset.load(run / "data", validate=False)
    codes = load_codes(run)
    pos = Positives.from_interactions(ds.interactions, ds.n_users, cfg.data.positive)
    side = ItemSide.build(codes, ds.items, dense_authors=meta.get("author_ids") == "dense")
    if side.n_authors > meta["n_authors"] or side.n_cats > meta["n_cats"]:
        raise DataError(f"the run's items have {side.n_authors - 1} authors and {side.n_cats} categories but the "
                        f"P-Score model was trained for {meta['n_authors'] - 1} and {meta['n_cats']}",
                        path=str(run / "reward" / "pscore.json"), fix=f"rerun `{command('reward', run)}`")
    return model, RankFeaturizer(pos, side, model.cfg.long_len), ds, codes, pos


# ----------------------------------------------------------------------------- align
def align_setup(run: Path, cfg: RunConfig, model=None):
    """The alignment context of a run: (ctx, world or None, eval_rows, pool).

    Users with positives are shuffled once (by align.seed): the first ``align.eval_users`` are held
    out for scoring, the rest form the pool alignment samples from; every request is after the end
    of the log, with the user's whole positive history. ``model`` defaults to RUN/train's generator. With a
    simulated world, ``ctx.feedback`` lets the world's users respond to shown items (GBPO's duration reward)."""
    from onerec.align.feedback import SimulatedFeedback
    from onerec.align.loop import AlignContext, request_table
    from onerec.data.simulator import World
    from onerec.features import TrainExamples

    ac = cfg.align
    ranker, feat, ds, codes, pos = load_ranker(run, cfg)
    model = load_generator(run) if model is None else model
    users = np.random.default_rng(ac.seed).permutation(np.flatnonzero(np.diff(pos.offsets) > 0))
    n_eval = min(ac.eval_users, len(users) // 2)
    end_ts = int(ds.interactions["timestamp"].to_numpy().max()) + 1
    requests = request_table(pos, users, np.full(len(users), end_ts))
    splits = load_splits(run / "data" / "split", n_items=len(codes))
    featurizer = make_featurizer(run, model.cfg, codes, splits=splits)
    ctx = AlignContext(model, codes, requests, ranker, feat, TrainExamples(splits["train"], featurizer), featurizer)
    world_dir = run / "data" / "world"
    world = World.load(world_dir) if (world_dir / "world.json").exists() else None
    if world is not None and "watch_time_ms" in ds.interactions.column_names:
        ctx.feedback = SimulatedFeedback.from_log(world, ds.interactions, base=ac.duration_base)
    return ctx, world, np.arange(n_eval), np.arange(n_eval, len(users))


def stage_align(run: Path, cfg: RunConfig, *, progress: bool = True) -> dict[str, Any]:
    """Align the trained generator (align.method = dpo | ecpo: to the P-Score; gbpo: by default to the
    simulated users' duration-shaped feedback) -> RUN/align.

    With a simulated world, the held-out users' top-K (see :func:`align_setup`) are scored by the
    world's ground truth before and after alignment."""
    from onerec.align.loop import align

    set_threads(cfg.train.threads)
    # torchrun -m onerec align RUN: data parallel; the other ranks roll out and train on a share of each round's
    # users, rank 0 evaluates and writes
    with stage_on_ranks(run, "align", cfg.train.device) as (d, out):
        if d.main:
            result = _align_generator(run, out, cfg, progress)
            save_config(out, cfg)
        else:
            ctx, _, _, pool = align_setup(run, cfg)
            align(ctx, cfg.align, pool)
            return {}
    save_config(run, cfg)
    return result


def _align_generator(run: Path, out: Path, cfg: RunConfig, progress: bool) -> dict[str, Any]:
    """:func:`stage_align`'s work, its model and metrics written into ``out``."""
    from onerec.align.evaluate import evaluate_generator
    from onerec.align.loop import align
    from onerec.train.checkpoint import read_model_meta, save_model

    ac = cfg.align
    ctx, world, eval_rows, pool = align_setup(run, cfg)
    result: dict[str, Any] = {"method": ac.method, "eval_users": len(eval_rows)}
    if world is not None:
        result["before"] = evaluate_generator(ctx, world, eval_rows, k=ac.top_k, beam=cfg.generate.beam_size)
    result["history"] = align(ctx, ac, pool, log=progress)
    if world is not None:
        result["after"] = evaluate_generator(ctx, world, eval_rows, k=ac.top_k, beam=cfg.generate.beam_size)
    _, _, meta = read_model_meta(run / "train")
    save_model(out, ctx.model, {**meta, "align": to_dict(ac)})
    write_json(out / "metrics.json", result)
    return result
