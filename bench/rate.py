"""Candidates/s of prefix-shared rating (one layer forward per tree node) against rating each
candidate on its own; the losses must be identical. Target >= 3x on blocks of 4 layers (the
dna-mbconv space's). Weights are untrained: the cost does not depend on them.
Run: python bench/rate.py
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from dna_deploy.distill.student import BlockStudent
from dna_deploy.io import write_json
from dna_deploy.nn.builder import build_network
from dna_deploy.select.rate import _Context, rate_block_naive, rate_block_tree
from dna_deploy.space import BlockDef, load_space


def bench(space, block, n_rate=256, n_cal=128):
    torch.manual_seed(0)
    teacher = build_network(space, space.largest_arch()).eval()
    x = torch.randn(n_rate + n_cal, 3, space.input_size, space.input_size)
    with torch.no_grad():
        feats = teacher.forward_features(x)
    chans = [b.out_channels for b in space.blocks]
    student = BlockStudent(space, block, chans).eval()
    inp = x if block == 0 else feats[block - 1]
    cal = [inp[n_rate:][i:i + 64] for i in range(0, n_cal, 64)]
    std = torch.ones(chans[block])
    t0 = time.perf_counter()
    tree = rate_block_tree(space, block, _Context(student, cal, inp[:n_rate], feats[block][:n_rate], "l1-norm", std))
    t_tree = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive = rate_block_naive(space, block, student, cal, inp[:n_rate], feats[block][:n_rate], std)
    t_naive = time.perf_counter() - t0
    diff = max(abs(tree[k]["l1-norm"] - naive[k]["l1-norm"]) for k in naive)
    return {"space": space.name, "block": block, "layers": space.blocks[block].layers, "candidates": len(naive),
            "tree_cand_s": len(naive) / t_tree, "naive_cand_s": len(naive) / t_naive, "speedup": t_naive / t_tree,
            "max_loss_difference": diff}


def main():
    tiny = load_space("tiny")
    deep = dataclasses.replace(tiny, name="tiny-4-layer-blocks",
                               blocks=(BlockDef(16, 2, 2), BlockDef(24, 2, 4), BlockDef(40, 2, 4), BlockDef(64, 1, 2)))
    rows = [bench(tiny, 0), bench(tiny, 1), bench(tiny, 3), bench(deep, 1), bench(deep, 2)]
    print(f"{'space':22} {'block':>5} {'layers':>6} {'cands':>6} {'tree c/s':>9} {'naive c/s':>9} {'speed-up':>8} {'max |diff|':>10}")
    for r in rows:
        print(f"{r['space']:22} {r['block']:5} {r['layers']:6} {r['candidates']:6} {r['tree_cand_s']:9.1f} "
              f"{r['naive_cand_s']:9.1f} {r['speedup']:7.2f}x {r['max_loss_difference']:10.2g}")
    write_json(Path(__file__).parent / "results" / "rate.json", rows)


if __name__ == "__main__":
    main()
