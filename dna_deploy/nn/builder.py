"""One builder: (space, arch) -> a standalone nn.Module, the network export ships.

The module layout (stem, blocks.{b}.{layer}, head) is shared with the supernet so that
extraction copies weights by name.
"""

from __future__ import annotations

import torch
from torch import nn

from dna_deploy.nn.modules import build_layer
from dna_deploy.space import Arch, LayerSpec, SearchSpace


class DnaNet(nn.Module):
    def __init__(self, space: SearchSpace, arch: Arch):
        super().__init__()
        self.space_name, self.arch_str = space.name, str(arch)
        self.stem = nn.Sequential(*[build_layer(s) for s in space.stem_specs()])
        self.blocks = nn.ModuleList(
            nn.Sequential(*[build_layer(s) for s in space.block_specs(i, ops)]) for i, ops in enumerate(arch.blocks))
        self.head = build_layer(space.head_spec())

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Output of every block (block 0 includes the stem): the taps DNA distils at."""
        feats = []
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def build_network(space: SearchSpace, arch: Arch | str) -> DnaNet:
    if isinstance(arch, str):
        arch = space.parse_arch(arch)
    return DnaNet(space, arch)


def network_costs(space: SearchSpace, arch: Arch) -> dict:
    """Analytic MACs and parameters, per layer and in total (what search constrains)."""
    specs = space.layer_specs(arch)
    return {
        "macs": sum(s.macs for s in specs),
        "params": sum(s.params for s in specs),
        "layers": [{"key": s.key, "kind": s.kind, "macs": s.macs, "params": s.params} for s in specs],
    }


def describe_rows(space: SearchSpace, arch: Arch) -> list[dict]:
    """Per-layer table (block, op, shapes, MACs, params) for `space describe`."""
    rows = []

    def row(where: str, s: LayerSpec):
        op = {"conv": f"conv{s.kernel}x{s.kernel}", "patch": f"patch{s.kernel}x{s.kernel}", "head": "head",
              "vithead": "head", "skip": "skip"}.get(s.kind, str(s.op))
        head = s.kind in ("head", "vithead")
        rows.append({"where": where, "op": op, "in": f"{s.in_hw}x{s.in_hw}x{s.in_ch}",
                     "out": f"{s.out_ch}" if head else f"{s.out_hw}x{s.out_hw}x{s.out_ch}",
                     "stride": s.stride, "macs": s.macs, "params": s.params})

    for i, s in enumerate(space.stem_specs()):
        row(f"stem.{i}", s)
    for b, ops in enumerate(arch.blocks):
        for i, s in enumerate(space.block_specs(b, ops)):
            row(f"block{b}.{i}", s)
    row("head", space.head_spec())
    return rows
