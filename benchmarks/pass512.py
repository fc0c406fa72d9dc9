"""Pass@512 over a 1M-item catalogue: OneRec's production setting (issue 43), on CPU or a GPU (``--device``).

OneRec serves 512 candidates per request (the whole final beam of a beam-512 search), which the reward model then
scores. Here, per preset: a request's encoder pass and its constrained beam search at beam 512 with all 512
returned, over 1,000,000 items on 3 x 256 codes (47 MB of prefix tables), histories of 50. Weights are random:
latency does not depend on them.

The model is the preset's encoder and decoder (sizes, heads, MoE experts and routing) over the positive pathway only
and the default behaviour features (the other pathways and features need side information that a synthetic request
does not have; they add encoder tokens and embedding tables, not decoder work). Each preset runs in its own
process, so that its peak resident memory (``VmHWM``; on a GPU also ``peak_gpu_mib``) is its own: the Python process,
torch, the model, the prefix tables and the search's activations.

Per preset and batch (requests decoded together): the median latency of ``--reps`` searches after one warm-up,
requests per second (batch / latency), and with ``--compile`` / ``--aot`` the same search with
``generate.compile=true`` / ``generate.compile=aot`` (interleaved with the eager one, paired ratios; the AOT packages
compiled into a temporary folder, their compile time reported).

    python benchmarks/pass512.py                                  # 0.015B and 0.121B, batch 1 and 8 (~10 min)
    python benchmarks/pass512.py --presets onerec-0.015b --batches 1 --reps 3 --compile --aot
    python benchmarks/pass512.py --presets lazy-10m onerec-v2-0.1b --out .../pass512.lazy.json   # the lazy decoder
    python benchmarks/pass512.py --device cuda --compile [--precision bf16]   # a GPU: CUDA graphs, bf16

Writes ``benchmarks/results/generation/pass512.json`` (``--out``) and, per preset, the ``pass512_1m`` key of
``generation.json`` (the presets of earlier runs stay, each with its source).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generation import HISTORY, RESULTS, catalogue, histories
from onerec.bench.machine import machine_info
from onerec.config import ModelConfig, load_config
from onerec.generate.generative import GenerativeRecommender
from onerec.io import read_json, update_json, write_json
from onerec.model import build_generator
from onerec.threads import keep_freed_memory

SIZES = [256, 256, 256]


def peak_rss_mib() -> float:
    """This process's peak resident memory (Linux ``VmHWM``), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so a clock read after it covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one(preset: str, items: int, batches: list[int], reps: int, compile: bool, device: str = "cpu",
        precision: str = "fp32", aot: bool = False) -> dict:
    """Every measurement of one preset, in this process."""
    torch.set_num_threads(1)
    dev = torch.device(device)
    cfg = load_config(preset).model
    cfg.pathways, cfg.max_history = ["positive"], HISTORY
    cfg.behaviour_features = ModelConfig().behaviour_features  # what a request without side information has
    torch.manual_seed(0)
    model = build_generator(cfg, SIZES).eval()
    t0 = time.perf_counter()
    codes = catalogue(SIZES, items, seed=0)
    rec = GenerativeRecommender(model, codes, beam_size=512, device=dev, precision=precision)
    table_s = time.perf_counter() - t0
    table = rec.table
    # rec.compile per timing: one prefix table
    modes = {"eager": False, **({"compiled": True} if compile else {}), **({"aot": "aot"} if aot else {})}
    out = {"preset": preset, "arch": cfg.arch, "device": str(dev), "precision": precision,
           "parameters": sum(p.numel() for p in model.parameters()),
           "d_model": cfg.d_model, "layers": [cfg.enc_layers, cfg.dec_layers], "moe_experts": cfg.moe_experts,
           "table_mb": round(sum(t.numel() * t.element_size() for t in (
               table.codes, table.leaf_item, *table.child_ptr, *table.child_tok, *table.child_key)) / 1e6, 1),
           "catalogue_s": round(table_s, 2), "rows": []}
    for b in batches:
        batch, _ = histories(codes, b, seed=b)
        times: dict[str, list[float]] = {k: [] for k in modes}
        with torch.no_grad():
            for name, compiled in modes.items():  # warm-up (and the compile)
                rec.compile = compiled
                t0 = time.perf_counter()
                items_, _, _ = rec.generate(batch, 512, beam_size=512)
                _sync(dev)
                if name != "eager":
                    out.setdefault("compile_s" if name == "compiled" else "aot_compile_s",
                                   round(time.perf_counter() - t0, 1))
                assert int((items_ >= 0).sum(1).min()) == 512  # 512 distinct valid items per request
            for _ in range(reps):
                for name, compiled in modes.items():
                    rec.compile = compiled
                    _sync(dev)
                    t0 = time.perf_counter()
                    rec.generate(batch, 512, beam_size=512)
                    _sync(dev)
                    times[name].append(time.perf_counter() - t0)
        row = {"batch": b, "latency_s": statistics.median(times["eager"]),
               "requests_per_s": b / statistics.median(times["eager"]), "reps": reps}
        for name in modes:
            if name != "eager":
                row[f"{name}_latency_s"] = statistics.median(times[name])
                row[f"{name}_over_eager"] = statistics.median(e / c for e, c in zip(times["eager"], times[name]))
        out["rows"].append(row)
        print(f"{preset} batch {b}: {row['latency_s']:.3f} s per search, {row['requests_per_s']:.2f} requests/s"
              + "".join(f", {name} x{row[f'{name}_over_eager']:.2f}" for name in modes if name != "eager"),
              file=sys.stderr, flush=True)
    out["peak_rss_mib"] = round(peak_rss_mib(), 1)
    if dev.type == "cuda":
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="*", default=["onerec-0.015b", "onerec-0.121b"])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 8])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also time generate.compile=true, interleaved")
    ap.add_argument("--aot", action="store_true", help="also time generate.compile=aot, interleaved")
    ap.add_argument("--note", default="torch.set_num_threads(1)", help="stored with the machine (e.g. its load)")
    ap.add_argument("--out", type=Path, help="results file (default benchmarks/results/generation/pass512.json, "
                                             "pass512.cuda.json on a GPU)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (on a GPU generation.cuda.json gets the summary)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="generate.precision")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one preset in this process
    args = ap.parse_args()
    if args.aot and args.precision == "bf16":
        ap.error("--aot compiles the float32 step (generate.compile=aot refuses bf16): run it with --precision fp32")
    keep_freed_memory()  # the allocator policy of the onerec command (onerec.threads); recorded in "machine"
    if args.one:
        print(json.dumps(one(args.one, args.items, args.batches, args.reps, args.compile, args.device,
                             args.precision, args.aot)))
        return
    results = []
    for preset in args.presets:
        cmd = [sys.executable, __file__, "--one", preset, "--items", str(args.items), "--reps", str(args.reps),
               "--batches", *map(str, args.batches), "--device", args.device, "--precision", args.precision]
        cmd += (["--compile"] if args.compile else []) + (["--aot"] if args.aot else [])
        done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    result = {"benchmark": "pass512", "command": " ".join(["python", "benchmarks/pass512.py", *sys.argv[1:]]),
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info(note=args.note),
              "catalogue": {"items": args.items, "codebook_sizes": SIZES, "history": HISTORY},
              "beam": 512, "top_k": 512, "presets": results}
    gpu = torch.device(args.device).type == "cuda"
    out = args.out or RESULTS / ("pass512.cuda.json" if gpu else "pass512.json")
    write_json(out, result)
    gen_path = RESULTS / ("generation.cuda.json" if gpu else "generation.json")
    # generation.json keeps every preset measured so far, each with the run it came from
    summary = {r["preset"]: {"latency_s_b1": next((x["latency_s"] for x in r["rows"] if x["batch"] == 1), None),
                             "rows": r["rows"], "peak_rss_mib": r["peak_rss_mib"],
                             "source": f"benchmarks/pass512.py -> {out.name}, {result['date']}"} for r in results}
    before = read_json(gen_path).get("pass512_1m", {}) if gen_path.exists() else {}
    source = before.pop("source", None)  # the key of the earlier layout: one source for every preset
    for row in before.values():
        if isinstance(row, dict) and source is not None:
            row.setdefault("source", source)
    update_json(gen_path, {"pass512_1m": {**before, **summary}})
    print(f"wrote {out} and the pass512_1m key of {gen_path}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
