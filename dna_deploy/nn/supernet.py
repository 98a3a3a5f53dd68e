"""Block supernets for DNA: every op of every layer, and the path given explicitly.

forward(x, ops) takes the choice as an argument (no mutable "active" state). Parameter names are
`blocks.{b}.layers.{i}.ops.{op}.*` so that `extract` can copy a path into a standalone DnaNet,
whose names are `blocks.{b}.{i}.*`.
"""

from __future__ import annotations

import torch
from torch import nn

from dna_deploy.nn.builder import DnaNet
from dna_deploy.nn.modules import build_layer
from dna_deploy.space import SKIP, Arch, Op, SearchSpace, parse_op


class ChoiceLayer(nn.Module):
    def __init__(self, space: SearchSpace, block: int, index: int):
        super().__init__()
        b = space.blocks[block]
        specs = {}
        for token in b.choices:
            ops = (parse_op(b.choices[0]),) * index + (parse_op(token),)
            specs[token] = space.block_specs(block, ops)[index]
        self.ops = nn.ModuleDict({t: build_layer(s) for t, s in specs.items()})

    def forward(self, x: torch.Tensor, op: Op) -> torch.Tensor:
        return x if op.is_skip else self.ops[str(op)](x)


class BlockSupernet(nn.Module):
    """One DNA block with all its candidates; block 0 also holds the (fixed) stem."""

    def __init__(self, space: SearchSpace, block: int):
        super().__init__()
        self.block = block
        self.stem = nn.Sequential(*[build_layer(s) for s in space.stem_specs()]) if block == 0 else None
        self.layers = nn.ModuleList(ChoiceLayer(space, block, i) for i in range(space.blocks[block].layers))

    def forward(self, x: torch.Tensor, ops: tuple[Op, ...]) -> torch.Tensor:
        if self.stem is not None:
            x = self.stem(x)
        for layer, op in zip(self.layers, ops):
            x = layer(x, op)
        return x


class Supernet(nn.Module):
    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space
        self.blocks = nn.ModuleList(BlockSupernet(space, b) for b in range(len(space.blocks)))
        self.head = build_layer(space.head_spec())

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        for block, ops in zip(self.blocks, arch.blocks):
            x = block(x, ops)
        return self.head(x)

    def extract(self, arch: Arch) -> DnaNet:
        """A standalone network holding copies of this path's weights."""
        return extract_network(self.space, arch, [b.state_dict() for b in self.blocks], self.head.state_dict())


def extract_network(space: SearchSpace, arch: Arch, block_states: list[dict | None], head_state: dict | None = None) -> DnaNet:
    """Copy weights by name from block-supernet state dicts; blocks given as None keep fresh weights."""
    net = DnaNet(space, arch)
    own = net.state_dict()
    new = {}
    for b, (ops, state) in enumerate(zip(arch.blocks, block_states)):
        if state is None:
            continue
        for key, value in state.items():
            if key.startswith("stem."):
                new[key] = value
                continue
            _, i, _, token, rest = key.split(".", 4)  # layers.{i}.ops.{token}.{rest}
            if str(ops[int(i)]) == token:
                new[f"blocks.{b}.{i}.{rest}"] = value
    if head_state is not None:
        new.update({f"head.{k}": v for k, v in head_state.items()})
    unknown = set(new) - set(own)
    if unknown:
        raise KeyError(f"extraction produced names the network lacks: {sorted(unknown)[:3]}")
    own.update(new)
    net.load_state_dict(own)
    return net


def sample_path(space: SearchSpace, block: int, rng) -> tuple[Op, ...]:
    """One uniform choice per layer, skips moved to the end (the network the supernet runs)."""
    b = space.blocks[block]
    ops = [parse_op(rng.choice(b.layer_choices(i))) for i in range(b.layers)]
    kept = [o for o in ops if not o.is_skip]
    return tuple(kept + [SKIP] * (len(ops) - len(kept)))


class FairPathSampler:
    """Strict fairness (FairNAS): within a round, every choice of every layer is used equally often."""

    def __init__(self, space: SearchSpace, block: int, rng):
        self.space, self.block, self.rng = space, block, rng
        b = space.blocks[block]
        self.choices = [list(b.layer_choices(i)) for i in range(b.layers)]
        self.queue: list[tuple[Op, ...]] = []

    def __call__(self) -> tuple[Op, ...]:
        if not self.queue:
            n = max(len(c) for c in self.choices)
            cols = []
            for c in self.choices:
                col = c * (n // len(c)) + self.rng.sample(c, n % len(c))
                self.rng.shuffle(col)
                cols.append(col)
            for step in range(n):
                ops = [parse_op(col[step]) for col in cols]
                kept = [o for o in ops if not o.is_skip]
                self.queue.append(tuple(kept + [SKIP] * (len(ops) - len(kept))))
        return self.queue.pop()
