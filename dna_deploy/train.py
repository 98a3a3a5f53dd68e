"""DNA training: each block supernet learns to map the teacher's feature at its start to the
teacher's feature at its end, one sampled path per step (block-wise knowledge distillation).

Channels: where teacher and student differ at a boundary, 1x1 conv adapters (conv + BN) are
trained with the block -- teacher->student at the input, student->teacher at the output -- and
dropped afterwards, so the searched network is exactly a network of the space. (The DNA reference
code widened the student's boundary layers instead, which changes the network that is deployed.)

Blocks are independent given the teacher: train a subset with `blocks=`, or run several processes.
Data-parallel over torch.distributed (torchrun; gloo on CPU, nccl on GPU): every rank samples the
same path each step (seeded RNG), so one step trains one path on the global batch.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from dna_deploy.data import DataSplits, stack
from dna_deploy.errors import DataError
from dna_deploy.io import fingerprint, load_checkpoint, save_checkpoint, write_json
from dna_deploy.nn.supernet import BlockSupernet, FairPathSampler, sample_path
from dna_deploy.progress import progress_bar
from dna_deploy.space import SearchSpace
from dna_deploy.teacher import Teacher

LOSSES = ("mse-channel", "mse")


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 5
    batch_size: int = 64
    lr_edge: float = 2e-3  # first and last block (reference schedule)
    lr_inner: float = 5e-3  # the others
    lr_decay: float = 0.9  # per epoch
    weight_decay: float = 1e-4
    loss: str = "mse-channel"  # MSE on features normalised per channel by the teacher's statistics
    fairness: bool = False  # strict fairness: every choice of a layer once per round
    seed: int = 0
    max_steps: int | None = None  # cap steps per epoch (smoke tests)

    def lr(self, block: int, n_blocks: int) -> float:
        return self.lr_edge if block in (0, n_blocks - 1) else self.lr_inner


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
                     reduce: bool = True) -> torch.Tensor:
    """'mse-channel': MSE of features scaled by the teacher's per-channel std; 'mse': plain MSE;
    'l1-norm': DNA's rating distance mean|s - t| / std(t). reduce=False: one value per image."""
    if kind == "mse-channel":
        d = ((student - target) / channel_std.view(1, -1, 1, 1)) ** 2
    elif kind == "mse":
        d = (student - target) ** 2
    elif kind == "l1-norm":
        d = (student - target).abs() / target.std()
    else:
        raise DataError(f"unknown distance {kind!r}; choose mse-channel, mse or l1-norm")
    per_image = d.flatten(1).mean(1)
    return per_image.mean() if reduce else per_image


# ---------------------------------------------------------------- teacher features (optionally cached)
def teacher_features(teacher: Teacher, dataset, cache_path: Path | None, *, data_fp: str, batch: int = 256,
                     show_progress: bool = False) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Inputs, teacher features at every tap and labels for a whole (in-memory) dataset."""
    key = fingerprint({"teacher": teacher.fingerprint, "data": data_fp, "n": len(dataset)})
    if cache_path is not None and cache_path.is_file():
        c = load_checkpoint(cache_path, what="teacher feature cache")
        if c.get("key") == key:
            return c["x"], c["feats"], c["y"]
    x, y = stack(dataset)
    feats: list[list[torch.Tensor]] = [[] for _ in teacher.taps]
    with progress_bar(show_progress) as bar:
        task = bar.task("teacher features", math.ceil(len(x) / batch))
        for i in range(0, len(x), batch):
            for j, f in enumerate(teacher.features(x[i:i + batch])):
                feats[j].append(f)
            bar.advance(task)
    out = [torch.cat(f) for f in feats]
    if cache_path is not None:
        save_checkpoint(cache_path, {"key": key, "x": x, "feats": out, "y": y})
    return x, out, y


def channel_stats(feats: list[torch.Tensor]) -> list[torch.Tensor]:
    return [f.transpose(0, 1).flatten(1).std(1).clamp_min(1e-6) for f in feats]


# ---------------------------------------------------------------- distributed helpers
def dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed_from_env() -> bool:
    """Join the process group torchrun describes (gloo on CPU, nccl on GPU); False when not launched so."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return True


def _barrier():
    if dist_info()[1] > 1:
        torch.distributed.barrier()


# ---------------------------------------------------------------- training
def block_checkpoint_path(out_dir: Path, block: int) -> Path:
    return Path(out_dir) / f"block{block}.pt"


