import numpy as np
import torch

from onerec.reward import CodeIndex, format_reward, group_advantages, industrial_reward


def test_code_index_matches_dictionary_reference():
    rng = np.random.default_rng(0)
    codes = np.unique(rng.integers(0, 6, size=(80, 3)), axis=0)
    rng.shuffle(codes)
    index = CodeIndex(codes, [6, 6, 6])
    query = rng.integers(-1, 7, size=(50, 4, 3))
    query[0, 0] = codes[5]
    got = index.lookup(query)
    assert got[0, 0] == 5
    np.testing.assert_array_equal(got, index.lookup_reference(query))
    np.testing.assert_array_equal(format_reward(got), (got >= 0).astype(float))


def test_industrial_reward_scales_only_past_the_share():
    reward = np.ones((2, 4))
    cls = np.array([[3, 3, 3, 1], [1, 3, 1, 1]])
    out = industrial_reward(reward, cls, target_class=3, f=0.25, scale=0.5)
    np.testing.assert_array_equal(out, [[1, 0.5, 0.5, 1], [1, 1, 1, 1]])
    np.testing.assert_array_equal(industrial_reward(reward, cls, 3, 1.0, 0.5), reward)


def test_group_advantages_are_normalised_per_group():
    r = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 8.0]])
    a = group_advantages(r)
    torch.testing.assert_close(a.mean(dim=1), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(a.std(dim=1, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)
    assert a[0, 2] > 0 > a[0, 0]
