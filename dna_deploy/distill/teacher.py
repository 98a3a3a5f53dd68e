"""Teachers for DNA: a network of the space trained here, or a torchvision model from a local
checkpoint, with its feature maps tapped at the end of every student block.

Feature resolutions must match the student's block outputs; channels may differ (1x1 adapters,
see student.py). Checkpoints are loaded with weights_only=True.

Vision transformers (torchvision's vit_* family) are tapped at encoder-layer boundaries. Their
token sequences (a class token, then the patch grid row by row) are turned into the NCHW grid that
every student block gives, class token dropped, so one adapter and one loss serve both families.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dna_deploy.distill.checkpoints import (
    MODEL_FORMAT,
    TEACHER_FORMAT,
    save_space_teacher,
)
from dna_deploy.errors import DataError, suggest
from dna_deploy.io import fingerprint, load_checkpoint
from dna_deploy.space import SearchSpace

# Stage outputs of common torchvision families, in order; taps are picked among these by resolution.
FAMILY_STAGES = {
    "efficientnet": [f"features.{i}" for i in range(1, 8)],
    "mobilenet_v2": [f"features.{i}" for i in range(1, 18)],
    "mobilenet_v3": [f"features.{i}" for i in range(1, 16)],
    "resnet": ["layer1", "layer2", "layer3", "layer4"],
    "regnet": [f"trunk_output.block{i}" for i in range(1, 5)],
    "vit": [f"encoder.layers.encoder_layer_{i}" for i in range(32)],
}


def tokens_to_grid(t: torch.Tensor) -> torch.Tensor:
    """(B, N, C) tokens -> (B, C, g, g); a leading class token (N = g*g + 1) is dropped. Other
    tensors pass through."""
    if t.ndim != 3:
        return t
    n = t.shape[1]
    g = math.isqrt(n)
    if g * g != n:
        g = math.isqrt(n - 1)
        if g * g != n - 1:
            raise DataError(f"teacher tap gives {n} tokens: neither a square grid nor a class token plus one")
        t = t[:, 1:]
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], g, g)


class GridTaps(nn.Module):
    """A feature extractor whose token outputs come back as NCHW grids."""

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.extractor = extractor

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: tokens_to_grid(v) for k, v in self.extractor(x).items()}


@dataclass
class Teacher:
    model: nn.Module
    taps: list[str]
    channels: list[int]
    description: dict
    fingerprint: str
    _extractor: nn.Module | None = None

    def to(self, compute) -> "Teacher":
        """Move the teacher to a compute.Compute's device (and memory layout)."""
        self.model = compute.module(self.model)
        if self._extractor is not None:
            self._extractor = compute.module(self._extractor)
        return self

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The teacher's feature map at the end of every student block."""
        self.model.eval()
        if self._extractor is None:
            return self.model.forward_features(x)
        out = self._extractor(x)
        return [out[t] for t in self.taps]

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        return self.model(x)


def family_of(name: str) -> str | None:
    for fam in FAMILY_STAGES:
        if name.startswith(fam):
            return fam
    return None


def _check_resolutions(space: SearchSpace, taps: list[str], feats: list[torch.Tensor]) -> list[int]:
    if len(feats) != len(space.blocks):
        raise DataError(f"teacher has {len(feats)} taps ({', '.join(taps)}); space {space.name!r} has "
                        f"{len(space.blocks)} blocks: give one tap per block with --taps")
    for b, (t, f) in enumerate(zip(taps, feats)):
        want = space.resolution_at(b + 1)
        if f.shape[-1] != want or f.shape[-2] != want:
            raise DataError(f"teacher tap {t!r} gives {f.shape[-2]}x{f.shape[-1]} features but block {b} of space "
                            f"{space.name!r} ends at {want}x{want}: choose taps at the student's resolutions")
    return [int(f.shape[1]) for f in feats]


