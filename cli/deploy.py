"""`dna-deploy retrain`, `export` and `verify`."""

from __future__ import annotations

from pathlib import Path

import typer

from dna_deploy.cli.common import (
    AmpOpt,
    CheckpointEveryOpt,
    DeviceOpt,
    FormatOpt,
    OutputFormat,
    SpaceOpt,
    SyncBnOpt,
    TimeoutOpt,
    WorkersOpt,
    check_output,
    console,
    data_spec_for,
    err_console,
    make_compute,
    output_lock,
    render,
    resolve_space,
)
from dna_deploy.settings import ExportSettings, RetrainSettings, VerifySettings

R, E = RetrainSettings(), ExportSettings()  # the defaults, shared with the pipeline


def retrain(arch: str = typer.Option(..., "--arch", "-a", help="Architecture string (from `search`)."), space: str = SpaceOpt,
            data: str = typer.Option(None, "--data", help="Training data [what --init-supernet records, else mnist]."),
            output: Path = typer.Option(..., "--output", "-o", help="Folder."),
            teacher: str = typer.Option(None, help="Teacher for logit distillation (checkpoint or torchvision:NAME)."),
            teacher_weights: Path = typer.Option(None),
            taps: str = typer.Option(None, help="torchvision teacher: its node names, comma-separated (unused by KD)."),
            kd_weight: float = typer.Option(R.kd_weight, help="Weight of the KD term."),
            init_supernet: Path = typer.Option(None, help="Start from the distilled block supernets' weights."),
            epochs: int = typer.Option(R.epochs, min=1), batch_size: int = typer.Option(R.batch_size, min=1),
            lr: float = typer.Option(R.lr), seed: int = typer.Option(0),
            max_steps: int = typer.Option(R.max_steps, min=1, help="Cap steps per epoch (smoke runs)."),
            val_images: int = typer.Option(R.val_images, min=1, help="Validate each epoch on this many fixed images [all]."),
            device: str = DeviceOpt, amp: bool = AmpOpt, workers: int = WorkersOpt,
            checkpoint_every: int = CheckpointEveryOpt, timeout_min: float = TimeoutOpt, sync_bn: bool = SyncBnOpt,
            resume: bool = typer.Option(True, "--resume/--restart"), fmt: OutputFormat = FormatOpt) -> None:
    """Train the searched network stand-alone (cross-entropy, + logit KD with a teacher); writes model.pt.

    Example: dna-deploy retrain -s tiny -a 'k5e3.skip|...' --teacher runs/teacher.pt -o runs/retrain
    """
    from dna_deploy.data import load_data
    from dna_deploy.distill.retrain import retrain as run
    from dna_deploy.distill.teacher import load_teacher

    sp = resolve_space(space, init_supernet, teacher if teacher and not teacher.startswith("torchvision:") else None)
    a = sp.parse_arch(arch)
    check_output(output, kind="retrain", inputs=[teacher, teacher_weights, init_supernet, data, space],
                 what="retrain folder")
    settings = RetrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, kd_weight=kd_weight, max_steps=max_steps,
                               init_supernet=init_supernet is not None, val_images=val_images)
    compute = make_compute(device, amp, workers, checkpoint_every, timeout_min=timeout_min, sync_bn=sync_bn)
    data = data_spec_for(data, init_supernet)
    d = load_data(data, sp.input_size)
    t = load_teacher(teacher, sp, weights=teacher_weights, taps=taps.split(",") if taps else None) if teacher else None
    cfg = settings.classifier(seed, with_teacher=t is not None)
    with output_lock(output, what="retrain"):
        r = run(sp, a, d, output, config=cfg, teacher=t, supernet_dir=init_supernet, resume=resume,
                show_progress=fmt == "table", data_spec=data, compute=compute)
    from dna_deploy.distributed import dist_info

    if dist_info()[0] != 0:
        return
    render({k: v for k, v in r.items() if k != "history"}, fmt=fmt, title="retrained")


