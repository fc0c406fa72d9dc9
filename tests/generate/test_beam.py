"""Constrained beam search: fast path vs the Python reference, vs brute force, and its contracts."""

from __future__ import annotations

import math
from collections import namedtuple

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from conftest import random_codes
from onerec.generate import PrefixTable, beam_search, beam_search_reference, expand_to_beams

MODES = ("auto", "dense", "sparse")
Cache = namedtuple("Cache", "keys user")




class RandomLM:
    """A toy decoder: log_softmax of a fixed random table indexed by (user, step, hash of the prefix).

    Prefix-dependent and tie-free in practice (continuous random logits); ``neg_inf_frac`` of the
    entries are -inf to exercise beams that die.
    """

    buckets = 1009

    def __init__(self, sizes: list[int], n_users: int, seed: int, neg_inf_frac: float = 0.0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.tables = []
        for v in sizes:
            lp = torch.randn(n_users, self.buckets, v, generator=g).log_softmax(-1)
            lp[torch.rand(lp.shape, generator=g) < neg_inf_frac] = -math.inf
            self.tables.append(lp)

    def log_probs(self, users: torch.Tensor, prefixes: torch.Tensor) -> torch.Tensor:
        """users [M], prefixes [M, t] -> [M, V_t]."""
        h = torch.zeros_like(users)
        for j in range(prefixes.shape[1]):
            h = (h * 31 + prefixes[:, j] + 1) % self.buckets
        return self.tables[prefixes.shape[1]].to(users.device)[users, h]

    def step_fn(self, users: torch.Tensor, beam_size: int):
        rows = users.repeat_interleave(beam_size)
        return lambda tokens, step, state: (self.log_probs(rows, tokens), state)

    def item_scores(self, user: int, codes: torch.Tensor) -> torch.Tensor:
        """[N] float32 total log-prob of every item, summed in the same order as beam search."""
        users = torch.full((codes.shape[0],), user)
        total = torch.zeros(codes.shape[0])
        for t in range(codes.shape[1]):
            total = total + self.log_probs(users, codes[:, :t]).gather(1, codes[:, t : t + 1]).squeeze(1)
        return total


def prefix_scores_tie_free(lm: RandomLM, codes: torch.Tensor, n_users: int) -> bool:
    """True if no two distinct valid prefixes of one user have equal finite scores (so beams are unique)."""
    for u in range(n_users):
        for t in range(1, codes.shape[1] + 1):
            prefixes = torch.unique(codes[:, :t], dim=0)
            s = lm.item_scores(u, prefixes)
            s = s[torch.isfinite(s)]
            if torch.unique(s).numel() != s.numel():
                return False
    return True


@st.composite
def problems(draw, max_items: int = 30):
    sizes = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
    n_items = draw(st.integers(1, min(max_items, math.prod(sizes))))
    beam = draw(st.integers(1, 8))
    return {
        "sizes": sizes,
        "codes": random_codes(sizes, n_items, draw(st.integers(0, 2**16))),
        "n_users": draw(st.integers(1, 3)),
        "beam": beam,
        "top_k": draw(st.integers(1, beam)),
        "seed": draw(st.integers(0, 2**16)),
        "neg_inf_frac": draw(st.sampled_from([0.0, 0.0, 0.3])),
        "mode": draw(st.sampled_from(MODES)),
    }


def check_valid(table: PrefixTable, items: torch.Tensor, scores: torch.Tensor, codes: torch.Tensor) -> None:
    """Returned items are real and distinct per user; padding is (-1, -inf, -1 codes) and comes last."""
    live = items >= 0
    assert torch.equal(live, torch.isfinite(scores))
    assert (items < table.num_items).all()
    assert torch.equal(codes[live], table.codes[items[live]])
    assert (codes[~live] == -1).all()
    for row, ok in zip(items.tolist(), live.tolist()):
        real = [i for i, keep in zip(row, ok) if keep]
        assert len(set(real)) == len(real) and ok == sorted(ok, reverse=True)
    assert (scores[:, 1:] <= scores[:, :-1]).logical_or(~live[:, 1:]).all()


@settings(max_examples=50, deadline=None)
@given(p=problems())
def test_fast_matches_reference(p: dict) -> None:
    table = PrefixTable.from_codes(p["codes"], p["sizes"])
    lm = RandomLM(p["sizes"], p["n_users"], p["seed"], p["neg_inf_frac"])
    assume(prefix_scores_tie_free(lm, p["codes"], p["n_users"]))
    step_fn = lm.step_fn(torch.arange(p["n_users"]), p["beam"])
    kw = {"batch_size": p["n_users"], "table": table, "beam_size": p["beam"], "top_k": p["top_k"], "return_codes": True}
    items, scores, codes = beam_search(step_fn, candidates=p["mode"], **kw)
    ref_items, ref_scores, ref_codes = beam_search_reference(step_fn, **kw)
    assert items.shape == (p["n_users"], p["top_k"]) and codes.shape == (*items.shape, len(p["sizes"]))
    assert scores.dtype == torch.float32
    assert torch.equal(items, ref_items)
    assert torch.equal(codes, ref_codes)
    torch.testing.assert_close(scores, ref_scores, atol=1e-5, rtol=0)
    check_valid(table, items, scores, codes)


@settings(max_examples=40, deadline=None)
@given(p=problems(max_items=12))
def test_exact_top_k_when_beam_covers_every_item(p: dict) -> None:
    n = p["codes"].shape[0]
    beam, top_k = n + p["beam"] - 1, min(p["top_k"], n + p["beam"] - 1)
    table = PrefixTable.from_codes(p["codes"], p["sizes"])
    lm = RandomLM(p["sizes"], p["n_users"], p["seed"], p["neg_inf_frac"])
    assume(prefix_scores_tie_free(lm, p["codes"], p["n_users"]))
    items, scores, codes = beam_search(
        lm.step_fn(torch.arange(p["n_users"]), beam),
        batch_size=p["n_users"],
        table=table,
        beam_size=beam,
        top_k=top_k,
        candidates=p["mode"],
        return_codes=True,
    )
    check_valid(table, items, scores, codes)
    for u in range(p["n_users"]):
        brute = lm.item_scores(u, p["codes"])
        order = [i for i in sorted(range(n), key=lambda i: -brute[i]) if math.isfinite(brute[i])][:top_k]
        expected = order + [-1] * (top_k - len(order))
        assert items[u].tolist() == expected
        torch.testing.assert_close(scores[u, : len(order)], brute[order], atol=1e-5, rtol=0)


def test_docstring_example() -> None:
    table = PrefixTable.from_codes(torch.tensor([[0, 1], [1, 0], [1, 1]]), [2, 2])
    after = {0: [0.9, 0.1], 1: [0.7, 0.3]}

    def step_fn(tokens, step, state):
        if step == 0:
            return torch.tensor([0.6, 0.4]).log().expand(tokens.shape[0], 2), state
        return torch.tensor([after[int(t)] for t in tokens[:, 0]]).log(), state

    for mode in MODES:
        items, scores = beam_search(step_fn, batch_size=1, table=table, beam_size=2, top_k=2, candidates=mode)
        assert items.tolist() == [[1, 2]]
        torch.testing.assert_close(scores, torch.tensor([[0.4 * 0.7, 0.4 * 0.3]]).log())
    items, scores = beam_search(step_fn, batch_size=1, table=table, beam_size=4, top_k=4)
    assert items.tolist() == [[1, 2, 0, -1]] and scores[0, 3] == -math.inf


def test_fewer_items_than_beams_pads_with_minus_one() -> None:
    sizes = [4, 3, 2]
    table = PrefixTable.from_codes(random_codes(sizes, 3, seed=1), sizes)
    lm = RandomLM(sizes, 2, seed=0)
    items, scores, codes = beam_search(
        lm.step_fn(torch.arange(2), 8), batch_size=2, table=table, beam_size=8, top_k=5, return_codes=True
    )
    assert (items[:, :3] >= 0).all() and (items[:, 3:] == -1).all()
    assert torch.isinf(scores[:, 3:]).all() and (codes[:, 3:] == -1).all()
    assert [sorted(r) for r in items[:, :3].tolist()] == [[0, 1, 2], [0, 1, 2]]


@pytest.mark.parametrize("mode", MODES)
def test_minus_inf_log_probs_kill_beams_even_on_valid_prefixes(mode: str) -> None:
    """Only items whose last code is 0 have finite probability: the rest must not be returned."""
    codes = torch.tensor([[0, 0], [0, 1], [1, 1], [2, 0], [2, 2]])
    table = PrefixTable.from_codes(codes, [3, 3])

    def step_fn(tokens, step, state):
        lp = torch.zeros(tokens.shape[0], 3)
        if step == 1:
            lp[:, 1:] = -math.inf
        return lp, state

    items, scores, out_codes = beam_search(
        step_fn, batch_size=2, table=table, beam_size=5, top_k=4, candidates=mode, return_codes=True
    )
    assert [sorted(r[:2]) + r[2:] for r in items.tolist()] == [[0, 3, -1, -1]] * 2
    assert torch.isinf(scores[:, 2:]).all() and (out_codes[:, 2:] == -1).all()


def test_deterministic() -> None:
    sizes = [6, 5, 4]
    table = PrefixTable.from_codes(random_codes(sizes, 80, seed=2), sizes)
    step_fn = RandomLM(sizes, 4, seed=5).step_fn(torch.arange(4), 6)
    runs = [beam_search(step_fn, batch_size=4, table=table, beam_size=6, top_k=4, return_codes=True) for _ in range(3)]
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(run, runs[0]))


