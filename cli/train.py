"""`dna-deploy teacher train` and `dna-deploy train`: the teacher and DNA block-wise distillation."""

from __future__ import annotations

from pathlib import Path

import typer

from dna_deploy.cli.common import (
    AmpOpt,
    CheckpointEveryOpt,
    DeviceOpt,
    FormatOpt,
    OutputFormat,
    SpaceOpt,
    SyncBnOpt,
    TimeoutOpt,
    WorkersOpt,
    check_output,
    make_compute,
    output_lock,
    parse_blocks,
    render,
    resolve_space,
)
from dna_deploy.settings import DistillConfig, TeacherTrainSettings

T, D = TeacherTrainSettings(), DistillConfig()  # the defaults, shared with the pipeline

teacher_app = typer.Typer(help="Teachers for block-wise distillation.", no_args_is_help=True)

DataOpt = typer.Option("mnist", "--data", help="'mnist' (embedded 5,000 images), 'fashion-mnist' (60k + 10k, IDX files "
                       "from Debian's dataset-fashion-mnist) or a folder with train/ and val/.")


@teacher_app.command("train")
def teacher_train(space: str = SpaceOpt, data: str = DataOpt,
                  output: Path = typer.Option(..., "--output", "-o", help="Teacher checkpoint to write (.pt)."),
                  arch: str = typer.Option(T.arch, help="Architecture of the space to train [its largest]."),
                  epochs: int = typer.Option(T.epochs, min=1), batch_size: int = typer.Option(T.batch_size, min=1),
                  lr: float = typer.Option(T.lr), seed: int = typer.Option(0),
                  max_steps: int = typer.Option(T.max_steps, min=1, help="Cap steps per epoch (smoke runs)."),
                  val_images: int = typer.Option(T.val_images, min=1, help="Validate each epoch on this many fixed images [all]."),
                  device: str = DeviceOpt, amp: bool = AmpOpt, workers: int = WorkersOpt,
                  checkpoint_every: int = CheckpointEveryOpt, timeout_min: float = TimeoutOpt, sync_bn: bool = SyncBnOpt,
                  resume: bool = typer.Option(True, "--resume/--restart"), fmt: OutputFormat = FormatOpt) -> None:
    """Train a teacher on the data: a network of the space (default: the largest).

    Example: dna-deploy teacher train --space tiny --data mnist -o runs/teacher.pt --epochs 3
    """
    from dna_deploy.data import load_data
    from dna_deploy.distill.teacher import train_space_teacher

    sp = resolve_space(space)
    check_output(output, kind="checkpoint", inputs=[data, space], what="teacher checkpoint")
    compute = make_compute(device, amp, workers, checkpoint_every, timeout_min=timeout_min, sync_bn=sync_bn)
    d = load_data(data, sp.input_size)
    settings = TeacherTrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, max_steps=max_steps, arch=arch,
                                    val_images=val_images)
    with output_lock(output, what="teacher train"):
        r = train_space_teacher(sp, d, output, arch=arch, resume=resume, show_progress=fmt == "table",
                                config=settings.classifier(seed), compute=compute)
    render({k: v for k, v in r.items() if k != "history"}, fmt=fmt, title="teacher")


