"""Writers of small slide files for tests (tifffile, PIL): pyramidal, SVS-like, OME, striped, odd,
and tiled JPEG of Pillow-encoded tiles in chosen codings (:func:`write_jpeg_tiff`).

Every writer takes the level-0 image as a numpy array (rows × cols [× samples]) and a
resolution in µm per level-0 pixel (``mpp``), and returns the path it wrote. The pyramids are
"generic tiled TIFF" as OpenSlide 4 reads them (tiled level 0 as the first page, reduced levels
as further tiled pages marked ``NewSubfileType = 1``), which tifffile / tiffslide read as one
series with levels, so both backends open the same file.

Also :func:`synthetic_he`, a deterministic H&E-like RGB image (white glass, pink stroma,
purple nuclei-dense blobs) for tests that need tissue without shipping an image.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

__all__ = [
    "cell_image",
    "downsample_image",
    "drop_tag",
    "encode_tile",
    "split_tables",
    "synthetic_he",
    "write_cell_slide",
    "write_image",
    "write_jpeg_tiff",
    "write_ome_tiff",
    "write_pyramid_tiff",
    "write_striped_tiff",
    "write_svs_like",
]

GLASS_RGB = (243, 241, 246)


def synthetic_he(height: int, width: int, *, seed: int = 0, tissue: float = 0.5) -> np.ndarray:
    """uint8 height×width×3: glass with smooth H&E-coloured tissue blobs covering ~``tissue``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    field = np.zeros((height, width), np.float32)
    scale = max(height, width)
    for _ in range(6):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.1, 0.3) * scale
        field += np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)))
    thr = np.quantile(field, 1.0 - tissue) if 0 < tissue < 1 else (-1 if tissue >= 1 else 1e9)
    in_tissue = field > thr
    img = np.empty((height, width, 3), np.float32)
    img[:] = GLASS_RGB
    stroma = np.array([232, 150, 190], np.float32)
    nuclei = np.array([110, 60, 150], np.float32)
    texture = rng.random((height, width)).astype(np.float32)
    dense = (np.sin(xx / 7.0) * np.cos(yy / 9.0) + texture) > 1.0
    colour = np.where(dense[..., None], nuclei, stroma)
    colour = colour + rng.normal(0, 8, (height, width, 3)).astype(np.float32)
    img[in_tissue] = colour[in_tissue]
    return np.clip(img, 0, 255).astype(np.uint8)


def downsample_image(arr: np.ndarray, factor: float) -> np.ndarray:
    """arr resized by 1/factor (rounded size, ≥ 1 px), antialiased, same dtype."""
    h, w = arr.shape[:2]
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    if factor == 1:
        return arr
    if arr.dtype == np.uint8 and (arr.ndim == 2 or arr.shape[2] in (3, 4)):
        return np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.BOX))
    from skimage.transform import resize

    out_shape = (size[1], size[0], *arr.shape[2:])
    res = resize(arr, out_shape, order=1, anti_aliasing=True, preserve_range=True)
    return res.round().astype(arr.dtype)


def _resolution_kw(
    mpp: float | None, resolution_unit: str | None, dpi: float | None, mpp_y: float | None = None
) -> dict:
    """tifffile resolution keywords: µm/px → px per cm / inch; dpi → 72-dpi style tags."""
    if dpi is not None:
        return {"resolution": (dpi, dpi), "resolutionunit": "INCH"}
    if mpp is None or resolution_unit is None:
        return {"resolution": (1, 1), "resolutionunit": "NONE"}
    per_unit = {"cm": 1e4, "centimeter": 1e4, "inch": 25400.0}[resolution_unit.lower()]
    unit = "INCH" if resolution_unit.lower() == "inch" else "CENTIMETER"
    res = (per_unit / mpp, per_unit / (mpp_y or mpp))
    return {"resolution": res, "resolutionunit": unit}


def _photometric(arr: np.ndarray) -> str:
    return "rgb" if arr.ndim == 3 and arr.shape[2] in (3, 4) else "minisblack"


