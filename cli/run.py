"""`dna-deploy run PIPELINE` and `dna-deploy quickstart`: the whole flow, with a report."""

from __future__ import annotations

from pathlib import Path

import typer

from dna_deploy.cli.common import FormatOpt, OutputFormat, console, render


def _run(config: Path, out: Path | None, fmt: str) -> None:
    from rich.markup import escape

    from dna_deploy.errors import BudgetMissed, VerificationFailed
    from dna_deploy.pipeline.runner import run_pipeline

    log = (lambda m: console.print(f"[bold cyan]{escape(m)}[/]")) if fmt == "table" else (lambda m: None)
    r = run_pipeline(config, out=out, show_progress=fmt == "table", log=log)
    if r.get("rank") == "follower":  # under torchrun: rank 0 prints the summary
        return
    best = r["results"]["search"]["results"][0]
    reports = r["results"]["verify"]["reports"].values()
    budgets = [b for rep in reports for b in rep.get("budgets", [])]
    confirmation = r["results"]["search"].get("confirmation")
    seconds = r.get("stage_seconds", {})
    summary = {"architecture": best["arch"], "report": r["report"], "verification": r["verify_passed"],
               "stage time": f"{sum(v or 0 for v in seconds.values()) / 60:.1f} min ("
                             + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items() if v and v >= 1) + ")",
               **({"confirmed in the search": f"#{confirmation['shipped']} of {len(confirmation['candidates'])} shipped: "
                                              f"{confirmation['why']}"} if confirmation else {}),
               **{f"latency budget {b['device']} {b['precision']}": f"{'met' if b['met'] else 'MISSED'}: {b['line']}"
                  for b in budgets},
               **{k: v for k, v in best.items() if k.startswith("latency_ms:")},
               "pytorch accuracy": next(iter(r["results"]["verify"]["reports"].values()))["pytorch_accuracy"]}
    render(summary, fmt=fmt, title="pipeline finished")
    if len(r["rounds"]) > 1 and fmt == "table":
        render(r["rounds"], title="DNA+ rounds (each round's teacher is the previous round's network)")
    if not r["verify_passed"]:
        failing = {k for rep in reports for a in rep["artifacts"] for k, c in a["checks"].items() if not c["pass"]}
        if failing == {"latency_budget"}:
            raise BudgetMissed("; ".join(b["line"] for b in budgets if not b["met"]) + f"; see {r['report']}")
        raise VerificationFailed(f"verification failed; see {r['report']}")


def run(config: Path = typer.Argument(..., help="Pipeline YAML (see examples/quickstart.yaml)."),
        out: Path = typer.Option(None, "--out", "-o", help="Output folder [the file's 'output']."),
        fmt: OutputFormat = FormatOpt) -> None:
    """Run a whole pipeline; stages whose inputs and settings are unchanged are skipped.

    Example: dna-deploy run examples/quickstart.yaml --out runs/mine
    """
    _run(config, out, fmt)


def quickstart(out: Path = typer.Option(Path("runs/quickstart"), "--out", "-o", help="Output folder."),
               fmt: OutputFormat = FormatOpt) -> None:
    """The shipped quickstart: MNIST, tiny space, ONNX Runtime + LiteRT, train -> rate -> search -> export -> verify.

    Example: dna-deploy quickstart --out runs/quickstart
    """
    from dna_deploy.pipeline.runner import quickstart_config

    _run(quickstart_config(), out, fmt)
