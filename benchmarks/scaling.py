"""A scaling curve of OneRec-V2's lazy decoder-only generator: final valid loss against parameters.

One fixed simulated world is built (``onerec data``) and tokenized (``onerec tokenize``) once; then each
size preset ``lazy-0.1m`` .. ``lazy-10m`` (model keys only) is trained on the same train split with the
same token budget and schedule: ``train.objective=auto`` (every position of a user's sequence in one
pass), the same epochs, batch (``train.batch_size`` targets a step), warm-up + cosine learning rate, seed.
Each size's final loss is the plain next-token cross-entropy (mean over the D semantic-ID levels, the
training loss without label smoothing) on the WHOLE valid split (one next item per user), not the
first 2,000 users ``onerec train``'s metrics.json reads. Then L(N) = a + b / N^alpha is fitted by least
squares (a grid over alpha, linear least squares for a and b at each alpha), to the total parameters
and, separately, to the non-embedding parameters (the context processor, decoder blocks and final norm:
no semantic-ID embeddings, bias tables or output heads), beside a straight line in log10 N (its slope per
decade and that slope's standard error: does the loss fall with size at all?). For scale, the results also hold
the valid loss of a history-free model (each level's code given the codes before it, counted over the train
targets).

    python benchmarks/scaling.py --workdir DIR     # the study: 1M events, 2 epochs (1-2 hours of one shared core)
    python benchmarks/scaling.py --workdir DIR --resume --first-seed 1 --sizes lazy-0.1m,lazy-0.3m  # seed 1, added
    python benchmarks/scaling.py --quick           # a tiny world and 8 steps a size (0.5-2 minutes)
    python benchmarks/scaling.py --n-events 10000000 --n-users 100000 --device cuda   # a larger world, on a GPU
    python benchmarks/scaling.py --workdir DIR --sizes ''   # only build (simulate, tokenize) the world; no results
    python benchmarks/scaling.py --workdir DIR --resume ...  # the same call again after a stop: goes on where it was
    python benchmarks/scaling.py --workdir DIR --resume --sizes '' --merge OTHER.json --out FILE  # join, refit

Writes ``benchmarks/results/scaling.json`` (``scaling.quick.json`` with --quick, or ``--out``) after every trained
point, so ``--resume`` keeps the points already measured on the same world and settings and trains only the
missing ones (it refuses a file measured otherwise); a point whose training was stopped continues from its latest
checkpoint (every ``--checkpoint-every`` steps, in ``DIR/<size>-s<seed>/checkpoints``), which is how a size that takes
longer than a session (lazy-3m and lazy-10m at 10M events on a CPU) is trained; and the plot
``docs/benchmarks/scaling.png`` (``benchmarks/results/scaling.quick.png``; beside ``--out`` when that is given).
``--workdir`` keeps the world (simulated and tokenized once) for later calls; without it, a temporary folder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from onerec.bench.machine import machine_info
from onerec.config import load_config, to_dict
from onerec.data.splits import load_splits
from onerec.features import EvalExamples
from onerec.io import read_json
from onerec.model import build_generator
from onerec.pipeline import load_codes, make_featurizer, training_data
from onerec.train import train_generator
from onerec.train.checkpoint import latest_checkpoint, model_meta
from onerec.train.loop import validation_loss

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PLOT = ROOT / "docs" / "benchmarks" / "scaling.png"
SIZES = ["lazy-0.1m", "lazy-0.3m", "lazy-1m", "lazy-3m", "lazy-10m"]
# OneRec-V2 (arXiv 2508.20900), its lazy decoder-only dense family: L = 3.13 + 3660 / N^0.489
V2_FIT = {"a": 3.13, "b": 3660.0, "alpha": 0.489}
WORLD = {"full": {"n_users": 10000, "n_items": 2000, "n_events": 1_000_000},
         "quick": {"n_users": 600, "n_items": 500, "n_events": 20_000}}
NON_EMBEDDING = ("context.", "decoder.", "dec_norm.")


def onerec(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "onerec.cli", *args], check=True, stdout=subprocess.DEVNULL)


def history_free_loss(run: Path) -> float:
    """The valid loss of a model that ignores the user: each level's code given the codes before it, counted over
    the train split's targets (every positive but a user's first, as the generator trains on), add-0.5 smoothed;
    the same mean over the D levels as the generator's loss. What the generator gains over it comes from the
    history."""
    codes = load_codes(run)
    splits = load_splits(run / "data" / "split", n_items=len(codes))
    train = splits["train"]["items"].combine_chunks()
    offsets, items = train.offsets.to_numpy(), train.values.to_numpy()
    first = np.zeros(len(items), dtype=bool)
    first[offsets[:-1][np.diff(offsets) > 0]] = True
    tc = codes[items[~first]]
    vc = codes[EvalExamples(splits["valid"], make_featurizer(run, load_config().model, codes)).first_target]
    sizes = codes.max(axis=0) + 1
    total = 0.0
    for d in range(codes.shape[1]):
        def key(c: np.ndarray, d: int = d) -> np.ndarray:  # the prefix (s_1 .. s_d) as one integer
            k = np.zeros(len(c), dtype=np.int64)
            for i in range(d + 1):
                k = k * sizes[i] + c[:, i]
            return k
        counts: dict[int, int] = dict(zip(*np.unique(key(tc), return_counts=True), strict=True))
        prefix = dict(zip(*np.unique(key(tc[:, :d], d - 1), return_counts=True), strict=True)) if d else {}
        num = np.array([counts.get(int(k), 0) + 0.5 for k in key(vc)])
        den = np.array([prefix.get(int(k), 0) if d else len(tc) for k in key(vc[:, :d], d - 1)]) + 0.5 * sizes[d]
        total += float(-np.log(num / den).mean())
    return total / codes.shape[1]


def build_world(run: Path, world: dict) -> dict:
    """Simulate and tokenize the world once (reused when ``run`` already holds it with the same settings)."""
    sim = [f"data.sim.{k}={v}" for k, v in world.items()]
    marker = run / "scaling_world.json"
    if marker.exists() and read_json(marker) == world and (run / "tokenizer" / "codes.parquet").exists():
        print(f"world: reusing {run}", flush=True)
    else:
        t0 = time.perf_counter()
        onerec("data", "--out", str(run), *sim, "train.threads=1")
        onerec("tokenize", str(run), "train.threads=1")
        marker.write_text(json.dumps(world))
        print(f"world: simulated and tokenized in {time.perf_counter() - t0:.0f} s", flush=True)
    summary = read_json(run / "data" / "summary.json")
    tok = read_json(run / "tokenizer" / "metrics.json")
    return {"settings": world, "commands": [f"onerec data --out RUN {' '.join(sim)}", "onerec tokenize RUN"],
            "interactions": summary["interactions"], "positives": summary["positives"],
            "train_users": summary["train_users"], "valid_examples": summary["valid_examples"],
            "codebook_sizes": tok["codebook_sizes"],
            "history_free_valid_loss": round(history_free_loss(run), 5)}


def code_state() -> dict:
    """The commit the run started from and the files under src/onerec that differed from it (others may be
    editing the tree while a study runs)."""
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "src_changed": [line[3:] for line in git("status", "--porcelain", "src/onerec").splitlines()]}


def training_parts(out: Path, plan: dict, resume: bool) -> tuple[list[dict], int | None]:
    """The parts a point's training ran in so far (``out/parts.json``: each part's first step, date and code) and the
    step a resumed part continues from (None: a fresh start). A point resumes only with ``--resume``, from the latest
    checkpoint in ``out/checkpoints``, and only under the plan (seed, lr, schedule, batch, steps) its checkpoints
    were made with; a fresh start forgets the old parts."""
    ckpt = latest_checkpoint(out) if resume else None
    record = out / "parts.json"
    if ckpt is None or not record.exists():
        return [], None
    old = read_json(record)
    if old.get("plan") != plan:
        sys.exit(f"{out}: its checkpoints were made under {old.get('plan')}, this call asks {plan}. Fix: the same "
                 f"settings as its first call, or delete {out / 'checkpoints'} to train the point from the start")
    return old["parts"], int(ckpt.name.split("-")[-1])


def train_point(run: Path, preset: str, seed: int, lr: float, args: argparse.Namespace, out: Path) -> dict:
    """Train one size on the run's world; its whole-valid-split loss, parameters, seconds and targets.

    With ``--checkpoint-every`` the training writes checkpoints, and with ``--resume`` a point whose training was
    stopped (a session's end) continues from its latest one: the train loop restores weights, optimizer, RNG, loss
    history and seconds, so the resumed point is the uninterrupted one (``tests/train/test_resume.py``)."""
    overrides = [f"train.seed={seed}", f"train.lr={lr}", f"train.epochs={args.epochs}",
                 f"train.batch_size={args.batch_size}", f"train.warmup_steps={args.warmup}",
                 f"model.dropout={args.dropout}", "train.objective=auto", "train.threads=1", "train.logger=none",
                 f"train.checkpoint_every={args.checkpoint_every or 1_000_000_000}", f"train.device={args.device}"]
    if args.max_steps:
        overrides.append(f"train.max_steps={args.max_steps}")
    plan = {"preset": preset, "seed": seed, "lr": lr, "epochs": args.epochs, "batch_size": args.batch_size,
            "warmup": args.warmup, "dropout": args.dropout, "max_steps": args.max_steps}
    parts, from_step = training_parts(out, plan, args.resume)
    # the model code each part was trained with (others may edit the tree between sessions)
    parts.append({"from_step": from_step or 0, "date": dt.date.today().isoformat(), "code": code_state()})
    out.mkdir(parents=True, exist_ok=True)
    (out / "parts.json").write_text(json.dumps({"plan": plan, "parts": parts}, indent=1) + "\n")
    if from_step is not None:
        print(f"{preset} seed {seed}: resuming at step {from_step} (part {len(parts)})", flush=True)
    cfg = load_config(preset, overrides=overrides)
    codes, _, sizes, _, train_ex, valid_ex = training_data(run, cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_generator(cfg.model, sizes)
    total = model.num_parameters()
    non_emb = sum(p.numel() for n, p in model.named_parameters() if n.startswith(NON_EMBEDDING))
    result = train_generator(model, train_ex, cfg.train, out, meta=model_meta(cfg.model, sizes, n_items=len(codes)),
                             progress=False, resume=from_step is not None)
    steps = len(result.loss)
    rows_per_step = train_ex.rows_per_batch(cfg.train.batch_size)
    epochs_done = min(steps * rows_per_step / len(train_ex), float(args.epochs))
    t0 = time.perf_counter()
    valid = validation_loss(model, valid_ex, torch.device(args.device), limit=len(valid_ex))
    valid_s = time.perf_counter() - t0
    targets = round(train_ex.targets * epochs_done)
    depth = codes.shape[1]
    loss = np.asarray(result.loss)
    every = max(1, steps // 100)
    curve = [[int(s), round(float(loss[max(0, s - every):s].mean()), 4)] for s in range(every, steps + 1, every)]
    return {"preset": preset, "seed": seed, "lr": lr, "parameters": total, "non_embedding_parameters": non_emb,
            "model": {k: v for k, v in to_dict(cfg.model).items()
                      if k in ("d_model", "n_heads", "dec_layers", "ffn_hidden", "kv_heads", "dropout")},
            "valid_loss": round(valid, 5), "final_train_loss": round(float(loss[-50:].mean()), 5),
            "steps": steps, "epochs": round(epochs_done, 4), "targets_seen": targets, "tokens_seen": targets * depth,
            "train_seconds": round(result.seconds, 1), "valid_seconds": round(valid_s, 1),
            "targets_per_s": round(targets / result.seconds, 1),
            "code": parts[0]["code"], "parts": parts, "train_loss_curve": curve}


def train_flops_per_target(run: Path, preset: str, batch_size: int) -> float:
    """Forward + backward FLOPs per target of the size's first training batch of ``batch_size`` targets (the same
    rows for every size), counted by ``torch.utils.flop_counter.FlopCounterMode`` from shapes: every matrix
    multiply, attention included, at 2 FLOPs a multiply-add. The model runs its reference layers
    (:func:`onerec.model.layers.use_reference`), so that no fused kernel hides a multiply from the counter.
    Depends on the size and the data only, not on the trained weights."""
    from onerec.model.layers import use_reference

    cfg = load_config(preset, overrides=["model.dropout=0.0", "train.objective=auto"])
    _, _, sizes, _, ex, _ = training_data(run, cfg)
    batch = ex.batch(np.arange(min(ex.rows_per_batch(batch_size), len(ex))))
    torch.manual_seed(0)
    model = build_generator(cfg.model, sizes).train()
    use_reference(model)
    counter = FlopCounterMode(display=False)
    with counter:
        model(batch).backward()
    return counter.get_total_flops() / int(batch["seq_target"].sum())


def fit_power_law(n: np.ndarray, loss: np.ndarray) -> dict:
    """L = a + b / N^alpha by least squares: for each alpha of a fine grid, (a, b) by linear least squares
    on [1, N^-alpha]; the alpha of the smallest squared error (b >= 0). Also the fit's residuals."""
    best = None
    grid = np.round(np.arange(0.005, 2.0001, 0.0005), 4)
    for alpha in grid:
        x = n ** -alpha
        design = np.stack([np.ones_like(x), x], axis=1)
        (a, b), *_ = np.linalg.lstsq(design, loss, rcond=None)
        if b < 0:
            continue
        sse = float(((design @ np.array([a, b]) - loss) ** 2).sum())
        if best is None or sse < best[0]:
            best = (sse, float(alpha), float(a), float(b))
    if best is None:
        return {"ok": False, "why": "no alpha in (0, 2] gives b >= 0: the loss does not fall with N"}
    sse, alpha, a, b = best
    pred = a + b * n ** -alpha
    return {"ok": True, "a": round(a, 5), "b": float(f"{b:.5g}"), "alpha": round(alpha, 4),
            "rmse": float(f"{math.sqrt(sse / len(n)):.3g}"),
            "at_grid_edge": bool(alpha <= grid[0] or alpha >= grid[-1]),
            "residuals": [round(float(r), 5) for r in loss - pred]}