def write_pyramid_tiff(
    path: str | Path,
    image: np.ndarray,
    mpp: float | None,
    downsamples: Sequence[float] = (1, 4, 16),
    tile: int = 256,
    compression: str | None = "jpeg",
    resolution_unit: str | None = "cm",
    *,
    dpi: float | None = None,
    description: str | None = None,
    subifds: bool = False,
    bigtiff: bool = False,
    mpp_y: float | None = None,
) -> Path:
    """A tiled pyramidal TIFF: level ``i`` is ``image`` downsampled by ``downsamples[i]``.

    Args:
        image: level 0, rows×cols (gray), rows×cols×3 RGB or rows×cols×C; any dtype (JPEG
            only for uint8 with 1 or 3 samples; pass ``compression="zlib"`` otherwise).
        mpp: µm per level-0 pixel written as resolution tags (None: unit NONE, 1 px/unit).
        downsamples: per level, the first must be 1; non-integers allowed (sizes are rounded).
        resolution_unit: "cm", "inch" or None (no usable unit).
        dpi: if given, write 72-dpi-style INCH tags instead (meaningless for µm/px).
        description: ImageDescription of level 0 (e.g. an Aperio header).
        subifds: store reduced levels as SubIFDs of page 0 (OpenSlide generic-tiff ignores them)
            instead of as further pages.
        mpp_y: µm per level-0 pixel along y when pixels are not square (default: ``mpp``).
    """
    path = Path(path)
    if downsamples[0] != 1:
        raise ValueError("downsamples[0] must be 1")
    levels = [downsample_image(image, d) for d in downsamples]
    if compression == "jpeg" and image.dtype != np.uint8:
        raise ValueError("JPEG needs uint8; use compression='zlib'")
    res = _resolution_kw(mpp, resolution_unit, dpi, mpp_y)
    phot = _photometric(image)
    common = {"tile": (tile, tile), "compression": compression, "photometric": phot, **res}
    if compression == "jpeg" and phot == "rgb":
        common["compressionargs"] = {"level": 90}
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tif:
        if subifds:
            tif.write(
                levels[0], subifds=len(levels) - 1, description=description, metadata=None, **common
            )
            for lvl in levels[1:]:
                tif.write(lvl, subfiletype=1, metadata=None, **common)
        else:
            tif.write(levels[0], description=description, metadata=None, **common)
            for lvl in levels[1:]:
                tif.write(lvl, subfiletype=1, metadata=None, **common)
    return path


def write_svs_like(
    path: str | Path,
    rgb: np.ndarray,
    mpp: float = 0.499,
    downsamples: Sequence[float] = (1, 4),
    app_mag: float = 20,
    tile: int = 256,
) -> Path:
    """An Aperio-SVS-like TIFF (ImageDescription 'Aperio Image Library ...|MPP = ...').

    OpenSlide's aperio driver reads µm/px and objective power from the description.
    """
    h, w = rgb.shape[:2]
    desc = (
        f"Aperio Image Library v10.0.51\r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=90"
        f"|AppMag = {app_mag:g}|MPP = {mpp:g}"
    )
    path = Path(path)
    levels = [downsample_image(rgb, d) for d in downsamples]
    with tifffile.TiffWriter(path) as tif:
        for i, lvl in enumerate(levels):
            lh, lw = lvl.shape[:2]
            d = desc if i == 0 else desc.replace(f"{w}x{h} [", f"{w}x{h} -> {lw}x{lh} [", 1)
            tif.write(
                lvl,
                tile=(tile, tile),
                compression="jpeg",
                photometric="rgb",
                description=d,
                subfiletype=0 if i == 0 else 1,
                metadata=None,
            )
    return path


def write_ome_tiff(
    path: str | Path,
    image: np.ndarray,
    mpp: float,
    downsamples: Sequence[float] = (1, 4),
    tile: int = 256,
    axes: str | None = None,
    compression: str | None = "zlib",
) -> Path:
    """An OME-TIFF pyramid (levels as SubIFDs) with PhysicalSizeX/Y = ``mpp`` µm.

    ``image``: rows×cols×3 uint8 RGB (axes "YXS") or channels×rows×cols (axes "CYX",
    e.g. fluorescence).
    """
    path = Path(path)
    if axes is None:
        axes = (
            "YXS"
            if image.ndim == 3 and image.shape[2] in (3, 4)
            else ("CYX" if image.ndim == 3 else "YX")
        )
    if axes == "CYX":
        levels = [np.stack([downsample_image(c, d) for c in image]) for d in downsamples]
    else:
        levels = [downsample_image(image, d) for d in downsamples]
    phot = "rgb" if axes == "YXS" else "minisblack"
    meta = {
        "axes": axes,
        "PhysicalSizeX": mpp,
        "PhysicalSizeY": mpp,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeYUnit": "µm",
    }
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(
            levels[0],
            subifds=len(levels) - 1,
            tile=(tile, tile),
            photometric=phot,
            compression=compression,
            metadata=meta,
            resolution=(1e4 / mpp, 1e4 / mpp),
            resolutionunit="CENTIMETER",
        )
        for lvl in levels[1:]:
            tif.write(
                lvl,
                subfiletype=1,
                tile=(tile, tile),
                photometric=phot,
                compression=compression,
                metadata=None,
            )
    return path


