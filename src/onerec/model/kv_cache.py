"""A preallocated, statically shaped self-attention KV cache for beam-search decoding.

The plain cache (:meth:`DecoderBlock.step` with ``cache=(k, v)``) grows by ``torch.cat`` every step, and beam
search re-orders it with ``index_select``: each step allocates and copies the whole cache of every layer twice.
Here every layer's keys and values of every position live in one buffer allocated once per search, written in
place, and re-ordered into a second buffer of the same shape (the two swap roles), so a step allocates nothing
for the cache and the re-order is one copy of the positions filled so far.

Shapes: T = positions (semantic-ID levels), M = rows (users x beams), L = decoder layers, H = heads (lazy
decoder: its self-attention's heads), dk = head dim. The buffer is row-major, ``[M, L, 2, H, T, dk]``: a layer's
keys are the view ``buf[:, layer, 0, :, :t]`` -> ``[M, H, t, dk]``, each (row, head)'s keys one contiguous run of
memory as attention likes them, and the re-order copies whole rows (one contiguous block of L x 2 x H x T x dk
values each, the positions not yet written included: at most T / t times what is needed, cheap next to the
scattered copy a time-major layout needs; measured, ``benchmarks/decode_step.py``).

Example (one user, 2 beams, 1 layer, 1 head, dk 1): after step 0 both beams hold key ``[a]``; step 1 writes
``b0`` and ``b1`` -> keys ``[[a, b0], [a, b1]]``; the search keeps beam 1 twice (rows ``[1, 1]``):
``reorder_(rows)`` -> ``[[a, b1], [a, b1]]``, and step 2 writes position 2 in place.
"""

from __future__ import annotations

import torch
from torch import Tensor


class StaticKVCache:
    """Self-attention keys and values of ``layers`` decoder layers for up to ``length`` positions of ``rows`` beams.

    Use: :meth:`fill_first` with the first position's per-user (k, v) (each [U, H, 1, dk]; every beam of a user
    starts from the same [BOS]), then at each later step each layer (through its :meth:`slot`) calls :meth:`write`
    with its new token's (k, v) and reads back the whole sequence, and :meth:`advance` moves to the next position
    once all layers have written; between steps beam search calls :meth:`reorder_` (see
    :func:`onerec.generate.beam.reorder_state`). The buffers are allocated at :meth:`fill_first`, with the dtype and
    device of the keys.
    """

    def __init__(self, layers: int, rows: int, length: int) -> None:
        self.layers, self.rows, self.length = layers, rows, length
        self.t = 0  # positions filled
        self.group = 1  # beams per user at fill_first: until position 1 is written, a user's rows are all equal
        self.buf: Tensor | None = None
        self.spare: Tensor | None = None

    def slot(self, layer: int) -> CacheSlot:
        """What ``layer``'s step gets as its cache. Made on each call, not kept: slots kept on the cache would make
        a reference cycle (cache -> slot -> cache), and the buffers of every finished search would then wait for
        Python's cyclic garbage collector (on Amazon Beauty's valid split: +160 MB a batch, 13 GB at the peak)."""
        return CacheSlot(self, layer)

    def fill_first(self, kv: list[tuple[Tensor, Tensor]], group: int) -> None:
        """Position 0 of every layer from per-user (k, v) [U, H, 1, dk], each row repeated for its ``group`` beams
        (row ``u * group + g``)."""
        k0 = kv[0][0]
        u, h, _, dk = k0.shape
        if u * group != self.rows:
            raise ValueError(f"{u} users x {group} beams != the cache's {self.rows} rows")
        shape = (self.rows, self.layers, 2, h, self.length, dk)
        self.buf = torch.empty(shape, dtype=k0.dtype, device=k0.device)
        self.spare = torch.empty(shape, dtype=k0.dtype, device=k0.device)
        first = self.buf.view(u, group, self.layers, 2, h, self.length, dk)[..., 0, :]  # [U, G, L, 2, H, dk]
        for i, (k, v) in enumerate(kv):
            first[:, :, i, 0] = k[:, None, :, 0]  # [U, 1, H, dk] broadcast over the group
            first[:, :, i, 1] = v[:, None, :, 0]
        self.t = 1
        self.group = group

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``layer``'s keys and values of the current position (each [M, H, 1, dk]) -> that layer's keys and
        values of every position so far, each a [M, H, t+1, dk] view of the buffer."""
        if self.buf is None or self.t >= self.length:
            raise RuntimeError(f"StaticKVCache: position {self.t} of {self.length} (fill_first first)")
        t = self.t
        self.buf[:, layer, 0, :, t] = k[:, :, 0]
        self.buf[:, layer, 1, :, t] = v[:, :, 0]
        return self.buf[:, layer, 0, :, :t + 1], self.buf[:, layer, 1, :, :t + 1]

    def advance(self) -> None:
        """Every layer has written the current position: the next step writes the next one."""
        self.t += 1

    def reorder_(self, rows: Tensor) -> None:
        """Row r of the cache becomes what row ``rows[r]`` held (beam search's parent rows): one copy of the
        rows into the spare buffer, which then becomes the buffer. Right after :meth:`fill_first` every row of a
        user holds the same [BOS] keys, so a re-order that keeps each row within its user (as beam search's do)
        changes nothing and is skipped (checked, not assumed)."""
        if self.buf is None:
            return
        rows = rows.to(self.buf.device)
        if self.t == 1 and self.group > 1:
            users = torch.arange(self.rows, device=rows.device) // self.group
            if torch.equal(rows // self.group, users):
                return
        torch.index_select(self.buf, 0, rows, out=self.spare)
        self.buf, self.spare = self.spare, self.buf

    def layer_kv(self, layer: int) -> tuple[Tensor, Tensor]:
        """``layer``'s keys and values of the positions filled so far, each [M, H, t, dk] (views): the same
        tensors the plain cache holds (for tests)."""
        return self.buf[:, layer, 0, :, :self.t], self.buf[:, layer, 1, :, :self.t]


class CacheSlot:
    """One layer's handle on a :class:`StaticKVCache`, passed to a block's ``step`` as its ``cache``."""

    __slots__ = ("cache", "layer")

    def __init__(self, cache: StaticKVCache, layer: int) -> None:
        self.cache, self.layer = cache, layer


def extend_cache(cache: tuple[Tensor, Tensor] | CacheSlot | None, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """A decoder layer's self-attention keys and values of every position, from the new token's (k, v) (each
    [M, H, 1, dk]) and its ``cache``: None (the first position), the plain cache (k, v) of the earlier positions
    (concatenated: the reference), or a :class:`CacheSlot` (written in place into the preallocated buffer)."""
    if cache is None:
        return k, v
    if isinstance(cache, CacheSlot):
        return cache.cache.write(cache.layer, k, v)
    return torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
