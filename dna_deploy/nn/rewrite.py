"""Rewrites of a built network that keep its function and change only which kernels a runtime runs.

Why: LiteRT's XNNPACK kernels run a depthwise convolution with more than 25 taps (7x7) several
times slower than the taps alone explain, in fp32 and int8 alike. On a 2-core AMD EPYC at 28x28
with 240 channels (bench/int8_ops.py): 5x5 fp32 0.36 ms, int8 0.24 ms; 7x7 fp32 3.6 ms, int8
5.6 ms; LiteRT's own builtin kernels 1.4 ms for both. Split into an inner 5x5 plus one 1x7
convolution per outer row and one 5x1 per outer column, the same 7x7 ran in 0.86 ms (fp32) and
0.75 ms (int8). That pathology was most of why full-integer int8 ran slower than fp32 here (issue
13): MBConv layers with 7x7 kernels were 2.1-2.7x slower in int8, 3x3 and 5x5 ones 1.0-1.6x.

In float the split is exact (the same products, summed in another order; BatchNorm folded in
first), so PyTorch, ONNX Runtime and the LiteRT fp32/fp16 export agree as before. In full-integer
int8 each partial sum is requantised, which adds rounding; verify judges int8 exports by top-1
agreement and accuracy as before. The LiteRT path applies it to every model it converts for
XNNPACK (LiteRT's default kernels): op models for latency tables, validation networks and exports,
so a table measures the graph that ships (`graph_recipe` in host.py names the recipe among each
LiteRT table's versions). LiteRT's builtin kernels run the 7x7 at full speed and the split pieces
1.8-4.4x slower (bench/int8_kernels.py), so a device that runs them gets the graph as trained
(`litert_graph`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_DEPTHWISE_TAPS = 25  # the largest depthwise kernel XNNPACK runs at full speed here (5x5)
INNER = 5


def foldable(bn: nn.Module) -> bool:
    """A BatchNorm2d that normalises with stored statistics in eval mode (one with
    track_running_stats=False uses each batch's own, and cannot be folded into weights)."""
    return isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats and bn.running_var is not None


def is_large_depthwise(m: nn.Module) -> bool:
    if not isinstance(m, nn.Conv2d) or m.groups != m.in_channels or m.in_channels != m.out_channels:
        return False
    kh, kw = m.kernel_size
    return (kh * kw > MAX_DEPTHWISE_TAPS and kh == kw and kh % 2 == 1 and m.dilation == (1, 1)
            and m.padding == (kh // 2, kw // 2) and m.padding_mode == "zeros")


class SplitDepthwise(nn.Module):
    """A k x k depthwise convolution (odd k > 5, 'same' padding), with the BatchNorm after it folded
    in, computed on one padded input as an inner 5x5 depthwise convolution plus a 1 x k one for
    each outer row and a 5 x 1 one for each outer column of the kernel: the same sums, in kernels
    that XNNPACK runs fast."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None):
        super().__init__()
        if not is_large_depthwise(conv):
            raise ValueError(f"SplitDepthwise takes a depthwise convolution over 5x5 taps with same padding, not {conv}")
        if bn is not None and not foldable(bn):
            raise ValueError("SplitDepthwise folds only a BatchNorm with running statistics (eval-mode behaviour)")
        c, k = conv.in_channels, conv.kernel_size[0]
        stride = conv.stride
        with torch.no_grad():
            w = conv.weight.detach().clone()
            b = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(c, dtype=w.dtype, device=w.device)
            if bn is not None:
                scale = torch.rsqrt(bn.running_var + bn.eps)
                if bn.weight is not None:
                    scale = scale * bn.weight
                w = w * scale[:, None, None, None]
                b = (b - bn.running_mean) * scale + (bn.bias if bn.bias is not None else 0)
        self.r = r = k // 2
        lo, hi = r - INNER // 2, r + INNER // 2 + 1  # the inner 5x5 window within the kernel

        def part(kernel, weight, bias=None):
            m = nn.Conv2d(c, c, kernel, stride, groups=c, bias=bias is not None, device=w.device, dtype=w.dtype)
            m.weight.data.copy_(weight)
            if bias is not None:
                m.bias.data.copy_(bias)
            return m

        self.inner = part(INNER, w[:, :, lo:hi, lo:hi], b)
        self.row_offsets = [u for u in range(k) if not lo <= u < hi]
        self.rows = nn.ModuleList(part((1, k), w[:, :, u:u + 1, :]) for u in self.row_offsets)
        self.col_offsets = [v for v in range(k) if not lo <= v < hi]
        self.cols = nn.ModuleList(part((INNER, 1), w[:, :, lo:hi, v:v + 1]) for v in self.col_offsets)
        self.lo = lo

    @staticmethod
    def _window(start: int, trim: int) -> slice:
        """Rows/columns start .. end-trim of the padded input, written without its size (static in ONNX)."""
        return slice(start, -trim if trim else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, lo = self.r, self.lo
        xp = F.pad(x, (r, r, r, r))
        band = self._window(lo, lo)  # the 5 middle kernel rows (or columns) for every output
        y = self.inner(xp[:, :, band, band])
        for u, conv in zip(self.row_offsets, self.rows):
            y = y + conv(xp[:, :, self._window(u, 2 * r - u), :])
        for v, conv in zip(self.col_offsets, self.cols):
            y = y + conv(xp[:, :, band, self._window(v, 2 * r - v)])
        return y


def split_large_depthwise(model: nn.Module) -> nn.Module:
    """A copy of `model` (in eval mode) with every depthwise convolution of more than 25 taps
    replaced by a SplitDepthwise; a BatchNorm right after one in an nn.Sequential is folded into
    it. Returns the model itself, untouched, when it has none."""
    if not any(is_large_depthwise(m) for m in model.modules()):
        return model
    model = copy.deepcopy(model).eval()
    for parent in list(model.modules()):
        names = list(parent._modules)
        for i, name in enumerate(names):
            child = parent._modules[name]
            if not is_large_depthwise(child):
                continue
            bn = None
            # only a plain Sequential is known to feed the conv's output straight into the next module
            if type(parent).forward is nn.Sequential.forward and isinstance(parent, nn.Sequential) \
                    and i + 1 < len(names) and foldable(parent._modules[names[i + 1]]):
                bn = parent._modules[names[i + 1]]
                parent._modules[names[i + 1]] = nn.Identity()
            parent._modules[name] = SplitDepthwise(child, bn)
    return model


def litert_graph(module: nn.Module, op_resolver: str | None = None) -> nn.Module:
    """The graph LiteRT runs with these kernels: split for XNNPACK (the default), as trained for
    the builtin or reference kernels (host.splits_large_depthwise)."""
    from dna_deploy.host import splits_large_depthwise

    return split_large_depthwise(module) if splits_large_depthwise("litert", op_resolver) else module
