"""Exact search: the architecture with the lowest summed block rating under every constraint.

Block ratings are independent and every cost (LUT latency per device, MACs, params) is a sum over
blocks, so the search is a multiple-choice knapsack. We solve it exactly by Pareto merging:
blocks are merged one at a time, keeping a partial network only if fewer than K others beat it
in rating and every cost at once (K = --top-k; 1 for the optimum), and only if it can still be
completed within the limits (the cheapest completion of the remaining blocks is known).

Why this is exact: if partial A is no worse than partial B in rating and in every additive cost,
then for any completion C of the remaining blocks, A+C is feasible whenever B+C is and rates no
worse. So dropping B loses nothing while K such A are kept -- at every merge, by induction.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dna_deploy.errors import DataError, InfeasibleBudget
from dna_deploy.settings import MAX_TOP_K, SearchSettings
from dna_deploy.space import Arch, SearchSpace


@dataclass
class BlockChoices:
    names: list[str]  # candidate strings, e.g. "k3e6.k5e3.skip"
    scores: np.ndarray  # [k]
    costs: np.ndarray  # [k, D]


@dataclass
class Problem:
    blocks: list[BlockChoices]
    cost_names: list[str]  # e.g. ["latency_ms:x86-cpu-onnxruntime", "macs", "params"]
    fixed: np.ndarray  # [D] costs in every network (stem, head)
    limits: np.ndarray  # [D] on the totals (inf = unconstrained)
    display: list = field(default_factory=list)  # per dim: callable raw total -> reported value


@dataclass
class Front:
    scores: np.ndarray  # [n]
    costs: np.ndarray  # [n, D] totals including fixed costs
    choices: np.ndarray  # [n, B] candidate index per block


def _keep_mask(scores: np.ndarray, costs: np.ndarray, k: int, batch: int = 512) -> np.ndarray:
    """Points dominated (rating and every cost <=) by fewer than k earlier points, after sorting by
    (score, costs). Exact for 'top k' because domination is transitive (see module docstring)."""
    n, D = costs.shape
    order = np.lexsort(tuple(costs[:, d] for d in reversed(range(D))) + (scores,))
    keep = np.zeros(n, dtype=bool)
    if D == 0:
        keep[order[:k]] = True
        return keep
    c = costs[order]
    if D == 1 and k == 1:
        prev_min = np.minimum.accumulate(np.concatenate([[np.inf], c[:-1, 0]]))
        keep[order[c[:, 0] < prev_min]] = True
        return keep
    if D == 2 and k == 1:
        keep[order[_staircase(c)]] = True
        return keep
    kept_costs = np.empty((0, D))
    for s in range(0, n, batch):
        bc = c[s:s + batch]
        count = (kept_costs[None, :, :] <= bc[:, None, :]).all(axis=2).sum(axis=1) if len(kept_costs) else np.zeros(len(bc), int)
        within = (bc[None, :, :] <= bc[:, None, :]).all(axis=2)
        within = np.tril(within, k=-1)  # only earlier points of the batch
        count = count + within.sum(axis=1)
        ok = count < k
        keep[order[s:s + batch][ok]] = True
        kept_costs = np.concatenate([kept_costs, bc[ok]])
    return keep


def _staircase(c: np.ndarray) -> np.ndarray:
    """Rows of `c` (n x 2, in rating order) that no earlier row matches or beats on both costs.

    A sweep over the staircase of the rows kept so far (first cost ascending, second strictly
    descending): the kept row with the largest first cost <= this row's has the smallest second
    cost among all with first cost <= it, so one comparison decides. O(n log n) against the
    batched all-pairs test's O(n x kept), which took seconds on fronts of thousands."""
    import bisect

    xs: list[float] = []
    ys: list[float] = []
    ok = np.zeros(len(c), dtype=bool)
    for i, (x, y) in enumerate(c.tolist()):
        j = bisect.bisect_right(xs, x)
        if j and ys[j - 1] <= y:
            continue
        ok[i] = True
        end = j
        while end < len(xs) and ys[end] >= y:  # rows this one now beats on both costs
            end += 1
        xs[j:end] = [x]
        ys[j:end] = [y]
    return ok


