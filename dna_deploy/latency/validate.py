"""Fidelity of a latency table: predicted vs measured latency of whole networks on the same runtime.

Random networks are measured end to end; the correction a * raw_sum + b is fitted (to relative
error) on one part and
judged on the held-out rest (RMSE, RMSPE, share within +-5 % / +-10 %), next to the raw sum and a
MACs-proportional predictor fitted on the same part.
"""

from __future__ import annotations

import datetime as _dt
import random
import time
from pathlib import Path

import numpy as np

from dna_deploy.errors import DataError, TableError
from dna_deploy.io import exclusive_lock, fingerprint, read_json, write_json
from dna_deploy.latency.devices import DeviceSpec
from dna_deploy.latency.table import STATISTIC, LatencyTable, is_shipped
from dna_deploy.outputs import check_output
from dna_deploy.progress import progress_bar
from dna_deploy.runtimes import require_runtime
from dna_deploy.runtimes.base import (
    PROBE_TOLERANCE,
    QUIET_TOLERANCE,
    WARMUP_S,
    SpeedProbe,
    confirmed,
    quiet_stats,
    wait_for_spacing,
)
from dna_deploy.space import SearchSpace

# Extra rounds a network may get while unconfirmed (runtimes/base.confirmed). On a quiet machine
# none are taken. On a 2-core EPYC slowed most of the time (2026-12-01, bench/latency_fidelity.py,
# 100 of 200 LiteRT networks held out): with up to 9, 61-83 of the held-out networks stayed
# unconfirmed and every miss was one of them (fp32 98 %, int8 95 % within +-10 %); with up to 30,
# 25-32 stayed unconfirmed and none missed (100 % [96, 100] both), validation taking 1.8x longer.
MAX_EXTRA_ROUNDS = 30


def wilson_interval(hits: int, n: int, z: float = 1.96) -> list[float]:
    """95 % Wilson score interval of a hit-rate: honest at small n and at rates near 0 or 1, where
    the normal approximation claims [1, 1] for 50 hits out of 50."""
    if n == 0:
        return [0.0, 1.0]
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def prediction_bounds(errors, coverage: float = 0.9) -> tuple[float, float, float]:
    """Bounds that one more network's error falls between with probability `coverage`, from n
    held-out errors and nothing else (split-conformal order statistics: the k-th smallest with
    k = floor((n+1) a/2) and ceil((n+1)(1 - a/2))). Sample quantiles are too narrow at small n: 8
    held-out networks' 5th-95th percentiles missed two of three deployed networks in a quickstart.
    Below 19 errors no order statistic reaches 90 %: the extremes are returned, with the coverage
    they do have, (n-1)/(n+1). Returns (low, high, coverage)."""
    e = np.sort(np.asarray(errors, float))
    n, alpha = e.size, 1 - coverage
    # 1e-9: (n+1) * 0.05 is a whole number for n = 19, 39, ..., and 1 - 0.9 is a little under 0.1
    lo = max(1, int(np.floor((n + 1) * alpha / 2 + 1e-9)))
    hi = min(n, int(np.ceil((n + 1) * (1 - alpha / 2) - 1e-9)))
    return float(e[lo - 1]), float(e[hi - 1]), (hi - lo) / (n + 1)


def fidelity_metrics(predicted, measured) -> dict:
    """Hit-rates within +-5 % / +-10 % with Wilson intervals, RMSE, RMSPE, and the relative error
    (predicted - measured) / measured that a budget's interval is drawn from (LatencyTable.interval):
    its median and the bounds of a 90 % prediction interval (q05, q95; `coverage` says what they
    cover when too few networks were held out for 90 %)."""
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    rel = (p - m) / m
    hit5, hit10 = int(np.sum(np.abs(rel) <= 0.05)), int(np.sum(np.abs(rel) <= 0.10))
    lo, hi, coverage = prediction_bounds(rel)
    return {"n": int(m.size), "rmse_ms": float(np.sqrt(np.mean((p - m) ** 2))),
            "rmspe_pct": float(100 * np.sqrt(np.mean(rel ** 2))),
            "within_5pct": hit5 / m.size, "within_5pct_ci95": wilson_interval(hit5, m.size),
            "within_10pct": hit10 / m.size, "within_10pct_ci95": wilson_interval(hit10, m.size),
            "rel_error_quantiles": {"q05": lo, "q50": float(np.median(rel)), "q95": hi, "coverage": coverage}}


