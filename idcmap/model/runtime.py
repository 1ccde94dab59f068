"""Model runtime: choose a device, build a registered architecture, run it on pixels.

* :data:`ARCHITECTURES` maps the ``architecture`` name of a model file to what the runtime
  needs (:class:`~idcmap.model.archs.Architecture`: builder, dense step, optional fast engine); each
  architecture lives in its own module under :mod:`idcmap.model.archs`;
* :func:`load_model` reads a model file (:mod:`idcmap.model.modelfile`) and returns an
  :class:`IDCModel`, whose :meth:`~IDCModel.predict` (tiles) and
  :meth:`~IDCModel.predict_dense` (every tile of a block) serve any architecture.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from idcmap.errors import ModelError, UsageError
from idcmap.model.archs import Architecture, Engine, idcnet
from idcmap.model.modelfile import (
    ModelConfig,
    bundled_model_path,
    find_config,
    read_config,
    read_weights,
)
from idcmap.pipeline.aggregate import PREFIX as AGG_PREFIX
from idcmap.pipeline.aggregate import Aggregator

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "IDCModel",
    "ModelConfig",
    "build_network",
    "bundled_model_path",
    "get_architecture",
    "load_model",
    "register_architecture",
    "resolve_device",
    "torch_threads",
]

#: The architectures model files may name, by name. Add one entry per module of idcmap/archs.
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (idcnet.ARCHITECTURE,)}


def register_architecture(arch: Architecture, *, replace: bool = False) -> None:
    """Make ``arch`` loadable by name (for architectures defined outside idcmap)."""
    if arch.name in ARCHITECTURES and not replace:
        raise ValueError(f"architecture {arch.name!r} is already registered (replace=True)")
    ARCHITECTURES[arch.name] = arch


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` CPU threads for torch, then restore the count it had.

    ``None`` leaves torch's (process-wide) setting alone: library calls change it only when
    their caller asks them to (e.g. ``predict_grid(torch_threads=...)``).
    """
    if n is None:
        yield
        return
    if n < 1:
        raise UsageError(f"torch_threads={n} must be ≥ 1 (or None: torch's own setting)")
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ModelError(
            f"unknown architecture {name!r} (known: {sorted(ARCHITECTURES)}); "
            "upgrade idcmap or use a model exported by this version"
        ) from None


