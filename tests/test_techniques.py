"""Training techniques each proven to do what they claim: accumulation, EMA, the fp16 scaler, clipping, augment
policies, MixUp/CutMix, repeated augmentation, process-count invariance of the data and the lr arithmetic."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from reprocls.config import AugmentConfig, ConfigError, RunConfig, TrainConfig, load_config
from reprocls.data.augment import POLICIES, BatchMix, build_policy
from reprocls.data.datasets import TensorSplit
from reprocls.data.loaders import TensorLoader
from reprocls.data.samplers import EpochSampler, epoch_order, shard_indices
from reprocls.engine.distributed import World, unwrap
from reprocls.engine.ema import create_ema, ema_decay_at
from reprocls.engine.train import Trainee, TrainSettings, evaluate, optimizer_step, train_one_epoch
from reprocls.recipe import lr_plan, wrap_for_training

CPU = torch.device("cpu")


def tiny_split(n: int = 96, size: int = 12, classes: int = 4, seed: int = 0) -> TensorSplit:
    generator = torch.Generator().manual_seed(seed)
    return TensorSplit(torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=generator),
                       torch.arange(n) % classes)


def loader_for(split: TensorSplit, **kwargs) -> TensorLoader:
    options = dict(batch_size=32, mean=(0.5,), std=(0.25,), device=CPU, train=True, seed=3)
    options.update(kwargs)
    return TensorLoader(split, **options)


def no_norm_model(classes: int = 4) -> nn.Module:
    """Convolution without BatchNorm: its gradient is a plain mean over images, so batches can be split exactly."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, classes))


def run_epoch(model: nn.Module, loader, accum_steps: int = 1, **kwargs) -> torch.optim.lr_scheduler.LRScheduler:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.5, total_iters=10)
    scaler, ema = kwargs.pop("scaler", None), kwargs.pop("ema", None)
    train_one_epoch(Trainee(model, optimizer, scheduler, nn.CrossEntropyLoss(), scaler, ema), loader,
                    TrainSettings(device=CPU, accum_steps=accum_steps, progress=False, **kwargs))
    return scheduler


# ------------------------------------------------------------------------------------------- accumulation


@pytest.mark.parametrize("accum_steps", [2, 4])
def test_accumulated_micro_batches_give_the_same_update_as_one_batch(accum_steps: int) -> None:
    split = tiny_split()
    augment = AugmentConfig(crop_padding=2, hflip=True, random_erasing=0.5)
    whole, accumulated = no_norm_model(), no_norm_model()
    scheduler_whole = run_epoch(whole, loader_for(split, augment=augment))
    scheduler_accum = run_epoch(accumulated, loader_for(split, augment=augment, micro_batches=accum_steps), accum_steps)
    assert scheduler_accum.last_epoch == scheduler_whole.last_epoch == 3  # one schedule step per optimizer step
    for a, b in zip(whole.parameters(), accumulated.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    before = no_norm_model()
    assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), whole.parameters()))


def test_accum_steps_must_divide_the_batch() -> None:
    with pytest.raises(ConfigError, match="train.accum_steps"):
        load_config(None, ["data.batch_size=100", "train.accum_steps=3"])


# --------------------------------------------------------------------------------------- data invariance


def collect(loader: TensorLoader) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels)


def test_a_step_sees_the_same_augmented_images_whatever_the_process_count_and_accumulation() -> None:
    split = tiny_split(n=128)
    augment = AugmentConfig(crop_padding=2, hflip=True, random_erasing=0.5)
    single_images, single_labels = collect(loader_for(split, augment=augment, batch_size=32))
    # 2 processes x 16 images, each in 2 micro-batches of 8: step s on rank r is a block of the global batch
    shards = [list(loader_for(split, augment=augment, batch_size=16, rank=r, world_size=2, micro_batches=2)) for r in (0, 1)]
    rebuilt = []
    for step in range(4):
        for rank in (0, 1):
            rebuilt.extend(shards[rank][2 * step:2 * step + 2])
    images, labels = torch.cat([x for x, _ in rebuilt]), torch.cat([y for _, y in rebuilt])
    assert torch.equal(labels, single_labels)
    assert torch.equal(images, single_images)


def test_evaluation_shards_count_every_image_exactly_once() -> None:
    for world_size in (1, 2, 3):
        shards = torch.cat([shard_indices(100, r, world_size) for r in range(world_size)])
        assert sorted(shards.tolist()) == list(range(100))
    split = tiny_split(n=50)
    parts = [collect(loader_for(split, train=False, batch_size=8, rank=r, world_size=3))[1] for r in range(3)]
    assert sum(len(p) for p in parts) == 50


