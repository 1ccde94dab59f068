"""The viewer's QC layer: the areas the QC stage found, coloured by kind, over the slide page.

OUT is made by ``idcmap run`` with the bundled model on ``examples/8955.tiff`` three ways:
``inked`` (a blue ink stroke painted over its tissue, run with ``--qc all``), ``folded`` (a
fold painted over its tissue, ``--qc all``), ``allink`` (a crop of it drowned in ink, ``--qc
all``: no tissue left) and ``clean`` (no ``--qc``). Browser
tests skip when no Chromium is installed (``.ci/install-browser.sh`` installs it).
"""

from __future__ import annotations

import http.client
import io
import json
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image

from idcmap.cli.main import main as idcmap_main
from idcmap.output.export import ARTEFACT_COLORS
from idcmap.train.artefacts import paint_fold, paint_ink
from idcmap.train.data import read_level0
from idcmap.viewer.server import ViewerServer, make_server

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "8955.tiff"
sys.path.insert(0, str(Path(__file__).parent))
from browser import Browser, find_chromium  # noqa: E402
from tiffgen import write_pyramid_tiff  # noqa: E402


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("viewqc")
    rgb = read_level0(EXAMPLE)
    inked, _, _ = paint_ink(
        rgb, 4.0, np.random.default_rng(0), colour="blue", shape="stroke", width_mm=0.8, alpha=0.7
    )
    write_pyramid_tiff(base / "inked.tiff", inked, 4.0, (1, 4))
    folded, _, _ = paint_fold(rgb, 4.0, np.random.default_rng(0), width_mm=1.0, factor=2.0)
    write_pyramid_tiff(base / "folded.tiff", folded, 4.0, (1, 4))
    crop = rgb[:600, :700].astype(np.float32)
    drowned = (crop * (0.25 + 0.75 * np.asarray([30, 60, 160]) / 255)).astype(np.uint8)
    write_pyramid_tiff(base / "allink.tiff", drowned, 4.0, (1, 4))
    shutil.copy(EXAMPLE, base / "clean.tiff")
    out = base / "out"
    qc = [str(base / f"{s}.tiff") for s in ("inked", "folded", "allink")] + ["--qc", "all"]
    assert idcmap_main(["run", *qc, "-o", str(out), "-q"]) == 0
    clean = [str(base / "clean.tiff"), "--qc", "none"]  # a slide QC did not run on
    assert idcmap_main(["run", *clean, "-o", str(out), "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def server(out_dir: Path) -> Iterator[ViewerServer]:
    srv = make_server(out_dir, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    exe = find_chromium()
    if exe is None:
        pytest.skip(
            "no Chromium found (install it with .ci/install-browser.sh or apt-get install chromium)"
        )
    with Browser(exe, 1400, 900) as b:
        yield b


def api(srv: ViewerServer, slide: str) -> dict:
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=30)
    try:
        conn.request("GET", f"/api/slides/{slide}")
        resp = conn.getresponse()
        assert resp.status == 200
        return json.loads(resp.read())
    finally:
        conn.close()


def open_page(browser: Browser, srv: ViewerServer, slide: str) -> None:
    browser.goto(srv.url + "view/" + slide)
    browser.wait_for("window.idcmap && window.idcmap.ready()", 60)
    browser.evaluate("new Promise(r => setTimeout(r, 300))")


def viewer_area(png: bytes) -> np.ndarray:
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    return img[:, : img.shape[1] - 345].astype(np.int16)


def test_api_gives_the_artefact_layers_and_keeps_them_out_of_the_regions(
    server: ViewerServer, out_dir: Path
) -> None:
    d = api(server, "inked")
    summary = json.loads((out_dir / "inked" / "summary.json").read_text())
    # the GeoJSON holds the IDC region and the Ink annotations; only the former are regions
    gj = json.loads((out_dir / "inked" / "inked.geojson").read_text())
    classes = [f["properties"]["classification"]["name"] for f in gj["features"]]
    assert classes.count("IDC") == summary["regions"] == len(d["regions"]) == 1
    assert classes.count("Ink") >= 1
    assert [r["name"] for r in d["regions"]] == ["IDC 1"]
    # the region says how much of it lies under the ink, as summary.json does
    share = summary["measurements"]["regions"][0]["artefact_pct_of_area"]["ink"]
    assert d["regions"][0]["measurements"]["Ink % of area"] == pytest.approx(share, abs=0.01)
    qc = d["qc"]
    assert qc["review"] is True and any("ink" in r for r in qc["reasons"])
    assert [layer["kind"] for layer in qc["layers"]] == ["ink"]
    ink = qc["layers"][0]
    assert ink["name"] == "Ink" and ink["color"] == list(ARTEFACT_COLORS["ink"])
    assert ink["excluded"] is True and ink["count"] == classes.count("Ink")
    assert ink["area_mm2"] == pytest.approx(summary["qc"]["excluded_mm2"]["ink"])
    # the stroke lies over tissue: the legend says it stays tissue, with the areas
    over = summary["qc"]["ink"]["over_tissue_mm2"]
    assert over > 0 and f"over tissue {over:.2f} mm² kept" in ink["note"]
    # no QC: no layer, and the page says so
    assert api(server, "clean")["qc"] is None


def test_a_fold_layer_is_kept_and_says_how_it_was_read(server: ViewerServer, out_dir: Path) -> None:
    qc = api(server, "folded")["qc"]
    summary = json.loads((out_dir / "folded" / "summary.json").read_text())
    assert [layer["kind"] for layer in qc["layers"]] == ["fold"]
    fold = qc["layers"][0]
    assert fold["name"] == "Fold" and fold["color"] == list(ARTEFACT_COLORS["fold"])
    assert fold["excluded"] is False
    assert fold["area_mm2"] > 0.5
    assert fold["area_mm2"] == pytest.approx(summary["qc"]["excluded_mm2"]["fold"])
    assert "optical density halved" in fold["note"]
    assert qc["review"] is True and any("fold" in r for r in qc["reasons"])


def test_slide_page_legend_says_a_fold_is_kept_and_un_folded(
    server: ViewerServer, browser: Browser
) -> None:
    open_page(browser, server, "folded")
    legend = browser.evaluate(
        "Array.from(document.querySelectorAll('#qc-legend li'))"
        ".map(li => [li.dataset.kind, li.innerText])"
    )
    assert [k for k, _ in legend] == ["fold"], legend
    assert "Fold" in legend[0][1] and "optical density halved" in legend[0][1], legend
    assert "removed from the tissue" not in legend[0][1]


def test_slide_page_shows_the_ink_layer_in_its_colour(
    server: ViewerServer, browser: Browser, tmp_path: Path
) -> None:
    d = api(server, "inked")
    open_page(browser, server, "inked")
    paths = browser.evaluate(
        "Array.from(document.querySelectorAll('svg.artefacts path'))"
        ".map(p => [p.dataset.kind, getComputedStyle(p).fill, getComputedStyle(p).stroke])"
    )
    r, g, b = ARTEFACT_COLORS["ink"]
    assert paths == [["ink", f"rgba({r}, {g}, {b}, 0.35)", f"rgb({r}, {g}, {b})"]]
    legend = browser.evaluate(
        "Array.from(document.querySelectorAll('#qc-legend li'))"
        ".map(li => [li.dataset.kind, li.innerText, getComputedStyle(li.querySelector"
        "('.swatch')).borderTopColor])"
    )
    assert len(legend) == 1 and legend[0][0] == "ink" and legend[0][2] == f"rgb({r}, {g}, {b})"
    assert "Ink" in legend[0][1] and "over tissue" in legend[0][1] and "kept" in legend[0][1]
    assert "Review:" in browser.evaluate("document.getElementById('side').innerText")
    # the layer lies over the ink: the screen changes there when it is switched off (key q),
    # and its outline is drawn where the GeoJSON's polygon is
    polys = [shapely.Polygon(p[0], p[1:]) for p in d["qc"]["layers"][0]["polygons"]]
    inside = max(polys, key=lambda p: p.area).representative_point()
    x, y = browser.evaluate(f"window.idcmap.pixel({inside.x}, {inside.y})")
    on = viewer_area(browser.screenshot(tmp_path / "qc-on.png"))
    browser.press("q")
    assert browser.evaluate("document.getElementById('qc-on').checked") is False
    assert (
        browser.evaluate("getComputedStyle(document.querySelector('svg.artefacts')).display")
        == "none"
    )
    browser.evaluate("new Promise(r => setTimeout(r, 300))")
    off = viewer_area(browser.screenshot(tmp_path / "qc-off.png"))
    box = (slice(int(y) - 3, int(y) + 4), slice(int(x) - 3, int(x) + 4))
    diff = (on[box] - off[box]).mean(axis=(0, 1))
    assert np.abs(diff).sum() > 10, diff
    # the overlay tints towards the ink colour: blue up relative to red
    assert diff[2] - diff[0] > 0, diff
    browser.press("q")
    assert (
        browser.evaluate("getComputedStyle(document.querySelector('svg.artefacts')).display")
        != "none"
    )
    # the overlay sits in the slide's frame: its box is the polygons' box on screen
    box_px = browser.evaluate(
        "(() => { const b = document.querySelector('svg.artefacts path').getBoundingClientRect();"
        " return [b.left, b.top, b.right, b.bottom]; })()"
    )
    x0, y0, x1, y1 = shapely.MultiPolygon(polys).bounds
    want = browser.evaluate(
        f"[...window.idcmap.pixel({x0}, {y0}), ...window.idcmap.pixel({x1}, {y1})]"
    )
    assert max(abs(a - w) for a, w in zip(box_px, want, strict=True)) < 2.5, (box_px, want)
    # last (it zooms to the region): a click on the region row shows its share under the ink
    browser.evaluate("document.querySelector('#regions tbody tr').click()")
    text = browser.wait_for(
        "(m => m.classList.contains('hint') ? '' : m.innerText)(document.getElementById('measure'))"
    )
    assert "IDC 1" in text and "Ink % of area" in text, text
    assert browser.js_errors() == []


def test_slide_page_without_qc_has_no_layer(server: ViewerServer, browser: Browser) -> None:
    open_page(browser, server, "clean")
    assert browser.evaluate("document.querySelectorAll('svg.artefacts').length") == 0
    assert browser.evaluate("document.getElementById('qc-control').offsetParent") is None
    assert browser.evaluate("document.querySelectorAll('#qc-legend li').length") == 0
    assert "QC did not run" in browser.evaluate("document.getElementById('qc-note').innerText")
    browser.press("q")  # nothing to switch: no error
    assert browser.evaluate("document.querySelectorAll('svg.regions text').length") == 1
    assert browser.js_errors() == []


def test_slide_page_of_an_all_ink_slide(server: ViewerServer, browser: Browser) -> None:
    """Nothing left after QC: no regions, the ink layer and the reason, no error."""
    d = api(server, "allink")
    assert d["regions"] == [] and [la["kind"] for la in d["qc"]["layers"]] == ["ink"]
    open_page(browser, server, "allink")
    assert browser.evaluate("document.querySelectorAll('svg.artefacts path').length") == 1
    side = browser.evaluate("document.getElementById('side').innerText")
    assert "no tissue left after QC" in side and "No IDC regions" in side
    assert browser.js_errors() == []
