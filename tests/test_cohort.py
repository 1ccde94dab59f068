"""The cohort table: merge by slide, atomic replacement, several processes at once."""

from __future__ import annotations

import csv
import multiprocessing as mp
from pathlib import Path

import pytest

from idcmap.output.cohort import (
    COHORT_FILE,
    COLUMNS,
    CohortRow,
    read_cohort,
    row_from_summary,
    summary_of,
    update_cohort,
)
from idcmap.pipeline.summary import read_summary

SUMMARY = {
    "idc_area_mm2": 6.0,
    "tissue_area_mm2": 20.0,
    "regions": 2,
    "model": {"name": "idcmap-idc", "version": "1.0.0"},
    "measurements": {
        "foci": 2,
        "idc_area_mm2": 6.4,
        "tissue_area_mm2": 20.0,
        "idc_percent_of_tissue": 32.0,
        "largest_focus_greatest_dimension_mm": 3.25,
    },
}


def test_row_from_summary() -> None:
    r = row_from_summary(
        "a", "/s/a.svs", "done", summary=read_summary(SUMMARY), output="/o/a", seconds=1.5
    )
    assert (r.foci, r.idc_area_mm2, r.idc_percent_of_tissue) == (2, 6.4, 32.0)
    assert r.largest_focus_greatest_dimension_mm == 3.25
    assert (r.model_name, r.model_version) == ("idcmap-idc", "1.0.0")
    old = row_from_summary(
        "a",
        "a.svs",
        "done",
        summary=read_summary({k: v for k, v in SUMMARY.items() if k != "measurements"}),
    )
    assert (old.foci, old.idc_area_mm2, old.idc_percent_of_tissue) == (2, 6.0, 30.0)
    assert old.largest_focus_greatest_dimension_mm is None
    failed = row_from_summary("b", "b.svs", "failed", reason="cannot open\n  b.svs " + "x" * 500)
    assert failed.foci is None and "\n" not in failed.reason and len(failed.reason) <= 200
    assert failed.cells()["idc_area_mm2"] == ""


def test_update_merges_by_slide(tmp_path: Path) -> None:
    update_cohort(tmp_path, [row_from_summary("a", "a.svs", "failed", reason="unreadable")])
    update_cohort(
        tmp_path,
        [
            row_from_summary("b", "b.svs", "done", summary=read_summary(SUMMARY)),
            row_from_summary("a", "a.svs", "done", summary=read_summary(SUMMARY)),
        ],
    )
    rows = read_cohort(tmp_path)
    assert [r["slide"] for r in rows] == ["a", "b"]  # a keeps its place
    assert rows[0]["status"] == "done" and rows[0]["reason"] == ""
    assert rows[0]["idc_area_mm2"] == "6.4000" and rows[0]["idc_percent_of_tissue"] == "32.00"
    with open(tmp_path / COHORT_FILE, newline="") as f:
        assert tuple(next(csv.reader(f))) == COLUMNS
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cohort.csv.tmp")]


def test_summary_of(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "summary.json").write_text('{"regions": 1}')
    got = summary_of(tmp_path / "a")
    assert got is not None and got.regions == 1 and got.measurements is None
    assert summary_of(tmp_path / "missing") is None


def _writer(out: str, who: int, n: int) -> None:
    for i in range(n):
        update_cohort(
            out,
            [
                CohortRow(slide=f"p{who}-{i}", path=f"{who}/{i}.svs", status="done", foci=i),
                CohortRow(slide="shared", path="s.svs", status="done", reason=f"by {who}"),
            ],
        )


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_two_processes_lose_nothing(tmp_path: Path, start: str) -> None:
    if start not in mp.get_all_start_methods():
        pytest.skip(f"start method {start} is not available here")
    ctx = mp.get_context(start)
    n = 40
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), who, n)) for who in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = read_cohort(tmp_path)
    slides = [r["slide"] for r in rows]
    assert len(slides) == len(set(slides)) == 2 * n + 1
    assert {f"p{w}-{i}" for w in (1, 2) for i in range(n)} <= set(slides)
    assert next(r for r in rows if r["slide"] == "shared")["reason"] in ("by 1", "by 2")
