"""DNA training: each block supernet learns to map the teacher's feature at its start to the
teacher's feature at its end, one sampled path per step (block-wise knowledge distillation).

The student (a block supernet between 1x1 adapters) and its distances live in student.py.

Blocks are independent given the teacher: train a subset with `blocks=`, or run several processes.
Data-parallel over torch.distributed (torchrun; gloo on CPU, nccl on GPU): every rank samples the
same path each step (seeded RNG), so one step trains one path on the global batch.
"""

from __future__ import annotations

import abc
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from dna_deploy.compute import Compute, EpochBatches, evenly_spaced_subset
from dna_deploy.data import DataSplits, stack
from dna_deploy.distill.checkpoints import block_checkpoint_path
from dna_deploy.distill.loop import EpochCheckpoint, start_block_run
from dna_deploy.distill.student import BlockStudent, feature_distance
from dna_deploy.distill.teacher import Teacher
from dna_deploy.distributed import agree, barrier, dist_info
from dna_deploy.errors import DataError
from dna_deploy.io import fingerprint, write_json
from dna_deploy.nn.supernet import FairPathSampler, sample_path
from dna_deploy.progress import progress_bar
from dna_deploy.settings import DISTILL_LOSSES, DistillConfig
from dna_deploy.space import SearchSpace


