"""Supervised training and evaluation of a classifier: the teacher (`teacher train`) and the
searched network (`retrain`, with optional logit distillation from the teacher). Checkpoints every
epoch (atomic) and resumes."""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from dna_deploy.data import DataSplits
from dna_deploy.distill.loop import EpochCheckpoint
from dna_deploy.progress import progress_bar
from dna_deploy.settings import ClassifierConfig


@torch.no_grad()
def evaluate(model: nn.Module, dataset, *, batch_size: int = 256) -> dict:
    model.eval()
    correct = total = 0
    loss = 0.0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        total += len(y)
    return {"accuracy": correct / max(total, 1), "loss": loss / max(total, 1), "n": total}


def train_classifier(model: nn.Module, data: DataSplits, ckpt_path: str | Path, *, config: ClassifierConfig = ClassifierConfig(),
                     teacher: nn.Module | None = None, resume: bool = True, show_progress: bool = True,
                     metrics_path: str | Path | None = None, what: str = "train", identity: dict | None = None) -> dict:
    """Cross-entropy (+ logit KD) with AdamW and a cosine schedule; returns history and val accuracy.

    identity: what else must match for a checkpoint to be resumed (the architecture, the data): a
    rerun into the same folder with another network starts afresh instead of loading wrong weights."""
    torch.manual_seed(config.seed)
    ckpt_path = Path(ckpt_path)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
    if config.max_steps:
        steps_per_epoch = min(steps_per_epoch, config.max_steps)
    total = config.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / max(total, 1))))
    objects = {"state_dict": model, "optimizer": opt, "scheduler": sched}
    ckpt = EpochCheckpoint(ckpt_path, identity={"config": asdict(config), **(identity or {})}, metrics_path=metrics_path, key={"what": what})
    start_epoch, history, _ = ckpt.resume(objects, enabled=resume)
    if teacher is not None:
        teacher.eval()
    gen = torch.Generator().manual_seed(config.seed)
    with progress_bar(show_progress) as bar:
        task = bar.task(what, total)
        bar.advance(task, start_epoch * steps_per_epoch)
        for epoch in range(start_epoch, config.epochs):
            gen.manual_seed(config.seed * 1000 + epoch)
            loader = DataLoader(data.train, batch_size=config.batch_size, shuffle=True, generator=gen, drop_last=False)
            model.train()
            t0, seen, run_loss, run_correct = time.time(), 0, 0.0, 0
            for step, (x, y) in enumerate(loader):
                if step >= steps_per_epoch:
                    break
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                if teacher is not None and config.kd_weight > 0:
                    with torch.no_grad():
                        t_logits = teacher(x)
                    T = config.kd_temperature
                    kd = F.kl_div(F.log_softmax(logits / T, 1), F.softmax(t_logits / T, 1), reduction="batchmean") * T * T
                    loss = (1 - config.kd_weight) * loss + config.kd_weight * kd
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                seen += len(y)
                run_loss += loss.item() * len(y)
                run_correct += (logits.argmax(1) == y).sum().item()
                bar.advance(task, info=f"epoch {epoch + 1} loss {run_loss / seen:.3f}")
            val = evaluate(model, data.val)
            rec = {"epoch": epoch + 1, "train_loss": run_loss / max(seen, 1), "train_accuracy": run_correct / max(seen, 1),
                   "val_accuracy": val["accuracy"], "val_loss": val["loss"], "seconds": time.time() - t0,
                   "images_per_s": seen / max(time.time() - t0, 1e-9)}
            history.append(rec)
            ckpt.save(objects, epoch=epoch + 1, history=history)
    final = evaluate(model, data.val)
    return {"history": history, "val_accuracy": final["accuracy"], "val_loss": final["loss"]}
