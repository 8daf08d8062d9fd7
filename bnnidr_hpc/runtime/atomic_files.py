"""Atomic file writes: a temp file beside the target, fsynced, then renamed over it, with the
permissions the umask allows; a failed write (a full disk) is one line naming the path.

Used by: records/run_files.py (every file of a run directory; it re-exports these names),
data/neighbours.py (the k-nearest-neighbour graph's cache). Standard library only: collect reads
records through run_files without torch.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


class RunFileError(OSError):
    """A file that could not be written (full disk, permissions); str() is one line."""

    def __str__(self) -> str:
        return str(self.strerror)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp makes 0600 files; collaborators on a shared file system read what the umask allows.
FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write through `write(file)` into a temp file beside `path`, fsync, then rename over it:
    the old file stays whole until the new one is. A failed write (ENOSPC...) is one line."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise RunFileError(exc.errno, f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, RunFileError):
            name = errno.errorcode.get(exc.errno, "error") if exc.errno else "error"
            raise RunFileError(exc.errno, f"cannot write {path}: {exc.strerror or exc} ({name}); "
                               "the file it would replace is kept") from None
        raise