def train_blocks(space: SearchSpace, data: DataSplits, teacher: Teacher, out_dir: str | Path, *,
                 config: DistillConfig = DistillConfig(), blocks: list[int] | None = None, resume: bool = True,
                 cache_features: bool | None = None, show_progress: bool = True) -> dict:
    """Train the chosen blocks (default all); returns per-block loss history. Rank 0 writes files."""
    if config.loss not in LOSSES:
        raise DataError(f"unknown loss {config.loss!r}; choose {', '.join(LOSSES)}")
    out_dir = Path(out_dir)
    rank, world = dist_info()
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    _barrier()
    n_blocks = len(space.blocks)
    blocks = list(range(n_blocks)) if blocks is None else blocks
    bad = [b for b in blocks if not 0 <= b < n_blocks]
    if bad:
        raise DataError(f"block {bad[0]} does not exist; space {space.name!r} has blocks 0..{n_blocks - 1}")
    if cache_features is None:
        cache_features = data.in_memory
    if not data.in_memory and not cache_features:
        raise DataError("block-wise training streams teacher features from memory: use an in-memory dataset "
                        "or --cache-features for folder data")
    cache_path = out_dir / "teacher_features.pt" if (cache_features and rank == 0) else None
    if rank == 0:
        x_all, feats, _ = teacher_features(teacher, data.train, cache_path, data_fp=data.fingerprint, show_progress=show_progress)
    _barrier()
    if rank != 0:
        x_all, feats, _ = teacher_features(teacher, data.train, out_dir / "teacher_features.pt" if cache_features else None,
                                           data_fp=data.fingerprint)
    stds = channel_stats(feats)
    meta = {"space": space.to_dict(), "space_fingerprint": space.fingerprint, "teacher": teacher.description,
            "teacher_fingerprint": teacher.fingerprint, "teacher_channels": teacher.channels, "data": data.summary(),
            "config": asdict(config), "world_size": world}
    if rank == 0:
        write_json(out_dir / "supernet.json", {**meta, "blocks": n_blocks})
    results = {}
    for b in blocks:
        results[b] = _train_block(space, b, teacher, x_all, feats, stds, out_dir, config, meta, resume, show_progress)
    _barrier()
    return results


def _train_block(space, b, teacher, x_all, feats, stds, out_dir, config, meta, resume, show_progress) -> dict:
    rank, world = dist_info()
    torch.manual_seed(config.seed + b)
    student = BlockStudent(space, b, teacher.channels)
    opt = torch.optim.Adam(student.parameters(), lr=config.lr(b, len(space.blocks)), weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=config.lr_decay)
    ckpt = block_checkpoint_path(out_dir, b)
    start_epoch, history = 0, []
    if resume and ckpt.is_file():
        state = load_checkpoint(ckpt, what=f"block {b} checkpoint")
        if state.get("config") == meta["config"] and state.get("teacher_fingerprint") == teacher.fingerprint \
                and state.get("space_fingerprint") == space.fingerprint:
            student.load_state_dict(state["student"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start_epoch, history = state["epoch"], json.loads(state["history"])
    model = student
    if world > 1:
        model = nn.parallel.DistributedDataParallel(student, find_unused_parameters=True)
    inputs = x_all if b == 0 else feats[b - 1]
    target, std = feats[b], stds[b]
    n = len(inputs)
    per_rank = config.batch_size // world if world > 1 else config.batch_size
    steps = math.ceil(n / config.batch_size)
    if config.max_steps:
        steps = min(steps, config.max_steps)
    path_rng = random.Random(config.seed * 7919 + b)  # identical on every rank
    sampler = FairPathSampler(space, b, path_rng) if config.fairness else (lambda: sample_path(space, b, path_rng))
    for _ in range(start_epoch * steps):  # replay the RNG so a resumed run samples the same paths
        sampler()
    with progress_bar(show_progress and rank == 0) as bar:
        task = bar.task(f"block {b}", config.epochs * steps)
        bar.advance(task, start_epoch * steps)
        for epoch in range(start_epoch, config.epochs):
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 1000 + epoch * 31 + b))
            student.train()
            t0, total, count = time.time(), 0.0, 0
            for step in range(steps):
                idx = perm[step * config.batch_size:(step + 1) * config.batch_size]
                idx = idx[rank * per_rank:(rank + 1) * per_rank] if world > 1 else idx
                ops = sampler()
                pred = model(inputs[idx], ops)
                loss = feature_distance(pred, target[idx], config.loss, std)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
                count += len(idx)
                bar.advance(task, info=f"epoch {epoch + 1} loss {total / count:.4f}")
            sched.step()
            rec = {"block": b, "epoch": epoch + 1, "loss": total / max(count, 1), "lr": opt.param_groups[0]["lr"],
                   "seconds": time.time() - t0, "images_per_s": count * world / max(time.time() - t0, 1e-9)}
            history.append(rec)
            if rank == 0:  # checkpoint first: a kill never leaves metrics ahead of the weights
                save_checkpoint(block_checkpoint_path(out_dir, b), {
                    "block": b, "student": student.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "epoch": epoch + 1, "history": json.dumps(history),
                    "config": meta["config"], "teacher_fingerprint": teacher.fingerprint,
                    "space_fingerprint": space.fingerprint, "teacher_channels": teacher.channels,
                    "channel_std": std})
                with open(Path(out_dir) / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(rec) + "\n")
    return {"history": history, "checkpoint": str(block_checkpoint_path(out_dir, b)), "resumed_from_epoch": start_epoch}


def load_block(space: SearchSpace, out_dir: str | Path, block: int) -> tuple[BlockStudent, dict]:
    """A trained block student and its checkpoint metadata (refuses another space's checkpoint)."""
    path = block_checkpoint_path(Path(out_dir), block)
    if not path.is_file():
        raise DataError(f"no trained block {block} in {out_dir}: run `dna-deploy train` (e.g. --blocks {block}) first")
    state = load_checkpoint(path, what=f"block {block} checkpoint")
    if state.get("space_fingerprint") != space.fingerprint:
        raise DataError(f"{path} was trained for another space (fingerprint {state.get('space_fingerprint')}, "
                        f"space {space.name!r} is {space.fingerprint})")
    student = BlockStudent(space, block, state["teacher_channels"])
    student.load_state_dict(state["student"])
    return student, state
