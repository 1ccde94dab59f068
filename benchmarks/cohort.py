"""A cohort in one process: serial vs streamed (each slide saved in the background while the
next one is read and run through the model), and the decode paths; wall time, slides/h and
peak RSS, alternating rounds, medians.

    python benchmarks/cohort.py                        # 10 shared mosaics + the 40x pyramids
    python benchmarks/cohort.py --cohort mosaics:10 --rounds 5 --repeat 2
    python benchmarks/cohort.py --cohort 'pyramids:/data/*-40x.tiff' --device cuda \\
        --modes stream,dask --decodes pillow,torch                # what benchmarks/gpu.sh runs

Each run is a fresh interpreter (its peak RSS its own, from ``os.wait4``) that loads the model
and warms it before the clock starts, then runs :func:`idcmap.batch.runner.run_slides` over the
cohort into a new folder (``serial``: ``RunOptions(stream=False)``; ``stream``: the default)
with torch threads as ``idcmap run`` sets them, and records its RSS after each slide (flat
with cohort length: ``--repeat N`` runs the cohort N times over, as symlinks with other names).
``dask``: ``idcmap.batch.cluster.segment_slides`` on ``local_cluster()`` (one worker per GPU,
else one single-threaded worker per core), workers warmed first; RSS is the client's only.
Modes (and decodes) alternate within each round; the first round's outputs of each mode are
compared file by file (``benchmarks/compare_outputs.py`` rules) and must not differ.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "_work"
SHARED = REPO.parent / "shared" / "data" / "idc" / "slides"
LAB_READ = REPO.parent / "lab-read" / "slides"
#: the mosaics of a default cohort: the TEST and VALID ones first
MOSAICS = ["8865", "8913", "8955", "8984", "9035", "14082", "8917", "9037", "9076", "8863"]


def _vm(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------------------------
# the child: one run of the cohort
# --------------------------------------------------------------------------------------------


def child(a: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from idcmap.batch.runner import RunOptions, run_slides
    from idcmap.model.runtime import load_model
    from idcmap.params import Params
    from idcmap.pipeline.infer import threads_beside_readers

    slides = Path(a.list).read_text().split("\n")
    slides = [s for s in slides if s]
    params = Params(workers=a.workers, device=a.device, decode=a.decode)
    if a.mode == "dask":
        return _child_dask(a, slides, params)
    if a.device == "cpu" or a.device == "auto":  # as `idcmap run` sets them
        params = replace(params, torch_threads=threads_beside_readers(params.workers))
    t0 = time.perf_counter()
    model = load_model(a.model, device=a.device)
    model.predict(np.full((2, model.config.patch_px, model.config.patch_px, 3), 200, np.uint8))
    from idcmap.io.jpegtorch import tile_decoder

    tile_decoder(a.decode, model.device)  # torchvision's import (~2 s), once per process
    load_s = time.perf_counter() - t0
    rss: list[float] = []
    statuses: list[str] = []
    t0 = time.perf_counter()
    options = RunOptions(stream=a.mode == "stream")
    export_s = 0.0
    for o in run_slides(slides, a.out, model=model, params=params, options=options):
        statuses.append(o.status)
        rss.append(round(_vm("VmRSS")))
        if o.summary is not None:
            export_s += o.summary.timings_s.get("export", 0.0)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "export_s": export_s,  # the slides' saves (all but summary.json): what streaming hides
        "load_s": load_s,
        "slides": len(slides),
        "done": statuses.count("done"),
        "rss_after_each_mb": rss,
        "vm_hwm_mb": _vm("VmHWM"),
    }


def _child_dask(a: argparse.Namespace, slides: list[str], params: Any) -> dict[str, Any]:
    from distributed import Client

    from idcmap.batch.cluster import (
        ModelCache,
        local_cluster,
        model_ref,
        plugin_name,
        segment_slides,
    )

    t0 = time.perf_counter()
    cluster = local_cluster(dashboard_address=None)
    client = Client(cluster)
    try:
        n = len(client.scheduler_info().get("workers", {}))
        client.register_plugin(ModelCache(), name=plugin_name())
        client.run(_warm, name=plugin_name(), ref=model_ref(a.model, a.device))
        start_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = list(
            segment_slides(
                slides, a.out, client=client, model=a.model, params=params, progress=False
            )
        )
        wall = time.perf_counter() - t0
    finally:
        client.close()
        cluster.close()
    return {
        "wall_s": wall,
        "load_s": start_s,
        "slides": len(slides),
        "done": sum(o.status == "done" for o in got),
        "workers": n,
        "rss_after_each_mb": [],
        "vm_hwm_mb": _vm("VmHWM"),
    }


def _warm(dask_worker: Any, name: str, ref: Any) -> int:
    return int(dask_worker.plugins[name].get(ref).config.patch_px)


# --------------------------------------------------------------------------------------------
# the parent
# --------------------------------------------------------------------------------------------


def cohorts(specs: list[str]) -> dict[str, list[Path]]:
    """``mosaics:N`` (the first N of :data:`MOSAICS`), ``pyramids`` (the 40x pyramids in
    ../lab-read/slides), or ``NAME:GLOB``; absent ones are left out with a note."""
    out: dict[str, list[Path]] = {}
    for spec in specs:
        name, _, arg = spec.partition(":")
        if name == "mosaics":
            n = int(arg or 10)
            files = [SHARED / f"{i}.tiff" for i in MOSAICS[:n]]
            files = [f for f in files if f.is_file()]
        elif name == "pyramids" and not arg:
            files = sorted(Path(p) for p in glob.glob(str(LAB_READ / "*-40x.tiff")))
        else:
            files = sorted(Path(p) for p in glob.glob(os.path.expanduser(arg)))
        if not files:
            print(f"# cohort {spec}: no slides, left out", flush=True)
            continue
        out[name] = files
    return out


def run_child(a: argparse.Namespace, mode: str, decode: str, slides: list[str], out: Path) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=WORK, delete=False) as f:
        f.write("\n".join(slides))
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--mode",
        mode,
        "--decode",
        decode,
        "--list",
        f.name,
        "--out",
        str(out),
        "--device",
        a.device,
        "--workers",
        str(a.workers),
    ] + (["--model", a.model] if a.model else [])
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    assert p.stdout is not None
    text = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    os.unlink(f.name)
    if status != 0:
        raise SystemExit(f"child {mode}/{decode} failed ({status}): {text[-2000:]}")
    res = json.loads(text.strip().splitlines()[-1])
    res["peak_rss_mb"] = ru.ru_maxrss / 1024
    return res


def cohort_list(files: list[Path], repeat: int, folder: Path) -> list[str]:
    """The cohort, ``repeat`` times over (the copies are symlinks with other names)."""
    out = [str(f) for f in files]
    for r in range(1, repeat):
        d = folder / f"copy{r}"
        d.mkdir(parents=True, exist_ok=True)
        for f in files:
            link = d / f"r{r}-{f.name}"
            if not link.exists():
                link.symlink_to(f)
            out.append(str(link))
    return out


def mask_agreement(a: Path, b: Path) -> tuple[float, float] | None:
    """Cells where the two runs' ``mask.png`` agree, over all slides, and the lowest slide's
    fraction (the decodes' outputs differ in pixels; how much do their masks?)."""
    import numpy as np
    from PIL import Image

    same = total = 0
    worst = 1.0
    for ma in sorted(a.glob("*/mask.png")):
        mb = b / ma.parent.name / "mask.png"
        if not mb.exists():
            return None
        x, y = np.asarray(Image.open(ma)), np.asarray(Image.open(mb))
        if x.shape != y.shape:
            return None
        eq = int((x == y).sum())
        same, total = same + eq, total + x.size
        worst = min(worst, eq / x.size)
    return (same / total, worst) if total else None


def compare(a: Path, b: Path) -> list[str]:
    """Files of ``a`` that differ in ``b`` (compare_outputs.py's rules)."""
    sys.path.insert(0, str(HERE))
    from compare_outputs import same

    bad = []
    for fa in sorted(a.rglob("*")):
        if fa.is_dir() or fa.name == "cohort.csv":
            continue
        fb = b / fa.relative_to(a)
        if not fb.exists() or not same(fa, fb, False):
            bad.append(str(fa.relative_to(a)))
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", action="append", help="mosaics:N, pyramids, or NAME:GLOB")
    ap.add_argument("--modes", default="serial,stream", help="serial, stream, dask")
    ap.add_argument("--decodes", default="pillow", help="pillow, torch (comma list)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1, help="the cohort N times over")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the output folders")
    # the child's own arguments
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--decode", default="pillow", help=argparse.SUPPRESS)
    ap.add_argument("--list", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a)))
        return 0

    WORK.mkdir(parents=True, exist_ok=True)
    modes = a.modes.split(",")
    decodes = a.decodes.split(",")
    cases = [(m, d) for d in decodes for m in modes]
    found = cohorts(a.cohort or ["mosaics:10", "pyramids"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, load {load:.2f}; device {a.device}, workers {a.workers}, "
        f"{a.rounds} rounds, cohort x{a.repeat}",
        flush=True,
    )
    results: dict[str, Any] = {"args": vars(a), "cohorts": {}}
    tmp = Path(tempfile.mkdtemp(prefix="cohort-", dir=WORK))
    try:
        for name, files in found.items():
            slides = cohort_list(files, a.repeat, tmp / name)
            runs: dict[str, list[dict]] = {f"{m}/{d}": [] for m, d in cases}
            for r in range(a.rounds):
                order = cases if r % 2 == 0 else cases[::-1]  # alternate who goes first
                for m, d in order:
                    out = tmp / name / f"out-{m}-{d}-{r}"
                    res = run_child(a, m, d, slides, out)
                    runs[f"{m}/{d}"].append(res)
                    print(
                        f"{name} round {r + 1} {m}/{d}: {res['wall_s']:.2f} s, "
                        f"{res['done']}/{res['slides']} done, peak RSS {res['peak_rss_mb']:.0f} MB",
                        flush=True,
                    )
            first = f"{cases[0][0]}/{cases[0][1]}"
            ref = tmp / name / f"out-{first.replace('/', '-')}-0"
            diffs, masks = {}, {}
            for k in runs:
                if k != first:
                    other = tmp / name / f"out-{k.replace('/', '-')}-0"
                    diffs[k] = compare(ref, other)
                    masks[k] = mask_agreement(ref, other) if diffs[k] else None
            results["cohorts"][name] = {
                "slides": slides,
                "runs": runs,
                "differ": diffs,
                "mask_agreement": masks,
            }
            print(table(name, len(slides), runs, diffs, masks), flush=True)
    finally:
        if not a.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


def table(
    name: str,
    n: int,
    runs: dict[str, list[dict]],
    diffs: dict[str, list[str]],
    masks: dict[str, tuple[float, float] | None],
) -> str:
    lines = [
        f"\n{name}: {n} slides",
        "| mode/decode | wall s (median) | rounds | slides/h | peak RSS MB "
        "| RSS after slide 1 → last | saves s (sum) | vs first row |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = None
    for k, rs in runs.items():
        med = statistics.median(r["wall_s"] for r in rs)
        base = base or med
        rss = [r["rss_after_each_mb"] for r in rs if r["rss_after_each_mb"]]
        flat = f"{rss[0][0]:.0f} → {rss[0][-1]:.0f}" if rss else "–"
        walls = ", ".join(f"{r['wall_s']:.2f}" for r in rs)
        lines.append(
            f"| {k} | **{med:.2f}** | {walls} | "
            f"{3600 * n / med:,.0f} | {statistics.median(r['peak_rss_mb'] for r in rs):.0f} | "
            f"{flat} | {statistics.median(r.get('export_s', 0.0) for r in rs):.2f} | "
            f"{base / med:.2f}x |"
        )
    for k, bad in diffs.items():
        line = f"outputs {k} vs the first row: {len(bad)} files differ {bad[:4]}"
        m = masks.get(k)
        if m is not None:
            line += f"; mask cells agree {100 * m[0]:.3f} % (lowest slide {100 * m[1]:.3f} %)"
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
