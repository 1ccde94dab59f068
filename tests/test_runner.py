"""The per-slide unit :func:`idcmap.batch.runner.process_slide` and the slide lock.

Real generated slides, the colour stand-in model (a real torch module) and real ``flock``s.
"""

from __future__ import annotations

import fcntl
import gc
import os
import pickle
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pipeline_helpers import colour_model
from tiffgen import write_pyramid_tiff

from idcmap.batch.runner import Outcome, RunOptions, process_slide, run_batch, slide_lock
from idcmap.model.runtime import IDCModel
from idcmap.output.cohort import read_cohort
from idcmap.params import Params


def _slide(path: Path) -> Path:
    img = np.full((400, 600, 3), 255, np.uint8)
    img[:300, :, 0] = np.kron(np.array([[90, 200, 240]], np.uint8), np.ones((300, 200), np.uint8))
    img[:300, :, 1], img[:300, :, 2] = 40, 150
    return write_pyramid_tiff(path, img, 2.0, downsamples=(1, 4), compression="zlib")


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _slide(tmp_path_factory.mktemp("runner") / "a.tiff")


def test_process_slide_outcomes_are_small_and_picklable(tmp_path: Path, slide: Path) -> None:
    model, params = colour_model(), Params(workers=0)
    out = tmp_path / "out"
    out.mkdir()
    done = process_slide(slide, out, model=model, params=params)
    assert done.status == "done" and done.out_dir == str(out / "a")
    assert done.summary is not None and done.regions == done.summary["regions"]
    assert done.tissue_area_mm2 == pytest.approx(done.summary["tissue_area_mm2"])
    assert done.seconds > 0 and "mm²" in done.message and "\n" not in done.message
    assert pickle.loads(pickle.dumps(done)) == done
    skipped = process_slide(slide, out, model=model, params=params)
    assert (skipped.status, skipped.out_dir, skipped.summary) == ("skipped", str(out / "a"), None)
    assert "overwrite=True" in skipped.message  # the library speaks API, not flags
    again = process_slide(
        slide, out, model=model, params=params, options=RunOptions(overwrite=True)
    )
    assert again.status == "done"
    failed = process_slide(tmp_path / "missing.tiff", out, model=model, params=params)
    assert failed.status == "failed" and failed.out_dir is None and failed.summary is None
    assert pickle.loads(pickle.dumps(failed)) == failed


def test_no_lock_file_stays_behind(tmp_path: Path, slide: Path) -> None:
    """Done, failed, missing and folder inputs alike leave only their outputs."""
    bad = tmp_path / "bad.tiff"
    bad.write_bytes(b"II*\x00 not a tiff at all")
    folder = tmp_path / "empty-folder"
    folder.mkdir()
    out = tmp_path / "out"
    inputs = [slide, bad, tmp_path / "missing.svs", folder]
    outcomes = run_batch(
        inputs,
        out,
        model=colour_model(),
        params=Params(workers=0),
        options=RunOptions(),
        report=str,
    )
    assert [o.status for o in outcomes] == ["done", "failed", "failed", "failed"]
    assert sorted(p.name for p in out.iterdir()) == ["a", "cohort.csv"]


def test_busy_slide_is_reported_busy_without_waiting(tmp_path: Path, slide: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with slide_lock(out, "a", wait=False) as got:  # another run holds the slide
        assert got
        o = process_slide(slide, out, model=colour_model(), params=Params(), wait_for_lock=False)
        assert o == Outcome(str(slide), "busy", "busy in another run")
    assert not (out / "a").exists() and not (out / ".a.lock").exists()


def test_lock_taken_on_a_removed_file_is_retried(tmp_path: Path) -> None:
    """The flock/unlink race: a waiter that gets the lock of a file its holder removed (and that
    a third run re-created) must not believe it holds the slide."""
    path = tmp_path / ".s.lock"
    fd1 = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd1, fcntl.LOCK_EX)  # holder 1
    inside = threading.Event()

    def waiter() -> None:
        with slide_lock(tmp_path, "s", wait=True) as got:
            assert got
            inside.set()

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.3)  # the waiter has opened the first file and waits for its lock
    path.unlink()  # holder 1 finishes: removes the file...
    fd2 = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd2, fcntl.LOCK_EX)  # ...a third run creates a new one and locks it
    os.close(fd1)  # holder 1 releases: the waiter gets a lock on the removed file
    assert not inside.wait(0.5), "the waiter went in while the third run holds the slide"
    os.close(fd2)
    assert inside.wait(5.0)
    t.join(5.0)
    assert not path.exists()


