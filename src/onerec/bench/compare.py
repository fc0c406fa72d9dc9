"""Compare two ``onerec bench amazon`` (or ``bench scientific``) results files seed by seed
(``onerec bench compare``): the valid curves epoch by epoch (which one leads, by how much, over which
epochs), the selected epoch's valid score and the test metrics, their means over the seeds, with the
config fields and the machines that differ. This is the reading every one-change screen needs ("ahead at
9 of 10 epochs, +7.7% at the end, test +7-13%"), made from the files alone so that the figures quoted in
docs/BENCHMARKS.md can be re-derived with one command."""

from __future__ import annotations

from statistics import mean
from typing import Any

from onerec.bench.amazon import METRICS, config_differences, config_value
from onerec.errors import DataError


def default_model(result: dict[str, Any]) -> str:
    """The entry a comparison reads when none is named: ``onerec`` in a ``bench amazon`` file, our
    IDs (``ours``) in a ``bench scientific`` file."""
    return "ours" if "indexes" in result else "onerec"


def _runs(result: dict[str, Any], model: str, name: str) -> dict[int, dict[str, Any]]:
    if "indexes" in result:  # bench scientific: per index, one row per seed
        if model not in result["indexes"]:
            raise DataError(f"no index '{model}' (it has: {', '.join(result['indexes']) or 'none'})", path=name,
                            fix="pick one with --model")
        return {int(r["seed"]): r for r in result["indexes"][model]["per_seed"]}
    runs = {int(r["seed"]): r["models"][model] for r in result.get("runs", []) if model in r.get("models", {})}
    if not runs:
        have = sorted({m for r in result.get("runs", []) for m in r.get("models", {})})
        raise DataError(f"no run of model '{model}' (it has: {', '.join(have) or 'no runs'})", path=name,
                        fix="pick one with --model, or give a results file of `onerec bench amazon`")
    return runs


def _curve(entry: dict[str, Any]) -> tuple[str | None, dict[int, float]]:
    """(metric, {epoch: valid score}) of a model's ``valid_curve`` (empty when it has none)."""
    points = entry.get("valid_curve") or []
    metric = next((k for p in points for k in p if k not in ("step", "epoch")), None)
    return metric, {int(p["epoch"]): float(p[metric]) for p in points if metric in p}


