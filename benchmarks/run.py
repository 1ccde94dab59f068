"""idcmap speed and memory benchmark: end to end vs its floors, vs the naive peer way, vs WSInfer.

Every case runs in a fresh subprocess (so its peak RSS is its own, read with ``os.wait4``):

* ``e2e``: :func:`idcmap.segment_slide` + ``save`` (all outputs), for each slide and stride:
  wall time, tiles/s, peak RSS and where the time goes (``summary.json`` ``timings_s``);
* ``floors``: on the same slide, grid and model: the I/O floor, a pure decode of the pyramid
  level that is read (``read_block`` over the same blocks, the same JPEG tiles as the pipeline
  decodes, no model; 1 thread and ``--workers`` threads), and the compute floor, the pure
  model forward over the same tiles already in memory (dense over the blocks, as idcmap does,
  and batched 50x50 tiles, as peers do), plus the largest |dense − tile-by-tile| difference
  of the probabilities on real blocks;
* ``naive``: the way CLAM and WSInfer tile: one ``read_region`` per tile at level 0, resized to
  50x50, then the model in batches (a deterministic sample of ``--naive-tiles`` tissue tiles,
  extrapolated to all of them);
* WSInfer itself (``--wsinfer``; see ``benchmarks/wsinfer_compare.py``), on the 40x slide.

    python benchmarks/run.py                       # CPU, all slides in benchmarks/_data
    python benchmarks/run.py --device cuda --wsinfer no
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "_data"
WORK = HERE / "_work"
SLIDE_KINDS = {  # kind → file name pattern in _data (see make_slides.py)
    "40x": "{id}-40x.tiff",
    "l1l4": "{id}-40x-l1l4.tiff",
    "2x2": "{id}-40x-2x2.tiff",
    "mosaic": "{id}.tiff",
}


# --------------------------------------------------------------------------------------------
# helpers shared by the children
# --------------------------------------------------------------------------------------------


def _vm_hwm_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_model(path: Path, seed: int = 0, widths: tuple[int, int, int] = (64, 192, 256)) -> Path:
    """A random-weight IDCNet (default widths: the shipped model's compute cost) as a model file."""
    import torch

    from idcmap.model.archs.idcnet import IDCNet
    from idcmap.model.modelfile import ModelConfig, save_model

    if path.exists():
        return path
    torch.manual_seed(seed)
    net = IDCNet(widths=widths)
    cfg = ModelConfig(
        name="random-idcnet",
        version="bench",
        architecture="idcnet-v1",
        mpp=4.0,
        patch_px=50,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        arch_params={"widths": list(widths)},
    )
    save_model(net, cfg, path)
    return path


def _setup_torch(a: argparse.Namespace) -> None:
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)


def _sync(model: Any) -> None:
    import torch

    if model.device.type == "cuda":
        torch.cuda.synchronize()


def _grid(slide: Any, model: Any, stride: int) -> Any:
    from idcmap.params import Params
    from idcmap.pipeline.tiles import make_grid
    from idcmap.pipeline.tissue import detect_tissue

    p = Params()
    tissue = detect_tissue(slide, target_mpp=p.tissue_mpp)
    return make_grid(
        slide,
        tissue,
        model_mpp=model.config.mpp,
        patch_px=model.config.patch_px,
        stride_px=stride,
        min_tissue=p.min_tissue,
    )


# --------------------------------------------------------------------------------------------
# children
# --------------------------------------------------------------------------------------------


