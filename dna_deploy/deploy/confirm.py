"""The search's best candidates confirmed on the target: built, exported as they will ship, timed.

A latency table predicts, and the host's speed moves between profiling and deployment (issue 34:
on a 2-core Xeon, tables validated within +-10 % minutes before; the deployed network measured 18 %
over its ONNX Runtime budget). So K candidates under the budgets are built with
random weights (latency does not depend on them), exported as `dna-deploy export` exports them
(deploy/export.export_model: the same graph rewrites for LiteRT's kernels) and timed on each
budgeted runtime, all in turn, with verify's timing (deploy/verify.time_interleaved: the same
warm-up, the same statistic, the same speed probe, seeded from the tables profiled here). The
candidates are the best under the budgets and under rungs below them (select/search.confirmation_ladder).
The best-rated candidate clearly within every budget ships: every quiet round's statistic within it
(the noise band's upper end), so that verify, measuring again minutes later, finds it within too.
When none is clearly within, the best-rated one whose measured statistic is within ships, and `why`
says it is within the noise of a budget.

What was timed is saved in WORK/timings.json after every pass: a resumed confirmation (a pipeline
run again, a larger K) never times again a candidate it finished timing on this host and runtime.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import numpy as np

from dna_deploy.errors import DataError
from dna_deploy.io import fingerprint, read_json, write_json

FORMAT = "dna-deploy-confirm/1"
EXPORTED = {"onnxruntime": "onnx", "litert": "tflite", "tensorrt": "tensorrt"}  # runtime -> export target
CHEAP_RUNTIMES = ("onnxruntime", "litert")  # on a CPU: seconds per candidate to time (LiteRT: ~20 s to convert)
PIPELINE_CONFIRM_TOP = 4  # the pipeline's default where timing is cheap (settings.SearchSettings.confirm_top)


def budgeted_devices(tables: list, budgets_ms: list) -> list[tuple]:
    """(table, budget) of each budgeted table."""
    return [(t, float(b)) for t, b in zip(tables, budgets_ms) if b is not None]


def cheap_here(tables: list, budgets_ms: list) -> str | None:
    """None when every budgeted table describes a CPU runtime of this machine, cheap to time here;
    else why confirmation is not turned on by default."""
    budgeted = budgeted_devices(tables, budgets_ms)
    if not budgeted:
        return "no device has a latency budget"
    for t, _ in budgeted:
        device = t.meta.get("device", {})
        if t.meta.get("runtime") not in CHEAP_RUNTIMES or device.get("device", "cpu") != "cpu":
            return f"{t.name} runs {t.meta.get('runtime')} on {device.get('device', 'cpu')}, not a CPU runtime"
        foreign = t.foreign_reasons()
        if foreign:
            return f"{t.name}'s table describes another machine ({foreign[0]})"
    return None


def device_of(table) -> dict:
    """What confirmation needs of a table's device: runtime, precision, threads, kernels."""
    d = table.meta["device"]
    runtime = table.meta.get("runtime", d.get("runtime"))
    if runtime not in EXPORTED:
        raise DataError(f"confirmation times exported networks, but {table.name} runs {runtime}: "
                        f"confirm only {', '.join(EXPORTED)} devices (leave confirm_top at 0 here)")
    resolver = (d.get("op_resolver") or "xnnpack") if runtime == "litert" else None
    return {"name": table.name, "runtime": runtime, "precision": d.get("precision", "fp32"),
            "threads": int(d.get("threads", 1)), "op_resolver": resolver}


def _context(table, device: dict) -> str:
    """What a timing depends on besides the network: this host, the device spec, the runtime's versions."""
    from dna_deploy.host import host_description, runtime_versions

    return fingerprint({"host": host_description(), "device": table.meta["device"],
                        "versions": runtime_versions(device["runtime"], device["op_resolver"])})


def _load_cache(work: Path) -> dict:
    path = work / "timings.json"
    if not path.is_file():
        if work.exists() and any(work.iterdir()):
            raise DataError(f"refusing to use {work} for the search's confirmation: it exists, holds files and no "
                            "timings.json of ours; remove it or choose another folder")
        return {}
    d = read_json(path, what="confirmation timings")
    if not isinstance(d, dict) or d.get("format") != FORMAT or not isinstance(d.get("timings"), dict):
        raise DataError(f"{path} is not a dna-deploy confirmation record ({FORMAT}); remove it or choose another folder")
    return d["timings"]


