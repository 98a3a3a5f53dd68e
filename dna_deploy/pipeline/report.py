"""report.md and report.html for a pipeline run: every number comes from the run's own files."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

from dna_deploy.display import format_value
from dna_deploy.io import atomic_write_text


def plot_block_losses(metrics_path: Path, png: Path, *, method: str = "dna") -> Path | None:
    if not metrics_path.is_file():
        return None
    from matplotlib.ticker import MaxNLocator

    from dna_deploy.display import new_figure, save_figure

    per_block: dict[int, dict[int, float]] = {}
    for line in metrics_path.read_text().splitlines():
        rec = json.loads(line)
        per_block.setdefault(rec["block"], {})[rec["epoch"]] = rec["loss"]  # last run of an epoch wins
    fig, ax = new_figure()
    for b in sorted(per_block):
        ep = sorted(per_block[b])
        ax.plot(ep, [per_block[b][e] for e in ep], marker="o", label=f"block {b}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    if method == "dna++":
        ax.set_ylabel("DNA++ loss (2 - 2 cos vs population centre, + variance term)")
        ax.set_title("DNA++ self-supervised block-wise training")
    else:
        ax.set_ylabel("distillation loss (per-channel normalised MSE)")
        ax.set_title("DNA block-wise distillation")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, png)


def _interval_blocks(best: dict, budgets: dict, margin: bool) -> list:
    """The chosen network's predicted latency with its 90 % interval (from each table's held-out
    errors) and whether each budget holds at the interval's upper end."""
    rows = []
    for key, iv in best.items():
        if not key.startswith("latency_ms_90:"):
            continue
        name = key.split(":", 1)[1]
        coverage = best.get(f"latency_interval_coverage:{name}", 0.9)
        row = {"device": name, "predicted (ms)": best[f"latency_ms:{name}"], "interval (ms)": f"{iv[0]:.4g}–{iv[1]:.4g}",
               "coverage": f"{100 * coverage:.0f} %" + ("" if coverage >= 0.9 else " (too few networks validated for 90 %)"),
               "budget (ms)": budgets.get(name)}
        if f"budget_holds_at_upper_end:{name}" in best:
            row["budget holds at the upper end"] = "yes" if best[f"budget_holds_at_upper_end:{name}"] else "NO"
        rows.append(row)
    if not rows:
        return []
    how = ("The search met each budget at the interval's upper end (search.budget_margin)." if margin else
           "The search met each budget with the prediction itself; set search.budget_margin: true to meet it at the "
           "interval's upper end.")
    return [("p", "The measured latency to expect: the prediction with the 90 % prediction interval of the table's "
                  "held-out errors (profile validate; with fewer than 19 networks held out, their extremes, which cover "
                  "less). " + how), ("table", rows)]


