import math

import numpy as np
import pytest
import torch

from onerec.align.losses import dpo_loss, ecpo_loss, gbpo_loss, grpo_loss, sequence_log_probs
from onerec.config import ModelConfig
from onerec.generate.sampling import unconstrained_beam_search, unconstrained_beam_search_reference
from onerec.model.generator import Generator

torch.set_num_threads(1)


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    pw = torch.tensor([-2.0, -1.0], requires_grad=True)
    pl = torch.tensor([-1.5, -3.0], requires_grad=True)
    loss = dpo_loss(pw, pl, torch.tensor([-2.0, -1.0]), torch.tensor([-1.5, -3.0]), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2.0))  # policy == reference: margin 0
    loss.backward()
    assert (pw.grad < 0).all() and (pl.grad > 0).all()  # descent raises log pi_w, lowers log pi_l


def test_ecpo_equals_grpo_inside_the_trust_region():
    logp = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    old = torch.tensor([[-1.05, -1.95, -3.0]])
    adv = torch.tensor([[1.0, -0.5, -0.5]])
    torch.testing.assert_close(ecpo_loss(logp, old, adv, 0.2, 0.1), grpo_loss(logp, old, adv, 0.2))


def test_ecpo_caps_the_ratio_of_negative_advantages():
    # the policy made a negative-advantage sample e^3 = 20x likelier than pi_old
    old = torch.tensor([[-5.0]])
    adv = torch.tensor([[-1.0]])
    logp = torch.tensor([[-2.0]], requires_grad=True)
    loss = ecpo_loss(logp, old, adv, eps=0.2, delta=0.1)
    assert loss.item() == pytest.approx(1.3, rel=1e-5)  # ratio capped at 1 + eps + delta
    loss.backward()
    g_ecpo = logp.grad.clone()
    logp.grad = None
    grpo_loss(logp, old, adv, eps=0.2).backward()
    assert abs(g_ecpo.item()) == pytest.approx(1.3, rel=1e-5)
    assert abs(logp.grad.item()) == pytest.approx(math.exp(3.0), rel=1e-5)  # plain GRPO: unbounded ratio
    assert g_ecpo.item() > 0  # still pushes the bad sample's probability down


def test_ecpo_positive_advantage_is_clipped_above():
    logp = torch.tensor([[0.0]], requires_grad=True)
    loss = ecpo_loss(logp, torch.tensor([[-1.0]]), torch.tensor([[1.0]]), eps=0.2, delta=0.1)
    loss.backward()
    assert loss.item() == pytest.approx(-1.2) and logp.grad.item() == 0.0  # clipped: no more push


def test_gbpo_matches_its_formula_by_hand():
    # OneRec-V2: pi_old' = max(pi_old, sg(pi)) for A >= 0, max(pi_old, 1 - sg(pi)) for A < 0; loss -A pi / pi_old'
    pi = torch.tensor([[0.2, 0.5, 0.1, 0.6, 0.05, 0.3]], dtype=torch.float64)
    old = torch.tensor([[0.4, 0.25, 0.3, 0.2, 0.97, 0.3]], dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, -1.0, 0.0]], dtype=torch.float64)
    # pi_old' by hand: pi_old wins | pi wins | 1 - pi wins | 1 - pi wins | pi_old wins | (A = 0)
    base = [0.4, 0.5, 0.9, 0.4, 0.97, 0.3]
    ratio = [p / b for p, b in zip(pi[0].tolist(), base)]
    assert ratio[3] == pytest.approx(1.5)  # no clipping: ECPO would cap this ratio at 1 + eps + delta = 1.3
    logp = pi.log().requires_grad_(True)
    loss = gbpo_loss(logp, old.log(), adv)
    want = -sum(r * a for r, a in zip(ratio, adv[0].tolist())) / 6
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert want == pytest.approx((1 / 9 + 0.05 / 0.97) / 6)
    loss.backward()
    # d loss / d log pi = -A * ratio / N: the stop-gradient leaves only the numerator differentiable
    expect = [-a * r / 6 for a, r in zip(adv[0].tolist(), ratio)]
    np.testing.assert_allclose(logp.grad[0].numpy(), expect, rtol=1e-12, atol=1e-15)
    # the mask averages over the counted samples only
    m = torch.tensor([[1, 1, 0, 1, 0, 0]])
    masked = gbpo_loss(pi.log(), old.log(), adv, mask=m)
    assert masked.item() == pytest.approx(-(ratio[0] + ratio[1] - ratio[3]) / 3, rel=1e-12)