def _merge(problem: Problem, dims: list[int], top_k: int, *, incumbent: float = np.inf,
           bounds: dict | None = None, known: tuple[np.ndarray, np.ndarray] | None = None) -> Front:
    """Block-by-block Pareto merge over the cost dimensions `dims` (see the module docstring).

    Partials that cannot be completed within the limits are dropped; with an incumbent (the k-th
    best score of known feasible networks), so are partials whose lower bound exceeds it; with
    `known` feasible networks (first cost ascending, running minimum of their scores), so are
    partials every completion of which one of them beats on both rating and first cost."""
    B, D = len(problem.blocks), len(problem.cost_names)
    suffix_min = np.zeros((B + 1, D))
    suffix_score = np.zeros(B + 1)
    for i in range(B - 1, -1, -1):
        suffix_min[i] = suffix_min[i + 1] + problem.blocks[i].costs.min(axis=0)
        suffix_score[i] = suffix_score[i + 1] + problem.blocks[i].scores.min()
    front = Front(np.zeros(1), problem.fixed[None, :].copy(), np.zeros((1, 0), dtype=np.int64))
    for i, blk in enumerate(problem.blocks):
        # a candidate dominated by top_k others of its own block is never needed
        bidx = np.flatnonzero(_keep_mask(blk.scores, blk.costs[:, dims], top_k))
        s = (front.scores[:, None] + blk.scores[bidx][None, :]).reshape(-1)
        c = (front.costs[:, None, :] + blk.costs[bidx][None, :, :]).reshape(-1, D)
        parent = np.repeat(np.arange(len(front.scores)), len(bidx))
        cand = np.tile(bidx, len(front.scores))
        ok = np.all(c + suffix_min[i + 1] <= problem.limits + 1e-12, axis=1)
        if np.isfinite(incumbent):
            ok &= _lower_bound(s, c, i + 1, problem, bounds, suffix_score) <= incumbent + 1e-12
        if known is not None:
            best_s = _lower_bound(s, c, i + 1, problem, bounds or {}, suffix_score)
            j = np.searchsorted(known[0], c[:, 0] + suffix_min[i + 1, 0] + 1e-12, side="right") - 1
            beaten = np.where(j >= 0, known[1][np.clip(j, 0, None)], np.inf) < best_s - 1e-12
            ok &= ~beaten
        s, c, parent, cand = s[ok], c[ok], parent[ok], cand[ok]
        keep = _keep_mask(s, c[:, dims], top_k)
        front = Front(s[keep], c[keep], np.concatenate([front.choices[parent[keep]], cand[keep, None]], axis=1))
    return front


def _suffix_fronts(problem: Problem, dims: list[int]) -> dict:
    """For each constrained dimension d and block i: the (cost_d, score) Pareto front of the
    remaining blocks i.. (cost ascending, score descending). Lower bounds come from it."""
    B = len(problem.blocks)
    out = {}
    for d in dims:
        costs, scores = [None] * (B + 1), [None] * (B + 1)
        costs[B], scores[B] = np.zeros(1), np.zeros(1)
        for i in range(B - 1, -1, -1):
            blk = problem.blocks[i]
            c = (costs[i + 1][:, None] + blk.costs[:, d][None, :]).reshape(-1)
            sc = (scores[i + 1][:, None] + blk.scores[None, :]).reshape(-1)
            keep = _keep_mask(sc, c[:, None], 1)
            order = np.argsort(c[keep], kind="stable")
            costs[i], scores[i] = c[keep][order], sc[keep][order]
        out[d] = (costs, scores)
    return out


