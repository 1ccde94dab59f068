"""Exclusive ``flock`` on a lock file that is removed on release (no lock files left behind).

Used for a slide's lock (:func:`idcmap.batch.runner.slide_lock`) and the cohort table's
(:mod:`idcmap.output.cohort`). Locks die with their process (kill -9 included).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["file_lock"]


@contextmanager
def file_lock(path: Path, *, wait: bool) -> Iterator[bool]:
    """Hold an exclusive lock on ``path``; yields False (without waiting) when another process
    holds it and ``wait`` is False.

    The lock file is removed on release. A process that opened the file before that unlink and
    then gets the lock holds a lock on a file no longer at that path, so it checks, once it
    holds the lock, that the path still names the file it locked (same device and inode) and
    starts over otherwise: two processes can never both believe they hold the lock.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        try:
            on_disk = os.stat(path)
        except FileNotFoundError:
            on_disk = None
        held = os.fstat(fd)
        if on_disk is not None and (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)  # the holder before us removed (and someone may have re-made) the file
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):  # still holding the lock: nobody else is using it
            path.unlink()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
