"""One trained network on every CPU runtime, side by side: latency (batch 1, one thread) and
accuracy of PyTorch eager, ONNX Runtime, LiteRT fp32 / fp16 / int8, from one run.
Run: python bench/export.py [--weights runs/quickstart/retrain/model.pt]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from dna_deploy.data import load_mnist, stack
from dna_deploy.deploy.export import export_model
from dna_deploy.deploy.verify import accuracy, verify_export
from dna_deploy.distill.checkpoints import load_model
from dna_deploy.distill.retrain import retrain
from dna_deploy.io import write_json
from dna_deploy.runtimes.base import measure
from dna_deploy.runtimes.torch import TorchRunner
from dna_deploy.settings import ClassifierConfig, ExportSettings
from dna_deploy.space import load_space


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default="runs/quickstart/retrain/model.pt")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(args.weights)
        if not weights.is_file():
            space = load_space("tiny")
            print(f"{weights} not found: training a tiny network for 2 epochs first")
            retrain(space, space.parse_arch("k5e3.skip|k5e3.k7e3.skip|k5e6.k5e3.k7e6|k7e3.k5e3"), load_mnist(32), tmp,
                    config=ClassifierConfig(epochs=2), show_progress=False)
            weights = Path(tmp) / "model.pt"
        out = Path(tmp) / "export"
        export_model(weights, out, ExportSettings(to="tflite", precisions=("fp32", "fp16", "int8")))
        rep = verify_export(out, show_progress=False)
        space, arch, net, _ = load_model(weights)
        x, y = stack(load_mnist(space.input_size).val)
        with torch.no_grad():
            acc = accuracy(net(x).numpy(), y.numpy())
        with TorchRunner(net, threads=1, input_shape=(1, 3, space.input_size, space.input_size)) as r:
            t = measure(r, x[:1].numpy(), warmup=20, runs=100)
        rows = [{"runtime": "pytorch eager", "precision": "fp32", "median_ms": t.median_ms, "accuracy": acc}]
        rows += [{"runtime": a["runtime"], "precision": a["precision"], "median_ms": a["stats"]["latency_ms"]["median_ms"],
                  "accuracy": a["stats"]["accuracy"]} for a in rep["artifacts"]]
    base = rows[0]["median_ms"]
    print(f"network {arch} ({space.name}), {len(y)} validation images, batch 1, 1 thread")
    print(f"{'runtime':15} {'precision':9} {'median ms':>9} {'vs eager':>9} {'accuracy':>9}")
    for r in rows:
        print(f"{r['runtime']:15} {r['precision']:9} {r['median_ms']:9.4f} {base / r['median_ms']:8.2f}x {r['accuracy']:9.4f}")
    write_json(Path(__file__).parent / "results" / "export.json", rows)


if __name__ == "__main__":
    main()
