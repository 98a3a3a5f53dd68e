"""`dna-deploy space ...`: inspect a search space and its architectures."""

from __future__ import annotations

import random

import typer

from dna_deploy.cli.common import FormatOpt, OutputFormat, SpaceOpt, render, resolve_space

app = typer.Typer(help="Inspect search spaces: blocks, choices, exact counts, per-layer costs.", no_args_is_help=True)


@app.command("show")
def show(space: str = SpaceOpt, fmt: OutputFormat = FormatOpt) -> None:
    """Blocks, choices, candidates per block and the exact number of architectures.

    Example: dna-deploy space show --space dna-mbconv
    """
    sp = resolve_space(space)
    rows = []
    for i, b in enumerate(sp.blocks):
        rows.append({"block": i, "out_channels": b.out_channels, "stride": b.stride, "layers": b.layers,
                     "input": f"{sp.resolution_at(i)}x{sp.resolution_at(i)}x{sp.channels_in(i)}",
                     "choices": ",".join(b.choices), "skip": b.allow_skip,
                     "candidates": sp.block_candidate_count(i)})
    summary = {
        "space": sp.name, "family": sp.family, "fingerprint": sp.fingerprint, "input": f"{sp.input_size}x{sp.input_size}x{sp.in_channels}",
        "classes": sp.num_classes,
        "candidates rated (all blocks)": sum(r["candidates"] for r in rows),
        "architectures (distinct networks)": sp.count_architectures(),
        "encodings (skip placements counted apart)": sp.count_architectures(distinct=False),
    }
    if fmt == "json":
        render({**summary, "blocks": rows, "definition": sp.to_dict()}, fmt="json")
        return
    render(rows, title=f"space {sp.name}: {sp.description}")
    render(summary)


@app.command("sample")
def sample(space: str = SpaceOpt, n: int = typer.Option(5, "-n", min=1, help="How many architectures."),
           seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same architectures)."),
           fmt: OutputFormat = FormatOpt) -> None:
    """Valid random architecture strings (one uniform choice per layer, skips canonicalised).

    Example: dna-deploy space sample --space tiny -n 3 --seed 1
    """
    sp = resolve_space(space)
    rng = random.Random(seed)
    archs = [str(sp.sample(rng)) for _ in range(n)]
    if fmt == "json":
        render(archs, fmt="json")
        return
    for a in archs:
        typer.echo(a)


@app.command("describe")
def describe(arch: str = typer.Argument(..., help="Architecture string, e.g. 'k3e6.k5e3|...'."),
             space: str = SpaceOpt, fmt: OutputFormat = FormatOpt) -> None:
    """Per-layer table with shapes, MACs and parameters, and the totals.

    Example: dna-deploy space describe 'k3e3.skip|k3e3.skip.skip|k3e3.skip.skip|k3e3.skip' --space tiny
    """
    from dna_deploy.nn.builder import describe_rows

    sp = resolve_space(space)
    a = sp.parse_arch(arch)
    rows = describe_rows(sp, a)
    totals = {"arch": str(a), "macs": sum(r["macs"] for r in rows), "params": sum(r["params"] for r in rows)}
    if fmt == "json":
        render({"layers": rows, **totals}, fmt="json")
        return
    render(rows, title=f"{sp.name}: {a}")
    render({"MACs (M)": totals["macs"] / 1e6, "params (M)": totals["params"] / 1e6})
