"""A streamed batch (``RunOptions(stream=True)``, the default of :func:`run_slides`: each slide
saved in a background lane while the next is segmented) against the serial one: the same
outcomes in the same order, the same files byte for byte (timings and GeoJSON feature ids
apart), the same cohort rows; a failing save costs its slide only; Ctrl-C during a background
save leaves nothing partial and no lock behind.

Real generated slides, the colour stand-in model, the bundled model on real mosaics.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pipeline_helpers import colour_model
from shared_data import SHARED, needs_shared
from tiffgen import synthetic_he, write_pyramid_tiff

from idcmap.batch.lane import Lane
from idcmap.batch.runner import RunOptions, format_outcome, run_batch
from idcmap.model.runtime import IDCModel, load_model
from idcmap.output import folder
from idcmap.params import Params


def _slides(tmp: Path, n: int) -> list[Path]:
    out = []
    for i in range(n):
        img = synthetic_he(700 + 60 * i, 900, seed=10 + i, tissue=0.6)
        out.append(
            write_pyramid_tiff(tmp / f"s{i}.tiff", img, 4.0, downsamples=(1, 4), compression="zlib")
        )
    return out


def _tree(out: Path) -> dict[str, Any]:
    """Every file of an output folder, comparable across runs: summary.json without its
    timings, GeoJSON without feature ids (uuid4 by design), everything else as bytes;
    cohort.csv's rows without times and dates."""
    files: dict[str, Any] = {}
    for p in sorted(out.rglob("*")):
        rel = str(p.relative_to(out))
        if p.is_dir():
            files[rel] = "dir"
        elif p.name == "summary.json":
            d = json.loads(p.read_text())
            d.pop("timings_s")
            files[rel] = d
        elif p.suffix == ".geojson":
            files[rel] = _no_ids(json.loads(p.read_text()))
        elif p.name == "cohort.csv":
            with p.open(newline="") as f:
                files[rel] = [  # the run's folder named OUT
                    {
                        k: v.replace(str(out), "OUT")
                        for k, v in r.items()
                        if k not in ("seconds", "updated_utc")
                    }
                    for r in csv.DictReader(f)
                ]
        else:
            files[rel] = p.read_bytes()
    return files


def _no_ids(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _no_ids(v) for k, v in o.items() if k != "id"}
    if isinstance(o, list):
        return [_no_ids(v) for v in o]
    return o


def _both_ways(
    slides: list[Path], tmp: Path, model: IDCModel, params: Params, **kw: Any
) -> tuple[list[list[str]], list[dict[str, Any]]]:
    lines: list[list[str]] = []
    trees = []
    for stream in (False, True):
        out = tmp / f"out-{stream}"
        got: list[str] = []
        run_batch(
            slides,
            out,
            model=model,
            params=params,
            options=RunOptions(stream=stream, **kw),
            report=lambda line, out=out, got=got: got.append(line.replace(str(out), "OUT")),
            describe=lambda o: format_outcome(o).split(" (")[0],  # without the seconds
        )
        lines.append(got)
        trees.append(_tree(out))
    return lines, trees


def test_streamed_batch_equals_serial(tmp_path: Path) -> None:
    """Done, failed (unreadable, missing) and tiles-GeoJSON slides mixed: the same lines in
    the same order, the same files, the same cohort table."""
    slides = _slides(tmp_path, 4)
    bad = tmp_path / "bad.tiff"
    bad.write_bytes(b"II*\x00 not a tiff")
    inputs = [slides[0], bad, slides[1], tmp_path / "missing.tiff", slides[2], slides[3]]
    lines, trees = _both_ways(
        inputs,
        tmp_path,
        colour_model(dense=True),
        Params(workers=1),
        extra_outputs=frozenset({"tiles_geojson"}),
    )
    assert lines[0] == lines[1]
    assert [ln[0] for ln in lines[1]] == ["✓", "✗", "✓", "✗", "✓", "✓"]
    assert trees[0] == trees[1]
    assert len(trees[0]) == 1 + 4 * 7  # cohort.csv; 4 folders of 6 files
    assert not any(".lock" in k or ".tmp-" in k for k in trees[1])


@needs_shared
def test_streamed_batch_equals_serial_on_mosaics(tmp_path: Path) -> None:
    """The bundled model (its aggregator, smooth outlines) on three real mosaics."""
    slides = [SHARED / "idc" / "slides" / f"{i}.tiff" for i in (9035, 14082, 8955)]
    lines, trees = _both_ways(slides, tmp_path, load_model(device="cpu"), Params(workers=1))
    assert lines[0] == lines[1] and all(ln.startswith("✓") for ln in lines[1])
    assert trees[0] == trees[1]


def _failing_writer(name: str, when: str) -> tuple[folder.Output, ...]:
    """OUTPUTS with ``name``'s writer raising OSError for slide stem ``when``."""

    def wrap(o: folder.Output) -> folder.Output:
        def write(r: Any, path: Path) -> None:
            if r.stem == when:
                raise OSError(28, "No space left on device")
            o.write(r, path)

        return folder.Output(o.file_name, write, o.description, o.option)

    return tuple(wrap(o) if o.file_name == name else o for o in folder.OUTPUTS)


