"""Does the speed probe know when the machine is slow? And which stopping rule for extra rounds
gets a network's fast-state latency, at what cost in rounds?

Collects probed rounds for `--seconds`: a random network of the space (ONNX Runtime) is warmed up,
the machine's speed is probed (runtimes/base.SpeedProbe), 15 runs are timed, and the machine probed
again. Each network's fast-state latency is taken as the second-lowest 10th percentile of all its
rounds. Then the stopping rules are replayed on random time-ordered subsets of each network's
rounds: a fixed number of rounds, extra rounds until two quiet rounds agree (runtimes/base.confirmed
without probes), and until two quiet rounds with quiet probes agree (with probes). Prints the
probe's correlation with the rounds' slowdown and, per rule, the mean rounds taken and the share
of figures within +-5 / +-7 / +-10 % of the fast-state latency.
The probe tolerance (how far above the fastest probe a round counts as slowed) is replayed at
the default and at tighter settings.
Run: python bench/speed_probe.py [--seconds 240] [--networks 24] [--rows rounds.json | --replay rounds.json]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from dna_deploy.host import host_description
from dna_deploy.io import read_json, write_json
from dna_deploy.latency.validate import sample_networks
from dna_deploy.runtimes.base import PROBE_TOLERANCE, SpeedProbe, confirmed, quiet_stats
from dna_deploy.space import load_space


def collect(space, n_networks: int, seconds: float) -> list[dict]:
    import torch

    from dna_deploy.nn.builder import build_network
    from dna_deploy.runtimes.onnxruntime import OnnxRuntimeRunner

    x = torch.randn(1, space.in_channels, space.input_size, space.input_size, generator=torch.Generator().manual_seed(0))
    speed, rows, rng = SpeedProbe(), [], random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        runners = [OnnxRuntimeRunner(OnnxRuntimeRunner.prepare_artifact(build_network(space, a).eval(), x, Path(tmp),
                                                                         name=f"net{i}")).activate()
                   for i, a in enumerate(sample_networks(space, n_networks, 0))]
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                k = rng.randrange(len(runners))
                samples, probe = runners[k].time_round(x.numpy(), speed, warmup=2, runs=15)
                rows.append({"network": k, "samples": samples, "probe_ms": probe})
        finally:
            for r in runners:
                r.close()
    return rows


def replay(rows: list[dict], trials: int, seed: int = 1) -> dict:
    by: dict[int, list[dict]] = {}
    for r in rows:
        by.setdefault(r["network"], []).append(r)
    by = {k: v for k, v in by.items() if len(v) >= 16}
    truth = {k: sorted(np.percentile(r["samples"], 10) for r in v)[1] for k, v in by.items()}
    speed = SpeedProbe.resumed([[r["probe_ms"] for r in rows]])

    def stop_when(rule, base: int, max_extra: int):
        def run(seq):
            for n in range(base, min(len(seq), base + max_extra) + 1):
                if rule(seq[:n]):
                    return seq[:n]
            return seq[:base + max_extra]
        return run

    unprobed = lambda s: confirmed([r["samples"] for r in s])  # noqa: E731

    def probed(tolerance: float):
        at = SpeedProbe(speed.fastest_ms, tolerance=tolerance)
        return lambda s: confirmed([r["samples"] for r in s], [r["probe_ms"] for r in s], at)

    rules = {"fixed 3": stop_when(lambda s: True, 3, 0), "fixed 6": stop_when(lambda s: True, 6, 0),
             "fixed 9": stop_when(lambda s: True, 9, 0), "fixed 12": stop_when(lambda s: True, 12, 0),
             "confirmed, 3 + up to 4": stop_when(unprobed, 3, 4), "confirmed, 3 + up to 9": stop_when(unprobed, 3, 9),
             f"probed {PROBE_TOLERANCE:.0%}, 3 + up to 9 (validate)": stop_when(probed(PROBE_TOLERANCE), 3, 9),
             f"probed {PROBE_TOLERANCE:.0%}, 5 + up to 6 (layer table)": stop_when(probed(PROBE_TOLERANCE), 5, 6)}
    for tolerance in (0.10, 0.07):
        rules[f"probed {tolerance:.0%}, 3 + up to 9"] = stop_when(probed(tolerance), 3, 9)
    rng = random.Random(seed)
    out = {}
    for name, rule in rules.items():
        errors, used = [], []
        for _ in range(trials):
            k = rng.choice(sorted(by))
            seq = [by[k][i] for i in sorted(rng.sample(range(len(by[k])), 16))]  # time order kept
            taken = rule(seq)
            used.append(len(taken))
            errors.append(abs(quiet_stats([r["samples"] for r in taken]).p10_ms / truth[k] - 1))
        e = np.asarray(errors)
        out[name] = {"mean_rounds": float(np.mean(used)),
                     **{f"within_{p}pct": float(np.mean(e <= p / 100)) for p in (5, 7, 10)}}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="tiny")
    ap.add_argument("--networks", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=240)
    ap.add_argument("--trials", type=int, default=4000)
    ap.add_argument("--output", type=Path, help="results file [bench/results/speed_probe.json]")
    ap.add_argument("--rows", type=Path, help="also write the probed rounds here (for --replay)")
    ap.add_argument("--replay", type=Path, help="replay the rules on rounds written by --rows instead of collecting")
    args = ap.parse_args()
    if args.replay:
        saved = read_json(args.replay, what="probed rounds")
        rows, host = saved["rows"], saved["host"]
    else:
        rows, host = collect(load_space(args.space), args.networks, args.seconds), host_description()
        if args.rows:
            write_json(args.rows, {"space": args.space, "host": host, "rows": rows})
    fastest = {}
    for r in rows:
        fastest[r["network"]] = min(fastest.get(r["network"], np.inf), np.percentile(r["samples"], 10))
    slowdown = np.array([np.percentile(r["samples"], 10) / fastest[r["network"]] for r in rows])
    probe = np.array([r["probe_ms"] for r in rows])
    probe_slowdown = probe / probe.min()
    corr = float(np.corrcoef(slowdown, probe_slowdown)[0, 1])
    print(f"{len(rows)} rounds of {len(fastest)} networks; rounds slowed > 10 %: {np.mean(slowdown > 1.1):.0%}; "
          f"probe vs round slowdown correlation {corr:.2f}")
    results = replay(rows, args.trials)
    for name, v in results.items():
        print(f"  {name:38} rounds {v['mean_rounds']:4.1f}  within +-5 %: {v['within_5pct']:.1%}  +-7 %: "
              f"{v['within_7pct']:.1%}  +-10 %: {v['within_10pct']:.1%}")
    write_json(args.output or Path(__file__).parent / "results" / "speed_probe.json",
               {"space": args.space, "host": host, "rounds": len(rows), "networks": len(fastest),
                "share_slowed_over_10pct": float(np.mean(slowdown > 1.1)), "probe_correlation": corr,
                "rules": results})


if __name__ == "__main__":
    main()
