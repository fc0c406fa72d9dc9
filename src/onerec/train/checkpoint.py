"""Checkpoints: safetensors for tensors, JSON for everything else. Nothing is ever pickled.

A model folder holds ``model.safetensors`` and ``model.json`` (the model config and the
semantic-ID vocabulary sizes). A resumable training checkpoint adds ``optim.safetensors``
(AdamW moments, the torch RNG state) and ``state.json`` (step, loss history).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from onerec.config import ModelConfig, from_dict, to_dict
from onerec.errors import CheckpointError
from onerec.io import atomic_folder, atomic_path, read_json, whole_folders, write_json


def save_model(folder: str | Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    save_weights(folder, model.state_dict(), meta)


def save_weights(folder: str | Path, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """``folder/model.safetensors`` (the tensors of ``state``, on the CPU) and ``folder/model.json`` (``meta``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(tensors, str(tmp))
    write_json(folder / "model.json", meta)


def load_state(folder: str | Path, model: torch.nn.Module) -> None:
    """Load ``model.safetensors`` into ``model``, naming the first mismatching key on error."""
    path = Path(folder) / "model.safetensors"
    if not path.exists():
        raise CheckpointError(f"{path}: no weights found. Fix: train first (`onerec train {path.parent.parent}`) "
                              "or check the path.")
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{path}: unreadable weights ({e}). Fix: the file is truncated; retrain or "
                              "restore it.") from None
    if hasattr(model, "upgrade_state"):  # checkpoints written before a rename of some keys
        state = model.upgrade_state(state)
    own = model.state_dict()
    for key, value in own.items():
        if key not in state:
            raise CheckpointError(f"{path}: key '{key}' missing; the checkpoint was made for another config. "
                                  "Fix: use the config saved beside it (model.json) or retrain.")
        if state[key].shape != value.shape:
            raise CheckpointError(f"{path}: key '{key}' has shape {tuple(state[key].shape)} but the model expects "
                                  f"{tuple(value.shape)}; the checkpoint was made for another config. Fix: use the "
                                  "config saved beside it (model.json) or retrain.")
    extra = sorted(set(state) - set(own))
    if extra:
        raise CheckpointError(f"{path}: unexpected key '{extra[0]}'; the checkpoint was made for another model.")
    model.load_state_dict(state)


def build_checked(folder: str | Path, build: Callable[[], torch.nn.Module], *, weights: str = "model.safetensors",
                  meta: str = "model.json") -> torch.nn.Module:
    """``build()`` after checking, on the meta device (no memory), that the model it makes has the keys and shapes
    of ``folder/weights`` (read from the file's header): a crafted or foreign ``folder/meta`` that asks for a huge
    model stops with an error here instead of allocating it."""
    from safetensors import safe_open

    path = Path(folder) / weights
    if not path.is_file():
        raise CheckpointError(f"{path}: no weights found. Fix: train first (`onerec train {path.parent.parent}`) "
                              "or check the path.")
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{path}: unreadable weights ({e}). Fix: the file is truncated; retrain or "
                              "restore it.") from None
    with torch.device("meta"):
        skeleton = build()
    if hasattr(skeleton, "upgrade_state"):  # checkpoints written before a rename of some keys
        header = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
        shapes = {k: tuple(v.shape) for k, v in skeleton.upgrade_state(header).items()}
    for key, value in skeleton.state_dict().items():
        if shapes.get(key) != tuple(value.shape):
            raise CheckpointError(f"{path}: key '{key}' is {shapes.get(key, 'missing')} but "
                                  f"{Path(folder) / meta} describes {tuple(value.shape)}. Fix: use the "
                                  f"{meta} saved with these weights, or retrain.")
    del skeleton
    return build()


def model_meta(cfg: ModelConfig, codebook_sizes: list[int], **extra: Any) -> dict[str, Any]:
    return {"model": to_dict(cfg), "codebook_sizes": list(codebook_sizes), **extra}