def _lower_bound(s, c, i, problem: Problem, bounds: dict, suffix_score) -> np.ndarray:
    """Score + the best completion that fits each constraint's remaining budget (each alone)."""
    lb = s + suffix_score[i]
    for d, (costs, scores) in bounds.items():
        room = problem.limits[d] - c[:, d]
        j = np.searchsorted(costs[i], room + 1e-12, side="right") - 1
        best = np.where(j >= 0, scores[i][np.clip(j, 0, None)], np.inf)
        lb = np.maximum(lb, s + best)
    return lb


def _incumbent(problem: Problem, dims: list[int], top_k: int) -> tuple[float, "Front | None"]:
    """Relax to one constraint at a time (exact and fast). If a relaxation's best top_k are
    feasible for all constraints they are the answer; otherwise the feasible networks found on
    the relaxations' fronts give an upper bound (the k-th best of them)."""
    found: dict[tuple, tuple[float, np.ndarray]] = {}
    for d in dims:
        only_d = np.where(np.arange(len(problem.limits)) == d, problem.limits, np.inf)
        relaxed = _merge(dataclasses.replace(problem, limits=only_d), [d], 1)
        if len(relaxed.scores) == 0:
            continue
        # the relaxed top_k (a lower bound), and whole-front networks as feasible candidates
        total = relaxed.costs
        feas = np.all(total <= problem.limits + 1e-12, axis=1)
        order = np.argsort(relaxed.scores, kind="stable")
        if top_k == 1 and feas[order[0]]:
            return relaxed.scores[order[0]], Front(relaxed.scores[order[:1]], total[order[:1]], relaxed.choices[order[:1]])
        for j in np.flatnonzero(feas):
            found[tuple(relaxed.choices[j])] = (relaxed.scores[j], total[j])
    if len(found) < top_k:
        return np.inf, None
    return sorted(v[0] for v in found.values())[top_k - 1], None


def solve(problem: Problem, *, top_k: int = 1, keep_front_dims: int | None = None) -> Front:
    """The exact top_k networks (by summed rating) within the limits, best first.

    keep_front_dims: keep everything on the Pareto front of (rating, first cost) instead, for
    --pareto (limits still apply)."""
    D = len(problem.cost_names)
    mins = problem.fixed + sum(b.costs.min(axis=0) for b in problem.blocks)
    if np.any(mins > problem.limits + 1e-12):
        raise InfeasibleBudget(_infeasible_message(problem, mins - problem.fixed))
    dims = [int(d) for d in np.flatnonzero(np.isfinite(problem.limits))]
    if keep_front_dims is not None:
        front = _front(problem, dims)
    else:
        incumbent, answer = (np.inf, None)
        if len(dims) >= 2:
            incumbent, answer = _incumbent(problem, dims, top_k)
        if answer is not None:
            return answer
        front = _merge(problem, dims, top_k, incumbent=incumbent,
                       bounds=_suffix_fronts(problem, dims) if np.isfinite(incumbent) else None)
    if len(front.scores) == 0:
        raise InfeasibleBudget("no architecture meets all constraints at once (each one alone is reachable); "
                               "relax one of them")
    if keep_front_dims is not None:
        keep = _keep_mask(front.scores, front.costs[:, :1], 1)
        idx = np.flatnonzero(keep)[np.argsort(front.costs[keep, 0], kind="stable")]
    else:
        idx = np.lexsort(tuple(front.costs[:, d] for d in reversed(range(D))) + (front.scores,))[:top_k]
    return Front(front.scores[idx], front.costs[idx], front.choices[idx])


def _front(problem: Problem, dims: list[int]) -> Front:
    """The (rating, first cost) front within every limit.

    With limits on other costs the merge must keep a front over those costs too, which grows large
    when ratings follow MACs (dna-mbconv, --max-mmacs 400, ratings = f(MACs) + small noise: 7 s and
    543 points). So a fast 1-D merge first finds feasible networks near the front: it keeps only
    (rating, first cost)-non-dominated partials that can still meet every limit, which is exact
    for feasibility but may miss front points. The exact merge then drops each partial network
    that one of those beats on both axes whatever the remaining blocks add. Exact: a network on
    the constrained front is beaten by no feasible network."""
    other = [d for d in dims if d != 0]
    if not other:
        return _merge(problem, [0], 1)
    near = _merge(problem, [0], 1)  # every partial can still meet all limits; dominated ones dropped on 2 axes
    feas = np.all(near.costs <= problem.limits + 1e-12, axis=1)
    order = np.argsort(near.costs[feas, 0], kind="stable")
    known = (near.costs[feas, 0][order], np.minimum.accumulate(near.scores[feas][order])) if feas.any() else None
    return _merge(problem, sorted(set([0] + dims)), 1, bounds=_suffix_fronts(problem, other), known=known)


