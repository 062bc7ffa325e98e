"""Engine: the plain training loop, optimizers and schedules, precision and device settings."""

from reprocls.engine.optim import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler, scaled_lr
from reprocls.engine.precision import autocast, resolve_channels_last, resolve_device, resolve_precision
from reprocls.engine.train import EvalResult, FitResult, Trainee, TrainSettings, evaluate, fit, train_one_epoch

__all__ = [
    "OPTIMIZERS", "SCHEDULERS", "EvalResult", "FitResult", "TrainSettings", "Trainee", "autocast", "build_optimizer",
    "build_scheduler", "evaluate", "fit", "resolve_channels_last", "resolve_device", "resolve_precision", "scaled_lr",
    "train_one_epoch",
]