def child_e2e(a: argparse.Namespace) -> dict[str, Any]:
    from idcmap.model.runtime import load_model
    from idcmap.params import Params
    from idcmap.pipeline.segment import segment_slide

    _setup_torch(a)
    t0 = time.perf_counter()
    model = load_model(a.model, device=a.device)
    # per-process start-up (CUDA context, cuBLAS handles, oneDNN kernels), paid once per batch
    # of slides: outside the slide's wall time
    import numpy as np

    model.predict(np.full((2, model.config.patch_px, model.config.patch_px, 3), 200, np.uint8))
    from idcmap.io.jpegtorch import tile_decoder

    tile_decoder(a.decode, model.device)  # torchvision's import (~2 s), once per process
    t_load = time.perf_counter() - t0
    util: list[float] = []
    stop = threading.Event()
    sampler = None
    if model.device.type == "cuda":
        import torch

        def sample() -> None:
            while not stop.is_set():
                try:
                    util.append(float(torch.cuda.utilization()))
                except Exception:  # no NVML: no figure
                    return
                stop.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    with tempfile.TemporaryDirectory(dir=WORK) as out:
        t0 = time.perf_counter()
        params = Params(
            workers=a.workers, device=a.device, batch_size=a.batch_size, decode=a.decode
        )
        res = segment_slide(a.slide, model=model, stride=a.stride, progress=False, params=params)
        res.save(out)
        wall = time.perf_counter() - t0
    stop.set()
    if sampler is not None:
        sampler.join()
    s = res.summary
    return {
        "wall_s": wall,
        "load_model_s": t_load,
        "tiles": s["tiles"]["evaluated"],
        "grid": s["tiles"]["grid"],
        "blocks": s["tiles"]["blocks"],
        "dense_blocks": s["tiles"]["dense_blocks"],
        "level_read": s["slide"]["level_read"],
        "level_read_mpp": s["slide"]["level_read_mpp"],
        "timings_s": s["timings_s"],
        "vm_hwm_mb": _vm_hwm_mb(),
        "gpu_util_mean_pct": sum(util) / len(util) if util else None,
    }


