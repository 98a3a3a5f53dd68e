"""Search spaces as data: frozen specs loaded from presets or YAML/JSON/TOML files.

A space is a fixed stem, a searched body cut into blocks (the DNA partition: each block is
distilled, rated and searched on its own), and a fixed head. Each layer of a block picks one op
from the block's choices; a layer other than the first may also pick ``skip``, which searches depth.

Two families share this machinery. An MBConv space ("mbconv", the DNA paper's mobile space) has a
conv stem, a fixed MBConv layer and a conv head. A transformer space ("vit") has a patch embedding as
its stem (``stem_stride`` is the patch size, ``stem_channels`` the embedding width), transformer
layers choosing MLP ratio and heads, and a pooled head; a block whose stride is 2 or whose width
changes starts with a patch-merging conv.

Skips only change depth: ``k3e6.skip.k5e3`` and ``k3e6.k5e3.skip`` build the same network. Rating and
search therefore use *canonical* candidates, whose skips are trailing; both counts are reported.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dna_deploy.errors import ArchError, DataError, SpaceError, check_keys
from dna_deploy.io import fingerprint, read_structured
from dna_deploy.space.ops import ACTIVATIONS, SKIP, VIT_ACTIVATION, LayerSpec, Op, parse_op

MBCONV_CHOICES = ("k3e3", "k3e6", "k5e3", "k5e6", "k7e3", "k7e6")
VIT_CHOICES = tuple(f"r{r}h{h}" for r in (2, 3, 4) for h in (3, 4, 6))
FAMILIES = {"mbconv": "mbconv", "vit": "vit"}  # family -> the op kind its blocks choose among


# Bounds on what a space file may ask for, checked before anything is built: far above every
# published mobile space (dna-mbconv: 224 px, 1280 head channels, 7^4 + ... candidates per block).
LIMITS = {"input_size": 4096, "num_classes": 1_000_000, "in_channels": 64, "stem_stride": 64, "layers": 64,
          "channels": 65536}
MAX_BLOCKS = 64
MAX_BLOCK_CANDIDATES = 1_000_000


@dataclass(frozen=True)
class BlockDef:
    out_channels: int
    stride: int
    layers: int
    choices: tuple[str, ...] = MBCONV_CHOICES
    allow_skip: bool = True

    def layer_choices(self, i: int) -> tuple[str, ...]:
        return self.choices + (("skip",) if (i > 0 and self.allow_skip) else ())


@dataclass(frozen=True)
class SearchSpace:
    name: str
    input_size: int
    num_classes: int
    blocks: tuple[BlockDef, ...]
    in_channels: int = 3
    stem_channels: int = 32
    stem_stride: int = 2
    first_op: str = "k3e1"  # the fixed layer after the stem (MBConv1 3x3 in the DNA space)
    first_channels: int = 16
    head_channels: int = 1280
    se_ratio: float = 0.25
    activation: str = "swish"
    description: str = ""
    family: str = "mbconv"  # "mbconv" | "vit" (see the module docstring)

    # ---------------- construction ----------------
    @classmethod
    def from_dict(cls, d: dict, *, source: str = "space") -> "SearchSpace":
        check_keys(d, known=cls.__dataclass_fields__, required=("name", "input_size", "num_classes", "blocks"),
                   where=source, error=SpaceError)
        blocks_raw = d["blocks"]
        if not isinstance(blocks_raw, list) or not blocks_raw:
            raise SpaceError(f"{source}: 'blocks' must be a non-empty list of blocks")
        family = d.get("family", "mbconv")
        if not isinstance(family, str):
            raise SpaceError(f"{source}: family must be one of {', '.join(FAMILIES)}, got {family!r}")
        blocks = []
        for i, b in enumerate(blocks_raw):
            check_keys(b, known=BlockDef.__dataclass_fields__, required=("out_channels", "stride", "layers"),
                       where=f"{source}: block {i}", error=SpaceError)
            b = dict(b)
            if "choices" in b:
                if not isinstance(b["choices"], (list, tuple)) or not all(isinstance(c, str) for c in b["choices"]):
                    raise SpaceError(f"{source}: block {i} choices must be a list of op names (e.g. [k3e3, k5e6]), "
                                     f"got {str(b['choices'])[:80]}")
                b["choices"] = tuple(b["choices"])
            elif family == "vit":
                b["choices"] = VIT_CHOICES
            blocks.append(BlockDef(**b))
        fields = {k: v for k, v in d.items() if k != "blocks"}
        if family == "vit":
            fields.setdefault("activation", VIT_ACTIVATION)
        space = cls(blocks=tuple(blocks), **fields)
        space.validate(source)
        return space

    def validate(self, source: str = "space") -> None:
        def positive_int(name, v):
            high = next(h for k, h in LIMITS.items() if name.endswith(k))
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= high:
                raise SpaceError(f"{source}: {name} must be a positive integer of at most {high:,}, got {str(v)[:40]}")

        for name, kind in (("name", str), ("first_op", str), ("activation", str), ("description", str),
                           ("se_ratio", (int, float))):
            v = getattr(self, name)
            if not isinstance(v, kind) or isinstance(v, bool):
                raise SpaceError(f"{source}: {name} must be a {'number' if name == 'se_ratio' else 'string'}, "
                                 f"got {repr(v)[:40]}")
        if len(self.blocks) > MAX_BLOCKS:
            raise SpaceError(f"{source}: {len(self.blocks)} blocks; a space has at most {MAX_BLOCKS}")
        for name in ("input_size", "num_classes", "in_channels", "stem_channels", "stem_stride",
                     "first_channels", "head_channels"):
            positive_int(name, getattr(self, name))
        if not isinstance(self.family, str) or self.family not in FAMILIES:
            raise SpaceError(f"{source}: family {self.family!r}; valid: {', '.join(FAMILIES)}")
        vit = self.family == "vit"
        if vit and self.activation != VIT_ACTIVATION:
            raise SpaceError(f"{source}: transformer spaces use activation {VIT_ACTIVATION!r}, got {self.activation!r}")
        if not vit and self.activation not in ACTIVATIONS:
            raise SpaceError(f"{source}: activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if vit and self.input_size % self.stem_stride:
            raise SpaceError(f"{source}: input_size {self.input_size} is not a multiple of the patch size "
                             f"(stem_stride) {self.stem_stride}")
        if not (math.isfinite(self.se_ratio) and 0 <= self.se_ratio < 1):
            raise SpaceError(f"{source}: se_ratio must be in [0, 1), got {self.se_ratio}")
        try:
            parse_op(self.first_op)
        except ArchError as e:
            raise SpaceError(f"{source}: first_op: {e}") from None
        for i, b in enumerate(self.blocks):
            positive_int(f"block {i} out_channels", b.out_channels)
            positive_int(f"block {i} layers", b.layers)
            if not isinstance(b.allow_skip, bool):
                raise SpaceError(f"{source}: block {i} allow_skip must be true or false, got {repr(b.allow_skip)[:40]}")
            n = len(b.choices)
            count = sum(n ** d for d in range(1, b.layers + 1)) if b.allow_skip else n ** b.layers
            if count > MAX_BLOCK_CANDIDATES:
                raise SpaceError(f"{source}: block {i} has {count:,} candidates ({n} choices, {b.layers} layers); "
                                 f"a block can be rated and searched with at most {MAX_BLOCK_CANDIDATES:,}: split it")
            if b.stride not in (1, 2):
                raise SpaceError(f"{source}: block {i} stride must be 1 or 2, got {b.stride}")
            if not b.choices:
                raise SpaceError(f"{source}: block {i} has no choices")
            for c in b.choices:
                try:
                    op = parse_op(c)
                except ArchError as e:
                    raise SpaceError(f"{source}: block {i}: {e}") from None
                if op.is_skip:
                    raise SpaceError(f"{source}: block {i}: list 'skip' through allow_skip, not in choices")
                if op.kind != FAMILIES[self.family]:
                    example = "r4h6" if vit else "k5e6"
                    hint = "" if vit else "; set family: vit for transformer choices"
                    raise SpaceError(f"{source}: block {i}: choice {c!r} is not a {self.family} op (e.g. {example}){hint}")
                if vit and b.out_channels % op.heads:
                    raise SpaceError(f"{source}: block {i}: {op.heads} heads do not divide width {b.out_channels}")
            if len(set(b.choices)) != len(b.choices):
                raise SpaceError(f"{source}: block {i} lists a choice twice")
        if vit and any(self.resolution_at(i) % b.stride for i, b in enumerate(self.blocks)):
            raise SpaceError(f"{source}: a stride-2 block needs an even token grid; the grids are "
                             f"{[self.resolution_at(i) for i in range(len(self.blocks) + 1)]}")
        if self.resolution_at(len(self.blocks)) < 1:
            raise SpaceError(f"{source}: input_size {self.input_size} is too small for the strides")

    def to_dict(self) -> dict:
        """The definition; the default family (mbconv) is left out, so dna-deploy versions from
        before transformer spaces still read MBConv spaces written by this one."""
        d = asdict(self)
        d["blocks"] = [{**asdict(b), "choices": list(b.choices)} for b in self.blocks]
        if d["family"] == "mbconv":
            d.pop("family")
        return d

    def _shape_dict(self) -> dict:
        """to_dict without name and description (to_dict leaves the default family out, so MBConv
        spaces keep the fingerprints they had before transformer spaces existed)."""
        d = self.to_dict()
        d.pop("name"), d.pop("description")
        return d

    @property
    def fingerprint(self) -> str:
        """Hash of everything that shapes networks (not the name or description)."""
        return fingerprint(self._shape_dict())

    @property
    def body_fingerprint(self) -> str:
        """The fingerprint without the class count: what latency tables are keyed by, so a space
        fine-tuned to 10 classes shares every entry but the head's with its 1000-class original."""
        d = self._shape_dict()
        d.pop("num_classes")
        return fingerprint(d)

    @property
    def is_vit(self) -> bool:
        return self.family == "vit"

    # ---------------- shapes ----------------
    def resolution_at(self, block: int) -> int:
        """Input resolution of block `block` (== len(blocks): the head's input)."""
        hw = (self.input_size - 1) // self.stem_stride + 1  # MBConv's fixed first layer keeps stride 1
        for b in self.blocks[:block]:
            hw = (hw - 1) // b.stride + 1
        return hw

    def channels_in(self, block: int) -> int:
        if block == 0:
            return self.stem_channels if self.is_vit else self.first_channels
        return self.blocks[block - 1].out_channels

    # ---------------- candidates and counting ----------------
    def block_candidates(self, block: int) -> list[tuple[Op, ...]]:
        """Every canonical candidate of a block (skips trailing), in a stable order."""
        b = self.blocks[block]
        ops = [parse_op(c) for c in b.choices]
        out: list[tuple[Op, ...]] = []
        min_depth = 1 if b.allow_skip else b.layers
        for depth in range(min_depth, b.layers + 1):
            for combo in itertools.product(ops, repeat=depth):
                out.append(tuple(combo) + (SKIP,) * (b.layers - depth))
        return out

    def block_candidate_count(self, block: int, *, distinct: bool = True) -> int:
        b = self.blocks[block]
        n = len(b.choices)
        if not distinct:
            return math.prod(len(b.layer_choices(i)) for i in range(b.layers))
        if not b.allow_skip:
            return n ** b.layers
        return sum(n ** d for d in range(1, b.layers + 1))

    def count_architectures(self, *, distinct: bool = True) -> int:
        """Exact count. distinct=True: networks (skip placements that build the same network counted
        once); distinct=False: encodings (every per-layer choice combination)."""
        return math.prod(self.block_candidate_count(i, distinct=distinct) for i in range(len(self.blocks)))

    # ---------------- layer specs ----------------
    def stem_specs(self) -> list[LayerSpec]:
        if self.is_vit:
            p = self.stem_stride
            return [LayerSpec("patch", self.in_channels, self.stem_channels, self.input_size, p, kernel=p,
                              act=self.activation)]
        first = parse_op(self.first_op)
        hw0 = self.input_size
        hw1 = (hw0 - 1) // self.stem_stride + 1
        return [
            LayerSpec("conv", self.in_channels, self.stem_channels, hw0, self.stem_stride, kernel=3, act=self.activation),
            LayerSpec("mbconv", self.stem_channels, self.first_channels, hw1, 1, kernel=first.kernel,
                      expand=first.expand, se_ratio=self.se_ratio, act=self.activation),
        ]

    def head_spec(self) -> LayerSpec:
        nb = len(self.blocks)
        if self.is_vit:
            return LayerSpec("vithead", self.blocks[-1].out_channels, self.num_classes, self.resolution_at(nb),
                             act=self.activation)
        return LayerSpec("head", self.blocks[-1].out_channels, self.num_classes, self.resolution_at(nb),
                         act=self.activation, mid_ch=self.head_channels)

    def block_specs(self, block: int, ops: tuple[Op, ...]) -> list[LayerSpec]:
        b = self.blocks[block]
        cin, hw = self.channels_in(block), self.resolution_at(block)
        specs = []
        for i, op in enumerate(ops):
            stride = b.stride if i == 0 else 1
            if op.is_skip:
                specs.append(LayerSpec("skip", cin, cin, hw, 1, act=self.activation))
                continue
            if op.kind == "vit":
                specs.append(LayerSpec("vit", cin, b.out_channels, hw, stride, expand=op.expand, heads=op.heads,
                                       act=self.activation))
            else:
                specs.append(LayerSpec("mbconv", cin, b.out_channels, hw, stride, kernel=op.kernel,
                                       expand=op.expand, se_ratio=self.se_ratio, act=self.activation))
            cin, hw = b.out_channels, specs[-1].out_hw
        return specs

    def layer_specs(self, arch: "Arch") -> list[LayerSpec]:
        specs = self.stem_specs()
        for i, ops in enumerate(arch.blocks):
            specs += self.block_specs(i, ops)
        return specs + [self.head_spec()]

    def all_layer_specs(self) -> list[LayerSpec]:
        """Every distinct non-skip layer any architecture can contain: what a latency table needs."""
        seen: dict[str, LayerSpec] = {}
        for s in self.stem_specs() + [self.head_spec()]:
            seen[s.key] = s
        for bi, b in enumerate(self.blocks):
            for op in sorted({parse_op(c) for c in b.choices}):
                first = self.block_specs(bi, (op,))[0]
                seen.setdefault(first.key, first)
                if b.layers > 1:
                    rest = self.block_specs(bi, (op, op))[1]
                    seen.setdefault(rest.key, rest)
        return list(seen.values())

    # ---------------- architectures ----------------
    def parse_arch_block(self, block: int, text: str) -> tuple[Op, ...]:
        """One block's ops from 'k3e6.k5e3.skip' (validated like a whole architecture)."""
        b = self.blocks[block]
        tokens = text.split(".")
        if len(tokens) != b.layers:
            raise ArchError(f"block {block} has {len(tokens)} layers, space {self.name!r} wants {b.layers}")
        return tuple(parse_op(t, allowed=b.layer_choices(i), where=f"block {block} layer {i}") for i, t in enumerate(tokens))

    def parse_arch(self, text: str) -> "Arch":
        return Arch.parse(text, self)

    def sample(self, rng, *, canonical: bool = True) -> "Arch":
        """A uniformly random choice per layer (skip included where allowed)."""
        blocks = []
        for b in self.blocks:
            ops = tuple(parse_op(rng.choice(b.layer_choices(i))) for i in range(b.layers))
            blocks.append(ops)
        arch = Arch(tuple(blocks))
        return arch.canonical() if canonical else arch

    def largest_arch(self) -> "Arch":
        """Every layer at the widest, largest-kernel (most-heads) op: the usual in-space teacher."""
        blocks = []
        for b in self.blocks:
            best = max((parse_op(c) for c in b.choices), key=lambda o: o.size)
            blocks.append((best,) * b.layers)
        return Arch(tuple(blocks))

    def smallest_arch(self) -> "Arch":
        blocks = []
        for b in self.blocks:
            low = min((parse_op(c) for c in b.choices), key=lambda o: o.size)
            depth = 1 if b.allow_skip else b.layers
            blocks.append((low,) * depth + (SKIP,) * (b.layers - depth))
        return Arch(tuple(blocks))


