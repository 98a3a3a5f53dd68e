"""Supervised training and evaluation of a classifier: the teacher (`teacher train`) and the
searched network (`retrain`, with optional logit distillation from the teacher). Checkpoints every
epoch and every `checkpoint_every` steps (atomic) and resumes."""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from dna_deploy.compute import Compute, EpochBatches
from dna_deploy.data import DataSplits, ImageTensorDataset, capped
from dna_deploy.distill.loop import EpochCheckpoint
from dna_deploy.distributed import dist_info
from dna_deploy.progress import progress_bar
from dna_deploy.settings import ClassifierConfig


@torch.no_grad()
def eval_loader(dataset, compute: Compute, batch_size: int = 256):
    """This rank's share of `dataset` for `evaluate`, built once where it is used every epoch."""
    rank, world = dist_info()
    mine = list(range(rank, len(dataset), world))
    return compute.loader(Subset(dataset, mine), batch_size=batch_size, streamed=not _in_memory(dataset))


def evaluate(model: nn.Module, dataset, *, batch_size: int = 256, compute: Compute | None = None, loader=None) -> dict:
    """Accuracy and loss; under torchrun each rank scores its share and the counts are summed.
    `loader`: from `eval_loader` (the same dataset), reused across calls."""
    if compute is None:  # where the model already is, in fp32
        compute = Compute(next(model.parameters()).device, None, False, 0)
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=compute.device)  # correct, loss, n
    for x, y in loader if loader is not None else eval_loader(dataset, compute, batch_size):
        x, y = compute.batch(x), y.to(compute.device)
        with compute.autocast():
            logits = model(x)
        logits = logits.float()
        sums[0] += (logits.argmax(1) == y).sum()
        sums[1] += F.cross_entropy(logits, y, reduction="sum")
        sums[2] += len(y)
    if dist_info()[1] > 1:
        torch.distributed.all_reduce(sums)
    correct, loss, total = sums.tolist()
    return {"accuracy": correct / max(total, 1), "loss": loss / max(total, 1), "n": int(total)}


def _in_memory(dataset) -> bool:
    """Tensors already in RAM (embedded data) gain nothing from loader workers."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return isinstance(dataset, ImageTensorDataset)


def train_classifier(model: nn.Module, data: DataSplits, ckpt_path: str | Path, *, config: ClassifierConfig = ClassifierConfig(),
                     teacher: nn.Module | None = None, resume: bool = True, show_progress: bool = True,
                     metrics_path: str | Path | None = None, what: str = "train", identity: dict | None = None,
                     compute: Compute | None = None) -> dict:
    """Cross-entropy (+ logit KD) with AdamW and a cosine schedule; returns history and val accuracy.

    Trains on `data.augmented()` (RandomResizedCrop + flip for folder data), data-parallel under
    torchrun, with AMP on a GPU; validates each epoch on `config.val_images` fixed images [all].
    identity: what else must match for a checkpoint to be resumed (the architecture, the data): a
    rerun into the same folder with another network starts afresh instead of loading wrong weights."""
    compute = compute or Compute.from_settings()
    rank, world = dist_info()
    torch.manual_seed(config.seed)
    ckpt_path = Path(ckpt_path)
    model = compute.module(model)  # on the device before the optimiser
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    train_set = data.augmented()
    steps_per_epoch = EpochBatches(len(train_set), config.batch_size, seed=0, steps=config.max_steps).steps
    total = config.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / max(total, 1))))
    objects = {"state_dict": model, "optimizer": opt, "scheduler": sched}
    scaler = compute.scaler()
    if scaler.is_enabled():  # fp16: the loss scale is state too, or a resumed run is not the same run
        objects["scaler"] = scaler
    ckpt = EpochCheckpoint(ckpt_path, identity={"config": asdict(config), **(identity or {})}, metrics_path=metrics_path,
                           key={"what": what}, writer=rank == 0)
    start_epoch, history, state = ckpt.resume(objects, enabled=resume)
    start_step, running = EpochCheckpoint.position(state)
    if teacher is not None:
        teacher = compute.module(teacher).eval()
    val_set = capped(data.val, config.val_images)
    net = compute.ddp(model)
    streamed = not data.in_memory
    # one loader per stage (persistent workers for folders), its sampler moved on each epoch
    batches = EpochBatches(len(train_set), config.batch_size, seed=0, rank=rank, world=world, steps=config.max_steps)
    loader = compute.loader(train_set, batch_sampler=batches, streamed=streamed)
    val_loader = eval_loader(val_set, compute)
    with progress_bar(show_progress and rank == 0) as bar:
        task = bar.task(what, total, completed=start_epoch * steps_per_epoch + start_step)
        for epoch in range(start_epoch, config.epochs):
            batches.set_epoch(config.seed * 1000 + epoch, start=start_step)
            model.train()
            t0 = time.time()
            seen, run_loss, run_correct = (int(running.get("seen", 0)), float(running.get("loss", 0.0)),
                                           int(running.get("correct", 0)))
            for step, (x, y) in enumerate(loader, start=start_step):
                x, y = compute.batch(x), y.to(compute.device, non_blocking=True)
                with compute.autocast():
                    logits = net(x)
                    if teacher is not None and config.kd_weight > 0:
                        with torch.no_grad():
                            t_logits = teacher(x)
                logits = logits.float()
                loss = F.cross_entropy(logits, y)
                if teacher is not None and config.kd_weight > 0:
                    T = config.kd_temperature
                    kd = F.kl_div(F.log_softmax(logits / T, 1), F.softmax(t_logits.float() / T, 1),
                                  reduction="batchmean") * T * T
                    loss = (1 - config.kd_weight) * loss + config.kd_weight * kd
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                seen += len(y)
                run_loss += loss.item() * len(y)
                run_correct += (logits.argmax(1) == y).sum().item()
                done = step + 1
                bar.advance(task, info=f"epoch {epoch + 1} loss {run_loss / seen:.3f}", images=len(y) * world)
                if compute.checkpoint_every and done % compute.checkpoint_every == 0 and done < steps_per_epoch:
                    ckpt.save(objects, epoch=epoch, history=history, step=done,
                              running={"seen": seen, "loss": run_loss, "correct": run_correct})
            start_step, running = 0, {}
            val = evaluate(model, val_set, compute=compute, loader=val_loader)
            rec = {"epoch": epoch + 1, "train_loss": run_loss / max(seen, 1), "train_accuracy": run_correct / max(seen, 1),
                   "val_accuracy": val["accuracy"], "val_loss": val["loss"], "val_images": val["n"],
                   "seconds": time.time() - t0, "images_per_s": seen * world / max(time.time() - t0, 1e-9)}
            history.append(rec)
            ckpt.save(objects, epoch=epoch + 1, history=history)
    final = evaluate(model, data.val, compute=compute)  # the reported accuracy is always on the whole split
    model.cpu()
    return {"history": history, "val_accuracy": final["accuracy"], "val_loss": final["loss"]}
