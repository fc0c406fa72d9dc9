"""Which adapter reads a dataset folder: :func:`detect_source` looks at the files each adapter reads.

``data.source=auto`` (the default) means "simulate when no ``data.path`` is given, else detect the
layout here", so a given path is never ignored. The rules, one per adapter:

=============  ======================================================================================
source         detected when the folder (or a data/ folder below it, for the official archives) holds
=============  ======================================================================================
parquet        ``dataset.json`` (the canonical layout :meth:`Dataset.save` writes; also ``RUN/data``)
recbole        ``<name>.inter`` (RecBole atomic files; ``.item`` / ``.user`` optional)
lcrec          ``<name>.inter.json`` (LC-Rec; ``<name>.item.json`` optional)
amazon2014     ``<Cat>.txt`` together with ``<Cat>_item2attributes.json`` (S3Rec)
kuairand       ``log_*.csv`` (official KuaiRand logs)
kuairec        ``small_matrix.csv`` or ``big_matrix.csv`` (official KuaiRec 2.0)
table          ``interactions.csv``, ``.tsv`` or ``.parquet`` without a ``dataset.json`` (your own tables)
=============  ======================================================================================

A path that is a file is read by its ending: ``.inter`` (recbole), ``.inter.json`` (lcrec), ``<Cat>.txt``
beside ``<Cat>_item2attributes.json`` (amazon2014), ``.csv`` / ``.tsv`` / ``.parquet`` (table: the interactions).
Where the layout names its datasets (recbole, lcrec, amazon2014) the name is inferred when the folder holds one;
a folder holding several needs ``data.name``.
No match, or matches of several layouts that ``data.name`` does not settle, is a :class:`DataError` that
lists what was found and the ``data.source=...`` to pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from onerec.data.adapters._common import find_data_dir
from onerec.data.adapters.table import ENDINGS, table_files
from onerec.data.checks import broken_link
from onerec.errors import DataError

#: the data folders below a given path that the KuaiRand / KuaiRec adapters also look in
_KUAIRAND_SUBDIRS = ("data", "KuaiRand-Pure/data", "KuaiRand-1K/data", "KuaiRand-27K/data")
_KUAIREC_SUBDIRS = ("data", "KuaiRec 2.0/data", "KuaiRec/data")

#: what each source reads, for the error messages
LAYOUTS = {
    "parquet": "dataset.json + interactions/items/users.parquet",
    "recbole": "<name>.inter (+ .item, .user)",
    "lcrec": "<name>.inter.json (+ <name>.item.json)",
    "amazon2014": "<Cat>.txt + <Cat>_item2attributes.json",
    "kuairand": "log_*.csv (+ user_features_*.csv, video_features_basic_*.csv)",
    "kuairec": "small_matrix.csv or big_matrix.csv (+ side tables)",
    "table": "interactions.csv|tsv|parquet (+ items.*, users.*)",
}


@dataclass
class _Match:
    source: str
    names: list[str] = field(default_factory=list)  # dataset names the layout offers (empty: unnamed)


def detect_source(path: str | Path, name: str | None = None) -> tuple[str, str | None]:
    """The adapter (``data.source``) for the dataset at ``path``, and its name.

    Args:
        path: the dataset's folder or main file (``data.path``).
        name: ``data.name`` if given: it picks one of several datasets in the folder (a unique prefix
            works, as in the adapters) and settles a folder where two layouts match.

    Returns:
        ``(source, name)``: ``name`` is the given one, else the one the layout names when the folder holds
        exactly one (``ml-100k`` for ``ml-100k.inter``), else None (kuairand, kuairec and parquet need none).

    Raises:
        DataError: no such path; no known layout (the message lists the files found); several layouts, or
            several datasets of a named layout, that ``name`` does not settle (it lists them and the
            ``data.source=`` / ``data.name=`` to pass).
    """
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise broken_link(p)
    if not p.exists():
        raise DataError("no such file or folder", path=str(p), fix="check data.path")
    matches = _file_matches(p) if p.is_file() else _folder_matches(p)
    if name is not None and len(matches) > 1:  # the name settles which layout is meant
        named = [m for m in matches if _pick(m.names, name)]
        matches = named or matches
    if not matches:
        tables = sorted(f.name for f in p.iterdir() if f.is_file() and f.suffix in ENDINGS) if p.is_dir() else []
        lead = ""
        if len(tables) == 1:  # one table of its own naming (ratings.csv, events.csv): most likely the interactions
            lead = (f"if {tables[0]} holds the interactions (one row per user and item), point data.path at it: "
                    f"data.path={p / tables[0]} (or name it interactions{Path(tables[0]).suffix}); else ")
        elif tables:
            lead = (f"if one of {', '.join(tables)} holds the interactions, point data.path at it "
                    f"(data.path={p}/<that file>) or name it interactions.csv; else ")
        raise DataError(f"no known dataset layout (found: {_listing(p)})", path=str(p),
                        fix=lead + "point data.path at the dataset's files, or pass the source whose files are "
                            "there: " + "; ".join(f"data.source={s} ({lay})" for s, lay in LAYOUTS.items()))
    if len(matches) > 1:
        found = "; ".join(f"{m.source} ({', '.join(m.names) or LAYOUTS[m.source]})" for m in matches)
        raise DataError(f"several dataset layouts match: {found}", path=str(p),
                        fix="pass one of " + ", ".join(f"data.source={m.source}" for m in matches)
                            + (" (or data.name=... to pick the dataset)" if any(m.names for m in matches) else ""))
    (m,) = matches
    if name is not None or not m.names:
        return m.source, name
    if len(m.names) == 1:
        return m.source, m.names[0]
    raise DataError(f"the folder holds several {m.source} datasets: {', '.join(m.names)}", path=str(p),
                    fix=f"pass data.name=... with one of them, e.g. data.name={m.names[0]}")


def _pick(names: list[str], name: str) -> list[str]:
    """The names ``name`` selects: itself, else those it is a prefix of (as :func:`resolve_file` reads it)."""
    return [name] if name in names else [n for n in names if n.startswith(name)]


def _file_matches(p: Path) -> list[_Match]:
    fname = p.name
    if fname.endswith(".inter.json"):
        return [_Match("lcrec", [fname[: -len(".inter.json")]])]
    if fname.endswith(".inter"):
        return [_Match("recbole", [fname[: -len(".inter")]])]
    if fname.endswith(".txt") and (p.parent / f"{p.stem}_item2attributes.json").is_file():
        return [_Match("amazon2014", [p.stem])]
    if p.suffix in ENDINGS:
        return [_Match("table")]
    return []


def _folder_matches(p: Path) -> list[_Match]:
    files = [f for f in p.iterdir() if f.is_file()]
    names = {f.name for f in files}
    out: list[_Match] = []
    if "dataset.json" in names:
        out.append(_Match("parquet"))
    recbole = sorted(n[: -len(".inter")] for n in names if n.endswith(".inter"))
    if recbole:
        out.append(_Match("recbole", recbole))
    lcrec = sorted(n[: -len(".inter.json")] for n in names if n.endswith(".inter.json"))
    if lcrec:
        out.append(_Match("lcrec", lcrec))
    amazon = sorted(n[: -len(".txt")] for n in names
                    if n.endswith(".txt") and f"{n[: -len('.txt')]}_item2attributes.json" in names)
    if amazon:
        out.append(_Match("amazon2014", amazon))
    if any(f.is_file() for f in find_data_dir(p, "log_*.csv", _KUAIRAND_SUBDIRS).glob("log_*.csv")):
        out.append(_Match("kuairand"))
    if "dataset.json" not in names and "interactions" in table_files(p):
        out.append(_Match("table"))
    for matrix in ("small", "big"):
        if (find_data_dir(p, f"{matrix}_matrix.csv", _KUAIREC_SUBDIRS) / f"{matrix}_matrix.csv").is_file():
            out.append(_Match("kuairec"))
            break
    return out


def _listing(p: Path, most: int = 12) -> str:
    """A short listing of what is at ``p``: its file and folder names (folders end with /)."""
    if p.is_file():
        return p.name
    entries = sorted(p.iterdir())
    shown = [e.name + ("/" if e.is_dir() else "") for e in entries[:most]]
    more = f", ... ({len(entries) - most} more)" if len(entries) > most else ""
    return (", ".join(shown) + more) if shown else "an empty folder"
