"""generate.compile: the decode step through torch.compile gives the eager step's search (issue 43).

The compiled graphs are made once per model and level (inductor's C++ kernels; the numbers of users and beams are
dynamic), so the tests share one small model per architecture; hypothesis then varies the catalogue, the beam width
and the number of users without recompiling."""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_search_matches_reference, compile_unavailable, history_batch, random_codes
from onerec.config import ModelConfig
from onerec.generate.generative import GenerativeRecommender
from onerec.model import build_generator
from onerec.model.compiled import CompiledDecodeStep, compiled_decode_step

SIZES = [5, 4, 3]


_WHY = compile_unavailable()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")


def _batch(codes: np.ndarray, n_users: int, seed: int) -> dict[str, torch.Tensor]:
    return history_batch(codes, n_users, seed, max_history=6, longest=10)


def _build(arch: str):
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, d_model=16, n_heads=2, enc_layers=1, dec_layers=1, max_history=6, dropout=0.0)
    return build_generator(cfg, SIZES).eval()


#: one small model per architecture for the whole module: its compiled graphs are made once
_model = functools.cache(_build)


def _search(model, codes: np.ndarray, batch, k: int, beam: int, compile: bool):
    rec = GenerativeRecommender(model, codes, beam_size=beam, compile=compile)
    return rec.generate(batch, k, beam_size=beam)


@pytest.mark.parametrize("arch", ["encdec", "lazy"])
def test_compiled_search_equals_the_eager_search(arch: str) -> None:
    model = _model(arch)
    codes = random_codes(SIZES, 40, seed=1).numpy()
    for users, beam in [(3, 6), (2, 9)]:  # the second shape reuses the first one's graphs (dynamic sizes)
        batch = _batch(codes, users, seed=users)
        eager = _search(model, codes, batch, 5, beam, compile=False)
        fast = _search(model, codes, batch, 5, beam, compile=True)
        torch.testing.assert_close(fast[1], eager[1], atol=1e-5, rtol=0)
        same = fast[0] == eager[0]
        assert same.all() or bool(((fast[1] - eager[1]).abs() < 1e-5)[~same].all())  # near-ties only
    step = compiled_decode_step(model)
    assert isinstance(step, CompiledDecodeStep) and step.failed is None  # it did compile, not fall back
    assert compiled_decode_step(model) is step  # made once per model
    assert not any("compiled" in key for key in model.state_dict())  # never saved with the weights


def test_a_deep_copy_of_the_model_searches_with_its_own_weights(capsys) -> None:
    """A model that already decoded through torch.compile, deep-copied (alignment's policy, an edge device's model)
    and its copy's weights changed: the copy searches with its own weights (its compiled step ran the original's
    before the step stayed behind in a copy), and the original is unchanged."""
    model = _build("encdec")
    codes = random_codes(SIZES, 40, seed=1).numpy()
    batch = _batch(codes, 3, seed=3)
    before = _search(model, codes, batch, 5, 6, compile=True)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for head in twin.heads:
            head.weight.mul_(-1.5)
    capsys.readouterr()
    torch.testing.assert_close(_search(twin, codes, batch, 5, 6, compile=True)[1],
                               _search(twin, codes, batch, 5, 6, compile=False)[1], atol=1e-5, rtol=0)
    # its own step, which says once that the first searches compile
    assert capsys.readouterr().err.count("generate.compile=true: the first searches compile") == 1
    assert compiled_decode_step(twin) is not compiled_decode_step(model)
    torch.testing.assert_close(_search(model, codes, batch, 5, 6, compile=True)[1], before[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CUDA graphs: mode='reduce-overhead')")
@pytest.mark.parametrize("arch", ["encdec", "lazy"])
def test_cuda_graph_search_equals_the_eager_search(arch: str) -> None:
    """On a GPU ``generate.compile`` replays each level's step as a CUDA graph (fixed shapes): the same items and
    scores as the eager search on the same GPU, for two shapes and a repeated search (graph outputs reused)."""
    model = _build(arch).cuda()  # its own model (the same weights): the CPU tests keep the shared one
    codes = random_codes(SIZES, 40, seed=1).numpy()
    step = compiled_decode_step(model)
    assert step.cuda_graphs
    for users, beam in [(3, 6), (2, 9), (3, 6)]:
        batch = _batch(codes, users, seed=users)
        eager = GenerativeRecommender(model, codes, beam_size=beam, device="cuda").generate(batch, 5, beam_size=beam)
        fast = GenerativeRecommender(model, codes, beam_size=beam, device="cuda", compile=True).generate(
            batch, 5, beam_size=beam)
        torch.testing.assert_close(fast[1], eager[1], atol=1e-5, rtol=0)
        same = fast[0] == eager[0]
        assert same.all() or bool(((fast[1] - eager[1]).abs() < 1e-5)[~same].all())  # near-ties only
    assert step.failed is None  # it did compile, not fall back


@settings(max_examples=6, deadline=None)
@given(n=st.integers(1, 60), beam=st.integers(2, 12), users=st.integers(2, 4), seed=st.integers(0, 2**16),
       data=st.data())
def test_compiled_search_matches_the_reference(n, beam, users, seed, data) -> None:
    """The compiled, cached search == the plain reference search (uncached decoder, Python trie) on random
    catalogues: the property test of the eager path (tests/model/test_decode_cache.py), on the compiled step. The
    encoder-decoder only (the lazy model's compiled search is compared with its eager one above): each model's
    graphs cost seconds of C++ compilation."""
    model = _model("encdec")
    n = min(n, math.prod(SIZES))
    codes = random_codes(SIZES, n, seed)
    top_k = data.draw(st.integers(1, beam))
    batch = _batch(codes.numpy(), users, seed)
    got = _search(model, codes.numpy(), batch, top_k, beam, compile=True)
    assert_search_matches_reference(model, codes, SIZES, batch, beam, top_k, got)


def test_a_machine_that_cannot_compile_decodes_eagerly_with_one_warning(caplog) -> None:
    model = _model("lazy")
    codes = random_codes(SIZES, 30, seed=2).numpy()
    batch = _batch(codes, 2, seed=3)
    eager = _search(model, codes, batch, 4, 5, compile=False)
    step = CompiledDecodeStep(model)

    def broken(*args, **kwargs):
        raise torch._dynamo.exc.TorchDynamoException("no C++ compiler")

    step.fn = broken
    with torch.no_grad():
        memory, mask = model.encode_batch(batch)
        ctx = model.start_decoding(memory, mask, 5)
        prefix, cache = torch.zeros(10, 0, dtype=torch.long), None
        with caplog.at_level("WARNING", logger="onerec.generate"):
            lp0, cache = step(prefix, 0, ctx, cache)
            lp0_again, _ = step(prefix, 0, ctx, None)
    assert step.failed and "no C++ compiler" in step.failed
    assert sum("generate.compile=false" in r.message for r in caplog.records) == 1
    ref, _ = model.decode_step(prefix, 0, ctx, None)
    torch.testing.assert_close(lp0, ref) and torch.testing.assert_close(lp0_again, ref)
    assert eager[0].shape == (2, 4)
