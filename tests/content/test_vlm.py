"""The vision-language backend end to end with tiny randomly initialised models (no download): Qwen2-VL,
Qwen2.5-VL, Qwen3-VL and MiniCPM-V 4.6 built from configs (see conftest.py), and the remote-code opt-in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("transformers")
pytest.importorskip("PIL")

from onerec.config import ContentConfig, load_config
from onerec.content import item_tokens, item_vectors
from onerec.content.vlm import VLMBackend
from onerec.errors import ConfigError, DataError

WORDS = ["red", "blue", "shoe", "apple", "pie", "cherry", "Title", "Caption", "Tags", "Speech",
         "Describe", "this", "short", "video", "for", "a", "recommender"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory, tiny_vlm_builder):
    return tiny_vlm_builder(tmp_path_factory.mktemp("tiny-qwen2-vl"), WORDS)


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


def _video(path: Path) -> Path:
    av = pytest.importorskip("av")
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
    return path


def test_vlm_reads_video_frames(tiny_vlm, tmp_path):
    path = _video(tmp_path / "clip.mp4")
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


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "minicpmv4_6"])
def test_vlm_family_end_to_end(family, tiny_vlm_builder, tmp_path, monkeypatch):
    """Each family: text + cover + listed frames + a decoded video -> pooled token vectors that depend on
    every input, independent of batching, cached per batch and resumed after a kill."""
    from PIL import Image

    model = tiny_vlm_builder(tmp_path / family, WORDS, family)
    media = tmp_path / "media"
    media.mkdir()
    for name, colour, size in [("red", (250, 0, 0), (48, 40)), ("blue", (0, 0, 250), (48, 40)),
                               ("wide", (0, 200, 0), (120, 60)), ("f1", (0, 250, 250), (32, 32)),
                               ("f2", (250, 250, 0), (32, 32))]:
        Image.new("RGB", size, colour).save(media / f"{name}.png")  # "wide" is sliced by MiniCPM-V
    video = str(_video(media / "clip.mp4"))
    items = pa.table({
        "item_id": np.arange(6), "raw_id": list("abcdef"),
        "title": ["red shoe", "red shoe", "red shoe", "apple pie", "red shoe", "red shoe"],
        "cover": ["red.png", "blue.png", "red.png", "red.png", "wide.png", "red.png"],
        "frames": [[], [], [], [], [], ["f1.png", "f2.png"]],
        "video": [None, None, None, None, video, None]})
    cfg = ContentConfig(backend="vlm", model_path=str(model), media_root=str(media), batch_size=2, tokens=2,
                        frames=2)
    calls: list[int] = []
    encode = VLMBackend.encode_batch

    def killed_after_two(self, batch):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(batch.num_rows)
        return encode(self, batch)

    monkeypatch.setattr(VLMBackend, "encode_batch", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        item_tokens(items, cfg, cache_dir=tmp_path / "cache")
    assert calls == [2, 2] and len(list((tmp_path / "cache").glob("*.partial/*.safetensors"))) == 2
    monkeypatch.setattr(VLMBackend, "encode_batch", lambda self, batch: calls.append(-1) or encode(self, batch))
    t = item_tokens(items, cfg, cache_dir=tmp_path / "cache")
    assert calls == [2, 2, -1]  # resumed: only the last batch was encoded
    assert t.shape == (6, 2, 32) and np.isfinite(t).all()
    np.testing.assert_allclose(t, item_tokens(items, ContentConfig(**{**cfg.__dict__, "batch_size": 4})), atol=1e-4)
    np.testing.assert_allclose(t[0], t[2], atol=1e-4)  # same cover, same text
    for other in (1, 3, 4, 5):  # another cover; another text; + a sliced cover and video; + two frames
        assert np.abs(t[0] - t[other]).max() > 1e-3, other
    no_frames = item_tokens(items.slice(4, 2), ContentConfig(**{**cfg.__dict__, "frames": 0}))
    assert np.abs(no_frames - t[4:]).max(axis=(1, 2)).min() > 1e-3  # the video and the frames were read


REMOTE_CONFIG = """from transformers import Qwen2VLConfig


class TinyKeyeConfig(Qwen2VLConfig):
    model_type = "tiny_keye"
"""
REMOTE_MODEL = """from transformers import Qwen2VLForConditionalGeneration

from .configuration_tiny_keye import TinyKeyeConfig


class TinyKeyeForConditionalGeneration(Qwen2VLForConditionalGeneration):
    config_class = TinyKeyeConfig

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.hidden_states = tuple(h + 1000.0 for h in out.hidden_states)  # proof that this code ran
        return out
"""


def test_remote_code_is_an_explicit_opt_in(tiny_vlm, tmp_path, monkeypatch):
    """A folder like Kwai-Keye/Keye-VL-8B-Preview: config.json maps the Auto classes to Python files in
    the folder. Without content.trust_remote_code the backend refuses, naming the files and the flag;
    with it, the folder's own model class runs."""
    import json
    import shutil

    import transformers.dynamic_module_utils as dyn

    monkeypatch.setattr(dyn, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))  # keep ~/.cache clean
    folder = tmp_path / "tiny-keye"
    shutil.copytree(tiny_vlm, folder)
    (folder / "configuration_tiny_keye.py").write_text(REMOTE_CONFIG)
    (folder / "modeling_tiny_keye.py").write_text(REMOTE_MODEL)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="tiny_keye", architectures=["TinyKeyeForConditionalGeneration"], auto_map={
        "AutoConfig": "configuration_tiny_keye.TinyKeyeConfig",
        "AutoModelForImageTextToText": "modeling_tiny_keye.TinyKeyeForConditionalGeneration"})
    (folder / "config.json").write_text(json.dumps(config))
    # the saved file uses the original Qwen2-VL key names, which transformers maps for model_type qwen2_vl
    # only; a remote-code model (as Keye-VL's own file) names its weights as its modules do
    from safetensors.torch import save_file
    from transformers import Qwen2VLForConditionalGeneration

    state = Qwen2VLForConditionalGeneration.from_pretrained(tiny_vlm).state_dict()
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    items = _media(tmp_path / "media")
    base = {"backend": "vlm", "model_path": str(folder), "media_root": str(tmp_path / "media"), "tokens": 2}
    with pytest.raises(ConfigError, match=r"modeling_tiny_keye\.py.*content\.trust_remote_code=true"):
        item_tokens(items, ContentConfig(**base))
    remote = item_tokens(items, ContentConfig(**base, trust_remote_code=True))
    native = item_tokens(items, ContentConfig(**{**base, "model_path": str(tiny_vlm)}))
    np.testing.assert_allclose(remote, native + 1000.0, atol=1e-3)  # same weights, plus the custom code's shift