def test_batch_equals_each_user_alone() -> None:
    sizes = [5, 5, 3]
    table = PrefixTable.from_codes(random_codes(sizes, 60, seed=4), sizes)
    lm = RandomLM(sizes, 5, seed=6)
    together = beam_search(lm.step_fn(torch.arange(5), 4), batch_size=5, table=table, beam_size=4, top_k=3)
    for u in range(5):
        alone = beam_search(lm.step_fn(torch.tensor([u]), 4), batch_size=1, table=table, beam_size=4, top_k=3)
        assert torch.equal(alone[0][0], together[0][u]) and torch.equal(alone[1][0], together[1][u])
    assert len({tuple(r) for r in together[0].tolist()}) > 1  # users really differ


@pytest.mark.parametrize("search", [beam_search, beam_search_reference])
def test_state_is_reordered_with_its_beam(search) -> None:
    """A KV-cache-like state: each row must hold the prefix and the user of the beam it is fed with."""
    sizes, users, beam = [4, 4, 3], torch.tensor([3, 0, 2]), 5
    table = PrefixTable.from_codes(random_codes(sizes, 30, seed=7), sizes)
    lm, calls = RandomLM(sizes, 4, seed=8), []

    def step_fn(tokens, step, state):
        cache = state["cache"]
        expected_user = users.repeat_interleave(beam)
        assert torch.equal(cache.user, expected_user), "state rows moved across users"
        assert torch.equal(cache.keys, tokens[:, : max(step - 1, 0)]), "state rows do not match their prefixes"
        seen = tokens[:, : max(step - 1, 0)].sum(1, keepdim=True)
        assert torch.equal(state["history"][0], seen + state["history"][1]), "list leaves not reordered"
        assert state["tag"] == "opaque"
        calls.append(step)
        new_state = {
            "cache": Cache(keys=tokens.clone(), user=cache.user),
            "history": [tokens.sum(1, keepdim=True), torch.zeros(tokens.shape[0], 1, dtype=torch.long)],
            "tag": "opaque",
        }
        return lm.log_probs(cache.user, tokens), new_state

    state = {
        "cache": Cache(keys=torch.zeros(len(users) * beam, 0, dtype=torch.long), user=expand_to_beams(users, beam)),
        "history": [torch.zeros(len(users) * beam, 1, dtype=torch.long)] * 2,
        "tag": "opaque",
    }
    items, scores = search(step_fn, batch_size=3, table=table, beam_size=beam, top_k=3, state=state)
    assert calls == [0, 1, 2]
    stateless = beam_search(lm.step_fn(users, beam), batch_size=3, table=table, beam_size=beam, top_k=3)
    assert torch.equal(items, stateless[0]) and torch.equal(scores, stateless[1])


