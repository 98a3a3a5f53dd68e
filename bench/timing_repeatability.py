"""Does a network's measured latency repeat? The same networks timed twice, end to end, as
`profile validate` times them (rounds interleaved across networks, extra rounds while a network's
fastest round is unconfirmed), and each pass judged three ways from the same samples, each
protocol as an earlier version of the tool measured:
- pooled: the 10th percentile of its first `--rounds` rounds pooled;
- quiet_rounds: of its quiet rounds (runtimes/base.quiet_rounds) among the rounds it would have
  had when extra rounds stopped at the first two agreeing rounds, at most 4 extra;
- quiet_rounds_9: the same with at most 9 extra rounds: the control for the next, which may also
  take up to 9 (is it the probes, or only the extra rounds?);
- probed: of its quiet rounds among all its rounds, extra rounds having stopped at two agreeing
  rounds both timed while the machine's speed probe was quiet (runtimes/base.SpeedProbe), at most
  9 extra (today's protocol).
The first three are replayed on prefixes of the rounds the probed protocol took, so they share its
interleaving and spacing: they approximate the earlier protocols, on the same samples.
Prints the share of networks whose two passes agree within +-5 % and +-10 %, with Wilson 95 %
intervals. A predictor cannot beat the measurement's own repeatability: this is the ceiling for a
latency table's hit-rate on this machine.
Run: python bench/timing_repeatability.py [--device x86-cpu-onnxruntime] [--networks 200]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from dna_deploy.errors import DnaDeployError
from dna_deploy.host import host_description
from dna_deploy.io import write_json
from dna_deploy.latency.devices import load_device
from dna_deploy.latency.validate import measure_networks, sample_networks, wilson_interval
from dna_deploy.runtimes.base import TimingStats, confirmed, quiet_stats
from dna_deploy.space import load_space


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="x86-cpu-onnxruntime")
    ap.add_argument("--space", default="tiny")
    ap.add_argument("--networks", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3, help="base rounds per network per pass")
    ap.add_argument("--output", type=Path, help="results file [bench/results/timing_repeatability_<device>.json]")
    args = ap.parse_args()
    try:
        space, device = load_space(args.space), load_device(args.device)
    except DnaDeployError as e:  # an unknown device or space: one line, no traceback
        raise SystemExit(f"error: {e}") from None
    archs = sample_networks(space, args.networks, 0)
    keys = [str(a) for a in archs]
    passes, walls = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for p in range(2):  # the second pass reuses the built models, not the timings
            cache = Path(tmp) / f"pass{p}.json"
            t0 = time.perf_counter()
            measure_networks(space, device, archs, Path(tmp), rounds=args.rounds, cache_path=cache)
            walls.append(time.perf_counter() - t0)
            passes.append(json.loads(cache.read_text())["samples"])

    def agreement(stat) -> dict:
        a, b = (np.array([stat(rounds[k]) for k in keys]) for rounds in passes)
        rel = np.abs(b / a - 1)
        out = {}
        for pct in (5, 10):
            hits = int(np.sum(rel <= pct / 100))
            out[f"within_{pct}pct"], out[f"within_{pct}pct_ci95"] = hits / len(keys), wilson_interval(hits, len(keys))
        return out

    def unprobed_prefix(r: list, max_extra: int) -> list:  # where extra rounds without probes would have stopped
        n = args.rounds
        while n < min(len(r), args.rounds + max_extra) and not confirmed(r[:n]):
            n += 1
        return r[:n]

    protocols = {
        "pooled": agreement(lambda r: TimingStats.from_samples([v for rr in r[:args.rounds] for v in rr]).p10_ms),
        "quiet_rounds": agreement(lambda r: quiet_stats(unprobed_prefix(r, 4)).p10_ms),
        "quiet_rounds_9": agreement(lambda r: quiet_stats(unprobed_prefix(r, 9)).p10_ms),
        "probed": agreement(lambda r: quiet_stats(r).p10_ms),
    }
    mean_rounds = {"quiet_rounds": [float(np.mean([len(unprobed_prefix(p[k], 4)) for k in keys])) for p in passes],
                   "quiet_rounds_9": [float(np.mean([len(unprobed_prefix(p[k], 9)) for k in keys])) for p in passes],
                   "probed": [float(np.mean([len(p[k]) for k in keys])) for p in passes]}
    extra = [sum(len(r) - args.rounds for r in rounds.values()) for rounds in passes]
    print(f"{args.device}, {len(keys)} networks timed twice ({walls[0]:.0f} s and {walls[1]:.0f} s; "
          f"extra rounds {extra[0]} and {extra[1]})")
    for name, v in protocols.items():
        print(f"  {name:14} passes agree within +-5 %: {v['within_5pct']:.1%} "
              f"[{v['within_5pct_ci95'][0]:.1%}, {v['within_5pct_ci95'][1]:.1%}]; within +-10 %: "
              f"{v['within_10pct']:.1%} [{v['within_10pct_ci95'][0]:.1%}, {v['within_10pct_ci95'][1]:.1%}]"
              + (f"; mean rounds {mean_rounds[name][0]:.1f} and {mean_rounds[name][1]:.1f}" if name in mean_rounds else ""))
    write_json(args.output or Path(__file__).parent / "results" / f"timing_repeatability_{args.device}.json",
               {"device": args.device, "space": space.name, "networks": len(keys), "rounds": args.rounds,
                "host": host_description(), "pass_wall_s": walls, "extra_rounds": extra, "mean_rounds": mean_rounds, **protocols})


if __name__ == "__main__":
    main()
