"""The one atomic writer: build the output under a hidden temporary name beside the target, then rename.

A reader never sees half an output and a failure leaves none (the temporary is removed). Every
temporary is named ``.{target name}.{12 hex}.tmp`` in the target's folder (same file system, so
the rename is atomic).

- :func:`atomic_path`: one file (JSON, PNG, GeoTIFF, checkpoints), ``os.replace``-d into place.
- :func:`atomic_dir`: one directory (a store, a registry entry, a STAC catalog, a Zarr array),
  renamed into place; with ``replace=True`` an existing directory is swapped out and deleted.
- :class:`AtomicFiles`: several files of one folder committed together (inpainting outputs).

Temporaries left by a killed writer of the same target are removed by the next :func:`atomic_dir`
on it (one writer per target at a time, which every caller guarantees).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def temp_name(path: str | Path) -> Path:
    """A fresh temporary path for ``path``: ``.{name}.{12 hex}.tmp`` in the same folder."""
    path = Path(path)
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"


def stale_temps(path: str | Path) -> list[Path]:
    """Temporaries of ``path`` left by killed writers (:func:`temp_name` names)."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{12}}\.tmp")
    if not path.parent.is_dir():
        return []
    return [p for p in path.parent.iterdir() if pattern.fullmatch(p.name)]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temp path beside ``path`` for the caller to create; on success it replaces ``path``,
    on error it is deleted. The writer creates the file (so it gets the usual umask permissions)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a new empty temp directory beside ``path``; on success it is renamed to ``path``, on
    error it is deleted. ``replace=False``: an existing ``path`` is an error (``FileExistsError``,
    checked before and at the rename); ``replace=True``: an existing ``path`` is moved aside and
    deleted once the new one is in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_temps(path):
        _remove(stale)
    if path.exists() and not replace:
        raise FileExistsError(f"{path} already exists")
    tmp = temp_name(path)
    tmp.mkdir()
    try:
        yield tmp
        _rename_dir(tmp, path, replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _rename_dir(tmp: Path, path: Path, replace: bool) -> None:
    """Move directory ``tmp`` to ``path`` (an existing ``path`` only with ``replace``)."""
    if not path.exists():
        try:
            os.rename(tmp, path)  # fails on a non-empty directory created meanwhile
            return
        except OSError as exc:
            if not replace:
                raise FileExistsError(f"{path} was created by another writer meanwhile") from exc
    if not replace:
        raise FileExistsError(f"{path} already exists")
    old = temp_name(path)
    os.replace(path, old)
    os.replace(tmp, path)
    _remove(old)


class AtomicFiles:
    """Several output files committed together: each is written at :meth:`temp` (inside one hidden
    temp directory beside the first of them), and :meth:`commit` renames them all into place. As a
    context manager the temp directory is removed on exit; without a commit nothing reaches the
    outputs' folders."""

    def __init__(self, final_paths: list[Path]):
        self.final_paths = [Path(p).resolve() for p in final_paths]
        if len({p.name for p in self.final_paths}) != len(self.final_paths):
            raise ValueError(f"output names must differ: {[p.name for p in self.final_paths]}")
        self.tmp_dir = temp_name(self.final_paths[0])
        self.tmp_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir()

    def temp(self, final: Path | str) -> Path:
        """The temp path standing for ``final`` (a scratch name when ``final`` is not an output)."""
        final = Path(final)
        if final.resolve() in self.final_paths:
            return self.tmp_dir / final.name
        return self.tmp_dir / f"scratch-{uuid.uuid4().hex}-{final.name}"

    def commit(self) -> None:
        """Rename every output into place (each rename is atomic)."""
        for final in self.final_paths:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.tmp_dir / final.name, final)

    def __enter__(self) -> "AtomicFiles":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """``obj`` as indented, key-sorted JSON (non-JSON values via ``str``)."""
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())
