"""JPEG stream headers: the coded chroma sampling and colour transform of a JPEG tile (SOF and
APP markers, TIFF ``JPEGTables`` merged), and the JPEG 2000 SIZ sampling."""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "SOF_BASIC",
    "JpegHeader",
    "adobe_marker",
    "jp2k_sampling",
    "merge_tables",
    "parse_jpeg_header",
]

SOF_BASIC = (0xC0, 0xC1, 0xC2)  # baseline, extended sequential, progressive (Huffman)


@dataclass(frozen=True)
class JpegHeader:
    """What the markers before the first scan of a JPEG stream say.

    Attributes:
        sof: the SOF marker's code (0xC0 baseline, 0xC1 extended, 0xC2 progressive...).
        precision: bits per sample (8 for what Pillow decodes).
        width, height: frame size from the SOF (0 when the frame gives it later, via DNL).
        components: (id, horizontal sampling, vertical sampling) per component.
        jfif: an APP0 JFIF marker is present.
        adobe_transform: the APP14 Adobe marker's transform (0 RGB/CMYK, 1 YCbCr, 2 YCCK),
            None without one.
        sof_offset: byte offset of the SOF marker in the parsed stream.
    """

    sof: int
    precision: int
    width: int
    height: int
    components: tuple[tuple[int, int, int], ...]
    jfif: bool
    adobe_transform: int | None
    sof_offset: int

    @property
    def subsampling(self) -> tuple[int, int]:
        """(x, y) factor of the coarsest component against the finest: (2, 2) for 4:2:0,
        (2, 1) for 4:2:2, (1, 1) for 4:4:4 or one component."""
        hmax = max(c[1] for c in self.components)
        vmax = max(c[2] for c in self.components)
        return (
            max(hmax // max(c[1], 1) for c in self.components),
            max(vmax // max(c[2], 1) for c in self.components),
        )

    @property
    def colorspace(self) -> str:
        """The colour space libjpeg (and so Pillow) assumes when nothing overrides it:
        "gray", "YCbCr", "RGB", "CMYK" or "YCCK" (libjpeg's ``default_decompress_parms``)."""
        n = len(self.components)
        if n == 1:
            return "gray"
        if n == 3:
            if self.jfif:
                return "YCbCr"
            if self.adobe_transform is not None:
                return "RGB" if self.adobe_transform == 0 else "YCbCr"
            ids = tuple(c[0] for c in self.components)
            return "RGB" if ids == (0x52, 0x47, 0x42) else "YCbCr"  # 'R', 'G', 'B'
        if n == 4:
            return "YCCK" if self.adobe_transform == 2 else "CMYK"
        return f"{n} components"

    @property
    def sampling_name(self) -> str:
        """ "4:2:0", "4:2:2", "4:4:4", "4:1:1", or "HxV" otherwise."""
        names = {(2, 2): "4:2:0", (2, 1): "4:2:2", (1, 1): "4:4:4", (4, 1): "4:1:1"}
        s = self.subsampling
        return names.get(s, f"{s[0]}x{s[1]}")


def parse_jpeg_header(data: bytes, *, tables: bytes | None = None) -> JpegHeader:
    """Parse the markers of a JPEG stream up to its SOF (and APP0/APP14 before the SOF).

    Args:
        data: a JPEG stream (from SOI), complete or abbreviated (tables in ``tables``).
        tables: a TIFF ``JPEGTables`` stream (SOI, DQT/DHT..., EOI), merged in front of
            ``data`` the way decoders do; APP markers in it count too.

    Raises:
        ValueError: not a JPEG stream, or no SOF before the first scan.
    """
    stream = merge_tables(data, tables)
    if stream[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG stream (no SOI marker)")
    pos, n = 2, len(stream)
    jfif, adobe = False, None
    while pos + 4 <= n:
        if stream[pos] != 0xFF:
            raise ValueError(f"JPEG marker expected at byte {pos}")
        marker = stream[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # TEM, RSTn: no length
            pos += 2
            continue
        if marker == 0xD9:
            break
        (length,) = struct.unpack_from(">H", stream, pos + 2)
        body = stream[pos + 4 : pos + 2 + length]
        if marker == 0xE0 and body[:5] == b"JFIF\x00":
            jfif = True
        elif marker == 0xEE and body[:5] == b"Adobe" and len(body) >= 12:
            adobe = body[11]
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            precision, height, width, nc = struct.unpack_from(">BHHB", body, 0)
            comps = tuple(
                (body[6 + 3 * i], body[7 + 3 * i] >> 4, body[7 + 3 * i] & 15) for i in range(nc)
            )
            return JpegHeader(marker, precision, width, height, comps, jfif, adobe, pos)
        elif marker == 0xDA:
            break
        pos += 2 + length
    raise ValueError("no SOF marker before the first scan")


def merge_tables(data: bytes, tables: bytes | None) -> bytes:
    """``tables`` (SOI ... EOI) + ``data`` (SOI ...) as one stream: tables' EOI and data's SOI
    dropped. ``data`` unchanged when there are no tables."""
    if not tables or len(tables) < 4:
        return data
    head = tables[:-2] if tables[-2:] == b"\xff\xd9" else tables
    return head + (data[2:] if data[:2] == b"\xff\xd8" else data)


def adobe_marker(transform: int) -> bytes:
    # APP14, length 14: "Adobe", version 100, flags0 0, flags1 0, transform
    return b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00" + bytes([transform])


def jp2k_sampling(data: bytes) -> tuple[int, int] | None:
    """(x, y) factor of the coarsest component from a JPEG 2000 codestream's SIZ marker."""
    start = data.find(b"\xff\x4f\xff\x51")  # SOC SIZ (a JP2 box file holds the codestream)
    if start < 0 or len(data) < start + 42:
        return None
    siz = start + 4
    (csiz,) = struct.unpack_from(">H", data, siz + 36)
    if len(data) < siz + 38 + 3 * csiz or csiz == 0:
        return None
    xr = [data[siz + 39 + 3 * i] for i in range(csiz)]
    yr = [data[siz + 40 + 3 * i] for i in range(csiz)]
    return (max(xr) // max(min(xr), 1), max(yr) // max(min(yr), 1))
