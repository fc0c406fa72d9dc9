"""Published semantic-ID indexes (LC-Rec JSON layout) read as item codes.

An index file maps item keys to one token per level: ``{"<key>": ["<a_12>", "<b_7>", ...]}``
(the layout of the LC-Rec / LETTER releases; level ``i`` uses the letter ``chr(97 + i)``). Such
an index can replace our tokenizer (``tokenizer.index``) so that the same generator and protocol
compare item IDs only.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from onerec.errors import DataError
from onerec.io import read_json
from onerec.tokenizer.rq import add_unique_level, code_metrics

_TOKEN = re.compile(r"^<([a-z])_(\d+)>$")


def load_index(path: str | Path, keys: list[str]) -> np.ndarray:
    """Codes int64 [N, L] of the items ``keys`` (in dense item order) from a published index file."""
    path = Path(path)
    if not path.is_file():
        raise DataError("index file not found", path=str(path), fix="name an existing <name>.index.json file")
    obj = read_json(path)
    rows = []
    for key in keys:
        tokens = obj.get(str(key))
        if tokens is None:
            raise DataError(f"item '{key}' has no semantic ID", path=str(path),
                            fix="the index must cover every item of the dataset")
        row = []
        for level, tok in enumerate(tokens):
            m = _TOKEN.match(str(tok))
            if m is None or ord(m.group(1)) - ord("a") != level:
                raise DataError(f"item '{key}': token {tok!r} at level {level} is not '<{chr(97 + level)}_N>'",
                                path=str(path), fix="each item maps to ['<a_N>', '<b_N>', ...]")
            row.append(int(m.group(2)))
        rows.append(row)
    if len({len(r) for r in rows}) != 1:
        raise DataError("items have IDs of different lengths", path=str(path), fix="use a fixed-depth index")
    return np.array(rows, dtype=np.int64)


def index_keys(raw_ids: list, offset: int = 0, *, path: str | None = None) -> list[str]:
    """The index keys of items (or users) with these raw ids: the raw id itself, or, with ``offset``,
    the numeric raw id plus ``offset`` (-1 maps the 1-based S3Rec Amazon ids to the 0-based LC-Rec
    files)."""
    raw = [str(r) for r in raw_ids]
    if not offset:
        return raw
    bad = next((r for r in raw if not r.lstrip("-").isdigit()), None)
    if bad is not None:
        raise DataError(f"tokenizer.index_offset={offset} needs numeric raw ids; '{bad}' is not", path=path,
                        column="raw_id", fix="set tokenizer.index_offset=0")
    return [str(int(r) + offset) for r in raw]


def unique_codes(codes: np.ndarray) -> tuple[np.ndarray, list[int], dict]:
    """A published index's codes made unique per item: where two items share an ID, the same extra
    collision level as ours (:func:`onerec.tokenizer.add_unique_level`, item order) is appended.

    Returns:
        codes int64 ``[N, L(+1)]``, the vocabulary size of every level, and :func:`code_metrics`
        of the index as published (collision rate, ...).
    """
    codes_t = torch.as_tensor(codes)
    sizes = [int(codes_t[:, i].max()) + 1 for i in range(codes_t.shape[1])]
    stats = code_metrics(codes_t, sizes)
    if stats["collision_rate"] > 0:
        codes_t, extra = add_unique_level(codes_t)
        sizes.append(int(extra))
    return codes_t.numpy(), sizes, stats
