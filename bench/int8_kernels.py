"""LiteRT fp32 vs full-integer int8, per kernel set (op_resolver) and per graph, side by side in one run.

Why: on x86, int8 under LiteRT's default XNNPACK delegate ran slower than fp32 (issue 13). The
cause was XNNPACK's slow 7x7 depthwise convolutions (bench/int8_ops.py); the LiteRT path now splits
them into kernels of at most 5x5 taps (nn/rewrite.py). Each network is converted twice: as written
(the old export) and split (the export now), and timed with XNNPACK and with LiteRT's builtin
kernels. Networks: the quickstart's (tiny space, 32 px) and a dna-mbconv network at 224 px, where
compute dominates. 10th percentile of interleaved timing, one thread, batch 1; ratios against fp32
as written under XNNPACK (the old default).
Run: python bench/int8_kernels.py   (about 5 minutes on 2 cores)
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import torch

from dna_deploy.convert.litert import onnx_to_litert
from dna_deploy.convert.onnx import torch_to_onnx
from dna_deploy.io import write_json
from dna_deploy.nn.builder import build_network
from dna_deploy.nn.rewrite import split_large_depthwise
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
        tmp = Path(tmp)
        for label, (space_name, arch) in NETWORKS.items():
            sp = load_space(space_name)
            a = sp.parse_arch(arch) if arch else sp.sample(random.Random(3))
            torch.manual_seed(0)
            net = build_network(sp, a).eval()
            x = torch.randn(1, 3, sp.input_size, sp.input_size)
            calib = torch.randn(8, 3, sp.input_size, sp.input_size).numpy()
            runners = {}
            for graph, module in (("as written", net), ("split", split_large_depthwise(net))):
                name = f"{space_name}_{graph.replace(' ', '_')}"
                onnx = torch_to_onnx(module, x, tmp / f"{name}.onnx")
                arts = onnx_to_litert(onnx, tmp, precisions=("fp32", "int8"), calibration=calib, name=name)
                for prec in ("fp32", "int8"):
                    for kernels in ("xnnpack", "builtin"):
                        runners[(graph, prec, kernels)] = cls(arts[prec], precision=prec, op_resolver=kernels).activate()
            runs = 20 if space_name == "tiny" else 5
            samples = {k: [] for k in runners}
            for _ in range(4):  # interleaved rounds: drift spreads over all of them
                for k, r in runners.items():
                    samples[k] += r.time(x.numpy(), warmup=3, runs=runs)
            for r in runners.values():
                r.close()
            p10 = {k: TimingStats.from_samples(v).p10_ms for k, v in samples.items()}
            base = p10[("as written", "fp32", "xnnpack")]
            res[label] = {"arch": str(a), **{f"{g}/{p}/{k}": {"p10_ms": m, "vs_fp32_as_written_xnnpack": m / base}
                                             for (g, p, k), m in p10.items()}}
    for label, r in res.items():
        print(f"\n{label}: p10 ms (ratio to fp32 as written, XNNPACK)")
        for g in ("as written", "split"):
            cells = [f"{p} {k}: {r[f'{g}/{p}/{k}']['p10_ms']:.3f} ({r[f'{g}/{p}/{k}']['vs_fp32_as_written_xnnpack']:.2f}x)"
                     for p in ("fp32", "int8") for k in ("xnnpack", "builtin")]
            print(f"  {g:10} " + "  ".join(cells))
        for g in ("as written", "split"):
            ratio = r[f"{g}/int8/xnnpack"]["p10_ms"] / r[f"{g}/fp32/xnnpack"]["p10_ms"]
            print(f"  int8 / fp32 under XNNPACK, {g}: {ratio:.2f}x")
    write_json(ROOT / "bench/results/int8_kernels.json", res)


if __name__ == "__main__":
    main()
