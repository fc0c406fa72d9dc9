"""Sparse mixture-of-experts feed-forward with loss-free load balancing.

The OneRec Technical Report (arXiv 2506.13695, Sec. 2, "Decoder") replaces the decoder's dense
feed-forward by a mixture of SwiGLU experts with top-k routing and balances the experts' load
without an auxiliary loss: each expert carries a routing bias that is added to its score only to
*choose* the top-k experts, and after every training step the bias of an over-loaded expert is
lowered and that of an under-loaded one raised by a fixed step (Wang et al. 2024, "Auxiliary-
Loss-Free Load Balancing Strategy for Mixture-of-Experts"). The gate weights themselves come from
the unbiased scores, so the bias never enters the gradient.

:class:`MoE` is a plain ``ffn(x[..., E]) -> [..., E]`` module, so it drops into
:class:`onerec.model.layers.DecoderBlock` (its ``ffn`` argument) and works token by token in an
incremental (KV-cached) decoder as well as over whole sequences.

Three implementations of the same function, selected by ``impl``:

* ``"loop"``: the plain reference, one masked pass per expert;
* ``"padded"``: token->expert assignments are sorted by expert, scattered into one padded
  ``[n_experts, capacity, E]`` buffer and run through all experts with three batched matmuls
  (``torch.bmm``), then scattered back. The padding costs multiplies on zero rows: capacity is the
  busiest expert's load, so with uneven routing the buffer can hold several times the real rows
  (4.2x for the 2.633B preset at batch 1, ``benchmarks/model_throughput.py``);
* ``"grouped"`` (default): the same sorted rows through ``torch.nn.functional.grouped_mm``, which
  multiplies each expert's contiguous slice by its weights without padding; on CPU. Elsewhere
  (CUDA's grouped GEMM wants bf16 and particular GPUs) it falls back to ``"padded"``.

``tests/model/test_moe.py`` checks that all three give the same outputs and gradients.

Shapes: N = tokens (all leading dims flattened), E = d_model, X = experts, K = active experts,
F = expert hidden width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onerec.errors import ConfigError
from onerec.model.layers import Dropout

IMPLS = ("grouped", "padded", "loop")


class MoE(nn.Module):
    """Top-k mixture of SwiGLU experts with a loss-free balancing bias.

    Args:
        d_model: E.
        hidden: F, each expert's SwiGLU hidden width.
        n_experts: X.
        top_k: K, experts per token.
        dropout: dropout on the output (:class:`onerec.model.layers.Dropout`).
        bias_step: u, the per-step change of the routing bias (Wang et al. use 1e-3).
        impl: "grouped" (fast), "padded" or "loop" (reference); see the module docstring.
    """

    def __init__(self, d_model: int, hidden: int, n_experts: int, top_k: int, dropout: float = 0.0,
                 bias_step: float = 1e-3, impl: str = "grouped") -> None:
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ConfigError(f"model.moe_top_k={top_k} must be in 1..model.moe_experts={n_experts}")
        if impl not in IMPLS:
            raise ConfigError(f"model.moe_impl={impl!r} must be one of {', '.join(IMPLS)}")
        self.d, self.f, self.n, self.k = d_model, hidden, n_experts, top_k
        self.bias_step, self.impl = bias_step, impl
        self.router = nn.Linear(d_model, n_experts, bias=False)
        # expert weights stacked on a leading expert axis: the loop reads one slice, grouped all
        self.w1 = nn.Parameter(torch.empty(n_experts, d_model, hidden))
        self.w3 = nn.Parameter(torch.empty(n_experts, d_model, hidden))
        self.w2 = nn.Parameter(torch.empty(n_experts, hidden, d_model))
        for w in (self.w1, self.w3, self.w2):
            nn.init.normal_(w, std=0.02)
        self.drop = Dropout(dropout)
        # loss-free balancing state: saved with the model (persistent), never trained by gradients
        self.register_buffer("route_bias", torch.zeros(n_experts))
        # tokens routed to each expert in the last training forward (for logging; not saved)
        self.register_buffer("last_load", torch.zeros(n_experts), persistent=False)
        self._bias_seen: Tensor | None = None  # the routing bias of the last training forward (before its nudge)

    def expert_params(self) -> int:
        """Parameters of one expert (used to count active parameters)."""
        return 3 * self.d * self.f

    # -------------------------------------------------------------------- routing
    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [N, E] -> (experts [N, K] int64, gates [N, K]): top-k of score + bias, gates from the
        unbiased softmax scores renormalised over the chosen experts."""
        scores = F.softmax(self.router(x).float(), dim=-1)
        chosen = torch.topk(scores + self.route_bias, self.k, dim=-1).indices
        gates = scores.gather(-1, chosen)
        gates = gates / gates.sum(-1, keepdim=True).clamp_min(1e-9)
        return chosen, gates.to(x.dtype)

    @torch.no_grad()
    def _balance(self, chosen: Tensor) -> None:
        """Record the load and nudge the bias: over-loaded experts down, under-loaded up.

        In a job of several processes (torchrun) the load is summed over the ranks first, so every rank nudges
        its bias the same way, as one process would on the whole batch. A forward that activation checkpointing
        re-runs inside the backward pass nudges nothing (it already did) and routes with the bias the original
        forward saw (``_bias_seen``), so it recomputes the same activations."""
        load = torch.bincount(chosen.reshape(-1), minlength=self.n).to(self.route_bias.dtype)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(load)
        self.last_load.copy_(load)
        self.route_bias.add_(self.bias_step * torch.sign(load.mean() - load))

    def load_fraction(self) -> Tensor:
        """Share of routed tokens per expert in the last training step ([X], sums to 1)."""
        total = self.last_load.sum()
        return self.last_load / total if total > 0 else self.last_load

    # -------------------------------------------------------------------- experts
    def _expert(self, e: int, x: Tensor) -> Tensor:
        return (F.silu(x @ self.w1[e]) * (x @ self.w3[e])) @ self.w2[e]

    def _loop(self, x: Tensor, chosen: Tensor, gates: Tensor) -> Tensor:
        out = torch.zeros_like(x)
        for e in range(self.n):
            tok, slot = torch.nonzero(chosen == e, as_tuple=True)
            if len(tok):
                out.index_add_(0, tok, self._expert(e, x[tok]) * gates[tok, slot, None])
        return out

    def _sorted(self, chosen: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Token->expert assignments sorted by expert: (order into the flat [N*K] assignments, their
        experts, their tokens, tokens per expert [X])."""
        flat_e = chosen.reshape(-1)  # [N*K]
        order = torch.argsort(flat_e, stable=True)
        return order, flat_e[order], order // self.k, torch.bincount(flat_e, minlength=self.n)

    def _grouped(self, x: Tensor, chosen: Tensor, gates: Tensor) -> Tensor:
        # under torch.compile (train.compile) the padded form: the fake-tensor kernel of grouped_mm takes bf16 only
        if x.device.type != "cpu" or not hasattr(F, "grouped_mm") or torch.compiler.is_compiling():
            return self._padded(x, chosen, gates)
        order, _, tok, counts = self._sorted(chosen)
        offs = torch.cumsum(counts, 0).to(torch.int32)  # end of each expert's slice of the sorted rows
        rows = x[tok]  # [N*K, E], expert by expert
        h = F.silu(F.grouped_mm(rows, self.w1, offs=offs)) * F.grouped_mm(rows, self.w3, offs=offs)
        y = F.grouped_mm(h, self.w2, offs=offs)  # [N*K, E]
        return torch.zeros_like(x).index_add_(0, tok, y * gates.reshape(-1)[order, None])

    def _padded(self, x: Tensor, chosen: Tensor, gates: Tensor) -> Tensor:
        n = x.shape[0]
        order, e_sorted, tok, counts = self._sorted(chosen)
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.arange(order.shape[0], device=x.device) - starts[e_sorted]  # rank within its expert
        # at least 2 (an extra row of zeros at most): under torch.export the capacity is a data-dependent size,
        # which inductor cannot compile while it might be 1 (generate.compile=aot, onerec.model.aot)
        cap = counts.max().clamp(min=2).item() if n else 0
        torch._check(cap != 1)
        buf = x.new_zeros(self.n, cap, self.d)
        buf[e_sorted, pos] = x[tok]
        h = F.silu(torch.bmm(buf, self.w1)) * torch.bmm(buf, self.w3)
        y = torch.bmm(h, self.w2)  # [X, cap, E]
        contrib = y[e_sorted, pos] * gates.reshape(-1)[order, None]
        return torch.zeros_like(x).index_add_(0, tok, contrib)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        flat = x.reshape(-1, self.d)
        recomputed = torch._C._current_graph_task_id() != -1  # re-run in backward (train.activation_checkpointing)
        if recomputed and self._bias_seen is not None:
            bias, self.route_bias = self.route_bias, self._bias_seen  # route as the original forward did
            try:
                chosen, gates = self.route(flat)
            finally:
                self.route_bias = bias
        else:
            chosen, gates = self.route(flat)
        if self.training and torch.is_grad_enabled() and not recomputed:
            self._bias_seen = self.route_bias.clone()
            self._balance(chosen)
        impl = {"grouped": self._grouped, "padded": self._padded, "loop": self._loop}[self.impl]
        out = impl(flat, chosen, gates)
        return self.drop(out.reshape(shape))
