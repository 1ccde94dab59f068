"""Batch runs: many slides, one output folder, nothing lost.

* A slide whose output folder exists (``<out>/<stem>/summary.json``) is skipped unless
  ``overwrite``; outputs are written to a temporary folder and renamed (see
  :meth:`SlideResult.save`), so an interrupted run never leaves a partial result under the final
  name.
* Each slide is processed under an exclusive ``flock`` on ``<out>/.<stem>.lock``: two runs on the
  same folder never work on the same slide at once; a slide busy in another run is retried at the
  end of the queue, after waiting for that run to finish it. Locks die with their process
  (kill -9 included), and leftovers of a killed run are removed when the slide is next taken.
* One failing slide is reported on one line and the batch goes on.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .api import Params, is_done, segment_slide, slide_stem
from .errors import IDCMapError, OutputError
from .model import IDCModel

#: File name endings taken as slides when a folder is given.
SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".dcm",
    ".qptiff",
    ".png",
    ".jpg",
    ".jpeg",
)


@dataclass(frozen=True)
class Outcome:
    """What happened to one slide: ``status`` is ``done``, ``skipped`` or ``failed``."""

    path: str
    status: str
    message: str = ""
    out_dir: str | None = None
    seconds: float = 0.0


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Slide paths from files and folders (a folder contributes the slides directly inside it).

    A folder whose slide files are all ``.dcm`` is one DICOM WSI series: it is kept as one slide
    (OpenSlide opens the series from any of its files). A folder without slides, like a missing
    file, is kept as it is, so that it fails on its own line and the batch goes on.
    """
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            try:
                found = sorted(
                    q
                    for q in p.iterdir()
                    if q.is_file()
                    and not q.name.startswith(".")
                    and q.name.lower().endswith(SLIDE_SUFFIXES)
                )
            except OSError:
                found = []
            if found and all(q.suffix.lower() == ".dcm" for q in found):
                out.append(p)  # one DICOM series
            elif found:
                out.extend(found)
            else:
                out.append(p)  # "a folder without slides" on its own line
        else:
            out.append(p)  # missing files fail on their own line, the batch goes on
    return out


def check_output_dir(out_dir: Path) -> None:
    """Fail early, once, when the output folder cannot be written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".idcmap-write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise OutputError(
            f"cannot write to output folder {out_dir}: {e.strerror or e}; choose a writable --out"
        ) from e


@contextmanager
def slide_lock(out_dir: Path, stem: str, *, wait: bool) -> Iterator[bool]:
    """Hold ``<out>/.<stem>.lock``; yields False (without waiting) when another run holds it."""
    fd = os.open(out_dir / f".{stem}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def remove_leftovers(out_dir: Path, stem: str) -> None:
    """Clean up after earlier, killed runs (call with the slide's lock held).

    ``.<stem>.tmp-*`` folders are unfinished outputs: removed. ``.<stem>.old-*`` is a finished
    output that an ``--overwrite`` run had moved aside just before renaming its new one into
    place: if the run died between the two renames, the finished output is put back.
    """
    final = out_dir / stem
    pat = glob.escape(stem)
    for d in sorted(out_dir.glob(f".{pat}.old-*")):
        if not final.exists() and (d / "summary.json").is_file():
            try:
                d.rename(final)
                continue
            except OSError:
                pass
        shutil.rmtree(d, ignore_errors=True)
    for d in out_dir.glob(f".{pat}.tmp-*"):
        shutil.rmtree(d, ignore_errors=True)


def run_batch(
    slides: list[Path],
    out_dir: str | Path,
    *,
    model: IDCModel,
    params: Params,
    overwrite: bool = False,
    tiles_geojson: bool = False,
    progress: bool = True,
    debug: bool = False,
    report: Callable[[str], None] = print,
) -> list[Outcome]:
    """Segment every slide into ``out_dir``; returns one :class:`Outcome` per slide, in order."""
    out = Path(out_dir)
    check_output_dir(out)
    params.validate()
    outcomes: dict[int, Outcome] = {}
    seen: dict[str, Path] = {}
    queue: list[int] = []
    for i, s in enumerate(slides):
        stem = slide_stem(s)
        if stem in seen and seen[stem].resolve() != s.resolve():
            outcomes[i] = Outcome(
                str(s),
                "failed",
                f"same output name '{stem}' as {seen[stem]}; "
                "rename one of the slides or run them into different --out folders",
            )
        else:
            seen.setdefault(stem, s)
            queue.append(i)
    bar = tqdm(
        total=len(slides),
        desc="slides",
        unit="slide",
        disable=not progress or len(slides) < 2,
        dynamic_ncols=True,
        position=0,
    )
    bar.update(len(outcomes))
    deferred: list[int] = []

    def one(i: int, wait: bool) -> bool:
        s = slides[i]
        stem = slide_stem(s)
        with slide_lock(out, stem, wait=wait) as got:
            if not got:
                return False
            remove_leftovers(out, stem)
            if is_done(out, s) and not overwrite:
                outcomes[i] = Outcome(
                    str(s), "skipped", "already done (pass --overwrite to redo)", str(out / stem)
                )
                return True
            t0 = time.perf_counter()
            try:
                result = segment_slide(s, model=model, progress=progress, params=params)
                final = result.save(out, tiles_geojson=tiles_geojson, overwrite=True)
                n = len(result.regions)
                msg = (
                    f"{n} IDC region{'s' if n != 1 else ''}, "
                    f"IDC {result.summary['idc_area_mm2']:.2f} mm² "
                    f"of {result.summary['tissue_area_mm2']:.2f} mm² tissue"
                )
                outcomes[i] = Outcome(str(s), "done", msg, str(final), time.perf_counter() - t0)
            except IDCMapError as e:
                outcomes[i] = Outcome(str(s), "failed", str(e), seconds=time.perf_counter() - t0)
            except (
                MemoryError,
                Exception,
            ) as e:  # an unforeseen bug must not cost the other slides
                if debug:
                    traceback.print_exc()
                outcomes[i] = Outcome(
                    str(s),
                    "failed",
                    f"internal error {type(e).__name__}: {e} "
                    "(rerun with --debug for the traceback and report it)",
                    seconds=time.perf_counter() - t0,
                )
        return True

    for i in queue:
        if not one(i, wait=False):
            deferred.append(i)
            continue
        _report(outcomes[i], report, bar)
    for i in deferred:  # busy in another run: wait for it, then skip (done) or take over (it died)
        one(i, wait=True)
        _report(outcomes[i], report, bar)
    bar.close()
    return [outcomes[i] for i in range(len(slides))]


def _report(o: Outcome, report: Callable[[str], None], bar: tqdm) -> None:
    mark = {"done": "✓", "skipped": "-", "failed": "✗"}[o.status]
    where = f" → {o.out_dir}" if o.status == "done" else ""
    secs = f" ({o.seconds:.1f} s)" if o.status == "done" else ""
    message = " ".join(o.message.split())  # one line per slide, whatever the reason says
    line = f"{mark} {o.path}: {message}{secs}{where}"
    if bar.disable:
        report(line)
    else:
        bar.write(line)
    bar.update(1)
