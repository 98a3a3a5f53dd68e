"""torch.distributed helpers shared by training and rating (torchrun: gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import os


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed_from_env(device=None) -> bool:
    """Join the process group torchrun describes; False when not launched so. On a GPU rank
    (`device` is CUDA, already selected with torch.cuda.set_device) collectives go through NCCL,
    with gloo kept for the CPU tensors some helpers reduce; on the CPU through gloo alone."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not torch.distributed.is_initialized():
        on_gpu = device is not None and getattr(device, "type", str(device)) == "cuda"
        backend = "cpu:gloo,cuda:nccl" if on_gpu else "gloo"
        kw = {"device_id": device} if on_gpu else {}
        torch.distributed.init_process_group(backend=backend, **kw)
    return True


def barrier() -> None:
    if dist_info()[1] > 1:
        import torch

        torch.distributed.barrier()
