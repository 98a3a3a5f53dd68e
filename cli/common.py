"""Shared CLI pieces: option definitions, the one output helper, the error boundary."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from dna_deploy.display import format_value
from dna_deploy.settings import ComputeSettings

# Piped or captured output is not cut at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

class OutputFormat(str, Enum):
    table = "table"
    json = "json"


SpaceOpt = typer.Option(None, "--space", "-s", help="Preset (dna-mbconv, tiny, vit-tiny, vit-small) or a space file (.yaml/.json/.toml) "
                                                    "[the space the input artifact records; else dna-mbconv].")
FormatOpt = typer.Option(OutputFormat.table, "--format", "-f", help="table (for people) or json (for scripts).")
DEFAULT_SPACE = "dna-mbconv"

_C = ComputeSettings()
DeviceOpt = typer.Option(_C.device, "--device", help="auto (this rank's GPU, else the CPU), cpu, cuda or cuda:N.")
AmpOpt = typer.Option(_C.amp, "--amp/--no-amp", help="bf16 (or fp16 + loss scaling) autocast on CUDA; the CPU runs fp32.")
WorkersOpt = typer.Option(_C.workers, "--workers", min=0, help="Data-loader processes per rank for folder data [cores - 1, at most 8].")
CheckpointEveryOpt = typer.Option(_C.checkpoint_every, "--checkpoint-every", min=1,
                                  help="Also checkpoint every N steps inside an epoch (resume continues there).")


TimeoutOpt = typer.Option(_C.timeout_min, "--timeout-min", min=0.1,
                          help="Under torchrun: minutes a rank waits for the others in a collective before the job ends.")
SyncBnOpt = typer.Option(_C.sync_bn, "--sync-bn/--no-sync-bn",
                         help="Under torchrun on GPUs: BatchNorm statistics over the global batch.")


def make_compute(device: str, amp: bool, workers: int | None, checkpoint_every: int | None = None, *,
                 timeout_min: float = _C.timeout_min, sync_bn: bool = False):
    """The resolved device etc. (dna_deploy/compute.py); under torchrun, also joins the process
    group, with NCCL when this rank has a GPU, and says once which precision it trains in."""
    from dna_deploy.compute import Compute
    from dna_deploy.distributed import dist_info, init_distributed_from_env

    compute = Compute.from_settings(ComputeSettings(device=device, amp=amp, workers=workers,
                                                    checkpoint_every=checkpoint_every, timeout_min=timeout_min,
                                                    sync_bn=sync_bn))
    init_distributed_from_env(compute.device, timeout_min=timeout_min)
    if compute.is_cuda and dist_info()[0] == 0:
        d = compute.describe()
        typer.echo(f"compute: {d['gpu']} (capability {d['capability']}), {d['amp']} autocast"
                   + (" with loss scaling" if d["amp"] == "float16" else ""), err=True)
    return compute


def data_spec_for(data: str | None, supernet: Path | None) -> str:
    """--data, or the data the supernet folder records it was trained on: rating or retraining a
    folder-trained supernet on MNIST is never silent. MNIST when neither says."""
    from dna_deploy.io import read_json

    if data is not None:
        return data
    meta = Path(supernet) / "supernet.json" if supernet is not None else None
    if meta is not None and meta.is_file():
        recorded = (read_json(meta, what="supernet metadata").get("data") or {}).get("data")
        if isinstance(recorded, str):
            return recorded
    return "mnist"


def recorded_space(path: Path | None):
    """The search space an artifact records (latency table, rating table, supernet folder, teacher
    or model checkpoint), or None when it records none we can rebuild."""
    from dna_deploy.errors import DnaDeployError
    from dna_deploy.io import load_checkpoint, read_json
    from dna_deploy.space import PRESETS, SearchSpace, load_space

    if path is None or not Path(path).exists():
        return None
    path = Path(path)
    try:
        if path.is_dir():
            path = path / "supernet.json"
            if not path.is_file():
                return None
        if path.suffix == ".json":
            d = read_json(path, what="artifact")
            if not isinstance(d, dict):
                return None
            rec = d.get("meta", d) if isinstance(d.get("meta"), dict) else d
            definition = rec.get("space_definition") or (rec.get("space") if isinstance(rec.get("space"), dict) else None)
            if definition:
                return SearchSpace.from_dict(definition, source=str(path))
            name = rec.get("space")
            if isinstance(name, str) and name in PRESETS:
                sp = load_space(name)
                fp = rec.get("space_fingerprint")
                return sp if fp in (None, sp.fingerprint) else None
            return None
        if path.suffix in (".pt", ".pth"):
            ckpt = load_checkpoint(path, what="checkpoint")
            return SearchSpace.from_dict(ckpt["space"], source=str(path)) if isinstance(ckpt.get("space"), dict) else None
    except DnaDeployError:
        return None
    return None


def resolve_space(space: str | None, *artifacts):
    """--space when given; else the space the first artifact records; else dna-mbconv."""
    from dna_deploy.space import load_space

    if space is not None:
        return load_space(space)
    for a in artifacts:
        sp = recorded_space(a)
        if sp is not None:
            return sp
    return load_space(DEFAULT_SPACE)


def check_output(path: Path, *, kind: str, inputs=(), replaces: bool = False, allow_shipped: bool = False,
                 what: str = "output") -> Path:
    """The one rule for outputs (dna_deploy/outputs.py): never shipped, never an input, never an
    existing file or folder dna-deploy did not make; checked before anything is written."""
    from dna_deploy.outputs import check_output as rule

    return rule(path, kind=kind, inputs=inputs, replaces=replaces, allow_shipped=allow_shipped, what=what)


def output_lock(path: Path, *, what: str):
    """The output's lock (`<path>.lock`), held by rank 0 only under torchrun (the other ranks write
    nothing there but their share of the checkpoints rank 0 gathers)."""
    import contextlib

    from dna_deploy.distributed import dist_info
    from dna_deploy.io import exclusive_lock

    return exclusive_lock(path, what=what) if dist_info()[0] == 0 else contextlib.nullcontext()


def render(data: Any, *, fmt: str = "table", title: str | None = None, columns: list[str] | None = None) -> None:
    """Print rows (list of dicts) or a mapping as a rich table, or anything as JSON."""
    if fmt == "json":
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    if fmt != "table":
        raise typer.BadParameter(f"--format {fmt!r}: use 'table' or 'json'")
    if isinstance(data, dict):
        table = Table(title=title, show_header=False)
        table.add_column("", style="bold")
        table.add_column("")
        for k, v in data.items():
            table.add_row(str(k), format_value(v))
    else:
        rows = list(data)
        columns = columns or (list(rows[0]) if rows else [])
        table = Table(title=title)
        for c in columns:
            table.add_column(c, justify="right" if rows and isinstance(rows[0].get(c), (int, float)) else "left")
        for r in rows:
            table.add_row(*[format_value(r.get(c)) for c in columns])
    console.print(table)


def parse_blocks(blocks: str | None) -> list[int] | None:
    """'0,2,3' -> [0, 2, 3]; None -> None (all blocks)."""
    from dna_deploy.errors import DataError

    if not blocks:
        return None
    try:
        return [int(b) for b in blocks.split(",")]
    except ValueError:
        raise DataError(f"--blocks {blocks!r}: give block numbers separated by commas, e.g. --blocks 0,2") from None
