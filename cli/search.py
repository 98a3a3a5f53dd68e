"""`dna-deploy rate` and `dna-deploy search`: rate every candidate, then the exact optimum."""

from __future__ import annotations

from pathlib import Path

import typer

from dna_deploy.cli.common import (
    DeviceOpt,
    FormatOpt,
    OutputFormat,
    SpaceOpt,
    TimeoutOpt,
    WorkersOpt,
    check_output,
    console,
    data_spec_for,
    make_compute,
    output_lock,
    parse_blocks,
    render,
    resolve_space,
)
from dna_deploy.errors import DataError
from dna_deploy.settings import RateSettings, SearchSettings

R, S = RateSettings(), SearchSettings()  # the defaults, shared with the pipeline


def rate(space: str = SpaceOpt,
         data: str = typer.Option(None, "--data", help="The supernet's data [what the supernet folder records]."),
         supernet: Path = typer.Option(..., "--supernet", help="Folder written by `dna-deploy train`."),
         teacher: str = typer.Option(None, "--teacher", help="The teacher a DNA supernet was distilled from (DNA++: none)."),
         teacher_weights: Path = typer.Option(None), taps: str = typer.Option(None),
         output: Path = typer.Option(..., "--output", "-o", help="Rating table JSON to write."),
         blocks: str = typer.Option(None, help="Comma-separated blocks [all]."),
         metric: str = typer.Option(R.metric, help="l1-norm (DNA: mean|s-t|/std(t)), mse-channel or mse."),
         calib_images: int = typer.Option(R.calib_images, min=1, help="Training images used to re-estimate BatchNorm per candidate."),
         calib_batch: int = typer.Option(R.calib_batch, min=1, help="Batch size of that re-estimation."),
         seed: int = typer.Option(0, help="Which training images calibrate BatchNorm."),
         rate_images: int = typer.Option(R.rate_images, min=1, help="Rate on a fixed subset of this many rate-split images [all]."),
         rate_chunk: int = typer.Option(R.rate_chunk, min=1, help="Rate-split images on the device at once (memory only) "
                                        "[as many as --rate-memory-gb holds]."),
         rate_memory_gb: float = typer.Option(R.rate_memory_gb, min=0.001, help="Device memory one rating chunk may take."),
         centre_paths: int = typer.Option(R.centre_paths, min=1, help="DNA++: paths averaged into each block's rating "
                                          "target (every candidate when the block has no more)."),
         device: str = DeviceOpt, workers: int = WorkersOpt, timeout_min: float = TimeoutOpt,
         resume: bool = typer.Option(True, "--resume/--restart"), fmt: OutputFormat = FormatOpt) -> None:
    """Rate every candidate of every block on the held-out rate split (BN re-estimated per candidate).

    DNA: against the teacher's features. DNA++: against the supernet's own population centre, no teacher.

    Example: dna-deploy rate --space tiny --supernet runs/supernet --teacher runs/teacher.pt -o runs/ratings.json
    Sharded: torchrun --nproc-per-node 8 -m dna_deploy rate ... (each rank rates a share of the candidates, balanced by cost)
    """
    from dna_deploy.data import load_data
    from dna_deploy.distill.teacher import load_teacher
    from dna_deploy.select.rate import rate_supernet

    sp = resolve_space(space, supernet)
    block_list = parse_blocks(blocks)
    check_output(output, kind="ratings", inputs=[supernet, teacher, teacher_weights, data, space], what="rating table")
    RateSettings(metric=metric, calib_images=calib_images, calib_batch=calib_batch, rate_images=rate_images,
                 rate_chunk=rate_chunk, rate_memory_gb=rate_memory_gb, centre_paths=centre_paths)
    compute = make_compute(device, False, workers, timeout_min=timeout_min)  # ratings are computed in fp32
    d = load_data(data_spec_for(data, supernet), sp.input_size)
    t = load_teacher(teacher, sp, weights=teacher_weights, taps=taps.split(",") if taps else None) if teacher else None
    with output_lock(output, what="rate"):  # the table and its resume files: one writer at a time
        table = rate_supernet(sp, supernet, t, d, output, blocks=block_list,
                              metric=metric, calib_images=calib_images, calib_batch=calib_batch, seed=seed,
                              rate_images=rate_images, rate_chunk=rate_chunk, rate_memory_gb=rate_memory_gb,
                              centre_paths=centre_paths, compute=compute, resume=resume, show_progress=fmt == "table")
    from dna_deploy.distributed import dist_info

    if dist_info()[0] != 0:
        return
    rows = []
    for b in table["blocks"]:
        ranked = sorted(b["candidates"].items(), key=lambda kv: kv[1]["loss"])
        rows.append({"block": b["block"], "candidates": len(ranked), "best": ranked[0][0], "best_loss": ranked[0][1]["loss"],
                     "worst": ranked[-1][0], "worst_loss": ranked[-1][1]["loss"]})
    render(rows, fmt=fmt, title=f"ratings ({table['metric']}) -> {output}")


