"""Latency-table fidelity per runtime and precision, profiled and validated on this machine in one run.

For each device spec (default: ONNX Runtime fp32, LiteRT fp32, LiteRT full-integer int8): profile
the space's layer table and its block table (every block candidate timed as one model), then
`profile validate` both on the same --samples random networks, timed once (half fit each
calibration, the same half is held out). On the held-out networks, side by side: the raw layer sum,
the calibrated layer sum (a * raw + b), the raw and calibrated block sums, and a MACs-linear
predictor fitted on the same networks; for each the +-5 % and +-10 % hit-rates with Wilson 95 %
intervals and the RMSPE; and the wall times of profiling each table (building its models, then
timing them) and of validating. With --block-warmups, the block table is timed once per warm-up
(seconds each timed batch warms up), from the same models, and each timing is validated on the
same networks: the default's cost and fidelity beside a shorter one's. The goal (issue 13): >= 99 %
of >= 100 held-out networks within +-10 %.
Nothing shipped is read: every table is measured here, into a temporary folder.
Run: python bench/latency_fidelity.py [--space tiny] [--samples 200] [--devices x86-cpu-onnxruntime,...]
     [--granularities layer,block] [--block-warmups 0.1,0.02]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from dna_deploy.host import host_description
from dna_deploy.io import read_json, write_json
from dna_deploy.latency.devices import load_device
from dna_deploy.latency.profiler import TIMING_DEFAULTS, build_bundle, default_table_path, measure_bundle
from dna_deploy.latency.validate import MAX_EXTRA_ROUNDS as VALIDATE_MAX_EXTRA_ROUNDS
from dna_deploy.latency.validate import validate_table
from dna_deploy.space import load_space

PREDICTORS = {"raw_sum": "layer raw", "calibrated": "layer cal.", "block_raw_sum": "block raw",
              "block_calibrated": "block cal.", "macs_linear": "MACs-linear"}


def _keep(files, keep: Path, stem: str) -> None:
    """Copy (path, suffix) pairs to keep/<stem><suffix>."""
    keep.mkdir(parents=True, exist_ok=True)
    for f, suffix in files:
        dst = keep / f"{stem}{suffix}"
        shutil.copyfile(f, dst.with_name(dst.name + ".tmp"))
        dst.with_name(dst.name + ".tmp").replace(dst)  # atomic: never a half-written table


def _misses(work: Path, calibration: dict) -> list[dict]:
    """The held-out networks the calibrated table missed by more than 10 %, with how their figure
    was measured (rounds timed, and whether two quiet rounds with quiet speed probes backed it)."""
    nets = read_json(work / "networks.json", what="validated networks")
    rounds = read_json(work / "measurements.json", what="measurement cache")["samples"]
    out = []
    for n in nets:
        predicted = calibration["a"] * n["raw_sum_ms"] + calibration["b"]
        error = 100 * (predicted - n["measured_ms"]) / n["measured_ms"]
        if n["held_out"] and abs(error) > 10:
            out.append({"arch": n["arch"], "measured_ms": n["measured_ms"], "predicted_ms": predicted,
                        "error_pct": error, "confirmed": n["confirmed"], "rounds": len(rounds[n["arch"]])})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="tiny")
    ap.add_argument("--samples", type=int, default=200, help="networks measured; half are held out")
    ap.add_argument("--devices", default="x86-cpu-onnxruntime,x86-cpu-litert,x86-cpu-litert-int8")
    ap.add_argument("--granularities", default="layer,block", help="tables to profile: layer, block or both")
    ap.add_argument("--block-warmups", default=str(TIMING_DEFAULTS["block"]["warmup_s"]),
                    help="comma-separated warm-ups (s) to time the block table with; the first is kept by --keep")
    ap.add_argument("--max-extra-rounds", type=int, help="validation's extra rounds for unconfirmed networks "
                    "[profile validate's default]")
    ap.add_argument("--keep", type=Path, help="also copy the validated tables (and fidelity plots) into this folder")
    ap.add_argument("--output", type=Path, help="results file [bench/results/latency_fidelity_<space>.json]")
    args = ap.parse_args()
    space = load_space(args.space)
    block_warmups = [float(w) for w in args.block_warmups.split(",")]
    if len(set(block_warmups)) != len(block_warmups):
        ap.error(f"--block-warmups has a value twice: {args.block_warmups}")
    tables = []  # (label, granularity, warm-up or None for the default)
    for g in args.granularities.split(","):
        if g == "block" and len(block_warmups) > 1:
            tables += [(f"block_warmup_{w * 1000:g}ms", g, w) for w in block_warmups]
        else:
            tables.append((g, g, block_warmups[0] if g == "block" else None))
    labels = dict(PREDICTORS)
    for label, g, w in tables:
        if label not in ("layer", "block"):
            labels[f"{label}_raw_sum"], labels[f"{label}_calibrated"] = f"block raw {w:g}s", f"block cal. {w:g}s"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.devices.split(","):
            dev = load_device(name)
            work = Path(tmp) / f"{name}.networks"  # one set of network timings for both tables
            row = {"device": name, "space": space.name, "host": host_description()}  # machines differ
            built = {}
            for label, g, w in tables:
                out = Path(tmp) / (f"{name}.json" if g == "layer" else f"{name}__{label}.json")
                bundle = Path(tmp) / f"{name}__{g}.bundle"
                t0 = time.perf_counter()
                build_bundle(space, dev, bundle, show_progress=False, granularity=g)
                built.setdefault(g, time.perf_counter() - t0)  # a second timing reuses the models
                t0 = time.perf_counter()
                table = measure_bundle(bundle, out, show_progress=False, warmup_s=w)
                row[f"{label}_build_s"], row[f"{label}_timing_s"] = built[g], time.perf_counter() - t0
                row[f"{label}_profile_s"], row[f"{label}_entries"] = built[g] + row[f"{label}_timing_s"], len(table.entries)
                row[f"{label}_warmup_s"] = table.meta["timing"]["warmup_s"]
                t0 = time.perf_counter()
                extra = {} if args.max_extra_rounds is None else {"max_extra_rounds": args.max_extra_rounds}
                rep = validate_table(out, space, samples=args.samples, show_progress=False, work_dir=work,
                                     plot_path=out.with_suffix(".fidelity.png"), **extra)
                t_val = time.perf_counter() - t0
                row.setdefault("validate_s", t_val)  # the first validation times the networks; the others reuse them
                row.update(held_out=rep["held_out_networks"], statistic=rep["statistic"], networks=rep["networks"],
                           unconfirmed_held_out=rep["unconfirmed_held_out"],
                           validate_max_extra_rounds=extra.get("max_extra_rounds", VALIDATE_MAX_EXTRA_ROUNDS))
                row[f"{label}_calibration"] = rep["calibration"]
                row[f"{label}_held_out_misses"] = _misses(work, rep["calibration"])
                row[f"{label}_calibrated_confirmed"] = rep["calibrated_confirmed"]  # held out, figure confirmed
                prefix = "" if label == "layer" else f"{label}_"
                row[f"{prefix}raw_sum"], row[f"{prefix}calibrated"] = rep["raw_sum"], rep["calibrated"]
                row["macs_linear"] = rep["macs_linear"]
                if args.keep and (g == "layer" or w == block_warmups[0]):
                    _keep([(out, ".json"), (out.with_suffix(".fidelity.png"), ".fidelity.png")], args.keep,
                          default_table_path(dev, space, granularity=g).stem)  # the name `profile` gives it
                print(f"{name} ({label}): {len(table.entries)} entries built in {built[g]:.0f} s, timed in "
                      f"{row[f'{label}_timing_s']:.0f} s; validated in {t_val:.0f} s", flush=True)
            rows.append(row)
    print(f"\n{'device':22} {'predictor':12} {'+-5 % [95% CI]':>18} {'+-10 % [95% CI]':>19} {'RMSPE %':>8}")
    for r in rows:
        for k, label in labels.items():
            if k not in r:
                continue
            v = r[k]
            c5, c10 = v["within_5pct_ci95"], v["within_10pct_ci95"]
            print(f"{r['device']:22} {label:12} {v['within_5pct']:5.0%} [{c5[0]:.0%}, {c5[1]:.0%}] "
                  f"{v['within_10pct']:6.0%} [{c10[0]:.0%}, {c10[1]:.0%}] {v['rmspe_pct']:8.2f}")
        walls = ", ".join(f"{label} {r[f'{label}_profile_s']:.0f} s ({r[f'{label}_build_s']:.0f} building, "
                          f"{r[f'{label}_timing_s']:.0f} timing; {r[f'{label}_entries']} entries)" for label, _, _ in tables)
        for label, _, _ in tables:
            sure = r[f"{label}_calibrated_confirmed"]
            if sure:
                c10 = sure["within_10pct_ci95"]
                print(f"{'':22} {label} cal., {sure['n']} confirmed held out: {sure['within_10pct']:.0%} "
                      f"[{c10[0]:.0%}, {c10[1]:.0%}] within +-10 %")
            for m in r[f"{label}_held_out_misses"]:
                print(f"{'':22} {label} miss: {m['error_pct']:+.1f} % ({m['measured_ms']:.4f} ms measured, "
                      f"{m['rounds']} rounds, {'confirmed' if m['confirmed'] else 'unconfirmed'})")
        print(f"{'':22} {r['held_out']} held out of {r['networks']} ({r['unconfirmed_held_out']} unconfirmed); "
              f"profile: {walls}; validate {r['validate_s']:.0f} s")
    write_json(args.output or Path(__file__).parent / "results" / f"latency_fidelity_{space.name}.json", rows)


if __name__ == "__main__":
    main()
