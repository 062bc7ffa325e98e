"""A run folder in, compressed variants out: prune (iteratively, with fine-tuning), quantize, measure, compare."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
from torch import nn

from reprocls import run_layout as layout
from reprocls.compress.export import deployment_metadata, export_program
from reprocls.analysis.complexity import count_flops
from reprocls.compress.measure import SPREAD_WARNING, Variant, latency
from reprocls.compress.channels import prune_channels
from reprocls.compress.prune import iterative_amounts, make_permanent, prune_unstructured, sparsity
from reprocls.compress.quantize import model_size_bytes
from reprocls.config import ConfigError, OptimConfig, ScheduleConfig, build, dump, find_config, read_yaml_file
from reprocls.data import make_loader
from reprocls.engine import Trainee, TrainSettings, build_optimizer, build_scheduler, evaluate, fit, scaled_lr
from reprocls.experiments.evaluate import TrainedRun, load_trained_run
from reprocls.models import count_params
from reprocls.recipe import build_criterion
from reprocls.reports.compression import comparison_rows, plot_comparison
from reprocls.reports.plots import save
from reprocls.reports.tables import format_grid, markdown_table
from reprocls.files import atomic_write_text, write_safetensors

PruneMethod = Literal["none", "unstructured", "structured"]
QuantizeMethod = Literal["none", "dynamic", "static", "qat"]


@dataclass
class CompressPlan:
    """What to do to a trained model; the command-line flags of `reprocls compress` fill it."""

    prune: PruneMethod = "none"
    amount: float = 0.5  # final share of weights (unstructured) or channels (structured) removed
    scope: Literal["global", "layer"] = "global"
    iterations: int = 1  # prune -> fine-tune rounds that reach `amount`
    quantize: QuantizeMethod = "none"
    quantize_backend: Literal["pt2e", "fx"] = "pt2e"
    finetune_epochs: int = 0  # per pruning round; for QAT, the QAT epochs
    finetune_lr_factor: float = 0.1  # fine-tuning lr as a share of the recipe's
    calibration_images: int = 512
    batches: list[int] = field(default_factory=lambda: [1, 64])
    threads: int | None = None

    def validate(self) -> None:
        if self.prune == "none" and self.quantize == "none":
            raise ConfigError("nothing to do: give --prune METHOD:AMOUNT and/or --quantize dynamic|static|qat")
        if self.prune != "none" and not 0 < self.amount < 1:
            raise ConfigError(f"--prune amount {self.amount} must be in (0, 1), e.g. structured:0.5")
        if self.iterations < 1 or self.finetune_epochs < 0:
            raise ConfigError("--iterations must be >= 1 and --finetune-epochs >= 0")
        if self.quantize == "qat" and self.finetune_epochs == 0:
            raise ConfigError("--quantize qat needs --finetune-epochs N > 0 (quantization-aware training is fine-tuning)")


def load_plan(path: str | Path) -> CompressPlan:
    """A compression recipe from YAML: the same keys as CompressPlan, unknown ones rejected with a suggestion."""
    path = find_config(path, "--plan", "compress")  # a file, or a shipped plan by name: resnet20_structured_int8
    plan = build(CompressPlan, read_yaml_file(path, "--plan") or {}, "plan")
    plan.validate()
    return plan


def parse_prune(text: str) -> tuple[PruneMethod, float]:
    """'structured:0.5' -> ('structured', 0.5)."""
    method, _, amount = text.partition(":")
    if method not in ("unstructured", "structured") or not amount:
        raise ConfigError(f"--prune {text!r}: expected unstructured:AMOUNT or structured:AMOUNT, e.g. structured:0.5")
    try:
        return method, float(amount)  # type: ignore[return-value]
    except ValueError:
        raise ConfigError(f"--prune {text!r}: {amount!r} is not a number") from None


class Compressor:
    """Builds each variant of a loaded run and measures it; every step is a method a reader can follow in order."""

    def __init__(self, loaded: TrainedRun, plan: CompressPlan, say: Callable[[str], None] = print,
                 progress: bool = False) -> None:
        self.loaded, self.plan, self.say, self.progress = loaded, plan, say, progress
        session, config = loaded.session, loaded.config
        self.splits, self.config = session.splits, config
        self.device = torch.device("cpu")  # INT8 kernels and the latency that matters for deployment are on CPU
        args = dict(device=self.device, seed=config.seed, channels_last=False)
        self.test_loader = make_loader(self.splits.test, self.splits, config.data, train=False, **args)
        self.train_loader = make_loader(self.splits.train, self.splits, config.data, train=True, **args)
        self.calibration_loader = make_loader(self.splits.train, self.splits, config.data, train=False, **args)
        self.sample = next(iter(self.test_loader))[0][0].contiguous()  # one real, preprocessed test image
        self.example = self.sample.unsqueeze(0)

    def base_model(self) -> nn.Module:
        model = copy.deepcopy(self.loaded.session.model).to(self.device, memory_format=torch.contiguous_format)
        return model.float().eval()

    def top1(self, model: nn.Module) -> float:
        return evaluate(model, self.test_loader, device=self.device, amp_dtype=None, num_classes=self.splits.num_classes,
                        description="test", progress=self.progress).top1

    def measure(self, name: str, model: nn.Module, *, notes: str = "") -> Variant:
        timed = {b: latency(model, self.sample, b) for b in self.plan.batches}
        int8 = notes.startswith("int8")  # INT8 programs hold their weights as graph constants, not conv/linear modules
        macs = None if int8 else int(count_flops(model, tuple(self.sample.shape))["macs"])
        params = None if int8 else count_params(model)
        zeros = None if int8 else sparsity(model).fraction
        variant = Variant(name, self.top1(model), params, model_size_bytes(model), {b: t.median for b, t in timed.items()},
                          macs, zeros, notes, {b: t.spread for b, t in timed.items()})
        self.say(f"  {name}: top-1 {100 * variant.top1:.2f} %, " + ", ".join(f"batch {b} {t.text()}" for b, t in timed.items()))
        unsteady = [b for b, t in timed.items() if t.spread > SPREAD_WARNING]
        if unsteady:
            self.say(f"  warning: {name}'s timings at batch {', '.join(map(str, unsteady))} spread by more than "
                     f"{100 * SPREAD_WARNING:.0f} % of their median: another process is probably using the CPU; rerun "
                     "the compression alone for speed-ups you can trust")
        return variant

    def finetune(self, model: nn.Module, epochs: int, *, amp: bool = True) -> None:
        """A short cosine fine-tune with the recipe's optimizer at a fraction of its learning rate."""
        optim = OptimConfig(**{**asdict(self.config.optim), "lr": self.config.optim.lr * self.plan.finetune_lr_factor})
        optimizer = build_optimizer(model, optim, scaled_lr(optim, self.config.data.batch_size))
        scheduler = build_scheduler(optimizer, ScheduleConfig(name="cosine", epochs=epochs), len(self.train_loader))
        settings = TrainSettings(device=self.device, amp_dtype=self.loaded.session.amp_dtype if amp else None,
                                 num_classes=self.splits.num_classes, epochs=epochs, progress=self.progress)
        fit(Trainee(model, optimizer, scheduler, build_criterion(self.config)), self.train_loader, None, settings)
        model.eval()

    def pruned(self, model: nn.Module) -> nn.Module:
        """Prune in rounds; each round removes the same share of what is left, then fine-tunes."""
        plan, previous = self.plan, 0.0
        for round_index, target in enumerate(iterative_amounts(plan.amount, plan.iterations), start=1):
            if plan.prune == "unstructured":  # masks stay on while fine-tuning, so pruned weights stay zero
                prune_unstructured(model, target, scope=plan.scope, permanent=False)
            else:  # channel ratios apply to the current (already pruned) widths
                prune_channels(model, 1 - (1 - target) / (1 - previous), self.example)
            previous = target
            self.say(f"  round {round_index}/{plan.iterations}: {plan.prune} pruning to {100 * target:.1f} %")
            if plan.finetune_epochs:
                self.finetune(model, plan.finetune_epochs)
            if plan.prune == "unstructured":
                make_permanent(model)
        return model.eval()

    def quantized(self, model: nn.Module) -> nn.Module:
        from reprocls.compress import quantize

        plan = self.plan
        if plan.quantize == "dynamic":
            return quantize.quantize_dynamic_int8(model)
        if plan.quantize == "static":
            return quantize.quantize_static_int8(model, self.calibration_batches(), self.example, method=plan.quantize_backend)
        prepared = quantize.prepare_qat_int8(model.train(), self.example)
        self.finetune(prepared, plan.finetune_epochs, amp=False)
        return quantize.convert_qat_int8(prepared, self.example)

    def calibration_batches(self) -> list[torch.Tensor]:
        """The first `calibration_images` training images, preprocessed like the test set."""
        batches, seen = [], 0
        for images, _ in self.calibration_loader:
            batches.append(images[: self.plan.calibration_images - seen])
            seen += len(batches[-1])
            if seen >= self.plan.calibration_images:
                break
        return batches

    def run(self) -> list[Variant]:
        variants = [self.measure("fp32", self.base_model())]
        model = self.base_model()
        if self.plan.prune != "none":
            model = self.pruned(model)
            name = f"{self.plan.prune} {100 * self.plan.amount:.0f}%"
            variants.append(self.measure(name, model))
        if self.plan.quantize != "none":
            self.before_quantization = model
            quantized = self.quantized(model)
            name = (variants[-1].name + " + " if len(variants) > 1 else "") + f"int8 {self.plan.quantize}"
            variants.append(self.measure(name, quantized, notes="int8"))
            model = quantized
        self.final = model
        return variants


