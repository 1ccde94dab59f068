"""One background thread with a hand-off of one job: what lets a batch overlap one slide's
export with the next slide's reads and model (:func:`idcmap.batch.runner.run_slides`).

At most one job is in the lane at a time (:meth:`Lane.put` refuses a second one before
:meth:`Lane.take` has collected the first), so at most one finished slide waits in memory
while the next is computed: memory stays flat with the cohort's length. A job's exception,
interruptions included, comes back from :meth:`Lane.take` in the caller's thread. The job
polls :attr:`Lane.stop` (set by :meth:`Lane.close` with ``cancel=True``) to give up early,
e.g. when Ctrl-C stops the batch while it writes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

__all__ = ["Lane"]

T = TypeVar("T")


class Lane(Generic[T]):
    """One background thread running one job at a time.

    Args:
        name: the thread's name prefix (shown by debuggers and ``py-spy``).
    """

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._job: Future[T] | None = None
        #: set when the lane's owner gives up (an interruption): a job checks it and stops
        self.stop = threading.Event()

    @property
    def busy(self) -> bool:
        """A job was put and not yet taken."""
        return self._job is not None

    def put(self, job: Callable[[], T]) -> None:
        """Start ``job`` in the background; the lane must be empty (:meth:`take` first)."""
        if self._job is not None:
            raise RuntimeError("the lane holds a job: take() its result first")
        self._job = self._pool.submit(job)

    def take(self) -> T | None:
        """Wait for the job in the lane and return its result (None when the lane is empty);
        the job's exception is raised here. The lane is empty afterwards."""
        job, self._job = self._job, None
        return None if job is None else job.result()

    def close(self, *, cancel: bool) -> None:
        """Wait for the job in the lane, if any, and end the thread. ``cancel``: set
        :attr:`stop` first and drop the job's result or exception (the owner is stopping
        with an exception of its own); else the job must have been taken."""
        if cancel:
            self.stop.set()
        elif self._job is not None:
            raise RuntimeError("close() with a job not taken: take() it, or cancel")
        self._job = None  # a cancelled job's result or error is dropped
        self._pool.shutdown(wait=True)
