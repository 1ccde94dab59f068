"""io.jpegtorch: JPEG tiles decoded in batches by torchvision and box-reduced on the device —
here its CPU fallback, the same code path as nvjpeg's on CUDA (tests/test_cuda.py).

Measured on the TIFF kinds of tests/test_io_jpeg.py (YCbCr 4:2:0 and 4:4:4, JPEGTables,
progressive, RGB-coded with and without an Adobe marker), scales 1/2/4/8, five rectangles each
(inside, across tiles, to the edges, odd sizes, outside): the torch read equals Pillow's full
decode + ``Image.reduce`` **bit for bit** (max difference 0), so that is what is asserted. The
default path (libjpeg's scaled IDCT) differs from that reference within test_io_jpeg's
``BOUNDS``; a whole pipeline run's masks with each decode are compared below.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pipeline_helpers import colour_model
from shared_data import SHARED, needs_shared
from test_io_jpeg import KINDS, H, W, box, diff
from tiffgen import synthetic_he, write_jpeg_tiff

from idcmap.errors import UsageError
from idcmap.io.jpegtiff import JpegTiffReader
from idcmap.io.open import open_slide
from idcmap.model.runtime import load_model
from idcmap.params import Params
from idcmap.pipeline.segment import segment_slide

pytest.importorskip("torchvision")
pytestmark = pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning"
)

from idcmap.io.jpegtorch import TorchTileDecoder, box_reduce, tile_decoder  # noqa: E402

RECTS = [
    (0, 0, W, H),  # every tile, both image edges (partial blocks)
    (40, 56, 200, 120),  # across tile edges, inside the image
    (120, 64, W - 120, H - 64),  # to the right and bottom edges
    (64, 128, 70, 37),  # sizes not multiples of the scale
    (-16, -8, 64, 48),  # partly outside: white there
]


@pytest.fixture(scope="module")
def he() -> np.ndarray:
    return synthetic_he(H, W, seed=3, tissue=0.7)


@pytest.fixture(scope="module", params=sorted(KINDS))
def kind_tiff(request: pytest.FixtureRequest, he: np.ndarray, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("jpegtorch") / f"{request.param}.tif"
    return write_jpeg_tiff(path, he, **KINDS[request.param][0])


def test_box_reduce_is_pillows_reduce() -> None:
    """Every size 1..40 px a side (partial edge blocks of every width), scales 2/4/8, noise
    and flat images (whose means are exact integers: the rounding's edge)."""
    rng = np.random.default_rng(0)
    for s in (2, 4, 8):
        for h in range(1, 41, 3):
            for w in range(1, 41, 5):
                for flat in (False, True):
                    x = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                    if flat:
                        x[:] = rng.integers(0, 256)
                    want = np.asarray(Image.fromarray(x).reduce(s))
                    got = box_reduce(torch.from_numpy(x).permute(2, 0, 1)[None], s)
                    assert np.array_equal(got[0].permute(1, 2, 0).numpy(), want), (s, h, w)


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_torch_read_is_the_full_decode_box_reduced(kind_tiff: Path, scale: int) -> None:
    decoder = TorchTileDecoder("cpu")
    with JpegTiffReader(kind_tiff) as r:
        full = r.read_region(0, 0, 0, W, H, 1)  # Pillow, no draft: libjpeg's full decode
        for x, y, w, h in RECTS:
            x, y = x // scale * scale, y // scale * scale
            got = r.read_region(0, x, y, w, h, scale, decoder=decoder)
            assert got.shape == (-(-h // scale), -(-w // scale), 3)
            assert diff(got, box(full, x, y, w, h, scale)) == (0, 0.0), (kind_tiff.name, x, y)
        # the default scaled-IDCT read stays within test_io_jpeg's bounds of the same reference
        if scale > 1:
            d = diff(
                r.read_region(0, 0, 0, W, H, scale),
                r.read_region(0, 0, 0, W, H, scale, decoder=decoder),
            )
            assert d[0] <= 32 and d[1] <= 1.8, d


def test_many_tiles_are_reduced_in_batches(tmp_path: Path) -> None:
    """More tiles than one reduction batch (REDUCE_BATCH), edge tiles of two sizes."""
    from idcmap.io.jpegtorch import REDUCE_BATCH

    img = synthetic_he(420, 524, seed=5, tissue=0.8)
    path = write_jpeg_tiff(tmp_path / "many.tif", img, subsampling=2, tile=32)
    with JpegTiffReader(path) as r:
        assert 3 * REDUCE_BATCH < 14 * 17  # tiles of the image
        full = r.read_region(0, 0, 0, 524, 420, 1)
        for s in (2, 8):
            got = r.read_region(0, 0, 0, 524, 420, s, decoder=TorchTileDecoder("cpu"))
            assert diff(got, box(full, 0, 0, 524, 420, s)) == (0, 0.0)


def test_sparse_tiles_are_white(he: np.ndarray, tmp_path: Path) -> None:
    """A tile without data (byte count 0) is white, as on the Pillow path."""
    import struct

    import tifffile

    path = write_jpeg_tiff(tmp_path / "p.tif", he, subsampling=2)
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags["TileByteCounts"]
        fmt = tif.byteorder + {3: "H", 4: "I", 16: "Q"}[int(tag.dtype)]
        struct.pack_into(fmt, data, tag.valueoffset, 0)  # tile (0, 0): no data
    sparse = tmp_path / "sparse.tif"
    sparse.write_bytes(bytes(data))
    with JpegTiffReader(sparse) as r:
        for s in (1, 4):
            got = r.read_region(0, 0, 0, 128, 64, s, decoder=TorchTileDecoder("cpu"))
            assert (got[: 64 // s, : 64 // s] == 255).all()
            assert np.array_equal(
                got[:, 64 // s :],
                r.read_region(0, 64, 0, 64, 64, s, decoder=TorchTileDecoder("cpu")),
            )
            assert not (got[:, 64 // s :] == 255).all()


def test_slide_read_goes_through_the_decoder_at_every_scale(he: np.ndarray, tmp_path: Path) -> None:
    """Slide.read_scaled with a decoder: JPEG levels through it at scale 1 too (equal to
    OpenSlide's own decode of the level), other reads as before."""
    big = np.kron(he, np.ones((4, 4, 1), np.uint8))
    path = write_jpeg_tiff(tmp_path / "p.tif", big, subsampling=2, downsamples=(1, 4), mpp=1.0)
    dec = TorchTileDecoder("cpu")
    with open_slide(path) as slide:
        rl = slide.read_level_for_mpp(4.0)
        assert (rl.level, rl.scale) == (0, 4)
        got = slide.read_scaled(rl, (13, 7), (150, 90), decoder=dec)
        full = slide.read_region((0, 0), 0, (4 * W, 4 * H))
        assert diff(got, box(full, 52, 28, 600, 360, 4)) == (0, 0.0)
        one = replace(rl, level=1, scale=1, downsample=4.0, dimensions=(W, H))
        assert np.array_equal(
            slide.read_scaled(one, (5, 9), (100, 80), decoder=dec),
            slide.read_region((20, 36), 1, (100, 80)),
        )


def test_tile_decoder_choice() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert tile_decoder("pillow", cpu) is None and tile_decoder("pillow", cuda) is None
    assert tile_decoder("auto", cpu) is None  # auto is torch on CUDA only
    assert tile_decoder("auto", torch.device("mps")) is None
    d = tile_decoder("torch", cpu)
    assert isinstance(d, TorchTileDecoder) and d.device == cpu
    mps = tile_decoder("torch", torch.device("mps"))
    assert mps is not None and mps.device == cpu  # torchvision decodes on CUDA or the CPU
    cu = tile_decoder("auto", cuda)  # constructing it needs no GPU
    assert cu is not None and cu.device == cuda
    with pytest.raises(UsageError, match="decode="):
        tile_decoder("nvjpeg", cpu)


def test_pipeline_with_torch_decode_records_it(he: np.ndarray, tmp_path: Path) -> None:
    big = np.kron(he, np.ones((4, 4, 1), np.uint8))
    path = write_jpeg_tiff(tmp_path / "p.tif", big, subsampling=2, downsamples=(1, 4), mpp=1.0)
    a = segment_slide(path, model=colour_model(), progress=False)
    b = segment_slide(path, model=colour_model(), progress=False, params=Params(decode="torch"))
    assert (a.summary.parameters["decode"], b.summary.parameters["decode"]) == ("pillow", "torch")
    # the colour model's probability is the tile's mean red: scaled IDCT vs full decode + box
    # move a tile's mean by far less than a level (measured max 0.0002)
    np.testing.assert_allclose(a.heatmap.prob, b.heatmap.prob, atol=2e-3, equal_nan=True)


@needs_shared
def test_masks_with_either_decode_on_a_40x_pyramid(tmp_path: Path) -> None:
    """The bundled model on a real mosaic made a 1-µm 4:2:0 pyramid (read at 1/4): the masks
    of the two decodes, cell by cell (measured: identical, 22 IDC cells; probabilities within
    0.022; asserted: ≥ 99 % of the cells, 0.05)."""
    mosaic = np.asarray(Image.open(SHARED / "idc" / "slides" / "9035.tiff").convert("RGB"))
    crop = mosaic[:600, :800]
    big = np.asarray(Image.fromarray(crop).resize((3200, 2400), Image.Resampling.BICUBIC))
    path = write_jpeg_tiff(
        tmp_path / "p.tif", big, subsampling=2, downsamples=(1, 4, 16), mpp=1.0, tile=256
    )
    model = load_model(device="cpu")
    a = segment_slide(path, model=model, progress=False)
    b = segment_slide(path, model=model, progress=False, params=Params(decode="torch"))
    assert a.summary.slide["level_read_scale"] == 4
    np.testing.assert_array_equal(a.heatmap.tissue, b.heatmap.tissue)
    assert (a.mask == b.mask).mean() >= 0.99
    np.testing.assert_allclose(a.heatmap.prob, b.heatmap.prob, atol=0.05, equal_nan=True)
