"""Constrained beam search: onerec against Hugging Face ``generate`` + ``prefix_allowed_tokens_fn``.

The baseline is what open semantic-ID recommenders (TIGER-style) run: a T5 encoder-decoder of the
same size as the onerec model, decoding semantic IDs as tokens of one shared vocabulary, with
validity enforced by a per-beam Python callback that walks a dict trie of the items' codes
(``prefix_allowed_tokens_fn``). Both sides encode the same histories (H tokens per user), run beam
search with the same width over the same catalogue and return the top ``--top-k`` valid items.

onerec side: :meth:`GenerativeRecommender.generate` (encoder once per user, per-user cross-attention
K/V, self-attention KV cache, batched constrained search with dense/sparse candidates).
Also timed: the same search with the plain uncached decoder (``cached=False``) at beams <= 128.

Model (both sides): d_model 128, 4 heads, 4 encoder + 4 decoder layers, SwiGLU FFN 256, i.e. the
Technical Report's 0.015B layout without its mixture of experts (T5: gated-silu, d_ff 256).
Catalogue: ``--items`` random distinct codes over codebooks ``--sizes`` (default 3 x 256: level 0
and 1 dense, level 2 sparse), histories of 50 items.

Constraint share: time inside the prefix table's queries (children / allowed_mask / advance /
item_of) over the whole decode (encoder excluded), on the onerec side; ``search_share`` adds the
rest of the search outside the model (top-k, gathers, state re-ordering). The HF side reports the
share of its time spent in ``PrefixConstrainedLogitsProcessor`` (per-beam loop + callback), and in the
callback alone.

    python benchmarks/generation.py            # beams 32/128/512 x batch 1/64 (tens of minutes on 1 thread)
    python benchmarks/generation.py --quick    # beams 32/128, batch 1 and 8
    python benchmarks/generation.py --device cuda   # both sides on the GPU -> generation.cuda.json

Ceiling: one more (profiled) run per configuration measures the time of the matrix-multiply kernels
alone (``onerec_gemm_s``); no exact fp32 implementation of the same model can be faster than that,
so ``speedup_ceiling = hf_s / onerec_gemm_s`` is the most any implementation could show here.

Every figure is the median of ``--reps`` runs (HF: fewer at large sizes, see "reps"), with torch
on 1 thread on both sides. Writes ``benchmarks/results/generation/generation[.quick].json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from onerec.bench.machine import machine_info
from onerec.config import ModelConfig
from onerec.features.history import HistoryFeaturizer, Ragged
from onerec.generate.generative import GenerativeRecommender
from onerec.io import update_json
from onerec.model.generator import Generator
from onerec.model.layers import ffn_hidden
from onerec.threads import keep_freed_memory
from onerec.tokenizer.constraints import PrefixTable

RESULTS = Path(__file__).resolve().parent / "results" / "generation"
HISTORY = 50


def catalogue(sizes: list[int], n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    flat = rng.choice(int(np.prod(sizes)), size=n, replace=False)
    digits = []
    for v in reversed(sizes):
        digits.append(flat % v)
        flat = flat // v
    return np.stack(digits[::-1], axis=1).astype(np.int64)


def histories(codes: np.ndarray, users: int, seed: int) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    rng = np.random.default_rng(seed)
    items = rng.integers(0, len(codes), (users, HISTORY))
    offsets = np.arange(users + 1, dtype=np.int64) * HISTORY
    ts = np.tile(np.arange(HISTORY, dtype=np.int64) * 600, users)
    seqs = Ragged(offsets, items.reshape(-1), ts, np.ones(users * HISTORY, dtype=np.int64))
    request_ts = np.full(users, ts[-1] + 60)
    batch = HistoryFeaturizer(codes, HISTORY).histories(seqs, np.arange(users), offsets[1:], request_ts)
    return batch, items


# ---------------------------------------------------------------------- timing
DEVICE = torch.device("cpu")


def sync() -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; on CPU this does nothing), so a
    host clock read after it covers the work launched before it."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


# ---------------------------------------------------------------------- onerec side
class TimedTable(PrefixTable):
    """The same table, with the time spent in its query methods accumulated (synchronised on a GPU)."""

    spent = 0.0

    @classmethod
    def wrap(cls, table: PrefixTable) -> TimedTable:
        t = cls.__new__(cls)
        t.__dict__.update(table.__dict__)
        return t


def _timed(name: str):
    method = getattr(PrefixTable, name)

    def timed(self, *a, **kw):
        sync()
        t0 = time.perf_counter()
        out = method(self, *a, **kw)
        sync()
        TimedTable.spent += time.perf_counter() - t0
        return out

    return timed


for _name in ("children", "allowed_mask", "advance", "item_of"):
    setattr(TimedTable, _name, _timed(_name))


def run_onerec(model: Generator, codes: np.ndarray, batch: dict, beam: int, top_k: int, cached: bool = True,
               instrument: bool = True) -> dict:
    """One search. ``instrument``: also time the encoder, the model's decoding steps and the prefix
    table's queries (on a GPU each timed region is synchronised, which slows the search: time its
    speed with ``instrument=False`` and read the shares from an instrumented run)."""
    rec = GenerativeRecommender(model, codes, beam_size=beam, device=DEVICE)
    spent = {"model": 0.0, "encoder": 0.0}

    def timed(fn, key):
        def run(*a):
            sync()
            t0 = time.perf_counter()
            out = fn(*a)
            sync()
            spent[key] += time.perf_counter() - t0
            return out

        return run

    if instrument:
        rec.table = TimedTable.wrap(rec.table)
        step_orig = model.beam_step_fn

        def timed_step_fn(memory, mask, beams, **options):  # options: compiled, static_cache
            fn, state = step_orig(memory, mask, beams, **options)
            return timed(fn, "model"), state

        model.beam_step_fn = timed_step_fn
        model.encode_batch = timed(model.encode_batch, "encoder")
        TimedTable.spent = 0.0
    try:
        sync()
        t0 = time.perf_counter()
        items, _, _ = rec.generate(batch, top_k, beam_size=beam, cached=cached)
        sync()
        total = time.perf_counter() - t0
    finally:
        if instrument:
            del model.beam_step_fn, model.encode_batch
    valid = bool(((items >= 0) & (items < len(codes))).all())
    if not instrument:
        return {"seconds": total, "valid": valid}
    decode = total - spent["encoder"]
    return {"seconds": total, "constraint_share": TimedTable.spent / decode,
            "search_share": (decode - spent["model"]) / decode if cached else None, "valid": valid}


GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


def onerec_breakdown(model: Generator, codes: np.ndarray, batch: dict, beam: int, top_k: int, reps: int = 3) -> dict:
    """Where the onerec search's time goes, from torch's profiler (median of ``reps`` profiled runs):
    matrix multiplies (the kernels' own time) and attention kernels. ``gemm_s`` is the floor of ANY
    exact fp32 implementation of this model doing this search on this machine (it must run these
    multiplies), so ``hf_s / gemm_s`` bounds the speed-up any implementation could show here."""
    from torch.profiler import ProfilerActivity, profile

    rec = GenerativeRecommender(model, codes, beam_size=beam, device=DEVICE)
    gpu = DEVICE.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if gpu else [ProfilerActivity.CPU]
    gemm, attn = [], []
    for _ in range(reps):
        with profile(activities=activities) as prof:
            rec.generate(batch, top_k, beam_size=beam)
            sync()
        ev = prof.key_averages()
        # on a GPU: the time of the kernels each operator launched; on CPU: the operator's own time
        spent = (lambda e: e.device_time_total) if gpu else (lambda e: e.self_cpu_time_total)
        gemm.append(sum(spent(e) for e in ev if e.key in GEMM_OPS) / 1e6)
        attn.append(sum(spent(e) for e in ev if "attention" in e.key and e.key.startswith("aten::")) / 1e6)
    return {"gemm_s": statistics.median(gemm), "attention_s": statistics.median(attn)}


# ---------------------------------------------------------------------- Hugging Face side
class HfProcessorTimer:
    """Time inside transformers' PrefixConstrainedLogitsProcessor (its per-beam loop and the callback)."""

    spent = 0.0

    @classmethod
    def install(cls) -> None:
        from transformers.generation import logits_process

        proc = logits_process.PrefixConstrainedLogitsProcessor
        if getattr(proc.__call__, "_timed", False):
            return
        orig = proc.__call__

        def timed(self, input_ids, scores):
            sync()
            t0 = time.perf_counter()
            out = orig(self, input_ids, scores)
            sync()
            cls.spent += time.perf_counter() - t0
            return out

        timed._timed = True
        proc.__call__ = timed


def hf_model(sizes: list[int], seed: int):
    from transformers import T5Config, T5ForConditionalGeneration

    HfProcessorTimer.install()
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=2 + sum(sizes), d_model=128, d_kv=32, d_ff=ffn_hidden(128, 3.0), num_layers=4,
                   num_decoder_layers=4, num_heads=4, feed_forward_proj="gated-silu", dropout_rate=0.0,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=False)
    return T5ForConditionalGeneration(cfg).to(DEVICE).eval()


