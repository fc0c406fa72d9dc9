"""Training on several processes, measured through the product's own command (``torchrun -m onerec train RUN``).

On one run directory (the quickstart's simulated world and tokenizer, made once under ``--work``):

* **equality**: the loss curve of 1 process at global batch 2B against 2 processes x B under DDP and under FSDP
  (``model.dropout=0``: the ranks' dropout streams differ by design), and against two torchrun "nodes" of one
  process each meeting through c10d rendezvous on 127.0.0.1 (multi-node without a second machine). Booleans:
  the largest relative difference of the curves under ``--rtol``.
* **CPU scaling**: training samples/s of 1 and 2 processes (one thread each, ``train.batch_size`` per process, so
  2 processes train twice the global batch) for the quickstart model and the Technical Report's 0.015B preset
  (its model keys on the quickstart's tokenizer), in rounds that alternate 1 and 2 processes; throughput from the
  training logger's ``train/examples_per_s`` after the first window (start-up excluded); medians over rounds.
* **GPU** (``--parts gpu``, on a machine with CUDA): for the Technical Report's 0.015B, 0.121B and 0.935B presets
  (their models keyed on the run's codebooks, the positive pathway over 64 behaviours, as the memory part),
  ``torchrun --nproc_per_node=<all GPUs>`` with ``train.precision=bf16`` (autocast, fp32 master weights), DDP for
  the two small ones and FSDP for 0.935B: training samples/s and target tokens/s from the logger (start-up
  excluded), each process's peak GPU memory (``train/gpu_peak_gib``), and MFU = samples/s x 3 x forward FLOPs per
  sample (``onerec.model.info``: the backward pass counted as twice the forward) / (GPUs x the GPU's dense bf16
  peak, ``PEAK_BF16`` by device name or ``--peak-tflops``). The Technical Report reports 23.7% training MFU.
  Without CUDA the file says ``"gpu": null``.

    python benchmarks/distributed.py [--work DIR] [--rounds 3] [--steps 40] [--quick]
    python benchmarks/distributed.py --parts gpu [--gpu-steps 60]     # on a GPU machine (~5 minutes)

Writes ``benchmarks/results/distributed.json`` (``--quick``: ``distributed.quick.json``).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from onerec.bench.machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "distributed.json"
COMMAND = "python benchmarks/distributed.py"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def onerec(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "onerec", *args], check=True, stdout=subprocess.DEVNULL)


def torchrun(run: Path, nproc: int, overrides: list[str], *, nodes: int = 1) -> dict:
    """Train RUN under torchrun (``nodes`` > 1: that many torchrun agents of ``nproc`` each on 127.0.0.1, c10d
    rendezvous); returns RUN/train/history.json and the logger's throughput rows."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = ["-m", "onerec", "train", str(run), "train.threads=1", "train.logger=csv", *overrides]
    if nodes == 1:
        cmds = [[sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                 f"--master_port={_port()}", *train]]
    else:
        endpoint = f"127.0.0.1:{_port()}"
        cmds = [[sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc_per_node={nproc}",
                 f"--node_rank={r}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", "--rdzv-id=onerec-bench",
                 *train] for r in range(nodes)]
    before = set((run / "logs").glob("train-*")) if (run / "logs").is_dir() else set()
    jobs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in cmds]
    outs, peak = [], 0
    for j in jobs:
        outs.append(j.stdout.read())
        _, status, usage = os.wait4(j.pid, 0)  # the agent's rusage holds the largest of its reaped workers' peaks
        j.returncode = os.waitstatus_to_exitcode(status)
        peak = max(peak, usage.ru_maxrss)  # KiB on Linux
    for j, out in zip(jobs, outs):
        if j.returncode != 0:
            raise RuntimeError(f"torchrun failed ({j.returncode}):\n{out[-3000:]}")
    logs = sorted(set((run / "logs").glob("train-*")) - before)
    scalars: dict[str, list[tuple[int, float]]] = {}
    if logs:
        with open(logs[-1] / "scalars.csv") as f:
            for r in csv.DictReader(f):
                scalars.setdefault(r["name"], []).append((int(r["step"]), float(r["value"])))
    return {"history": json.loads((run / "train" / "history.json").read_text()),
            "rates": scalars.get("train/examples_per_s", []), "scalars": scalars,
            "parameters": json.loads((run / "train" / "metrics.json").read_text())["parameters"],
            "peak_rss_mib": peak / 1024}


def max_rel_diff(a: list[float], b: list[float]) -> float:
    if len(a) != len(b):
        return float("inf")
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))


