"""Atomic small-file writes: a reader (or a resume after a kill) sees the old file or the new
one, never half of one; a write that fails (a full disk) leaves no temporary file behind."""

from __future__ import annotations

import os
from pathlib import Path


def temp_path(path: Path) -> Path:
    """``.<name>.tmp-<pid>`` beside ``path``: the pattern ``remove_dead_writers_files`` clears."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = temp_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
