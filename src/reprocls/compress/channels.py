"""Structured channel pruning: remove whole output channels, and the matching inputs of the layers that consume
them, with torch-pruning's dependency graph (DepGraph, Fang et al. 2023). The network becomes a smaller dense one and
is really cheaper; `rebuild_pruned` restores such a model from its state dict."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reprocls.analysis.complexity import count_flops, count_params
from reprocls.compress.prune import PRUNABLE
from reprocls.extras import require

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChannelPruneReport:
    """What one `prune_channels` call did: cost before and after at the example input, and what was left alone."""

    ratio: float  # share of channels removed in each prunable group
    params_before: int
    params_after: int
    macs_before: int  # multiply-adds of one image at the example input's size
    macs_after: int
    ignored: tuple[str, ...]  # layers whose output channels were kept (classifier, opaque channel paths, ...)

    @property
    def macs_kept(self) -> float:
        """Share of multiply-adds left: ~(1 - ratio) when only block-internal channels go, ~(1 - ratio)^2 when all do."""
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    @property
    def params_kept(self) -> float:
        """Share of parameters left."""
        return self.params_after / self.params_before if self.params_before else 1.0


@dataclass
class _ChannelChange:
    """A parameter-free module that changes the channel count, as seen in one forward pass."""

    name: str
    in_channels: int
    out_channels: int
    grad_fn: Any = None


def _channel_changers(model: nn.Module, run: Any) -> dict[nn.Module, _ChannelChange]:
    """Run `run()` with hooks that record every parameter-free module mapping C input channels to C' != C."""
    found: dict[nn.Module, _ChannelChange] = {}
    names = {module: name for name, module in model.named_modules()}

    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        x = inputs[0] if inputs else None
        if not (isinstance(x, torch.Tensor) and isinstance(output, torch.Tensor)):
            return
        # same rank, other width: a pad or similar; a flatten (rank changes) is an op DepGraph maps itself
        if x.ndim == output.ndim >= 2 and x.shape[1] != output.shape[1]:
            found[module] = _ChannelChange(names[module], x.shape[1], output.shape[1], output.grad_fn)

    handles = [
        module.register_forward_hook(hook)
        for module in model.modules()
        if module is not model and next(module.parameters(), None) is None
    ]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return found


def _default_classifier(model: nn.Module) -> nn.Module | None:
    """The model's final layer: `get_classifier()` for reprocls/timm models, else the last Linear."""
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        try:
            return getter()
        except NotImplementedError:
            pass
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    return linears[-1] if linears else None


def _opaque_channel_layers(model: nn.Module, example_input: torch.Tensor, tp: Any) -> tuple[list[nn.Module], dict]:
    """Layers in every channel group that flows through a parameter-free channel-changing module, and those modules."""
    graph = tp.DependencyGraph()
    changers = _channel_changers(model, lambda: graph.build_dependency(model, example_inputs=example_input, verbose=False))
    if not changers:
        return [], changers
    opaque_grad_fns = {change.grad_fn for change in changers.values() if change.grad_fn is not None}
    layers: list[nn.Module] = []
    for group in graph.get_all_groups(root_module_types=PRUNABLE):
        deps = [item.dep for item in group]
        if any(node.grad_fn in opaque_grad_fns for dep in deps for node in (dep.source, dep.target)):
            # the layers whose outputs make up the group; layers that only read it keep their own outputs
            layers.extend(dep.target.module for dep in deps if graph.is_out_channel_pruning_fn(dep.handler))
    return layers, changers


def _sync_num_features(model: nn.Module) -> None:
    """Keep `num_features` (used by `reset_classifier`) equal to what the classifier now receives."""
    classifier = _default_classifier(model)
    if isinstance(getattr(model, "num_features", None), int) and isinstance(classifier, nn.Linear):
        model.num_features = classifier.in_features


