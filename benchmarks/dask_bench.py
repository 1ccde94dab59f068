"""Dask figures for docs/cluster.md: slides per hour with 1 and 2 workers, the scheduler's
overhead per task, and the bytes a worker reads per slide.

    .venv/bin/python benchmarks/dask_bench.py                       # the 28 shared IDC mosaics
    .venv/bin/python benchmarks/dask_bench.py --slides A.tiff B.svs --http-slides X-40x.tiff

Cases (each prints a table; all figures go to ``--json`` too):

1. **throughput**: the same slides in this process (``process_slide`` one after another, model
   loaded before the clock, torch threads as ``idcmap run`` sets them), then on a
   ``LocalCluster`` of 1 and of 2 single-threaded worker processes. Workers are warmed first
   (torch imported, model loaded through the plugin), so the figure is the steady state of a
   long batch; cluster start-up is printed apart.
   **paired**: in this process and on one warm worker alternately, ``--repeats`` rounds over
   ``--paired-slides`` slides (what running inside a worker costs, on a machine whose load
   drifts).
2. **scheduler**: ``--noop`` no-op tasks submitted one per key and gathered with
   ``as_completed`` (what ``segment_slides`` does), on 2 workers: seconds per task.
3. **bytes**: the slides served by a local HTTP server with Range support (``tests/
   http_range.py``) and read by the workers through fsspec + tiffslide: body bytes and requests
   per slide against the file size, and slides per hour when reading over HTTP.
4. **blocks**: the ``bytes`` case in this process for several fsspec block sizes and caches
   (how ``idcmap.io.remote.BLOCK_BYTES`` / ``CACHE_TYPE`` were chosen).
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
    from idcmap.batch.cluster import ModelCache, model_ref, plugin_name

    t0 = time.perf_counter()
    client.register_plugin(ModelCache(), name=plugin_name())
    client.run(_warm, name=plugin_name(), ref=model_ref(None))
    return time.perf_counter() - t0


def batch(slides: list[str], out: Path, client: Any) -> tuple[float, list[Any]]:
    from idcmap.batch.cluster import segment_slides

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    got = list(segment_slides(slides, out, client=client, progress=False))
    return time.perf_counter() - t0, got


def throughput(slides: list[str], work: Path, workers: list[int]) -> list[dict[str, Any]]:
    rows = []
    # in-process: model loaded before the clock, like a warm worker
    from idcmap.batch.runner import check_output_dir, process_slide
    from idcmap.model.runtime import load_model

    model = load_model(None, device="cpu")
    from idcmap.params import Params

    out = work / "serial"
    shutil.rmtree(out, ignore_errors=True)
    check_output_dir(out)
    from idcmap.model.runtime import torch_threads
    from idcmap.pipeline.infer import threads_beside_readers

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
    case: str,
    slides: list[str],
    wall: float,
    got: list[Any],
    start: float | None = None,
    w: float | None = None,
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


def paired(slides: list[str], work: Path, repeats: int) -> list[dict[str, Any]]:
    """In this process and on one warm worker, alternately: the cost of running in a worker."""
    from idcmap.batch.runner import check_output_dir, process_slide
    from idcmap.model.runtime import load_model, torch_threads
    from idcmap.params import Params
    from idcmap.pipeline.infer import threads_beside_readers

    model = load_model(None, device="cpu")
    c, client, _ = cluster(1)
    rows = []
    try:
        warm(client)
        for r in range(repeats):
            out = work / f"paired-serial-{r}"
            check_output_dir(out)
            t0 = time.perf_counter()
            with torch_threads(threads_beside_readers(Params().workers)):
                got = [process_slide(s, out, model=model, params=Params()) for s in slides]
            rows.append(_row(f"in-process, round {r + 1}", slides, time.perf_counter() - t0, got))
            wall, got = batch(slides, work / f"paired-dask-{r}", client)
            rows.append(_row(f"1 warm worker, round {r + 1}", slides, wall, got))
    finally:
        client.close()
        c.close()
    return rows


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
                    out_b = sum(f.stat().st_size for f in Path(o.out_dir or work).glob("*"))
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
                            "out_MB": round(out_b / 1e6, 2) if o.out_dir else None,
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


def blocks(slides: list[str]) -> list[dict[str, Any]]:
    """Bytes and requests per slide over HTTP for fsspec block sizes and caches, in this
    process (one slide at a time, ``segment_slide``): how the setting of ``idcmap.io.remote``
    was chosen."""
    from http_range import serve

    import idcmap.io.remote as remote
    from idcmap.model.runtime import load_model
    from idcmap.pipeline.segment import segment_slide

    model = load_model(None, device="cpu")
    saved = remote.BLOCK_BYTES, remote.CACHE_TYPE
    rows = []
    try:
        for cache, block in (
            ("readahead", 5 << 20),  # fsspec's default
            ("readahead", 1 << 18),
            ("blockcache", 1 << 16),
            ("blockcache", 1 << 18),
            ("blockcache", 1 << 20),
            ("none", 1 << 16),
        ):
            remote.BLOCK_BYTES, remote.CACHE_TYPE = block, cache
            for s in slides:
                with serve(Path(s).parent) as srv:
                    t0 = time.perf_counter()
                    segment_slide(f"{srv.url}/{Path(s).name}", model=model, progress=False)
                    rows.append(
                        {
                            "cache": cache,
                            "block_KiB": block >> 10,
                            "slide": Path(s).name,
                            "file_MB": round(Path(s).stat().st_size / 1e6, 2),
                            "read_MB": round(srv.bytes_sent[Path(s).name] / 1e6, 2),
                            "requests": srv.requests[Path(s).name],
                            "wall_s": round(time.perf_counter() - t0, 2),
                        }
                    )
    finally:
        remote.BLOCK_BYTES, remote.CACHE_TYPE = saved
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
    ap.add_argument("--cases", default="throughput,paired,scheduler,bytes,blocks")
    ap.add_argument("--paired-slides", type=int, default=10, help="slides of the paired case")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the paired case")
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
        if "paired" in cases:
            rows = paired(slides[: a.paired_slides], work, a.repeats)
            print(f"\n## in-process vs one worker, alternately\n\n{table(rows)}")
            result["paired"] = rows
        if "scheduler" in cases:
            row = scheduler_overhead(a.noop)
            print(f"\n## scheduler overhead\n\n{table([row])}")
            result["scheduler"] = row
        if "bytes" in cases:
            rows = bytes_read(a.http_slides or slides, work, 2)
            print(f"\n## bytes read per slide (over HTTP, tiffslide)\n\n{table(rows)}")
            result["bytes"] = rows
        if "blocks" in cases:
            rows = blocks(a.http_slides or slides[:1])
            print(f"\n## fsspec block size and cache over HTTP (in this process)\n\n{table(rows)}")
            result["blocks"] = rows
    result["load_after"] = os.getloadavg()
    print(f"\nload {result['load_after'][0]:.2f} (1 min) at the end")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(result, indent=2))
    print(f"figures: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
