"""INT8 quantization: each path computes what the float model does, on any batch size, and leaves the model alone.

The float model is a ResNet-20 trained for a few dozen steps on synthetic images (a fixed random template per
class plus noise), so its logits have real margins: with random weights the top two logits of most images are
so close that any rounding swaps them, and top-1 agreement would measure luck instead of quantization.
Asserted on 64 fresh images: top-1 agreement >= 90% and relative L2 error of the logits < 5% for PT2E (measured
1.4-1.6%, agreement 98%) and < 8% for FX (measured 3.8-5.1%, agreement 97-99%: torch.ao's x86 qconfig keeps
activations to 7 bits). Batches of 1 and 7 must give the same rows as the batch of 64 (measured: identical).

Everything runs on one thread: on a shared 2-core machine, two OpenMP threads made the float training here 30x
slower (2.7 s -> 90 s), and the INT8 latencies this module is about are single-thread figures.
"""

from __future__ import annotations

import io
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reprocls.compress.quantize import (
    Int8Program,
    convert_qat_int8,
    model_size_bytes,
    prepare_qat_int8,
    quantize_dynamic_int8,
    quantize_static_int8,
)
from reprocls.models import create_model

SHAPE = (1, 28, 28)  # Fashion-MNIST
MAX_RELATIVE_ERROR = {"pt2e": 0.05, "fx": 0.08}
MIN_AGREEMENT = 0.9


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread for this module, restored afterwards for the rest of the session."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_batch(templates: torch.Tensor, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images of a learnable task: each class is its template plus unit noise."""
    labels = torch.randint(0, templates.shape[0], (n,), generator=generator)
    return templates[labels] + torch.randn(n, *SHAPE, generator=generator), labels


