"""`dna-deploy devices ...`: the device specs latency tables are measured under."""

from __future__ import annotations

import typer

from dna_deploy.cli.common import FormatOpt, OutputFormat, render

app = typer.Typer(help="Device specs (runtime, precision, threads, batch) in devices/.", no_args_is_help=True)


@app.command("list")
def list_(fmt: OutputFormat = FormatOpt) -> None:
    """Every shipped device spec, and whether its runtime is usable on this machine.

    Example: dna-deploy devices list
    """
    from rich.markup import escape

    from dna_deploy.latency.devices import list_devices
    from dna_deploy.runtimes import runner_class

    rows = []
    for d in list_devices():
        reason = runner_class(d.runtime).unavailable_reason(d.device) or ""
        # a rich table reads "[tensorrt]" in "pip install 'dna-deploy[tensorrt]'" as markup: escape it there
        rows.append({**d.to_dict(), "usable here": not reason, "why not": escape(reason) if fmt == "table" else reason})
    render(rows, fmt=fmt, columns=["name", "runtime", "device", "precision", "threads", "batch", "usable here", "why not"])
