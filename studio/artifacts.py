"""The files of a run that a page offers for download: which exist, where, and how they are labelled.

Pure functions (no Streamlit). Only files inside the run directory are offered: a summary that
names a path outside it (``../``, an absolute path, a link leading out) offers nothing for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pruner.runs.rundir import RunDir

#: (summary["artifacts"] key, label, mime type); "summary" is summary.json itself
DOWNLOADS = (
    ("onnx", "ONNX model", "application/octet-stream"),
    ("int8", "INT8 ONNX model", "application/octet-stream"),
    ("checkpoint", "Checkpoint", "application/octet-stream"),
    ("program", "Program (.pt2)", "application/octet-stream"),
    ("summary", "Summary JSON", "application/json"),
    ("candidates", "Candidates CSV", "text/csv"),
)


@dataclass(frozen=True)
class Download:
    key: str
    label: str
    mime: str
    path: Path
    size: int          # bytes
    relative: str      # path inside the run directory

    @property
    def help(self) -> str:
        return f"{self.relative} · {self.size / 1e6:,.2f} MB"


def downloads(run_dir: str | Path, summary: dict | None) -> list[Download]:
    """The run's artifacts that exist, in :data:`DOWNLOADS` order (summary.json whenever there is one)."""
    if not summary:
        return []
    rd = RunDir(run_dir)
    root = rd.path.resolve()
    found = []
    for key, label, mime in DOWNLOADS:
        path = rd.artifact(key, summary)
        if path is None:
            continue
        try:
            size = path.stat().st_size
        except OSError:
            continue
        found.append(Download(key, label, mime, path, size, str(path.relative_to(root))))
    return found
