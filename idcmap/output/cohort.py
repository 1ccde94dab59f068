"""The cohort table: ``OUT/cohort.csv``, one row per slide ever run into that output folder.

Each slide's row is written as soon as the slide finishes (done, skipped or failed), by whichever
process finished it: a run, another run on the same folder, a Dask worker. Updates are
read-merge-write under an exclusive ``flock`` on ``OUT/.cohort.lock`` (removed after each
update), keyed by the slide's output name (its folder ``OUT/<slide>/``), and the new table
replaces the old one atomically
(temporary file, fsync, rename): a reader sees either the old or the new table, never half of
one, and no update is lost when several processes write at once.

Columns (:data:`COLUMNS`): ``slide`` (output name), ``path`` (as given), ``status``
(done / skipped / failed), ``reason`` (one short line), ``foci``, ``idc_area_mm2``,
``tissue_area_mm2``, ``idc_percent_of_tissue``, ``largest_focus_greatest_dimension_mm``,
``model_name``, ``model_version``, ``output`` (the slide's folder), ``seconds``,
``updated_utc``, ``review`` (``yes``/``no`` when the QC stage ran, else empty: sort on it to
find the slides to look at) and ``review_reasons``. A skipped slide keeps the figures of its
finished output (read from its ``summary.json``); a failed one has none.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from idcmap.output.locking import file_lock
from idcmap.pipeline.summary import SlideSummary, read_summary

__all__ = [
    "COHORT_FILE",
    "COLUMNS",
    "CohortRow",
    "read_cohort",
    "row_from_summary",
    "update_cohort",
]

COHORT_FILE = "cohort.csv"
_LOCK_FILE = ".cohort.lock"
#: longest reason kept in the table (the full one is on the run's output)
_MAX_REASON = 200


@dataclass(frozen=True)
class CohortRow:
    """One slide's row; figures are ``None`` when unknown (failed slides)."""

    slide: str
    path: str
    status: str
    reason: str = ""
    foci: int | None = None
    idc_area_mm2: float | None = None
    tissue_area_mm2: float | None = None
    idc_percent_of_tissue: float | None = None
    largest_focus_greatest_dimension_mm: float | None = None
    model_name: str = ""
    model_version: str = ""
    output: str = ""
    seconds: float | None = None
    updated_utc: str = ""
    review: str = ""
    review_reasons: str = ""

    def cells(self) -> dict[str, str]:
        """The row as CSV text, figures rounded for people (areas 4 decimals, % 2)."""
        out: dict[str, str] = {}
        for k, v in asdict(self).items():
            if v is None:
                out[k] = ""
            elif isinstance(v, float):
                digits = 2 if k in ("idc_percent_of_tissue", "seconds") else 4
                out[k] = f"{v:.{digits}f}"
            else:
                out[k] = " ".join(str(v).split())
        return out


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(CohortRow))


def _now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _short(reason: str) -> str:
    r = " ".join(reason.split())
    return r if len(r) <= _MAX_REASON else r[: _MAX_REASON - 1] + "…"


def row_from_summary(
    slide: str,
    path: str,
    status: str,
    *,
    reason: str = "",
    summary: SlideSummary | None = None,
    output: str = "",
    seconds: float | None = None,
) -> CohortRow:
    """A row from a slide's summary (``None`` for a failed slide).

    The per-slide figures come from the summary's measurements (see
    :mod:`idcmap.pipeline.measure`), falling back on the top-level ``idc_area_mm2`` /
    ``tissue_area_mm2`` / ``regions`` of summaries written before the measurements existed.
    """
    if summary is None:
        return CohortRow(
            slide,
            path,
            status,
            _short(reason),
            output=output,
            seconds=seconds,
            updated_utc=_now_utc(),
        )
    s = summary
    idc = s.drawn_idc_area_mm2
    tissue = _num(s.measurement("tissue_area_mm2"), s.tissue_area_mm2)
    pct: float | None = 100.0 * idc / tissue if tissue else None
    if s.measurement("idc_percent_of_tissue") is not None:
        pct = _num(s.measurement("idc_percent_of_tissue"), 0.0)
    largest = s.measurement("largest_focus_greatest_dimension_mm")
    return CohortRow(
        slide=slide,
        path=path,
        status=status,
        reason=_short(reason),
        foci=int(_num(s.measurement("foci"), s.regions)),
        idc_area_mm2=idc,
        tissue_area_mm2=tissue,
        idc_percent_of_tissue=pct,
        largest_focus_greatest_dimension_mm=None if largest is None else _num(largest, 0.0),
        model_name=s.model.name,
        model_version=s.model.version,
        output=output,
        seconds=seconds,
        updated_utc=_now_utc(),
        review="" if s.qc is None else "yes" if s.review else "no",
        review_reasons=_short("; ".join(s.review_reasons)),
    )


def _num(v: Any, default: float) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    return float(v) if ok else default


def summary_of(folder: str | Path) -> SlideSummary | None:
    """The summary of a finished output folder, or None when absent or unreadable."""
    try:
        obj = json.loads((Path(folder) / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return read_summary(obj) if isinstance(obj, dict) else None


def read_cohort(out_dir: str | Path) -> list[dict[str, str]]:
    """The rows of ``OUT/cohort.csv`` as dicts of text ([] when there is none yet)."""
    try:
        text = (Path(out_dir) / COHORT_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [dict(r) for r in csv.DictReader(io.StringIO(text))]


def update_cohort(out_dir: str | Path, rows: Iterable[CohortRow]) -> Path:
    """Merge ``rows`` into ``OUT/cohort.csv`` (a slide's new row replaces its old one, in
    place; new slides are appended), atomically and under the folder's cohort lock.

    Returns the table's path. Raises OSError when the folder cannot be written.
    """
    out = Path(out_dir)
    new = list(rows)
    path = out / COHORT_FILE
    with file_lock(out / _LOCK_FILE, wait=True):
        table: dict[str, dict[str, str]] = {}
        for r in read_cohort(out):
            key = r.get("slide") or ""
            if key:
                table[key] = {c: r.get(c) or "" for c in COLUMNS}
        for row in new:
            table[row.slide] = row.cells()  # dict keeps the first position of a key
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(table.values())
        tmp = out / f".{COHORT_FILE}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                f.write(buf.getvalue())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return path
