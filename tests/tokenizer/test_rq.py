"""RQ-Kmeans tokenizer: codes, unique level, metrics, encode/decode, save/load, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from onerec.config import TokenizerConfig
from onerec.errors import ConfigError, DataError
from onerec.tokenizer import ResidualKMeansTokenizer, add_unique_level, balanced_sizes, code_metrics
from onerec.tokenizer.rq import l2_normalize

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


def _vectors(n: int = 1200, d: int = 16, seed: int = 0) -> np.ndarray:
    """Clustered item vectors: 20 topics, each item near its topic centre."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d))
    return (centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


def _config(**kw: object) -> TokenizerConfig:
    return TokenizerConfig(**{"levels": 3, "codebook_size": 16, "iters": 10, **kw})


@pytest.fixture(scope="module")
def fitted() -> tuple[ResidualKMeansTokenizer, np.ndarray, torch.Tensor]:
    x = _vectors()
    tok = ResidualKMeansTokenizer(_config())
    return tok, x, tok.fit(x)


def test_worked_example_of_the_unique_level() -> None:
    codes = torch.tensor([[1, 2], [1, 2], [3, 0], [1, 2], [0, 0]])
    full, size = add_unique_level(codes)
    assert full[:, 2].tolist() == [0, 1, 0, 2, 0] and size == 3
    assert torch.equal(full[:, :2], codes)


def test_unique_level_numbers_each_group_by_priority() -> None:
    codes = torch.tensor([[1, 2], [1, 2], [3, 0], [1, 2], [0, 0]])
    full, size = add_unique_level(codes, torch.tensor([1.0, 5.0, 0.0, 1.0, 2.0]))
    # group [1, 2] = items 0, 1, 3: item 1 first (5), then items 0 and 3 (tie: item order)
    assert full[:, 2].tolist() == [1, 0, 0, 2, 0] and size == 3
    with pytest.raises(ValueError, match="priority"):
        add_unique_level(codes, torch.zeros(4))


@pytest.mark.parametrize("order", ["popularity", "centroid"])
def test_collision_order(order: str) -> None:
    x = _vectors(n=600)
    pop = np.random.default_rng(1).integers(0, 100, len(x))
    plain = ResidualKMeansTokenizer(_config(codebook_size=4, levels=2)).fit(x)
    tok = ResidualKMeansTokenizer(_config(codebook_size=4, levels=2, collision_order=order))
    codes = tok.fit(x, popularity=pop if order == "popularity" else None)
    assert torch.equal(codes[:, :2], plain[:, :2]) and len(torch.unique(codes, dim=0)) == len(x)
    assert not torch.equal(codes[:, 2], plain[:, 2])
    score = (torch.as_tensor(pop, dtype=torch.float64) if order == "popularity"
             else -(l2_normalize(torch.as_tensor(x)) - tok.decode(codes[:, :2])).pow(2).sum(1).double())
    for key in torch.unique(codes[:, :2], dim=0):
        group = (codes[:, :2] == key).all(1).nonzero().squeeze(1)
        ranked = group[torch.argsort(codes[group, 2])]
        assert (score[ranked].diff() <= 1e-6).all()  # collision code 0 = highest score


def test_popularity_order_needs_counts() -> None:
    with pytest.raises(ConfigError, match="popularity"):
        ResidualKMeansTokenizer(_config(collision_order="popularity")).fit(_vectors())


def test_fit_codes_are_unique_and_in_range(fitted) -> None:
    tok, x, codes = fitted
    assert codes.dtype == torch.int64 and codes.shape == (len(x), 4)
    sizes = tok.codebook_sizes
    assert sizes[:3] == [16, 16, 16] and sizes[3] == tok.extra_level_size == tok.metrics["max_group"]
    assert len(torch.unique(codes, dim=0)) == len(x)
    assert (codes >= 0).all() and (codes < torch.tensor(sizes)).all()
    assert torch.equal(tok.codes, codes)


def test_metrics(fitted) -> None:
    tok, x, codes = fitted
    m = tok.metrics
    assert m["n_items"] == len(x) and m["dim"] == 16
    assert all(0 < u <= 1 for u in m["utilisation"]) and all(0 < e <= 1 + 1e-9 for e in m["entropy_norm"])
    rel = m["rel_error_by_level"]
    assert rel[0] > rel[1] > rel[2] == pytest.approx(m["recon_rel"])
    distinct = len(torch.unique(codes[:, :3], dim=0))
    assert m["distinct_codes"] == distinct
    _, inverse, counts = torch.unique(codes[:, :3], dim=0, return_inverse=True, return_counts=True)
    assert m["collision_rate"] == pytest.approx(float((counts[inverse] > 1).double().mean()))
    assert all(m[key] == value for key, value in code_metrics(codes[:, :3], [16] * 3).items())


def test_decode_reconstructs_and_matches_recon_error(fitted) -> None:
    tok, x, codes = fitted
    xn = torch.nn.functional.normalize(torch.from_numpy(x), dim=1)
    x_hat = tok.decode(codes)
    assert x_hat.shape == xn.shape and x_hat.dtype == torch.float32
    err = (xn - x_hat).pow(2)
    assert float(err.mean()) == pytest.approx(tok.metrics["recon_mse"], rel=1e-4)
    assert float(err.sum() / xn.pow(2).sum()) == pytest.approx(tok.metrics["recon_rel"], rel=1e-4)
    assert tok.metrics["recon_rel"] < 0.2  # clustered data: three levels explain most of it


def test_encode_equals_fit_codes_for_plain_kmeans(fitted) -> None:
    tok, x, codes = fitted
    assert torch.equal(tok.encode(x), codes[:, :3])
    assert torch.equal(tok.encode(torch.from_numpy(x[:5]) * 7.0), codes[:5, :3])  # normalised first


def test_fit_is_deterministic(fitted) -> None:
    _, x, codes = fitted
    assert torch.equal(ResidualKMeansTokenizer(_config()).fit(x), codes)


def test_save_load_roundtrip(fitted, tmp_path: Path) -> None:
    tok, _, codes = fitted
    tok.save(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == [
        "codebooks.safetensors", "codes.safetensors", "tokenizer.json"]
    meta = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert meta["codebook_sizes"] == tok.codebook_sizes and meta["config"]["codebook_size"] == 16
    loaded = ResidualKMeansTokenizer.load(tmp_path / "tok", dim=16)
    new = _vectors(n=50, seed=9)
    assert torch.equal(loaded.encode(new), tok.encode(new))
    assert loaded.codebook_sizes == tok.codebook_sizes and loaded.metrics == tok.metrics
    assert torch.equal(loaded.codes, codes)
    with pytest.raises(DataError, match="dim 16"):
        ResidualKMeansTokenizer.load(tmp_path / "tok", dim=32)


def test_load_rejects_inconsistent_files(fitted, tmp_path: Path) -> None:
    tok, _, _ = fitted
    tok.save(tmp_path)
    meta = json.loads((tmp_path / "tokenizer.json").read_text())
    meta["dim"] = 8
    (tmp_path / "tokenizer.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="level_0"):
        ResidualKMeansTokenizer.load(tmp_path)
    with pytest.raises(DataError, match="not found"):
        ResidualKMeansTokenizer.load(tmp_path / "missing")


def test_balanced_levels_are_exactly_balanced() -> None:
    x = _vectors(n=1000)
    tok = ResidualKMeansTokenizer(_config(balanced=True, iters=5))
    codes = tok.fit(x)
    for level in range(3):
        assert torch.bincount(codes[:, level], minlength=16).tolist() == balanced_sizes(1000, 16)
    assert tok.metrics["utilisation"] == [1.0, 1.0, 1.0]
    assert len(torch.unique(codes, dim=0)) == 1000


def test_without_unique_level_and_without_normalisation() -> None:
    x = _vectors(n=400)
    tok = ResidualKMeansTokenizer(_config(unique_level=False, normalize=False, levels=2))
    codes = tok.fit(torch.from_numpy(x))
    assert codes.shape == (400, 2) and tok.codebook_sizes == [16, 16] and tok.extra_level_size is None
    torch.testing.assert_close(tok.decode(codes), torch.from_numpy(x) - _residual(tok, x, codes))


def _residual(tok: ResidualKMeansTokenizer, x: np.ndarray, codes: torch.Tensor) -> torch.Tensor:
    out = torch.from_numpy(x).clone()
    for level, c in enumerate(tok.codebooks):
        out -= c[codes[:, level]]
    return out


def test_bad_input_is_a_data_error(fitted) -> None:
    tok, x, _ = fitted
    bad = x.copy()
    bad[7, 3] = np.nan
    with pytest.raises(DataError, match="row 7"):
        ResidualKMeansTokenizer(_config()).fit(bad)
    bad[7, 3] = np.inf
    with pytest.raises(DataError, match="row 7"):
        tok.encode(bad)
    with pytest.raises(DataError, match="codebook_size to at most 10"):
        ResidualKMeansTokenizer(_config()).fit(x[:10])
    with pytest.raises(DataError, match="dim 8"):
        tok.encode(x[:, :8])
    with pytest.raises(DataError, match=r"level 1 codes must be in \[0, 16\)"):
        tok.decode(torch.tensor([[0, 16, 0]]))
    with pytest.raises(RuntimeError, match="not fitted"):
        ResidualKMeansTokenizer(_config()).encode(x)


def test_pipeline_numbers_collisions_by_train_popularity(tmp_path: Path) -> None:
    from onerec.config import load_config
    from onerec.data.splits import load_splits
    from onerec.pipeline import load_codes, stage_data, stage_tokenize

    cfg = load_config(preset="tiny", overrides=["data.sim.n_items=80", "data.sim.n_users=120", "data.sim.n_events=5000",
                                                "tokenizer.levels=1", "tokenizer.codebook_size=8",
                                                "tokenizer.collision_order=popularity"])
    stage_data(tmp_path, cfg, progress=False)
    stage_tokenize(tmp_path, cfg, progress=False)
    codes = load_codes(tmp_path)
    train = load_splits(tmp_path / "data" / "split")["train"]
    pop = np.bincount(train["items"].combine_chunks().flatten().to_numpy(), minlength=80)
    for code in np.unique(codes[:, 0]):
        group = np.flatnonzero(codes[:, 0] == code)
        assert (np.diff(pop[group[np.argsort(codes[group, 1])]]) <= 0).all()