def test_half_precision_log_probs_accumulate_in_float32() -> None:
    sizes = [5, 4, 3]
    table = PrefixTable.from_codes(random_codes(sizes, 40, seed=9), sizes)
    lm = RandomLM(sizes, 2, seed=10)
    base = lm.step_fn(torch.arange(2), 4)

    def half(tokens, step, state):
        lp, state = base(tokens, step, state)
        return lp.to(torch.bfloat16), state

    items, scores = beam_search(half, batch_size=2, table=table, beam_size=4, top_k=2)
    assert scores.dtype == torch.float32 and (items >= 0).all()


def test_bad_arguments_raise() -> None:
    table = PrefixTable.from_codes(torch.tensor([[0, 1], [1, 0]]), [2, 2])
    ok = RandomLM([2, 2], 1, seed=0).step_fn(torch.arange(1), 2)
    with pytest.raises(ValueError, match=r"beam_size \(2\) must be >= top_k \(3\)"):
        beam_search(ok, batch_size=1, table=table, beam_size=2, top_k=3)
    with pytest.raises(ValueError, match="candidates must be"):
        beam_search(ok, batch_size=1, table=table, beam_size=2, top_k=1, candidates="fast")

    def wrong_width(tokens, step, state):
        return torch.zeros(tokens.shape[0], 3), state

    for search in (beam_search, beam_search_reference):
        with pytest.raises(ValueError, match=r"expected .* = \(2, 2\)"):
            search(wrong_width, batch_size=1, table=table, beam_size=2, top_k=1)
    with pytest.raises(ValueError, match=r"state\['enc'\] has shape \(1, 4\)"):
        beam_search(ok, batch_size=1, table=table, beam_size=2, top_k=1, state={"enc": torch.zeros(1, 4)})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("exclude", [False, True])
