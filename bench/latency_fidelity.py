"""Latency-table fidelity per runtime and precision, profiled and validated on this machine in one run.

For each device spec (default: ONNX Runtime fp32, LiteRT fp32, LiteRT full-integer int8): profile
the space's layer table, then `profile validate` it on --samples random networks (half fit the
calibration, half are held out). On the held-out networks, side by side: the raw layer sum, the
calibrated sum (a * raw + b) and a MACs-linear predictor fitted on the same networks; for each the
+-5 % and +-10 % hit-rates with Wilson 95 % intervals and the RMSPE; and the wall time of profiling
and of validating. The goal (issue 13): >= 99 % of >= 100 held-out networks within +-10 %.
Nothing shipped is read: every table is measured here, into a temporary folder.
Run: python bench/latency_fidelity.py [--space tiny] [--samples 200] [--devices x86-cpu-onnxruntime,...]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from dna_deploy.io import write_json
from dna_deploy.latency.devices import load_device
from dna_deploy.latency.profiler import profile
from dna_deploy.latency.validate import validate_table
from dna_deploy.space import load_space

PREDICTORS = ("raw_sum", "calibrated", "macs_linear")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="tiny")
    ap.add_argument("--samples", type=int, default=200, help="networks measured; half are held out")
    ap.add_argument("--devices", default="x86-cpu-onnxruntime,x86-cpu-litert,x86-cpu-litert-int8")
    ap.add_argument("--keep", type=Path, help="also copy the validated tables (and fidelity plots) into this folder")
    args = ap.parse_args()
    space = load_space(args.space)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.devices.split(","):
            dev = load_device(name)
            out = Path(tmp) / f"{name}.json"
            t0 = time.perf_counter()
            profile(space, dev, out, show_progress=False)
            t_profile = time.perf_counter() - t0
            t0 = time.perf_counter()
            rep = validate_table(out, space, samples=args.samples, show_progress=False,
                                 plot_path=out.with_suffix(".fidelity.png"))
            t_val = time.perf_counter() - t0
            row = {"device": name, "space": space.name, "profile_s": t_profile, "validate_s": t_val,
                   "held_out": rep["held_out_networks"], "statistic": rep["statistic"], "calibration": rep["calibration"]}
            row.update({k: rep[k] for k in PREDICTORS})
            rows.append(row)
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                for f in (out, out.with_suffix(".fidelity.png")):
                    dst = args.keep / f"{name}__{space.name}{''.join(f.suffixes)}"
                    shutil.copyfile(f, dst.with_name(dst.name + ".tmp"))
                    dst.with_name(dst.name + ".tmp").replace(dst)  # atomic: never a half-written table
            print(f"{name}: profiled in {t_profile:.0f} s, {rep['networks']} networks validated in {t_val:.0f} s", flush=True)
    print(f"\n{'device':22} {'predictor':12} {'+-5 % [95% CI]':>18} {'+-10 % [95% CI]':>19} {'RMSPE %':>8}")
    for r in rows:
        for k in PREDICTORS:
            v = r[k]
            c5, c10 = v["within_5pct_ci95"], v["within_10pct_ci95"]
            print(f"{r['device']:22} {k:12} {v['within_5pct']:5.0%} [{c5[0]:.0%}, {c5[1]:.0%}] "
                  f"{v['within_10pct']:6.0%} [{c10[0]:.0%}, {c10[1]:.0%}] {v['rmspe_pct']:8.2f}")
        print(f"{'':22} {r['held_out']} held out; profile {r['profile_s']:.0f} s, validate {r['validate_s']:.0f} s")
    write_json(Path(__file__).parent / "results" / f"latency_fidelity_{space.name}.json", rows)


if __name__ == "__main__":
    main()