def write_report(ctx, *, commands: dict[str, list[str]]) -> dict:
    """ctx: the RunContext of a run whose stages up to verify are done (results, space, folder);
    commands: per stage, the command lines that reproduce it. Returns the headline numbers."""
    out: Path = ctx.out
    R = ctx.results
    sections: list[tuple[str, list]] = []  # (title, blocks); a block is ("p", text) | ("table", rows) | ("img", path) | ("code", text)

    best = R["search"]["results"][0]
    budgets = R["search"]["budgets_ms"]
    sections.append(("Chosen architecture", [
        ("code", best["arch"]),
        ("p", (f"Candidate #{R['search']['confirmation']['shipped']} of the "
               f"{len(R['search']['confirmation']['candidates'])} confirmed (in rating order) shipped: "
               f"{R['search']['confirmation']['why']} (see below). The search: "
               if (R["search"].get("confirmation") or {}).get("shipped", 1) != 1 else "")
              + f"Exact optimum of the summed block ratings ({R['rate']['metric']}) over "
              f"{ctx.space.count_architectures():,} networks of space `{ctx.space.name}`, found in "
              f"{R['search']['search_seconds'] * 1000:.1f} ms, under: "
              + "; ".join(f"{k} <= {v:.4g} ms" for k, v in budgets.items() if v is not None)
              + f". The largest network ({R['search']['largest']}) is predicted at "
              + ", ".join(f"{v:.4g} ms on {k}" for k, v in R["search"]["largest_predicted_ms"].items()) + "."),
        ("table", [{"rank": i + 1, "arch": r["arch"], "rating": r["rating"], "MMACs": r["mmacs"], "params (M)": r["params_m"],
                    **{k: v for k, v in r.items() if k.startswith("latency_ms:")}} for i, r in enumerate(R["search"]["results"])]),
        ("p", "Block ratings of the chosen network: " + ", ".join(f"{x:.4f}" for x in best["block_ratings"])),
    ] + _interval_blocks(best, budgets, R["search"].get("budget_margin", False))
        + _confirmation_blocks(R["search"].get("confirmation"))))

    lat_rows, acc_rows, budget_rows = [], [], []
    for target, rep in R["verify"]["reports"].items():
        held = {b["artifact"]: b for b in rep.get("budgets", [])}
        budget_rows += [{"device": b["device"], "runtime": b["runtime"], "precision": b["precision"],
                         "budget (ms)": b["budget_ms"], "measured (ms)": b["measured_ms"], "over (%)": b["over_pct"],
                         "fastest round, at full speed (ms)": b["band_ms"][0], "budget": _verdict(b)} for b in rep.get("budgets", [])]
        for a in rep["artifacts"]:
            s = a["stats"]
            b = held.get(a["path"])
            lat_rows.append({"artifact": a["path"], "runtime": a["runtime"], "precision": a["precision"],
                             "measured (ms)": s.get("measured_ms", s["latency_ms"]["median_ms"]),
                             "median (ms)": s["latency_ms"]["median_ms"], "p90 (ms)": s["latency_ms"]["p90_ms"],
                             "table prediction (ms)": s["predicted_ms"], "error (%)": s["latency_error_pct"],
                             "confirmed": {True: "yes", False: "no: may be high"}.get(s["latency_ms"].get("confirmed"),
                                                                                     "not recorded"),
                             **({"budget (ms)": b["budget_ms"], "budget": _verdict(b)} if b else {})})
            acc_rows.append({"artifact": a["path"], "runtime": a["runtime"], "precision": a["precision"],
                             "accuracy": s["accuracy"], "drop (points)": s["accuracy_drop_pts"],
                             "top-1 agreement": s["top1_agreement"], "max abs error": s["max_abs_error"],
                             "verification": "pass" if a["passed"] else "FAIL"})
        pyt = rep["pytorch_accuracy"]
        n_img = rep["images"]
    sections.append(("Latency: predicted vs measured", [
        ("p", "Measured end to end on this machine (batch 1, at least 5 rounds of 20 runs, each warmed up; "
              "rounds the machine slowed are left out, as in the tables) next to the calibrated prediction "
              "of the latency table for the same runtime and precision (an artifact with no such table among the "
              "pipeline's devices has none). 'measured' is the statistic the table sums and was calibrated with "
              "(the 10th percentile for tables that record it: other processes only add time), the median beside it."),
        ("table", lat_rows)] + _budget_blocks(budget_rows) + [("p", "Note: " + n) for rep in R["verify"]["reports"].values() for n in rep.get("notes", [])]))
    sections.append(("Accuracy per runtime", [
        ("p", f"On the {n_img} validation images (never used for training, rating or search). PyTorch: {pyt:.4f}. "
              + (f"Teacher: {R['retrain']['teacher_val_accuracy']:.4f}." if R["retrain"].get("teacher_val_accuracy") is not None
                 else "No teacher (DNA++): retrained on labels only.")),
        ("table", acc_rows)]))
    sections.append(("Against random networks of the same latency", _baseline_blocks(R.get("baseline") or {})))
    sections.append(("Pareto front", [("p", f"{R['search']['pareto']['points']} networks: summed block rating vs predicted "
                                            f"latency on {next(iter(R['tables']))} (pareto.csv), under the same limits as the search."), ("img", "pareto.png")]))
    fid = []
    for name, t in R["tables"].items():
        f = t.get("fidelity") or {}
        row = {"device": name, "source": t["source"], "held-out networks": f.get("held_out_networks")}
        for k in ("raw_sum", "calibrated", "macs_linear"):
            if k in f:
                row[f"{k} within ±10 %"] = f[k]["within_10pct"]
                row[f"{k} RMSPE %"] = f[k]["rmspe_pct"]
        fid.append(row)
    blocks = [("p", "Held-out networks measured end to end vs the table's prediction (raw sum of its layer or block entries, the "
                    "calibrated a*sum+b, and a MACs-proportional predictor for comparison)."), ("table", fid)]
    for name, t in R["tables"].items():
        png = Path(t["table"]).with_suffix(".fidelity.png")
        if png.is_file():
            blocks.append(("img", os.path.relpath(png.resolve(), out.resolve())))
    sections.append(("Latency-table fidelity", blocks))
    loss_png = plot_block_losses(out / "supernet" / "metrics.jsonl", out / "block_losses.png", method=ctx.cfg.train.method)
    sections.append(("Block-wise distillation" if ctx.cfg.train.method == "dna" else "Block-wise training (DNA++, no teacher)", [
        ("table", [{"block": b, **v} for b, v in R["train"].items()])] + ([("img", "block_losses.png")] if loss_png else [])))
    sections.append(("Reproduce each stage", [("code", "\n".join(c for st in commands.values() for c in st))]))
    stage_rows = [{"stage": k, "seconds": v.get("seconds"), "skipped this run": v.get("skipped", False)}
                  for k, v in ctx.stage_times.items() if k != "report"]
    total = sum(r["seconds"] or 0 for r in stage_rows)
    ran_now = sum(r["seconds"] or 0 for r in stage_rows if not r["skipped this run"])
    sections.append(("Stages", [("p", f"The whole pipeline: {total:.0f} s ({total / 60:.1f} min) of stages, each as long as "
                                      f"it took when it last ran; {ran_now:.0f} s of them ran this time."),
                                ("table", stage_rows + [{"stage": "all", "seconds": round(total, 1), "skipped this run": ""}])]))

    title = f"dna-deploy report: {ctx.cfg.name}"
    atomic_write_text(out / "reproduce.sh", "#!/usr/bin/env bash\n# Each stage of this run by hand (generated from the same settings).\n"
                      "set -euo pipefail\n" + "".join(f"\n# {stage}\n" + "".join(c + "\n" for c in cmds)
                                                      for stage, cmds in commands.items() if cmds))
    atomic_write_text(out / "report.md", _markdown(title, sections))
    atomic_write_text(out / "report.html", _html(title, sections))
    return {"arch": best["arch"], "report": str(out / "report.md"),
            "verification_passed": all(r["verification"] == "pass" for r in acc_rows),
            "latency_budgets": {f"{r['device']} {r['precision']}": r["budget"] for r in budget_rows}}


