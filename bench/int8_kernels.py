"""LiteRT fp32 vs full-integer int8 under each kernel set (op_resolver), side by side in one run.

Why: on x86, int8 under LiteRT's default XNNPACK delegate can run slower than fp32; the kernel set
is part of the device. Networks: the quickstart's (tiny space, 32 px) and a dna-mbconv network at
224 px, where compute dominates. Medians of interleaved timing, one thread, batch 1; ratios vs fp32
with the default kernels.
Run: python bench/int8_kernels.py   (about 2 minutes on 2 cores)
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import torch

from dna_deploy.io import write_json
from dna_deploy.nn.builder import build_network
from dna_deploy.runtimes import runner_class
from dna_deploy.runtimes.base import TimingStats
from dna_deploy.space import load_space

ROOT = Path(__file__).resolve().parent.parent
NETWORKS = {"tiny (32 px)": ("tiny", "k7e6.skip|k5e3.k7e3.skip|k5e3.k5e6.k7e6|k7e3.k7e6"),
            "dna-mbconv (224 px)": ("dna-mbconv", None)}


def main():
    torch.set_num_threads(1)
    cls = runner_class("litert")
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, (space_name, arch) in NETWORKS.items():
            sp = load_space(space_name)
            a = sp.parse_arch(arch) if arch else sp.sample(random.Random(3))
            torch.manual_seed(0)
            net = build_network(sp, a).eval()
            x = torch.randn(1, 3, sp.input_size, sp.input_size)
            runners = {}
            for prec in ("fp32", "int8"):
                art = cls.prepare_artifact(net, x, Path(tmp), name=f"{space_name}_{prec}", precision=prec)
                for kernels in ("xnnpack", "builtin"):
                    runners[(prec, kernels)] = cls(art, precision=prec, op_resolver=kernels).activate()
            runs = 20 if space_name == "tiny" else 5
            samples = {k: [] for k in runners}
            for _ in range(3):  # interleaved rounds: drift spreads over all four
                for k, r in runners.items():
                    samples[k] += r.time(x.numpy(), warmup=3, runs=runs)
            for r in runners.values():
                r.close()
            med = {k: TimingStats.from_samples(v).median_ms for k, v in samples.items()}
            base = med[("fp32", "xnnpack")]
            res[label] = {"arch": str(a), **{f"{p}/{k}": {"median_ms": m, "vs_fp32_default": m / base}
                                             for (p, k), m in med.items()}}
    print(f"{'network':22} {'fp32 xnnpack':>14} {'fp32 builtin':>14} {'int8 xnnpack':>14} {'int8 builtin':>14}")
    for label, r in res.items():
        cells = [f"{r[c]['median_ms']:.2f} ({r[c]['vs_fp32_default']:.2f}x)" for c in
                 ("fp32/xnnpack", "fp32/builtin", "int8/xnnpack", "int8/builtin")]
        print(f"{label:22} " + " ".join(f"{c:>14}" for c in cells))
    write_json(ROOT / "bench/results/int8_kernels.json", res)


if __name__ == "__main__":
    main()