def test_file_sampler_follows_the_in_memory_order() -> None:
    order = epoch_order(100, seed=3, epoch=2)
    sampler = EpochSampler(100, batch_size=16, seed=3, rank=1, world_size=2)
    sampler.set_epoch(2)
    indices = list(sampler)
    assert len(indices) == len(sampler) == 3 * 16
    assert [i for i, *_ in indices[:16]] == order[16:32].tolist() and [i for i, *_ in indices[16:32]] == order[48:64].tolist()


def test_repeated_augmentation_puts_copies_side_by_side() -> None:
    order = epoch_order(90, seed=0, epoch=0, repeats=3)
    assert len(order) == 90 and len(set(order.tolist())) == 30
    assert torch.equal(order[0::3], order[1::3]) and torch.equal(order[0::3], order[2::3])
    split = tiny_split(n=96)
    images, labels = collect(loader_for(split, augment=AugmentConfig(crop_padding=2, hflip=True, repeats=2)))
    assert torch.equal(labels[0::2], labels[1::2])
    assert not torch.equal(images[0::2], images[1::2])  # same image, different augmentation


# ---------------------------------------------------------------------------------------- augment policies


@pytest.mark.parametrize("policy", POLICIES.names())
def test_every_policy_changes_images_and_replays_per_epoch(policy: str) -> None:
    split = tiny_split(n=64, size=16)
    plain = collect(loader_for(split, augment=AugmentConfig(crop_padding=0, hflip=False)))[0]
    loader = loader_for(split, augment=AugmentConfig(crop_padding=0, hflip=False, policy=policy, randaugment_magnitude=15))
    first, again = collect(loader)[0], collect(loader)[0]
    assert (first != plain).flatten(1).any(1).float().mean() > 0.5  # most images were changed
    assert torch.equal(first, again)
    loader.set_epoch(1)
    assert not torch.equal(collect(loader)[0], first)


def test_policies_are_in_the_file_pipeline_too() -> None:
    from reprocls.data.transforms import train_transform

    transform = train_transform("small", image_size=16, mean=(0.5,), std=(0.5,), augment=AugmentConfig(policy="randaugment"))
    assert any(type(t).__name__ == "RandAugment" for t in transform.transforms)
    assert build_policy(AugmentConfig()) is None


def test_unknown_policy_names_the_nearest() -> None:
    with pytest.raises(KeyError, match="trivialaugment"):
        build_policy(AugmentConfig(policy="trivialaugmnt"))


def test_mixup_gives_soft_targets_and_mixed_images() -> None:
    images = torch.stack([torch.full((1, 8, 8), float(i)) for i in range(6)])
    labels = torch.arange(6) % 3
    torch.manual_seed(0)
    mixed, targets = BatchMix(3, mixup_alpha=0.4, cutmix_alpha=0.0)(images, labels)
    assert targets.shape == (6, 3) and torch.allclose(targets.sum(1), torch.ones(6))
    assert ((targets > 0) & (targets < 1)).any()
    lam = targets[0, labels[0]] if labels[0] != labels[-1] else None
    if lam is not None:  # image 0 is mixed with its neighbour in the rolled batch: lam * 0 + (1 - lam) * 5
        assert torch.allclose(mixed[0], torch.full((1, 8, 8), float((1 - lam) * 5)), atol=1e-5)


def test_cutmix_pastes_a_box_and_weights_targets_by_its_area() -> None:
    images = torch.stack([torch.full((1, 16, 16), float(i)) for i in range(4)])
    labels = torch.tensor([0, 1, 2, 3])
    torch.manual_seed(1)
    mixed, targets = BatchMix(4, mixup_alpha=0.0, cutmix_alpha=1.0)(images, labels)
    pasted = (mixed[1] != 1).float().mean()
    assert torch.allclose(targets[1, 1], 1 - pasted) and torch.allclose(targets[1, 0], pasted)


def test_mixing_flows_through_the_loader_and_training() -> None:
    split = tiny_split()
    loader = loader_for(split, augment=AugmentConfig(mixup_alpha=0.2, cutmix_alpha=1.0), num_classes=4)
    _, targets = next(iter(loader))
    assert targets.dtype == torch.float32 and targets.shape == (32, 4)
    model = no_norm_model()
    run_epoch(model, loader)  # soft-target cross-entropy trains without error and changes the weights
    assert any(not torch.equal(a, b) for a, b in zip(no_norm_model().parameters(), model.parameters()))


# ----------------------------------------------------------------------------------------------------- EMA


