"""Shared transformer primitives: every model in onerec imports these, none copies them.

Shapes: B = batch, T = query length, S = key/value length, D = d_model, H = heads.
Blocks are pre-norm with RMSNorm, as in the OneRec Technical Report's encoder ("pre-RMSNorm").

Fast paths for CPU training, each beside the plain reference it replaces (``fast = False`` on a module, or
:func:`use_reference` on a whole model, selects the reference; ``tests/model/test_layers.py`` checks that the
two agree):

* :class:`Dropout` draws its keep mask from 16 random bits per element (:func:`dropout_mask`), ~5x cheaper on
  CPU than torch's ``bernoulli_`` (the reference: ``nn.Dropout``);
* :func:`attention` with attention-weight dropout computes softmax(q k^T / sqrt(dk)) with that mask itself:
  ``F.scaled_dot_product_attention`` with ``dropout_p > 0`` falls back on CPU to its unfused math path, which
  also draws ``bernoulli_`` masks and checks for fully masked rows (the reference: SDPA itself);
* :class:`Attention` projects a self-attention's queries, keys and values in one matrix product (the
  reference: one for the queries, one for the keys and values);
* :class:`RMSNorm` in training runs a hand-written backward (the reference: autograd through the formula), and
  without gradients torch's fused ``F.rms_norm`` off CPU (``RMSNorm.fused_inference``; the reference: the
  formula's five ops);
* :meth:`Packing.unpack` writes each position once (``Packing.fast``, a class-wide switch).

Benchmark: ``python benchmarks/model_throughput.py --step-floor RUN`` (docs/benchmarks/model.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onerec.model.kv_cache import CacheSlot, extend_cache


def dropout_mask(shape: tuple[int, ...] | torch.Size, p: float, device: torch.device | str = "cpu") -> Tensor:
    """A scaled keep mask: float32 ``shape``, each element independently 0 (dropped) with probability
    q = round(p * 65536) / 65536, else 1 / (1 - q), so ``x * mask`` has expectation x exactly; q differs
    from p by under 8e-6. Each element reads 16 bits of ``random_`` 64-bit draws (full range), a quarter
    of a generator call where ``bernoulli_`` makes one (or more) per element."""
    n = math.prod(shape)
    drop = round(p * 65536)
    if not 0 < drop < 65536:
        raise ValueError(f"dropout_mask: p={p} must round to a drop probability strictly inside (0, 1)")
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    r = bits.view(torch.int16)[:n].view(shape).float()  # uniform integers -32768 .. 32767
    # dropped: r < drop - 32768 (``drop`` of the 65536 values); kept -> 1 after the clamp, dropped -> 0
    return r.sub_(drop - 32769).clamp_(0, 1).mul_(65536 / (65536 - drop))


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose training mask comes from :func:`dropout_mask` on CPU (same expectation, drop
    probability within 8e-6 of ``p``). ``fast = False`` (or another device, or ``inplace``) is
    ``nn.Dropout`` itself, the reference."""

    fast = True

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if self.fast and not self.inplace and x.device.type == "cpu" and 0 < round(self.p * 65536) < 65536:
            return x * dropout_mask(x.shape, self.p, x.device)
        return super().forward(x)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, dropout_p: float = 0.0,
              causal: bool = False, fast: bool = True) -> Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)``:
    q [..., T, dk], k and v [..., S, dk]; ``mask`` bool (True = may attend) or float (added to the scores),
    broadcastable to [..., T, S]. Without dropout that call is the answer (on CPU its fused kernel). With
    dropout on CPU and ``fast``, the same function with the keep mask of :func:`dropout_mask` on the
    attention weights, computed here: softmax(q k^T / sqrt(dk) + mask) * keep @ v, a query whose keys are
    all masked getting zeros as in SDPA's math path; SDPA would fall back to that math path and draw its
    masks with ``bernoulli_``."""
    if not (fast and dropout_p > 0 and q.device.type == "cpu" and 0 < round(dropout_p * 65536) < 65536):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)
    t, s = q.shape[-2], k.shape[-2]
    if causal:
        if mask is not None:
            raise ValueError("attention: pass either a mask or causal=True")
        mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
    dead = None
    if mask is not None:
        hidden = ~mask if mask.dtype == torch.bool else torch.isneginf(mask)
        dead = hidden.all(-1, keepdim=True)  # queries that may attend to nothing: zeros (SDPA's safe softmax)
        dead = dead if bool(dead.any()) else None
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(hidden, float("-inf"))
        if dead is not None:
            mask = mask.masked_fill(dead, 0.0)
    # scaling q costs nothing extra: matmul copies the permuted q into contiguous memory anyway
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))
    if mask is not None:
        scores = scores.add_(mask)  # in place: matmul's backward does not read its output
    weights = torch.softmax(scores, dim=-1)
    out = torch.matmul(weights * dropout_mask(weights.shape, dropout_p, q.device), v)
    return out if dead is None else out.masked_fill(dead, 0.0)


def single_query_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Attention of one query per row over every key, no mask, no dropout: q [..., 1, dk], k and v [..., S, dk]
    -> [..., dk]. The same as ``F.scaled_dot_product_attention(q, k, v)[..., 0, :]`` (the reference), by
    elementwise products and sums: a decode step's self-attention has one query and only a few keys (one per
    semantic-ID level so far), where SDPA's kernel costs ~2x these few small ops on CPU (issue 43), and
    ``torch.compile`` fuses them into one loop. Used on CPU only: on a GPU SDPA's one kernel is unmeasured
    against them."""
    w = ((q * q.shape[-1] ** -0.5) * k).sum(-1, keepdim=True).softmax(dim=-2)  # [..., S, 1]
    return (w * v).sum(-2)


