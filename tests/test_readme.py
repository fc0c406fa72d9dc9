"""README.md is tested as written: the set-up commands are what CI runs, every shell command of its code blocks and
every inline `onerec ...` command names a real verb whose options parse, and the newcomer's path (one verb per stage,
the curl requests, the Python API, the data examples) runs verbatim at small scale."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from conftest import REPO, shared_datasets
from onerec.cli import cli
from onerec.config import describe

README = (REPO / "README.md").read_text()


def _setup_commands() -> list[str]:
    block = re.search(r"## Set up: two commands\s+```bash\n(.*?)```", README, re.S)
    assert block, "README.md must start with a 'Set up: two commands' bash block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def _block_commands(after: str | None = None) -> list[str]:
    """The shell commands of README's ```bash blocks (of the first block after the heading ``after`` if given):
    comments dropped, continuation lines joined, ``a; b`` split."""
    text = README if after is None else README[README.index(after):]
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert blocks, f"no bash block after {after!r}"
    commands = []
    for block in blocks[:1] if after else blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            command: list[str] = []
            for w in words:
                if w.endswith(";") and w != ";":
                    command.append(w[:-1])
                    w = ";"
                if w in (";", "&&"):
                    commands.append(shlex.join(command))
                    command = []
                else:
                    command.append(w)
            commands.append(shlex.join(command))
    return [c for c in commands if c]


def _onerec_commands() -> list[list[str]]:
    """Every `onerec ...` command README shows, in code blocks and inline, as the argument list after `onerec`;
    ``[x]`` (an optional part) is kept; a placeholder verb (`onerec VERB`) is left out."""
    found = []
    for command in _block_commands():
        for part in re.split(r"\s*&&\s*", command):
            words = shlex.split(re.sub(r"\[([^\]]*)\]", r"\1", part))
            if words and words[0].endswith("onerec"):
                found.append(words[1:])
    for span in re.findall(r"`(onerec [^`]+)`", README):
        words = shlex.split(re.sub(r"\[([^\]]*)\]", r"\1", span.replace("...", "")))
        if words[1].isupper():
            continue
        found.append(words[1:])
    return found


def _parse(args: list[str]) -> click.Context:
    """Parse a command line the way `onerec` does, down to its verb, without running it."""
    cmd: click.Command = cli
    ctx = cmd.make_context("onerec", list(args))
    while isinstance(cmd, click.Group):
        name, cmd, rest = cmd.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        ctx = cmd.make_context(name, rest, parent=ctx)
    return ctx


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    cmds = _setup_commands()
    assert len(cmds) == 2
    assert "onerec quickstart" in cmds[0] and "pytest" in cmds[1]
    assert all('"torch==2.13.*"' in c for c in cmds), "both must pin the CPU-wheel torch"
    assert cmds[1] in (REPO / ".ci" / "run").read_text(), ".ci/run must call the README's test command verbatim"


def test_config_keys_in_readme_exist():
    keys = {k for k, _, _ in describe()}
    for key in set(re.findall(r"\b((?:data|content|tokenizer|model|train|generate|eval|serve|align|reward|explore|edge)"
                              r"\.[a-z_.]+)=", README)):
        assert key in keys or key.startswith("data.options."), f"README mentions unknown config key {key}"


def test_every_onerec_command_in_readme_names_a_verb_whose_options_parse(tmp_path, monkeypatch):
    commands = _onerec_commands()
    verbs = {c[0] for c in commands if c}
    assert {"quickstart", "data", "tokenize", "train", "eval", "generate", "serve", "config", "bench"} <= verbs
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "shared" / "datasets").mkdir(parents=True)  # ../shared/datasets seen from work/
    monkeypatch.chdir(work)
    for args in commands:
        if len(args) == 1:  # a verb named in the text, not a command line
            assert args[0] in cli.commands, f"README names `onerec {args[0]}`, which is no onerec verb"
            continue
        for w in args:  # run folders and files named on the line exist, as they would when the command is run
            if not w.startswith("-") and "=" not in w and ("/" in w or w.isupper()):
                (work / w).mkdir(parents=True, exist_ok=True)
        try:
            _parse(args)
        except click.ClickException as e:
            pytest.fail(f"README command `onerec {shlex.join(args)}` does not parse: {e.format_message()}")


@pytest.mark.slow
def test_readme_pipeline_runs_verbatim_at_small_scale(tmp_path, monkeypatch):
    """The "One verb per stage" block, in order, each line as written plus a small-scale override: the tiny
    preset (with 500 items, so that the curl example's item 431 exists), fewer steps, epochs and users. `onerec serve`
    is not started; its curl requests are sent to the same service in-process, verbatim."""
    small = {"data": ["--preset", "tiny", "data.sim.n_items=500"], "train": ["train.max_steps=30"],
             "eval": ["eval.sasrec.epochs=2"], "tune-prior": ["--users", "50"],
             "reward": ["reward.epochs=1", "reward.ablations=false"], "align": ["align.iterations=1"],
             "explore": ["explore.events=600", "explore.pool=20", "explore.candidates=4", "explore.mc_passes=3",
                         "explore.policies=[random,age_ts]", "explore.block=50", "explore.online_days=2",
                         "explore.online_initial=40", "explore.online_new_per_day=10", "explore.online_requests=40",
                         "explore.online_slate=3", "explore.online_candidates=10", "explore.online_new_candidates=5",
                         "explore.online_warmup=300", "explore.online_epochs=1", "explore.online_codebook=4",
                         "explore.online_new_days=1"],
             "edge": ["edge.n_devices=8", "edge.group_size=4", "edge.periods=[2,4]", "edge.local_steps=4",
                      "edge.eval_every=4", "edge.min_users=8", "edge.n_clusters=3", "eval.sasrec.d_model=8",
                      "eval.sasrec.n_layers=1", "eval.sasrec.max_len=8"]}
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    ran = []
    for command in _block_commands(after="### One verb per stage"):
        args = shlex.split(re.sub(r"\[([^\]]*)\]", r"\1", command))
        assert args[0] == "onerec", command
        verb = args[1]
        if verb == "serve":
            continue
        res = runner.invoke(cli, [*args[1:], *small.get(verb, [])], catch_exceptions=False)
        assert res.exit_code == 0, f"README command `{command}` failed:\n{res.output}"
        ran.append(verb)
    assert ran[:4] == ["data", "tokenize", "train", "eval"] and "generate" in ran
    run = Path("runs/demo")
    assert json.loads((run / "eval" / "metrics.json").read_text())["models"]["onerec"]["recall@10"] >= 0

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from onerec.pipeline import run_config
    from onerec.serve import RecommendService, create_app

    curls = [c for c in _block_commands(after="## Serving") if c.startswith("curl")]
    assert curls, "the Serving section shows curl requests"
    with TestClient(create_app(RecommendService(run, run_config(run)))) as client:
        for command in curls:
            words = shlex.split(command)
            path = "/" + words[2].split("/", 1)[1]
            if "-d" in words:
                r = client.post(path, content=words[words.index("-d") + 1],
                                headers={"content-type": "application/json"})
            else:
                r = client.get(path)
            assert r.status_code == 200, f"README `{command}` got {r.status_code}: {r.text}"


@pytest.mark.slow
def test_readme_python_api_runs_at_small_scale(tmp_path, monkeypatch):
    """The "Python API" block as written, with the tiny preset in place of the quickstart one (and 2 SASRec
    epochs)."""
    code = re.search(r"### Python API\s+```python\n(.*?)```", README, re.S)
    assert code, "README has a Python API block"
    src = code.group(1)
    assert 'preset="quickstart"' in src
    monkeypatch.chdir(tmp_path)
    src = src.replace('preset="quickstart"', 'preset="tiny"')
    src = src.replace('"train.epochs=2"', '"train.epochs=2", "eval.sasrec.epochs=2"')
    exec(compile(src, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "api" / "eval" / "metrics.json").exists()


def _data_examples() -> list[tuple[str, str]]:
    """(source, overrides) of the "Your own data" table rows that read ../shared/datasets."""
    rows = re.findall(r"^\| `(\w+)` \| [^\n]*\| `(data\.path=\.\./shared/datasets/[^`]+)` \|$", README, re.M)
    assert len(rows) >= 3, "the Your own data table names the shared datasets"
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("source", ["amazon2014", "lcrec", "recbole"])
def test_readme_data_examples_load_the_real_datasets(source, tmp_path):
    """`onerec data --out r <the table's example>` with no data.source: the layout is detected (data.source=auto).
    Needs the real data under ../shared/datasets (or $ONEREC_DATASETS); skips when a folder is absent."""
    overrides = dict(_data_examples())[source]
    root = shared_datasets()
    args = shlex.split(overrides.replace("../shared/datasets", str(root)))
    folder = Path(args[0].split("=", 1)[1])
    if not folder.exists():
        pytest.skip(f"README's {source} example needs {folder} (the shared datasets), absent here")
    res = CliRunner().invoke(cli, ["data", "--out", str(tmp_path / "r"), *args], catch_exceptions=False)
    assert res.exit_code == 0, f"README example `onerec data --out r {overrides}` failed:\n{res.output}"
    assert (tmp_path / "r" / "data" / "manifest.json").exists()
