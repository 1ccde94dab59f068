"""The slides' fronts computed in a second process, one slide ahead of the run.

``idcmap run`` spends its first ~2 s importing torch and loading the model. The import holds
the GIL, so a thread beside it gains nothing, and on a 2-core machine the other core idles.
:class:`FrontAhead` forks a process before that import. The process computes the front of
each slide the run will segment, in the run's order (:func:`~idcmap.pipeline.front.compute_front`:
the tissue mask and the QC stage's artefact masks, no torch), the first one while torch loads
and each next one while the run's own process reads and runs the model on the slide before.
The runner hands each front to its slide's :func:`~idcmap.pipeline.segment.segment_slide`.
The outputs are the same as without it.

At most one front waits (the process blocks on the pipe until the run takes it), so memory
stays flat with the cohort's length. It starts only where that is safe and pays: on Linux
(``fork``: the process starts at once, nothing is imported again), before this process imports
torch (no threads to fork), with more than one core; remote slides are left to the run.
Whatever goes wrong in that process (a bad slide, a crash, a hang) only means that a slide's
front is computed in the run's own process as usual, which reports the slide's error, if any,
as it always does.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections import deque
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from idcmap.batch.inputs import slide_path
from idcmap.errors import IDCMapError
from idcmap.io.urls import is_url, slide_stem
from idcmap.model.modelfile import ModelConfig, bundled_model_path, find_config, read_config
from idcmap.params import Params

if TYPE_CHECKING:
    from idcmap.pipeline.front import Front

__all__ = ["FrontAhead"]

#: How long the run waits for a slide's front before it computes the front itself (s); the
#: front of a 40x slide takes ~0.5 s.
WAIT_S = 300.0


class FrontAhead:
    """A forked process computing the fronts of ``paths``, in order (:meth:`start` makes one)."""

    def __init__(self, paths: list[str], params: Params, config: ModelConfig) -> None:
        ctx = multiprocessing.get_context("fork")
        #: the slides whose fronts the process sends, in its order, not yet received (and the
        #: same as a set: a cohort may be long)
        self._pending = deque(paths)
        self._pending_set = set(paths)
        self._settings = (params, config)
        self._conn, send = ctx.Pipe(duplex=False)
        for stream in (sys.stdout, sys.stderr):  # else the child writes their buffers again
            stream.flush()
        self._proc = ctx.Process(
            target=_child, args=(send, paths, params, config), name="idcmap-front", daemon=True
        )
        self._proc.start()
        send.close()  # (the child's end: EOF here when the child dies)
        self._open = True

    @classmethod
    def start(
        cls,
        slides: list[str | Path],
        params: Params,
        model: str | Path | None,
        out_dir: str | Path,
        *,
        overwrite: bool,
    ) -> FrontAhead | None:
        """Start on the local ``slides`` the run will segment (not done in ``out_dir`` unless
        ``overwrite``), with the ``model`` the run will load (None: the bundled one); None
        where it would not pay or not be safe (the module doc), or no slide qualifies."""
        if sys.platform != "linux" or "torch" in sys.modules or _cores() < 2:
            return None
        # (output.folder.is_done's test; that module's imports would delay the fork)
        todo = [
            slide_path(s)
            for s in slides
            if not is_url(str(s))
            and Path(s).is_file()
            and (overwrite or not (Path(out_dir) / slide_stem(s) / "summary.json").is_file())
        ]
        if not todo:
            return None
        try:
            config = read_config(find_config(model if model is not None else bundled_model_path()))
        except IDCMapError:  # the model's own error comes when it is loaded
            return None
        return cls(list(dict.fromkeys(todo)), params, config)

    def take(self, path: str | Path, params: Params, config: ModelConfig) -> Front | None:
        """The front of ``path`` if it is one of this one's slides, for the same settings (what
        :func:`~idcmap.pipeline.front.front_key` covers); None otherwise, when it failed, or
        when it was taken already. Fronts of slides before it that the run did not take (done,
        busy in another run) are dropped. Waits for it (at most :data:`WAIT_S`)."""
        from idcmap.pipeline.front import Front, front_key

        mine = front_key(str(path), *self._settings)
        if not self._open or str(path) not in self._pending_set:
            return None
        if front_key(path, params, config) != mine:
            return None
        got: object = None
        try:
            while self._pending:
                ahead = self._pending.popleft()
                self._pending_set.discard(ahead)
                if not self._conn.poll(WAIT_S):
                    self.close()
                    return None
                got = self._conn.recv()
                if ahead == str(path):
                    break
        except (EOFError, OSError):  # the process died: the run computes the rest itself
            self.close()
            return None
        if not self._pending:
            self.close(wait_s=1.0)
        return got if isinstance(got, Front) and got.key == mine else None

    def close(self, wait_s: float = 0.0) -> None:
        """Stop the process (after ``wait_s`` for it to end by itself, if it still runs) and free
        its pipe; idempotent."""
        if not self._open:
            return
        self._open = False
        self._proc.join(timeout=wait_s)
        self._conn.close()
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join(timeout=5)

    def __enter__(self) -> FrontAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _child(conn: Connection, paths: list[str], params: Params, config: ModelConfig) -> None:
    """The forked process: Ctrl-C is the run's to handle, and :meth:`FrontAhead.close` ends it
    quietly (the default SIGTERM, not the CLI's handler)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    serve(conn, paths, params, config)


def serve(conn: Connection, paths: list[str], params: Params, config: ModelConfig) -> None:
    """Send the front of each of ``paths`` in turn, or None for any error (the run computes
    that slide itself, and reports it); each send waits for the run to take the one before."""
    try:
        from idcmap.pipeline.front import compute_front
    except Exception:  # (cannot happen in a sound install) the run computes every slide itself
        conn.close()
        return
    try:
        for path in paths:
            try:
                front = compute_front(path, params, config)
            except Exception:  # any failure: the run computes the slide again (and reports it)
                front = None
            conn.send(front)
    except (BrokenPipeError, OSError):  # the run closed its end: nothing more to do
        pass
    finally:
        conn.close()


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
