"""SASRec: self-attentive sequential recommendation (Kang & McAuley 2018, arXiv 1808.09781).

A causal Transformer over the user's item sequence; the hidden state at position t scores the
item at t+1 by a dot product with the (shared) item embedding table. Two training losses:

* ``bce`` -- the original paper (Sec. III-E): at every position the true next item is a
  positive and one item sampled uniformly from those the user never interacted with is a
  negative; binary cross-entropy on both. This is the variant TIGER and most generative-retrieval
  papers quote.
* ``ce`` -- full-softmax cross-entropy over all items at every position (Klenitskiy & Vasilev
  2023, arXiv 2309.07602, "Turning dross into gold loss: is BERT4Rec really better than
  SASRec?"), which is much stronger under full ranking.

Layout choices (the paper leaves some open; we follow its reference implementation):

* Tokens are ``item_id + 1``; token 0 is padding. Sequences are left-padded (right-aligned) to
  ``max_len`` so the most recent item is always the last position, and learnable position
  ``max_len - 1`` always means "most recent" (Sec. III-A, learnable position embedding).
* Pre-LN blocks (LayerNorm before attention and before the FFN, plus a final LayerNorm): the
  reference implementation normalises the attention query and FFN inputs the same way, and
  pre-LN trains stably with Adam at lr 1e-3 without warm-up (Xiong et al. 2020).
* Item embeddings are scaled by ``sqrt(d)`` before adding positions, as in the reference code.
* The point-wise FFN is Linear(d, d) -> ReLU -> Linear(d, d) (Sec. III-B, the paper's two
  1x1 convolutions).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from onerec.config import SasrecConfig, from_dict
from onerec.content.base import items_fingerprint
from onerec.data.splits import list_column
from onerec.errors import CheckpointError, DataError
from onerec.eval.harness import evaluate
from onerec.eval.metrics import topk_from_scores
from onerec.io import atomic_folder, atomic_path, read_json, whole_folders, write_json
from onerec.train.checkpoint import optimizer_tensors, restore_optimizer

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
META_FILE = "sasrec.json"
FORMAT = "onerec.sasrec/1"
PROGRESS_FORMAT = "onerec.sasrec-progress/1"
# settings a resumed fit may change: how long it may train, and how many users it scores at once
RESUMABLE = ("epochs", "time_budget_s", "eval_batch_size")


# --------------------------------------------------------------------------------- model
class _Block(nn.Module):
    """Pre-LN causal self-attention block: x + Attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads, self.p = n_heads, dropout
        self.ln_attn = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.ln_ffn = nn.LayerNorm(d_model)
        # Sec. III-B: point-wise two-layer FFN with ReLU, same width as the model.
        self.ffn = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(d_model, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x: [B, T, D]; allowed: bool [B, 1, T, T] (True = query may attend to key) -> [B, T, D]."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln_attn(x)).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=self.p if self.training else 0.0)
        # Sec. III-C: residual connection, layer normalisation and dropout around each sub-layer.
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.ffn(self.ln_ffn(x)))


