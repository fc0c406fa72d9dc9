"""Valid-prefix tables: the trie over item semantic IDs that constrained generation walks.

OneRec (arXiv 2502.18965, Sec. 2; Technical Report arXiv 2506.13695, "format reward") decodes
an item as its semantic ID ``(c_1, ..., c_D)`` one code per step. Most code tuples map to no
item, so generation may only follow prefixes that some item has. :class:`PrefixTable` stores
those prefixes as a trie built once per tokenizer, in flat tensors that batched beam search
queries with gathers, scatters and ``searchsorted`` and no Python loop over beams.

Shape legend: N = items, D = code levels, M = queried nodes (e.g. batch x beam),
V_t = ``codebook_sizes[t]``, n_t = number of distinct length-t prefixes (n_0 = 1, n_D = N).

Layout (all int64). Level-t nodes are the distinct length-t prefixes, numbered ``0..n_t-1`` in
lexicographic order; node ids are per level, and -1 means "no node" (an invalid or dead path).
For each level t < D, the children of level-t nodes are stored in CSR form:

* ``child_ptr[t]``  [n_t + 1]: node j's children are CSR slots ``child_ptr[t][j]:child_ptr[t][j+1]``;
* ``child_tok[t]``  [n_{t+1}]: the token leading to each child, ascending within a node;
* ``child_key[t]``  [n_{t+1}]: ``parent * V_t + token``, strictly increasing (for ``searchsorted``).

Because children are numbered in the same lexicographic order, CSR slot ``s`` *is* level-(t+1)
node ``s``: the CSR "child node id" array would be ``arange(n_{t+1})``, so it is not stored.
``leaf_item`` [N] maps level-D nodes to item ids. Memory is O(N * D).

Worked example, codes of 4 items with ``codebook_sizes=[3, 2]``::

    item:  0       1       2       3
    code: (2, 1)  (0, 0)  (2, 0)  (0, 1)

    level 1 nodes: 0 = (0,), 1 = (2,)
    child_ptr[0] = [0, 2]          child_tok[0] = [0, 2]        child_key[0] = [0, 2]
    level 2 nodes: 0 = (0,0), 1 = (0,1), 2 = (2,0), 3 = (2,1)
    child_ptr[1] = [0, 2, 4]       child_tok[1] = [0, 1, 0, 1]  child_key[1] = [0, 1, 2, 3]
    leaf_item = [1, 3, 2, 0]

    allowed_mask([0], step=0)         -> [[True, False, True]]
    advance([0, 0], [2, 1], step=0)   -> [1, -1]        # (1,) is not a prefix of any item
    advance([1], [0], step=1)         -> [2];  item_of([2]) -> [2]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class PrefixTable:
    """Trie over the items' semantic IDs, stored as per-level CSR tensors (see the module docstring).

    Build with :meth:`from_codes`; move with :meth:`to`. All query methods take and return tensors on
    the table's device and run without host synchronisation.

    Attributes:
        codes: LongTensor [N, D], the items' codes as given (row = item id).
        codebook_sizes: ``[V_1, ..., V_D]``.
        child_ptr, child_tok, child_key: per level t < D, see the module docstring.
        leaf_item: LongTensor [N], item id of each level-D node.
        max_degree: per level t < D, the largest number of children of a level-t node (Python ints).
    """

    def __init__(
        self,
        *,
        codes: Tensor,
        codebook_sizes: Sequence[int],
        child_ptr: list[Tensor],
        child_tok: list[Tensor],
        child_key: list[Tensor],
        leaf_item: Tensor,
        max_degree: list[int],
    ) -> None:
        self.codes = codes
        self.codebook_sizes = [int(v) for v in codebook_sizes]
        self.child_ptr = child_ptr
        self.child_tok = child_tok
        self.child_key = child_key
        self.leaf_item = leaf_item
        self.max_degree = max_degree
        self._item_nodes: tuple[Tensor, list[Tensor]] | None = None  # built on first use by exhausted()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_codes(cls, codes: Tensor, codebook_sizes: Sequence[int]) -> PrefixTable:
        """Builds the table from every item's code.

        Cost: D stable sorts of N keys, O(D * N log N) time and O(N * D) memory; about a second
        for 1M items x 4 levels on a CPU core.

        Args:
            codes: integer tensor [N, D]; row i is item i's semantic ID, ``codes[i, t] in [0, V_t)``.
            codebook_sizes: ``[V_1, ..., V_D]``.

        Returns:
            The table, on ``codes``' device.

        Raises:
            ValueError: on a bad shape or dtype, an empty code table, a code out of range, or two
                items with the same full code (the message names both items).

        Example:
            >>> t = PrefixTable.from_codes(torch.tensor([[2, 1], [0, 0], [2, 0], [0, 1]]), [3, 2])
            >>> t.allowed_mask(t.root(1), 0)
            tensor([[ True, False,  True]])
        """
        codes = _validated_codes(codes, codebook_sizes)
        sizes = [int(v) for v in codebook_sizes]
        order = _lexsort_rows(codes)
        sorted_codes = codes[order]
        _check_unique(sorted_codes, order)
        node_id = _prefix_node_ids(sorted_codes)  # [N, D]: level-(t+1) node of each sorted row
        child_ptr, child_tok, child_key, max_degree = [], [], [], []
        for t, v in enumerate(sizes):
            first = _first_of_group(node_id[:, t])  # one sorted row per level-(t+1) node
            parent = node_id[first, t - 1] if t > 0 else torch.zeros_like(first)
            n_parents = int(node_id[-1, t - 1]) + 1 if t > 0 else 1
            degree = torch.bincount(parent, minlength=n_parents)
            ptr = torch.zeros(n_parents + 1, dtype=torch.long, device=codes.device)
            torch.cumsum(degree, 0, out=ptr[1:])
            tok = sorted_codes[first, t]
            child_ptr.append(ptr)
            child_tok.append(tok)
            child_key.append(parent * v + tok)
            max_degree.append(int(degree.max()))
        return cls(
            codes=codes,
            codebook_sizes=sizes,
            child_ptr=child_ptr,
            child_tok=child_tok,
            child_key=child_key,
            leaf_item=order,
            max_degree=max_degree,
        )

    def to(self, device: torch.device | str) -> PrefixTable:
        """Returns a copy of the table with every tensor on ``device``."""
        return PrefixTable(
            codes=self.codes.to(device),
            codebook_sizes=self.codebook_sizes,
            child_ptr=[p.to(device) for p in self.child_ptr],
            child_tok=[c.to(device) for c in self.child_tok],
            child_key=[k.to(device) for k in self.child_key],
            leaf_item=self.leaf_item.to(device),
            max_degree=list(self.max_degree),
        )

    # ------------------------------------------------------------------ properties

    @property
    def device(self) -> torch.device:
        return self.codes.device

    @property
    def depth(self) -> int:
        """D, the number of code levels."""
        return len(self.codebook_sizes)

    @property
    def num_items(self) -> int:
        return int(self.codes.shape[0])

    def num_nodes(self, level: int) -> int:
        """n_level: distinct prefixes of length ``level`` (1 at level 0, N at level D)."""
        self._check_level(level, self.depth + 1)
        return self.num_items if level == self.depth else int(self.child_ptr[level].shape[0]) - 1

    # ------------------------------------------------------------------ queries

    def root(self, n: int) -> Tensor:
        """LongTensor [n] of root node ids (all 0): the empty prefix, before step 0."""
        return torch.zeros(n, dtype=torch.long, device=self.device)

    def children(self, nodes: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """Each node's valid next tokens and child nodes, padded to the level's largest degree.

        Cost: O(M * max_degree[step]) memory and time, gathers only.

        Args:
            nodes: LongTensor [M] of level-``step`` node ids; -1 (dead) has no children.
            step: the level of ``nodes``, ``0 <= step < D``.

        Returns:
            ``(tokens, child_nodes)``, both LongTensor [M, max_degree[step]], ascending tokens
            first, padded with -1 on the right.

        Example (the module docstring's table):
            children([0, 1, -1], step=1) -> tokens [[0, 1], [0, 1], [-1, -1]],
                                          nodes  [[0, 1], [2, 3], [-1, -1]]
        """
        self._check_level(step, self.depth)
        ptr, tok = self.child_ptr[step], self.child_tok[step]
        live = nodes >= 0
        safe = nodes.clamp(min=0)
        start, end = ptr[safe], ptr[safe + 1]
        slot = start[:, None] + torch.arange(self.max_degree[step], device=nodes.device)
        valid = (slot < end[:, None]) & live[:, None]
        child = torch.where(valid, slot, -1)
        tokens = torch.where(valid, tok[slot.clamp(max=tok.shape[0] - 1)], -1)
        return tokens, child

    def allowed_mask(self, nodes: Tensor, step: int) -> Tensor:
        """Dense mask of the valid next tokens of each node.

        Built by scattering :meth:`children` into an [M, V_step + 1] buffer whose extra column
        soaks up the padding, so memory is O(M * (V_step + max_degree[step])), never (all nodes x V).
        Level 0 has one node, so its row is simply broadcast.

        Args:
            nodes: LongTensor [M] of level-``step`` node ids; -1 (dead) allows nothing.
            step: ``0 <= step < D``.

        Returns:
            BoolTensor [M, V_step]; ``mask[m, v]`` is True iff prefix(nodes[m]) + (v,) is a prefix of
            some item's code.
        """
        self._check_level(step, self.depth)
        v = self.codebook_sizes[step]
        if step == 0:  # a single node: broadcast its row instead of gathering M x V_0 child slots
            root = torch.zeros(v, dtype=torch.bool, device=nodes.device).index_fill_(0, self.child_tok[0], True)
            return root[None, :] & (nodes == 0)[:, None]
        tokens, _ = self.children(nodes, step)
        mask = torch.zeros(nodes.shape[0], v + 1, dtype=torch.bool, device=nodes.device)
        mask.scatter_(1, torch.where(tokens >= 0, tokens, v), True)
        return mask[:, :v]

    def advance(self, nodes: Tensor, tokens: Tensor, step: int) -> Tensor:
        """Follows one edge per node: the child reached by appending ``tokens`` to each prefix.

        Cost: O(M log n_{step+1}) by ``searchsorted`` on the strictly increasing ``child_key``.

        Args:
            nodes: LongTensor [M] of level-``step`` node ids (-1 stays -1).
            tokens: LongTensor [M] of level-``step`` codes (any value; out-of-range gives -1).
            step: ``0 <= step < D``.

        Returns:
            LongTensor [M] of level-(step+1) node ids, -1 where the extended prefix belongs to no item.
        """
        self._check_level(step, self.depth)
        key, v = self.child_key[step], self.codebook_sizes[step]
        ok = (nodes >= 0) & (tokens >= 0) & (tokens < v)
        query = torch.where(ok, nodes * v + tokens, -1)
        pos = torch.searchsorted(key, query).clamp(max=key.shape[0] - 1)
        return torch.where(ok & (key[pos] == query), pos, -1)

    def exhausted(self, rows: Tensor, items: Tensor) -> list[Tensor]:
        """The nodes that excluding items leaves empty, per level: for each level t = 1..D, the sorted unique keys
        ``row * n_t + node`` of the level-t nodes all of whose items are among the items excluded for ``row``.

        Constrained beam search with exclusions (e.g. a user's history) drops these nodes, so every beam it keeps
        still leads to an item that is not excluded (see :func:`onerec.generate.beam.beam_search`'s ``exclude``).
        Cost: O(P * D) for P (row, item) pairs plus a sort of the keys, and once per table an O(N * D) index.

        Args:
            rows: LongTensor [P], the row (user) each exclusion belongs to (>= 0).
            items: LongTensor [P], the item excluded for that row (0..N-1; duplicates are fine).

        Returns:
            D LongTensors of sorted keys; level t's entry is index t-1.

        Example (the module docstring's table): excluding items 1 and 3 for row 0 empties prefix (0,) (nodes 0
        of level 1) and leaves 0 and 1 of level 2: ``exhausted([0, 0], [1, 3]) -> [[0], [0, 1]]``.
        """
        node_of, sizes = self._node_index()
        pairs = torch.unique(torch.stack([rows.long(), items.long()]), dim=1)  # each (row, item) once
        out = []
        for t in range(self.depth):
            n = self.num_nodes(t + 1)
            node = node_of[pairs[1], t]
            keys, counts = torch.unique(pairs[0] * n + node, return_counts=True)  # sorted
            out.append(keys[counts == sizes[t][keys % n]])
        return out

    def _node_index(self) -> tuple[Tensor, list[Tensor]]:
        """([N, D] the level-(t+1) node of every item, per level the number of items below each node)."""
        if self._item_nodes is None:
            order = _lexsort_rows(self.codes)
            sorted_nodes = _prefix_node_ids(self.codes[order])
            node_of = torch.empty_like(sorted_nodes)
            node_of[order] = sorted_nodes
            sizes = [torch.bincount(node_of[:, t], minlength=self.num_nodes(t + 1)) for t in range(self.depth)]
            self._item_nodes = (node_of, sizes)
        return self._item_nodes

    def item_of(self, leaf_nodes: Tensor) -> Tensor:
        """Item ids of level-D nodes: LongTensor of ``leaf_nodes``' shape, -1 where the node is -1."""
        item = self.leaf_item[leaf_nodes.clamp(min=0)]
        return torch.where(leaf_nodes >= 0, item, -1)

    def _check_level(self, level: int, limit: int) -> None:
        if not 0 <= level < limit:
            raise ValueError(f"level/step {level} is out of range: this table has levels 0..{limit - 1}.")

    def __repr__(self) -> str:
        nodes = [self.num_nodes(t) for t in range(self.depth + 1)]
        return (
            f"PrefixTable(items={self.num_items}, codebook_sizes={self.codebook_sizes}, "
            f"nodes_per_level={nodes}, max_degree={self.max_degree}, device={self.device})"
        )


# ---------------------------------------------------------------------- build helpers


def _validated_codes(codes: Tensor, codebook_sizes: Sequence[int]) -> Tensor:
    """Checks shape, dtype and ranges; returns the codes as contiguous int64."""
    if not isinstance(codes, Tensor) or codes.dim() != 2:
        raise ValueError(f"codes must be a 2-D integer tensor [N items, D levels], got {_describe(codes)}.")
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise ValueError(f"codes must have an integer dtype, got {codes.dtype}; cast with codes.long().")
    n, d = codes.shape
    if len(codebook_sizes) != d or any(int(v) < 1 for v in codebook_sizes):
        raise ValueError(
            f"codebook_sizes must list {d} positive sizes (one per code level), got {list(codebook_sizes)}."
        )
    if n == 0:
        raise ValueError("codes is empty: a prefix table needs at least one item.")
    codes = codes.long().contiguous()
    high = torch.tensor([int(v) for v in codebook_sizes], device=codes.device)
    bad = (codes < 0) | (codes >= high)
    if bool(bad.any()):
        item, level = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"item {item} has code {codes[item].tolist()}: level {level} value {int(codes[item, level])} is "
            f"outside [0, {int(high[level])}). Fix the tokenizer output or codebook_sizes."
        )
    return codes


def _describe(x: object) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


def _lexsort_rows(codes: Tensor) -> Tensor:
    """Permutation sorting rows lexicographically: LSD radix order with D stable sorts."""
    order = torch.arange(codes.shape[0], device=codes.device)
    for t in reversed(range(codes.shape[1])):
        order = order[torch.sort(codes[order, t], stable=True).indices]
    return order


def _check_unique(sorted_codes: Tensor, order: Tensor) -> None:
    same = (sorted_codes[1:] == sorted_codes[:-1]).all(dim=1)
    if bool(same.any()):
        i = int(same.nonzero()[0])
        a, b = sorted(int(x) for x in order[i : i + 2])
        raise ValueError(
            f"items {a} and {b} share the full code {sorted_codes[i].tolist()}; every item needs a unique "
            f"semantic ID. Fix: add (or enlarge) the collision level of the tokenizer."
        )


def _prefix_node_ids(sorted_codes: Tensor) -> Tensor:
    """[N, D] level-(t+1) node id of each sorted row: a running count of new length-(t+1) prefixes.

    Row i starts a new length-(t+1) prefix iff it differs from row i-1 in some column <= t.
    E.g. sorted rows (0,0) (0,1) (2,0) (2,1) -> node ids [[0,0], [0,1], [1,2], [1,3]].
    """
    n, d = sorted_codes.shape
    new = torch.ones(n, d, dtype=torch.bool, device=sorted_codes.device)
    new[1:] = (sorted_codes[1:] != sorted_codes[:-1]).cumsum(dim=1) > 0
    return new.long().cumsum(dim=0) - 1


def _first_of_group(ids: Tensor) -> Tensor:
    """Indices of the first row of each run of equal values in a non-decreasing id column."""
    start = torch.ones_like(ids, dtype=torch.bool)
    start[1:] = ids[1:] != ids[:-1]
    return start.nonzero().squeeze(1)