def build_network(config: ModelConfig) -> nn.Module:
    """A fresh, untrained network of ``config``'s architecture and ``arch_params``."""
    arch = get_architecture(config.architecture)
    try:
        return arch.build(mean=config.mean, std=config.std, **config.arch_params)
    except (TypeError, ValueError) as e:
        raise ModelError(
            f"arch_params {config.arch_params} do not fit architecture {arch.name!r}: {e}"
        ) from e


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → cuda, then mps, then cpu. Asking for an absent device is a :class:`UsageError`."""
    device = str(device).lower()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(
                f"device='{device}' was asked for but no CUDA GPU is visible; "
                "use device='cpu' or device='auto'"
            )
        return torch.device(device)
    if device == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise UsageError(
                "device='mps' was asked for but MPS is not available; "
                "use device='cpu' or device='auto'"
            )
        return torch.device("mps")
    raise UsageError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")


class IDCModel:
    """A loaded model: config + network on a device, ready for batched inference.

    Create it with :func:`load_model`. Inputs are uint8 RGB arrays at the config's µm/px.

    Args:
        config: the model file's config.
        net: a network of ``architecture`` (weights loaded).
        device: where to run it.
        path: the model JSON it came from, if any.
        architecture: what the runtime may do with ``net`` (default: the registered
            architecture that ``config.architecture`` names).
        aggregator: the learned aggregation stage of the model file (``config.aggregator``),
            ``None`` when it has none.
    """

    def __init__(
        self,
        config: ModelConfig,
        net: nn.Module,
        device: torch.device,
        path: Path | None = None,
        architecture: Architecture | None = None,
        aggregator: Aggregator | None = None,
    ) -> None:
        self.config = config
        self.aggregator = aggregator
        self.path = path
        self.device = device
        self.architecture = architecture or get_architecture(config.architecture)
        self.net = net.to(device).eval()
        if device.type == "cpu":
            self.net = self.net.to(memory_format=torch.channels_last)
        self._forward_dense: Callable[[torch.Tensor, int], torch.Tensor] | None = None
        if self.architecture.dense_step_px is not None:
            self._forward_dense = getattr(self.net, "forward_dense", None)
            if not callable(self._forward_dense):
                raise TypeError(
                    f"architecture {self.architecture.name!r} declares dense evaluation but "
                    f"{type(net).__name__} has no forward_dense"
                )
        self._fast: Engine | None = None
        self._blur_net: IDCModel | None = None
        self._ink_net: IDCModel | None = None

    def blur_model(self) -> IDCModel | None:
        """The second network of ``config.blur_model`` for out-of-focus tissue, loaded on the
        first call on this model's device (a bundled model's name); None when it has none."""
        if self._blur_net is None and self.config.blur_model:
            self._blur_net = load_model(self.config.blur_model["model"], device=self.device.type)
        return self._blur_net

    def ink_model(self) -> IDCModel | None:
        """The second network of ``config.ink_model`` for tissue under marker ink, loaded on
        the first call on this model's device (a bundled model's name); None when it has none."""
        if self._ink_net is None and self.config.ink_model:
            self._ink_net = load_model(self.config.ink_model["model"], device=self.device.type)
        return self._ink_net

    def _engine(self) -> Engine | None:
        """The architecture's inference-only engine (built on first use, from the weights as
        they are then); None where the architecture has none or the net is training."""
        if self._fast is None and self.architecture.engine is not None and not self.net.training:
            self._fast = self.architecture.engine(self.net, self.device)
        return self._fast

    def _to_u8(self, arr: np.ndarray) -> torch.Tensor:
        """uint8 N×H×W×3 numpy → the same on the device (pinned, asynchronous copy on CUDA)."""
        arr = np.ascontiguousarray(arr)
        if not arr.flags.writeable:  # read only here: no copy needed
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                t = torch.from_numpy(arr)
        else:
            t = torch.from_numpy(arr)
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        elif self.device.type != "cpu":
            t = t.to(self.device)
        return t

    @property
    def sha256(self) -> str:
        return self.config.weights_sha256

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _to_input(self, arr: np.ndarray) -> torch.Tensor:
        """uint8 N×H×W×3 → float N×3×H×W in [0, 1] on the device."""
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if self.device.type != "cpu":
            t = t.pin_memory().to(self.device, non_blocking=True)
        t = t.permute(0, 3, 1, 2).float().div_(255.0)
        if self.device.type == "cpu":
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    @torch.inference_mode()
    def predict(self, patches: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """IDC probability of each patch.

        Args:
            patches: uint8 array N×P×P×3 (P = ``config.patch_px``), RGB at ``config.mpp``.
            batch_size: patches per forward pass.

        Returns:
            float32 array of N probabilities in [0, 1].
        """
        p = self.config.patch_px
        if patches.ndim != 4 or patches.shape[1:] != (p, p, 3) or patches.dtype != np.uint8:
            raise ValueError(
                f"patches must be uint8 N×{p}×{p}×3, got {patches.dtype} {patches.shape}"
            )
        out = np.empty(len(patches), dtype=np.float32)
        fast = self._engine() if self.supports_dense(p) else None
        if fast is not None:
            for i in range(0, len(patches), batch_size):
                prob = fast(self._to_u8(patches[i : i + batch_size]), p)
                out[i : i + len(prob)] = prob.reshape(-1).cpu().numpy()
            return out
        for i in range(0, len(patches), batch_size):
            with self._autocast():
                logits = self.net(self._to_input(patches[i : i + batch_size]))
            out[i : i + len(logits)] = torch.softmax(logits.float(), 1)[:, 1].cpu().numpy()
        return out

    @torch.inference_mode()
    def predict_dense(self, block: np.ndarray, stride_px: int) -> np.ndarray:
        """IDC probability of every tile of a block on a ``stride_px`` grid.

        Args:
            block: uint8 H×W×3 (or N×H×W×3) RGB at ``config.mpp``, H, W ≥ patch size.
            stride_px: tile step in model pixels; a multiple of the architecture's
                ``dense_step_px`` (see :meth:`supports_dense`).

        Returns:
            float32 h×w (or N×h×w) array; entry (i, j) is the probability of the tile whose
            top-left corner is at (row ``i*stride_px``, col ``j*stride_px``) of the block, with
            ``h = (H - patch) // stride_px + 1``.
        """
        k = self.architecture.dense_step_px
        if k is None or self._forward_dense is None or stride_px % k:
            raise ValueError(
                f"architecture {self.architecture.name!r} cannot evaluate tiles densely at "
                f"stride {stride_px} px (supports_dense is False)"
            )
        single = block.ndim == 3
        arr = block[None] if single else block
        fast = self._engine()
        if fast is not None and arr.dtype == np.uint8:
            # tiles start and end on the dense step's grid: what lies past it is in no tile
            h, w = arr.shape[1] // k * k, arr.shape[2] // k * k
            prob = fast(self._to_u8(arr[:, :h, :w]), stride_px).cpu().numpy()
            return prob[0] if single else prob
        with self._autocast():
            logits = self._forward_dense(self._to_input(arr), stride_px)
        prob = torch.softmax(logits.float(), 1)[:, 1].cpu().numpy()
        return prob[0] if single else prob

    def supports_dense(self, stride_px: int) -> bool:
        """Whether :meth:`predict_dense` can evaluate tiles on a ``stride_px`` grid (declared
        by the architecture)."""
        return self.architecture.supports_dense(stride_px)


def load_model(path: str | Path | None = None, device: str = "auto") -> IDCModel:
    """Load a model file (its ``.json`` or ``.safetensors``, or a folder holding one pair).

    ``path=None`` loads the model bundled with idcmap. The weights are checked against the
    config's sha256 and loaded with safetensors: nothing is unpickled.

    Raises:
        ModelError: missing, damaged or foreign file, unknown architecture, or weights that do
            not fit the config.
        UsageError: unknown or absent device.
    """
    dev = resolve_device(device)
    json_path = find_config(path if path is not None else bundled_model_path())
    cfg = read_config(json_path)
    net = build_network(cfg)
    state = read_weights(json_path, cfg)
    agg_state = {k: state.pop(k) for k in [k for k in state if k.startswith(AGG_PREFIX)]}
    aggregator = None
    if cfg.aggregator:
        aggregator = Aggregator.from_model_file(cfg.aggregator, agg_state)
    elif agg_state:
        raise ModelError(
            f"{json_path} has aggregator tensors but no 'aggregator' section; re-export the model"
        )
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:  # missing, unexpected or mis-shaped tensors
        raise ModelError(
            f"weights of {json_path} do not fit its architecture: {e}; re-export the model"
        ) from e
    return IDCModel(cfg, net, dev, path=json_path, aggregator=aggregator)
