"""IDCNet (``idcnet-v1``): the IDC patch classifier and its folded inference engine.

The network is built so that overlapping tiles *share* their computation: a 5x5/5 patchify stem
and point-wise layers on a 5-px grid, a 5x5/5 convolution to a 25-px grid, then a 2x2
convolution to one output per 50-px tile. No layer pads, so evaluating the network fully
convolutionally over a large block (:meth:`IDCNet.forward_dense`) gives, at every tile position
on a 5-px grid, exactly what evaluating that tile on its own gives (up to float rounding) — and
a stride-25 heatmap costs little more than a stride-50 one. Its dense step is therefore 5 px.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from idcmap.model.archs import Architecture


class IDCNet(nn.Module):
    """A small CNN for 50x50-px RGB patches whose dense evaluation equals tile evaluation.

    Input: float N×3×H×W in [0, 1] (normalised inside, with the ``mean``/``std`` buffers).
    ``forward`` on 50x50 patches returns N×2 logits (not IDC, IDC).

    Geometry (no padding anywhere):
    stem 5x5 stride 5 → grid A (5 px); point-wise residual block on A;
    5x5 stride 5 over A → grid B (25 px); point-wise layer on B;
    2x2 over B → one cell per 50 px; 1x1 head → 2 logits.
    """

    mean: torch.Tensor  # buffers (registered in __init__)
    std: torch.Tensor
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
        conv, bn = _conv_bn(self.down_b)
        b = nn.functional.conv2d(a, conv.weight, None, stride=r)
        b = self.down_b[2](bn(b))
        b = self.mix_b(b)
        conv, bn = _conv_bn(self.down_c)
        c = nn.functional.conv2d(b, conv.weight, None, dilation=self.block_b // r)
        c = self.down_c[2](bn(c))
        logits = self.head(c)
        sub = step_a // r
        return logits[:, :, ::sub, ::sub]


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _conv_bn(seq: nn.Sequential, i: int = 0) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """The convolution at ``seq[i]`` and the BatchNorm after it."""
    conv, bn = seq[i], seq[i + 1]
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"expected Conv2d, BatchNorm2d at {i}, {i + 1} of {seq}")
    return conv, bn


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of ``bn(conv(x))`` as one convolution (eval-mode statistics)."""
    if bn.running_var is None or bn.running_mean is None:
        raise TypeError("BatchNorm without running statistics cannot be folded")
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    w = conv.weight.detach() * scale.view(-1, 1, 1, 1)
    b = bn.bias.detach() - bn.running_mean * scale
    if conv.bias is not None:
        b = b + conv.bias.detach() * scale
    return w.float(), b.float()


class FastIDCNet:
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
        w, b = _fold_bn(*_conv_bn(net.stem))
        b = b - (w * (mean / std).view(1, 3, 1, 1)).sum((1, 2, 3))
        w = w / (255.0 * std).view(1, 3, 1, 1)
        self.stem_w = self._mat(w)  # (5·5·3) × ca, rows in (dy, dx, c) order
        self.stem_b = self._vec(b)
        w, b = _fold_bn(*_conv_bn(net.mix_a, 0))
        self.mixa1_w, self.mixa1_b = self._mat(w), self._vec(b)
        w, b = _fold_bn(*_conv_bn(net.mix_a, 3))
        self.mixa2_w, self.mixa2_b = self._mat(w), self._vec(b)
        w, b = _fold_bn(*_conv_bn(net.down_b))
        self.downb_conv = (self._dev(w), self._vec(b))
        self.downb_w, self.downb_b = self._mat(w), self._vec(b)
        w, b = _fold_bn(*_conv_bn(net.mix_b))
        self.mixb_w, self.mixb_b = self._mat(w), self._vec(b)
        w, b = _fold_bn(*_conv_bn(net.down_c))
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


def build(
    mean: Sequence[float],
    std: Sequence[float],
    widths: Sequence[int] = (64, 192, 256),
    dropout: float = 0.3,
) -> IDCNet:
    """An untrained :class:`IDCNet` from a model config's ``mean``, ``std`` and ``arch_params``."""
    ca, cb, cc = (int(w) for w in widths)
    m0, m1, m2 = (float(v) for v in mean)
    s0, s1, s2 = (float(v) for v in std)
    return IDCNet(widths=(ca, cb, cc), mean=(m0, m1, m2), std=(s0, s1, s2), dropout=dropout)


def engine(net: nn.Module, device: torch.device) -> FastIDCNet:
    if not isinstance(net, IDCNet):
        raise TypeError(f"the IDCNet engine needs an IDCNet, got {type(net).__name__}")
    return FastIDCNet(net, device)


ARCHITECTURE = Architecture(
    name="idcnet-v1",
    build=build,
    default_params={"widths": [64, 192, 256], "dropout": 0.3},
    dense_step_px=IDCNet.stem_px,
    engine=engine,
)
