"""Training throughput (images/s) of DNA block-wise distillation against a supervised step of the
same supernet paths, with the teacher-feature cache and without it (teacher run every step).

Fair by construction: every variant trains the same sampled path per step (one op per layer of
every block, drawn from one seeded sequence), sees the same batches, and gets warm-up steps that
are not timed; the cached variant's headline counts the time to build its cache. One "image" of
block-wise training = the image passed through all blocks once (each block one step).
Run: python bench/train_throughput.py [--steps N]  (default: one epoch, 62 steps of 64)
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dna_deploy.data import load_mnist, stack
from dna_deploy.distill.blockwise import relative_floor
from dna_deploy.distill.student import BlockStudent, feature_distance
from dna_deploy.distill.teacher import Teacher
from dna_deploy.io import write_json
from dna_deploy.nn.builder import build_network
from dna_deploy.nn.supernet import Supernet, sample_path
from dna_deploy.space import Arch, load_space


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant [one epoch of the train split]")
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    space = load_space("tiny")
    data = load_mnist(32)
    x_all, y_all = stack(data.train)
    tnet = build_network(space, space.largest_arch()).eval()
    teacher = Teacher(tnet, [f"blocks.{i}" for i in range(4)], [b.out_channels for b in space.blocks], {}, "bench")
    B = args.batch
    n = args.steps or len(x_all) // B  # one epoch: the cache is built once per run, so count it against an epoch

    warm = 3  # untimed steps first, for every variant

    def batches(steps=n):
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(x_all), generator=g)
        for s in range(steps):
            idx = perm[(s * B) % (len(x_all) - B):][:B]
            yield idx

    def seconds(step) -> float:
        """`warm` untimed steps, then n timed ones; every variant draws the same sequence of paths."""
        for timed, steps in ((False, warm), (True, n)):
            rng = random.Random(0)
            t0 = time.perf_counter()
            for idx in batches(steps):
                step(idx, [sample_path(space, b, rng) for b in range(len(space.blocks))])
        return time.perf_counter() - t0

    # (1) supervised (single-path, SPOS-style): the whole supernet on the sampled path, cross-entropy
    sup_net = Supernet(space)
    opt = torch.optim.Adam(sup_net.parameters(), 1e-3)

    def supervised_step(idx, path):
        loss = F.cross_entropy(sup_net(x_all[idx], Arch(tuple(path))), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()

    sup = n * B / seconds(supervised_step)

    # (2) block-wise, features cached (computed once, up front; that time is counted)
    t0 = time.perf_counter()
    with torch.no_grad():
        feats = [torch.cat(f) for f in zip(*[teacher.features(x_all[i:i + 256]) for i in range(0, len(x_all), 256)])]
    t_cache = time.perf_counter() - t0
    stds = [relative_floor(f.transpose(0, 1).flatten(1).std(1)) for f in feats]
    students = [BlockStudent(space, b, teacher.channels) for b in range(4)]
    opts = [torch.optim.Adam(s.parameters(), 1e-3) for s in students]

    def blockwise_step(idx, path, f):
        """One step of every block on the batch, from teacher features f (one per block)."""
        for b, (st, o) in enumerate(zip(students, opts)):
            inp = x_all[idx] if b == 0 else f[b - 1]
            loss = feature_distance(st(inp, path[b]), f[b], "mse-channel", stds[b])
            o.zero_grad()
            loss.backward()
            o.step()

    t_cached = seconds(lambda idx, path: blockwise_step(idx, path, [f[idx] for f in feats]))
    cached = n * B / t_cached
    cached_incl = n * B / (t_cached + t_cache)

    # (3) block-wise, teacher run every step
    live = n * B / seconds(lambda idx, path: blockwise_step(idx, path, teacher.features(x_all[idx])))
    res = {"supervised_img_s": sup, "blockwise_cached_img_s": cached, "blockwise_cached_incl_cache_build_img_s": cached_incl,
           "cache_build_s": t_cache, "blockwise_live_teacher_img_s": live, "steps": n, "batch": B, "threads": torch.get_num_threads()}
    print(f"supervised step (same sampled paths):  {sup:8.0f} img/s   1.00x")
    print(f"block-wise, cached teacher features:   {cached_incl:8.0f} img/s   {cached_incl / sup:.2f}x  "
          f"counting the cache build ({t_cache:.1f} s for {len(x_all)} images); {cached:.0f} img/s without it")
    print(f"block-wise, teacher run every step:    {live:8.0f} img/s   {live / sup:.2f}x")
    print(f"cache speed-up over the live teacher:  {cached / live:.2f}x per step")
    write_json(Path(__file__).parent / "results" / "train_throughput.json", res)


if __name__ == "__main__":
    main()
