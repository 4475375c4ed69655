"""Caches of decoded datasets: ``.pt`` files under ``cache_dir()`` plus an in-process dict.

Entries are plain dicts of tensors, strings and ints, so they load with ``weights_only=True``.
The disk cache is only an optimization: a file that cannot be written or read back is ignored
(and rebuilt), never an error.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..settings import cache_dir

FORMAT_VERSION = 1

_MEMORY: dict[str, dict[str, Any]] = {}


def cache_key(*parts: object) -> str:
    """A short stable hash of ``parts`` (and the cache format version)."""
    text = "|".join(str(p) for p in (FORMAT_VERSION, *parts))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:24]


def cache_path(prefix: str, key: str) -> Path:
    """Where the disk entry for ``key`` lives (``prefix`` keeps file names readable)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in prefix)[:40] or "data"
    return cache_dir() / f"{safe}-{key}.pt"


def memory_get(key: str) -> dict[str, Any] | None:
    """The in-process entry for ``key``, if any."""
    return _MEMORY.get(key)


def memory_put(key: str, entry: dict[str, Any]) -> None:
    """Remember ``entry`` for the rest of this process."""
    _MEMORY[key] = entry


def clear_memory_cache() -> None:
    """Forget every in-process entry (disk files stay)."""
    _MEMORY.clear()


def disk_get(path: Path) -> dict[str, Any] | None:
    """Load a disk entry; ``None`` when it is missing, unreadable or of another format version."""
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated or foreign file: rebuild it
        return None
    if not isinstance(entry, dict) or entry.get("format") != FORMAT_VERSION:
        return None
    return entry


def disk_put(path: Path, entry: dict[str, Any]) -> bool:
    """Save atomically (temporary file, then ``os.replace``); ``False`` if the disk refused."""
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save({**entry, "format": FORMAT_VERSION}, f)
        os.chmod(tmp_name, 0o644)  # mkstemp makes it private; the cache is not secret
        os.replace(tmp_name, path)
        return True
    except OSError:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)
        return False