def test_ema_follows_the_decay_formula_with_warmup() -> None:
    model = nn.Linear(2, 1, bias=False)
    decay = 0.9
    ema = create_ema(model, decay, warmup=True)
    expected = None
    for t, value in enumerate([1.0, 3.0, -2.0, 5.0, 0.5]):
        model.weight.data.fill_(value)
        ema.update_parameters(model)
        if expected is None:
            expected = value  # the first update copies the weights
        else:
            d = ema_decay_at(decay, t, True)
            expected = d * expected + (1 - d) * value
        assert torch.allclose(ema.module.weight, torch.full_like(model.weight, expected))
    assert ema_decay_at(0.9999, 0, True) == pytest.approx(0.1) and ema_decay_at(0.9999, 10**7, True) == 0.9999
    assert ema_decay_at(0.99, 0, False) == 0.99


def test_ema_averages_batchnorm_statistics_and_copies_counters() -> None:
    model = nn.BatchNorm1d(3)
    ema = create_ema(model, 0.5, warmup=False)
    ema.update_parameters(model)
    model.running_mean.fill_(4.0)
    model.num_batches_tracked.fill_(7)
    ema.update_parameters(model)
    assert torch.allclose(ema.module.running_mean, torch.full((3,), 2.0))
    assert int(ema.module.num_batches_tracked) == 7


def test_training_with_ema_keeps_a_lagging_average_that_evaluates() -> None:
    split = tiny_split()
    model = no_norm_model()
    ema = create_ema(model, 0.9)
    run_epoch(model, loader_for(split), ema=ema)
    assert int(ema.n_averaged) == 3
    assert all(not torch.equal(a, b) for a, b in zip(model.parameters(), ema.module.parameters()))
    result = evaluate(ema, loader_for(split, train=False), device=CPU, amp_dtype=None, num_classes=4, progress=False)
    assert result.samples == 96


# ------------------------------------------------------------------------------------- scaler and clipping


def test_a_step_the_scaler_skips_changes_nothing_and_keeps_the_schedule() -> None:
    model = no_norm_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.5, total_iters=4)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    calls = {"n": 0}

    def poison_first(grad: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return torch.full_like(grad, float("inf")) if calls["n"] == 1 else grad

    model[0].weight.register_hook(poison_first)
    loader = loader_for(tiny_split(n=64))
    before = copy.deepcopy(model.state_dict())
    batches = iter(loader)
    images, targets = next(batches)
    scaler.scale(nn.functional.cross_entropy(model(images), targets)).backward()
    assert optimizer_step(optimizer, model, scaler, None) == "skipped_by_scaler"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert scaler.get_scale() < 1024.0
    optimizer.zero_grad()
    # through the loop: the poisoned step is skipped, so two batches advance the schedule once
    calls["n"] = 0
    train_one_epoch(Trainee(model, optimizer, scheduler, nn.CrossEntropyLoss(), scaler), loader,
                    TrainSettings(device=CPU, progress=False))
    assert scheduler.last_epoch == 1


def test_gradient_clipping_bounds_the_global_norm() -> None:
    model = no_norm_model()
    for p in model.parameters():
        p.grad = torch.full_like(p, 10.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    optimizer_step(optimizer, model, None, grad_clip_norm=1.0)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    assert norm == pytest.approx(1.0, rel=1e-4)


# ------------------------------------------------------------------------------------ lr, wrappers, compile


def test_lr_is_scaled_to_the_effective_batch_of_all_processes() -> None:
    config = load_config(None, ["optim.lr=0.1", "optim.lr_reference_batch=256", "data.batch_size=128", "train.accum_steps=2"])
    one = lr_plan(config, World())
    four = lr_plan(config, World(0, 4, 0))
    assert one["effective_batch"] == 128 and one["lr"] == pytest.approx(0.05) and one["micro_batch"] == 64
    assert four["effective_batch"] == 512 and four["lr"] == pytest.approx(0.2)
    assert "0.1 x 512/256 (linear rule)" in four["text"] and "4 process(es)" in four["text"]
    config.optim.lr_scaling = "sqrt"
    assert lr_plan(config, World(0, 4, 0))["lr"] == pytest.approx(0.1 * 2 ** 0.5)


def test_sync_batchnorm_on_cpu_is_refused_with_the_key() -> None:
    config = RunConfig(train=TrainConfig(sync_batchnorm=True))
    with pytest.raises(ConfigError, match="train.sync_batchnorm"):
        wrap_for_training(nn.Sequential(nn.BatchNorm2d(2)), config, World(0, 2, 0), CPU)


def test_compiled_model_gives_the_same_outputs_and_unwraps() -> None:
    model = no_norm_model()
    config = RunConfig(train=TrainConfig(compile=True, compile_backend="eager"))
    compiled = wrap_for_training(model, config, World(), CPU)
    x = torch.randn(4, 1, 12, 12)
    assert compiled is not model and unwrap(compiled) is model
    torch.testing.assert_close(compiled(x), model(x))
