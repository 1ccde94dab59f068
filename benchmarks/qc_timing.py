"""Time the QC stage against the pipeline on the test mosaics (CPU), interleaved runs.

    PYTHONPATH=. python benchmarks/qc_timing.py --repeats 3
    PYTHONPATH=. python benchmarks/qc_timing.py --repeats 15 --save --paths 8975-40x.tiff
    PYTHONPATH=. python benchmarks/qc_timing.py --repeats 11 --save --cli-threads --paths ...
    PYTHONPATH=. python benchmarks/qc_timing.py --process --cohort --repeats 5 --paths COHORT/*.tiff

For each mosaic: median end-to-end ``segment_slide`` time with ``qc="none"`` (0.2.0) and
``qc="all"`` (QC on the thumbnail + sharpness in the tile pass + blur cells), and the QC
stage's own wall time from ``summary.timings_s`` (``qc`` + ``qc_blur`` + ``qc_fill``; the tile
readers decode beside the stage, so on few cores this is longer than its CPU time). With
``--save`` each run also writes every output (``SlideResult.save`` into a temporary folder),
which is what issue 17's "end to end" means, and the two modes alternate which runs first; the
``paired`` column is the median of the per-repeat ratios all / none. ``--cli-threads`` gives
torch the threads ``idcmap run`` gives it (the cores beside the readers: 1 of 2 here) instead
of torch's own count; 0.2.0's path is much faster so, and QC's share larger (docs/qc.md).
``--process`` times what a user who types the command waits for: each run is a whole
``python -m idcmap run SLIDE --out TMP --qc MODE --overwrite -q`` process (start-up, imports,
the model's load, the slide, every output), the two modes alternated; with ``--cohort``, one
such run over all the slides (``--paths`` in that order). ``--device`` runs the
model there (default ``cpu``; ``benchmarks/gpu.sh`` passes ``cuda``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from idcmap.model.runtime import load_model  # noqa: E402
from idcmap.params import Params  # noqa: E402
from idcmap.pipeline.infer import threads_beside_readers  # noqa: E402
from idcmap.pipeline.segment import segment_slide  # noqa: E402

SLIDES = ROOT.parent / "shared" / "data" / "idc" / "slides"
SPLIT = ROOT / "idcmap" / "model" / "weights" / "idc-v1.split.json"


def _run(
    path: Path, model: object, mode: str, save: bool, threads: int | None = None
) -> tuple[float, dict[str, float]]:
    """Wall seconds of one run (``segment_slide``'s own total, or with ``save`` the whole
    segment + save) and the run's ``timings_s``; ``threads``: ``Params.torch_threads``."""
    t = time.perf_counter()
    params = Params(qc=mode, torch_threads=threads)
    r = segment_slide(path, model=model, progress=False, params=params)
    if save:
        with tempfile.TemporaryDirectory() as out:
            r.save(out)
    ts = r.summary["timings_s"]
    return (time.perf_counter() - t if save else ts["total"]), ts


