"""A read-only HTTP server over one idcmap output folder (standard library only).

Routes (anything else is 404; methods other than GET and HEAD are 405):

=====================================================  ========================================
``/``                                                  batch page (one row per slide folder)
``/view/<id>``                                         slide page
``/static/<file>``                                     the viewer's bundled files
``/api/slides``                                        batch table rows, JSON
``/api/slides/<id>``                                   one slide: geometry, figures, regions
``/slides/<id>/slide.dzi``                             Deep Zoom descriptor
``/slides/<id>/tiles/<level>/<col>_<row>.jpeg``        Deep Zoom tiles, read from the slide
``/slides/<id>/thumbnail.jpeg``                        ≤ 256-px picture with region outlines
``/slides/<id>/overlay.png?layer=prob|smoothed``       heatmap as a transparent PNG
``/slides/<id>/files/<name>``                          the output files (summary.json, ...)
``/files/cohort.csv``                                  the cohort table, when a run wrote one
=====================================================  ========================================

``<id>`` is a slide folder's name, matched exactly against the folder listing; path segments
are percent-decoded one at a time and a segment that decodes to ``.``, ``..``, or holds ``/``,
``\\`` or NUL is refused, so no request can name a file outside the output folder; files reached
through a symlink that leaves the folder are refused too (:func:`~idcmap.viewer.catalog.inside`).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sys
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import numpy as np

from idcmap.errors import IDCMapError, UsageError
from idcmap.viewer.catalog import Catalog, SlideFolder, inside
from idcmap.viewer.imaging import (
    OVERLAY_STOPS,
    TILE_OVERLAP_PX,
    TILE_PX,
    SlideCache,
    SlideEntry,
    file_key,
    overlay_png,
    placeholder_png,
)

__all__ = ["ViewerServer", "make_server"]

_TILE_RE = re.compile(r"^(\d{1,3})$")
_ADDR_RE = re.compile(r"^(\d{1,9})_(\d{1,9})\.jpe?g$")
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".json": "application/json; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".geojson": "application/geo+json; charset=utf-8",
    ".npz": "application/octet-stream",
    ".tif": "image/tiff",
    ".jpeg": "image/jpeg",
}
_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class _NotFound(Exception):
    pass


def _static_files() -> dict[str, Path]:
    """Relative POSIX path → file, for every file shipped under ``idcmap/viewer/static``."""
    root = Path(str(resources.files("idcmap.viewer") / "static"))
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


class ViewerServer(ThreadingHTTPServer):
    """The viewer's HTTP server: ``serve_forever()``, then ``shutdown()`` and ``server_close()``."""

    daemon_threads = True

    def __init__(
        self,
        out_dir: str | Path,
        host: str = "127.0.0.1",
        port: int = 8765,
        *,
        slide_cache: int = 8,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.catalog = Catalog(out_dir)
        self.slides = SlideCache(capacity=slide_cache)
        self.static = _static_files()
        self.log = log
        self.local_only = host in ("127.0.0.1", "localhost", "::1")
        self._overlay_cache: dict[tuple[str, str, int], bytes] = {}
        self._overlay_lock = threading.Lock()
        self._thumbs: OrderedDict[tuple[Any, ...], tuple[bytes, str]] = OrderedDict()
        if ":" in host:  # an IPv6 address such as ::1
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = str(host)
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def server_close(self) -> None:
        super().server_close()
        self.slides.close()

    # -- data for the handler

    def entry(self, sf: SlideFolder) -> SlideEntry:
        return self.slides.get(sf.id, self.catalog.slide_path(sf), sf.summary)

    def thumbnail(self, sf: SlideFolder) -> tuple[bytes, str]:
        """(picture, content type): the slide with its region outlines, or a placeholder that
        says why there is none. Kept per process (slides come and go from the slide cache)."""
        gj = sf.geojson_path()
        try:
            gj_mtime_ns = gj.stat().st_mtime_ns if gj is not None else 0
        except OSError:
            gj_mtime_ns = 0
        key = (
            sf.id,
            sf.summary_mtime_ns,
            gj_mtime_ns,
            file_key(self.catalog.slide_path(sf)),
        )
        with self._overlay_lock:
            hit = self._thumbs.get(key)
        if hit is not None:
            return hit
        entry = self.entry(sf)
        result: tuple[bytes, str] | None = None
        if entry.ok:
            try:
                result = entry.thumbnail_jpeg(self.catalog.regions(sf)), "image/jpeg"
            except IDCMapError:
                result = None
        if result is None:
            text = "slide file missing" if entry.missing else "slide unreadable"
            result = placeholder_png(text), "image/png"
        with self._overlay_lock:
            self._thumbs[key] = result
            while len(self._thumbs) > 2000:  # ~10 kB each
                self._thumbs.popitem(last=False)
        return result

    def overlay(self, sf: SlideFolder, layer: str) -> bytes:
        npz = sf.folder / "heatmap.npz"
        if not (npz.is_file() and inside(self.catalog.root, npz)):
            raise _NotFound
        key = (sf.id, layer, npz.stat().st_mtime_ns)
        with self._overlay_lock:
            hit = self._overlay_cache.get(key)
        if hit is not None:
            return hit
        try:
            with np.load(npz, allow_pickle=False) as z:
                name = "prob_smoothed" if layer == "smoothed" and "prob_smoothed" in z else "prob"
                prob = np.asarray(z[name], dtype=np.float32)
                cw, ch = (float(v) for v in z["cell_level0_px"])
        except (OSError, ValueError, KeyError) as e:
            raise _NotFound from e
        png = overlay_png(prob, smooth=name == "prob_smoothed", cell_aspect=ch / cw if cw else 1)
        with self._overlay_lock:
            if len(self._overlay_cache) > 32:
                self._overlay_cache.clear()
            self._overlay_cache[key] = png
        return png

    def slide_details(self, sf: SlideFolder) -> dict[str, Any]:
        s = sf.summary
        info = s.get("slide") or {}
        bounds = info.get("bounds_level0_px") or [
            0,
            0,
            *(info.get("level_dimensions") or [[0, 0]])[0],
        ]
        entry = self.entry(sf)
        params = s.get("parameters") or {}
        heatmap = None
        npz = sf.folder / "heatmap.npz"
        if npz.is_file() and inside(self.catalog.root, npz):
            try:
                with np.load(npz, allow_pickle=False) as z:
                    prob = z["prob"]
                    heatmap = {
                        "origin_level0_px": [float(v) for v in z["origin_level0_px"]],
                        "cell_level0_px": [float(v) for v in z["cell_level0_px"]],
                        "shape": [int(prob.shape[0]), int(prob.shape[1])],
                        "layers": ["prob", "smoothed"] if "prob_smoothed" in z else ["prob"],
                    }
            except (OSError, ValueError, KeyError):
                heatmap = None
        dz: dict[str, Any] | None = None
        if entry.ok and entry.dz is not None:
            w, h = entry.dz.level_dimensions[-1]
            dz = {
                "width": w,
                "height": h,
                "tile_px": TILE_PX,
                "overlap_px": TILE_OVERLAP_PX,
                "max_level": entry.dz.level_count - 1,
            }
        row = self.catalog.row(sf)
        return {
            **row,
            "slide_error": entry.error,
            "bounds_level0_px": bounds,
            "width_px": int(bounds[2]),
            "height_px": int(bounds[3]),
            "mpp": info.get("mpp"),
            "mpp_y": info.get("mpp_y", info.get("mpp")),
            "mpp_source": info.get("mpp_source"),
            "backend": info.get("backend"),
            "vendor": info.get("vendor"),
            "threshold": params.get("threshold"),
            "smooth_um": params.get("smooth_um"),
            "stride_px": params.get("stride_px"),
            "deepzoom": dz,
            "heatmap": heatmap,
            "overlay_stops": [[p, list(c), a] for p, c, a in OVERLAY_STOPS],
            "regions": self.catalog.regions(sf),
            "qc": _qc_details(s.get("qc"), self.catalog.artefacts(sf)),
            "downloads": [n for n in _download_names(sf) if sf.file(n) is not None],
        }


def _download_names(sf: SlideFolder) -> list[str]:
    return [
        f"{sf.id}.geojson",
        "summary.json",
        "heatmap.png",
        "mask.png",
        "heatmap.npz",
        f"{sf.id}.heatmap.ome.tif",
    ]


def _qc_details(verdict: Any, layers: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The slide page's QC section: None when the slide was run without QC (no verdict in
    its summary), else the verdict's flag, reasons and areas, and the GeoJSON's artefact
    layers, each marked ``excluded`` (removed from the tissue) or not (kept); a kept layer's
    ``note`` says what became of it (ink: on glass removed, over tissue un-inked or filled;
    folds and blur: how they were read)."""
    if not isinstance(verdict, dict):
        return None
    from idcmap.pipeline.qc import EXCLUDE

    areas = verdict.get("excluded_mm2")
    areas = areas if isinstance(areas, dict) else {}
    reasons = verdict.get("reasons")
    return {
        "review": bool(verdict.get("review")),
        "reasons": [str(r) for r in reasons] if isinstance(reasons, list) else [],
        "layers": [
            {
                **layer,
                "excluded": layer["kind"] in EXCLUDE,
                "area_mm2": _finite_or_none(areas.get(layer["kind"])),
                "note": (
                    _ink_note(verdict.get("ink"))
                    if layer["kind"] == "ink"
                    else _KEPT_NOTES.get(layer["kind"])
                ),
            }
            for layer in layers
        ],
    }


#: What the pipeline does with the artefacts it keeps as tissue (:mod:`idcmap.pipeline.segment`)
_KEPT_NOTES = {
    "fold": "kept, read with its optical density halved (two layers of the section)",
    "blur": "kept, read for blur (the model's blur-robust network, or a lift of its IDC)",
}


def _ink_note(ink: Any) -> str | None:
    """What became of the ink (the verdict's ``ink`` areas), or None."""
    if not isinstance(ink, dict):
        return None
    mm2 = {k: _finite_or_none(ink.get(k)) for k in ("on_glass_mm2", "over_tissue_mm2")}
    mm2.update({k: _finite_or_none(ink.get(k)) for k in ("uninked_mm2", "filled_mm2")})
    if any(v is None for v in mm2.values()):
        return None
    return (
        f"on glass {mm2['on_glass_mm2']:.2f} mm² removed; over tissue "
        f"{mm2['over_tissue_mm2']:.2f} mm² kept (un-inked {mm2['uninked_mm2']:.2f}, "
        f"filled from around {mm2['filled_mm2']:.2f})"
    )


def _finite_or_none(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        return None
    return float(v) if abs(v) != float("inf") else None


class _Handler(BaseHTTPRequestHandler):
    server: ViewerServer
    server_version = "idcmap-view"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40-ms delayed ACK

    # -- plumbing

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log is not None:
            self.server.log(f"{self.address_string()} {format % args}")

    def _send(
        self,
        status: int,
        body: bytes,
        ctype: str,
        *,
        cache: str = "no-cache",
        head: bool = False,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", _CSP)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _text(self, status: int, text: str, head: bool = False) -> None:
        self._send(status, (text + "\n").encode(), "text/plain; charset=utf-8", head=head)

    def _json(self, obj: Any, head: bool = False) -> None:
        body = json.dumps(obj, ensure_ascii=False, allow_nan=False, default=_json_default)
        self._send(200, body.encode(), "application/json; charset=utf-8", head=head)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def _refuse(self) -> None:
        self.close_connection = True  # a request body we do not read must not be parsed next
        body = b"read-only: GET and HEAD only\n"
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def _dispatch(self, head: bool) -> None:
        try:
            if not self._host_ok():
                self._text(HTTPStatus.MISDIRECTED_REQUEST, "unknown Host", head)
                return
            raw, _, query = self.path.partition("?")
            segments = _segments(raw)
            self._route(segments, parse_qs(query), head)
        except _NotFound:
            self._text(HTTPStatus.NOT_FOUND, "not found", head)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # a bug: one line to the browser, the traceback to the log
            if self.server.log is not None:
                self.server.log("".join(traceback.format_exception(e)))
            else:
                print(f"idcmap view: internal error {type(e).__name__}: {e}", file=sys.stderr)
            with contextlib.suppress(OSError):
                self._text(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error", head)

    def _host_ok(self) -> bool:
        """On a loopback address, answer only requests addressed to it (DNS rebinding)."""
        if not self.server.local_only:
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name in ("127.0.0.1", "localhost", "[::1]", "::1")

    # -- routes

    def _route(self, seg: list[str], query: dict[str, list[str]], head: bool) -> None:
        srv = self.server
        if seg == [] or seg == ["index.html"]:
            return self._static("index.html", head)
        if seg[0] == "view" and len(seg) == 2:
            self._folder(seg[1])
            return self._static("slide.html", head)
        if seg[0] == "static" and len(seg) >= 2:
            return self._static("/".join(seg[1:]), head)
        if seg[:2] == ["api", "slides"]:
            if len(seg) == 2:
                folders = srv.catalog.folders()
                rows = [srv.catalog.row(sf) for sf in folders.values()]
                rows += srv.catalog.cohort_rows(set(folders))
                cohort = srv.catalog.root / "cohort.csv"
                has_cohort = cohort.is_file() and inside(srv.catalog.root, cohort)
                return self._json(
                    {"out_dir": srv.catalog.root.name, "slides": rows, "cohort_csv": has_cohort},
                    head,
                )
            if len(seg) == 3:
                return self._json(srv.slide_details(self._folder(seg[2])), head)
            raise _NotFound
        if seg == ["files", "cohort.csv"]:
            table = srv.catalog.root / "cohort.csv"
            if not (table.is_file() and inside(srv.catalog.root, table)):
                raise _NotFound
            return self._send(200, table.read_bytes(), "text/csv; charset=utf-8", head=head)
        if seg[0] == "slides" and len(seg) >= 3:
            return self._slide_route(self._folder(seg[1]), seg[2:], query, head)
        raise _NotFound

    def _folder(self, slide_id: str) -> SlideFolder:
        sf = self.server.catalog.get(slide_id)
        if sf is None:
            raise _NotFound
        return sf

    def _static(self, name: str, head: bool) -> None:
        path = self.server.static.get(name)
        if path is None:
            raise _NotFound
        ctype = _TYPES.get(path.suffix.lower(), "application/octet-stream")
        cache = "no-cache" if path.suffix in (".html", ".js", ".css") else "max-age=86400"
        self._send(200, path.read_bytes(), ctype, cache=cache, head=head)

    def _slide_route(
        self, sf: SlideFolder, rest: list[str], query: dict[str, list[str]], head: bool
    ) -> None:
        srv = self.server
        if rest == ["slide.dzi"]:
            entry = srv.entry(sf)
            if not entry.ok or entry.dz is None:
                raise _NotFound
            return self._send(200, entry.dz.get_dzi("jpeg").encode(), "application/xml", head=head)
        if len(rest) == 3 and rest[0] == "tiles":
            lm, am = _TILE_RE.match(rest[1]), _ADDR_RE.match(rest[2])
            if lm is None or am is None:
                raise _NotFound
            entry = srv.entry(sf)
            if not entry.ok:
                return self._text(HTTPStatus.NOT_FOUND, f"slide unavailable: {entry.error}", head)
            try:
                tile = entry.tile_jpeg(int(lm.group(1)), int(am.group(1)), int(am.group(2)))
            except IDCMapError as e:
                return self._text(HTTPStatus.NOT_FOUND, f"slide unavailable: {e}", head)
            if tile is None:
                raise _NotFound
            return self._send(200, tile, "image/jpeg", cache="private, max-age=600", head=head)
        if rest == ["thumbnail.jpeg"]:
            body, ctype = srv.thumbnail(sf)
            return self._send(200, body, ctype, cache="private, max-age=60", head=head)
        if rest == ["overlay.png"]:
            layer = (query.get("layer") or ["prob"])[0]
            if layer not in ("prob", "smoothed"):
                raise _NotFound
            return self._send(200, srv.overlay(sf, layer), "image/png", head=head)
        if len(rest) == 2 and rest[0] == "files":
            path = sf.file(rest[1])
            if path is None:  # SlideFolder.file: unknown, missing, or leading out of OUT
                raise _NotFound
            ctype = _TYPES.get(path.suffix.lower(), "application/octet-stream")
            return self._send(200, path.read_bytes(), ctype, head=head)
        raise _NotFound


def _segments(raw: str) -> list[str]:
    """Percent-decoded path segments; raises :class:`_NotFound` on anything path-like."""
    if not raw.startswith("/") or raw.startswith("//"):
        raise _NotFound
    parts = raw[1:].split("/")
    if parts and parts[-1] == "":
        parts = parts[:-1]
    out = []
    for p in parts:
        try:
            s = unquote(p, errors="strict") if "%" in p else p
        except UnicodeDecodeError:
            raise _NotFound from None
        if s in ("", ".", "..") or any(c in s for c in "/\\\x00") or s.startswith("~"):
            raise _NotFound
        out.append(s)
    return out


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(type(obj).__name__)


def make_server(
    out_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    log: Callable[[str], None] | None = None,
) -> ViewerServer:
    """A :class:`ViewerServer` bound to ``host:port`` (``port=0``: any free port).

    Raises:
        UsageError: ``out_dir`` is not a folder, or the port cannot be bound.
    """
    p = Path(out_dir)
    if not p.is_dir():
        what = "a file, not a folder" if p.exists() else "no such folder"
        raise UsageError(f"{p}: {what}; out_dir= must be the output folder of a run")
    try:
        return ViewerServer(p, host, port, log=log)
    except OSError as e:
        raise UsageError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); pass another port= "
            "(port=0: any free port)"
        ) from e
