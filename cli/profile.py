"""`dna-deploy profile ...`: measure latency tables, predict with them, check their fidelity."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from dna_deploy.cli.common import (
    FormatOpt,
    OutputFormat,
    SpaceOpt,
    check_output,
    console,
    output_lock,
    render,
    resolve_space,
)
from dna_deploy.latency.validate import MAX_EXTRA_ROUNDS
from dna_deploy.settings import ProfileSettings

P = ProfileSettings()  # the defaults, shared with the pipeline
EXTRA_HELP = "Most extra timing rounds while not confirmed (two quiet rounds with quiet speed probes) or noisy"

app = typer.Typer(help="Per-device latency lookup tables measured on real runtimes.", invoke_without_command=True)

TableOpt = typer.Option(..., "--table", "-t", help="Latency table JSON (from `dna-deploy profile`).")
GranularityOpt = typer.Option(P.granularity, "--granularity",
                              help="layer: one entry per distinct layer; block: one per candidate of each block.")
TargetOpt = typer.Option("local", "--target",
                         help="Where to time: local, ssh://user@host[:port] (a Linux board: only Python 3, numpy and the "
                              "runtime needed there), adb://SERIAL (a phone: LiteRT's benchmark_model).")
BenchmarkBinaryOpt = typer.Option(None, "--benchmark-binary",
                                  help="adb targets: LiteRT's benchmark_model built for the phone (pushed with the models).")
MaxOpenOpt = typer.Option(None, "--max-open", min=1,
                          help="Op models open at once while timing; more are timed in slices [as many as half "
                               "the available memory holds].")


def _granularity(value: str) -> str:
    from dna_deploy.latency.table import check_granularity

    return check_granularity(value)


@app.callback()
def profile_cmd(ctx: typer.Context,
                device: str = typer.Option(None, "--device", "-d", help="Device spec name (see `devices list`) or .yaml."),
                space: str = SpaceOpt,
                output: Path = typer.Option(None, "--output", "-o", help="Table path [latency_tables/<device>__<space>.json]."),
                rounds: int = typer.Option(None, min=1, help="Interleaved timing rounds over all ops [5; 3 for block tables]."),
                runs: int = typer.Option(P.runs, min=1, help="Timed runs per op per round."),
                max_extra_rounds: int = typer.Option(None, min=0, help=f"{EXTRA_HELP} [6; 9 for block tables]."),
                cv_threshold: float = typer.Option(P.cv_threshold, help="Re-measure ops whose robust CV exceeds this."),
                warmup_s: float = typer.Option(None, min=0.0, help="Seconds each timed batch warms up (idle models run slow at first) [0.25; 0.02 for block tables]."),
                resume: bool = typer.Option(True, "--resume/--restart", help="Continue an interrupted run."),
                force: bool = typer.Option(False, "--force", help="Allow replacing a table shipped with dna-deploy."),
                granularity: str = GranularityOpt, max_open: int = MaxOpenOpt,
                target: str = TargetOpt, benchmark_binary: Path = BenchmarkBinaryOpt,
                fmt: OutputFormat = FormatOpt) -> None:
    """Time every candidate op at every layer position of a space and write a latency table.

    With --granularity block, every candidate of every block is timed as one model instead (600 on
    tiny against 51 layers): slower to profile, and it measures what the runtime does across a
    block's layers instead of assuming their sum.

    With --target ssh://user@host the op models are built here and timed on that board (a
    dropped connection resumes where it stopped); the table records the board's identity.

    Example: dna-deploy profile --device x86-cpu-onnxruntime --space tiny
    Example: dna-deploy profile --device rpi5-cpu-litert --space tiny --target ssh://pi@raspberrypi.local
    """
    if ctx.invoked_subcommand is not None:
        return
    if device is None:
        console.print(ctx.get_help())
        raise typer.Exit(2)
    from dna_deploy.latency.devices import load_device
    from dna_deploy.latency.profiler import default_table_path, profile

    dev, sp, granularity = load_device(device), resolve_space(space), _granularity(granularity)
    out = output or default_table_path(dev, sp, granularity=granularity)
    check_output(out, kind="latency-table", inputs=[device, space], allow_shipped=force, what="latency table")
    check_output(out.with_name(out.stem + ".bundle"), kind="bundle", inputs=[device, space], allow_shipped=force,
                 what="profiling work folder")
    where = _target(target, benchmark_binary)
    if where.is_local:
        table = profile(sp, dev, out, rounds=rounds, runs_per_round=runs, cv_threshold=cv_threshold, resume=resume,
                        show_progress=fmt == "table", force=force, warmup_s=warmup_s, granularity=granularity,
                        max_open=max_open, max_extra_rounds=max_extra_rounds)
    else:
        from dna_deploy.latency.on_target import profile_on_target

        table = profile_on_target(sp, dev, out, where, rounds=rounds, runs_per_round=runs, cv_threshold=cv_threshold,
                                  resume=resume, show_progress=fmt == "table", force=force, warmup_s=warmup_s,
                                  granularity=granularity, max_extra_rounds=max_extra_rounds)
    _summary(table, out, fmt)


def _target(text: str, benchmark_binary: Path | None):
    """The --target, with --benchmark-binary for a phone."""
    from dna_deploy.errors import DataError
    from dna_deploy.targets import parse_target

    where = parse_target(text)
    if benchmark_binary is not None:
        if not hasattr(where, "benchmark_binary"):
            raise DataError("--benchmark-binary is for adb:// targets (phones); a Linux board runs the Python runner")
        where.benchmark_binary = benchmark_binary
    return where


def _summary(table, out, fmt):
    med = sorted(e[table.statistic] for e in table.entries.values())
    cvs = sorted(e["cv"] for e in table.entries.values())
    render({"table": str(out), "device": table.name, "space": table.meta["space"], "entries": len(table.entries),
            "fastest op (ms)": med[0], "slowest op (ms)": med[-1], "median robust CV": cvs[len(cvs) // 2],
            "worst robust CV": cvs[-1]}, fmt=fmt, title="latency table")


@app.command("predict")
def predict(archs: list[str] = typer.Argument(..., help="Architecture strings."), table: Path = TableOpt,
            space: str = SpaceOpt, fmt: OutputFormat = FormatOpt) -> None:
    """Predicted latency of architectures: raw sum of layer entries and the calibrated value.

    Example: dna-deploy profile predict --space tiny --table latency_tables/x86-cpu-onnxruntime__tiny.json 'k3e3.skip|...'
    """
    from dna_deploy.latency.table import LatencyTable
    from dna_deploy.nn.builder import network_costs

    t = LatencyTable.load(table)
    sp = resolve_space(space, table)
    rows = []
    for a in archs:
        arch = sp.parse_arch(a)
        p = t.predict(sp, arch)
        rows.append({"arch": str(arch), "raw_sum_ms": p["raw_ms"], "predicted_ms": p["predicted_ms"],
                     "calibrated": p["calibrated"], "mmacs": network_costs(sp, arch)["macs"] / 1e6})
    render(rows, fmt=fmt, title=f"latency on {t.name}")


@app.command("validate")
def validate(table: Path = TableOpt, space: str = SpaceOpt,
             samples: int = typer.Option(P.validate_samples, "--samples", "-n", help="Networks measured end to end (half held out, or --held-out)."),
             held_out: int = typer.Option(None, "--held-out", help="Of them held out to judge the calibration, the rest fit "
                                                                    "it [half]; 19 or more give the 90 % interval."),
             seed: int = typer.Option(0, help="Which random networks."),
             rounds: int = typer.Option(P.validate_rounds, min=1, help="Interleaved timing rounds per network."),
             warmup_s: float = typer.Option(P.warmup_s, min=0.0, help="Seconds each timed batch warms up."),
             max_extra_rounds: int = typer.Option(MAX_EXTRA_ROUNDS, min=0, help=f"{EXTRA_HELP}."),
             plot: Path = typer.Option(None, help="PNG scatter [<table>.fidelity.png]."),
             resume: bool = typer.Option(True, "--resume/--restart", help="Reuse network measurements of an interrupted run."),
             output: Path = typer.Option(None, "--output", "-o", help="Write the calibrated table here [the table itself]."),
             force: bool = typer.Option(False, "--force", help="Calibrate a copy of a shipped or foreign table beside it."),
             target: str = TargetOpt, fmt: OutputFormat = FormatOpt) -> None:
    """Measure random networks end to end, fit the correction, report held-out fidelity, store both.

    A table measured on another host (CPU model, flags, cores) or runtime version, or shipped with
    dna-deploy, is never calibrated in place: profile this machine, or pass -o / --force for a copy.

    With --target, the networks are built here and timed on that target, and the table is held
    to the target's identity (a table profiled there).

    Example: dna-deploy profile validate --space tiny --table latency_tables/x86-cpu-onnxruntime__tiny.json -n 30
    """
    from dna_deploy.latency.validate import calibrated_table_path, validate_table

    where = _target(target, None)
    dest = calibrated_table_path(table, output=output, force=force, target=where)
    beside_shipped = force and output is None  # --force: a copy beside a shipped table, on purpose
    # calibrating the table itself (no -o) updates it in place by design: its entries are kept
    check_output(dest, kind="latency-table", inputs=[space] + ([table] if output is not None else []),
                 allow_shipped=beside_shipped, what="calibrated table")
    plot = plot or dest.with_suffix(".fidelity.png")
    check_output(plot, kind="plot", inputs=[table, space], allow_shipped=beside_shipped, what="plot")
    r = validate_table(table, resolve_space(space, table), samples=samples, held_out=held_out, seed=seed, plot_path=plot,
                       show_progress=fmt == "table", resume=resume, rounds=rounds, output=dest, warmup_s=warmup_s,
                       max_extra_rounds=max_extra_rounds, target=where)
    if fmt == "json":
        render(r, fmt="json")
        return
    def hits(f, key):  # "92.0 % [86.4, 95.4]": the rate with its Wilson 95 % interval
        lo, hi = f[f"{key}_ci95"]
        return f"{100 * f[key]:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"

    rows = [{"predictor": k, "rmse_ms": r[k]["rmse_ms"], "rmspe_pct": r[k]["rmspe_pct"],
             "within ±5 % [95 % CI]": hits(r[k], "within_5pct"), "within ±10 % [95 % CI]": hits(r[k], "within_10pct")}
            for k in ("raw_sum", "calibrated", "macs_linear")]
    render(rows, title=f"fidelity on {r['held_out_networks']} held-out networks (fit on {r['fit_networks']})")
    if r["unconfirmed_held_out"]:
        console.print(f"{r['unconfirmed_held_out']} held-out networks stayed unconfirmed: the machine was slowed by other "
                      "work through all their rounds, so their measured latency may be high (and count as misses); "
                      "validate again on a quieter machine")
        if r["calibrated_confirmed"]:
            console.print(f"on the {r['calibrated_confirmed']['n']} confirmed held-out networks, calibrated within ±10 %: "
                          f"{hits(r['calibrated_confirmed'], 'within_10pct')}", markup=False)
    console.print(f"calibration: measured = {r['calibration']['a']:.4f} * raw_sum + {r['calibration']['b']:.4f} ms; "
                  f"stored in {dest}; plot: {plot}")
    q = r["calibrated"]["rel_error_quantiles"]
    few = (f" (only {r['held_out_networks']} held out: their extremes, which cover {100 * q['coverage']:.0f} %; "
           "19 or more give 90 %)") if q["coverage"] < 0.9 else ""
    console.print(f"held-out relative error (predicted - measured) / measured: median {100 * q['q50']:+.1f} %, "
                  f"90 % prediction interval {100 * q['q05']:+.1f} % to {100 * q['q95']:+.1f} %{few} "
                  "(stored: the report's intervals and search --budget-margin use it)")


@app.command("bundle")
def bundle(device: str = typer.Option(..., "--device", "-d"), space: str = SpaceOpt,
           output: Path = typer.Option(..., "--output", "-o", help="Folder (or .zip) to write."),
           granularity: str = GranularityOpt, fmt: OutputFormat = FormatOpt) -> None:
    """Write the op models and a manifest, to profile a target that has only the runtime installed.

    Example: dna-deploy profile bundle --device rpi5-cpu-litert --space tiny -o rpi5-bundle.zip
    """
    import shutil
    import tempfile

    from dna_deploy.latency.devices import load_device
    from dna_deploy.latency.profiler import build_bundle

    dev, sp = load_device(device), resolve_space(space)
    zipped = output.suffix == ".zip"
    check_output(output, kind="bundle-zip" if zipped else "bundle", inputs=[device, space], what="bundle")
    with output_lock(output, what="profile bundle"):
        if zipped:
            with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as zdir:
                build_bundle(sp, dev, tmp, show_progress=fmt == "table", granularity=_granularity(granularity))
                made = shutil.make_archive(str(Path(zdir) / "bundle"), "zip", tmp)
                output.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(made, output)
        else:
            build_bundle(sp, dev, output, show_progress=fmt == "table", granularity=_granularity(granularity))
    render({"bundle": str(output), "device": dev.name, "space": sp.name,
            "next": f"on the target: dna-deploy profile run-bundle {output.name}"}, fmt=fmt)


def _warn_if_not_the_device(spec) -> None:
    """Say so when this machine cannot be the device the bundle's spec names (run-bundle on the host
    by mistake, or a 4-thread spec on a 2-core machine): the table would time this machine."""
    from rich.markup import escape

    from dna_deploy.cli.common import err_console
    from dna_deploy.latency.devices import host_mismatch

    for why in host_mismatch(spec):
        err_console.print(f"[yellow]warning:[/] {escape(why)}: the table will time this machine, not {escape(spec.name)}")


@app.command("run-bundle")
def run_bundle(bundle_path: Path = typer.Argument(..., help="Bundle folder or .zip."),
               output: Path = typer.Option(None, "--output", "-o", help="Table path [<device>__<space>.json]."),
               threads: int = typer.Option(None, help="Override the device spec's thread count."),
               rounds: int = typer.Option(None, min=1, help="Timing rounds [5; 3 for a block bundle]."),
               runs: int = typer.Option(20, min=1),
               warmup_s: float = typer.Option(None, min=0.0, help="Seconds each timed batch warms up [0.25; 0.02 for a block bundle]."),
               max_open: int = MaxOpenOpt,
               resume: bool = typer.Option(True, "--resume/--restart"), fmt: OutputFormat = FormatOpt) -> None:
    """Time a bundle's op models on this machine (no torch needed for ONNX Runtime / LiteRT bundles).

    Example: dna-deploy profile run-bundle rpi5-bundle.zip
    """
    from dna_deploy.errors import DataError
    from dna_deploy.io import read_json
    from dna_deploy.latency.devices import DeviceSpec
    from dna_deploy.latency.profiler import MANIFEST, check_manifest, measure_bundle, unpack_bundle
    from dna_deploy.latency.table import table_file_name

    if not bundle_path.exists():
        raise DataError(f"bundle not found: {bundle_path}")
    if output is not None:  # refused before the bundle is unpacked
        check_output(output, kind="latency-table", inputs=[bundle_path], what="latency table")
    folder = unpack_bundle(bundle_path) if bundle_path.is_file() else bundle_path
    m = check_manifest(read_json(folder / MANIFEST, what="bundle manifest"), str(bundle_path))
    spec = DeviceSpec.from_dict(m["device"], source=f"{bundle_path}: device")
    _warn_if_not_the_device(dataclasses.replace(spec, threads=threads) if threads else spec)
    out = output or Path(table_file_name(m["device"]["name"], m["space"], m.get("granularity", "layer")))
    check_output(out, kind="latency-table", inputs=[bundle_path, folder], what="latency table")
    table = measure_bundle(folder, out, threads=threads, rounds=rounds, runs_per_round=runs, resume=resume,
                           show_progress=fmt == "table", warmup_s=warmup_s, max_open=max_open)
    _summary(table, out, fmt)