class SASRec(nn.Module):
    """The SASRec network over token sequences (token = item id + 1, 0 = padding).

    Args:
        n_items: catalogue size N (items ``0..N-1``).
        d_model: hidden size D.
        n_layers: self-attention blocks.
        n_heads: attention heads.
        dropout: dropout on embeddings, attention weights and residual branches.
        max_len: longest input sequence (number of learnable positions).
    """

    def __init__(self, n_items: int, d_model: int = 64, n_layers: int = 2, n_heads: int = 1,
                 dropout: float = 0.5, max_len: int = 50) -> None:
        super().__init__()
        self.n_items, self.max_len, self.d_model = n_items, max_len, d_model
        self.item_emb = nn.Embedding(n_items + 1, d_model, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, d_model)
        self.emb_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(d_model, n_heads, dropout) for _ in range(n_layers))
        self.final_ln = nn.LayerNorm(d_model)
        # Std d^-1/2 so that sqrt(d)-scaled item embeddings and positions start on the same unit scale.
        for emb in (self.item_emb, self.pos_emb):
            nn.init.normal_(emb.weight, std=d_model ** -0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states of right-aligned token sequences.

        Args:
            tokens: int64 [B, T] (T <= max_len), left-padded with 0.

        Returns:
            float [B, T, D]; position t summarises tokens[:, :t+1] (zeros at padding positions).
        """
        b, t = tokens.shape
        if t > self.max_len:
            raise ValueError(f"sequence length {t} exceeds max_len={self.max_len}")
        real = tokens > 0  # [B, T]
        # Right alignment: the last column is always position max_len - 1 ("most recent").
        pos = torch.arange(self.max_len - t, self.max_len, device=tokens.device)
        x = self.item_emb(tokens) * math.sqrt(self.d_model) + self.pos_emb(pos)
        x = self.emb_drop(x) * real.unsqueeze(-1)
        # Causal (Sec. III-B: no attention to later items) and no attention to padding keys; the
        # diagonal stays open so padding queries (attending only to padding) never see an all-masked row.
        eye = torch.eye(t, dtype=torch.bool, device=tokens.device)
        allowed = torch.tril(torch.ones(t, t, dtype=torch.bool, device=tokens.device))
        allowed = (allowed & (real[:, None, None, :] | eye)).expand(b, 1, t, t)
        for block in self.blocks:
            x = block(x, allowed) * real.unsqueeze(-1)
        return self.final_ln(x) * real.unsqueeze(-1)

    def item_scores(self, h: torch.Tensor) -> torch.Tensor:
        """Scores of every item from hidden states: [..., D] -> [..., N] (column i = item i).

        Sec. III-D: the output layer shares the input item embedding.
        """
        return h @ self.item_emb.weight[1:].T

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-item scores after each sequence: tokens int64 [B, T] -> float [B, N]."""
        return self.item_scores(self.encode(tokens)[:, -1])


# ----------------------------------------------------------------------------- helpers
def _left_pad(seqs: list[np.ndarray], width: int) -> np.ndarray:
    """Right-align the last ``width`` entries of each sequence (already tokens) into int64 [B, width]."""
    out = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        if width and len(s):
            tail = s[-width:]
            out[i, width - len(tail):] = tail
    return out


def _trim(tokens: np.ndarray, keep: int = 1) -> np.ndarray:
    """Drop leading columns that are padding in every row (keeps at least ``keep`` columns)."""
    nonzero = np.flatnonzero((tokens != 0).any(axis=0))
    start = min(nonzero[0] if len(nonzero) else tokens.shape[1], tokens.shape[1] - keep)
    return tokens[:, max(start, 0):]


def _length_bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                             pool: int = 32) -> list[np.ndarray]:
    """Shuffled batches of row indexes whose sequences have similar lengths.

    Rows are shuffled, each run of ``pool`` batches is sorted by length and cut into batches,
    and the batch order is shuffled. On long-tailed data (Amazon: median ~6 items, max_len 50)
    a random batch almost always pads to max_len; bucketing cuts the padded work several-fold
    while every row is still seen once per epoch in random company.
    """
    order = rng.permutation(len(lengths))
    span = batch_size * pool
    for start in range(0, len(order), span):
        seg = order[start:start + span]
        order[start:start + span] = seg[np.argsort(lengths[seg], kind="stable")]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _check_ids(seqs: list[np.ndarray], n_items: int, column: str) -> None:
    flat = np.concatenate(seqs) if seqs else np.empty(0, dtype=np.int64)
    if len(flat) and (flat.min() < 0 or flat.max() >= n_items):
        raise DataError(f"item ids must be in 0..{n_items - 1}; found {flat.min()}..{flat.max()}", column=column,
                        fix="pass the dataset's n_items, or split and fit on the same dataset")


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def latest_progress(folder: Path) -> Path | None:
    """The newest whole ``epoch-NNNN`` checkpoint of a ``fit(checkpoint=folder)``; None if there is none."""
    found = whole_folders(folder, "epoch-*")
    return found[-1] if found else None


class _EarlyStopping:
    """Tracks the best valid score, a copy of its weights, and evaluations without improvement."""

    def __init__(self, patience: int) -> None:
        self.patience, self.best, self.best_epoch, self.bad = patience, -math.inf, 0, 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def update(self, score: float, epoch: int, model: nn.Module) -> None:
        if score > self.best:
            self.best, self.best_epoch, self.bad = score, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad += 1

    @property
    def exhausted(self) -> bool:
        return self.bad >= max(self.patience, 1)

    def state(self) -> dict[str, float | int | None]:
        return {"best": None if self.best_state is None else self.best, "best_epoch": self.best_epoch, "bad": self.bad}

    def restore(self, state: dict[str, float | int | None], best_state: dict[str, torch.Tensor] | None) -> None:
        self.best = -math.inf if state["best"] is None else float(state["best"])
        self.best_epoch, self.bad, self.best_state = int(state["best_epoch"]), int(state["bad"]), best_state


