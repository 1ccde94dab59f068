"""Artefact battery: paint artefacts on the test mosaics, run the real pipeline with and without
the QC stage, and score Dice, tissue/IDC area change and the QC masks' precision/recall.

    PYTHONPATH=. python benchmarks/artefacts.py --out /tmp/qc-bench              # battery
    PYTHONPATH=. python benchmarks/artefacts.py --out /tmp/qc-bench --clean      # 28 clean
    PYTHONPATH=. python benchmarks/artefacts.py --out /tmp/qc-paint --kinds ink --ink-blend paint
    PYTHONPATH=. python benchmarks/artefacts.py --out /tmp/pale --kinds ink --ink-glass translucent

Battery: for each test mosaic (idcmap/models/idc-v1.split.json) × kind × seed, one painted
slide (pyramidal JPEG TIFF, 4 µm/px, levels 1/4/16 like the shared mosaics) with that kind's
artefacts at a place that cycles with the seed (over IDC, near it, over glass / anywhere);
ink = a circle round the IDC cells + a stroke + dots, random marker colour per seed. Each is
segmented by :func:`idcmap.segment_slide` with ``qc="none"`` (0.2.0) and ``qc="all"``.
Dice is pooled over cells as :mod:`idcmap.train.evaluate` does (heatmap cells vs cells.csv).
QC precision/recall: on the tissue thumbnail (16 µm/px; a pixel is painted when ≥ 50 % of it
is), blur on the heatmap cells; "any" scores the union of every kind QC excluded against the
painted mask (what matters for exclusion), "kind" only that kind's mask.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from idcmap.model.runtime import load_model  # noqa: E402
from idcmap.params import Params  # noqa: E402
from idcmap.pipeline.segment import segment_slide  # noqa: E402
from idcmap.train.artefacts import paint  # noqa: E402
from idcmap.train.data import read_cells, read_level0  # noqa: E402
from idcmap.train.metrics import dice_from_counts  # noqa: E402
from idcmap.train.truth import truth_from_cells  # noqa: E402

SLIDES = ROOT.parent / "shared" / "data" / "idc" / "slides"
SPLIT = ROOT / "idcmap" / "model" / "weights" / "idc-v1.split.json"
PLACES = {
    "ink": ["idc", "near", "glass"],
    "fold": ["idc", "near", "tissue"],
    "blur": ["idc", "near", "tissue"],
    "debris": ["idc", "near", "glass"],
    "border": ["-", "-", "-"],
}
COLOURS = ["blue", "green", "black", "red"]
#: the validation mosaics of the split (tuning), beside its test ones (the final table)
VALID = ("8917", "9037", "9076")


def idc_region(sid: str, shape: tuple[int, int]) -> np.ndarray:
    reg = np.zeros(shape, bool)
    for x, y, w, h, lab in read_cells(SLIDES / f"{sid}.cells.csv"):
        if lab == 1:
            reg[y : y + h, x : x + w] = True
    return reg


def paint_case(
    img: np.ndarray,
    reg: np.ndarray,
    kind: str,
    seed: int,
    si: int,
    ink_blend: str = "dye",
    ink_glass: str = "opaque",
) -> Any:
    where = PLACES[kind][seed % 3]
    if kind == "ink":
        colour = COLOURS[(seed + si) % 4]
        p1 = paint(
            img,
            4.0,
            ["ink"],
            seed=seed,
            region=reg,
            where=where,
            shape="circle",
            colour=colour,
            blend=ink_blend,
            on_glass=ink_glass,
        )
        p2 = paint(
            p1.rgb,
            4.0,
            ["ink"],
            seed=seed + 100,
            region=reg,
            where=where,
            shape="stroke",
            colour=COLOURS[(seed + si + 1) % 4],
            blend=ink_blend,
            on_glass=ink_glass,
        )
        p3 = paint(
            p2.rgb,
            4.0,
            ["ink"],
            seed=seed + 200,
            region=reg,
            where="near",
            shape="dots",
            colour=colour,
            blend=ink_blend,
            on_glass=ink_glass,
        )
        p3.masks["ink"] = p1.masks["ink"] | p2.masks["ink"] | p3.masks["ink"]
        p3.specs = p1.specs + p2.specs + p3.specs
        return p3
    if kind == "border":
        return paint(img, 4.0, ["border"], seed=seed)
    return paint(img, 4.0, [kind], seed=seed, region=reg, where=where)


def frac_reduce(m: np.ndarray, shape: tuple[int, int], k: int = 4) -> np.ndarray:
    f = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).reduce(k), np.float32) / 255
    out = np.zeros(shape, np.float32)
    h, w = min(shape[0], f.shape[0]), min(shape[1], f.shape[1])
    out[:h, :w] = f[:h, :w]
    return out


def cells_fraction(m: np.ndarray, grid_shape: tuple[int, int], cell: int = 50) -> np.ndarray:
    h, w = grid_shape[0] * cell, grid_shape[1] * cell
    pad = np.zeros((h, w), np.float32)
    hh, ww = min(h, m.shape[0]), min(w, m.shape[1])
    pad[:hh, :ww] = m[:hh, :ww]
    return pad.reshape(grid_shape[0], cell, grid_shape[1], cell).mean((1, 3))


def run(path: Path, model: Any, qc: str) -> Any:
    return segment_slide(path, model=model, progress=False, params=Params(qc=qc))


def record(res: Any, sid: str) -> dict[str, Any]:
    truth = truth_from_cells(SLIDES / f"{sid}.cells.csv", res.heatmap)
    pred = np.asarray(res.mask, bool)
    s = res.summary
    return {
        "inter": int((pred & truth).sum()),
        "pred": int(pred.sum()),
        "truth": int(truth.sum()),
        "tissue_mm2": s["tissue_area_mm2"],
        "idc_mm2": s["idc_area_mm2"],
        "qc": s.get("qc"),
        "idc_under_pct": under_pct(s["measurements"]["regions"]),
        "total_s": s["timings_s"]["total"],
        "qc_s": s["timings_s"].get("qc", 0.0) + s["timings_s"].get("qc_blur", 0.0),
    }


def under_pct(regions: list[dict[str, Any]]) -> dict[str, float]:
    """The share of the IDC regions' area under each kind the QC stage found (%, the regions'
    ``artefact_pct_of_area`` weighted by their areas)."""
    total = sum(r["area_mm2"] for r in regions)
    kinds = {k for r in regions for k in r.get("artefact_pct_of_area", {})}
    return {
        k: sum(r["area_mm2"] * r["artefact_pct_of_area"].get(k, 0.0) for r in regions) / total
        for k in sorted(kinds)
        if total > 0
    }


def cached(out: Path, key: str, path: Path, model: Any, mode: str, sid: str) -> dict[str, Any]:
    """The record of ``path`` run in ``mode``, from ``out/none-cache.json`` for ``none``
    (0.2.0's behaviour does not change with the QC stage's: re-runs of the battery skip it)."""
    if mode != "none":
        return record(run(path, model, mode), sid)
    f = out / "none-cache.json"
    cache = json.loads(f.read_text()) if f.exists() else {}
    if key not in cache:
        cache[key] = record(run(path, model, mode), sid)
        f.write_text(json.dumps(cache, default=str))
    return dict(cache[key])


def pr(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    return int((pred & truth).sum()), int(pred.sum()), int(truth.sum())


def battery(a: argparse.Namespace, model: Any) -> None:
    from tiffgen import write_pyramid_tiff

    test = [s for s in json.loads(SPLIT.read_text())["test"] if (SLIDES / f"{s}.tiff").is_file()]
    ids = a.slides or test
    rows: list[dict[str, Any]] = []
    for si, sid in enumerate(ids):
        img = read_level0(SLIDES / f"{sid}.tiff")
        reg = idc_region(sid, img.shape[:2])
        base = {
            m: cached(a.out, f"{sid}_clean", SLIDES / f"{sid}.tiff", model, m, sid)
            for m in ("none", "all")
        }
        rows.append({"slide": sid, "kind": "clean", "seed": -1, **{m: base[m] for m in base}})
        for kind in a.kinds:
            for seed in range(a.seeds):
                t = time.time()
                p = paint_case(img, reg, kind, seed, si, a.ink_blend, a.ink_glass)
                tif = a.out / "tiff" / f"{sid}_{kind}_{seed}.tiff"
                tif.parent.mkdir(parents=True, exist_ok=True)
                write_pyramid_tiff(tif, p.rgb, 4.0)
                row: dict[str, Any] = {
                    "slide": sid,
                    "kind": kind,
                    "seed": seed,
                    "specs": p.specs,
                    "base": base,
                }
                # 0.2.0: the same whatever QC does, so run once per case
                key = (
                    f"{sid}_{kind}_{seed}_{si}"
                    + ("_paint" if a.ink_blend == "paint" else "")
                    + ("_pale" if a.ink_glass == "translucent" else "")
                )
                row["none"] = cached(a.out, key, tif, model, "none", sid)
                for m in ("all",):
                    res = run(tif, model, m)
                    row[m] = record(res, sid)
                    if m == "all":
                        qm = res.qc_masks or {}
                        if kind == "blur":
                            truth = cells_fraction(p.masks[kind], res.heatmap.shape) >= 0.5
                            got = qm.get("blur", np.zeros(truth.shape, bool))
                            row["pr_kind"] = row["pr_any"] = pr(got, truth)
                        else:
                            th = res.tissue.mask.shape
                            truth = frac_reduce(p.masks[kind], th) >= 0.5
                            anyq = np.zeros(th, bool)
                            for k, v in qm.items():
                                if k != "blur":
                                    anyq |= v
                            row["pr_kind"] = pr(qm.get(kind, np.zeros(th, bool)), truth)
                            row["pr_any"] = pr(anyq, truth)
                if not a.keep_tiffs:
                    tif.unlink()
                rows.append(row)
                print(
                    sid,
                    kind,
                    seed,
                    f"dice-none {row['none']['inter']}/{row['none']['pred']}"
                    f"/{row['none']['truth']} qc {row['all']['inter']}/{row['all']['pred']}"
                    f" tissue {row['none']['tissue_mm2']:.1f}->{row['all']['tissue_mm2']:.1f}"
                    f" (clean {base['none']['tissue_mm2']:.1f}) idc "
                    f"{row['none']['idc_mm2']:.2f}/{row['all']['idc_mm2']:.2f} (clean "
                    f"{base['none']['idc_mm2']:.2f}) pr_any {row.get('pr_any')} "
                    f"{time.time() - t:.0f} s",
                    flush=True,
                )
                (a.out / "battery.json").write_text(json.dumps(rows, default=str))
    table(rows)
    if "ink" in a.kinds:
        print(ink_reason_line(rows))
    for kind in ("ink", "fold"):
        if kind in a.kinds:
            print(region_share_line(rows, kind))


def _dice(rs: list[dict[str, Any]]) -> float:
    i = sum(r["inter"] for r in rs)
    p = sum(r["pred"] for r in rs)
    t = sum(r["truth"] for r in rs)
    return dice_from_counts(i, p, t)[0]


def table(rows: list[dict[str, Any]]) -> None:
    clean = {r["slide"]: r for r in rows if r["kind"] == "clean"}
    print(
        "\n| kind | n | pooled Dice 0.2.0 | pooled Dice QC | max |Δtissue| 0.2.0 | max |Δtissue| "
        "QC | max |ΔIDC| 0.2.0 | max |ΔIDC| QC | QC precision (any) | QC recall (any) | "
        "recall (kind) | review flagged |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    cl = list(clean.values())
    print(
        f"| clean | {len(cl)} | {_dice([r['none'] for r in cl]):.3f} | "
        f"{_dice([r['all'] for r in cl]):.3f} | | | | | | | | "
        f"{sum(bool(r['all']['qc'] and r['all']['qc']['review']) for r in cl)} |"
    )
    for kind in sorted({r["kind"] for r in rows} - {"clean"}):
        rs = [r for r in rows if r["kind"] == kind]

        def dmax(mode: str, key: str, rs: list[dict[str, Any]] = rs) -> float:
            out = 0.0
            for r in rs:
                b = clean[r["slide"]][mode][key]
                if b > 0:
                    out = max(out, abs(r[mode][key] / b - 1))
            return 100 * out

        pa = np.sum([r["pr_any"] for r in rs], 0)
        pk = np.sum([r["pr_kind"] for r in rs], 0)
        prec = pa[0] / pa[1] if pa[1] else float("nan")
        rec = pa[0] / pa[2] if pa[2] else float("nan")
        reck = pk[0] / pk[2] if pk[2] else float("nan")
        flagged = sum(bool(r["all"]["qc"] and r["all"]["qc"]["review"]) for r in rs)
        print(
            f"| {kind} | {len(rs)} | {_dice([r['none'] for r in rs]):.3f} | "
            f"{_dice([r['all'] for r in rs]):.3f} | {dmax('none', 'tissue_mm2'):.0f} % | "
            f"{dmax('all', 'tissue_mm2'):.0f} % | {dmax('none', 'idc_mm2'):.0f} % | "
            f"{dmax('all', 'idc_mm2'):.0f} % | {prec:.2f} | {rec:.2f} | {reck:.2f} | "
            f"{flagged}/{len(rs)} |"
        )


def ink_reason_line(rows: list[dict[str, Any]]) -> str:
    """How often the verdict says IDC was read through ink, and whether it says so on the
    slides whose IDC area (QC) moved more than 15 % from the clean slide's (issue 17's goal)."""
    clean = {r["slide"]: r["all"] for r in rows if r["kind"] == "clean"}
    rs = [r for r in rows if r["kind"] == "ink"]
    said = [any("IDC read through ink" in x for x in (r["all"]["qc"] or {}).get("reasons", []))
            for r in rs]  # fmt: skip
    moved = [
        clean[r["slide"]]["idc_mm2"] > 0
        and abs(r["all"]["idc_mm2"] / clean[r["slide"]]["idc_mm2"] - 1) > 0.15
        for r in rs
    ]
    both = sum(a and b for a, b in zip(said, moved, strict=True))
    return (
        f"ink: 'IDC read through ink' on {sum(said)}/{len(rs)} slides; on {both} of the "
        f"{sum(moved)} whose IDC area moved more than 15 %"
    )


def region_share_line(rows: list[dict[str, Any]], kind: str) -> str:
    """How much of the IDC regions' area lies under ``kind`` (``<Kind> % of area`` of each
    region, area-weighted), on the slides whose IDC area moved more than 15 % and the others."""
    clean = {r["slide"]: r["all"] for r in rows if r["kind"] == "clean"}
    groups: dict[bool, list[float]] = {True: [], False: []}
    for r in rows:
        if r["kind"] != kind or not clean[r["slide"]]["idc_mm2"]:
            continue
        moved = abs(r["all"]["idc_mm2"] / clean[r["slide"]]["idc_mm2"] - 1) > 0.15
        groups[moved].append(r["all"].get("idc_under_pct", {}).get(kind, 0.0))

    def span(v: list[float]) -> str:
        return f"{min(v):.0f}–{max(v):.0f} % (median {np.median(v):.0f} %)" if v else "—"

    return (
        f"{kind}: the IDC regions' area under {kind}: {span(groups[True])} on the "
        f"{len(groups[True])} slides whose IDC area moved more than 15 %, "
        f"{span(groups[False])} on the other {len(groups[False])}"
    )


def detail(rows: list[dict[str, Any]], kind: str) -> None:
    """Per-slide rows of one kind: tissue and IDC area change against the same clean mosaic
    (0.2.0 → QC), Dice, for ink where it lay (on glass / over tissue, mm²), review reasons."""
    clean = {r["slide"]: r["none"] for r in rows if r["kind"] == "clean"}
    print(
        f"\n| {kind} | seed | marks (place) | tissue Δ 0.2.0 | tissue Δ QC | IDC Δ 0.2.0 | "
        "IDC Δ QC | Dice 0.2.0 | Dice QC | ink on glass / over tissue mm² | review reasons |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")

    def pct(a: float, b: float) -> str:
        return f"{100 * (a / b - 1):+.0f} %" if b else "n/a"

    for r in rows:
        if r["kind"] != kind:
            continue
        c, q = clean[r["slide"]], r["all"]["qc"] or {}
        d0 = dice_from_counts(r["none"]["inter"], r["none"]["pred"], r["none"]["truth"])[0]
        d1 = dice_from_counts(r["all"]["inter"], r["all"]["pred"], r["all"]["truth"])[0]
        if kind == "ink":
            marks = " + ".join(f"{x['colour']} {x['shape']} α {x['alpha']}" for x in r["specs"])
            place = f"{marks} ({r['specs'][1]['where']})"
        else:
            place = r["specs"][0].get("where", "-") if r["specs"] else "-"
        ink = q.get("ink")
        areas = f"{ink['on_glass_mm2']:.1f} / {ink['over_tissue_mm2']:.1f}" if ink else ""
        print(
            f"| {r['slide']} | {r['seed']} | {place} | "
            f"{pct(r['none']['tissue_mm2'], c['tissue_mm2'])}"
            f" | {pct(r['all']['tissue_mm2'], c['tissue_mm2'])} | "
            f"{pct(r['none']['idc_mm2'], c['idc_mm2'])} | {pct(r['all']['idc_mm2'], c['idc_mm2'])}"
            f" | {d0:.3f} | {d1:.3f} | {areas} | {'; '.join(q.get('reasons', []))} |"
        )


def clean_run(a: argparse.Namespace, model: Any) -> None:
    ids = sorted(p.stem for p in SLIDES.glob("*.tiff"))
    test = set(json.loads(SPLIT.read_text())["test"])
    rows = []
    print(
        "| slide | set | tissue 0.2.0 mm² | tissue QC | Δ % | Dice 0.2.0 | Dice QC | excluded "
        "(% of tissue) | colour distance | review | reasons | QC s / total s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for sid in ids:
        r0 = cached(a.out, f"{sid}_clean", SLIDES / f"{sid}.tiff", model, "none", sid)
        r1 = record(run(SLIDES / f"{sid}.tiff", model, "all"), sid)
        q = r1["qc"]
        rows.append({"slide": sid, "none": r0, "all": r1})
        d0 = dice_from_counts(r0["inter"], r0["pred"], r0["truth"])[0]
        d1 = dice_from_counts(r1["inter"], r1["pred"], r1["truth"])[0]
        ex = {k: v for k, v in q["excluded_pct_of_tissue"].items() if v >= 0.05}
        print(
            f"| {sid} | {'test' if sid in test else 'valid' if sid in VALID else 'train'} | "
            f"{r0['tissue_mm2']:.2f} | "
            f"{r1['tissue_mm2']:.2f} | {100 * (r1['tissue_mm2'] / r0['tissue_mm2'] - 1):+.1f} | "
            f"{d0:.3f} | {d1:.3f} | {ex} | {q['colour_distance']} | {q['review']} | "
            f"{'; '.join(q['reasons'])} | {r1['qc_s']:.3f} / {r1['total_s']:.2f} |",
            flush=True,
        )
        (a.out / "clean.json").write_text(json.dumps(rows, default=str))
    for name, sel in (("all 28", ids), ("test", sorted(test)), ("train", sorted(set(ids) - test))):
        rs = [r for r in rows if r["slide"] in sel]
        print(
            f"pooled Dice {name}: 0.2.0 {_dice([r['none'] for r in rs]):.4f}  "
            f"QC {_dice([r['all'] for r in rs]):.4f}; flagged "
            f"{sum(r['all']['qc']['review'] for r in rs)}/{len(rs)}"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--slides", nargs="*")
    ap.add_argument("--kinds", nargs="*", default=list(PLACES))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--clean", action="store_true", help="QC on the 28 clean mosaics instead")
    ap.add_argument("--keep-tiffs", action="store_true")
    ap.add_argument(
        "--ink-blend",
        choices=("dye", "paint"),
        default="dye",
        help="how ink is painted: dye (multiplicative, as marker ink is) or paint (its colour "
        "mixed over the pixels, as an image editor's layer)",
    )
    ap.add_argument(
        "--ink-glass",
        choices=("opaque", "translucent"),
        default="opaque",
        help="ink where it crosses glass: opaque (α 0.85–0.97) or translucent (the mark's own "
        "α, as over tissue)",
    )
    ap.add_argument("--model", default=None, help="model .json or bundled name (default: bundled)")
    ap.add_argument(
        "--table", type=Path, nargs="*", help="print the tables of battery.json files (merged)"
    )
    ap.add_argument("--detail", nargs="*", default=[], help="with --table: per-slide rows")
    a = ap.parse_args()
    if a.table:
        rows = [r for f in a.table for r in json.loads(f.read_text())]
        table(rows)
        for kind in a.detail:
            detail(rows, kind)
        return
    a.out.mkdir(parents=True, exist_ok=True)
    model = load_model(a.model, device="cpu")
    if a.clean:
        clean_run(a, model)
    else:
        battery(a, model)


if __name__ == "__main__":
    main()
