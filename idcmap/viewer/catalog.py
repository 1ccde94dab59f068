"""What an output folder holds, read for the viewer: one entry per finished slide folder.

A slide folder is a direct, non-hidden child ``OUT/<stem>/`` holding ``summary.json`` whose real
path (symlinks resolved) stays inside ``OUT``. Everything the viewer serves is looked up here by
folder name; a name that is not in the catalog is "not found", so no request path is ever joined
onto the file system.
"""

from __future__ import annotations

import csv
import json
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idcmap.params import QC_KINDS

__all__ = [
    "Catalog",
    "SlideFolder",
    "artefact_layers",
    "greatest_dimension_mm",
    "inside",
    "region_features",
]

#: Output files a browser may download from a slide folder ("{stem}" is the folder name).
DOWNLOADS = (
    "summary.json",
    "heatmap.png",
    "mask.png",
    "heatmap.npz",
    "{stem}.geojson",
    "{stem}.heatmap.ome.tif",
)

#: QuPath class name → kind of the QC stage's annotations (``Ink`` → ``ink``...): never regions.
ARTEFACT_CLASSES = {kind.capitalize(): kind for kind in QC_KINDS}

#: GeoJSON measurement names of a region's maximum caliper (Feret) diameter, in mm.
GREATEST_DIMENSION = ("Greatest dimension mm", "Greatest dimension (mm)")