def hf_trie(codes: np.ndarray, sizes: list[int]) -> dict[tuple[int, ...], list[int]]:
    """Decoder-token prefix -> allowed next tokens; level t's code c is token 2 + sum(sizes[:t]) + c."""
    offset = 2 + np.concatenate([[0], np.cumsum(sizes)[:-1]])
    tokens = codes + offset[None, :]
    trie: dict[tuple[int, ...], set[int]] = {}
    for row in tokens.tolist():
        for t in range(len(row)):
            trie.setdefault(tuple(row[:t]), set()).add(row[t])
    return {k: sorted(v) for k, v in trie.items()}


def run_hf(model, trie, hist_items: np.ndarray, sizes: list[int], beam: int, top_k: int, valid_codes: set) -> dict:
    depth = len(sizes)
    spent = 0.0

    def allowed(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        nonlocal spent
        t0 = time.perf_counter()
        out = trie.get(tuple(input_ids.tolist()[1:]), [])
        spent += time.perf_counter() - t0
        return out

    # the encoder reads one token per history item (its first code), as many as onerec's encoder
    input_ids = torch.from_numpy(2 + hist_items % sizes[0]).to(DEVICE)
    HfProcessorTimer.spent = 0.0
    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), num_beams=beam,
                             num_return_sequences=top_k, max_new_tokens=depth, min_new_tokens=depth,
                             prefix_allowed_tokens_fn=allowed, do_sample=False, early_stopping=True,
                             length_penalty=1.0)
    sync()
    total = time.perf_counter() - t0
    seqs = out[:, 1:].tolist()
    return {"seconds": total, "callback_share": spent / total, "constraint_share": HfProcessorTimer.spent / total,
            "valid": all(tuple(s) in valid_codes for s in seqs)}


