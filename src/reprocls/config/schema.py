"""The recipe schema: every key typed, documented in one line, with the range it must lie in."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

MAX_PROCESSES = 4 * (os.cpu_count() or 1)  # workers or threads beyond this only make the machine thrash
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a run name is one folder name, never a path


def opt(default: Any, help: str, *, check: Callable[[Any], bool] | None = None, rule: str = "",
        members: str | None = None) -> Any:
    """A documented config field; `check` validates the value and `rule` says what is allowed; `members` names the
    registry whose entries the value picks (its help then lists them, read from the registry itself)."""
    factory = (lambda: list(default)) if isinstance(default, list) else (lambda: dict(default)) if isinstance(default, dict) else None
    meta = {"help": help, "check": check, "rule": rule, "members": members}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


positive = dict(check=lambda v: v > 0, rule="> 0")
non_negative = dict(check=lambda v: v >= 0, rule=">= 0")
fraction = dict(check=lambda v: 0 <= v < 1, rule="in [0, 1)")


@dataclass
class ModelConfig:
    name: str = opt("resnet20", "registered model name (`reprocls models` lists them) or timm/<name>, torchvision/<name>",
                    members="model")
    in_chans: int | None = opt(None, "input channels; null takes the dataset's (1 for the MNIST family, 3 for CIFAR)",
                               check=lambda v: 1 <= v <= 64, rule="in [1, 64]")
    kwargs: dict[str, Any] = opt({}, "extra keyword arguments for the model builder, e.g. {dropout: 0.3}")
    weights: str | None = opt(None, "weights to start from: a torchvision/timm state dict (.pth/.pt, .safetensors) or a "
                              "reprocls run folder; a classifier of another class count is re-initialised, a first "
                              "conv of another channel count adapted")
    init: str = opt("none", "data-dependent initialisation from training images before the first step (whitening: "
                    "the stem becomes their patch whitening, Page 2018); none: the builder's own", members="init")
    init_images: int = opt(5000, "model.init: how many training images it looks at", check=lambda v: 1 <= v <= 1_000_000,
                           rule="in [1, 1000000]")
    freeze: str | int = opt("none", "none; backbone (only the classifier trains: a linear probe); or N: the first N "
                            "stages, as `reprocls train` lists them (frozen layers also keep their BatchNorm statistics)")
    module: str | None = opt(None, "a Python file (my_models.py) or module (my_pkg.models) imported first, so the "
                             "@register_model builders it holds can be named in model.name")


@dataclass
class AugmentConfig:
    crop_padding: int = opt(4, "small-image preset: zero-pad by this many pixels, then random-crop back (0: off)",
                            check=lambda v: 0 <= v <= 64, rule="in [0, 64]")
    hflip: bool = opt(True, "random horizontal flip with probability 0.5")
    random_erasing: float = opt(0.0, "probability of erasing a random rectangle (Zhong et al. 2020; 0.5 in the paper)", check=lambda v: 0 <= v <= 1, rule="in [0, 1]")
    rrc_scale: list[float] = opt([0.08, 1.0], "imagenet preset: RandomResizedCrop area range (Szegedy et al. 2015)",
                                 check=lambda v: all(0 < x <= 1 for x in v), rule="[low, high] with both in (0, 1]")
    color_jitter: float = opt(0.4, "imagenet preset: brightness/contrast/saturation jitter strength (0: off)", **non_negative)
    policy: str = opt("none", "per-image policy from transforms.v2, or none", members="augment policy")
    randaugment_ops: int = opt(2, "randaugment: operations per image (N in Cubuk et al. 2020)",
                               check=lambda v: 1 <= v <= 16, rule="in [1, 16]")
    randaugment_magnitude: int = opt(9, "randaugment: magnitude of every operation, 0-30 (M in the paper)", check=lambda v: 0 <= v <= 30, rule="in [0, 30]")
    autoaugment_policy: Literal["imagenet", "cifar10", "svhn"] = opt("imagenet", "autoaugment: which learned policy (Cubuk et al. 2019)")
    mixup_alpha: float = opt(0.0, "MixUp Beta(alpha, alpha) mixing of image pairs with soft targets (Zhang et al. 2018; 0: off)", **non_negative)
    cutmix_alpha: float = opt(0.0, "CutMix box mixing with soft targets (Yun et al. 2019; 0: off); with mixup, one is picked per batch", **non_negative)
    mix_prob: float = opt(1.0, "share of training batches that get MixUp/CutMix", check=lambda v: 0 <= v <= 1, rule="in [0, 1]")
    repeats: int = opt(1, "repeated augmentation: each image appears this many times per batch-ordered epoch (Hoffer et al. 2020; 1: off)",
                       check=lambda v: 1 <= v <= 16, rule="in [1, 16]")


@dataclass
class DataConfig:
    name: str = opt("fashion_mnist", "dataset", members="dataset")
    root: str | None = opt(None, "where the data lives; null looks in $REPROCLS_DATA, then ./.data (and /usr/share/datasets)")
    download: bool = opt(False, "download a standard dataset when it is missing (needs a network)")
    val_fraction: float = opt(0.1, "share of the training set held out for validation, stratified and seeded (0: none)", **fraction)
    split: list[float] = opt([0.7, 0.2, 0.1], "image_folder: train/val/test ratios of the stratified split",
                             check=lambda v: all(0 <= x <= 1 for x in v), rule="three ratios, each in [0, 1]")
    split_file: str | None = opt(None, "image_folder: reuse the splits.json of an earlier run instead of computing one")
    split_seed: int | None = opt(None, "seed of the train/val/test split and of limit_* subsets; null: follow `seed`",
                                 check=lambda v: 0 <= v < 2**31, rule="in [0, 2^31)")
    on_bad_image: Literal["error", "skip"] = opt("error", "image_folder: undecodable files (corrupt, truncated, bombs) stop the run before training (error) or are left out and listed (skip)")
    verify_images: Literal["decode", "header"] = opt("decode", "image_folder: decode every file once before training "
                                                     "(the result is cached by path, size and mtime, so later runs start "
                                                     "at once), or read headers only (huge folders: a file that fails to "
                                                     "decode later stops training, naming it)")
    image_size: int | None = opt(None, "image side in pixels; null: the weights' input size when they carry one, else the "
                                 "dataset's own (a folder's when its images agree, else their median)", **positive)
    channels: int | None = opt(None, "image channels: null keeps the dataset's (1 MNIST, 3 CIFAR; a folder's: 1 when every "
                               "image is grey); 1 makes grey, 3 RGB", check=lambda v: v in (1, 3), rule="1 or 3")
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = opt(None, "resize interpolation; null: the "
                                                                          "weights' own, else bilinear")
    crop_fraction: float | None = opt(None, "imagenet preset evaluation: resize to image_size / crop_fraction, then "
                                      "centre-crop; null: the weights' own, else 0.875",
                                      check=lambda v: 0 < v <= 1, rule="in (0, 1]")
    sampler: Literal["random", "balanced"] = opt("random", "training order: random (each image once per epoch) or "
                                                 "balanced (classes drawn equally often, with replacement)")
    preset: Literal["auto", "small", "imagenet", "none"] = opt("auto", "train augmentation preset; auto: small for <= 64 px, else imagenet")
    augment: AugmentConfig = field(default_factory=AugmentConfig, metadata={"help": "augmentation settings of the presets"})
    mean: list[float] | None = opt(None, "per-channel normalisation mean; null takes the dataset's known constants",
                                   check=lambda v: 1 <= len(v) <= 64, rule="one number per channel (1 to 64)")
    std: list[float] | None = opt(None, "per-channel normalisation std; null takes the dataset's known constants",
                                  check=lambda v: 1 <= len(v) <= 64, rule="one number per channel (1 to 64)")
    in_memory: Literal["auto", "yes", "no"] = opt("auto", "hold images as uint8 tensors and augment whole batches on the device")
    batch_size: int = opt(128, "training images per optimizer step and process (effective batch: this x processes)",
                          check=lambda v: 1 <= v <= 65536, rule="in [1, 65536]")
    eval_batch_size: int = opt(512, "images per evaluation step", check=lambda v: 1 <= v <= 65536, rule="in [1, 65536]")
    workers: int = opt(2, "DataLoader worker processes for file-backed datasets",
                       check=lambda v: 0 <= v <= MAX_PROCESSES, rule=f"in [0, {MAX_PROCESSES}] (4 per core of this machine)")
    limit_train: int | None = opt(None, "use only the first N (stratified) training images: quick experiments and tests",
                                  **positive)
    limit_eval: int | None = opt(None, "use only N (stratified) validation and N test images: quick experiments and tests", **positive)


@dataclass
class OptimConfig:
    name: str = opt("sgd", "optimizer", members="optimizer")
    lr: float = opt(0.1, "peak learning rate, for a batch of lr_reference_batch images", check=lambda v: 0 < v <= 1000,
                    rule="in (0, 1000]")
    lr_reference_batch: int | None = opt(None, "batch size `lr` was tuned for; the actual lr is rescaled to the real batch", **positive)
    lr_scaling: Literal["linear", "sqrt"] = opt("linear", "rule for rescaling lr to the batch (Goyal et al. 2017: linear)")
    momentum: float = opt(0.9, "SGD momentum", **fraction)
    nesterov: bool = opt(False, "SGD with Nesterov momentum")
    betas: list[float] = opt([0.9, 0.999], "AdamW betas", check=lambda v: all(0 <= x < 1 for x in v),
                             rule="two numbers, each in [0, 1)")
    weight_decay: float = opt(5e-4, "L2 / decoupled weight decay", check=lambda v: 0 <= v <= 10, rule="in [0, 10]")
    decay_norm_and_bias: bool = opt(False, "also decay norm weights and biases (most papers do not)")
    head_lr_factor: float = opt(1.0, "the classifier's lr as a multiple of optim.lr (fine-tuning: often 10)", **positive)
    lookahead_k: int | None = opt(None, "Lookahead around the optimizer (Zhang et al. 2019): every k steps the slow "
                                  "weights move lookahead_alpha of the way to the fast ones (null: off)",
                                  check=lambda v: 1 <= v <= 1000, rule="in [1, 1000]")
    lookahead_alpha: float = opt(0.5, "Lookahead: share of the way the slow weights move at each sync",
                                 check=lambda v: 0 < v <= 1, rule="in (0, 1]")
    layer_decay: float | None = opt(None, "layer-wise lr decay: stage i of S trains at lr x layer_decay^(S - i), the "
                                    "head at lr (Clark et al. 2020); null: off", check=lambda v: 0 < v <= 1, rule="in (0, 1]")


@dataclass
class ScheduleConfig:
    name: str = opt("cosine", "lr schedule, stepped every optimizer step", members="schedule")
    epochs: int = opt(30, "training epochs", check=lambda v: 1 <= v <= 100_000, rule="in [1, 100000]")
    warmup_epochs: float = opt(0.0, "linear warmup length in epochs (may be fractional), before the main schedule", **non_negative)
    warmup_start_factor: float = opt(0.1, "lr at the start of warmup, as a fraction of the peak", check=lambda v: 0 < v <= 1, rule="in (0, 1]")
    min_lr_factor: float = opt(0.0, "cosine/sgdr: final lr as a fraction of the peak", **fraction)
    step_epochs: int = opt(30, "step: decay every this many epochs", **positive)
    milestones: list[int] = opt([], "multistep: epochs at which lr is multiplied by gamma",
                                check=lambda v: all(x > 0 for x in v), rule="positive epoch numbers")
    gamma: float = opt(0.1, "step/multistep: lr multiplier at each decay", **positive)
    restart_epochs: int = opt(10, "sgdr: length of the first cosine cycle in epochs (Loshchilov & Hutter 2017)", **positive)
    restart_mult: int = opt(2, "sgdr: each cycle is this many times longer than the previous", **positive)
    pct_start: float = opt(0.25, "onecycle: share of training spent rising to the peak lr", check=lambda v: 0 < v < 1, rule="in (0, 1)")


@dataclass
class TrainConfig:
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "where to train; auto picks cuda when available")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = opt("auto", "autocast dtype; auto: bf16 where the device supports it, else fp32")
    channels_last: Literal["auto", "yes", "no"] = opt("auto", "NHWC memory format; auto: on for convolutional models on CPU and CUDA")
    label_smoothing: float = opt(0.0, "cross-entropy label smoothing (Szegedy et al. 2016)", **fraction)
    class_weights: str | list[float] = opt("none", "cross-entropy class weights: none, balanced (n / (classes x "
                                           "n_class), as scikit-learn) or one weight per class")
    head_only_epochs: int = opt(0, "fine-tuning warm-up: only the classifier trains for the first N epochs", **non_negative)
    grad_clip_norm: float | None = opt(None, "clip the global gradient norm to this value", **positive)
    accum_steps: int = opt(1, "split each batch into this many micro-batches and accumulate their gradients (saves memory)", **positive)
    ema_decay: float | None = opt(None, "keep an exponential moving average of the weights with this decay, e.g. 0.9998 (null: off)", **fraction)
    ema_warmup: bool = opt(True, "EMA decay ramps up as min(decay, (1 + t) / (10 + t)) so early averages are not stuck at init")
    compile: bool = opt(False, "torch.compile the model (slower than eager on this 2-core CPU; try it on GPUs)")
    compile_backend: str = opt("inductor", "torch.compile backend (inductor, aot_eager, eager)")
    sync_batchnorm: bool = opt(False, "distributed on GPUs: BatchNorm statistics over all processes' images (SyncBatchNorm)")
    threads: int | None = opt(None, "CPU threads for torch; null leaves torch's default",
                              check=lambda v: 1 <= v <= MAX_PROCESSES, rule=f"in [1, {MAX_PROCESSES}] (4 per core of this machine)")
    eval_every: int = opt(1, "evaluate on the validation split every N epochs (and always after the last)", **positive)
    checkpoint_every: int | None = opt(None, "also write a resumable checkpoint every N optimizer steps (always at each epoch end)", **positive)
    keep_checkpoints: int = opt(2, "newest checkpoints kept in <run>/checkpoints, plus the best by validation top-1", **positive)
    on_nonfinite: Literal["stop", "skip"] = opt("stop", "a NaN/inf loss or gradient: stop (naming the step) or skip that step and count it")
    log_every: int = opt(50, "steps between TensorBoard scalars", **positive)


@dataclass
class EvalConfig:
    positive_class: str | None = opt(None, "two classes: the class a detector looks for (the defect); null: the one with "
                                     "fewer training images")
    target_recall: float = opt(0.95, "two classes: the operating threshold is the highest that keeps this recall of "
                               "the positive class on validation; precision and recall at it are reported on test",
                               check=lambda v: 0 < v <= 1, rule="in (0, 1]")
    tta: Literal["none", "flip", "flip_translate"] = opt(
        "none", "test-time augmentation: none, flip (the image and its mirror) or flip_translate (both, and both "
        "shifted a pixel each way); train reports it beside the plain test number, eval and predict use it")


@dataclass
class ReferenceConfig:
    source: str = opt("", "where the reported number comes from (paper, table, benchmark)")
    top1: float = opt(0.0, "reported test top-1 accuracy as a fraction (0.949 for 94.9 %)", check=lambda v: 0 <= v <= 1, rule="in [0, 1]")
    tolerance: float = opt(0.005, "gap to the reported top-1 still counted as reproduced, as a fraction (0.005: half "
                           "a point)", check=lambda v: 0 <= v <= 0.1, rule="in [0, 0.1] (at most 10 points)")
    batch_size: int | None = opt(None, "the paper's effective batch (all devices); the doctor checks lr scaling against it", **positive)
    epochs: int | None = opt(None, "the paper's training length in epochs; the doctor flags shorter schedules", **positive)
    norm_weight_decay: bool | None = opt(None, "whether the paper decays norm weights and biases (null: not stated)")


@dataclass
class PretrainConfig:
    method: Literal["simclr", "moco_v2", "byol"] = opt("simclr", "self-supervised method: simclr, moco_v2 or byol")
    hidden: int = opt(512, "hidden width of the projection MLP", **positive)
    out: int = opt(128, "output width of the projection (the embedding the loss sees)", **positive)
    predictor_hidden: int = opt(512, "byol: hidden width of the prediction MLP", **positive)
    temperature: float | None = opt(None, "simclr, moco_v2: softmax temperature; null takes the method's (0.5 "
                                    "SimCLR, 0.2 MoCo v2)", check=lambda v: 0 < v <= 10, rule="in (0, 10]")
    queue_size: int = opt(4096, "moco_v2: keys of earlier batches kept as negatives", **positive)
    momentum: float = opt(0.99, "moco_v2, byol: the target encoder's momentum at the first step, rising on a cosine "
                          "to 1 at the last", check=lambda v: 0 <= v < 1, rule="in [0, 1)")
    views: dict[str, Any] = opt({}, "overrides of the method's view augmentation, e.g. {crop_scale: [0.2, 1.0], "
                                "grey_prob: 0} (data/views.py: ViewSettings)")
    knn_every: int = opt(1, "epochs between k-NN evaluations on the validation split (0: only at the end)", **non_negative)
    knn_k: int = opt(200, "neighbours in the k-NN vote", **positive)
    knn_temperature: float = opt(0.1, "temperature of the k-NN vote's weights exp(similarity / t)", **positive)


@dataclass
class RunConfig:
    name: str | None = opt(None, "run name (letters, digits, . _ -); null takes the recipe's file name",
                           check=lambda v: NAME.fullmatch(v) is not None,
                           rule="letters, digits, '.', '_' or '-', starting with a letter or digit, at most 100 characters")
    output_dir: str = opt("runs", "folder that receives runs/<name>-<timestamp>/")
    seed: int = opt(0, "seeds Python, NumPy and torch; the same seed gives the same metrics on CPU",
                    check=lambda v: 0 <= v < 2**31, rule="in [0, 2^31)")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "the architecture"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "dataset, splits, preprocessing and loading"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimizer and weight decay"})
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig, metadata={"help": "epochs and learning-rate schedule"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "device, precision and loss settings"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "how test results are computed"})
    reference: ReferenceConfig | None = field(default=None, metadata={"help": "the paper's number this recipe should reach"})
    pretrain: PretrainConfig | None = field(default=None, metadata={
        "help": "self-supervised pretraining settings, read by `reprocls pretrain` (ignored by train)"})
