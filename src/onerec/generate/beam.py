"""Batched beam search constrained to valid semantic IDs, and a plain reference beside it.

OneRec (arXiv 2502.18965, Sec. 2.4 "inference"; Technical Report arXiv 2506.13695, Sec. 5)
generates items by beam search over semantic-ID codes, keeping only prefixes that some item
has, so every returned code maps to an item ("format reward": illegal SIDs must not be served).
The search is a pure function of a ``step_fn`` callback, in the style of t5x's ``beam_search``.

Shape legend: B = users (batch), K = ``beam_size``, D = code levels, V_t = codebook size of
level t, W_t = ``table.max_degree[t]`` (most children of one level-t prefix).

``step_fn(tokens, step, state) -> (log_probs, state)`` contract:

* ``tokens``: LongTensor [B*K, step], each beam's prefix; row ``b*K + k`` is user b's beam k.
  At step 0 it has zero columns.
* ``log_probs``: FloatTensor [B*K, V_step], log p(c_step = v | prefix) for each beam (any float
  dtype; NaN-free). Scores are accumulated in float32.
* ``state``: an opaque pytree (nested dict / list / tuple / namedtuple) whose tensor leaves all
  have leading dim B*K, e.g. a KV cache or the encoder output repeated per beam (see
  :func:`expand_to_beams`). After each step but the last the search re-ranks beams and
  re-orders every tensor leaf with ``index_select(0, parent_rows)``, so at the next call row r of
  the state belongs to the beam whose prefix is ``tokens[r]``. Non-tensor leaves pass unchanged.
  Or an object with a ``reorder_(parent_rows)`` method that re-orders itself in place (a
  preallocated KV cache, :class:`onerec.model.kv_cache.StaticKVCache`).

Dead beams: only user b's beam 0 is live at step 0 (the others start at -inf), so beams never
duplicate. When a user has fewer than K valid prefixes (or ``step_fn`` gives -inf to valid
tokens), the spare beams carry score -inf and trie node -1; they still occupy rows of
``tokens``/``state`` (with some other beam's content) but are never returned as items: output
slots without a live beam hold item -1, score -inf and codes -1.

Ties between equal scores are broken by ``torch.topk``, i.e. in an unspecified (but, on one
device and build, repeatable) order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from onerec.tokenizer.constraints import PrefixTable

StepFn = Callable[[Tensor, int, Any], tuple[Tensor, Any]]
CandidateMode = Literal["auto", "dense", "sparse"]
NEG_INF = float("-inf")


def beam_search(
    step_fn: StepFn,
    *,
    batch_size: int,
    table: PrefixTable,
    beam_size: int,
    top_k: int,
    state: Any = None,
    return_codes: bool = False,
    candidates: CandidateMode = "auto",
    exclude: Sequence[Tensor | np.ndarray | Sequence[int]] | None = None,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """Top-k valid items per user by total code log-probability, via constrained beam search.

    Each step masks tokens that lead to no item, adds the beam's log-probs to its running score,
    and keeps the best K of the (beam x token) candidates per user. Two equivalent ways to form
    the candidates (``candidates``): "dense" masks the full [B*K, V_t] log-probs with
    ``table.allowed_mask``; "sparse" gathers only each beam's valid children, [B*K, W_t], which
    is much cheaper at deep levels where a prefix has few children. "auto" takes "sparse" when
    W_t < V_t. Per step t > 0: O(B*K*V_t) (dense) or O(B*K*W_t) (sparse) plus the top-k; step 0
    expands only the single live beam per user, O(B*V_0). No Python loop over users or beams and
    no host synchronisation, so it runs the same on CUDA tensors.

    Args:
        step_fn: the model callback, see the module docstring.
        batch_size: B, users decoded together.
        table: valid-prefix trie (on the device of ``step_fn``'s outputs).
        beam_size: K >= top_k.
        top_k: items returned per user.
        state: initial ``step_fn`` state; tensor leaves have leading dim B*K.
        return_codes: also return the items' codes.
        candidates: "auto", "dense" or "sparse" (same results up to ties).
        exclude: B sequences of item ids that user must not get (e.g. their history), or None. Exact and
            cheap: at every level a prefix all of whose items are excluded for the user is masked like an
            invalid one (:meth:`PrefixTable.exhausted`), so every kept beam still leads to an allowed item and
            the search returns ``min(top_k, allowed items)`` distinct allowed items, with no wider beam. Users'
            other beams are searched as without it.

    Returns:
        ``(items, scores)`` or, with ``return_codes``, ``(items, scores, codes)``:
        items LongTensor [B, top_k] (distinct per user, -1 = no item), scores FloatTensor
        [B, top_k] (float32, descending, -inf with item -1), codes LongTensor [B, top_k, D]
        (-1 rows with item -1).

    Raises:
        ValueError: on bad sizes, ``beam_size < top_k``, or ``step_fn`` outputs of the wrong shape.

    Example (one user, 3 items, beam 2; numbers are rounded log-probs)::

        codes: item 0 = (0, 1), item 1 = (1, 0), item 2 = (1, 1);  V = [2, 2]
        step 0: beam scores [0, -inf]; log_probs(()) = [-0.51, -0.92]
                candidates [[-0.51, -0.92], [-inf, -inf]] -> beams (0,) -0.51, (1,) -0.92
        step 1: log_probs((0,)) = [-0.11, -2.30], but (0, 0) is no item -> [-inf, -2.81]
                log_probs((1,)) = [-0.36, -1.20]                         -> [-1.28, -2.12]
                top 2 of [-inf, -2.81, -1.28, -2.12] -> (1, 0), (1, 1)
        beam_search(..., beam_size=2, top_k=2) -> items [[1, 2]], scores [[-1.28, -2.12]]

    The unconstrained best code (0, 0) (-0.62) is never returned; item 0 (-2.81) fell off the beam.
    """
    _check_sizes(batch_size, beam_size, top_k, table, candidates)
    b, k, dev = batch_size, beam_size, table.device
    banned = None if exclude is None else _exhausted_keys(table, exclude, b)
    scores = torch.full((b, k), NEG_INF, device=dev)
    scores[:, 0] = 0.0  # one live beam per user, so no two beams share a prefix
    nodes = torch.where(torch.arange(b * k, device=dev) % k == 0, 0, -1)
    tokens = torch.zeros(b * k, 0, dtype=torch.long, device=dev)
    for step in range(table.depth):
        log_probs, state = step_fn(tokens, step, state)
        _check_log_probs(log_probs, b * k, table.codebook_sizes[step], step)
        sparse = candidates == "sparse" or (
            candidates == "auto" and table.max_degree[step] < table.codebook_sizes[step]
        )
        # At step 0 only beam 0 of each user is live: expanding the K-1 dead copies would cost K times more.
        live = 1 if step == 0 else k
        expand = _expand_sparse if sparse else _expand_dense
        scores, rows, new_tokens, nodes = expand(table, step, log_probs, scores, nodes, live,
                                                 None if banned is None else banned[step])
        tokens = torch.cat([tokens[rows], new_tokens[:, None]], dim=1)
        if step + 1 < table.depth:
            state = reorder_state(state, rows, b * k)
    return _gather_outputs(table, scores, nodes, tokens, top_k, return_codes)


def _exhausted_keys(table: PrefixTable, exclude: Sequence, b: int) -> list[Tensor]:
    """``beam_search``'s ``exclude`` (B sequences of item ids) -> per level the keys ``user * n_{t+1} + node`` of
    the nodes left without an allowed item (:meth:`PrefixTable.exhausted`)."""
    if len(exclude) != b:
        raise ValueError(f"exclude has {len(exclude)} rows; expected one per user (batch_size={b}).")
    parts = [np.asarray(e, dtype=np.int64).reshape(-1) for e in exclude]
    items = torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64))
    if len(items) and (int(items.min()) < 0 or int(items.max()) >= table.num_items):
        raise ValueError(f"exclude holds item ids outside 0..{table.num_items - 1}.")
    rows = torch.repeat_interleave(torch.arange(b), torch.tensor([len(x) for x in parts], dtype=torch.long))
    return table.exhausted(rows.to(table.device), items.to(table.device))


def _banned_children(table: PrefixTable, step: int, child: Tensor, live: int, banned: Tensor) -> Tensor:
    """bool, ``child``'s shape [B*live, W]: the child nodes (level step+1) left without an allowed item for the
    user of their row."""
    n = table.num_nodes(step + 1)
    user = torch.div(torch.arange(child.shape[0], device=child.device), live, rounding_mode="floor")
    return (child >= 0) & torch.isin(user[:, None] * n + child, banned)


def _expand_dense(
    table: PrefixTable, step: int, log_probs: Tensor, scores: Tensor, nodes: Tensor, live: int,
    banned: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step over all V_t tokens of the first ``live`` beams of each user.

    Args:
        log_probs: [B*K, V_t]; scores: [B, K] running totals; nodes: [B*K] trie nodes; banned: sorted keys of
            the level-(t+1) nodes excluded per user (:func:`_exhausted_keys`), or None.

    Returns:
        New scores [B, K] (descending), parent rows [B*K], new tokens [B*K], new nodes [B*K].
    """
    b, k = scores.shape
    v = table.codebook_sizes[step]
    lp = log_probs.reshape(b, k, v)[:, :live].reshape(b * live, v)
    live_nodes = nodes.reshape(b, k)[:, :live].reshape(-1)
    allowed = table.allowed_mask(live_nodes, step)  # [B*live, V]
    if banned is not None:  # children left without an allowed item are masked like invalid ones
        child_tok, child_node = table.children(live_nodes, step)
        bad = _banned_children(table, step, child_node, live, banned)
        ban = torch.zeros(allowed.shape[0], v + 1, dtype=torch.bool, device=allowed.device)
        ban.scatter_(1, torch.where(bad, child_tok, v), True)
        allowed = allowed & ~ban[:, :v]
    cand = torch.where(allowed, lp.float(), NEG_INF) + scores[:, :live].reshape(-1, 1)
    top, flat = _top_k_padded(cand.reshape(b, live * v), k)  # over (beam, token) pairs
    rows = _flat_rows(flat // v, k)
    tok = (flat % v).reshape(-1)
    child = table.advance(nodes[rows], tok, step)
    return top, rows, tok, torch.where(top.reshape(-1) > NEG_INF, child, -1)


def _expand_sparse(
    table: PrefixTable, step: int, log_probs: Tensor, scores: Tensor, nodes: Tensor, live: int,
    banned: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Like :func:`_expand_dense`, over each beam's W_t valid children only (same outputs)."""
    b, k = scores.shape
    v = table.codebook_sizes[step]
    lp = log_probs.reshape(b, k, v)[:, :live].reshape(b * live, v)
    child_tok, child_node = table.children(nodes.reshape(b, k)[:, :live].reshape(-1), step)  # [B*live, W]
    w = child_tok.shape[1]
    lp = lp.gather(1, child_tok.clamp(min=0)).float()
    valid = child_tok >= 0
    if banned is not None:  # children left without an allowed item are masked like invalid ones
        valid = valid & ~_banned_children(table, step, child_node, live, banned)
    cand = torch.where(valid, lp, NEG_INF) + scores[:, :live].reshape(-1, 1)
    top, flat = _top_k_padded(cand.reshape(b, live * w), k)  # over (beam, child slot) pairs
    beam, slot = flat // w, (flat % w).reshape(-1)
    cand_rows = _flat_rows(beam, live)
    tok, child = child_tok[cand_rows, slot], child_node[cand_rows, slot]
    dead = top.reshape(-1) == NEG_INF
    return top, _flat_rows(beam, k), tok.clamp(min=0), torch.where(dead, -1, child)


def _top_k_padded(cand: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``cand.topk(k, dim=1)`` that also works with fewer than k columns (step 0 with V_0 < K).

    Missing places get score -inf and index 0, i.e. a dead copy of candidate 0.
    E.g. cand [[-1.0, -0.5]], k=3 -> top [[-0.5, -1.0, -inf]], index [[1, 0, 0]].
    """
    n = cand.shape[1]
    if n >= k:
        return cand.topk(k, dim=1)
    top, flat = cand.topk(n, dim=1)
    pad = k - n
    top = torch.cat([top, top.new_full((cand.shape[0], pad), NEG_INF)], dim=1)
    return top, torch.cat([flat, flat.new_zeros(cand.shape[0], pad)], dim=1)


def _flat_rows(beam: Tensor, stride: int) -> Tensor:
    """[B, K] beam index within each user -> [B*K] flat row ``b * stride + beam``.

    E.g. stride 2: [[1, 0], [0, 0]] -> [1, 0, 2, 2].
    """
    offset = torch.arange(beam.shape[0], device=beam.device)[:, None] * stride
    return (beam + offset).reshape(-1)


def _gather_outputs(
    table: PrefixTable, scores: Tensor, nodes: Tensor, tokens: Tensor, top_k: int, return_codes: bool
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """Takes the first top_k beams (topk already sorted them) and blanks dead ones."""
    b, k = scores.shape
    top = scores[:, :top_k]
    # A beam is dead if its score is -inf even when it sits on a valid node (step_fn gave -inf).
    items = torch.where(top > NEG_INF, table.item_of(nodes).reshape(b, k)[:, :top_k], -1)
    top = torch.where(items >= 0, top, NEG_INF)
    if not return_codes:
        return items, top
    codes = tokens.reshape(b, k, -1)[:, :top_k]
    return items, top, torch.where(items[..., None] >= 0, codes, -1)


# ---------------------------------------------------------------------- state pytrees


def map_state(fn: Callable[[Tensor, str], Tensor], state: Any, path: str = "state") -> Any:
    """Applies ``fn(tensor, path)`` to every tensor leaf of a nested dict / list / tuple / namedtuple.

    Non-tensor leaves (None, ints, strings, ...) are returned as they are. Mappings come back as
    plain dicts.
    """
    if isinstance(state, Tensor):
        return fn(state, path)
    if isinstance(state, Mapping):
        return {key: map_state(fn, value, f"{path}[{key!r}]") for key, value in state.items()}
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return type(state)(*(map_state(fn, v, f"{path}.{f}") for f, v in zip(state._fields, state)))
    if isinstance(state, (list, tuple)):
        return type(state)(map_state(fn, v, f"{path}[{i}]") for i, v in enumerate(state))
    return state


def reorder_state(state: Any, rows: Tensor, num_rows: int) -> Any:
    """``index_select(0, rows)`` on every tensor leaf; each must have leading dim ``num_rows`` (B*K).

    A state object with a ``reorder_(rows)`` method (e.g. :class:`onerec.model.kv_cache.StaticKVCache`, a
    preallocated KV cache) re-orders its own rows in place instead, and is returned as it is."""
    if hasattr(state, "reorder_") and not isinstance(state, Tensor):
        state.reorder_(rows)
        return state

    def pick(x: Tensor, path: str) -> Tensor:
        if x.dim() == 0 or x.shape[0] != num_rows:
            raise ValueError(
                f"{path} has shape {tuple(x.shape)}, but every tensor in the beam-search state needs leading "
                f"dim batch_size * beam_size = {num_rows}. Fix: expand it with expand_to_beams()."
            )
        return x.index_select(0, rows.to(x.device))

    return map_state(pick, state)


def expand_to_beams(state: Any, beam_size: int) -> Any:
    """Repeats each tensor leaf's rows ``beam_size`` times: [B, ...] -> [B*K, ...], user-major.

    Example: ``expand_to_beams(torch.tensor([7, 8]), 3) -> tensor([7, 7, 7, 8, 8, 8])``, the row
    layout ``beam_search`` uses (row ``b*K + k`` is user b's beam k).
    """
    return map_state(lambda x, _: x.repeat_interleave(beam_size, dim=0), state)


# ---------------------------------------------------------------------- checks


def _check_sizes(batch_size: int, beam_size: int, top_k: int, table: PrefixTable, candidates: str) -> None:
    if batch_size < 1 or top_k < 1:
        raise ValueError(f"batch_size and top_k must be >= 1, got batch_size={batch_size}, top_k={top_k}.")
    if beam_size < top_k:
        raise ValueError(
            f"beam_size ({beam_size}) must be >= top_k ({top_k}): the search returns its final beams. "
            f"Fix: raise beam_size or lower top_k."
        )
    if candidates not in ("auto", "dense", "sparse"):
        raise ValueError(f"candidates must be 'auto', 'dense' or 'sparse', got {candidates!r}.")
    if not isinstance(table, PrefixTable):
        raise ValueError(f"table must be a PrefixTable, got {type(table).__name__}.")


def _check_log_probs(log_probs: Tensor, rows: int, v: int, step: int) -> None:
    if not isinstance(log_probs, Tensor) or tuple(log_probs.shape) != (rows, v):
        got = tuple(log_probs.shape) if isinstance(log_probs, Tensor) else type(log_probs).__name__
        raise ValueError(
            f"step_fn returned log_probs of shape {got} at step {step}; expected (batch_size * beam_size, "
            f"codebook_sizes[{step}]) = ({rows}, {v})."
        )


# ---------------------------------------------------------------------- reference


def beam_search_reference(
    step_fn: StepFn,
    *,
    batch_size: int,
    table: PrefixTable,
    beam_size: int,
    top_k: int,
    state: Any = None,
    return_codes: bool = False,
    exclude: Sequence[Tensor | np.ndarray | Sequence[int]] | None = None,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """Slow, obviously correct twin of :func:`beam_search` (same arguments and outputs).

    Keeps each user's live beams as Python lists of ``(prefix tuple, float32 score, parent row)``,
    checks validity with a dict-of-sets trie built from ``table.codes`` (with ``exclude``: each user's own
    trie of the items not excluded), and sorts candidates in Python. Scores are float32 sums in the same
    order as the fast path, so both agree exactly except where scores tie. Only for tests and small benchmarks.
    """
    _check_sizes(batch_size, beam_size, top_k, table, "auto")
    b, k, depth = batch_size, beam_size, table.depth
    codes = [tuple(c) for c in table.codes.tolist()]
    children = _python_trie(codes)
    if exclude is None:
        tries = [children] * b
    else:
        banned = [{int(i) for i in np.asarray(e, dtype=np.int64).reshape(-1)} for e in exclude]
        tries = [_python_trie([c for i, c in enumerate(codes) if i not in banned[u]]) for u in range(b)]
    item_of = {c: i for i, c in enumerate(codes)}
    beams: list[list[tuple[tuple[int, ...], np.float32, int]]] = [[((), np.float32(0.0), u * k)] for u in range(b)]
    for step in range(depth):
        rows, prefixes = _reference_rows(beams, k, step)
        if step > 0:  # at step 0 the caller's state rows are used as given
            state = reorder_state(state, torch.tensor(rows, device=table.device), b * k)
        tokens = torch.tensor(prefixes, dtype=torch.long, device=table.device).reshape(b * k, step)
        log_probs, state = step_fn(tokens, step, state)
        _check_log_probs(log_probs, b * k, table.codebook_sizes[step], step)
        lp = log_probs.detach().float().cpu().numpy()
        beams = [_reference_select(user_beams, u, k, tries[u], lp) for u, user_beams in enumerate(beams)]
    return _reference_outputs(beams, item_of, top_k, depth, table.device, return_codes)


def _python_trie(codes: list[tuple[int, ...]]) -> dict[tuple[int, ...], set[int]]:
    """Maps every prefix of every code to the set of tokens that may follow it."""
    children: dict[tuple[int, ...], set[int]] = {}
    for code in codes:
        for t in range(len(code)):
            children.setdefault(code[:t], set()).add(code[t])
    return children


def _reference_rows(beams: list[list[tuple]], k: int, step: int) -> tuple[list[int], list[tuple[int, ...]]]:
    """Per step_fn row: the state row to copy and the prefix. Spare slots copy the user's best beam."""
    rows, prefixes = [], []
    for u, user_beams in enumerate(beams):
        for slot in range(k):
            if slot < len(user_beams):
                prefix, _, row = user_beams[slot]
            elif user_beams:
                prefix, _, row = user_beams[0]
            else:  # every path of this user died: any rows will do
                prefix, row = (0,) * step, u * k
            rows.append(row if step > 0 else u * k + slot)
            prefixes.append(prefix)
    return rows, prefixes


def _reference_select(
    user_beams: list[tuple], u: int, k: int, children: dict[tuple[int, ...], set[int]], lp: np.ndarray
) -> list[tuple[tuple[int, ...], np.float32, int]]:
    """Extends each live beam of user u by every valid token and keeps the best k (finite) candidates."""
    cands = []
    for slot, (prefix, score, _) in enumerate(user_beams):
        row = u * k + slot
        for token in sorted(children.get(prefix, ())):
            total = np.float32(score + lp[row, token])
            if total > -np.inf:
                cands.append(((*prefix, token), total, row))
    cands.sort(key=lambda c: -c[1])
    return cands[:k]


def _reference_outputs(
    beams: list[list[tuple]],
    item_of: dict[tuple[int, ...], int],
    top_k: int,
    depth: int,
    device: torch.device,
    return_codes: bool,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    b = len(beams)
    items = torch.full((b, top_k), -1, dtype=torch.long)
    scores = torch.full((b, top_k), NEG_INF)
    codes = torch.full((b, top_k, depth), -1, dtype=torch.long)
    for u, user_beams in enumerate(beams):
        for r, (prefix, score, _) in enumerate(user_beams[:top_k]):
            items[u, r], scores[u, r] = item_of[prefix], float(score)
            codes[u, r] = torch.tensor(prefix)
    out = (items.to(device), scores.to(device))
    return (*out, codes.to(device)) if return_codes else out