class _RMSNormFn(torch.autograd.Function):
    """RMSNorm with its backward written out: saves x and the [..., 1] reciprocal rms instead of autograd's
    four full-size intermediates, and takes the rms from one reduction (``vector_norm``) instead of a
    squared copy of x. Equal to the reference up to rounding (``tests/model/test_layers.py``)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        ms = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1])
        rstd = ms.add_(eps).rsqrt_()
        ctx.save_for_backward(x, weight, rstd)
        return (x * rstd).mul_(weight)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        x, weight, rstd = ctx.saved_tensors
        xhat = x * rstd
        gxhat = (grad * xhat).reshape(-1, x.shape[-1])
        grad_weight = gxhat.sum(0)
        dot = (gxhat @ (weight / x.shape[-1])).view(rstd.shape)  # mean over the last dim of g * xhat
        gx = grad * weight
        # d/dx of xhat = x * rstd: rstd * (g - xhat * mean(g * xhat)), g = grad * weight
        return torch.addcmul(gx, xhat, dot, value=-1).mul_(rstd), grad_weight, None


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (Zhang & Sennrich 2019): x / rms(x) * weight. ``fast`` (the default):
    in training (fp32, gradients wanted, no autocast) through :class:`_RMSNormFn`, ~2x cheaper forward +
    backward on CPU, and without gradients (inference, decoding; no autocast) torch's fused ``F.rms_norm`` (one
    op instead of five) where :attr:`fused_inference` says; ``fast = False`` is the plain formula (the
    reference)."""

    fast = True
    #: without gradients, torch's ``F.rms_norm``: True, False, or None = off CPU only (on CPU, torch 2.13's
    #: ``rms_norm`` is a composite of small ops, and the decode step measured no faster with it than with the
    #: formula; ``benchmarks/decode_step.py``)
    fused_inference: bool | None = None

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if (self.fast and torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
                and x.dtype == self.weight.dtype == torch.float32 and not torch.is_autocast_enabled(x.device.type)):
            return _RMSNormFn.apply(x, self.weight, self.eps)
        # not on the CPU (measured slower there) nor on the meta device (FLOP counting), which autocast does not know
        fused = x.device.type not in ("cpu", "meta") if self.fused_inference is None else self.fused_inference
        if (fused and self.fast and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
                and not torch.is_autocast_enabled(x.device.type)):  # under autocast: the formula's dtypes, as before
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def ffn_hidden(d_model: int, mult: float, multiple_of: int = 32) -> int:
    """SwiGLU hidden width: (2/3) * mult * d rounded up to ``multiple_of`` (the Technical Report
    rounds (2/3)*4*d to 128; small models use 32 so tiny presets stay tiny)."""
    h = int(2 * mult * d_model / 3)
    return multiple_of * math.ceil(h / multiple_of)


