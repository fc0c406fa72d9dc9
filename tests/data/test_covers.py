import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("PIL")

from onerec.config import SimConfig
from onerec.data.covers import render_covers
from onerec.data.simulator import simulate
from onerec.errors import DataError


def test_covers_follow_topic_and_resume(tmp_path):
    from PIL import Image

    ds, world = simulate(SimConfig(n_users=40, n_items=30, n_events=800, seed=0))
    before = ds.interactions
    items = world.render_covers(ds.items, tmp_path / "covers", size=32, frames=2, relative_to=tmp_path)
    assert items.column_names[-2:] == ["cover", "frames"]
    assert ds.interactions.equals(before)  # rendering is additive
    paths = items["cover"].to_pylist()
    assert paths[0] == "covers/0.png" and len(items["frames"][0].as_py()) == 2
    pix = np.stack([np.asarray(Image.open(tmp_path / p)) for p in paths]).astype(float)
    corner = pix[:, 0, 0]  # background colour = topic
    topic = world.item_topic
    same = [(i, j) for i in range(30) for j in range(30) if i < j and topic[i] == topic[j]]
    diff = [(i, j) for i in range(30) for j in range(30) if i < j and topic[i] != topic[j]]
    assert all(np.array_equal(corner[i], corner[j]) for i, j in same)
    assert np.mean([np.abs(corner[i] - corner[j]).sum() > 0 for i, j in diff]) > 0.9
    assert not np.array_equal(pix[0], np.asarray(Image.open(tmp_path / items["frames"][0].as_py()[0])))
    mtime = (tmp_path / paths[0]).stat().st_mtime_ns
    world.render_covers(ds.items, tmp_path / "covers", size=32, relative_to=tmp_path)
    assert (tmp_path / paths[0]).stat().st_mtime_ns == mtime  # existing files are kept


def test_covers_need_topics(tmp_path):
    with pytest.raises(DataError, match="topic"):
        render_covers(pa.table({"item_id": [0]}), tmp_path)
