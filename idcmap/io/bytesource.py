"""Where :class:`~idcmap.io.jpegtiff.JpegTiffReader` gets a slide's bytes: a local file
(``os.pread`` on one descriptor) or an object behind an fsspec file system (HTTP range
requests, S3/GCS ranged GETs). Both are thread-safe, so worker threads share one source.

A reader asks for all the tiles of a region at once (:meth:`ByteSource.read_ranges`): locally
that is one ``pread`` per tile; remotely, the ranges are merged where they nearly touch (tiles
of a row usually lie one after the other in the file) and fetched concurrently with fsspec's
``cat_ranges``, so a block of tiles costs a few round trips, not one per tile.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Protocol

__all__ = ["ByteSource", "FsspecSource", "LocalSource", "merge_ranges"]

_HAVE_PREAD = hasattr(os, "pread")

#: Remote ranges closer than this are fetched as one request (the gap's bytes are discarded):
#: on an object store a request's round trip costs more than 256 KiB of transfer, as for the
#: fsspec block size of :mod:`idcmap.io.remote`. A 40x slide's tile pass over HTTP (the 1-µm
#: level at 1/4, `benchmarks/read_rules.py --remote`): 10.5 MB in 48 requests with a 64 KiB
#: gap, 13.7 MB in 25 with 256 KiB, the same with 1 MiB (the rows of a block then touch).
MERGE_GAP_BYTES = 1 << 18
#: No merged request is longer than this (keeps memory and a retry's cost bounded).
MERGE_MAX_BYTES = 1 << 24


class ByteSource(Protocol):
    """Byte ranges of one file; ``name`` is its file name (for messages)."""

    name: str

    def open(self) -> IO[bytes]:
        """A new binary file object on the source (for tifffile to parse the header); the
        caller closes it."""
        ...

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of each (offset, length), in order.

        Raises:
            OSError: a range cannot be read in full (truncated file, network failure).
        """
        ...

    def close(self) -> None: ...


class LocalSource:
    """A local file read with ``os.pread`` on one descriptor (one seek + read under a lock
    where there is no ``pread``, i.e. Windows)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(Path(path))
        self.name = Path(path).name
        self._lock = threading.Lock()
        self._fd: int | None = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))

    def open(self) -> IO[bytes]:
        return open(self.path, "rb")

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        return [self._read(off, n) for off, n in ranges]

    def _read(self, off: int, n: int) -> bytes:
        fd = self._fd
        if fd is None:
            raise ValueError(f"{self.name}: the reader was closed")
        if _HAVE_PREAD:
            data = os.pread(fd, n, off)
        else:
            with self._lock:
                os.lseek(fd, off, os.SEEK_SET)
                data = os.read(fd, n)
        if len(data) != n:
            raise OSError(f"{self.name}: short read at byte {off} (truncated file?)")
        return data

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class FsspecSource:
    """An object read through an fsspec file system: ``fs.cat_ranges`` for tiles, ``fs.open``
    (with ``block_size`` / ``cache_type``) for tifffile's parse of the header."""

    def __init__(self, fs: Any, path: str, name: str, *, block_size: int, cache_type: str) -> None:
        self.fs, self.path, self.name = fs, path, name
        self._open_kw = {"block_size": block_size, "cache_type": cache_type}

    def open(self) -> IO[bytes]:
        f: IO[bytes] = self.fs.open(self.path, "rb", **self._open_kw)
        return f

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        if not ranges:
            return []
        groups = merge_ranges(ranges, MERGE_GAP_BYTES, MERGE_MAX_BYTES)
        starts = [g[0] for g in groups]
        ends = [g[1] for g in groups]
        try:
            got = self.fs.cat_ranges([self.path] * len(groups), starts, ends, on_error="raise")
        except OSError:
            raise
        except Exception as e:  # aiohttp / botocore errors: one OSError type for the reader
            raise OSError(f"{self.name}: ranged read failed ({type(e).__name__}: {e})") from e
        out: list[bytes] = []
        for (start, end, members), data in zip(groups, got, strict=True):
            if len(data) != end - start:
                raise OSError(
                    f"{self.name}: {len(data)} bytes for the range {start}-{end} (truncated "
                    "object, or a server that ignores Range?)"
                )
            view = memoryview(data)
            out.extend(bytes(view[off - start : off - start + n]) for off, n in members)
        return out

    def close(self) -> None:
        pass


def merge_ranges(
    ranges: Sequence[tuple[int, int]], max_gap: int, max_len: int
) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """Group (offset, length) ranges into requests [start, end) whose members are at most
    ``max_gap`` bytes apart and span at most ``max_len`` bytes (a single longer range keeps its
    own request). Returns (start, end, members in input order) per request; every input range
    is a member of exactly one request, and the members of each request, concatenated over the
    requests in order, are the input in order."""
    out: list[tuple[int, int, list[tuple[int, int]]]] = []
    for off, n in ranges:
        if out:
            start, end, members = out[-1]
            lo, hi = min(start, off), max(end, off + n)
            near = off <= end + max_gap and off + n >= start - max_gap
            if near and hi - lo <= max_len:
                members.append((off, n))
                out[-1] = (lo, hi, members)
                continue
        out.append((off, off + n, [(off, n)]))
    return out