def _open_fds() -> set[str]:
    """This process's open descriptors (after a collection: an earlier test's object that
    closes a file when collected does not count)."""
    gc.collect()
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_locks_close_their_file_descriptors(tmp_path: Path) -> None:
    """A long batch (or a Dask worker) takes thousands of locks: each one's descriptor is closed
    on release, when the lock is busy, and when the file was removed under a waiter."""
    from idcmap.output.locking import file_lock

    path = tmp_path / ".s.lock"
    before = _open_fds()
    for _ in range(200):
        with file_lock(path, wait=True) as got:
            assert got
            with file_lock(path, wait=False) as busy:  # another descriptor, refused
                assert not busy
    assert _open_fds() - before == set()  # none left open (others may have closed)
    assert not path.exists()
    # the flock/unlink race once more (see above), counting descriptors this time
    before = _open_fds()
    fd1 = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd1, fcntl.LOCK_EX)
    inside = threading.Event()

    def waiter() -> None:
        with file_lock(path, wait=True) as got:
            assert got
            inside.set()

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.3)
    path.unlink()
    fd2 = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd2, fcntl.LOCK_EX)
    os.close(fd1)  # the waiter locks the removed file, closes it, opens the new one
    time.sleep(0.3)
    os.close(fd2)
    assert inside.wait(5.0)
    t.join(5.0)
    assert _open_fds() - before == set()


def _signal_inside_savez(monkeypatch: pytest.MonkeyPatch, interrupt: Callable[[], None]) -> None:
    """Deliver an interruption at the one spot of ``np.savez_compressed`` (writing
    heatmap.npz) where zipfile turns it into its own error: between marking the archive as
    being written and creating the member's writer, so that closing the archive then raises
    ValueError("Can't close the ZIP file while there is an open writing handle") with the
    interruption only as its ``__context__``."""
    import zipfile

    def init(self: object, *a: object, **k: object) -> None:
        interrupt()

    monkeypatch.setattr(zipfile._ZipWriteFile, "__init__", init)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # ZipFile.__del__
