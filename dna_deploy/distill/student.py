"""The block student DNA trains and rates: a block supernet between two 1x1 adapters, the feature
distances it is trained and rated with, and loading a trained one.

Channels: where teacher and student differ at a boundary, 1x1 conv adapters (conv + BN) are
trained with the block -- teacher->student at the input, student->teacher at the output -- and
dropped afterwards, so the searched network is exactly a network of the space. (The DNA reference
code widened the student's boundary layers instead, which changes the network that is deployed.)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dna_deploy.distill.checkpoints import block_checkpoint_path
from dna_deploy.errors import DataError
from dna_deploy.io import load_checkpoint
from dna_deploy.nn.supernet import BlockSupernet
from dna_deploy.space import SearchSpace

DISTANCES = ("mse-channel", "mse", "l1-norm", "ssl-cosine")


def adapter(cin: int, cout: int) -> nn.Module:
    if cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))


class BlockStudent(nn.Module):
    """A block supernet between its two adapters: teacher feature in -> teacher feature out."""

    def __init__(self, space: SearchSpace, block: int, teacher_channels: list[int]):
        super().__init__()
        self.block = block
        self.supernet = BlockSupernet(space, block)
        cin = space.in_channels if block == 0 else teacher_channels[block - 1]
        self.adapt_in = adapter(cin, space.in_channels if block == 0 else space.channels_in(block))
        self.adapt_out = adapter(space.blocks[block].out_channels, teacher_channels[block])

    def forward(self, x: torch.Tensor, ops) -> torch.Tensor:
        return self.adapt_out(self.supernet(self.adapt_in(x), ops))


def feature_distance(student: torch.Tensor, target: torch.Tensor, kind: str, channel_std: torch.Tensor | None = None,
                     reduce: bool = True, target_std: float | None = None) -> torch.Tensor:
    """'mse-channel': MSE of features scaled by the teacher's per-channel std; 'mse': plain MSE;
    'l1-norm': DNA's rating distance mean|s - t| / std(t), with std(t) over all rated images
    (`target_std`, when they come in chunks) or over `target`. reduce=False: one value per image."""
    if kind == "mse-channel":
        d = ((student - target) / channel_std.view(1, -1, 1, 1)) ** 2
    elif kind == "mse":
        d = (student - target) ** 2
    elif kind == "l1-norm":
        d = (student - target).abs() / (target.std() if target_std is None else target_std)
    elif kind == "ssl-cosine":  # DNA++: 2 - 2 cos per image, against the population centre
        d = (2 - 2 * torch.nn.functional.cosine_similarity(student.flatten(1), target.flatten(1), dim=1))[:, None]
    else:
        raise DataError(f"unknown distance {kind!r}; choose {', '.join(DISTANCES)}")
    per_image = d.flatten(1).mean(1)
    return per_image.mean() if reduce else per_image


def load_block(space: SearchSpace, out_dir: str | Path, block: int) -> tuple[nn.Module, dict]:
    """A trained block student (DNA's BlockStudent, or DNA++'s online block with its predictor) and
    its checkpoint metadata; refuses another space's checkpoint."""
    path = block_checkpoint_path(Path(out_dir), block)
    if not path.is_file():
        raise DataError(f"no trained block {block} in {out_dir}: run `dna-deploy train` (e.g. --blocks {block}) first")
    state = load_checkpoint(path, what=f"block {block} checkpoint")
    if state.get("space_fingerprint") != space.fingerprint:
        raise DataError(f"{path} was trained for another space (fingerprint {state.get('space_fingerprint')}, "
                        f"space {space.name!r} is {space.fingerprint})")
    if state.get("method") == "dna++":
        from dna_deploy.distill.selfsup import load_selfsup_block

        return load_selfsup_block(space, state, block), state
    student = BlockStudent(space, block, state["teacher_channels"])
    student.load_state_dict(state["student"])
    return student, state
