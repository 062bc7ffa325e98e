"""Every model family exports with torch.export (dynamic batch) and the exported program computes what eager does.

One representative per family, the one with the fewest parameters, at a small input size.
"""

from __future__ import annotations

import functools
import inspect

import pytest
import torch
from torch import nn

from reprocls.analysis import family_representatives
from reprocls.models import MODELS

SIZE = 64  # pixels; models built for smaller images keep their own size
SLOW_FAMILIES = {"efficientnet", "swin"}  # 5-13 s of CPU each on 2 cores; the others take 1-5 s


@functools.cache
def representatives() -> dict[str, str]:
    return family_representatives()


def build_calibrated(name: str) -> tuple[nn.Module, int]:
    """An eval-mode model whose BatchNorm statistics come from real batches, so outputs are not near zero."""
    builder = MODELS.get(name)
    model = builder()
    size = min(SIZE, model.default_input_size[-1])
    if "img_size" in inspect.signature(builder).parameters and size != model.default_input_size[-1]:
        model = builder(img_size=size)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: the statistics of the calibration batch
    torch.manual_seed(0)
    with torch.no_grad():
        model.train()(torch.randn(4, 3, size, size))
    return model.eval(), size


@pytest.mark.parametrize(
    "family",
    [pytest.param(f, marks=pytest.mark.slow) if f in SLOW_FAMILIES else f for f in sorted(representatives())],
)
def test_export_matches_eager(family: str) -> None:
    name = representatives()[family]
    torch.manual_seed(0)
    model, size = build_calibrated(name)
    example = torch.randn(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
    exported = program.module()
    for x in (example, torch.randn(3, 3, size, size)):  # the traced batch size and another one
        with torch.no_grad():
            eager, out = model(x), exported(x)
        assert eager.abs().max() > 1e-2, f"{name}: eager outputs are ~0, the comparison would prove nothing"
        assert out.shape == eager.shape
        torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5, msg=f"{name} export differs from eager")


def test_every_family_has_a_representative() -> None:
    families = {MODELS.get(n).__module__.rsplit(".", 1)[-1] for n in MODELS.names()}
    assert set(representatives()) == families
    assert representatives()["resnet"] == "resnet20"  # the smallest ResNet: 0.27 M parameters
