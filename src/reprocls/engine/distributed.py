"""torchrun integration: process group set-up from torchrun's environment, rank-aware helpers, all-reduce of sums."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """Where this process sits: rank among world_size processes, local_rank on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched_by_torchrun: bool = False

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Under torchrun (even with one process: NCCL/Gloo and DDP are then exercised) or with several processes."""
        return self.launched_by_torchrun or self.world_size > 1


def world_from_env() -> World:
    """The World torchrun describes in RANK/WORLD_SIZE/LOCAL_RANK; a plain launch is a world of one."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)),
                 "TORCHELASTIC_RUN_ID" in os.environ)


def init_distributed(device_name: str) -> tuple[World, torch.device | None]:
    """Join torchrun's process group (NCCL for CUDA, Gloo for CPU); returns the world and this rank's device."""
    world = world_from_env()
    if not world.distributed:
        return world, None
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", world.local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", store=attempt_store(world), rank=world.rank,
                                world_size=world.world_size, device_id=device if use_cuda else None)
    return world, device


def attempt_store(world: World) -> dist.Store:
    """torchrun's store, with keys private to this restart attempt: after a restart, no process may read the
    address a dead process of the previous attempt published."""
    host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", 29500))
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(host, port, world.world_size, is_master=world.rank == 0 and not agent_store,
                          timeout=timedelta(minutes=30), multi_tenant=not agent_store)
    return dist.PrefixStore(f"reprocls/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(*values: torch.Tensor) -> list[torch.Tensor]:
    """Sum tensors over all processes (identity in a world of one); counts and sums, never means."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    out = []
    for value in values:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        out.append(value)
    return out


def all_gather_cat(values: torch.Tensor) -> torch.Tensor:
    """Every process's CPU tensor concatenated in rank order (each its own length; identity in a world of one)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    parts: list[torch.Tensor | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, values.cpu())
    return torch.cat([part for part in parts if part is not None])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside DistributedDataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model
