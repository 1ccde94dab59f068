"""Remote slides over HTTP (``idcmap.io.remote``): a real Range-honouring HTTP server on
127.0.0.1 (``tests/http_range.py``) serving pyramids written with tifffile, read by tiffslide
through fsspec, and their tiled-JPEG levels by the scaled-IDCT reader over range requests
(``idcmap.io.bytesource``); no Dask (the cluster tests in test_distributed.py read shared
mosaics)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("aiohttp", reason="needs aiohttp for http:// slides (fsspec)")

from http_range import serve
from tiffgen import synthetic_he, write_jpeg_tiff, write_pyramid_tiff

from idcmap.cli.main import main as idcmap_main
from idcmap.errors import SlideError, UsageError
from idcmap.io.bytesource import merge_ranges
from idcmap.io.open import open_slide
from idcmap.io.remote import remote_size
from idcmap.pipeline.tissue import detect_tissue


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bucket")
    img = synthetic_he(1500, 2000, seed=2, tissue=0.6)
    write_pyramid_tiff(d / "he.tiff", img, 0.5, downsamples=(1, 4), tile=256)
    # a 40x-style pyramid: YCbCr 4:2:0 JPEG tiles at 1, 4 and 16 µm/px (the 4-µm level's colour
    # is at 8 µm/px, so the model's read is the 1-µm level at 1/4)
    he4 = synthetic_he(300, 360, seed=5, tissue=0.6)
    big = np.kron(he4, np.ones((4, 4, 1), np.uint8))
    write_jpeg_tiff(d / "p420.tiff", big, subsampling=2, downsamples=(1, 4, 16), mpp=1.0, tile=256)
    (d / "empty.tiff").write_bytes(b"")
    (d / "notes.tiff").write_bytes(b"these are not the pixels you are looking for\n" * 50)
    whole = (d / "he.tiff").read_bytes()
    (d / "cut.tiff").write_bytes(whole[: len(whole) * 3 // 4])  # an upload cut short
    return d


def test_a_remote_slide_reads_like_the_local_file_and_only_what_it_needs(root: Path) -> None:
    with serve(root) as srv:
        url = f"{srv.url}/he.tiff"
        assert remote_size(url) == (root / "he.tiff").stat().st_size
        with open_slide(url) as rs, open_slide(root / "he.tiff", backend="tiffslide") as ls:
            assert rs.info.backend == "tiffslide"
            assert (rs.info.mpp, rs.info.mpp_y) == (ls.info.mpp, ls.info.mpp_y)
            assert rs.info.level_dimensions == ls.info.level_dimensions
            before = srv.bytes_sent["he.tiff"]
            a = rs.read_region((1024, 512), 0, (300, 200))
            b = ls.read_region((1024, 512), 0, (300, 200))
            np.testing.assert_array_equal(a, b)
            got = srv.bytes_sent["he.tiff"] - before
    size = (root / "he.tiff").stat().st_size
    assert 0 < got < size / 4, (got, size)  # ranged reads of a few tiles, not the file


@pytest.mark.parametrize(
    ("name", "error", "words"),
    [
        ("no-such.tiff", SlideError, "not found"),
        ("empty.tiff", SlideError, "is empty"),
        ("notes.tiff", SlideError, "not a TIFF-based slide"),
        ("cut.tiff", SlideError, "damaged or truncated TIFF"),
    ],
)
def test_remote_failures_are_one_line(root: Path, name: str, error: type, words: str) -> None:
    with serve(root) as srv, pytest.raises(error) as e:
        open_slide(f"{srv.url}/{name}").close()
    msg = str(e.value)
    assert words in msg and "\n" not in msg and name in msg


def test_unreachable_host_and_a_local_only_backend(root: Path) -> None:
    with pytest.raises(SlideError, match="cannot be reached"):
        open_slide("http://127.0.0.1:9/refused.tiff")  # port 9 (discard): nothing listens
    with serve(root) as srv:
        for backend in ("openslide", "image"):
            with pytest.raises(UsageError, match="cannot read URLs"):
                open_slide(f"{srv.url}/he.tiff", backend=backend)
        with open_slide(f"{srv.url}/he.tiff", backend="tiffslide") as s:
            assert s.info.backend == "tiffslide"


def test_a_remote_jpeg_pyramid_reads_by_the_same_rule_as_the_local_file(root: Path) -> None:
    """The level/scale choice and the scaled decode work over range requests: the same level,
    scale and reason, the same pixels (tile pass, tissue pass) as the local file, and a block
    of tiles costs a few merged requests, not one per tile."""
    with serve(root) as srv:
        url = f"{srv.url}/p420.tiff"
        with open_slide(url) as rs, open_slide(root / "p420.tiff") as ls:
            assert rs.colour == ls.colour and all(c is not None for c in rs.colour)
            for mpp in (4.0, 16.0):
                rl = rs.read_level_for_mpp(mpp)
                assert rl == ls.read_level_for_mpp(mpp)
            rl = rs.read_level_for_mpp(4.0)
            assert (rl.level, rl.scale, rl.chroma_mpp) == (0, 4, 4.0), rl.reason
            requests, sent = srv.requests["p420.tiff"], srv.bytes_sent["p420.tiff"]
            a = rs.read_scaled(rl, (40, 30), (200, 150))  # level px 160-960 x 120-720: 4x3 tiles
            requests = srv.requests["p420.tiff"] - requests
            sent = srv.bytes_sent["p420.tiff"] - sent
            np.testing.assert_array_equal(a, ls.read_scaled(rl, (40, 30), (200, 150)))
            assert 1 <= requests <= 3, requests  # one per row of tiles at most (merged ranges)
            # the 12 tiles' bytes, and no more than the file span from the first to the last
            with tifffile.TiffFile(root / "p420.tiff") as tif:
                page = tif.pages[0]
                across = -(-page.imagewidth // 256)
                idx = [ty * across + tx for ty in range(3) for tx in range(4)]
                offs = [int(page.dataoffsets[i]) for i in idx]
                ends = [o + int(page.databytecounts[i]) for o, i in zip(offs, idx, strict=True)]
            assert sum(e - o for o, e in zip(offs, ends, strict=True)) <= sent
            assert sent <= max(ends) - min(offs)
            ra, rb = rs.read_at_mpp(16.0), ls.read_at_mpp(16.0)
            np.testing.assert_array_equal(ra[0], rb[0])
            assert ra[1] == rb[1]
            np.testing.assert_array_equal(detect_tissue(rs).mask, detect_tissue(ls).mask)


def test_info_says_which_level_a_remote_slide_is_read_at(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve(root) as srv:
        assert idcmap_main(["info", f"{srv.url}/p420.tiff", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["backend"] == "tiffslide"
    assert d["levels_colour"][1] == "360x300 px, 4 µm/px, JPEG YCbCr 4:2:0, colour at 8 µm/px"
    p = d["pipeline"]
    assert (p["level_read"], p["level_read_mpp"], p["level_read_scale"]) == (0, 1.0, 4)
    assert "decoded at 1/4: colour at 4 µm/px" in p["why"]


def test_merged_ranges_keep_every_range_once_in_order() -> None:
    tiles = [(1000, 100), (1100, 50), (1150, 10), (5000, 20), (5030, 5), (90_000, 7)]
    groups = merge_ranges(tiles, max_gap=64, max_len=1 << 20)
    assert [(a, b) for a, b, _ in groups] == [(1000, 1160), (5000, 5035), (90_000, 90_007)]
    assert [m for _, _, ms in groups for m in ms] == tiles
    # a span limit splits a run; a range longer than the limit keeps a request of its own
    groups = merge_ranges([(0, 10), (10, 10), (20, 10), (30, 100)], max_gap=0, max_len=20)
    assert [(a, b) for a, b, _ in groups] == [(0, 20), (20, 30), (30, 130)]
    # out of file order (an odd writer): merged only where near, never reordered
    groups = merge_ranges([(500, 10), (0, 10), (510, 10)], max_gap=0, max_len=1 << 20)
    assert [m for _, _, ms in groups for m in ms] == [(500, 10), (0, 10), (510, 10)]
    assert merge_ranges([], 0, 1) == []