@dataclass(frozen=True)
class Arch:
    """An architecture of a space: one op per layer, grouped by block. str() round-trips."""

    blocks: tuple[tuple[Op, ...], ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        return "|".join(".".join(str(op) for op in ops) for ops in self.blocks)

    @classmethod
    def parse(cls, text: str, space: SearchSpace) -> "Arch":
        if not isinstance(text, str) or not text.strip():
            raise ArchError("empty architecture string; write e.g. " + str(space.largest_arch()))
        parts = text.strip().split("|")
        if len(parts) != len(space.blocks):
            raise ArchError(f"architecture has {len(parts)} blocks, space {space.name!r} has {len(space.blocks)} "
                            f"(blocks are separated by '|', layers by '.')")
        blocks = []
        for bi, (part, b) in enumerate(zip(parts, space.blocks)):
            tokens = part.split(".")
            if len(tokens) != b.layers:
                raise ArchError(f"block {bi} has {len(tokens)} layers, space {space.name!r} wants {b.layers} "
                                f"(write 'skip' for a layer left out)")
            blocks.append(tuple(parse_op(t, allowed=b.layer_choices(li), where=f"block {bi} layer {li}")
                                for li, t in enumerate(tokens)))
        return cls(tuple(blocks))

    @classmethod
    def from_json(cls, obj: dict | list, space: SearchSpace) -> "Arch":
        blocks = obj.get("blocks") if isinstance(obj, dict) else obj
        if not isinstance(blocks, list) or not all(isinstance(b, list) for b in blocks):
            raise ArchError("architecture JSON must be {\"blocks\": [[op, ...], ...]}")
        return cls.parse("|".join(".".join(map(str, b)) for b in blocks), space)

    def to_json(self, space: SearchSpace | None = None) -> dict:
        d: dict = {"arch": str(self), "blocks": [[str(op) for op in ops] for ops in self.blocks]}
        if space is not None:
            d["space"] = space.name
            d["space_fingerprint"] = space.fingerprint
        return d

    def canonical(self) -> "Arch":
        """Same network, skips moved to the end of each block."""
        return Arch(tuple(tuple([o for o in ops if not o.is_skip] + [o for o in ops if o.is_skip])
                          for ops in self.blocks))


# ---------------- presets ----------------
def _dna_mbconv() -> SearchSpace:
    blocks = tuple(BlockDef(c, s, n) for c, s, n in
                   [(24, 2, 2), (40, 2, 4), (80, 2, 4), (112, 1, 4), (192, 2, 4), (320, 1, 1)])
    return SearchSpace(
        name="dna-mbconv", input_size=224, num_classes=1000, blocks=blocks,
        description="The DNA paper's mobile space: MBConv k3/5/7 x e3/6 with SE 0.25 and swish, plus skip.")


def _tiny() -> SearchSpace:
    blocks = tuple(BlockDef(c, s, n) for c, s, n in [(16, 2, 2), (24, 2, 3), (40, 2, 3), (64, 1, 2)])
    return SearchSpace(
        name="tiny", input_size=32, num_classes=10, blocks=blocks, stem_channels=16, stem_stride=1,
        first_channels=8, head_channels=128,
        description="A CPU-sized DNA space for 32x32 inputs: same choices, four blocks, small channels.")


def _vit_tiny() -> SearchSpace:
    blocks = tuple(BlockDef(c, s, n, VIT_CHOICES) for c, s, n in [(48, 1, 2), (96, 2, 2), (144, 1, 2)])
    return SearchSpace(
        name="vit-tiny", input_size=32, num_classes=10, blocks=blocks, stem_channels=48, stem_stride=4,
        activation=VIT_ACTIVATION, family="vit",
        description="A CPU-sized transformer space for 32x32 inputs: 4x4 patches (8x8 tokens), widths 48, 96 "
                    "(patch merging to 4x4) and 144, MLP ratio 2/3/4 x heads 3/4/6 per layer, plus skip.")


def _vit_small() -> SearchSpace:
    blocks = tuple(BlockDef(384, 1, 3, VIT_CHOICES) for _ in range(4))
    return SearchSpace(
        name="vit-small", input_size=224, num_classes=1000, blocks=blocks, stem_channels=384, stem_stride=16,
        activation=VIT_ACTIVATION, family="vit",
        description="A DeiT-S-sized transformer space: 16x16 patches (14x14 tokens), width 384, four blocks of "
                    "three layers choosing MLP ratio 2/3/4 x heads 3/4/6, plus skip.")


PRESETS = {"dna-mbconv": _dna_mbconv, "tiny": _tiny, "vit-tiny": _vit_tiny, "vit-small": _vit_small}


def load_space(name_or_path: str | Path) -> SearchSpace:
    """A preset name or a YAML/JSON/TOML file."""
    s = str(name_or_path)
    if s in PRESETS:
        return PRESETS[s]()
    p = Path(s)
    if p.suffix.lower() in (".yaml", ".yml", ".json", ".toml") or p.exists():
        try:
            data = read_structured(p, what="space file")
        except DataError as e:
            raise SpaceError(str(e)) from None
        if isinstance(data, dict) and "space" in data and isinstance(data["space"], dict):
            data = data["space"]
        return SearchSpace.from_dict(data, source=str(p))
    raise SpaceError(f"unknown space {s!r}: give a preset ({', '.join(PRESETS)}) or a .yaml/.json/.toml file")
