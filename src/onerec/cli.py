"""The ``onerec`` command: one verb per pipeline stage over a run directory, and ``quickstart``.

    onerec data --out RUN [KEY=VALUE ...]     simulate or load a dataset, split it
    onerec tokenize RUN [KEY=VALUE ...]       content vectors -> semantic IDs
    onerec train RUN [--resume] [KEY=VALUE]   train the generator
    onerec eval RUN [KEY=VALUE ...]           score it against the baselines; metrics + report
    onerec tune-prior RUN [--weights ...]     choose the succession prior at decoding on the valid split
    onerec reward RUN [KEY=VALUE ...]         P-Score reward model (SIM + CAN) + ablations, AUC/GAUC
    onerec align RUN [KEY=VALUE ...]          align the generator to the P-Score (DPO / ECPO)
    onerec explore RUN [KEY=VALUE ...]        AGE exploration vs bandit baselines: replay and online days in the world
    onerec edge RUN [KEY=VALUE ...]           training across edge devices: E-Tree vs FedAvg, gossip, local, central
    onerec generate RUN --user ID ...         top-K recommendations for some users
    onerec serve RUN [--port N] [--workers N] HTTP service: POST /recommend, /healthz, /metrics
    onerec quickstart [--out DIR]             all of the above on a simulated world
    onerec config [RUN] [--preset NAME]       every config key with its value (a run's, or defaults) and help
    onerec model-info PRESET [OPTIONS]        parameters and forward GFLOPs of a preset's model (JSON)
    onerec bench amazon --category beauty     Amazon 2014 under the TIGER protocol, beside published numbers
    onerec bench scientific                   our semantic IDs vs published indexes (Amazon 2018 Scientific)

KEY=VALUE overrides use dotted config keys (``train.lr=3e-4``, ``data.sim.n_users=500``);
``onerec config`` lists them all.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from onerec.config import config_get, describe, load_config, preset_names
from onerec.errors import OneRecError

OVERRIDES_HELP = "KEY=VALUE config overrides (dotted keys, see `onerec config`)."


def _preset_option(default: str | None = None):
    return click.option("--preset", default=default, show_default=True,
                        help=f"named config preset ({', '.join(preset_names()) or 'none'}).")


_config_option = click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                              help="YAML config file (applied after the preset, before overrides).")
_run_argument = click.argument("run", type=click.Path(file_okay=False, path_type=Path))
_overrides = click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")


def _summary(title: str, rows: dict) -> None:
    click.echo(f"\n{title}")
    width = max((len(str(k)) for k in rows), default=0)
    for k, v in rows.items():
        if isinstance(v, (dict, list)):
            continue
        val = f"{v:.4f}" if isinstance(v, float) else str(v)
        click.echo(f"  {str(k).ljust(width)}  {val}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onerec")
def cli() -> None:
    """onerec: generative recommendation (OneRec) from raw logs to evaluated recommendations."""


@cli.command()
@click.option("--out", "run", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="run directory to create or update (its data/ folder is written).")
@_preset_option()
@_config_option
@_overrides
def data(run: Path, preset: str | None, config_file: str | None, overrides: tuple[str, ...]) -> None:
    """Simulate a world or load a dataset (data.source, data.path, data.name) and split it
    (data.split=loo|time). Writes RUN/data and RUN/config.yaml."""
    from onerec.data.adapters.table import event_type_columns
    from onerec.pipeline import run_config, stage_data

    cfg = run_config(run, preset, config_file, overrides)
    summary = stage_data(run, cfg)
    _summary("data", summary)
    for note in summary.get("normalised", []):  # what loading changed in the input
        click.echo(f"  normalised: {note}")
    for table, cols in summary.get("ignored_columns", {}).items():  # what it left out
        click.echo(f"  not read: the {table} table's column{'s' if len(cols) > 1 else ''} {', '.join(cols)} (neither "
                   "an id, the time, nor a known signal: docs/data.md)")
        typed = event_type_columns(cols)
        if table == "interactions" and typed:  # an event log read whole: every type counted alike
            click.echo(f"  every {typed[0]} type was read alike: data.options.keep_events=[...] "
                       f"data.options.event_column={typed[0]} reads only the types you name")


@cli.command()
@_run_argument
@_overrides
def tokenize(run: Path, overrides: tuple[str, ...]) -> None:
    """Item content vectors (content.*) and residual k-means semantic IDs (tokenizer.*). Writes RUN/tokenizer."""
    from onerec.pipeline import run_config, stage_tokenize

    _summary("tokenizer", stage_tokenize(run, run_config(run, overrides=overrides)))


@cli.command()
@_run_argument
@click.option("--resume", is_flag=True, help="continue from the latest checkpoint in RUN/train/checkpoints.")
@_overrides
def train(run: Path, resume: bool, overrides: tuple[str, ...]) -> None:
    """Train the generator (model.*, train.*) with next-token loss. Writes RUN/train.

    On several processes: `torchrun --nproc_per_node=N -m onerec train RUN` (train.strategy: ddp | fsdp)."""
    from onerec.pipeline import run_config, stage_train
    from onerec.train.distributed import launched_rank

    summary = stage_train(run, run_config(run, overrides=overrides), resume=resume)
    if launched_rank() == 0:  # under torchrun: rank 0 reports
        _summary("train", summary)


@cli.command(name="eval")
@_run_argument
@_overrides
def eval_(run: Path, overrides: tuple[str, ...]) -> None:
    """Score the generator and the baselines (eval.baselines) with Recall/NDCG@K (eval.ks), full ranking.
    Writes RUN/metrics.json, RUN/report.md and RUN/plots/."""
    from onerec.eval.report import metrics_table
    from onerec.pipeline import run_config, stage_eval

    cfg = run_config(run, overrides=overrides)
    metrics = stage_eval(run, cfg)
    if "models" not in metrics:  # under torchrun: rank 0 reports
        return
    click.echo("\n" + metrics_table(metrics["models"], sorted(cfg.eval.ks)))
    click.echo(f"\nreport: {run / 'report.md'}")


@cli.command()
@_run_argument
@_overrides
def reward(run: Path, overrides: tuple[str, ...]) -> None:
    """Train the P-Score reward model (reward.*: SIM, CAN, towers, fusion) on logged exposures, with the
    DIN baseline and no-SIM / no-CAN ablations; AUC / GAUC on held-out exposures. Writes RUN/reward."""
    from onerec.pipeline import run_config, stage_reward

    out = stage_reward(run, run_config(run, overrides=overrides))
    for name, m in out.get("models", {}).items():  # under torchrun: rank 0 reports
        _summary(f"reward {name} (AUC / GAUC)", {o: f"{v['auc']:.4f} / {v['gauc']:.4f}" for o, v in m.items()
                                                 if isinstance(v, dict)})


@cli.command()
@_run_argument
@_overrides
def align(run: Path, overrides: tuple[str, ...]) -> None:
    """Align the trained generator (align.method=dpo|ecpo: to the P-Score; gbpo: to the simulated users'
    feedback, align.*); with a simulated world, score held-out users' top-K by its ground truth before and
    after. Writes RUN/align."""
    from onerec.pipeline import run_config, stage_align

    out = stage_align(run, run_config(run, overrides=overrides))
    for when in ("before", "after"):
        if when in out:
            _summary(f"{out['method']} {when} (simulated world)", out[when])


@cli.command()
@_run_argument
@_overrides
def explore(run: Path, overrides: tuple[str, ...]) -> None:
    """Exploration for new items (explore.*): AGE and the bandit baselines (greedy, epsilon-greedy, UCB and Thompson
    from MC dropout, random) by unbiased offline replay of a uniformly random policy's log drawn in the run's
    simulated world (clicks and long views per 1,000 accepted events), and online: explore.online_days simulated
    days with new videos arriving, the serving cascade retrained on its own exposures daily (watch time, new-item
    coverage, first-day cost against no exploration). explore.evaluations picks which. Writes RUN/explore."""
    from onerec.explore import stage_explore
    from onerec.pipeline import run_config

    out = stage_explore(run, run_config(run, overrides=overrides))
    if "replay" in out:
        _summary("explore replay: clicks / long views per 1,000 accepted events; the world's expected clicks per "
                 "1,000 events of every pick (mean +- std over seeds)",
                 {p: f"{m['clicks_per_1000']['mean']:.1f} +- {m['clicks_per_1000']['std']:.1f} / "
                     f"{m['long_views_per_1000']['mean']:.1f} +- {m['long_views_per_1000']['std']:.1f}; "
                     f"{m['expected_clicks_per_1000']['mean']:.1f} +- {m['expected_clicks_per_1000']['std']:.1f}"
                  for p, m in out["replay"]["summary"].items()})
    if "online" in out:
        _summary("explore online: watch time h (vs none) / new-item coverage / first-day cost (mean over seeds)",
                 {p: f"{m['watch_time']['mean']:.1f} ({100 * m['watch_time_gain']['mean']:+.2f}%) / "
                     f"{m['new_item_coverage']['mean']:.2f} / {100 * m['first_day_cost']['mean']:+.2f}%"
                  for p, m in out["online"]["summary"].items()})
    click.echo(f"\nmetrics: {run / 'explore' / 'metrics.json'}")


@cli.command()
@_run_argument
@_overrides
def edge(run: Path, overrides: tuple[str, ...]) -> None:
    """Training across edge devices (edge.*): the run's users partitioned over edge.n_devices devices (non-IID by
    the simulated world's interests, or IID), SASRec on every device (edge.model=generator: the run's generator,
    after `onerec tokenize RUN`), and E-Tree (KMA groups, per-level aggregation periods) against FedAvg, gossip
    learning, local-only and centralised training, in one process: recall@10 / ndcg@10, simulated bytes and
    wall-clock. Writes RUN/edge.

    One device a process: `torchrun --nproc_per_node=N -m onerec edge RUN edge.n_devices=N` (gloo; the same
    numbers up to rounding when training draws nothing at random, e.g. dropout 0; centralised training is skipped
    there)."""
    from onerec.edge.stage import stage_edge
    from onerec.pipeline import run_config
    from onerec.train.distributed import launched_rank

    out = stage_edge(run, run_config(run, overrides=overrides))
    if launched_rank() != 0:  # under torchrun: rank 0 reports
        return
    _summary(f"edge ({out['model']} on every device): ndcg@10 / recall@10 / MB moved / MB x link length / "
             "simulated s",
             {s: f"{m['final']['ndcg@10']:.4f} / {m['final']['recall@10']:.4f} / {m['final']['bytes'] / 1e6:.1f} / "
                 f"{m['final']['byte_distance'] / 1e6:.1f} / {m['final']['sim_s']:.1f}"
              for s, m in out["schemes"].items()})
    click.echo(f"\nmetrics: {run / 'edge' / 'metrics.json'}")


def _numbers(value: str | None, what: str, example: str, parse) -> list | None:
    if value is None:
        return None
    try:
        return [parse(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"'{value}': give comma-separated {what}, e.g. {example}") from None


def _rule(text: str) -> tuple[int, float]:
    window, sep, decay = text.partition(":")
    if not sep:
        raise ValueError(text)
    return int(window), float(decay)


@cli.command(name="tune-prior")
@_run_argument
@click.option("--weights", default=None, help="prior weights to try, comma-separated; 0 = the generator alone "
                                               "[default: 0,0.5,1,2,4,8,16].")
@click.option("--rules", default=None, help="succession rules WINDOW:DECAY to try, comma-separated "
                                             "[default: 10:0.1,10:0.5].")
@click.option("--users", type=click.IntRange(min=1), default=None,
              help="score a fixed random sample of this many valid users [default: all].")
@_overrides
def tune_prior(run: Path, weights: str | None, rules: str | None, users: int | None,
               overrides: tuple[str, ...]) -> None:
    """Choose the succession prior on the valid split (not in the papers): the generator's beam pooled with the
    items that most often followed the user's last items, ranked by log p + WEIGHT * log(1 + succession score).
    Every rule x weight is scored by train.early_stop_metric (default NDCG@10); the best is written to RUN/config.yaml
    (generate.succession_prior, _window, _decay), which eval, generate and serve then use. Writes
    RUN/eval/prior.json."""
    from onerec.pipeline import run_config, stage_tune_prior

    out = stage_tune_prior(run, run_config(run, overrides=overrides),
                           weights=_numbers(weights, "numbers", "0,2,8", float),
                           rules=_numbers(rules, "WINDOW:DECAY pairs", "10:0.1,10:0.5", _rule), users=users)
    metric = out["metric"]
    click.echo(f"\nvalid {metric} ({out['users']} users) by succession rule and prior weight:")
    for row in out["grid"]:
        click.echo(f"  window {row['window']:>3}  decay {row['decay']:<6g}  weight {row['weight']:<6g}  "
                   f"{row[metric]:.4f}")
    chosen = " ".join(f"{k}={v:g}" for k, v in out["chosen"].items() if k.startswith("generate."))
    click.echo(f"\nchosen: {chosen} ({metric} {out['chosen'][metric]:.4f}), saved in {run / 'config.yaml'}; "
               f"grid: {run / 'eval' / 'prior.json'}")


@cli.command()
@_run_argument
@click.option("--user", "users", multiple=True, required=True, help="user id (the dataset's raw id); repeatable.")
@click.option("-k", "--top-k", default=10, show_default=True, help="items per user.")
@click.option("--exclude-seen/--include-seen", "exclude_seen", default=None,
              help="leave out (or allow) items already in the user's history [default: generate.exclude_seen, "
                   "false].")
@_overrides
def generate(run: Path, users: tuple[str, ...], top_k: int, exclude_seen: bool | None,
             overrides: tuple[str, ...]) -> None:
    """Recommend top-K items for users from their whole positive history (constrained beam search)."""
    from onerec.pipeline import recommend_users, run_config

    cfg = run_config(run, overrides=overrides)
    for user, recs in recommend_users(run, cfg, list(users), top_k, exclude_seen=exclude_seen).items():
        click.echo(f"\nuser {user}:")
        for rank, (index, item, title) in enumerate(recs, 1):  # the dataset's item id, then onerec's index
            click.echo(f"  {rank:>3}. item {item} (index {index})  {title}")


@cli.command()
@_run_argument
@click.option("--host", default=None, help="interface (default serve.host, 127.0.0.1).")
@click.option("--port", default=None, type=int, help="TCP port (default serve.port, 8000).")
@click.option("--workers", default=None, type=click.IntRange(min=1),
              help="worker processes, each with its own model (default serve.workers, 1): N x the memory.")
@_overrides
def serve(run: Path, host: str | None, port: int | None, workers: int | None, overrides: tuple[str, ...]) -> None:
    """Serve recommendations over HTTP (needs the `serve` extra): POST /recommend, /healthz, /metrics, /docs."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise click.ClickException(f"`onerec serve` needs the serve extra ({e.name} is missing). "
                                   "Fix: pip install 'onerec[serve]'") from None
    from onerec.pipeline import run_config
    from onerec.serve import serve as serve_run
    from onerec.train.loop import resolve_device

    extra = [f"serve.host={host}"] * (host is not None) + [f"serve.port={port}"] * (port is not None)
    extra += [f"serve.workers={workers}"] * (workers is not None)
    cfg = run_config(run, overrides=(*overrides, *extra))
    serve_run(run, cfg, str(resolve_device(cfg.train.device)))


