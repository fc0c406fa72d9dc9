"""Training beyond one process: torchrun, DistributedDataParallel and FSDP2, on PyTorch's own stack.

``torchrun --nproc_per_node=N -m onerec train RUN`` starts N processes; :func:`process_group` joins them
(nccl on GPUs, gloo on CPUs) when torchrun's ``WORLD_SIZE`` is above 1, and a plain ``onerec train RUN`` never
touches :mod:`torch.distributed`. What each piece does:

* **Strategy** (``train.strategy``): ``ddp`` replicates the model and all-reduces gradients
  (:class:`~torch.nn.parallel.DistributedDataParallel`); ``fsdp`` shards parameters, gradients and AdamW's
  moments over the ranks with FSDP2 (``torch.distributed.fsdp.fully_shard`` on every transformer block, then
  on the root). ``auto`` takes ddp up to :data:`FSDP_AUTO_PARAMS` parameters and fsdp above: replicated fp32
  weights, gradients and two AdamW moments cost 16 bytes a parameter, 4 GB at that size, which still leaves
  room for activations on a 16 GB card.
* **Data** (:func:`rank_chunks`): the global batch of a step is ``train.batch_size x world size x
  train.grad_accum`` examples, cut from the same (seed, epoch) permutation as one process reads; it is split
  into ``world x grad_accum`` contiguous micro-batches, micro-batch ``r * grad_accum + m`` going to rank r's
  m-th accumulation step. Each micro-batch's mean loss is weighted by its share of the global batch's targets
  (:func:`loss_scale`), so the summed gradient is exactly the gradient of the global batch's mean loss: one
  process with ``grad_accum=2`` and two processes with ``grad_accum=1`` compute the same step.
* **Checkpoints**: DDP's (and one process's) are the usual whole-model safetensors checkpoint, written by
  rank 0. FSDP's are sharded: every rank writes its own shard with ``torch.distributed.checkpoint`` into
  safetensors files whose headers carry the shard offsets (``HuggingFaceStorageWriter``), read back by
  ``HuggingFaceStorageReader`` from those headers alone, so nothing is pickled, and a checkpoint written by
  one world size loads at any other (DCP reshards). See :func:`save_sharded` / :func:`load_sharded`.
* **A rank that dies**: torchrun's agent stops the others and names the failed rank (``root cause ... rank:
  1``); ``onerec train RUN --resume`` under the same or another world size continues from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from onerec.errors import ConfigError, DistributedError

FSDP_AUTO_PARAMS = 250_000_000  # train.strategy=auto: fsdp above this many parameters, ddp up to it
TIMEOUT = datetime.timedelta(hours=1)  # a collective waits this long (a rank-0-only step such as a save)
RESUME = ("The run is resumable: run the same torchrun command with --resume (at this or another number of "
          "processes).")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: rank, world size and rank on its machine (0 / 1 / 0 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The rank that writes files (history, metrics, plots, reports, whole-model checkpoints)."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """The element-wise sum of ``values`` over the ranks (float64; ``values`` itself on one process)."""
        if self.world == 1:
            return list(values)
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        t = torch.tensor(values, dtype=torch.float64, device=device)  # nccl reduces GPU tensors only
        dist.all_reduce(t)
        return t.tolist()


def current() -> Dist:
    """The :class:`Dist` of this process: from the default process group once one is joined, else one process."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return Dist()


def launched_world() -> int:
    """The world size torchrun (or any launcher setting ``WORLD_SIZE``) asked for; 1 without one."""
    raw = os.environ.get("WORLD_SIZE", "1")
    return int(raw) if raw.isdigit() and int(raw) > 0 else 1


def launched_rank() -> int:
    """This process's rank as torchrun set it (``RANK``); 0 without torchrun (before or after the job's group)."""
    raw = os.environ.get("RANK", "0")
    return int(raw) if raw.isdigit() else 0


def resolve_device(name: str) -> torch.device:
    """``train.device``: ``auto`` is the GPU when there is one (under torchrun: this process's ``LOCAL_RANK``-th
    GPU), else the CPU; ``cuda`` under torchrun also means the local rank's GPU."""
    local = int(os.environ.get("LOCAL_RANK", "0")) if launched_world() > 1 else 0
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local)
    return device


@contextlib.contextmanager
def process_group(device: str = "auto", *, recovery: str = RESUME) -> Iterator[Dist]:
    """Join torchrun's job for the block (nccl for a GPU device, gloo for the CPU) and leave it afterwards;
    without torchrun (``WORLD_SIZE`` unset or 1), or with a group already joined, yield :func:`current`.
    ``recovery``: what the error says to do when another process of the job is lost."""
    if launched_world() == 1 or dist.is_initialized():
        yield current()
        return
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=TIMEOUT)
    d = current()
    try:
        yield d
        # the ranks leave together: a rank tearing its group down while another still holds it (busy with rank-0-only
        # work such as a report) could abort at exit under gloo ("terminate called without an active exception")
        dist.barrier()
    except Exception as e:
        if not _lost_peer(e):
            raise
        raise DistributedError(
            f"rank {d.rank} of {d.world}: lost contact with another process of the job ({str(e).splitlines()[0]}); "
            f"torchrun's 'Root Cause' names the rank that failed first. {recovery}") from None
    finally:
        dist.destroy_process_group()