def _infeasible_message(problem: Problem, mins: np.ndarray) -> str:
    parts = []
    for d, name in enumerate(problem.cost_names):
        total = problem.fixed[d] + mins[d]
        if total > problem.limits[d] + 1e-12:
            show = problem.display[d] if problem.display else (lambda v: v)
            parts.append(f"{name}: the smallest reachable is {show(total):.6g}, the limit is {show(problem.limits[d]):.6g}")
    return "no architecture fits the constraints (" + "; ".join(parts) + "); relax the budget"


def brute_force(problem: Problem, *, top_k: int = 1) -> list[tuple[float, tuple[int, ...]]]:
    """Every combination (small problems only): the reference the tests hold `solve` to."""
    import itertools

    out = []
    for combo in itertools.product(*[range(len(b.names)) for b in problem.blocks]):
        cost = problem.fixed + sum(b.costs[j] for b, j in zip(problem.blocks, combo))
        if np.all(cost <= problem.limits + 1e-12):
            out.append((float(sum(b.scores[j] for b, j in zip(problem.blocks, combo))), combo))
    out.sort(key=lambda t: t[0])
    return out[:top_k]


# ---------------------------------------------------------------- from ratings + latency tables
def build_problem(space: SearchSpace, ratings: dict, tables: list, budgets_ms: list[float | None], *,
                  max_mmacs: float | None = None, max_params: float | None = None) -> Problem:
    """Costs per block candidate: raw LUT latency per table (layer or block entries; budgets are converted through each
    table's calibration: a * raw + b <= budget), MACs and params."""
    if len(budgets_ms) != len(tables):
        raise DataError(f"{len(tables)} latency table(s) but {len(budgets_ms)} --budget-ms value(s): give one budget per table")
    for what, v in [*((f"--budget-ms for {t.name}", b) for t, b in zip(tables, budgets_ms)),
                    ("--max-mmacs", max_mmacs), ("--max-params", max_params)]:
        if v is not None and not (math.isfinite(v) and v > 0):
            raise DataError(f"{what} is {v}; a limit must be a positive finite number (leave it out for no limit)")
    for t in tables:
        t.check_space(space)
        missing = t.missing_entries(space)
        if missing:
            raise DataError(f"latency table {t.path} lacks {len(missing)} entries, e.g. {missing[0]}; re-profile")
    names = [f"latency_ms:{t.name}" for t in tables] + ["macs", "params"]
    fixed_specs = space.stem_specs() + [space.head_spec()]
    fixed = np.array([t.fixed_ms(space) for t in tables] + [sum(s.macs for s in fixed_specs), sum(s.params for s in fixed_specs)], float)
    limits = np.array([t.uncalibrate(bm) if bm is not None else np.inf for t, bm in zip(tables, budgets_ms)]
                      + [max_mmacs * 1e6 if max_mmacs is not None else np.inf,
                         max_params if max_params is not None else np.inf], float)
    display = [t.calibrate for t in tables] + [lambda v: v / 1e6, lambda v: v]
    blocks = []
    for b in range(len(space.blocks)):
        cands = next(x for x in ratings["blocks"] if x["block"] == b)["candidates"]
        candidates = list(space.block_candidates(b))
        order = [".".join(map(str, ops)) for ops in candidates]
        missing = [n for n in order if n not in cands]
        if missing:
            raise DataError(f"rating table lacks candidate {missing[0]!r} of block {b}; re-run `dna-deploy rate`")
        _check_candidate_costs(space, b, candidates, order, cands)
        # each candidate's entries per table (its layers', or its own in a block-level table), each
        # distinct entry read once into a dict, then summed per candidate (6,264 on dna-mbconv)
        keys = [[t.block_keys(space, b, ops) for ops in candidates] for t in tables]
        ms = [{k: t.entry_ms(k) for k in {k for ks in keys_t for k in ks}} for t, keys_t in zip(tables, keys)]
        costs = np.array([[sum(m[k] for k in keys_t[j]) for m, keys_t in zip(ms, keys)]
                          + [cands[n]["macs"], cands[n]["params"]] for j, n in enumerate(order)], float)
        blocks.append(BlockChoices(order, np.array([cands[n]["loss"] for n in order], float), costs))
    return Problem(blocks, names, fixed, limits, display)


