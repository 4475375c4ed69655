"""Files written whole or not at all: the one place the engine writes a file atomically.

Each writer fills a temporary file beside the target, fsyncs it and renames it over the target;
on any failure (a full disk: ENOSPC, EIO) the temporary file is removed and the OSError raised,
so no half-written file or stray ``.tmp`` is left. Tensors are serialised into memory first:
torch's own zip writer on a full disk raises from C++ (or aborts), where Python's ``write`` raises
a plain OSError.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def torch_save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)``, serialised in memory and written with :func:`write_bytes_atomic`."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())