def _lost_peer(e: Exception) -> bool:
    """Whether ``e`` is a collective failing because a peer went away (killed, out of memory, network)."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(m in text for m in ("Connection closed by peer", "Connection reset",
                                                                     "NCCL error", "Broken pipe"))


# ------------------------------------------------------------------------------------------------ strategy
def resolve_strategy(strategy: str, model: nn.Module, world: int) -> str:
    """``none`` on one process; ``ddp`` or ``fsdp`` as asked; ``auto``: by size (:data:`FSDP_AUTO_PARAMS`)."""
    if world == 1:
        return "none"
    if strategy == "auto":
        return "fsdp" if sum(p.numel() for p in model.parameters()) > FSDP_AUTO_PARAMS else "ddp"
    return strategy


def blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a generator (the units FSDP shards and activation checkpointing recomputes):
    encoder, decoder, lazy-decoder and QFormer blocks."""
    from onerec.model.layers import DecoderBlock, EncoderBlock
    from onerec.model.lazy import LazyBlock
    from onerec.model.qformer import QFormerBlock

    return [m for m in model.modules() if isinstance(m, (EncoderBlock, DecoderBlock, LazyBlock, QFormerBlock))]


def checkpoint_activations(model: nn.Module) -> int:
    """Recompute each block's activations in the backward pass instead of keeping them (``train.
    activation_checkpointing``): ``torch.utils.checkpoint`` around every block's forward. Returns the count."""
    from torch.utils.checkpoint import checkpoint

    found = blocks(model)
    for block in found:
        for name in forward_methods(block):
            inner = getattr(block, name)

            def run(*args, _inner=inner, **kwargs):
                return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

            setattr(block, name, run)
    return len(found)


def forward_methods(block: nn.Module) -> list[str]:
    """The methods a block's callers run it through: ``forward`` and its variants (``forward_packed``: the
    encoder's packed sequences), which FSDP must gather the block's parameters around."""
    return ["forward", *sorted(n for n in dir(type(block)) if n.startswith("forward_"))]


