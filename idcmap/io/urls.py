"""Slide paths and URLs: which strings are remote slides, their file names, and the name a
slide's outputs go under (no network, no fsspec)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import TypeGuard
from urllib.parse import unquote, urlsplit

__all__ = ["REMOTE_SCHEMES", "is_url", "slide_stem", "url_name"]

#: URL schemes taken as remote slides (fsspec protocols).
REMOTE_SCHEMES = ("http", "https", "s3", "gs", "gcs", "az", "abfs")


def is_url(path: object) -> TypeGuard[str]:
    """True for a ``str`` with a remote scheme (a ``Path`` would have lost the ``//`` already)."""
    if not isinstance(path, str) or "://" not in path:
        return False
    return path.split("://", 1)[0].lower() in REMOTE_SCHEMES


def url_name(url: str) -> str:
    """The last path part of a URL, without query or fragment (``…/a.svs?X-Amz-…`` → ``a.svs``)."""
    return unquote(PurePosixPath(urlsplit(url).path).name)


def slide_stem(path: str | Path) -> str:
    """Output-folder name of a slide: its file name without extension (``a.ome.tiff`` → ``a``);
    for a URL, its last path part (``https://h/b/a.svs?sig=…`` → ``a``)."""
    name = url_name(path) if is_url(path) else Path(path).name
    for ext in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem if Path(name).suffix else name
