"""The closing lines of a batch on the command line: the failed slides named again (so that a
long run's failures do not scroll away) and the totals."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import get_args

from idcmap.batch.runner import DONE, FAILED, SKIPPED, Outcome, Status

__all__ = ["FAILURES_LISTED", "failures_lines", "totals_line"]


def totals_line(outcomes: Iterable[Outcome], out_dir: str | os.PathLike[str]) -> str:
    """The last line of a batch: counts by status and where the outputs are."""
    n = {s: 0 for s in get_args(Status)}
    for o in outcomes:
        n[o.status] += 1
    return (
        f"idcmap: {n[DONE]} done, {n[SKIPPED]} skipped, {n[FAILED]} failed; "
        f"outputs in {os.fspath(out_dir)}"
    )


#: At most this many failed slides are named again at the end of a batch
FAILURES_LISTED = 20


def failures_lines(outcomes: Iterable[Outcome], limit: int = FAILURES_LISTED) -> list[str]:
    """The failed slides named again at the end of a batch, so a long run's failures do not
    scroll away: a heading, at most ``limit`` paths (indented; the reasons stay on their ✗
    lines, once each), and how many more (empty if none failed)."""
    failed = [o for o in outcomes if o.status == FAILED]
    if not failed:
        return []
    lines = [f"idcmap: {len(failed)} slide(s) failed (the reasons are on their ✗ lines above):"]
    lines += [f"  {o.path}" for o in failed[:limit]]
    if len(failed) > limit:
        lines.append(f"  … and {len(failed) - limit} more")
    return lines
