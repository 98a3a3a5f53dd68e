"""Latency-table fidelity per runtime and precision, profiled and validated on this machine in one run.

For each device spec (default: ONNX Runtime fp32, LiteRT fp32, LiteRT full-integer int8): profile
the space's layer table and its block table (every block candidate timed as one model), then
`profile validate` both on the same --samples random networks, timed once (half fit each
calibration, the same half is held out). On the held-out networks, side by side: the raw layer sum,
the calibrated layer sum (a * raw + b), the raw and calibrated block sums, and a MACs-linear
predictor fitted on the same networks; for each the +-5 % and +-10 % hit-rates with Wilson 95 %
intervals and the RMSPE; and the wall times of profiling each table and of validating. The goal
(issue 13): >= 99 % of >= 100 held-out networks within +-10 %.
Nothing shipped is read: every table is measured here, into a temporary folder.
Run: python bench/latency_fidelity.py [--space tiny] [--samples 200] [--devices x86-cpu-onnxruntime,...]
     [--granularities layer,block]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from dna_deploy.io import write_json
from dna_deploy.latency.devices import load_device
from dna_deploy.latency.profiler import default_table_path, profile
from dna_deploy.latency.validate import validate_table
from dna_deploy.space import load_space

PREDICTORS = {"raw_sum": "layer raw", "calibrated": "layer cal.", "block_raw_sum": "block raw",
              "block_calibrated": "block cal.", "macs_linear": "MACs-linear"}


def _keep(files, keep: Path, stem: str) -> None:
    keep.mkdir(parents=True, exist_ok=True)
    for f in files:
        dst = keep / f"{stem}{''.join(f.suffixes)}"
        shutil.copyfile(f, dst.with_name(dst.name + ".tmp"))
        dst.with_name(dst.name + ".tmp").replace(dst)  # atomic: never a half-written table


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="tiny")
    ap.add_argument("--samples", type=int, default=200, help="networks measured; half are held out")
    ap.add_argument("--devices", default="x86-cpu-onnxruntime,x86-cpu-litert,x86-cpu-litert-int8")
    ap.add_argument("--granularities", default="layer,block", help="tables to profile: layer, block or both")
    ap.add_argument("--keep", type=Path, help="also copy the validated tables (and fidelity plots) into this folder")
    args = ap.parse_args()
    space = load_space(args.space)
    granularities = args.granularities.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.devices.split(","):
            dev = load_device(name)
            work = Path(tmp) / f"{name}.networks"  # one set of network timings for both tables
            row = {"device": name, "space": space.name}
            for g in granularities:
                out = Path(tmp) / (f"{name}.json" if g == "layer" else f"{name}__{g}s.json")
                t0 = time.perf_counter()
                table = profile(space, dev, out, show_progress=False, granularity=g)
                row[f"{g}_profile_s"], row[f"{g}_entries"] = time.perf_counter() - t0, len(table.entries)
                t0 = time.perf_counter()
                rep = validate_table(out, space, samples=args.samples, show_progress=False, work_dir=work,
                                     plot_path=out.with_suffix(".fidelity.png"))
                t_val = time.perf_counter() - t0
                row.setdefault("validate_s", t_val)  # the first validation times the networks; the second reuses them
                row.update(held_out=rep["held_out_networks"], statistic=rep["statistic"], networks=rep["networks"])
                row[f"{g}_calibration"] = rep["calibration"]
                prefix = "" if g == "layer" else f"{g}_"
                row[f"{prefix}raw_sum"], row[f"{prefix}calibrated"] = rep["raw_sum"], rep["calibrated"]
                row["macs_linear"] = rep["macs_linear"]
                if args.keep:
                    _keep([out, out.with_suffix(".fidelity.png")], args.keep,
                          default_table_path(dev, space, granularity=g).stem)  # the name `profile` gives it
                print(f"{name} ({g}s): {len(table.entries)} entries profiled in {row[f'{g}_profile_s']:.0f} s; "
                      f"validated in {t_val:.0f} s", flush=True)
            rows.append(row)
    print(f"\n{'device':22} {'predictor':12} {'+-5 % [95% CI]':>18} {'+-10 % [95% CI]':>19} {'RMSPE %':>8}")
    for r in rows:
        for k, label in PREDICTORS.items():
            if k not in r:
                continue
            v = r[k]
            c5, c10 = v["within_5pct_ci95"], v["within_10pct_ci95"]
            print(f"{r['device']:22} {label:12} {v['within_5pct']:5.0%} [{c5[0]:.0%}, {c5[1]:.0%}] "
                  f"{v['within_10pct']:6.0%} [{c10[0]:.0%}, {c10[1]:.0%}] {v['rmspe_pct']:8.2f}")
        walls = ", ".join(f"{g} table {r[f'{g}_profile_s']:.0f} s ({r[f'{g}_entries']} entries)" for g in granularities)
        if len(granularities) == 2:
            walls += f" ({r[f'{granularities[1]}_profile_s'] / r[f'{granularities[0]}_profile_s']:.1f}x)"
        print(f"{'':22} {r['held_out']} held out of {r['networks']}; profile: {walls}; validate {r['validate_s']:.0f} s")
    write_json(Path(__file__).parent / "results" / f"latency_fidelity_{space.name}.json", rows)


if __name__ == "__main__":
    main()
