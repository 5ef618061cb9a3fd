"""Collectives for multi-process runs (DDP), all no-ops in a single process.

Why not DDP's own gradient hooks: one GoRL ``training_step`` takes many optimiser steps (every PPO
minibatch, every decoder batch), while ``DistributedDataParallel`` syncs gradients once per forward
of the wrapped module. Lightning's DDP strategy still launches the processes, sets up the process
group, places logging and checkpoint writing on rank 0 and broadcasts the initial weights; the
system turns DDP's per-forward sync off and averages gradients itself after every backward.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def collective_device() -> torch.device:
    """Where a tensor made for a collective must live: NCCL reduces only CUDA tensors, gloo both."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def min_over_ranks(value: int) -> int:
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.long, device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def average_gradients_(params: list[torch.Tensor]) -> None:
    """Average ``.grad`` of ``params`` over ranks in one flat all-reduce."""
    n = world_size()
    grads = [p.grad for p in params if p.grad is not None]
    if n == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= n
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_module_(module: nn.Module, src: int = 0) -> None:
    """Make every rank's parameters and buffers equal to rank ``src``'s (after a re-initialisation)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=src)