def _run_process(path: Path | list[Path], mode: str, out: Path, device: str = "cpu") -> float:
    """Wall seconds of one whole ``idcmap run`` process on ``path`` (or a list of slides: one
    run over them all) with ``--qc mode``."""
    slides = [str(q) for q in (path if isinstance(path, list) else [path])]
    cmd = [sys.executable, "-m", "idcmap", "run", *slides, "--out", str(out), "--qc", mode]
    t = time.perf_counter()
    subprocess.run(
        [*cmd, "--device", device, "--overwrite", "-q"],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - t


def _slide_paths(a: argparse.Namespace) -> list[Path]:
    """``--paths``, else the ``--slides`` mosaics, else the test split's mosaics that are here."""
    test = json.loads(SPLIT.read_text())["test"]
    ids = a.slides or [s for s in test if (SLIDES / f"{s}.tiff").is_file()]
    return a.paths or [SLIDES / f"{sid}.tiff" for sid in ids]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slides", nargs="*")
    ap.add_argument("--paths", nargs="*", type=Path, help="slide files instead of mosaics")
    ap.add_argument("--save", action="store_true", help="time segment + save, order alternated")
    ap.add_argument(
        "--cli-threads", action="store_true", help="torch's threads as `idcmap run` sets them"
    )
    ap.add_argument("--process", action="store_true", help="whole `idcmap run` processes")
    ap.add_argument(
        "--cohort", action="store_true", help="with --process: one run over all the slides"
    )
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    a = ap.parse_args()
    if a.process:
        _processes(a)
        return
    threads = threads_beside_readers(Params().workers) if a.cli_threads else None
    model = load_model(None, device=a.device)
    paths = _slide_paths(a)
    what = "end to end (segment + save)" if a.save else "total"
    # the stage's wall time: the tile readers decode beside it (2 cores: they slow each other)
    print(f"| mosaic | 0.2.0 {what} s | QC {what} s | Δ % | paired Δ % | QC stage wall s | % |")
    print("|---|---|---|---|---|---|---|")
    tot: dict[str, list[float]] = {"none": [], "all": [], "stage": []}
    for path in paths:
        sid = path.stem
        t: dict[str, list[float]] = {"none": [], "all": [], "stage": []}
        for mode in ("none", "all"):  # warm
            segment_slide(
                path, model=model, progress=False, params=Params(qc=mode, torch_threads=threads)
            )
        for i in range(a.repeats):
            order = ("none", "all") if not a.save or i % 2 == 0 else ("all", "none")
            for mode in order:
                wall, ts = _run(path, model, mode, a.save, threads)
                t[mode].append(wall)
                if mode == "all":
                    stage = ts.get("qc", 0.0) + ts.get("qc_blur", 0.0) + ts.get("qc_fill", 0.0)
                    t["stage"].append(stage)
        m = {k: statistics.median(v) for k, v in t.items()}
        paired = statistics.median(y / x for x, y in zip(t["none"], t["all"], strict=True))
        for k in tot:
            tot[k].append(m[k])
        print(
            f"| {sid} | {m['none']:.3f} | {m['all']:.3f} | {100 * (m['all'] / m['none'] - 1):+.1f}"
            f" | {100 * (paired - 1):+.1f} | {m['stage']:.3f} "
            f"| {100 * m['stage'] / m['none']:.1f} |",
            flush=True,
        )
    s = {k: sum(v) for k, v in tot.items()}
    print(
        f"| all | {s['none']:.2f} | {s['all']:.2f} | {100 * (s['all'] / s['none'] - 1):+.1f} | | "
        f"{s['stage']:.3f} | {100 * s['stage'] / s['none']:.1f} |"
    )


def _processes(a: argparse.Namespace) -> None:
    """``--process``: median wall time of whole ``idcmap run`` processes per slide, or with
    ``--cohort`` of one run over all the slides."""
    paths = _slide_paths(a)
    print("| slide | `idcmap run --qc none` s | `--qc all` s | Δ % | paired Δ % |")
    print("|---|---|---|---|---|")
    runs: list[Path | list[Path]] = [list(paths)] if a.cohort else list(paths)
    with tempfile.TemporaryDirectory() as tmp:
        for path in runs:
            t: dict[str, list[float]] = {"none": [], "all": []}
            for mode in ("none", "all"):  # warm the file cache
                _run_process(path, mode, Path(tmp) / mode, a.device)
            for i in range(a.repeats):
                for mode in ("none", "all") if i % 2 == 0 else ("all", "none"):
                    t[mode].append(_run_process(path, mode, Path(tmp) / mode, a.device))
            m = {k: statistics.median(v) for k, v in t.items()}
            paired = statistics.median(y / x for x, y in zip(t["none"], t["all"], strict=True))
            name = f"{len(path)} slides" if isinstance(path, list) else path.stem
            print(
                f"| {name} | {m['none']:.2f} | {m['all']:.2f} "
                f"| {100 * (m['all'] / m['none'] - 1):+.1f} | {100 * (paired - 1):+.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
