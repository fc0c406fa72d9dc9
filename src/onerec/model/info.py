"""Parameter and FLOP counts of a model config without allocating it (``onerec model-info PRESET``).

The model is built on PyTorch's ``meta`` device, so even the 8B preset is counted in well under a
second and no memory. Semantic-ID vocabularies come from the config's tokenizer section
(``levels`` x ``codebook_size``; a collision level, whose size depends on the data, is left out).

**FLOPs.** :func:`forward_flops` runs one forward pass of one training sample through the meta model
under ``torch.utils.flop_counter.FlopCounterMode``, which counts from shapes alone: every matrix
multiply (linear layers, attention scores and their weighted sums; 2 FLOPs per multiply-add).
Element-wise work (norms, activations, softmax, masks) and embedding lookups are not counted, as
in the papers' model-FLOP counts. The sample is a synthetic featurized batch of the shapes the
model reads: every enabled pathway full at its configured length (no padding), and the decoder's
teacher-forced pass over the D tokens ``[BOS, s_1 .. s_{D-1}]`` with the per-level heads. A mixture of
experts is counted at its routed cost (each token through ``moe_top_k`` experts, plus the router),
whatever the routing would be. The split follows OneRec-V2's Table 1 (arXiv 2508.20900, Sec. 2.1):

* ``context``: turning the user into what the decoder reads: the pathways, the encoder (encdec) or
  the context processor (lazy), and the decoder's key/value projections of that context (encdec's
  cross-attention; the lazy model has none);
* ``decoder``: the rest, the work on the D target tokens (self-attention, feed-forward, the
  cross-attention's query/output projections and its attention over the context, the heads).

**Equal parameters.** :func:`compare_arch` puts a preset's generator beside the other architecture at
(nearly) the same total parameter count: for an encoder-decoder preset, the lazy model with the same
widths and ``dec_layers`` chosen so that its total is closest to the encoder-decoder's; for a lazy
preset, the encoder-decoder with ``enc_layers = dec_layers`` (V1's 1:1 split) chosen the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from onerec.config import ModelConfig, RunConfig, load_config, to_dict

#: total parameters of the OneRec Technical Report's model sizes (arXiv 2506.13695)
PAPER_SIZES: dict[str, float] = {
    "onerec-0.015b": 0.015e9, "onerec-0.121b": 0.121e9, "onerec-0.935b": 0.935e9, "onerec-2.633b": 2.633e9,
}

#: OneRec-V2's dense lazy decoder-only sizes (arXiv 2508.20900, Table 5): the nominal parameter count the
#: paper names each model by -> (d_model, n_layers, n_heads). The paper rounds the counts to one figure.
V2_PAPER_SIZES: dict[str, tuple[float, int, int, int]] = {
    "onerec-v2-0.1b": (0.1e9, 640, 12, 10), "onerec-v2-0.2b": (0.2e9, 896, 12, 14),
    "onerec-v2-0.5b": (0.5e9, 1408, 14, 11), "onerec-v2-1b": (1e9, 1792, 18, 14),
    "onerec-v2-2b": (2e9, 2304, 22, 18), "onerec-v2-4b": (4e9, 2944, 26, 23), "onerec-v2-8b": (8e9, 3584, 34, 28),
}

#: the CPU-trainable lazy presets (a scaling curve on a 2-core CPU) -> nominal total parameters at the
#: default tokenizer (3 levels x 64 codes)
CPU_SIZES: dict[str, float] = {
    "lazy-0.1m": 0.1e6, "lazy-0.3m": 0.3e6, "lazy-1m": 1e6, "lazy-3m": 3e6, "lazy-10m": 10e6,
}


def codebook_sizes(cfg: RunConfig) -> list[int]:
    return [cfg.tokenizer.codebook_size] * cfg.tokenizer.levels


def _build_meta(model_cfg: ModelConfig, sizes: list[int]) -> nn.Module:
    """The generator on the meta device, in eval mode, without gradients. ``encoder_impl=padded``: the
    packed encoder asks the data which positions are real, which a meta tensor cannot answer; with no
    padding in the sample both compute the same thing, and the parameters are the same."""
    from onerec.model import build_generator

    with torch.device("meta"):
        model = build_generator(dataclasses.replace(model_cfg, encoder_impl="padded"), sizes)
    # no gradients: FlopCounterMode's module tracker trips on parameters that want a gradient under no_grad
    return model.eval().requires_grad_(False)


def synthetic_batch(model: nn.Module, batch_size: int = 1, device: str | torch.device = "meta") -> dict[str, Tensor]:
    """A featurized batch of the shapes ``model`` reads (values all zero: only shapes matter on the meta
    device): each enabled pathway full at its configured length, every behaviour feature, and a
    point-wise target of D codes."""
    cfg, b, depth = model.cfg, batch_size, len(model.codebook_sizes)

    def ids(*shape: int) -> Tensor:
        return torch.zeros(shape, dtype=torch.long, device=device)

    def tokens(prefix: str, t: int) -> dict[str, Tensor]:
        out = {f"{prefix}_codes": ids(b, t, depth), f"{prefix}_mask": torch.ones(b, t, dtype=torch.bool, device=device)}
        for key in ("flags", "age", "item", "author", "tag", "play", "dur"):
            out[f"{prefix}_{key}"] = ids(b, t)
        return out

    batch = tokens("hist", cfg.max_history)
    if "short" in model.pathways:
        batch.update(tokens("short", cfg.short_len))
    if "lifelong" in model.pathways:
        batch.update(tokens("life", cfg.lifelong_reps), life_count=ids(b, cfg.lifelong_reps))
    if "static" in model.pathways:
        batch.update(user_id=ids(b), user_cats=ids(b, 8), user_act=ids(b))
    if "succession" in model.pathways:
        batch.update(succ_codes=ids(b, cfg.succession_len, depth), succ_count=ids(b, cfg.succession_len),
                     succ_mask=torch.ones(b, cfg.succession_len, dtype=torch.bool, device=device))
    batch["target"] = ids(b, depth)
    return batch


@contextmanager
def _routed_cost_moe(model: nn.Module) -> Iterator[None]:
    """Every mixture of experts computes its router and ``top_k`` experts over every token: the FLOPs of
    the routed computation without its data-dependent shapes (routing cannot run on the meta device)."""
    moes = [m for _, m in model.moe_layers()]

    def routed(moe: nn.Module) -> Callable[[Tensor], Tensor]:
        def forward(x: Tensor) -> Tensor:
            flat = x.reshape(-1, moe.d)
            moe.router(flat)
            out = moe._expert(0, flat)
            for e in range(1, moe.k):
                out = out + moe._expert(e, flat)
            return out.reshape(x.shape)
        return forward

    for m in moes:
        m.forward = routed(m)
    try:
        yield
    finally:
        for m in moes:
            del m.forward


def _count(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


def forward_flops(model: nn.Module) -> dict[str, int]:
    """FLOPs of one forward pass over one training sample of a meta-device model (see the module
    docstring) -> {"total", "context", "decoder"}."""
    batch = synthetic_batch(model, 1, next(model.parameters()).device)
    with _routed_cost_moe(model):
        total = _count(lambda: model(batch))
        with torch.no_grad():
            memory, memory_mask = model.encode_batch(batch)
        context = _count(lambda: model.encode_batch(batch))
        context += _count(lambda: model.start_decoding(memory, memory_mask, 1))  # encdec: cross-attention K/V
    return {"total": total, "context": context, "decoder": total - context}


def _gflops(flops: dict[str, int]) -> dict[str, Any]:
    """GFLOPs to 4 significant figures (the small presets' are thousandths), and the exact total."""
    def g(x: int) -> float:
        return float(f"{x / 1e9:.4g}")

    return {"flops_per_sample": flops["total"], "gflops_per_sample": g(flops["total"]),
            "gflops_context": g(flops["context"]), "gflops_decoder": g(flops["decoder"])}


def model_info(cfg: RunConfig, preset: str | None = None, *, flops: bool = True) -> dict[str, Any]:
    """{"total", "active", "by_part", "gflops_per_sample", ...} for the generator ``cfg.model`` would build."""
    sizes = codebook_sizes(cfg)
    model = _build_meta(cfg.model, sizes)
    counts = model.parameter_counts()
    by_part: dict[str, int] = {}
    for name, p in model.named_parameters():
        part = name.split(".")[0]
        by_part[part] = by_part.get(part, 0) + p.numel()
    out: dict[str, Any] = {
        "preset": preset, "arch": cfg.model.arch, "total": counts["total"], "active": counts["active"],
        "total_b": round(counts["total"] / 1e9, 4), "active_b": round(counts["active"] / 1e9, 4),
        "codebook_sizes": sizes, "moe_layers": len(model.moe_layers()), "encoder_tokens": model.enc_len,
        "decoder_tokens": len(sizes),
    }
    if flops:
        out.update(_gflops(forward_flops(model)))
    out.update(by_part=by_part, model=to_dict(cfg.model))
    paper = PAPER_SIZES.get(preset) or (V2_PAPER_SIZES[preset][0] if preset in V2_PAPER_SIZES else None)
    if paper:
        out["paper_total"] = paper
        out["relative_error"] = round(counts["total"] / paper - 1, 4)
    return out


def _with_layers(model_cfg: ModelConfig, arch: str, layers: int) -> ModelConfig:
    """``model_cfg`` as ``arch`` with ``layers`` decoder layers (lazy) or ``layers`` + ``layers`` (encdec)."""
    if arch == "lazy":
        return dataclasses.replace(model_cfg, arch="lazy", dec_layers=layers,
                                   kv_layers=min(model_cfg.kv_layers, layers))
    return dataclasses.replace(model_cfg, arch="encdec", enc_layers=layers, dec_layers=layers)


def match_layers(model_cfg: ModelConfig, sizes: list[int], arch: str, target: int) -> int:
    """The layer count of :func:`_with_layers` whose total parameters are closest to ``target`` (the
    smaller count on a tie). Totals grow by the same amount per layer (past ``moe_dense_layers``), so two
    builds give a first guess; a walk to the nearer neighbour while it gets closer makes it exact."""
    def total(layers: int) -> int:
        return _build_meta(_with_layers(model_cfg, arch, layers), sizes).parameter_counts()["total"]

    start = max(1, model_cfg.moe_dense_layers) if arch == "lazy" and model_cfg.moe_experts else 1
    p0, p1 = total(start), total(start + 1)
    guess = max(1, start + round((target - p0) / max(p1 - p0, 1)))
    cache = {start: p0, start + 1: p1}

    def gap(layers: int) -> int:
        if layers not in cache:
            cache[layers] = total(layers)
        return abs(cache[layers] - target)

    best = guess
    while best > 1 and gap(best - 1) <= gap(best):
        best -= 1
    while gap(best + 1) < gap(best):
        best += 1
    return best


def compare_arch(cfg: RunConfig, preset: str | None = None) -> dict[str, Any]:
    """Both architectures at (nearly) equal total parameters: the config's own and the other, whose layer
    count :func:`match_layers` chooses (see the module docstring)."""
    sizes = codebook_sizes(cfg)
    own = cfg.model.arch
    other = "lazy" if own == "encdec" else "encdec"
    ref = model_info(cfg, preset)
    layers = match_layers(cfg.model, sizes, other, ref["total"])
    twin_cfg = dataclasses.replace(cfg, model=_with_layers(cfg.model, other, layers))
    twin = model_info(twin_cfg, None)
    keys = ("total", "active", "encoder_tokens", "decoder_tokens", "moe_layers", "flops_per_sample",
            "gflops_per_sample", "gflops_context", "gflops_decoder")

    def row(info: dict[str, Any], c: ModelConfig) -> dict[str, Any]:
        layout = {"dec_layers": c.dec_layers}
        if c.arch == "encdec":
            layout = {"enc_layers": c.enc_layers, **layout}
        else:
            layout.update(kv_heads=c.kv_heads, kv_layers=c.kv_layers, kv_split=c.kv_split)
        return {**layout, **{k: info[k] for k in keys}}

    rows = {own: row(ref, cfg.model), other: row(twin, twin_cfg.model)}
    how = ("lazy dec_layers" if other == "lazy" else "encdec enc_layers = dec_layers") + \
        f" = {layers}: the count whose total parameters are closest to the {own} preset's"
    return {
        "preset": preset, "matched": how, "archs": rows,
        "params_ratio_lazy_to_encdec": round(rows["lazy"]["total"] / rows["encdec"]["total"], 4),
        "gflops_ratio_encdec_to_lazy": round(rows["encdec"]["flops_per_sample"] / rows["lazy"]["flops_per_sample"], 2),
    }


def preset_info(preset: str, overrides: list[str] | tuple[str, ...] = (), *, compare: bool = False,
                flops: bool = True) -> dict[str, Any]:
    """:func:`model_info` (``flops=False``: parameters only) or, with ``compare``, :func:`compare_arch` of a preset."""
    cfg = load_config(preset=preset, overrides=overrides)
    return compare_arch(cfg, preset) if compare else model_info(cfg, preset, flops=flops)
