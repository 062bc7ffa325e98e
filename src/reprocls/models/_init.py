"""Data-dependent initialisations, chosen by `model.init`: each takes the built model and a sample of normalised
training images (N, C, H, W) and sets weights from them before the first step."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from reprocls.registry import Registry

DataInit = Callable[[nn.Module, torch.Tensor], str]
INITS: Registry[DataInit] = Registry("init")
NO_INIT = "none"


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first 2-d convolution the model holds (its stem)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise ValueError(f"{type(model).__name__} has no Conv2d to initialise")


@torch.no_grad()
def patch_whitening(images: torch.Tensor, kernel: int, eps: float = 5e-4) -> torch.Tensor:
    """Filters (2 C k^2, C, k, k) that whiten k x k patches of `images`: the patch covariance's eigenvectors scaled by
    1 / sqrt(eigenvalue + eps), each also with its sign flipped, largest eigenvalue first."""
    channels = images.shape[1]
    patches = F.unfold(images.double(), kernel).transpose(1, 2).reshape(-1, channels * kernel * kernel)
    covariance = patches.T @ patches / patches.shape[0]
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    order = eigenvalues.argsort(descending=True)
    scaled = eigenvectors[:, order].T / torch.sqrt(eigenvalues[order].clamp_min(0) + eps)[:, None]
    filters = scaled.reshape(-1, channels, kernel, kernel)
    return torch.cat([filters, -filters]).float()


@INITS.register
@torch.no_grad()
def whitening(model: nn.Module, images: torch.Tensor) -> str:
    """The stem convolution becomes the patch whitening of the training images (Page 2018; airbench), its bias
    zero; the stem needs 2 x channels x kernel^2 output channels (SpeedNet's has)."""
    conv = first_conv(model)
    kernel = conv.kernel_size[0]
    if conv.kernel_size != (kernel, kernel) or conv.out_channels != 2 * conv.in_channels * kernel * kernel \
            or conv.groups != 1 or images.shape[1] != conv.in_channels:
        raise ValueError(f"model.init: whitening needs a first convolution with 2 x in_channels x kernel^2 outputs "
                         f"and {images.shape[1]} input channel(s); this model's is {conv}")
    conv.weight.copy_(patch_whitening(images.to(conv.weight.device), kernel).to(conv.weight.dtype))
    if conv.bias is not None:
        conv.bias.zero_()
    return f"{conv.out_channels} whitening filters of {kernel}x{kernel} patches from {images.shape[0]:,} training images"
