"""DNA++ with and without its anti-collapse variance term, side by side in one run.

Trains blocks 0 and 1 of the tiny space on the embedded MNIST twice (variance_weight 1 and 0),
then measures the output spread (mean per-channel std over 256 rate images of pooled, normalised
block outputs; ~0 means collapse) of the largest path, and the final variance term.
Run: python bench/dnapp_collapse.py [--epochs 3 --steps 25]   (about 1.5 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from dna_deploy.data import load_mnist, stack
from dna_deploy.distill.selfsup import PopulationCentre, output_spread, train_blocks_selfsup
from dna_deploy.distill.student import load_block
from dna_deploy.io import write_json
from dna_deploy.settings import DistillConfig
from dna_deploy.space import load_space

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=25)
    args = ap.parse_args()
    space, data = load_space("tiny"), load_mnist(32)
    x, _ = stack(data.rate, 256)
    res = {"epochs": args.epochs, "steps_per_epoch": args.steps, "batch_size": 32, "runs": {}}
    for weight in (1.0, 0.0):
        with tempfile.TemporaryDirectory() as out:
            cfg = DistillConfig(method="dna++", epochs=args.epochs, max_steps=args.steps, batch_size=32,
                                variance_weight=weight)
            hist = train_blocks_selfsup(space, data, out, config=cfg, blocks=[0, 1], show_progress=False)
            row = {}
            for b in (0, 1):
                student, _ = load_block(space, out, b)
                inp = x if b == 0 else PopulationCentre(space, out, upto=b).features(x)[b - 1]
                with torch.no_grad():
                    spread = output_spread(student.eval().supernet(inp, space.largest_arch().blocks[b]))
                row[f"block{b}"] = {"spread": spread, "final_variance_term": hist[b]["history"][-1]["variance"],
                                    "final_predict_loss": hist[b]["history"][-1]["predict"]}
            res["runs"][f"variance_weight={weight:g}"] = row
    print(f"{'variance term':14} {'block 0 spread':>15} {'block 1 spread':>15} {'block 1 variance term':>22}")
    for name, row in res["runs"].items():
        print(f"{name:14} {row['block0']['spread']:15.4f} {row['block1']['spread']:15.4f} "
              f"{row['block1']['final_variance_term']:22.4f}")
    on, off = (res["runs"][k]["block1"]["spread"] for k in ("variance_weight=1", "variance_weight=0"))
    print(f"block 1 spread with the term / without: {on / off:.2f}x")
    write_json(ROOT / "bench/results/dnapp_collapse.json", res)


if __name__ == "__main__":
    main()