def test_cuda_matches_cpu(mode: str, exclude: bool) -> None:
    sizes = [16, 16, 8, 3]
    codes = random_codes(sizes, 2000, seed=11)
    lm = RandomLM(sizes, 8, seed=12)
    kw = {"batch_size": 8, "beam_size": 16, "top_k": 10, "return_codes": True, "candidates": mode}
    if exclude:  # each user's history: 300 random items
        kw["exclude"] = [torch.randperm(2000, generator=torch.Generator().manual_seed(u))[:300] for u in range(8)]
    cpu = beam_search(lm.step_fn(torch.arange(8), 16), table=PrefixTable.from_codes(codes, sizes), **kw)
    gpu_table = PrefixTable.from_codes(codes, sizes).to("cuda")
    gpu = beam_search(lm.step_fn(torch.arange(8, device="cuda"), 16), table=gpu_table, **kw)
    assert torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[2].cpu(), cpu[2])
    torch.testing.assert_close(gpu[1].cpu(), cpu[1], atol=1e-5, rtol=0)


# ------------------------------------------------------------------ exclusion (e.g. the user's history)
@st.composite
def exclusion_problems(draw, max_items: int = 30):
    p = draw(problems(max_items))
    n = p["codes"].shape[0]
    p["exclude"] = [draw(st.lists(st.integers(0, n - 1), max_size=n)) for _ in range(p["n_users"])]
    return p


