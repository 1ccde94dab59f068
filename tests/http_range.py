"""A static HTTP server on 127.0.0.1 with Range requests, as object stores answer them.

The stdlib's ``SimpleHTTPRequestHandler`` ignores ``Range``; tiffslide reads a remote TIFF
through fsspec with ranged GETs, so tests and benchmarks need a server that honours them. It
also counts the bytes it sends per file (what a worker reads from "the bucket").
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class RangeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.bytes_sent: Counter[str] = Counter()  # file name → body bytes sent
        self.requests: Counter[str] = Counter()
        self.ranges: list[tuple[str, int, int]] = []  # (file name, first byte, length)
        self._count_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def count(self, name: str, start: int, n: int) -> None:
        with self._count_lock:
            self.bytes_sent[name] += n
            self.requests[name] += 1
            self.ranges.append((name, start, n))


class _Handler(BaseHTTPRequestHandler):
    server: RangeServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _file(self) -> Path | None:
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        p = (self.server.root / rel).resolve()
        if self.server.root not in p.parents or not p.is_file():
            return None
        return p

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        p = self._file()
        if p is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = p.stat().st_size
        start, end = 0, size - 1
        status = 200
        m = _RANGE.match(self.headers.get("Range", "").strip())
        if m and (m.group(1) or m.group(2)):
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # suffix range: the last N bytes
                start = max(0, size - int(m.group(2)))
            if start > end or start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        n = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(n))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not body:
            return
        with open(p, "rb") as f:
            f.seek(start)
            data = f.read(n)
        # counted before it is sent: a client that has the bytes must see the request counted
        self.server.count(p.name, start, n)
        self.wfile.write(data)


@contextmanager
def serve(root: str | os.PathLike[str]) -> Iterator[RangeServer]:
    """Serve ``root`` on a free port of 127.0.0.1 for the duration of the block."""
    srv = RangeServer(Path(root))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
