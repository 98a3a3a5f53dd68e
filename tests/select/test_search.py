"""The search is exact: held to brute force on small problems with random ratings and costs."""

import numpy as np
import pytest

from dna_deploy.errors import InfeasibleBudget
from dna_deploy.select.search import (
    BlockChoices,
    Problem,
    _keep_mask,
    brute_force,
    solve,
)


def random_problem(rng, blocks=(5, 7, 4, 6), D=2, tight=0.5, integer=False):
    bl = []
    for k in blocks:
        costs = rng.integers(1, 6, size=(k, D)).astype(float) if integer else rng.random((k, D))
        scores = np.round(rng.random(k), 1) if integer else rng.random(k)
        bl.append(BlockChoices([f"c{i}" for i in range(k)], scores, costs))
    fixed = rng.random(D)
    lo = fixed + sum(b.costs.min(0) for b in bl)
    hi = fixed + sum(b.costs.max(0) for b in bl)
    limits = lo + tight * (hi - lo)
    return Problem(bl, [f"c{d}" for d in range(D)], fixed, limits)


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("D", [1, 2, 3])
def test_optimum_equals_brute_force(seed, D):
    rng = np.random.default_rng(seed * 10 + D)
    p = random_problem(rng, D=D, tight=rng.uniform(0.1, 0.9))
    best = brute_force(p)
    if not best:  # each limit reachable alone, not all together
        with pytest.raises(InfeasibleBudget, match="all constraints at once"):
            solve(p)
        return
    front = solve(p)
    assert front.scores[0] == pytest.approx(best[0][0])
    cost = p.fixed + sum(b.costs[j] for b, j in zip(p.blocks, front.choices[0]))
    assert np.all(cost <= p.limits + 1e-12)
    assert front.scores[0] == pytest.approx(sum(b.scores[j] for b, j in zip(p.blocks, front.choices[0])))


@pytest.mark.parametrize("seed", range(10))
def test_top_k_equals_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    p = random_problem(rng, D=2, tight=0.6, integer=True)  # rounded scores, integer costs: many ties
    k = 7
    expect = [s for s, _ in brute_force(p, top_k=k)]
    got = solve(p, top_k=k).scores
    assert np.allclose(sorted(got), expect)


def test_unconstrained_is_the_best_of_each_block():
    rng = np.random.default_rng(3)
    p = random_problem(rng, D=1)
    p.limits[:] = np.inf
    front = solve(p)
    assert front.scores[0] == pytest.approx(sum(b.scores.min() for b in p.blocks))


def test_infeasible_budget_names_the_smallest_reachable():
    rng = np.random.default_rng(4)
    p = random_problem(rng, D=2)
    smallest = p.fixed[0] + sum(b.costs[:, 0].min() for b in p.blocks)
    p.limits[0] = smallest * 0.99
    with pytest.raises(InfeasibleBudget, match=f"smallest reachable is {smallest:.6g}"):
        solve(p)


def test_exactly_at_the_smallest_budget_is_feasible():
    rng = np.random.default_rng(5)
    p = random_problem(rng, D=1)
    p.limits[0] = p.fixed[0] + sum(b.costs[:, 0].min() for b in p.blocks)
    front = solve(p)
    assert len(front.scores) == 1
    best, combo = brute_force(p)[0]
    assert front.scores[0] == pytest.approx(best) and tuple(front.choices[0]) == combo


def test_pareto_front_is_the_brute_force_front():
    rng = np.random.default_rng(6)
    p = random_problem(rng, blocks=(4, 5, 3, 4), D=1)
    p.limits[:] = np.inf
    import itertools

    pts = []
    for combo in itertools.product(*[range(len(b.names)) for b in p.blocks]):
        pts.append((sum(b.scores[j] for b, j in zip(p.blocks, combo)),
                    p.fixed[0] + sum(b.costs[j, 0] for b, j in zip(p.blocks, combo))))
    pts = np.array(pts)
    nd = [i for i, (s, c) in enumerate(pts) if not np.any((pts[:, 0] <= s) & (pts[:, 1] <= c) & ((pts[:, 0] < s) | (pts[:, 1] < c)))]
    front = solve(p, keep_front_dims=1)
    assert len(front.scores) == len(nd)
    assert np.allclose(sorted(front.scores), sorted(pts[nd, 0]))


def test_keep_mask_counts_dominators():
    scores = np.array([1.0, 2.0, 3.0, 4.0])
    costs = np.array([[1.0, 1.0], [2.0, 0.5], [3.0, 3.0], [0.1, 0.1]])
    assert _keep_mask(scores, costs, 1).tolist() == [True, True, False, True]
    assert _keep_mask(scores, costs, 2).tolist() == [True, True, False, True]
    assert _keep_mask(scores, costs, 3).tolist() == [True, True, True, True]


