"""Cheap covers and frames for the simulated world's videos, so a vision-language backend has an
image path that carries real signal.

Each video's cover is a small PNG: the background colour and the shape (circle, square, triangle,
diamond, ring, cross) follow its topic; the shape's position, size and a second tint follow the
video's latent vector (the one that drives who likes it), so images carry topic *and* within-topic
signal, as captions do. Frames move the shape along a path, so frames differ from the cover.

Rendering is on demand and additive: the simulated interactions are untouched; files go to
``RUN/data/covers/`` and existing files are kept, so a killed render resumes.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import pyarrow as pa

from onerec.errors import DataError
from onerec.io import atomic_path

SHAPES = ("circle", "square", "triangle", "diamond", "ring", "cross")


def _colour(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_cover(topic: int, n_topics: int, latent: np.ndarray, size: int = 64, frame: int | None = None):
    """One image: topic -> background hue and shape; latent -> position, size and shape tint."""
    from PIL import Image, ImageDraw

    lat = np.tanh(np.asarray(latent, dtype=np.float64)[:4]) if len(latent) >= 4 else np.zeros(4)
    hue = topic / max(1, n_topics)
    img = Image.new("RGB", (size, size), _colour(hue, 0.55, 0.9))
    d = ImageDraw.Draw(img)
    r = size * (0.22 + 0.08 * lat[2])
    cx, cy = size * (0.5 + 0.18 * lat[0]), size * (0.5 + 0.18 * lat[1])
    if frame is not None:  # frames: the shape travels on a small circle
        cx += size * 0.15 * np.cos(frame * 1.3)
        cy += size * 0.15 * np.sin(frame * 1.3)
    fill = _colour(hue + 0.5 + 0.15 * lat[3], 0.8, 0.35 + 0.3 * (lat[3] + 1) / 2)
    box = (cx - r, cy - r, cx + r, cy + r)
    shape = SHAPES[topic % len(SHAPES)]
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif shape == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif shape == "ring":
        d.ellipse(box, outline=fill, width=max(2, size // 12))
    else:
        w = r / 3
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
    return img


def render_covers(items: pa.Table, folder: str | Path, *, item_vec: np.ndarray | None = None,
                  n_topics: int | None = None,
                  size: int = 64, frames: int = 0, relative_to: str | Path | None = None) -> pa.Table:
    """Render a cover (and ``frames`` frames) per item into ``folder``; return ``items`` with a
    ``cover`` path column (and a ``frames`` list column), relative to ``relative_to`` if given."""
    if "topic" not in items.column_names:
        raise DataError("rendering covers needs the items' 'topic' column (a simulated world's items table)",
                        path="items.parquet", column="topic", fix="render covers for simulated data only")
    topic = items["topic"].to_numpy().astype(np.int64)
    n_topics = int(n_topics or topic.max() + 1)
    if item_vec is None:  # no world at hand: a per-item pseudo-latent, stable by item id
        item_vec = np.random.default_rng(0).standard_normal((len(topic), 4))
    if len(item_vec) != len(topic):
        raise DataError(f"{len(item_vec)} latent vectors for {len(topic)} items", fix="pass the world of this dataset")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = Path(relative_to) if relative_to is not None else None

    def rel(p: Path) -> str:
        return str(p.relative_to(base)) if base is not None else str(p)

    covers, frame_lists = [], []
    for i in range(len(topic)):
        path = folder / f"{i}.png"
        if not path.exists():  # written atomically, so a kept file is always a whole image
            with atomic_path(path) as tmp:
                draw_cover(int(topic[i]), n_topics, item_vec[i], size).save(tmp, format="PNG")
        covers.append(rel(path))
        fl = []
        for f in range(frames):
            fp = folder / f"{i}_f{f}.png"
            if not fp.exists():
                with atomic_path(fp) as tmp:
                    draw_cover(int(topic[i]), n_topics, item_vec[i], size, frame=f).save(tmp, format="PNG")
            fl.append(rel(fp))
        frame_lists.append(fl)
    out = items.append_column("cover", pa.array(covers))
    if frames:
        out = out.append_column("frames", pa.array(frame_lists, type=pa.list_(pa.string())))
    return out
