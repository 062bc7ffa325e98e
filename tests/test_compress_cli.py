"""`reprocls compress` and `reprocls export` on a real (briefly) trained Fashion-MNIST run."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from reprocls.cli import main
from reprocls.config import ConfigError, load_config
from reprocls.experiments.compress_run import CompressPlan, compress_run, parse_prune
from reprocls.experiments.run import train_recipe

pytestmark = pytest.mark.slow
REPO = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def trained_run(fmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = load_config(REPO / "configs/quickstart.yaml", [f"data.root={fmnist_root}",
                                                            f"output_dir={tmp_path_factory.mktemp('runs')}",
                                                            "data.limit_train=3000", "data.limit_eval=500",
                                                            "schedule.epochs=2", "data.batch_size=64"])
    run_dir, results = train_recipe(config, progress=False, echo=False)
    assert results["test"]["top1"] > 0.6
    return run_dir


def test_structured_pruning_with_finetuning_then_int8(trained_run: Path, tmp_path: Path) -> None:
    plan = CompressPlan(prune="structured", amount=0.5, iterations=2, finetune_epochs=1, quantize="static",
                        calibration_images=256, batches=[1, 16])
    folder, variants = compress_run(trained_run, plan, out=tmp_path, say=lambda *_: None)
    base, pruned, quantized = variants
    assert [v.name for v in variants] == ["fp32", "structured 50%", "structured 50% + int8 static"]
    assert pruned.macs < 0.6 * base.macs and pruned.params < 0.6 * base.params
    assert pruned.top1 > base.top1 - 0.15  # two short fine-tunes recover most of the loss
    assert abs(quantized.top1 - pruned.top1) <= 0.02  # INT8 of the same weights
    assert quantized.size_bytes < 0.5 * pruned.size_bytes
    saved = json.loads((folder / "compare.json").read_text())
    assert [v["name"] for v in saved["variants"]] == [v.name for v in variants]
    assert (folder / "compare.png").stat().st_size > 10_000
    table = (folder / "compare.md").read_text()
    assert "batch 16" in table and "int8 static" in table


def test_unstructured_pruning_reports_real_sparsity(trained_run: Path, tmp_path: Path) -> None:
    plan = CompressPlan(prune="unstructured", amount=0.6, finetune_epochs=1, batches=[4])
    _, (base, pruned) = compress_run(trained_run, plan, out=tmp_path, say=lambda *_: None)
    assert base.sparsity < 0.01 and pruned.sparsity == pytest.approx(0.6, abs=0.01)  # fine-tuning kept the zeros
    assert pruned.top1 > base.top1 - 0.1


def test_cli_compress_and_export(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["compress", str(trained_run), "--quantize", "dynamic", "--batches", "2", "--out", str(tmp_path / "c"),
                 "-q"]) == 0
    assert "int8 dynamic" in capsys.readouterr().out
    assert main(["export", str(trained_run), "--format", "onnx", "torch-export", "safetensors",
                 "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime matches eager" in out and "torch.export program matches eager" in out
    names = {p.name for p in (tmp_path / "e").iterdir()}
    assert {"resnet20.onnx", "resnet20.pt2", "resnet20.safetensors", "resnet20.json"} <= names
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "e" / "resnet20.onnx")).metadata_props}
    assert "classes" in json.dumps(props) or any("Sneaker" in v for v in props.values())


def test_bad_plans_are_refused_with_the_flag() -> None:
    with pytest.raises(ConfigError, match="nothing to do"):
        CompressPlan().validate()
    with pytest.raises(ConfigError, match="qat needs --finetune-epochs"):
        CompressPlan(quantize="qat").validate()
    with pytest.raises(ConfigError, match="structured:0.5"):
        parse_prune("channels:0.5")
    assert parse_prune("structured:0.25") == ("structured", 0.25)


def test_plans_load_from_yaml_and_reject_unknown_keys(tmp_path: Path) -> None:
    from reprocls.experiments.compress_run import load_plan

    plan = load_plan(REPO / "configs/compress/resnet20_structured_int8.yaml")
    assert (plan.prune, plan.amount, plan.iterations, plan.quantize) == ("structured", 0.5, 2, "static")
    bad = tmp_path / "bad.yaml"
    bad.write_text("prune: structured\niteratons: 3\n")
    with pytest.raises(ConfigError, match="iteratons.*Did you mean 'iterations'"):
        load_plan(bad)
    bad.write_text("prune: channels\n")
    with pytest.raises(ConfigError, match="plan.prune"):
        load_plan(bad)


def test_latency_has_its_spread_and_dynamic_int8_on_a_cnn_says_why_it_does_not_help(trained_run: Path,
                                                                                 tmp_path: Path) -> None:
    from reprocls.compress.measure import Latency

    assert Latency(10.0, 9.0, 12.0, 15).spread == pytest.approx(0.3) and "IQR 9.00-12.00" in Latency(10, 9, 12, 15).text()
    lines: list[str] = []
    folder, variants = compress_run(trained_run, CompressPlan(quantize="dynamic", batches=[1, 16]), out=tmp_path,
                                    say=lines.append)
    assert all(set(v.latency_spread) == {1, 16} for v in variants)
    assert any("IQR" in line and "runs)" in line for line in lines)
    if variants[-1].latency_ms[16] > 0.9 * variants[0].latency_ms[16]:
        assert any("dynamic INT8 quantizes only nn.Linear layers" in line for line in lines)
    saved = json.loads((folder / "compare.json").read_text())["variants"][0]["latency_spread"]
    assert set(saved) == {"1", "16"}
