"""Where training, rating and retraining run: the device, mixed precision, memory layout and the
data loaders, decided once so that every stage moves models and batches the same way.

Why one place: a stage that forgets one `.to(device)` runs on the CPU without a word, or fails
under torchrun with NCCL while its tensors sit on the CPU. Here `Compute.from_settings` resolves
`auto|cpu|cuda[:N]` (under torchrun each rank takes its LOCAL_RANK GPU), and the stages ask it for
the autocast context, the gradient scaler and loaders. The CPU path is plain fp32; both devices
keep convolutions in channels_last (NHWC) unless told not to (ComputeSettings.channels_last).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from dna_deploy.errors import DataError
from dna_deploy.settings import ComputeSettings


def resolve_device(spec: str) -> torch.device:
    """'auto' -> this rank's GPU when there is one, else the CPU; 'cuda' -> this rank's GPU;
    'cuda:N' -> that GPU; 'cpu'. A GPU asked for and absent is one clear error."""
    spec = (spec or "auto").strip().lower()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "auto":
        return torch.device("cuda", local_rank % torch.cuda.device_count()) if torch.cuda.is_available() else torch.device("cpu")
    if spec.startswith("cuda:") and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        # every rank would share that one GPU: under torchrun each rank takes its LOCAL_RANK GPU
        raise DataError(f"--device {spec} under torchrun would put all {os.environ['LOCAL_WORLD_SIZE']} local ranks on "
                        "one GPU; use --device cuda (each rank its LOCAL_RANK GPU) and CUDA_VISIBLE_DEVICES to choose GPUs")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DataError(f"--device {spec}: no CUDA GPU is visible here (torch {torch.__version__}, "
                            f"CUDA build {torch.version.cuda}); use --device cpu or auto")
        index = local_rank if spec == "cuda" else int(spec.split(":", 1)[1]) if spec.split(":", 1)[1].isdigit() else -1
        if not 0 <= index < torch.cuda.device_count():
            raise DataError(f"--device {spec}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0.."
                            f"cuda:{torch.cuda.device_count() - 1}")
        return torch.device("cuda", index)
    raise DataError(f"--device {spec!r}: use auto, cpu, cuda or cuda:N")


def native_amp_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the GPU computes it natively (compute capability 8.0 and up: A100, H100, RTX 30xx
    and later), else fp16 with a loss scaler. Not `torch.cuda.is_bf16_supported()`: it also counts
    bf16 emulated in fp32 (V100, T4), which runs slower than fp32 itself."""
    return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16


