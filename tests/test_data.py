"""Named datasets: the IDX reader and full Fashion-MNIST (skipped, with the reason, where Debian's
dataset-fashion-mnist is not installed)."""

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dna_deploy.data import FASHION_MNIST_DIR, load_data, load_fashion_mnist, read_idx
from dna_deploy.errors import DataError


def _write_idx(path: Path, arr: np.ndarray, *, compress: bool):
    header = b"\0\0\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    (gzip.open if compress else open)(path, "wb").write(header + arr.astype(np.uint8).tobytes())


def test_idx_reader_and_a_small_fashion_folder(tmp_path):
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (200, 28, 28)), "t10k": rng.integers(0, 256, (50, 28, 28))}
    labels = {"train": np.arange(200) % 10, "t10k": np.arange(50) % 10}
    for split in ("train", "t10k"):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images[split], compress=True)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte", labels[split], compress=False)
    assert np.array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), images["train"])
    data = load_fashion_mnist(32, root=tmp_path)
    assert (len(data.train), len(data.rate), len(data.val)) == (180, 20, 50)
    x, y = data.val[3]
    assert x.shape == (3, 32, 32) and int(y) == 3 and torch.equal(x[0], x[2])
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(32, root=tmp_path / "nowhere")


@pytest.mark.skipif(not Path(os.environ.get("DNA_DEPLOY_FASHION_MNIST", FASHION_MNIST_DIR)).is_dir(),
                    reason="Fashion-MNIST IDX files absent: apt-get install dataset-fashion-mnist")
def test_full_fashion_mnist():
    data = load_data("fashion-mnist", 32)
    assert (len(data.train), len(data.rate), len(data.val)) == (54_000, 6_000, 10_000)
    assert data.in_memory and data.num_classes == 10
    x, _ = data.train[0]
    assert x.shape == (3, 32, 32)
    # normalised with the training set's statistics: mean ~0 and std ~1 over a sample
    xs = torch.stack([data.train[i][0][0] for i in range(0, 54_000, 54)])
    assert abs(float(xs.mean())) < 0.1 and 0.85 < float(xs.std()) < 1.15


def test_damaged_idx_files_are_one_line_errors(tmp_path):
    (tmp_path / "short").write_bytes(b"\0\0\x08\x03\0\0")  # a header that promises 3 dimensions and stops
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "short")
    (tmp_path / "broken.gz").write_bytes(gzip.compress(b"\0\0\x08\x01" + b"\0" * 40)[:20])  # truncated gzip
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "broken.gz")