@cli.command()
@click.option("--out", "run", default="runs/quickstart", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="run directory to write.")
@_preset_option("quickstart")
@_overrides
def quickstart(run: Path, preset: str, overrides: tuple[str, ...]) -> None:
    """Simulate a short-video world -> content vectors -> semantic IDs -> train -> generate -> evaluate
    against most-popular and SASRec. Writes a complete run directory with metrics.json and report.md."""
    from onerec.eval.report import metrics_table
    from onerec.pipeline import stage_data, stage_eval, stage_tokenize, stage_train

    cfg = load_config(preset=preset, overrides=overrides)
    t0 = time.perf_counter()
    stages = [("1/4 data", stage_data), ("2/4 tokenize", stage_tokenize), ("3/4 train", stage_train),
              ("4/4 eval", stage_eval)]
    results = {}
    for title, fn in stages:
        click.echo(f"\n== {title} ==")
        results[title] = fn(run, cfg)
        if title != "4/4 eval":
            _summary(title.split()[1], results[title])
    metrics = results["4/4 eval"]
    click.echo("\n" + metrics_table(metrics["models"], sorted(cfg.eval.ks)))
    click.echo(f"\ndone in {time.perf_counter() - t0:.0f}s. metrics: {run / 'metrics.json'}  "
               f"report: {run / 'report.md'}")