def test_gbpo_gradient_is_bounded_like_bce():
    # an item's probability as pi = sigmoid(s): |dL/ds| = |A| pi (1 - pi) / pi_old' <= |A| for every pi_old
    s = torch.linspace(-12.0, 12.0, 97, dtype=torch.float64)
    for a in (1.0, 2.5, -1.0, -0.7):
        for pi_old in (1e-9, 1e-3, 0.3, 0.999):
            logit = s.clone().requires_grad_(True)
            logp = torch.nn.functional.logsigmoid(logit)[None]
            adv = torch.full_like(logp, a)
            (gbpo_loss(logp, torch.full_like(logp, math.log(pi_old)), adv) * s.numel()).backward()
            g = logit.grad
            assert (g.abs() <= abs(a) * (1 + 1e-9)).all(), (a, pi_old, g.abs().max())
            assert ((g < 0) if a > 0 else (g > 0)).all()  # descent raises pi for A > 0, lowers it for A < 0
            if pi_old == 1e-9:  # the bound is reached, not just respected
                assert g.abs().max() >= 0.9 * abs(a)
    # the unbounded ratio pi / pi_old that GBPO replaces: far above |A| when pi_old is small
    logit = torch.tensor([0.0], dtype=torch.float64, requires_grad=True)
    plain = -(torch.sigmoid(logit) / 1e-3).sum()
    plain.backward()
    assert logit.grad.abs().item() > 100.0


def test_gbpo_token_logit_gradients_are_bounded():
    # the same bound through a softmax over codes (the decoder's heads): every logit's gradient <= |A|
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(64, 8, generator=g, dtype=torch.float64) * 6).requires_grad_(True)
    target = torch.randint(0, 8, (64, 1), generator=g)
    logp = torch.log_softmax(logits, -1).gather(1, target).T  # [1, 64]
    old = torch.rand(1, 64, generator=g, dtype=torch.float64).pow(8).log()  # many tiny pi_old
    adv = torch.where(torch.rand(1, 64, generator=g) < 0.5, -2.0, 2.0).double()
    (gbpo_loss(logp, old, adv) * 64).backward()
    assert (logits.grad.abs().amax(1) <= 2.0 * (1 + 1e-9)).all()


def _tiny_generator(sizes):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, n_heads=2, enc_layers=1, dec_layers=1, max_history=6, dropout=0.0)
    return Generator(cfg, sizes).eval()


def _batch(b, sizes, h=6):
    g = torch.Generator().manual_seed(1)
    codes = torch.stack([torch.randint(0, v, (b, h), generator=g) for v in sizes], dim=-1)
    mask = torch.ones(b, h, dtype=torch.bool)
    mask[0, :3] = False
    codes[~mask] = -1
    return {"hist_codes": codes, "hist_flags": torch.randint(0, 8, (b, h), generator=g),
            "hist_age": torch.randint(0, 10, (b, h), generator=g), "hist_mask": mask}


def test_sequence_log_probs_match_the_ntp_loss():
    sizes = [5, 4, 3]
    model = _tiny_generator(sizes)
    batch = _batch(3, sizes)
    target = torch.tensor([[1, 2, 0], [4, 0, 2], [0, 3, 1]])
    logp = sequence_log_probs(model, batch, target[:, None, :])
    ntp = model({**batch, "target": target})
    # forward = mean over levels of the per-level mean CE, i.e. -mean(logp) / D
    assert (-logp.mean() / 3).item() == pytest.approx(ntp.item(), rel=1e-5)
    # and they sum to 1 over all codes of a user
    allc = torch.cartesian_prod(*[torch.arange(v) for v in sizes])
    total = sequence_log_probs(model, {k: v[:1] for k, v in batch.items()}, allc[None]).exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-5)


def test_unconstrained_beam_search_matches_reference():
    sizes = [5, 4, 3]
    model = _tiny_generator(sizes)
    batch = _batch(2, sizes)
    beam = 6
    memory, mask = model.encode_batch(batch)
    state = {"m": memory.repeat_interleave(beam, 0), "k": mask.repeat_interleave(beam, 0)}

    def step_fn(tokens, step, st):
        return model.step_log_probs(tokens, step, st["m"], st["k"]), st

    with torch.no_grad():
        codes, scores = unconstrained_beam_search(step_fn, batch_size=2, depth=3, beam_size=beam, state=state)

        def lp(u, prefix):
            pre = torch.tensor([prefix], dtype=torch.long).view(1, len(prefix))
            return model.step_log_probs(pre, len(prefix), memory[u:u + 1], mask[u:u + 1])[0].tolist()

        ref_codes, ref_scores = unconstrained_beam_search_reference(lp, batch_size=2, depth=3, beam_size=beam)
    assert [[tuple(c) for c in row] for row in codes.tolist()] == ref_codes
    np.testing.assert_allclose(scores.numpy(), np.array(ref_scores), rtol=1e-4, atol=1e-5)
