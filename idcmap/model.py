"""Model stage: the IDC patch classifier, its file format and batched inference.

A model is two files side by side:

* ``<name>.safetensors`` — the weights (no pickle, nothing executed at load time);
* ``<name>.json`` — its config (:class:`ModelConfig`): architecture, µm/px, patch size, input
  normalisation, class names, default threshold, version, the weights' sha256 and a training
  summary.

The architecture, :class:`IDCNet`, is built so that overlapping tiles *share* their computation:
a 5x5/5 patchify stem and point-wise layers on a 5-px grid, a 5x5/5 convolution to a 25-px grid,
then a 2x2 convolution to one output per 50-px tile. No layer pads, so evaluating the network
fully convolutionally over a large block (:meth:`IDCModel.predict_dense`) gives, at every tile
position on a 5-px grid, exactly what evaluating that tile on its own gives (up to float
rounding) — and a stride-25 heatmap costs little more than a stride-50 one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import ModelError, UsageError

FORMAT = "idcmap-model/1"
BUNDLED_MODEL = "idc-v1"


# --------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------


class IDCNet(nn.Module):
    """A small CNN for 50x50-px RGB patches whose dense evaluation equals tile evaluation.

    Input: float N×3×H×W in [0, 1] (normalised inside, with the ``mean``/``std`` buffers).
    ``forward`` on 50x50 patches returns N×2 logits (not IDC, IDC).

    Geometry (no padding anywhere):
    stem 5x5 stride 5 → grid A (5 px); point-wise residual block on A;
    5x5 stride 5 over A → grid B (25 px); point-wise layer on B;
    2x2 over B → one cell per 50 px; 1x1 head → 2 logits.
    """

    patch_px = 50
    stem_px = 5  # px of one grid-A cell
    block_b = 5  # grid-A cells per grid-B cell (25 px)

    def __init__(
        self,
        widths: tuple[int, int, int] = (64, 192, 256),
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.25, 0.25, 0.25),
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        ca, cb, cc = widths
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.stem = _conv_bn_relu(3, ca, self.stem_px, stride=self.stem_px)
        self.mix_a = nn.Sequential(
            nn.Conv2d(ca, 2 * ca, 1, bias=False),
            nn.BatchNorm2d(2 * ca),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * ca, ca, 1, bias=False),
            nn.BatchNorm2d(ca),
        )
        self.down_b = _conv_bn_relu(ca, cb, self.block_b, stride=self.block_b)
        self.mix_b = _conv_bn_relu(cb, cb, 1)
        self.down_c = _conv_bn_relu(cb, cc, 2)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Conv2d(cc, 2, 1)

    def _grid_a(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        a = self.stem(x)
        return torch.relu(a + self.mix_a(a))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N×3×50×50 in [0, 1] → N×2 logits."""
        a = self._grid_a(x)
        b = self.mix_b(self.down_b(a))
        c = self.down_c(b)
        return self.head(self.drop(c)).flatten(1)

    def forward_dense(self, x: torch.Tensor, stride_px: int) -> torch.Tensor:
        """N×3×H×W → N×2×h×w logits of every 50-px tile whose top-left corner lies on the
        ``stride_px`` grid of the block (``stride_px`` a multiple of 5).

        ``h = (H - 50) // stride_px + 1``. Grid B is computed with stride 5 (25-px steps) when
        ``stride_px`` is a multiple of 25, else at every grid-A cell (à trous), so no work is
        repeated between overlapping tiles.
        """
        if stride_px % self.stem_px:
            raise ValueError(
                f"dense evaluation needs a stride that is a multiple of {self.stem_px}"
            )
        a = self._grid_a(x)
        step_a = stride_px // self.stem_px  # output step in grid-A cells
        r = math.gcd(step_a, self.block_b)  # grid-B step in grid-A cells: 1 or 5
        down_b = self.down_b[0]
        b = nn.functional.conv2d(a, down_b.weight, None, stride=r)
        b = self.down_b[2](self.down_b[1](b))
        b = self.mix_b(b)
        down_c = self.down_c[0]
        c = nn.functional.conv2d(b, down_c.weight, None, dilation=self.block_b // r)
        c = self.down_c[2](self.down_c[1](c))
        logits = self.head(c)
        sub = step_a // r
        return logits[:, :, ::sub, ::sub]


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


ARCHITECTURES: dict[str, type[nn.Module]] = {"idcnet-v1": IDCNet}


# --------------------------------------------------------------------------------------------
# Config and files
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """What a model file says about itself (the JSON beside the weights).

    Attributes:
        name: short model name, e.g. ``"idcmap-idc"``.
        version: the model's own version string.
        architecture: key of :data:`ARCHITECTURES`.
        arch_params: keyword arguments of the architecture (e.g. ``widths``).
        mpp: µm per pixel the model expects (the IDC data set: 4.0).
        patch_px: side of one input patch in model pixels (50).
        mean, std: per-channel normalisation of inputs scaled to [0, 1] (applied inside the net).
        class_names: names of the logits, negative first.
        tile_threshold: IDC-probability threshold of one tile (patch), chosen on validation
            patients; classifies tiles (e.g. the tile GeoJSON). Model files written by 0.1.0
            call it ``threshold``.
        smooth_um: sigma (µm) of the tissue-aware Gaussian applied to the heatmap before
            region masks are drawn (0: none); chosen with ``idcmap evaluate tune-regions``.
        region_threshold: threshold of the smoothed heatmap for region masks, chosen with
            ``idcmap evaluate tune-regions``; a file without one uses ``tile_threshold``.
        weights_file: file name of the safetensors weights, next to the JSON.
        weights_sha256: sha256 of that file; checked at load.
        training: free-form training summary (data, split, epochs, metrics).
    """

    name: str
    version: str
    architecture: str
    mpp: float
    patch_px: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: tuple[str, str] = ("not IDC", "IDC")
    tile_threshold: float = 0.5
    smooth_um: float = 0.0
    region_threshold: float = math.nan  # NaN: the tile threshold (resolved in __post_init__)
    arch_params: dict[str, Any] = field(default_factory=dict)
    weights_file: str = ""
    weights_sha256: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    def __post_init__(self) -> None:
        if math.isnan(self.region_threshold):
            object.__setattr__(self, "region_threshold", self.tile_threshold)

    @property
    def threshold(self) -> float:
        """Read-only alias of :attr:`tile_threshold` while callers move to the new name."""
        return self.tile_threshold

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        if d.get("format") != FORMAT:
            raise ModelError(
                f"not an idcmap model config (format {d.get('format')!r}, expected {FORMAT!r}); "
                "pass a .json written by 'idcmap train' or leave --model out for the bundled one"
            )
        try:
            return cls(
                name=str(d["name"]),
                version=str(d["version"]),
                architecture=str(d["architecture"]),
                mpp=float(d["mpp"]),
                patch_px=int(d["patch_px"]),
                mean=tuple(float(v) for v in d["mean"]),  # type: ignore[arg-type]
                std=tuple(float(v) for v in d["std"]),  # type: ignore[arg-type]
                class_names=tuple(d.get("class_names", ("not IDC", "IDC"))),  # type: ignore[arg-type]
                # 0.1.0 files name the tile threshold "threshold"
                tile_threshold=float(d.get("tile_threshold", d.get("threshold", 0.5))),
                smooth_um=float(d.get("smooth_um", 0.0)),
                region_threshold=(
                    math.nan if d.get("region_threshold") is None else float(d["region_threshold"])
                ),
                arch_params=dict(d.get("arch_params", {})),
                weights_file=str(d.get("weights_file", "")),
                weights_sha256=str(d.get("weights_sha256", "")),
                training=dict(d.get("training", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(
                f"model config is incomplete or malformed ({e!r}); re-export it"
            ) from e

    def build(self) -> nn.Module:
        """A fresh, untrained network of this config's architecture."""
        try:
            arch = ARCHITECTURES[self.architecture]
        except KeyError:
            raise ModelError(
                f"unknown architecture {self.architecture!r} (known: {sorted(ARCHITECTURES)}); "
                "upgrade idcmap or use a model exported by this version"
            ) from None
        params = dict(self.arch_params)
        if "widths" in params:
            params["widths"] = tuple(params["widths"])
        return arch(mean=self.mean, std=self.std, **params)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model(net: nn.Module, config: ModelConfig, json_path: str | Path) -> ModelConfig:
    """Write ``net``'s weights as safetensors next to ``json_path`` and the config with their
    sha256. Returns the config as written."""
    from safetensors.torch import save_file

    json_path = Path(json_path)
    if json_path.suffix != ".json":
        raise UsageError(f"model path must end in .json, got {json_path}")
    weights = json_path.with_suffix(".safetensors")
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(weights), metadata={"format": FORMAT})
    cfg = _replace(config, weights_file=weights.name, weights_sha256=sha256_file(weights))
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(cfg.to_json())
    tmp.replace(json_path)
    return cfg


def _replace(cfg: ModelConfig, **kw: Any) -> ModelConfig:
    d = asdict(cfg)
    d.update(kw)
    return ModelConfig.from_dict(d)


def bundled_model_path() -> Path:
    """Path of the JSON of the model shipped inside the package."""
    return Path(str(resources.files("idcmap") / "models" / f"{BUNDLED_MODEL}.json"))


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
                "--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto"
            )
        return torch.device(device)
    if device == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise UsageError(
                "--device mps was asked for but MPS is not available; use --device cpu or auto"
            )
        return torch.device("mps")
    raise UsageError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")


# --------------------------------------------------------------------------------------------
# Inference engine
# --------------------------------------------------------------------------------------------


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of ``bn(conv(x))`` as one convolution (eval-mode statistics)."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    w = conv.weight.detach() * scale.view(-1, 1, 1, 1)
    b = bn.bias.detach() - bn.running_mean * scale
    if conv.bias is not None:
        b = b + conv.bias.detach() * scale
    return w.float(), b.float()


class _FastIDCNet:
    """An :class:`IDCNet` for inference only, computing the same function with fewer passes.

    * every BatchNorm is folded into the convolution before it;
    * the input scaling (uint8 / 255) and the normalisation (``mean``/``std``) are folded into the
      stem, which reads uint8 pixels directly (no float image at full resolution);
    * the two patchify convolutions (5x5 stride 5, no overlap) are matrix products over the
      channels-last pixels (one ``addmm`` each, bias and ReLU in place), and so are the
      point-wise layers; the last 2x2 convolution is evaluated only at the output positions
      (stride instead of sub-sampling afterwards);
    * the head's two logits become one (softmax of two = sigmoid of their difference).

    Weights are a snapshot of ``net`` taken at construction. On CUDA it computes in float16
    (float32 accumulation), elsewhere in float32.
    """

    def __init__(self, net: IDCNet, device: torch.device) -> None:
        self.device = device
        self.dtype = torch.float16 if device.type == "cuda" else torch.float32
        mean, std = net.mean.detach().view(3).float(), net.std.detach().view(3).float()
        # stem: conv(W, (x/255 - m)/s) = conv(W / (255 s), x) - sum W m / s
        w, b = _fold_bn(net.stem[0], net.stem[1])
        b = b - (w * (mean / std).view(1, 3, 1, 1)).sum((1, 2, 3))
        w = w / (255.0 * std).view(1, 3, 1, 1)
        self.stem_w = self._mat(w)  # (5·5·3) × ca, rows in (dy, dx, c) order
        self.stem_b = self._vec(b)
        w, b = _fold_bn(net.mix_a[0], net.mix_a[1])
        self.mixa1_w, self.mixa1_b = self._mat(w), self._vec(b)
        w, b = _fold_bn(net.mix_a[3], net.mix_a[4])
        self.mixa2_w, self.mixa2_b = self._mat(w), self._vec(b)
        w, b = _fold_bn(net.down_b[0], net.down_b[1])
        self.downb_conv = (self._dev(w), self._vec(b))
        self.downb_w, self.downb_b = self._mat(w), self._vec(b)
        w, b = _fold_bn(net.mix_b[0], net.mix_b[1])
        self.mixb_w, self.mixb_b = self._mat(w), self._vec(b)
        w, b = _fold_bn(net.down_c[0], net.down_c[1])
        self.downc_w, self.downc_b = self._dev(w), self._vec(b)
        self.downc_mat = self._mat(w)  # (2·2·cb) × cc, rows in (dy, dx, cb) order
        # cb × (4·cc): column block k = dy·2 + dx holds the weights of window offset (dy, dx)
        self.downc_cat = self._dev(w.permute(1, 2, 3, 0).reshape(w.shape[1], -1))
        hw = net.head.weight.detach().float().view(2, -1)
        hb = net.head.bias.detach().float() if net.head.bias is not None else torch.zeros(2)
        self.head_w = self._vec(hw[1] - hw[0])
        self.head_b = float(hb[1] - hb[0])
        self.stem_px, self.block_b = net.stem_px, net.block_b
        self.ca = self.stem_b.numel()

    def _dev(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, self.dtype).contiguous()

    def _vec(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1).to(self.device, self.dtype).contiguous()

    def _mat(self, w: torch.Tensor) -> torch.Tensor:
        """cout × cin × k × k → (k·k·cin) × cout, rows in (dy, dx, cin) order."""
        m = w.permute(2, 3, 1, 0).reshape(-1, w.shape[0])
        return m.to(self.device, self.dtype).contiguous()

    def __call__(self, x: torch.Tensor, stride_px: int) -> torch.Tensor:
        """uint8 N×H×W×3 (H, W multiples of 5) → float32 N×h×w IDC probabilities of the
        50-px tiles on the ``stride_px`` grid (a multiple of 5), as IDCNet.forward_dense."""
        n, h, w, _ = x.shape
        k = self.stem_px
        ha, wa = h // k, w // k
        # grid A: patchify stem (uint8 patches → matrix product), point-wise residual block
        p = x[:, : ha * k, : wa * k].reshape(n, ha, k, wa, k, 3).permute(0, 1, 3, 2, 4, 5)
        p = p.reshape(-1, k * k * 3).to(self.dtype)
        a = torch.addmm(self.stem_b, p, self.stem_w).relu_()
        del p
        t = torch.addmm(self.mixa1_b, a, self.mixa1_w).relu_()
        a = torch.addmm(a, t, self.mixa2_w).add_(self.mixa2_b).relu_()
        del t
        step_a = stride_px // k
        r = math.gcd(step_a, self.block_b)
        ca = self.ca
        if r == self.block_b and ha % r == 0 and wa % r == 0:
            # grid B at 25-px steps: non-overlapping 5x5 patches of grid A
            hb, wb = ha // r, wa // r
            pb = a.view(n, hb, r, wb, r, ca).permute(0, 1, 3, 2, 4, 5).reshape(-1, r * r * ca)
            b = torch.addmm(self.downb_b, pb, self.downb_w).relu_()
            del pb
        else:
            # à trous: grid B at every grid-A cell
            a4 = a.view(n, ha, wa, ca).permute(0, 3, 1, 2)
            wconv, bconv = self.downb_conv
            b4 = nn.functional.conv2d(a4, wconv, bconv, stride=r).relu_()
            hb, wb = b4.shape[2:]
            b = b4.permute(0, 2, 3, 1).reshape(-1, b4.shape[1])
        del a
        b = torch.addmm(self.mixb_b, b, self.mixb_w).relu_()
        cb = b.shape[1]
        sub = step_a // r  # output step in grid-B cells
        dil = self.block_b // r  # the 2x2 convolution's dilation on grid B
        hc, wc = (hb - dil - 1) // sub + 1, (wb - dil - 1) // sub + 1
        if dil == 1 and sub == 2:
            # stride 50: non-overlapping 2x2 patches of grid B
            b6 = b.view(n, hb, wb, cb)[:, : 2 * hc, : 2 * wc]
            pc = b6.reshape(n, hc, 2, wc, 2, cb).permute(0, 1, 3, 2, 4, 5).reshape(-1, 4 * cb)
            c = torch.addmm(self.downc_b, pc, self.downc_mat).relu_()
        elif dil == 1 and sub == 1:
            # stride 25: every 2x2 window; one product gives each cell's share in the 4 windows
            # that hold it, then shifted sums
            y = torch.mm(b, self.downc_cat).view(n, hb, wb, 4, -1)
            c = y[:, :-1, :-1, 0] + y[:, :-1, 1:, 1]
            c += y[:, 1:, :-1, 2]
            c += y[:, 1:, 1:, 3]
            c = c.add_(self.downc_b).relu_().reshape(-1, c.shape[-1])
        else:
            b4 = b.view(n, hb, wb, cb).permute(0, 3, 1, 2)
            c4 = nn.functional.conv2d(b4, self.downc_w, self.downc_b, stride=sub, dilation=dil)
            c = c4.relu_().permute(0, 2, 3, 1).reshape(-1, c4.shape[1])
        logit = torch.mv(c, self.head_w).add_(self.head_b).view(n, hc, wc)
        return torch.sigmoid(logit.float())


# --------------------------------------------------------------------------------------------
# Inference wrapper
# --------------------------------------------------------------------------------------------


class IDCModel:
    """A loaded model: config + network on a device, ready for batched inference.

    Create it with :func:`load_model`. Inputs are uint8 RGB arrays at the config's µm/px.
    """

    def __init__(
        self, config: ModelConfig, net: nn.Module, device: torch.device, path: Path | None = None
    ) -> None:
        self.config = config
        self.path = path
        self.device = device
        self.net = net.to(device).eval()
        if device.type == "cpu":
            self.net = self.net.to(memory_format=torch.channels_last)
        self._fast: _FastIDCNet | None = None
        self._fast_failed = False

    def _engine(self) -> _FastIDCNet | None:
        """The folded, matrix-product form of an :class:`IDCNet` (built on first use, from the
        weights as they are then); None for other networks."""
        if self._fast is None and not self._fast_failed:
            if type(self.net) is IDCNet and not self.net.training:
                self._fast = _FastIDCNet(self.net, self.device)
            else:
                self._fast_failed = True
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
        fast = self._engine() if p % IDCNet.stem_px == 0 else None
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
            stride_px: tile step in model pixels; must be a multiple of 5 for this architecture.

        Returns:
            float32 h×w (or N×h×w) array; entry (i, j) is the probability of the tile whose
            top-left corner is at (row ``i*stride_px``, col ``j*stride_px``) of the block, with
            ``h = (H - patch) // stride_px + 1``.
        """
        single = block.ndim == 3
        arr = block[None] if single else block
        fast = self._engine()
        k = IDCNet.stem_px
        if fast is not None and stride_px % k == 0 and arr.dtype == np.uint8:
            h, w = arr.shape[1] // k * k, arr.shape[2] // k * k  # the rest is in no tile
            prob = fast(self._to_u8(arr[:, :h, :w]), stride_px).cpu().numpy()
            return prob[0] if single else prob
        with self._autocast():
            logits = self.net.forward_dense(self._to_input(arr), stride_px)  # type: ignore[operator]
        prob = torch.softmax(logits.float(), 1)[:, 1].cpu().numpy()
        return prob[0] if single else prob

    def supports_dense(self, stride_px: int) -> bool:
        return hasattr(self.net, "forward_dense") and stride_px % IDCNet.stem_px == 0


def load_model(path: str | Path | None = None, device: str = "auto") -> IDCModel:
    """Load a model file (its ``.json`` or ``.safetensors``, or a folder holding one pair).

    ``path=None`` loads the model bundled with idcmap. The weights are checked against the
    config's sha256 and loaded with safetensors: nothing is unpickled.

    Raises:
        ModelError: missing, damaged or foreign file, or weights that do not fit the config.
        UsageError: unknown or absent device.
    """
    dev = resolve_device(device)
    json_path = _find_config(Path(path) if path is not None else bundled_model_path())
    try:
        d = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read model config {json_path}: {e}; re-export the model") from e
    if not isinstance(d, dict):
        raise ModelError(f"{json_path} is not an idcmap model config; re-export the model")
    cfg = ModelConfig.from_dict(d)
    weights = json_path.parent / (cfg.weights_file or json_path.with_suffix(".safetensors").name)
    if not weights.is_file():
        raise ModelError(
            f"model weights {weights} are missing; keep the .safetensors next to its .json"
        )
    digest = sha256_file(weights)
    if cfg.weights_sha256 and digest != cfg.weights_sha256:
        raise ModelError(
            f"model weights {weights} do not match their config (sha256 {digest[:12]}… ≠ "
            f"{cfg.weights_sha256[:12]}…): the file is damaged or foreign; reinstall or re-export"
        )
    net = cfg.build()
    try:
        from safetensors.torch import load_file

        state = load_file(str(weights))
        net.load_state_dict(state, strict=True)
    except Exception as e:  # safetensors raises its own types for corrupt headers
        raise ModelError(
            f"cannot load weights {weights}: {e}; reinstall or re-export the model"
        ) from e
    return IDCModel(cfg, net, dev, path=json_path)


def _find_config(p: Path) -> Path:
    if p.is_dir():
        found = sorted(q for q in p.glob("*.json") if not q.name.endswith(".split.json"))
        if len(found) != 1:
            raise ModelError(f"{p} should hold exactly one model .json, found {len(found)}")
        return found[0]
    if p.suffix == ".safetensors":
        p = p.with_suffix(".json")
    if not p.is_file():
        raise ModelError(f"model config {p} not found; pass the .json written by 'idcmap train'")
    return p