def train(space: str = SpaceOpt, data: str = DataOpt,
          method: str = typer.Option(D.method, help="dna (distil from --teacher) or dna++ (teacher-free, self-supervised)."),
          teacher: str = typer.Option(None, "--teacher", help="Teacher checkpoint (.pt) or torchvision:NAME (DNA)."),
          teacher_weights: Path = typer.Option(None, help="Local weights for a torchvision teacher (weights_only)."),
          taps: str = typer.Option(None, help="Comma-separated teacher node names, one per block [family defaults]."),
          output: Path = typer.Option(..., "--output", "-o", help="Folder for block checkpoints and metrics."),
          blocks: str = typer.Option(None, help="Comma-separated blocks to train [all]."),
          epochs: int = typer.Option(D.epochs, min=1), batch_size: int = typer.Option(D.batch_size, min=1),
          lr_edge: float = typer.Option(D.lr_edge, help="LR of the first and last block."),
          lr_inner: float = typer.Option(D.lr_inner, help="LR of the other blocks."),
          lr_decay: float = typer.Option(D.lr_decay, help="LR factor per epoch."),
          weight_decay: float = typer.Option(D.weight_decay),
          loss: str = typer.Option(D.loss, help="mse-channel (per-channel normalised MSE) or mse."),
          fairness: bool = typer.Option(D.fairness, help="Strict fairness path sampling instead of uniform."),
          feature_cache: str = typer.Option(D.feature_cache, help="Teacher features (DNA): auto (in RAM for embedded data, "
                                            "teacher on the fly for folders), none (on the fly) or disk (fp16 memory-mapped, "
                                            "per block, built by all ranks)."),
          feature_cache_gb: float = typer.Option(D.feature_cache_gb, help="Refuse a disk feature cache larger than this."),
          seed: int = typer.Option(0), max_steps: int = typer.Option(D.max_steps, min=1, help="Cap steps per epoch (smoke runs)."),
          ema: float = typer.Option(D.ema, help="DNA++: momentum of the EMA target."),
          ensemble_paths: int = typer.Option(D.ensemble_paths, min=1, help="DNA++: paths averaged into the target's population centre."),
          variance_weight: float = typer.Option(D.variance_weight, min=0.0, help="DNA++: weight of the anti-collapse variance term."),
          augment: str = typer.Option(D.augment, help="DNA++ views: auto, digits or natural."),
          device: str = DeviceOpt, amp: bool = AmpOpt, workers: int = WorkersOpt, checkpoint_every: int = CheckpointEveryOpt,
          timeout_min: float = TimeoutOpt, sync_bn: bool = SyncBnOpt,
          resume: bool = typer.Option(True, "--resume/--restart"), fmt: OutputFormat = FormatOpt) -> None:
    """Train every block supernet, one random path per step: DNA distils the teacher's features;
    DNA++ (--method dna++) needs no teacher and bootstraps from its own momentum target.

    Example: dna-deploy train --space tiny --teacher runs/teacher.pt -o runs/supernet --epochs 5
    Teacher-free: dna-deploy train --method dna++ --space tiny -o runs/supernet-ssl
    Data-parallel: torchrun --nproc-per-node 8 -m dna_deploy train ... (one GPU per rank, NCCL)
    """
    from dna_deploy.data import load_data
    from dna_deploy.distill.blockwise import check_method_teacher, train_supernet
    from dna_deploy.distill.teacher import load_teacher
    from dna_deploy.distributed import dist_info

    cfg = DistillConfig(method=method, epochs=epochs, batch_size=batch_size, lr_edge=lr_edge, lr_inner=lr_inner,
                        lr_decay=lr_decay, weight_decay=weight_decay, loss=loss, fairness=fairness, seed=seed,
                        max_steps=max_steps, ema=ema, ensemble_paths=ensemble_paths, variance_weight=variance_weight,
                        augment=augment, feature_cache=feature_cache, feature_cache_gb=feature_cache_gb)
    check_method_teacher(method, teacher is not None)
    compute = make_compute(device, amp, workers, checkpoint_every, timeout_min=timeout_min, sync_bn=sync_bn)
    sp = resolve_space(space, teacher if teacher and not teacher.startswith("torchvision:") else None)
    block_list = parse_blocks(blocks)
    check_output(output, kind="supernet", inputs=[teacher, teacher_weights, data, space], what="train folder")
    d = load_data(data, sp.input_size)
    t = load_teacher(teacher, sp, weights=teacher_weights, taps=taps.split(",") if taps else None) if teacher else None
    with output_lock(output, what="train"):
        res = train_supernet(sp, d, t, output, config=cfg, blocks=block_list, resume=resume, compute=compute,
                             show_progress=fmt == "table")
    if dist_info()[0] != 0:
        return
    rows = [{"block": b, "epochs": len(r["history"]), "first_loss": r["history"][0]["loss"] if r["history"] else None,
             "last_loss": r["history"][-1]["loss"] if r["history"] else None, "checkpoint": r["checkpoint"]}
            for b, r in res.items()]
    render(rows, fmt=fmt, title=f"{'DNA++ self-supervised' if method == 'dna++' else 'DNA'} block-wise training ({sp.name})")
