"""A slide's front (its tissue and QC artefact masks) computed apart from the rest of the
pipeline: in this process (:func:`compute_front`), or as ``idcmap run`` computes its first
slide's, in a forked process while torch loads (:class:`idcmap.batch.ahead.FrontAhead`).

Real slides written with tifffile, the bundled model (its glass gain, tissue and QC stages as
shipped) and a real ``idcmap run`` process.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiffgen import synthetic_he, write_jpeg_tiff, write_pyramid_tiff

from idcmap.batch import ahead
from idcmap.cli.main import main
from idcmap.errors import UsageError
from idcmap.model.runtime import IDCModel, load_model
from idcmap.params import Params
from idcmap.pipeline.front import compute_front
from idcmap.pipeline.result import SlideResult
from idcmap.pipeline.segment import segment_slide

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def inked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A crop of the example mosaic with a blue marker stroke over tissue and glass."""
    from idcmap.train.artefacts import paint
    from idcmap.train.data import read_level0

    crop = read_level0(ROOT / "examples" / "8955.tiff")[:900, :1100]
    img = paint(crop, 4.0, ["ink"], seed=1, shape="stroke", colour="blue", where="tissue").rgb
    return write_pyramid_tiff(tmp_path_factory.mktemp("front") / "inked.tiff", img, 4.0, (1, 4))


@pytest.fixture(scope="module")
def model() -> IDCModel:
    return load_model(device="cpu")


def _same_result(a: SlideResult, b: SlideResult) -> None:
    assert np.array_equal(a.heatmap.prob, b.heatmap.prob, equal_nan=True)
    assert np.array_equal(a.mask, b.mask)
    assert [r.polygon.wkb for r in a.regions] == [r.polygon.wkb for r in b.regions]
    sa, sb = a.summary.to_json(), b.summary.to_json()
    sa.pop("timings_s"), sb.pop("timings_s")
    assert sa == sb


def test_a_front_computed_apart_gives_the_same_result(inked: Path, model: IDCModel) -> None:
    """The ink found, measured and taken off the tiles, the tissue and the verdict: the same
    whether the front came from :func:`compute_front` or from ``segment_slide`` itself."""
    params = Params(qc="all")
    front = compute_front(inked, params, model.config)
    assert front is not None and front.qc_masks is not None
    assert front.qc_masks.masks["ink"].any() and front.qc_masks.ink is not None
    given = segment_slide(inked, model=model, params=params, progress=False, front=front)
    own = segment_slide(inked, model=model, params=params, progress=False)
    _same_result(given, own)
    t = given.summary["timings_s"]
    assert t["front_ahead"] == pytest.approx(sum(front.seconds.values()), abs=1e-3)
    assert "front_ahead" not in own.summary["timings_s"]


def test_a_front_of_another_slide_or_other_settings_is_refused(
    inked: Path, model: IDCModel
) -> None:
    front = compute_front(inked, Params(qc="all"), model.config)
    with pytest.raises(UsageError, match="another slide or other settings"):
        segment_slide(inked, model=model, params=Params(qc="none"), progress=False, front=front)
    other = inked.with_name("copy.tiff")
    other.write_bytes(inked.read_bytes())
    with pytest.raises(UsageError, match="another slide or other settings"):
        segment_slide(other, model=model, params=Params(qc="all"), progress=False, front=front)


def test_no_front_where_the_tissue_comes_from_the_tile_pass(
    tmp_path: Path, model: IDCModel
) -> None:
    """A slide whose tissue read would decode what the tile pass decodes (its only level at
    0.5 µm/px, both decoded at 1/8): the tissue is drawn from the tile pass's own blocks, so
    nothing can be computed before the model (unless a glass gain needs the thumbnail first,
    as the bundled model's does)."""
    img = np.kron(synthetic_he(128, 160, seed=3), np.ones((8, 8, 1), np.uint8))
    path = write_jpeg_tiff(tmp_path / "one.tiff", img, mpp=0.5)
    assert compute_front(path, Params(stain_norm="none"), model.config) is None
    assert compute_front(path, Params(), model.config) is not None


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_a_failing_front_is_nothing_the_slide_is_run_as_usual(tmp_path: Path) -> None:
    """The forked process sends None for any error; the runner then runs the slide in its own
    process, which reports the error as ever."""
    bad = tmp_path / "bad.tiff"
    bad.write_bytes(b"II*\x00 not a tiff")
    recv, send = multiprocessing.Pipe(duplex=False)
    ahead.serve(send, [str(bad)], Params(), load_model(device="cpu").config)
    assert recv.recv() is None


