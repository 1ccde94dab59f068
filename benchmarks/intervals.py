"""How sure a pooled-Dice change is: a bootstrap over slides of the JSON that ``shifts.py``
(``--json``) or ``artefacts.py`` (``OUT/battery.json``) wrote.

Each draw resamples the slides with replacement (a slide keeps all its seeds or its one shifted
copy together with its clean counts), pools the cell counts, and takes the change of pooled Dice
from the clean rows. Printed per shift or artefact kind: the change, its 90 % interval and the
share of draws that are within ``--goal`` (issues 16 and 17: 0.02).

    PYTHONPATH=. python benchmarks/intervals.py --shifts SHIFTS.json
    PYTHONPATH=. python benchmarks/intervals.py --battery OUT/battery.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

Counts = np.ndarray  # (intersection, predicted, truth) cells


def _dice(c: Counts) -> float:
    return float(2 * c[0] / (c[1] + c[2])) if c[1] + c[2] else 1.0


def interval(
    shifted: Mapping[str, Counts],
    clean: Mapping[str, Counts],
    draws: int = 2000,
    seed: int = 0,
    goal: float = 0.02,
) -> tuple[float, float, float, float]:
    """(change, 5th and 95th percentile of the change, share of draws ≥ −goal): pooled Dice of
    ``shifted`` minus that of ``clean``, both per slide; the slides are what is resampled."""
    slides = sorted(shifted)
    s = np.array([shifted[k] for k in slides], float)
    c = np.array([clean[k] for k in slides], float)
    change = _dice(s.sum(0)) - _dice(c.sum(0))
    pick = np.random.default_rng(seed).integers(len(slides), size=(draws, len(slides)))
    ss, cc = s[pick].sum(1), c[pick].sum(1)
    d = 2 * ss[:, 0] / (ss[:, 1] + ss[:, 2]) - 2 * cc[:, 0] / (cc[:, 1] + cc[:, 2])
    lo, hi = np.percentile(d, [5, 95])
    return change, float(lo), float(hi), float(np.mean(d >= -goal))


def from_shifts(path: Path) -> dict[str, tuple[dict[str, Counts], dict[str, Counts]]]:
    """Per model and shift: (shifted counts per slide, clean counts per slide)."""
    counts = json.loads(path.read_text())["counts"]
    out = {}
    for model, rows in counts.items():
        names = list(rows)
        clean = {k: np.asarray(v, float) for k, v in rows[names[0]].items()}
        for name in names[1:]:
            shifted = {k: np.asarray(v, float) for k, v in rows[name].items()}
            out[f"{model} | {name}"] = (shifted, clean)
    return out


def from_battery(path: Path) -> dict[str, tuple[dict[str, Counts], dict[str, Counts]]]:
    """Per artefact kind: (its painted slides' counts summed per slide, the clean counts × the
    number of painted copies), QC on (the battery's ``all`` runs)."""
    rows: Sequence[dict] = json.loads(path.read_text())
    cell = lambda r: np.array([r["all"]["inter"], r["all"]["pred"], r["all"]["truth"]], float)  # noqa: E731
    clean = {r["slide"]: cell(r) for r in rows if r["kind"] == "clean"}
    out = {}
    for kind in sorted({r["kind"] for r in rows} - {"clean"}):
        painted: dict[str, Counts] = {}
        copies: dict[str, int] = {}
        for r in rows:
            if r["kind"] == kind:
                painted[r["slide"]] = painted.get(r["slide"], 0) + cell(r)
                copies[r["slide"]] = copies.get(r["slide"], 0) + 1
        out[kind] = (painted, {k: clean[k] * copies[k] for k in painted})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--shifts", type=Path, help="a shifts.py --json file")
    src.add_argument("--battery", type=Path, help="an artefacts.py battery.json")
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--goal", type=float, default=0.02)
    a = ap.parse_args()
    cases = from_shifts(a.shifts) if a.shifts else from_battery(a.battery)
    print(f"| case | Δ pooled Dice | 90 % interval | draws within {a.goal} |")
    print("|---|---|---|---|")
    for name, (shifted, clean) in cases.items():
        d, lo, hi, ok = interval(shifted, clean, a.draws, goal=a.goal)
        print(f"| {name} | {d:+.3f} | {lo:+.3f} … {hi:+.3f} | {100 * ok:.0f} % |")


if __name__ == "__main__":
    main()
