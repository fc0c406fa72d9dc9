"""``onerec bench compare``: the seed-by-seed reading of a one-change screen, from two results files."""

import json

import pytest
from click.testing import CliRunner

from onerec.bench.compare import compare_results, format_comparison
from onerec.cli import cli
from onerec.errors import DataError


def _result(seed, curve, test, *, cpu="CPU A", config=None, model="onerec"):
    entry = {**dict(zip(("recall@5", "ndcg@5", "recall@10", "ndcg@10"), test, strict=True)), "train_seconds": 100.0,
             "valid_curve": [{"step": 10 * e, "epoch": float(e), "ndcg@10": v} for e, v in enumerate(curve, 1)]}
    return {"machine": {"cpu": cpu, "platform": "p"}, "config": config or {"train": {"lr": 0.002}},
            "runs": [{"seed": seed, "models": {model: entry}}]}


def test_leads_best_epoch_and_test_changes():
    base = _result(2, [0.10, 0.20, 0.30, 0.40], [0.1, 0.05, 0.2, 0.08])
    cand = _result(2, [0.11, 0.19, 0.33, 0.40], [0.11, 0.05, 0.18, 0.08],
                   config={"train": {"lr": 0.002, "label_smoothing": 0.1}})
    cmp = compare_results(base, cand)
    s = cmp["per_seed"][2]
    assert s["ahead"] == 2 and s["epochs"] == 4  # a tie (epoch 4) is not ahead
    assert [r["epochs"] for r in s["ranges"]] == [[1, 2], [3, 4]]
    assert s["ranges"][0]["mean_lead"] == pytest.approx((0.1 - 0.05) / 2)
    assert s["ranges"][1]["mean_lead"] == pytest.approx(0.05)
    assert s["best"] == {"base": 0.40, "base_epoch": 4, "candidate": 0.40, "candidate_epoch": 4,
                         "change": pytest.approx(0.0)}
    assert s["test"]["recall@5"]["change"] == pytest.approx(0.1)
    assert s["test"]["recall@10"]["change"] == pytest.approx(-0.1)
    assert cmp["config_differences"] == []
    assert cmp["only_in_candidate"] == ["train.label_smoothing=0.1"]  # an option newer than the base file
    assert cmp["same_cpu"] is True
    text = format_comparison(cmp, every=2)
    assert "candidate ahead at 2 of 4 epochs" in text and "recall@10 0.2000 -> 0.1800 (-10.0%)" in text


def test_a_zero_base_score_has_no_relative_lead():
    s = compare_results(_result(0, [0.0, 0.0, 0.2], [0.1] * 4), _result(0, [0.1, 0.0, 0.3], [0.1] * 4),
                        halves=2)["per_seed"][0]
    assert s["curve"][0]["lead"] is None and s["ahead"] == 2
    assert s["ranges"][0]["mean_lead"] is None and s["ranges"][1]["mean_lead"] == pytest.approx(0.5)
    assert "n/a over epochs 1-2" in format_comparison(compare_results(
        _result(0, [0.0, 0.0, 0.2], [0.1] * 4), _result(0, [0.1, 0.0, 0.3], [0.1] * 4)))


def test_machines_and_config_differences_are_named():
    base = _result(0, [0.1], [0.1] * 4, cpu="AMD EPYC")
    cand = _result(0, [0.1], [0.1] * 4, cpu="Intel Xeon", config={"train": {"lr": 0.004}})
    cmp = compare_results(base, cand)
    assert cmp["config_differences"] == ["train.lr: 0.002 -> 0.004"]
    assert cmp["same_cpu"] is False and "different CPUs" in format_comparison(cmp)
    old = {**base, "machine": {"platform": "Linux-x"}}  # written before the CPU was recorded
    assert compare_results(old, cand)["same_cpu"] is None


def test_files_without_a_common_seed_or_model_are_refused():
    with pytest.raises(DataError, match="none in common"):
        compare_results(_result(0, [0.1], [0.1] * 4), _result(1, [0.1], [0.1] * 4))
    with pytest.raises(DataError, match=r"no run of model .sasrec_ce. \(it has: onerec\)"):
        compare_results(_result(0, [0.1], [0.1] * 4), _result(0, [0.1], [0.1] * 4), model="sasrec_ce")


def test_cli_prints_and_writes_json(tmp_path):
    a, b, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "cmp.json"
    a.write_text(json.dumps(_result(0, [0.1, 0.2], [0.1] * 4)))
    b.write_text(json.dumps(_result(0, [0.1, 0.3], [0.2] * 4)))
    res = CliRunner().invoke(cli, ["bench", "compare", str(a), str(b), "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "best valid ndcg@10: base 0.2000 (epoch 2), candidate 0.3000 (epoch 2), +50.0%" in res.output
    assert json.loads(out.read_text())["per_seed"]["0"]["ahead"] == 1
    bad = CliRunner().invoke(cli, ["bench", "compare", str(a), str(b), "--model", "sasrec_ce"])
    assert isinstance(bad.exception, DataError) and "no run of model 'sasrec_ce'" in str(bad.exception)


def _scientific(rows, *, index="ours"):
    """A `bench scientific` results file: one index, (seed, valid curve, test value of every metric) rows."""
    per_seed = [{"seed": s, **dict.fromkeys(("recall@5", "ndcg@5", "recall@10", "ndcg@10"), t),
                 "valid_curve": [{"step": e, "epoch": float(e), "ndcg@10": v} for e, v in enumerate(curve, 1)]}
                for s, curve, t in rows]
    return {"benchmark": "amazon2018-scientific-indexes", "machine": {"cpu": "GPU host", "platform": "p"},
            "config": {}, "indexes": {index: {"per_seed": per_seed}}}


def test_scientific_files_compare_our_index_and_average_over_seeds():
    base = _scientific([(0, [0.1, 0.2], 0.10), (1, [0.1, 0.4], 0.20)])
    cand = _scientific([(0, [0.1, 0.3], 0.12), (1, [0.2, 0.4], 0.20)])
    cmp = compare_results(base, cand)  # the default entry of a scientific file: our IDs
    assert cmp["model"] == "ours" and cmp["seeds"] == [0, 1]
    assert cmp["per_seed"][0]["best"]["change"] == pytest.approx(0.5)
    means = cmp["means"]
    assert means["best_valid"] == {"base": pytest.approx(0.3), "candidate": pytest.approx(0.35),
                                   "change": pytest.approx(0.35 / 0.3 - 1)}
    assert means["recall@10"]["change"] == pytest.approx(0.16 / 0.15 - 1)
    assert "== mean over the 2 seeds" in format_comparison(cmp) and "best valid: base 0.3000, candidate 0.3500" \
        in format_comparison(cmp)
    with pytest.raises(DataError, match=r"no index 'letter_zcr' \(it has: ours\)"):
        compare_results(base, cand, model="letter_zcr")
