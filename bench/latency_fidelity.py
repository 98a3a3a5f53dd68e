"""Latency-table fidelity per runtime: hit-rates (+-5 %, +-10 %) of the raw sum, the calibrated
prediction and a MACs-proportional predictor on the same held-out networks, and the wall time of
a full profile. Target: >= 99 % within +-10 % after calibration; each table in under 5 minutes.
Run: python bench/latency_fidelity.py [--space tiny] [--samples 40] [--runtimes onnxruntime,litert]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from dna_deploy.io import write_json
from dna_deploy.latency.devices import load_device
from dna_deploy.latency.profiler import profile
from dna_deploy.latency.validate import validate_table
from dna_deploy.space import load_space


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--space", default="tiny")
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--runtimes", default="onnxruntime,litert")
    args = ap.parse_args()
    space = load_space(args.space)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rt in args.runtimes.split(","):
            dev = load_device(f"x86-cpu-{rt}")
            out = Path(tmp) / f"{rt}.json"
            t0 = time.perf_counter()
            profile(space, dev, out, show_progress=False)
            t_profile = time.perf_counter() - t0
            t0 = time.perf_counter()
            rep = validate_table(out, space, samples=args.samples, show_progress=False)
            t_val = time.perf_counter() - t0
            row = {"runtime": rt, "space": space.name, "profile_s": t_profile, "validate_s": t_val,
                   "held_out": rep["held_out_networks"]}
            for k in ("raw_sum", "calibrated", "macs_linear"):
                row[k] = {m: rep[k][m] for m in ("within_5pct", "within_10pct", "rmspe_pct")}
            rows.append(row)
    print(f"{'runtime':12} {'predictor':12} {'+-5%':>6} {'+-10%':>6} {'RMSPE%':>7}   profile time")
    for r in rows:
        for k in ("raw_sum", "calibrated", "macs_linear"):
            v = r[k]
            print(f"{r['runtime']:12} {k:12} {v['within_5pct']:6.0%} {v['within_10pct']:6.0%} {v['rmspe_pct']:7.2f}   "
                  + (f"{r['profile_s']:.1f} s ({r['held_out']} held-out networks)" if k == "raw_sum" else ""))
        cal, mac = r["calibrated"]["rmspe_pct"], r["macs_linear"]["rmspe_pct"]
        print(f"{'':12} RMSPE ratio MACs-linear / calibrated table: {mac / cal:.1f}x")
    write_json(Path(__file__).parent / "results" / f"latency_fidelity_{space.name}.json", rows)


if __name__ == "__main__":
    main()
