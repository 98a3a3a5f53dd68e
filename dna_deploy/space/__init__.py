"""The architecture grammar: op table, search spaces and architectures (parse, print, count)."""

from dna_deploy.space.ops import SKIP, LayerSpec, Op, parse_op
from dna_deploy.space.space import PRESETS, Arch, BlockDef, SearchSpace, load_space

__all__ = ["SKIP", "LayerSpec", "Op", "parse_op", "PRESETS", "Arch", "BlockDef", "SearchSpace", "load_space"]