# ------------------------------------------------------------------------- recommender
class SASRecRecommender:
    """Fit / recommend / save / load wrapper of :class:`SASRec` (implements ``Recommender``).

    Training (``fit``): one right-aligned window per user of their most recent ``max_len + 1``
    train items, next-item targets at every position (Sec. III-E), Adam, shuffled batches of
    similar-length windows (:func:`_length_bucketed_batches`, to cut padding work).
    With a ``valid`` table the model is scored every ``cfg.eval_every`` epochs on
    ``cfg.early_stop_metric`` (full ranking), the best weights are kept, and training stops after
    ``cfg.patience`` evaluations without improvement.

    Attributes:
        train_log: one dict per epoch: ``epoch``, ``loss`` (mean training loss), ``seconds``, and
            ``valid_<metric>`` on evaluated epochs.
        best_epoch: epoch whose weights are kept (the last one without a valid table).
        progress: ``fit`` shows a tqdm bar of the epochs (steps within the epoch, the last epoch's loss and
            valid score, the best so far); off by default, so tests and library use stay quiet.
    """

    def __init__(self, cfg: SasrecConfig | None = None, device: str | torch.device = "cpu",
                 name: str | None = None, progress: bool = False) -> None:
        self.cfg = cfg or SasrecConfig()
        if self.cfg.loss not in ("ce", "bce"):
            raise ValueError(f"SasrecConfig.loss must be 'ce' or 'bce', got {self.cfg.loss!r}")
        self.device = _resolve_device(device)
        self.name = name or f"sasrec_{self.cfg.loss}"
        self.model: SASRec | None = None
        self.n_items = 0
        self.train_log: list[dict[str, float]] = []
        self.best_epoch = 0
        self.progress = progress
        # called with each epoch's ``train_log`` row as it ends (e.g. a progress line in ``onerec bench``)
        self.on_epoch: Callable[[dict[str, float]], None] | None = None

    @property
    def losses(self) -> list[float]:
        """Mean training loss of each epoch, for plotting."""
        return [row["loss"] for row in self.train_log]

    @property
    def valid_curve(self) -> list[dict[str, float]]:
        """``[{"epoch": e, <early_stop_metric>: score}, ...]`` over the epochs scored on the valid split."""
        metric = self.cfg.early_stop_metric
        key = f"valid_{metric}"
        return [{"epoch": row["epoch"], metric: row[key]} for row in self.train_log if key in row]

    def _build(self, n_items: int) -> SASRec:
        c = self.cfg
        self.n_items = n_items
        return SASRec(n_items, c.d_model, c.n_layers, c.n_heads, c.dropout, c.max_len).to(self.device)

    # ------------------------------------------------------------------------ training
    def fit(self, train: pa.Table, *, n_items: int, valid: pa.Table | None = None,
            checkpoint: str | Path | None = None, resume: bool = True) -> None:
        """Train on the ``items`` sequences of the train table (see class docstring).

        ``checkpoint``: a folder that receives the whole training state after every epoch (weights,
        Adam moments, every random state, the early-stopping state and the log). With ``resume`` a fit
        given a folder that already holds one continues from it, and ends where an uninterrupted fit
        would have; the folder must come from the same data and settings (apart from
        :data:`RESUMABLE`), else :class:`CheckpointError`. ``resume=False`` clears the folder first."""
        c = self.cfg
        seqs = list_column(train, "items")
        _check_ids(seqs, n_items, "items")
        windows = _left_pad([s + 1 for s in seqs if len(s) >= 2], c.max_len + 1)
        if len(windows) == 0:
            raise DataError("no training sequence has 2 or more items", column="items",
                            fix="SASRec learns next-item transitions; check the split")
        torch.manual_seed(c.seed)
        self.model = self._build(n_items)
        opt = torch.optim.Adam(self.model.parameters(), lr=c.lr, betas=(0.9, 0.98), weight_decay=c.weight_decay)
        rng = np.random.default_rng(c.seed)
        gen = torch.Generator(device=self.device).manual_seed(c.seed)
        self.train_log, stop, first, spent = [], _EarlyStopping(c.patience), 1, 0.0
        fingerprint = None
        if checkpoint is not None:
            checkpoint = Path(checkpoint)
            fingerprint = {"config": dataclasses.asdict(c), "n_items": n_items,
                           "train": hashlib.sha256(windows.tobytes()).hexdigest()[:16] + str(windows.shape),
                           "valid": None if valid is None else items_fingerprint(valid, ["history", "targets"])}
            if not resume and checkpoint.exists():
                shutil.rmtree(checkpoint)  # a fresh fit must not continue an older one
            saved = latest_progress(checkpoint)
            if saved is not None:
                first, spent = self._restore_progress(saved, fingerprint, opt, rng, gen, stop)
                log.info("%s: resumed from %s", self.name, saved)
        t0 = time.monotonic() - spent
        # a restored fit that had stopped early or run out of time trains no further (a larger
        # ``epochs`` or ``time_budget_s`` than it had lets it go on)
        ended = stop.exhausted or (c.time_budget_s is not None and spent > c.time_budget_s)
        bar = self._bar(first - 1, ended, valid is not None)
        for epoch in range(first, first if ended else c.epochs + 1):
            t_ep = time.monotonic()
            row: dict[str, float] = {"epoch": epoch, "loss": self._train_epoch(windows, opt, rng, gen, bar)}
            out_of_time = c.time_budget_s is not None and time.monotonic() - t0 > c.time_budget_s
            last = epoch == c.epochs or out_of_time
            if valid is not None and (epoch % max(c.eval_every, 1) == 0 or last):
                if bar is not None:  # full ranking of every valid user: seconds on its own
                    bar.set_postfix({"loss": f"{row['loss']:.4f}", "now": "scoring valid"})
                row[f"valid_{c.early_stop_metric}"] = score = self._valid_score(valid)
                stop.update(score, epoch, self.model)
            row["seconds"] = time.monotonic() - t_ep
            self.train_log.append(row)
            log.info("%s epoch %d: %s", self.name, epoch, row)
            if bar is not None:
                self._show(bar, row, stop)
            if checkpoint is not None:
                self._save_progress(checkpoint, fingerprint, opt, rng, gen, stop, time.monotonic() - t0)
            if self.on_epoch is not None:
                self.on_epoch(row)
            if last or stop.exhausted:
                break
        if bar is not None:
            bar.close()
        if stop.best_state is not None:
            self.model.load_state_dict(stop.best_state)
        self.best_epoch = stop.best_epoch or len(self.train_log)
        self.model.eval()

    def _save_progress(self, folder: Path, fingerprint: dict, opt: torch.optim.Optimizer, rng: np.random.Generator,
                       gen: torch.Generator, stop: _EarlyStopping, spent: float) -> None:
        """The state after the last epoch of ``train_log`` as ``folder/epoch-NNNN`` (written whole, then the
        older epochs are removed)."""
        assert self.model is not None
        epoch = int(self.train_log[-1]["epoch"])
        tensors, groups = optimizer_tensors(opt)
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.generator"] = gen.get_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        if stop.best_state is not None:
            tensors.update({f"best.{k}": v for k, v in stop.best_state.items()})
        with atomic_folder(folder / f"epoch-{epoch:04d}") as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
                      str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "state.safetensors"))
            write_json(tmp / "progress.json", {
                "format": PROGRESS_FORMAT, "fingerprint": fingerprint, "epoch": epoch, "seconds": spent,
                "train_log": self.train_log,
                "stop": stop.state(), "numpy_rng": rng.bit_generator.state, "optimizer": groups})
        for old in whole_folders(folder, "epoch-*")[:-1]:
            shutil.rmtree(old)

    def _restore_progress(self, folder: Path, fingerprint: dict, opt: torch.optim.Optimizer,
                          rng: np.random.Generator, gen: torch.Generator, stop: _EarlyStopping) -> tuple[int, float]:
        """Load ``folder`` (one ``epoch-NNNN``) into the fit's objects; returns (next epoch, seconds spent)."""
        assert self.model is not None
        meta = read_json(folder / "progress.json")
        if meta.get("format") != PROGRESS_FORMAT:
            raise CheckpointError(f"{folder}: not a SASRec training checkpoint (format {meta.get('format')!r}). "
                                  "Fix: point the checkpoint at an empty folder.")
        saved = meta["fingerprint"]
        differ = [f"config.{k}" for k in fingerprint["config"]
                  if k not in RESUMABLE and saved["config"].get(k) != fingerprint["config"][k]]
        differ += [k for k in ("n_items", "train", "valid") if saved.get(k) != fingerprint[k]]
        if differ:
            raise CheckpointError(f"{folder}: the checkpoint was made with other data or settings "
                                  f"({', '.join(differ[:5])} differ). Fix: resume with the data and settings that "
                                  "started it, or remove the folder to train afresh.")
        try:
            self.model.load_state_dict(load_file(str(folder / WEIGHTS_FILE), device=str(self.device)))
            tensors = load_file(str(folder / "state.safetensors"))
        except (OSError, RuntimeError) as e:
            raise CheckpointError(f"{folder}: unreadable checkpoint ({e}). Fix: remove the folder to train "
                                  "afresh.") from None
        torch.set_rng_state(tensors.pop("rng.torch"))
        gen.set_state(tensors.pop("rng.generator"))
        cuda_rng = tensors.pop("rng.cuda", None)
        if cuda_rng is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda_rng, self.device)
        best = {k.removeprefix("best."): tensors.pop(k).to(self.device) for k in list(tensors) if k.startswith("best.")}
        restore_optimizer(opt, {k: v.to(self.device) for k, v in tensors.items()}, meta["optimizer"])
        rng.bit_generator.state = meta["numpy_rng"]
        stop.restore(meta["stop"], best or None)
        self.train_log = list(meta["train_log"])
        return int(meta["epoch"]) + 1, float(meta["seconds"])

    def _bar(self, done: int, ended: bool, scored: bool):
        """The fit's tqdm bar over epochs (None without ``progress``): early stopping usually ends it before
        ``epochs``, so the description says so."""
        if not self.progress or ended:
            return None
        from tqdm.auto import tqdm

        c = self.cfg
        stop = f", stops after {c.patience} evaluations without gain" if scored else ""
        return tqdm(total=c.epochs, initial=done, desc=f"fit {self.name} (<= {c.epochs} epochs{stop})", unit="epoch",
                    dynamic_ncols=True)

    def _show(self, bar, row: dict[str, float], stop: _EarlyStopping) -> None:
        """One finished epoch on the bar: its loss, and (kept in view during the next epochs) the last valid
        score and the best epoch so far."""
        metric = f"valid_{self.cfg.early_stop_metric}"
        if metric in row:
            bar.valid_post = {self.cfg.early_stop_metric: f"{row[metric]:.4f}"}
            if stop.best_state is not None:
                bar.valid_post["best"] = f"{stop.best:.4f}@{stop.best_epoch}"
        bar.set_postfix({"loss": f"{row['loss']:.4f}", **getattr(bar, "valid_post", {})}, refresh=False)
        bar.update(1)

    def _valid_score(self, valid: pa.Table) -> float:
        k = int(self.cfg.early_stop_metric.split("@")[1])
        return evaluate(self, valid, ks=(k,), batch_size=self.cfg.eval_batch_size)[self.cfg.early_stop_metric]

    def _train_epoch(self, windows: np.ndarray, opt: torch.optim.Optimizer, rng: np.random.Generator,
                     gen: torch.Generator, bar=None) -> float:
        """One shuffled pass over the windows [U, max_len + 1]; returns the mean batch loss. ``bar``: the fit's
        progress bar, whose postfix shows the step within the epoch and the running loss."""
        assert self.model is not None
        self.model.train()
        total, n_batches = 0.0, 0
        batches = _length_bucketed_batches((windows > 0).sum(axis=1), self.cfg.batch_size, rng)
        for rows in batches:
            batch = _trim(windows[rows], keep=2)
            loss = self._batch_loss(torch.as_tensor(batch, device=self.device), gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n_batches = total + float(loss.detach()), n_batches + 1
            if bar is not None and (n_batches % 20 == 0 or n_batches == len(batches)):
                bar.set_postfix({"step": f"{n_batches}/{len(batches)}", "loss": f"{total / n_batches:.4f}",
                                 **getattr(bar, "valid_post", {})})  # the last valid score stays in view
        return total / max(n_batches, 1)

    def _batch_loss(self, window: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Next-item loss of a batch of token windows [B, T+1]: inputs [:, :-1], targets [:, 1:]."""
        assert self.model is not None
        inp, tgt = window[:, :-1], window[:, 1:]
        h = self.model.encode(inp)  # [B, T, D]
        real = inp > 0  # a position with an input item always has a next item (right alignment)
        hv, pos = h[real], tgt[real]  # [P, D], [P]; only real positions, so the [P, N] logits stay small
        if self.cfg.loss == "ce":
            return F.cross_entropy(self.model.item_scores(hv), pos - 1)
        neg = self._sample_negatives(window, real.nonzero()[:, 0], gen)  # [P]
        emb = self.model.item_emb
        pos_logit = (hv * emb(pos)).sum(-1)
        neg_logit = (hv * emb(neg)).sum(-1)
        # Sec. III-E: -log σ(r_pos) - log(1 - σ(r_neg)), averaged over real positions.
        return (F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit))
                + F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit)))

    def _sample_negatives(self, window: torch.Tensor, rows: torch.Tensor, gen: torch.Generator,
                          tries: int = 10) -> torch.Tensor:
        """One uniform negative token per position among the items that user never interacted with.

        Rejection sampling (vectorised, ``tries`` rounds), then an exact draw from the complement
        for the rare positions still clashing (users who have seen most of the catalogue).

        Args:
            window: int64 [B, T+1] tokens of each user.
            rows: int64 [P] the user (row) of each position.

        Returns:
            int64 [P] tokens in 1..N (a user who has seen every item gets an arbitrary one).
        """
        n = self.n_items
        neg = torch.randint(1, n + 1, rows.shape, device=window.device, generator=gen)
        seen = window[rows]  # [P, T+1]
        clash = (seen == neg[:, None]).any(dim=1)
        for _ in range(tries):
            if not bool(clash.any()):
                return neg
            redraw = torch.randint(1, n + 1, rows.shape, device=window.device, generator=gen)
            neg = torch.where(clash, redraw, neg)
            clash = (seen == neg[:, None]).any(dim=1)
        for i in clash.nonzero()[:, 0].tolist():
            free = torch.ones(n + 1, dtype=torch.bool, device=window.device)
            free[seen[i]] = False
            free[0] = False
            options = free.nonzero()[:, 0]
            if len(options):
                pick = torch.randint(len(options), (1,), device=window.device, generator=gen)
                neg[i] = options[pick[0]]
        return neg

    # ---------------------------------------------------------------------- inference
    @torch.no_grad()
    def recommend(self, examples: pa.Table, k: int) -> np.ndarray:
        """Top-k items after each row's ``history`` (full ranking over all N items).

        Returns:
            int64 [B, k]; the user's history is excluded only when ``cfg.exclude_history``.
        """
        if self.model is None:
            raise RuntimeError("SASRecRecommender.recommend called before fit or load")
        self.model.eval()
        hist = list_column(examples, "history")
        _check_ids(hist, self.n_items, "history")
        # Score users in order of history length so each chunk pads to similar lengths.
        order = np.argsort(np.fromiter((len(h) for h in hist), dtype=np.int64, count=len(hist)), kind="stable")
        out = np.empty((len(hist), k), dtype=np.int64)
        step = max(self.cfg.eval_batch_size, 1)
        for start in range(0, len(hist), step):
            rows = order[start:start + step]
            chunk = [hist[i] for i in rows]
            tokens = _trim(_left_pad([h + 1 for h in chunk], self.cfg.max_len), keep=1)
            scores = self.model(torch.as_tensor(tokens, device=self.device))  # [b, N]
            exclude = chunk if self.cfg.exclude_history else None
            out[rows] = topk_from_scores(scores, k, exclude).cpu().numpy()
        return out

    # ---------------------------------------------------------------------- save/load
    def save(self, folder: str | Path) -> Path:
        """Write ``model.safetensors`` (weights) and ``sasrec.json`` (config, N, training log)."""
        if self.model is None:
            raise RuntimeError("nothing to save: fit or load first")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        with atomic_path(folder / WEIGHTS_FILE) as tmp:
            save_file(state, str(tmp), metadata={"format": FORMAT})
        write_json(folder / META_FILE, {"format": FORMAT, "name": self.name, "n_items": self.n_items,
                                        "config": dataclasses.asdict(self.cfg), "best_epoch": self.best_epoch,
                                        "train_log": self.train_log})
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> SASRecRecommender:
        """Rebuild a saved recommender (no pickle: weights from safetensors, settings from JSON)."""
        folder = Path(folder)
        meta = read_json(folder / META_FILE)
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{folder / META_FILE}: not a SASRec checkpoint (format {meta.get('format')!r})")
        rec = cls(from_dict(SasrecConfig, meta["config"]), device=device, name=meta.get("name"))
        rec.model = rec._build(int(meta["n_items"]))
        try:
            state = load_file(str(folder / WEIGHTS_FILE), device=str(rec.device))
            rec.model.load_state_dict(state)
        except (OSError, RuntimeError) as e:
            raise CheckpointError(f"{folder / WEIGHTS_FILE}: cannot load SASRec weights ({e})") from None
        rec.model.eval()
        rec.best_epoch, rec.train_log = int(meta.get("best_epoch", 0)), list(meta.get("train_log", []))
        return rec
