"""Batched backends: the on-disk cache that resumes, and the sentence-transformers backend."""

import numpy as np
import pyarrow as pa
import pytest

from onerec.config import ContentConfig
from onerec.content import base, item_tokens, item_vectors
from onerec.content.text import segment_pool
from onerec.errors import ConfigError, DataError


def _items(n=10):
    words = ["red shoe", "blue shoe", "apple pie", "cherry pie", "trail shoe"]
    return pa.table({"item_id": np.arange(n), "raw_id": [str(i) for i in range(n)],
                     "title": [words[i % len(words)] + f" {i}" for i in range(n)]})


class _Hashing:
    """A deterministic batched backend (letter counts of the title) that counts its calls and can crash."""

    name = "hashing-test"

    def __init__(self, cfg):
        self.batch_size = cfg.batch_size
        self.calls: list[int] = []
        self.crash_after: int | None = None

    def fingerprint(self):
        return "hashing-v1"

    def encode_batch(self, items):
        if self.crash_after is not None and len(self.calls) >= self.crash_after:
            raise KeyboardInterrupt  # as if the run were killed
        self.calls.append(items.num_rows)
        out = np.zeros((items.num_rows, 2, 26), np.float32)
        for r, t in enumerate(items["title"].to_pylist()):
            for ch in t:
                if ch.isalpha():
                    out[r, 0, ord(ch) - 97] += 1
            out[r, 1, 0] = len(t)
        return out


@pytest.fixture
def hashing(monkeypatch):
    made: list[_Hashing] = []
    crash_after: dict[str, int | None] = {"n": None}

    def factory(cfg):
        made.append(_Hashing(cfg))
        made[-1].crash_after = crash_after["n"]
        return made[-1]

    monkeypatch.setitem(base._BACKENDS, "hashing-test", factory)
    return made, crash_after


def test_batched_cache_resumes_after_a_kill(tmp_path, hashing):
    made, crash_after = hashing
    cfg = ContentConfig(backend="hashing-test", batch_size=3)
    crash_after["n"] = 2
    with pytest.raises(KeyboardInterrupt):
        item_tokens(_items(), cfg, cache_dir=tmp_path)
    assert made[-1].calls == [3, 3]  # two batches finished before the kill
    assert len(list(tmp_path.glob("*.partial/*.safetensors"))) == 2
    crash_after["n"] = None
    tokens = item_tokens(_items(), cfg, cache_dir=tmp_path)
    assert made[-1].calls == [3, 1]  # only the missing batches were encoded
    assert tokens.shape == (10, 2, 26)
    np.testing.assert_array_equal(tokens, item_tokens(_items(), cfg, cache_dir=None))
    assert not list(tmp_path.glob("*.partial"))  # finished: the partial folder is gone
    again = item_tokens(_items(), cfg, cache_dir=tmp_path)
    assert made[-1].calls == []  # served from the cache
    np.testing.assert_array_equal(again, tokens)
    v = item_vectors(_items(), cfg, cache_dir=tmp_path)
    mean = tokens.mean(1)
    np.testing.assert_allclose(v, mean / np.linalg.norm(mean, axis=1, keepdims=True), rtol=1e-5)


def test_tfidf_tokens_are_its_vectors():
    cfg = ContentConfig(dim=3)
    t = item_tokens(_items(), cfg)
    assert t.shape == (10, 1, 3)
    np.testing.assert_array_equal(t[:, 0], item_vectors(_items(), cfg))


def test_segment_pool():
    h = np.arange(12, dtype=np.float32).reshape(1, 6, 2)
    mask = np.array([[1, 1, 1, 1, 0, 0]], bool)
    out = segment_pool(h, mask, 2)
    np.testing.assert_allclose(out[0], [h[0, :2].mean(0), h[0, 2:4].mean(0)])
    short = segment_pool(h, np.array([[1, 0, 0, 0, 0, 0]], bool), 3)
    np.testing.assert_allclose(short[0], np.repeat(h[0, :1], 3, axis=0))


def test_model_backends_need_a_local_folder(tmp_path):
    with pytest.raises(ConfigError, match="model_path"):
        item_vectors(_items(), ContentConfig(backend="sentence"))
    with pytest.raises(DataError, match="no model found"):
        item_vectors(_items(), ContentConfig(backend="sentence", model_path=str(tmp_path)))


def tiny_sentence_model(folder):
    """A randomly initialised one-layer BERT wrapped as a sentence-transformers model (no download)."""
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer
    try:  # sentence-transformers >= 6 (the old path still works there, with a DeprecationWarning)
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # 3.x - 5.x
        from sentence_transformers.models import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *["red", "blue", "shoe", "apple", "cherry", "pie", "trail"]]
    bert_dir = folder / "bert"
    bert_dir.mkdir(parents=True)
    BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}).save_pretrained(bert_dir)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32)).save_pretrained(bert_dir)
    model = SentenceTransformer(modules=[Transformer(str(bert_dir)), Pooling(16, "mean")])
    model.save(str(folder / "st"))
    return folder / "st"


def test_sentence_backend_from_a_local_folder(tmp_path):
    path = tiny_sentence_model(tmp_path / "model")
    cfg = ContentConfig(backend="sentence", model_path=str(path), batch_size=4, tokens=1)
    v = item_vectors(_items(), cfg, cache_dir=tmp_path / "cache")
    assert v.shape == (10, 16)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert (v[0] @ v[5]) > (v[0] @ v[2])  # items 0 and 5 have the same words ("red shoe"), 2 does not
    multi = item_tokens(_items(), ContentConfig(backend="sentence", model_path=str(path), tokens=3),
                        cache_dir=tmp_path / "cache")
    assert multi.shape == (10, 3, 16)
    assert len(list((tmp_path / "cache").glob("content-sentence-*.tokens.safetensors"))) == 2