@dataclass(frozen=True)
class Compute:
    """The resolved device and what follows from it (AMP dtype, channels_last, loader settings)."""

    device: torch.device
    amp_dtype: torch.dtype | None  # None: fp32 (always on the CPU)
    channels_last: bool
    workers: int
    checkpoint_every: int | None = None  # steps between mid-epoch checkpoints
    sync_bn: bool = False
    timeout_min: float = 30.0

    @classmethod
    def from_settings(cls, settings: ComputeSettings | None = None) -> "Compute":
        settings = settings or ComputeSettings()
        device = resolve_device(settings.device)
        amp = None
        if device.type == "cuda":
            torch.cuda.set_device(device)
            if settings.amp:
                amp = native_amp_dtype(device)
            torch.backends.cudnn.benchmark = True
        workers = settings.workers if settings.workers is not None else default_workers()
        if settings.sync_bn and device.type != "cuda":
            raise DataError("sync_bn synchronises BatchNorm across GPU ranks (NCCL); this run is on the CPU: leave it off")
        return cls(device, amp, settings.channels_last, workers, settings.checkpoint_every, settings.sync_bn,
                   settings.timeout_min)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def describe(self) -> dict:
        return {"device": str(self.device), "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32",
                "channels_last": self.channels_last, "workers": self.workers, "sync_bn": self.sync_bn,
                **({"gpu": torch.cuda.get_device_name(self.device),
                    "capability": ".".join(map(str, torch.cuda.get_device_capability(self.device)))} if self.is_cuda else {})}

    def autocast(self):
        """Mixed precision for forward passes on the GPU; nothing on the CPU."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def scaler(self) -> "torch.amp.GradScaler":
        """A loss scaler for fp16 (bf16 and fp32 need none: the scaler is then disabled)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def module(self, m: torch.nn.Module) -> torch.nn.Module:
        m = m.to(self.device)
        return m.to(memory_format=torch.channels_last) if self.channels_last else m

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def ddp(self, module: torch.nn.Module) -> torch.nn.Module:
        """Data-parallel over the ranks (gradients averaged); the module itself outside torchrun.

        One path of the supernet is active per step, so unused parameters are expected; buffers
        are not broadcast (that would send every candidate's BN statistics each step, and rating
        re-estimates BN anyway). With sync_bn, BatchNorm layers are swapped in place for
        SyncBatchNorm (same parameters: the optimiser keeps them)."""
        from dna_deploy.distributed import dist_info

        if dist_info()[1] <= 1:
            return module
        if self.sync_bn:
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        ids = [self.device.index] if self.is_cuda else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True,
                                                         broadcast_buffers=False)

    def loader(self, dataset, *, batch_sampler=None, batch_size: int | None = None, streamed: bool = True):
        """A DataLoader: worker processes, pinned memory and persistent workers for streamed
        (folder) data; none for in-memory tensors, where workers only add copies."""
        from dna_deploy.distributed import dist_info

        workers = self.workers if streamed else 0
        kw = dict(num_workers=workers, pin_memory=self.is_cuda and streamed, persistent_workers=workers > 0)
        if workers > 0:
            kw["prefetch_factor"] = 4
            # loader workers seed their random augmentations from this: different on every rank
            kw["generator"] = torch.Generator().manual_seed(1_000_003 * dist_info()[0] + torch.initial_seed() % 1_000_003)
        if batch_sampler is not None:
            return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, **kw)
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, **kw)


def default_workers() -> int:
    """Loader processes per rank: the cores this process may use, shared among local ranks, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(8, cores // max(local, 1) - 1))


class EpochBatches(torch.utils.data.Sampler):
    """The batches of one epoch for this rank: a permutation fixed by `seed` (callers mix in the
    epoch), cut into global batches, each split among the ranks; `start` skips the first batches
    without loading them.

    Why not DistributedSampler: a mid-epoch resume must continue with exactly the batches that were
    not yet seen, and every rank must take the same number of steps (DDP hangs otherwise)."""

    def __init__(self, n: int, batch_size: int, *, seed: int, rank: int = 0, world: int = 1,
                 start: int = 0, steps: int | None = None, drop_last: bool = False):
        self.n, self.batch_size, self.rank, self.world, self.start, self.seed = n, batch_size, rank, world, start, seed
        full = n // batch_size
        if not drop_last and n % batch_size >= world:  # a last, smaller batch, if every rank gets an image of it
            full += 1
        self.steps = min(full, steps) if steps else full

    def __len__(self) -> int:
        return max(self.steps - self.start, 0)

    def set_epoch(self, seed: int, start: int = 0) -> "EpochBatches":
        """The next epoch's batches from the same sampler, so a loader built once per stage (and
        its persistent workers) serves every epoch; the loader reads it at each new iteration."""
        self.seed, self.start = seed, start
        return self

    def order(self) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed))

    def __iter__(self):
        perm = self.order()
        for step in range(self.start, self.steps):
            batch = perm[step * self.batch_size:(step + 1) * self.batch_size]
            if self.world > 1:  # balanced shares, none empty: DDP needs every rank in every step
                batch = batch.tensor_split(self.world)[self.rank]
            yield batch.tolist()


def evenly_spaced_subset(n: int, limit: int | None, seed: int = 0) -> list[int]:
    """A fixed subset of `limit` of `n` indices (all of them when limit is None or >= n), sorted:
    the same images on every run and every rank, so capped ratings stay comparable."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()[:limit])
