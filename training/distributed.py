"""torchrun process groups: which rank this is, its device, and the few collectives the trainer needs."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's place among ``world`` ranks (from torchrun's RANK / WORLD_SIZE / LOCAL_RANK)."""

    rank: int
    world: int
    device: torch.device

    @property
    def master(self) -> bool:
        return self.rank == 0

    def agree(self, value: int, op=dist.ReduceOp.MIN) -> int:
        """The value all ranks agree on (reduced with ``op``); the value itself on one process."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=op)
        return int(t.item())

    def average_gradients(self, params: list[torch.nn.Parameter], loss: torch.Tensor) -> torch.Tensor:
        """Average every gradient and ``loss`` over ranks in one flat all-reduce; returns the averaged loss."""
        if self.world == 1:
            return loss
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.flatten() for g in grads] + [loss.view(1)])
        dist.all_reduce(flat, op=dist.ReduceOp.AVG)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        return flat[-1]

    def close(self) -> None:
        if self.world > 1:
            dist.destroy_process_group()


def setup_distributed(device: str = "auto") -> Dist:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU) when WORLD_SIZE > 1; pick this rank's device."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if want_cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1:
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
    return Dist(rank, world, dev)
