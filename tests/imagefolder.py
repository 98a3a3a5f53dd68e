"""Synthetic ImageFolder trees for the folder-data tests: class-dependent colour patterns (so a
network can learn them), saved as PNG, JPEG, grayscale and RGBA files as users' folders mix them."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_image_folder(root: Path, *, classes: int = 4, train_per_class: int = 24, val_per_class: int = 6,
                      size: int = 80, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    modes = ["RGB", "L", "RGBA", "RGB"]
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                yy, xx = np.mgrid[0:size, 0:size] / size
                angle = np.pi * c / classes
                wave = np.sin(2 * np.pi * (3 + c) * (xx * np.cos(angle) + yy * np.sin(angle)) + rng.uniform(0, 6))
                base = np.stack([wave * (0.5 + 0.5 * ((c + k) % 3 == 0)) for k in range(3)], -1)
                img = ((base * 0.4 + 0.5 + rng.normal(0, 0.08, base.shape)).clip(0, 1) * 255).astype(np.uint8)
                mode = modes[i % len(modes)]
                pil = Image.fromarray(img).convert(mode)
                ext = ".jpg" if i % 2 else ".png"
                if ext == ".jpg" and mode == "RGBA":
                    ext = ".png"
                pil.save(folder / f"img_{i:04d}{ext}")
    return root