def confirm_candidates(space, rows: list[dict], tables: list, budgets_ms: list, *, top: int, work_dir,
                       show_progress: bool = True, log=None) -> dict:
    """Time the first `top` of `rows` (search results, best rating first, all within the predicted
    budgets) on every budgeted table's runtime here and pick the best-rated one measured within
    every budget. Returns the confirmation record (search.json's `confirmation`): per candidate its
    prediction, measurement (the statistic the table sums, with the noise band of its quiet rounds)
    and verdict; `shipped` (its rank by rating, or None) and `why`, in words."""
    from dna_deploy.deploy.verify import _Timing, round_band, time_interleaved
    from dna_deploy.progress import progress_bar
    from dna_deploy.runtimes.base import MODEL_MAX_EXTRA_ROUNDS, MODEL_ROUNDS, SpeedProbe, confirmed, quiet_stats

    t0 = time.perf_counter()
    budgeted = budgeted_devices(tables, budgets_ms)
    if not budgeted:
        raise DataError("confirmation needs a latency budget (--budget-ms) to hold the candidates to")
    for t, _ in budgeted:
        foreign = t.foreign_reasons()
        if foreign:
            raise DataError(f"confirmation times the candidates on this machine, but {t.name}'s table describes "
                            f"another ({'; '.join(foreign[:2])}): profile {t.name} here, or search without confirmation")
    devices = [(device_of(t), t, b) for t, b in budgeted]
    work = Path(work_dir)
    cache = _load_cache(work)
    if not (work / "timings.json").is_file():  # ours from the start: a kill before the first pass leaves it resumable
        work.mkdir(parents=True, exist_ok=True)
        write_json(work / "timings.json", {"format": FORMAT, "timings": {}})
    candidates = rows[:top]
    cap = MODEL_ROUNDS + MODEL_MAX_EXTRA_ROUNDS
    speed = SpeedProbe.seeded([t.speed_probe_here() for t in tables])
    contexts = {d["name"]: _context(t, d) for d, t, _ in devices}
    entries = {}  # (rank, device name) -> cached or new {"rounds", "probes", "done", "context"}
    for rank, row in enumerate(candidates):
        for d, _, _ in devices:
            e = cache.get(f"{d['name']}|{row['arch']}")
            if not (isinstance(e, dict) and e.get("context") == contexts[d["name"]]):
                e = {"rounds": [], "probes": [], "done": False, "context": contexts[d["name"]]}
            entries[rank, d["name"]] = e
    speed.fastest_ms = min(speed.fastest_ms, SpeedProbe.resumed([e["probes"] for e in entries.values()]).fastest_ms)
    todo = sorted({rank for (rank, _), e in entries.items() if not e["done"]})
    timings: dict[tuple, _Timing] = {}
    for rank in todo:
        folders = export_candidate(space, candidates[rank]["arch"], [d for d, _, _ in devices], work)
        for d, _, _ in devices:
            e = entries[rank, d["name"]]
            if e["done"]:
                continue
            folder, art = folders[d["name"]]
            x = np.random.default_rng(0).standard_normal((1, space.in_channels, space.input_size, space.input_size))
            timings[rank, d["name"]] = _Timing(folder, art, d["op_resolver"], d["threads"], x.astype(np.float32),
                                               e["rounds"], e["probes"], cap)

    def save():
        for (rank, name), e in entries.items():
            e["done"] = e["done"] or (len(e["rounds"]) >= MODEL_ROUNDS
                                      and (confirmed(e["rounds"], e["probes"], speed) or len(e["rounds"]) >= cap))
            cache[f"{name}|{candidates[rank]['arch']}"] = e
        write_json(work / "timings.json", {"format": FORMAT, "timings": cache})

    if timings:
        if log:
            log(f"[search] timing {len(todo)} candidate(s) on {', '.join(d['name'] for d, _, _ in devices)}, in turn "
                f"({len(candidates) - len(todo)} timed before)")
        with progress_bar(show_progress) as bar:
            time_interleaved(list(timings.values()), speed, bar, after_pass=save)
    for (rank, name), e in entries.items():  # whatever was timed is finished now
        e["done"] = True
    if candidates:
        save()
    shutil.rmtree(work / "candidates", ignore_errors=True)  # the timings are kept; the artifacts are not needed
    out = []
    for rank, row in enumerate(candidates):
        c = {"rank": rank + 1, "arch": row["arch"], "rating": row["rating"], "predicted_ms": {}, "measured_ms": {},
             "band_ms": {}, "confirmed": {}, "meets": {}, "clearly_meets": {}, "timed_now": rank in todo,
             "rung_budget_scale": row.get("rung_budget_scale", 1.0)}
        for d, t, b in devices:
            e = entries[rank, d["name"]]
            measured = getattr(quiet_stats(e["rounds"]), t.statistic)
            c["predicted_ms"][d["name"]] = row[f"latency_ms:{d['name']}"]
            c["measured_ms"][d["name"]] = measured
            c["band_ms"][d["name"]] = list(round_band(e["rounds"]))
            c["confirmed"][d["name"]] = confirmed(e["rounds"], e["probes"], speed)
            c["meets"][d["name"]] = bool(measured <= b)
            c["clearly_meets"][d["name"]] = bool(measured <= b and c["band_ms"][d["name"]][1] <= b)
        c["meets_all"] = all(c["meets"].values())
        c["clearly_meets_all"] = all(c["clearly_meets"].values())
        out.append(c)
    shipped = next((c for c in out if c["clearly_meets_all"]), None) or next((c for c in out if c["meets_all"]), None)
    budgets = {d["name"]: b for d, _, b in devices}
    return {"top": top, "candidates": out, "shipped": shipped["rank"] if shipped else None,
            "why": _why(out, shipped, budgets, top), "budgets_ms": budgets, "statistic": devices[0][1].statistic,
            "seconds": time.perf_counter() - t0, "timed": len(todo), "reused": len(candidates) - len(todo),
            "speed_probe": {"fastest_ms": speed.fastest_ms if np.isfinite(speed.fastest_ms) else None,
                            "tolerance": speed.tolerance}}


