"""DNA++: teacher-free, self-supervised block-wise training, after BossNAS's ensemble bootstrapping.

Why: DNA needs a strong teacher trained on the user's data; many users have none. DNA++ replaces
the teacher's features with targets the supernet makes itself.

- **Siamese block supernets.** Per block, an online supernet followed by a small predictor (two 1x1
  convs), and a momentum target: an exponential moving average (EMA) of the online supernet.
- **Two views** of every image (`two_views`): random resized crops, flips and brightness/contrast
  jitter for natural images; mild scale and shift, no flip, for digits.
- **The loss.** For a sampled path, the online output on one view (through the predictor) predicts
  the target's *population centre* on the other view: the mean of the target's outputs over several
  sampled paths. The views swap roles and both terms are summed (2 - 2 cos per image).
- **Against collapse**, DNA++'s "output divergence among samples": a variance term (VICReg's hinge)
  on the online block's pooled outputs, mean over channels of relu(1 - std over the batch). With
  `variance_weight: 0` the term is off; `tests/distill/test_selfsup.py` measures both.
- **Block-wise as in DNA.** Block b's input is the population centre of blocks 0..b-1's trained
  targets (`PopulationCentre`), so blocks train and checkpoint one by one, in order.

Rating (select/rate.py) uses the same pieces: a candidate's rating is its training loss against
the population centre on two fixed views of the rate split, after re-estimating its BatchNorm.
"""

from __future__ import annotations

import copy
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dna_deploy.compute import Compute, EpochBatches
from dna_deploy.data import DataSplits
from dna_deploy.distill.checkpoints import block_checkpoint_path
from dna_deploy.distill.loop import EpochCheckpoint, start_block_run
from dna_deploy.distributed import barrier, dist_info
from dna_deploy.errors import DataError
from dna_deploy.io import fingerprint, load_checkpoint, sha256_file, write_json
from dna_deploy.nn.supernet import BlockSupernet, FairPathSampler, sample_path
from dna_deploy.progress import progress_bar
from dna_deploy.settings import DistillConfig
from dna_deploy.space import SearchSpace

METHOD = "dna++"
# Augmentation per kind of data: area scale range, max shift as a fraction of the side, flips,
# brightness/contrast jitter, and for natural images BYOL's colour jitter (saturation), random
# grayscale and Gaussian blur, whose absence lets a self-supervised target lean on colour alone.
# Digits keep their strokes: no flips, no colour, no blur.
AUGMENTATIONS = {
    "digits": {"scale": (0.75, 1.0), "shift": 0.1, "flip": False, "jitter": 0.2},
    "natural": {"scale": (0.35, 1.0), "shift": 0.0, "flip": True, "jitter": 0.4, "saturation": 0.4, "grayscale": 0.2,
                "blur": 0.5},
}


def augmentation_for(config: DistillConfig, data_name: str) -> dict:
    kind = config.augment
    if kind == "auto":
        kind = "digits" if data_name in ("mnist", "fashion-mnist") else "natural"
    return AUGMENTATIONS[kind]


def random_view(x: torch.Tensor, aug: dict, generator: torch.Generator) -> torch.Tensor:
    """One random view per image, batched: a resized crop (affine grid), a flip, and jitter."""
    n = x.shape[0]

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    side = u(*aug["scale"]).sqrt()  # crop side as a fraction of the image side
    room = (1 - side).clamp_min(0)  # a crop's centre may move this far and stay inside
    cx = u(-1, 1) * room + u(-1, 1) * aug["shift"]
    cy = u(-1, 1) * room + u(-1, 1) * aug["shift"]
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if aug["flip"] else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = side * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = side, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    v = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if aug["jitter"]:
        c = 1 + u(-aug["jitter"], aug["jitter"]).to(x.device).view(-1, 1, 1, 1)
        b = u(-aug["jitter"], aug["jitter"]).to(x.device).view(-1, 1, 1, 1)
        v = v * c + b
    # what supernets trained before these keys recorded: none of them (.get keeps their views)
    if aug.get("saturation") and v.shape[1] == 3:
        gray = v.mean(1, keepdim=True)
        sat = 1 + u(-aug["saturation"], aug["saturation"]).to(x.device).view(-1, 1, 1, 1)
        v = gray + (v - gray) * sat
    if aug.get("grayscale") and v.shape[1] == 3:
        to_gray = (torch.rand(n, generator=generator) < aug["grayscale"]).to(x.device).view(-1, 1, 1, 1)
        v = torch.where(to_gray, v.mean(1, keepdim=True).expand_as(v), v)
    if aug.get("blur"):
        v = _random_blur(v, torch.rand(n, generator=generator) < aug["blur"], u(0.1, 2.0))
    return v


