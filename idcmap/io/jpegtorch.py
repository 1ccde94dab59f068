"""JPEG tiles decoded in batches by torchvision — nvjpeg on a CUDA device, libjpeg on the CPU —
and reduced to the read's scale on the same device: :class:`TorchTileDecoder`, a
:class:`~idcmap.io.jpegtiff.TileDecoder` for :meth:`JpegTiffReader.read_region
<idcmap.io.jpegtiff.JpegTiffReader.read_region>`.

One code path for both devices: ``torchvision.io.decode_jpeg(list_of_streams, device=...)``
decodes a region's tiles at full resolution, then :func:`box_reduce` averages s×s px on the
device with Pillow's own rounding (``Image.reduce``: partial blocks at the level's edge average
the px inside it), and the tiles are pasted into one array on the device, copied to the host
once. On the CPU the result equals Pillow's full decode + ``Image.reduce`` bit for bit (the
same libjpeg decode, the same arithmetic; tests/test_io_jpegtorch.py), which the default
Pillow path (libjpeg's scaled IDCT) approximates within ``tests/test_io_jpeg.py``'s bounds.

Selected with ``Params(decode=...)`` / ``--decode``: ``auto`` (the default) is this path when
the model runs on CUDA and torchvision is installed, else Pillow. Levels that are not baseline
YCbCr JPEG (RGB-coded, progressive) are decoded on the CPU even then: what nvjpeg makes of
those markers is not libjpeg's rule (:mod:`idcmap.io.jpegtiff`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from idcmap.errors import UsageError
from idcmap.io.jpegtiff import TilePlacement
from idcmap.params import DECODES

__all__ = ["REDUCE_BATCH", "TorchTileDecoder", "box_reduce", "have_torchvision", "tile_decoder"]


#: Tiles reduced in one batch: bounds the float copy of the batch (a 256-px tile is 0.8 MB
#: as float32), a few per reader thread; the decode itself is one batch per read.
REDUCE_BATCH = 32


def have_torchvision() -> bool:
    return importlib.util.find_spec("torchvision") is not None


class TorchTileDecoder:
    """Batched tile decode + box reduction on ``device`` (``cuda``, ``cuda:N`` or ``cpu``).

    Thread-safe (readers call it from several threads; torchvision's CUDA decoder takes its
    own lock).
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        from torchvision.io import ImageReadMode, decode_jpeg

        self.device = torch.device(device)
        self._decode = decode_jpeg
        self._rgb = ImageReadMode.RGB

    def __repr__(self) -> str:
        return f"TorchTileDecoder({str(self.device)!r})"

    def decode_region(
        self,
        tiles: Sequence[TilePlacement],
        scale: int,
        size: tuple[int, int],
        *,
        device_ok: bool,
    ) -> np.ndarray:
        """The tiles decoded, reduced 1/``scale`` and pasted into a white (h, w, 3) uint8 array
        of ``size`` = (w, h) (:class:`~idcmap.io.jpegtiff.TileDecoder`)."""
        w, h = size
        out = torch.full((3, h, w), 255, dtype=torch.uint8, device=self.device)
        if tiles:
            where = self.device if device_ok else torch.device("cpu")
            data = [torch.frombuffer(bytearray(t.stream), dtype=torch.uint8) for t in tiles]
            decoded = self._decode(data, mode=self._rgb, device=where)
            # one reduction per tile size (edge tiles apart): a batch on the device
            groups: dict[tuple[int, int], list[int]] = {}
            for i, t in enumerate(tiles):
                groups.setdefault(t.valid_px, []).append(i)
            for (vw, vh), idx in groups.items():
                for k in range(0, len(idx), REDUCE_BATCH):
                    part = idx[k : k + REDUCE_BATCH]
                    batch = torch.stack([_valid(decoded[i], vw, vh) for i in part])
                    reduced = box_reduce(batch.to(self.device), scale)
                    for j, i in enumerate(part):
                        x0, y0, x1, y1 = tiles[i].src_px
                        dx, dy = tiles[i].dst_px
                        out[:, dy : dy + y1 - y0, dx : dx + x1 - x0] = reduced[j, :, y0:y1, x0:x1]
                        decoded[i] = reduced[:0]  # the full decode is no longer needed
        return out.permute(1, 2, 0).contiguous().cpu().numpy()


def _valid(img: torch.Tensor, vw: int, vh: int) -> torch.Tensor:
    """The tile's px inside the level (a frame may hold the encoder's padding beyond)."""
    if img.shape[1] < vh or img.shape[2] < vw:
        raise OSError(
            f"a tile decodes to {img.shape[2]}x{img.shape[1]} px, {vw}x{vh} needed (damaged?)"
        )
    return img[:, :vh, :vw]


def box_reduce(x: torch.Tensor, s: int) -> torch.Tensor:
    """uint8 N×C×H×W → N×C×ceil(H/s)×ceil(W/s): the mean of each s×s block (at the right and
    bottom edges, of the px there), rounded as Pillow's ``Image.reduce`` rounds: sum plus half
    the count, times Pillow's fixed-point reciprocal ``⌊2³² / (256·count)⌋`` in float32, >> 24
    (exact for the full blocks, whose count is a power of two)."""
    if s == 1:
        return x
    h, w = x.shape[-2:]
    sums = F.avg_pool2d(x.float(), s, stride=s, ceil_mode=True, divisor_override=1)
    oh, ow = sums.shape[-2:]
    rows = torch.clamp(h - torch.arange(oh, device=x.device) * s, max=s)
    cols = torch.clamp(w - torch.arange(ow, device=x.device) * s, max=s)
    count = rows[:, None] * cols[None, :]
    mult = (torch.tensor(2.0**32, device=x.device) / (256 * count).float()).long()
    return (((sums.long() + count // 2) * mult) >> 24).to(torch.uint8)


def tile_decoder(decode: str, device: torch.device) -> TorchTileDecoder | None:
    """The decoder ``decode`` (``Params.decode``) asks for with a model on ``device``; None is
    the Pillow path (libjpeg's scaled IDCT, in the reader threads).

    ``auto``: torch on CUDA when torchvision is installed, else Pillow. ``torch``: on the
    model's CUDA device, else on the CPU (the testable fallback; MPS decodes on the CPU).

    Raises:
        UsageError: ``torch`` without torchvision, or an unknown value.
    """
    if decode not in DECODES:
        raise UsageError(f"decode={decode!r} is unknown; use {', '.join(DECODES)}")
    if decode == "pillow" or (decode == "auto" and device.type != "cuda"):
        return None
    if not have_torchvision():
        if decode == "auto":
            return None
        raise UsageError(
            "decode='torch' needs torchvision (pip install torchvision, or idcmap[gpu]); "
            "decode='pillow' needs nothing more"
        )
    return TorchTileDecoder(device if device.type == "cuda" else "cpu")
