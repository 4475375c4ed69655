"""Tags and a note on a run, kept in ``<run>/notes.json`` (the studio's own file; the engine never reads it).

Pure Python (no Streamlit). Written atomically (a temporary file, then ``os.replace``), so a reader
never sees half a file; a missing or damaged file reads as no tags and no note.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from pruner.errors import PrunerError
from pruner.runs.rundir import CONFIG_FILE, RunDir, read_json, write_json_atomic

MAX_TAGS = 20
MAX_TAG_LEN = 40
MAX_NOTE_LEN = 10_000
_TAG_OK = re.compile(r"^[\w][\w .:+=/-]*$")


def notes_path(run_dir: str | Path) -> Path:
    return RunDir(run_dir).notes_path


def read_notes(run_dir: str | Path) -> dict:
    """``{"tags": [...], "note": "..."}`` of the run (empty when it has none, or the file is damaged)."""
    data = read_json(notes_path(run_dir)) or {}
    tags = data.get("tags")
    tags = [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []
    note = data.get("note") if isinstance(data.get("note"), str) else ""
    return {"tags": tags, "note": note}


def clean_tags(tags) -> list[str]:
    """Trimmed, distinct tags in the order given; a bad tag raises a one-line :class:`PrunerError`."""
    out: list[str] = []
    for tag in tags or []:
        if not isinstance(tag, str):
            raise PrunerError(f"tag {tag!r} is not text; tags are short words such as 'baseline' or 'gpu-run'")
        tag = " ".join(tag.split())
        if not tag:
            continue
        if len(tag) > MAX_TAG_LEN:
            raise PrunerError(f"tag {tag[:20]!r}… is longer than {MAX_TAG_LEN} characters; use a shorter tag")
        if not _TAG_OK.match(tag):
            raise PrunerError(f"tag {tag!r} may only use letters, digits, spaces and . : + = / - _ (start with a "
                              "letter or digit)")
        if tag not in out:
            out.append(tag)
    if len(out) > MAX_TAGS:
        raise PrunerError(f"{len(out)} tags on one run; keep at most {MAX_TAGS}")
    return out


def write_notes(run_dir: str | Path, tags=(), note: str = "") -> dict:
    """Replace the run's tags and note (checked first: nothing is written when one is bad)."""
    run_dir = Path(run_dir)
    if not RunDir(run_dir).config_path.is_file():
        raise PrunerError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); pick an existing run")
    tags = clean_tags(tags)
    if not isinstance(note, str):
        raise PrunerError("the note must be text")
    note = note.strip()
    if len(note) > MAX_NOTE_LEN:
        raise PrunerError(f"the note has {len(note):,} characters; keep it under {MAX_NOTE_LEN:,}")
    data = {"tags": tags, "note": note, "updated": time.time()}
    write_json_atomic(notes_path(run_dir), data)
    return {"tags": tags, "note": note}
