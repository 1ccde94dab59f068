"""Train the QC stage's pixel classifier (idcmap/model/weights/qc/qc-v2.json) and compute its
colour reference, on artefacts painted onto the *training* mosaics (neither the test nor the
validation mosaics of idcmap/model/weights/idc-v1.split.json: those are for the battery).

    PYTHONPATH=. python benchmarks/qc_train.py --cache /tmp/qc-cache            # paint + train
    PYTHONPATH=. python benchmarks/qc_train.py --reference                       # REF_OD

Each training mosaic is painted with 3 seeds: three ink marks of random colour, shape, width,
opacity and place (so marks overlap), then a fold, debris/bubbles, a blur band (a negative) and
a border half the time; reduced 4:1 to the tissue stage's 16 µm/px. Every thumbnail pixel is
labelled by the painted area it covers (≥ 50 %: that kind; 10–50 %: left out). Clean tissue and
glass are sampled beside, from the painted thumbnails and from the unpainted mosaic.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from idcmap.pipeline import qcpixel  # noqa: E402
from idcmap.pipeline.tissue import tissue_mask_from_rgb  # noqa: E402
from idcmap.train.artefacts import paint  # noqa: E402
from idcmap.train.data import read_cells, read_level0  # noqa: E402

SLIDES = ROOT.parent / "shared" / "data" / "idc" / "slides"
SPLIT = ROOT / "idcmap" / "model" / "weights" / "idc-v1.split.json"
#: the validation mosaics of the split (its "valid" patients with a mosaic)
VALID = ("8917", "9037", "9076")
CLASSES = qcpixel.CLASSES


def train_ids() -> list[str]:
    held = set(json.loads(SPLIT.read_text())["test"]) | set(VALID)
    return sorted(p.stem for p in SLIDES.glob("*.tiff") if p.stem not in held)


def idc_region(sid: str, shape: tuple[int, int]) -> np.ndarray:
    reg = np.zeros(shape, bool)
    for x, y, w, h, lab in read_cells(SLIDES / f"{sid}.cells.csv"):
        if lab == 1:
            reg[y : y + h, x : x + w] = True
    return reg


def reduce_mask(m: np.ndarray, k: int = 4) -> np.ndarray:
    """Fraction of each k×k block covered (PIL box reduce of a 0/255 image)."""
    return np.asarray(Image.fromarray(m.astype(np.uint8) * 255).reduce(k), np.float32) / 255.0


def painted_thumbs(sid: str, seed: int, cache: Path, pale: int = 0) -> dict[str, np.ndarray]:
    f = cache / (f"{sid}_{seed}" + (f"_pale{pale}" if pale else "") + ".npz")
    if f.exists():
        return dict(np.load(f))
    img = read_level0(SLIDES / f"{sid}.tiff")
    reg = idc_region(sid, img.shape[:2])
    rng = np.random.default_rng(5000 + seed)
    kinds = ["fold", "debris", "blur"] + (["border"] if rng.random() < 0.5 else [])
    inked = paint(img, 4.0, ["ink"], seed=100 + seed, region=reg, n_each=3)
    if pale:  # and marks as translucent on glass as over tissue, centred off the tissue
        more = paint(
            inked.rgb, 4.0, ["ink"], seed=300 + seed, where="glass", n_each=pale,
            on_glass="translucent",
        )  # fmt: skip
        more.masks["ink"] |= inked.masks["ink"]
        inked = more
    p = paint(inked.rgb, 4.0, kinds, seed=200 + seed, region=reg)
    out = {
        "rgb": np.asarray(Image.fromarray(p.rgb).reduce(4)),
        "clean": np.asarray(Image.fromarray(img).reduce(4)),
        "ink": reduce_mask(inked.masks["ink"]),
    }
    for k, m in p.masks.items():
        out[k] = reduce_mask(m)
    np.savez_compressed(f, **out)
    return out


def samples(
    d: dict[str, np.ndarray], rng: np.random.Generator, version: int
) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for src in ("rgb", "clean"):
        rgb = d[src]
        tissue = tissue_mask_from_rgb(rgb, 16.0)
        x = qcpixel.pixel_features(rgb, tissue, version=version)
        y = np.zeros(rgb.shape[:2], np.int64)
        ignore = np.zeros(rgb.shape[:2], bool)
        if src == "rgb":
            for kind in ("fold", "ink", "debris"):  # later kinds win
                f = d[kind] * tissue if kind == "fold" else d[kind]
                y[f >= 0.5] = CLASSES.index(kind)
                ignore |= (f > 0.1) & (f < 0.5)
            ignore |= d["border"] > 0.05 if "border" in d else False
        c8 = rgb.astype(np.float32)
        absorbs = -np.log((c8[..., 0] + 1) * (c8[..., 1] + 1) * (c8[..., 2] + 1) / 256.0**3)
        ok = (~ignore & (absorbs > 0.25)).ravel()  # as the QC stage's candidates
        yr = y.ravel()
        idx = []
        for ci in range(len(CLASSES)):
            if ci == 0:
                t = np.flatnonzero((yr == 0) & ok & tissue.ravel())
                g = np.flatnonzero((yr == 0) & ok & ~tissue.ravel())
                n_t = 15000 if src == "rgb" else 10000
                idx += [
                    rng.choice(t, min(len(t), n_t), replace=False),
                    rng.choice(g, min(len(g), 3000), replace=False),
                ]
            else:
                cand = np.flatnonzero((yr == ci) & ok)
                idx.append(rng.choice(cand, min(len(cand), 6000), replace=False))
        i = np.concatenate(idx)
        xs.append(x.reshape(-1, x.shape[-1])[i])
        ys.append(yr[i])
    return np.concatenate(xs), np.concatenate(ys)


def reference() -> None:
    from idcmap.io.open import open_slide
    from idcmap.pipeline.stain import glass_od

    ods, glasses = [], []
    for sid in train_ids():
        with open_slide(SLIDES / f"{sid}.tiff") as s:
            rgb, _ = s.read_at_mpp(16.0)
        t = tissue_mask_from_rgb(rgb, 16.0)
        od = -np.log((rgb[t].astype(np.float64) + 1) / 256)
        ods.append(od.mean(0))
        g = glass_od(rgb)
        if g is not None:
            glasses.append(g)
        print(sid, od.mean(0).round(4), None if g is None else g.round(4))
    print("REF_OD =", tuple(np.mean(ods, 0).round(4).tolist()), "(mean over the training mosaics)")
    ref_glass = tuple(np.mean(glasses, 0).round(4).tolist())
    print("REF_GLASS_OD =", ref_glass, f"({len(glasses)} mosaics)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, default=Path("/tmp/qc-train-cache"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=24)
    ap.add_argument("--features", type=int, default=2, help="pixel_features version")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "idcmap" / "model" / "weights" / "qc" / "qc-v2.json"
    )
    ap.add_argument(
        "--pale",
        type=int,
        default=0,
        help="more ink marks per seed, as translucent on glass as over tissue (qc-v2: 0; 1 was "
        "tried, docs/qc.md)",
    )
    ap.add_argument("--reference", action="store_true")
    a = ap.parse_args()
    if a.reference:
        reference()
        return
    from sklearn.neural_network import MLPClassifier

    a.cache.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    xs, ys = [], []
    t0 = time.time()
    for sid in train_ids():
        for seed in range(a.seeds):
            x, y = samples(painted_thumbs(sid, seed, a.cache, a.pale), rng, a.features)
            xs.append(x)
            ys.append(y)
        print(sid, f"{time.time() - t0:.0f} s", flush=True)
    x, y = np.concatenate(xs), np.concatenate(ys)
    print("samples per class", np.bincount(y, minlength=len(CLASSES)))
    mean, std = x.mean(0), x.std(0) + 1e-6
    clf = MLPClassifier(
        (a.hidden,), alpha=1e-4, max_iter=80, random_state=0, early_stopping=True, batch_size=1024
    )
    clf.fit((x - mean) / std, y)
    print("train acc", clf.score((x - mean) / std, y), f"{time.time() - t0:.0f} s")
    net = qcpixel.PixelMLP(
        mean=mean,
        std=std,
        w1=clf.coefs_[0],
        b1=clf.intercepts_[0],
        w2=clf.coefs_[1],
        b2=clf.intercepts_[1],
        classes=CLASSES,
        training={
            "slides": train_ids(),
            "seeds": a.seeds,
            "samples": len(y),
            "hidden": a.hidden,
            **({"pale_ink_marks": a.pale} if a.pale else {}),
            "command": "PYTHONPATH=. python benchmarks/qc_train.py",
        },
        features=a.features,
    )
    a.out.write_text(json.dumps(net.to_json()))
    print("wrote", a.out)


if __name__ == "__main__":
    main()
