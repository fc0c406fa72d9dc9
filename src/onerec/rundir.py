"""Run-directory integrity: each stage's folder appears whole or not at all, and says what it was made from.

A stage (``data``, ``tokenizer``, ``train``, ``eval``, ``reward``, ``align``: the folders of a run directory) writes
into ``RUN/<stage>.staging/`` and, only once it completed, writes ``manifest.json`` there and swaps the folder in
for ``RUN/<stage>`` (:func:`staged`). A failed or killed stage therefore leaves the previous ``RUN/<stage>`` exactly
as it was (the half-written staging folder is ignored by every reader and removed by the stage's next run).

The manifest holds the fingerprints of the folder's files and of the stages it was made from (its inputs, see
:data:`STAGE_INPUTS`); its own fingerprint is a hash of both. Before a stage reads its inputs it checks the chain
(:func:`check_inputs`): every input's files are the ones its manifest lists, and every input was itself made from the
stages now in the run. A stale or damaged stage stops with one error that names the stage to rerun, e.g. after
``onerec data`` wrote another data set into a run whose tokenizer was made from the old one.

Folders written by onerec before manifests existed have none. They are accepted as they are while every stage
they were made from has none either ("legacy"), and refused as stale once one of those was rewritten.

A swap is two renames (``RUN/<stage>`` -> ``RUN/<stage>.old``, staging -> ``RUN/<stage>``); :func:`recover`, which
every stage runs first, completes a swap that a kill interrupted between them, or rolls it back, and removes
temporary files orphaned by killed writers (:func:`onerec.io.atomic_path`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from onerec.errors import DataError
from onerec.io import read_json, write_json

MANIFEST = "manifest.json"
LEGACY = "legacy"  # the fingerprint of a folder written before manifests existed
# the stage folders of a run and the stage folders each one reads
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "data": (),
    "tokenizer": ("data",),
    "train": ("data", "tokenizer"),
    "eval": ("data", "tokenizer", "train"),
    "reward": ("data", "tokenizer"),
    "align": ("data", "tokenizer", "train", "reward"),
    "explore": ("data",),
    "edge": ("data",),
}
# the command that (re)writes each stage folder
COMMANDS = {"data": "onerec data --out {run}", "tokenizer": "onerec tokenize {run}", "train": "onerec train {run}",
            "eval": "onerec eval {run}", "reward": "onerec reward {run}", "align": "onerec align {run}",
            "explore": "onerec explore {run}", "edge": "onerec edge {run}"}
# sub-folders that are not part of what a stage produced: caches and resume state that later runs rewrite
# (the content-vector cache and rendered covers in data/, a SASRec fit's epochs in tokenizer/, training checkpoints)
VOLATILE: dict[str, tuple[str, ...]] = {"data": ("cache", "covers"), "tokenizer": ("sasrec",),
                                        "train": ("checkpoints",)}
# files another command writes into a finished stage folder (``onerec tune-prior``'s grid in eval/)
ADDED_LATER: dict[str, tuple[str, ...]] = {"eval": ("prior.json",)}
# stages whose staging folder a failed run keeps, so that ``--resume`` continues in it
RESUMABLE = ("tokenizer", "train")
ORPHAN_AGE_S = 300.0  # a temporary file untouched this long belongs to a writer that is gone


def command(stage: str, run: str | os.PathLike[str]) -> str:
    """The command that (re)writes ``stage`` of ``run``, as a user types it."""
    return COMMANDS[stage].format(run=run)


def staging_folder(run: Path, stage: str) -> Path:
    return Path(run) / f"{stage}.staging"


def _old_folder(run: Path, stage: str) -> Path:
    return Path(run) / f"{stage}.old"


# ----------------------------------------------------------------------- fingerprints
_DIGESTS: dict[tuple[int, int, int, int], str] = {}  # (device, inode, size, mtime_ns) -> sha256, this process's


def file_digest(path: Path) -> str:
    """The sha256 of ``path``, read once per process for each version of the file: a chain is checked by every stage,
    by ``load_recommender`` inside it, and by ``generate`` / ``serve``, but a file only changes by a writer's rename
    (a new inode) or an edit in place (a new mtime or size)."""
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = _DIGESTS[key] = h.hexdigest()
    return digest


def _listed_files(folder: Path, stage: str) -> list[str]:
    """The files of a finished stage folder that its manifest lists (relative POSIX paths, sorted)."""
    skip = set(VOLATILE.get(stage, ())) | set(ADDED_LATER.get(stage, ())) | {MANIFEST}
    out = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        rel_root = Path(root).relative_to(folder)
        if rel_root == Path("."):
            dirs[:] = [d for d in dirs if d not in skip]
        for name in files:
            rel = (rel_root / name).as_posix()
            if rel in skip or _is_temporary(name):
                continue
            out.append(rel)
    return sorted(out)


def _is_temporary(name: str) -> bool:
    """A name :func:`onerec.io.atomic_path` writes before its rename (``.NAME.XXXX.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


def write_manifest(folder: Path, stage: str, inputs: dict[str, str], extra: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """Fingerprint the files of the finished stage folder ``folder`` and write its manifest (the last file a stage
    writes). Returns the manifest."""
    files = {rel: {"bytes": (folder / rel).stat().st_size, "sha256": file_digest(folder / rel)}
             for rel in _listed_files(folder, stage)}
    body = {"stage": stage, "inputs": dict(sorted(inputs.items())), "files": files}
    fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    manifest = {**body, "fingerprint": fingerprint, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **(extra or {})}
    write_json(folder / MANIFEST, manifest)
    return manifest


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / MANIFEST
    return read_json(path) if path.is_file() else None


def _stale(run: Path, stage: str, why: str) -> DataError:
    later = [s for s, ins in STAGE_INPUTS.items() if stage in ins]
    after = f" (and then the stages made from it: {', '.join(later)})" if later else ""
    return DataError(f"stage '{stage}' is stale: {why}", path=str(run / stage),
                     fix=f"rerun `{command(stage, run)}`{after}")


def fingerprint(run: str | os.PathLike[str], stage: str, *, _seen: dict[str, str] | None = None) -> str:
    """The fingerprint of ``RUN/<stage>`` after checking it and, recursively, every stage it was made from:
    its files are the ones its manifest lists and its inputs are the stages now in the run. :data:`LEGACY` for a
    folder written before manifests existed. Raises :class:`DataError` naming the stage to rerun."""
    run = Path(run)
    seen = {} if _seen is None else _seen
    if stage in seen:
        return seen[stage]
    folder = run / stage
    if not folder.is_dir():
        raise DataError(f"no {stage}/ folder: stage '{stage}' has not been run", path=str(run),
                        fix=f"run `{command(stage, run)}` first")
    manifest = read_manifest(folder)
    if manifest is None:  # written by an onerec without manifests: fine while what it was made from is too
        for up in STAGE_INPUTS[stage]:
            if (run / up).is_dir() and fingerprint(run, up, _seen=seen) != LEGACY:
                raise _stale(run, stage, f"it has no manifest (an older onerec wrote it) but '{up}' was rewritten "
                                         "since")
        seen[stage] = LEGACY
        return LEGACY
    for rel, want in manifest.get("files", {}).items():
        path = folder / rel
        if not path.is_file():
            raise _stale(run, stage, f"its file {rel} is missing")
        if path.stat().st_size != want["bytes"] or file_digest(path) != want["sha256"]:
            raise _stale(run, stage, f"its file {rel} is not the one the stage wrote (changed or damaged since)")
    for up, want in manifest.get("inputs", {}).items():
        have = fingerprint(run, up, _seen=seen)
        if have != want:
            raise _stale(run, stage, f"it was made from another '{up}' stage than the one now in the run "
                                     f"('{up}' was rewritten since)")
    seen[stage] = manifest["fingerprint"]
    return manifest["fingerprint"]


def check_inputs(run: str | os.PathLike[str], stage: str) -> dict[str, str]:
    """Check the chain of stages that ``stage`` reads (see :func:`fingerprint`); returns their fingerprints."""
    run = Path(run)
    recover(run)
    seen: dict[str, str] = {}
    return {up: fingerprint(run, up, _seen=seen) for up in STAGE_INPUTS[stage]}


# ------------------------------------------------------------------------ writing
def _link_tree(src: Path, dst: Path) -> None:
    """Copy the folder ``src`` to ``dst`` with hard links where the file system allows (files are only ever
    replaced by rename, never rewritten in place, so a link shares nothing that changes)."""
    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, symlinks=True, copy_function=link, dirs_exist_ok=True)


@contextlib.contextmanager
def staged(run: str | os.PathLike[str], stage: str, *, resume: bool = False,
           carry: tuple[str, ...] = ()) -> Iterator[Path]:
    """Write ``RUN/<stage>`` whole or not at all: check the stages it reads, yield ``RUN/<stage>.staging``, and
    when the block completes write its manifest and swap it in for ``RUN/<stage>``.

    ``carry``: names in the current ``RUN/<stage>`` to keep (linked into the staging folder first, e.g. a cache).
    ``resume``: continue in a staging folder a killed run left, or else in a copy of the finished stage (its
    checkpoints); without it a left staging folder is discarded. On an error the staging folder is removed,
    except for the :data:`RESUMABLE` stages (a later ``--resume`` continues in it)."""
    run = Path(run)
    inputs = check_inputs(run, stage)
    final, staging = run / stage, staging_folder(run, stage)
    if staging.exists() and not resume:
        shutil.rmtree(staging)
    if resume and not staging.exists() and final.is_dir():
        _link_tree(final, staging)
        (staging / MANIFEST).unlink(missing_ok=True)
    staging.mkdir(parents=True, exist_ok=True)
    for name in (*carry, *ADDED_LATER.get(stage, ())):
        src = final / name
        if src.exists() and not (staging / name).exists():
            if src.is_dir():
                _link_tree(src, staging / name)
            else:
                shutil.copy2(src, staging / name)
    try:
        yield staging
    except BaseException:
        if stage not in RESUMABLE:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    write_manifest(staging, stage, inputs)
    _swap(run, stage)


def _swap(run: Path, stage: str) -> None:
    final, staging, old = run / stage, staging_folder(run, stage), _old_folder(run, stage)
    if old.exists() or old.is_symlink():
        _remove(old)
    if final.exists() or final.is_symlink():
        os.replace(final, old)
    os.replace(staging, final)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def recover(run: str | os.PathLike[str], *, orphan_age_s: float = ORPHAN_AGE_S) -> list[str]:
    """Repair what a kill can leave in ``run``: finish a swap interrupted between its renames (its staging folder
    has a manifest, so it completed) or roll it back (the ``.old`` folder returns), and remove temporary files
    that killed writers left (untouched for ``orphan_age_s``). Returns what it did, one line each."""
    run = Path(run)
    done: list[str] = []
    if not run.is_dir():
        return done
    for stage in STAGE_INPUTS:
        final, staging, old = run / stage, staging_folder(run, stage), _old_folder(run, stage)
        try:
            if not final.exists() and (staging / MANIFEST).is_file():
                os.replace(staging, final)
                done.append(f"{stage}: finished an interrupted swap")
            elif not final.exists() and old.exists():
                os.replace(old, final)
                done.append(f"{stage}: rolled back an interrupted swap")
            if final.exists() and (old.exists() or old.is_symlink()):
                _remove(old)
        except FileNotFoundError:  # another process finished the same swap
            continue
    now = time.time()
    for folder in [run, *(run / s for s in STAGE_INPUTS), run / "data" / "cache"]:
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            try:
                if _is_temporary(path.name) and path.is_file() and now - path.stat().st_mtime > orphan_age_s:
                    path.unlink()
                    done.append(f"removed orphaned temporary file {path}")
            except FileNotFoundError:
                continue
    return done