def test_a_failing_background_save_costs_only_its_slide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slides = _slides(tmp_path, 3)
    monkeypatch.setattr(folder, "OUTPUTS", _failing_writer("heatmap.png", "s1"))
    lines, trees = _both_ways(slides, tmp_path, colour_model(), Params(workers=0))
    assert lines[0] == lines[1]
    assert [ln[0] for ln in lines[1]] == ["✓", "✗", "✓"]
    assert "cannot write outputs" in lines[1][1] and "No space left" in lines[1][1]
    assert trees[0] == trees[1]
    assert sorted(k for k in trees[1] if "/" not in k) == ["cohort.csv", "s0", "s2"]


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt during the test: a suite started in the background by
    a non-interactive shell inherits SIGINT ignored."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_ctrl_c_during_a_background_save_leaves_nothing_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ctrl_c_raises: None
) -> None:
    """A real SIGINT while slide s0 is saved in the lane and s1 segmented: the batch stops
    with KeyboardInterrupt, s0's save stops at its next file (its temporary folder removed),
    nothing is reported, no folder, no lock and no cohort row is left."""
    slides = _slides(tmp_path, 3)
    out = tmp_path / "out"
    seen: list[str] = []

    def wrap(o: folder.Output) -> folder.Output:
        def write(r: Any, path: Path) -> None:
            o.write(r, path)
            if r.stem == "s0" and not seen:
                seen.append(path.name)
                deadline = time.monotonic() + 30
                while not (out / ".s1.lock").exists() and time.monotonic() < deadline:
                    time.sleep(0.01)  # s1 taken: the main thread is segmenting it
                os.kill(os.getpid(), signal.SIGINT)  # Python raises it in the main thread
                while (out / ".s1.lock").exists() and time.monotonic() < deadline:
                    time.sleep(0.01)  # s1 let go: the main thread is stopping the lane
                time.sleep(0.2)

        return folder.Output(o.file_name, write, o.description, o.option)

    monkeypatch.setattr(folder, "OUTPUTS", tuple(wrap(o) for o in folder.OUTPUTS))
    reported: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_batch(
            slides,
            out,
            model=colour_model(),
            params=Params(workers=0),
            options=RunOptions(),
            report=reported.append,
        )
    assert seen == ["s0.geojson"]  # the first file was written, then the save stopped
    assert reported == []
    assert sorted(p.name for p in out.iterdir()) in ([], ["cohort.csv"])
    assert not (out / "cohort.csv").exists() or "s0" not in (out / "cohort.csv").read_text()
    # the lane's thread ended (by name: a library may start a thread of its own on first use)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("idcmap-")]


def test_a_serial_batch_starts_no_thread(tmp_path: Path) -> None:
    slides = _slides(tmp_path, 2)
    names: set[str] = set()

    def report(line: str) -> None:
        names.update(t.name for t in threading.enumerate())

    run_batch(
        slides,
        tmp_path / "out",
        model=colour_model(),
        params=Params(workers=0),
        options=RunOptions(stream=False),
        report=report,
    )
    assert not any(n.startswith("idcmap-save") for n in names)


# --------------------------------------------------------------------------- the lane


def test_lane_hands_off_one_job_and_its_error() -> None:
    lane: Lane[int] = Lane("test-lane")
    assert lane.take() is None and not lane.busy
    lane.put(lambda: 7)
    with pytest.raises(RuntimeError, match="take"):
        lane.put(lambda: 8)  # one at a time: memory stays flat
    assert lane.busy and lane.take() == 7

    def boom() -> int:
        raise KeyboardInterrupt

    lane.put(boom)
    with pytest.raises(KeyboardInterrupt):  # interruptions come back too
        lane.take()
    lane.close(cancel=False)


def test_lane_cancel_sets_stop_and_waits_for_the_job() -> None:
    lane: Lane[str] = Lane("test-lane")
    started = threading.Event()
    done: list[str] = []

    def job() -> str:
        started.set()
        while not lane.stop.is_set():
            time.sleep(0.01)
        done.append("saw stop")
        return "stopped"

    lane.put(job)
    assert started.wait(10)
    lane.close(cancel=True)  # returns once the job has ended
    assert done == ["saw stop"]
    other: Lane[int] = Lane("test-lane")
    other.put(lambda: 1)
    with pytest.raises(RuntimeError, match="not taken"):
        other.close(cancel=False)  # a result would be lost
    assert other.take() == 1
    other.close(cancel=False)


def test_cli_no_stream_and_decode_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--no-stream`` and ``--decode`` reach the run: the same lines either way, the decode
    recorded in summary.json."""
    pytest.importorskip("torchvision")
    from pipeline_helpers import tiny_model_file

    from idcmap.cli.main import main

    slides = _slides(tmp_path, 2)
    model = str(tiny_model_file(tmp_path))
    lines = []
    for flags in (["--no-stream", "--decode", "pillow"], ["--decode", "torch"]):
        out = tmp_path / flags[-1]
        rc = main(["run", *map(str, slides), "-o", str(out), "--model", model, "-q", *flags])
        got = capsys.readouterr().out.replace(str(out), "OUT").splitlines()
        assert rc == 0, got
        lines.append([ln.split(" (")[0] for ln in got])
        summary = json.loads((out / "s1" / "summary.json").read_text())
        assert summary["parameters"]["decode"] == flags[-1]
    assert lines[0] == lines[1] and len(lines[0]) == 3  # two slides and the totals
