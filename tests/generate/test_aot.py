"""generate.compile=aot: the decode step compiled ahead of time with AOTInductor gives the eager step's search
(issue 43), from packages that serve every number of users, beams and history lengths, are kept on disk per
architecture and are loaded only when signed here.

Each level's package costs ~10 s of C++ compilation, so the tests share one package folder per architecture: the
encoder-decoder (3 levels, dense) and the lazy model with a mixture-of-experts decoder (2 levels)."""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_search_matches_reference, compile_unavailable, history_batch, random_codes
from onerec.config import ModelConfig
from onerec.errors import ConfigError
from onerec.generate.generative import GenerativeRecommender
from onerec.model import build_generator
from onerec.model.aot import AOTDecodeStep, aot_decode_step

_WHY = compile_unavailable()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")

SIZES = {"encdec": [5, 4, 3], "lazy": [6, 4]}


def _build(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = ModelConfig(arch=arch, d_model=16, n_heads=2, enc_layers=1, dec_layers=1, max_history=6, dropout=0.0,
                      moe_experts=4 if arch == "lazy" else 0)
    return build_generator(cfg, SIZES[arch]).eval()


@functools.cache
def _folder(arch: str) -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"onerec-test-aot-{arch}-"))  # one per architecture for the module


#: one model per architecture whose packages are compiled once for the module
_model = functools.cache(_build)


