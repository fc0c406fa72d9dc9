"""The README's two set-up commands are what CI runs, and the docs name real things."""

import re

from conftest import REPO
from onerec.config import describe


def _setup_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Set up: two commands\s+```bash\n(.*?)```", text, re.S)
    assert block, "README.md must start with a 'Set up: two commands' bash block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    cmds = _setup_commands()
    assert len(cmds) == 2
    assert "onerec quickstart" in cmds[0] and "pytest" in cmds[1]
    assert all('"torch==2.13.*"' in c for c in cmds), "both must pin the CPU-wheel torch"
    assert cmds[1] in (REPO / ".ci" / "run").read_text(), ".ci/run must call the README's test command verbatim"


def test_config_keys_in_readme_exist():
    keys = {k for k, _, _ in describe()}
    text = (REPO / "README.md").read_text()
    for key in set(re.findall(r"\b((?:data|content|tokenizer|model|train|generate|eval)\.[a-z_.]+)=", text)):
        assert key in keys or key.startswith("data.options."), f"README mentions unknown config key {key}"