def fit_linear(x, y) -> tuple[float, float]:
    """y ~ a * x + b minimising the *relative* residuals (weights 1 / y), the quantity the ±10 %
    hit-rate judges. Plain least squares lets the largest networks set the line and leaves small
    ones 20-30 % off (LiteRT int8, tiny: 65 % within ±10 % held out, against 90 % fitted this way)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    a, b = np.polyfit(x, y, 1, w=1 / np.maximum(y, 1e-12))
    return float(a), float(b)


def sample_networks(space: SearchSpace, n: int, seed: int) -> list:
    """n distinct networks: smallest and largest plus uniform random ones (spread over the range)."""
    rng = random.Random(seed)
    archs = {str(space.smallest_arch()): space.smallest_arch(), str(space.largest_arch()): space.largest_arch()}
    tries = 0
    while len(archs) < n and tries < 100 * n:
        a = space.sample(rng)
        archs.setdefault(str(a), a)
        tries += 1
    return list(archs.values())[:max(n, 2)]


def measure_networks(space: SearchSpace, device: DeviceSpec, archs: list, work_dir: Path, *, rounds: int = 3,
                     runs_per_round: int = 15, warmup: int = 10, show_progress: bool = True, warmup_s: float = WARMUP_S,
                     cache_path: Path | None = None, statistic: str = STATISTIC,
                     max_extra_rounds: int = MAX_EXTRA_ROUNDS,
                     fastest_probe_ms: float = float("inf"), target=None,
                     share: dict | None = None) -> tuple[dict[str, float], set[str]]:
    """End-to-end latency of each network: `statistic` of the timed runs of its quiet rounds
    (runtimes/base.quiet_rounds), rounds interleaved across networks so that they are spread over
    time. A network whose fastest round is not backed by a second one, both timed while the
    machine's speed probe was quiet (runtimes/base.confirmed), gets extra rounds (at most
    max_extra_rounds), interleaved among those networks, each at least MIN_ROUND_SPACING_S after
    the network's previous round.
    The raw timings and probes are cached for resume. Returns (each network's figure, the networks
    left unconfirmed when their extra rounds ran out: the machine was slowed through all of them,
    so their figure may be high), both judged from the cached probes, as a resumed run would.
    Network models are built in parallel processes where the runtime's conversion is slow, and a
    resumed run reuses the ones already built (recorded in work_dir/artifacts.json).
    `fastest_probe_ms`: the machine's fastest speed probe known beforehand (the table's, when it
    was profiled here), so that networks timed before this run sees full speed are judged by it.
    A remote `target` (targets/): the networks are built here and timed there, one after another
    (latency/on_target.time_networks_on_target), resumed from work_dir's target.jsonl."""
    import torch

    from dna_deploy.latency.artifacts import build_artifacts, network_job, share_conversions
    from dna_deploy.nn.builder import build_network

    remote = target is not None and not target.is_local
    if remote:
        from dna_deploy.runtimes import runner_class

        cls = runner_class(device.runtime)  # the runtime runs there; here only its converter
        if not cls.artifact_suffix:
            raise DataError(f"{device.runtime} networks are built on the machine that times them: validate on "
                            f"{target.url} itself")
    else:
        cls = require_runtime(device.runtime, device.device)
    cache = {}
    run_id = fingerprint({"device": device.to_dict(), "space": space.fingerprint, "rounds": rounds, "runs": runs_per_round,
                          "warmup_s": warmup_s, "quiet_tolerance": QUIET_TOLERANCE,
                          "probe_tolerance": PROBE_TOLERANCE, "max_extra_rounds": max_extra_rounds})  # cached per round
    probes: dict[str, list[float]] = {}  # each round's speed probe (runtimes/base.SpeedProbe), beside its samples
    if cache_path is not None and cache_path.is_file():
        c = read_json(cache_path, what="measurement cache")
        if c.get("run_id") == run_id:
            cache, probes = c["samples"], c["probes"]
    speed = SpeedProbe.resumed(probes)
    speed.fastest_ms = min(speed.fastest_ms, fastest_probe_ms)

    def wanted(key: str) -> bool:
        measured_rounds = cache.get(key, [])
        return len(measured_rounds) < rounds or (not confirmed(measured_rounds, probes.get(key), speed)
                                                  and len(measured_rounds) < rounds + max_extra_rounds)

    todo = list(archs) if remote else [a for a in archs if wanted(str(a))]  # a target keeps its own resume file
    # models are reused only when what shapes them is unchanged (not the timing settings)
    from dna_deploy import __version__
    from dna_deploy.host import runtime_versions

    model_id = fingerprint({"runtime": device.runtime, "precision": device.precision, "batch": device.batch,
                            "space": space.fingerprint, "tool": __version__,
                            "versions": runtime_versions(device.runtime, device.op_resolver)})
    built_path = work_dir / "artifacts.json"
    built = read_json(built_path, what="artifact list") if built_path.is_file() else {}
    built = {k: v for k, v in built.items() if k.startswith(model_id + ":") and Path(v).exists()}
    runners = {}
    try:
        with progress_bar(show_progress) as bar:
            task = bar.task(f"networks end to end ({device.runtime})", len(todo) * (rounds + 1))
            x = torch.randn(device.batch, space.in_channels, space.input_size, space.input_size,
                            generator=torch.Generator().manual_seed(0))
            if cls.artifact_suffix:  # files: built here or in workers, recorded for a resume
                def done(key, path):
                    built[f"{model_id}:{key}"] = str(Path(path).resolve())
                    write_json(built_path, built)
                    bar.advance(task)

                jobs = [(str(a), share_conversions(network_job(
                    space.to_dict(), str(a), device.batch, runtime=device.runtime, precision=device.precision,
                    work_dir=work_dir, name=f"net-{fingerprint(str(a))[:12]}", op_resolver=device.op_resolver), share))
                        for a in todo if f"{model_id}:{a}" not in built]
                bar.advance(task, len(todo) - len(jobs))
                build_artifacts(jobs, slow=cls.slow_to_prepare, on_done=done)
            torch.manual_seed(0)
            for a in ([] if remote else todo):  # a remote target times them after this (below)
                if cls.artifact_suffix:
                    art = built[f"{model_id}:{a}"]
                else:  # torch: the module itself
                    art = cls.prepare_artifact(build_network(space, a).eval(), x, work_dir, name="net",
                                               precision=device.precision)
                    bar.advance(task)
                runners[str(a)] = (cls(art, threads=device.threads, device=device.device, precision=device.precision,
                                       input_shape=tuple(x.shape), op_resolver=device.op_resolver).activate(),
                                   x.numpy())
                # first runs only (lazy initialisation): every timed batch below warms up for warmup_s
                runners[str(a)][0].time(x.numpy(), warmup=warmup, runs=1, warmup_s=0.0)
                cache.setdefault(str(a), [])
                probes.setdefault(str(a), [])
            rng = random.Random(0)
            last_round_end: dict[str, float] = {}
            total = len(todo) * (rounds + 1)
            while not remote:  # one round of every network still short of `rounds`, then extra rounds
                order = [k for k in runners if len(cache[k]) < rounds]
                if not order:
                    order = [k for k in runners if wanted(k)]
                    if not order:
                        break
                    total += len(order)
                    bar.update(task, total=total)
                rng.shuffle(order)
                for k in order:
                    r, x = runners[k]
                    if len(cache[k]) >= rounds:  # an extra round: not in the same slow phase as the last
                        wait_for_spacing(last_round_end.get(k))
                    samples, probe = r.time_round(x, speed, warmup=2, runs=runs_per_round, warmup_s=warmup_s)
                    last_round_end[k] = time.monotonic()
                    cache[k].append(samples)
                    probes[k].append(probe)
                    bar.advance(task)
                if cache_path is not None:
                    write_json(cache_path, {"run_id": run_id, "samples": cache, "probes": probes})
    finally:
        for r, _ in runners.values():
            r.close()
    if remote:
        return _measure_on_target(target, device, {str(a): Path(built[f"{model_id}:{a}"]) for a in archs}, work_dir,
                                  rounds=rounds, runs_per_round=runs_per_round, warmup_s=warmup_s,
                                  max_extra_rounds=max_extra_rounds, statistic=statistic, show_progress=show_progress)
    recorded = SpeedProbe.resumed(probes)
    recorded.fastest_ms = min(recorded.fastest_ms, fastest_probe_ms)
    unconfirmed = {str(a) for a in archs if not confirmed(cache[str(a)], probes[str(a)], recorded)}
    return {str(a): getattr(quiet_stats(cache[str(a)]), statistic) for a in archs}, unconfirmed


