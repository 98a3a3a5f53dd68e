"""Search baselines on the same problem as the exact solver (bench only, not the product path).

evolutionary: Once-for-All's evolution finder, as its code sets it: a population of 100, the best
25 % kept as parents, and each generation 100 children, 50 by mutation (each layer resampled with
probability 0.1) and 50 by uniform crossover of two parents, children that break a limit drawn
again. Two changes keep it from failing where OFA's would: the infeasible-child loop is bounded
(OFA's is unbounded and hangs on an infeasible budget), and the initial population is seeded with
feasible networks: uniform draws first, then random walks from the smallest network that stay under
the limits, so a tight budget is not lost at generation 0.
random: uniform per-layer sampling, best feasible of N.

Both evaluate whole populations at once through the same per-block rating and cost arrays the
exact solver reads (one table lookup per block, vectorised over networks), so a time ratio against
the exact solver measures the algorithms, not Python loops.
"""

from __future__ import annotations

import numpy as np


class Encoder:
    """Per-layer genes (choice indices, [n, layers] per block) -> per-block candidate indices of a
    Problem, through one lookup array per block over every gene combination."""

    def __init__(self, space, problem):
        self.space, self.problem = space, problem
        self.choices = [[b.layer_choices(i) for i in range(b.layers)] for b in space.blocks]
        self.radix = [np.array([len(c) for c in blk]) for blk in self.choices]
        self.lookup = []
        for b, blk in enumerate(self.choices):
            index = {n: i for i, n in enumerate(problem.blocks[b].names)}
            sizes = [len(c) for c in blk]
            table = np.empty(int(np.prod(sizes)), dtype=np.int64)
            for code in range(table.size):
                ops, rest = [], code
                for c in reversed(blk):
                    ops.append(c[rest % len(c)])
                    rest //= len(c)
                ops.reverse()
                kept = [o for o in ops if o != "skip"]
                table[code] = index[".".join(kept + ["skip"] * (len(ops) - len(kept)))]
            self.lookup.append(table)

    def random_genes(self, rng, n: int) -> list[np.ndarray]:
        return [rng.integers(0, r, size=(n, len(r))) for r in self.radix]

    def smallest_genes(self, n: int) -> list[np.ndarray]:
        """The smallest network (skip wherever a layer may skip, else the smallest op by size)."""
        out = []
        for blk in self.choices:
            g = [c.index("skip") if "skip" in c else min(range(len(c)), key=lambda j, c=c: self._size(c[j]))
                 for c in blk]
            out.append(np.tile(np.array(g), (n, 1)))
        return out

    def _size(self, token: str):
        from dna_deploy.space import parse_op

        return parse_op(token).size

    def candidates(self, genes: list[np.ndarray]) -> np.ndarray:
        """[n, B] candidate index per block."""
        cols = []
        for g, r, table in zip(genes, self.radix, self.lookup):
            code = np.zeros(len(g), dtype=np.int64)
            for i in range(g.shape[1]):
                code = code * r[i] + g[:, i]
            cols.append(table[code])
        return np.stack(cols, 1)

    def evaluate(self, genes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Summed ratings [n] and feasibility [n] of a population."""
        idx = self.candidates(genes)
        p = self.problem
        score = sum(p.blocks[b].scores[idx[:, b]] for b in range(idx.shape[1]))
        cost = p.fixed + sum(p.blocks[b].costs[idx[:, b]] for b in range(idx.shape[1]))
        return score, np.all(cost <= p.limits + 1e-12, axis=1)


def _take(genes, rows):
    return [g[rows] for g in genes]


def _concat(*pops):
    return [np.concatenate(parts) for parts in zip(*pops)]


def _feasible_initial(enc: Encoder, rng, population: int, draws: int, walk_steps: int):
    genes = enc.random_genes(rng, draws)
    score, ok = enc.evaluate(genes)
    pop = _take(genes, np.flatnonzero(ok)[:population])
    if len(pop[0]) < population:  # tight budget: random walks from the smallest network, kept feasible
        start, start_ok = enc.evaluate(enc.smallest_genes(1))
        if not start_ok[0]:
            return None
        need = population - len(pop[0])
        walk = enc.smallest_genes(need)
        for _ in range(walk_steps):
            trial = [w.copy() for w in walk]
            for t, r in zip(trial, enc.radix):
                flip = rng.random(t.shape) < 0.2
                t[flip] = rng.integers(0, np.broadcast_to(r, t.shape)[flip])
            _, ok_t = enc.evaluate(trial)
            for w, t in zip(walk, trial):
                w[ok_t] = t[ok_t]
        pop = _concat(pop, walk)
    return pop


def evolutionary(space, problem, *, population=100, generations=500, parent_ratio=0.25, mutations=50,
                 crossovers=50, mutate_prob=0.1, max_tries=20, init_draws=20_000, walk_steps=30, seed=0):
    """Best summed rating found (lower is better), or None when not even the smallest network fits."""
    rng = np.random.default_rng(seed)
    enc = Encoder(space, problem)
    pop = _feasible_initial(enc, rng, population, init_draws, walk_steps)
    if pop is None:
        return None
    score, _ = enc.evaluate(pop)
    n_par = int(population * parent_ratio)
    for _ in range(generations):
        order = np.argsort(score, kind="stable")[:n_par]
        parents, p_score = _take(pop, order), score[order]
        children, c_score = None, np.empty(0)
        for kind, want in (("mutate", mutations), ("crossover", crossovers)):
            got = 0
            for _ in range(max_tries):  # bounded redraws of infeasible children
                if got >= want:
                    break
                k = want - got
                a = rng.integers(0, n_par, k)
                if kind == "mutate":
                    kids = [g[a].copy() for g in parents]
                    for kid, r in zip(kids, enc.radix):
                        flip = rng.random(kid.shape) < mutate_prob
                        kid[flip] = rng.integers(0, np.broadcast_to(r, kid.shape)[flip])
                else:
                    b = rng.integers(0, n_par, k)
                    kids = [np.where(rng.random(g[a].shape) < 0.5, g[a], g[b]) for g in parents]
                    kids = [k_.copy() for k_ in kids]
                s, ok = enc.evaluate(kids)
                keep = np.flatnonzero(ok)
                if keep.size:
                    kept = _take(kids, keep)
                    children = kept if children is None else _concat(children, kept)
                    c_score = np.concatenate([c_score, s[keep]])
                    got += keep.size
        pop = parents if children is None else _concat(parents, children)
        score = p_score if children is None else np.concatenate([p_score, c_score])
    return float(score.min())


def random_search(space, problem, *, samples=50_000, seed=0, batch=10_000):
    rng = np.random.default_rng(seed)
    enc = Encoder(space, problem)
    best = None
    for start in range(0, samples, batch):
        s, ok = enc.evaluate(enc.random_genes(rng, min(batch, samples - start)))
        if ok.any():
            v = float(s[ok].min())
            best = v if best is None else min(best, v)
    return best
