"""DNA training: each block supernet learns to map the teacher's feature at its start to the
teacher's feature at its end, one sampled path per step (block-wise knowledge distillation).

The student (a block supernet between 1x1 adapters) and its distances live in student.py.

Blocks are independent given the teacher: train a subset with `blocks=`, or run several processes.
Data-parallel over torch.distributed (torchrun; gloo on CPU, nccl on GPU): every rank samples the
same path each step (seeded RNG), so one step trains one path on the global batch.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from dna_deploy.data import DataSplits, stack
from dna_deploy.distill.checkpoints import block_checkpoint_path
from dna_deploy.distill.loop import EpochCheckpoint, start_block_run
from dna_deploy.distill.student import BlockStudent, channel_stats, feature_distance
from dna_deploy.distill.teacher import Teacher
from dna_deploy.distributed import barrier, dist_info
from dna_deploy.errors import DataError
from dna_deploy.io import fingerprint, load_checkpoint, save_checkpoint, write_json
from dna_deploy.nn.supernet import FairPathSampler, sample_path
from dna_deploy.progress import progress_bar
from dna_deploy.settings import DISTILL_LOSSES, DistillConfig
from dna_deploy.space import SearchSpace


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


# ---------------------------------------------------------------- training
def train_blocks(space: SearchSpace, data: DataSplits, teacher: Teacher, out_dir: str | Path, *,
                 config: DistillConfig = DistillConfig(), blocks: list[int] | None = None, resume: bool = True,
                 cache_features: bool | None = None, show_progress: bool = True) -> dict:
    """Train the chosen blocks (default all); returns per-block loss history. Rank 0 writes files."""
    if config.loss not in DISTILL_LOSSES:
        raise DataError(f"unknown loss {config.loss!r}; choose {', '.join(DISTILL_LOSSES)}")
    n_blocks = len(space.blocks)
    out_dir, blocks, rank, world = start_block_run(out_dir, n_blocks, blocks)
    if cache_features is None:
        cache_features = data.in_memory
    if not data.in_memory and not cache_features:
        raise DataError("block-wise training streams teacher features from memory: use an in-memory dataset "
                        "or --cache-features for folder data")
    cache_path = out_dir / "teacher_features.pt" if (cache_features and rank == 0) else None
    if rank == 0:
        x_all, feats, _ = teacher_features(teacher, data.train, cache_path, data_fp=data.fingerprint, show_progress=show_progress)
    barrier()
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
    barrier()
    return results


def _train_block(space, b, teacher, x_all, feats, stds, out_dir, config, meta, resume, show_progress) -> dict:
    rank, world = dist_info()
    torch.manual_seed(config.seed + b)
    student = BlockStudent(space, b, teacher.channels)
    opt = torch.optim.Adam(student.parameters(), lr=config.lr(b, len(space.blocks)), weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=config.lr_decay)
    ckpt = EpochCheckpoint(block_checkpoint_path(out_dir, b), metrics_path=Path(out_dir) / "metrics.jsonl", key={"block": b},
                           identity={"config": meta["config"], "teacher_fingerprint": teacher.fingerprint,
                                     "space_fingerprint": space.fingerprint,
                                     "data_fingerprint": meta["data"]["fingerprint"]}, writer=rank == 0)
    objects = {"student": student, "optimizer": opt, "scheduler": sched}
    start_epoch, history, _ = ckpt.resume(objects, enabled=resume)
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
            ckpt.save(objects, epoch=epoch + 1, history=history,
                      extra={"block": b, "teacher_channels": teacher.channels, "channel_std": std})
    return {"history": history, "checkpoint": str(block_checkpoint_path(out_dir, b)), "resumed_from_epoch": start_epoch}


def check_method_teacher(method: str, has_teacher: bool) -> None:
    """DNA needs a teacher and DNA++ takes none (callers check this before loading any data)."""
    if method == "dna" and not has_teacher:
        raise DataError("DNA distils from a teacher: give --teacher (a checkpoint or torchvision:NAME), "
                        "or train without one: --method dna++")
    if method == "dna++" and has_teacher:
        raise DataError("--method dna++ uses no teacher; leave out --teacher (it serves retrain's distillation)")


def train_supernet(space: SearchSpace, data: DataSplits, teacher: Teacher | None, out_dir: str | Path, *,
                   config: DistillConfig = DistillConfig(), blocks: list[int] | None = None, resume: bool = True,
                   cache_features: bool | None = None, show_progress: bool = True) -> dict:
    """Block-wise training by config.method: DNA distils `teacher`; DNA++ (distill/selfsup.py) takes none.
    The one entry point of the CLI and the pipeline, so the two never dispatch differently."""
    check_method_teacher(config.method, teacher is not None)
    if config.method == "dna++":
        from dna_deploy.distill.selfsup import train_blocks_selfsup

        return train_blocks_selfsup(space, data, out_dir, config=config, blocks=blocks, resume=resume,
                                    show_progress=show_progress)
    return train_blocks(space, data, teacher, out_dir, config=config, blocks=blocks, resume=resume,
                        cache_features=cache_features, show_progress=show_progress)
