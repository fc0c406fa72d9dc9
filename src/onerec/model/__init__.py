"""The generators over semantic IDs: :class:`~onerec.model.generator.Generator` (encoder-decoder, OneRec V1 and
the Technical Report) and :class:`~onerec.model.lazy.LazyGenerator` (OneRec-V2's lazy decoder-only model)."""

from __future__ import annotations


def build_generator(cfg, codebook_sizes: list[int]):
    """The generator ``cfg.model.arch`` names (``cfg``: a :class:`onerec.config.ModelConfig`)."""
    if cfg.arch == "lazy":
        from onerec.model.lazy import LazyGenerator

        return LazyGenerator(cfg, codebook_sizes)
    from onerec.model.generator import Generator

    return Generator(cfg, codebook_sizes)
