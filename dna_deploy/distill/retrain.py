"""Retrain the searched architecture stand-alone (cross-entropy + optional logit KD), starting
from the distilled block supernets' weights; writes the model checkpoint export reads
(format in checkpoints.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dna_deploy.data import DataSplits
from dna_deploy.distill.checkpoints import block_checkpoint_path, check_supernet_data, save_model
from dna_deploy.distill.supervised import evaluate, train_classifier
from dna_deploy.errors import DataError
from dna_deploy.io import load_checkpoint
from dna_deploy.settings import ClassifierConfig
from dna_deploy.space import Arch, SearchSpace


def _supernet_hashes(space: SearchSpace, supernet_dir) -> list | None:
    """The block checkpoints retraining starts from: a retrained supernet means a fresh retrain."""
    if supernet_dir is None:
        return None
    from dna_deploy.io import sha256_file

    paths = [block_checkpoint_path(Path(supernet_dir), b) for b in range(len(space.blocks))]
    return [sha256_file(p)[:16] if p.is_file() else None for p in paths]


def init_from_supernet(space: SearchSpace, arch: Arch, supernet_dir: str | Path):
    """The network with its blocks' weights copied from the distilled block supernets (where the
    shapes are the space's own: adapters are not part of the network). The head starts fresh."""
    from dna_deploy.nn.supernet import extract_network

    states = []
    for b in range(len(space.blocks)):
        p = block_checkpoint_path(Path(supernet_dir), b)
        if not p.is_file():
            states.append(None)
            continue
        st = load_checkpoint(p, what=f"block {b} checkpoint")["student"]
        states.append({k[len("supernet."):]: v for k, v in st.items() if k.startswith("supernet.")})
    return extract_network(space, arch, states)


def retrain(space: SearchSpace, arch: Arch, data: DataSplits, out: str | Path, *, config: ClassifierConfig = ClassifierConfig(),
            teacher=None, supernet_dir: str | Path | None = None, resume: bool = True, show_progress: bool = True,
            data_spec: str = "mnist", compute=None) -> dict:
    if data.num_classes != space.num_classes:
        space = dataclasses.replace(space, num_classes=data.num_classes)
    if supernet_dir is not None:
        check_supernet_data(supernet_dir, data, what="retrain")
    if teacher is not None and config.kd_weight > 0:
        import torch

        probe = torch.zeros(1, space.in_channels, space.input_size, space.input_size,
                            device=next(teacher.model.parameters()).device)
        with torch.no_grad():
            t_classes = teacher.model.eval()(probe).shape[1]
        if t_classes != data.num_classes:
            raise DataError(f"the teacher predicts {t_classes} classes and the data has {data.num_classes}: logit "
                            "distillation needs the same classes. Retrain without it (--kd-weight 0, or no --teacher)")
    import torch

    from dna_deploy.nn.builder import build_network

    torch.manual_seed(config.seed)  # initial weights depend on the seed only
    net = init_from_supernet(space, arch, supernet_dir) if supernet_dir else build_network(space, arch)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_model = teacher.model if teacher is not None else None
    r = train_classifier(net, data, out / "retrain.ckpt.pt", config=config, teacher=t_model, resume=resume,
                         show_progress=show_progress, metrics_path=out / "retrain_metrics.jsonl", what="retrain",
                         identity={"arch": str(arch), "data_fingerprint": data.fingerprint,
                                   "init": "supernet" if supernet_dir else "random",
                                   "supernet_sha256": _supernet_hashes(space, supernet_dir),
                                   "teacher_fingerprint": teacher.fingerprint if teacher is not None else None},
                         compute=compute)
    metrics = {"val_accuracy": r["val_accuracy"], "val_loss": r["val_loss"], "epochs": config.epochs,
               "kd_weight": config.kd_weight if teacher is not None else 0.0, "init": "supernet" if supernet_dir else "random"}
    if teacher is not None:
        metrics["teacher_val_accuracy"] = evaluate(teacher.model, data.val, compute=compute)["accuracy"]
    save_model(out / "model.pt", space, arch, net, data=data, metrics=metrics, data_spec=data_spec)
    return {"model": str(out / "model.pt"), "arch": str(arch), **metrics, "history": r["history"]}
