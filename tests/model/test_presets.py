import json

import pytest
from click.testing import CliRunner

from onerec.cli import cli
from onerec.model.info import PAPER_SIZES, preset_info


@pytest.mark.parametrize("preset", sorted(PAPER_SIZES))
def test_preset_parameter_counts_within_5_percent_of_the_paper(preset):
    info = preset_info(preset)
    assert abs(info["total"] / PAPER_SIZES[preset] - 1) < 0.05, info["total"]
    assert info["active"] <= info["total"]
    assert info["encoder_tokens"] == 1 + 20 + 256 + 128  # the report's 405 encoder tokens


def test_moe_presets_activate_few_experts():
    small = preset_info("onerec-0.121b")
    moe = preset_info("onerec-0.935b")
    big = preset_info("onerec-2.633b")
    assert small["active"] == small["total"] and small["moe_layers"] == 0
    assert moe["moe_layers"] == 4 and big["moe_layers"] == 24
    # top-2 of 24 (2816 wide) vs the dense 1408-wide FFN: active counts stay within a small multiple
    assert moe["active"] < 0.25 * moe["total"] and big["active"] < 0.25 * big["total"]


def test_model_info_cli_prints_json():
    res = CliRunner().invoke(cli, ["model-info", "onerec-0.935b", "model.moe_top_k=4"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["model"]["moe_top_k"] == 4 and info["active"] > preset_info("onerec-0.935b")["active"]
