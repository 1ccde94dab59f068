"""One slide end to end in one process: ``segment_slide`` + ``save`` (every output written), one
warm-up run, then ``--runs`` timed runs; prints the minimum and median wall time and the median
CPU time. Runs against whichever idcmap ``PYTHONPATH`` gives, so versions can be alternated::

    for r in 1 2 3 4; do
        PYTHONPATH=OLD python benchmarks/inprocess.py SLIDE --label old
        PYTHONPATH=.   python benchmarks/inprocess.py SLIDE --label new
        PYTHONPATH=.   python benchmarks/inprocess.py SLIDE --qc none --label new-no-qc
    done

(``OLD``: e.g. ``git archive REV | tar -x -C /tmp/old``.)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("slide")
    ap.add_argument("--qc", default="default", help="Params.qc, or 'default': the version's own")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    try:
        from idcmap.model.runtime import load_model
        from idcmap.pipeline.segment import segment_slide
    except ImportError:  # 0.2.0's flat layout
        from idcmap.api import segment_slide
        from idcmap.model import load_model
    from idcmap.params import Params

    model = load_model(None, device="cpu")
    params = Params() if a.qc == "default" else Params(qc=a.qc)
    segment_slide(a.slide, model=model, progress=False, params=params)
    wall, cpu = [], []
    for _ in range(a.runs):
        t, c = time.perf_counter(), time.process_time()
        res = segment_slide(a.slide, model=model, progress=False, params=params)
        with tempfile.TemporaryDirectory() as out:
            res.save(out)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    print(
        f"{a.label:10s} qc={a.qc:8s} wall min {min(wall):.3f} median {statistics.median(wall):.3f}"
        f" | CPU median {statistics.median(cpu):.3f} s"
    )


if __name__ == "__main__":
    main()
