"""idc-v2 (learned context aggregator) against idc-v1 (fixed Gaussian) end to end on one slide.

Every case runs ``segment_slide`` + ``save`` in a fresh subprocess (peak RSS from ``os.wait4``;
start-up and model load outside the wall time), the models alternating so that drifting load on
a shared machine hits both alike. Prints one line per run and the medians: wall seconds, the
region stage's seconds (``aggregate`` for v2, ``smooth`` for v1) and its share of the wall time,
and peak RSS.

    .venv/bin/python benchmarks/aggregator.py --slide benchmarks/_data/8975-40x.tiff --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time, tempfile
from idcmap.pipeline.segment import segment_slide
from idcmap.model.runtime import load_model
from idcmap.params import Params
slide, model, device = sys.argv[1], sys.argv[2], sys.argv[4]
stride, threads = int(sys.argv[3]), int(sys.argv[5])
m = load_model(model, device=device)
p = Params(stride_px=stride, device=device, torch_threads=threads or None)
t = time.perf_counter()
res = segment_slide(slide, model=m, progress=False, params=p)
with tempfile.TemporaryDirectory() as d:
    res.save(d)
wall = time.perf_counter() - t
tm = res.summary["timings_s"]
print(json.dumps({"wall_s": wall, "region_stage_s": tm.get("aggregate", tm.get("smooth", 0.0)),
                  "aggregator": res.summary["parameters"]["aggregator"],
                  "regions": len(res.regions), "idc_cells": int(res.mask.sum())}))
"""


def run_case(slide: Path, model: str, stride: int, device: str, threads: int) -> dict:
    cmd = [sys.executable, "-c", CHILD, str(slide), model, str(stride), device, str(threads)]
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{model} failed on {slide} (exit {proc.returncode})")
    r = json.loads(text.strip().splitlines()[-1])
    r["peak_rss_mb"] = usage.ru_maxrss / 1024
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slide", type=Path, required=True)
    ap.add_argument("--models", default="idc-v1,idc-v2", help="comma-separated, by name or path")
    ap.add_argument("--strides", default="50")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args(argv)
    models = a.models.split(",")
    print(f"slide {a.slide}; load average {os.getloadavg()[0]:.2f}; {time.strftime('%H:%M:%S')}")
    for stride in (int(s) for s in a.strides.split(",")):
        runs: dict[str, list[dict]] = {m: [] for m in models}
        for i in range(a.repeats):
            for m in models if i % 2 == 0 else models[::-1]:
                r = run_case(a.slide, m, stride, a.device, a.threads)
                runs[m].append(r)
                print(
                    f"  stride {stride} {m:8s} wall {r['wall_s']:.2f} s, region stage "
                    f"{r['region_stage_s']:.4f} s ({r['aggregator']}), peak RSS "
                    f"{r['peak_rss_mb']:.0f} MB, {r['idc_cells']} IDC cells",
                    flush=True,
                )
        med = {
            m: {
                k: statistics.median(r[k] for r in rs)
                for k in ("wall_s", "region_stage_s", "peak_rss_mb")
            }
            for m, rs in runs.items()
        }
        for m, v in med.items():
            print(
                f"stride {stride} {m}: median wall {v['wall_s']:.2f} s, region stage "
                f"{v['region_stage_s']:.4f} s = {100 * v['region_stage_s'] / v['wall_s']:.2f} % "
                f"of it, peak RSS {v['peak_rss_mb']:.0f} MB"
            )
        if len(models) == 2:
            a0, a1 = med[models[0]]["wall_s"], med[models[1]]["wall_s"]
            print(f"stride {stride}: {models[1]} / {models[0]} wall = {a1 / a0:.2f}x")
    print(f"load average after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
