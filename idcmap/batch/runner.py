"""Batch runs: many slides, one output folder, nothing lost.

:func:`process_slide` is the unit of work (lock, clean-up, skip, segment, save → :class:`Outcome`).
:func:`run_slides` is the one in-process runner: it plans the batch (:func:`plan`: duplicate output
names, the same slide twice, finished slides) and runs the unit over it, each slide's save in a
background thread while the next one is segmented (``RunOptions.stream``); the Dask
runner (:mod:`idcmap.batch.cluster`) plans the same way and runs the same unit on its workers
(``Outcome`` is a small picklable frozen dataclass). :class:`RunOptions` is the one set of
per-run options every layer passes on.

* A slide whose output folder exists (``<out>/<stem>/summary.json``) is skipped unless
  ``overwrite``; outputs are written to a temporary folder and renamed (see
  :meth:`SlideResult.save`), so an interrupted run never leaves a partial result under the final
  name.
* Each slide is processed under an exclusive ``flock`` on ``<out>/.<stem>.lock``: two runs on the
  same folder never work on the same slide at once; a slide busy in another run is retried at the
  end of the queue, after waiting for that run to finish it. Locks die with their process
  (kill -9 included), the lock file is removed when the slide is finished, and leftovers of a
  killed run are removed when the slide is next taken.
* One failing slide is reported on one line and the batch goes on.
"""

from __future__ import annotations

import glob
import os
import shutil
import time
import traceback
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Literal, get_args

from tqdm.auto import tqdm

from idcmap.batch.ahead import FrontAhead
from idcmap.batch.inputs import same_slide, slide_path
from idcmap.batch.lane import Lane
from idcmap.batch.resume import finished_with_other_settings
from idcmap.errors import Cancelled, IDCMapError, OutputError, UsageError, interruption
from idcmap.io.urls import is_url, slide_stem, url_name
from idcmap.model.modelfile import ModelConfig
from idcmap.model.runtime import IDCModel
from idcmap.output.cohort import COHORT_FILE, row_from_summary, summary_of, update_cohort
from idcmap.output.folder import OUTPUT_OPTIONS, is_done
from idcmap.output.locking import file_lock
from idcmap.params import Params
from idcmap.pipeline.result import SlideResult
from idcmap.pipeline.segment import segment_slide
from idcmap.pipeline.summary import SlideSummary

#: Values of :attr:`Outcome.status`.
Status = Literal["done", "skipped", "failed", "busy"]
DONE, SKIPPED, FAILED, BUSY = get_args(Status)


@dataclass(frozen=True)
class RunOptions:
    """How a batch treats each slide, passed unchanged from the CLI or the Python API through
    the runners to :func:`process_slide`.

    Attributes:
        overwrite: redo slides whose outputs exist (else they are ``skipped``).
        extra_outputs: opt-in outputs (:data:`idcmap.output.folder.OUTPUT_OPTIONS`:
            ``tiles_geojson``, ``ome_tiff``).
        progress: progress bars (slides; tiles when there is no slide bar).
        debug: every failure's traceback in :attr:`Outcome.detail`.
        stream: :func:`run_slides` writes each slide's outputs in a background thread while
            the next slide is read and run through the model (outcomes, cohort rows and
            outputs as without; :func:`run_slides`); False: one slide after the other.
            :func:`process_slide` (the Dask workers' unit) always does one slide.

    Raises:
        UsageError: an unknown name in ``extra_outputs`` (before any slide is run).
    """

    overwrite: bool = False
    extra_outputs: frozenset[str] = field(default_factory=frozenset)
    progress: bool = False
    debug: bool = False
    stream: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.extra_outputs) - OUTPUT_OPTIONS
        if unknown:
            raise UsageError(
                f"extra_outputs: unknown {sorted(unknown)}; known: {sorted(OUTPUT_OPTIONS)}"
            )


@dataclass(frozen=True)
class Outcome:
    """What happened to one slide (small and picklable: a worker returns it to its client).

    Attributes:
        path: the slide path as given.
        status: ``done``, ``skipped``, ``failed``, or ``busy`` (another run holds the slide's
            lock; only from :func:`process_slide` with ``wait_for_lock=False``).
        message: one short line: the figures of a done slide, the reason of a failed one.
        out_dir: the slide's output folder (done and skipped slides), else None.
        seconds: wall time of the segmentation and saving (0 when skipped / busy).
        summary: the slide's ``summary.json`` content (done slides), else None.
        detail: the full reason of a failure (the traceback of an internal error), for
            ``--debug``; empty otherwise.
    """

    path: str
    status: Status
    message: str = ""
    out_dir: str | None = None
    seconds: float = 0.0
    summary: SlideSummary | None = None
    detail: str = ""

    @property
    def idc_area_mm2(self) -> float | None:
        return None if self.summary is None else self.summary.drawn_idc_area_mm2

    @property
    def tissue_area_mm2(self) -> float | None:
        return None if self.summary is None else self.summary.tissue_area_mm2

    @property
    def regions(self) -> int | None:
        return None if self.summary is None else self.summary.regions