def _miss(c: dict, budgets: dict) -> str:
    return ", ".join(f"{n} {c['measured_ms'][n]:.4g} ms measured (predicted {c['predicted_ms'][n]:.4g}), budget "
                     f"{budgets[n]:.4g} ms" for n, ok in c["meets"].items() if not ok)


def _why(out: list[dict], shipped: dict | None, budgets: dict, top: int) -> str:
    noise = "" if shipped is None or shipped["clearly_meets_all"] else (
        " (its measured statistic is within, but its slowest quiet round is not: within the noise of a budget, "
        "and none of the candidates was clearly within)")
    within = "clearly within every budget (each quiet round)" if shipped is not None and shipped["clearly_meets_all"] \
        else "measured within every budget"
    if shipped is not None and shipped["rank"] == 1:
        return f"the best-rated candidate {within} ({len(out)} timed){noise}"

    def miss(c):
        return _miss(c, budgets) if not c["meets_all"] else "within, but not clearly: its slowest quiet round is over"

    misses = "; ".join(f"#{c['rank']}: {miss(c)}" for c in out[:(shipped or {"rank": len(out) + 1})["rank"] - 1])
    if shipped is not None:
        return f"#{shipped['rank']} is the best-rated candidate {within}; the better-rated ones missed ({misses}){noise}"
    fastest = {n: min(c["measured_ms"][n] for c in out) for n in budgets}
    errors = [100 * (c["measured_ms"][n] - c["predicted_ms"][n]) / c["predicted_ms"][n] for c in out for n in budgets]
    return (f"none of the {len(out)} candidates measured within every budget ({misses}). The table predicts "
            f"{np.mean(errors):+.0f} % off what this machine measures now. Try: a budget of at least "
            + ", ".join(f"{v:.4g} ms on {n}" for n, v in fastest.items())
            + " (the fastest measured); "
            + (f"more candidates (confirm_top {2 * top}) or a larger confirm_step (the rungs reach further below the "
               "budget); " if len(out) == top else f"(only {len(out)} candidates fit below the budget: it is close to the "
                                                    "smallest network's latency); ")
            + "search.budget_margin (search under "
              "the upper end of each prediction's interval); or profile the tables again on a quieter machine")


def export_candidate(space, arch: str, devices: list[dict], work: Path) -> dict:
    """One candidate with random weights, exported once per export target the devices need; returns
    {device name: (export folder, its artifact)}."""
    import torch

    from dna_deploy.deploy.export import export_model
    from dna_deploy.distill.checkpoints import save_model
    from dna_deploy.nn.builder import build_network
    from dna_deploy.settings import ExportSettings

    folder = work / "candidates" / hashlib.sha256(arch.encode()).hexdigest()[:12]
    folder.mkdir(parents=True, exist_ok=True)
    a = space.parse_arch(arch)
    torch.manual_seed(0)
    weights = save_model(folder / "model.pt", space, a, build_network(space, a).eval(), data=None, metrics={})
    targets: dict[tuple, list[dict]] = {}
    for d in devices:
        targets.setdefault((EXPORTED[d["runtime"]], d["op_resolver"]), []).append(d)
    out = {}
    for (to, resolver), ds in targets.items():
        precisions = tuple(dict.fromkeys(d["precision"] for d in ds))
        calibration = None
        if "int8" in precisions:  # random images: the kernels, not the accuracy, are timed
            calibration = folder / "calibration.npy"
            np.save(calibration, np.random.default_rng(0).standard_normal(
                (32, space.in_channels, space.input_size, space.input_size)).astype(np.float32))
        dest = folder / (to if resolver in (None, "xnnpack") else f"{to}-{resolver}")
        side = export_model(weights, dest, ExportSettings(to=to, precisions=precisions, calibration_data=
                                                          str(calibration) if calibration else None,
                                                          op_resolver=resolver if resolver not in (None, "xnnpack") else None))
        for d in ds:
            art = next(x for x in side["artifacts"] if x["runtime"] == d["runtime"] and x["precision"] == d["precision"])
            out[d["name"]] = (dest, art)
    return out