def search(ratings: Path = typer.Option(..., "--ratings", "-r", help="Rating table from `dna-deploy rate`."),
           space: str = SpaceOpt,
           table: list[Path] = typer.Option([], "--table", "-t", help="Latency table; repeat for several devices."),
           budget_ms: list[float] = typer.Option([], "--budget-ms", "-b", help="Latency budget per --table, in order."),
           max_mmacs: float = typer.Option(S.max_mmacs, help="Limit on millions of multiply-accumulates."),
           max_params: float = typer.Option(S.max_params, help="Limit on parameters."),
           top_k: int = typer.Option(S.top_k, min=1, help="The K best architectures (exact)."),
           budget_margin: bool = typer.Option(S.budget_margin, "--budget-margin/--no-budget-margin",
                                              help="Search so that the upper end of each prediction's 90 % interval "
                                                   "(the table's held-out errors) meets its budget."),
           confirm_top: int = typer.Option(0, "--confirm-top", min=0, max=100,
                                           help="Time K candidates (the best under the budgets, then under rungs "
                                                "below them: --confirm-step) on each budgeted runtime here, exported as they ship, and return the best-rated one "
                                                "measured within every budget (0: trust the tables)."),
           confirm_step: float = typer.Option(S.confirm_step, "--confirm-step", min=0.0, max=0.2,
                                              help="The candidates confirmed are the best under the budgets and under "
                                                   "K-1 rungs below them, each this fraction of the budget lower."),
           pareto_out: Path = typer.Option(None, "--pareto", help="Write the Pareto front (rating vs the first table's latency, within every limit): PATH.csv and PATH.png."),
           output: Path = typer.Option(None, "--output", "-o", help="Write the result as JSON."),
           fmt: OutputFormat = FormatOpt) -> None:
    """Exact search: lowest summed block rating within every latency budget and limit.

    Example: dna-deploy search -s tiny -r runs/ratings.json -t latency_tables/x86-cpu-onnxruntime__tiny.json -b 0.15
    """
    from dna_deploy.latency.table import LatencyTable
    from dna_deploy.select.rate import load_ratings
    from dna_deploy.select.search import run_search

    sp = resolve_space(space, ratings, *table)
    inputs = [ratings, *table, space]
    if output is not None:
        check_output(output, kind="search-result", inputs=inputs, what="search result")
    if pareto_out is not None:
        check_output(pareto_out.with_suffix(".csv"), kind="pareto-csv", inputs=inputs + [output], what="Pareto front")
        check_output(pareto_out.with_suffix(".png"), kind="plot", inputs=inputs + [output], what="Pareto plot")
    r = load_ratings(ratings, sp)
    tables = [LatencyTable.load(t) for t in table]
    if len(budget_ms) > len(tables):
        raise DataError(f"{len(budget_ms)} --budget-ms values but {len(tables)} --table: give one table per budget")
    budgets = list(budget_ms) + [None] * (len(tables) - len(budget_ms))
    settings = SearchSettings(top_k=top_k, max_mmacs=max_mmacs, max_params=max_params, budget_margin=budget_margin,
                              confirm_top=confirm_top, confirm_step=confirm_step)
    log = (lambda m: console.print(m, markup=False)) if fmt == "table" else None
    confirm_dir = output.with_name(output.stem + ".confirm") if output is not None and confirm_top else None
    from dna_deploy.deploy.confirm import confirm_candidates

    result = run_search(sp, r, tables, budgets, settings, output=output, pareto_path=pareto_out,
                        confirm_dir=confirm_dir, confirm=confirm_candidates, show_progress=fmt == "table", log=log)
    rows = result["results"]
    if fmt == "json":
        render(result, fmt="json")
        return
    print_result(result)
    if "confirmation" in result:
        print_confirmation(result["confirmation"])
    console.print(f"best: {rows[0]['arch']}")
    console.print(f"block ratings of the best: {', '.join(f'{x:.4f}' for x in rows[0]['block_ratings'])}")
    if pareto_out is not None:
        console.print(f"Pareto front: {result['pareto']['points']} networks -> {result['pareto']['csv']}, {result['pareto']['png']}")