@settings(max_examples=60, deadline=None)
@given(p=exclusion_problems())
def test_exclusion_matches_reference_and_keeps_k_allowed_items(p: dict) -> None:
    table = PrefixTable.from_codes(p["codes"], p["sizes"])
    lm = RandomLM(p["sizes"], p["n_users"], p["seed"], p["neg_inf_frac"])
    assume(prefix_scores_tie_free(lm, p["codes"], p["n_users"]))
    step_fn = lm.step_fn(torch.arange(p["n_users"]), p["beam"])
    kw = {"batch_size": p["n_users"], "table": table, "beam_size": p["beam"], "top_k": p["top_k"],
          "return_codes": True, "exclude": p["exclude"]}
    items, scores, codes = beam_search(step_fn, candidates=p["mode"], **kw)
    ref_items, ref_scores, ref_codes = beam_search_reference(step_fn, **kw)
    assert torch.equal(items, ref_items) and torch.equal(codes, ref_codes)
    torch.testing.assert_close(scores, ref_scores, atol=1e-5, rtol=0)
    check_valid(table, items, scores, codes)
    n = table.num_items
    for u, row in enumerate(items.tolist()):
        assert not set(row) & set(p["exclude"][u])
        if p["neg_inf_frac"] == 0:  # every allowed item is reachable: exactly min(k, allowed) come back
            assert sum(i >= 0 for i in row) == min(p["top_k"], n - len(set(p["exclude"][u])))


@pytest.mark.parametrize("mode", MODES)
def test_exclusion_returns_k_unseen_items_where_filtering_the_beam_would_not(mode: str) -> None:
    """Beam 4, k 4: excluding the 4 items the plain search returns and more still gives 4 other items; the
    plain search's beam filtered afterwards would give none."""
    sizes = [4, 4, 3]
    codes = random_codes(sizes, 40, seed=3)
    table = PrefixTable.from_codes(codes, sizes)
    lm = RandomLM(sizes, 2, seed=5)
    step_fn = lm.step_fn(torch.arange(2), 4)
    plain, _ = beam_search(step_fn, batch_size=2, table=table, beam_size=4, top_k=4, candidates=mode)
    # user 0: the plain top 4 plus every other item of their first-level prefixes; user 1: nothing
    first = set(codes[plain[0], 0].tolist())
    seen = sorted({int(i) for i in range(40) if int(codes[i, 0]) in first} | set(plain[0].tolist()))
    assert len(seen) < 40
    items, scores = beam_search(step_fn, batch_size=2, table=table, beam_size=4, top_k=4, candidates=mode,
                                exclude=[seen, []])
    assert (items[0] >= 0).all() and not set(items[0].tolist()) & set(seen)
    assert torch.equal(items[1], plain[1])  # a user with nothing excluded gets what the plain search gives
    assert torch.isfinite(scores).all()


def test_exclusion_of_every_item_returns_padding_and_empty_exclusion_changes_nothing() -> None:
    sizes = [3, 2]
    codes = random_codes(sizes, 6, seed=1)
    table = PrefixTable.from_codes(codes, sizes)
    step_fn = RandomLM(sizes, 2, seed=2).step_fn(torch.arange(2), 4)
    kw = {"batch_size": 2, "table": table, "beam_size": 4, "top_k": 3}
    items, scores = beam_search(step_fn, exclude=[list(range(6)), []], **kw)
    plain, plain_scores = beam_search(step_fn, **kw)
    assert (items[0] == -1).all() and torch.isneginf(scores[0]).all()
    assert torch.equal(items[1], plain[1]) and torch.equal(scores[1], plain_scores[1])
    same, same_scores = beam_search(step_fn, exclude=[[], []], **kw)
    assert torch.equal(same, plain) and torch.equal(same_scores, plain_scores)
    with pytest.raises(ValueError, match="exclude has 1 rows"):
        beam_search(step_fn, exclude=[[]], **kw)
    with pytest.raises(ValueError, match=r"outside 0\.\.5"):
        beam_search(step_fn, exclude=[[6], []], **kw)