def export(weights: Path = typer.Option(..., "--weights", "-w", help="model.pt from `dna-deploy retrain`."),
           to: str = typer.Option(E.to, "--to", help="onnx, tflite or tensorrt."),
           precision: list[str] = typer.Option(list(E.precisions), "--precisions", "--precision", "-p",
                                               help="fp32, fp16, int8; repeat for several."),
           arch: str = typer.Option(None, "--arch", "-a", help="Check that the weights are this architecture."),
           calibration_data: str = typer.Option(E.calibration_data, help="int8: dataset name/folder (train split) or .npy [the model's data]."),
           dynamic_batch: bool = typer.Option(E.dynamic_batch, help="ONNX with a dynamic batch axis."),
           keep_nchw: bool = typer.Option(E.keep_nchw, help="LiteRT: keep NCHW input instead of NHWC."),
           op_resolver: str = typer.Option(E.op_resolver, help="LiteRT: the kernels to shape the graph for: xnnpack "
                                                                "(default), builtin or reference."),
           opset: int = typer.Option(E.opset), output: Path = typer.Option(..., "--output", "-o", help="Folder."),
           verify: bool = typer.Option(False, "--verify", help="Run `verify` on the result (non-zero exit on failure)."),
           data: str = typer.Option(None, "--data", help="Labelled data for --verify [the model's data]."),
           table: list[Path] = typer.Option([], "--table", "-t", help="Latency tables for --verify."),
           max_extra_rounds: int = typer.Option(None, min=0, help="--verify: most extra timing rounds while a latency "
                                                "is not confirmed (as `verify --max-extra-rounds`) [9]."),
           fmt: OutputFormat = FormatOpt) -> None:
    """Export to ONNX, LiteRT (fp32/fp16/int8) or a TensorRT engine, with a model.json sidecar.

    Example: dna-deploy export -w runs/retrain/model.pt --to tflite -p fp32 -p int8 -o runs/export
    """
    from dna_deploy.deploy.export import export_model

    settings = ExportSettings(to=to, precisions=tuple(precision), calibration_data=calibration_data,
                              dynamic_batch=dynamic_batch, keep_nchw=keep_nchw, opset=opset, op_resolver=op_resolver)
    check_output(output, kind="export", inputs=[weights, calibration_data, *table], replaces=True, what="export folder")
    side = export_model(weights, output, settings, arch=arch)
    rows = [{k: a.get(k) for k in ("path", "runtime", "precision", "layout", "input_dtype")} for a in side["artifacts"]]
    if not verify:
        render(rows if fmt == "table" else side, fmt=fmt, title=f"exported {side['arch']} -> {output}")
        return
    if fmt == "table":
        render(rows, title=f"exported {side['arch']} -> {output}")
    _verify([output], data=data, table=table, fmt=fmt, max_extra_rounds=max_extra_rounds)


def verify(folders: list[Path] = typer.Argument(..., help="Export folders (each with model.json), verified as one "
                                                         "timing job; -f json prints one report, or a list for several."),
           data: str = typer.Option(None, "--data", help="Labelled data [the model's data]."),
           table: list[Path] = typer.Option([], "--table", "-t", help="Latency tables: compare measured vs predicted."),
           max_images: int = typer.Option(None, min=1, help="Use the first N validation images."),
           atol: float = typer.Option(None, help="Override the precision's absolute tolerance."),
           rtol: float = typer.Option(None, help="Override the relative tolerance."),
           min_top1_agreement: float = typer.Option(None), max_accuracy_drop_pts: float = typer.Option(None),
           max_latency_error_pct: float = typer.Option(None, help="Fail if measured latency is off the table by more."),
           max_extra_rounds: int = typer.Option(None, min=0, help="Most extra timing rounds while the latency is "
                                                "not confirmed (two quiet rounds with quiet speed probes) [9]."),
           op_resolver: str = typer.Option(None, help="LiteRT kernels: xnnpack (default), builtin or reference "
                                                       "[the matching table's]."),
           budget_ms: list[str] = typer.Option([], "--budget-ms", "-b", help="DEVICE=MS: hold the artifact of that "
                                               "device's runtime and precision to its latency budget (a clear miss "
                                               "exits 3); repeat for several."),
           latency_advisory: bool = typer.Option(False, "--latency-advisory/--no-latency-advisory",
                                                 help="A missed latency budget is a warning, not a failure."),
           target: str = typer.Option("local", "--target", help="Where latency is measured: local or "
                                      "ssh://user@host[:port] (outputs are checked here)."),
           fmt: OutputFormat = FormatOpt) -> None:
    """Outputs vs PyTorch, top-1 agreement, accuracy, latency vs the table and the budget; non-zero exit on failure.

    Example: dna-deploy verify runs/export --data mnist -t latency_tables/x86-cpu-litert__tiny.json

    Several folders (runs/export/onnx runs/export/tflite) share one speed probe: a latency is
    confirmed only against the machine's full speed seen over all of them (and over the tables
    given, when profiled on this machine).

    With --budget-ms x86-cpu-onnxruntime=0.22 the measured latency (the statistic the table sums)
    must meet the budget; over it by more than the measurement's own noise, verify exits 3 with
    one line per device ("x86-cpu-onnxruntime: 0.263 ms measured, budget 0.22 ms (+20 %)").
    """
    settings = VerifySettings(max_images=max_images, atol=atol, rtol=rtol, min_top1_agreement=min_top1_agreement,
                              max_accuracy_drop_pts=max_accuracy_drop_pts, max_latency_error_pct=max_latency_error_pct,
                              max_extra_rounds=max_extra_rounds, latency_advisory=latency_advisory)
    _verify(folders, data=data, table=table, fmt=fmt, max_images=max_images, overrides=settings.overrides(),
            op_resolver=op_resolver, max_extra_rounds=max_extra_rounds, budgets=parse_budgets(budget_ms),
            latency_advisory=latency_advisory, target=target)


