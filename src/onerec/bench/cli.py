"""The ``onerec bench`` command group (imported by :mod:`onerec.cli`)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

DEFAULT_DATASETS = Path("../shared/datasets")


def _seeds(value: str) -> list[int]:
    try:
        seeds = [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"'{value}': give comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise click.BadParameter("give at least one seed")
    return seeds


@click.group()
def bench() -> None:
    """Paper-comparable benchmarks (results JSON + a table beside the published numbers)."""


@bench.command()
@click.option("--category", type=click.Choice(["beauty", "sports", "toys"]), required=True)
@click.option("--datasets", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DATASETS,
              show_default=True, help="folder holding amazon2014_s3rec/ (and amazon2014_text/ for titles).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="run directories, one per seed [default: runs/bench-amazon-<category>].")
@click.option("--results", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="results JSON [default: benchmarks/results/amazon2014/amazon-<category>.json].")
@click.option("--seeds", default="0,1,2", show_default=True, help="comma-separated seeds.")
@click.option("--models", default="onerec,onerec_prior,sasrec_ce,sasrec_bce,transitions", show_default=True,
              help="comma-separated: onerec, onerec_prior (onerec's trained generator with the succession prior at "
                   "decoding, its weight and rule chosen on valid; after onerec, or alone with --resume on a trained "
                   "run), "
                   "sasrec_ce, sasrec_bce, transitions (item-to-item succession counts: no training, seconds).")
@click.option("--preset", default="amazon", show_default=True, help="config preset.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML config applied after the preset.")
@click.option("--no-text", is_flag=True, help="ignore amazon2014_text/ (attribute ids only), as for Sports.")
@click.option("--max-history", default=20, show_default=True, help="history length (the TIGER protocol: 20).")
@click.option("--budget-s", type=float, default=None,
              help="wall-time cap in seconds for training each model (sets train.time_budget_s and "
                   "eval.sasrec.time_budget_s); the best valid epoch so far is kept. It counts the model's whole "
                   "training, earlier runs resumed with --resume included.")
@click.option("--note", default="", help="free text stored in the results (e.g. the machine's load).")
@click.option("--resume", is_flag=True,
              help="continue the runs in --out: keep their data and semantic IDs, resume onerec from its latest "
                   "checkpoint (best valid epoch included) and each SASRec from its last finished epoch; the same "
                   "command and overrides, a new --budget-s allowed.")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
def amazon(category: str, datasets: Path, out: Path | None, results: Path | None, seeds: str, models: str,
           preset: str, config_file: str | None, no_text: bool, max_history: int, budget_s: float | None, note: str,
           resume: bool, overrides: tuple[str, ...]) -> None:
    """Amazon 2014 under the TIGER protocol: data -> content vectors -> semantic IDs -> train -> test,
    onerec, SASRec (CE, BCE) and item-to-item transitions in one harness, printed beside the published numbers."""
    from onerec.bench.amazon import format_table, run_amazon

    extra = list(overrides)
    if budget_s is not None:
        extra = [f"train.time_budget_s={budget_s}", f"eval.sasrec.time_budget_s={budget_s}", *extra]
    out = out or Path("runs") / f"bench-amazon-{category}"
    results = results or Path("benchmarks") / "results" / "amazon2014" / f"amazon-{category}.json"
    result = run_amazon(category, datasets, out, seeds=_seeds(seeds),
                        models=[m.strip() for m in models.split(",") if m.strip()], preset=preset,
                        config_file=config_file, overrides=extra, text=not no_text, max_history=max_history,
                        results=results, command="onerec " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                        note=note, resume=resume, log=click.echo)
    click.echo(f"\nAmazon 2014 {result['category']}, TIGER protocol, test split, seeds {result['seeds']}\n")
    click.echo(format_table(result, category))
    click.echo(f"\nwrote {results}")


@bench.command()
@click.option("--datasets", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DATASETS,
              show_default=True, help="folder holding amazon2018_scientific_lcrec/.")
@click.option("--indexes", default="ours,rkmeans_zcr,letter_zcr,rqvae_zcr", show_default=True,
              help="comma-separated: 'ours' (our tokenizer on the item text) and published index names "
                   "(files <name>.index.json in indexes/).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/bench-scientific"),
              show_default=True)
@click.option("--results", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("benchmarks/results/scientific/amazon2018-scientific-indexes.json"), show_default=True)
@click.option("--seeds", default="0", show_default=True, help="comma-separated seeds.")
@click.option("--preset", default="amazon", show_default=True)
@click.option("--budget-s", type=float, default=None, help="wall-time cap in seconds for each model's training.")
@click.option("--note", default="")
@click.option("--resume", is_flag=True,
              help="continue the runs in --out: keep their data and our semantic IDs, resume each generator from "
                   "its latest checkpoint (best valid epoch included); the same command and overrides, a new "
                   "--budget-s allowed.")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
def scientific(datasets: Path, indexes: str, out: Path, results: Path, seeds: str, preset: str,
               budget_s: float | None, note: str, resume: bool, overrides: tuple[str, ...]) -> None:
    """Amazon 2018 Scientific (real text): our semantic IDs against published indexes, same model and protocol."""
    from onerec.bench.scientific import format_table, run_scientific

    extra = list(overrides)
    if budget_s is not None:
        extra = [f"train.time_budget_s={budget_s}", *extra]
    result = run_scientific(datasets, out, indexes=[s.strip() for s in indexes.split(",") if s.strip()],
                            seeds=_seeds(seeds), preset=preset, overrides=extra, results=results,
                            command="onerec " + " ".join(shlex.quote(a) for a in sys.argv[1:]), note=note,
                            resume=resume, log=click.echo)
    click.echo("\n" + format_table(result))
    click.echo(f"\nwrote {results}")


@bench.command()
@click.argument("parts", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--allow-difference", "allow", multiple=True, metavar="FIELD",
              help="pool seeds whose configs differ in this dotted field (e.g. train.patience when no run reached "
                   "it); the merged file records each seed's value under config_differences. Repeatable.")
def merge(parts: tuple[Path, ...], out_path: Path, allow: tuple[str, ...]) -> None:
    """Join results files of `bench amazon` (different models over the same seeds, e.g. onerec and
    SASRec run in two processes; or the same models over different seeds, run in parallel: mean and
    spread are recomputed over all seeds) or of `bench scientific` (indexes and seeds run apart; an
    index's seeds are pooled, files with another config keep their rows apart, named by the fields
    that differ)."""
    from onerec.bench import amazon, scientific
    from onerec.io import read_json, write_json

    loaded = [read_json(p) for p in parts]
    if any(p.get("benchmark") == "amazon2018-scientific-indexes" for p in loaded):
        result = scientific.merge_scientific(loaded, allow)
        table = scientific.format_table(result)
    else:
        result = amazon.merge_results(loaded, allow)
        category = result["benchmark"].split("-", 1)[1] if "-" in result.get("benchmark", "") else ""
        table = amazon.format_table(result, category)
    write_json(out_path, result)
    click.echo(table)
    click.echo(f"\nwrote {out_path}")


@bench.command()
@click.argument("base", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("candidate", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", default=None, help="model key in the results' runs [default: onerec; for `bench scientific` "
              "files the index, default ours].")
@click.option("--every", default=5, show_default=True, help="print the valid curve every N epochs (and the last).")
@click.option("--ranges", default=2, show_default=True,
              help="split the shared epochs into this many equal ranges for the mean lead over each.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write the comparison (every epoch) as JSON.")
def compare(base: Path, candidate: Path, model: str | None, every: int, ranges: int, json_out: Path | None) -> None:
    """Compare two results files of `bench amazon` (or of `bench scientific`) seed by seed: the valid curves
    epoch by epoch (leads, the epochs the candidate is ahead), the best valid epoch and the test metrics, their
    means over the seeds, with the config fields and the machines that differ (a one-change screen's reading,
    from the files alone)."""
    from onerec.bench.compare import compare_results, format_comparison
    from onerec.io import read_json, write_json

    result = compare_results(read_json(base), read_json(candidate), model=model, halves=ranges,
                             names=(str(base), str(candidate)))
    click.echo(format_comparison(result, every=every))
    if json_out is not None:
        write_json(json_out, result)
        click.echo(f"\nwrote {json_out}")