# ---------------------------------------------------------------------- driver
def median_runs(fn, reps: int, budget_s: float) -> tuple[dict, int]:
    runs, start = [], time.perf_counter()
    while len(runs) < reps and (not runs or time.perf_counter() - start + runs[-1]["seconds"] < budget_s):
        runs.append(fn())
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], float)}
    med["valid"] = all(r["valid"] for r in runs)
    return med, len(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="beams 32/128, batch 1 and 8")
    ap.add_argument("--beams", type=int, nargs="*", default=None)
    ap.add_argument("--batches", type=int, nargs="*", default=None)
    ap.add_argument("--sizes", type=int, nargs="*", default=[256, 256, 256])
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--budget", type=float, default=60.0, help="seconds of repeats per configuration and side")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]: both sides run there (results file "
                    "generation.cuda.json)")
    args = ap.parse_args()
    keep_freed_memory()  # the allocator policy of the onerec command (onerec.threads); recorded in "machine"
    global DEVICE
    DEVICE = torch.device(args.device)
    gpu = DEVICE.type == "cuda"
    beams = args.beams or ([32, 128] if args.quick else [32, 128, 512])
    batches = args.batches or ([1, 8] if args.quick else [1, 64])
    torch.set_num_threads(1)
    sizes, codes = args.sizes, catalogue(args.sizes, args.items, seed=0)
    torch.manual_seed(0)
    mcfg = ModelConfig(d_model=128, n_heads=4, enc_layers=4, dec_layers=4, ffn_mult=3.0, dropout=0.0,
                       max_history=HISTORY)
    ours = Generator(mcfg, sizes).eval()
    theirs = hf_model(sizes, seed=0)
    trie, offs = hf_trie(codes, sizes), 2 + np.concatenate([[0], np.cumsum(sizes)[:-1]])
    valid_codes = {tuple(r) for r in (codes + offs[None, :]).tolist()}
    rows = []
    for b in batches:
        batch, hist_items = histories(codes, b, seed=b)
        for beam in beams:
            top_k = min(args.top_k, beam)
            # on a GPU the instrumented search synchronises at every timed region: its speed is timed
            # without instruments, its shares read from instrumented runs
            fast = functools.partial(run_onerec, ours, codes, batch, beam, top_k, instrument=not gpu)
            plain = functools.partial(run_onerec, ours, codes, batch, beam, top_k, cached=False, instrument=not gpu)
            hf = functools.partial(run_hf, theirs, trie, hist_items, sizes, beam, top_k, valid_codes)
            with torch.no_grad():
                fast()  # warm-up
                o, o_n = median_runs(fast, args.reps, args.budget)
                if gpu:
                    shares, _ = median_runs(functools.partial(run_onerec, ours, codes, batch, beam, top_k), 3,
                                            args.budget)
                    o.update(constraint_share=shares["constraint_share"], search_share=shares["search_share"])
                u, u_n = median_runs(plain, args.reps, args.budget) if beam <= 128 else (None, 0)
                floor = onerec_breakdown(ours, codes, batch, beam, top_k)
            hf()  # warm-up (CUDA kernels, caches)
            h, h_n = median_runs(hf, args.reps, args.budget)
            row = {"batch": b, "beam": beam, "top_k": top_k, "onerec_s": o["seconds"], "hf_s": h["seconds"],
                   "speedup": h["seconds"] / o["seconds"], "constraint_share": o["constraint_share"],
                   "search_share": o["search_share"], "hf_callback_share": h["callback_share"],
                   "hf_constraint_share": h["constraint_share"],
                   "onerec_uncached_s": u["seconds"] if u else None,
                   "kv_cache_speedup": u["seconds"] / o["seconds"] if u else None,
                   "onerec_gemm_s": floor["gemm_s"], "onerec_attention_s": floor["attention_s"],
                   "speedup_ceiling": h["seconds"] / floor["gemm_s"],
                   "valid": o["valid"] and h["valid"], "reps": {"onerec": o_n, "hf": h_n, "uncached": u_n}}
            rows.append(row)
            print(f"batch {b:>3} beam {beam:>3}: onerec {o['seconds'] * 1e3:8.1f} ms  hf {h['seconds'] * 1e3:9.1f} ms  "
                  f"x{row['speedup']:.1f}  constraints {o['constraint_share']:.1%}  search {o['search_share']:.1%}  "
                  f"hf constraints {h['constraint_share']:.1%} (callback {h['callback_share']:.1%})"
                  + (f"  kv-cache x{row['kv_cache_speedup']:.1f}" if u else "")
                  + f"  gemm floor {floor['gemm_s'] * 1e3:.1f} ms (ceiling x{row['speedup_ceiling']:.1f})", flush=True)
    at128 = next((r for r in rows if r["beam"] == 128 and r["batch"] == 1), None)
    result = {
        "command": "python benchmarks/generation.py" + (" --quick" if args.quick else "")
        + (f" --device {args.device}" if gpu else ""),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(note="torch.set_num_threads(1) on both sides"),
        "device": torch.cuda.get_device_name(DEVICE) if gpu else "cpu",
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "model": "d_model 128, 4 heads, 4+4 layers, SwiGLU 256 (0.015B layout without MoE); "
                 "HF: T5 gated-silu, same sizes",
        "catalogue": {"items": args.items, "codebook_sizes": sizes, "history": HISTORY},
        "speedup_beam128": at128["speedup"] if at128 else None,
        "speedup_ceiling_beam128": at128["speedup_ceiling"] if at128 else None,
        "speedup_b64_beam128": next((r["speedup"] for r in rows if r["beam"] == 128 and r["batch"] == 64), None),
        "constraint_share": statistics.median(r["constraint_share"] for r in rows),
        "constraint_share_max": max(r["constraint_share"] for r in rows),
        "rows": rows,
    }
    out = RESULTS / f"generation{'.quick' if args.quick else ''}{'.cuda' if gpu else ''}.json"
    update_json(out, result)  # atomic; keeps the keys pass512.py and decode_step.py keep in this file
    print(f"speedup at beam 128, batch 1: x{result['speedup_beam128'] or float('nan'):.1f}; constraint share (median) "
          f"{result['constraint_share']:.1%}; wrote {out}")


if __name__ == "__main__":
    main()