def parse_budgets(values: list[str]) -> dict[str, float]:
    """--budget-ms DEVICE=MS values as {device: ms}."""
    import math

    from dna_deploy.errors import DataError

    out = {}
    for v in values:
        name, sep, ms = v.rpartition("=")
        try:
            budget = float(ms)
        except ValueError:
            budget = None
        if not sep or not name or budget is None or not (math.isfinite(budget) and budget > 0):
            raise DataError(f"--budget-ms {v[:80]!r}: give DEVICE=MS, a device name and a positive number of "
                            "milliseconds, e.g. x86-cpu-onnxruntime=0.22")
        out[name] = budget
    return out


def _render_verify_report(folder, r: dict) -> None:
    rows = []
    budgets = {b["artifact"]: b for b in r.get("budgets", [])}
    for a in r["artifacts"]:
        s = a["stats"]
        b = budgets.get(a["path"])
        rows.append({"artifact": a["path"], "precision": a["precision"], "max_abs_err": s["max_abs_error"],
                     "cosine_min": s["cosine_min"], "top1_agree": s["top1_agreement"], "accuracy": s["accuracy"],
                     "drop_pts": s["accuracy_drop_pts"], "latency_ms": s.get("measured_ms", s["latency_ms"]["median_ms"]),
                     "table_ms": s["predicted_ms"], "confirmed": s["latency_ms"].get("confirmed"),
                     **({"budget_ms": b["budget_ms"], "budget": b["verdict"]} if b else {}), "passed": a["passed"]})
    render(rows, title=f"verify {r['arch']} on {r['images']} images (PyTorch accuracy {r['pytorch_accuracy']:.4f})")
    for note in r["notes"]:
        console.print(f"note: {note}", markup=False)
    console.print(f"report: {Path(folder) / 'verify.json'}")


def _verify(folders, *, data, table, fmt, max_images=None, overrides=None, op_resolver=None, max_extra_rounds=None,
            budgets=None, latency_advisory=False, target=None):
    from dna_deploy.deploy.verify import verify_exports
    from dna_deploy.errors import BudgetMissed, VerificationFailed
    from dna_deploy.latency.table import LatencyTable
    from dna_deploy.targets import parse_target

    tables = [LatencyTable.load(t) for t in table]
    reports = verify_exports(folders, data=data, tables=tables, max_images=max_images, overrides=overrides,
                             show_progress=fmt == "table", op_resolver=op_resolver, max_extra_rounds=max_extra_rounds,
                             budgets=budgets, latency_advisory=latency_advisory, target=parse_target(target))
    if fmt == "json":  # one folder: its report; several: the list of their reports, in order
        render(reports[0] if len(folders) == 1 else reports, fmt="json")
    else:
        for folder, r in zip(folders, reports):
            _render_verify_report(folder, r)
    failed = [f"{a['path'] if len(reports) == 1 else Path(r['folder']) / a['path']}: "
              f"{', '.join(k for k, c in a['checks'].items() if not c['pass'])}"
              for r in reports for a in r["artifacts"] if not a["passed"]]
    missed = [b["line"] for r in reports for b in r.get("budgets", []) if not b["met"]]
    if missed and latency_advisory:
        err_console.print("\n".join(f"warning: {line} (latency budget missed; --latency-advisory)" for line in missed),
                          markup=False)
    only_budget = all(k == "latency_budget" for r in reports for a in r["artifacts"] if not a["passed"]
                      for k, c in a["checks"].items() if not c["pass"])
    if failed and missed and only_budget:
        raise BudgetMissed("; ".join(missed))
    if failed:
        raise VerificationFailed("verification failed: " + "; ".join(failed))
