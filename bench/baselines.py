"""Search baselines on the same problem as the exact solver (bench only, not the product path).

evolutionary: Once-for-All's recipe (population 100, 500 generations, 25 % parents, 50 % mutants,
per-layer mutation probability 0.1, crossover), with a *bounded* resampling loop for infeasible
children (OFA's loop is unbounded and hangs on an infeasible budget).
random: uniform per-layer sampling, best feasible of N.
"""

from __future__ import annotations

import random

import numpy as np


class Encoder:
    """Per-layer genes <-> per-block candidate indices of a Problem."""

    def __init__(self, space, problem):
        self.space, self.problem = space, problem
        self.index = [{n: i for i, n in enumerate(b.names)} for b in problem.blocks]
        self.choices = [[b.layer_choices(i) for i in range(b.layers)] for b in space.blocks]

    def random_genes(self, rng):
        return [[rng.choice(c) for c in blk] for blk in self.choices]

    def indices(self, genes) -> list[int]:
        out = []
        for b, ops in enumerate(genes):
            kept = [o for o in ops if o != "skip"]
            name = ".".join(kept + ["skip"] * (len(ops) - len(kept)))
            out.append(self.index[b][name])
        return out

    def evaluate(self, genes):
        idx = self.indices(genes)
        p = self.problem
        score = sum(p.blocks[b].scores[j] for b, j in enumerate(idx))
        cost = p.fixed + sum(p.blocks[b].costs[j] for b, j in enumerate(idx))
        return float(score), bool(np.all(cost <= p.limits + 1e-12))


def evolutionary(space, problem, *, population=100, generations=500, parent_ratio=0.25, mutation_ratio=0.5,
                 mutate_prob=0.1, max_tries=1000, init_tries=20000, seed=0):
    rng = random.Random(seed)
    enc = Encoder(space, problem)

    def feasible_sample(make):
        for _ in range(max_tries):
            g = make()
            s, ok = enc.evaluate(g)
            if ok:
                return g, s
        return None

    pop = []
    for _ in range(population):
        for _ in range(init_tries // max_tries):
            r = feasible_sample(lambda: enc.random_genes(rng))
            if r is not None:
                break
        if r is None:
            return None  # no feasible random network in init_tries samples: gave up (OFA would loop forever)
        pop.append(r)
    n_par, n_mut = int(population * parent_ratio), int(population * mutation_ratio)
    for _ in range(generations):
        pop.sort(key=lambda t: t[1])
        parents = pop[:n_par]
        children = []

        def mutate():
            g = [list(b) for b in rng.choice(parents)[0]]
            for b, blk in enumerate(enc.choices):
                for i, c in enumerate(blk):
                    if rng.random() < mutate_prob:
                        g[b][i] = rng.choice(c)
            return g

        def crossover():
            a, b2 = rng.choice(parents)[0], rng.choice(parents)[0]
            return [[rng.choice([x, y]) for x, y in zip(ba, bb)] for ba, bb in zip(a, b2)]

        for _ in range(n_mut):
            r = feasible_sample(mutate)
            if r:
                children.append(r)
        while len(children) < population - n_par:
            r = feasible_sample(crossover)
            if r is None:
                break
            children.append(r)
        pop = parents + children
    return min(s for _, s in pop)


def random_search(space, problem, *, samples=50_000, seed=0):
    rng = random.Random(seed)
    enc = Encoder(space, problem)
    best = None
    for _ in range(samples):
        s, ok = enc.evaluate(enc.random_genes(rng))
        if ok and (best is None or s < best):
            best = s
    return best