class SwiGLU(nn.Module):
    """Gated feed-forward (Shazeer 2020): W2(silu(W1 x) * W3 x). The Technical Report's experts use it.
    (W1 x and W3 x as one product of the stacked weights was measured slower on CPU: the backward has to
    concatenate the two halves' gradients.)"""

    def __init__(self, d_model: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, hidden, bias=False)
        self.w3 = nn.Linear(d_model, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d_model, bias=False)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Packing:
    """The real tokens of a padded batch, packed into one [N, D] tensor (N = real tokens).

    Position-wise layers (projections, norms, feed-forwards: ~97% of an encoder layer's FLOPs at
    d_model 128 and 20 tokens) then run on the N real tokens only, not on B * S padded positions;
    only the attention itself goes back to the padded [B, S] layout. Amazon Beauty's histories fill
    6.7 of their 20 slots on average, so two thirds of the padded encoder's work is on padding.

    Args:
        keep: bool [B, S], True = a token to compute (padding positions are False).
    """

    fast = True

    def __init__(self, keep: Tensor) -> None:
        self.shape = keep.shape
        self.index = keep.reshape(-1).nonzero().squeeze(1)
        self.pad = keep.reshape(-1).logical_not().nonzero().squeeze(1)  # the positions not kept

    def pack(self, x: Tensor) -> Tensor:
        """[B, S, ...] -> [N, ...]."""
        return x.reshape(-1, *x.shape[2:]).index_select(0, self.index)

    def unpack(self, y: Tensor) -> Tensor:
        """[N, ...] -> [B, S, ...], zeros at the positions not kept. ``Packing.fast`` (a class switch, the
        default): each position is written once, zeros at the padding, then y in place; else the
        reference, an out-of-place ``index_copy`` into zeros (which writes every position three times)."""
        if not Packing.fast:
            out = y.new_zeros(self.shape[0] * self.shape[1], *y.shape[1:])
            return out.index_copy(0, self.index, y).view(*self.shape, *y.shape[1:])
        out = y.new_empty(self.shape[0] * self.shape[1], *y.shape[1:]).index_fill_(0, self.pad, 0)
        return out.index_copy_(0, self.index, y).view(*self.shape, *y.shape[1:])


