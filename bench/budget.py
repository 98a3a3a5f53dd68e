"""Does the shipped network meet its latency budget? Without confirmation, with budget_margin, and with
the search's confirmation (confirm_top), on the quickstart's space with tables profiled on this host.

For each of >= 20 budgets spread across the feasible range of each device (ONNX Runtime, LiteRT
fp32), the search runs three ways on the same ratings and table:
  - plain: the exact optimum under the predicted budget;
  - margin: search.budget_margin (the upper end of each prediction's 90 % interval meets the budget);
  - confirm: search.confirm_top K (K candidates, the best under the budget and under K-1 rungs
    confirm_step below it, exported and timed here; the best-rated one clearly within ships).
Every network shipped by any of them is then exported (random weights: latency does not depend on
them) and measured the way `dna-deploy verify` measures, in one job separate from the search's
confirmation (deploy/verify.verify_exports), and held to each budget strictly: met when the
measured statistic (p10_ms, what the table sums) is within it (met_share, with its 95 % Wilson
interval), and by verify's own verdict (verify_met_share: not a clear miss, i.e. its fastest quiet
round within the budget). Also recorded: the rating cost of each method (summed block rating of the
shipped network minus the plain optimum's: > 0 is worse), and the wall time of each confirmation
(timings are shared between budgets through one confirmation folder, so later budgets reuse
candidates timed for earlier ones: `timed` counts what each one timed).

Ratings: --ratings (a run's ratings.json, e.g. runs/quickstart/ratings.json) or synthetic ratings
of the tiny space (select/search.synthetic_ratings: bigger candidates rate better, plus noise).
Tables: profiled and validated on this host into --work (reused when there).

Run:  python bench/budget.py            (20 budgets per device, confirm_top 8; CPU-heavy: about an hour)
      python bench/budget.py --quick    (ONNX Runtime only, 4 budgets, confirm_top 4, small tables)
Writes bench/results/budget.json (--quick: budget_quick.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dna_deploy.io import write_json


def tables_here(space, devices, work: Path, quick: bool) -> list:
    """One latency table per device, profiled and validated on this host (reused when in `work`)."""
    from dna_deploy.latency.devices import load_device
    from dna_deploy.latency.profiler import profile
    from dna_deploy.latency.table import LatencyTable
    from dna_deploy.latency.validate import validate_table

    out = []
    for name in devices:
        dev = load_device(name)
        path = work / "tables" / f"{dev.name}__{space.name}.json"
        if not path.is_file() or LatencyTable.load(path).error_quantiles() is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            profile(space, dev, path, show_progress=False, **({"rounds": 2, "runs_per_round": 10} if quick else {}))
            validate_table(path, space, samples=24 if quick else 40, show_progress=False,
                           rounds=2 if quick else 3)
            print(f"[budget] profiled and validated {dev.name} here in {time.perf_counter() - t0:.0f} s", flush=True)
        t = LatencyTable.load(path)
        if t.foreign_reasons():
            raise SystemExit(f"{path} describes another host or runtime ({t.foreign_reasons()[0]}); remove it")
        out.append(t)
    return out


def searched(space, ratings, table, budget, settings, confirm_dir) -> dict:
    from dna_deploy.deploy.confirm import confirm_candidates
    from dna_deploy.errors import InfeasibleBudget
    from dna_deploy.select.search import run_search

    t0 = time.perf_counter()
    try:
        r = run_search(space, ratings, [table], [budget], settings, confirm_dir=confirm_dir,
                       confirm=confirm_candidates, show_progress=False)
    except InfeasibleBudget as e:
        return {"arch": None, "why": str(e)[:400], "seconds": time.perf_counter() - t0}
    out = {"arch": r["results"][0]["arch"], "rating": r["results"][0]["rating"],
           "predicted_ms": r["results"][0][f"latency_ms:{table.name}"], "seconds": time.perf_counter() - t0}
    if "confirmation" in r:
        c = r["confirmation"]
        out.update(shipped_rank=c["shipped"], timed=c["timed"], reused=c["reused"], confirm_seconds=c["seconds"],
                   confirm_measured_ms=c["candidates"][c["shipped"] - 1]["measured_ms"][table.name])
    return out


def plot(result: dict, path: Path) -> Path:
    """Per device: each budget's shipped network, measured by verify, as % over (+) or under (-) the
    budget, for the three methods; above the zero line is a broken promise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = result["devices"]
    fig, axes = plt.subplots(1, len(devices), figsize=(6 * len(devices), 4), squeeze=False)
    for ax, (name, d) in zip(axes[0], devices.items()):
        for m, marker in (("plain", "o"), ("margin", "s"), ("confirm", "*")):
            pts = [(r["budget_ms"], r[m]["over_pct"]) for r in d["rows"] if r[m].get("arch")]
            share = d["summary"][m]["met_share"]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, label=f"{m}: {100 * share:.0f} % met", alpha=0.8)
        ax.axhline(0, color="k", lw=1)
        ax.set(title=name, xlabel="budget (ms)", ylabel="verify's measurement vs budget (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="ONNX Runtime only, 4 budgets, confirm_top 4, small tables")
    ap.add_argument("--budgets", type=int, default=None, help="budgets per device [20; --quick 4]")
    ap.add_argument("--confirm-top", type=int, default=None, help="[8; --quick 4]")
    ap.add_argument("--confirm-step", type=float, default=None, help="rung spacing [settings' 0.025]")
    ap.add_argument("--ratings", type=Path, default=None, help="a run's ratings.json [synthetic ratings of tiny]")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-budget", help="tables, exports, timings")
    ap.add_argument("--output", type=Path, default=None)
    args = ap.parse_args()

    from dna_deploy.deploy.confirm import device_of, export_candidate
    from dna_deploy.deploy.verify import judge_budget, verify_exports
    from dna_deploy.latency.validate import wilson_interval
    from dna_deploy.select.rate import load_ratings
    from dna_deploy.select.search import synthetic_ratings
    from dna_deploy.settings import SearchSettings
    from dna_deploy.space import load_space

    n_budgets = args.budgets or (4 if args.quick else 20)
    top = args.confirm_top or (4 if args.quick else 8)
    devices = ["x86-cpu-onnxruntime"] + ([] if args.quick else ["x86-cpu-litert"])
    space = load_space("tiny")
    ratings = load_ratings(args.ratings, space) if args.ratings else synthetic_ratings(space, seed=0)
    work = args.work / ("quick" if args.quick else "full")
    t_start = time.perf_counter()
    tables = tables_here(space, devices, work, args.quick)
    step = SearchSettings().confirm_step if args.confirm_step is None else args.confirm_step
    methods = {"plain": SearchSettings(top_k=1, confirm_top=0),
               "margin": SearchSettings(top_k=1, budget_margin=True, confirm_top=0),
               "confirm": SearchSettings(top_k=1, confirm_top=top, confirm_step=step)}
    result = {"space": space.name, "ratings": str(args.ratings) if args.ratings else "synthetic (seed 0)",
              "confirm_top": top, "confirm_step": step, "quick": args.quick, "devices": {}}
    for table in tables:
        lo = table.predict(space, space.smallest_arch())["predicted_ms"]
        hi = table.predict(space, space.largest_arch())["predicted_ms"]
        # across the feasible range, from just above the smallest network to just below the largest
        budgets = [float(b) for b in np.linspace(lo, hi, n_budgets + 2)[1:-1]]
        rows = []
        for b in budgets:
            row = {"budget_ms": b}
            for m, settings in methods.items():
                row[m] = searched(space, ratings, table, b, settings, work / "confirm" / table.name)
            print(f"[budget] {table.name} {b:.4f} ms: " + ", ".join(
                f"{m} {row[m].get('predicted_ms', float('nan')):.4f}" for m in methods), flush=True)
            rows.append(row)
        # verify's measurement of every shipped network, in one job of its own
        archs = sorted({r[m]["arch"] for r in rows for m in methods if r[m]["arch"]})
        folders = {a: export_candidate(space, a, [device_of(table)], work / "shipped")[table.name][0] for a in archs}
        t0 = time.perf_counter()
        only = [table.meta["runtime"]]
        reports = verify_exports(list(folders.values()), data="mnist", tables=[table], max_images=16,
                                 only=only, show_progress=False)
        verify_seconds = time.perf_counter() - t0
        measured = {a: next(x for x in rep["artifacts"] if x["precision"] == "fp32")["stats"]
                    for a, rep in zip(folders, reports)}
        summary = {}
        for m in methods:
            met_strict = met_verify = n = 0
            costs, seconds = [], []
            for r in rows:
                x = r[m]
                if x["arch"] is None:
                    x["verdict"] = "nothing shipped"
                    continue
                s = measured[x["arch"]]
                verdict = judge_budget(table.name, r["budget_ms"], s["measured_ms"], s["latency_ms"]["band_ms"])
                x.update(verify_measured_ms=s["measured_ms"], verify_confirmed=s["latency_ms"]["confirmed"],
                         verify_band_ms=s["latency_ms"]["band_ms"], verify_verdict=verdict["verdict"],
                         strict_met=bool(s["measured_ms"] <= r["budget_ms"]),
                         over_pct=100 * (s["measured_ms"] - r["budget_ms"]) / r["budget_ms"])
                n += 1
                met_strict += x["strict_met"]
                met_verify += verdict["met"]
                costs.append(x["rating"] - r["plain"]["rating"])
                if "confirm_seconds" in x:
                    seconds.append(x["confirm_seconds"])
            summary[m] = {"budgets": len(rows), "shipped": n,
                          "met_share": met_strict / len(rows),  # a budget nothing shipped for is not met
                          "met_share_95": list(wilson_interval(met_strict, len(rows))),
                          # verify's verdict: not a clear miss (its fastest quiet round within the budget)
                          "verify_met_share": met_verify / len(rows),
                          "rating_cost_mean": float(np.mean(costs)) if costs else None,
                          "rating_cost_max": float(np.max(costs)) if costs else None,
                          "over_pct_mean": float(np.mean([r[m]["over_pct"] for r in rows if r[m]["arch"]]))
                          if n else None}
            agree = [100 * (r[m]["verify_measured_ms"] - r[m]["confirm_measured_ms"]) / r[m]["confirm_measured_ms"]
                     for r in rows if r[m].get("arch") and "confirm_measured_ms" in r[m]]
            if agree:  # the search's figure for the shipped network against verify's, measured minutes later
                summary[m].update(verify_vs_confirm_pct_median=float(np.median(agree)),
                                  verify_vs_confirm_pct_abs_max=float(np.max(np.abs(agree))))
            if seconds:
                timed = sum(r[m].get("timed", 0) for r in rows)
                summary[m].update(confirm_seconds_total=float(np.sum(seconds)), confirm_seconds_max=float(np.max(seconds)),
                                  candidates_timed=timed,
                                  seconds_per_timed_candidate=float(np.sum(seconds)) / timed if timed else None)
        result["devices"][table.name] = {"budgets_ms": budgets, "feasible_ms": [lo, hi], "summary": summary,
                                         "verify_seconds": verify_seconds, "networks_verified": len(archs),
                                         "rows": rows}
        print(f"[budget] {table.name}: " + json.dumps({m: {k: v for k, v in s.items() if k in ("met_share", "rating_cost_mean")}
                                                        for m, s in summary.items()}), flush=True)
    from dna_deploy.host import host_description

    out = args.output or ROOT / "bench" / "results" / ("budget_quick.json" if args.quick else "budget.json")
    result["plot"] = plot(result, out.with_suffix(".png")).name  # beside the JSON
    result["host"] = host_description()
    result["seconds"] = time.perf_counter() - t_start
    write_json(out, result)
    print(f"[budget] wrote {out} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