def write_striped_tiff(
    path: str | Path,
    image: np.ndarray,
    mpp: float | None,
    resolution_unit: str | None = "cm",
    rowsperstrip: int = 16,
    compression: str | None = None,
) -> Path:
    """A single-level striped (untiled) TIFF, as scanners' exports and image tools write."""
    path = Path(path)
    tifffile.imwrite(
        path,
        image,
        photometric=_photometric(image),
        compression=compression,
        rowsperstrip=rowsperstrip,
        metadata=None,
        **_resolution_kw(mpp, resolution_unit, None),
    )
    return path


def drop_tag(path: str | Path, code: int) -> Path:
    """Remove tag ``code`` from the first IFD of a classic little-endian TIFF, in place.

    tifffile always writes ``ResolutionUnit``; scanners' exports sometimes omit it (the TIFF
    default is inch). The IFD's entries after the removed one move up 12 bytes; values stored
    out of line keep their offsets.
    """
    path = Path(path)
    data = bytearray(path.read_bytes())
    if data[:4] != b"II*\x00":
        raise ValueError("drop_tag handles classic little-endian TIFFs only")
    (ifd,) = struct.unpack_from("<I", data, 4)
    (n,) = struct.unpack_from("<H", data, ifd)
    entries = [bytes(data[ifd + 2 + 12 * i : ifd + 14 + 12 * i]) for i in range(n)]
    (next_ifd,) = struct.unpack_from("<I", data, ifd + 2 + 12 * n)
    kept = [e for e in entries if struct.unpack_from("<H", e)[0] != code]
    if len(kept) == n:
        raise ValueError(f"tag {code} is not in the first IFD")
    block = struct.pack("<H", len(kept)) + b"".join(kept) + struct.pack("<I", next_ifd)
    data[ifd : ifd + len(block)] = block
    path.write_bytes(bytes(data))
    return path


def write_image(path: str | Path, rgb: np.ndarray, **pil_kw: object) -> Path:
    """A plain PNG / JPEG (format from the suffix) via PIL."""
    path = Path(path)
    Image.fromarray(rgb).save(path, **pil_kw)  # type: ignore[arg-type]
    return path


def cell_image(
    red: np.ndarray,
    cell_px: int | tuple[int, int],
    *,
    green: int = 40,
    blue: int = 150,
    glass_rows: int = 0,
) -> np.ndarray:
    """An H&E-like slide image of uniform cells: cell (r, c) has red ``red[r, c]`` and the
    given green and blue (a saturated pink-purple, tissue for the tissue detector, IDC
    probability ``red / 255`` for the colour stand-in model); the last ``glass_rows`` rows of
    cells are glass (white). ``cell_px``: cell side (or (width, height)) in px."""
    cw, ch = (cell_px, cell_px) if isinstance(cell_px, int) else cell_px
    rows, cols = red.shape
    img = np.empty((rows * ch, cols * cw, 3), np.uint8)
    img[..., 0] = np.kron(np.asarray(red, np.uint8), np.ones((ch, cw), np.uint8))
    img[..., 1], img[..., 2] = green, blue
    if glass_rows:
        img[-glass_rows * ch :] = 255
    return img


def write_cell_slide(
    path: str | Path,
    red: np.ndarray,
    mpp: float = 4.0,
    *,
    mpp_y: float | None = None,
    cell_um: float = 200.0,
    glass_rows: int = 1,
) -> Path:
    """A slide of ``cell_um``-wide cells for the colour stand-in model (IDC probability = mean
    red / 255, ``tests/pipeline_helpers.py``): cell (r, c) has red ``red[r, c]`` (uint8), green
    60, blue 150 (tissue); then ``glass_rows`` rows of white glass. One level, zlib;
    ``mpp_y`` makes pixels non-square (a cell keeps ``cell_um`` µm along both axes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    red = np.asarray(red, np.uint8)
    my = mpp if mpp_y is None else mpp_y
    rows = np.vstack([red, np.full((glass_rows, red.shape[1]), 255, np.uint8)])
    cells = (round(cell_um / mpp), round(cell_um / my))
    img = cell_image(rows, cells, green=60, glass_rows=glass_rows)
    return write_pyramid_tiff(path, img, mpp, downsamples=(1,), compression="zlib", mpp_y=mpp_y)


def _segments(jpeg: bytes) -> list[tuple[int, bytes]]:
    """(marker, whole segment bytes) from SOI to the scan's end (the SOS segment holds the rest)."""
    out, pos = [(0xD8, jpeg[:2])], 2
    while pos < len(jpeg):
        marker = jpeg[pos + 1]
        (length,) = struct.unpack_from(">H", jpeg, pos + 2)
        if marker == 0xDA:
            out.append((marker, jpeg[pos:]))
            break
        out.append((marker, jpeg[pos : pos + 2 + length]))
        pos += 2 + length
    return out


ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