def _confirmation_blocks(c: dict | None) -> list:
    """The confirmed candidates (deploy/confirm.py): predicted and measured per budgeted device, which shipped and why."""
    if not c:
        return [("p", "The budgets were not confirmed by measurement during the search (search.confirm_top: 0, or "
                      "no budgeted device is a CPU runtime of this machine): the network was chosen on its prediction.")]
    rows = [{"rank by rating": x["rank"], "arch": x["arch"], "rating": x["rating"],
             **{f"{n} predicted (ms)": x["predicted_ms"][n] for n in c["budgets_ms"]},
             **{f"{n} measured (ms)": x["measured_ms"][n] for n in c["budgets_ms"]},
             "within every budget": ("clearly" if x.get("clearly_meets_all") else "yes") if x["meets_all"] else "no",
             "shipped": "yes" if x["rank"] == c["shipped"] else ""} for x in c["candidates"]]
    return [("p", f"Confirmed on this machine before retraining: {len(c['candidates'])} candidates, the best under the "
                  f"budgets and under rungs below them (search.confirm_step), each exported as it ships (random weights) and timed on every budgeted runtime, in turn, as verify "
                  f"times ({c['statistic']}). Shipped: {c['why']}. The confirmation took {c['seconds']:.0f} s "
                  f"({c['timed']} candidate(s) timed, {c['reused']} from earlier timings)."), ("table", rows)]