def _check_candidate_costs(space: SearchSpace, block: int, candidates, names, cands: dict) -> None:
    """A rating table's MACs and params are the space's own (`dna-deploy rate` writes them from
    the layer specs): a forged or edited number (negative MACs made `--max-mmacs 1` return -992
    MMACs) is refused, naming the candidate and both values, never searched with."""
    for ops, name in zip(candidates, names):
        specs = space.block_specs(block, ops)
        for key, true in (("macs", sum(s.macs for s in specs)), ("params", sum(s.params for s in specs))):
            v = cands[name].get(key)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or abs(v - true) > 1e-6 * max(1.0, true):
                raise DataError(f"rating table: block {block} candidate {name!r} has {key} {str(v)[:40]}, but the "
                                f"space gives {true:,}; the file was edited or is for another space: re-run `dna-deploy rate`")


def arch_of(problem: Problem, choice_row) -> Arch:
    return Arch(tuple(tuple(_ops(problem.blocks[b].names[j])) for b, j in enumerate(choice_row)))


def _ops(name: str):
    from dna_deploy.space import parse_op

    return [parse_op(t) for t in name.split(".")]


def describe(problem: Problem, front: Front, space: SearchSpace, tables: list) -> list[dict]:
    rows = []
    for s, c, ch in zip(front.scores, front.costs, front.choices):
        arch = arch_of(problem, ch)
        row = {"arch": str(arch), "rating": float(s),
               "block_ratings": [float(problem.blocks[b].scores[j]) for b, j in enumerate(ch)]}
        for d, t in enumerate(tables):
            row[f"latency_ms:{t.name}"] = t.calibrate(float(c[d]))
        row["mmacs"] = float(c[len(tables)]) / 1e6
        row["params_m"] = float(c[len(tables) + 1]) / 1e6
        rows.append(row)
    return rows


def check_top_k(top_k) -> int:
    """--top-k as it enters: a whole number from 1 to MAX_TOP_K (a billion ran out of memory)."""
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
        raise DataError(f"--top-k must be a whole number from 1 to {MAX_TOP_K:,}, got {str(top_k)[:40]}")
    return top_k


def search(space: SearchSpace, ratings: dict, tables: list, budgets_ms: list[float | None], *,
           max_mmacs: float | None = None, max_params: float | None = None, top_k: int = 1) -> list[dict]:
    check_top_k(top_k)
    problem = build_problem(space, ratings, tables, budgets_ms, max_mmacs=max_mmacs, max_params=max_params)
    return describe(problem, solve(problem, top_k=top_k), space, tables)


def pareto(space: SearchSpace, ratings: dict, tables: list, budgets_ms: list[float | None], **limits) -> list[dict]:
    """The whole front of (summed rating, latency on the first table), other limits applied."""
    if not tables:
        raise DataError("--pareto needs a latency table (--table)")
    problem = build_problem(space, ratings, tables, budgets_ms, **limits)
    return describe(problem, solve(problem, keep_front_dims=1), space, tables)


