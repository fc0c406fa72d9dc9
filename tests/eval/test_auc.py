import numpy as np
import pytest

from onerec.eval.metrics import auc, gauc, gauc_reference


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed):
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 20, 500).astype(float)  # many ties
    labels = (rng.random(500) < 0.3 + 0.02 * scores).astype(int)
    assert auc(scores, labels) == pytest.approx(sk.roc_auc_score(labels, scores), abs=1e-12)


def test_gauc_matches_reference_and_skips_one_class_groups():
    rng = np.random.default_rng(3)
    groups = rng.integers(0, 40, 2000)
    scores = np.round(rng.normal(size=2000), 1)
    labels = (rng.random(2000) < 0.2 + 0.1 * (scores > 0)).astype(int)
    labels[groups == 5] = 0  # a one-class user is left out
    assert gauc(scores, labels, groups) == pytest.approx(gauc_reference(scores, labels, groups), abs=1e-12)


def test_auc_perfect_and_single_class():
    assert auc(np.array([0.1, 0.2, 0.9]), np.array([0, 0, 1])) == 1.0
    assert auc(np.array([0.9, 0.2, 0.1]), np.array([0, 0, 1])) == 0.0
    assert np.isnan(auc(np.array([0.1, 0.2]), np.array([1, 1])))
