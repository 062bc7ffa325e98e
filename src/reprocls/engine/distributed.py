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


def on_every_process(holds: bool, device: torch.device) -> bool:
    """Whether `holds` is true on all processes (itself in a world of one): a decision to stop that only one
    process took would leave the others waiting in their next all-reduce."""
    if not (dist.is_available() and dist.is_initialized()):
        return holds
    flag = torch.tensor(1.0 if holds else 0.0, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


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


class _AllReduceSum(torch.autograd.Function):
    """The sum over processes, differentiable: the gradient of every process's copy is the sum of all of theirs."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        total = x.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        total = grad.clone()
        dist.all_reduce(total)
        return total


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The sum of `x` over processes, with the gradient flowing back to every process's share."""
    return _AllReduceSum.apply(x)


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the images of every process (SimCLR's global BN, MoCo's alternative to shuffled BN): the sums,
    then the squared deviations from their mean, are all-reduced with their gradient, on Gloo and NCCL alike, where
    torch's SyncBatchNorm runs on CUDA only. Outside training or in a world of one it is plain BatchNorm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {input.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims, channels = [0, *range(2, x.dim())], x.shape[1]
        values = x.float()
        local = torch.tensor([x.numel() // channels], dtype=torch.float32, device=x.device)
        stats = all_reduce_with_grad(torch.cat([values.sum(dims), local]))
        count = stats[-1]
        mean = stats[:channels] / count
        shape = [1, channels] + [1] * (x.dim() - 2)
        centred = values - mean.view(shape)  # a second pass: E[x^2] - E[x]^2 loses the digits of narrow channels
        var = all_reduce_with_grad(centred.pow(2).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * count / (count - 1).clamp_min(1), factor)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_to_global_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Every BatchNorm layer of `module` replaced by a GlobalBatchNorm with the same parameters and statistics."""
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        converted = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                    module.track_running_stats, device=module.running_mean.device
                                    if module.running_mean is not None else None)
        converted.load_state_dict(module.state_dict())
        converted.train(module.training)
        if module.affine:
            converted.weight.requires_grad_(module.weight.requires_grad)
            converted.bias.requires_grad_(module.bias.requires_grad)
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_to_global_batchnorm(child))
    return module