def check_output_dir(out_dir: Path) -> None:
    """Fail early, once, when the output folder cannot be written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(
            f"output folder {out_dir} is a file, not a folder; choose another out_dir="
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".idcmap-write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise OutputError(
            f"cannot write to output folder {out_dir}: {e.strerror or e}; "
            "choose a writable out_dir="
        ) from e


@contextmanager
def slide_lock(out_dir: Path, stem: str, *, wait: bool) -> Iterator[bool]:
    """Hold ``<out>/.<stem>.lock``; yields False (without waiting) when another run holds it.

    The lock file is removed on release (:func:`idcmap.output.locking.file_lock`).
    """
    with file_lock(out_dir / f".{stem}.lock", wait=wait) as got:
        yield got


def remove_leftovers(out_dir: Path, stem: str) -> None:
    """Clean up after earlier, killed runs (call with the slide's lock held).

    ``.<stem>.tmp-*`` folders are unfinished outputs: removed. ``.<stem>.old-*`` is a finished
    output that an ``overwrite`` run had moved aside just before renaming its new one into
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


def _without_path(e: IDCMapError, path: str | Path) -> str:
    """The error's line without a leading ``<file>: `` (the outcome line names the file)."""
    msg = " ".join(str(e).split())
    for prefix in (str(path), url_name(path) if is_url(path) else Path(path).name):
        if msg.startswith(prefix + ": "):
            return msg[len(prefix) + 2 :]
    return msg


def done_message(summary: SlideSummary) -> str:
    """One line of a done slide's figures (regions, IDC area of the regions, tissue area) and,
    when QC asks for a second look, why."""
    n = summary.regions
    line = (
        f"{n} IDC region{'s' if n != 1 else ''}, "
        f"IDC {summary.drawn_idc_area_mm2:.2f} mm² of {summary.tissue_area_mm2:.2f} mm² tissue"
    )
    if summary.review:
        line += f"; review: {'; '.join(summary.review_reasons)}"
    return line


def process_slide(
    path: str | Path,
    out_dir: str | Path,
    *,
    model: IDCModel,
    params: Params,
    options: RunOptions = RunOptions(),
    wait_for_lock: bool = True,
    ahead: FrontAhead | None = None,
) -> Outcome:
    """Segment one slide into ``out_dir/<stem>/``, safely alongside other runs on that folder.

    Takes the slide's lock (``wait_for_lock=False``: returns status ``busy`` at once when another
    run holds it), removes leftovers of killed runs, skips a finished slide unless
    ``overwrite``, then segments and saves it atomically. Never raises for a slide's own
    problems (missing, unreadable, an internal error): they come back as a ``failed`` Outcome
    whose message is one short line. ``out_dir`` must exist (see :func:`check_output_dir`).
    Every outcome but ``busy`` is recorded in ``out_dir/cohort.csv`` (:mod:`idcmap.output.cohort`).

    ``options.debug`` puts the traceback of every failure in ``Outcome.detail`` (an internal
    error's is always there; an :class:`IDCMapError`'s detail is otherwise its ``detail``).
    ``ahead``: where the slide's front may be computed already (:mod:`idcmap.batch.ahead`)."""
    out = Path(out_dir)
    s = path if is_url(path) else Path(path)  # Path() would merge the // of a URL
    stem = slide_stem(s)
    with slide_lock(out, stem, wait=wait_for_lock) as got:
        if not got:
            return Outcome(str(s), BUSY, "busy in another run")
        # recorded under the slide's lock: a slide's rows are written in the order of its runs
        return record_outcome(
            out,
            _locked_process_slide(s, out, model=model, params=params, options=options, ahead=ahead),
        )


def record_outcome(out_dir: str | Path, o: Outcome) -> Outcome:
    """Write ``o``'s row of ``out_dir/cohort.csv`` (not for ``busy``); a table that cannot be
    written does not fail the slide: the reason goes to ``o.detail``."""
    if o.status == BUSY:
        return o
    summary = o.summary
    if summary is None and o.status in (SKIPPED, FAILED) and o.out_dir:
        summary = summary_of(o.out_dir)  # the finished output's figures, if there is one
    row = row_from_summary(
        slide_stem(o.path),
        o.path,
        o.status,
        reason="" if o.status == DONE else o.message,
        summary=summary,
        output=o.out_dir or "",
        seconds=round(o.seconds, 2) if o.status != SKIPPED else None,
    )
    try:
        update_cohort(out_dir, [row])
    except OSError as e:
        note = f"{COHORT_FILE} not updated: {e.strerror or e}"
        return replace(o, detail=f"{o.detail}\n{note}".strip())
    return o


@dataclass
class _Segmented:
    """A slide segmented and not yet saved (its lock held): the hand-off between the two
    halves of :func:`process_slide`."""

    path: str | Path
    result: SlideResult
    t0: float  # perf_counter at the start of the segmentation


def _segment(
    s: str | Path,
    out: Path,
    *,
    model: IDCModel,
    params: Params,
    options: RunOptions,
    ahead: FrontAhead | None = None,
) -> Outcome | _Segmented:
    """The first half of :func:`process_slide` (the slide's lock held): leftovers removed, a
    finished slide skipped, the slide segmented; a failure comes back as its Outcome."""
    stem = slide_stem(s)
    remove_leftovers(out, stem)
    if is_done(out, s) and not options.overwrite:
        return _finished(out, s, model.config, params)
    t0 = time.perf_counter()
    try:
        f = ahead.take(s, params, model.config) if ahead is not None else None
        result = segment_slide(s, model=model, progress=options.progress, params=params, front=f)
    except Exception as e:
        return _failure(s, e, t0, options)
    return _Segmented(s, result, t0)


def _save(
    seg: _Segmented, out: Path, options: RunOptions, stop: Callable[[], bool] | None = None
) -> Outcome:
    """The second half (the slide's lock still held): the outputs saved atomically; a failure
    comes back as its Outcome. ``stop``: see :func:`idcmap.output.folder.save_outputs`."""
    s, result = seg.path, seg.result
    try:
        final = result.save(out, overwrite=True, extra_outputs=options.extra_outputs, stop=stop)
    except Exception as e:
        return _failure(s, e, seg.t0, options)
    return Outcome(
        str(s),
        DONE,
        done_message(result.summary),
        str(final),
        time.perf_counter() - seg.t0,
        summary=result.summary,
    )


def _locked_process_slide(
    s: str | Path,
    out: Path,
    *,
    model: IDCModel,
    params: Params,
    options: RunOptions,
    ahead: FrontAhead | None = None,
) -> Outcome:
    """The work of :func:`process_slide` once the slide's lock is held."""
    seg = _segment(s, out, model=model, params=params, options=options, ahead=ahead)
    return seg if isinstance(seg, Outcome) else _save(seg, out, options)


def _failure(s: str | Path, e: Exception, t0: float, options: RunOptions) -> Outcome:
    """The ``failed`` Outcome of a slide's error (an interruption hidden in it is re-raised)."""
    _stop_if_interrupted(e)
    if isinstance(e, IDCMapError):
        detail = "\n".join(
            filter(None, [e.detail, traceback.format_exc() if options.debug else ""])
        )
        return Outcome(
            str(s), FAILED, _without_path(e, s), seconds=time.perf_counter() - t0, detail=detail
        )
    # an unforeseen bug (MemoryError included) must not cost the others
    first = (str(e).strip().splitlines() or [""])[0][:200]
    return Outcome(
        str(s),
        FAILED,
        f"internal error {type(e).__name__}: {first} (debug=True shows the traceback; "
        "please report it)",
        seconds=time.perf_counter() - t0,
        detail=traceback.format_exc(),
    )


def _stop_if_interrupted(e: Exception) -> None:
    """Re-raise the Ctrl-C / SIGTERM that ``e`` hides: a signal landing inside a library (e.g.
    zipfile in ``np.savez_compressed``) comes out as that library's error, which must stop the
    batch like the signal itself, not be reported as a failure of the slide."""
    stop = interruption(e)
    if stop is not None:
        raise stop from None


def plan(
    paths: Iterable[str | os.PathLike[str]],
    out_dir: Path,
    *,
    overwrite: bool,
    see_out_dir: bool,
    against: tuple[ModelConfig, Params] | None = None,
) -> tuple[list[Outcome], list[str]]:
    """What is known before any slide runs, and the work left (both runners use it).

    Returns ``(early, queue)``: ``failed`` outcomes for a second slide with an output name
    already taken by another file (not in cohort.csv: the row belongs to the first),
    ``skipped`` ones for a slide given again (another spelling of the same file), and,
    when ``see_out_dir`` (this process sees the output folder), ``skipped`` ones for finished
    slides (recorded; ``failed``, row untouched, if made with other settings than ``against``:
    model config, parameters); ``queue`` is the rest, each slide once, in order."""
    early: list[Outcome] = []
    queue: list[str] = []
    seen: dict[str, str] = {}
    for p in paths:
        s = slide_path(p)
        stem = slide_stem(s)
        if stem in seen:
            if not same_slide(seen[stem], s):
                early.append(
                    Outcome(
                        s,
                        FAILED,
                        f"same output name '{stem}' as {seen[stem]}; "
                        "rename one of the slides or run them into different output folders",
                    )
                )
            else:  # the same slide twice: once is enough
                early.append(Outcome(s, SKIPPED, f"the same slide as {seen[stem]}", None))
            continue
        seen[stem] = s
        if see_out_dir and not overwrite and is_done(out_dir, s):
            o = _finished(out_dir, s, *(against or (None, None)))
            early.append(o if o.status == FAILED else record_outcome(out_dir, o))
            continue
        queue.append(s)
    return early, queue


_SKIPPED = "already done (overwrite=True redoes it)"


def _finished(out: Path, s: str | Path, cfg: ModelConfig | None, params: Params | None) -> Outcome:
    """A slide whose output folder is finished: skipped, or failed when it was made with other
    settings than the model ``cfg`` and ``params`` (never kept silently)."""
    folder = out / slide_stem(s)
    why = finished_with_other_settings(folder, cfg, params)
    return Outcome(str(s), SKIPPED if why is None else FAILED, why or _SKIPPED, str(folder))


def run_slides(
    paths: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    model: IDCModel,
    params: Params,
    options: RunOptions = RunOptions(),
    ahead: FrontAhead | None = None,
) -> Iterator[Outcome]:
    """The in-process runner: segment every slide into ``out_dir`` with :func:`process_slide`'s
    steps in this process; yields one :class:`Outcome` per input as each finishes (``Outcome.path``
    says which). A slide busy in another run is taken again at the end, waiting for that run:
    skipped if it finished it, redone if it died. With ``options.progress`` and several
    slides, a bar over the slides. ``ahead``: ``idcmap run``'s fronts, one slide ahead.

    With ``options.stream`` (the default), a slide's outputs are written by a background
    thread while the next slide is segmented (:func:`_streamed`): the same outcomes in the
    same order, the same files, the same cohort rows, at most one finished slide waiting."""
    out = Path(out_dir)
    params.validate()
    items = list(paths)
    run_as = (model.config, params)
    early, queue = plan(items, out, overwrite=options.overwrite, see_out_dir=True, against=run_as)
    if queue:
        check_output_dir(out)
    bar = slide_bar(len(items), options.progress)
    unit = replace(options, progress=options.progress and bar.disable)  # tile bars: no slide bar
    deferred: list[str] = []
    run = _streamed if options.stream and len(queue) > 1 else _one_by_one
    outcomes = run(queue, out, model=model, params=params, options=unit, busy=deferred, ahead=ahead)
    try:
        for o in early:
            bar.update(1)
            yield o
        for o in outcomes:
            bar.update(1)
            yield o
        for s in deferred:  # busy in another run: wait for it, then skip (done) or take over
            o = process_slide(s, out, model=model, params=params, options=unit)
            bar.update(1)
            yield o
    finally:
        outcomes.close()  # a batch stopped early: the background save is stopped now
        bar.close()


def _one_by_one(
    queue: list[str],
    out: Path,
    *,
    model: IDCModel,
    params: Params,
    options: RunOptions,
    busy: list[str],
    ahead: FrontAhead | None = None,
) -> Generator[Outcome, None, None]:
    """:func:`process_slide` over ``queue``, one after the other; slides busy in another run
    are appended to ``busy``."""
    for s in queue:
        o = process_slide(
            s, out, model=model, params=params, options=options, wait_for_lock=False, ahead=ahead
        )
        if o.status == BUSY:
            busy.append(s)
            continue
        yield o


def _streamed(
    queue: list[str],
    out: Path,
    *,
    model: IDCModel,
    params: Params,
    options: RunOptions,
    busy: list[str],
    ahead: FrontAhead | None = None,
) -> Generator[Outcome, None, None]:
    """:func:`_one_by_one` with each slide's save (pictures, GeoJSON, NPZ, summary, its cohort
    row) in a background :class:`~idcmap.batch.lane.Lane` while the next slide is segmented.

    The slide's lock is taken here and handed to the lane, which releases it once the
    outputs are written and the row recorded. Outcomes and cohort rows come in queue order:
    a slide's own outcome (skipped, failed) waits for the save in the lane. An interruption
    (Ctrl-C, SIGTERM, an error of the save that hides one) stops the lane's save at its next
    file and removes its temporary folder before it propagates; nothing partial is left.
    """
    lane: Lane[Outcome] = Lane("idcmap-save")
    ok = False
    try:
        for s in queue:
            with ExitStack() as held:
                if not held.enter_context(slide_lock(out, slide_stem(s), wait=False)):
                    busy.append(s)
                    continue
                seg = _segment(s, out, model=model, params=params, options=options, ahead=ahead)
                previous = lane.take()  # the slide before: saved, its row recorded
                if isinstance(seg, Outcome):  # skipped or failed: recorded after the one before
                    mine: Outcome | None = record_outcome(out, seg)
                else:
                    lock = held.pop_all()  # from here the lane releases it
                    try:
                        lane.put(partial(_save_and_release, seg, out, options, lock, lane))
                    except BaseException:
                        lock.close()
                        raise
                    mine = None
            if previous is not None:
                yield previous
            if mine is not None:
                yield mine
        last = lane.take()
        if last is not None:
            yield last
        ok = True
    finally:
        lane.close(cancel=not ok)


def _save_and_release(
    seg: _Segmented, out: Path, options: RunOptions, lock: ExitStack, lane: Lane[Outcome]
) -> Outcome:
    """The lane's job: save, record the row, release the slide's lock. A save that fails
    while the run is stopping was stopped (a signal reaches the main thread only; what it
    leaves the save to trip over is no fault of the slide): no row, like an interrupted one."""
    with lock:
        o = _save(seg, out, options, stop=lane.stop.is_set)
        if o.status == FAILED and lane.stop.is_set():
            raise Cancelled(f"{seg.path}: not saved, the run is stopping")
        return record_outcome(out, o)


def run_batch(
    slides: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    model: IDCModel,
    params: Params,
    options: RunOptions = RunOptions(progress=True),
    report: Callable[[str], None] = print,
    describe: Callable[[Outcome], str] | None = None,
) -> list[Outcome]:
    """:func:`run_slides` over ``slides`` with each outcome reported as it comes (one line
    made by ``describe``, default :func:`format_outcome`); returns the outcomes in input order
    (a slide given twice gets the same outcome twice)."""
    items = [slide_path(s) for s in slides]
    describe = describe or format_outcome
    by_path: dict[str, Outcome] = {}
    for o in run_slides(items, out_dir, model=model, params=params, options=options):
        write_line(describe(o), report, options.progress)
        by_path[o.path] = o
    return [by_path[s] for s in items]


def slide_bar(total: int, progress: bool) -> tqdm:
    """The bar over a batch's slides (disabled without ``progress`` or for one slide)."""
    return tqdm(
        total=total,
        desc="slides",
        unit="slide",
        disable=not progress or total < 2,
        dynamic_ncols=True,
        position=0,
    )


def write_line(line: str, report: Callable[[str], None], progress: bool) -> None:
    """A batch's line, above the bars when they are drawn."""
    if progress:
        tqdm.write(line)
    else:
        report(line)


def format_outcome(o: Outcome, *, detail: bool = False) -> str:
    """The one line of a slide: mark, path, message (and time and folder when done); with
    ``detail``, a failure's detail follows on indented lines."""
    mark = {DONE: "✓", SKIPPED: "-", FAILED: "✗", BUSY: "…"}[o.status]
    where = f" → {o.out_dir}" if o.status == DONE else ""
    secs = f" ({o.seconds:.1f} s)" if o.status == DONE else ""
    message = " ".join(o.message.split())  # one line per slide, whatever the reason says
    line = f"{mark} {o.path}: {message}{secs}{where}"
    if detail and o.detail:
        line += "\n" + "\n".join("    " + ln for ln in o.detail.rstrip().splitlines())
    return line
