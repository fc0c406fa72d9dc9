"""A measurement for issue 43, not a product path: the beam search's decode step compiled ahead of time with
AOTInductor (``torch.export`` + ``torch._inductor.aoti_compile_and_package``), against the eager step and its
matrix-multiply floor, at batch 1, beam 128 on CPU.

``generate.compile`` (``torch.compile``) leaves Dynamo's guard checks (~0.28 ms a step here: ~300 guards a graph)
and the compiled graphs' Python wrappers in every step; an AOTInductor package is called without either. This script
exports the eager step once per semantic-ID level with the shapes of one search (static shapes: one user, one
history length), compiles each to a package, checks that the search returns the same items, and then times, in
interleaved rounds, the eager step, the AOTInductor step and the eager step's matrix products replayed alone (the
floor of ``benchmarks/decode_step.py``: every ``mm`` / ``addmm`` / ``bmm`` with its shapes and layouts, as plain fp32
products). "step" is the model's step function summed over a search; the cache re-ordering between steps is not in
it (``decode_step.py`` adds it: ~0.1 ms a search at this size). Model and catalogue as ``decode_step.py``
(d_model 128, 4 heads, 4 + 4 layers, SwiGLU, 50,000 items over 3 x 256 codes, histories of 50), one torch thread.

What a product path would still need: shapes that vary (users per batch, rows, history length) through
``torch.export.Dim``, the packages cached per model on disk (compiling took 15-35 s a level here), and the agreement
tests of ``tests/generate/test_compiled.py``.

    python benchmarks/decode_aoti.py [--reps 40] [--out benchmarks/results/generation/decode_aoti.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_step import setup, timed
from generation import RESULTS
from model_throughput import _gemm_calls, _gemm_replay
from onerec.bench.machine import machine_info
from onerec.generate.beam import beam_search
from onerec.io import write_json
from onerec.model.generator import DecodingContext, Generator
from onerec.threads import keep_freed_memory


class _Level(torch.nn.Module):
    """``decode_step`` at one fixed level, with tensors and lists of tensors only (what ``torch.export`` takes)."""

    def __init__(self, model: Generator, step: int, beams: int) -> None:
        super().__init__()
        self.model, self.step, self.beams = model, step, beams

    def forward(self, prefix, mask, cross, cache):
        ctx = DecodingContext(cross=[tuple(c) for c in cross], mask=mask, beams=self.beams, users=mask.shape[0])
        log_probs, new = self.model.decode_step(prefix, self.step, ctx,
                                                None if self.step == 0 else [tuple(c) for c in cache])
        return log_probs, [list(c) for c in new]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--beam", type=int, default=128)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--out", type=Path, default=RESULTS / "decode_aoti.json")
    ap.add_argument("--note", default="torch.set_num_threads(1)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()  # the allocator policy of the onerec command, as decode_step.py
    from torch._inductor import aoti_compile_and_package, aoti_load_package

    model, table, batch = setup([256, 256, 256], args.items, 1)
    with torch.no_grad():
        memory, mask = model.encode_batch(batch)
        ctx = model.start_decoding(memory, mask, args.beam)
        cross = [list(c) for c in ctx.cross]

        def eager(tokens, step, cache):
            return model.decode_step(tokens, step, ctx, cache)

        seen = []

        def recording(tokens, step, cache):
            seen.append((tokens.clone(), step, [list(c) for c in cache] if cache is not None else []))
            return eager(tokens, step, cache)

        def search(step_fn):
            spent = [0.0]
            items, scores = beam_search(timed(step_fn, spent), batch_size=1, table=table, beam_size=args.beam,
                                        top_k=10, state=None)
            return items, scores, spent[0]

        ref_items, ref_scores, _ = search(recording)
        runners, compile_s = {}, {}
        with tempfile.TemporaryDirectory() as tmp:
            for tokens, step, cache in seen:
                t0 = time.perf_counter()
                exported = torch.export.export(_Level(model, step, args.beam), (tokens, ctx.mask, cross, cache),
                                               strict=False)
                runners[step] = aoti_load_package(aoti_compile_and_package(exported,
                                                                           package_path=f"{tmp}/level{step}.pt2"))
                compile_s[step] = round(time.perf_counter() - t0, 1)

            def aoti(tokens, step, cache):
                log_probs, new = runners[step](tokens, ctx.mask, cross, [list(c) for c in cache] if cache else [])
                return log_probs, [tuple(c) for c in new]

            items, scores, _ = search(aoti)
            same = bool(torch.equal(items, ref_items))
            max_diff = float((scores - ref_scores).abs().max())
            replay = _gemm_replay(_gemm_calls(lambda: search(eager)))
            replay()
            times: dict[str, list[float]] = {"eager": [], "aoti": [], "matmuls": []}
            variants = [("eager", eager), ("aoti", aoti)]
            for r in range(args.reps):
                for name, fn in variants if r % 2 else variants[::-1]:  # alternate which goes first
                    times[name].append(search(fn)[2])
                t0 = time.perf_counter()
                replay()
                times["matmuls"].append(time.perf_counter() - t0)

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    result = {
        "benchmark": "decode_aoti", "command": " ".join(["python", "benchmarks/decode_aoti.py", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(note=args.note),
        "model": "d_model 128, 4 heads, 4+4 layers, SwiGLU 256 (0.015B layout without MoE), as decode_step.py",
        "batch": 1, "beam": args.beam, "rounds": args.reps, "static_shapes": True,
        "compile_s_per_level": compile_s, "same_items": same, "max_score_diff": max_diff,
        "step_ms": {k: statistics.median(v) * 1e3 for k, v in times.items()},
        "floor_ratio_eager": paired("eager", "matmuls"), "floor_ratio_aoti": paired("aoti", "matmuls"),
        "aoti_over_eager_step": paired("eager", "aoti"),
    }
    write_json(args.out, result)
    print(f"step: eager {result['step_ms']['eager']:.2f} ms, AOTInductor {result['step_ms']['aoti']:.2f} ms, matmuls "
          f"alone {result['step_ms']['matmuls']:.2f} ms; floor ratio eager {result['floor_ratio_eager']:.2f}, "
          f"AOTInductor {result['floor_ratio_aoti']:.2f}; AOTInductor x{result['aoti_over_eager_step']:.2f}; same "
          f"items: {same}; wrote {args.out}")


if __name__ == "__main__":
    main()
