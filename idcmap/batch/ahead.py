"""The first slide's front computed in a second process while this one loads torch.

``idcmap run`` spends its first ~2 s importing torch and loading the model. The import holds
the GIL, so a thread beside it gains nothing, and on a 2-core machine the other core idles.
:class:`FrontAhead` forks a process before that import; the process computes the first slide's
front (:func:`~idcmap.pipeline.front.compute_front`: its tissue mask and the QC stage's
artefact masks, no torch) and sends it back, and the runner hands it to that slide's
:func:`~idcmap.pipeline.segment.segment_slide`. The outputs are the same as without it.

It starts only where that is safe and pays: on Linux (``fork``: the process starts at once,
nothing is imported again), before this process imports torch (no threads to fork), for a
local slide file, with more than one core. Whatever goes wrong in that process (a bad slide,
a crash, a hang) only means that the slide's front is computed in this process as usual, which
reports the slide's error, if any, as it always does.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
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

#: How long the runner waits for the front before it computes the slide's front itself (s);
#: the front of a 40x slide takes ~0.5 s.
WAIT_S = 300.0


class FrontAhead:
    """A forked process computing one slide's front (:meth:`start` makes one)."""

    def __init__(self, path: str, params: Params, config: ModelConfig) -> None:
        ctx = multiprocessing.get_context("fork")
        self.path = path
        self._settings = (params, config)
        self._conn, send = ctx.Pipe(duplex=False)
        for stream in (sys.stdout, sys.stderr):  # else the child writes their buffers again
            stream.flush()
        self._proc = ctx.Process(
            target=_compute, args=(send, path, params, config), name="idcmap-front", daemon=True
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
        """Start on the first of ``slides`` that the run will segment (not done in ``out_dir``
        unless ``overwrite``), with the ``model`` the run will load (None: the bundled one);
        None where it would not pay or not be safe (the module doc), or no slide qualifies."""
        if sys.platform != "linux" or "torch" in sys.modules or _cores() < 2:
            return None
        # (output.folder.is_done's test; that module's imports would delay the fork)
        todo = [
            s
            for s in slides
            if overwrite or not (Path(out_dir) / slide_stem(s) / "summary.json").is_file()
        ]
        if not todo or is_url(str(todo[0])) or not Path(todo[0]).is_file():
            return None
        try:
            config = read_config(find_config(model if model is not None else bundled_model_path()))
        except IDCMapError:  # the model's own error comes when it is loaded
            return None
        return cls(slide_path(todo[0]), params, config)

    def take(self, path: str | Path, params: Params, config: ModelConfig) -> Front | None:
        """The front of ``path`` if it is the slide this one computed, for the same settings
        (what :func:`~idcmap.pipeline.front.front_key` covers); None otherwise, when it failed,
        or when it was taken already. Waits for it (at most :data:`WAIT_S`)."""
        from idcmap.pipeline.front import Front, front_key

        if not self._open or str(path) != self.path:
            return None
        mine = front_key(self.path, *self._settings)
        try:
            if front_key(path, params, config) != mine or not self._conn.poll(WAIT_S):
                return None
            got = self._conn.recv()
        except (EOFError, OSError):  # the process died before it sent anything
            return None
        finally:
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


def _compute(conn: Connection, path: str, params: Params, config: ModelConfig) -> None:
    """The forked process: the front, or None for any error (this process reports it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the CLI's handler: close() ends it quietly
    try:
        from idcmap.pipeline.front import compute_front

        front = compute_front(path, params, config)
    except Exception:  # any failure: the parent computes the slide again (and reports it)
        front = None
    try:
        conn.send(front)
    except (BrokenPipeError, OSError):  # the parent closed: nothing to do
        pass
    finally:
        conn.close()


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