def preset_model(name: str) -> list[str]:
    """A preset's model keys as overrides (its tokenizer keys are left out: the run's tokenizer stays)."""
    cfg = yaml.safe_load((ROOT / "src" / "onerec" / "presets" / f"{name}.yaml").read_text())
    out = []
    for k, v in cfg.get("model", {}).items():
        out.append(f"model.{k}=" + (f"[{','.join(map(str, v))}]" if isinstance(v, list) else str(v)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("runs/bench-distributed"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--quick", action="store_true", help="the tiny preset, 1 round, few steps (a smoke run)")
    ap.add_argument("--parts", default="equality,scaling,memory",
                    help="comma-separated: equality, scaling, memory, gpu (the others' results are kept from the file)")
    ap.add_argument("--gpu-steps", type=int, default=60, help="gpu: training steps per preset")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="gpu: the GPU's dense bf16 peak in TFLOP/s (default: PEAK_BF16 by device name)")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if args.quick:
        args.rounds, args.steps = 1, 10
    run = args.work / ("tiny" if args.quick else "quickstart")
    if not (run / "tokenizer").is_dir():
        onerec("data", "--out", str(run), "--preset", "tiny" if args.quick else "quickstart")
        onerec("tokenize", str(run))
    t0 = time.time()
    path = RESULTS.with_suffix(".quick.json") if args.quick else RESULTS
    out: dict = json.loads(path.read_text()) if path.is_file() else {}
    if "command" in out:  # a file from before the parts were stamped one by one: its stamp is the first two parts'
        first = {k: out.pop(k) for k in ("command", "date", "machine")}
        out.setdefault("parts", {}).update(equality=first, scaling=first)
    stamp = {"command": COMMAND + (" --quick" if args.quick else "") + f" --parts {args.parts}",
             "date": dt.date.today().isoformat(), "machine": machine_info("2 processes x 1 thread on the same CPU")}
    out.setdefault("parts", {}).update(dict.fromkeys(sorted(parts), stamp))
    out.update(run=str(run), rtol=args.rtol)

    if "equality" in parts:
        equality(run, args, out)
    if "scaling" in parts:
        scaling(run, args, out)
    if "memory" in parts:
        memory(run, args, out)
    if "gpu" in parts or "gpu" not in out:
        gpu(run, args, out)
    out["seconds"] = round(time.time() - t0, 1)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in ("curves", "parts")}, indent=2))
    print(f"wrote {path}")


def equality(run: Path, args, out: dict) -> None:
    """One process at global batch 2B, against 2 x B (DDP, FSDP) and two 1-process "nodes"."""
    eq = ["train.max_steps=12", "train.checkpoint_every=1000", "train.log_every=4", "model.dropout=0",
          "train.warmup_steps=3"]
    one = torchrun(run, 1, [*eq, "train.batch_size=64"])["history"]["loss"]
    curves = {"single": one}
    for name, nproc, nodes, extra in (("ddp", 2, 1, ["train.strategy=ddp"]), ("fsdp", 2, 1, ["train.strategy=fsdp"]),
                                      ("two_nodes", 1, 2, ["train.strategy=ddp"])):
        curves[name] = torchrun(run, nproc, [*eq, "train.batch_size=32", *extra], nodes=nodes)["history"]["loss"]
        diff = max_rel_diff(curves[name], one)
        out[f"{name}_matches_single"] = diff <= args.rtol
        out[f"{name}_max_rel_diff"] = diff
        print(f"{name}: max relative difference to one process {diff:.2e}", flush=True)
    out["curves"] = curves


def scaling(run: Path, args, out: dict) -> None:
    """CPU scaling: samples/s at 1 and 2 processes, alternated rounds."""
    models = {"quickstart": [], "onerec-0.015b": preset_model("onerec-0.015b")}
    if args.quick:
        models = {"tiny": []}
    batch = {"quickstart": 256, "onerec-0.015b": 32, "tiny": 64}
    table = {}
    for name, keys in models.items():
        per = {1: [], 2: []}
        for _ in range(args.rounds):
            for nproc in (1, 2):
                res = torchrun(run, nproc, [*keys, f"train.max_steps={args.steps}", f"train.batch_size={batch[name]}",
                                            "train.checkpoint_every=100000", "train.log_every=5"])
                rates = [r for s, r in res["rates"] if s > 5]  # the first window holds the start-up
                per[nproc].append(statistics.median(rates))
                print(f"{name} x{nproc}: {per[nproc][-1]:.1f} samples/s", flush=True)
        med = {n: statistics.median(v) for n, v in per.items()}
        table[name] = {"samples_per_s_1proc": med[1], "samples_per_s_2proc": med[2],
                       "ratio_2proc": med[2] / med[1], "efficiency": med[2] / med[1] / 2,
                       "rounds": {str(n): v for n, v in per.items()}, "batch_size_per_process": batch[name],
                       "parameters": res["parameters"]}
    out["scaling"] = table
    out["cpu_scaling_2proc"] = table[next(iter(table))]["ratio_2proc"]


