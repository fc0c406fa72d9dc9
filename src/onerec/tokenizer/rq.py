"""Semantic IDs by residual k-means (RQ-Kmeans), as in OneRec V1 and the OneRec Technical Report.

Shapes: N = items, D = vector dim, K = codebook size, L = levels.

An item vector ``x`` is quantised level by level: level 1 clusters ``x``, level 2 clusters the
residual ``x - c1[a1]``, and so on; the item's semantic ID is ``(a1, ..., aL)`` and its
reconstruction is ``c1[a1] + ... + cL[aL]``. OneRec V1 (arXiv 2502.18965) uses L = 3, K = 8192
with balanced k-means at every level; the Technical Report (arXiv 2506.13695) quotes a relative
reconstruction error of 0.0410 and codebook utilisation 1.0 at every level for RQ-Kmeans.

Items whose L codes coincide get an extra level ``0, 1, 2, ...`` (in item order) so that every
item has a unique ID, as TIGER-style generative retrieval needs to map an ID back to one item.

Worked example (L = 2, K = 4, five items)::

    level codes  [[1, 2], [1, 2], [3, 0], [1, 2], [0, 0]]
    extra level  [0, 1, 0, 2, 0]          # items 0, 1, 3 share (1, 2)
    full codes   [[1, 2, 0], [1, 2, 1], [3, 0, 0], [1, 2, 2], [0, 0, 0]]
    codebook_sizes = [4, 4, 3]            # the extra level's size is the largest group
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from onerec.config import TokenizerConfig, from_dict
from onerec.errors import ConfigError, DataError
from onerec.io import atomic_path, read_json, write_json
from onerec.tokenizer.kmeans import balanced_kmeans, kmeans, nearest_centroid, sq_norms

FORMAT = "onerec-rq-kmeans"
FORMAT_VERSION = 1
CODEBOOKS_FILE = "codebooks.safetensors"
CODES_FILE = "codes.safetensors"
META_FILE = "tokenizer.json"


# ------------------------------------------------------------------------ functional core
def check_vectors(vectors: Tensor | np.ndarray, *, dim: int | None = None, what: str = "item vectors") -> Tensor:
    """Validate and convert to a float32 ``[N, D]`` tensor (shares memory with float32 input).

    Raises:
        DataError: not 2-D, empty, wrong dim (when ``dim`` is given), or a NaN/inf (names the row).
    """
    x = torch.as_tensor(vectors)
    if x.ndim != 2 or x.shape[0] == 0:
        raise DataError(f"{what} must be a non-empty 2-D array [N, D], got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise DataError(f"{what} have dim {x.shape[1]} but the tokenizer was fitted on dim {dim}",
                        fix="encode vectors from the same content backend and content.dim the tokenizer was fitted on")
    x = x.to(torch.float32)
    bad = torch.nonzero(~torch.isfinite(x).all(dim=1)).flatten()
    if bad.numel():
        raise DataError(f"NaN or inf in {what} ({bad.numel()} rows)", row=int(bad[0]),
                        fix="recompute or drop the vectors of these items")
    return x


def _sum_sq(x: Tensor) -> float:
    """``sum(x^2)`` over a ``[N, D]`` tensor: rows in float32, the total in float64 (no [N, D] copy)."""
    return float(sq_norms(x).double().sum())


def l2_normalize(x: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm; an all-zero row stays zero. ``[N, D] -> [N, D]``."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


@dataclasses.dataclass
class RQFit:
    """Result of :func:`residual_kmeans`.

    Attributes:
        codebooks: L tensors ``[K, D]`` float32 (CPU).
        codes: int64 ``[N, L]``.
        residual: ``x - decode(codes)``, float32 ``[N, D]`` (CPU).
        level_sq_errors: ``sum ||residual||^2`` after each of the L levels.
    """

    codebooks: list[Tensor]
    codes: Tensor
    residual: Tensor
    level_sq_errors: list[float]


def residual_kmeans(x: Tensor, *, levels: int, codebook_size: int, iters: int, seed: int, balanced: bool = False,
                    device: str | torch.device | None = None) -> RQFit:
    """Fit L codebooks by k-means on successive residuals (RQ-Kmeans, OneRec Technical Report).

    Args:
        x: ``[N, D]`` float vectors (already normalised if wanted), N >= K.
        levels: L.
        codebook_size: K.
        iters: k-means iterations per level.
        seed: level ``l`` is seeded with ``seed + l``.
        balanced: use OneRec V1 balanced k-means (Algorithm 1) at every level.
        device: where to compute (results come back on the CPU).

    Returns:
        An :class:`RQFit`.
    """
    fit = balanced_kmeans if balanced else kmeans
    residual = x.to(device=device, dtype=torch.float32, copy=True)
    codebooks, codes, errors = [], [], []
    for level in range(levels):
        c, a = fit(residual, codebook_size, iters=iters, seed=seed + level)
        residual -= c[a]  # the next level quantises what this one missed
        codebooks.append(c.float().cpu())
        codes.append(a.cpu())
        errors.append(_sum_sq(residual))
    return RQFit(codebooks, torch.stack(codes, dim=1), residual.cpu(), errors)


def residual_encode(x: Tensor, codebooks: list[Tensor], *, device: str | torch.device | None = None) -> Tensor:
    """Greedy residual quantisation: nearest centroid per level. ``[N, D] -> int64 [N, L]``."""
    residual = x.to(device=device, dtype=torch.float32, copy=True)
    codes = []
    for c in codebooks:
        c = c.to(residual.device)
        a, _ = nearest_centroid(residual, c)
        residual -= c[a]
        codes.append(a.cpu())
    return torch.stack(codes, dim=1)


def residual_decode(codes: Tensor, codebooks: list[Tensor]) -> Tensor:
    """Sum of the chosen centroids. ``int64 [N, L] -> float32 [N, D]`` (columns past L ignored)."""
    out = torch.zeros(codes.shape[0], codebooks[0].shape[1], dtype=codebooks[0].dtype)
    for level, c in enumerate(codebooks):
        out += c[codes[:, level]]
    return out


def _group_ids(codes: Tensor) -> tuple[Tensor, Tensor]:
    """Group index of every row of ``codes [N, L]`` and the size of every group: ``[N]``, ``[G]``."""
    span = int(codes.max()) + 1 if codes.numel() else 1
    if span ** codes.shape[1] < 2**62:
        # One int64 key per row: unique over a vector is ~7x faster than unique(dim=0).
        key = torch.zeros(codes.shape[0], dtype=torch.long)
        for level in range(codes.shape[1]):
            key = key * span + codes[:, level]
        _, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    else:
        _, inverse, counts = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
    return inverse, counts


def add_unique_level(codes: Tensor, priority: Tensor | None = None) -> tuple[Tensor, int]:
    """Append a level that numbers the items sharing an L-level code 0, 1, 2, ...

    Args:
        codes: int64 ``[N, L]``.
        priority: optional ``[N]`` score; inside a group the highest score gets 0 (ties, and
            every item when ``None``, in item order).

    Returns:
        int64 ``[N, L + 1]`` codes, unique per row, and the extra level's size (the largest
        group; 1 when the L-level codes were already unique).
    """
    inverse, counts = _group_ids(codes)
    order = torch.arange(codes.shape[0])
    if priority is not None:
        if priority.shape != (codes.shape[0],):
            raise ValueError(f"priority has shape {tuple(priority.shape)}, expected ({codes.shape[0]},)")
        order = torch.sort(-priority.double(), stable=True).indices
    order = order[torch.sort(inverse[order], stable=True).indices]  # groups contiguous, priority inside
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(inverse)
    rank[order] = torch.arange(codes.shape[0]) - starts[inverse[order]]
    return torch.cat([codes, rank.unsqueeze(1)], dim=1), int(counts.max())


def code_metrics(codes: Tensor, codebook_sizes: list[int]) -> dict[str, Any]:
    """Per-level utilisation and entropy, and collisions of the full L-level code.

    Args:
        codes: int64 ``[N, L]``.
        codebook_sizes: K per level, length L.

    Returns:
        ``utilisation`` (used codes / K), ``entropy`` (nats), ``entropy_norm`` (entropy / log K):
        lists of length L; ``distinct_codes``; ``collision_rate`` (share of items whose code is
        shared with another item); ``max_group`` (largest set of items sharing a code).
    """
    util, ent, ent_norm = [], [], []
    for level, k in enumerate(codebook_sizes):
        counts = torch.bincount(codes[:, level], minlength=k).double()
        p = counts[counts > 0] / counts.sum()
        h = float(-(p * p.log()).sum())
        util.append(int((counts > 0).sum()) / k)
        ent.append(h)
        ent_norm.append(h / math.log(k) if k > 1 else 1.0)
    inverse, counts = _group_ids(codes)
    return {"utilisation": util, "entropy": ent, "entropy_norm": ent_norm, "distinct_codes": int(counts.numel()),
            "collision_rate": float((counts[inverse] > 1).double().mean()), "max_group": int(counts.max())}


def reconstruction_metrics(x: Tensor, residual: Tensor) -> dict[str, float]:
    """Reconstruction error from the input ``x [N, D]`` and the residual ``x - x_hat [N, D]``.

    ``recon_mse`` is the mean over items and dims of ``(x - x_hat)^2``; ``recon_rel`` is
    ``sum ||x - x_hat||^2 / sum ||x||^2`` (the Technical Report's 0.0410 is presumably this kind of
    ratio on unit vectors, where it equals the mean per-item ratio; the report does not define it).
    """
    err, total = _sum_sq(residual), _sum_sq(x)
    return {"recon_mse": err / residual.numel(), "recon_rel": err / total if total > 0 else 0.0}


# ------------------------------------------------------------------------------- class
class ResidualKMeansTokenizer:
    """Fits, applies, saves and loads RQ-Kmeans semantic IDs.

    Example::

        tok = ResidualKMeansTokenizer(TokenizerConfig(levels=3, codebook_size=256))
        codes = tok.fit(item_vectors)        # int64 [N, 4]: 3 levels + the unique level
        tok.metrics["recon_rel"], tok.codebook_sizes   # e.g. 0.05, [256, 256, 256, 5]
        tok.save("run/tokenizer"); tok2 = ResidualKMeansTokenizer.load("run/tokenizer")
        tok2.encode(new_vectors)             # int64 [M, 3] (no unique level for new items)

    Attributes:
        config: the :class:`TokenizerConfig` it was built with.
        codebooks: L tensors ``[K, D]`` float32 (CPU), in the normalised space when
            ``config.normalize``.
        codes: int64 ``[N, L(+1)]`` of the items it was fitted on, or ``None``.
        extra_level_size: size of the unique level (``None`` without it or before fit).
        metrics: fit metrics (see :meth:`fit`).
    """

    def __init__(self, config: TokenizerConfig | None = None) -> None:
        self.config = config or TokenizerConfig()
        if self.config.levels < 1 or self.config.codebook_size < 1 or self.config.iters < 0:
            raise ConfigError("tokenizer.levels and tokenizer.codebook_size must be >= 1 and tokenizer.iters >= 0")
        self.codebooks: list[Tensor] = []
        self.codes: Tensor | None = None
        self.extra_level_size: int | None = None
        self.metrics: dict[str, Any] = {}

    # -- properties
    @property
    def is_fitted(self) -> bool:
        return bool(self.codebooks)

    @property
    def dim(self) -> int:
        """Dimension D of the vectors it quantises."""
        self._require_fitted()
        return int(self.codebooks[0].shape[1])

    @property
    def codebook_sizes(self) -> list[int]:
        """Vocabulary size of every code position: ``[K] * L`` plus the unique level's size if any."""
        self._require_fitted()
        sizes = [int(c.shape[0]) for c in self.codebooks]
        return sizes + ([self.extra_level_size] if self.extra_level_size is not None else [])

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("the tokenizer is not fitted: call fit() or ResidualKMeansTokenizer.load()")

    def _prepare(self, vectors: Tensor | np.ndarray, dim: int | None) -> Tensor:
        x = check_vectors(vectors, dim=dim)
        return l2_normalize(x) if self.config.normalize else x

    # -- fit / encode / decode
    def fit(self, vectors: Tensor | np.ndarray, *, device: str | torch.device | None = None,
            popularity: Tensor | np.ndarray | None = None) -> Tensor:
        """Fit the codebooks on the catalogue and return every item's semantic ID.

        Args:
            vectors: ``[N, D]`` item vectors (tensor or array), N >= K.
            device: where k-means runs (results are kept on the CPU).
            popularity: ``[N]`` train-split interaction counts; needed by
                ``collision_order='popularity'`` (the unique level numbers the most popular item of
                each group 0).

        Returns:
            int64 ``[N, L + 1]`` with the unique level (``config.unique_level``), else ``[N, L]``.
            Also sets ``self.metrics``: ``utilisation``/``entropy``/``entropy_norm`` per level,
            ``rel_error_by_level`` (``recon_rel`` after 1..L levels), ``recon_mse``, ``recon_rel``,
            ``distinct_codes``, ``collision_rate``, ``max_group`` (before the unique level),
            ``extra_level_size``, ``n_items``, ``dim``.

        Raises:
            DataError: NaN/inf (names the row), or fewer items than ``codebook_size``.
        """
        cfg = self.config
        x = self._prepare(vectors, None)
        if x.shape[0] < cfg.codebook_size:
            raise DataError(f"{x.shape[0]} items but tokenizer.codebook_size={cfg.codebook_size}: every code "
                            "needs at least one item", fix=f"lower tokenizer.codebook_size to at most {x.shape[0]}")
        result = residual_kmeans(x, levels=cfg.levels, codebook_size=cfg.codebook_size, iters=cfg.iters,
                                 seed=cfg.seed, balanced=cfg.balanced, device=device)
        self.codebooks, codes = result.codebooks, result.codes
        self.metrics = self._fit_metrics(x, result)
        if cfg.unique_level:
            codes, self.extra_level_size = add_unique_level(codes, self._collision_priority(result, popularity))
        self.metrics["extra_level_size"] = self.extra_level_size
        self.codes = codes
        return codes

    def _collision_priority(self, result: RQFit, popularity: Tensor | np.ndarray | None) -> Tensor | None:
        order = self.config.collision_order
        if order == "item":
            return None
        if order == "centroid":
            return -result.residual.pow(2).sum(1)
        if order != "popularity":
            raise ConfigError(f"tokenizer.collision_order={order!r} is not one of item, popularity, centroid")
        if popularity is None:
            raise ConfigError("tokenizer.collision_order=popularity needs the items' train-split counts: "
                              "pass popularity= to fit(), or set tokenizer.collision_order=item")
        return torch.as_tensor(np.asarray(popularity), dtype=torch.float64)  # add_unique_level checks the shape

    def _fit_metrics(self, x: Tensor, result: RQFit) -> dict[str, Any]:
        metrics: dict[str, Any] = {"n_items": int(x.shape[0]), "dim": int(x.shape[1])}
        metrics.update(code_metrics(result.codes, [int(c.shape[0]) for c in result.codebooks]))
        total = _sum_sq(x) or 1.0
        metrics["rel_error_by_level"] = [e / total for e in result.level_sq_errors]
        metrics.update(reconstruction_metrics(x, result.residual))
        return metrics

    def encode(self, vectors: Tensor | np.ndarray, *, device: str | torch.device | None = None) -> Tensor:
        """Semantic IDs of (new) items: nearest centroid per level on the residual, greedily.

        The unique level is not assigned: it depends on the whole catalogue (use :attr:`codes`
        for the items the tokenizer was fitted on). With plain k-means, ``encode`` of the fitted
        items equals the first L columns of :attr:`codes`; balanced k-means' assignment is not
        nearest-centroid, so there they may differ.

        Args:
            vectors: ``[M, D]`` item vectors.

        Returns:
            int64 ``[M, L]`` on the CPU.
        """
        self._require_fitted()
        return residual_encode(self._prepare(vectors, self.dim), self.codebooks, device=device)

    def decode(self, codes: Tensor | np.ndarray) -> Tensor:
        """Reconstructed vectors (in the normalised space when ``config.normalize``).

        Args:
            codes: int ``[M, L]`` or ``[M, L + 1]`` (the unique level is ignored).

        Returns:
            float32 ``[M, D]``.
        """
        self._require_fitted()
        codes = torch.as_tensor(codes, dtype=torch.long)
        levels = len(self.codebooks)
        if codes.ndim != 2 or codes.shape[1] < levels:
            raise DataError(f"codes must have shape [M, {levels}] or [M, {levels + 1}], got {tuple(codes.shape)}")
        for level, k in enumerate(self.codebook_sizes[:levels]):
            col = codes[:, level]
            if col.numel() and (int(col.min()) < 0 or int(col.max()) >= k):
                raise DataError(f"level {level} codes must be in [0, {k}), got {int(col.min())}..{int(col.max())}")
        return residual_decode(codes, self.codebooks)

    # -- persistence
    def save(self, folder: str | Path) -> None:
        """Write ``codebooks.safetensors``, ``codes.safetensors`` (fitted items) and ``tokenizer.json``."""
        self._require_fitted()
        folder = Path(folder)
        tensors = {f"level_{i}": c.contiguous() for i, c in enumerate(self.codebooks)}
        with atomic_path(folder / CODEBOOKS_FILE) as tmp:
            save_file(tensors, str(tmp))
        if self.codes is not None:
            with atomic_path(folder / CODES_FILE) as tmp:
                save_file({"codes": self.codes.contiguous()}, str(tmp))
        write_json(folder / META_FILE, {
            "format": FORMAT, "version": FORMAT_VERSION, "config": dataclasses.asdict(self.config),
            "dim": self.dim, "codebook_sizes": self.codebook_sizes, "extra_level_size": self.extra_level_size,
            "metrics": self.metrics})

    @classmethod
    def load(cls, folder: str | Path, *, dim: int | None = None) -> ResidualKMeansTokenizer:
        """Load a tokenizer written by :meth:`save`.

        Args:
            folder: the folder passed to :meth:`save`.
            dim: if given, the vector dim the caller will encode; a mismatch is an error now
                rather than at the first :meth:`encode`.

        Raises:
            DataError: missing or inconsistent files, or ``dim`` differs from the fitted dim.
        """
        folder = Path(folder)
        meta = read_json(folder / META_FILE)
        if meta.get("format") != FORMAT:
            raise DataError(f"not an RQ-Kmeans tokenizer (format {meta.get('format')!r})", path=str(folder / META_FILE),
                            fix="point to the folder written by `onerec tokenize`")
        tok = cls(from_dict(TokenizerConfig, meta["config"]))
        tok.codebooks = _read_codebooks(folder / CODEBOOKS_FILE, meta)
        if dim is not None and dim != meta["dim"]:
            raise DataError(f"the tokenizer was fitted on dim {meta['dim']} vectors, not {dim}", path=str(folder),
                            fix="refit the tokenizer on the current content vectors (`onerec tokenize`)")
        tok.extra_level_size = meta.get("extra_level_size")
        tok.metrics = meta.get("metrics", {})
        if (folder / CODES_FILE).exists():
            tok.codes = _read_safetensors(folder / CODES_FILE)["codes"]
        return tok


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    if not path.exists():
        raise DataError("file not found", path=str(path), fix="save the tokenizer again (`onerec tokenize`)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise DataError(f"not a readable safetensors file ({e})", path=str(path),
                        fix="the file is truncated; save the tokenizer again") from None


def _read_codebooks(path: Path, meta: dict[str, Any]) -> list[Tensor]:
    """Codebooks ``level_0 .. level_{L-1}``, checked against the sizes and dim in tokenizer.json."""
    tensors = _read_safetensors(path)
    levels = meta["config"]["levels"]
    sizes = meta["codebook_sizes"]
    books = []
    for level in range(levels):
        c = tensors.get(f"level_{level}")
        if c is None or tuple(c.shape) != (sizes[level], meta["dim"]):
            got = None if c is None else tuple(c.shape)
            raise DataError(f"codebook level_{level} has shape {got}, tokenizer.json says "
                            f"({sizes[level]}, {meta['dim']})", path=str(path),
                            fix="the folder mixes files from different fits; save the tokenizer again")
        books.append(c.float())
    return books
