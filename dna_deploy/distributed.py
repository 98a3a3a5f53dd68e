"""torch.distributed helpers shared by training and rating (torchrun: gloo on CPU, nccl on GPU).

Why these and not bare collectives: a rank that fails must not leave the others waiting in a
collective until NCCL's watchdog kills the job hours later. Every collective here has the
process group's timeout (`compute.timeout_min`), and `agree` lets a rank that caught an error
hand it to every rank, which then all raise the same one line. Results travel through
`all_gather` (pickled small objects over the CPU/gloo side of the group), never through a shared
folder: several nodes need no shared file system.
"""

from __future__ import annotations

import datetime as _dt
import os

DEFAULT_TIMEOUT_MIN = 30.0


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed_from_env(device=None, *, timeout_min: float = DEFAULT_TIMEOUT_MIN) -> bool:
    """Join the process group torchrun describes; False when not launched so. On a GPU rank
    (`device` is CUDA, already selected with torch.cuda.set_device) collectives go through NCCL,
    with gloo kept for the CPU tensors and objects some helpers exchange; on the CPU through gloo
    alone. `timeout_min` bounds every collective: a rank left waiting raises instead of hanging."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not torch.distributed.is_initialized():
        on_gpu = device is not None and getattr(device, "type", str(device)) == "cuda"
        backend = "cpu:gloo,cuda:nccl" if on_gpu else "gloo"
        kw = {"device_id": device} if on_gpu else {}
        torch.distributed.init_process_group(backend=backend, timeout=_dt.timedelta(minutes=timeout_min), **kw)
    return True


def shutdown_distributed() -> None:
    """Leave the process group (NCCL warns, and may hang at exit, when a process ends inside one)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def barrier() -> None:
    if dist_info()[1] > 1:
        import torch

        torch.distributed.barrier()


def all_gather(obj) -> list:
    """Every rank's `obj` (a small picklable object), in rank order, on every rank."""
    rank, world = dist_info()
    if world <= 1:
        return [obj]
    import torch

    out: list = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def agree(error: str | None) -> None:
    """A collective every rank reaches, with the error it caught (None if all went well): when any
    rank failed, every rank raises the first failure's message, so all end with one line instead
    of the healthy ranks waiting in the next collective for one that is gone."""
    from dna_deploy.errors import DataError

    failures = [(r, e) for r, e in enumerate(all_gather(error)) if e]
    if failures:
        rank, message = failures[0]
        raise DataError(message if dist_info()[1] <= 1 else f"rank {rank}: {message}")