def _verdict(b: dict) -> str:
    """A budget verdict of verify (deploy/verify.judge_budget) in the report's words."""
    if b["verdict"] == "missed":
        return "MISSED" + (" (advisory)" if b.get("advisory") else "")
    return b["verdict"]


def _budget_blocks(rows: list[dict]) -> list:
    if not rows:
        return [("p", "No latency budget was held to a measurement: no device of the pipeline has a budget, or no "
                      "exported artifact runs on a budgeted device's runtime and precision.")]
    missed = [r for r in rows if r["budget"].startswith("MISSED")]
    head = ("Every budget met by the deployed network, measured." if not missed else
            f"{len(missed)} of {len(rows)} budgets MISSED by the deployed network, measured: "
            + "; ".join(f"{r['device']}: {r['measured (ms)']:.4g} ms measured, budget {r['budget (ms)']:.4g} ms "
                        f"({r['over (%)']:+.0f} %)" for r in missed) + ".")
    return [("p", f"Latency budgets. {head} A budget is missed when even the fastest of the measurement's quiet "
                  "rounds is over it; over it within that noise is 'met within noise'."), ("table", rows)]


def _baseline_blocks(b: dict) -> list:
    if b.get("no_peers"):
        return [("p", f"Not run: {b['no_peers']}.")]
    if not b.get("peers"):
        return [("p", "Not run (set `baseline: {random_networks: 3}` in the pipeline file): random networks of the "
                      "space at the found network's predicted latency, retrained with the same recipe.")]
    verdict = "beats" if b["found_beats_median"] else "does NOT beat"
    rows = [{"network": "found by search", "arch": b["found_arch"], "predicted (ms)": b["found_predicted_ms"],
             "val accuracy": b["found_val_accuracy"]}]
    rows += [{"network": f"random {i + 1}", "arch": p["arch"], "predicted (ms)": p["predicted_ms"],
              "val accuracy": p["val_accuracy"]} for i, p in enumerate(b["peers"])]
    return [("p", f"{len(b['peers'])} networks drawn uniformly from the space with a predicted latency on {b['device']} "
                  f"within ±{b['tolerance']:.0%} of the found network's {b['found_predicted_ms']:.4g} ms, each retrained "
                  f"with the found network's recipe (same epochs, supernet initialisation and distillation). The found "
                  f"network {verdict} their median: {b['found_val_accuracy']:.4f} vs {b['median_val_accuracy']:.4f} "
                  f"({b['found_minus_median_pts']:+.2f} points; rank {b['found_rank']} of {len(b['peers']) + 1}). "
                  "A handful of networks is a coarse check, not a distribution."),
            ("table", rows)]


def _md_table(rows):
    if not rows:
        return "(none)\n"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(format_value(r.get(c)).replace("|", "\\|") for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _markdown(title, sections) -> str:
    parts = [f"# {title}\n"]
    for t, blocks in sections:
        parts.append(f"## {t}\n")
        for kind, v in blocks:
            parts.append({"p": lambda x: x + "\n", "table": _md_table, "img": lambda x: f"![{x}]({x})\n",
                          "code": lambda x: f"```\n{x}\n```\n"}[kind](v))
    return "\n".join(parts)


def _html(title, sections) -> str:
    def table(rows):
        if not rows:
            return "<p>(none)</p>"
        cols = list(dict.fromkeys(k for r in rows for k in r))
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(format_value(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    render = {"p": lambda x: f"<p>{html.escape(x)}</p>", "table": table,
              "img": lambda x: f'<img src="{html.escape(x)}" alt="{html.escape(x)}">',
              "code": lambda x: f"<pre>{html.escape(x)}</pre>"}
    body = "".join(f"<h2>{html.escape(t)}</h2>" + "".join(render[k](v) for k, v in blocks) for t, blocks in sections)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#f3f3f3}"
             "pre{background:#f6f6f6;padding:8px;overflow-x:auto}img{max-width:640px}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head>" \
           f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