def test_paper_scale_space_searches_exactly(mbconv):
    """Full dna-mbconv (1.47e15 networks): synthetic ratings, costs from the analytic MACs."""
    from dna_deploy.select.search import build_problem, synthetic_ratings

    r = synthetic_ratings(mbconv, seed=0)
    p = build_problem(mbconv, r, [], [], max_mmacs=350)
    front = solve(p)
    assert front.costs[0, 0] <= 350e6
    # a looser limit can only improve the optimum
    p2 = build_problem(mbconv, r, [], [], max_mmacs=400)
    assert solve(p2).scores[0] <= front.scores[0]


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_pareto_front_under_another_limit_is_the_brute_force_front(seed):
    """--pareto with a MACs-like limit on a second cost: the pruned merge gives exactly the front of
    (rating, first cost) over the networks that meet the limit."""
    import itertools

    rng = np.random.default_rng(seed)
    p = random_problem(rng, blocks=(4, 5, 3, 4), D=2)
    p.limits[0] = np.inf
    pts = []
    for combo in itertools.product(*[range(len(b.names)) for b in p.blocks]):
        cost = p.fixed + sum(b.costs[j] for b, j in zip(p.blocks, combo))
        pts.append((sum(b.scores[j] for b, j in zip(p.blocks, combo)), cost[0], cost[1]))
    pts = np.array(pts)
    p.limits[1] = np.quantile(pts[:, 2], 0.4)  # rules out most of the unconstrained front
    feas = pts[pts[:, 2] <= p.limits[1]]
    nd = [i for i, (s, c, _) in enumerate(feas)
          if not np.any((feas[:, 0] <= s) & (feas[:, 1] <= c) & ((feas[:, 0] < s) | (feas[:, 1] < c)))]
    front = solve(p, keep_front_dims=1)
    assert np.all(front.costs[:, 1] <= p.limits[1] + 1e-9)
    assert np.allclose(sorted(front.scores), sorted(feas[nd, 0]))


def test_budget_margin_meets_the_budget_at_the_upper_end_of_the_interval(tmp_path):
    """A table whose held-out errors say a prediction can be 8 % low: with --budget-margin the chosen
    network's 90 % interval ends within the budget; without it, the prediction alone is within."""
    import json

    from dna_deploy.io import shipped_dir
    from dna_deploy.latency.table import LatencyTable
    from dna_deploy.select.search import run_search, synthetic_ratings
    from dna_deploy.settings import SearchSettings
    from dna_deploy.space import load_space

    tiny = load_space("tiny")
    src = json.loads((shipped_dir("latency_tables") / "x86-cpu-onnxruntime__tiny.json").read_text())
    src["fidelity"] = {"calibrated": {"rel_error_quantiles": {"q05": -0.08, "q50": 0.0, "q95": 0.05}}}
    (tmp_path / "t.json").write_text(json.dumps(src))
    table = LatencyTable.load(tmp_path / "t.json")
    ratings = synthetic_ratings(tiny)
    lo = table.predict(tiny, tiny.smallest_arch())["predicted_ms"]
    hi = table.predict(tiny, tiny.largest_arch())["predicted_ms"]
    budget = lo + 0.4 * (hi - lo)
    plain = run_search(tiny, ratings, [table], [budget], SearchSettings(top_k=1))["results"][0]
    margin = run_search(tiny, ratings, [table], [budget], SearchSettings(top_k=1, budget_margin=True))["results"][0]
    name = table.name
    assert plain[f"latency_ms:{name}"] <= budget
    assert margin[f"latency_ms_90:{name}"][1] <= budget + 1e-9 and margin[f"budget_holds_at_upper_end:{name}"]
    assert margin[f"latency_ms:{name}"] <= budget * 0.92 + 1e-9
    assert margin["rating"] >= plain["rating"]  # the margin costs rating, never gains it
    lo90, hi90 = plain[f"latency_ms_90:{name}"]
    assert lo90 == pytest.approx(plain[f"latency_ms:{name}"] / 1.05) and hi90 == pytest.approx(plain[f"latency_ms:{name}"] / 0.92)


def test_latency_peers_are_distinct_random_networks_at_the_target_latency(tiny):
    from pathlib import Path

    from dna_deploy.errors import InfeasibleBudget
    from dna_deploy.latency.table import LatencyTable
    from dna_deploy.pipeline.report import _baseline_blocks
    from dna_deploy.select.search import latency_peers

    table = LatencyTable.load(Path(__file__).resolve().parents[2] / "latency_tables/x86-cpu-onnxruntime__tiny.json")
    found = tiny.parse_arch("k3e6.skip|k5e3.k7e3.skip|k5e3.k5e6.k7e6|k7e3.k5e3")
    target = table.predict(tiny, found)["predicted_ms"]
    peers = latency_peers(tiny, table, target, 4, tolerance=0.05, seed=3, exclude=(str(found),))
    assert len(peers) == len({str(p) for p in peers}) == 4 and str(found) not in {str(p) for p in peers}
    assert all(abs(table.predict(tiny, p)["predicted_ms"] - target) <= 0.05 * target for p in peers)
    assert peers == latency_peers(tiny, table, target, 4, tolerance=0.05, seed=3, exclude=(str(found),))  # seeded
    with pytest.raises(InfeasibleBudget, match="widen baseline.tolerance"):
        latency_peers(tiny, table, 1e-6, 1, max_draws=500)
    # a run whose found network has no peers says so in its report instead of failing
    assert "Not run: none found" in _baseline_blocks({"no_peers": "none found"})[0][1]
