"""Remote slides: ``http(s)://``, ``s3://``, ``gs://`` URLs read through fsspec and tiffslide.

OpenSlide reads local files only; tiffslide reads a TIFF-based slide (SVS, generic or OME
pyramidal TIFF, NDPI...) from any fsspec file system with ranged reads, so a worker reads only
the tiles it needs straight from the object store. Tiled-JPEG levels are read as local ones are:
by :class:`~idcmap.io.jpegtiff.JpegTiffReader` (scaled IDCT, the level chosen for full-resolution
colour) over an :class:`~idcmap.io.bytesource.FsspecSource`; tiffslide reads the rest.

``s3://`` needs ``s3fs``, ``gs://`` needs ``gcsfs`` (credentials as those libraries find them:
environment, config files, instance roles); ``http(s)://`` needs ``aiohttp``.

Every failure (unreachable host, missing object, missing fsspec backend) is one
:class:`~idcmap.errors.SlideError` line naming the URL.
"""

from __future__ import annotations

from typing import Any

from idcmap.errors import SlideError, UnsupportedImageError, UsageError
from idcmap.io.bytesource import FsspecSource
from idcmap.io.info import build_info
from idcmap.io.jpegtiff import JpegTiffReader
from idcmap.io.readers import TiffSlideReader, non_rgb_message
from idcmap.io.slide import Slide, SlideInfo, close_quietly, probe, reason
from idcmap.io.tiffmeta import tiff_facts
from idcmap.io.urls import url_name

#: Bytes per ranged read, and an LRU of such blocks per reader handle (fsspec's "blockcache").
#: fsspec's default (5 MB read-ahead) made tiffslide fetch 71 of a 72 MB 40x slide's bytes over
#: HTTP; with 256 KiB blocks in an LRU, the 377 MB 40x benchmark slide costs 8.3 MB in 34
#: requests (read-ahead 256 KiB: 17.5 MB / 71; no cache: 5.2 MB / 387). See docs/cluster.md.
BLOCK_BYTES = 1 << 18
CACHE_TYPE = "blockcache"

_PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def _fs(url: str) -> tuple[Any, str]:
    scheme = url.split("://", 1)[0].lower()
    try:
        from fsspec.core import url_to_fs

        return url_to_fs(url)
    except ImportError as e:
        pkg = _PACKAGES.get(scheme, "aiohttp" if scheme.startswith("http") else "fsspec")
        raise SlideError(
            f"{url}: reading {scheme}:// slides needs the {pkg} package "
            f"(pip install 'idcmap[distributed]' {pkg})"
        ) from e


def remote_size(url: str) -> int:
    """Size in bytes of the object at ``url``; a :class:`SlideError` line when it cannot be had."""
    fs, path = _fs(url)
    try:
        info = fs.info(path)
    except FileNotFoundError as e:
        # fsspec's HTTP backend raises FileNotFoundError for a refused connection too
        cause = e.__cause__
        status = getattr(cause, "status", None)  # aiohttp's ClientResponseError
        if cause is None or isinstance(cause, FileNotFoundError) or status == 404:
            raise SlideError(f"{url}: not found (no such object, HTTP 404); check the URL") from e
        if status in (401, 403):
            raise SlideError(f"{url}: access denied (HTTP {status}); check the credentials") from e
        if status is not None:
            raise SlideError(f"{url}: the server answered HTTP {status}; try again later") from e
        raise SlideError(
            f"{url}: cannot be reached ({reason(cause)}); check the URL and the network"
        ) from e
    except PermissionError as e:
        raise SlideError(f"{url}: access denied ({reason(e)}); check the credentials") from e
    except Exception as e:  # connection refused, DNS, TLS, timeouts: the backends' own types
        raise SlideError(
            f"{url}: cannot be reached ({reason(e)}); check the URL and the network"
        ) from e
    size = info.get("size")
    if size == 0:
        raise SlideError(f"{url}: the object is empty; upload it again")
    return int(size or 0)


def open_remote_slide(
    url: str, *, backend: str = "auto", mpp: float | None = None, allow_non_rgb: bool = False
) -> Slide:
    """Open a slide at a URL with tiffslide (what :func:`~idcmap.io.open_slide` calls for URLs).

    Raises:
        UsageError: ``backend`` other than ``auto``/``tiffslide`` (OpenSlide cannot read URLs).
        SlideError: unreachable, missing or unreadable object.
        ResolutionError, UnsupportedImageError: as for local slides.
    """
    if backend not in ("auto", "tiffslide"):
        raise UsageError(
            f"backend={backend!r} cannot read URLs (OpenSlide and PIL read local files only); "
            "use backend='tiffslide' or 'auto' for remote slides, or copy the slide locally"
        )
    remote_size(url)  # one clear line for a 404 or an unreachable host, before any parsing
    try:
        with _open_file(url) as f:
            facts = tiff_facts(f)  # tifffile takes file objects too
    except Exception:
        facts = None
    if facts is None:
        raise SlideError(
            f"{url_name(url)}: not a TIFF-based slide; remote slides are read with tiffslide "
            "(SVS, NDPI, pyramidal or OME TIFF); copy other formats locally"
        )
    if facts.damaged is not None:
        raise SlideError(
            f"{url_name(url)}: a damaged or truncated TIFF; upload it again", detail=facts.damaged
        )
    scaling: Any = None
    if facts.non_rgb is not None:
        if not allow_non_rgb:
            raise UnsupportedImageError(non_rgb_message(url_name(url), facts.non_rgb))
        scaling = True
    reader: Any = None
    try:
        reader = _remote_reader(url, scaling)
        first = reader.scaling
        factory: Any = lambda: _remote_reader(url, first)  # noqa: E731 - a handle per thread
        probe(reader)
    except Exception as e:
        close_quietly(reader)
        raise SlideError(
            f"{url_name(url)}: the remote file cannot be decoded ({reason(e)}); it may be "
            "truncated or use an unsupported compression"
        ) from e
    info = build_info(url, "tiffslide", reader, facts, mpp)
    jpeg = _jpeg_reader(url, info) if scaling is None else None
    return Slide(info, reader, factory, jpeg)


def _jpeg_reader(url: str, info: SlideInfo) -> JpegTiffReader | None:
    """The scaled-IDCT reader of a remote slide, on range requests (as
    :func:`idcmap.io.open.open_slide` makes one for a local file); None when tifffile's view of
    its levels is not one it knows (tiffslide reads it as before)."""
    fs, path = _fs(url)
    src = FsspecSource(fs, path, url_name(url), block_size=BLOCK_BYTES, cache_type=CACHE_TYPE)
    try:
        return JpegTiffReader(src, mpp=(info.mpp, info.mpp_y))
    except Exception:
        return None


def _open_file(url: str) -> Any:
    fs, path = _fs(url)
    return fs.open(path, "rb", block_size=BLOCK_BYTES, cache_type=CACHE_TYPE)


class _RemoteReader(TiffSlideReader):
    """A tiffslide reader on its own fsspec file, closed with the reader."""

    def __init__(self, url: str, scaling: Any) -> None:
        self._file = _open_file(url)
        try:
            super().__init__(self._file, scaling)
        except BaseException:
            self._file.close()
            raise

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._file.close()


def _remote_reader(url: str, scaling: Any) -> _RemoteReader:
    return _RemoteReader(url, scaling)
