"""Run WSInfer on a benchmark slide with idcmap's model, exported to TorchScript.

WSInfer lives in its own virtual environment (``benchmarks/_work/wsinfer-venv``, made by
``--setup``: ``pip install wsinfer`` plus the pins it needs to start here). The model is
exported as a ``torch.jit.trace`` of a wrapper that returns IDCNet's two logits (WSInfer applies
the softmax itself) and a WSInfer model config: 4.0 µm/px, 50-px patches, classes
``notidc``/``idc``, transform ``Resize(50)`` + ``ToTensor`` (inputs in [0, 1]: IDCNet normalises
inside). ``wsinfer run`` then segments the tissue, cuts 200-µm patches at level 0 (one
``read_region`` per patch, resized to 50 px) and runs the model — the peer way, end to end.

    python benchmarks/wsinfer_compare.py --setup
    python benchmarks/wsinfer_compare.py benchmarks/_data/8975-40x.tiff
    python benchmarks/wsinfer_compare.py --cohort --rounds 3 DIR/*-40x.tiff   # whole processes

``--cohort`` times ``idcmap run SLIDES --out O`` and ``wsinfer run -i DIR`` (the same slides,
linked into one folder), each a whole process, alternating, and prints the ratio of the medians.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
VENV = WORK / "wsinfer-venv"
# wsinfer 0.6.1 imports zarr.storage.KVStore (zarr 2) and asks the Hugging Face hub for its
# model-zoo registry at import time; tiffslide < 2.5 still works with zarr 2.
PINS = ["wsinfer", "zarr<3", "tiffslide<2.5", "openslide-python", "openslide-bin"]


def setup() -> None:
    if not (VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", *PINS], check=True)


def export(model_json: Path, out: Path) -> tuple[Path, Path]:
    """TorchScript (logits) + WSInfer config of an idcmap model file."""
    import torch

    from idcmap.model.runtime import load_model

    model = load_model(model_json, device="cpu")
    cfg = model.config

    class Logits(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    net = Logits(model.net.to(memory_format=torch.contiguous_format)).eval()
    out.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        ts = torch.jit.trace(net, torch.rand(2, 3, cfg.patch_px, cfg.patch_px))
    pt = out / "idcmap-torchscript.pt"
    ts.save(str(pt))
    conf = {
        "spec_version": "1.0",
        "architecture": "idcmap-idcnet-v1",
        "num_classes": 2,
        "class_names": ["notidc", "idc"],
        "patch_size_pixels": cfg.patch_px,
        "spacing_um_px": cfg.mpp,
        "transform": [
            {"name": "Resize", "arguments": {"size": cfg.patch_px}},
            {"name": "ToTensor"},
        ],
    }
    cj = out / "wsinfer-config.json"
    cj.write_text(json.dumps(conf, indent=1))
    return pt, cj


def run(
    model_json: Path, slide: Path | list[Path], *, batch_size: int = 32, num_workers: int = 2
) -> dict[str, Any]:
    """Time ``wsinfer run`` on one slide or a cohort (fresh results folder). Returns the figures."""
    exe = VENV / "bin" / "wsinfer"
    slides = slide if isinstance(slide, list) else [slide]
    res: dict[str, Any] = {"slide": ",".join(s.name for s in slides)}
    if not exe.exists():
        res["status"] = f"skipped: {exe} is missing (python benchmarks/wsinfer_compare.py --setup)"
        return res
    base = WORK / "wsinfer-run"
    shutil.rmtree(base, ignore_errors=True)
    wsi_dir, results = base / "wsi", base / "results"
    wsi_dir.mkdir(parents=True)
    for s in slides:
        (wsi_dir / s.name).symlink_to(s.resolve())
    pt, cj = export(model_json, base / "model")
    # offline: an empty zoo registry in a private HOME
    home = base / "home"
    (home / ".wsinfer-zoo").mkdir(parents=True)
    (home / ".wsinfer-zoo" / "wsinfer-zoo-registry.json").write_text('{"models": {}}')
    env = {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    cmd = [
        str(exe), "--backend", "openslide", "run", "-i", str(wsi_dir), "-o", str(results),
        "-c", str(cj), "-p", str(pt), "-b", str(batch_size), "-n", str(num_workers),
    ]  # fmt: skip
    res["command"] = " ".join(["wsinfer", *cmd[1:]]).replace(str(base), "<work>")
    try:
        v = subprocess.run([str(exe), "--version"], env=env, capture_output=True, text=True)
        res["version"] = v.stdout.strip().split()[-1] if v.stdout.strip() else None
    except OSError:
        res["version"] = None
    log = base / "wsinfer.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    res["wall_s"] = time.perf_counter() - t0
    res["peak_rss_mb"] = ru.ru_maxrss / 1024  # largest of wsinfer and its loader processes
    res["cpu_s"] = ru.ru_utime + ru.ru_stime
    csvs = list((results / "model-outputs-csv").glob("*.csv")) + list(
        (results / "model-outputs").glob("*.csv")
    )
    if p.returncode != 0 or len(csvs) != len(slides):
        res["status"] = f"failed (exit {p.returncode}); see {log}"
        res["log_tail"] = log.read_text()[-2000:]
        return res
    res["patches"] = 0
    for c in csvs:
        with open(c) as f:
            res["patches"] += sum(1 for _ in csv.reader(f)) - 1
    res["slides_done"] = len(csvs)
    res["status"] = "ok"
    return res


def run_idcmap(model_json: Path, slides: list[Path], *, extra: list[str] = ()) -> dict[str, Any]:
    """Time the whole process ``idcmap run SLIDES --out <fresh folder>`` (start-up included)."""
    out = WORK / "idcmap-cohort-out"
    shutil.rmtree(out, ignore_errors=True)
    exe = Path(sys.executable).with_name("idcmap")
    cmd = [str(exe), "run", *map(str, slides), "--out", str(out), "--model", str(model_json)]
    cmd += ["-q", *extra]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode() if p.stderr else ""
    rc = os.waitstatus_to_exitcode(status)
    done = sum(1 for d in out.glob("*/summary.json"))
    res: dict[str, Any] = {"wall_s": wall, "peak_rss_mb": ru.ru_maxrss / 1024, "slides_done": done}
    res["status"] = "ok" if rc == 0 and done == len(slides) else f"failed (exit {rc}): {err[-500:]}"
    return res


def cohort(model_json: Path, slides: list[Path], *, rounds: int, **kw: Any) -> dict[str, Any]:
    """Whole processes, alternating idcmap / WSInfer, ``rounds`` times: ratio of the medians."""
    import statistics

    runs: dict[str, list[dict[str, Any]]] = {"idcmap": [], "wsinfer": []}
    for r in range(rounds):
        for name in ("idcmap", "wsinfer") if r % 2 == 0 else ("wsinfer", "idcmap"):
            res = (
                run_idcmap(model_json, slides)
                if name == "idcmap"
                else run(model_json, slides, **kw)
            )
            print(
                f"round {r + 1} {name}: {res.get('status')} {res.get('wall_s', 0):.2f} s",
                flush=True,
            )
            runs[name].append(res)
    med = {
        k: statistics.median(x["wall_s"] for x in v if x.get("status") == "ok")
        for k, v in runs.items()
    }
    return {
        "slides": [s.name for s in slides],
        "runs": runs,
        "median_wall_s": med,
        "ratio_wsinfer_over_idcmap": med["wsinfer"] / med["idcmap"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("slide", type=Path, nargs="*", help="one slide, or a cohort with --cohort")
    ap.add_argument("--cohort", action="store_true", help="all slides in one process each way")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds for --cohort")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    ap.add_argument("--model", default="bundled", help="idcmap model .json, or 'bundled'")
    ap.add_argument("--setup", action="store_true", help="create WSInfer's venv")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-workers", type=int, default=2)
    a = ap.parse_args(argv)
    if a.setup:
        setup()
    if a.slide:
        sys.path.insert(0, str(HERE.parent))
        from idcmap.model.runtime import bundled_model_path

        model = bundled_model_path() if a.model == "bundled" else Path(a.model)
        kw = {"batch_size": a.batch_size, "num_workers": a.num_workers}
        if a.cohort:
            res = cohort(model, a.slide, rounds=a.rounds, **kw)
        else:
            res = run(model, a.slide[0], **kw)
        text = json.dumps(res, indent=1)
        print(text)
        if a.json:
            a.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
