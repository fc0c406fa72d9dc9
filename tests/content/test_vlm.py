"""The vision-language backend end to end with a tiny randomly initialised Qwen2-VL (no download)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("transformers")
pytest.importorskip("PIL")

from onerec.config import ContentConfig, load_config
from onerec.content import item_tokens, item_vectors
from onerec.errors import DataError

sys.path.insert(0, str(Path(__file__).parent))
from tiny_vlm import build_tiny_qwen2_vl

WORDS = ["red", "blue", "shoe", "apple", "pie", "cherry", "Title", "Caption", "Tags", "Speech",
         "Describe", "this", "short", "video", "for", "a", "recommender"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl"), WORDS)


def _media(folder: Path) -> pa.Table:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    colours = [(250, 0, 0), (0, 0, 250), (250, 0, 0), (250, 0, 0)]
    for i, c in enumerate(colours):
        Image.new("RGB", (48, 40), c).save(folder / f"{i}.png")
    return pa.table({"item_id": np.arange(4), "raw_id": list("abcd"),
                     "title": ["red shoe", "red shoe", "red shoe", "apple pie"],
                     "cover": [f"{i}.png" for i in range(4)]})


def test_vlm_tokens_see_the_cover_and_the_text(tiny_vlm, tmp_path):
    items = _media(tmp_path / "media")
    cfg = ContentConfig(backend="vlm", model_path=str(tiny_vlm), media_root=str(tmp_path / "media"), batch_size=3,
                        tokens=2)
    t = item_tokens(items, cfg, cache_dir=tmp_path / "cache")
    assert t.shape == (4, 2, 32) and np.isfinite(t).all()
    np.testing.assert_allclose(t[0], t[2], atol=1e-4)  # same cover, same text
    assert np.abs(t[0] - t[1]).max() > 1e-3  # another cover colour changes the vectors
    assert np.abs(t[0] - t[3]).max() > 1e-3  # another text too
    # batch composition (padding) does not change an item's vectors
    one = item_tokens(items.slice(1, 1), ContentConfig(**{**cfg.__dict__, "batch_size": 1}))
    np.testing.assert_allclose(one[0], t[1], atol=1e-4)
    assert list((tmp_path / "cache").glob("content-vlm-*.tokens.safetensors"))


def test_vlm_reads_video_frames(tiny_vlm, tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for k in range(6):
            img = np.zeros((32, 32, 3), np.uint8)
            img[..., k % 3] = 200
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    items = pa.table({"item_id": [0], "raw_id": ["v"], "title": ["red shoe"], "video": [str(path)]})
    base = {"backend": "vlm", "model_path": str(tiny_vlm), "tokens": 2}
    with_frames = item_vectors(items, ContentConfig(**base, frames=3))
    text_only = item_vectors(items, ContentConfig(**base, frames=0))
    assert with_frames.shape == (1, 32) and np.abs(with_frames - text_only).max() > 1e-3


def test_vlm_names_a_missing_image(tiny_vlm, tmp_path):
    items = _media(tmp_path / "media")
    with pytest.raises(DataError, match="image not found"):
        item_vectors(items, ContentConfig(backend="vlm", model_path=str(tiny_vlm), media_root=str(tmp_path)))


def test_tokenize_simulated_run_with_covers_vlm_and_alignment(tiny_vlm, tmp_path):
    from onerec.io import read_json
    from onerec.pipeline import load_codes, stage_data, stage_tokenize

    run = tmp_path / "run"
    cfg = load_config(preset="tiny", overrides=[
        "data.sim.n_items=64", "data.sim.n_users=100", "data.sim.n_events=4000", "train.threads=1",
        "content.backend=vlm", f"content.model_path={tiny_vlm}", "content.batch_size=40", "content.frames=1",
        "content.align=true", "content.alignment.steps=10", "content.alignment.batch_size=32"])
    stage_data(run, cfg, progress=False)
    stage_tokenize(run, cfg, progress=False)
    assert len(list((run / "data" / "covers").glob("*.png"))) == 2 * 64  # cover + one frame each
    assert load_codes(run).shape[0] == 64
    metrics = read_json(run / "tokenizer" / "metrics.json")
    assert metrics["align"]["user_item_pairs"] > 0
    assert (run / "tokenizer" / "align" / "qformer.safetensors").exists()
