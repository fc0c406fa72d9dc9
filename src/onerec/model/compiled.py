"""``generate.compile``: the beam search's decode step through ``torch.compile`` (issue 43).

The eager decode step (:meth:`SemanticIDModel.decode_step`) runs ~100 small tensor ops per position, and at
batch 1 much of its time is spent between them (Python, dispatch). ``torch.compile`` traces the step once per
semantic-ID level and fuses the elementwise work between the matrix products:

* on CPU with inductor's C++ kernels, with dynamic batch sizes (one graph per level serves every number of
  users, so eval's last partial batch and serving's micro-batches of any size do not recompile);
* on CUDA with CUDA graphs (``mode="reduce-overhead"``): each level's step replays as one graph, shapes fixed
  per (users, beam width).

The compiled step uses the plain KV cache (a layer's keys and values concatenated per position, re-ordered by
``index_select`` between steps): a pure function of its inputs, which compiles without graph breaks. The
preallocated :class:`~onerec.model.kv_cache.StaticKVCache` writes its buffer in place; under ``torch.compile``
that mutation made the step 1.3-2.4x slower than eager on CPU (measured at batch 1 and 64, beam 128), so it is
only used by the eager step.

``generate.compile=aot`` (:mod:`onerec.model.aot`) compiles the same step ahead of time instead, once per model
architecture, without Dynamo's per-step guard checks.

The eager step stays the reference: ``tests/generate/test_compiled.py`` checks that both return the same items
(and scores to float tolerance) for the encoder-decoder and the lazy model. Where ``torch.compile`` cannot run (no
C++ compiler for inductor, an unsupported platform), the first call warns once and the step runs eagerly.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger("onerec.generate")

_ATTR = "_onerec_compiled_decode_step"
RECOMPILE_LIMIT = 64  # graphs of decode_step per process (see CompiledDecodeStep)


def _compile_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "this machine cannot compile", not "the step is wrong"."""
    errors: list[type[BaseException]] = [torch._dynamo.exc.TorchDynamoException]
    inductor_exc = getattr(torch._inductor, "exc", None)
    for name in ("InductorError", "CppCompileError", "InvalidCxxCompiler"):
        if inductor_exc is not None and hasattr(inductor_exc, name):
            errors.append(getattr(inductor_exc, name))
    return tuple(errors)


class StepOnModel:
    """A decode step kept on its model (in ``model.__dict__``: not a submodule, never in the state dict) and reused
    by every later search. A deep copy of the model (alignment's policy, an edge device's model) does not take it
    along, since its graphs or packages read the original's weights: the copy makes its own at its first search."""

    def __deepcopy__(self, memo: dict) -> None:
        return None


class CompiledDecodeStep(StepOnModel):
    """``model.decode_step`` through ``torch.compile``; called like it, with the plain cache (None at step 0).

    Args:
        model: a :class:`~onerec.model.generator.SemanticIDModel` (encoder-decoder or lazy), in eval mode.
        cuda_graphs: compile with ``mode="reduce-overhead"`` (CUDA graphs); default: when the model is on CUDA.
    """

    def __init__(self, model: nn.Module, *, cuda_graphs: bool | None = None) -> None:
        self.model = model
        if cuda_graphs is None:
            cuda_graphs = next(model.parameters()).is_cuda
        self.cuda_graphs = cuda_graphs
        # CUDA graphs need fixed shapes (one graph per shape); inductor on CPU serves every number of users and
        # beams with one graph per level: the sizes that vary are marked dynamic at each call (_mark_dynamic).
        # Not dynamic=True: it makes every size symbolic, and sizes that happen to be equal share one symbol
        # ("duck sizing"), so 2 users and 2 heads would pin the graph to 2 users.
        self.fn = torch.compile(model.decode_step, mode="reduce-overhead" if cuda_graphs else None,
                                dynamic=False if cuda_graphs else None)
        self.failed: str | None = None
        self.announced = False  # the first call says that searches compile (see __call__)
        # Dynamo keeps its graphs per code object: every model of a process (two architectures, a policy and its
        # reference in alignment) shares decode_step's, ~3-4 graphs each (the levels); past the default limit of 8
        # it would silently decode eagerly
        dynamo = torch._dynamo.config
        if getattr(dynamo, "recompile_limit", RECOMPILE_LIMIT) < RECOMPILE_LIMIT:
            dynamo.recompile_limit = RECOMPILE_LIMIT

    def __call__(self, prefix: Tensor, step: int, ctx: Any, cache: Any) -> tuple[Tensor, Any]:
        if self.failed is None:
            if not self.announced:  # a pause of a minute or more in the middle of a command: say what it is, once
                self.announced = True
                print("generate.compile=true: the first searches compile the decode step, a graph per level (a "
                      "minute or more on a CPU; generate.compile=aot keeps them for later commands)", file=sys.stderr,
                      flush=True)
            if step == 0 and self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()  # a new search: the last one's graph outputs are free
            if not self.cuda_graphs:
                _mark_dynamic(prefix, ctx, cache)
            try:
                return self.fn(prefix, step, ctx, cache)
            except _compile_errors() as e:
                self.failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                log.warning("generate.compile: torch.compile failed on this machine (%s); decoding runs eagerly. "
                            "Fix: install a C++ compiler for inductor, or set generate.compile=false", self.failed)
        return self.model.decode_step(prefix, step, ctx, cache)


def _mark_dynamic(prefix: Tensor, ctx: Any, cache: Any) -> None:
    """The sizes that change between searches, for ``torch.compile``: rows (users x beams), users and the
    encoder's length (the longest history of a batch). Sizes 0 and 1 stay specialised (one more graph)."""
    mark = torch._dynamo.maybe_mark_dynamic
    mark(prefix, 0)
    mark(ctx.mask, 0)
    mark(ctx.mask, ctx.mask.dim() - 1)
    for k, v in ctx.cross:
        for t in (k, v):
            mark(t, 0)
            mark(t, 2)
    for k, v in cache or ():
        mark(k, 0)
        mark(v, 0)


def compiled_decode_step(model: nn.Module) -> CompiledDecodeStep:
    """The model's compiled decode step, made on first use and kept on the model (compiled graphs are reused by
    every later search)."""
    step = model.__dict__.get(_ATTR)
    if step is None:
        step = CompiledDecodeStep(model)
        model.__dict__[_ATTR] = step  # not a submodule: never in the state dict
    return step
