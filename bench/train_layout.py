"""Training steps on the CPU in channels_last (NHWC) against NCHW, through the library's own path
(Compute.module / Compute.batch, the stages' optimiser), side by side in one run.

Why: ComputeSettings.channels_last is on by default on the CPU as well as on CUDA; this is the
measurement behind that default. Same network, seed, batches and optimiser for both layouts;
3 untimed warm-up steps, then --steps timed ones, the layouts alternated twice (ABAB) so drift on
a shared machine hits both. Prints images/s and the ratio; writes bench/results/train_layout.json.
Run: python bench/train_layout.py [--steps 20]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dna_deploy.compute import Compute
from dna_deploy.io import write_json
from dna_deploy.nn.builder import build_network
from dna_deploy.settings import ComputeSettings
from dna_deploy.space import load_space

ROOT = Path(__file__).resolve().parent.parent
CASES = [  # space, architecture (None: the largest), resolution, batch
    ("tiny", "k3e3.skip|k3e3.k5e3.skip|k3e6.k7e6.skip|k7e6.skip", 32, 64),
    ("tiny", None, 32, 64),
    ("dna-mbconv", None, 64, 32),
    ("vit-tiny", None, 32, 64),
]


def images_per_s(space, arch, size: int, batch: int, compute: Compute, steps: int) -> float:
    torch.manual_seed(0)
    net = compute.module(build_network(space, arch)).train()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    xs = [compute.batch(torch.randn(batch, space.in_channels, size, size, generator=g)) for _ in range(4)]
    y = torch.randint(0, 10, (batch,), generator=g)

    def step(i):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(xs[i % 4]), y).backward()
        opt.step()

    for i in range(3):
        step(i)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    return steps * batch / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    layouts = {cl: Compute.from_settings(ComputeSettings(device="cpu", channels_last=cl, workers=0)) for cl in (False, True)}
    rows = []
    for name, arch_s, size, batch in CASES:
        space = load_space(name)
        arch = space.parse_arch(arch_s) if arch_s else space.largest_arch()
        speed = {False: [], True: []}
        for _ in range(2):
            for cl in (False, True):
                speed[cl].append(images_per_s(space, arch, size, batch, layouts[cl], args.steps))
        nchw, nhwc = max(speed[False]), max(speed[True])  # the better of two passes each
        rows.append({"space": name, "arch": str(arch), "size": size, "batch": batch, "nchw_img_s": nchw,
                     "channels_last_img_s": nhwc, "speedup": nhwc / nchw})
        print(f"{name:11} {size:3d}px batch {batch:3d} {str(arch)[:44]:44}  NCHW {nchw:7.1f} img/s  "
              f"channels_last {nhwc:7.1f} img/s  {nhwc / nchw:.2f}x", flush=True)
    write_json(ROOT / "bench/results/train_layout.json",
               {"threads": torch.get_num_threads(), "steps": args.steps, "torch": torch.__version__, "rows": rows})
    print("wrote bench/results/train_layout.json")


if __name__ == "__main__":
    main()
