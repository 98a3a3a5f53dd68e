"""Exact search vs Once-for-All-style evolution vs random search, on the same ratings and tables.

Two problems: (1) paper-scale: a DNA space of blocks with 2/4/5/5/5/1 layers (~3e17 networks,
~30k rated candidates), synthetic ratings (bigger candidates distil better, plus noise), latencies
from the shipped dna-mbconv ONNX Runtime table (the layer shapes are the same); (2) the tiny space
with real ratings (from a run folder, if given) and its shipped table.
Run: python bench/search.py [--ratings runs/quickstart/ratings.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from baselines import evolutionary, random_search  # noqa: E402

from dna_deploy.io import read_json, write_json  # noqa: E402
from dna_deploy.latency.table import LatencyTable  # noqa: E402
from dna_deploy.select.search import build_problem, pareto, solve, synthetic_ratings  # noqa: E402
from dna_deploy.space import load_space  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def paper_scale():
    base = load_space("dna-mbconv")
    layers = (2, 4, 5, 5, 5, 1)
    blocks = tuple(dataclasses.replace(b, layers=n) for b, n in zip(base.blocks, layers))
    space = dataclasses.replace(base, name="dna-mbconv-paper-scale", blocks=blocks)
    table = LatencyTable.load(ROOT / "latency_tables/x86-cpu-onnxruntime__dna-mbconv.json")
    table.meta = {**table.meta, "space_fingerprint": space.fingerprint}  # same layer shapes, deeper blocks
    return space, synthetic_ratings(space, seed=0), table


SEEDS = (0, 1, 2)


def _gap(value, exact):
    return None if value is None else 100 * (value - exact) / abs(exact)


def run(space, ratings, table, fractions, label, evo_generations):
    lo = table.predict(space, space.smallest_arch())["predicted_ms"]
    hi = table.predict(space, space.largest_arch())["predicted_ms"]
    rows = []
    for f in fractions:
        budget = lo + f * (hi - lo)
        t = time.perf_counter()
        problem = build_problem(space, ratings, [table], [budget])
        t_build = time.perf_counter() - t
        t = time.perf_counter()
        exact = float(solve(problem).scores[0])
        t_exact = time.perf_counter() - t
        evo, t_evo, rnd, t_rnd = [], [], [], []
        for seed in SEEDS:  # evolution and random search are stochastic: three seeds each
            t = time.perf_counter()
            evo.append(evolutionary(space, problem, generations=evo_generations, seed=seed))
            t_evo.append(time.perf_counter() - t)
            t = time.perf_counter()
            rnd.append(random_search(space, problem, samples=50_000, seed=seed))
            t_rnd.append(time.perf_counter() - t)
        evo_gaps = [_gap(v, exact) for v in evo]
        rnd_gaps = [_gap(v, exact) for v in rnd]
        worst = lambda gaps: None if any(g is None for g in gaps) else max(gaps)  # noqa: E731
        rows.append({"problem": label, "budget_ms": round(budget, 3), "exact": exact, "exact_s": t_exact, "build_s": t_build,
                     "seeds": list(SEEDS), "evolution": evo, "evolution_s": float(np.mean(t_evo)), "random": rnd,
                     "random_s": float(np.mean(t_rnd)), "evolution_gaps_pct": evo_gaps, "random_gaps_pct": rnd_gaps,
                     "evolution_gap_pct": worst(evo_gaps), "random_gap_pct": worst(rnd_gaps),
                     "speedup_vs_evolution": float(np.mean(t_evo)) / t_exact})
    t = time.perf_counter()
    front = pareto(space, ratings, [table], [None])
    t_front = time.perf_counter() - t
    return rows, {"problem": label, "front_points": len(front), "front_s": t_front}


def constrained_fronts(noises=(0.002, 0.01, 0.1)) -> list[dict]:
    """dna-mbconv with both shipped tables and --max-mmacs 400: top-1, top-5 and the whole
    (rating, ONNX Runtime latency) front within the MACs limit. Ratings follow MACs plus noise; the
    less noise, the larger the fronts the merge must keep over (latency, MACs) (issue 14 measured
    46-55 s for a 285-network front before the pruned merge)."""
    import math

    from dna_deploy.select.search import search

    space = load_space("dna-mbconv")
    tables = [LatencyTable.load(ROOT / f"latency_tables/x86-cpu-{rt}__dna-mbconv.json") for rt in ("onnxruntime", "litert")]
    rows = []
    for noise in noises:
        ratings = synthetic_ratings(space)
        rng = np.random.default_rng(1)
        for b in ratings["blocks"]:
            for c in b["candidates"].values():
                c["loss"] = float(1.0 / (1.0 + math.log1p(c["macs"] / 1e5)) + rng.normal(0, noise))
        row = {"noise": noise}
        for k in (1, 5):
            t0 = time.perf_counter()
            search(space, ratings, tables, [None, None], max_mmacs=400, top_k=k)
            row[f"top{k}_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        front = pareto(space, ratings, tables, [None, None], max_mmacs=400)
        row["pareto_s"], row["pareto_points"] = time.perf_counter() - t0, len(front)
        rows.append(row)
        print(f"dna-mbconv, 2 tables, --max-mmacs 400, rating noise {noise}: top-1 {row['top1_s']:.2f} s, "
              f"top-5 {row['top5_s']:.2f} s, --pareto {row['pareto_s']:.2f} s ({len(front)} networks)")
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratings", help="real rating table of the tiny space (e.g. runs/quickstart/ratings.json)")
    ap.add_argument("--generations", type=int, default=500)
    args = ap.parse_args()
    results = {"rows": [], "fronts": [], "constrained_fronts": constrained_fronts()}
    space, ratings, table = paper_scale()
    n_cand = sum(len(b["candidates"]) for b in ratings["blocks"])
    print(f"paper-scale space: {space.count_architectures():.3g} networks, {n_cand} rated candidates")
    rows, front = run(space, ratings, table, [0.2, 0.4, 0.7], "paper-scale (synthetic ratings)", args.generations)
    results["rows"] += rows
    results["fronts"].append(front)
    if args.ratings:
        tiny = load_space("tiny")
        r = read_json(args.ratings)
        t = LatencyTable.load(ROOT / "latency_tables/x86-cpu-onnxruntime__tiny.json")
        rows, front = run(tiny, r, t, [0.2, 0.4, 0.7], "tiny (real ratings)", args.generations)
        results["rows"] += rows
        results["fronts"].append(front)
    print("gap % = how much worse than the exact optimum, the worst of 3 seeds; 'none' = no feasible network found")
    print("evolution: OFA's recipe, 100 children a generation (50 mutations + 50 crossovers), feasible-seeded, "
          "vectorised like the exact solver; random: best of 50,000")
    print(f"{'problem':34} {'budget':>8} {'exact':>9} {'t_exact':>8} {'t_build':>8} {'evo gap%':>9} {'t_evo':>7} {'rnd gap%':>9} {'evo/exact time':>15}")
    for r in results["rows"]:
        g = lambda v: "none" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"{r['problem']:34} {r['budget_ms']:8.3f} {r['exact']:9.4f} {r['exact_s']:8.3f} {r['build_s']:8.2f} {g(r['evolution_gap_pct']):>9} "
              f"{r['evolution_s']:7.2f} {g(r['random_gap_pct']):>9} {r['speedup_vs_evolution']:14.0f}x")
    for f in results["fronts"]:
        print(f"whole Pareto front, {f['problem']}: {f['front_points']} networks in {f['front_s']:.2f} s")
    write_json(ROOT / "bench/results/search.json", results)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
