"""The human report of a run: Markdown with PNG plots (training curves, metrics chart)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onerec.io import atomic_path, write_text


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _smooth(y: list[float], window: int) -> np.ndarray:
    y = np.asarray(y, dtype=float)
    if len(y) < window or window < 2:
        return y
    kernel = np.ones(window) / window
    head = np.cumsum(y[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(y, kernel, mode="valid")])


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _plt().close(fig)
    return path


def plot_training(path: Path, history: dict[str, Any], baseline_curves: dict[str, list[float]]) -> Path:
    """Generator loss per step (raw and smoothed) with validation loss; baselines' loss per epoch."""
    plt = _plt()
    n_panels = 1 + bool(baseline_curves)
    fig, axes = plt.subplots(1, n_panels, figsize=(6 * n_panels, 4), squeeze=False)
    ax = axes[0, 0]
    steps, loss = history.get("steps", []), history.get("loss", [])
    ax.plot(steps, loss, color="tab:blue", alpha=0.25, lw=0.8, label="train (per step)")
    ax.plot(steps, _smooth(loss, max(1, len(loss) // 50)), color="tab:blue", lw=1.8, label="train (smoothed)")
    if history.get("valid"):
        ax.plot([v["step"] for v in history["valid"]], [v["loss"] for v in history["valid"]], "o-",
                color="tab:orange", label="valid")
    ax.set(title="OneRec generator: next-token loss", xlabel="step", ylabel="cross-entropy per SID token")
    ax.grid(alpha=0.3)
    ax.legend()
    if baseline_curves:
        ax = axes[0, 1]
        for name, curve in baseline_curves.items():
            ax.plot(np.arange(1, len(curve) + 1), curve, "o-", ms=3, label=name)
        ax.set(title="Baselines: training loss", xlabel="epoch", ylabel="loss")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_metrics(path: Path, models: dict[str, dict[str, float]], ks: list[int]) -> Path:
    """Grouped bars: Recall@K and NDCG@K per model."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    names = list(models)
    width = 0.8 / max(1, len(names))
    x = np.arange(len(ks))
    for ax, metric in zip(axes, ("recall", "ndcg")):
        for j, name in enumerate(names):
            vals = [models[name].get(f"{metric}@{k}", np.nan) for k in ks]
            ax.bar(x + (j - (len(names) - 1) / 2) * width, vals, width, label=name)
        ax.set_xticks(x, [f"@{k}" for k in ks])
        ax.set(title=f"{metric.upper() if metric == 'ndcg' else 'Recall'}@K (full ranking)", ylabel=metric)
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
    return _save(fig, path)


def metrics_table(models: dict[str, dict[str, float]], ks: list[int]) -> str:
    cols = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, met in models.items():
        lines.append(f"| {name} | " + " | ".join(f"{met.get(c, float('nan')):.4f}" for c in cols) + " |")
    return "\n".join(lines)


def kv_table(rows: dict[str, Any]) -> str:
    lines = ["| | |", "|---|---|"]
    for k, v in rows.items():
        lines.append(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    return "\n".join(lines)


def write_report(run_dir: Path, metrics: dict[str, Any], history: dict[str, Any],
                 baseline_curves: dict[str, list[float]], ks: list[int]) -> Path:
    """Write ``report.md`` and ``plots/*.png`` into the run directory."""
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    plot_training(plots / "training.png", history, baseline_curves)
    plot_metrics(plots / "metrics.png", metrics["models"], ks)
    parts = [
        f"# onerec run report: {run_dir.name}",
        "",
        f"Split `{metrics.get('split', 'test')}` of dataset `{metrics.get('dataset', {}).get('name', '?')}`, "
        "full ranking over all items.",
        "",
        "## Offline metrics",
        "",
        metrics_table(metrics["models"], ks),
        "",
        "![metrics](plots/metrics.png)",
        "",
        "## Training",
        "",
        "![training curves](plots/training.png)",
        "",
    ]
    for title, key in (("Dataset", "dataset"), ("Tokenizer (semantic IDs)", "tokenizer"), ("Generator", "train")):
        if metrics.get(key):
            flat = {k: v for k, v in metrics[key].items() if not isinstance(v, (list, dict))}
            parts += [f"## {title}", "", kv_table(flat), ""]
    path = run_dir / "report.md"
    write_text(path, "\n".join(parts))
    return path