def _measure_on_target(target, device, artifacts, work_dir, **timing) -> tuple[dict[str, float], set[str]]:
    from dna_deploy.latency.on_target import time_networks_on_target

    figures, unconfirmed, _ = time_networks_on_target(target, device, artifacts, work_dir / "target.jsonl", **timing)
    return figures, unconfirmed


def calibrated_table_path(table_path: str | Path, *, output: str | Path | None = None, force: bool = False,
                          target=None) -> Path:
    """Where validation stores the calibration: the table itself when it was measured on this host
    and is the user's own; a new file for a shipped table or one measured elsewhere, and only when
    asked (-o, or --force to write `<table>.<this host>.json` beside it). A table's op timings and
    its calibration must come from the same machine, or the correction mixes two machines."""
    from dna_deploy.host import host_description

    table_path = Path(table_path)
    if output is not None:
        return Path(output)
    table = LatencyTable.load(table_path)
    reasons = table.foreign_reasons(target)
    shipped = is_shipped(table_path)
    if not reasons and not shipped:
        return table_path
    why = ("it ships with dna-deploy and is never rewritten" if not reasons else
           "it was measured on another host or runtime (" + "; ".join(reasons[:2]) + ")")
    tag = f"{host_description()['cpu_flags_sha256'][:8]}"
    beside = table_path.with_name(f"{table_path.stem}.{tag}.json")
    if not force:
        raise TableError(f"not calibrating {table_path} in place: {why}. Profile this machine instead "
                         f"(dna-deploy profile --device {table.name} -o my_table.json), or pass -o NEW.json or --force "
                         f"to calibrate a copy ({beside.name})")
    return beside


