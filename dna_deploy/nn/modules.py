"""The PyTorch module of each layer kind in the op table (space/ops.py). Plain, export-friendly
modules: no data-dependent control flow, so ONNX and LiteRT see the same graph as PyTorch."""

from __future__ import annotations

import torch
from torch import nn

from dna_deploy.space.ops import ACTIVATIONS, LayerSpec


def activation(name: str) -> nn.Module:
    return getattr(nn, ACTIVATIONS[name])()


class ConvBnAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: str | None = "swish"):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(activation(act))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeeze: int, act: str):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = activation(act)
        self.expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(self.act(self.reduce(s))))


class MBConv(nn.Module):
    """Inverted residual (MobileNetV2/EfficientNet): expand 1x1, depthwise kxk, SE, project 1x1."""

    def __init__(self, spec: LayerSpec):
        super().__init__()
        mid = spec.expanded_ch
        self.expand = ConvBnAct(spec.in_ch, mid, 1, act=spec.act) if spec.expand != 1 else nn.Identity()
        self.depthwise = ConvBnAct(mid, mid, spec.kernel, spec.stride, groups=mid, act=spec.act)
        self.se = SqueezeExcite(mid, spec.se_ch, spec.act) if spec.se_ch else nn.Identity()
        self.project = ConvBnAct(mid, spec.out_ch, 1, act=None)
        self.residual = spec.stride == 1 and spec.in_ch == spec.out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


class Head(nn.Module):
    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.conv = ConvBnAct(spec.in_ch, spec.mid_ch, 1, act=spec.act)
        self.classifier = nn.Linear(spec.mid_ch, spec.out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.conv(x).mean((2, 3)))


class StemConv(ConvBnAct):
    def __init__(self, spec: LayerSpec):
        super().__init__(spec.in_ch, spec.out_ch, spec.kernel, spec.stride, act=spec.act)


def grid_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C). onnx2tf folds the permute into its own NHWC layout."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def tokens_to_grid(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, c = t.shape
    return t.reshape(b, h, w, c).permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    """Non-overlapping patches (a kernel = stride conv) plus a learned position embedding, on the grid."""

    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.proj = nn.Conv2d(spec.in_ch, spec.out_ch, spec.kernel, spec.stride)
        self.position = nn.Parameter(torch.zeros(1, spec.out_ch, spec.out_hw, spec.out_hw))
        nn.init.trunc_normal_(self.position, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) + self.position


class Attention(nn.Module):
    """Multi-head self-attention with every tensor at rank <= 4: q, k and v come from three linears
    (a fused qkv would need a rank-5 reshape, which onnx2tf turns into Flex ops), and k is permuted
    straight to (B, heads, dim, N) for the score matmul."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.scale = self.head_dim ** -0.5
        self.q, self.k, self.v = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.proj = nn.Linear(width, width)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        b, n, c = t.shape
        q = self.q(t).reshape(b, n, self.heads, self.head_dim).transpose(1, 2) * self.scale
        k = self.k(t).reshape(b, n, self.heads, self.head_dim).permute(0, 2, 3, 1)
        v = self.v(t).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        weights = torch.softmax(q @ k, dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, c))


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer on the grid: [merge conv], attention, GELU MLP, both residual."""

    def __init__(self, spec: LayerSpec):
        super().__init__()
        width, hidden = spec.out_ch, spec.out_ch * spec.expand
        self.merge = nn.Conv2d(spec.in_ch, width, spec.stride, spec.stride) if spec.merges else nn.Identity()
        self.norm1, self.attention = nn.LayerNorm(width), Attention(width, spec.heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.merge(x)
        h, w = x.shape[-2:]
        t = grid_to_tokens(x)
        t = t + self.attention(self.norm1(t))
        t = t + self.mlp(self.norm2(t))
        return tokens_to_grid(t, h, w)


class TokenHead(nn.Module):
    """Mean over tokens, LayerNorm, linear classifier."""

    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.norm = nn.LayerNorm(spec.in_ch)
        self.classifier = nn.Linear(spec.in_ch, spec.out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(x.mean((2, 3))))


class Skip(nn.Identity):
    def __init__(self, spec: LayerSpec):
        super().__init__()


# Layer kind (LayerSpec.kind) -> module class taking the spec: the builder, supernet and profiler use this.
LAYER_MODULES: dict[str, type[nn.Module]] = {"conv": StemConv, "mbconv": MBConv, "skip": Skip, "head": Head,
                                              "patch": PatchEmbed, "vit": TransformerLayer, "vithead": TokenHead}


def build_layer(spec: LayerSpec) -> nn.Module:
    try:
        return LAYER_MODULES[spec.kind](spec)
    except KeyError:
        raise ValueError(f"no module for layer kind {spec.kind!r}; register one in LAYER_MODULES") from None


def build_block(specs: list[LayerSpec]) -> nn.Module:
    """A block candidate as one module: its layers in order, skips left out (they build nothing).
    What a block-level latency entry times."""
    return nn.Sequential(*(build_layer(s) for s in specs if s.key))
