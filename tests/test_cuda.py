"""The engine's GPU paths: fp16 with GradScaler, skipped steps, bf16 autocast and channels_last on CUDA.

Every test is plain (no fixtures, no parametrize) so benchmarks/gpu_check.sh can call them without pytest.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reprocls.data.datasets import TensorSplit
from reprocls.data.loaders import TensorLoader
from reprocls.engine.precision import resolve_channels_last, resolve_device, resolve_precision
from reprocls.engine.train import Trainee, TrainSettings, optimizer_step, train_one_epoch
from reprocls.models import create_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


class ListLoader(list):
    """Fixed batches with the set_epoch the engine calls."""

    def set_epoch(self, epoch: int, start: int = 0) -> None: ...


def quadrant_split(count: int, size: int = 16, seed: int = 0) -> TensorSplit:
    """A task a tiny CNN learns in a few epochs: the label says which quadrant is bright."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (count,), generator=generator)
    images = torch.randint(0, 64, (count, 1, size, size), dtype=torch.uint8, generator=generator)
    half = size // 2
    for label, (row, col) in enumerate([(0, 0), (0, half), (half, 0), (half, half)]):
        images[labels == label, :, row:row + half, col:col + half] += 150
    return TensorSplit(images, labels)


def tiny_cnn(classes: int = 4, size: int = 16) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * (size // 2) ** 2, classes))


def constant_schedule(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def inject_inf_once(parameter: nn.Parameter) -> None:
    """The first backward through `parameter` gets an infinite gradient, as an fp16 overflow would give."""
    calls = []

    def hook(grad: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return torch.full_like(grad, float("inf")) if len(calls) == 1 else grad

    parameter.register_hook(hook)


def test_fp16_autocast_with_grad_scaler_trains() -> None:
    torch.manual_seed(0)
    model = tiny_cnn().to(CUDA)
    loader = TensorLoader(quadrant_split(512), batch_size=64, mean=(0.3,), std=(0.3,), device=CUDA, train=True, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = constant_schedule(optimizer)
    scaler = torch.amp.GradScaler("cuda")
    dtypes: set[torch.dtype] = set()
    model[0].register_forward_hook(lambda module, args, out: dtypes.add(out.dtype))
    before = [p.detach().clone() for p in model.parameters()]
    trainee = Trainee(model, optimizer, scheduler, nn.CrossEntropyLoss(), scaler)
    settings = TrainSettings(device=CUDA, amp_dtype=torch.float16, progress=False)
    losses = [train_one_epoch(trainee, loader, settings)["loss"] for _ in range(4)]
    assert dtypes == {torch.float16}  # the convolution really ran under fp16 autocast
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())  # fp32 master weights
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    scale = scaler.get_scale()
    assert 0 < scale < float("inf")
    skipped = round(math.log2(2.0**16 / scale))  # each skip halves the initial 2**16; growth needs 2000 clean steps
    assert scheduler.last_epoch == 4 * len(loader) - skipped  # the schedule advanced once per step really taken


def test_scaler_skip_is_reported_and_leaves_the_weights() -> None:
    torch.manual_seed(0)
    model = tiny_cnn().to(CUDA)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)
    inject_inf_once(model[0].weight)
    images, labels = torch.randn(16, 1, 16, 16, device=CUDA), torch.randint(0, 4, (16,), device=CUDA)
    with torch.autocast("cuda", dtype=torch.float16):
        loss = F.cross_entropy(model(images), labels)
    scaler.scale(loss).backward()
    before = [p.detach().clone() for p in model.parameters()]
    assert optimizer_step(optimizer, model, scaler, grad_clip_norm=1.0) == "skipped_by_scaler"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert scaler.get_scale() == 2.0**9  # backed off by the default factor 0.5


def test_skipped_step_does_not_advance_the_lr_schedule() -> None:
    torch.manual_seed(0)
    model = tiny_cnn().to(CUDA)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)
    inject_inf_once(model[0].weight)
    batches = ListLoader([(torch.randn(16, 1, 16, 16, device=CUDA), torch.randint(0, 4, (16,), device=CUDA))
                          for _ in range(3)])
    train_one_epoch(Trainee(model, optimizer, scheduler, nn.CrossEntropyLoss(), scaler), batches,
                    TrainSettings(device=CUDA, amp_dtype=torch.float16, grad_clip_norm=1.0, progress=False))
    assert scheduler.last_epoch == 2  # three optimizer steps attempted, the first skipped
    assert math.isclose(optimizer.param_groups[0]["lr"], 0.1 * 0.5**2, rel_tol=1e-9)
    assert scaler.get_scale() == 2.0**9
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bf16_autocast_matches_fp32_within_tolerance() -> None:
    torch.manual_seed(0)
    reference = create_model("resnet20", num_classes=10, in_chans=1).to(CUDA).train()
    mixed = copy.deepcopy(reference)
    images, labels = torch.randn(64, 1, 28, 28, device=CUDA), torch.randint(0, 10, (64,), device=CUDA)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # a true fp32 reference, not TF32
        logits32 = reference(images)
        F.cross_entropy(logits32, labels).backward()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits16 = mixed(images)
    assert logits16.dtype == torch.bfloat16
    F.cross_entropy(logits16.float(), labels).backward()
    relative = (logits16.float() - logits32).norm() / logits32.norm()
    assert relative < 0.05, f"bf16 logits differ from fp32 by {relative:.4f} (relative L2), tolerance 0.05"
    grads32 = torch.cat([p.grad.flatten() for p in reference.parameters()])
    grads16 = torch.cat([p.grad.flatten() for p in mixed.parameters()])
    assert grads16.dtype == torch.float32  # gradients land on the fp32 weights
    cosine = F.cosine_similarity(grads16, grads32, dim=0)
    assert cosine > 0.98, f"bf16 gradient direction differs from fp32: cosine {cosine:.4f}, tolerance 0.98"


def test_channels_last_gives_the_same_logits() -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_chans=1).to(CUDA).eval()
    assert resolve_channels_last("auto", model) is True
    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
    images = torch.randn(32, 1, 28, 28, device=CUDA)
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        expected = model(images)
        features = nhwc.forward_features(images.contiguous(memory_format=torch.channels_last))
        logits = nhwc.forward_head(features)
    assert nhwc.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert features.is_contiguous(memory_format=torch.channels_last) and not features.is_contiguous()
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_auto_precision_and_device_pick_the_gpu() -> None:
    assert resolve_device("auto") == CUDA
    native_bf16 = torch.cuda.get_device_capability() >= (8, 0)  # Ampere and later
    assert resolve_precision("auto", CUDA) is (torch.bfloat16 if native_bf16 else torch.float16)


def test_tensor_loader_keeps_the_data_on_the_gpu() -> None:
    loader = TensorLoader(quadrant_split(100), batch_size=32, mean=(0.3,), std=(0.3,), device=CUDA, train=True, seed=0,
                          channels_last=True)
    assert loader.images.is_cuda
    batches = list(loader)
    assert len(batches) == 3
    for images, labels in batches:
        assert images.is_cuda and labels.is_cuda and images.dtype == torch.float32
        assert images.is_contiguous(memory_format=torch.channels_last)
