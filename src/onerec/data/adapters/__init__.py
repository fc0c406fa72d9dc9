"""Dataset adapters: public dataset layouts -> the canonical tables of :mod:`onerec.data.schema`.

Each adapter reads one layout, builds tables keyed by the source's raw ids, and hands them to
:func:`onerec.data.schema.make_dataset`, which densifies ids and validates. Where the source has
integer ids, dense ids follow them (the source's item order is kept). Bad input stops with one
:class:`~onerec.errors.DataError` naming the file, the place in it and the fix.

=============  ==========================================================  ====================
source         layout                                                      adapter
=============  ==========================================================  ====================
amazon2014     S3Rec ``<Cat>.txt`` + ``<Cat>_item2attributes.json``        :func:`load_amazon2014`
lcrec          LC-Rec ``<name>.inter.json`` + ``<name>.item.json``         :func:`load_lcrec`
recbole        RecBole atomic ``.inter`` / ``.item`` / ``.user``           :func:`load_recbole`
kuairand       KuaiRand official CSVs (``log_*.csv``, feature files)       :func:`load_kuairand`
kuairec        KuaiRec 2.0 official CSVs (``small/big_matrix.csv``, ...)   :func:`load_kuairec`
table          your own ``interactions.csv|tsv|parquet`` (+ items, users)  :func:`load_table`
parquet        a folder already in canonical layout                        :meth:`Dataset.load`
=============  ==========================================================  ====================

:func:`detect_source` tells them apart by the files each reads (``source="auto"`` in :func:`load`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onerec.data.adapters.amazon2014 import load_amazon2014
from onerec.data.adapters.detect import LAYOUTS, detect_source
from onerec.data.adapters.kuairand import load_kuairand
from onerec.data.adapters.kuairec import load_kuairec
from onerec.data.adapters.lcrec import load_lcrec
from onerec.data.adapters.recbole import load_recbole
from onerec.data.adapters.table import load_table
from onerec.data.schema import Dataset
from onerec.errors import DataError


def load_parquet(path: str | Path, name: str | None = None) -> Dataset:
    """Read a folder already in the canonical layout (written by :meth:`Dataset.save`)."""
    ds = Dataset.load(path)
    if name is not None:
        ds.meta["name"] = name
    return ds


ADAPTERS: dict[str, Callable[..., Dataset]] = {
    "amazon2014": load_amazon2014,
    "lcrec": load_lcrec,
    "recbole": load_recbole,
    "kuairand": load_kuairand,
    "kuairec": load_kuairec,
    "table": load_table,
    "parquet": load_parquet,
}


def load(source: str, path: str | Path, name: str | None = None, **options: Any) -> Dataset:
    """Load a dataset of the given source layout into the canonical tables.

    Args:
        source: One of :data:`ADAPTERS` (``amazon2014``, ``lcrec``, ``recbole``, ``kuairand``,
            ``kuairec``, ``table``, ``parquet``), or ``auto``: the layout found at ``path`` (:func:`detect_source`,
            which also infers ``name`` where the layout names one dataset).
        path: The dataset's folder (or main file).
        name: Dataset name inside the folder (e.g. ``Beauty``), where the layout has several.
        **options: Adapter options, e.g. ``text_path`` (amazon2014), ``matrix`` (kuairec),
            ``logs`` (kuairand), ``time_unit`` / ``user_column`` (table), ``keep_unused``.

    Returns:
        The validated :class:`~onerec.data.schema.Dataset`.
    """
    if source == "auto":
        source, name = detect_source(path, name)
    fn = ADAPTERS.get(source)
    if fn is None:
        raise DataError(f"unknown data source '{source}'", fix=f"use one of: auto, {', '.join(ADAPTERS)}")
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("path", "name")]
    for key in options:
        if key not in allowed:
            raise DataError(f"unknown option '{key}' for source '{source}'",
                            fix=f"options of '{source}': {', '.join(allowed) or 'none'}")
    if not Path(path).exists():
        raise DataError("no such file or folder", path=str(path), fix="check data.path")
    return fn(path, name, **options)


__all__ = [
    "ADAPTERS",
    "LAYOUTS",
    "detect_source",
    "load",
    "load_amazon2014",
    "load_kuairand",
    "load_kuairec",
    "load_lcrec",
    "load_parquet",
    "load_recbole",
    "load_table",
]
