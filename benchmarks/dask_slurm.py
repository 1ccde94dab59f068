"""The SLURM recipe of docs/cluster.md, run for real on a single-node SLURM.

    sudo benchmarks/slurm_setup.sh                       # slurmctld + slurmd + munged on this host
    .venv/bin/python benchmarks/dask_slurm.py            # 2 worker jobs, the shared IDC mosaics

A dask-jobqueue ``SLURMCluster`` submits each Dask worker as one batch job (``sbatch``); workers
retire themselves before the job's walltime (``--lifetime``, staggered) and ``adapt`` submits new
jobs while slides are left. The script prints the job script, the time from ``scale`` to
running workers (queueing + job start + worker start), each worker's ``SLURM_JOB_ID``, slides
per hour, and the jobs left in ``squeue`` once ``adapt`` has scaled to zero.

On a GPU cluster the same recipe adds ``--gres=gpu:1`` to the job and ``--resources GPU=1`` to
the worker (``--gpus``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data" / "idc" / "slides"


def _wait_squeue(ok: Any, timeout_s: float) -> str:
    """Poll ``squeue`` until ``ok(output)``; returns the last output."""
    deadline = time.perf_counter() + timeout_s
    while True:
        q = subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip()
        if ok(q) or time.perf_counter() > deadline:
            return q
        time.sleep(0.5)


def slurm_cluster(args: argparse.Namespace, logs: Path) -> Any:
    """The recipe (docs/cluster.md): one worker process per job, one task slot per worker."""
    from dask_jobqueue import SLURMCluster

    worker_args = ["--lifetime", args.lifetime, "--lifetime-stagger", "2m"]
    job_extra: list[str] = []
    if args.gpus:
        worker_args += ["--resources", "GPU=1"]
        job_extra.append("--gres=gpu:1")
    return SLURMCluster(
        queue=args.partition,
        cores=args.cores,  # SLURM CPUs per job (--cpus-per-task); torch threads follow nthreads
        processes=1,  # one worker process per job ...
        job_cpu=args.cores,
        memory=args.memory,
        walltime=args.walltime,
        python=sys.executable,
        worker_extra_args=[*worker_args, "--nthreads", "1"],  # ... running one slide at a time
        job_extra_directives=job_extra,
        log_directory=str(logs),
        local_directory=tempfile.gettempdir(),
        scheduler_options={"host": args.host, "dashboard_address": None},
        # the worker jobs must reach the scheduler; on a real cluster: the login node's address
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slides", nargs="*", help="default: the shared IDC mosaics")
    ap.add_argument("--jobs", type=int, default=2, help="worker jobs (default: 2)")
    ap.add_argument("--cores", type=int, default=1, help="CPUs per job (default: 1)")
    ap.add_argument("--memory", default="4GB")
    ap.add_argument("--walltime", default="00:30:00")
    ap.add_argument("--lifetime", default="25m", help="worker --lifetime (< walltime)")
    ap.add_argument("--partition", default="debug")
    ap.add_argument("--host", default="127.0.0.1", help="scheduler interface address")
    ap.add_argument("--gpus", action="store_true", help="--gres=gpu:1 and --resources GPU=1")
    ap.add_argument("--json", type=Path, default=HERE / "_work" / "dask_slurm.json")
    a = ap.parse_args(argv)
    if shutil.which("sbatch") is None:
        print("no sbatch: install and start SLURM first (sudo benchmarks/slurm_setup.sh)")
        return 2
    sinfo = subprocess.run(["sinfo", "-h", "-o", "%P %a %D %T %c"], capture_output=True, text=True)
    if sinfo.returncode != 0:
        print(f"SLURM is not answering: {sinfo.stderr.strip()}; run benchmarks/slurm_setup.sh")
        return 2
    print(f"sinfo: {sinfo.stdout.strip()}")
    slides = a.slides or sorted(str(p) for p in SHARED.glob("*.tiff"))

    from distributed import Client

    from idcmap.batch.cluster import segment_slides

    result: dict[str, Any] = {"slides": len(slides), "jobs": a.jobs, "cores_per_job": a.cores}
    with tempfile.TemporaryDirectory(prefix="idcmap-slurm-") as tmp:
        work = Path(tmp)
        cluster = slurm_cluster(a, work / "logs")
        print("\n# job script (dask-jobqueue)\n" + cluster.job_script())
        client = Client(cluster)
        try:
            t0 = time.perf_counter()
            cluster.scale(jobs=a.jobs)
            client.wait_for_workers(a.jobs, timeout=300)
            start_s = time.perf_counter() - t0
            jobs = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
            print(f"\n{a.jobs} workers running {start_s:.1f} s after scale(); SLURM jobs {jobs}")
            queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout
            print(f"squeue:\n{queue.rstrip()}")
            t1 = time.perf_counter()
            got = list(segment_slides(slides, work / "out", client=client, progress=False))
            wall = time.perf_counter() - t1
            done = sum(o.status == "done" for o in got)
            failed = [o for o in got if o.status == "failed"]
            print(
                f"\n{done}/{len(slides)} slides done in {wall:.1f} s on {a.jobs} SLURM workers: "
                f"{3600 * len(slides) / wall:.0f} slides/hour (each worker's first slide loads "
                f"the model); {len(failed)} failed"
            )
            for o in failed:
                print(f"  failed {o.path}: {o.message}")
            # adapt: nothing to do → the jobs are cancelled ...
            cluster.adapt(minimum_jobs=0, maximum_jobs=a.jobs, interval="1s", wait_count=3)
            t2 = time.perf_counter()
            left = _wait_squeue(lambda q: not q, 120)
            down_s = time.perf_counter() - t2
            print(f"adapt: squeue empty {down_s:.1f} s after the batch ({left or 'no jobs'})")
            # ... and new jobs come when slides wait (a second batch, overwrite=True)
            t3 = time.perf_counter()
            again = list(
                segment_slides(slides, work / "out", client=client, progress=False, overwrite=True)
            )
            wall2 = time.perf_counter() - t3
            jobs2 = sorted(set(client.run(lambda: os.environ.get("SLURM_JOB_ID")).values()))
            done2 = sum(o.status == "done" for o in again)
            print(
                f"adapt from 0 jobs: {done2}/{len(slides)} slides done in {wall2:.1f} s "
                f"(job start and model load included) on SLURM jobs {jobs2}"
            )
            _wait_squeue(lambda q: not q, 120)
            result.update(
                {
                    "start_s": round(start_s, 1),
                    "slurm_jobs": sorted(set(jobs.values())),
                    "wall_s": round(wall, 1),
                    "done": done,
                    "failed": len(failed) + len(again) - done2,
                    "slides_per_hour": round(3600 * len(slides) / wall),
                    "adapt_down_s": round(down_s, 1),
                    "adapt_batch_wall_s": round(wall2, 1),
                    "adapt_jobs": jobs2,
                }
            )
        finally:
            client.close()
            cluster.close()
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(result, indent=2))
    print(f"figures: {a.json}")
    return 0 if result.get("failed", 1) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