def validate_table(table_path: str | Path, space: SearchSpace, *, samples: int = 40, holdout: float = 0.5,
                   held_out: int | None = None,
                   seed: int = 0, plot_path: str | Path | None = None, work_dir: str | Path | None = None,
                   show_progress: bool = True, rounds: int = 3, runs_per_round: int = 15, resume: bool = True,
                   output: str | Path | None = None, force: bool = False, warmup_s: float = WARMUP_S,
                   max_extra_rounds: int = MAX_EXTRA_ROUNDS, target=None, share: dict | None = None) -> dict:
    """Measure `samples` networks, fit the calibration on 1 - holdout of them (or on all but
    `held_out`), report on the rest,
    and store calibration + fidelity (atomically) in the table, or in a copy (calibrated_table_path).
    A remote `target` (targets/): the networks are timed there, and the table is held to that
    target's identity instead of this machine's."""
    from dna_deploy.host import host_description, runtime_versions
    from dna_deploy.nn.builder import network_costs

    if samples < 6:
        raise DataError("--samples must be at least 6 (some to fit the correction, some held out to judge it)")
    if held_out is not None and not 2 <= held_out <= samples - 4:
        raise DataError(f"--held-out must lie from 2 to --samples - 4 ({samples - 4}: at least 4 networks fit the "
                        f"correction), got {held_out}")
    table = LatencyTable.load(table_path)
    table.check_space(space)
    dest = calibrated_table_path(table_path, output=output, force=force, target=target)
    missing = table.missing_entries(space)
    if missing:
        raise DataError(f"latency table lacks {len(missing)} entries ({', '.join(missing[:3])} ...); re-profile it")
    device = DeviceSpec.from_dict(table.meta["device"])
    work = Path(work_dir) if work_dir else dest.with_name(dest.stem + ".validate")
    beside = force and output is None  # --force: a calibrated copy beside a shipped table, on purpose
    in_place = Path(dest).resolve() == Path(table_path).resolve()  # a table of this host: its entries are kept
    check_output(dest, kind="latency-table", inputs=[] if in_place else [table_path], allow_shipped=beside,
                 what="calibrated table")
    check_output(work, kind="validate-work", inputs=[table_path], allow_shipped=beside, what="validation work folder")
    with exclusive_lock(work, what="profile validate"):  # its measurements and the table: one writer at a time
        work.mkdir(parents=True, exist_ok=True)
        if not resume:
            (work / "measurements.json").unlink(missing_ok=True)
            (work / "artifacts.json").unlink(missing_ok=True)
        archs = sample_networks(space, samples, seed)
        if held_out is not None and held_out > len(archs) - 4:
            raise DataError(f"space {space.name!r} has only {len(archs)} distinct networks to sample, too few to hold out "
                            f"{held_out} and fit on 4 or more: lower --held-out")
        measured, unconfirmed = measure_networks(space, device, archs, work, rounds=rounds, runs_per_round=runs_per_round,
                                                 warmup_s=warmup_s, show_progress=show_progress,
                                                 cache_path=work / "measurements.json", statistic=table.statistic,
                                                 max_extra_rounds=max_extra_rounds,
                                                 fastest_probe_ms=SpeedProbe.seeded([table.speed_probe_here()]).fastest_ms,
                                                 share=share)
        raw = {str(a): table.raw_ms(space, a) for a in archs}
        macs = {str(a): network_costs(space, a)["macs"] for a in archs}
        names = [str(a) for a in archs]
        rng = random.Random(seed + 1)
        order = names[2:]
        rng.shuffle(order)
        n_fit = max(2, (len(names) - held_out if held_out is not None else round(len(names) * (1 - holdout))) - 2)
        fit = names[:2] + order[:n_fit]  # the extremes anchor the fit; the judged networks are never fitted
        held = order[n_fit:]
        a, b = fit_linear([raw[k] for k in fit], [measured[k] for k in fit])
        if a <= 0:
            raise DataError("the fitted correction has a non-positive slope: the table does not track whole networks "
                            "on this machine (too noisy?); re-profile with more rounds")
        c, d = fit_linear([macs[k] for k in fit], [measured[k] for k in fit])
        m_held = [measured[k] for k in held]
        # the held-out networks whose figure two quiet rounds with quiet probes backed: on a machine
        # slowed most of the time (2026-12-01, bench/latency_fidelity.py) every calibrated miss of
        # LiteRT fp32 and int8 was an unconfirmed network measured 10-22 % slow, so this is the
        # table's fidelity where the measurement can judge it; the figures above count every network
        sure = [k for k in held if k not in unconfirmed]
        report = {
            "networks": len(names), "fit_networks": len(fit), "held_out_networks": len(held),
            "unconfirmed_networks": len(unconfirmed), "unconfirmed_held_out": len(unconfirmed.intersection(held)),
            "raw_sum": fidelity_metrics([raw[k] for k in held], m_held),
            "calibrated": fidelity_metrics([a * raw[k] + b for k in held], m_held),
            "macs_linear": fidelity_metrics([c * macs[k] + d for k in held], m_held),
            "calibrated_confirmed": (fidelity_metrics([a * raw[k] + b for k in sure], [measured[k] for k in sure])
                                     if sure else None),
            "calibration": {"a": a, "b": b},
            "measured_range_ms": [min(measured.values()), max(measured.values())], "statistic": table.statistic,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        # the calibration names the host and runtime versions whose whole-network timings it was fitted on
        table.calibration = {"a": a, "b": b, "model": "measured_ms = a * raw_sum_ms + b", "fit_networks": len(fit),
                             "host": host_description(device.device),
                             "versions": runtime_versions(device.runtime, device.op_resolver)}
        table.fidelity = {k: report[k] for k in ("networks", "held_out_networks", "unconfirmed_held_out", "raw_sum",
                                                 "calibrated", "calibrated_confirmed", "macs_linear", "statistic",
                                                 "date")}
        table.save(dest)
        report["table"] = str(dest)
        write_json(work / "networks.json", [{"arch": k, "measured_ms": measured[k], "raw_sum_ms": raw[k], "macs": macs[k],
                                             "held_out": k in held, "confirmed": k not in unconfirmed} for k in names])
        if plot_path is not None:
            plot_fidelity(plot_path, table, [raw[k] for k in names], [measured[k] for k in names], [k in held for k in names])
            report["plot"] = str(plot_path)
        return report


def plot_fidelity(path, table: LatencyTable, raw, measured, held) -> Path:
    from dna_deploy.display import new_figure, save_figure

    raw, measured, held = np.asarray(raw), np.asarray(measured), np.asarray(held)
    cal = np.array([table.calibrate(r) for r in raw])
    fig, ax = new_figure((5.5, 5))
    lo, hi = min(raw.min(), measured.min(), cal.min()) * 0.9, max(raw.max(), measured.max(), cal.max()) * 1.1
    xs = np.linspace(lo, hi, 10)
    ax.plot(xs, xs, "k-", lw=1, label="ideal")
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="0.9", label="+-10 %")
    ax.scatter(measured[held], raw[held], s=16, marker="x", c="tab:orange", label="raw sum (held out)")
    ax.scatter(measured[held], cal[held], s=18, c="tab:blue", label="calibrated (held out)")
    ax.scatter(measured[~held], cal[~held], s=18, facecolors="none", edgecolors="tab:blue", label="calibrated (fit)")
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(f"{table.name}: {table.meta.get('space')}")
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=120)
