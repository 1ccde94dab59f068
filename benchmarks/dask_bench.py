"""Dask figures for docs/cluster.md: slides per hour with 1 and 2 workers, the scheduler's
overhead per task, and the bytes a worker reads per slide.

    .venv/bin/python benchmarks/dask_bench.py                       # the 28 shared IDC mosaics
    .venv/bin/python benchmarks/dask_bench.py --slides A.tiff B.svs --http-slides X-40x.tiff

Cases (each prints a table; all figures go to ``--json`` too):

1. **throughput**: the same slides in this process (``segment_slides(client=None)``), then on a
   ``LocalCluster`` of 1 and of 2 single-threaded worker processes. Workers are warmed first
   (torch imported, model loaded through the plugin), so the figure is the steady state of a
   long batch; cluster start-up is printed apart.
2. **scheduler**: ``--noop`` no-op tasks submitted one per key and gathered with
   ``as_completed`` (what ``segment_slides`` does), on 2 workers: seconds per task.
3. **bytes**: the slides served by a local HTTP server with Range support (``tests/
   http_range.py``) and read by the workers through fsspec + tiffslide: body bytes and requests
   per slide against the file size, and slides per hour when reading over HTTP.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # http_range.py

SHARED = ROOT.parent / "shared" / "data" / "idc" / "slides"


def _noop(i: int) -> int:
    return i


def _warm(dask_worker: Any, name: str, ref: Any) -> int:
    """Import torch and load the model in the worker's cache, as its first slide would."""
    return int(dask_worker.plugins[name].get(ref).config.patch_px)


def cluster(n: int) -> tuple[Any, Any, float]:
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    c = LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        worker_dashboard_address=None,
    )
    client = Client(c)
    return c, client, time.perf_counter() - t0


def warm(client: Any) -> float:
    from idcmap.distributed import ModelCache, model_ref, plugin_name

    t0 = time.perf_counter()
    client.register_plugin(ModelCache(), name=plugin_name())
    client.run(_warm, name=plugin_name(), ref=model_ref(None))
    return time.perf_counter() - t0


def batch(slides: list[str], out: Path, client: Any) -> tuple[float, list[Any]]:
    from idcmap.distributed import segment_slides

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    got = list(segment_slides(slides, out, client=client, progress=False))
    return time.perf_counter() - t0, got


def throughput(slides: list[str], work: Path, workers: list[int]) -> list[dict[str, Any]]:
    rows = []
    # in-process: model loaded before the clock, like a warm worker
    from idcmap.model import load_model
    from idcmap.runner import check_output_dir, process_slide

    model = load_model(None, device="cpu")
    from idcmap.api import Params

    out = work / "serial"
    shutil.rmtree(out, ignore_errors=True)
    check_output_dir(out)
    from idcmap.infer import threads_beside_readers
    from idcmap.model import torch_threads

    t0 = time.perf_counter()
    with torch_threads(threads_beside_readers(Params().workers)):  # as `idcmap run` does
        got = [process_slide(s, out, model=model, params=Params(device="cpu")) for s in slides]
    wall = time.perf_counter() - t0
    rows.append(_row("in-process (client=None)", slides, wall, got, None, None))
    for n in workers:
        c, client, start = cluster(n)
        try:
            w = warm(client)
            wall, got = batch(slides, work / f"dask{n}", client)
            rows.append(_row(f"LocalCluster {n} worker(s)", slides, wall, got, start, w))
        finally:
            client.close()
            c.close()
    return rows


def _row(
    case: str, slides: list[str], wall: float, got: list[Any], start: float | None, w: float | None
) -> dict[str, Any]:
    done = sum(o.status == "done" for o in got)
    busy = sum(o.seconds for o in got)
    return {
        "case": case,
        "slides": len(slides),
        "done": done,
        "wall_s": round(wall, 2),
        "slides_per_hour": round(3600 * len(slides) / wall),
        "slide_s_mean": round(busy / max(1, done), 3),
        "cluster_start_s": None if start is None else round(start, 2),
        "warm_s": None if w is None else round(w, 2),
    }