def wrap(model: nn.Module, strategy: str, device: torch.device, *, fsdp_bf16: bool = False,
         reshard_after_forward: bool = True) -> nn.Module:
    """The module training calls: ``model`` itself (one process), a DDP wrapper, or ``model`` sharded in place
    by FSDP2 (blocks first, then the root, which keeps the embeddings, tied heads and norms).

    ``fsdp_bf16``: FSDP2's mixed precision, bf16 parameters in forward and backward, gradients reduced in fp32,
    fp32 master weights and optimizer state. ``reshard_after_forward``: free the gathered parameters after
    each block's forward (less memory, one more all-gather in backward)."""
    if strategy == "none":
        return model
    if strategy == "ddp":
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        # no buffer broadcast each forward: the only trained buffers, MoE routing biases, stay equal by themselves
        # (their load is summed over the ranks); torch >= 2.12 names the switch forward_sync_buffers
        params = inspect.signature(DistributedDataParallel).parameters
        sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **sync)
    if strategy != "fsdp":
        raise ConfigError(f"train.strategy={strategy!r}: expected auto, ddp or fsdp")
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if fsdp_bf16 \
        else MixedPrecisionPolicy()
    for block in blocks(model):
        fully_shard(block, mp_policy=policy, reshard_after_forward=reshard_after_forward)
        for name in forward_methods(block)[1:]:
            register_fsdp_forward_method(block, name)
    fully_shard(model, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    return model


class LossOf(nn.Module):
    """A module whose forward is ``model.<method>(batch)``'s loss: DDP synchronises the gradients of what runs in its
    wrapper's forward, and models such as the P-Score compute their training loss in a method of their own."""

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = getattr(self.model, self.method)(*args, **kwargs)
        return out[0] if isinstance(out, tuple) else out


def unwrap(module: nn.Module) -> nn.Module:
    """The model under a DDP wrapper (FSDP2 shards in place: the model itself)."""
    return getattr(module, "module", module)


@contextlib.contextmanager
def gradient_sync(module: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce of an accumulation micro-batch that is not the step's last."""
    if enabled:
        yield
    elif hasattr(module, "no_sync"):  # DDP
        with module.no_sync():
            yield
    elif hasattr(module, "set_requires_gradient_sync"):  # FSDP2
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        yield


# ------------------------------------------------------------------------------------------------ data
def rank_chunks(idx: np.ndarray, world: int, accum: int, rank: int) -> list[np.ndarray]:
    """Rank ``rank``'s ``accum`` micro-batches of the global batch ``idx`` (contiguous, sizes within one)."""
    parts = np.array_split(idx, world * accum)
    return parts[rank * accum:(rank + 1) * accum]


def batch_targets(batch: dict[str, torch.Tensor]) -> int:
    """The number of next-item targets a training batch's mean loss averages over: one per example, each
    marked position of a sequence batch (``seq_target``), each real item of a session target (``session_mask``)."""
    if "seq_target" in batch:
        return int(batch["seq_target"].sum())
    if "session_mask" in batch:
        return int(batch["session_mask"].sum())
    return len(batch["target"])


def loss_scale(targets: int, total: int, world: int) -> float:
    """The factor on a micro-batch's mean loss so that, with gradients averaged over ``world`` ranks and summed
    over the accumulation steps, the step's gradient is that of the mean loss over all ``total`` targets."""
    return targets / max(total, 1) * world


# ------------------------------------------------------------------------------------------------ sharded checkpoints
SHARDED = "sharded"  # the subfolder of an FSDP checkpoint holding the model and optimizer shards


def _flat_state(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Model and optimizer state keyed by parameter name, as one flat dict of tensors (DTensors when sharded)
    for torch.distributed.checkpoint, plus the optimizer's param groups (JSON)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, opt)
    flat = {f"model.{k}": v for k, v in model_sd.items()}
    for fqn, state in optim_sd["state"].items():
        for name, value in state.items():
            flat[f"optim.{fqn}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return flat, optim_sd["param_groups"]


def save_sharded(folder: Path, model: nn.Module, opt: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Every rank writes its shard of the model and the optimizer into ``folder/sharded`` (a collective; the
    folder must be on a file system every rank sees). Returns the optimizer's param groups for state.json."""
    import torch.distributed.checkpoint as dcp

    flat, groups = _flat_state(model, opt)
    writer = dcp.HuggingFaceStorageWriter(str(folder / SHARDED), save_distributed=current().world > 1)
    dcp.save(flat, storage_writer=writer)
    return groups


def load_sharded(folder: Path, model: nn.Module, opt: torch.optim.Optimizer, groups: list[dict[str, Any]]) -> None:
    """Load a sharded checkpoint (written at any world size) into ``model`` and ``opt`` as they are laid out
    now: sharded by FSDP2 over this job's ranks, or whole on one process or under DDP."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    flat, _ = _flat_state(model, opt)  # the layout to fill (initialises AdamW's moments when still empty)
    with warnings.catch_warnings():  # one process loading shards is what we mean, not a mistake to warn of
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(flat, storage_reader=dcp.HuggingFaceStorageReader(str(folder / SHARDED)))
    model_sd = {k.removeprefix("model."): v for k, v in flat.items() if k.startswith("model.")}
    state: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        if key.startswith("optim."):
            fqn, name = key.removeprefix("optim.").rsplit(".", 1)
            state.setdefault(fqn, {})[name] = value
    set_state_dict(model, opt, model_state_dict=model_sd, optim_state_dict={"state": state, "param_groups": groups})


def load_whole_into_sharded(model: nn.Module, opt: torch.optim.Optimizer, weights: dict[str, torch.Tensor],
                            moments: dict[str, torch.Tensor], groups: dict[str, Any]) -> None:
    """Load a whole-model checkpoint (one process's or DDP's: optimizer state keyed by parameter index) into a
    model sharded by FSDP2: every rank reads the same files and keeps its own shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    from onerec.train.checkpoint import optimizer_state

    names = [name for name, _ in model.named_parameters()]
    state = {names[idx]: value for idx, value in optimizer_state(moments).items()}
    param_groups = [{**g, "params": [names[i] for i in g["params"]]} for g in groups["param_groups"]]
    set_state_dict(model, opt, model_state_dict=weights,
                   optim_state_dict={"state": state, "param_groups": param_groups},
                   options=StateDictOptions(full_state_dict=True))


def whole_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on the CPU, for the exported ``model.safetensors`` (a collective under FSDP:
    every rank calls it, rank 0 gets the tensors, the others an empty dict)."""
    if not any(type(p).__name__ == "DTensor" for p in model.parameters()):
        return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def begin_folder(folder: Path, d: Dist) -> Path:
    """``folder.tmp``, fresh, made by rank 0 and seen by all ranks (for a checkpoint every rank writes into)."""
    tmp = folder.with_name(folder.name + ".tmp")
    if d.main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    d.barrier()
    return tmp


def end_folder(folder: Path, d: Dist) -> None:
    """Rank 0 renames ``folder.tmp`` into place once every rank has written its part."""
    d.barrier()
    if d.main:
        if folder.exists():
            shutil.rmtree(folder)
        folder.with_name(folder.name + ".tmp").rename(folder)
    d.barrier()
