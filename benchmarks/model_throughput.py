"""Training throughput of the generator presets (samples/s, tokens/s) on this machine's CPU.

For each preset the model is built from ``presets/<name>.yaml`` with the paper's vocabulary
(3 x 8192 semantic IDs) and trained on synthetic batches that fill every pathway (405 encoder
tokens for the paper presets), so the figure measures the model, not the featurizer. A step is
forward + backward + optimizer step; the median step time over ``--steps`` timed steps (after
one warm-up step) gives samples/s and tokens/s (encoder + decoder tokens per sample).

fp32 AdamW needs 16 bytes per parameter (weights, gradients, two moments) before activations:
0.935B -> 15 GB and 2.633B -> 42 GB. On a 24 GB machine, 0.935B is measured with plain SGD
(8 bytes per parameter) and 2.633B with SGD applied inside the backward pass ("sgd-in-backward":
each parameter is updated and its gradient freed as soon as the gradient is complete, through
``Tensor.register_post_accumulate_grad_hook``), so only the weights (4 bytes per parameter,
10.7 GB) and one layer's gradients are resident. The update is the same as SGD's; only the
memory differs. The JSON names the optimizer of every row.

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` counts the matrix multiplies of the warm-up
step's forward + backward (``flops_per_sample``; it has no formula for the CPU fused attention
kernel, so attention scores are left out and the figure is a slight underestimate). That step runs
the mixture-of-experts layers with the loop-over-experts reference, so only the routed tokens'
multiplies are counted (model FLOPs): the timed steps use the grouped implementation, whose padded
expert buffers do extra multiplies on zero rows (4.2x the model FLOPs at 2.633B, batch 1).
``achieved_gflops`` divides the model FLOPs by the median step time. ``flops_per_sample_6n`` is
the usual 6 x active parameters x tokens estimate, kept for comparison: it overstates the small
presets' work, most of whose parameters are embedding rows (semantic IDs, hashed sparse features)
that cost no multiply.

MFU (model FLOPs utilisation; the Technical Report: 23.7% in training) needs a GPU: ``--mfu`` times
training steps of the paper presets on ``--device`` (default cuda) under bf16 autocast with fused AdamW,
at each batch size of ``--mfu-batches`` that fits, and divides the model FLOPs per second (counted as
above) by the peak of the same device measured in the same run (the median rate of a bf16
8192 x 8192 x 8192 matrix product); the datasheet peak is recorded beside it. Peak memory
(``torch.cuda.max_memory_allocated``) is recorded per row. Results go to ``model.json`` under
``"throughput_gpu"``.

``--epoch-profile RUN`` splits a training epoch of a run's generator (its config, its real train batches and
valid users) on ``--device`` into its parts: the median training step (forward + backward + AdamW, the
loop's settings), the featurizer's share of it, the valid beam search per 1,000 users, and, from torch's
profiler over 3 steps, the operators and (on a GPU) the kernels launched per step and their summed GPU
time against the step's wall time: the share of a step the device is busy. It extrapolates one epoch
(train steps + scoring every valid user) from these. Results go to ``model.json`` under
``"epoch_profile_<cpu|cuda>"``.

    python benchmarks/model_throughput.py [--presets quickstart,onerec-0.015b,...] [--steps 3]
    python benchmarks/model_throughput.py --moe-only     # one MoE layer: grouped / padded / loop reference
    python benchmarks/model_throughput.py --packing RUN  # packed vs padded encoder on a run's real histories
    python benchmarks/model_throughput.py --precision RUN  # fp32 vs bf16-autocast training steps, same data
    python benchmarks/model_throughput.py --pathway-cost RUN  # training steps with vs without the succession pathway
    python benchmarks/model_throughput.py --mfu            # GPU: MFU of onerec-0.121b / 0.935b training steps
    python benchmarks/model_throughput.py --epoch-profile RUN [--device cuda]  # where a training epoch's time goes
    python benchmarks/model_throughput.py --step-floor RUN  # a training step against its matmul floor, before/after

``--packing RUN`` takes a run directory that has its tokenizer stage (e.g. one seed of
``onerec bench amazon``), builds the run's generator twice with the same weights
(``model.encoder_impl=packed``, the default, and ``padded``, the reference) and times, alternating
the two, training steps (forward + backward + AdamW) on the same random batches of the train
split and constrained beam search (the run's beam and batch size) over the same valid users. Real
histories are mostly padding (Amazon Beauty: 6.7 of 20 slots filled on average), which the packed
encoder skips; the synthetic batches above have none, so they cannot show it.

``--precision RUN`` times training steps of the run's generator in fp32 and under bfloat16
autocast (``train.precision=bf16``) the same way (3 rounds of ``--packing-steps`` steps, alternating;
the median of the rounds' ratios). bf16 only pays on a CPU with bf16 matrix units (AVX-512 BF16 /
AMX; ``bf16_matmul_cpu`` records the flag) or a GPU.

``--step-floor RUN`` times training steps of a run's generator (its config and real train batches: forward,
backward, gradient clipping and AdamW as in ``onerec train``) against their matrix-multiply floor, in one
process: the model with the layers' plain reference implementations (the code before the CPU fast paths of
:mod:`onerec.model.layers`), with the fast paths (the default), and with the fast paths but no
attention-weight dropout (a what-if: it changes the trained function, so it is not the default), taking turns
on the same batches, ``--floor-rounds`` rounds of ``--packing-steps`` steps each. The step's FLOPs are
counted once by ``FlopCounterMode`` on the reference step (its attention goes through SDPA's math path, so
the attention products are counted too). The matrix products the step runs (``mm``/``bmm`` with their
shapes and layouts, recorded by a dispatch mode) are replayed alone, as plain fp32 products of random
operands, right after every timed step: that replay's time is the step's floor, and ``floor_fraction`` is
the median of floor / step time over the pairs (the pairs are seconds apart, so the shared machine's load
moves both alike). Beside it, the rate of a plain 2048^3 fp32 product, timed once a round
(``vs_matmul_2048`` = the step's FLOP rate over it, the median over the rounds). ``torch.profiler`` gives
each variant's top operators by self time (share of the step). Results go to ``model.json`` under
``"step_floor_cpu"``.

Results merge into ``benchmarks/results/model/model.json`` under ``"throughput_cpu"``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from onerec.bench.machine import cpu_has, machine_info, matmul_rate_cpu
from onerec.config import ModelConfig, from_dict, load_config, to_dict
from onerec.io import write_json
from onerec.model import build_generator
from onerec.model.generator import Generator
from onerec.model.info import codebook_sizes

RESULTS = Path(__file__).resolve().parent / "results" / "model"
PLAN = {  # preset: (batch size, optimizer)
    "quickstart": (256, "adamw"),
    "onerec-0.015b": (8, "adamw"),
    "onerec-0.121b": (2, "adamw"),
    "onerec-0.935b": (1, "sgd"),
    "onerec-2.633b": (1, "sgd-in-backward"),
}


def synthetic_batch(model: Generator, b: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch filling every enabled pathway with random but valid values (no padding)."""
    cfg, sizes = model.cfg, model.codebook_sizes
    g = np.random.default_rng(seed)

    def tokens(prefix: str, t: int) -> dict[str, torch.Tensor]:
        codes = np.stack([g.integers(0, v, (b, t)) for v in sizes], -1)
        out = {f"{prefix}_codes": codes, f"{prefix}_flags": g.integers(0, 512, (b, t)),
               f"{prefix}_age": g.integers(0, 40, (b, t)), f"{prefix}_mask": np.ones((b, t), dtype=bool)}
        for k in ("item", "author", "tag"):
            out[f"{prefix}_{k}"] = g.integers(1, 10**6, (b, t))
        for k in ("play", "dur"):
            out[f"{prefix}_{k}"] = g.integers(1, 20, (b, t))
        return out

    batch = tokens("hist", cfg.max_history)
    if "short" in cfg.pathways:
        batch.update(tokens("short", cfg.short_len))
    if "lifelong" in cfg.pathways:
        batch.update(tokens("life", cfg.lifelong_reps))
        batch["life_count"] = g.integers(1, 20, (b, cfg.lifelong_reps))
    if "static" in cfg.pathways:
        batch.update(user_id=g.integers(1, 10**6, b), user_cats=g.integers(1, 100, (b, 8)),
                     user_act=g.integers(1, 20, b))
    batch["target"] = np.stack([g.integers(0, v, b) for v in sizes], -1)
    return {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}