def _latency_cell(row: dict, device: str, budget: float | None) -> str:
    text = f"{row[f'latency_ms:{device}']:.4f}"
    low_high, coverage = row.get(f"latency_ms_90:{device}"), row.get(f"latency_interval_coverage:{device}")
    if low_high:
        text += f"\n{low_high[0]:.4f}-{low_high[1]:.4f}" + (f" ({100 * coverage:.0f} % interval)" if coverage else "")
    if budget is not None:
        holds = row.get(f"budget_holds_at_upper_end:{device}")
        text += f"\nbudget {budget:g}" + ("" if holds is None else ": holds" if holds else ": upper end over")
    return text


def print_confirmation(c: dict) -> None:
    """The confirmed candidates: predicted and measured latency per budgeted device, which shipped and why."""
    rows = [{"#": x["rank"], "architecture": x["arch"], "rating": x["rating"],
             **{f"{n} predicted / measured ms": f"{x['predicted_ms'][n]:.4f} / {x['measured_ms'][n]:.4f}"
                + ("" if x["meets"][n] else " (over)") for n in c["budgets_ms"]},
             "shipped": "yes" if x["rank"] == c["shipped"] else ""} for x in c["candidates"]]
    render(rows, title=f"confirmed on this machine ({c['statistic']}, budgets "
                       + ", ".join(f"{n} {b:g} ms" for n, b in c["budgets_ms"].items()) + ")")
    console.print(f"shipped: {c['why']}; confirmation took {c['seconds']:.0f} s ({c['timed']} timed, "
                  f"{c['reused']} from earlier timings)", markup=False)


def print_result(result: dict) -> None:
    """The search result for people: one row per network, one column per device, long architecture
    strings and device names folded onto more lines, never cut off. Where the terminal is too
    narrow for that, one small table per network."""
    from rich.table import Table

    budgets = result.get("budgets_ms", {})
    rows = result["results"]
    table = Table(title="exact search result", show_lines=True)
    for name in ("#", "architecture", "rating", "MMACs", "M params", *(f"{d} ms" for d in budgets)):
        number = name in ("#", "rating", "MMACs", "M params")  # never folded: too narrow a terminal gets cards
        table.add_column(name, overflow="fold", no_wrap=number, justify="right" if number else "left")
    for i, row in enumerate(rows, 1):
        table.add_row(str(i), row["arch"], f"{row['rating']:.4f}", f"{row['mmacs']:.3f}", f"{row['params_m']:.4f}",
                      *(_latency_cell(row, d, b) for d, b in budgets.items()))
    numbers = [[str(len(rows)), "#"], [f"{r['rating']:.4f}" for r in rows] + ["rating"],
               [f"{r['mmacs']:.3f}" for r in rows] + ["MMACs"], [f"{r['params_m']:.4f}" for r in rows] + ["M params"]]
    folded = 1 + len(budgets)  # the architecture and one column per device, each at least 14 wide
    if sum(max(map(len, col)) for col in numbers) + 14 * folded + 3 * (len(numbers) + folded) + 1 <= console.width:
        console.print(table)
        return
    for i, row in enumerate(rows, 1):
        card = Table(title=f"exact search result #{i}", show_header=False)
        card.add_column("", style="bold", overflow="fold")
        card.add_column("", overflow="fold")
        for key, value in (("architecture", row["arch"]), ("rating", f"{row['rating']:.4f}"),
                           ("MMACs", f"{row['mmacs']:.3f}"), ("M params", f"{row['params_m']:.4f}"),
                           *((f"{d} ms", _latency_cell(row, d, b)) for d, b in budgets.items())):
            card.add_row(key, value)
        console.print(card)