# ---------------------------------------------------------------- where teacher features come from
class _Indexed(torch.utils.data.Dataset):
    """(image, index): the disk cache is read by the indices of the images in a batch."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i][0], i


class FeatureSource(abc.ABC):
    """Batches of (block input, teacher target) for one block and one epoch.

    - `MemoryFeatures` (embedded data): every feature computed once and held in RAM;
    - `OnlineFeatures` (folder data, the default there): the teacher runs on every batch, as DNA
      did, which is cheap on a GPU and needs no storage;
    - `DiskFeatures` (`feature_cache: disk`): fp16 memory-mapped files, one per tap the chosen
      blocks need, built by all ranks in parallel, refused above `feature_cache_gb`.
    All three read the same batches (compute.EpochBatches), so they train the same way."""

    def __init__(self, teacher: Teacher, data: DataSplits, compute: Compute):
        self.teacher, self.data, self.compute = teacher, data, compute
        self._loaders: dict[int, tuple] = {}

    def loader_for(self, dataset, sampler):
        """One loader per sampler (a block's EpochBatches, moved on each epoch): its persistent
        workers serve every epoch instead of being started anew."""
        key = id(sampler)
        if key not in self._loaders or self._loaders[key][0] is not sampler:
            self._loaders = {key: (sampler, self.compute.loader(dataset, batch_sampler=sampler))}
        return self._loaders[key][1]

    def channel_stds(self, blocks: list[int]) -> dict[int, torch.Tensor]:
        """Per-channel std of the teacher's feature at the end of each block (on the CPU), from a
        fixed sample of up to STD_IMAGES training images."""
        idx = evenly_spaced_subset(len(self.data.train), STD_IMAGES)
        sums: dict[int, list] = {}
        loader = self.compute.loader(_Indexed(torch.utils.data.Subset(self.data.train, idx)), batch_size=128,
                                     streamed=not self.data.in_memory)
        for x, _ in loader:
            with self.compute.autocast():
                feats = self.teacher.features(self.compute.batch(x))
            for b in blocks:
                f = feats[b].float().transpose(0, 1).flatten(1).double()
                acc = sums.setdefault(b, [0, 0.0, 0.0])
                acc[0] += f.shape[1]
                acc[1] = acc[1] + f.sum(1)
                acc[2] = acc[2] + (f * f).sum(1)
        out = {}
        for b, (n, s1, s2) in sums.items():
            var = (s2 - s1 * s1 / n) / max(n - 1, 1)
            out[b] = relative_floor(var.clamp_min(0).sqrt().float().cpu())
        return out

    @abc.abstractmethod
    def batches(self, block: int, sampler: EpochBatches):
        """(input, target) on the device, for the batches `sampler` names."""


class MemoryFeatures(FeatureSource):
    """Only the taps the chosen blocks read (b - 1 and b) are kept: `feature_source` takes this
    path only when they fit in memory_fraction_limit of this machine's RAM, with every local rank
    holding its own copy."""

    def __init__(self, teacher, data, compute, *, blocks: list[int] | None = None, show_progress: bool = False):
        super().__init__(teacher, data, compute)
        x, _ = stack(data.train)
        keep = set(range(len(teacher.taps))) if blocks is None else {t for b in blocks for t in (b - 1, b) if t >= 0}
        feats: list[list[torch.Tensor] | None] = [[] if j in keep else None for j in range(len(teacher.taps))]
        with progress_bar(show_progress) as bar:
            task = bar.task("teacher features", math.ceil(len(x) / 256))
            for i in range(0, len(x), 256):
                with compute.autocast():
                    out = teacher.features(compute.batch(x[i:i + 256]))
                for j, f in enumerate(out):
                    if feats[j] is not None:
                        feats[j].append(f.float().cpu())
                bar.advance(task, images=len(out[0]))
        self.x, self.feats = x, [torch.cat(f) if f is not None else None for f in feats]

    def channel_stds(self, blocks):
        return {b: relative_floor(self.feats[b].transpose(0, 1).flatten(1).std(1)) for b in blocks}

    def batches(self, block, sampler):
        inputs = self.x if block == 0 else self.feats[block - 1]
        for idx in sampler:
            yield self.compute.batch(inputs[idx]), self.compute.batch(self.feats[block][idx])


class OnlineFeatures(FeatureSource):
    def batches(self, block, sampler):
        for x, _ in self.loader_for(self.data.train, sampler):
            x = self.compute.batch(x)
            with self.compute.autocast():
                feats = self.teacher.features(x)
            yield (x if block == 0 else feats[block - 1].float()), feats[block].float()


class DiskFeatures(FeatureSource):
    def __init__(self, teacher, data, compute, folder: Path, blocks: list[int], *, max_gb: float,
                 show_progress: bool = False):
        super().__init__(teacher, data, compute)
        self.taps = sorted({t for b in blocks for t in (b - 1, b) if t >= 0})
        n = len(data.train)
        with torch.no_grad():
            probe = teacher.features(compute.batch(data.train[0][0][None]))
        shapes = {t: tuple(probe[t].shape[1:]) for t in self.taps}
        need = n * sum(math.prod(s) for s in shapes.values()) * 2
        if need > max_gb * 1e9:
            raise DataError(f"the teacher-feature cache for block(s) {blocks} would take {need / 1e9:.1f} GB "
                            f"(fp16, {n} images), over feature_cache_gb {max_gb:g}: train fewer blocks per run "
                            "(--blocks), raise --feature-cache-gb, or run the teacher on the fly (--feature-cache none)")
        key = fingerprint({"teacher": teacher.fingerprint, "data": data.fingerprint, "n": n, "taps": self.taps})
        self.folder = Path(folder) / key
        self.files = {t: self.folder / f"tap{t}.f16" for t in self.taps}
        rank, world = dist_info()
        if not (self.folder / "complete.json").is_file():
            # a rank that fails here (disk full, no permission) tells the others, which would
            # otherwise wait for it at the next barrier: `agree` is that barrier
            error = None
            if rank == 0:
                try:
                    free = shutil.disk_usage(Path(folder).parent).free
                    if need > free:
                        raise DataError(f"the teacher-feature cache needs {need / 1e9:.1f} GB and {folder.parent} has "
                                        f"{free / 1e9:.1f} GB free; use --feature-cache none (teacher on the fly)")
                    self.folder.mkdir(parents=True, exist_ok=True)
                    for t, f in self.files.items():
                        np.lib.format.open_memmap(f, mode="w+", dtype=np.float16, shape=(n, *shapes[t])).flush()
                except (DataError, OSError) as e:
                    error = str(e).splitlines()[0]
            agree(error)
            try:
                self._build(rank, world, show_progress)
            except OSError as e:
                error = f"writing the teacher-feature cache in {self.folder}: {e}"
            agree(error)
            if rank == 0:
                write_json(self.folder / "complete.json", {"key": key, "images": n, "taps": self.taps,
                                                           "bytes": need})
            barrier()
        self.maps = {t: np.load(f, mmap_mode="r") for t, f in self.files.items()}

    def _build(self, rank: int, world: int, show_progress: bool) -> None:
        """Every rank writes the rows of its share of the images (i = rank, rank + world, ...)."""
        maps = {t: np.load(f, mmap_mode="r+") for t, f in self.files.items()}
        mine = list(range(rank, len(self.data.train), world))
        loader = self.compute.loader(_Indexed(torch.utils.data.Subset(self.data.train, mine)), batch_size=256,
                                     streamed=not self.data.in_memory)
        with progress_bar(show_progress and rank == 0) as bar:
            task = bar.task("teacher feature cache", len(loader))
            for x, pos in loader:
                rows = np.asarray([mine[i] for i in pos.tolist()])
                with self.compute.autocast():
                    feats = self.teacher.features(self.compute.batch(x))
                for t in self.taps:
                    maps[t][rows] = feats[t].to(torch.float16).cpu().numpy()
                bar.advance(task, images=len(rows))
        for m in maps.values():
            m.flush()

    def _rows(self, tap: int, idx: list[int]) -> torch.Tensor:
        order = np.argsort(idx)  # sorted reads are sequential on disk; put them back in batch order
        rows = np.asarray(self.maps[tap][np.asarray(idx)[order]])
        return self.compute.batch(torch.from_numpy(rows[np.argsort(order)]).float())

    def batches(self, block, sampler):
        if block > 0:  # no image is decoded at all
            for idx in sampler:
                yield self._rows(block - 1, idx), self._rows(block, idx)
            return
        for x, idx in self.loader_for(_Indexed(self.data.train), sampler):
            yield self.compute.batch(x), self._rows(block, idx.tolist())


STD_IMAGES = 2048  # images the per-channel feature std is estimated on (streamed sources)


def relative_floor(std: torch.Tensor, fraction: float = 1e-2) -> torch.Tensor:
    """Per-channel std with a floor relative to the median channel: a near-dead channel (std 1e-7)
    would otherwise get a weight of 1e14 in the normalised loss (seen: a loss of 1.3e7)."""
    floor = max(float(std.median()) * fraction, 1e-12)
    return std.clamp_min(floor)


RAM_FRACTION = 0.5  # of physical memory the in-RAM teacher features may take, all local ranks together


def _features_fit_in_ram(teacher: Teacher, data: DataSplits, compute: Compute, blocks: list[int]) -> bool:
    """Whether the fp32 taps the blocks need, for every training image and every local rank, fit
    in RAM_FRACTION of this machine's memory; else `auto` runs the teacher on the fly."""
    import os

    with torch.no_grad():
        probe = teacher.features(compute.batch(data.train[0][0][None]))
    taps = {t for b in blocks for t in (b - 1, b) if t >= 0}
    need = len(data.train) * sum(probe[t][0].numel() for t in taps) * 4
    need *= int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return True
    return need <= RAM_FRACTION * ram


def feature_source(teacher: Teacher, data: DataSplits, compute: Compute, config: DistillConfig, out_dir: Path,
                   blocks: list[int], show_progress: bool) -> FeatureSource:
    mode = config.feature_cache
    if mode == "auto":
        mode = "memory" if data.in_memory and _features_fit_in_ram(teacher, data, compute, blocks) else "none"
    if mode == "memory":
        return MemoryFeatures(teacher, data, compute, blocks=blocks, show_progress=show_progress)
    if mode == "disk":
        return DiskFeatures(teacher, data, compute, out_dir / "feature_cache", blocks, max_gb=config.feature_cache_gb,
                            show_progress=show_progress)
    return OnlineFeatures(teacher, data, compute)


# ---------------------------------------------------------------- training
def train_blocks(space: SearchSpace, data: DataSplits, teacher: Teacher, out_dir: str | Path, *,
                 config: DistillConfig = DistillConfig(), blocks: list[int] | None = None, resume: bool = True,
                 compute: Compute | None = None, show_progress: bool = True) -> dict:
    """Train the chosen blocks (default all); returns per-block loss history. Rank 0 writes files."""
    if config.loss not in DISTILL_LOSSES:
        raise DataError(f"unknown loss {config.loss!r}; choose {', '.join(DISTILL_LOSSES)}")
    compute = compute or Compute.from_settings()
    n_blocks = len(space.blocks)
    out_dir, blocks, rank, world = start_block_run(out_dir, n_blocks, blocks)
    teacher.to(compute)
    source = feature_source(teacher, data, compute, config, out_dir, blocks, show_progress and rank == 0)
    stds = source.channel_stds(blocks)
    meta = {"space": space.to_dict(), "space_fingerprint": space.fingerprint, "teacher": teacher.description,
            "teacher_fingerprint": teacher.fingerprint, "teacher_channels": teacher.channels, "data": data.summary(),
            "config": config.identity(), "world_size": world, "compute": compute.describe()}
    if rank == 0:
        write_json(out_dir / "supernet.json", {**meta, "blocks": n_blocks})
    results = {}
    for b in blocks:
        results[b] = _train_block(space, b, teacher, source, stds[b], out_dir, config, meta, compute, resume,
                                  show_progress)
    barrier()
    return results


def _train_block(space, b, teacher, source, std, out_dir, config, meta, compute, resume, show_progress) -> dict:
    rank, world = dist_info()
    torch.manual_seed(config.seed + b)
    student = compute.module(BlockStudent(space, b, teacher.channels))  # on the device before the optimiser
    opt = torch.optim.Adam(student.parameters(), lr=config.lr(b, len(space.blocks)), weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=config.lr_decay)
    ckpt = EpochCheckpoint(block_checkpoint_path(out_dir, b), metrics_path=Path(out_dir) / "metrics.jsonl", key={"block": b},
                           identity={"config": meta["config"], "teacher_fingerprint": teacher.fingerprint,
                                     "space_fingerprint": space.fingerprint,
                                     "data_fingerprint": meta["data"]["fingerprint"]}, writer=rank == 0)
    objects = {"student": student, "optimizer": opt, "scheduler": sched}
    scaler = compute.scaler()
    if scaler.is_enabled():  # fp16: the loss scale is state too, or a resumed run is not the same run
        objects["scaler"] = scaler
    start_epoch, history, state = ckpt.resume(objects, enabled=resume)
    start_step, running = EpochCheckpoint.position(state)
    model = compute.ddp(student)
    std_dev = compute.batch(std)
    n = len(source.data.train)
    steps = EpochBatches(n, config.batch_size, seed=0, steps=config.max_steps).steps
    path_rng = random.Random(config.seed * 7919 + b)  # identical on every rank
    sampler = FairPathSampler(space, b, path_rng) if config.fairness else (lambda: sample_path(space, b, path_rng))
    for _ in range(start_epoch * steps + start_step):  # replay the RNG so a resumed run samples the same paths
        sampler()
    extra = {"block": b, "teacher_channels": teacher.channels, "channel_std": std}
    with progress_bar(show_progress and rank == 0) as bar:
        task = bar.task(f"block {b}", config.epochs * steps, completed=start_epoch * steps + start_step)
        batches = EpochBatches(n, config.batch_size, seed=0, rank=rank, world=world, steps=config.max_steps)
        for epoch in range(start_epoch, config.epochs):  # one sampler (and loader) for every epoch of the block
            batches.set_epoch(config.seed * 1000 + epoch * 31 + b, start=start_step)
            student.train()
            t0 = time.time()
            total, count = float(running.get("loss_sum", 0.0)), int(running.get("images", 0))
            loss_sum = torch.zeros((), device=compute.device)
            for step, (inputs, target) in enumerate(source.batches(b, batches), start=start_step):
                ops = sampler()
                with compute.autocast():
                    pred = model(inputs, ops)
                loss = feature_distance(pred.float(), target, config.loss, std_dev)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                loss_sum += loss.detach() * len(inputs)
                count += len(inputs)
                done = step + 1
                if done % LOG_EVERY == 0 or done == steps:
                    total += float(loss_sum)
                    loss_sum.zero_()
                    bar.update(task, info=f"epoch {epoch + 1} loss {total / max(count, 1):.4f}")
                bar.advance(task, images=len(inputs) * world)
                if compute.checkpoint_every and done % compute.checkpoint_every == 0 and done < steps:
                    total += float(loss_sum)
                    loss_sum.zero_()
                    ckpt.save(objects, epoch=epoch, history=history, extra=extra, step=done,
                              running={"loss_sum": total, "images": count})
            total += float(loss_sum)
            start_step, running = 0, {}
            sched.step()
            rec = {"block": b, "epoch": epoch + 1, "loss": total / max(count, 1), "lr": opt.param_groups[0]["lr"],
                   "seconds": time.time() - t0, "images_per_s": count * world / max(time.time() - t0, 1e-9)}
            history.append(rec)
            ckpt.save(objects, epoch=epoch + 1, history=history, extra=extra)
    return {"history": history, "checkpoint": str(block_checkpoint_path(out_dir, b)), "resumed_from_epoch": start_epoch}


LOG_EVERY = 20  # steps between reading the loss back from the device (each read waits for the GPU)


def check_method_teacher(method: str, has_teacher: bool) -> None:
    """DNA needs a teacher and DNA++ takes none (callers check this before loading any data)."""
    if method == "dna" and not has_teacher:
        raise DataError("DNA distils from a teacher: give --teacher (a checkpoint or torchvision:NAME), "
                        "or train without one: --method dna++")
    if method == "dna++" and has_teacher:
        raise DataError("--method dna++ uses no teacher; leave out --teacher (it serves retrain's distillation)")


def train_supernet(space: SearchSpace, data: DataSplits, teacher: Teacher | None, out_dir: str | Path, *,
                   config: DistillConfig = DistillConfig(), blocks: list[int] | None = None, resume: bool = True,
                   compute: Compute | None = None, show_progress: bool = True) -> dict:
    """Block-wise training by config.method: DNA distils `teacher`; DNA++ (distill/selfsup.py) takes none.
    The one entry point of the CLI and the pipeline, so the two never dispatch differently."""
    check_method_teacher(config.method, teacher is not None)
    if config.method == "dna++":
        from dna_deploy.distill.selfsup import train_blocks_selfsup

        return train_blocks_selfsup(space, data, out_dir, config=config, blocks=blocks, resume=resume,
                                    compute=compute, show_progress=show_progress)
    return train_blocks(space, data, teacher, out_dir, config=config, blocks=blocks, resume=resume,
                        compute=compute, show_progress=show_progress)
