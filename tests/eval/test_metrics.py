"""Recall@K / NDCG@K, deterministic top-k, and the evaluation harness."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.retrieval import RetrievalNormalizedDCG, RetrievalRecall

from onerec.eval import compute_metrics, evaluate, evaluate_many, format_table, per_user_metrics, topk_from_scores
from onerec.eval.metrics import hit_matrix


# ------------------------------------------------------------------------------ metrics
def test_hand_computed_case() -> None:
    recs = np.array([
        [3, 7, 1, 9, -1],  # A: target 7 at rank 2
        [2, 4, 6, 8, 10],  # B: targets {4, 10, 99}: hits at ranks 2 and 5; 99 (an unseen item) is missed
        [5, 5, 0, 1, 2],  # C: target 5 at rank 1; the repeat at rank 2 is not a second hit
    ])
    targets = [np.array([7]), np.array([4, 10, 99]), np.array([5])]
    m = compute_metrics(recs, targets, ks=(1, 5, 10))
    # Recall@1: A 0, B 0, C 1                       -> 1/3
    # NDCG@1:  same                                  -> 1/3
    # Recall@5: A 1, B 2/3, C 1                      -> (1 + 2/3 + 1) / 3 = 0.888889
    # NDCG@5:  A 1/log2(3) = 0.630930
    #          B (1/log2(3) + 1/log2(6)) / (1 + 1/log2(3) + 1/log2(4))
    #            = (0.630930 + 0.386853) / (1 + 0.630930 + 0.5) = 1.017783 / 2.130930 = 0.477622
    #          C 1
    #          mean = (0.630930 + 0.477622 + 1) / 3 = 0.702851
    # @10 equals @5: the lists are only 5 long, missing ranks are misses.
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["ndcg@1"] == pytest.approx(1 / 3)
    assert m["recall@5"] == pytest.approx(0.888889, abs=1e-6)
    assert m["ndcg@5"] == pytest.approx(0.702851, abs=1e-6)
    assert m["recall@10"] == m["recall@5"] and m["ndcg@10"] == m["ndcg@5"]
    assert list(m) == ["recall@1", "ndcg@1", "recall@5", "ndcg@5", "recall@10", "ndcg@10"]
    per = per_user_metrics(recs, targets, ks=(5,))
    b_ndcg = (1 / math.log2(3) + 1 / math.log2(6)) / (1 + 1 / math.log2(3) + 1 / math.log2(4))
    np.testing.assert_allclose(per["ndcg@5"], [1 / math.log2(3), b_ndcg, 1.0])


def test_hit_matrix_padding_duplicates_and_empty_targets() -> None:
    recs = np.array([[-1, 0, 0], [1, 2, 3]])
    hits = hit_matrix(recs, [np.array([0]), np.array([], dtype=np.int64)])
    assert hits.tolist() == [[False, True, False], [False, False, False]]
    m = per_user_metrics(recs, [np.array([0]), np.array([], dtype=np.int64)], ks=(1, 2))
    assert m["recall@2"].tolist() == [1.0, 0.0]  # a user without targets scores 0 (torchmetrics "neg")
    assert m["ndcg@2"][0] == pytest.approx(1 / math.log2(3))


def _torchmetrics_reference(scores: torch.Tensor, targets: list[np.ndarray], k: int) -> tuple[float, float]:
    b, n = scores.shape
    rel = torch.zeros(b, n, dtype=torch.bool)
    for i, t in enumerate(targets):
        rel[i, torch.as_tensor(t)] = True
    idx = torch.arange(b).repeat_interleave(n)
    rec = RetrievalRecall(top_k=k)(scores.flatten(), rel.flatten(), indexes=idx)
    ndcg = RetrievalNormalizedDCG(top_k=k)(scores.flatten(), rel.flatten(), indexes=idx)
    return float(rec), float(ndcg)


@pytest.mark.parametrize("multi", [False, True], ids=["leave_one_out", "multi_target"])
def test_agrees_with_torchmetrics(multi: bool) -> None:
    """Same numbers as torchmetrics with distinct, positive scores (where both definitions coincide).

    torchmetrics averages DCG over tied scores and its recall ignores items scored <= 0; scores
    here are continuous and positive so neither matters. Multi-target recall is |hits| / |T| in both.
    """
    rng = np.random.default_rng(0)
    ks = (1, 5, 10, 20, 50)
    for trial in range(12):
        b, n = 9, 70
        scores = torch.as_tensor(rng.random((b, n)), dtype=torch.float32) + 0.1
        sizes = rng.integers(1, 8, size=b) if multi else np.ones(b, dtype=int)
        targets = [rng.choice(n, size=s, replace=False) for s in sizes]
        ours = compute_metrics(topk_from_scores(scores, max(ks)).numpy(), targets, ks)
        for k in ks:
            rec, ndcg = _torchmetrics_reference(scores, targets, k)
            assert ours[f"recall@{k}"] == pytest.approx(rec, abs=1e-5), (trial, k)
            assert ours[f"ndcg@{k}"] == pytest.approx(ndcg, abs=1e-5), (trial, k)


# ------------------------------------------------------------------------------- top-k
@settings(max_examples=60, deadline=None)
@given(st.data())
def test_topk_breaks_ties_by_lower_id(data: st.DataObject) -> None:
    b = data.draw(st.integers(1, 4))
    n = data.draw(st.integers(1, 12))
    k = data.draw(st.integers(1, 15))
    vals = data.draw(st.lists(st.lists(st.integers(0, 3), min_size=n, max_size=n), min_size=b, max_size=b))
    excl = data.draw(st.lists(st.lists(st.integers(-1, n + 1), max_size=4), min_size=b, max_size=b))
    got = topk_from_scores(torch.tensor(vals, dtype=torch.float32), k, exclude=[np.array(e) for e in excl])
    for row, e, out in zip(vals, excl, got.tolist()):
        allowed = [i for i in range(n) if i not in e]
        want = sorted(allowed, key=lambda i: (-row[i], i))[:k]
        assert out == want + [-1] * (k - len(want))


def test_topk_mask_exclusion_and_nan() -> None:
    scores = torch.tensor([[0.5, 0.9, float("nan"), 0.1, 0.9], [1.0, 2.0, 3.0, 4.0, 5.0]])
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[1, 4] = True
    assert topk_from_scores(scores, 3, exclude=mask).tolist() == [[1, 4, 0], [3, 2, 1]]
    assert topk_from_scores(scores, 2).tolist() == [[1, 4], [4, 3]]  # NaN is never recommended


def test_topk_ranks_float64_scores_in_float64() -> None:
    """A gap float32 cannot hold (1e-12 on 1000) still orders float64 scores; float32 ties go by id."""
    scores = torch.tensor([[1000.0, 1000.0 + 1e-12, 0.0]], dtype=torch.float64)
    assert topk_from_scores(scores, 2).tolist() == [[1, 0]]
    assert topk_from_scores(scores.float(), 2).tolist() == [[0, 1]]


# ------------------------------------------------------------------------------ harness
class _Fixed:
    """Recommends the same list to everyone and records the columns it was shown."""

    name = "fixed"

    def __init__(self, items: list[int]) -> None:
        self.items, self.seen_columns = np.array(items, dtype=np.int64), set()

    def fit(self, train: pa.Table, *, n_items: int, valid: pa.Table | None = None) -> None:
        pass

    def recommend(self, examples: pa.Table, k: int) -> np.ndarray:
        self.seen_columns |= set(examples.column_names)
        top = np.full(k, -1, dtype=np.int64)
        top[: min(k, len(self.items))] = self.items[:k]
        return np.tile(top, (examples.num_rows, 1))


def _examples(targets: list[list[int]]) -> pa.Table:
    lists = pa.list_(pa.int64())
    return pa.table({"user_id": np.arange(len(targets)), "history": pa.array([[0]] * len(targets), lists),
                     "targets": pa.array(targets, lists), "target_ts": np.zeros(len(targets), np.int64)})


def test_evaluate_batches_unseen_targets_and_no_leak() -> None:
    ex = _examples([[2], [0], [9], [1000]])  # 1000: an item outside the model's catalogue -> a miss
    rec = _Fixed([0, 1, 2])
    whole = evaluate(rec, ex, ks=(1, 5))
    assert evaluate(rec, ex, ks=(1, 5), batch_size=1) == pytest.approx(whole)
    assert "targets" not in rec.seen_columns
    assert whole["n_users"] == 4
    assert whole["recall@1"] == pytest.approx(1 / 4)  # only the user whose target is 0
    assert whole["recall@5"] == pytest.approx(2 / 4)
    assert whole["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4)) / 4)


def test_evaluate_many_and_table() -> None:
    ex = _examples([[1], [3]])
    res = evaluate_many({"a": _Fixed([1]), "b": _Fixed([3, 1])}, ex, ks=(1, 10))
    assert list(res["models"]) == ["a", "b"]
    assert res["models"]["b"]["recall@10"] == 1.0
    table = format_table(res)
    lines = table.splitlines()
    assert lines[0] == "| model | R@1 | N@1 | R@10 | N@10 | users |"
    assert lines[2].startswith("| a | 0.5000 | 0.5000 | 0.5000 | 0.5000 | 2")
    assert format_table(res["models"]["a"], name="a") == "\n".join(lines[:3])


def test_evaluate_rejects_bad_output() -> None:
    class Bad(_Fixed):
        def recommend(self, examples: pa.Table, k: int) -> np.ndarray:
            return np.zeros((examples.num_rows, k - 1), dtype=np.int64)

    with pytest.raises(ValueError, match="expected int"):
        evaluate(Bad([0]), _examples([[0]]), ks=(5,))
