"""``idcmap view``: the server over plain HTTP, and the pages in a real headless Chromium.

The output folder is made by ``idcmap run`` with the bundled model on ``examples/8955.tiff`` (a
real IDC mosaic) twice: once as ``8955`` and once as ``moved``, whose slide file is then moved
away. Browser tests skip when no Chromium is installed (``.ci/install-browser.sh`` installs it).
Screenshots go to ``$IDCMAP_SCREENSHOTS`` when set (to look at them), else to a temporary folder.
"""

from __future__ import annotations

import dataclasses
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from idcmap.cli.main import main as idcmap_main
from idcmap.io.open import open_slide
from idcmap.viewer.imaging import OVERLAY_STOPS, SlideCache, _BoundsGeometry, overlay_png
from idcmap.viewer.server import ViewerServer, make_server

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "8955.tiff"
sys.path.insert(0, str(Path(__file__).parent))
from browser import Browser, find_chromium  # noqa: E402
from tiffgen import GLASS_RGB, synthetic_he, write_jpeg_tiff, write_pyramid_tiff  # noqa: E402

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT with two finished slides (8955, moved: its slide file moved away after the run), a
    symlinked folder and a symlinked summary that both lead out of OUT."""
    base = tmp_path_factory.mktemp("view")
    slides = base / "slides"
    slides.mkdir()
    shutil.copy(EXAMPLE, slides / "8955.tiff")
    shutil.copy(EXAMPLE, slides / "moved.tiff")
    out = base / "out"
    rc = idcmap_main(
        ["run", str(slides / "8955.tiff"), str(slides / "moved.tiff"), "-o", str(out), "-q"]
    )
    assert rc == 0
    (slides / "moved.tiff").rename(base / "elsewhere.tiff")
    # as the grading measurements will write them: per region in the GeoJSON, per slide in
    # summary.json; and a cohort table with a failed slide
    measured = out / "measured"
    shutil.copytree(out / "8955", measured)
    (measured / "8955.geojson").rename(measured / "measured.geojson")
    gj = json.loads((measured / "measured.geojson").read_text())
    gj["features"][0]["properties"]["measurements"]["Greatest dimension mm"] = 3.21
    (measured / "measured.geojson").write_text(json.dumps(gj))
    summary = json.loads((measured / "summary.json").read_text())
    summary["measurements"] = {"foci": 1, "largest_focus_greatest_dimension_mm": 3.21}
    summary["qc"] = {"review": True, "reasons": ["35 % of the tissue excluded (ink)"]}
    (measured / "summary.json").write_text(json.dumps(summary))
    (out / "cohort.csv").write_text(
        "slide,path,status,reason,output\n"
        f"8955,{slides / '8955.tiff'},done,,{out / '8955'}\n"
        "corrupt,/data/corrupt.svs,failed,corrupt.svs: not a slide (bad magic),\n"
    )
    # a slide file that is broken, and one that is another picture than the one analysed
    for name, slide in (("broken", base / "broken.tiff"), ("changed", base / "other.tiff")):
        shutil.copytree(out / "8955", out / name)
        (out / name / "8955.geojson").rename(out / name / f"{name}.geojson")
        summary = json.loads((out / name / "summary.json").read_text())
        summary["slide"]["path"] = str(slide)
        (out / name / "summary.json").write_text(json.dumps(summary))
    (base / "broken.tiff").write_bytes(b"II*\x00" + bytes(range(256)) * 64)
    write_pyramid_tiff(base / "other.tiff", synthetic_he(600, 800), 4.0, (1, 4))
    # symlinks that lead out of OUT
    outside = base / "outside"
    shutil.copytree(out / "8955", outside)
    (outside / "secret.txt").write_text("secret")
    (out / "escape").symlink_to(outside, target_is_directory=True)
    linked = out / "linked"
    linked.mkdir()
    (linked / "summary.json").symlink_to(outside / "summary.json")
    (out / "8955" / "secret.txt").symlink_to(outside / "secret.txt")
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


def get(srv: ViewerServer, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    """One request with ``path`` sent exactly as written (no client-side normalisation)."""
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keep = os.environ.get("IDCMAP_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        return Path(keep)
    return tmp_path_factory.mktemp("shots")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    exe = find_chromium()
    if exe is None:
        pytest.skip(
            "no Chromium found (install it with .ci/install-browser.sh or apt-get install chromium)"
        )
    with Browser(exe, 1400, 900) as b:
        yield b


# --------------------------------------------------------------------------- plain HTTP


def test_api_lists_finished_slide_folders_only(server: ViewerServer, out_dir: Path) -> None:
    status, ctype, body = get(server, "/api/slides")
    assert status == 200 and ctype.startswith("application/json")
    rows = {r["id"]: r for r in json.loads(body)["slides"]}
    # not "escape" nor "linked" (symlinks out of OUT); the failed slide from cohort.csv
    assert set(rows) == {"8955", "broken", "changed", "measured", "moved", None}
    assert rows["8955"]["slide_file"] == "ok" and rows["moved"]["slide_file"] == "missing"
    assert rows["8955"]["foci"] == 1 and rows["8955"]["idc_area_mm2"] > 0
    assert 0 < rows["8955"]["idc_percent"] <= 100
    # idcmap run measures: the figure of summary.json's measurements block
    m = json.loads((out_dir / "8955" / "summary.json").read_text())["measurements"]
    assert rows["8955"]["largest_focus_mm"] == m["largest_focus_greatest_dimension_mm"] > 0
    assert rows["measured"]["largest_focus_mm"] == 3.21
    assert rows["measured"]["review"] == "yes" and "ink" in rows["measured"]["review_reasons"]
    assert rows["8955"]["review"] == "no"  # QC ran (the default) and flagged nothing
    assert rows[None]["status"] == "failed" and "bad magic" in rows[None]["reason"]
    status, ctype, body = get(server, "/files/cohort.csv")
    assert status == 200 and ctype.startswith("text/csv") and b"corrupt.svs" in body


def test_slide_details_and_files(server: ViewerServer) -> None:
    status, _, body = get(server, "/api/slides/8955")
    d = json.loads(body)
    assert status == 200 and d["slide_error"] is None
    assert d["deepzoom"]["width"] == 2900 and d["deepzoom"]["height"] == 1950
    assert [r["number"] for r in d["regions"]] == [1]
    assert "Area µm^2" in d["regions"][0]["measurements"]
    assert b"<Image" in get(server, "/slides/8955/slide.dzi")[2]
    status, _, body = get(server, "/slides/8955/files/summary.json")
    assert status == 200 and json.loads(body)["regions"] == 1
    assert get(server, "/slides/8955/files/8955.geojson")[0] == 200
    status, _ctype, body = get(server, "/slides/8955/thumbnail.jpeg")
    assert status == 200 and Image.open(io.BytesIO(body)).size[0] == 256
    assert get(server, "/slides/8955/files/summary.json", "HEAD")[0] == 200
    assert get(server, "/api/slides", "POST")[0] == 405
    assert get(server, "/api/slides", "DELETE")[0] == 405


@pytest.mark.parametrize(
    "path",
    [
        "/../../etc/passwd",
        "/static/../server.py",
        "/static/%2e%2e/server.py",
        "/static/%2E%2E%2Fserver.py",
        "/static/..%2f..%2f..%2fetc%2fpasswd",
        "/static/%252e%252e/server.py",
        "/slides/%2e%2e/files/summary.json",
        "/slides/8955/files/..%2f..%2fslides%2f8955.tiff",
        "/slides/8955/files/%2Fetc%2Fpasswd",
        "//etc/passwd",
        "/static//etc/passwd",
        "/view/%2Fetc%2Fpasswd",
        "/slides/8955/files/secret.txt",  # a symlink out of OUT, and not an output file
        "/slides/escape/files/summary.json",  # a symlinked folder out of OUT
        "/slides/escape/files/secret.txt",
        "/api/slides/escape",
        "/api/slides/linked",  # summary.json symlinked out of OUT
        "/slides/8955/files/8955.tiff",
        "/slides/8955/files/.%2e",
        "/slides/8955%00/files/summary.json",
        "/static/%ff%fe",
        "/api/slides/~root",
    ],
)
def test_traversal_and_symlinks_are_404(server: ViewerServer, path: str) -> None:
    status, _, body = get(server, path)
    assert status == 404, (path, body[:200])
    assert b"secret" not in body and b"root:" not in body and b"Traceback" not in body


@pytest.mark.parametrize(
    "tile",
    [
        "99/0_0.jpeg",
        "12/9_9.jpeg",
        "12/0_99999999.jpeg",
        "-1/0_0.jpeg",
        "12/-1_0.jpeg",
        "12/a_b.jpeg",
        "12/0_0.png",
        "12/0_0",
        "1e3/0_0.jpeg",
        "12/0_0.jpeg/x",
        "9999/0_0.jpeg",
    ],
)
def test_bad_tile_addresses_are_404(server: ViewerServer, tile: str) -> None:
    status, _, body = get(server, f"/slides/8955/tiles/{tile}")
    assert status == 404 and b"Traceback" not in body


@pytest.mark.parametrize("below_top", [0, 1, 2, 3, 5])
def test_tiles_match_openslides_own_deep_zoom(server: ViewerServer, below_top: int) -> None:
    """Same tiles as openslide-python's DeepZoomGenerator over OpenSlide itself (the slide has
    levels 1 and 4: Deep Zoom levels below the top read level 1 and resize)."""
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    with openslide.OpenSlide(str(EXAMPLE)) as osr:
        ref_dz = DeepZoomGenerator(osr, 254, 1, limit_bounds=True)
        level = ref_dz.level_count - 1 - below_top
        cols, rows = ref_dz.level_tiles[level]
        for col, row in {(0, 0), (cols // 2, rows // 2), (cols - 1, rows - 1)}:
            # openslide-python's thumbnail() may drop a pixel of an edge tile to keep the
            # read's aspect ratio; ours has the tile's exact Deep Zoom size
            size = ref_dz.get_tile_dimensions(level, (col, row))
            ref_img = ref_dz.get_tile(level, (col, row)).convert("RGB")
            ref = np.asarray(ref_img.resize(size, Image.Resampling.BILINEAR), dtype=np.int16)
            status, ctype, body = get(server, f"/slides/8955/tiles/{level}/{col}_{row}.jpeg")
            assert status == 200 and ctype == "image/jpeg"
            tile = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), dtype=np.int16)
            assert tile.shape == (size[1], size[0], 3)
            assert np.abs(tile - ref).mean() < 4  # JPEG q85 round trip, box vs Lanczos


def test_tiles_of_a_real_aperio_svs(shared: Path, tmp_path: Path) -> None:
    """A real Aperio slide (OpenSlide test data) through the whole path: run, serve, tiles."""
    svs = shared / "wsi" / "CMU-1-Small-Region.svs"
    out = tmp_path / "out"
    assert idcmap_main(["run", str(svs), "-o", str(out), "-q"]) == 0
    srv = make_server(out, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        d = json.loads(get(srv, "/api/slides/CMU-1-Small-Region")[2])
        assert d["slide_error"] is None and d["mpp"] == pytest.approx(0.499)
        assert (d["deepzoom"]["width"], d["deepzoom"]["height"]) == (2220, 2967)
        top = d["deepzoom"]["max_level"]
        status, _, body = get(srv, f"/slides/CMU-1-Small-Region/tiles/{top}/4_5.jpeg")
        tile = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
        assert status == 200 and tile.shape == (256, 256, 3) and tile.std() > 10  # tissue
        assert get(srv, f"/slides/CMU-1-Small-Region/tiles/{top + 1}/0_0.jpeg")[0] == 404
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def test_moved_slide_reports_and_the_rest_works(server: ViewerServer) -> None:
    d = json.loads(get(server, "/api/slides/moved")[2])
    assert "not there any more" in d["slide_error"] and d["deepzoom"] is None
    assert d["regions"] and d["heatmap"] is not None  # outputs still there
    status, _, body = get(server, "/slides/moved/tiles/12/0_0.jpeg")
    assert status == 404 and b"not there any more" in body
    status, ctype, _ = get(server, "/slides/moved/thumbnail.jpeg")
    assert status == 200 and ctype == "image/png"  # a placeholder that says so
    assert get(server, "/slides/moved/overlay.png")[0] == 200
    assert get(server, "/slides/8955/tiles/12/0_0.jpeg")[0] == 200


@pytest.mark.parametrize(
    ("slide_id", "message"),
    [("broken", "cannot be read"), ("changed", "has changed since the run")],
)
def test_broken_or_changed_slide_reports_and_the_rest_works(
    server: ViewerServer, slide_id: str, message: str
) -> None:
    d = json.loads(get(server, f"/api/slides/{slide_id}")[2])
    assert message in d["slide_error"] and d["deepzoom"] is None and d["regions"]
    status, _, body = get(server, f"/slides/{slide_id}/tiles/12/0_0.jpeg")
    assert status == 404 and message.encode() in body
    status, ctype, _ = get(server, f"/slides/{slide_id}/thumbnail.jpeg")
    assert status == 200 and ctype == "image/png"
    assert get(server, "/slides/8955/tiles/12/0_0.jpeg")[0] == 200


def test_writes_are_refused_and_the_body_is_not_taken_for_a_request(server: ViewerServer) -> None:
    host, port = server.server_address[:2]
    with socket.create_connection((str(host), int(port)), timeout=30) as sock:
        smuggled = b"GET /api/slides HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        sock.sendall(
            b"POST /api/slides HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Content-Length: {len(smuggled)}\r\n\r\n".encode()
            + smuggled
        )
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 405") and b"Allow: GET, HEAD" in reply
    assert reply.count(b"HTTP/1.1 ") == 1  # the body was not answered as a second request


def test_foreign_host_header_is_refused(server: ViewerServer) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 cannot read the slides."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=30)
    conn.request("GET", "/api/slides", headers={"Host": f"evil.example:{port}"})
    assert conn.getresponse().status == 421
    conn.close()


def test_overlay_is_transparent_where_probability_is_low() -> None:
    prob = np.array([[0.0, 0.2, np.nan], [0.5, 0.8, 1.0]], np.float32)
    img = np.asarray(Image.open(io.BytesIO(overlay_png(prob))))
    k = img.shape[0] // 2
    alpha = img[::k, ::k, 3]
    assert alpha[0, 0] == 0 and alpha[0, 1] == 0 and alpha[0, 2] == 0  # low, low, not tissue
    assert 0 < alpha[1, 0] < alpha[1, 1] < alpha[1, 2]
    assert alpha[1, 2] == round(OVERLAY_STOPS[-1][2] * 255)
    smooth = np.asarray(Image.open(io.BytesIO(overlay_png(prob, smooth=True))))
    assert smooth.shape == img.shape
    assert (smooth[..., 3] > 0).sum() <= (img[..., 3] > 0).sum() + k * k  # no colour off tissue
    assert smooth[k:, :k, 3].min() < smooth[k:, :k, 3].max()  # graded, not a block
    tall = Image.open(io.BytesIO(overlay_png(prob, cell_aspect=1.5)))  # mpp_y = 1.5 mpp_x
    assert tall.size == (img.shape[1], round(1.5 * k) * 2)


def test_deep_zoom_frame_is_the_bounds_rectangle() -> None:
    """A slide with a bounds origin (MIRAX-like): Deep Zoom px (0, 0) is level-0 px (bx, by),
    the origin of QuPath's frame and of idcmap's outputs."""
    from openslide.deepzoom import DeepZoomGenerator

    with open_slide(EXAMPLE) as s:
        s.info = dataclasses.replace(s.info, bounds_level0_px=(100, 60, 2000, 1500))
        dz = DeepZoomGenerator(_BoundsGeometry(s), 254, 1, limit_bounds=True)
        w, h = dz.level_dimensions[-1]  # openslide-python scales by a float ratio and rounds
        assert (w - 2000, h - 1500) in ((0, 0), (1, 0), (0, 1), (1, 1))  # up: 1 px spare at most
        loc, level, _ = dz.get_tile_coordinates(dz.level_count - 1, (0, 0))
        assert loc == (100, 60) and level == 0
        loc, _, _ = dz.get_tile_coordinates(dz.level_count - 1, (1, 1))
        assert loc == (100 + 254 - 1, 60 + 254 - 1)


def test_tiles_show_the_colour_the_model_saw(tmp_path: Path) -> None:
    """A 40x-style pyramid (YCbCr 4:2:0 tiles at 1, 4, 16 µm/px) of tissue whose colour changes
    from one 4-µm px to the next (pink and purple columns): a Deep Zoom tile at the model's
    4 µm/px is read by the tile pass's rule (the 1-µm level at 1/4, colour at 4 µm/px) and
    encoded 4:4:4, so it keeps the columns; the 4-µm level the viewer read before has its
    colour at 8 µm/px and blurs them into one mauve. Measured: mean |ΔCb, ΔCr| over tissue
    1.4-1.8 against 11.7 (and 11.7 for this read encoded 4:2:0, Pillow's default)."""
    he = synthetic_he(400, 520, seed=4, tissue=0.6)  # the truth, 4 µm/px
    tissue = np.any(he != GLASS_RGB, axis=2)
    columns = np.where(np.arange(he.shape[1]) % 2 == 0, 1, 0)[None, :, None]
    he = np.where(tissue[..., None], np.where(columns, (235, 160, 200), (150, 110, 190)), he)
    he = he.astype(np.uint8)
    big = np.kron(he, np.ones((4, 4, 1), np.uint8))
    path = write_jpeg_tiff(
        tmp_path / "p420.tiff", big, subsampling=2, downsamples=(1, 4, 16), mpp=1.0, tile=256
    )

    def chroma(rgb: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(rgb).convert("YCbCr"), np.float64)[..., 1:]

    cache = SlideCache()
    try:
        entry = cache.get("p420", path, {})
        dz = entry.dz
        assert dz is not None and entry.error is None
        level = dz.level_count - 1 - 2  # 4 level-0 px per Deep Zoom px: 4 µm/px
        for col, row in ((0, 0), (1, 1)):
            x0, y0 = col * 254 - (col > 0), row * 254 - (row > 0)
            tile = np.asarray(Image.open(io.BytesIO(entry.tile_jpeg(level, col, row))))
            h, w = tile.shape[:2]
            want = he[y0 : y0 + h, x0 : x0 + w]
            with open_slide(path) as s:  # the level the viewer read before, same JPEG
                old = s.read_region((x0 * 4, y0 * 4), 1, (w, h))
            buf = io.BytesIO()
            Image.fromarray(old).save(buf, format="JPEG", quality=85, subsampling=0)
            old = np.asarray(Image.open(buf))
            t = tissue[y0 : y0 + h, x0 : x0 + w]
            err_new = np.abs(chroma(tile) - chroma(want))[t].mean()
            err_old = np.abs(chroma(old) - chroma(want))[t].mean()
            assert err_new < 0.3 * err_old, (col, row, err_new, err_old)
    finally:
        cache.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_serves_on_a_free_port_and_stops_on_a_signal(out_dir: Path, sig: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "idcmap.viewer", str(out_dir), "--port", "0", "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        # a suite started in the background by a non-interactive shell ignores SIGINT: not so
        # the viewer a user runs
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/api/slides")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "stopped" in err
    assert "Traceback" not in err


def test_cli_missing_folder_is_one_line(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "idcmap.viewer", str(tmp_path / "nope"), "--no-browser"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert r.returncode == 2 and "no such folder; pass the --out folder" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- in Chromium


def _viewer_area(png: bytes) -> np.ndarray:
    """RGB of the OpenSeadragon area of a slide-page screenshot (left of the side panel)."""
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    return img[:, : img.shape[1] - 345]


def test_batch_page_lists_and_sorts(server: ViewerServer, browser: Browser, shots: Path) -> None:
    browser.goto(server.url)
    browser.wait_for("document.body.dataset.ready === '1'")
    browser.wait_for("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    names = browser.evaluate(
        "Array.from(document.querySelectorAll('#slides tbody tr')).map(r => r.dataset.id)"
    )
    assert sorted(names) == ["", "8955", "broken", "changed", "measured", "moved"]
    table = browser.evaluate("document.querySelector('#slides').innerText")
    assert "slide file missing" in table and "failed" in table and "3.2" in table
    flagged = browser.evaluate(
        "Array.from(document.querySelectorAll('#slides td.review')).map(td => td.title)"
    )
    assert flagged == ["35 % of the tissue excluded (ink)"]
    browser.screenshot(shots / "batch.png")
    # sort by IDC area: largest first, then the other way
    browser.evaluate("document.querySelector('th[data-key=idc_area_mm2] button').click()")
    sort = browser.evaluate(
        "document.querySelector('th[data-key=idc_area_mm2]').getAttribute('aria-sort')"
    )
    assert sort == "descending"
    areas = browser.evaluate(
        "Array.from(document.querySelectorAll('#slides tbody tr td:nth-child(4)'))"
        ".map(td => td.textContent)"
    )
    assert areas[-1] == "—" and float(areas[0]) >= float(areas[1])  # unknown last
    assert browser.js_errors() == []


def test_slide_page_tiles_overlay_regions(
    server: ViewerServer, browser: Browser, shots: Path
) -> None:
    browser.goto(server.url + "view/8955")
    browser.wait_for("window.idcmap && window.idcmap.ready()", 60)
    browser.evaluate("new Promise(r => setTimeout(r, 300))")
    on = browser.screenshot(shots / "slide-overlay-on.png")
    browser.evaluate("document.getElementById('heat-on').click()")
    browser.wait_for("window.idcmap.state.heat.getOpacity() === 0")
    browser.wait_for("window.idcmap.ready()")
    browser.evaluate("new Promise(r => setTimeout(r, 300))")
    off = browser.screenshot(shots / "slide-overlay-off.png")
    a_on, a_off = _viewer_area(on).astype(np.int16), _viewer_area(off).astype(np.int16)
    # tissue drawn: H&E pink/purple pixels (not white, not the grey background) over the slide
    sat = a_off.max(axis=2) - a_off.min(axis=2)
    assert (sat > 40).mean() > 0.05, "no tissue visible: tiles not drawn"
    # the overlay changes what is seen over the IDC region, and only a little elsewhere
    x0, y0 = browser.evaluate("window.idcmap.pixel(1300, 700)")
    x1, y1 = browser.evaluate("window.idcmap.pixel(1600, 1000)")
    box = (slice(int(y0), int(y1)), slice(int(x0), int(x1)))
    assert np.abs(a_on[box] - a_off[box]).mean() > 15
    # the outlines' frame is the tiles' frame (level-0 px of QuPath's frame = Deep Zoom px)
    # and the heatmap covers its grid: compare with OpenSeadragon's own image transform
    drift = browser.evaluate(
        """(() => {
          const s = window.idcmap.state, img = s.viewer.world.getItemAt(0);
          const a = window.idcmap.pixel(2900, 1950), r = s.viewer.element.getBoundingClientRect();
          const b = img.imageToViewerElementCoordinates(new OpenSeadragon.Point(2900, 1950));
          const h = s.heat.getBounds(), w = s.width;
          return [Math.abs(a[0] - r.left - b.x), Math.abs(a[1] - r.top - b.y),
                  Math.abs(h.width * w - 58 * 50), Math.abs(h.height * w - 39 * 50)];
        })()"""
    )
    assert max(drift) < 0.5, drift
    # regions numbered like the GeoJSON; a click on one shows its measurements
    assert browser.evaluate(
        "Array.from(document.querySelectorAll('svg.regions text')).map(t => t.textContent)"
    ) == ["1"]
    browser.click(*browser.evaluate("window.idcmap.pixel(1450, 850)"))
    text = browser.wait_for(
        "(m => m.classList.contains('hint') ? '' : m.innerText)(document.getElementById('measure'))"
    )
    assert "Area µm^2" in text and "IDC 1" in text
    assert "mm" in browser.evaluate("document.getElementById('scale-label').textContent")
    browser.evaluate("new Promise(r => setTimeout(r, 300))")
    browser.screenshot(shots / "slide-selected.png")
    # keys: r must not rotate the slide under the unrotated outlines; h and o switch layers
    browser.press("r")
    browser.evaluate("new Promise(r => setTimeout(r, 700))")
    assert browser.evaluate("window.idcmap.state.viewer.viewport.getRotation()") == 0
    browser.press("h")
    assert browser.evaluate("document.getElementById('heat-on').checked") is True
    browser.press("o")
    assert (
        browser.evaluate("getComputedStyle(document.querySelector('svg.regions')).display")
        == "none"
    )
    assert browser.js_errors() == []


def test_slide_page_of_a_moved_slide_says_so(
    server: ViewerServer, browser: Browser, shots: Path
) -> None:
    browser.goto(server.url + "view/moved")
    browser.wait_for("window.idcmap && window.idcmap.ready()", 60)
    banner = browser.evaluate(
        "(b => b.hidden ? '' : b.innerText)(document.getElementById('banner'))"
    )
    assert "not there any more" in banner
    assert browser.evaluate("document.querySelectorAll('svg.regions text').length") == 1
    browser.evaluate("new Promise(r => setTimeout(r, 300))")
    browser.screenshot(shots / "slide-moved.png")
    assert browser.js_errors() == []


def test_cli_busy_port_is_one_line_in_flags(server: ViewerServer, out_dir: Path) -> None:
    port = str(server.server_address[1])
    r = subprocess.run(
        [sys.executable, "-m", "idcmap.viewer", str(out_dir), "--port", port, "--no-browser"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert r.returncode == 2 and "pass another --port (--port 0: any free port)" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_slide_that_vanishes_while_viewed_says_so(
    server: ViewerServer, out_dir: Path, browser: Browser, shots: Path
) -> None:
    slide = out_dir.parent / "vanish.tiff"
    shutil.copy(EXAMPLE, slide)
    shutil.copytree(out_dir / "8955", out_dir / "vanish")
    (out_dir / "vanish" / "8955.geojson").rename(out_dir / "vanish" / "vanish.geojson")
    summary = json.loads((out_dir / "vanish" / "summary.json").read_text())
    summary["slide"]["path"] = str(slide)
    (out_dir / "vanish" / "summary.json").write_text(json.dumps(summary))
    browser.goto(server.url + "view/vanish")
    browser.wait_for("window.idcmap && window.idcmap.ready()", 60)
    assert browser.evaluate("document.getElementById('banner').hidden") is True
    slide.rename(out_dir.parent / "vanished.tiff")
    # zoom in: new tiles are asked for, fail, and the page asks the server why
    browser.evaluate(
        "window.idcmap.state.viewer.viewport.zoomTo(8, new OpenSeadragon.Point(0.3, 0.2), true); 0"
    )
    text = browser.wait_for(
        "(b => b.hidden ? '' : b.innerText)(document.getElementById('banner'))", 30
    )
    assert "not there any more" in text
    browser.screenshot(shots / "slide-vanished.png")


def test_download_named_symlinks_out_of_out_are_404(out_dir: Path, tmp_path: Path) -> None:
    """A file with a download's name (heatmap.png, mask.png, heatmap.npz, the GeoJSON,
    summary.json) that is a symlink leading out of OUT is not served, though its name is
    allowed; the same files as real files or as symlinks within OUT are. Hidden folders (a
    run's temporary output, an old one moved aside) are not slides."""
    out = tmp_path / "out"
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = b"\x89PNG\r\n\x1a\n secret outside OUT"
    for name in ("heatmap.png", "mask.png", "heatmap.npz", "leaky.geojson"):
        (outside / name).write_bytes(secret)
    summary = json.loads((out_dir / "8955" / "summary.json").read_text())
    (outside / "summary.json").write_text(json.dumps({**summary, "note": "secret"}))
    leaky = out / "leaky"
    shutil.copytree(out_dir / "8955", leaky)
    (leaky / "8955.geojson").rename(leaky / "leaky.geojson")
    for name in ("heatmap.png", "mask.png", "heatmap.npz", "leaky.geojson"):
        (leaky / name).unlink()
        (leaky / name).symlink_to(outside / name)
    # summary.json a symlink out of OUT: the folder itself is not served
    linked = out / "linked"
    shutil.copytree(out_dir / "8955", linked)
    (linked / "summary.json").unlink()
    (linked / "summary.json").symlink_to(outside / "summary.json")
    # a symlink that stays inside OUT is fine
    inner = out / "inner"
    shutil.copytree(out_dir / "8955", inner)
    (inner / "8955.geojson").rename(inner / "inner.geojson")
    (inner / "heatmap.png").unlink()
    (inner / "heatmap.png").symlink_to(out / "8955-copy.png")
    shutil.copy(out_dir / "8955" / "heatmap.png", out / "8955-copy.png")
    # a run's temporary folder and an output moved aside by --overwrite: not (yet) slides
    shutil.copytree(out_dir / "8955", out / ".s.tmp-123-abcd1234")
    shutil.copytree(out_dir / "8955", out / ".s.old-123-abcd1234")
    srv = make_server(out, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        rows = json.loads(get(srv, "/api/slides")[2])["slides"]
        assert {r["id"] for r in rows} == {"leaky", "inner"}
        for hidden in (".s.tmp-123-abcd1234", ".s.old-123-abcd1234"):
            assert get(srv, f"/api/slides/{hidden}")[0] == 404
            assert get(srv, f"/slides/{hidden}/files/summary.json")[0] == 404
        for name in ("heatmap.png", "mask.png", "heatmap.npz", "leaky.geojson"):
            for method in ("GET", "HEAD"):
                status, _, body = get(srv, f"/slides/leaky/files/{name}", method)
                assert status == 404 and b"secret" not in body, (name, method, status)
        assert get(srv, "/slides/leaky/files/summary.json")[0] == 200  # a real file
        for path in ("/slides/linked/files/summary.json", "/api/slides/linked"):
            status, _, body = get(srv, path)
            assert status == 404 and b"secret" not in body, path
        status, ctype, body = get(srv, "/slides/inner/files/heatmap.png")
        assert status == 200 and ctype == "image/png"
        assert body == (out_dir / "8955" / "heatmap.png").read_bytes()
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def test_a_slide_run_by_a_relative_path_is_found_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run records the slide path as given (``s.tiff``, relative to where it started) and
    where it resolved to; a viewer started in another folder finds the file by the latter."""
    from idcmap.viewer.catalog import Catalog

    start, elsewhere = tmp_path / "slides", tmp_path / "elsewhere"
    start.mkdir()
    elsewhere.mkdir()
    write_pyramid_tiff(start / "s.tiff", synthetic_he(600, 800), 4.0, (1, 4))
    out = tmp_path / "deep" / "out"
    monkeypatch.chdir(start)
    assert idcmap_main(["run", "s.tiff", "--out", str(out), "--qc", "none", "-q"]) == 0
    monkeypatch.chdir(elsewhere)
    catalog = Catalog(out)
    sf = catalog.get("s")
    assert sf is not None and sf.slide_path_text == "s.tiff"
    assert catalog.slide_path(sf) == start / "s.tiff"
