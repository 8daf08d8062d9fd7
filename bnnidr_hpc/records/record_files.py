"""Finding and opening record files whatever lies on disk: for readers of many run directories.

Used by: scaling.py (collect, tools/collect.py). Standard library only, like run_files.py.

Only regular files are read, and never in a way that can block (a FIFO named record.json) or
exhaust memory; symlinked directories are followed but each real directory is searched once, so a
loop ends; every entry that cannot be read is named with why.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from typing import Dict, List, Optional, Tuple

from bnnidr_hpc.records import run_files

MAX_BYTES = 64 << 20  # far above any record; reading a bigger file whole could exhaust memory
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def kind(path: str) -> Optional[str]:
    """Why the entry at path is not a regular file to read (None: it is). Stats, never opens."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if os.path.islink(path):
            why = {errno.ELOOP: "symlink loop", errno.ENOENT: "dangling symlink", errno.ENOTDIR: "dangling symlink"}
            return why.get(exc.errno, f"bad symlink ({exc.strerror})")
        return f"unreadable ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "a special file") + ", not a regular file"


def load(path: str) -> Tuple[object, Optional[str]]:
    """(parsed JSON, None) or (None, why). O_NONBLOCK: a FIFO swapped in after the stat opens at once
    (instead of waiting for a writer) and fstat turns it away."""
    why = kind(path)
    if why:
        return None, why
    try:
        with open(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None, "not a regular file"
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})"
    if len(raw) > MAX_BYTES:
        return None, f"larger than {MAX_BYTES >> 20} MiB: not a record"
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (ValueError, RecursionError) as exc:  # binary, truncated, nested ~1000 deep, a 5000-digit int
        return None, f"not valid JSON (truncated? binary?): {exc}"
    return data, None


def _is_dir(entry: os.DirEntry) -> bool:
    """Follows symlinks; DirEntry.is_dir raises for a symlink loop, where this says False."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def find_records(paths: List[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
    """(files to read, (path, why) of directories not searched). A path that is not a directory is a
    file to read, even when missing or a FIFO: read() says what is wrong with it. Under a directory,
    every entry named record.json, whatever its type; symlinked directories are followed, but each
    real directory is searched once: a loop ends, and one reached twice is named."""
    found: List[str] = []
    skipped: List[Tuple[str, str]] = []
    seen: Dict[Tuple[int, int], str] = {}
    for top in paths:
        if not os.path.isdir(top):
            found.append(top)
            continue
        under, stack = [], [top]
        while stack:
            folder = stack.pop()
            try:
                st = os.stat(folder)
                if (st.st_dev, st.st_ino) in seen:
                    skipped.append((folder, f"directory already searched as {seen[st.st_dev, st.st_ino]}"))
                    continue
                seen[st.st_dev, st.st_ino] = folder
                with os.scandir(folder) as it:  # sorted: which path is found first is stable
                    entries = sorted((os.path.join(folder, e.name), e.name, _is_dir(e)) for e in it)
            except OSError as exc:
                skipped.append((folder, f"directory not searchable ({exc.strerror or exc})"))
                continue
            under.extend(path for path, name, _ in entries if name == run_files.RECORD)
            stack.extend(reversed([path for path, _, is_dir in entries if is_dir]))
        found.extend(sorted(under, key=lambda p: p.split(os.sep)))  # pathlib's order, as sorted(rglob) gave
    return found, skipped