def inside(root: Path, path: Path) -> bool:
    """True when ``path``, symlinks resolved, is ``root`` or below it (``root`` resolved)."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    return real == root or root in real.parents


@dataclass
class SlideFolder:
    """One finished slide folder ``OUT/<id>/`` and what its summary says."""

    id: str
    folder: Path
    summary: dict[str, Any]
    summary_mtime_ns: int

    @property
    def slide_path_text(self) -> str:
        """The slide path as the run recorded it (may be relative to the run's folder)."""
        return str((self.summary.get("slide") or {}).get("path") or "")

    @property
    def slide_name(self) -> str:
        return Path(self.slide_path_text).name or self.id

    def geojson_path(self) -> Path | None:
        p = self.folder / f"{self.id}.geojson"
        return p if p.is_file() else None

    def file(self, name: str) -> Path | None:
        """An output file by its download name, or None (unknown name, missing, or leaving OUT)."""
        allowed = {n.format(stem=self.id) for n in DOWNLOADS}
        if name not in allowed:
            return None
        p = self.folder / name
        # a symlink may point elsewhere in OUT (the folder's parent), never out of it
        return p if p.is_file() and inside(self.folder.parent.resolve(), p) else None


@dataclass
class _Cached:
    key: tuple[int, int]
    value: Any = field(default=None)


class Catalog:
    """The slide folders of one output folder, re-read when the folder changes.

    Thread-safe; parsed summaries and GeoJSON region lists are cached by file mtime and size.
    """

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.root = Path(out_dir).resolve(strict=True)
        self._lock = threading.Lock()
        self._summaries: dict[str, _Cached] = {}
        self._geojson: dict[str, _Cached] = {}

    # -- folders

    def folders(self) -> dict[str, SlideFolder]:
        """Folder name → :class:`SlideFolder`, in name order."""
        found: dict[str, SlideFolder] = {}
        try:
            names = sorted(os.listdir(self.root))
        except OSError:
            return found
        for name in names:
            sf = self._load(name)
            if sf is not None:
                found[name] = sf
        return found

    def get(self, slide_id: str) -> SlideFolder | None:
        """The folder named exactly ``slide_id`` (no path syntax accepted), or None."""
        if not slide_id or slide_id != os.path.basename(slide_id) or slide_id in (".", ".."):
            return None
        if "\\" in slide_id or "\x00" in slide_id:
            return None
        try:
            if slide_id not in os.listdir(self.root):
                return None
        except OSError:
            return None
        return self._load(slide_id)

    def _load(self, name: str) -> SlideFolder | None:
        if name.startswith("."):  # lock files, a run's temporary folders
            return None
        folder = self.root / name
        summary_path = folder / "summary.json"
        if not (inside(self.root, folder) and folder.is_dir()):
            return None
        if not (summary_path.is_file() and inside(self.root, summary_path)):
            return None
        try:
            st = summary_path.stat()
        except OSError:
            return None
        key = (st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._summaries.get(name)
        if cached is None or cached.key != key:
            try:
                summary = json.loads(summary_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                summary = None
            cached = _Cached(key, summary if isinstance(summary, dict) else None)
            with self._lock:
                self._summaries[name] = cached
        if cached.value is None:
            return None
        return SlideFolder(name, folder, cached.value, st.st_mtime_ns)

    # -- slide files

    def slide_path(self, sf: SlideFolder) -> Path | None:
        """Where the slide file is: the recorded path if absolute; a relative one is tried from
        the current folder, the output folder and its parent (runs record the path as given),
        then as the run resolved it (``path_resolved``, since 0.3)."""
        text = sf.slide_path_text
        if not text:
            return None
        p = Path(text)
        if p.is_absolute():
            return p
        resolved = str((sf.summary.get("slide") or {}).get("path_resolved") or "")
        for cand in [base / p for base in (Path.cwd(), self.root, self.root.parent)] + (
            [Path(resolved)] if resolved else []
        ):
            if cand.exists():
                return cand
        return Path.cwd() / p

    # -- regions

    def regions(self, sf: SlideFolder) -> list[dict[str, Any]]:
        """The slide's IDC regions from its GeoJSON (see :func:`region_features`); [] if none."""
        return list(self._features(sf)[0])

    def artefacts(self, sf: SlideFolder) -> list[dict[str, Any]]:
        """The QC stage's areas from the slide's GeoJSON, one layer per kind (see
        :func:`artefact_layers`); [] when there are none (or the slide was run without QC)."""
        return list(self._features(sf)[1])

    def _features(self, sf: SlideFolder) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        gj = sf.geojson_path()
        if gj is None or not inside(self.root, gj):
            return [], []
        try:
            st = gj.stat()
        except OSError:
            return [], []
        key = (st.st_mtime_ns, st.st_size)
        cache_key = f"{sf.id}\x00{gj.name}"
        with self._lock:
            cached = self._geojson.get(cache_key)
        if cached is not None and cached.key == key:
            return cached.value
        try:
            obj = json.loads(gj.read_text(encoding="utf-8"))
            value = (region_features(obj), artefact_layers(obj))
        except (OSError, ValueError):
            value = ([], [])
        with self._lock:
            self._geojson[cache_key] = _Cached(key, value)
        return value

    # -- the batch table

    def row(self, sf: SlideFolder) -> dict[str, Any]:
        """The batch table's row for one slide folder (None where a figure is unknown)."""
        s = sf.summary
        dims = [greatest_dimension_mm(r["measurements"]) for r in self.regions(sf)]
        foci = _figure(s, "foci")
        if foci is None:
            reg = s.get("regions")
            foci = len(reg) if isinstance(reg, list) else reg if isinstance(reg, int) else None
        largest = _figure(s, "largest_focus_greatest_dimension_mm")
        if largest is None and dims and None not in dims:
            largest = max(d for d in dims if d is not None)
        percent = _figure(s, "idc_percent_of_tissue")
        fraction = _figure(s, "idc_fraction_of_tissue")
        if percent is None and fraction is not None:
            percent = 100.0 * fraction
        model = s.get("model") or {}
        qc = s.get("qc") if isinstance(s.get("qc"), dict) else None
        reasons = qc.get("reasons") if qc and isinstance(qc.get("reasons"), list) else []
        slide_file = self.slide_path(sf)
        return {
            "id": sf.id,
            "slide": sf.slide_name,
            "slide_path": sf.slide_path_text,
            "status": "done",
            "slide_file": "ok" if slide_file is not None and slide_file.exists() else "missing",
            "tissue_area_mm2": _figure(s, "tissue_area_mm2"),
            "idc_area_mm2": _figure(s, "idc_area_mm2"),
            "idc_percent": percent,
            "foci": foci,
            "largest_focus_mm": largest,
            "model": " ".join(str(model.get(k, "")) for k in ("name", "version")).strip() or None,
            # the QC verdict (idcmap run --qc): "yes" = look at this slide, None = no QC ran
            "review": None if qc is None else "yes" if qc.get("review") else "no",
            "review_reasons": "; ".join(str(r) for r in reasons),
        }

    def cohort_rows(self, known: set[str]) -> list[dict[str, Any]]:
        """Rows of ``OUT/cohort.csv`` (when a run wrote one) for slides without a finished
        folder: failed or skipped slides, with their reason."""
        table = self.root / "cohort.csv"
        if not (table.is_file() and inside(self.root, table)):
            return []
        rows: list[dict[str, Any]] = []
        try:
            with table.open(newline="", encoding="utf-8") as f:
                for rec in csv.DictReader(f):
                    r = {str(k).strip().lower(): (v or "").strip() for k, v in rec.items() if k}
                    status = r.get("status", "")
                    path = r.get("path") or r.get("slide") or ""  # as the run was given it
                    out = r.get("output") or ""
                    # "slide" is the output name when the table also has a "path" column
                    name = Path(out).name or (r.get("slide") if "path" in r else Path(path).stem)
                    if not path or name in known or status == "done":
                        continue
                    rows.append(
                        {
                            "id": None,
                            "slide": Path(path).name,
                            "slide_path": path,
                            "status": status or "unknown",
                            "reason": r.get("reason", ""),
                            "slide_file": None,
                        }
                    )
        except (OSError, csv.Error, UnicodeDecodeError):
            return []
        return rows


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def greatest_dimension_mm(measurements: dict[str, Any]) -> float | None:
    """A region's greatest dimension (mm) from its GeoJSON measurements, if measured."""
    for name in GREATEST_DIMENSION:
        v = _number(measurements.get(name))
        if v is not None:
            return v
    return None


def _figure(summary: dict[str, Any], name: str) -> Any:
    """A per-slide figure: from the summary's ``measurements`` block (grading measurements of
    the drawn regions) when there, else from its top level; None when absent or not a number."""
    places = [summary.get("measurements"), summary]
    for place in places:
        if isinstance(place, dict):
            v = place.get(name)
            n = _number(v)
            if n is not None:
                return v if isinstance(v, int) else n
    return None


def _class_name(feat: dict[str, Any]) -> str | None:
    props = feat.get("properties")
    cls = props.get("classification") if isinstance(props, dict) else None
    name = cls.get("name") if isinstance(cls, dict) else cls
    return name if isinstance(name, str) else None


def _polygon_features(obj: Any) -> list[tuple[int, dict[str, Any], Any]]:
    """(1-based index in the file, feature, shapely geometry) of each polygon feature."""
    from shapely.geometry import shape

    feats = obj.get("features") if isinstance(obj, dict) else obj
    if not isinstance(feats, list):
        return []
    out = []
    for i, feat in enumerate(feats, start=1):
        if not isinstance(feat, dict):
            continue
        geom = feat.get("geometry") or {}
        if not isinstance(geom, dict) or geom.get("type") not in ("Polygon", "MultiPolygon"):
            continue
        try:
            g = shape(geom)
        except Exception:  # a malformed geometry is skipped, the rest is shown
            continue
        if not g.is_empty:
            out.append((i, feat, g))
    return out


def _rings(parts: list[Any]) -> list[list[list[list[float]]]]:
    """Polygons as lists of rings of [x, y], rounded to 0.1 px."""
    return [
        [
            [[round(x, 1), round(y, 1)] for x, y in ring.coords]
            for ring in [p.exterior, *p.interiors]
        ]
        for p in parts
    ]


def artefact_layers(obj: Any) -> list[dict[str, Any]]:
    """The QC stage's annotations of a QuPath FeatureCollection (classes ``Ink``, ``Fold``,
    ``Blur``, ``Debris``, ``Border``), one layer per kind present, in that order.

    Each: ``kind`` (``ink``...), ``name`` (the class), ``color`` ([r, g, b] of
    :data:`idcmap.output.export.ARTEFACT_COLORS`), ``count`` (annotations) and ``polygons``
    (as in :func:`region_features`).
    """
    from idcmap.output.export import ARTEFACT_COLORS  # numpy, shapely, scipy: not at start-up

    by_kind: dict[str, list[Any]] = {}
    count: dict[str, int] = {}
    for _i, feat, g in _polygon_features(obj):
        kind = ARTEFACT_CLASSES.get(_class_name(feat) or "")
        if kind is None:
            continue
        parts = list(g.geoms) if g.geom_type == "MultiPolygon" else [g]
        by_kind.setdefault(kind, []).extend(_rings(parts))
        count[kind] = count.get(kind, 0) + 1
    return [
        {
            "kind": kind,
            "name": kind.capitalize(),
            "color": list(ARTEFACT_COLORS[kind]),
            "count": count[kind],
            "polygons": by_kind[kind],
        }
        for kind in QC_KINDS
        if kind in by_kind
    ]


def region_features(obj: Any) -> list[dict[str, Any]]:
    """The polygon features of a QuPath FeatureCollection, numbered by their place in the file,
    but for the QC stage's annotations (:func:`artefact_layers`), which are not regions.

    Each: ``number`` (1-based index in the file), ``name``, ``polygons`` (list of polygons, each
    a list of rings of [x, y] level-0 px in QuPath's frame), ``bbox`` (x0, y0, x1, y1),
    ``label`` ([x, y] inside the region, where its number is drawn) and ``measurements``.
    """
    import shapely
    from shapely.ops import polylabel

    out: list[dict[str, Any]] = []
    for i, feat, g in _polygon_features(obj):
        if _class_name(feat) in ARTEFACT_CLASSES:
            continue
        parts = list(g.geoms) if g.geom_type == "MultiPolygon" else [g]
        polygons = _rings(parts)
        biggest = max(parts, key=lambda p: p.area)
        try:
            valid = biggest if biggest.is_valid else shapely.make_valid(biggest)
            pt = polylabel(valid, tolerance=max(1.0, math.sqrt(valid.area) / 50))
        except Exception:
            pt = biggest.representative_point()
        props = feat.get("properties") or {}
        meas = props.get("measurements") if isinstance(props, dict) else None
        out.append(
            {
                "number": i,
                "name": str(props.get("name") or f"Region {i}") if isinstance(props, dict) else "",
                "polygons": polygons,
                "bbox": [round(v, 1) for v in g.bounds],
                "label": [round(pt.x, 1), round(pt.y, 1)],
                "measurements": {
                    str(k): v
                    for k, v in (meas.items() if isinstance(meas, dict) else [])
                    if _number(v) is not None
                },
            }
        )
    return out