def read_model_meta(folder: str | Path) -> tuple[ModelConfig, list[int], dict[str, Any]]:
    meta = read_json(Path(folder) / "model.json")
    try:
        return from_dict(ModelConfig, meta["model"]), list(meta["codebook_sizes"]), meta
    except KeyError as e:
        path = Path(folder) / "model.json"
        raise CheckpointError(f"{path}: missing key {e}. Fix: regenerate the model folder.") from None


# ------------------------------------------------------------------ optimizer state
def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten an optimizer state_dict into tensors (safetensors) and JSON-able groups."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            t = val if torch.is_tensor(val) else torch.tensor(val)
            tensors[f"state.{idx}.{name}"] = t.detach().contiguous().cpu()
    return tensors, {"param_groups": sd["param_groups"]}


def optimizer_state(tensors: dict[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """The per-parameter optimizer state of :func:`optimizer_tensors`' flat ``state.<index>.<name>`` tensors."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, val in tensors.items():
        if key.startswith("state."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = val
    return state


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: dict[str, Any]) -> None:
    opt.load_state_dict({"state": optimizer_state(tensors), "param_groups": groups["param_groups"]})


def save_training_checkpoint(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                             meta: dict[str, Any], state: dict[str, Any],
                             average: torch.nn.Module | None = None,
                             best: dict[str, torch.Tensor] | None = None) -> None:
    """Write a resumable checkpoint into ``folder`` (a temp folder renamed into place); ``average``
    (the weight average of ``train.ema_decay``) is stored beside the optimizer moments, ``best`` (the
    weights of the best valid epoch so far, when training selects on valid) as ``best.safetensors``."""
    with atomic_folder(folder) as tmp:
        save_model(tmp, model, meta)
        if best is not None:
            save_file({k: v.detach().contiguous().cpu() for k, v in best.items()}, str(tmp / "best.safetensors"))
        tensors, groups = optimizer_tensors(opt)
        if average is not None:
            tensors.update({f"average.{k}": v.detach().contiguous().cpu() for k, v in average.state_dict().items()})
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        save_file(tensors, str(tmp / "optim.safetensors"))
        write_json(tmp / "state.json", {**state, "optimizer": groups})


def load_training_checkpoint(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                             average: torch.nn.Module | None = None) -> dict[str, Any]:
    load_state(folder, model)
    state = read_json(folder / "state.json")
    tensors = load_file(str(folder / "optim.safetensors"))
    if average is not None:
        saved = {k.removeprefix("average."): tensors.pop(k) for k in list(tensors) if k.startswith("average.")}
        if not saved:
            raise CheckpointError(f"{folder}: the checkpoint holds no weight average (it was trained without "
                                  "train.ema_decay). Fix: resume with the config it was trained with.")
        average.load_state_dict(saved)
    torch.set_rng_state(tensors.pop("rng.torch"))
    cuda_rng = tensors.pop("rng.cuda", None)
    if cuda_rng is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda_rng)
    restore_optimizer(opt, tensors, state.pop("optimizer"))
    return state


def load_selection(folder: Path, valid: list[dict[str, Any]], metric: str
                   ) -> tuple[float, dict[str, torch.Tensor] | None, int]:
    """The model-selection state at a checkpoint: (best score, best weights, epochs since the best),
    derived from its valid history by the training loop's rule (the first best score wins) and its
    ``best.safetensors``. A checkpoint without that file (no valid score yet) gives a fresh start."""
    path = folder / "best.safetensors"
    if not path.is_file():
        return -math.inf, None, 0
    scores = [r[metric] for r in valid if metric in r]
    if not scores:
        other = sorted({k for r in valid for k in r} - {"step", "epoch", "loss"}) or ["another metric"]
        raise CheckpointError(f"{folder}: the run selected on {', '.join(other)}, not {metric}. Fix: resume with "
                              f"train.early_stop_metric={other[0]}, or train from scratch.")
    best = max(range(len(scores)), key=scores.__getitem__)
    return scores[best], load_file(str(path)), len(scores) - 1 - best


def latest_checkpoint(root: Path) -> Path | None:
    ckpts = whole_folders(root / "checkpoints", "step-*")
    return ckpts[-1] if ckpts else None


def config_fingerprint(meta: dict[str, Any]) -> str:
    return json.dumps(meta, sort_keys=True)
