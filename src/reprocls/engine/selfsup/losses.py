"""The self-supervised objectives: NT-Xent (SimCLR) with negatives gathered from every process, InfoNCE against a
queue (MoCo), the normalised regression of BYOL, and the momentum (EMA) update of a target encoder."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class _GatherRows(torch.autograd.Function):
    """all_gather forward; backward sums every process's gradient of the gathered rows and keeps this process's."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every process's rows concatenated in rank order (equal row counts); gradients flow back to the process that
    made them, summed over processes, so the global loss's gradient reaches every embedding."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherRows.apply(x)


def _rank_offset(local: int) -> int:
    return dist.get_rank() * local if dist.is_available() and dist.is_initialized() else 0


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, *, gather: bool = True) -> torch.Tensor:
    """SimCLR's loss over two views: each embedding picks its partner among all 2N - 1 others of the global batch
    (N = the batch of every process together), by cross-entropy over cosine similarity / temperature. The mean over
    this process's 2B rows; averaged over processes (as DDP averages gradients) it is the global batch's mean."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    queries = F.normalize(torch.cat([z1, z2]), dim=1)
    local = z1.shape[0]
    if gather:
        keys1, keys2 = gather_with_grad(queries[:local]), gather_with_grad(queries[local:])
    else:
        keys1, keys2 = queries[:local], queries[local:]
    total = keys1.shape[0]
    keys = torch.cat([keys1, keys2])
    logits = queries @ keys.T / temperature
    own = torch.arange(local, device=z1.device) + (_rank_offset(local) if gather else 0)
    self_column = torch.cat([own, own + total])
    partner = torch.cat([own + total, own])
    itself = torch.zeros_like(logits, dtype=torch.bool)
    itself[torch.arange(2 * local, device=z1.device), self_column] = True
    return F.cross_entropy(logits.float().masked_fill(itself, -math.inf), partner)


def info_nce(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's loss: each query against its own key (positive) and the K queued keys of earlier batches
    (negatives); `queue` is (K, dim), already normalised; `key` carries no gradient."""
    query, key = F.normalize(query, dim=1), F.normalize(key.detach(), dim=1)
    positive = (query * key).sum(dim=1, keepdim=True)
    negative = query @ queue.T
    logits = torch.cat([positive, negative], dim=1).float() / temperature
    return F.cross_entropy(logits, torch.zeros(len(query), dtype=torch.long, device=query.device))


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's 2 - 2 cos(prediction, target), the target a fixed regression goal (no gradient), mean over the batch."""
    return (2 - 2 * F.cosine_similarity(prediction, target.detach(), dim=1)).mean()


class KeyQueue(nn.Module):
    """MoCo's first-in-first-out queue of normalised keys; a buffer, so it is checkpointed with the model and a
    resumed run sees the same negatives. Keys are enqueued from every process (gathered), in rank order."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"the queue needs at least one key, got size {size}")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        """Replace the oldest len(keys) entries (all processes' keys when distributed)."""
        keys = F.normalize(gather_with_grad(keys.detach()), dim=1).to(self.keys.dtype)
        size, start = self.keys.shape[0], int(self.pointer)
        index = (torch.arange(len(keys), device=keys.device) + start) % size
        self.keys[index] = keys[-size:] if len(keys) > size else keys
        self.pointer.fill_((start + len(keys)) % size)


@torch.no_grad()
def momentum_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target = momentum x target + (1 - momentum) x online, parameter by parameter; the target's BatchNorm
    statistics are its own, from its own forward passes (as in MoCo and BYOL)."""
    torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), 1.0 - momentum)


def momentum_at(step: int, total_steps: int, start: float, end: float = 1.0) -> float:
    """BYOL's cosine rise of the target momentum from `start` at step 0 to `end` at the last step."""
    if total_steps <= 1:
        return end
    progress = min(max(step / (total_steps - 1), 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2
