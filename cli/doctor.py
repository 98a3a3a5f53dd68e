"""`dna-deploy doctor`: one screen that says what this machine can do."""

from __future__ import annotations

from dna_deploy.cli.common import FormatOpt, OutputFormat, console, render

OK, MISSING, OTHER = "[green]ok[/]", "[red]missing[/]", "[yellow]other host[/]"


def doctor(fmt: OutputFormat = FormatOpt) -> None:
    """What this machine can do: runtimes and versions, this host's identity, which shipped latency
    tables fit it (and why the others do not), GPUs and CUDA, TensorRT, adb and ssh, and the data the
    example pipeline files name. Everything missing comes with the line that installs it.

    Example: dna-deploy doctor
    """
    from rich.markup import escape
    from rich.table import Table

    from dna_deploy.pipeline.doctor import doctor_report

    r = doctor_report()
    if fmt == "json":
        render(r, fmt="json")
        return
    h = r["host"]
    table = Table(show_header=False, box=None, pad_edge=False, title=f"dna-deploy {r['dna_deploy']} doctor",
                  title_justify="left")
    table.add_column("what", style="bold", overflow="fold", max_width=32)
    table.add_column("", no_wrap=True)
    table.add_column("detail", overflow="fold")

    def section(name: str, detail: str = "") -> None:
        table.add_row(f"[underline]{escape(name)}[/]", "", escape(detail))

    def row(what: str, status: str, detail: str, install: str | None = None) -> None:
        hint = f"[cyan]-> {escape(install)}[/]" if install else ""
        table.add_row(escape(what), status, "\n".join(x for x in (escape(detail), hint) if x))

    g = r["gpu"]
    section("this host", "what tables are matched on")
    row("identity", "", f"{h['cpu']}, {h['cores']} cores, {h['machine']}, CPU flags {h['cpu_flags_sha256']}")
    row("python", "", f"{r['python']} ({r['executable']})")
    section("runtimes")
    for rt in r["runtimes"]:
        versions = ", ".join(f"{p} {v}" for p, v in rt["versions"].items() if v) or "not installed"
        usable = f"usable on {', '.join(rt['usable_on'])}" if rt["usable_on"] else "not usable here"
        row(rt["runtime"], OK if rt["usable_on"] else MISSING, f"{versions}; {usable}", rt["install"])
        if g["gpus"]:  # only where a GPU is present is a runtime's missing GPU support news
            for device, why in rt["why_not"].items():
                if rt["usable_on"]:
                    row("", "", f"{device}: {why}")
    section("GPUs")
    if g["gpus"]:
        for i, gpu in enumerate(g["gpus"]):
            row(f"cuda:{i}", OK, f"{gpu['name']}, {gpu['memory_gb']} GB, compute capability "
                f"{gpu['compute_capability']}; CUDA {g['cuda_version']}")
        smi = g["nvidia_smi"]
        row("nvidia-smi", OK if smi["found"] else MISSING, smi["version"] or "not found", smi["install"])
    else:
        row("CUDA GPU", MISSING, "none visible to torch", g.get("install"))
    section("tools", "targets by hand (docs/targets.md)")
    for t in r["tools"]:
        row(t["tool"], OK if t["found"] else MISSING, t["version"] or "not found", t["install"])
    tables = r["tables"]
    section("shipped tables", f"{sum(t['fits'] for t in tables)} of {len(tables)} fit this host")
    for t in tables:
        row(t["table"].removesuffix(".json"), OK if t["fits"] else OTHER,
            "measured here, these versions" if t["fits"] else "; ".join(t["why_not_short"]))
    if not all(t["fits"] for t in tables):
        row("", "", "", "the pipeline profiles and validates its own (use_shipped: auto); by hand: "
            "dna-deploy profile --device DEVICE --space SPACE")
    section("example data")
    for d in r["data"]:
        row(d["pipeline"].removeprefix("examples/"), OK if d["found"] else MISSING,
            d["data"] if d["data"] == d["where"] else f"{d['data']}: {d['where'] or 'not found'}", d["install"])
    console.print(table)
