"""Why full-integer int8 runs slower than fp32 under LiteRT's XNNPACK here: one op at a time.

Why: comparing the shipped tiny fp32 and int8 tables entry by entry shows MBConv layers with a
7x7 depthwise convolution 2.1-2.7x slower in int8, and 3x3 / 5x5 ones 1.0-1.6x slower. Both
models are taken whole by the XNNPACK delegate (one DELEGATE node, per-channel int8 weights), so
the cause is in the kernels. This times each op of an MBConv layer alone, in fp32 and int8, at a
dna-mbconv stage shape (28x28, 240 channels), converted by onnx2tf as the export is but without
its rewrite, and the 7x7 depthwise convolution once more as the export now builds it (split into
kernels of at most 5x5 taps, nn/rewrite.py). 10th percentile of interleaved rounds, one thread, batch 1.
Run: python bench/int8_ops.py   (about 5 minutes on 2 cores)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from dna_deploy.convert.litert import onnx_to_litert
from dna_deploy.convert.onnx import torch_to_onnx
from dna_deploy.io import write_json
from dna_deploy.nn.rewrite import split_large_depthwise
from dna_deploy.runtimes import runner_class
from dna_deploy.runtimes.base import TimingStats

ROOT = Path(__file__).resolve().parent.parent
C, HW, C_IN = 240, 28, 40


class Depthwise(nn.Module):
    def __init__(self, k: int):
        super().__init__()
        self.conv = nn.Conv2d(C, C, k, padding=k // 2, groups=C)

    def forward(self, x):
        return self.conv(x)


class Pointwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(C_IN, C, 1)

    def forward(self, x):
        return self.conv(x)


class Sigmoid(nn.Module):
    def forward(self, x):
        return torch.sigmoid(x)


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class HardSwish(nn.Module):
    def forward(self, x):
        return x * F.relu6(x + 3) / 6


class Relu(nn.Module):
    def forward(self, x):
        return F.relu(x)


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(C, C // 24, 1), nn.Conv2d(C // 24, C, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(self.fc1(s) * torch.sigmoid(self.fc1(s))))


OPS = {"dwconv 3x3": (Depthwise(3), C), "dwconv 5x5": (Depthwise(5), C), "dwconv 7x7": (Depthwise(7), C),
       "conv 1x1 40->240": (Pointwise(), C_IN), "sigmoid": (Sigmoid(), C), "swish x*sigmoid(x)": (Swish(), C),
       "hard-swish": (HardSwish(), C), "relu": (Relu(), C), "squeeze-excite": (SqueezeExcite(), C),
       "dwconv 7x7, split": (split_large_depthwise(Depthwise(7)), C)}


def convert(module, x, tmp: Path, name: str, precision: str) -> Path:
    """onnx2tf straight from the module: the op as written, without the LiteRT path's rewrite."""
    onnx = torch_to_onnx(module, x, tmp / f"{name}.onnx")
    calib = torch.randn(8, *x.shape[1:]).numpy()
    return onnx_to_litert(onnx, tmp, precisions=(precision,), calibration=calib if precision == "int8" else None,
                          name=name)[precision]


def main():
    torch.set_num_threads(1)
    cls = runner_class("litert")
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        runners = {}
        for label, (module, c) in OPS.items():
            torch.manual_seed(0)
            x = torch.randn(1, c, HW, HW)
            for prec in ("fp32", "int8"):
                name = "".join(ch if ch.isalnum() else "_" for ch in label) + f"_{prec}"
                art = convert(module.eval(), x, Path(tmp), name, prec)
                runners[(label, prec)] = (cls(art, precision=prec).activate(), x.numpy())
        samples = {k: [] for k in runners}
        for _ in range(5):  # interleaved rounds: drift and other tenants spread over every op
            for k, (r, x) in runners.items():
                samples[k] += r.time(x, warmup=20, runs=50)
        for r, _ in runners.values():
            r.close()
    for label in OPS:
        fp, q = (TimingStats.from_samples(samples[(label, p)]).p10_ms for p in ("fp32", "int8"))
        res[label] = {"fp32_ms": fp, "int8_ms": q, "int8_over_fp32": q / fp}
    print(f"{'op at 28x28x240':22} {'fp32 ms':>9} {'int8 ms':>9} {'int8/fp32':>10}")
    for label, r in res.items():
        print(f"{label:22} {r['fp32_ms']:9.4f} {r['int8_ms']:9.4f} {r['int8_over_fp32']:10.2f}")
    write_json(ROOT / "bench/results/int8_ops.json", res)


if __name__ == "__main__":
    main()
