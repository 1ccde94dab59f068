"""Deterministic stand-in models for pipeline tests: real torch modules, no mocks.

``ColourNet`` says "IDC probability = mean red value of the tile / 255", so a heatmap built with
it can be checked cell by cell against pixels read independently from the slide.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from idcmap.model import IDCModel, IDCNet, ModelConfig, save_model


def _logits(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
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
    net = DenseColourNet() if dense else ColourNet()
    return IDCModel(colour_config(threshold), net, torch.device("cpu"))


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