def prune_channels(
    model: nn.Module,
    ratio: float,
    example_input: torch.Tensor,
    *,
    ignored: list[nn.Module] | None = None,
) -> nn.Module:
    """Remove a share `ratio` of the channels of every prunable group, in place, so the network is really smaller.

    Channels are ranked by the L2 norm of all weights coupled to them (torch-pruning's DepGraph groups: a
    conv's output filters, its BatchNorm, the next layers' input slices, every branch of a residual sum) and
    the same share is removed from each group. The final classifier and `ignored` keep their output channels.

    The one rule added to torch-pruning's: DepGraph can only carry channel indices through operations it
    understands. A parameter-free module that changes the channel count, such as option A's zero-padded
    shortcut (`PadShortcut`, ResNet-20/32/56/110), is traced as an elementwise op, so DepGraph ties channel i
    of the 16-wide input to channel i of the 32-wide output and removes "matching" channels from both: the
    stage widths come out wrong, the padding no longer lines up, and accuracy collapses without any error.
    Every group that flows through such a module is therefore left whole. In an option-A ResNet that group is
    the residual stream (the stem conv and each block's last conv, chained across stages by the pads), so
    only block-internal channels are pruned and MACs fall to about (1 - ratio). Option-B / 1x1-conv shortcuts
    (ResNet-18/50) are understood by DepGraph and pruned everywhere: in and out channels both shrink, so MACs
    fall to about (1 - ratio)^2 (27 % at ratio 0.5 for ResNet-18). `ratio` always counts channels, not MACs.

    Afterwards the model must still run on `example_input` with the same output shape, and every such
    module must see the widths it saw before; otherwise RuntimeError. Runs in eval mode so tracing leaves
    BatchNorm statistics alone. The result (params and MACs before/after) is logged and kept as
    `model.pruning_report` (a `ChannelPruneReport`); `rebuild_pruned` restores the model from its state dict.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio is the share of channels to remove and must be in (0, 1), not {ratio}")
    require("torch_pruning", feature="channel pruning")
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    try:
        input_size = tuple(example_input.shape[1:])
        params_before, macs_before = count_params(model), count_flops(model, input_size)["macs"]
        with torch.no_grad():
            expected_shape = model(example_input).shape

        keep = list(ignored or [])
        classifier = _default_classifier(model)
        if classifier is not None:
            keep.append(classifier)
        opaque, changers = _opaque_channel_layers(model, example_input, tp)
        keep.extend(opaque)

        pruner = tp.pruner.MetaPruner(
            model,
            example_input,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=keep,
        )
        pruner.step()
        _sync_num_features(model)
        _check_pruned(model, example_input, expected_shape, changers)
        kept_ids = {id(module) for module in keep}
        report = ChannelPruneReport(
            ratio=ratio,
            params_before=params_before,
            params_after=count_params(model),
            macs_before=macs_before,
            macs_after=count_flops(model, input_size)["macs"],
            ignored=tuple(
                name for name, module in model.named_modules() if id(module) in kept_ids and isinstance(module, PRUNABLE)
            ),
        )
    finally:
        model.train(was_training)
    model.pruning_report = report
    _log.info(
        "pruned %.0f%% of channels: params %d -> %d (%.1f%%), MACs %d -> %d (%.1f%%)",
        100 * ratio, report.params_before, report.params_after, 100 * report.params_kept,
        report.macs_before, report.macs_after, 100 * report.macs_kept,
    )
    return model


def _check_pruned(
    model: nn.Module, example_input: torch.Tensor, expected_shape: torch.Size, changers: dict[nn.Module, _ChannelChange]
) -> None:
    """Run the pruned model once and refuse it when it fails, changes output shape or re-wires an opaque module."""
    outputs: list[torch.Tensor] = []

    def forward() -> None:
        with torch.no_grad():
            outputs.append(model(example_input))

    try:
        seen = _channel_changers(model, forward)
    except Exception as error:
        raise RuntimeError(f"the channel-pruned {type(model).__name__} no longer runs on the example input: {error}") from error
    if outputs[0].shape != expected_shape:
        raise RuntimeError(
            f"channel pruning changed the output shape of {type(model).__name__} from {tuple(expected_shape)} to "
            f"{tuple(outputs[0].shape)}: pass the layer that produces the output in `ignored`"
        )
    for module, before in changers.items():
        now = seen.get(module)
        if now is None or (now.in_channels, now.out_channels) != (before.in_channels, before.out_channels):
            widths = f"{now.in_channels}->{now.out_channels}" if now else "equal widths"
            raise RuntimeError(
                f"channel pruning changed the widths around {before.name} ({type(module).__name__}) from "
                f"{before.in_channels}->{before.out_channels} to {widths}: its channel mapping is invisible to "
                "torch-pruning, so this model would compute the wrong thing; pass the layers feeding it in `ignored`"
            )


def channel_widths(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(input, output) width of every conv and linear layer, to compare a pruned model with its original."""
    widths: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            widths[name] = (module.in_channels, module.out_channels)
        elif isinstance(module, nn.Linear):
            widths[name] = (module.in_features, module.out_features)
    return widths


def rebuild_pruned(name_or_model: str | nn.Module, state_dict: dict[str, torch.Tensor], **kwargs: Any) -> nn.Module:
    """A model whose layers have the widths stored in a (channel-pruned) state dict, with those weights loaded.

    Builds the architecture with `create_model(name, **kwargs)` (or takes a fresh unpruned instance), then
    gives every parameter and buffer the saved shape and updates the width attributes of conv, linear and
    normalisation layers, so checkpoints of pruned models load without pickling the module itself. A conv
    that was depthwise (groups == in_channels) stays depthwise. Parameter-free modules are not touched: an
    option-A shortcut keeps its padding, which `prune_channels` never changes.
    """
    if isinstance(name_or_model, str):
        from reprocls.models import create_model

        model = create_model(name_or_model, **kwargs)
    else:
        model = name_or_model
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        changed = False
        for store in (module._parameters, module._buffers):
            for key, tensor in store.items():
                saved = state_dict.get(prefix + key)
                if tensor is None or saved is None or saved.shape == tensor.shape:
                    continue
                replacement = torch.empty(saved.shape, dtype=tensor.dtype, device=tensor.device)
                store[key] = nn.Parameter(replacement, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else replacement
                changed = True
        if changed:
            _resize_attributes(module)
    _sync_num_features(model)
    model.load_state_dict(state_dict)
    return model


def _resize_attributes(module: nn.Module) -> None:
    """Make a layer's width attributes agree with its (resized) weight, as torch-pruning does when it prunes."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if module.transposed:
            raise NotImplementedError("rebuilding pruned transposed convolutions is not supported")
        depthwise = module.groups > 1 and module.groups == module.in_channels
        out_channels, in_per_group = module.weight.shape[:2]
        module.out_channels = out_channels
        if depthwise:
            module.groups = module.in_channels = out_channels
        else:
            module.in_channels = in_per_group * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)):
        reference = module.weight if module.weight is not None else module.running_mean
        module.num_features = reference.shape[0]
    elif isinstance(module, nn.LayerNorm) and module.weight is not None:
        module.normalized_shape = tuple(module.weight.shape)
    elif isinstance(module, nn.GroupNorm) and module.weight is not None:
        module.num_channels = module.weight.shape[0]
