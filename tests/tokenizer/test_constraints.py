"""PrefixTable: the trie over item codes answers exactly the prefixes the codes contain."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import random_codes
from onerec.tokenizer.constraints import PrefixTable

HAND_CODES = torch.tensor([[2, 1], [0, 0], [2, 0], [0, 1]])




def python_children(codes: torch.Tensor) -> dict[tuple[int, ...], set[int]]:
    out: dict[tuple[int, ...], set[int]] = {}
    for code in map(tuple, codes.tolist()):
        for t in range(len(code)):
            out.setdefault(code[:t], set()).add(code[t])
    return out


def walk(table: PrefixTable, codes: torch.Tensor) -> torch.Tensor:
    """[N, D+1] node ids visited by each code, root first."""
    nodes = [table.root(codes.shape[0])]
    for t in range(codes.shape[1]):
        nodes.append(table.advance(nodes[-1], codes[:, t], t))
    return torch.stack(nodes, dim=1)


def test_hand_example_matches_docstring() -> None:
    t = PrefixTable.from_codes(HAND_CODES, [3, 2])
    assert [p.tolist() for p in t.child_ptr] == [[0, 2], [0, 2, 4]]
    assert [c.tolist() for c in t.child_tok] == [[0, 2], [0, 1, 0, 1]]
    assert t.leaf_item.tolist() == [1, 3, 2, 0]
    assert t.max_degree == [2, 2]
    assert t.allowed_mask(t.root(1), 0).tolist() == [[True, False, True]]
    assert t.advance(torch.tensor([0, 0]), torch.tensor([2, 1]), 0).tolist() == [1, -1]
    assert t.item_of(t.advance(torch.tensor([1]), torch.tensor([0]), 1)).tolist() == [2]
    tokens, nodes = t.children(torch.tensor([0, 1, -1]), 1)
    assert tokens.tolist() == [[0, 1], [0, 1], [-1, -1]]
    assert nodes.tolist() == [[0, 1], [2, 3], [-1, -1]]


def test_dead_nodes_and_bad_tokens() -> None:
    t = PrefixTable.from_codes(HAND_CODES, [3, 2])
    assert not t.allowed_mask(torch.tensor([-1]), 1).any()
    assert t.allowed_mask(torch.tensor([-1, 0]), 0).tolist() == [[False] * 3, [True, False, True]]
    assert t.advance(torch.tensor([-1, 0, 0]), torch.tensor([0, -1, 3]), 0).tolist() == [-1, -1, -1]
    assert t.item_of(torch.tensor([-1, 3])).tolist() == [-1, 0]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    frac=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**16),
)
def test_random_codes_trie_is_exact(sizes: list[int], frac: float, seed: int) -> None:
    total = math.prod(sizes)
    codes = random_codes(sizes, max(1, round(frac * total)), seed)
    table = PrefixTable.from_codes(codes, sizes)
    expected = python_children(codes)

    # Every item is reached exactly once, and only through its own code.
    path = walk(table, codes)
    assert (path >= 0).all()
    assert table.item_of(path[:, -1]).tolist() == list(range(codes.shape[0]))

    # Allowed tokens of every node = the continuations present in the codes, and advance agrees.
    for t, v in enumerate(sizes):
        prefixes = [tuple(p) for p in codes[:, :t].tolist()]
        nodes = path[:, t]
        mask = table.allowed_mask(nodes, t)
        assert mask.shape == (codes.shape[0], v)
        for row, prefix in enumerate(prefixes):
            assert set(mask[row].nonzero().squeeze(1).tolist()) == expected[prefix]
        all_nodes = torch.arange(table.num_nodes(t))
        grid_nodes, grid_tok = all_nodes.repeat_interleave(v), torch.arange(v).repeat(len(all_nodes))
        child = table.advance(grid_nodes, grid_tok, t)
        assert torch.equal(child >= 0, table.allowed_mask(all_nodes, t).reshape(-1))
        assert sorted(child[child >= 0].tolist()) == list(range(table.num_nodes(t + 1)))
        tokens, kids = table.children(all_nodes, t)
        parents = all_nodes[:, None].expand_as(tokens)
        valid = tokens >= 0
        assert torch.equal(kids[valid], table.advance(parents[valid], tokens[valid], t))
        assert (kids[~valid] == -1).all()


def test_memory_is_linear_in_items_for_large_codebooks() -> None:
    sizes = [8192, 8192, 8192, 4]
    g = torch.Generator().manual_seed(0)
    codes = torch.unique(torch.stack([torch.randint(0, v, (20_000,), generator=g) for v in sizes], dim=1), dim=0)
    n, d = codes.shape
    table = PrefixTable.from_codes(codes[torch.randperm(n, generator=g)], sizes)
    stored = sum(x.numel() for x in [*table.child_ptr, *table.child_tok, *table.child_key, table.leaf_item])
    assert stored <= 3 * n * d + n + d + 1  # O(N * D), nothing of size (nodes x V)
    nodes = walk(table, table.codes[:64])[:, 2]
    assert table.allowed_mask(nodes, 2).shape == (64, 8192)
    assert table.children(nodes, 2)[0].shape == (64, table.max_degree[2])


@pytest.mark.parametrize(
    ("codes", "sizes", "match"),
    [
        (torch.tensor([[0, 1], [1, 0], [0, 1]]), [2, 2], r"items 0 and 2 share the full code \[0, 1\]"),
        (torch.tensor([[0, 2]]), [2, 2], r"item 0 .* level 1 value 2 is outside \[0, 2\)"),
        (torch.tensor([[0, 1], [-1, 0]]), [2, 2], r"item 1 .* level 0 value -1"),
        (torch.tensor([[0, 1]]), [2], "must list 2 positive sizes"),
        (torch.tensor([[0, 1]]), [2, 0], "must list 2 positive sizes"),
        (torch.tensor([[0.0, 1.0]]), [2, 2], "integer dtype"),
        (torch.tensor([0, 1]), [2, 2], "2-D integer tensor"),
        (torch.zeros(0, 2, dtype=torch.long), [2, 2], "empty"),
    ],
)
def test_bad_codes_raise(codes: torch.Tensor, sizes: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PrefixTable.from_codes(codes, sizes)


def test_bad_step_raises() -> None:
    t = PrefixTable.from_codes(HAND_CODES, [3, 2])
    with pytest.raises(ValueError, match="out of range"):
        t.allowed_mask(t.root(1), 2)


def test_to_device_copies_every_tensor() -> None:
    t = PrefixTable.from_codes(HAND_CODES.int(), [3, 2])
    assert t.codes.dtype == torch.long
    moved = t.to("cpu")
    assert moved.device == torch.device("cpu") and moved.max_degree == t.max_degree
    assert torch.equal(moved.leaf_item, t.leaf_item)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    codes = random_codes([6, 5, 4], 70, seed=3)
    cpu = PrefixTable.from_codes(codes, [6, 5, 4])
    gpu = PrefixTable.from_codes(codes.cuda(), [6, 5, 4])
    assert torch.equal(walk(gpu, codes.cuda()).cpu(), walk(cpu, codes))
    assert torch.equal(
        cpu.to("cuda").allowed_mask(torch.arange(6, device="cuda"), 1).cpu(), cpu.allowed_mask(torch.arange(6), 1)
    )