@cli.command(name="config")
@click.argument("run", required=False, type=click.Path(exists=True, path_type=Path))
@_preset_option()
@click.option("--stage", type=click.Choice(["data", "tokenizer", "train", "eval", "reward", "align", "explore"]),
              help="with RUN: the config that stage ran with (RUN/<stage>/config.yaml).")
@click.option("--changed", is_flag=True, help="only the keys whose value differs from today's defaults, each with "
                                             "the default (a run keeps the defaults of the day it was made).")
def config_cmd(run: Path | None, preset: str | None, stage: str | None, changed: bool) -> None:
    """List every config key with its value and help: the defaults (or a preset's), or with RUN the run's
    resolved config. KEY=VALUE overrides given to a verb are saved into RUN/config.yaml and hold for the verbs
    after it; each stage folder keeps the config it ran with."""
    if run is not None:
        if preset:
            raise click.UsageError("give RUN or --preset, not both")
        path = run / stage / "config.yaml" if stage else run / "config.yaml"
        if not path.is_file():
            what = f"stage '{stage}' of {run} has not run" if stage else f"{run} is not a run directory"
            raise click.UsageError(f"{path} not found: {what} (`onerec data --out {run}` starts one)")
        click.echo(f"# {path}")
        cfg = load_config(file=path)
    elif stage:
        raise click.UsageError("--stage needs RUN")
    else:
        cfg = load_config(preset=preset)
    for key, default, help_ in describe():
        value = config_get(cfg, key)
        if changed and repr(value) == default:
            continue
        # --changed: each key beside today's default (a run keeps the defaults of the day it was made)
        click.echo(f"{key} = {value!r}" + (f"  (default: {default})" if changed else "") + f"\n    {help_}")