@pytest.fixture(autouse=True, scope="module")
def _signing_key_outside_home(tmp_path_factory):
    """Packages are signed with a key kept in the user's cache folder: the tests' key lives in a folder of theirs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


def _search(model, codes, batch, k: int, beam: int, compile, folder: Path | None = None):
    rec = GenerativeRecommender(model, codes, beam_size=beam, compile=compile, aot_dir=folder)
    return rec.generate(batch, k, beam_size=beam)


def _batch(codes, users: int, seed: int):
    return history_batch(codes, users, seed, max_history=6, longest=10)


@pytest.mark.parametrize("arch", ["encdec", "lazy"])
def test_aot_search_equals_the_eager_search(arch: str) -> None:
    """One package per level serves every shape: several users and beams, one user, one beam, and a longer
    history than the export's example, all equal to the eager search (the lazy model's experts included)."""
    model, sizes = _model(arch), SIZES[arch]
    codes = random_codes(sizes, 20, seed=1).numpy()
    for users, beam in [(3, 6), (1, 9), (2, 1), (5, 4)]:
        batch = _batch(codes, users, seed=users)
        eager = _search(model, codes, batch, min(5, beam), beam, compile=False)
        fast = _search(model, codes, batch, min(5, beam), beam, compile="aot", folder=_folder(arch))
        torch.testing.assert_close(fast[1], eager[1], atol=1e-5, rtol=0)
        same = fast[0] == eager[0]
        assert same.all() or bool(((fast[1] - eager[1]).abs() < 1e-5)[~same].all())  # near-ties only
    step = aot_decode_step(model, _folder(arch))
    assert step.failed is None  # it did compile, not fall back
    assert sorted(step.runners) == list(range(len(sizes)))
    assert not any("aot" in key for key in model.state_dict())  # never saved with the weights


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (AOTInductor's CUDA packages)")
def test_cuda_aot_search_equals_the_eager_search(tmp_path) -> None:
    """On a GPU the packages are compiled for it (another key than the CPU's): the same items and scores as the
    eager search on the same GPU, for two shapes."""
    model = _build("encdec").cuda()
    codes = random_codes(SIZES["encdec"], 20, seed=1).numpy()
    for users, beam in [(3, 6), (1, 9)]:
        batch = _batch(codes, users, seed=users)
        eager = GenerativeRecommender(model, codes, beam_size=beam, device="cuda").generate(batch, 5, beam_size=beam)
        fast = GenerativeRecommender(model, codes, beam_size=beam, device="cuda", compile="aot",
                                     aot_dir=tmp_path).generate(batch, 5, beam_size=beam)
        torch.testing.assert_close(fast[1], eager[1], atol=1e-4, rtol=0)
    assert aot_decode_step(model, tmp_path).failed is None


def test_packages_are_reused_by_another_model_of_the_same_architecture_and_weights_are_read_at_load() -> None:
    """A package holds code, not weights: another model of the same config (other weights, as a retrained
    checkpoint) loads the folder's packages without compiling and searches as its own eager step; weights
    changed in place after loading are seen, and so are weights replaced by other tensors."""
    _search(_model("encdec"), random_codes(SIZES["encdec"], 20, seed=1).numpy(),
            _batch(random_codes(SIZES["encdec"], 20, seed=1).numpy(), 2, 0), 3, 4, "aot", _folder("encdec"))
    other = _build("encdec", seed=7)
    codes = random_codes(SIZES["encdec"], 25, seed=3).numpy()
    batch = _batch(codes, 3, seed=4)
    step = aot_decode_step(other, _folder("encdec"))  # the step the recommender below will use
    eager = _search(other, codes, batch, 4, 6, compile=False)
    fast = _search(other, codes, batch, 4, 6, compile="aot", folder=_folder("encdec"))
    assert step.compiled == [] and sorted(step.runners) == [0, 1, 2]  # loaded, not compiled
    torch.testing.assert_close(fast[1], eager[1], atol=1e-5, rtol=0)
    with torch.no_grad():
        for head in other.heads:
            head.weight.mul_(-1.5)  # the packages read the model's own parameters
    eager = _search(other, codes, batch, 4, 6, compile=False)
    fast = _search(other, codes, batch, 4, 6, compile="aot", folder=_folder("encdec"))
    torch.testing.assert_close(fast[1], eager[1], atol=1e-5, rtol=0)
    # weights replaced by other tensors (not written in place): the packages are loaded again and read the new ones
    other.load_state_dict(_build("encdec", seed=11).state_dict(), assign=True)
    eager = _search(other, codes, batch, 4, 6, compile=False)
    fast = _search(other, codes, batch, 4, 6, compile="aot", folder=_folder("encdec"))
    torch.testing.assert_close(fast[1], eager[1], atol=1e-5, rtol=0)
    assert step.compiled == []


def test_a_deep_copy_of_the_model_searches_with_its_own_weights() -> None:
    """A model that already decoded through its packages can be deep-copied (alignment's policy, an edge device's
    model): the copy gets its own step (the same folder's packages, loaded for its weights), and both search as
    their own eager steps after the copy's weights change."""
    model = _build("encdec", seed=5)
    codes = random_codes(SIZES["encdec"], 25, seed=3).numpy()
    batch = _batch(codes, 3, seed=4)
    before = _search(model, codes, batch, 4, 6, compile="aot", folder=_folder("encdec"))
    twin = copy.deepcopy(model)  # raised TypeError (the step's lock) before the step stayed behind
    with torch.no_grad():
        for head in twin.heads:
            head.weight.mul_(-1.5)
    fast = _search(twin, codes, batch, 4, 6, compile="aot", folder=_folder("encdec"))
    torch.testing.assert_close(fast[1], _search(twin, codes, batch, 4, 6, compile=False)[1], atol=1e-5, rtol=0)
    assert aot_decode_step(twin, _folder("encdec")) is not aot_decode_step(model, _folder("encdec"))
    torch.testing.assert_close(_search(model, codes, batch, 4, 6, compile="aot", folder=_folder("encdec"))[1],
                               before[1])


def test_training_scores_valid_through_the_packages_as_the_weights_train(tiny_train, cyclic, tmp_path, capsys) -> None:
    """``generate.compile=aot`` in train's per-epoch valid scoring: the packages are compiled once, at the first
    scoring, into the run's aot folder, and read the training weights as they change (updated in place by the
    optimizer), also those of a moving average (``train.ema_decay``: the average is what is scored): the valid
    curve is the eager scoring's, and compiling leaves the random state (dropout's masks) as it was."""
    from onerec.config import RunConfig, TrainConfig
    from onerec.model.generator import Generator
    from onerec.pipeline import valid_scorer
    from onerec.train import train_generator
    from onerec.train.checkpoint import model_meta

    mcfg, sizes, ex = tiny_train
    valid = cyclic[1]["valid"]
    curves, losses = {}, {}
    for ema in (None, 0.5):
        for mode in ("false", "aot"):
            cfg = RunConfig()
            cfg.train.early_stop_metric, cfg.train.device, cfg.generate.compile = "ndcg@10", "cpu", mode
            scorer = valid_scorer(ex.f.codes, valid, cfg, ex.f, aot_dir=tmp_path / "aot")
            tcfg = TrainConfig(epochs=4, batch_size=128, warmup_steps=2, checkpoint_every=1000, device="cpu",
                               early_stop_metric="ndcg@10", patience=10, ema_decay=ema)
            torch.manual_seed(0)
            res = train_generator(Generator(mcfg, sizes), ex, tcfg, tmp_path / f"{mode}-{ema}",
                                  meta=model_meta(mcfg, sizes), progress=False, score_valid=scorer)
            curves[mode, ema] = [r["ndcg@10"] for r in res.valid]
            losses[mode, ema] = res.loss
        assert len(set(curves["false", ema])) > 1  # the weights moved between scorings
        # compiling at the first scoring leaves the random state alone: the same dropout masks, the same training
        assert losses["aot", ema] == losses["false", ema]
        # equal but for a near-tie flipped by the kernels' rounding (at most one user's NDCG)
        np.testing.assert_allclose(curves["aot", ema], curves["false", ema], atol=1.0 / valid.num_rows, rtol=0)
    assert curves["false", None] != curves["false", 0.5]
    assert sorted(p.name for p in (tmp_path / "aot").glob("*/level*.pt2")) == ["level0.pt2", "level1.pt2"]
    said = capsys.readouterr().err  # the pause says what it is, once a level (the second run loaded them)
    assert said.count("generate.compile=aot: compiling the decode step of level 0") == 1
    assert said.count("of level 1 into") == 1


def test_a_package_that_was_not_signed_here_is_never_loaded(caplog) -> None:
    """A package is a shared library: one whose signature does not verify under this user's key (a run folder
    from elsewhere, a changed file) is refused with a warning, and compiled anew instead of loaded."""
    model = _model("encdec")
    step = aot_decode_step(model, _folder("encdec"))
    _search(model, random_codes(SIZES["encdec"], 20, seed=1).numpy(),
            _batch(random_codes(SIZES["encdec"], 20, seed=1).numpy(), 2, 0), 3, 4, "aot", _folder("encdec"))
    package = step.directory() / "level0.pt2"
    assert AOTDecodeStep._verified(package) is not None
    signature = package.with_suffix(".sig")
    good = signature.read_text()
    try:
        signature.write_text("0" * len(good))
        with caplog.at_level("WARNING", logger="onerec.generate"):
            assert AOTDecodeStep._verified(package) is None
        assert any("not signed by this user's key" in r.message for r in caplog.records)
        data = package.read_bytes()
        signature.write_text(good)
        package.write_bytes(data + b"\0")  # the right signature, other bytes
        assert AOTDecodeStep._verified(package) is None
        package.write_bytes(data)
        assert AOTDecodeStep._verified(package) is not None
    finally:
        signature.write_text(good)


def test_a_folder_that_cannot_be_written_compiles_into_a_temporary_one_with_one_warning(tmp_path, caplog) -> None:
    """A read-only run folder (here: a path under a regular file, which nobody can create) keeps serving: packages
    are compiled into a temporary folder instead, with one warning that names the folder and the fix."""
    (tmp_path / "run").write_text("a file, not a folder")
    step = AOTDecodeStep(_model("encdec"), tmp_path / "run" / "aot")
    with caplog.at_level("WARNING", logger="onerec.generate"):
        first, again = step._writable(), step._writable()
    assert first == again and first.is_dir() and first.name == step.directory().name
    assert not str(first).startswith(str(tmp_path))
    assert sum("cannot write packages" in r.message and "Fix:" in r.message for r in caplog.records) == 1


@settings(max_examples=5, deadline=None)
@given(n=st.integers(1, 60), beam=st.integers(2, 12), users=st.integers(1, 4), seed=st.integers(0, 2**16),
       data=st.data())
def test_aot_search_matches_the_reference(n, beam, users, seed, data) -> None:
    """The AOT search == the plain reference search (uncached decoder, Python trie) on random catalogues, the
    property test of the eager path (tests/model/test_decode_cache.py) on the compiled packages."""
    model, sizes = _model("encdec"), SIZES["encdec"]
    n = min(n, math.prod(sizes))
    codes = random_codes(sizes, n, seed)
    top_k = data.draw(st.integers(1, beam))
    batch = _batch(codes.numpy(), users, seed)
    got = _search(model, codes.numpy(), batch, top_k, beam, compile="aot", folder=_folder("encdec"))
    assert_search_matches_reference(model, codes, sizes, batch, beam, top_k, got)


def test_a_machine_that_cannot_compile_decodes_eagerly_with_one_warning(caplog, monkeypatch, tmp_path) -> None:
    model = _build("encdec", seed=3)
    codes = random_codes(SIZES["encdec"], 30, seed=2).numpy()
    batch = _batch(codes, 2, seed=3)
    eager = _search(model, codes, batch, 4, 5, compile=False)

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch.export, "export", broken)
    with caplog.at_level("WARNING", logger="onerec.generate"):
        got = _search(model, codes, batch, 4, 5, compile="aot", folder=tmp_path)
        again = _search(model, codes, batch, 4, 5, compile="aot", folder=tmp_path)
    step = aot_decode_step(model, tmp_path)
    assert step.failed and "no C++ compiler" in step.failed
    assert sum("generate.compile=true or false" in r.message for r in caplog.records) == 1
    for out in (got, again):
        assert torch.equal(out[0], eager[0]) and torch.equal(out[1], eager[1])


def test_aot_and_bf16_are_refused_together() -> None:
    """At construction, and when either is set afterwards (a benchmark switching modes on one recommender); the
    strings a config holds read as their modes there too."""
    model = _model("encdec")
    codes = random_codes(SIZES["encdec"], 10, seed=0).numpy()
    with pytest.raises(ConfigError, match=r"generate\.compile=true"):
        GenerativeRecommender(model, codes, compile="aot", precision="bf16")
    rec = GenerativeRecommender(model, codes, precision="bf16")
    with pytest.raises(ConfigError, match=r"generate\.compile=true"):
        rec.compile = "aot"
    rec.compile = "false"
    assert rec.compile is False  # a string read as its mode, not a truthy string
    rec = GenerativeRecommender(model, codes, compile="aot")
    rec.precision = "bf16"
    with pytest.raises(ConfigError, match=r"generate\.compile=true"):
        rec.generate(_batch(codes, 1, seed=0), 2, beam_size=2)
