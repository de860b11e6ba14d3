"""The proof that a folder holds nothing but one run's files: a manifest the run writes last.

`.reprod-manifest.json` lists every file the run wrote, by its path in the folder, with its size,
and for files up to HASHED_UP_TO (the reports, logs and maps a person might edit) its sha256;
larger files (tensor dumps) are held to their size, so checking a folder never re-reads gigabytes.
A folder may be replaced only when each of its entries is a listed file that still matches, or a
folder holding only such files; removing a previous set goes file by file, each checked again,
and whatever is not proven a run's own is never removed.

A folder without a manifest (one written by an earlier version, or by anyone else) proves
nothing: none of its files is a run's own, so it is never replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

NAME = ".reprod-manifest.json"
FORMAT = "reprod-harness artifacts 1"
HASHED_UP_TO = 1 << 20
_MAX_MANIFEST_BYTES = 64 << 20  # far beyond any real run's listing; a bigger file is not ours


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _entry(path: Path, size: int) -> dict:
    return {"size": size, "sha256": _sha256(path)} if size <= HASHED_UP_TO else {"size": size}


def _files(folder: Path) -> dict:
    """Every regular file under folder (no link followed), by its path in it, less the manifest."""
    found = {}
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(root, name)
            rel = path.relative_to(folder).as_posix()
            if rel != NAME and path.is_file() and not path.is_symlink():
                found[rel] = _entry(path, path.stat().st_size)
    return found


def write(folder: Path) -> None:
    """The manifest of everything in folder (a run's staging folder, complete), written last."""
    _save(Path(folder), _files(Path(folder)))


def _save(folder: Path, files: dict) -> None:
    tmp = folder / f".{NAME}.tmp"
    tmp.write_text(json.dumps({"format": FORMAT, "files": files}, indent=1, sort_keys=True))
    os.replace(tmp, folder / NAME)


def read(folder: Path) -> dict | None:
    """{path: entry} of folder's manifest, or None when it has none that a run wrote."""
    path = Path(folder) / NAME
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > _MAX_MANIFEST_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), dict):
        return None
    return data["files"]


def _matches(path: Path, entry) -> bool:
    try:
        if path.is_symlink() or not path.is_file() or not isinstance(entry, dict):
            return False
        size = path.stat().st_size
        return size == entry.get("size") and ("sha256" not in entry or _sha256(path) == entry["sha256"])
    except OSError:
        return False


def foreign(folder: Path) -> list:
    """What in folder is not proven a run's own, as shown to a person ('notes.md', 'src/',
    'report.json (changed since the run wrote it)'); empty when all of it is."""
    folder = Path(folder)
    listed = read(folder)
    strangers = []
    for root, dirs, names in os.walk(folder):
        rel_root = Path(root).relative_to(folder)
        for name in sorted(dirs):
            rel = (rel_root / name).as_posix()
            if Path(root, name).is_symlink() or listed is None or not any(f.startswith(rel + "/") for f in listed):
                strangers.append(f"{rel}/")
        dirs[:] = [d for d in dirs if f"{(rel_root / d).as_posix()}/" not in strangers]
        for name in sorted(names):
            rel = (rel_root / name).as_posix()
            if rel == NAME and listed is not None:
                continue
            if listed is None or rel not in listed:
                strangers.append(rel)
            elif not _matches(Path(root, name), listed[rel]):
                strangers.append(f"{rel} (changed since the run wrote it)")
    return strangers


def discard(folder: Path) -> bool:
    """Removes a previous set file by file, each still matching the manifest, then its emptied
    folders; True when nothing is left. What is not proven a run's own stays where it is (and the
    manifest with it)."""
    folder = Path(folder)
    for rel, entry in (read(folder) or {}).items():
        path = _inside(folder, rel)
        if path is not None and _matches(path, entry):
            path.unlink()
    for root, dirs, _names in os.walk(folder, topdown=False):
        for name in dirs:
            _rmdir(Path(root, name))
    if set(os.listdir(folder)) <= {NAME}:
        (folder / NAME).unlink(missing_ok=True)
        _rmdir(folder)
    return not folder.exists()


def _inside(folder: Path, rel: str) -> Path | None:
    """folder/rel when it names a place inside folder reached through no link, else None."""
    parts = Path(rel).parts
    if not parts or Path(rel).is_absolute() or ".." in parts:
        return None
    if any((folder / Path(*parts[:i])).is_symlink() for i in range(1, len(parts))):
        return None
    return folder / rel


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()  # only when empty
    except OSError:
        pass


def amend(folder: Path, name: str) -> None:
    """After a run's own command rewrote one of its files (`report --html`): the manifest says so."""
    folder = Path(folder)
    listed = read(folder)
    path = folder / name
    if listed is None or not path.is_file():
        return
    listed[name] = _entry(path, path.stat().st_size)
    _save(folder, listed)
