import math

import numpy as np
import pytest
import torch

from onerec.align.losses import dpo_loss, ecpo_loss, grpo_loss, sequence_log_probs
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
