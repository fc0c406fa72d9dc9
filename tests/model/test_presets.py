import json

import pytest
from click.testing import CliRunner

from onerec.cli import cli
from onerec.config import load_config
from onerec.model.info import CPU_SIZES, PAPER_SIZES, V2_PAPER_SIZES, _with_layers, model_info, preset_info


@pytest.mark.parametrize("preset", sorted(PAPER_SIZES))
def test_preset_parameter_counts_within_5_percent_of_the_paper(preset):
    info = preset_info(preset, flops=False)
    assert abs(info["total"] / PAPER_SIZES[preset] - 1) < 0.05, info["total"]
    assert info["active"] <= info["total"]
    assert info["encoder_tokens"] == 1 + 20 + 256 + 128  # the report's 405 encoder tokens


def test_moe_presets_activate_few_experts():
    small = preset_info("onerec-0.121b", flops=False)
    moe = preset_info("onerec-0.935b", flops=False)
    big = preset_info("onerec-2.633b", flops=False)
    assert small["active"] == small["total"] and small["moe_layers"] == 0
    assert moe["moe_layers"] == 4 and big["moe_layers"] == 24
    # top-2 of 24 (2816 wide) vs the dense 1408-wide FFN: active counts stay within a small multiple
    assert moe["active"] < 0.25 * moe["total"] and big["active"] < 0.25 * big["total"]