def _auto_taps(space: SearchSpace, stages: list[str], shapes: dict[str, torch.Size], *,
               isotropic: bool = False) -> list[str]:
    """For each block in order, a later stage at the block's resolution (exact channels preferred).
    An isotropic teacher (a ViT: one resolution and width throughout) is tapped at evenly spaced
    stages ending at the last: block b of B takes stage floor((b + 1) * S / B + 1/2) - 1 (vit_b_16
    for 4 blocks: 2, 5, 8, 11)."""
    n_blocks, n_stages = len(space.blocks), len(stages)
    resolutions = {shapes[st][-1] for st in stages} | {space.resolution_at(b + 1) for b in range(n_blocks)}
    if isotropic and len(resolutions) == 1 and n_stages >= n_blocks:
        return [stages[((b + 1) * n_stages + n_blocks // 2) // n_blocks - 1] for b in range(n_blocks)]
    taps, last = [], -1
    for b, blk in enumerate(space.blocks):
        want = space.resolution_at(b + 1)
        options = [i for i in range(last + 1, len(stages)) if shapes[stages[i]][-1] == want]
        if not options:
            raise DataError(f"no teacher stage after {stages[last] if last >= 0 else 'the input'} has "
                            f"{want}x{want} features for block {b}; name taps with --taps")
        exact = [i for i in options if shapes[stages[i]][1] == blk.out_channels]
        # leave room for the later blocks that need the same resolution
        same_res_later = sum(1 for bb in range(b + 1, len(space.blocks)) if space.resolution_at(bb + 1) == want)
        pick_from = exact or options
        pick = pick_from[0] if exact else options[max(0, len(options) - 1 - same_res_later)]
        taps.append(stages[pick])
        last = pick
    return taps


def torchvision_teacher(name: str, space: SearchSpace, *, weights: str | Path | None,
                        taps: list[str] | None = None) -> Teacher:
    import torchvision
    from torchvision.models.feature_extraction import (
        create_feature_extractor,
        get_graph_node_names,
    )

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise DataError(f"unknown torchvision model {name!r}; "
                        f"{suggest(name, torchvision.models.list_models(module=torchvision.models))}")
    if weights is None:
        raise DataError(f"torchvision teacher {name!r} needs --teacher-weights (a local checkpoint; nothing is downloaded)")
    state = load_checkpoint(weights, what="teacher weights")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{weights} is not a state dict of tensors")
    last_2d = [v for v in state.values() if v.ndim == 2]
    num_classes = int(last_2d[-1].shape[0]) if last_2d else 1000
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = (f"missing {missing[:2]}" if missing else "") + (f" unexpected {unexpected[:2]}" if unexpected else "") \
            + (f" shape mismatch at {wrong[:2]}" if wrong else "")
        raise DataError(f"teacher weights {weights} do not fit torchvision:{name}:{detail}")
    model.load_state_dict(state)
    model.eval()
    image_size = getattr(model, "image_size", None)  # torchvision's ViTs take exactly this size
    if image_size is not None and image_size != space.input_size:
        raise DataError(f"torchvision:{name} takes {image_size}x{image_size} images; space {space.name!r} takes "
                        f"{space.input_size}x{space.input_size}: use a space of that input size (e.g. vit-small)")
    # a tap is a traced graph node or a module's output
    nodes = list(dict.fromkeys([n for n, _ in model.named_modules() if n] + get_graph_node_names(model)[1]))
    x = torch.zeros(1, space.in_channels, space.input_size, space.input_size)
    if taps:
        bad = [t for t in taps if t not in nodes]
        if bad:
            raise DataError(f"unknown tap {bad[0]!r} in torchvision:{name}; {suggest(bad[0], nodes)}")
    else:
        fam = family_of(name)
        if fam is None:
            raise DataError(f"no default taps for torchvision:{name}; name one node per block with --taps "
                            f"(e.g. {', '.join(nodes[1:4])} ...)")
        stages = [s for s in FAMILY_STAGES[fam] if s in nodes]
        probe = GridTaps(create_feature_extractor(model, return_nodes=stages))
        with torch.no_grad():
            shapes = {k: v.shape for k, v in probe(x).items()}
        taps = _auto_taps(space, stages, shapes, isotropic=fam == "vit")
    extractor = GridTaps(create_feature_extractor(model, return_nodes=taps)).eval()
    with torch.no_grad():
        feats = [extractor(x)[t] for t in taps]
    channels = _check_resolutions(space, taps, feats)
    desc = {"kind": "torchvision", "model": name, "weights": str(weights), "taps": taps, "num_classes": num_classes}
    return Teacher(model, taps, channels, desc, fingerprint({**desc, "w": _state_hash(state)}), extractor)


def _state_hash(state: dict) -> str:
    import hashlib

    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().view(-1)[:64].numpy().tobytes())
    return h.hexdigest()[:16]


def load_teacher(spec: str, space: SearchSpace, *, weights: str | Path | None = None,
                 taps: list[str] | None = None) -> Teacher:
    """`torchvision:NAME` (+ weights) or a teacher checkpoint from `dna-deploy teacher train`."""
    if spec.startswith("torchvision:"):
        return torchvision_teacher(spec.split(":", 1)[1], space, weights=weights, taps=taps)
    ckpt = load_checkpoint(spec, what="teacher checkpoint")
    # a retrained network (`dna-deploy retrain`'s model.pt) teaches the next round too: DNA+
    if not isinstance(ckpt, dict) or ckpt.get("format") not in (TEACHER_FORMAT, MODEL_FORMAT):
        raise DataError(f"{spec} is not a dna-deploy teacher (make one with `dna-deploy teacher train`, use a "
                        "retrained model.pt, or --teacher torchvision:NAME --teacher-weights FILE)")
    from dna_deploy.nn.builder import build_network
    from dna_deploy.space import SearchSpace as _S

    missing = [k for k in ("space", "arch", "state_dict") if k not in ckpt]
    if missing:
        raise DataError(f"teacher checkpoint {spec} lacks {', '.join(repr(k) for k in missing)}; make a new one with "
                        "`dna-deploy teacher train`")
    state = ckpt["state_dict"]
    for key, ok in (("space", isinstance(ckpt["space"], dict)), ("arch", isinstance(ckpt["arch"], str)),
                    ("state_dict", isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()))):
        if not ok:  # a forged or broken file: one line, never a TypeError
            raise DataError(f"teacher checkpoint {spec} has no valid {key!r}; make a new one with `dna-deploy teacher train`")
    t_space = _S.from_dict(ckpt["space"], source=str(spec))
    if (t_space.input_size, t_space.in_channels) != (space.input_size, space.in_channels):
        # its features would still fit after the strides, but distilling from a network that never saw
        # images of this size teaches noise (losses of 1e6 and more)
        raise DataError(f"teacher {spec} was trained on {t_space.input_size}x{t_space.input_size}x{t_space.in_channels} "
                        f"images; space {space.name!r} takes {space.input_size}x{space.input_size}x{space.in_channels}. "
                        "Train a teacher at this resolution (dna-deploy teacher train --space ...)")
    model = build_network(t_space, ckpt["arch"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise DataError(f"teacher checkpoint {spec} does not fit its architecture: {str(e).splitlines()[0]}") from None
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(torch.zeros(1, space.in_channels, space.input_size, space.input_size))
    taps = [f"blocks.{i}" for i in range(len(feats))]
    channels = _check_resolutions(space, taps, feats)
    desc = {"kind": "space", "space": t_space.name, "arch": ckpt["arch"], "checkpoint": str(spec),
            "metrics": ckpt.get("metrics", {})}
    return Teacher(model, taps, channels, desc, fingerprint({"arch": ckpt["arch"], "space": t_space.fingerprint,
                                                             "w": _state_hash(ckpt["state_dict"])}))


def train_space_teacher(space: SearchSpace, data, out: str | Path, *, arch=None, config=None, resume: bool = True,
                        show_progress: bool = True, compute=None) -> dict:
    """Train a network of the space (default: its largest) on the data and save it as a teacher."""
    from dna_deploy.distill.supervised import train_classifier
    from dna_deploy.nn.builder import build_network
    from dna_deploy.settings import ClassifierConfig

    arch = space.parse_arch(arch) if isinstance(arch, str) else (arch or space.largest_arch())
    if data.num_classes != space.num_classes:
        import dataclasses

        space = dataclasses.replace(space, num_classes=data.num_classes)
    config = config or ClassifierConfig()
    torch.manual_seed(config.seed)  # initial weights depend on the seed only
    model = build_network(space, arch)
    out = Path(out)
    result = train_classifier(model, data, out.with_suffix(".train.pt"), config=config,
                              resume=resume, show_progress=show_progress, what="teacher",
                              identity={"arch": str(arch), "data_fingerprint": data.fingerprint}, compute=compute)
    metrics = {"val_accuracy": result["val_accuracy"], "epochs": len(result["history"])}
    save_space_teacher(out, space, arch, model, metrics, data.fingerprint)
    out.with_suffix(".train.pt").unlink(missing_ok=True)
    return {"teacher": str(out), "arch": str(arch), **metrics, "history": result["history"]}
