"""Every option check of :meth:`Params.validate`: each bad value is a UsageError naming it."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest

from idcmap.cli.main import main
from idcmap.errors import UsageError
from idcmap.params import Params

NAN, INF = math.nan, math.inf

#: (field, bad values): every field that has a check, with values on each side of it.
BAD = [
    ("stride_px", [0, -25, 2.5]),
    ("threshold", [-0.01, 1.01, NAN]),
    ("smooth_um", [-1.0, NAN, INF]),
    ("aggregator", ["gaussian", "", None]),
    ("mpp", [0.0, 0.009, 101.0, NAN, INF]),
    ("backend", ["bioformats", ""]),
    ("device", ["gpu", "cuda:x", ""]),
    ("batch_size", [0, -1]),
    ("workers", [-1]),
    ("torch_threads", [0, -2, 1.5]),
    ("min_tissue", [-0.1, 1.1]),
    ("tissue_mpp", [0.0, -16.0, NAN, INF]),
    ("min_region_um2", [-1.0, NAN, INF]),
    ("min_hole_um2", [-1.0, NAN]),
    ("simplify_um", [-0.5, NAN]),
    ("outline", ["wiggly", ""]),
    ("qc", ["smudge", "ink,smudge"]),
    ("decode", ["nvjpeg", "", None]),
    ("stain_norm", ["reinhard", "", None]),
]
GOOD = {
    "stride_px": [None, 1, 50],
    "threshold": [None, 0.0, 1.0],
    "smooth_um": [None, 0.0, 400.0],
    "aggregator": ["auto", "none"],
    "mpp": [None, 0.01, 100.0],
    "backend": ["auto", "openslide", "tiffslide", "image"],
    "device": ["auto", "cpu", "cuda", "cuda:1", "mps"],
    "batch_size": [1],
    "workers": [0],
    "torch_threads": [None, 1, 64],
    "min_tissue": [0.0, 1.0],
    "tissue_mpp": [0.5, 64.0],
    "min_region_um2": [0.0],
    "min_hole_um2": [0.0],
    "simplify_um": [0.0],
    "outline": ["smooth", "cells"],
    "qc": ["none", "all", "ink,fold"],
    "decode": ["auto", "pillow", "torch"],
    "stain_norm": ["auto", "none"],
}


def test_every_checked_field_is_listed() -> None:
    assert {name for name, _ in BAD} == {f.name for f in fields(Params)} - {"force_rgb"}


@pytest.mark.parametrize(
    ("name", "value"), [(name, v) for name, values in BAD for v in values], ids=repr
)
def test_bad_value_is_a_usage_error_naming_the_field(name: str, value: object) -> None:
    with pytest.raises(UsageError, match=f"^{name}="):
        Params(**{name: value}).validate()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "value"), [(name, v) for name, values in GOOD.items() for v in values], ids=repr
)
def test_edge_values_are_accepted(name: str, value: object) -> None:
    Params(**{name: value}).validate()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--tissue-mpp", "0"), ("--min-tissue", "2"), ("--smooth-um", "-1"), ("--mpp", "0")],
)
def test_cli_reports_the_flag(
    flag: str, value: str, tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """The library names the field (``tissue_mpp=0``); the CLI says the flag."""
    rc = main(["run", "x.tiff", "--out", str(tmp_path), flag, value])
    err = capsys.readouterr().err
    assert rc == 2 and f"{flag} {value}" in err and "_" not in err.split(":")[-1], err
