"""Latency tables and network timings measured on a target reached from this host (targets/): the
op models and networks are built here (torch, the exporters), timed there, and every statistic is
computed here from the raw rounds with runtimes/base's functions, as for models timed locally.

The table records the target: meta.host is the target's identity read there (CPU model, flags hash,
cores, machine, OS), meta.versions its runtime's versions with this host's exporters, meta.target
the route. The host-identity rules (host.py, LatencyTable.foreign_reasons) then hold as for any
table: one from another target is never taken silently.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from dna_deploy import __version__
from dna_deploy.errors import DataError
from dna_deploy.io import exclusive_lock, read_json
from dna_deploy.latency.devices import DeviceSpec
from dna_deploy.latency.profiler import MANIFEST, TIMING_DEFAULTS, build_bundle, check_manifest
from dna_deploy.latency.table import STATISTIC, LatencyTable, refuse_shipped
from dna_deploy.runtimes.base import (
    MIN_ROUND_SPACING_S,
    PROBE_TOLERANCE,
    QUIET_TOLERANCE,
    SpeedProbe,
    confirmed,
    quiet_rounds,
    quiet_stats,
)


def runner_settings(*, rounds: int, runs_per_round: int, warmup_s: float, max_extra_rounds: int,
                    cv_threshold: float = float("inf"), warmup_runs: int = 2) -> dict:
    """The timing settings the target's runner follows (targets/runner.py), base.py's constants:
    as measure_bundle (warm-up of 3 runs and warmup_s per round, cv_threshold) for op models, as
    measure_networks (2 runs, no spread rule) for networks."""
    return {"rounds": rounds, "runs_per_round": runs_per_round, "warmup_s": warmup_s, "warmup_runs": warmup_runs,
            "max_extra_rounds": max_extra_rounds, "spacing_s": MIN_ROUND_SPACING_S,
            "quiet_tolerance": QUIET_TOLERANCE, "probe_tolerance": PROBE_TOLERANCE,
            "cv_threshold": cv_threshold if cv_threshold != float("inf") else 1e9}


def target_speed(results: dict) -> SpeedProbe:
    """The target's speed probe over one job: the fastest probe of every model timed there."""
    return SpeedProbe.resumed({k: r["probes"] for k, r in results.items()})


def profile_on_target(space, device: DeviceSpec, out_path: str | Path, target, *, work_dir=None,
                      show_progress: bool = True, force: bool = False, granularity: str = "layer",
                      rounds: int | None = None, runs_per_round: int = 20, cv_threshold: float = 0.05,
                      max_extra_rounds: int | None = None, warmup_s: float | None = None, resume: bool = True,
                      share: dict | None = None, **_ignored) -> LatencyTable:
    """Bundle here, time there (interleaved round by round as measure_bundle does, each round
    streamed back and kept for a resume), write the table here."""
    out_path = Path(out_path)
    refuse_shipped(out_path, force=force)
    work = Path(work_dir) if work_dir else out_path.with_name(out_path.stem + ".bundle")
    build_bundle(space, device, work, show_progress=show_progress, granularity=granularity, share=share)
    manifest = check_manifest(read_json(work / MANIFEST, what="bundle manifest"), str(work))
    entries = manifest["entries"]
    if any(e.get("file") is None for e in entries.values()):
        raise DataError(f"{device.runtime} op models are built from specs on the machine that times them: profile "
                        f"{target.url} on the target itself (dna-deploy profile bundle, then run-bundle there)")
    defaults = TIMING_DEFAULTS[manifest.get("granularity", "layer")]
    settings = runner_settings(rounds=rounds or defaults["rounds"], runs_per_round=runs_per_round,
                               warmup_s=defaults["warmup_s"] if warmup_s is None else warmup_s,
                               max_extra_rounds=defaults["max_extra_rounds"] if max_extra_rounds is None else max_extra_rounds,
                               cv_threshold=cv_threshold, warmup_runs=3)
    partial = out_path.with_name(out_path.name + ".target.jsonl")
    if not resume:
        partial.unlink(missing_ok=True)
    keys = sorted(entries)
    target.configure(device)
    with exclusive_lock(out_path, what="profile run"):
        results = target.time_models({k: work / entries[k]["file"] for k in keys}, runtime=device.runtime,
                                     threads=device.threads, op_resolver=device.op_resolver, settings=settings,
                                     partial=partial, show_progress=show_progress, label="op models")
        speed = target_speed(results)
        samples = {k: results[k]["rounds"] for k in keys}
        stats = {k: quiet_stats(v) for k, v in samples.items()}
        ident = target.identity()
        table = LatencyTable(
            meta={"space": manifest["space"], "space_fingerprint": manifest["space_fingerprint"],
                  "body_fingerprint": manifest.get("body_fingerprint"), "space_definition": manifest.get("space_definition"),
                  "device": device.to_dict(), "runtime": device.runtime,
                  "versions": target.runtime_versions(device.runtime, device.op_resolver),
                  "host": target.host_description(), "target": {**target.record(), "attempts": getattr(target, "attempts", 1)},
                  "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "tool_version": __version__,
                  "timing": {**settings, "order": "interleaved round by round on the target (targets/runner.py)",
                             "warmup": 1},
                  "speed_probe": {"fastest_ms": speed.fastest_ms if speed.fastest_ms < float("inf") else None,
                                  "loop": SpeedProbe.LOOP, "python": ident.get("python_build"), "node": ident.get("node")},
                  "granularity": manifest.get("granularity", "layer"), "statistic": STATISTIC,
                  "units": "milliseconds per inference of one batch"},
            entries={k: {**stats[k].to_dict(), "cv": round(stats[k].cv, 4), "rounds": len(samples[k]),
                         "rounds_kept": len(quiet_rounds(samples[k])),
                         "confirmed": confirmed(samples[k], results[k]["probes"], speed),
                         "input_shape": entries[k]["input_shape"]} for k in keys})
        table.save(out_path)
        partial.unlink(missing_ok=True)
    return table


def time_networks_on_target(target, device: DeviceSpec, artifacts: dict[str, Path], partial: Path, *, rounds: int,
                            runs_per_round: int, warmup_s: float, max_extra_rounds: int, statistic: str = STATISTIC,
                            show_progress: bool = True) -> tuple[dict[str, float], set[str], dict]:
    """Whole networks (validation's, verify's) timed on the target: (each one's `statistic` of its
    quiet rounds, the ones left unconfirmed, the raw results)."""
    settings = runner_settings(rounds=rounds, runs_per_round=runs_per_round, warmup_s=warmup_s,
                               max_extra_rounds=max_extra_rounds)
    target.configure(device)
    results = target.time_models(artifacts, runtime=device.runtime, threads=device.threads,
                                 op_resolver=device.op_resolver, settings=settings, partial=partial,
                                 show_progress=show_progress, label="networks")
    speed = target_speed(results)
    figures = {k: getattr(quiet_stats(r["rounds"]), statistic) for k, r in results.items()}
    unconfirmed = {k for k, r in results.items() if not confirmed(r["rounds"], r["probes"], speed)}
    return figures, unconfirmed, results
