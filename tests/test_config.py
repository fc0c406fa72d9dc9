from pathlib import Path

import pytest

from onerec.config import RunConfig, apply_overrides, describe, load_config, preset_names
from onerec.errors import ConfigError


def test_overrides_parse_types():
    cfg = load_config(overrides=["train.lr=3e-4", "data.sim.n_users=10", "eval.ks=[1,5]", "train.max_steps=none",
                                 "tokenizer.balanced=true", "data.options.matrix=big"])
    assert cfg.train.lr == 3e-4 and cfg.data.sim.n_users == 10 and cfg.eval.ks == [1, 5]
    assert cfg.train.max_steps is None and cfg.tokenizer.balanced is True
    assert cfg.data.options == {"matrix": "big"}


@pytest.mark.parametrize(("override", "near"), [("train.lrr=1", "train.lr"), ("data.sim.n_usr=3", "data.sim.n_users"),
                                                ("tokeniser.levels=2", "tokenizer")])
def test_unknown_key_names_nearest(override, near):
    with pytest.raises(ConfigError, match=f"Did you mean '{near}'"):
        apply_overrides(RunConfig(), [override])


def test_bad_values_are_errors():
    with pytest.raises(ConfigError, match="not one of"):
        apply_overrides(RunConfig(), ["data.split=random"])
    with pytest.raises(ConfigError, match="cannot read"):
        apply_overrides(RunConfig(), ["train.epochs=lots"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(RunConfig(), ["train.epochs"])


def test_generate_compile_reads_booleans_as_before_and_aot(tmp_path):
    """generate.compile was a boolean: run configs and overrides that say true/false keep meaning the same."""
    for raw, want in [("true", "true"), ("True", "true"), ("false", "false"), ("aot", "aot"), ("on", "true")]:
        assert apply_overrides(RunConfig(), [f"generate.compile={raw}"]).generate.compile == want
    old = tmp_path / "config.yaml"
    old.write_text("generate:\n  compile: true\n")
    assert load_config(file=old).generate.compile == "true"
    with pytest.raises(ConfigError, match="not one of"):
        apply_overrides(RunConfig(), ["generate.compile=ahead"])


def test_presets_load_and_every_field_documented():
    assert {"quickstart", "tiny"} <= set(preset_names())
    for name in preset_names():
        load_config(preset=name)
    for key, _, help_ in describe():
        assert help_, f"config key {key} has no help text"
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(preset="quickstrat")
    for path in ("runs/x/config.yaml", Path("config.yaml")):  # a file given where a preset name goes
        with pytest.raises(ConfigError, match=r"looks like a file.*load_config\(file="):
            load_config(path)