@pytest.fixture(scope="module")
def task() -> tuple[nn.Module, torch.Generator, torch.Tensor]:
    """A ResNet-20 fitted to the synthetic task in 30 SGD steps (~3 s on one thread), in eval mode."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    templates = torch.randn(10, *SHAPE, generator=generator)
    model = create_model("resnet20", num_classes=10, in_chans=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(30):
        images, labels = synthetic_batch(templates, 32, generator)
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return model.eval(), generator, templates


def calibration_batches(templates: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
    return [synthetic_batch(templates, 16, generator)[0] for _ in range(4)]


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    return float((output - reference).norm() / reference.norm())


def assert_matches_float(quantized: nn.Module, model: nn.Module, images: torch.Tensor, method: str) -> torch.Tensor:
    """The INT8 logits, after checking them against the float ones."""
    with torch.no_grad():
        reference, output = model(images), quantized(images)
    assert output.shape == reference.shape and output.dtype == torch.float32
    error = relative_error(output, reference)
    assert error < MAX_RELATIVE_ERROR[method], error
    agreement = float((output.argmax(1) == reference.argmax(1)).float().mean())
    assert agreement >= MIN_AGREEMENT, agreement
    return output


def assert_rows_match(quantized: nn.Module, images: torch.Tensor, logits: torch.Tensor, tolerance: float = 1e-4) -> None:
    """Small batches give the rows a large batch gave: the batch size changes nothing but speed."""
    for batch in (1, 7):
        with torch.no_grad():
            error = relative_error(quantized(images[:batch]), logits[:batch])
        assert error < tolerance, (batch, error)


def test_dynamic_int8_quantizes_linear_layers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 10))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantized = quantize_dynamic_int8(model)
    kinds = [type(m) for m in quantized.modules()]
    assert kinds.count(torch.ao.nn.quantized.dynamic.Linear) == 2 and nn.Linear not in kinds
    x = torch.randn(32, 64)
    with torch.no_grad():
        error = relative_error(quantized(x), model(x))
    assert error < 0.05, error  # per-tensor INT8 weights, 7-bit activations (fbgemm's reduce_range): measured 2.3%
    assert all(isinstance(m, nn.Linear) for m in (model[0], model[2]))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("method", ["pt2e", "fx"])
def test_static_int8_matches_float_on_any_batch(task, method: str) -> None:
    model, generator, templates = task
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine = torch.backends.quantized.engine
    model.train()  # the caller's mode must survive
    try:
        quantized = quantize_static_int8(model, calibration_batches(templates, generator), torch.randn(16, *SHAPE),
                                         method=method, compile=False)
        assert model.training
    finally:
        model.eval()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.backends.quantized.engine == engine
    assert not quantized.training
    images = synthetic_batch(templates, 64, generator)[0]  # calibrated and exported at 16
    assert_rows_match(quantized, images, assert_matches_float(quantized, model, images, method))


@pytest.mark.slow  # one inductor compilation: 7 s with a warm inductor cache, 19 s cold
def test_compiled_pt2e_falls_back_to_lowered_past_its_shape_budget(task) -> None:
    """One compiled shape (batch 64), the others lowered, all INT8; the global inductor config left untouched."""
    model, generator, templates = task
    quantized = quantize_static_int8(model, calibration_batches(templates, generator), torch.randn(1, *SHAPE))
    assert isinstance(quantized, Int8Program)
    quantized.max_compiled_shapes = 1
    images = synthetic_batch(templates, 64, generator)[0]
    logits = assert_matches_float(quantized, model, images, "pt2e")  # compiled for batch 64
    assert_rows_match(quantized, images, logits, tolerance=1e-2)  # lowered: other kernels, same arithmetic
    assert quantized._compiled_shapes == {(64, *SHAPE)} and quantized._lowered is not None
    assert torch._inductor.config.freezing is False


@pytest.fixture(scope="module")
def qat_run(task) -> dict:
    """prepare_qat_int8, then six SGD steps of a plain training loop on one relabelled batch (~4 s)."""
    model, generator, templates = task
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = prepare_qat_int8(model, torch.randn(8, *SHAPE))
    params = [p for p in prepared.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=0.02, momentum=0.9)
    images, labels = synthetic_batch(templates, 16, generator)
    labels = (labels + 1) % 10  # relabelled, so there is something left to learn
    prepared.train()
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = F.cross_entropy(prepared(images), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    prepared.eval()
    return dict(prepared=prepared, losses=losses, start=start, params=params, before=before, images=images, labels=labels)


def test_qat_model_trains(task, qat_run: dict) -> None:
    model, generator, templates = task
    assert qat_run["losses"][-1] < qat_run["losses"][0], qat_run["losses"]
    assert any(not torch.equal(a, p) for a, p in zip(qat_run["start"], qat_run["params"]))
    assert all(torch.equal(qat_run["before"][k], v) for k, v in model.state_dict().items())
    from torchao.quantization.pt2e import disable_observer, enable_observer

    prepared, images = qat_run["prepared"], synthetic_batch(templates, 8, generator)[0]
    assert not prepared.training
    prepared.apply(disable_observer)  # otherwise every call, eval included, moves the activation ranges
    try:
        with torch.no_grad():  # BatchNorm on running statistics: an image's logits do not depend on its batch
            error = relative_error(prepared(images[:1]), prepared(images)[:1])
        assert error < 1e-2, error  # measured 0.2% (rounding at a few fake-quant steps); train-mode BatchNorm: 70%
    finally:
        prepared.apply(enable_observer)


@pytest.mark.slow  # convert_pt2e folds BatchNorm by exporting ~100 candidate patterns: ~13 s whatever the model
def test_qat_model_converts_to_int8(task, qat_run: dict) -> None:
    _, generator, templates = task
    prepared = qat_run["prepared"]
    quantized = convert_qat_int8(prepared, qat_run["images"], compile=False)
    assert isinstance(quantized, Int8Program) and prepared.training is False
    images = synthetic_batch(templates, 64, generator)[0]
    logits = assert_matches_float(quantized, prepared, images, "pt2e")  # fake-quantized float vs real INT8
    assert_rows_match(quantized, images, logits)
    prepared.train()  # still trainable after conversion
    assert prepared.training
    F.cross_entropy(prepared(qat_run["images"]), qat_run["labels"]).backward()
    prepared.eval()


def test_int8_weights_take_under_a_third_of_float_bytes() -> None:
    """ResNet-18: 46.8 MB float, measured 11.8 MB PT2E (0.25x) and 11.7 MB FX: int8 weights, float biases/scales."""
    torch.manual_seed(0)
    model = create_model("resnet18").eval()
    calibration = [torch.randn(2, 3, 64, 64)]  # the weights' size does not depend on the image size
    float_bytes = model_size_bytes(model)
    assert float_bytes > 4 * sum(p.numel() for p in model.parameters())
    pt2e = quantize_static_int8(model, calibration, calibration[0])  # compiles lazily: never called, never compiled
    fx = quantize_static_int8(model, calibration, calibration[0], method="fx")
    for quantized in (pt2e, fx):
        assert model_size_bytes(quantized) < 0.3 * float_bytes


def test_int8_program_saves_as_pt2(task) -> None:
    """The portable program round-trips through torch.export.save, and loads back into a fast Int8Program."""
    model, generator, templates = task
    quantized = quantize_static_int8(model, calibration_batches(templates, generator), torch.randn(4, *SHAPE))
    images = synthetic_batch(templates, 5, generator)[0]
    exported = torch.export.export(quantized.program, (images,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer).module()
    with torch.no_grad():
        assert torch.equal(loaded(images), quantized.program(images))
    assert buffer.getbuffer().nbytes < 0.8 * model_size_bytes(model)  # graph included: measured 0.77 MB vs 1.12 MB


def test_errors_are_clear(task, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _, _ = task
    x = torch.randn(2, *SHAPE)
    with pytest.raises(ValueError, match="no calibration batches"):
        quantize_static_int8(model, [], x, method="fx")
    with pytest.raises(ValueError, match="unknown quantization method"):
        quantize_static_int8(model, [x], x, method="onnx")  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "torchao", None)
    with pytest.raises(ImportError, match=r"reprocls\[compress\]"):
        quantize_static_int8(model, [x], x)
