"""Training throughput (images/s) of DNA block-wise distillation against a plain supervised step of
the same network, with the teacher-feature cache and without it (teacher run every step).
One "image" of block-wise training = the image passed through all blocks once (each block one step).
Run: python bench/train_throughput.py [--steps 30]
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
from dna_deploy.nn.supernet import sample_path
from dna_deploy.space import load_space


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    space = load_space("tiny")
    data = load_mnist(32)
    x_all, y_all = stack(data.train)
    tnet = build_network(space, space.largest_arch()).eval()
    teacher = Teacher(tnet, [f"blocks.{i}" for i in range(4)], [b.out_channels for b in space.blocks], {}, "bench")
    B, n = args.batch, args.steps

    def batches():
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(x_all), generator=g)
        for s in range(n):
            idx = perm[(s * B) % (len(x_all) - B):][:B]
            yield idx

    # (1) plain supervised step of the largest network
    net = build_network(space, space.largest_arch())
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    t0 = time.perf_counter()
    for idx in batches():
        loss = F.cross_entropy(net(x_all[idx]), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    sup = n * B / (time.perf_counter() - t0)

    # (2) block-wise, features cached (computed once, up front; that time is counted)
    t0 = time.perf_counter()
    with torch.no_grad():
        feats = [torch.cat(f) for f in zip(*[teacher.features(x_all[i:i + 256]) for i in range(0, len(x_all), 256)])]
    t_cache = time.perf_counter() - t0
    stds = [relative_floor(f.transpose(0, 1).flatten(1).std(1)) for f in feats]
    students = [BlockStudent(space, b, teacher.channels) for b in range(4)]
    opts = [torch.optim.Adam(s.parameters(), 1e-3) for s in students]
    rng = random.Random(0)
    t0 = time.perf_counter()
    for idx in batches():
        for b, (st, o) in enumerate(zip(students, opts)):
            inp = x_all[idx] if b == 0 else feats[b - 1][idx]
            loss = feature_distance(st(inp, sample_path(space, b, rng)), feats[b][idx], "mse-channel", stds[b])
            o.zero_grad()
            loss.backward()
            o.step()
    t_cached = time.perf_counter() - t0
    cached = n * B / t_cached
    cached_incl = n * B / (t_cached + t_cache)

    # (3) block-wise, teacher run every step
    t0 = time.perf_counter()
    for idx in batches():
        f = teacher.features(x_all[idx])
        for b, (st, o) in enumerate(zip(students, opts)):
            inp = x_all[idx] if b == 0 else f[b - 1]
            loss = feature_distance(st(inp, sample_path(space, b, rng)), f[b], "mse-channel", stds[b])
            o.zero_grad()
            loss.backward()
            o.step()
    live = n * B / (time.perf_counter() - t0)
    res = {"supervised_img_s": sup, "blockwise_cached_img_s": cached, "blockwise_cached_incl_cache_build_img_s": cached_incl,
           "cache_build_s": t_cache, "blockwise_live_teacher_img_s": live, "steps": n, "batch": B, "threads": torch.get_num_threads()}
    print(f"supervised step (largest tiny net):    {sup:8.0f} img/s   1.00x")
    print(f"block-wise, cached teacher features:   {cached:8.0f} img/s   {cached / sup:.2f}x  "
          f"(cache built once in {t_cache:.1f} s for {len(x_all)} images)")
    print(f"block-wise, teacher run every step:    {live:8.0f} img/s   {live / sup:.2f}x")
    print(f"cache speed-up over the live teacher:  {cached / live:.2f}x per step")
    write_json(Path(__file__).parent / "results" / "train_throughput.json", res)


if __name__ == "__main__":
    main()
