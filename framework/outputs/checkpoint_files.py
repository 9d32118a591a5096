"""Where a run's checkpoints lie, which of them can be read, and the housekeeping of the folder:
the part of ``scorelift.outputs.checkpoint`` that needs no Lightning, so that the start-up checks
(a resume's checkpoint, an ``init_from=`` run) answer without importing it.

Layout of ``<run>/checkpoints/``: see ``scorelift.outputs.checkpoint``.
"""

from __future__ import annotations

import errno
import os
import re
import zipfile
from pathlib import Path

from ..atomic import temp_path

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
OLDER_PATTERN = re.compile(r"^step_(\d+)\.ckpt$")
TEMP_MARK = ".tmp-"  # in the name of every temporary file a run writes: .<name>.tmp-<pid>
# Errors that mean "the volume (or this process's file-size limit) has no room for the write".
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def checkpoint_path(run_dir: Path) -> Path:
    """The newest checkpoint of a run: ``<run>/checkpoints/last.ckpt``."""
    return checkpoint_dir(run_dir) / LAST


def older_name(step: int) -> str:
    return f"step_{step:06d}.ckpt"


temp_name = temp_path  # .last.ckpt.tmp-<pid>


def no_space_error(exc: BaseException) -> OSError | None:
    """The OSError that says "no space" (ENOSPC, EDQUOT, or EFBIG from a file-size limit) behind
    ``exc``, if any. torch.save's zip writer reports a failed write as a RuntimeError whose
    context is the OSError, so the chain is searched."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a crash after it cannot bring the old name back)."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ------------------------------------------------------------------------------ reading
def read_step(path: Path) -> int:
    """The global step stored in checkpoint ``path``; raises if the file is not a complete,
    intact checkpoint. torch.load does not check the zip's CRC-32 checksums (a garbled tensor
    would load as wrong numbers), so every member is checked first (~1 GB/s), then the state is
    read without loading its tensors (mmap)."""
    with zipfile.ZipFile(path) as archive:  # BadZipFile for a truncated or foreign file
        bad = archive.testzip()
    if bad is not None:
        raise ValueError(f"its part {bad!r} fails its CRC-32 check (the file is garbled)")
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    if not isinstance(state, dict) or "state_dict" not in state or "global_step" not in state:
        raise ValueError("not a scorelift checkpoint (no state_dict / global_step)")
    return int(state["global_step"])


def older_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of the ``step_*.ckpt`` files in ``folder``, newest first."""
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = OLDER_PATTERN.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def candidates(run_dir: Path) -> list[Path]:
    """Every checkpoint of a run, newest first: last.ckpt, then the older ones by step."""
    folder = checkpoint_dir(run_dir)
    last = folder / LAST
    return ([last] if last.is_file() else []) + [p for _, p in older_checkpoints(folder)]


def has_checkpoint(run_dir: Path) -> bool:
    return bool(candidates(run_dir))


def first_readable(paths: list[Path]) -> tuple[Path | None, int | None, list[tuple[Path, str]]]:
    """The first of ``paths`` that reads as a checkpoint, its step, and (path, why) of each one
    skipped before it."""
    skipped = []
    for path in paths:
        try:
            return path, read_step(path), skipped
        except Exception as exc:  # noqa: BLE001  (a damaged file of any kind: say why and go on)
            skipped.append((path, f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"))
    return None, None, skipped


def newest_readable(run_dir: Path) -> Path | None:
    """The run's newest checkpoint that reads as one (last.ckpt, else the older ones by step), or None."""
    return first_readable(candidates(run_dir))[0]


# ------------------------------------------------------------------------------ housekeeping
def remove_dead_writers_files(run_dir: Path) -> list[Path]:
    """Remove the temporary files (``.<name>.tmp-<pid>``) of writers that died mid-write, in the
    run directory and its checkpoints/. Call only while holding the run directory's lock: then
    no live writer can own one. Returns what was removed."""
    removed = []
    for folder in (Path(run_dir), checkpoint_dir(run_dir)):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.is_file() and path.name.startswith(".") and (TEMP_MARK in path.name or path.name.startswith(".scorelift-write-test-")):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def set_aside(paths: list[Path]) -> list[Path]:
    """Rename damaged checkpoints to ``<name>.damaged`` (kept for inspection, out of the rotation
    and of resume's way; a later damaged file of the same name replaces it)."""
    moved = []
    for path in paths:
        if path.is_file():
            target = path.with_name(path.name + ".damaged")
            os.replace(path, target)
            moved.append(target)
    return moved
