"""Retrain the searched architecture stand-alone, and the model checkpoint export reads.

A model checkpoint holds everything a deployment needs besides the weights: the space definition,
the architecture string, input shape and normalisation, and the data it was trained on.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dna_deploy.classify import ClassifierConfig, evaluate, train_classifier
from dna_deploy.data import DataSplits
from dna_deploy.errors import DataError
from dna_deploy.io import load_checkpoint, save_checkpoint
from dna_deploy.space import Arch, SearchSpace

MODEL_FORMAT = "dna-deploy-model/1"


def save_model(path: str | Path, space: SearchSpace, arch: Arch, model, *, data: DataSplits | None, metrics: dict,
               data_spec: str = "mnist") -> Path:
    return save_checkpoint(path, {
        "format": MODEL_FORMAT, "space": space.to_dict(), "arch": str(arch), "state_dict": model.state_dict(),
        "input": {"shape": [1, space.in_channels, space.input_size, space.input_size], "layout": "NCHW",
                  "mean": list(data.mean) if data else None, "std": list(data.std) if data else None},
        "num_classes": space.num_classes, "metrics": metrics, "data": data_spec,
        "data_fingerprint": data.fingerprint if data else None})


def load_model(path: str | Path, *, arch: str | None = None):
    """(space, arch, network in eval mode, checkpoint dict). `arch`, when given, must match."""
    from dna_deploy.nn.builder import build_network

    ckpt = load_checkpoint(path, what="model weights")
    if not isinstance(ckpt, dict) or ckpt.get("format") != MODEL_FORMAT:
        raise DataError(f"{path} is not a dna-deploy model (make one with `dna-deploy retrain`)")
    space = SearchSpace.from_dict(ckpt["space"], source=str(path))
    if arch is not None and str(space.parse_arch(arch)) != ckpt["arch"]:
        raise DataError(f"weights {path} are for architecture {ckpt['arch']!r}, not {arch!r}")
    a = space.parse_arch(ckpt["arch"])
    net = build_network(space, a)
    try:
        net.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise DataError(f"weights {path} do not fit architecture {a}: {str(e).splitlines()[0][:300]}") from None
    return space, a, net.eval(), ckpt


def init_from_supernet(space: SearchSpace, arch: Arch, supernet_dir: str | Path):
    """The network with its blocks' weights copied from the distilled block supernets (where the
    shapes are the space's own: adapters are not part of the network). The head starts fresh."""
    from dna_deploy.nn.supernet import extract_network
    from dna_deploy.train import block_checkpoint_path

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
            data_spec: str = "mnist") -> dict:
    if data.num_classes != space.num_classes:
        space = dataclasses.replace(space, num_classes=data.num_classes)
    from dna_deploy.nn.builder import build_network

    import torch

    torch.manual_seed(config.seed)  # initial weights depend on the seed only
    net = init_from_supernet(space, arch, supernet_dir) if supernet_dir else build_network(space, arch)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_model = teacher.model if teacher is not None else None
    r = train_classifier(net, data, out / "retrain.ckpt.pt", config=config, teacher=t_model, resume=resume,
                         show_progress=show_progress, metrics_path=out / "retrain_metrics.jsonl", what="retrain")
    metrics = {"val_accuracy": r["val_accuracy"], "val_loss": r["val_loss"], "epochs": config.epochs,
               "kd_weight": config.kd_weight if teacher is not None else 0.0, "init": "supernet" if supernet_dir else "random"}
    if teacher is not None:
        metrics["teacher_val_accuracy"] = evaluate(teacher.model, data.val)["accuracy"]
    save_model(out / "model.pt", space, arch, net, data=data, metrics=metrics, data_spec=data_spec)
    return {"model": str(out / "model.pt"), "arch": str(arch), **metrics, "history": r["history"]}