def run_search(space: SearchSpace, ratings: dict, tables: list, budgets_ms: list[float | None],
               settings: SearchSettings = SearchSettings(), *, output=None, pareto_path=None, confirm_dir=None,
               confirm=None, show_progress: bool = True, log=None) -> dict:
    """`dna-deploy search` and the pipeline's search stage: the top-k, optionally the Pareto front
    (PATH.csv + PATH.png) under the same limits, and the result as JSON at `output`.

    With settings.confirm_top K, K candidates (confirmation_ladder: the best under the budgets and
    under K - 1 rungs below them) are timed on each budgeted runtime here by
    `confirm` (deploy.confirm.confirm_candidates, passed in by the caller: building and timing
    networks is the deploy layer's, above this one; what was timed is kept in `confirm_dir`, so a resumed search times nothing
    twice) and the best-rated one measured within every budget comes first in `results`, the others
    after it in rating order; `confirmation` says which shipped and why. When none of the K meets
    every budget, the result is written and InfeasibleBudget says what to try."""
    import time

    from dna_deploy.io import write_json

    check_top_k(settings.top_k)
    confirm_top = settings.confirm_top or 0
    searched = budgets_ms
    if settings.budget_margin:
        missing = [t.name for t, b in zip(tables, budgets_ms) if b is not None and t.error_quantiles() is None]
        if missing:
            raise DataError(f"--budget-margin needs each budgeted table's held-out error distribution; {missing[0]} has "
                            "none: run `dna-deploy profile validate` on it first")
        searched = [t.upper_end_budget(b) if b is not None else None for t, b in zip(tables, budgets_ms)]
    t0 = time.perf_counter()
    rows = search(space, ratings, tables, searched, max_mmacs=settings.max_mmacs, max_params=settings.max_params,
                  top_k=settings.top_k)
    seconds = time.perf_counter() - t0
    for row in rows:
        _annotate_interval(row, tables, budgets_ms)
    confirmation = None
    if confirm_top:
        if confirm is None:
            raise DataError("confirm_top needs the confirmer: pass confirm=dna_deploy.deploy.confirm.confirm_candidates")
        ladder = confirmation_ladder(space, ratings, tables, searched, settings, confirm_top)
        for row in ladder:
            _annotate_interval(row, tables, budgets_ms)
        confirmation = _confirm(confirm, space, ladder, tables, budgets_ms, confirm_top, confirm_dir, show_progress, log)
        timed = {c["arch"]: c for c in confirmation["candidates"]}
        for rank, row in enumerate(rows, 1):
            row["rank_by_rating"] = rank
            if row["arch"] in timed:
                row.update({f"measured_ms:{n}": v for n, v in timed[row["arch"]]["measured_ms"].items()})
        if confirmation["shipped"] is not None:  # the network to ship first, the rest in rating order
            ship = ladder[confirmation["shipped"] - 1]
            ship.update({f"measured_ms:{n}": v for n, v in timed[ship["arch"]]["measured_ms"].items()})
            ship["confirm_rank"] = confirmation["shipped"]
            ship["rank_by_rating"] = next((r["rank_by_rating"] for r in rows if r["arch"] == ship["arch"]), None)
            rows = [ship] + [r for r in rows if r["arch"] != ship["arch"]][:settings.top_k - 1]
    largest = space.largest_arch()
    result = {"space": space.name, "exact": True, "metric": ratings.get("metric"),
              "constraints": {**{f"budget_ms:{t.name}": b for t, b in zip(tables, budgets_ms)},
                              "max_mmacs": settings.max_mmacs, "max_params": settings.max_params},
              "budgets_ms": {t.name: b for t, b in zip(tables, budgets_ms)},
              "budget_margin": settings.budget_margin,
              "searched_budgets_ms": {t.name: b for t, b in zip(tables, searched)},
              "results": rows, "search_seconds": seconds,
              "largest": str(largest),
              "largest_predicted_ms": {t.name: t.predict(space, largest)["predicted_ms"] for t in tables}}
    if confirmation is not None:
        result["confirmation"] = confirmation
    if pareto_path is not None:
        front = pareto(space, ratings, tables, searched, max_mmacs=settings.max_mmacs, max_params=settings.max_params)
        csv, png = Path(pareto_path).with_suffix(".csv"), Path(pareto_path).with_suffix(".png")
        write_front(front, csv, png, tables[0].name, budget_ms=budgets_ms[0], shipped=rows[0],
                    confirmation=confirmation)
        result["pareto"] = {"csv": str(csv), "png": str(png), "points": len(front)}
    if output is not None:
        write_json(output, result)
    if confirmation is not None and confirmation["shipped"] is None:
        raise InfeasibleBudget(f"confirmation: {confirmation['why']}" + (f" (the candidates: {output})" if output else ""))
    return result