def test_an_interruption_inside_a_library_still_stops_the_batch(
    tmp_path: Path, slide: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C landing inside np.savez_compressed is not "an internal error of that slide": it
    stops the batch, and nothing is left under the slide's name."""
    out = tmp_path / "out"

    def ctrl_c() -> None:
        raise KeyboardInterrupt

    _signal_inside_savez(monkeypatch, ctrl_c)
    second = _slide(tmp_path / "b.tiff")
    reported: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_batch(
            [slide, second],
            out,
            model=colour_model(),
            params=Params(workers=0),
            options=RunOptions(),
            report=reported.append,
        )
    assert reported == []  # not reported as a failed slide, and b never started
    assert sorted(p.name for p in out.iterdir() if p.name != "cohort.csv") == []
    gc.collect()  # the half-written ZipFile's __del__ complains here, under this test's filter


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_sigterm_inside_a_library_exits_143(
    tmp_path: Path, slide: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's SIGTERM (a real signal, its real handler) landing inside np.savez_compressed:
    exit status 143, the batch stops, the slide is not reported as an internal error."""
    import signal

    from pipeline_helpers import tiny_model_file

    from idcmap.cli.main import main

    model = tiny_model_file(tmp_path)
    out = tmp_path / "out"
    second = _slide(tmp_path / "b.tiff")

    def sigterm() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises in here

    _signal_inside_savez(monkeypatch, sigterm)
    rc = main(["run", str(slide), str(second), "-o", str(out), "--model", str(model), "-q"])
    err = capsys.readouterr()
    assert rc == 143, err
    assert "internal error" not in err.out + err.err and "terminated" in err.err
    assert not (out / "a").exists() and not (out / "b").exists()
    gc.collect()


def test_a_slide_busy_in_another_run_is_taken_again_at_the_end(tmp_path: Path, slide: Path) -> None:
    """Another run holds slide ``a``: the batch does ``b`` first, then waits for ``a``'s lock
    and, the other run having died without finishing it, does ``a`` itself."""
    out = tmp_path / "out"
    out.mkdir()
    second = _slide(tmp_path / "b.tiff")
    held, release = threading.Event(), threading.Event()

    def other_run() -> None:
        with slide_lock(out, "a", wait=True) as got:
            assert got
            held.set()
            release.wait(30)

    t = threading.Thread(target=other_run)
    t.start()
    assert held.wait(10)
    lines: list[str] = []

    def report(line: str) -> None:
        lines.append(line)
        release.set()  # the other run ends once this batch has done something else

    outcomes = run_batch(
        [slide, second],
        out,
        model=colour_model(),
        params=Params(workers=0),
        options=RunOptions(),
        report=report,
    )
    t.join(10)
    assert [o.status for o in outcomes] == ["done", "done"]
    assert [Path(o.path).name for o in outcomes] == ["a.tiff", "b.tiff"]  # in input order
    assert [ln.split(": ")[0][2:] for ln in lines] == [str(second), str(slide)]  # b, then a
    assert (out / "a" / "summary.json").is_file() and not (out / ".a.lock").exists()


def test_same_slide_twice_is_not_a_name_clash_but_another_file_is(
    tmp_path: Path, slide: Path
) -> None:
    """The same file under two paths (a symlink) is one slide: done once, then skipped; another
    file with the same name would overwrite its output: it fails on its own line."""
    link = tmp_path / "elsewhere" / "a.tiff"
    link.parent.mkdir()
    link.symlink_to(slide)
    (tmp_path / "other").mkdir()
    other = _slide(tmp_path / "other" / "a.tiff")
    outcomes = run_batch(
        [slide, link, other],
        tmp_path / "out",
        model=colour_model(),
        params=Params(workers=0),
        options=RunOptions(),
        report=str,
    )
    assert [o.status for o in outcomes] == ["done", "skipped", "failed"]
    assert "same output name 'a'" in outcomes[2].message


def test_a_batch_with_overwrite_redoes_finished_slides(tmp_path: Path, slide: Path) -> None:
    """The batch plan skips finished slides, unless overwrite: then each is done again."""
    out = tmp_path / "out"
    kw = {"model": colour_model(), "params": Params(workers=0), "report": str}
    assert [o.status for o in run_batch([slide], out, options=RunOptions(), **kw)] == ["done"]
    again = run_batch([slide], out, options=RunOptions(), **kw)
    assert [o.status for o in again] == ["skipped"]
    redo = run_batch([slide], out, options=RunOptions(overwrite=True), **kw)
    assert [o.status for o in redo] == ["done"]


def test_a_slide_finished_with_other_settings_is_reported_not_kept(
    tmp_path: Path, slide: Path
) -> None:
    """A rerun into the same folder skips a finished slide only when its outputs are what this
    run would write. Made with another model or other output-changing parameters, the slide
    fails on its own line, saying what differs (its outputs and cohort row stay as they were);
    settings that only say how to compute (workers, batch size) do not count."""
    out = tmp_path / "out"
    model = colour_model()
    kw = {"options": RunOptions(), "report": str}

    def statuses(m: IDCModel, p: Params) -> list[str]:
        return [o.status for o in run_batch([slide], out, model=m, params=p, **kw)]

    assert statuses(model, Params(workers=0)) == ["done"]
    assert statuses(model, Params(workers=2, batch_size=7)) == ["skipped"]
    row = read_cohort(out)
    other = colour_model()
    other.config = other.config.replace(version="other")
    cases = [
        (model, Params(workers=0, stride_px=model.config.patch_px // 2), "stride_px="),
        (model, Params(workers=0, qc="none"), "qc=all, not none"),
        (model, Params(workers=0, threshold=0.3), "threshold=0.5, not 0.3"),
        (model, Params(workers=0, min_region_um2=0), "min_region_um2=40000.0, not 0"),
        (other, Params(workers=0), f"model {model.config.name} {model.config.version}, not"),
    ]
    for m, p, why in cases:
        (o,) = run_batch([slide], out, model=m, params=p, **kw)
        assert o.status == "failed", (p, o)
        assert why in o.message and "overwrite=True redoes it" in o.message, o.message
        assert o.message.startswith("done with other settings (")
    assert read_cohort(out) == row
    redo = run_batch(
        [slide],
        out,
        model=other,
        params=Params(workers=0),
        options=RunOptions(overwrite=True),
        report=str,
    )
    assert [o.status for o in redo] == ["done"]
    assert statuses(other, Params(workers=0)) == ["skipped"]


def test_ctrl_c_while_a_lock_is_taken_leaves_no_lock_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt landing while ``flock`` takes the lock (the file just created) must
    not leave the lock file behind: the next run would find a stray ``.<stem>.lock``."""
    from idcmap.output import locking

    path = tmp_path / ".s.lock"
    real = fcntl.flock
    calls = [0]

    def interrupted_once(fd: int, op: int) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise KeyboardInterrupt
        real(fd, op)

    monkeypatch.setattr(locking.fcntl, "flock", interrupted_once)
    with pytest.raises(KeyboardInterrupt), locking.file_lock(path, wait=False):
        pass
    assert not path.exists()
    monkeypatch.setattr(locking.fcntl, "flock", real)
    with locking.file_lock(path, wait=False) as got:
        assert got and path.exists()
    assert not path.exists()


def test_a_long_batchs_failures_are_named_again_at_most_twenty() -> None:
    from idcmap.batch.report import FAILURES_LISTED, failures_lines
    from idcmap.batch.runner import Outcome

    outs = [Outcome(f"s{i}.svs", "failed", "unreadable") for i in range(25)]
    outs.insert(3, Outcome("ok.svs", "done", "1 IDC region"))
    lines = failures_lines(outs)
    assert lines[0].startswith("idcmap: 25 slide(s) failed")
    assert lines[1:3] == ["  s0.svs", "  s1.svs"] and len(lines) == 1 + FAILURES_LISTED + 1
    assert lines[-1] == "  … and 5 more"
    assert failures_lines(outs[3:4]) == []  # nothing failed: nothing more