def _random_blur(x: torch.Tensor, which: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A Gaussian blur (sigma per image, in pixels at 224 px, scaled to this size) on the chosen images."""
    if not bool(which.any()):
        return x
    n, c, h, _ = x.shape
    sigma = (sigma * h / 224).clamp_min(0.05)
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None].to(x.dtype)) ** 2)
    k = (k / k.sum(1, keepdim=True)).to(x.device)  # [n, taps]: one kernel per image
    pad = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    flat = pad.reshape(1, n * c, *pad.shape[2:])
    kern = k.repeat_interleave(c, 0)  # [n*c, taps]
    y = F.conv2d(flat, kern[:, None, None, :], groups=n * c)  # along the width
    y = F.conv2d(y, kern[:, None, :, None], groups=n * c)  # along the height
    blurred = y.reshape(n, c, *x.shape[2:])
    return torch.where(which.to(x.device).view(-1, 1, 1, 1), blurred, x)


def two_views(x: torch.Tensor, aug: dict, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return random_view(x, aug, generator), random_view(x, aug, generator)


def ssl_distance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(pred, target) per image, over the whole flattened feature map."""
    return 2 - 2 * F.cosine_similarity(pred.flatten(1), target.flatten(1), dim=1)


def variance_penalty(feat: torch.Tensor) -> torch.Tensor:
    """VICReg's hinge on the pooled outputs: mean over channels of relu(1 - std over the batch)."""
    pooled = feat.mean((2, 3))
    return F.relu(1 - torch.sqrt(pooled.var(0) + 1e-4)).mean()


def output_spread(feat: torch.Tensor) -> float:
    """Mean per-channel std over the batch of pooled, L2-normalised outputs (~0 when collapsed)."""
    pooled = F.normalize(feat.mean((2, 3)), dim=1)
    return float(pooled.std(0).mean())


class Predictor(nn.Sequential):
    def __init__(self, channels: int):
        super().__init__(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
                         nn.Conv2d(channels, channels, 1))


class SelfSupStudent(nn.Module):
    """The online block: supernet then predictor. Its attribute names match BlockStudent's
    (supernet, adapt_in, adapt_out), so rating walks both the same way."""

    def __init__(self, space: SearchSpace, block: int):
        super().__init__()
        self.block = block
        self.supernet = BlockSupernet(space, block)
        self.adapt_in = nn.Identity()
        self.adapt_out = Predictor(space.blocks[block].out_channels)

    def forward(self, x: torch.Tensor, ops) -> tuple[torch.Tensor, torch.Tensor]:
        """(block output, prediction): the variance term needs the first, the loss the second."""
        f = self.supernet(x, ops)
        return f, self.adapt_out(f)


def _batch_statistics_only(module: nn.Module) -> nn.Module:
    """The target always normalises with the statistics of its own batch (a supernet's running
    statistics mix every path) and never updates running statistics."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0
    return module.train().requires_grad_(False)


@torch.no_grad()
def population_centre(target: BlockSupernet, x: torch.Tensor, paths) -> torch.Tensor:
    return torch.stack([target(x, p) for p in paths]).mean(0)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)


def fixed_paths(space: SearchSpace, block: int, k: int, seed: int = 0) -> list:
    rng = random.Random(seed * 1009 + block)
    return [sample_path(space, block, rng) for _ in range(k)]


class PopulationCentre:
    """The trained targets of blocks 0..n-1, each answering with the mean of a fixed set of paths.

    It plays the teacher's part for DNA++: the input of block b (training) and the features every
    rated candidate is compared with. Duck-typed like distill.teacher.Teacher."""

    def __init__(self, space: SearchSpace, supernet_dir: str | Path, *, upto: int | None = None,
                 paths_per_block: int | None = None, whole_folder: bool = True):
        supernet_dir = Path(supernet_dir)
        n = len(space.blocks) if upto is None else upto
        self.space, self.blocks, self.paths = space, [], []
        hashes = []
        for b in range(n):
            path = block_checkpoint_path(supernet_dir, b)
            if not path.is_file():
                raise DataError(f"DNA++ trains blocks in order: block {b} is not trained in {supernet_dir} "
                                f"(dna-deploy train --method dna++ --blocks {b})")
            state = load_checkpoint(path, what=f"block {b} checkpoint")
            if state.get("method") != METHOD:
                raise DataError(f"{path} was not trained with --method dna++")
            target = BlockSupernet(space, b)
            target.load_state_dict(state["target"])
            self.blocks.append(_batch_statistics_only(target))
            k = paths_per_block or state["config"]["ensemble_paths"]
            if paths_per_block and space.block_candidate_count(b) <= paths_per_block:
                self.paths.append(space.block_candidates(b))  # the whole population: no candidate favoured
            else:
                self.paths.append(fixed_paths(space, b, k, state["config"]["seed"]))
        # rating: over every trained block in the folder, so rating some blocks now and others later
        # agrees; training: over the blocks it feeds on only, so a block's own checkpoint never
        # changes the identity it resumes under
        for b in range(len(space.blocks) if whole_folder else n):
            path = block_checkpoint_path(supernet_dir, b)
            hashes.append(sha256_file(path)[:16] if path.is_file() else None)
        self.taps = [f"blocks.{b}" for b in range(n)]
        self.channels = [space.blocks[b].out_channels for b in range(n)]
        self.description = {"kind": "population-centre", "method": METHOD, "supernet": str(supernet_dir),
                            "blocks": n}
        # rating's centre (paths_per_block given) is part of what its ratings mean; training's keeps
        # the identity its checkpoints were written under
        self.fingerprint = fingerprint({"method": METHOD, "blocks": hashes, **({"paths": paths_per_block}
                                                                                 if paths_per_block else {})})

    def to(self, compute) -> "PopulationCentre":
        self.blocks = [compute.module(t) for t in self.blocks]
        return self

    @torch.no_grad()
    def features(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """The centres of blocks 0..upto-1 (all by default): rating block b needs no later ones."""
        out = []
        for target, paths in list(zip(self.blocks, self.paths))[:upto]:
            x = population_centre(target, x, paths)
            out.append(x)
        return out

    def input_of(self, block: int, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[block - 1] if block > 0 else x


def train_blocks_selfsup(space: SearchSpace, data: DataSplits, out_dir: str | Path, *,
                         config: DistillConfig = DistillConfig(method=METHOD), blocks: list[int] | None = None,
                         resume: bool = True, compute: Compute | None = None, show_progress: bool = True) -> dict:
    """DNA++ for the chosen blocks (default all), in order; returns per-block loss history."""
    compute = compute or Compute.from_settings()
    n_blocks = len(space.blocks)
    out_dir, blocks, rank, world = start_block_run(out_dir, n_blocks, blocks)
    aug = augmentation_for(config, data.name)
    meta = {"method": METHOD, "space": space.to_dict(), "space_fingerprint": space.fingerprint, "teacher": None,
            "data": data.summary(), "config": config.identity(), "augmentation": {**aug, "scale": list(aug["scale"])},
            "world_size": world, "compute": compute.describe()}
    if rank == 0:
        write_json(out_dir / "supernet.json", {**meta, "blocks": n_blocks})
    results = {}
    for b in blocks:
        results[b] = _train_block(space, b, data, out_dir, config, meta, aug, compute, resume, show_progress)
    barrier()
    return results


def _train_block(space, b, data, out_dir, config, meta, aug, compute, resume, show_progress) -> dict:
    rank, world = dist_info()
    barrier()  # every rank reads block b-1's final checkpoint only after rank 0 has written it
    prev = PopulationCentre(space, out_dir, upto=b, whole_folder=False).to(compute) if b > 0 else None
    torch.manual_seed(config.seed + b)
    online = compute.module(SelfSupStudent(space, b))  # on the device before the optimiser
    target = _batch_statistics_only(copy.deepcopy(online.supernet))
    opt = torch.optim.Adam(online.parameters(), lr=config.lr(b, len(space.blocks)), weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=config.lr_decay)
    ckpt = EpochCheckpoint(block_checkpoint_path(out_dir, b), metrics_path=Path(out_dir) / "metrics.jsonl", key={"block": b},
                           identity={"method": METHOD, "config": meta["config"], "space_fingerprint": space.fingerprint,
                                     "data_fingerprint": meta["data"]["fingerprint"],
                                     "inputs_fingerprint": prev.fingerprint if prev else None},
                           writer=rank == 0)
    objects = {"student": online, "target": target, "optimizer": opt, "scheduler": sched}
    scaler = compute.scaler()
    if scaler.is_enabled():  # fp16: the loss scale is state too, or a resumed run is not the same run
        objects["scaler"] = scaler
    start_epoch, history, state = ckpt.resume(objects, enabled=resume)
    start_step, running = EpochCheckpoint.position(state)
    target.requires_grad_(False)
    model = compute.ddp(online)
    n = len(data.train)
    steps = EpochBatches(n, config.batch_size, seed=0, steps=config.max_steps, drop_last=True).steps
    if steps == 0:  # whole batches only: the variance term needs a batch
        raise DataError(f"DNA++ needs at least one batch of {config.batch_size} training images; there are {n}")
    path_rng = random.Random(config.seed * 7919 + b)  # identical on every rank
    sampler = FairPathSampler(space, b, path_rng) if config.fairness else (lambda: sample_path(space, b, path_rng))
    ens_rng = random.Random(config.seed * 104729 + b)
    for _ in range(start_epoch * steps + start_step):  # replay the RNGs so a resumed run samples the same paths
        sampler()
        [sample_path(space, b, ens_rng) for _ in range(config.ensemble_paths)]
    with progress_bar(show_progress and rank == 0) as bar:
        task = bar.task(f"block {b} (DNA++)", config.epochs * steps, completed=start_epoch * steps + start_step)
        batches = EpochBatches(n, config.batch_size, seed=0, rank=rank, world=world, steps=config.max_steps,
                               drop_last=True)
        loader = compute.loader(data.train, batch_sampler=batches, streamed=not data.in_memory)  # once per block
        for epoch in range(start_epoch, config.epochs):
            batches.set_epoch(config.seed * 1000 + epoch * 31 + b, start=start_step)
            # the views of step k come from their own seed, so a resumed epoch draws the same views
            view_seed = (config.seed * 2000 + epoch * 37 + b) * 100003 + rank
            online.train()
            t0 = time.time()
            totals = {k: float(running.get(k, 0.0)) for k in ("loss", "predict", "variance", "spread")}
            count = int(running.get("images", 0))
            for step, (x, _) in enumerate(loader, start=start_step):
                x = compute.batch(x)
                v1, v2 = two_views(x, aug, torch.Generator().manual_seed(view_seed + step * 7))
                with compute.autocast():
                    if prev is not None:
                        v1, v2 = prev.input_of(b, v1), prev.input_of(b, v2)
                    ops = sampler()
                    ens = [sample_path(space, b, ens_rng) for _ in range(config.ensemble_paths)]
                    # both views in one batch: one forward (DDP averages its gradients over ranks)
                    f, p = model(torch.cat([v1, v2]), ops)
                    t1, t2 = population_centre(target, torch.cat([v1, v2]), ens).float().chunk(2)
                (f1, f2), (p1, p2) = f.float().chunk(2), p.float().chunk(2)
                predict = (ssl_distance(p1, t2) + ssl_distance(p2, t1)).mean()
                variance = (variance_penalty(f1) + variance_penalty(f2)) / 2
                loss = predict + config.variance_weight * variance
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                ema_update(target, online.supernet, config.ema)
                k = len(v1)
                totals["loss"] += loss.item() * k
                totals["predict"] += predict.item() * k
                totals["variance"] += variance.item() * k
                totals["spread"] += output_spread(f1.detach()) * k
                count += k
                done = step + 1
                bar.advance(task, info=f"epoch {epoch + 1} loss {totals['loss'] / count:.4f}", images=k * world)
                if compute.checkpoint_every and done % compute.checkpoint_every == 0 and done < steps:
                    ckpt.save(objects, epoch=epoch, history=history, extra={"block": b, "method": METHOD}, step=done,
                              running={**totals, "images": count})
            start_step, running = 0, {}
            sched.step()
            rec = {"block": b, "epoch": epoch + 1, **{k: v / max(count, 1) for k, v in totals.items()},
                   "lr": opt.param_groups[0]["lr"], "seconds": time.time() - t0,
                   "images_per_s": count * world / max(time.time() - t0, 1e-9)}
            history.append(rec)
            ckpt.save(objects, epoch=epoch + 1, history=history, extra={"block": b, "method": METHOD})
    return {"history": history, "checkpoint": str(block_checkpoint_path(out_dir, b)), "resumed_from_epoch": start_epoch}


def load_selfsup_block(space: SearchSpace, state: dict, block: int) -> SelfSupStudent:
    student = SelfSupStudent(space, block)
    student.load_state_dict(state["student"])
    return student


def rating_views(x: torch.Tensor, aug: dict, seed: int = 0) -> torch.Tensor:
    """The rate split's two fixed views, stacked: candidates are compared on the same views."""
    v1, v2 = two_views(x, aug, torch.Generator().manual_seed(seed))
    return torch.cat([v1, v2])


def swap_views(f: torch.Tensor) -> torch.Tensor:
    """Targets for stacked views: view 1's output is judged against view 2's centre, and back."""
    h = len(f) // 2
    return torch.cat([f[h:], f[:h]])


__all__ = ["METHOD", "PopulationCentre", "SelfSupStudent", "train_blocks_selfsup", "ssl_distance", "two_views",
           "variance_penalty", "output_spread", "rating_views", "swap_views", "augmentation_for"]