def _annotate_interval(row: dict, tables: list, budgets_ms: list) -> None:
    """The measured latency to expect: a 90 % interval per table, and whether the budget holds at its upper end."""
    for t, b in zip(tables, budgets_ms):
        iv = t.interval(row[f"latency_ms:{t.name}"])
        if iv is not None:
            row[f"latency_ms_90:{t.name}"] = [iv[0], iv[1]]
            row[f"latency_interval_coverage:{t.name}"] = t.interval_coverage()
            if b is not None:
                row[f"budget_holds_at_upper_end:{t.name}"] = bool(iv[1] <= b + 1e-12)


def confirmation_ladder(space: SearchSpace, ratings: dict, tables: list, budgets_ms: list[float | None],
                        settings: SearchSettings, top: int) -> list[dict]:
    """The K candidates the confirmation times: the best-rated network under each of K rungs of the
    budgets, rung i at (1 - i x settings.confirm_step) of every budget; a network a higher rung took
    is replaced by the rung's next best. Best rating first.
    Why not the K best under the budgets: on a dense space they crowd within a fraction of a percent
    below the budget (bench/results/budget_quick.json before the rungs: the 4 best predicted 0.1939 to
    0.1941 ms under 0.1942), so a host running a few percent slower than its table, or the noise of
    a measurement, makes all of them miss. The rungs reach (K - 1) x step below the budget, and the
    first rung is the exact optimum, so nothing better-rated is given up unless it measured over."""
    out, seen = [], set()
    for i in range(top):
        scale = 1.0 - i * settings.confirm_step
        if scale <= 0:  # K x step reached the whole budget
            break
        rung = [b * scale if b is not None else None for b in budgets_ms]
        try:  # i networks are taken: the rung's i + 1 best hold at least one not yet taken
            found = search(space, ratings, tables, rung, max_mmacs=settings.max_mmacs, max_params=settings.max_params,
                           top_k=i + 1)
        except InfeasibleBudget:  # nothing this far below the budget: the lower rungs are empty too
            break
        row = next((r for r in found if r["arch"] not in seen), None)
        if row is not None:
            seen.add(row["arch"])
            out.append({**row, "rung": i, "rung_budget_scale": scale})
    return sorted(out, key=lambda r: r["rating"])


def _confirm(confirm_candidates, space, rows, tables, budgets_ms, top, confirm_dir, show_progress, log) -> dict:
    import tempfile

    if confirm_dir is not None:
        return confirm_candidates(space, rows, tables, budgets_ms, top=top, work_dir=confirm_dir,
                                  show_progress=show_progress, log=log)
    with tempfile.TemporaryDirectory(prefix="dna-deploy-confirm-") as work:
        return confirm_candidates(space, rows, tables, budgets_ms, top=top, work_dir=work,
                                  show_progress=show_progress, log=log)