class Attention(nn.Module):
    """Multi-head attention over ``F.scaled_dot_product_attention`` (self- or cross-).

    ``forward`` takes ``x``: queries [B, T, D]; ``kv``: keys/values source [B, S, D] (defaults to x);
    ``mask``: bool [B, 1 or T, S] or [B, 1, 1, S]-broadcastable, True = may attend; ``causal``: apply a
    causal mask (self-attention only, T == S).

    ``fast`` (the default): a self-attention projects queries, keys and values in one matrix product,
    attention-weight dropout in training goes through :func:`attention`'s own path, and :meth:`attend` with one
    query and no mask in eval on CPU (a decode step's self-attention) through :func:`single_query_attention`;
    ``fast = False`` is the reference (separate projections, ``F.scaled_dot_product_attention`` throughout).
    """

    fast = True

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.h, self.dk = n_heads, d_model // n_heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.o = nn.Linear(d_model, d_model, bias=False)
        self.dropout = dropout

    def forward(self, x: Tensor, kv: Tensor | None = None, *, mask: Tensor | None = None,
                causal: bool = False) -> Tensor:
        b, t, _ = x.shape
        if kv is None and self.fast:
            return self.o(self._heads(*self._split_qkv(F.linear(x, self._qkv_weight())), mask, causal))
        q = self.q(x).view(b, t, self.h, self.dk).transpose(1, 2)
        return self.o(self._heads(q, *self.project_kv(x if kv is None else kv), mask, causal))

    def _qkv_weight(self) -> Tensor:
        """The query and key/value projections stacked: [3D, D], output columns (q | k | v)."""
        return torch.cat([self.q.weight, self.kv.weight])

    def _split_qkv(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[B, S, 3D] projected queries, keys and values -> (q, k, v), each [B, H, S, dk]."""
        b, s, _ = qkv.shape
        q, k, v = qkv.view(b, s, 3, self.h, self.dk).permute(2, 0, 3, 1, 4)
        return q, k, v

    def _heads(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool = False) -> Tensor:
        """Attention of q [B, H, T, dk] over k, v [B, H, S, dk] -> heads joined [B, T, D] (before ``o``)."""
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)  # [B, 1, T|1, S]
        out = attention(q, k, v, mask, self.dropout if self.training else 0.0, causal and mask is None, self.fast)
        b, _, t, _ = q.shape
        return out.transpose(1, 2).reshape(b, t, self.h * self.dk)

    def forward_packed(self, h: Tensor, packing: Packing, mask: Tensor) -> Tensor:
        """Self-attention over packed tokens h [N, D] (see :class:`Packing`): projections on the N
        tokens, the attention in the padded layout. Equals :meth:`forward` at the kept positions when
        ``mask`` [B, 1|S, S] hides every position not kept from every kept query."""
        b, s = packing.shape
        if self.fast:
            return self.o(packing.pack(self._heads(*self._split_qkv(packing.unpack(F.linear(h, self._qkv_weight()))),
                                                   mask)))
        q = packing.unpack(self.q(h)).view(b, s, self.h, self.dk).transpose(1, 2)
        k, v = self._split_kv(packing.unpack(self.kv(h)))
        return self.o(packing.pack(self._heads(q, k, v, mask)))

    def _split_kv(self, kv: Tensor) -> tuple[Tensor, Tensor]:
        """[B, S, 2D] projected keys and values -> (k, v), each [B, H, S, dk]."""
        b, s, _ = kv.shape
        k, v = kv.view(b, s, 2, self.h, self.dk).permute(2, 0, 3, 1, 4)
        return k, v

    # -------------------------------------------------------------- incremental decoding
    def project_kv(self, src: Tensor, packing: Packing | None = None) -> tuple[Tensor, Tensor]:
        """Keys and values of ``src`` [B, S, D] -> (k, v), each [B, H, S, dk]; cache them to attend many
        times. With a ``packing`` of src's positions only the kept ones are projected, the others get
        zero keys and values: for a source whose hidden positions every query masks."""
        if packing is None:
            return self._split_kv(self.kv(src))
        return self._split_kv(packing.unpack(self.kv(packing.pack(src))))

    def attend(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """Queries x [B, T, D] against precomputed k, v [B, H, S, dk] (no causal mask: every key is
        visible). ``mask`` as in :meth:`forward`. Used with a self-attention cache (T = 1 new token)
        and with cross-attention K/V computed once per user (T = that user's beams, see
        :meth:`DecoderBlock.step`)."""
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.h, self.dk).transpose(1, 2)
        if t == 1 and mask is None and self.fast and not self.training and x.device.type == "cpu":
            return self.o(single_query_attention(q, k, v).view(b, 1, self.h * self.dk))
        return self.o(self._heads(q, k, v, mask))


class EncoderBlock(nn.Module):
    """Pre-norm block: x + SelfAttn(norm x); x + FFN(norm x). ``ffn`` is a hidden width (SwiGLU) or a
    module (e.g. :class:`onerec.model.moe.MoE`)."""

    def __init__(self, d_model: int, n_heads: int, ffn: nn.Module | int, dropout: float) -> None:
        super().__init__()
        self.n1, self.n2 = RMSNorm(d_model), RMSNorm(d_model)
        self.attn = Attention(d_model, n_heads, dropout)
        self.ffn = SwiGLU(d_model, ffn, dropout) if isinstance(ffn, int) else ffn
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.n1(x), mask=mask))
        return x + self.ffn(self.n2(x))

    def forward_packed(self, h: Tensor, packing: Packing, mask: Tensor) -> Tensor:
        """:meth:`forward` on packed tokens h [N, D] (see :class:`Packing`) -> [N, D]."""
        h = h + self.drop(self.attn.forward_packed(self.n1(h), packing, mask))
        return h + self.ffn(self.n2(h))


class DecoderBlock(nn.Module):
    """OneRec decoder layer: causal self-attn -> cross-attn over the encoder -> FFN (Technical
    Report Sec. 2; the FFN becomes a mixture of experts in the full model)."""

    def __init__(self, d_model: int, n_heads: int, ffn: nn.Module | int, dropout: float) -> None:
        super().__init__()
        self.n1, self.n2, self.n3 = RMSNorm(d_model), RMSNorm(d_model), RMSNorm(d_model)
        self.self_attn = Attention(d_model, n_heads, dropout)
        self.cross_attn = Attention(d_model, n_heads, dropout)
        self.ffn = SwiGLU(d_model, ffn, dropout) if isinstance(ffn, int) else ffn
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor, memory_mask: Tensor | None = None,
                packing: Packing | None = None) -> Tensor:
        """``packing``: project only these memory positions to cross-attention keys and values
        (:meth:`Attention.project_kv`); ``memory_mask`` must hide the others."""
        x = x + self.drop(self.self_attn(self.n1(x), causal=True))
        k, v = self.cross_attn.project_kv(memory, packing)
        x = x + self.drop(self.cross_attn.attend(self.n2(x), k, v, memory_mask))
        return x + self.ffn(self.n3(x))

    def step(self, x: Tensor, cache: tuple[Tensor, Tensor] | CacheSlot | None, cross_kv: tuple[Tensor, Tensor],
             cross_mask: Tensor | None, group: int) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One incremental decoding step (inference; equals :meth:`forward`'s last position).

        Args:
            x: the new token's input [M, 1, D], M = U * group rows (U users, ``group`` beams each,
                user-major: row ``u * group + g``).
            cache: this layer's self-attention (k, v) of the earlier positions, each [M, H, t, dk],
                or None at the first position, or its slot of a preallocated
                :class:`~onerec.model.kv_cache.StaticKVCache` (written in place; see
                :func:`~onerec.model.kv_cache.extend_cache`).
            cross_kv: the encoder memory's cross-attention (k, v), each [U, H, S, dk], computed once
                per user (:meth:`Attention.project_kv`) and shared by its beams, never repeated per beam.
            cross_mask: bool [U, 1, 1, S] (True = may attend) or None.
            group: beams per user.

        Returns:
            (output [M, 1, D], the cache extended by this position: (k, v) [M, H, t+1, dk]).
        """
        m, _, d = x.shape
        h = self.n1(x)
        k, v = extend_cache(cache, *self.self_attn.project_kv(h))
        x = x + self.self_attn.attend(h, k, v)
        # a user's beams are that user's query positions: [U*G, 1, D] -> [U, G, D] against [U, H, S, dk]
        c = self.cross_attn.attend(self.n2(x).view(m // group, group, d), *cross_kv, cross_mask)
        x = x + c.view(m, 1, d)
        return x + self.ffn(self.n3(x)), (k, v)


def use_reference(model: nn.Module, reference: bool = True) -> None:
    """Switch every layer of ``model`` with a fast path (:class:`Dropout`, :class:`Attention`,
    :class:`RMSNorm`) to its plain
    reference implementation, or back (``reference=False``). The same function: the benchmark
    (``--step-floor``) and the tests compare the two."""
    for m in model.modules():
        if isinstance(m, (Dropout, Attention, RMSNorm)) or hasattr(m, "fast"):
            m.fast = not reference
