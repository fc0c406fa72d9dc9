"""Parameter counts of a model config without allocating it (``onerec model-info PRESET``).

The model is built on PyTorch's ``meta`` device, so even the 2.6B preset is counted in
milliseconds and no memory. Semantic-ID vocabularies come from the config's tokenizer section
(``levels`` x ``codebook_size``; a collision level, whose size depends on the data, is left out).
"""

from __future__ import annotations

from typing import Any

import torch

from onerec.config import RunConfig, load_config, to_dict

#: total parameters of the OneRec Technical Report's model sizes (arXiv 2506.13695)
PAPER_SIZES: dict[str, float] = {
    "onerec-0.015b": 0.015e9, "onerec-0.121b": 0.121e9, "onerec-0.935b": 0.935e9, "onerec-2.633b": 2.633e9,
}


def codebook_sizes(cfg: RunConfig) -> list[int]:
    return [cfg.tokenizer.codebook_size] * cfg.tokenizer.levels


def model_info(cfg: RunConfig, preset: str | None = None) -> dict[str, Any]:
    """{"total", "active", "by_part", ...} for the generator ``cfg.model`` would build."""
    from onerec.model import build_generator

    sizes = codebook_sizes(cfg)
    with torch.device("meta"):
        model = build_generator(cfg.model, sizes)
    counts = model.parameter_counts()
    by_part: dict[str, int] = {}
    for name, p in model.named_parameters():
        part = name.split(".")[0]
        by_part[part] = by_part.get(part, 0) + p.numel()
    out: dict[str, Any] = {
        "preset": preset, "total": counts["total"], "active": counts["active"],
        "total_b": round(counts["total"] / 1e9, 4), "active_b": round(counts["active"] / 1e9, 4),
        "codebook_sizes": sizes, "moe_layers": len(model.moe_layers()), "encoder_tokens": model.enc_len,
        "by_part": by_part, "model": to_dict(cfg.model),
    }
    if preset in PAPER_SIZES:
        out["paper_total"] = PAPER_SIZES[preset]
        out["relative_error"] = round(counts["total"] / PAPER_SIZES[preset] - 1, 4)
    return out


def preset_info(preset: str, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    return model_info(load_config(preset=preset, overrides=overrides), preset)