def scheduler_overhead(n_tasks: int) -> dict[str, Any]:
    from distributed import as_completed

    c, client, _ = cluster(2)
    try:
        client.submit(_noop, -1, pure=False).result()  # connections up
        t0 = time.perf_counter()
        one = [client.submit(_noop, i, pure=False).result() for i in range(50)]
        latency = (time.perf_counter() - t0) / len(one)
        t0 = time.perf_counter()
        futs = [client.submit(_noop, i, key=f"noop-{i}", pure=False) for i in range(n_tasks)]
        submitted = time.perf_counter() - t0
        for f in as_completed(futs):
            f.result()
            f.release()
        wall = time.perf_counter() - t0
    finally:
        client.close()
        c.close()
    return {
        "tasks": n_tasks,
        "workers": 2,
        "submit_s": round(submitted, 3),
        "wall_s": round(wall, 3),
        "per_task_ms": round(1000 * wall / n_tasks, 3),
        "tasks_per_s": round(n_tasks / wall),
        "round_trip_ms": round(1000 * latency, 2),
    }


def bytes_read(slides: list[str], work: Path, n_workers: int) -> list[dict[str, Any]]:
    """Every slide once over HTTP, each in its own folder (one server per folder of slides)."""
    from http_range import serve

    rows = []
    by_dir: dict[Path, list[str]] = {}
    for s in slides:
        by_dir.setdefault(Path(s).parent, []).append(s)
    c, client, _ = cluster(n_workers)
    try:
        warm(client)
        for root, group in by_dir.items():
            with serve(root) as srv:
                urls = [f"{srv.url}/{Path(s).name}" for s in group]
                wall, got = batch(urls, work / "http", client)
                for s, o in zip(group, sorted(got, key=lambda o: urls.index(o.path)), strict=True):
                    name = Path(s).name
                    rows.append(
                        {
                            "slide": name,
                            "status": o.status,
                            "file_MB": round(Path(s).stat().st_size / 1e6, 2),
                            "read_MB": round(srv.bytes_sent[name] / 1e6, 2),
                            "read_fraction": round(
                                srv.bytes_sent[name] / Path(s).stat().st_size, 3
                            ),
                            "requests": srv.requests[name],
                            "slide_s": round(o.seconds, 2),
                            "level_read": (o.summary or {}).get("slide", {}).get("level_read"),
                        }
                    )
                rows.append(
                    {
                        "slide": f"[{len(group)} slides over HTTP, {n_workers} workers]",
                        "wall_s": round(wall, 2),
                        "slides_per_hour": round(3600 * len(group) / wall),
                    }
                )
    finally:
        client.close()
        c.close()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(k) is None else str(r[k]) for k in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slides", nargs="*", help="slides (default: the shared IDC mosaics)")
    ap.add_argument("--workers", default="1,2", help="worker counts (default: 1,2)")
    ap.add_argument("--noop", type=int, default=2000, help="no-op tasks (default: 2000)")
    ap.add_argument("--http-slides", nargs="*", default=None, help="slides for the bytes case")
    ap.add_argument("--cases", default="throughput,scheduler,bytes")
    ap.add_argument("--json", type=Path, default=HERE / "_work" / "dask_bench.json")
    a = ap.parse_args(argv)
    slides = a.slides or sorted(str(p) for p in SHARED.glob("*.tiff"))
    if not slides:
        print(f"no slides: pass --slides or put ../shared beside the checkout ({SHARED})")
        return 2
    cases = a.cases.split(",")
    load = os.getloadavg()
    print(
        f"machine: {platform.processor() or platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores, load {load[0]:.2f} (1 min) at start; "
        f"python {platform.python_version()}"
    )
    result: dict[str, Any] = {"slides": slides, "load_before": load}
    with tempfile.TemporaryDirectory(prefix="idcmap-dask-bench-") as tmp:
        work = Path(tmp)
        if "throughput" in cases:
            rows = throughput(slides, work, [int(x) for x in a.workers.split(",")])
            print(f"\n## throughput ({len(slides)} slides)\n\n{table(rows)}")
            result["throughput"] = rows
        if "scheduler" in cases:
            row = scheduler_overhead(a.noop)
            print(f"\n## scheduler overhead\n\n{table([row])}")
            result["scheduler"] = row
        if "bytes" in cases:
            rows = bytes_read(a.http_slides or slides, work, 2)
            print(f"\n## bytes read per slide (over HTTP, tiffslide)\n\n{table(rows)}")
            result["bytes"] = rows
    result["load_after"] = os.getloadavg()
    print(f"\nload {result['load_after'][0]:.2f} (1 min) at the end")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(result, indent=2))
    print(f"figures: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
