"""SASRec's fit shows its epochs on a tqdm bar when asked (the eval stage asks), and stays quiet otherwise."""

from __future__ import annotations

import pytest

from onerec.baselines import build_baseline
from onerec.config import SasrecConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("progress", [False, True])
def test_fit_progress_bar(cyclic, capsys, progress: bool) -> None:
    _, splits = cyclic
    rec = build_baseline("sasrec", SasrecConfig(d_model=16, epochs=3, patience=5, max_len=12, batch_size=16))
    rec.progress = progress
    rec.fit(splits["train"], n_items=40, valid=splits["valid"])
    err = capsys.readouterr().err
    if not progress:
        assert err == ""
        return
    assert "fit sasrec (<= 3 epochs, stops after 5 evaluations without gain)" in err
    assert "3/3" in err and "loss=" in err and "ndcg@10=" in err and "best=" in err
    assert "step=4/4" in err  # 60 users / batch 16: the step within the epoch, with the running loss