def compress_run(target: str | Path, plan: CompressPlan, *, out: Path | None = None, say: Callable[[str], None] = print,
                 progress: bool = False) -> tuple[Path, list[Variant]]:
    """Compress a trained run as planned; writes compare.json, compare.md and compare.png into a new folder."""
    plan.validate()
    if plan.threads:
        torch.set_num_threads(plan.threads)
    loaded = load_trained_run(target, device=torch.device("cpu"))
    if out is not None:
        folder = out
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = layout.new_stamped_folder(loaded.run_dir or loaded.weights.parent, "compress")
    say(f"compressing {loaded.config.model.name} from {loaded.weights} into {folder}")
    compressor = Compressor(loaded, plan, say, progress)
    variants = compressor.run()
    if plan.quantize == "dynamic" and variants[-1].latency_ms[max(plan.batches)] > 0.9 * variants[0].latency_ms[max(plan.batches)]:
        say("  note: dynamic INT8 quantizes only nn.Linear layers; a CNN's convolutions stay float, so it gains little "
            "speed: use --quantize static for convolutional models")
    saved = save_compressed(folder, loaded, compressor, plan)
    dump(loaded.config, folder / layout.CONFIG)  # the compressed model's recipe, data location included (eval reads it)
    rows = comparison_rows(variants)
    (folder / layout.COMPARE_JSON).write_text(json.dumps({"plan": asdict(plan), "threads": torch.get_num_threads(),
                                                           "variants": [asdict(v) for v in variants]}, indent=2))
    (folder / layout.COMPARE_MD).write_text(markdown_table(rows))
    save(plot_comparison(variants), folder / layout.COMPARE_PNG)
    say("\n" + format_grid(rows))
    say(f"\ncomparison: {folder / layout.COMPARE_MD}, plot: {folder / layout.COMPARE_PNG}")
    if saved is None:
        say("compressed model: not saved: torch.export cannot take FX's packed INT8 modules; compress with "
            "--quantize-backend pt2e to keep the INT8 model")
    else:
        say(f"compressed model: {saved}" + (" (reprocls eval / predict / export take it)" if saved.suffix == ".safetensors"
                                            else " (reprocls eval / predict take it)"))
    return folder, variants