def fits(points: list[dict], sizes: list[str]) -> dict:
    """Fits over the sizes' mean valid loss (over seeds): on total and on non-embedding parameters, and the
    same on every size but the largest (to show how much the largest point moves the curve)."""
    rows = [[p for p in points if p["preset"] == s] for s in sizes]
    rows = [r for r in rows if r]
    if len(rows) < 3:
        return {}
    loss = np.array([np.mean([p["valid_loss"] for p in r]) for r in rows])
    out = {"points": [r[0]["preset"] for r in rows], "mean_valid_loss": [round(float(v), 5) for v in loss]}
    # the plainest question first: does the loss fall with log N at all? (least squares slope per decade, its
    # standard error from the residuals; every seed's point counts, so the seed noise enters the error)
    every = [p for r in rows for p in r]
    x = np.log10([p["parameters"] for p in every])
    y = np.array([p["valid_loss"] for p in every])
    if len(every) > 2:
        slope, icpt = np.polyfit(x, y, 1)
        res = y - (slope * x + icpt)
        se = math.sqrt(float(res @ res) / (len(x) - 2) / float(((x - x.mean()) ** 2).sum()))
        out["log_linear"] = {"slope_per_decade": round(float(slope), 5), "stderr": round(se, 5),
                             "intercept_at_1": round(float(icpt), 5), "points": len(every)}
    for key, name in (("parameters", "total"), ("non_embedding_parameters", "non_embedding")):
        n = np.array([r[0][key] for r in rows], dtype=float)
        out[name] = fit_power_law(n, loss)
        if len(rows) >= 4:
            out[f"{name}_without_largest"] = fit_power_law(n[:-1], loss[:-1])
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, fit = result["points"], result["fit"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    seeds = sorted({p["seed"] for p in points})
    for seed, marker in zip(seeds, "os^v"):
        ps = [p for p in points if p["seed"] == seed]
        ax.scatter([p["parameters"] for p in ps], [p["valid_loss"] for p in ps], marker=marker, zorder=3,
                   label=f"measured (seed {seed})")
    if fit.get("total", {}).get("ok"):
        f = fit["total"]
        n = np.array([p["parameters"] for p in points], dtype=float)
        grid = np.geomspace(n.min() / 1.5, n.max() * 1.5, 200)
        ax.plot(grid, f["a"] + f["b"] * grid ** -f["alpha"], "k-", lw=1,
                label=f"fit: {f['a']:.3f} + {f['b']:.3g} / N^{f['alpha']:.3f}"
                + (" (alpha at the grid's edge)" if f["at_grid_edge"] else ""))
        losses = [p["valid_loss"] for p in points]
        span = max(losses) - min(losses)
        if f["a"] > min(losses) - 2 * span:  # the asymptote, where it is near the measured range
            ax.axhline(f["a"], color="gray", ls=":", lw=1, label=f"a = {f['a']:.3f}")
        ax.set_ylim(min(min(losses), f["a"] if f["a"] > min(losses) - 2 * span else min(losses)) - 0.1 * span,
                    max(losses) + 0.7 * span)
    if "log_linear" in fit:
        ll = fit["log_linear"]
        ax.plot([], [], " ", label=f"slope {ll['slope_per_decade']:+.4f} +- {ll['stderr']:.4f} per decade of N")
    ax.set_xscale("log")
    ax.set_xlabel("parameters N (total)")
    ax.set_ylabel("final valid loss (nats per semantic-ID token)")
    ax.set_title("lazy decoder-only, one fixed simulated world")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    for p in points:
        if p["seed"] != seeds[0]:
            continue
        curve = np.array(p["train_loss_curve"])
        per_step = p["targets_seen"] / max(p["steps"], 1)
        ax2.plot(curve[:, 0] * per_step, curve[:, 1], lw=1, label=p["preset"])
    free = result["world"].get("history_free_valid_loss")
    if free is not None:
        ax2.axhline(free, color="gray", ls="--", lw=1, label=f"history-free valid loss {free:.3f}")
    ax2.set_xlabel("training targets seen")
    ax2.set_ylabel("training loss (mean over logged steps)")
    ax2.set_title(f"training loss, seed {seeds[0]}")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a tiny world and at most 8 steps a size")
    ap.add_argument("--sizes", default=",".join(SIZES), help="comma-separated lazy presets")
    ap.add_argument("--seeds", type=int, default=1, help="how many train.seeds for every size")
    ap.add_argument("--first-seed", type=int, default=0, help="the first train.seed (then +1, ...)")
    ap.add_argument("--epochs", type=int, default=2, help="passes over the train split, the same for every size")
    ap.add_argument("--batch-size", type=int, default=256, help="training targets a step")
    ap.add_argument("--warmup", type=int, default=100, help="linear warm-up steps, then cosine to 10%% of lr")
    ap.add_argument("--lr", type=float, default=0.002, help="peak AdamW learning rate of every size")
    ap.add_argument("--lr-by-size", default="", help="exceptions, e.g. lazy-10m=0.001,lazy-3m=0.0015")
    ap.add_argument("--dropout", type=float, default=0.0, help="model.dropout of every size (not the presets' 0.1)")
    ap.add_argument("--max-steps", type=int, default=None, help="cap on steps (--quick: 8)")
    ap.add_argument("--n-users", type=int, default=None, help="the world's users (default 10,000; --quick 600)")
    ap.add_argument("--n-items", type=int, default=None, help="the world's videos (default 2,000; --quick 500)")
    ap.add_argument("--n-events", type=int, default=None, help="the world's exposures (default 1M; --quick 20,000)")
    ap.add_argument("--device", default="cpu", help="torch device of training and validation, e.g. cuda")
    ap.add_argument("--workdir", type=Path, default=None, help="run folder of the world (default: a temp folder)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the results file's points of the same settings, and continue a point whose training "
                         "was stopped from its latest checkpoint")
    ap.add_argument("--merge", type=Path, nargs="+", default=[],
                    help="results files of the same world and settings whose points join --out's (e.g. another "
                         "seed, trained in another process); with --resume --sizes '' nothing is trained")
    ap.add_argument("--checkpoint-every", type=int, default=500,
                    help="steps between a point's checkpoints (0: none), for --resume across sessions")
    ap.add_argument("--out", type=Path, default=None, help="results file")
    ap.add_argument("--plot", type=Path, default=None, help="PNG (default: docs/benchmarks/scaling.png; beside --out)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.quick and args.max_steps is None:
        args.max_steps = 8
    out = args.out or RESULTS / ("scaling.quick.json" if args.quick else "scaling.json")
    # another results file gets its plot beside it, not over the study's
    png = args.plot or (out.with_suffix(".png") if args.out else RESULTS / "scaling.quick.png" if args.quick else PLOT)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    lr_by = {k: float(v) for k, v in (item.split("=") for item in args.lr_by_size.split(",") if item)}
    world = {**WORLD["quick" if args.quick else "full"],
             **{k: v for k, v in (("n_users", args.n_users), ("n_items", args.n_items), ("n_events", args.n_events))
                if v is not None}}
    settings = {"epochs": args.epochs, "batch_size": args.batch_size, "warmup_steps": args.warmup,
                "dropout": args.dropout, "max_steps": args.max_steps, "lr": args.lr, "lr_by_size": lr_by,
                "objective": "auto (all_positions)", "schedule": "linear warm-up, cosine to 10% of lr",
                "optimizer": "AdamW betas (0.9, 0.98), weight decay 0.01, grad clip 1.0", "threads": 1,
                "device": args.device}
    command = "python benchmarks/scaling.py " + shlex.join(sys.argv[1:])
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="onerec-scaling-")
        args.workdir = Path(tmp.name)
    args.workdir.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    world_info = build_world(args.workdir / "world", world)
    if not sizes and not args.resume:  # only the world: no results file written (none overwritten)
        print(f"--sizes '': the world is in {args.workdir / 'world'}; nothing trained, no results written")
        return
    points, commands = [], [command]
    free = ("lr_by_size", "device")  # may differ between the calls of one study

    def same(d: dict) -> dict:
        return {k: v for k, v in d.items() if k not in free}

    if args.resume and out.exists():
        old = json.loads(out.read_text())
        if old["world"]["settings"] == world and same(old["settings"]) == same(settings):
            points = old["points"]
            commands = [*old.get("commands", []), command]
            settings["lr_by_size"] = {**old["settings"].get("lr_by_size", {}), **lr_by}
            print(f"resume: {len(points)} points kept from {out}", flush=True)
        else:
            sys.exit(f"{out} was measured on another world or with other settings; --resume would overwrite it. "
                     "Fix: the same world and settings as its commands, or another --out")
    for other in args.merge:  # points measured apart (another process, e.g. another seed) on the same world
        part = json.loads(other.read_text())
        if part["world"]["settings"] != world or same(part["settings"]) != same(settings):
            sys.exit(f"{other} was measured on another world or with other settings than {out}. Fix: merge files "
                     "of one study only")
        have = {(p["preset"], p["seed"]) for p in points}
        points.extend(p for p in part["points"] if (p["preset"], p["seed"]) not in have)
        commands.extend(c for c in part.get("commands", []) if c not in commands)
        settings["lr_by_size"] = {**part["settings"].get("lr_by_size", {}), **settings["lr_by_size"]}
        print(f"merge: {len(part['points'])} points of {other}", flush=True)
    result = {}

    def save() -> None:
        nonlocal result
        order = {s: i for i, s in enumerate(SIZES)}
        points.sort(key=lambda p: (order.get(p["preset"], 99), p["seed"]))
        result = {"benchmark": "scaling", "date": dt.date.today().isoformat(), "commands": commands,
                  "machine": machine_info("2-core AMD EPYC, no GPU; the two cores shared with other jobs "
                                          "(one torch thread per process)"),
                  "world": world_info, "settings": settings, "loss": "mean next-token cross-entropy over the "
                  "D semantic-ID levels (nats), on every example of the valid split", "reference_v2": V2_FIT,
                  "points": points, "fit": fits(points, [s for s in SIZES if any(p["preset"] == s for p in points)])}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")

    flops: dict[str, float] = {}

    def add_flops(p: dict) -> None:
        if p["preset"] not in flops:
            flops[p["preset"]] = train_flops_per_target(args.workdir / "world", p["preset"], args.batch_size)
        p["train_flops_per_target"] = round(flops[p["preset"]])
        p["train_flops"] = float(f"{flops[p['preset']] * p['targets_seen']:.4g}")

    for p in points:  # counted again: the same count for every point of a size
        add_flops(p)
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for preset in sizes:
            lr = lr_by.get(preset, args.lr)
            if any(p["preset"] == preset and p["seed"] == seed and p["lr"] == lr for p in points):
                continue
            points[:] = [p for p in points if not (p["preset"] == preset and p["seed"] == seed)]
            p = train_point(args.workdir / "world", preset, seed, lr, args, args.workdir / f"{preset}-s{seed}")
            add_flops(p)
            points.append(p)
            print(f"{preset:10s} seed {seed} lr {lr:g}: {p['parameters']:>10,} params  valid loss "
                  f"{p['valid_loss']:.4f}  train loss {p['final_train_loss']:.4f}  {p['train_seconds']:.0f} s "
                  f"({p['targets_per_s']:.0f} targets/s)", flush=True)
            save()
    save()
    if points:
        plot(result, png)
    for name in ("total", "non_embedding"):
        f = result["fit"].get(name, {})
        if f.get("ok"):
            print(f"fit ({name} parameters): L = {f['a']:.4f} + {f['b']:.4g} / N^{f['alpha']:.4f}, "
                  f"residuals {f['residuals']}")
    print(f"wall {time.perf_counter() - t_all:.0f} s; wrote {out}" + (f" and {png}" if points else ""))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
