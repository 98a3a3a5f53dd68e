"""torch.distributed helpers shared by training and rating (torchrun: gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import os


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed_from_env() -> bool:
    """Join the process group torchrun describes (gloo for CPU tensors, nccl for CUDA ones); False when
    not launched so."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not torch.distributed.is_initialized():
        # CPU tensors always go through gloo; CUDA tensors through nccl where a GPU is present
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return True


def barrier() -> None:
    if dist_info()[1] > 1:
        import torch

        torch.distributed.barrier()