def test_model_info_cli_prints_json():
    res = CliRunner().invoke(cli, ["model-info", "onerec-0.935b", "model.moe_top_k=4"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["model"]["moe_top_k"] == 4 and info["active"] > preset_info("onerec-0.935b", flops=False)["active"]
    # the forward pass of one sample: nearly all of it is the encoder's 405 tokens
    assert info["gflops_context"] + info["gflops_decoder"] == pytest.approx(info["gflops_per_sample"], rel=1e-3)
    assert info["gflops_context"] > 10 * info["gflops_decoder"] > 0


@pytest.mark.parametrize("preset", sorted(V2_PAPER_SIZES))
def test_v2_presets_are_the_papers_dense_sizes(preset):
    """OneRec-V2's Table 5 (d_model, layers, heads; L_kv = S_kv = 1, G_kv = heads as in its experiments); the
    total within 15% of the size the paper names the model by (it rounds to one figure; our FFN width is a guess)."""
    nominal, d_model, layers, heads = V2_PAPER_SIZES[preset]
    info = preset_info(preset, flops=False)
    m = info["model"]
    assert (m["arch"], m["d_model"], m["dec_layers"], m["n_heads"]) == ("lazy", d_model, layers, heads)
    assert (m["kv_layers"], m["kv_split"], m["kv_heads"]) == (1, 1, heads)
    assert abs(info["total"] / nominal - 1) < 0.15, info["total"]
    assert info["paper_total"] == nominal and info["moe_layers"] == 0
    assert info["encoder_tokens"] == 512 and info["decoder_tokens"] == 3  # the report's ~512 context tokens, 3 IDs


def test_cpu_lazy_presets_span_a_scaling_curve():
    """lazy-0.1m .. lazy-10m: each within 15% of its name, growing, and cheap enough for a 2-core CPU."""
    infos = [preset_info(p) for p in CPU_SIZES]
    for (name, nominal), info in zip(CPU_SIZES.items(), infos, strict=True):
        assert info["arch"] == "lazy" and abs(info["total"] / nominal - 1) < 0.15, (name, info["total"])
        assert 0 < info["gflops_per_sample"] < 0.1
    totals = [i["total"] for i in infos]
    assert totals == sorted(totals) and totals[-1] > 50 * totals[0]


TINY = ["tokenizer.levels=2", "tokenizer.codebook_size=4", "model.d_model=8", "model.n_heads=2", "model.enc_layers=1",
        "model.dec_layers=1", "model.ffn_hidden=16", "model.max_history=4", "model.behaviour_features=[sid]",
        "model.kv_heads=1"]


def test_forward_flops_by_hand_on_a_tiny_config():
    """E = 8, 2 heads of dh = 4, SwiGLU F = 16, S = 4 context tokens, D = 2 codes of 4, one layer per stack; a
    matmul [m, k] x [k, n] counts 2mkn. The decoder reads T = D = 2 tokens [BOS, s_1]."""
    lazy = model_info(load_config(overrides=[*TINY, "model.arch=lazy"]))
    # context processor: 4 tokens x (8 -> G_kv * dh = 4)
    ctx = 2 * 4 * 8 * 4
    # cross-attention: q and o projections, 2 x 2*2*8*8; the 2 query heads share G_kv = 1 key head (2*2 = 4
    # query rows against 4 keys): scores + weighted sum 2 x 2*4*4*4
    cross = 2 * (2 * 2 * 8 * 8) + 2 * (2 * 4 * 4 * 4)
    # causal self-attention over the 2 tokens: q, k, v, o projections 4 x 2*2*8*8; per head scores + sum 2 x 2*2*2*4
    self_attn = 4 * (2 * 2 * 8 * 8) + 2 * 2 * (2 * 2 * 2 * 4)
    ffn = 2 * (2 * 2 * 8 * 16) + 2 * 2 * 16 * 8  # SwiGLU: w1 and w3 (8 -> 16), w2 (16 -> 8)
    heads = 2 * (2 * 1 * 8 * 4)  # one head per level over its position: 8 -> 4 codes
    assert lazy["flops_per_sample"] == ctx + cross + self_attn + ffn + heads == 3840
    assert lazy["gflops_context"] * 1e9 == pytest.approx(ctx)

    encdec = model_info(load_config(overrides=[*TINY, "model.arch=encdec"]))
    # encoder layer over S = 4 tokens: q, k, v, o 4 x 2*4*8*8; per head scores + sum 2 x 2*2*4*4*4; SwiGLU
    encoder = 4 * (2 * 4 * 8 * 8) + 2 * 2 * (2 * 4 * 4 * 4) + 2 * (2 * 4 * 8 * 16) + 2 * 4 * 16 * 8
    memory_kv = 2 * (2 * 4 * 8 * 8)  # the decoder's cross-attention keys and values of the 4 memory tokens
    cross = 2 * (2 * 2 * 8 * 8) + 2 * 2 * (2 * 2 * 4 * 4)  # q and o; 2 heads x 2 queries x 4 keys
    assert encdec["flops_per_sample"] == encoder + memory_kv + cross + self_attn + ffn + heads == 10240
    assert encdec["gflops_context"] * 1e9 == pytest.approx(encoder + memory_kv)
    assert encdec["gflops_decoder"] == lazy["gflops_decoder"]  # the same work on the 2 target tokens

    # a mixture of 4 experts (F = 16), top-2, counts its router and the 2 experts a token is sent to
    moe = model_info(load_config(overrides=[*TINY, "model.arch=lazy", "model.moe_experts=4", "model.moe_top_k=2"]))
    assert moe["flops_per_sample"] == 3840 - ffn + 2 * 2 * 8 * 4 + 2 * ffn


def test_compare_arch_at_equal_parameters_lazy_is_far_cheaper_on_a_long_context():
    """OneRec-V2's claim (Table 2, 1B, ~512 context tokens: 18.89 vs 296.36 GFLOPs) on onerec's 0.1B analogue:
    the lazy preset against the encoder-decoder (enc = dec layers) of the nearest total."""
    res = CliRunner().invoke(cli, ["model-info", "onerec-v2-0.1b", "--compare-arch"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    lazy, encdec = out["archs"]["lazy"], out["archs"]["encdec"]
    assert encdec["enc_layers"] == encdec["dec_layers"] and lazy["dec_layers"] == 12
    assert abs(out["params_ratio_lazy_to_encdec"] - 1) < 0.01
    assert lazy["encoder_tokens"] == encdec["encoder_tokens"] == 512
    assert lazy["gflops_per_sample"] > 0 and encdec["gflops_per_sample"] > 10 * lazy["gflops_per_sample"]
    assert out["gflops_ratio_encdec_to_lazy"] > 10  # measured 23.6 (50.76 vs 2.148 GFLOPs)


def test_compare_arch_chooses_the_closest_layer_count():
    cfg = load_config(preset="quickstart")
    out = preset_info("quickstart", compare=True)
    target, layers = out["archs"]["encdec"]["total"], out["archs"]["lazy"]["dec_layers"]

    def total(n):
        c = load_config(preset="quickstart")
        c.model = _with_layers(cfg.model, "lazy", n)
        return model_info(c, flops=False)["total"]

    gaps = {n: abs(total(n) - target) for n in (layers - 1, layers, layers + 1)}
    assert gaps[layers] == min(gaps.values()) and out["archs"]["lazy"]["total"] == total(layers)
