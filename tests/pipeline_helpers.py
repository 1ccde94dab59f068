"""Deterministic stand-in models for pipeline tests: real torch modules, no mocks.

``ColourNet`` says "IDC probability = mean red value of the tile / 255", so a heatmap built with
it can be checked cell by cell against pixels read independently from the slide.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from idcmap.model.archs import Architecture
from idcmap.model.archs.idcnet import IDCNet
from idcmap.model.modelfile import ModelConfig, save_model
from idcmap.model.runtime import IDCModel
from idcmap.pipeline.heatmap import Heatmap


def _logits(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)  # finite logits for a red of 0 or 255
    lg = torch.log(p / (1 - p))
    return torch.stack([torch.zeros_like(lg), lg], 1)


class ColourNet(nn.Module):
    """Tile path only: N×3×50×50 → N×2 logits with softmax[:, 1] = mean red."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _logits(x[:, 0].mean((1, 2)).double()).float()


class DenseColourNet(ColourNet):
    """Also evaluates a block densely (an average pool), like IDCNet.forward_dense."""

    def forward_dense(self, x: torch.Tensor, stride_px: int) -> torch.Tensor:
        p = nn.functional.avg_pool2d(x[:, :1].double(), 50, stride=stride_px)[:, 0]
        return _logits(p).float()


#: What the runtime may do with them: ColourNet only tiles; DenseColourNet is evaluated densely
#: at the strides IDCNet is (multiples of 5 px), so pipeline tests take the same paths.
COLOUR = Architecture(name="colour", build=lambda mean, std: ColourNet())
DENSE_COLOUR = Architecture(
    name="colour", build=lambda mean, std: DenseColourNet(), dense_step_px=5
)


def colour_config(threshold: float = 0.5) -> ModelConfig:
    return ModelConfig(
        name="colour",
        version="0",
        architecture="colour",
        mpp=4.0,
        patch_px=50,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        tile_threshold=threshold,
    )


def colour_model(dense: bool = False, threshold: float = 0.5) -> IDCModel:
    arch = DENSE_COLOUR if dense else COLOUR
    cfg = colour_config(threshold)
    return IDCModel(
        cfg, arch.build(mean=cfg.mean, std=cfg.std), torch.device("cpu"), architecture=arch
    )


def tiny_model_file(folder: Path, seed: int = 0) -> Path:
    """A real (random-weight) idcnet-v1 model file, small, for CLI tests."""
    torch.manual_seed(seed)
    net = IDCNet(widths=(8, 16, 16))
    cfg = ModelConfig(
        name="tiny",
        version="0",
        architecture="idcnet-v1",
        mpp=4.0,
        patch_px=50,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        tile_threshold=0.5,
        arch_params={"widths": [8, 16, 16]},
    )
    path = folder / "tiny.json"
    save_model(net, cfg, path)
    return path


def make_heatmap(
    prob: np.ndarray,
    origin: tuple[float, float] = (1000.25, 2000.5),
    cell: tuple[float, float] = (50.5, 50.5),
    mpp: float = 0.25,
) -> Heatmap:
    """A heatmap of ``prob`` at an odd origin and cell size (level-0 px) of a 0.25-µm slide."""
    return Heatmap(
        prob=np.asarray(prob, dtype=np.float32),
        origin_level0_px=origin,
        cell_level0_px=cell,
        slide_mpp=mpp,
        model_mpp=4.0,
        stride_px=50,
        patch_px=50,
    )
