"""The files training writes and later stages read: formats, paths, and the model checkpoint.

Kept apart from the trainers so that reading a checkpoint (rate, retrain, export, a teacher made
from a retrained network for DNA+) never imports a training loop. Every load is weights_only.
"""

from __future__ import annotations

from pathlib import Path

from dna_deploy.errors import DataError
from dna_deploy.io import load_checkpoint, save_checkpoint
from dna_deploy.space import Arch, SearchSpace

TEACHER_FORMAT = "dna-deploy-teacher/1"
MODEL_FORMAT = "dna-deploy-model/1"


def block_checkpoint_path(out_dir: str | Path, block: int) -> Path:
    """Where `train` writes block `block`'s student (supernet + adapters + optimiser state)."""
    return Path(out_dir) / f"block{block}.pt"


def save_space_teacher(path: str | Path, space: SearchSpace, arch, model, metrics: dict, data_fp: str) -> Path:
    return save_checkpoint(path, {"format": TEACHER_FORMAT, "kind": "space", "space": space.to_dict(),
                                  "arch": str(arch), "state_dict": model.state_dict(), "metrics": metrics,
                                  "data_fingerprint": data_fp})


def save_model(path: str | Path, space: SearchSpace, arch: Arch, model, *, data, metrics: dict,
               data_spec: str = "mnist") -> Path:
    """Everything a deployment needs besides the weights: space, architecture string, input shape
    and normalisation, and the data it was trained on."""
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
    _check_model(ckpt, path)
    space = SearchSpace.from_dict(ckpt["space"], source=str(path))
    if ckpt["num_classes"] != space.num_classes or ckpt["input"]["shape"][1:] != [space.in_channels, space.input_size,
                                                                                 space.input_size]:
        raise DataError(f"model {path}: its input shape {ckpt['input']['shape']} or num_classes {ckpt['num_classes']} "
                        f"differs from its space's; make it again with `dna-deploy retrain`")
    if arch is not None and str(space.parse_arch(arch)) != ckpt["arch"]:
        raise DataError(f"weights {path} are for architecture {ckpt['arch']!r}, not {arch!r}")
    a = space.parse_arch(ckpt["arch"])
    net = build_network(space, a)
    try:
        net.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise DataError(f"weights {path} do not fit architecture {a}: {str(e).splitlines()[0][:300]}") from None
    return space, a, net.eval(), ckpt


def _check_model(ckpt: dict, path) -> None:
    """A model checkpoint read as a file a user could have edited: each key export and verify use,
    of the right type, so a forged one is one line and never a KeyError or TypeError."""
    import torch

    shape = (ckpt.get("input") or {}).get("shape") if isinstance(ckpt.get("input"), dict) else None
    state = ckpt.get("state_dict")
    checks = [("space", isinstance(ckpt.get("space"), dict)), ("arch", isinstance(ckpt.get("arch"), str)),
              ("state_dict", isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                             for k, v in state.items())),
              ("num_classes", isinstance(ckpt.get("num_classes"), int) and not isinstance(ckpt["num_classes"], bool)),
              ("input", isinstance(shape, list) and len(shape) == 4
               and all(isinstance(n, int) and not isinstance(n, bool) for n in shape)
               and all(isinstance(ckpt["input"].get(k), (list, type(None))) for k in ("mean", "std")))]
    for key, ok in checks:
        if not ok:
            raise DataError(f"model {path} lacks a valid {key!r}; make it again with `dna-deploy retrain`")


def check_supernet_data(supernet_dir: str | Path, data, *, what: str) -> None:
    """Rate and retrain use the data the supernet was distilled on (same split): otherwise the rate
    split or the validation split may hold images the supernet trained on."""
    from dna_deploy.io import read_json

    meta_path = Path(supernet_dir) / "supernet.json"
    if not meta_path.is_file():
        return  # a folder of block checkpoints without metadata: their own checks still apply
    recorded = (read_json(meta_path, what="supernet metadata").get("data") or {})
    if recorded.get("fingerprint") not in (None, data.fingerprint):
        raise DataError(f"{what}: the supernet in {supernet_dir} was distilled on data {recorded.get('data')!r} "
                        f"(split {recorded.get('fingerprint')}), not on {data.name!r} (split {data.fingerprint}); "
                        f"pass --data {recorded.get('data')}")
