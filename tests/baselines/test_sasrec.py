"""SASRec: learns a deterministic pattern with both losses, is causal, saves and loads exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
import torch

from onerec.baselines import Recommender, SASRec, SASRecRecommender, build_baseline
from onerec.config import SasrecConfig
from onerec.errors import CheckpointError, DataError
from onerec.eval import evaluate

N_ITEMS = 40
LISTS = pa.list_(pa.int64())
SMALL = SasrecConfig(d_model=32, n_layers=1, n_heads=2, dropout=0.1, max_len=12, epochs=25, batch_size=64, lr=5e-3,
                     patience=4)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


def _eval_table(hist: list[np.ndarray], targets: list[int]) -> pa.Table:
    return pa.table({"user_id": np.arange(len(hist)), "history": pa.array([h.tolist() for h in hist], LISTS),
                     "targets": pa.array([[t] for t in targets], LISTS)})


@pytest.fixture(scope="module")
def successor_splits() -> dict[str, pa.Table]:
    """Item i is always followed by (i + 1) mod N; leave-one-out split of 300 users."""
    rng = np.random.default_rng(0)
    seqs = [(rng.integers(N_ITEMS) + np.arange(rng.integers(5, 20))) % N_ITEMS for _ in range(300)]
    return {
        "train": pa.table({"user_id": np.arange(len(seqs)), "items": pa.array([s[:-2].tolist() for s in seqs], LISTS)}),
        "valid": _eval_table([s[:-2] for s in seqs], [int(s[-2]) for s in seqs]),
        "test": _eval_table([s[:-1] for s in seqs], [int(s[-1]) for s in seqs]),
    }


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_learns_successor_pattern(loss: str, successor_splits: dict[str, pa.Table]) -> None:
    rec = SASRecRecommender(dataclasses.replace(SMALL, loss=loss))
    assert isinstance(rec, Recommender) and rec.name == f"sasrec_{loss}"
    rec.fit(successor_splits["train"], n_items=N_ITEMS, valid=successor_splits["valid"])
    m = evaluate(rec, successor_splits["test"], ks=(1, 10))
    assert m["recall@10"] >= 0.9, m  # a random ranking gets 10 / 40 = 0.25
    if loss == "ce":
        assert m["recall@1"] >= 0.9, m
    assert len(rec.losses) == len(rec.train_log) >= rec.best_epoch >= 1
    assert rec.losses[-1] < rec.losses[0]
    best_logged = rec.train_log[rec.best_epoch - 1]["valid_ndcg@10"]
    assert evaluate(rec, successor_splits["valid"], ks=(10,))["ndcg@10"] == pytest.approx(best_logged)  # best kept


def test_time_budget_stops_and_validates_last_epoch(successor_splits: dict[str, pa.Table]) -> None:
    rec = SASRecRecommender(dataclasses.replace(SMALL, time_budget_s=0.0, eval_every=5))
    rec.fit(successor_splits["train"], n_items=N_ITEMS, valid=successor_splits["valid"])
    assert len(rec.train_log) == 1 and rec.best_epoch == 1 and "valid_ndcg@10" in rec.train_log[0]


def test_save_load_round_trip_and_seeding(tmp_path, successor_splits: dict[str, pa.Table]) -> None:
    cfg = dataclasses.replace(SMALL, epochs=3, loss="bce", exclude_history=True)
    rec = SASRecRecommender(cfg)
    rec.fit(successor_splits["train"], n_items=N_ITEMS)
    again = SASRecRecommender(cfg)
    again.fit(successor_splits["train"], n_items=N_ITEMS)
    assert again.losses == rec.losses  # same seed, same run

    rec.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["model.safetensors", "sasrec.json"]
    loaded = SASRecRecommender.load(tmp_path / "ckpt")
    assert loaded.cfg == cfg and loaded.n_items == N_ITEMS and loaded.train_log == rec.train_log
    test = successor_splits["test"]
    np.testing.assert_array_equal(loaded.recommend(test, 20), rec.recommend(test, 20))
    for key, value in rec.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key


def test_exclude_history_truncation_and_empty_history() -> None:
    train = pa.table({"user_id": [0, 1], "items": pa.array([[0, 1, 2, 3], [4, 5, 6]], LISTS)})
    rec = SASRecRecommender(dataclasses.replace(SMALL, epochs=1, max_len=3, exclude_history=True))
    rec.fit(train, n_items=8)
    ex = pa.table({"user_id": [0, 1, 2], "history": pa.array([[0, 1, 2, 3, 4, 5, 6], [], [7]], LISTS)})
    out = rec.recommend(ex, 5)
    assert out.shape == (3, 5) and out.dtype == np.int64
    assert out[0].tolist() == [7, -1, -1, -1, -1]  # the whole history (longer than max_len) is excluded
    assert sorted(out[1].tolist()) == sorted(set(out[1].tolist())) and out[1].min() >= 0
    assert 7 not in out[2]


def test_model_is_causal_and_padding_free() -> None:
    torch.manual_seed(0)
    model = SASRec(n_items=20, d_model=16, n_layers=2, n_heads=2, dropout=0.3, max_len=8).eval()
    a = torch.tensor([[0, 0, 3, 5, 7, 9]])
    b = torch.tensor([[0, 0, 3, 5, 11, 2]])  # differs only after position 3
    ha, hb = model.encode(a), model.encode(b)
    torch.testing.assert_close(ha[:, :4], hb[:, :4])  # no position sees the future
    assert not torch.allclose(ha[:, 4:], hb[:, 4:])
    padded = torch.tensor([[0, 0, 0, 0, 3, 5, 7, 9]])  # more left padding, same items
    torch.testing.assert_close(model(padded), model(a))
    assert ha[0, :2].abs().sum() == 0  # padding positions are zeroed


def test_bce_negatives_avoid_the_users_items() -> None:
    rec = SASRecRecommender(SMALL)
    rec.n_items = 10
    window = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 0, 0, 0, 0, 0, 0, 1, 2]])  # tokens = item + 1
    rows = torch.tensor([0] * 50 + [1] * 50)  # row 0 has seen 8 of 10 items: rejection alone often fails
    neg = rec._sample_negatives(window, rows, torch.Generator().manual_seed(0))
    assert set(neg[:50].tolist()) == {9, 10} and neg.min() >= 1 and neg.max() <= 10
    assert not ({1, 2} & set(neg[50:].tolist()))


def test_rejects_unknown_items_and_names() -> None:
    train = pa.table({"user_id": [0], "items": pa.array([[0, 5]], LISTS)})
    with pytest.raises(DataError, match=r"0\.\.4"):
        SASRecRecommender(SMALL).fit(train, n_items=5)
    assert build_baseline("sasrec_bce").cfg.loss == "bce"
    with pytest.raises(ValueError, match="unknown baseline"):
        build_baseline("bpr")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda(successor_splits: dict[str, pa.Table]) -> None:
    rec = SASRecRecommender(dataclasses.replace(SMALL, epochs=2), device="cuda")
    rec.fit(successor_splits["train"], n_items=N_ITEMS, valid=successor_splits["valid"])
    assert next(rec.model.parameters()).is_cuda
    assert rec.recommend(successor_splits["test"], 10).shape == (300, 10)


def _without_seconds(log: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in log]


CUT = 5  # the epoch after which the fit below is killed


class _Stop(Exception):
    pass


@pytest.mark.parametrize("targets", ["pattern", "shuffled"])
def test_interrupted_fit_resumes_to_the_same_model(tmp_path, successor_splits: dict[str, pa.Table],
                                                   targets: str) -> None:
    """A fit killed after epoch CUT and resumed from its checkpoint ends with the uninterrupted fit's
    log, selection and weights (BCE: the negative sampler's generator; dropout: torch's global RNG;
    shuffling: NumPy's; with shuffled valid targets the best epoch comes early, so the early-stopping
    state must survive); a finished fit resumed again trains no further."""
    cfg = dataclasses.replace(SMALL, loss="bce", epochs=8, patience=3)
    train, valid = successor_splits["train"], successor_splits["valid"]
    if targets == "shuffled":
        order = np.random.default_rng(1).permutation(valid.num_rows)
        valid = valid.set_column(valid.column_names.index("targets"), "targets", valid["targets"].take(order))
    whole = SASRecRecommender(cfg)
    whole.fit(train, n_items=N_ITEMS, valid=valid, checkpoint=tmp_path / "whole")
    if targets == "shuffled":  # the case this parameter is for: the best epoch is before the cut
        assert whole.best_epoch <= CUT < len(whole.train_log), [r.get("valid_ndcg@10") for r in whole.train_log]

    def interrupt(row: dict[str, float]) -> None:
        if row["epoch"] == CUT:
            raise _Stop

    cut = SASRecRecommender(cfg)
    cut.on_epoch = interrupt
    with pytest.raises(_Stop):
        cut.fit(train, n_items=N_ITEMS, valid=valid, checkpoint=tmp_path / "cut")
    assert [p.name for p in (tmp_path / "cut").iterdir()] == [f"epoch-{CUT:04d}"]  # only the latest is kept
    torch.manual_seed(123)  # the resumed fit must not depend on the process's random state
    resumed = SASRecRecommender(cfg)
    seen: list[int] = []
    resumed.on_epoch = lambda row: seen.append(int(row["epoch"]))
    resumed.fit(train, n_items=N_ITEMS, valid=valid, checkpoint=tmp_path / "cut")
    assert seen == list(range(CUT + 1, len(whole.train_log) + 1))
    assert _without_seconds(resumed.train_log) == _without_seconds(whole.train_log)
    assert resumed.best_epoch == whole.best_epoch
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key

    again = SASRecRecommender(cfg)
    again.on_epoch = lambda row: pytest.fail("a finished fit trained again")
    again.fit(train, n_items=N_ITEMS, valid=valid, checkpoint=tmp_path / "whole")
    assert again.best_epoch == whole.best_epoch
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key]), key


def test_checkpoint_of_other_settings_or_data_is_refused(tmp_path, successor_splits: dict[str, pa.Table]) -> None:
    cfg = dataclasses.replace(SMALL, epochs=1)
    train = successor_splits["train"]
    SASRecRecommender(cfg).fit(train, n_items=N_ITEMS, checkpoint=tmp_path / "ck")
    with pytest.raises(CheckpointError, match=r"config\.lr"):
        SASRecRecommender(dataclasses.replace(cfg, lr=1e-3)).fit(train, n_items=N_ITEMS, checkpoint=tmp_path / "ck")
    with pytest.raises(CheckpointError, match="train"):
        SASRecRecommender(cfg).fit(train.slice(0, 100), n_items=N_ITEMS, checkpoint=tmp_path / "ck")
    # more epochs may be asked of a resumed fit: it goes on from the saved epoch
    longer = SASRecRecommender(dataclasses.replace(cfg, epochs=2))
    longer.fit(train, n_items=N_ITEMS, checkpoint=tmp_path / "ck")
    assert [row["epoch"] for row in longer.train_log] == [1, 2]
