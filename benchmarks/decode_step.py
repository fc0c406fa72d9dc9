"""The beam search's decode step against its matrix-multiply floor (issue 43): the plain KV cache against the
preallocated static one, and eager against compiled, interleaved in one process.

Variants, the same weights and inputs, timed in rounds (every variant and then its matrix products alone once per
round, the order rotating), medians of ``--reps`` rounds; ratios are medians of the per-round ratios:

* ``plain``: the plain cache (``beam_step_fn(static_cache=False)``: each layer's keys and values concatenated
  anew every step and re-ordered by ``index_select``) and RMSNorm as its five-op formula
  (``RMSNorm.fused_inference = False``): the default on CPU (the code before issue 43, and again since
  2026-12-07, when it measured as fast or faster than the static cache);
* ``static``: the preallocated, statically shaped cache (:class:`onerec.model.kv_cache.StaticKVCache`: written
  and re-ordered in place), RMSNorm still the formula (the default on CPU from 2026-12-06 to 2026-12-07);
* ``static_fused_norm``: the same with ``F.rms_norm`` (the default off CPU: the static cache and
  ``RMSNorm.fused_inference``);
* ``compiled``: ``generate.compile=true``, the step through ``torch.compile`` (inductor's C++ kernels, the plain
  cache, :mod:`onerec.model.compiled`); compiled once before the rounds. Its matrix products are the
  ``plain`` variant's (the same model and shapes; inductor calls the same GEMM kernels), so its floor is that
  one's replay;
* ``aot``: ``generate.compile=aot``, the step's AOTInductor packages (:mod:`onerec.model.aot`: one per level,
  dynamic users, beams and history length, the plain cache), compiled once into a temporary folder before the
  rounds; its floor is ``plain``'s replay, as ``compiled``'s;
* ``plain_sdpa``, ``compiled_sdpa``: ``plain`` and ``compiled`` with the step's one-query self-attention through
  ``F.scaled_dot_product_attention`` (the reference, and the code before 2026-12-07's
  :func:`onerec.model.layers.single_query_attention`): what that fast path buys.

Per search (the encoder excluded: its output is computed once), ``search_s`` is the whole constrained beam
search and ``step_s`` the model's share of it: the step function (the decoder over the new token, the cache
writes) plus the re-ordering of the cache between steps. ``floor_ratio`` = ``step_s`` / the time of the same
steps' matrix multiplies alone: every ``mm`` / ``addmm`` / ``bmm`` / ``baddbmm`` a search runs, recorded with
their shapes and layouts and replayed in order as plain fp32 products of the same shapes (SDPA's fused
attention kernel is not among them; it took 6-14% of the search in profiles at batch 1, beam 128). No exact fp32
implementation of the same model can take less than the floor on this machine.

Model and catalogue as ``benchmarks/generation.py``: d_model 128, 4 heads, 4 encoder + 4 decoder layers,
SwiGLU 256 (the 0.015B layout without its MoE), 50,000 items over 3 x 256 codes, histories of 50. One torch
thread.

    python benchmarks/decode_step.py                        # batch 1, beam 128 (about a minute)
    python benchmarks/decode_step.py --batch 64 --beam 128
    python benchmarks/decode_step.py --run RUN [--users 1024]  # a run's model and valid users: plain vs static cache

``--run RUN`` times a trained (or training) run's own search as its evaluation runs it (``onerec eval`` / the
per-epoch valid scoring: ``GenerativeRecommender.recommend`` over the first ``--users`` valid users, 0 for all, the
run's beam and batch size, the encoder included) with the plain and the static cache and, with ``--bf16``, the plain
cache under ``generate.precision=bf16``, with ``--aot`` the plain cache under ``generate.compile=aot``, taking
turns, ``--reps`` rounds (3 by default in this mode); reports seconds per 1,000 users, the paired ratios, whether
the variants returned the same items and, with trained weights (RUN/train, or a checkpoint folder given by
``--weights``), each variant's valid Recall@10 / NDCG@10. Writes
``decode_step.run.json`` (``--out``).

Writes ``benchmarks/results/generation/decode_step[.bB_beamK].json`` (batch 1, beam 128 without the suffix;
``--out``); at batch 1, beam 128 also the ``floor_ratio_b1_beam128`` keys of ``generation.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import onerec.generate.beam as beam_module
from generation import HISTORY, RESULTS, catalogue, histories
from model_throughput import _gemm_calls, _gemm_replay
from onerec.bench.machine import machine_info
from onerec.config import ModelConfig
from onerec.generate.beam import beam_search
from onerec.io import update_json, write_json
from onerec.model.generator import Generator
from onerec.model.layers import Attention, RMSNorm
from onerec.threads import keep_freed_memory
from onerec.tokenizer.constraints import PrefixTable

#: name: (static cache, F.rms_norm, generate.compile (False, True or "aot"), SDPA for the step's one-query
#: self-attention)
VARIANTS = {"plain": (False, False, False, False), "static": (True, False, False, False),
            "static_fused_norm": (True, True, False, False), "compiled": (False, False, True, False),
            "aot": (False, False, "aot", False),
            "plain_sdpa": (False, False, False, True), "compiled_sdpa": (False, False, True, True)}
DEFAULT = "plain"  # what the code runs by default on CPU
#: a compiled variant's matrix products are its eager twin's (the same model and shapes, the same GEMM kernels)
EAGER_TWIN = {"compiled": "plain", "aot": "plain", "compiled_sdpa": "plain_sdpa"}
AOT_DIR = tempfile.TemporaryDirectory(prefix="decode-step-aot-")  # the aot variant's packages, for this process


def setup(sizes: list[int], items: int, users: int) -> tuple[Generator, PrefixTable, dict]:
    """This page's model (random weights, seed 0), catalogue of ``items`` over ``sizes`` codes, and ``users``
    histories of ``HISTORY`` items: (model in eval, the prefix table, the batch)."""
    codes = catalogue(sizes, items, seed=0)
    torch.manual_seed(0)
    model = Generator(ModelConfig(d_model=128, n_heads=4, enc_layers=4, dec_layers=4, ffn_mult=3.0, dropout=0.0,
                                  max_history=HISTORY), sizes).eval()
    batch, _ = histories(codes, users, seed=users)
    return model, PrefixTable.from_codes(torch.from_numpy(codes), sizes), batch


def timed(fn, spent: list[float]):
    """``fn``, adding the wall time of each call to ``spent[0]``."""

    def call(*args):
        t0 = time.perf_counter()
        out = fn(*args)
        spent[0] += time.perf_counter() - t0
        return out

    return call


def search(model: Generator, memory, mask, table: PrefixTable, beam: int, top_k: int, variant: str) -> dict:
    """One beam search of ``variant``: {"search_s", "step_s", "items"}."""
    static, fused, compiled, sdpa = VARIANTS[variant]
    RMSNorm.fused_inference = fused
    for m in model.modules():
        if isinstance(m, Attention):
            m.fast = not sdpa  # in eval only attend's one-query path reads it
    step_fn, state = model.beam_step_fn(memory, mask, beam, static_cache=static, compiled=compiled,
                                        aot_dir=AOT_DIR.name)
    spent = [0.0]
    timed_step = timed(step_fn, spent)
    reorder = beam_module.reorder_state
    beam_module.reorder_state = timed(reorder, spent)
    try:
        t0 = time.perf_counter()
        items, scores = beam_search(timed_step, batch_size=memory.shape[0], table=table, beam_size=beam, top_k=top_k,
                                    state=state)
        total = time.perf_counter() - t0
    finally:
        beam_module.reorder_state = reorder
    return {"search_s": total, "step_s": spent[0], "items": items, "scores": scores}


def run_caches(run: Path, users: int, reps: int, weights: Path | None = None, bf16: bool = False,
               aot: bool = False) -> dict:
    """``--run``: a run's valid scoring with the plain and the static KV cache (with ``bf16`` also the plain cache
    under ``generate.precision=bf16``, with ``aot`` the plain cache under ``generate.compile=aot``), taking turns;
    with trained weights also each variant's Recall@10 and NDCG@10 over the timed users (the valid split: read
    freely)."""
    from model_throughput import _run_data
    from onerec.eval.metrics import per_user_metrics
    from onerec.generate.generative import GenerativeRecommender
    from onerec.model import build_generator
    from onerec.pipeline import load_generator

    cfg, codes, sizes, _, valid, feat = _run_data(run, 1 << 62)
    folder = weights or run / "train"
    trained = (folder / "model.json").exists()  # a run still training: its architecture, random weights
    model = load_generator(run, codes=codes, folder=folder) if trained else build_generator(cfg.model, sizes).eval()
    rows = valid.slice(0, users) if users else valid
    table = rows.drop_columns(["targets"])
    variants = {"plain": {"static_cache": False}, "static": {"static_cache": True}}
    if bf16:
        variants["plain_bf16"] = {"static_cache": False, "precision": "bf16"}
    if aot:  # its packages compile on the warm-up below, into a temporary folder
        variants["plain_aot"] = {"static_cache": False, "compile": "aot"}
    recs = {name: GenerativeRecommender(model, codes, beam_size=cfg.generate.beam_size,
                                        batch_size=cfg.generate.batch_size, featurizer=feat, **options)
            for name, options in variants.items()}
    items = {name: rec.recommend(table.slice(0, min(256, table.num_rows)), k=10) for name, rec in recs.items()}
    times: dict[str, list[float]] = {name: [] for name in recs}
    names = list(recs)
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate which goes first
            t0 = time.perf_counter()
            items[name] = recs[name].recommend(table, k=10)
            times[name].append((time.perf_counter() - t0) * 1000 / table.num_rows)
    out = {"run": str(run), "arch": cfg.model.arch, "weights": str(folder) if trained else "random",
           "users": table.num_rows, "beam": cfg.generate.beam_size, "batch_size": cfg.generate.batch_size,
           "rounds": reps, "s_per_1000_users": {k: statistics.median(v) for k, v in times.items()},
           "plain_over_static": statistics.median(s / p for p, s in zip(times["plain"], times["static"])),
           "per_round": [s / p for p, s in zip(times["plain"], times["static"])],
           "same_items": bool((items["plain"] == items["static"]).all())}
    if bf16:
        out["bf16_over_plain"] = statistics.median(p / b for p, b in zip(times["plain"], times["plain_bf16"]))
        out["bf16_per_round"] = [p / b for p, b in zip(times["plain"], times["plain_bf16"])]
        out["bf16_same_top10_share"] = float(np.mean([len(set(a) & set(b)) / 10 for a, b in
                                                      zip(items["plain"].tolist(), items["plain_bf16"].tolist())]))
    if aot:
        out["aot_over_plain"] = statistics.median(p / a for p, a in zip(times["plain"], times["plain_aot"]))
        out["aot_per_round"] = [p / a for p, a in zip(times["plain"], times["plain_aot"])]
        out["aot_same_items"] = bool((items["plain"] == items["plain_aot"]).all())
    if trained:
        targets = [np.asarray(t, dtype=np.int64) for t in rows.column("targets").to_pylist()]
        out["valid_metrics"] = {}
        for name in recs:
            m = per_user_metrics(items[name], targets, ks=(10,))
            out["valid_metrics"][name] = {key: float(np.mean(v)) for key, v in m.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--beam", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--reps", type=int, default=None, help="rounds (each variant and its matmuls once per round; "
                                                           "default 150, with --run 3)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--note", default="torch.set_num_threads(1)", help="stored with the machine (e.g. its load)")
    ap.add_argument("--run", type=Path, help="time this run's valid scoring with the plain and the static cache")
    ap.add_argument("--users", type=int, default=1024, help="--run: valid users scored per round (0: all)")
    ap.add_argument("--weights", type=Path, help="--run: a model folder (model.json + model.safetensors; default "
                                                 "RUN/train, e.g. a checkpoint of a run still training)")
    ap.add_argument("--bf16", action="store_true", help="--run: also the plain cache under generate.precision=bf16")
    ap.add_argument("--aot", action="store_true", help="--run: also the plain cache under generate.compile=aot")
    args = ap.parse_args()
    keep_freed_memory()  # the allocator policy of the onerec command (onerec.threads); recorded in "machine"
    torch.set_num_threads(1)
    if args.reps is None:
        args.reps = 3 if args.run else 150
    if args.run:
        with torch.no_grad():
            result = run_caches(args.run, args.users, args.reps, args.weights, args.bf16, args.aot)
        result = {"benchmark": "decode_step --run",
                  "command": " ".join(["python", "benchmarks/decode_step.py", *sys.argv[1:]]),
                  "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "machine": machine_info(note=args.note), **result}
        out = args.out or RESULTS / "decode_step.run.json"
        write_json(out, result)
        print(f"{args.run}: plain {result['s_per_1000_users']['plain']:.3f} s, static "
              f"{result['s_per_1000_users']['static']:.3f} s per 1,000 users; plain x{result['plain_over_static']:.2f}"
              f"; same items: {result['same_items']}"
              + (f"; aot x{result['aot_over_plain']:.2f} (same items: {result['aot_same_items']})" if args.aot else "")
              + f"; wrote {out}")
        return
    sizes = [256, 256, 256]
    model, table, batch = setup(sizes, args.items, args.batch)
    top_k = min(args.top_k, args.beam)
    with torch.no_grad():
        memory, mask = model.encode_batch(batch)
        run = {v: (lambda v=v: search(model, memory, mask, table, args.beam, top_k, v)) for v in VARIANTS}
        t0 = time.perf_counter()
        run["aot"]()  # compiles every level's package
        aot_compile_s = time.perf_counter() - t0
        first = {v: fn() for v, fn in run.items()}  # warm-up, and the answers must agree
        ref = first["plain"]
        agree = {v: bool(torch.equal(r["items"], ref["items"])) and
                 float((r["scores"] - ref["scores"]).abs().max()) for v, r in first.items()}
        replays, n_calls = {}, {}
        for v in VARIANTS:  # each variant's matrix products, recorded once, replayed alone in the rounds below
            calls = _gemm_calls(run[EAGER_TWIN.get(v, v)])
            replays[v], n_calls[v] = _gemm_replay(calls), len(calls)
            replays[v]()
        times = {v: {"search_s": [], "step_s": [], "gemm_s": []} for v in VARIANTS}
        names = list(VARIANTS)
        for r in range(args.reps):
            for v in names[r % len(names):] + names[:r % len(names)]:  # rotate which variant goes first
                out = run[v]()
                t0 = time.perf_counter()
                replays[v]()
                times[v]["gemm_s"].append(time.perf_counter() - t0)
                times[v]["search_s"].append(out["search_s"])
                times[v]["step_s"].append(out["step_s"])

    def paired(num: list[float], den: list[float]) -> float:
        """Median over rounds of a ratio of two times taken in the same round (robust to the load drifting)."""
        return statistics.median(a / b for a, b in zip(num, den))

    rows = {}
    for v in VARIANTS:
        tv, prev = times[v], times["static"]
        rows[v] = {key: statistics.median(tv[key]) for key in ("step_s", "search_s", "gemm_s")}
        rows[v].update(gemm_calls=n_calls[v], floor_ratio=paired(tv["step_s"], tv["gemm_s"]),
                       step_speedup_over_static=paired(prev["step_s"], tv["step_s"]),
                       search_speedup_over_static=paired(prev["search_s"], tv["search_s"]),
                       same_items_as_plain=agree[v] is not False, max_score_diff=agree[v] or 0.0)
        print(f"{v:>18}: step {rows[v]['step_s'] * 1e3:7.2f} ms  search {rows[v]['search_s'] * 1e3:7.2f} ms  "
              f"matmuls alone {rows[v]['gemm_s'] * 1e3:6.2f} ms  floor ratio {rows[v]['floor_ratio']:.2f}  "
              f"search x{rows[v]['search_speedup_over_static']:.3f} over static", flush=True)
    key = f"b{args.batch}_beam{args.beam}"
    result = {
        "benchmark": "decode_step", "command": " ".join(["python", "benchmarks/decode_step.py", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(note=args.note),
        "model": "d_model 128, 4 heads, 4+4 layers, SwiGLU 256 (0.015B layout without MoE), as generation.py",
        "catalogue": {"items": args.items, "codebook_sizes": sizes, "history": HISTORY},
        "batch": args.batch, "beam": args.beam, "top_k": top_k, "rounds": args.reps, "variants": rows,
        "default": DEFAULT,
        f"floor_ratio_{key}": rows[DEFAULT]["floor_ratio"],
        f"floor_ratio_{key}_static": rows["static"]["floor_ratio"],
        # the default (plain cache) against the static cache, paired per round
        f"search_plain_over_static_{key}": rows[DEFAULT]["search_speedup_over_static"],
        # generate.compile=true against the eager default, paired per round
        f"floor_ratio_{key}_compiled": rows["compiled"]["floor_ratio"],
        f"compiled_over_eager_step_{key}": paired(times[DEFAULT]["step_s"], times["compiled"]["step_s"]),
        f"compiled_over_eager_search_{key}": paired(times[DEFAULT]["search_s"], times["compiled"]["search_s"]),
        # generate.compile=aot against the eager default and against generate.compile=true, paired per round
        f"floor_ratio_{key}_aot": rows["aot"]["floor_ratio"],
        f"aot_over_eager_step_{key}": paired(times[DEFAULT]["step_s"], times["aot"]["step_s"]),
        f"aot_over_eager_search_{key}": paired(times[DEFAULT]["search_s"], times["aot"]["search_s"]),
        f"aot_over_compiled_step_{key}": paired(times["compiled"]["step_s"], times["aot"]["step_s"]),
        "aot_compile_s": aot_compile_s,
        # the step's one-query self-attention by single_query_attention against SDPA, eager and compiled
        f"single_query_over_sdpa_step_{key}": paired(times["plain_sdpa"]["step_s"], times["plain"]["step_s"]),
        f"single_query_over_sdpa_step_{key}_compiled": paired(times["compiled_sdpa"]["step_s"],
                                                               times["compiled"]["step_s"]),
    }
    out = args.out or RESULTS / ("decode_step.json" if key == "b1_beam128" else f"decode_step.{key}.json")
    write_json(out, result)
    if key == "b1_beam128" and args.out is None:  # issue 43's key, beside the others in generation.json
        update_json(RESULTS / "generation.json",
                    {**{k: result[k] for k in ("floor_ratio_b1_beam128", "floor_ratio_b1_beam128_compiled",
                                               "floor_ratio_b1_beam128_aot")},
                     "floor_ratio_source": f"benchmarks/decode_step.py -> decode_step.json, {result['date']}"})
    print(f"floor_ratio_{key} {result[f'floor_ratio_{key}']:.2f} "
          f"(static cache {result[f'floor_ratio_{key}_static']:.2f})"
          f"; search, plain over static cache x{result[f'search_plain_over_static_{key}']:.2f}; compiled over "
          f"eager: search x{result[f'compiled_over_eager_search_{key}']:.2f}; aot over eager: step "
          f"x{result[f'aot_over_eager_step_{key}']:.2f}, search x{result[f'aot_over_eager_search_{key}']:.2f} (floor "
          f"ratio {result[f'floor_ratio_{key}_aot']:.2f}); one-query self-attention over SDPA: "
          f"step x{result[f'single_query_over_sdpa_step_{key}']:.2f} eager, "
          f"x{result[f'single_query_over_sdpa_step_{key}_compiled']:.2f} compiled; wrote {out}")


if __name__ == "__main__":
    main()
