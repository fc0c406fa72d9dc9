import numpy as np
import pyarrow as pa
import pytest

from onerec.config import ContentConfig
from onerec.content import item_vectors
from onerec.errors import DataError


def _items():
    titles = ["red running shoe", "blue running shoe", "trail running shoe", "green apple pie", "apple crumble pie",
              "cherry pie recipe"]
    return pa.table({"item_id": np.arange(6), "raw_id": [str(i) for i in range(6)], "title": titles,
                     "tags": [["shoes"], ["shoes"], ["shoes"], ["food"], ["food"], ["food"]]})


def test_vectors_group_similar_text_and_are_cached(tmp_path):
    cfg = ContentConfig(dim=4)
    v = item_vectors(_items(), cfg, cache_dir=tmp_path)
    assert v.shape == (6, 4) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    sims = v @ v.T
    assert sims[0, 1] > sims[0, 4] and sims[3, 4] > sims[3, 0]
    cached = list(tmp_path.glob("content-tfidf-*.safetensors"))
    assert len(cached) == 1
    np.testing.assert_array_equal(item_vectors(_items(), cfg, cache_dir=tmp_path), v)
    # a changed catalogue gets its own cache entry
    changed = _items().set_column(2, "title", pa.array(["x"] * 6))
    item_vectors(changed.append_column("text", pa.array(["a b", "c d", "e f", "g h", "i j", "k l"])), cfg,
                 cache_dir=tmp_path)
    assert len(list(tmp_path.glob("content-tfidf-*.safetensors"))) == 2


def test_cjk_text_uses_character_ngrams():
    items = pa.table({"item_id": np.arange(4), "raw_id": list("abcd"),
                      "text": ["今天吃火锅", "火锅真好吃", "篮球比赛精彩", "篮球明星比赛"]})
    v = item_vectors(items, ContentConfig(dim=3), cache_dir=None)
    sims = v @ v.T
    assert sims[0, 1] > sims[0, 2] and sims[2, 3] > sims[2, 0]


def test_no_text_fields_is_a_clear_error():
    items = pa.table({"item_id": np.arange(3), "raw_id": list("abc")})
    with pytest.raises(DataError, match=r"content\.text_fields"):
        item_vectors(items, ContentConfig(), cache_dir=None)