@cli.command(name="model-info")
@click.argument("preset")
@click.option("--compare-arch", is_flag=True,
              help="both architectures at equal parameters: the preset's, and the other one (lazy: dec_layers; "
                   "encdec: enc_layers = dec_layers) with the layer count whose total is closest to the preset's")
@_overrides
def model_info_cmd(preset: str, compare_arch: bool, overrides: tuple[str, ...]) -> None:
    """Print the total and active (per-token) parameter counts and the forward GFLOPs per sample (one
    training sample, split into context and decoder) of PRESET's generator as JSON, counted on the meta
    device without allocating it (e.g. onerec-0.015b .. onerec-2.633b, onerec-v2-0.1b .. onerec-v2-8b,
    lazy-0.1m .. lazy-10m)."""
    import json

    from onerec.model.info import preset_info

    click.echo(json.dumps(preset_info(preset, overrides, compare=compare_arch), indent=2))


from onerec.bench.cli import bench  # noqa: E402  (the `onerec bench` group lives in its own module)

cli.add_command(bench)


#: seconds between progress-bar updates when stderr is a file or a pipe (a log), not a terminal
LOGGED_PROGRESS_INTERVAL = 30


def pace_progress_for_logs(stream=None, environ=None) -> None:
    """Progress bars redraw several times a second; written to a log (``onerec train RUN > log 2>&1``, nohup,
    CI) that is thousands of carriage-return updates an epoch. When ``stream`` (stderr) is not a terminal, every
    tqdm bar of the process updates every :data:`LOGGED_PROGRESS_INTERVAL` seconds instead (tqdm reads
    ``TQDM_MININTERVAL``); a value the user set is kept."""
    stream = sys.stderr if stream is None else stream
    environ = os.environ if environ is None else environ
    isatty = getattr(stream, "isatty", None)
    if not (callable(isatty) and isatty()):
        environ.setdefault("TQDM_MININTERVAL", str(LOGGED_PROGRESS_INTERVAL))


def main() -> None:
    pace_progress_for_logs()  # first: tqdm reads TQDM_* when it is imported (torch imports it, onerec.threads torch)
    from onerec.threads import keep_freed_memory

    keep_freed_memory()  # glibc keeps freed blocks for the next search instead of unmapping them (onerec.threads)
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except OneRecError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
