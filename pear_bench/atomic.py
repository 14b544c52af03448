"""Files written so that no reader, crash or workflow ever sees a half-written one.

Every output a later step (or Snakemake) takes as done goes through ``write_atomic``: the bytes go
to a temporary file in the same directory, then ``os.replace`` puts it under its name in one step.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` through a temporary sibling and ``os.replace``.

    Parent directories are created. If anything fails, ``path`` keeps its old content and the
    temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