def make_optimizer(model: torch.nn.Module, optim: str, lr: float) -> torch.optim.Optimizer | None:
    """AdamW, SGD, or None for "sgd-in-backward", where hooks apply SGD during ``backward()``:
    p <- p - lr * grad as soon as p's gradient is accumulated, then the gradient is freed."""
    if optim == "adamw":  # fused on a GPU (one kernel for all parameters); the plain loop on CPU
        return torch.optim.AdamW(model.parameters(), lr=lr, fused=next(model.parameters()).is_cuda)
    if optim == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr)
    if optim != "sgd-in-backward":
        raise ValueError(f"unknown optimizer {optim!r}: adamw, sgd or sgd-in-backward")

    @torch.no_grad()
    def apply(p: torch.Tensor) -> None:
        p.add_(p.grad, alpha=-lr)
        p.grad = None

    for p in model.parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(apply)
    return None


def measure(preset: str, batch_size: int, optim: str, steps: int, *, device: torch.device | str = "cpu",
            bf16: bool = False, warmup: int = 1) -> dict:
    """Training steps (forward + backward + ``optim``) of ``preset`` on synthetic batches on ``device``
    (``bf16``: forward under bf16 autocast): the first step counts the model FLOPs (MoE: the exact
    per-expert loop), the first ``warmup`` steps are not timed, then the median of ``steps`` timed steps."""
    device = torch.device(device)
    cfg = load_config(preset=preset)
    sizes = codebook_sizes(cfg)  # levels x codebook_size (the paper presets: 3 x 8192)
    torch.manual_seed(0)
    model = build_generator(cfg.model, sizes).to(device).train()
    counts = model.parameter_counts()
    opt = make_optimizer(model, optim, lr=1e-4)
    batch = {k: v.to(device) for k, v in synthetic_batch(model, batch_size).items()}
    gpu = device.type == "cuda"
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    times, flops = [], None
    moe = [m for _, m in model.moe_layers()]
    for i in range(steps + warmup):
        counter = FlopCounterMode(display=False) if i == 0 else contextlib.nullcontext()
        for m in moe:  # count model FLOPs with the exact per-expert loop, time the grouped (padded) path
            m.impl = "loop" if i == 0 else "grouped"
        _sync(device)
        t0 = time.perf_counter()
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        with counter:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model(batch)
            loss.backward()
        if opt is not None:
            opt.step()
        _sync(device)
        if i == 0:
            flops = counter.get_total_flops()
        if i >= warmup:  # the first step allocates optimizer state and warms up
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    enc_tokens, dec_tokens = model.enc_len, len(sizes)
    tokens = enc_tokens + dec_tokens
    out = {
        "batch_size": batch_size, "optimizer": optim, "steps_timed": steps, "step_s_median": round(step, 5),
        "step_s_all": [round(t, 5) for t in times],
        "samples_per_s": round(batch_size / step, 4), "tokens_per_s": round(batch_size * tokens / step, 1),
        "achieved_gflops": round(flops / step / 1e9, 2),
        "tokens_per_sample": tokens, "params_total": counts["total"], "params_active": counts["active"],
        "flops_per_sample": round(flops / batch_size),
        "flops_per_sample_6n": 6 * counts["active"] * tokens, "loss": round(float(loss.detach()), 3),
    }
    if gpu:
        out["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    del model, opt, batch, loss
    gc.collect()
    if gpu:
        torch.cuda.empty_cache()
    return out


def moe_speed(repeats: int = 5) -> dict:
    """Forward + backward of one MoE layer (24 experts, top-2, d=256, 2048 tokens): each implementation."""
    from onerec.model.moe import IMPLS, MoE

    torch.manual_seed(0)
    layers = {impl: MoE(256, 704, 24, 2, impl=impl) for impl in IMPLS}
    for m in layers.values():
        m.load_state_dict(layers["grouped"].state_dict())
    x = torch.randn(2048, 256)
    out = {}
    for name, m in layers.items():
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            m(x).square().mean().backward()
            times.append(time.perf_counter() - t0)
        out[f"{name}_s_median"] = round(statistics.median(times[1:]), 4)
    out["grouped_speedup_vs_loop"] = round(out["loop_s_median"] / out["grouped_s_median"], 2)
    out["padded_speedup_vs_loop"] = round(out["loop_s_median"] / out["padded_s_median"], 2)
    return out


def _run_data(run: Path, users: int, *, pathways: list[str] | None = None):
    """A run directory's config, item codes, codebook sizes, train examples, first ``users`` valid rows
    and the featurizer it trained with (``pathways``: built for the run's model with these pathways instead)."""
    from onerec.io import read_json
    from onerec.pipeline import load_codes, load_splits, make_featurizer, run_config, train_examples

    cfg = run_config(run)
    codes = load_codes(run)
    splits = load_splits(run / "data" / "split", n_items=len(codes))
    sizes = read_json(run / "tokenizer" / "metrics.json")["codebook_sizes"]
    mcfg = cfg.model if pathways is None else from_dict(ModelConfig, {**to_dict(cfg.model), "pathways": pathways})
    feat = make_featurizer(run, mcfg, codes)
    # the examples the run trains on (train.objective: every position at once for the lazy model)
    return cfg, codes, sizes, train_examples(splits["train"], feat, cfg), splits["valid"].slice(0, users), feat


def _encdec_only(cfg, what: str) -> None:
    """``what`` compares variants of the encoder-decoder's encoder: refused for a run of another architecture."""
    if cfg.model.arch != "encdec":
        raise SystemExit(f"{what} compares encoder variants of model.arch=encdec; this run's model.arch is "
                         f"{cfg.model.arch}")


def _alternate_train_steps(models: dict, opts: dict, train, batch_size: int, steps: int, rng: np.random.Generator,
                           *, warmup: bool = True, autocast: set[str] = frozenset(),
                           fill: list[float] | None = None) -> dict[str, list[float]]:
    """Seconds of ``steps`` training steps (forward + backward + optimizer) of each model, the models taking
    turns on the same random train batches; ``warmup``: one more untimed first step (it allocates the
    optimizer state); models named in ``autocast`` run their forward under bf16 autocast; ``fill`` collects
    each batch's share of filled history slots."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for s in range(steps + warmup):
        batch = train.batch(rng.choice(len(train), train.rows_per_batch(batch_size), replace=False))
        if fill is not None:
            fill.append(float(batch["hist_mask"].float().mean()))
        for name, model in models.items():
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name in autocast):
                loss = model(batch)
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
            if s or not warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def precision_speed(run: Path, steps: int, repeats: int = 3) -> dict:
    """fp32 against bf16-autocast training steps (``train.precision``) of a run's generator on its real
    train batches: one model per precision from the same initial weights, timed alternately; ``repeats``
    rounds of ``steps`` steps, the speed-up is the median of the rounds' ratios of median step times."""
    cfg, _, sizes, train, _, _ = _run_data(run, 0)
    modes = ("fp32", "bf16")
    torch.manual_seed(0)
    models = {p: build_generator(cfg.model, sizes) for p in modes}
    models["bf16"].load_state_dict(models["fp32"].state_dict())
    opts = {p: torch.optim.AdamW(m.parameters(), lr=cfg.train.lr) for p, m in models.items()}
    rng = np.random.default_rng(0)
    rounds = []
    for r in range(repeats):
        times = _alternate_train_steps(models, opts, train, cfg.train.batch_size, steps, rng, warmup=r == 0,
                                       autocast={"bf16"})
        rounds.append({p: round(statistics.median(times[p]), 4) for p in modes})
    ratios = [x["fp32"] / x["bf16"] for x in rounds]
    return {"run": str(run), "batch_size": cfg.train.batch_size, "steps_timed": steps, "repeats": repeats,
            "bf16_matmul_cpu": cpu_has("avx512_bf16", "amx_bf16"),
            "train_step_s_median": rounds, "train_speedups": [round(x, 3) for x in ratios],
            "train_speedup": round(statistics.median(ratios), 2)}


def pathway_cost(run: Path, steps: int, repeats: int = 3) -> dict:
    """Training steps of a run's generator with and without the succession pathway (``model.pathways``
    ``[positive]`` against ``[positive, succession]``, everything else the run's), on the same real train
    batches (the featurizer builds the succession tokens; the positive-only model does not read them), taken in
    turns; ``repeats`` rounds of ``steps`` steps. Also the real encoder tokens per training row of each."""
    variants = {"positive": ["positive"], "positive+succession": ["positive", "succession"]}
    cfg, _, sizes, train, _, _ = _run_data(run, 0, pathways=variants["positive+succession"])
    _encdec_only(cfg, "--pathway-cost")
    mcfgs = {v: from_dict(ModelConfig, {**to_dict(cfg.model), "pathways": p}) for v, p in variants.items()}
    torch.manual_seed(0)
    models = {v: Generator(m, sizes) for v, m in mcfgs.items()}
    opts = {v: torch.optim.AdamW(m.parameters(), lr=cfg.train.lr) for v, m in models.items()}
    rng = np.random.default_rng(0)
    rounds = []
    for r in range(repeats):
        times = _alternate_train_steps(models, opts, train, cfg.train.batch_size, steps, rng, warmup=r == 0)
        rounds.append({v: round(statistics.median(times[v]), 4) for v in variants})
    sample = train.batch(rng.choice(len(train), 4096, replace=False))
    hist, succ = float(sample["hist_mask"].sum(1).float().mean()), float(sample["succ_mask"].sum(1).float().mean())
    ratios = [x["positive+succession"] / x["positive"] for x in rounds]
    return {"run": str(run), "batch_size": cfg.train.batch_size, "steps_timed": steps, "repeats": repeats,
            "encoder_tokens_per_row": {"positive": round(hist, 2), "positive+succession": round(hist + succ, 2)},
            "train_step_s_median": rounds, "cost_ratios": [round(x, 3) for x in ratios],
            "cost_ratio": round(statistics.median(ratios), 2)}


def packing_speed(run: Path, steps: int, users: int) -> dict:
    """Packed vs padded encoder on a run's train batches and valid users, timed alternately."""
    from onerec.generate.generative import GenerativeRecommender

    cfg, codes, sizes, train, valid, feat = _run_data(run, users)
    _encdec_only(cfg, "--packing")
    torch.manual_seed(0)
    impls = ("packed", "padded")
    models = {i: Generator(from_dict(ModelConfig, {**to_dict(cfg.model), "encoder_impl": i}), sizes) for i in impls}
    models["padded"].load_state_dict(models["packed"].state_dict())
    opts = {i: torch.optim.AdamW(m.parameters(), lr=cfg.train.lr) for i, m in models.items()}
    rng = np.random.default_rng(0)
    fill: list[float] = []
    times = _alternate_train_steps(models, opts, train, cfg.train.batch_size, steps, rng, fill=fill)
    # dropout made the two trainings differ: beam search runs both on the packed model's trained weights
    models["padded"].load_state_dict(models["packed"].state_dict())
    gen_times: dict[str, list[float]] = {i: [] for i in impls}
    items = {}
    users_table = valid.drop_columns(["targets"])
    for _ in range(3):
        for i in impls:
            gen = GenerativeRecommender(models[i].eval(), codes, beam_size=cfg.generate.beam_size,
                                        batch_size=cfg.generate.batch_size, featurizer=feat)
            t0 = time.perf_counter()
            items[i] = gen.recommend(users_table, k=10)
            gen_times[i].append(time.perf_counter() - t0)
    med = {i: statistics.median(times[i]) for i in impls}
    gmed = {i: statistics.median(gen_times[i]) for i in impls}
    return {
        "run": str(run), "batch_size": cfg.train.batch_size, "history_slots": cfg.model.max_history,
        "history_fill_mean": round(float(np.mean(fill)), 4), "steps_timed": steps,
        "train_step_s_median": {i: round(v, 4) for i, v in med.items()},
        "train_speedup": round(med["padded"] / med["packed"], 2),
        "valid_users": valid.num_rows, "beam_size": cfg.generate.beam_size, "generate_repeats": 3,
        "generate_s_median": {i: round(v, 3) for i, v in gmed.items()},
        "generate_speedup": round(gmed["padded"] / gmed["packed"], 2),
        # the same weights: the top-10 lists must be the same
        "same_top10_share": round(float((items["packed"] == items["padded"]).all(axis=1).mean()), 4),
    }


def _gemm_calls(fn) -> list[tuple[str, tuple, tuple]]:
    """The matrix products (``mm``, ``bmm``, ``addmm``, ``baddbmm``) ``fn()`` runs, in order: (op, shapes of
    the two matrix operands, their layouts: "row" = rows contiguous, "col" = a transposed contiguous matrix)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    ops = {torch.ops.aten.mm.default: "mm", torch.ops.aten.bmm.default: "bmm",
           torch.ops.aten.addmm.default: "addmm", torch.ops.aten.baddbmm.default: "baddbmm"}
    calls: list[tuple[str, tuple, tuple]] = []

    def layout(t: torch.Tensor) -> str:
        return "row" if t.stride(-1) == 1 else "col" if t.stride(-2) == 1 else "other"

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = ops.get(func)
            if name is not None:
                a, b = args[1:3] if name.startswith(("addmm", "baddbmm")) else args[:2]
                calls.append((name, (tuple(a.shape), tuple(b.shape)), (layout(a), layout(b))))
            return func(*args, **(kwargs or {}))

    with Record():
        fn()
    return calls


def _gemm_flops(call: tuple[str, tuple, tuple]) -> int:
    (a, b) = call[1]
    return 2 * (a[0] if len(a) == 3 else 1) * a[-2] * a[-1] * b[-1]


def _gemm_replay(calls: list):
    """A function that runs ``calls``' matrix products alone, in order, as plain fp32 products of random
    operands with the same shapes and layouts (one pair of operands per distinct product, made once)."""

    def operand(shape: tuple, layout: str) -> torch.Tensor:
        if layout == "col":
            return torch.randn(*shape[:-2], shape[-1], shape[-2]).transpose(-2, -1)
        return torch.randn(shape)

    made: dict = {}
    for call in calls:
        if call not in made:
            op, shapes, layouts = call
            made[call] = (torch.bmm if op in ("bmm", "baddbmm") else torch.mm,
                          *(operand(sh, lay) for sh, lay in zip(shapes, layouts)))
    plan = [made[c] for c in calls]

    def replay() -> None:
        for f, a, b in plan:
            f(a, b)

    return replay


def _top_ops(profiles: list, steps: int, top: int = 12) -> list[dict]:
    """The operators with the most self CPU time over ``profiles`` (``torch.profiler`` runs of ``steps`` steps
    in all): ms per step and share of the profiled self time."""
    from collections import Counter

    self_us, calls = Counter(), Counter()
    for prof in profiles:
        for e in prof.key_averages():
            self_us[e.key] += e.self_cpu_time_total
            calls[e.key] += e.count
    total = sum(self_us.values())
    return [{"op": k, "ms_per_step": round(t / 1e3 / steps, 2), "share": round(t / total, 4),
             "calls_per_step": round(calls[k] / steps, 1)} for k, t in self_us.most_common(top)]


def step_floor(run: Path, steps: int, rounds: int, profile_steps: int = 6) -> dict:
    """A training step of ``run``'s generator (its config, its real train batches; forward + backward + gradient
    clipping + AdamW with the loop's settings) against its matrix-multiply floor, for the layers' reference
    implementations (``onerec.model.layers.use_reference`` and ``Packing.fast = False``: the code before the
    fast paths) and their fast paths (the default), and, as a what-if that changes the trained function, the
    fast paths with no attention-weight dropout (SDPA's fused CPU kernel). See the module docstring
    (``--step-floor``)."""
    import copy

    from torch.profiler import ProfilerActivity, profile

    from onerec.model.layers import Attention, Packing, use_reference

    cfg, _, sizes, train, _, _ = _run_data(run, 0)
    torch.manual_seed(0)
    base = build_generator(cfg.model, sizes).train()
    variants = ("reference", "fast", "fast_no_attention_dropout")
    models = {v: copy.deepcopy(base) for v in variants}
    use_reference(models["reference"])
    for m in models["fast_no_attention_dropout"].modules():
        if isinstance(m, Attention):
            m.dropout = 0.0
    tc = cfg.train
    opts = {v: torch.optim.AdamW(m.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.98))
            for v, m in models.items()}
    rng = np.random.default_rng(0)
    bs = train.rows_per_batch(tc.batch_size)  # train.batch_size counts targets (rows of every-position examples)

    def one_step(v: str, batch: dict) -> None:
        model, opt = models[v], opts[v]
        Packing.fast = v != "reference"  # a class-wide switch: set for each step
        try:
            loss = model(batch, label_smoothing=tc.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
        finally:
            Packing.fast = True

    batch = train.batch(rng.choice(len(train), bs, replace=False))
    for v in variants:  # AdamW state, allocator
        one_step(v, batch)
    flops, gemms = {}, {}
    for v in ("reference", "fast"):
        counter = FlopCounterMode(display=False)
        with counter:
            one_step(v, batch)
        flops[v] = counter.get_total_flops()
        gemms[v] = _gemm_calls(lambda v=v: one_step(v, batch))
    replays = {v: _gemm_replay(c) for v, c in gemms.items()}
    for r in replays.values():
        r()  # warm-up
    # each step is followed at once by a replay of its matrix products alone (the floor), so the shared
    # machine's load moves both alike; a plain 2048^3 product is timed once per round
    per_round = []
    for _ in range(rounds):
        times: dict[str, list[float]] = {v: [] for v in variants}
        floors: dict[str, list[float]] = {v: [] for v in replays}
        for i in range(steps):
            batch = train.batch(rng.choice(len(train), bs, replace=False))
            for v in variants[i % 3:] + variants[:i % 3]:  # each variant goes first in turn
                t0 = time.perf_counter()
                one_step(v, batch)
                times[v].append(time.perf_counter() - t0)
                if v in replays:
                    t0 = time.perf_counter()
                    replays[v]()
                    floors[v].append(time.perf_counter() - t0)
        row = {f"{v}_step_s": statistics.median(t) for v, t in times.items()}
        row.update({f"{v}_gemm_floor_s": statistics.median(t) for v, t in floors.items()})
        row.update({f"{v}_floor_fraction": statistics.median(f / t for f, t in zip(floors[v], times[v]))
                    for v in replays})
        row["matmul_2048_flops_per_s"] = matmul_rate_cpu()
        per_round.append(row)
    runs: dict[str, list] = {v: [] for v in variants}
    for _ in range(profile_steps):  # one step per variant in turn, each under its own profiler
        batch = train.batch(rng.choice(len(train), bs, replace=False))
        for v in variants:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                one_step(v, batch)
            runs[v].append(prof)
    profiles = {v: _top_ops(p, profile_steps) for v, p in runs.items()}

    def med(key: str) -> float:
        return statistics.median(r[key] for r in per_round)

    model_flops = flops["reference"]
    large = med("matmul_2048_flops_per_s")
    out: dict = {"run": str(run), "model": to_dict(cfg.model), "batch_size": bs, "threads": torch.get_num_threads(),
                 "steps_per_round": steps, "n_rounds": rounds, "profiled_steps": profile_steps,
                 "history_fill": round(float(batch["hist_mask"].float().mean()), 4),
                 "model_flops_per_step": model_flops,
                 "flops_counted_fast": flops["fast"],
                 "matmul_gflops_2048": round(large / 1e9, 1), "variants": {}}
    for v in variants:
        step = med(f"{v}_step_s")
        row = {"step_s": round(step, 4), "achieved_gflops": round(model_flops / step / 1e9, 2),
               "vs_matmul_2048": round(statistics.median(model_flops / r[f"{v}_step_s"] / r["matmul_2048_flops_per_s"]
                                                         for r in per_round), 3)}
        if v in gemms:
            floor = med(f"{v}_gemm_floor_s")
            gflops = sum(_gemm_flops(c) for c in gemms[v])
            row.update(gemm_calls=len(gemms[v]), gemm_gflops=round(gflops / 1e9, 3),
                       gemm_floor_s=round(floor, 4), matmul_gflops_at_step_shapes=round(gflops / floor / 1e9, 2),
                       floor_fraction=round(med(f"{v}_floor_fraction"), 3))
        row["speedup_vs_reference"] = round(statistics.median(r["reference_step_s"] / r[f"{v}_step_s"]
                                                              for r in per_round), 3)
        row["top_ops"] = profiles[v]
        out["variants"][v] = row
    out["rounds"] = [{k.replace("_flops_per_s", "_gflops"): round(x / 1e9, 1) if k.endswith("_flops_per_s")
                      else round(x, 4) for k, x in r.items()} for r in per_round]
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    """The device's bf16 matrix-product rate in FLOP/s: the median over ``repeats`` timed n x n x n
    products of random inputs (after 3 warm-ups), each timed alone."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
    times = []
    for i in range(repeats + 3):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def mfu(presets: list[str], batches: list[int], steps: int, device: torch.device) -> dict:
    """bf16-autocast training steps with fused AdamW (:func:`measure`; a second untimed step warms the
    grouped MoE path up) of each preset at each batch size, their model FLOP/s over ``device``'s
    measured peak (``mfu``); a batch size that runs out of device memory is recorded as such and the
    larger ones are skipped."""
    peak = matmul_peak(device)
    out: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "precision": "bf16 autocast, fp32 weights, AdamW (fused on a GPU)",
                 "peak_bf16_tflops_measured": round(peak / 1e12, 1),
                 "peak_note": "median of 10 bf16 8192^3 products on this device, this run; datasheet dense bf16: "
                              "H100 SXM 989 TFLOP/s, H200 989 TFLOP/s", "presets": {}}
    for preset in presets:
        rows = out["presets"].setdefault(preset, [])
        for b in batches:
            try:
                row = measure(preset, b, "adamw", steps, device=device, bf16=True, warmup=2)
                rows.append({**row, "model_tflops": round(row["achieved_gflops"] / 1e3, 2),
                             "mfu": round(row["achieved_gflops"] * 1e9 / peak, 4)})
            except torch.OutOfMemoryError:
                gc.collect()
                torch.cuda.empty_cache()
                rows.append({"batch_size": b, "out_of_memory": True})
                break
            print(preset, rows[-1], flush=True)
    return out


def epoch_profile(run: Path, device: torch.device, steps: int, users: int) -> dict:
    """Where one training epoch's time goes on ``device`` (see the module docstring, ``--epoch-profile``)."""
    from torch.profiler import ProfilerActivity, profile

    from onerec.generate.generative import GenerativeRecommender

    cfg, codes, sizes, train, every_valid, feat = _run_data(run, 1 << 62)
    valid, n_valid = every_valid.slice(0, users), every_valid.num_rows
    torch.manual_seed(0)
    model = build_generator(cfg.model, sizes).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    rng = np.random.default_rng(0)
    bs = cfg.train.batch_size
    rows = train.rows_per_batch(bs)  # bs counts targets, as in the training loop; a row may hold several
    feat_s, step_s = [], []

    def one_step() -> None:
        t0 = time.perf_counter()
        batch = {k: v.to(device) for k, v in train.batch(rng.choice(len(train), rows, replace=False)).items()}
        t1 = time.perf_counter()
        loss = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        float(loss.detach())  # the training loop reads the loss back every step
        _sync(device)
        feat_s.append(t1 - t0)
        step_s.append(time.perf_counter() - t0)

    for _ in range(5):  # warm-up: optimizer state, kernels, allocator
        one_step()
    feat_s.clear(), step_s.clear()
    for _ in range(steps):
        one_step()
    gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if gpu else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(3):
            one_step()
    events = prof.events()
    ops = sum(1 for e in events if e.cpu_parent is None and not e.name.startswith("ProfilerStep"))
    kernels = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    step = statistics.median(step_s)
    model.eval()
    rec = GenerativeRecommender(model, codes, beam_size=cfg.generate.beam_size, batch_size=cfg.generate.batch_size,
                                featurizer=feat, device=device)
    users_table = valid.drop_columns(["targets"])
    rec.recommend(users_table.slice(0, min(256, valid.num_rows)), k=10)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    rec.recommend(users_table, k=10)
    _sync(device)
    per_1000 = (time.perf_counter() - t0) / valid.num_rows * 1000
    steps_per_epoch = -(-len(train) // rows)
    out = {"run": str(run), "device": torch.cuda.get_device_name(device) if gpu else "cpu",
           "batch_size": bs, "rows_per_step": rows, "steps_timed": steps, "train_step_s_median": round(step, 5),
           "featurize_share": round(statistics.median(feat_s) / step, 4),
           "top_level_ops_per_step": round(ops / 3), "valid_users_timed": valid.num_rows,
           "beam_size": cfg.generate.beam_size, "valid_s_per_1000_users": round(per_1000, 3),
           "steps_per_epoch": steps_per_epoch, "valid_users": n_valid,
           "epoch_s_estimate": {"train": round(steps_per_epoch * step, 1),
                                "valid": round(n_valid * per_1000 / 1000, 1)}}
    if gpu:
        busy = sum(e.time_range.elapsed_us() for e in kernels) / 1e6 / 3  # kernels may overlap: an upper bound
        out.update(kernels_per_step=round(len(kernels) / 3), gpu_busy_share=round(busy / step, 4))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default=",".join(PLAN))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--machine", default="", help="describe the machine for the results (sharing, load)")
    ap.add_argument("--moe-only", action="store_true", help="only time the MoE layer: grouped, padded, loop")
    ap.add_argument("--packing", type=Path, metavar="RUN", help="only time packed vs padded encoder on RUN's data")
    ap.add_argument("--packing-steps", type=int, default=20, help="--packing / --precision: timed steps per variant")
    ap.add_argument("--packing-users", type=int, default=2000, help="--packing: valid users beam-searched")
    ap.add_argument("--precision", type=Path, metavar="RUN", help="only time fp32 vs bf16-autocast training steps "
                                                                  "on RUN's data (train.precision)")
    ap.add_argument("--pathway-cost", type=Path, metavar="RUN", help="only time training steps of RUN's generator "
                    "with and without the succession pathway")
    ap.add_argument("--step-floor", type=Path, metavar="RUN", help="only time RUN's training step against its "
                    "matrix-multiply floor: layers' reference paths vs fast paths, with a profile of each")
    ap.add_argument("--floor-rounds", type=int, default=5, help="--step-floor: rounds of --packing-steps steps")
    ap.add_argument("--mfu", action="store_true", help="only measure training MFU on --device (a GPU)")
    ap.add_argument("--mfu-presets", default="onerec-0.121b,onerec-0.935b")
    ap.add_argument("--mfu-batches", default="8,32,128", help="comma-separated batch sizes, smallest first")
    ap.add_argument("--device", default="cuda", help="--mfu / --epoch-profile: the device")
    ap.add_argument("--epoch-profile", type=Path, metavar="RUN", help="only split a training epoch of RUN's generator "
                    "on --device into its parts (train step, featurizer, valid beam search)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out_path = RESULTS / "model.json"
    stamp = {"command": "python " + " ".join(sys.argv), "date": dt.date.today().isoformat(),
             "machine": machine_info(note=args.machine)}
    single = None  # (section of model.json, its result) for the one-measurement modes
    if args.epoch_profile:
        device = torch.device(args.device)
        single = f"epoch_profile_{device.type}", epoch_profile(args.epoch_profile, device, max(args.steps, 20),
                                                              args.packing_users)
    elif args.step_floor:
        single = "step_floor_cpu", step_floor(args.step_floor, args.packing_steps, args.floor_rounds)
    elif args.mfu:
        single = "throughput_gpu", mfu(args.mfu_presets.split(","), [int(b) for b in args.mfu_batches.split(",")],
                                       args.steps, torch.device(args.device))
    elif args.pathway_cost:
        single = "succession_pathway_cpu", pathway_cost(args.pathway_cost, args.packing_steps)
    elif args.precision:
        single = "precision_cpu", precision_speed(args.precision, args.packing_steps)
    elif args.packing:
        single = "encoder_packing_cpu", packing_speed(args.packing, args.packing_steps, args.packing_users)
    elif args.moe_only:
        layer = "d=256, 24 SwiGLU experts of 704, top-2, 2048 tokens, forward+backward"
        single = "moe_layer_cpu", {"layer": layer, **moe_speed()}
    if single is not None:
        print(single[1])
        doc = json.loads(out_path.read_text()) if out_path.exists() else {}
        doc[single[0]] = {**stamp, **single[1]}
        write_json(out_path, doc)
        return
    rows = {}
    for preset in args.presets.split(","):
        bs, optim = PLAN[preset]
        rows[preset] = measure(preset, bs, optim, args.steps)
        print(preset, rows[preset], flush=True)
    base = rows.get("quickstart", {}).get("samples_per_s")
    if not base:
        raise SystemExit("--presets must include quickstart: every row is reported against it, timed in the same run")
    for r in rows.values():
        r["samples_per_s_vs_quickstart"] = round(r["samples_per_s"] / base, 5)
        r.update(stamp)  # rows from earlier runs keep their own command, date and machine
    doc = json.loads(out_path.read_text()) if out_path.exists() else {}
    section = doc.setdefault("throughput_cpu", {})
    section.setdefault("presets", {}).update(rows)
    section.update(stamp)  # the newest run
    section["mfu"] = {"onerec-0.121b": None, "onerec-0.935b": None,
                      "note": "not measured: no GPU in this session (the Technical Report: 23.7% training MFU)"}
    write_json(out_path, doc)


if __name__ == "__main__":
    main()
