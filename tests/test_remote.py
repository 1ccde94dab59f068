"""Remote slides over HTTP (``idcmap.io.remote``): a real Range-honouring HTTP server on
127.0.0.1 (``tests/http_range.py``) serving pyramids written with tifffile, read by tiffslide
through fsspec; no Dask (the cluster tests in test_distributed.py read shared mosaics)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="needs aiohttp for http:// slides (fsspec)")

from http_range import serve
from tiffgen import synthetic_he, write_pyramid_tiff

from idcmap.errors import SlideError, UsageError
from idcmap.io.open import open_slide
from idcmap.io.remote import remote_size


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bucket")
    img = synthetic_he(1500, 2000, seed=2, tissue=0.6)
    write_pyramid_tiff(d / "he.tiff", img, 0.5, downsamples=(1, 4), tile=256)
    (d / "empty.tiff").write_bytes(b"")
    (d / "notes.tiff").write_bytes(b"these are not the pixels you are looking for\n" * 50)
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