def encode_tile(
    tile: np.ndarray,
    *,
    subsampling: int,
    rgb_coded: bool = False,
    adobe: bool = False,
    progressive: bool = False,
) -> bytes:
    """A Pillow JPEG of ``tile``; ``rgb_coded``: the samples are R, G, B (no colour transform),
    JFIF dropped, and an Adobe APP14 transform-0 marker added when ``adobe``."""
    buf = io.BytesIO()
    if rgb_coded:  # Pillow writes "YCbCr" images without conversion: hand it R, G, B
        Image.frombytes("YCbCr", tile.shape[1::-1], tile.tobytes()).save(
            buf, "JPEG", quality=90, subsampling=subsampling
        )
        segs = [(m, s) for m, s in _segments(buf.getvalue()) if m != 0xE0]
        if adobe:
            segs.insert(1, (0xEE, ADOBE_RGB))
        return b"".join(s for _, s in segs)
    Image.fromarray(tile).save(
        buf, "JPEG", quality=90, subsampling=subsampling, progressive=progressive
    )
    return buf.getvalue()


def split_tables(jpeg: bytes, *, keep_jfif: bool = False) -> tuple[bytes, bytes]:
    """(JPEGTables stream, abbreviated stream) of a complete JPEG (DQT/DHT moved to the tables)."""
    segs = _segments(jpeg)
    tables = b"\xff\xd8" + b"".join(s for m, s in segs if m in (0xDB, 0xC4)) + b"\xff\xd9"
    keep = [s for m, s in segs if m not in (0xDB, 0xC4) and (keep_jfif or m != 0xE0)]
    return tables, b"".join(keep)


def write_jpeg_tiff(
    path: Path,
    image: np.ndarray,
    *,
    subsampling: int = 2,
    photometric: str = "ycbcr",
    tag_subsampling: tuple[int, int] | None = None,
    tables: bool = False,
    rgb_coded: bool = False,
    adobe: bool = False,
    progressive: bool = False,
    downsamples: tuple[int, ...] = (1,),
    tile: int = 64,
    mpp: float = 0.25,
) -> Path:
    """A tiled JPEG TIFF pyramid of tiles JPEG-encoded by Pillow (q90) and written as they are,
    as ``benchmarks/make_slides.py`` writes them, in the codings scanners use: YCbCr 4:2:0
    (``subsampling=2``) or 4:4:4 (0) with a JFIF marker, abbreviated streams with a
    ``JPEGTables`` tag (``tables``), RGB-coded samples (``rgb_coded``) with an Adobe APP14
    marker (``adobe``) or none. Level i is ``image`` box-reduced by ``downsamples[i]``; tiles
    outside the image are white."""
    try:
        import imagecodecs  # noqa: F401
    except ImportError:  # tifffile looks up a JPEG encoder even for encoded tiles
        tifffile.TIFF.COMPRESSORS._codecs[7] = lambda *a, **k: b""  # never called
    with tifffile.TiffWriter(path) as tw:
        for i, d in enumerate(downsamples):
            lvl = image if d == 1 else np.asarray(Image.fromarray(image).reduce(d))
            lh, lw = lvl.shape[:2]
            streams = []
            for y in range(0, lh, tile):
                for x in range(0, lw, tile):
                    t = np.full((tile, tile, 3), 255, np.uint8)
                    part = lvl[y : y + tile, x : x + tile]
                    t[: part.shape[0], : part.shape[1]] = part
                    streams.append(
                        encode_tile(
                            t,
                            subsampling=subsampling,
                            rgb_coded=rgb_coded,
                            adobe=adobe,
                            progressive=progressive,
                        )
                    )
            jpegtables = None
            if tables:
                jpegtables, _ = split_tables(streams[0])
                streams = [split_tables(s)[1] for s in streams]
            # tifffile writes the YCbCrSubSampling tag for JPEG, and Photometric YCbCr unless
            # told the output colour space is RGB (the tiles come encoded: nothing is encoded)
            kw: dict = {
                "subsampling": tag_subsampling or ((2, 2) if subsampling == 2 else (1, 1)),
                "compressionargs": {"outcolorspace": photometric.upper()},
            }
            tw.write(
                iter(streams),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                compression="jpeg",
                photometric=photometric,
                subfiletype=0 if i == 0 else 1,
                resolution=(1e4 / (mpp * d), 1e4 / (mpp * d)),
                resolutionunit="CENTIMETER",
                jpegtables=jpegtables,
                metadata=None,
                **kw,
            )
    return path
