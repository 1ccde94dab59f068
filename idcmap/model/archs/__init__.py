"""Network architectures: one module per architecture, each declaring an :class:`Architecture`.

The runtime (:mod:`idcmap.model.runtime`) runs any registered architecture; what it needs to know
about one is declared here, not guessed from the network's methods:

* ``build(mean=..., std=..., **arch_params)`` returns the ``nn.Module``; its ``forward`` maps
  float N×3×P×P in [0, 1] (P = the config's ``patch_px``) to N×2 logits (not IDC, IDC), the
  normalisation by ``mean``/``std`` happening inside the network;
* ``dense_step_px`` (optional) declares dense evaluation: the network then has
  ``forward_dense(x, stride_px)`` mapping N×3×H×W to the N×2×h×w logits of every P-px tile
  whose top-left corner lies on the ``stride_px`` grid, for any stride that is a multiple of
  ``dense_step_px`` (``h = (H - P) // stride_px + 1``);
* ``engine`` (optional) builds an inference-only form of a trained network (an
  :class:`Engine`) that ``predict``/``predict_dense`` use instead of the ``nn.Module``; it
  computes the dense function, so it needs ``dense_step_px``.

To add an architecture: write ``idcmap/archs/<name>.py`` with the network and an
``ARCHITECTURE = Architecture(...)``, and add that object to ``idcmap.model.runtime.ARCHITECTURES``
(or call :func:`idcmap.model.runtime.register_architecture` from your own code).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn


class Engine(Protocol):
    """An inference-only form of a trained network."""

    def __call__(self, pixels: torch.Tensor, stride_px: int, /) -> torch.Tensor:
        """uint8 N×H×W×3 on the engine's device → float32 N×h×w IDC probabilities of the tiles
        on the ``stride_px`` grid (as ``forward_dense`` + softmax)."""
        ...


@dataclass(frozen=True)
class Architecture:
    """What the runtime needs to know about one architecture (see the module docstring).

    Attributes:
        name: the ``architecture`` key that model files name it by, e.g. ``"idcnet-v1"``.
        build: ``build(mean=(r, g, b), std=(r, g, b), **arch_params) -> nn.Module``.
        default_params: the ``arch_params`` a new model of this architecture is trained with
            unless told otherwise (recorded in the model file).
        dense_step_px: dense evaluation is possible at strides that are multiples of this
            (None: no dense evaluation; tiles are cut out and batched).
        engine: ``engine(net, device) -> Engine``, the inference-only form (None: run the
            ``nn.Module`` itself).
    """

    name: str
    build: Callable[..., nn.Module]
    default_params: Mapping[str, Any] = field(default_factory=dict)
    dense_step_px: int | None = None
    engine: Callable[[nn.Module, torch.device], Engine] | None = None

    def __post_init__(self) -> None:
        if self.dense_step_px is not None and self.dense_step_px < 1:
            raise ValueError(f"dense_step_px must be >= 1, got {self.dense_step_px}")
        if self.engine is not None and self.dense_step_px is None:
            raise ValueError(f"architecture {self.name!r}: an engine needs dense_step_px")

    def supports_dense(self, stride_px: int) -> bool:
        """Whether tiles on a ``stride_px`` grid can be evaluated densely."""
        return self.dense_step_px is not None and stride_px % self.dense_step_px == 0