def save_compressed(folder: Path, loaded: TrainedRun, compressor: Compressor, plan: CompressPlan) -> Path | None:
    """The final compressed model into the folder, loadable like a run's weights: a pruned float model as
    model.safetensors (its widths are read back from the tensors), dynamic INT8 as the float weights it is computed
    from (quantized again on loading, exactly), static and QAT INT8 as a torch.export program model.pt2 with
    model.json beside it (metadata and the recipe). FX INT8 modules cannot be exported: None."""
    metadata = dict(loaded.metadata)
    record = json.loads(metadata["reprocls"])
    record["compressed"] = {"prune": plan.prune, "amount": plan.amount if plan.prune != "none" else None,
                            "quantize": plan.quantize}
    metadata["reprocls"] = json.dumps(record)
    final = compressor.final
    if plan.quantize in ("none", "dynamic"):
        source = compressor.before_quantization if plan.quantize == "dynamic" else final
        state = {k: v.detach().contiguous().cpu() for k, v in source.state_dict().items()}
        return write_safetensors(folder / layout.WEIGHTS, state, metadata)
    if plan.quantize == "static" and plan.quantize_backend == "fx":
        return None
    program_path = folder / layout.INT8_PROGRAM
    export_program(final.program if hasattr(final, "program") else final, compressor.example, program_path)
    atomic_write_text(program_path.with_suffix(".json"), json.dumps({**deployment_metadata(metadata),
                                                                      "config": json.loads(metadata["config"])}, indent=2))
    return program_path
