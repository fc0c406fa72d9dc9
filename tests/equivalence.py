"""Test helpers for a fast path against its reference (imported by tests as ``equivalence``; not a conftest, whose
name the tests/ subfolders' own conftest files would shadow)."""

from __future__ import annotations

import torch


def assert_same_loss_and_grads(fast, ref, batch, *, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    """Two models that should compute the same function (a fast path and its reference): the same loss on
    ``batch`` and the same gradient for every parameter (a parameter without one in ``ref`` has none, or zeros,
    in ``fast``)."""
    loss_f, loss_r = fast(batch), ref(batch)
    torch.testing.assert_close(loss_f, loss_r, rtol=1e-5, atol=1e-6)
    loss_f.backward(), loss_r.backward()
    for (name, a), (_, b) in zip(fast.named_parameters(), ref.named_parameters()):
        if b.grad is None:
            assert a.grad is None or not a.grad.any(), name
            continue
        torch.testing.assert_close(a.grad, b.grad, rtol=rtol, atol=atol, msg=name)
