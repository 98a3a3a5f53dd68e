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


class Skip(nn.Identity):
    def __init__(self, spec: LayerSpec):
        super().__init__()


# Layer kind (LayerSpec.kind) -> module class taking the spec: the builder, supernet and profiler use this.
LAYER_MODULES: dict[str, type[nn.Module]] = {"conv": StemConv, "mbconv": MBConv, "skip": Skip, "head": Head}


def build_layer(spec: LayerSpec) -> nn.Module:
    try:
        return LAYER_MODULES[spec.kind](spec)
    except KeyError:
        raise ValueError(f"no module for layer kind {spec.kind!r}; register one in LAYER_MODULES") from None