def memory(run: Path, args, out: dict) -> None:
    """Peak resident memory of the largest process: the Technical Report's 0.121B preset's transformer (its model
    keys on the run's codebooks, reading the positive pathway over 64 behaviours: 89M parameters; the four pathways
    and the lifelong QFormer's features alone took 8 GB of host memory in one process) trained a few steps on 1
    process, and on 2 under DDP, FSDP, and FSDP with activation checkpointing. Weights, gradients and AdamW's two
    moments are 16 bytes a parameter: DDP keeps all of them on every process, FSDP half of them on each of 2."""
    keys = [] if args.quick else [*preset_model("onerec-0.121b"), "model.pathways=[positive]", "model.max_history=64"]
    steps = ["train.max_steps=3", "train.batch_size=4", "train.checkpoint_every=100000", "train.logger=none",
             "train.warmup_steps=1"]
    variants = {"1 process": (1, []), "ddp": (2, ["train.strategy=ddp"]), "fsdp": (2, ["train.strategy=fsdp"]),
                "fsdp + activation checkpointing": (2, ["train.strategy=fsdp", "train.activation_checkpointing=true"])}
    rows = {}
    for name, (nproc, extra) in variants.items():
        res = torchrun(run, nproc, [*keys, *steps, *extra])
        rows[name] = {"peak_rss_mib": round(res["peak_rss_mib"], 1), "parameters": res["parameters"],
                      "states_mib_per_process": round(16 * res["parameters"] / (nproc if "fsdp" in name else 1)
                                                      / 2**20, 1)}
        print(f"memory {name}: peak {rows[name]['peak_rss_mib']:.0f} MiB", flush=True)
    out["memory"] = {"model": "onerec-0.121b" if not args.quick else "tiny", "batch_size_per_process": 4,
                     "variants": rows}


#: dense (no sparsity) bf16 peak of one GPU in FLOP/s, from the vendors' datasheets, by a part of torch's device name
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362.05e12, "L4": 121e12}
GPU_PRESETS = {"onerec-0.015b": (256, "ddp"), "onerec-0.121b": (64, "ddp"), "onerec-0.935b": (16, "fsdp")}


def train_flops_per_sample(run: Path, keys: list[str], sizes: list[int]) -> int:
    """3 x the forward FLOPs of one training sample of the model ``keys`` build on the codebooks ``sizes``."""
    from onerec.config import load_config
    from onerec.model.info import _build_meta, forward_flops

    cfg = load_config(file=run / "config.yaml", overrides=keys)
    return 3 * forward_flops(_build_meta(cfg.model, sizes))["total"]


def gpu(run: Path, args, out: dict) -> None:
    """GPU training throughput, memory and MFU (see the module docstring)."""
    import torch

    if not torch.cuda.is_available():
        out["gpu"] = None
        out["gpu_note"] = ("no GPU on this machine: tokens/s, peak memory and MFU at bf16 for 0.015B / 0.121B / "
                           "0.935B are not measured (python benchmarks/distributed.py --parts gpu on a GPU machine)")
        return
    name, n = torch.cuda.get_device_name(0), torch.cuda.device_count()
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next((v for k, v in PEAK_BF16.items() if k in name), None)
    sizes = json.loads((run / "tokenizer" / "metrics.json").read_text())["codebook_sizes"]
    rows = {}
    for preset, (batch, strategy) in GPU_PRESETS.items():
        keys = [*preset_model(preset), "model.pathways=[positive]", "model.max_history=64"]
        res = torchrun(run, n, [*keys, f"train.max_steps={args.gpu_steps}", f"train.batch_size={batch}",
                                    f"train.strategy={strategy}", "train.precision=bf16", "train.device=cuda",
                                    "train.checkpoint_every=100000", "train.log_every=10"])
        rates = [r for s, r in res["rates"] if s > 10]  # the first window holds the start-up and CUDA warm-up
        samples = statistics.median(rates) if rates else float("nan")
        flops = train_flops_per_sample(run, keys, sizes)
        memory = [m for _, m in res["scalars"].get("train/gpu_peak_gib", [])]  # torchrun gives each rank its GPU
        rows[preset] = {"gpus": n, "strategy": strategy, "batch_size_per_gpu": batch, "parameters": res["parameters"],
                        "samples_per_s": samples, "target_tokens_per_s": samples * len(sizes),
                        "train_gflops_per_sample": flops / 1e9,
                        "mfu": samples * flops / (n * peak) if peak else None,
                        "gpu_peak_gib": max(memory, default=None)}
        print(f"gpu {preset}: {samples:.0f} samples/s, MFU {rows[preset]['mfu']}", flush=True)
    out["gpu"] = {"device": name, "gpus": n, "peak_bf16_flops": peak, "presets": rows,
                  "machine": machine_info(f"{n} x {name}")}
    out.pop("gpu_note", None)


if __name__ == "__main__":
    main()
