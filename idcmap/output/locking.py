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
    starts over otherwise: two processes can never both believe they hold the lock. An
    interruption (Ctrl-C) while the lock is being taken leaves no lock file behind either.
    """
    fd = _acquire(path, wait)
    if fd is None:
        yield False
        return
    try:
        yield True
    finally:
        _release(path, fd)


def _acquire(path: Path, wait: bool) -> int | None:
    """The locked descriptor of ``path`` (None: another process holds it and ``wait`` is False)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:  # interrupted before holding it: remove the file if it is free
            _drop_if_free(path, fd)
            raise
        try:
            ours = _names(path, fd)
        except BaseException:
            _release(path, fd)
            raise
        if ours:
            return fd
        os.close(fd)  # the holder before us removed (and someone may have re-made) the file


def _names(path: Path, fd: int) -> bool:
    """Does ``path`` still name the file open as ``fd``?"""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def _release(path: Path, fd: int) -> None:
    """Remove the lock file we hold the lock on (nobody else is using it), then let go."""
    if _names(path, fd):
        with contextlib.suppress(OSError):
            path.unlink()
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _drop_if_free(path: Path, fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # someone else holds it: their file
        os.close(fd)
        return
    _release(path, fd)
