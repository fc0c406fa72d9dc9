"""data.source=auto: every adapter's layout is detected from tiny files, a given data.path is never ignored,
ambiguous or unknown layouts are one clear DataError, and the README's ml-100k command reads the real data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_adapters import write_kuairand, write_kuairec

from onerec.cli import cli
from onerec.config import load_config
from onerec.data.adapters import detect_source, load
from onerec.errors import ConfigError, DataError
from onerec.pipeline import data_source, stage_data


def write_recbole(folder: Path, name: str = "tiny") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(u, i, 100 + 10 * u + i) for u in range(4) for i in range(5)]
    (folder / f"{name}.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                                          + "".join(f"u{u}\ti{i}\t{t}\n" for u, i, t in rows))
    (folder / f"{name}.item").write_text("item_id:token\tmovie_title:token_seq\n"
                                         + "".join(f"i{i}\tfilm {i}\n" for i in range(5)))
    return folder


def write_lcrec(folder: Path, name: str = "Tiny") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    seqs = {str(u): [str(i) for i in range(u, u + 4)] for u in range(4)}
    (folder / f"{name}.inter.json").write_text(json.dumps(seqs))
    (folder / f"{name}.item.json").write_text(json.dumps({str(i): {"title": f"thing {i}"} for i in range(7)}))
    return folder


def write_amazon(folder: Path, name: str = "Tiny") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.txt").write_text("".join(f"{u} " + " ".join(str(i) for i in range(u, u + 4)) + "\n"
                                                for u in range(1, 5)))
    (folder / f"{name}_item2attributes.json").write_text(json.dumps({str(i): [i % 2] for i in range(1, 8)}))
    return folder


def write_parquet(folder: Path, tmp: Path) -> Path:
    load("recbole", write_recbole(tmp / "rb-src")).save(folder)
    return folder


@pytest.mark.parametrize("layout, expected", [
    ("recbole", ("recbole", "tiny")),
    ("lcrec", ("lcrec", "Tiny")),
    ("amazon2014", ("amazon2014", "Tiny")),
    ("kuairand", ("kuairand", None)),
    ("kuairec", ("kuairec", None)),
    ("parquet", ("parquet", None)),
])
def test_every_adapter_is_detected_and_loads(tmp_path: Path, layout: str, expected: tuple) -> None:
    folder = tmp_path / "d"
    writers = {"recbole": write_recbole, "lcrec": write_lcrec, "amazon2014": write_amazon,
               "kuairand": lambda f: write_kuairand(f) and f, "kuairec": lambda f: write_kuairec(f) and f,
               "parquet": lambda f: write_parquet(f, tmp_path)}
    writers[layout](folder)
    assert detect_source(folder) == expected
    ds = load("auto", folder)
    assert ds.meta["source"] == ("recbole" if layout == "parquet" else layout)  # parquet keeps its origin
    assert ds.interactions.num_rows > 0


def test_a_file_path_is_read_by_its_ending(tmp_path: Path) -> None:
    assert detect_source(write_recbole(tmp_path / "rb") / "tiny.inter") == ("recbole", "tiny")
    assert detect_source(write_lcrec(tmp_path / "lc") / "Tiny.inter.json") == ("lcrec", "Tiny")
    assert detect_source(write_amazon(tmp_path / "az") / "Tiny.txt") == ("amazon2014", "Tiny")
    (tmp_path / "notes.txt").write_text("hello\n")  # a .txt without the attributes file is no S3Rec data
    with pytest.raises(DataError, match=r"no known dataset layout.*notes.txt.*data.source=amazon2014"):
        detect_source(tmp_path / "notes.txt")


def test_several_datasets_need_a_name_and_the_name_picks_one(tmp_path: Path) -> None:
    folder = write_amazon(write_amazon(tmp_path / "az", "Beauty"), "Sports_and_Outdoors")
    with pytest.raises(DataError, match=r"several amazon2014 datasets: Beauty, Sports_and_Outdoors.*data.name="):
        detect_source(folder)
    assert detect_source(folder, "Beauty") == ("amazon2014", "Beauty")
    assert load("auto", folder, "Sports").meta["name"] == "Sports_and_Outdoors"  # a unique prefix, as the adapters


def test_two_layouts_in_one_folder_are_refused_unless_the_name_settles_it(tmp_path: Path) -> None:
    folder = write_lcrec(write_recbole(tmp_path / "mixed", "ml"), "Sci")
    with pytest.raises(DataError, match=r"several dataset layouts match: recbole \(ml\); lcrec \(Sci\).*"
                                        r"data.source=recbole, data.source=lcrec"):
        detect_source(folder)
    assert detect_source(folder, "Sci") == ("lcrec", "Sci")


def test_an_unknown_layout_lists_what_was_found(tmp_path: Path) -> None:
    folder = tmp_path / "side"
    folder.mkdir()
    (folder / "user_features_pure.csv").write_text("user_id\n1\n")  # KuaiRand side tables, but no logs
    (folder / "sub").mkdir()
    with pytest.raises(DataError) as err:
        detect_source(folder)
    msg = str(err.value)
    assert "no known dataset layout (found: sub/, user_features_pure.csv)" in msg
    for source in ("parquet", "recbole", "lcrec", "amazon2014", "kuairand", "kuairec"):
        assert f"data.source={source} (" in msg
    with pytest.raises(DataError, match="no such file or folder"):
        detect_source(tmp_path / "absent")


def test_config_auto_simulates_without_a_path_and_detects_with_one(tmp_path: Path) -> None:
    assert load_config().data.source == "auto"
    assert data_source(load_config(preset="tiny")) == ("simulate", None)
    assert data_source(load_config(preset="tiny", overrides=["data.source=simulate"])) == ("simulate", None)
    folder = write_recbole(tmp_path / "rb")
    assert data_source(load_config(preset="tiny", overrides=[f"data.path={folder}"])) == ("recbole", "tiny")
    # an explicit source is used as given (the adapter checks the files)
    assert data_source(load_config(overrides=["data.source=lcrec", f"data.path={folder}"])) == ("lcrec", None)
    with pytest.raises(ConfigError, match=r"data.source=simulate .* would ignore data.path"):
        data_source(load_config(overrides=["data.source=simulate", f"data.path={folder}"]))
    with pytest.raises(DataError, match=r"data.source=recbole needs data.path"):
        data_source(load_config(overrides=["data.source=recbole"]))


def test_stage_data_reads_the_given_path(tmp_path: Path) -> None:
    folder = write_recbole(tmp_path / "rb")
    cfg = load_config(preset="tiny", overrides=[f"data.path={folder}", "data.min_positives=3"])
    summary = stage_data(tmp_path / "run", cfg, progress=False)
    assert (summary["source"], summary["name"], summary["users"], summary["items"]) == ("recbole", "tiny", 4, 5)
    assert not (tmp_path / "run" / "data" / "world").exists()  # nothing was simulated


def test_readme_ml100k_command_reads_movielens(dataset, tmp_path: Path) -> None:
    """The README's example, `onerec data --out runs/ml data.path=.../movielens_100k data.name=ml-100k`, with
    and without data.name (the folder holds one .inter file)."""
    ml = dataset("movielens_100k")
    for extra in (["data.name=ml-100k"], []):
        run = tmp_path / f"ml{len(extra)}"
        res = CliRunner().invoke(cli, ["data", "--out", str(run), f"data.path={ml}", *extra], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        assert "detected data.source=recbole data.name=ml-100k" in res.output
        summary = json.loads((run / "data" / "summary.json").read_text())
        assert (summary["source"], summary["name"], summary["users"], summary["items"], summary["interactions"]) \
            == ("recbole", "ml-100k", 943, 1682, 100_000)
        assert not (run / "data" / "world").exists()


def test_a_folder_with_one_table_of_its_own_name_is_pointed_at_it(tmp_path: Path) -> None:
    """A newcomer's folder holding ratings.csv (not interactions.csv): the fix names the file as data.path first."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,2,4.0,5\n")
    with pytest.raises(DataError, match=re.escape(f"Fix: if ratings.csv holds the interactions (one row per user and "
                                                  f"item), point data.path at it: data.path={folder / 'ratings.csv'} "
                                                  "(or name it interactions.csv); else")):
        detect_source(folder)
    assert detect_source(folder / "ratings.csv") == ("table", None)  # which then reads as the table
    (folder / "movies.csv").write_text("movieId,title\n2,x\n")
    with pytest.raises(DataError, match=re.escape("if one of movies.csv, ratings.csv holds the interactions, point "
                                                  f"data.path at it (data.path={folder}/<that file>)")):
        detect_source(folder)