def test_no_process_is_forked_once_torch_is_loaded(inked: Path) -> None:
    """In a process that has imported torch (this one) ``FrontAhead.start`` starts nothing:
    forking one with threads running is not safe, and the import it overlaps is over."""
    assert "torch" in sys.modules
    assert ahead.FrontAhead.start([inked], Params(), None, inked.parent, overwrite=True) is None


def test_idcmap_run_computes_the_fronts_in_a_second_process(inked: Path, tmp_path: Path) -> None:
    """A real ``idcmap run`` process (torch not yet loaded: the fronts are computed in a
    forked process, one slide ahead) writes what a run in this process (no fork) writes; a bad
    slide between two good ones gets its one line, the next one its front, the run its exit
    code."""
    bad = tmp_path / "bad.tiff"
    bad.write_bytes(b"II*\x00 not a tiff")
    again = tmp_path / "again.tiff"
    again.write_bytes(inked.read_bytes())
    forked, here = tmp_path / "forked", tmp_path / "here"
    slides = [str(inked), str(bad), str(again)]
    cmd = [sys.executable, "-m", "idcmap", "run", *slides, "--out", str(forked)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "✗" in done.stdout and "bad.tiff" in done.stdout
    assert main(["run", str(inked), "--out", str(here), "-q"]) == 0
    a, b = (json.loads((d / "inked" / "summary.json").read_text()) for d in (forked, here))
    assert "front_ahead" in a["timings_s"] and "front_ahead" not in b["timings_s"]
    c = json.loads((forked / "again" / "summary.json").read_text())
    assert "front_ahead" in c["timings_s"] and c["regions"] == a["regions"]
    assert a["idc_area_mm2"] == b["idc_area_mm2"] and a["qc"] == b["qc"]
    assert a["tissue_area_mm2"] == b["tissue_area_mm2"] and a["regions"] == b["regions"]
    za, zb = (np.load(d / "inked" / "heatmap.npz") for d in (forked, here))
    for k in za.files:  # (one torch thread beside the readers: equal to float32 rounding)
        assert np.allclose(za[k], zb[k], rtol=0, atol=1e-5, equal_nan=True), k
    assert (forked / "inked" / "mask.png").read_bytes() == (
        here / "inked" / "mask.png"
    ).read_bytes()


_TAKE_IN_ORDER = """
import sys
from idcmap.batch.ahead import FrontAhead
from idcmap.model.modelfile import bundled_model_path, read_config
from idcmap.params import Params

a, b, c, out = sys.argv[1:]
params, config = Params(), read_config(bundled_model_path())
ahead = FrontAhead.start([a, b, c], params, None, out, overwrite=False)
assert ahead is not None, "no process started"
with ahead:
    later = ahead.take(c, params, config)  # a's and b's fronts, not taken, are dropped
    print(later is not None and later.key.startswith('["' + c), ahead.take(a, params, config))
"""


def test_a_front_taken_out_of_order_drops_those_before_it(inked: Path, tmp_path: Path) -> None:
    """In a fresh process (no torch: the process is forked), the run taking a later slide
    first (the ones before were done or busy) gets its front; the dropped ones are gone."""
    copies = []
    for name in ("a", "b", "c"):
        copies.append(tmp_path / f"{name}.tiff")
        copies[-1].write_bytes(inked.read_bytes())
    cmd = [sys.executable, "-c", _TAKE_IN_ORDER, *map(str, copies), str(tmp_path / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "None"]
