import pytest
import torch

from onerec.model.layers import DecoderBlock
from onerec.model.moe import MoE


def _pair(impl="grouped", **kw):
    torch.manual_seed(0)
    fast = MoE(16, 24, n_experts=6, top_k=2, impl=impl, **kw)
    ref = MoE(16, 24, n_experts=6, top_k=2, impl="loop", **kw)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


@pytest.mark.parametrize("impl", ["grouped", "padded"])
@pytest.mark.parametrize("bias", ["small", "starve"])
def test_fast_paths_match_loop_reference_outputs_and_grads(impl, bias):
    """grouped (grouped_mm, no padding) and padded (bmm) == the loop reference, also when some
    experts get no token at all (their slice is empty)."""
    fast, ref = _pair(impl)
    with torch.no_grad():
        if bias == "small":
            fast.route_bias.copy_(torch.linspace(-0.05, 0.05, 6))  # a non-zero bias must route the same
        else:
            fast.route_bias.copy_(torch.tensor([0.0, -100.0, 0.0, -100.0, -100.0, 0.0]))  # experts 1, 3, 4 idle
        ref.route_bias.copy_(fast.route_bias)
    x = torch.randn(3, 7, 16)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = fast.eval()(xa), ref.eval()(xb)
    torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-5)
    ya.square().sum().backward()
    yb.square().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-5)
    for name in ("w1", "w2", "w3", "router.weight"):
        ga = fast.get_parameter(name).grad
        gb = ref.get_parameter(name).grad
        torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-5)


def test_top_k_equal_n_experts_is_a_gated_sum_of_all_experts():
    torch.manual_seed(1)
    m = MoE(8, 12, n_experts=3, top_k=3).eval()
    x = torch.randn(5, 8)
    scores = torch.softmax(m.router(x), -1)
    want = sum(scores[:, e:e + 1] * m._expert(e, x) for e in range(3))
    torch.testing.assert_close(m(x), want, atol=1e-5, rtol=1e-5)


def test_loss_free_balancing_moves_bias_against_load_and_evens_it():
    torch.manual_seed(0)
    m = MoE(8, 8, n_experts=4, top_k=1, bias_step=0.02)
    with torch.no_grad():
        m.router.weight.normal_()
        m.router.weight[0] = 3.0  # expert 0 wins for (nearly) every token with a positive feature sum
    x = torch.randn(512, 8).abs()
    m.train()
    m(x)
    load0 = m.load_fraction().clone()
    assert load0[0] > 0.9
    assert m.route_bias[0] < 0
    loads = []
    for _ in range(400):
        m(x)
        loads.append(m.load_fraction().clone())
    mean_load = torch.stack(loads[-100:]).mean(0)
    assert mean_load.max() < 0.4 and mean_load.min() > 0.1  # the bias evened the load (ideal 0.25)
    # evaluation does not move the bias
    bias = m.route_bias.clone()
    m.eval()
    m(x)
    torch.testing.assert_close(m.route_bias, bias)
    assert "route_bias" in m.state_dict() and "last_load" not in m.state_dict()


def test_moe_is_a_token_wise_ffn_inside_the_decoder_block():
    torch.manual_seed(0)
    block = DecoderBlock(16, 2, MoE(16, 32, n_experts=4, top_k=2), 0.0).eval()
    x, mem = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    full = block(x, mem)
    # a token's MoE output depends on that token only: prefixes give the same rows
    torch.testing.assert_close(block(x[:, :3], mem), full[:, :3], atol=1e-5, rtol=1e-5)


def test_grouped_handles_no_tokens():
    fast, ref = _pair()
    x = torch.randn(0, 16)
    assert fast.eval()(x).shape == (0, 16) and ref.eval()(x).shape == (0, 16)