def _only_in(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """``name=value`` of the fields ``b`` has and ``a`` lacks (an option added to onerec after ``a`` was
    written: the merge rule ignores them, a comparison shows them, since the candidate may set one)."""
    out = []
    for key in sorted(b):
        if key not in a:
            out.append(f"{prefix}{key}={b[key]!r}")
        elif isinstance(a[key], dict) and isinstance(b[key], dict):
            out += _only_in(a[key], b[key], f"{prefix}{key}.")
    return out


def _machine(result: dict[str, Any]) -> dict[str, Any]:
    m = result.get("machine", {})
    return {"cpu": m.get("cpu"), "platform": m.get("platform"), "load": m.get("load")}


def _mean(xs: list[float]) -> float | None:
    return mean(xs) if xs else None  # None: every base score in the range was 0 (no relative lead)


def _rel(a: float, b: float) -> float | None:
    return None if a == 0 else (b - a) / a


def compare_seed(base: dict[str, Any], cand: dict[str, Any], *, halves: int = 2) -> dict[str, Any]:
    """One seed's comparison of a model's entries (base vs candidate). ``halves`` splits the shared epochs
    into that many equal ranges for the mean relative lead over each."""
    metric, cb = _curve(base)
    metric_c, cc = _curve(cand)
    epochs = sorted(set(cb) & set(cc))
    out: dict[str, Any] = {"metric": metric if metric == metric_c else None, "epochs": len(epochs)}
    if epochs and out["metric"]:
        leads = [_rel(cb[e], cc[e]) for e in epochs]
        out["ahead"] = sum(cc[e] > cb[e] for e in epochs)
        out["curve"] = [{"epoch": e, "base": cb[e], "candidate": cc[e], "lead": lead}
                        for e, lead in zip(epochs, leads, strict=True)]
        size = -(-len(epochs) // max(halves, 1))
        out["ranges"] = [{"epochs": [epochs[i], epochs[min(i + size, len(epochs)) - 1]],
                          "mean_lead": _mean([x for x in leads[i:i + size] if x is not None])}
                         for i in range(0, len(epochs), size)]
        best_b, best_c = max(cb.values()), max(cc.values())
        out["best"] = {"base": best_b, "base_epoch": max(cb, key=cb.get), "candidate": best_c,
                       "candidate_epoch": max(cc, key=cc.get), "change": _rel(best_b, best_c)}
    out["test"] = {k: {"base": base[k], "candidate": cand[k], "change": _rel(base[k], cand[k])}
                   for k in METRICS if k in base and k in cand}
    out["seconds"] = {"base": base.get("train_seconds"), "candidate": cand.get("train_seconds")}
    return out


def compare_results(base: dict[str, Any], cand: dict[str, Any], *, model: str | None = None,
                    halves: int = 2, names: tuple[str, str] = ("base", "candidate")) -> dict[str, Any]:
    """Seed-by-seed comparison of ``model`` (default: :func:`default_model`) in two results files (the
    seeds both ran), the config fields that differ and both machines. Raises :class:`DataError` when the
    files share no seed."""
    model = model or default_model(base)
    rb, rc = _runs(base, model, names[0]), _runs(cand, model, names[1])
    seeds = sorted(set(rb) & set(rc))
    if not seeds:
        raise DataError(f"{names[0]} has seeds {sorted(rb)} and {names[1]} has {sorted(rc)}: none in common",
                        fix="compare files that ran the same seed (a pair differs in one setting, not the seed)")
    machines = {"base": _machine(base), "candidate": _machine(cand)}
    cpus = {side: m["cpu"] for side, m in machines.items()}
    same = None if None in cpus.values() else cpus["base"] == cpus["candidate"]  # None: a file predates the record
    ca, cb = base.get("config", {}), cand.get("config", {})
    differences = [f"{name}: {config_value(ca, name)!r} -> {config_value(cb, name)!r}"
                   for name in config_differences(ca, cb)]
    per_seed = {s: compare_seed(rb[s], rc[s], halves=halves) for s in seeds}
    return {"model": model, "seeds": seeds, "machines": machines, "same_cpu": same,
            "config_differences": differences, "only_in_base": _only_in(cb, ca), "only_in_candidate": _only_in(ca, cb),
            "per_seed": per_seed, "means": _means(list(per_seed.values()))}


def _means(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Over the seeds' comparisons: the mean best valid score (when every seed has a common curve) and the
    mean of each test metric, base and candidate, with the relative change of the means."""
    groups: dict[str, list[dict[str, float]]] = {}
    if all("best" in s for s in per_seed):
        groups["best_valid"] = [s["best"] for s in per_seed]
    for k in METRICS:
        if all(k in s["test"] for s in per_seed):
            groups[k] = [s["test"][k] for s in per_seed]
    out: dict[str, Any] = {"seeds": len(per_seed)}
    for key, rows in groups.items():
        b, c = mean(r["base"] for r in rows), mean(r["candidate"] for r in rows)
        out[key] = {"base": b, "candidate": c, "change": _rel(b, c)}
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def format_comparison(cmp: dict[str, Any], *, every: int = 5) -> str:
    """The comparison as text: differences and machines, then per seed the valid curve every ``every``
    epochs (and the last), the leads, the best valid epoch and the test metrics."""
    lines = [f"model {cmp['model']}, seeds {cmp['seeds']}"]
    lines += ["config differences: " + ("; ".join(cmp["config_differences"]) or "none")]
    for side in ("base", "candidate"):
        if cmp[f"only_in_{side}"]:
            lines.append(f"only in {side} (options the other file predates): " + "; ".join(cmp[f"only_in_{side}"]))
    m = cmp["machines"]

    def name(side: str) -> str:
        return m[side]["cpu"] or f"CPU not recorded (platform {m[side]['platform']})"

    verdict = {True: "same CPU model", False: "different CPUs: judge the gap against the seed spread",
               None: "one file predates the CPU record: check the machines by hand"}[cmp["same_cpu"]]
    lines += [f"machines: base {name('base')}; candidate {name('candidate')} ({verdict})"]
    for seed, s in cmp["per_seed"].items():
        lines += ["", f"== seed {seed}"]
        if "curve" in s:
            metric = s["metric"]
            lines += [f"valid {metric} by epoch:", "  epoch      base  candidate    lead"]
            curve = s["curve"]
            for i, p in enumerate(curve):
                if (p["epoch"] % every == 0) or i in (0, len(curve) - 1):
                    lines.append(f"  {p['epoch']:5d}  {p['base']:.4f}     {p['candidate']:.4f}  {_pct(p['lead']):>7}")
            lines.append(f"candidate ahead at {s['ahead']} of {s['epochs']} epochs; mean lead "
                         + ", ".join(f"{_pct(r['mean_lead'])} over epochs {r['epochs'][0]}-{r['epochs'][1]}"
                                     for r in s["ranges"]))
            b = s["best"]
            lines.append(f"best valid {metric}: base {b['base']:.4f} (epoch {b['base_epoch']}), candidate "
                         f"{b['candidate']:.4f} (epoch {b['candidate_epoch']}), {_pct(b['change'])}")
        else:
            lines.append("no common valid curve (a file without one, or different metrics)")
        lines.append("test:  " + "  ".join(f"{k} {v['base']:.4f} -> {v['candidate']:.4f} ({_pct(v['change'])})"
                                           for k, v in s["test"].items()))
        sec = s["seconds"]
        if sec["base"] and sec["candidate"]:
            lines.append(f"training seconds: base {sec['base']:.0f}, candidate {sec['candidate']:.0f}")
    means = cmp.get("means", {})
    if means.get("seeds", 0) > 1:
        lines += ["", f"== mean over the {means['seeds']} seeds"]
        if "best_valid" in means:
            b = means["best_valid"]
            lines.append(f"best valid: base {b['base']:.4f}, candidate {b['candidate']:.4f} ({_pct(b['change'])})")
        lines.append("test:  " + "  ".join(f"{k} {means[k]['base']:.4f} -> {means[k]['candidate']:.4f} "
                                           f"({_pct(means[k]['change'])})" for k in METRICS if k in means))
    return "\n".join(lines)
