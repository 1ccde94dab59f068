"""Data set layout helpers: list, load, cut mosaics into patches, split by patient.

The layout is the IDC data set's own (Kaggle "Breast Histopathology Images"):
``<root>/<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<L>.png`` with X, Y the 1-based pixel
coordinates of the patch's top-left corner on the 4 µm/px slide.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from idcmap.errors import UsageError

PATCH_PX = 50
DATASET_MPP = 4.0  # µm per pixel of the IDC data set's slides and patches
NAME_RE = re.compile(
    r"^(?P<patient>[^_/]+)_idx5_x(?P<x>\d+)_y(?P<y>\d+)_class(?P<label>[01])\.png$"
)
MOSAIC_MARKER = "MOSAICS.json"  # written by prepare_mosaics: marks a folder of whole-slide patients
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class PatchRecord:
    """One patch file: its path, patient, label (1 = IDC) and 1-based top-left corner."""

    path: Path
    patient: str
    label: int
    x: int
    y: int


def list_patches(root: str | Path) -> list[PatchRecord]:
    """Every patch under ``root`` in the data set's layout, sorted by path.

    The label is read from the file name (``class<L>``) and must agree with the ``<0|1>`` folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise UsageError(
            f"data folder {root} not found; pass a folder in the IDC layout "
            "<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<L>.png"
        )
    out: list[PatchRecord] = []
    for p in sorted(root.glob("*/[01]/*.png")):
        m = NAME_RE.match(p.name)
        if m is None:
            continue
        label = int(m["label"])
        if str(label) != p.parent.name or m["patient"] != p.parent.parent.name:
            raise UsageError(f"{p}: its name disagrees with its folders; fix the file or folder")
        out.append(PatchRecord(p, m["patient"], label, int(m["x"]), int(m["y"])))
    if not out:
        raise UsageError(f"no patches found under {root} (expected <patient>/<0|1>/*_class<L>.png)")
    return out


def is_mosaic_folder(root: str | Path) -> bool:
    """Whether ``root`` was written by :func:`prepare_mosaics` (whole-slide patients)."""
    return (Path(root) / MOSAIC_MARKER).is_file()


def pad_patch(img: np.ndarray, px: int = PATCH_PX) -> np.ndarray:
    """Pad a smaller (edge) RGB patch to ``px``×``px`` by repeating its last row/column."""
    h, w = img.shape[:2]
    if h == px and w == px:
        return img
    img = img[:px, :px]
    h, w = img.shape[:2]
    return np.pad(img, ((0, px - h), (0, px - w), (0, 0)), mode="edge")


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return pad_patch(np.asarray(im.convert("RGB")))


def load_patches(records: Sequence[PatchRecord], threads: int = 4) -> np.ndarray:
    """All patches as one uint8 N×50×50×3 array (edge patches padded)."""
    out = np.empty((len(records), PATCH_PX, PATCH_PX, 3), dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = _read_png(records[i].path)

    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(one, range(len(records))))
    return out


def read_cells(path: str | Path) -> list[tuple[int, int, int, int, int]]:
    """A mosaic's ``cells.csv``: rows of (x, y, width, height, label), 0-based level-0 px."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        return [
            (int(r["x"]), int(r["y"]), int(r["width"]), int(r["height"]), int(r["label"]))
            for r in rows
        ]
    except (KeyError, ValueError) as e:
        raise UsageError(f"{path} is not a cells.csv with x,y,width,height,label ({e!r})") from e


def read_level0(path: str | Path) -> np.ndarray:
    """Level 0 of a (pyramidal) TIFF mosaic as uint8 H×W×3."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        arr = tf.series[0].levels[0].asarray()
    return np.ascontiguousarray(arr[..., :3])


def prepare_mosaics(slides_dir: str | Path, out_dir: str | Path) -> dict[str, int]:
    """Cut every ``<patient>.tiff`` + ``<patient>.cells.csv`` in ``slides_dir`` into patches.

    Writes ``<out>/<patient>/<label>/<patient>_idx5_x<X+1>_y<Y+1>_class<L>.png`` (1-based like
    the original names; edge cells keep their smaller size) and a marker file listing the
    patients. Returns patches written per patient.
    """
    from PIL import Image

    slides_dir, out_dir = Path(slides_dir), Path(out_dir)
    csvs = sorted(slides_dir.glob("*.cells.csv"))
    if not csvs:
        raise UsageError(f"no <patient>.cells.csv files in {slides_dir}")
    counts: dict[str, int] = {}
    for c in csvs:
        patient = c.name[: -len(".cells.csv")]
        tiff = slides_dir / f"{patient}.tiff"
        if not tiff.is_file():
            raise UsageError(f"{c} has no slide {tiff} beside it")
        img = read_level0(tiff)
        n = 0
        for x, y, w, h, label in read_cells(c):
            d = out_dir / patient / str(label)
            d.mkdir(parents=True, exist_ok=True)
            name = f"{patient}_idx5_x{x + 1}_y{y + 1}_class{label}.png"
            Image.fromarray(img[y : y + h, x : x + w]).save(d / name)
            n += 1
        counts[patient] = n
    (out_dir / MOSAIC_MARKER).write_text(
        json.dumps({"source": str(slides_dir), "patients": sorted(counts)}, indent=2) + "\n"
    )
    return counts


def split_patients(
    groups: Mapping[str, Sequence[str]],
    seed: int = 0,
    test_frac: float = 0.15,
    valid_frac: float = 0.12,
    test_counts: dict[str, int] | None = None,
) -> dict[str, list[str]]:
    """Split patients into train / valid / test, group by group (e.g. one group per data folder).

    Each group's patients are sorted, shuffled with ``seed`` and cut: ``test_counts[group]``
    (else ``round(test_frac * n)``) test patients, ``round(valid_frac * n)`` validation, the
    rest train. Deterministic for a given seed and patient list.
    """
    split: dict[str, list[str]] = {s: [] for s in SPLITS}
    for gi, (name, patients) in enumerate(sorted(groups.items())):
        ps = sorted(set(patients))
        random.Random(seed * 1000 + gi).shuffle(ps)
        n_test = (test_counts or {}).get(name, round(test_frac * len(ps)))
        n_valid = round(valid_frac * len(ps))
        if len(ps) >= 3 and (n_test < 1 or n_valid < 1 or n_test + n_valid >= len(ps)):
            n_test, n_valid = max(n_test, 1), max(n_valid, 1)
        split["test"] += ps[:n_test]
        split["valid"] += ps[n_test : n_test + n_valid]
        split["train"] += ps[n_test + n_valid :]
    return {k: sorted(v, key=_patient_key) for k, v in split.items()}


def _patient_key(p: str) -> tuple[int, str]:
    return (int(p), p) if p.isdigit() else (1 << 62, p)


def write_split(split: dict[str, list[str]], path: str | Path, **meta: object) -> None:
    d = {**meta, **{s: split[s] for s in SPLITS}}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(d, indent=2) + "\n")


def read_split(path: str | Path) -> dict[str, list[str]]:
    try:
        d = json.loads(Path(path).read_text())
        return {s: [str(p) for p in d[s]] for s in SPLITS}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(
            f"cannot read split {path} ({e!r}); pass a JSON written by 'idcmap train'"
        ) from e


def select(records: Iterable[PatchRecord], patients: Iterable[str]) -> list[PatchRecord]:
    keep = set(patients)
    return [r for r in records if r.patient in keep]