def write_front(rows: list[dict], csv_path, png_path, table_name: str, *, budget_ms: float | None = None,
                shipped: dict | None = None, confirmation: dict | None = None) -> None:
    """The front as CSV and a plot: the budget line, the network to ship, and each confirmed
    candidate's measured latency beside its prediction (an arrow from one to the other)."""
    import csv
    import io

    from dna_deploy.io import atomic_write_text

    buf = io.StringIO()
    cols = [k for k in rows[0] if k != "block_ratings"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(csv_path, buf.getvalue())
    from dna_deploy.display import new_figure, save_figure

    key = f"latency_ms:{table_name}"
    fig, ax = new_figure()
    ax.step([r[key] for r in rows], [r["rating"] for r in rows], where="post", marker="o", ms=3, label="Pareto front")
    if budget_ms is not None:
        ax.axvline(budget_ms, color="tab:red", ls="--", lw=1, label=f"budget {budget_ms:.4g} ms")
    for c in (confirmation or {}).get("candidates", []):
        if table_name in c["measured_ms"]:
            pred, meas = c["predicted_ms"][table_name], c["measured_ms"][table_name]
            ax.annotate("", xy=(meas, c["rating"]), xytext=(pred, c["rating"]),
                        arrowprops={"arrowstyle": "->", "color": "tab:gray", "lw": 0.8})
            ax.plot([meas], [c["rating"]], "x", color="tab:green" if c["meets"][table_name] else "tab:red", ms=6)
    if confirmation and confirmation.get("candidates"):
        ax.plot([], [], "x", color="tab:gray", label="confirmed candidates: measured (arrow from predicted)")
    if shipped is not None and key in shipped:
        x = shipped.get(f"measured_ms:{table_name}", shipped[key])
        ax.plot([x], [shipped["rating"]], "*", color="tab:orange", ms=14, label="shipped network"
                + (" (measured)" if f"measured_ms:{table_name}" in shipped else " (predicted)"))
    ax.legend(fontsize=8)
    ax.set_xlabel(f"latency on {table_name} (ms): predicted; measured where confirmed")
    ax.set_ylabel("summed block rating (lower is better)")
    ax.set_title(f"Pareto front: {len(rows)} networks")
    ax.grid(alpha=0.3)
    save_figure(fig, png_path, dpi=120)


def synthetic_ratings(space: SearchSpace, seed: int = 0) -> dict:
    """A rating table of plausible shape (bigger candidates distil better, with noise): for
    benchmarks and tests of search at scale, where training every block is not the point."""
    rng = np.random.default_rng(seed)
    blocks = []
    for b in range(len(space.blocks)):
        cands = {}
        for ops in space.block_candidates(b):
            specs = space.block_specs(b, ops)
            macs = sum(s.macs for s in specs)
            cands[".".join(map(str, ops))] = {"loss": float(1.0 / (1.0 + math.log1p(macs / 1e5)) + rng.normal(0, 0.01)),
                                              "macs": macs, "params": sum(s.params for s in specs)}
        blocks.append({"block": b, "complete": True, "candidates": cands})
    return {"format": "dna-deploy-ratings/1", "space": space.name, "space_fingerprint": space.fingerprint,
            "metric": "synthetic", "blocks": blocks}


def latency_peers(space: SearchSpace, table, target_ms: float, n: int, *, tolerance: float = 0.05, seed: int = 0,
                  exclude: tuple[str, ...] = (), max_draws: int = 100_000) -> list[Arch]:
    """Up to n distinct networks drawn uniformly from the space (a random op per layer, as
    `space sample` draws) whose calibrated predicted latency on `table` lies within
    ±tolerance of target_ms: the random baseline a searched network is compared with at equal
    latency. Raises InfeasibleBudget when none is found in max_draws draws."""
    import random

    rng = random.Random(seed)
    lo, hi = target_ms * (1 - tolerance), target_ms * (1 + tolerance)
    seen, peers = set(exclude), []
    for _ in range(max_draws):
        arch = space.sample(rng)
        key = str(arch)
        if key in seen:
            continue
        seen.add(key)
        if lo <= table.predict(space, arch)["predicted_ms"] <= hi:
            peers.append(arch)
            if len(peers) == n:
                break
    if not peers:
        raise InfeasibleBudget(f"no random network of space {space.name!r} in {max_draws:,} draws is predicted within "
                               f"±{tolerance:.0%} of {target_ms:.4g} ms; widen baseline.tolerance")
    return peers