def child_floors(a: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from idcmap.io.open import open_slide
    from idcmap.model.runtime import load_model
    from idcmap.pipeline.infer import _predict_dense
    from idcmap.pipeline.tiles import plan_blocks, read_block

    _setup_torch(a)
    model = load_model(a.model, device=a.device)
    out: dict[str, Any] = {}
    with open_slide(a.slide) as slide:
        grid = _grid(slide, model, a.stride)
        level = slide.read_level_for_mpp(grid.model_mpp)
        blocks = plan_blocks(grid, level.downsample)
        out.update(
            level_read=level.level, read_scale=level.scale, blocks=len(blocks), tiles=grid.n_tiles
        )

        # --- I/O floor: decode the read level (at its scale) over the same blocks, no resize,
        # no model
        def level_rect(b: tuple[int, int, int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
            r0, r1, c0, c1 = b
            st, p = grid.stride_px, grid.patch_px
            fx, fy = grid.level0_per_model_px
            bx, by, bw, bh = grid.bounds_level0_px
            d = level.downsample
            x0, y0 = bx + c0 * st * fx, by + r0 * st * fy
            x1 = min(bx + bw, bx + ((c1 - c0 - 1) * st + p + c0 * st) * fx)
            y1 = min(by + bh, by + ((r1 - r0 - 1) * st + p + r0 * st) * fy)
            w, h = max(1, int((x1 - x0) / d)), max(1, int((y1 - y0) / d))
            return (int(x0 / d), int(y0 / d)), (w, h)  # read px of the level at its scale

        rects = [level_rect(b) for b in blocks]
        out["decoded_mpx"] = sum(w * h for _, (w, h) in rects) / 1e6
        # the pipeline decodes only the JPEG tiles under kept tiles (read_block's kept_only);
        # the floor decodes the same tiles (where the level is read at scale 1 through the
        # backend, whole blocks, as the pipeline does)
        t0 = time.perf_counter()
        for r0, r1, c0, c1 in blocks:
            read_block(slide, grid, level, (r0, r1), (c0, c1), kept_only=True)
        out["io_floor_1thread_s"] = time.perf_counter() - t0
        if a.workers > 1:
            local = threading.local()
            handles = []

            def rd(b: tuple) -> None:
                h = getattr(local, "h", None)
                if h is None:
                    h = local.h = slide.reopen()
                    handles.append(h)
                read_block(h, grid, level, (b[0], b[1]), (b[2], b[3]), kept_only=True)

            with ThreadPoolExecutor(a.workers) as pool:
                rd(blocks[0])  # opens this thread's handle outside the timing... one of them
                t0 = time.perf_counter()
                list(pool.map(rd, blocks))
                out["io_floor_s"] = time.perf_counter() - t0
            for h in handles:
                h.close()
        else:
            out["io_floor_s"] = out["io_floor_1thread_s"]

        # --- the same reads straight from openslide-python (RGBA as it decodes it, none of
        # idcmap's conversions): the pure decode
        if slide.info.backend == "openslide" and level.scale == 1:
            import openslide

            def raw_read(rs: list) -> None:
                osr = openslide.OpenSlide(str(a.slide))
                for (x, y), size in rs:
                    loc = (round(x * level.downsample), round(y * level.downsample))
                    osr.read_region(loc, level.level, size)
                osr.close()

            t0 = time.perf_counter()
            raw_read(rects)
            out["decode_only_1thread_s"] = time.perf_counter() - t0
            nw = max(1, a.workers)
            t0 = time.perf_counter()
            with ThreadPoolExecutor(nw) as pool:
                list(pool.map(raw_read, [rects[i::nw] for i in range(nw)]))
            out["decode_only_s"] = time.perf_counter() - t0

        # --- compute floor: the same tiles, already in memory at model px
        pix = [read_block(slide, grid, level, (b[0], b[1]), (b[2], b[3])) for b in blocks]
    st, p = grid.stride_px, grid.patch_px
    import torch

    # the floor is the best this machine does: torch's thread count as set, and on a CPU also 1
    thread_counts = [torch.get_num_threads()]
    if model.device.type == "cpu" and thread_counts[0] > 1 and not a.threads:
        thread_counts.append(1)
    out["compute_floor_threads_tried"] = thread_counts

    def best_of(fn: Any, name: str) -> float:
        best = float("inf")
        for n in thread_counts:
            torch.set_num_threads(n)
            fn()  # warm-up
            _sync(model)
            t0 = time.perf_counter()
            fn()
            _sync(model)
            s = time.perf_counter() - t0
            out[f"{name}_{n}thread_s"] = s  # 1 thread: its CPU time, for the sum of floors
            best = min(best, s)
        torch.set_num_threads(thread_counts[0])
        return best

    if model.supports_dense(st):
        dense = [_predict_dense(model, blk, grid) for blk in pix]
        out["compute_floor_dense_s"] = best_of(
            lambda: [_predict_dense(model, blk, grid) for blk in pix], "compute_floor_dense"
        )
    tiles_list, where = [], []
    for i, blk in enumerate(pix):
        keep = grid.keep[blk.row0 : blk.row1, blk.col0 : blk.col1]
        rr, cc = np.nonzero(keep)
        win = np.lib.stride_tricks.sliding_window_view(blk.pixels, (p, p), axis=(0, 1))[::st, ::st]
        tiles_list.append(np.ascontiguousarray(win[rr, cc].transpose(0, 2, 3, 1)))
        where.append((i, rr, cc))
    tiles = np.concatenate(tiles_list)
    del tiles_list
    out["tiles_in_memory_mb"] = tiles.nbytes / 2**20
    prob_tiles = model.predict(tiles, batch_size=a.batch_size)
    out["compute_floor_tiles_s"] = best_of(
        lambda: model.predict(tiles, batch_size=a.batch_size), "compute_floor_tiles"
    )
    if model.supports_dense(st):
        k = 0
        diffs = []
        for i, rr, cc in where:
            diffs.append(np.abs(dense[i][rr, cc] - prob_tiles[k : k + len(rr)]))
            k += len(rr)
        d = np.concatenate(diffs)
        out["dense_vs_tiles_max_abs_diff"] = float(d.max()) if d.size else 0.0
        out["dense_vs_tiles_tiles_compared"] = int(d.size)
    # the reference: the plain IDCNet (unfolded, float32, torch's convolutions) tile by tile
    if model.supports_dense(st) and hasattr(model.net, "forward_dense"):
        sel = np.linspace(0, len(tiles) - 1, min(2048, len(tiles))).round().astype(int)
        dense_flat = np.concatenate([dense[i][rr, cc] for i, rr, cc in where])
        with torch.inference_mode():
            x = torch.from_numpy(tiles[sel]).permute(0, 3, 1, 2).float().div(255)
            net = model.net.float().to(memory_format=torch.contiguous_format)
            ref = torch.softmax(net(x.to(model.device)).float(), 1)[:, 1].cpu().numpy()
        out["dense_vs_reference_net_max_abs_diff"] = float(np.abs(dense_flat[sel] - ref).max())
        out["reference_tiles_compared"] = len(sel)
    out["compute_floor_s"] = min(
        out.get("compute_floor_dense_s", float("inf")), out["compute_floor_tiles_s"]
    )
    out["vm_hwm_mb"] = _vm_hwm_mb()
    return out


def child_naive(a: argparse.Namespace) -> dict[str, Any]:
    """One read_region per tile at level 0, resize to 50x50, model in batches."""
    import numpy as np
    from PIL import Image

    from idcmap.io.open import open_slide
    from idcmap.model.runtime import load_model

    _setup_torch(a)
    model = load_model(a.model, device=a.device)
    with open_slide(a.slide) as slide:
        grid = _grid(slide, model, a.stride)
        rr, cc = np.nonzero(grid.keep)
        n_all = len(rr)
        idx = np.linspace(0, n_all - 1, min(a.naive_tiles, n_all)).round().astype(int)
        fx, fy = grid.level0_per_model_px
        bx, by, _, _ = grid.bounds_level0_px
        st, p = grid.stride_px, grid.patch_px
        size = (round(p * fx), round(p * fy))
        local = threading.local()
        handles = []

        def one(i: int) -> np.ndarray:
            h = getattr(local, "h", None)
            if h is None:
                h = local.h = slide.reopen()
                handles.append(h)
            x, y = bx + cc[i] * st * fx, by + rr[i] * st * fy
            region = h.read_region((round(x), round(y)), 0, size)
            return np.asarray(Image.fromarray(region).resize((p, p), Image.Resampling.BILINEAR))

        model.predict(np.zeros((8, p, p, 3), np.uint8))  # warm-up
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max(1, a.workers)) as pool:
            batch: list[np.ndarray] = []
            for t in pool.map(one, idx):
                batch.append(t)
                if len(batch) == a.batch_size:
                    model.predict(np.stack(batch))
                    batch = []
            if batch:
                model.predict(np.stack(batch))
        _sync(model)
        wall = time.perf_counter() - t0
        for h in handles:
            h.close()
    return {
        "sampled_tiles": len(idx),
        "tiles": n_all,
        "sample_wall_s": wall,
        "tiles_per_s": len(idx) / wall,
        "extrapolated_s": wall * n_all / len(idx),
        "read_px_per_tile": size,
        "vm_hwm_mb": _vm_hwm_mb(),
    }


CHILDREN = {"e2e": child_e2e, "floors": child_floors, "naive": child_naive}


# --------------------------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------------------------


def run_child(kind: str, a: argparse.Namespace, slide: Path, stride: int) -> dict[str, Any]:
    """Run one case in a fresh interpreter; its result plus its own peak RSS (``os.wait4``)."""
    with tempfile.NamedTemporaryFile("r", suffix=".json", dir=WORK, delete=False) as f:
        res_path = Path(f.name)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child", kind, "--slide", str(slide), "--stride", str(stride),
        "--model", str(a.model), "--device", a.device, "--workers", str(a.workers),
        "--threads", str(a.threads), "--batch-size", str(a.batch_size),
        "--naive-tiles", str(a.naive_tiles), "--result", str(res_path), "--decode", a.decode,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"case {kind} {slide.name} stride {stride} failed ({p.returncode})")
    res = json.loads(res_path.read_text())
    res_path.unlink()
    res["peak_rss_mb"] = ru.ru_maxrss / 1024  # KiB on Linux
    res["process_wall_s"] = wall
    res["cpu_s"] = ru.ru_utime + ru.ru_stime
    return res


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_before": os.getloadavg(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def report(results: dict[str, Any]) -> str:
    lines = []
    m = results["machine"]
    lines.append(
        f"machine: {m['cpu']}, {m['cores']} cores, torch {m.get('torch')} "
        f"({m.get('torch_threads')} threads), device {results['device']}"
        + (f" ({m['gpu']})" if m.get("gpu") else "")
        + f"; load avg before {m['load_before'][0]:.2f}, after {m['load_after'][0]:.2f}"
    )
    lines.append(f"model: {results['model']}; command: {results['command']}")
    lines.append("")
    lines.append(
        "| slide | stride | level read (µm/px) | tiles | wall s | tiles/s | peak RSS MB | "
        "read busy | resize busy | model | model waited | tissue | stitch | regions | export |"
    )
    lines.append("|" + "---|" * 15)
    for key, r in results["e2e"].items():
        slide, stride = key.rsplit("@", 1)
        t = r["timings_s"]
        lines.append(
            f"| {slide} | {stride} | {r['level_read']} ({r['level_read_mpp']:.2f}) | {r['tiles']} "
            f"| {r['wall_s']:.2f} | {r['tiles'] / r['wall_s']:.0f} | {r['peak_rss_mb']:.0f} "
            f"| {t['read_busy']:.2f} | {t['resize_busy']:.2f} | {t['model']:.2f} "
            f"| {t['model_waited_for_pixels']:.2f} | {t['tissue']:.2f} | {t['stitch']:.3f} "
            f"| {t['regions']:.2f} | {t.get('export', 0):.2f} |"
        )
    lines.append("")
    lines.append(
        "| slide | stride | block Mpx | openslide decode s (1 thread) | openslide decode s "
        "| idcmap read_block s (1 thread) | idcmap read_block s (= I/O floor) | "
        "compute floor dense s | compute floor 50x50 tiles s | max(floors) | e2e / max(floors) "
        "| max abs(dense - tiles) | max abs(dense - plain IDCNet per tile) |"
    )
    lines.append("|" + "---|" * 13)
    for key, f in results["floors"].items():
        slide, stride = key.rsplit("@", 1)
        e = results["e2e"].get(key)
        mx = max(f["io_floor_s"], f["compute_floor_s"])
        lines.append(
            f"| {slide} | {stride} | {f['decoded_mpx']:.0f} "
            f"| {fmt(f.get('decode_only_1thread_s'))} | {fmt(f.get('decode_only_s'))} "
            f"| {f['io_floor_1thread_s']:.2f} "
            f"| {f['io_floor_s']:.2f} | {fmt(f.get('compute_floor_dense_s'))} "
            f"| {f['compute_floor_tiles_s']:.2f} | {mx:.2f} "
            f"| {fmt(e['wall_s'] / mx if e else None)} "
            f"| {fmt(f.get('dense_vs_tiles_max_abs_diff'), 6)} "
            f"| {fmt(f.get('dense_vs_reference_net_max_abs_diff'), 6)} |"
        )
    if results.get("naive"):
        lines.append("")
        lines.append(
            "| naive peer way (read_region per tile at level 0 + resize + model) | stride | "
            "sampled tiles | sample wall s | tiles/s | extrapolated to all tiles s | "
            "vs idcmap e2e |"
        )
        lines.append("|" + "---|" * 7)
        for key, n in results["naive"].items():
            slide, stride = key.rsplit("@", 1)
            e = results["e2e"].get(key)
            lines.append(
                f"| {slide} | {stride} | {n['sampled_tiles']} of {n['tiles']} "
                f"| {n['sample_wall_s']:.2f} | {n['tiles_per_s']:.1f} "
                f"| {n['extrapolated_s']:.1f} "
                f"| {fmt(n['extrapolated_s'] / e['wall_s'] if e else None, 1)}x |"
            )
    w = results.get("wsinfer")
    if w:
        lines.append("")
        lines.append(f"WSInfer {w.get('version')} on {w['slide']}: {w.get('status')}")
        if w.get("wall_s"):
            lines.append(
                f"  wall {w['wall_s']:.1f} s, {w.get('patches')} patches, "
                f"{(w.get('patches') or 0) / w['wall_s']:.1f} patches/s, peak RSS "
                f"{fmt(w.get('peak_rss_mb'), 0)} MB; command: {w.get('command')}"
            )
    lines.append("")
    lines.append("Ratios vs the bars:")
    for r in results["ratios"]:
        lines.append(f"  {r}")
    return "\n".join(lines)


def ratios(results: dict[str, Any]) -> list[str]:
    out = []
    e2e, fl = results["e2e"], results["floors"]
    for key, f in fl.items():
        if key.endswith("@50") and key in e2e:
            mx = max(f["io_floor_s"], f["compute_floor_s"])
            r = e2e[key]["wall_s"] / mx
            out.append(
                f"{key}: end-to-end / max(compute {f['compute_floor_s']:.2f} s, I/O "
                f"{f['io_floor_s']:.2f} s) = {r:.2f} (bar ≤ 1.25: "
                f"{'met' if r <= 1.25 else 'MISSED'}); tiles stage alone "
                f"{e2e[key]['timings_s']['tiles_wall'] / mx:.2f}"
            )
    for key in e2e:
        if key.endswith("@50") and key.replace("@50", "@25") in e2e:
            r = e2e[key.replace("@50", "@25")]["wall_s"] / e2e[key]["wall_s"]
            m = e2e[key.replace("@50", "@25")]["timings_s"]["model"] / max(
                e2e[key]["timings_s"]["model"], 1e-9
            )
            out.append(
                f"{key[:-3]}: stride 25 / stride 50 wall = {r:.2f}, model time {m:.2f} "
                f"(bar ≤ 2: {'met' if r <= 2 else 'MISSED'})"
            )
    w = results.get("wsinfer")
    if w and w.get("wall_s"):
        key = f"{w['kind']}@50"
        if key in e2e:
            r = w["wall_s"] / e2e[key]["wall_s"]
            out.append(
                f"WSInfer / idcmap on {key} = {w['wall_s']:.1f} / {e2e[key]['wall_s']:.2f} = "
                f"{r:.1f}x (bar ≥ 10: {'met' if r >= 10 else 'MISSED'})"
            )
    rss = {k: v["peak_rss_mb"] for k, v in e2e.items()}
    if rss:
        worst = max(rss.values())
        out.append(
            f"peak RSS max over e2e cases = {worst:.0f} MB (bar < 2048: "
            f"{'met' if worst < 2048 else 'MISSED'})"
        )
    for s in ("50", "25"):
        a, b = e2e.get(f"40x@{s}"), e2e.get(f"2x2@{s}")
        if a and b:
            out.append(
                f"memory flat at stride {s}: 40x {a['peak_rss_mb']:.0f} MB vs 4x-area "
                f"{b['peak_rss_mb']:.0f} MB (ratio {b['peak_rss_mb'] / a['peak_rss_mb']:.2f})"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slide-id", default="8975", help="mosaic id the slides were made from")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--slides", default="40x,l1l4,mosaic,2x2", help="kinds, see make_slides.py")
    ap.add_argument("--strides", default="50,25")
    ap.add_argument("--cases", default="e2e,floors,naive", help="e2e, floors, naive")
    ap.add_argument("--floors-on", default="40x,l1l4,mosaic", help="slides to run floors on")
    ap.add_argument("--naive-on", default="40x", help="slides to run the naive way on")
    ap.add_argument(
        "--model",
        default="bundled",
        help="model .json, 'bundled' (the package's default, idc-v4-glass), "
        "or 'random' (random IDCNet)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=2, help="reader threads")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--decode", default="auto", help="e2e: auto, pillow, torch (Params.decode)")
    ap.add_argument("--naive-tiles", type=int, default=300)
    ap.add_argument("--wsinfer", default="auto", help="auto (if its venv exists), yes, no")
    ap.add_argument("--json", type=Path, default=None, help="write all results here")
    # child mode
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--slide", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--stride", type=int, default=50, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)

    if a.child:
        res = CHILDREN[a.child](a)
        a.result.write_text(json.dumps(res))
        return 0

    if a.model == "random":
        a.model = str(random_model(WORK / "random-idcnet.json"))
    elif a.model == "bundled":
        from idcmap.model.runtime import bundled_model_path

        a.model = str(bundled_model_path())
    results: dict[str, Any] = {
        "machine": machine(),
        "device": a.device,
        "model": a.model,
        "command": "python " + " ".join([str(Path(sys.argv[0])), *sys.argv[1:]]),
        "e2e": {},
        "floors": {},
        "naive": {},
    }
    kinds = [k.strip() for k in a.slides.split(",") if k.strip()]
    strides = [int(s) for s in a.strides.split(",")]
    cases = set(a.cases.split(","))
    for kind in kinds:
        slide = a.data / SLIDE_KINDS[kind].format(id=a.slide_id)
        if not slide.exists():
            print(f"skip {kind}: {slide} is missing (run benchmarks/make_slides.py)", flush=True)
            continue
        for stride in strides:
            key = f"{kind}@{stride}"
            if "e2e" in cases:
                r = results["e2e"][key] = run_child("e2e", a, slide, stride)
                print(
                    f"{key} e2e: {r['wall_s']:.2f} s, {r['tiles']} tiles, "
                    f"{r['peak_rss_mb']:.0f} MB, {json.dumps(r['timings_s'])}",
                    flush=True,
                )
            if "floors" in cases and kind in a.floors_on.split(","):
                r = results["floors"][key] = run_child("floors", a, slide, stride)
                print(f"{key} floors: {json.dumps(r)}", flush=True)
            if "naive" in cases and kind in a.naive_on.split(",") and stride == strides[0]:
                r = results["naive"][key] = run_child("naive", a, slide, stride)
                print(f"{key} naive: {json.dumps(r)}", flush=True)
    if a.wsinfer == "yes" or (
        a.wsinfer == "auto" and (WORK / "wsinfer-venv" / "bin" / "wsinfer").exists()
    ):
        sys.path.insert(0, str(HERE))
        import wsinfer_compare

        slide = a.data / SLIDE_KINDS["40x"].format(id=a.slide_id)
        print("running WSInfer ...", flush=True)
        results["wsinfer"] = {"kind": "40x", **wsinfer_compare.run(Path(a.model), slide)}
        print(f"wsinfer: {json.dumps(results['wsinfer'])}", flush=True)
    results["machine"]["load_after"] = os.getloadavg()
    results["ratios"] = ratios(results)
    text = report(results)
    print("\n" + text)
    path = a.json or WORK / f"results-{a.device}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
