"""Architecture search spaces: named knobs with their choices over one registered model family, and the map from a
sampled point to that builder's keyword arguments, so every network a search finds is an ordinary model in an
ordinary recipe (`model: {name: cifar_resnet, kwargs: {depths: [2, 3, 3], ...}}`).

Add a space with `@SPACES.register(info=SpaceInfo(...))` on a function point -> kwargs; `tests/test_spaces.py`
builds every knob's choices and checks the reference point against its zoo model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from reprocls.registry import Registry

Point = dict[str, Any]
SPACES: Registry[Callable[[Point], dict[str, Any]]] = Registry("search space")


@dataclass(frozen=True)
class SpaceInfo:
    """What a space searches: the builder it fills, each knob's choices, and a reference point (a known network
    the search must beat, trained first with the same schedule as every candidate)."""

    model: str
    knobs: dict[str, tuple[Any, ...]]
    reference: Point
    reference_name: str  # what the reference point is, in words or as a zoo model's name
    zoo: tuple[str, ...] = ()  # zoo models sized for the same small images: the cost marks beside the front

    def check(self, point: Point) -> None:
        """Every knob given, each with one of its choices."""
        missing = sorted(set(self.knobs) - set(point))
        unknown = sorted(set(point) - set(self.knobs))
        if missing or unknown:
            raise ValueError(f"a point of this space sets exactly {sorted(self.knobs)} (missing {missing}, unknown "
                             f"{unknown})")
        for knob, value in point.items():
            if value not in self.knobs[knob]:
                raise ValueError(f"{knob}: {value!r} is not one of its choices {list(self.knobs[knob])}")


def space_info(name: str) -> SpaceInfo:
    """The registered facts of a space (KeyError listing the known ones for a wrong name)."""
    SPACES.get(name)
    return SPACES.info(name)


def model_kwargs_of(name: str, point: Point) -> tuple[str, dict[str, Any]]:
    """(model name, builder keyword arguments) of a checked point of space `name`."""
    info = space_info(name)
    info.check(point)
    return info.model, SPACES.get(name)(point)


STAGES3, STAGES4 = (1, 2, 3), (1, 2, 3, 4)


@SPACES.register(info=SpaceInfo(
    model="cifar_resnet",
    knobs={**{f"depth{s}": (1, 2, 3, 4, 5) for s in STAGES3},
           "width1": (8, 12, 16, 24, 32), "width2": (16, 24, 32, 48, 64), "width3": (32, 48, 64, 96, 128),
           "kernel": (3, 5), "stem_stride": (1, 2)},
    reference={"depth1": 3, "depth2": 3, "depth3": 3, "width1": 16, "width2": 32, "width3": 64, "kernel": 3,
               "stem_stride": 1},
    reference_name="resnet20",
    zoo=("resnet20", "resnet32", "resnet44", "resnet56", "wrn_16_8", "wrn_40_4", "speednet_s", "speednet_m")))
def resnet_cifar(point: Point) -> dict[str, Any]:
    """CIFAR-style ResNet (He et al. 2016, section 4.2) with blocks and width per stage, kernel size and stem stride
    free: 5^3 x 5^3 x 2 x 2 = 62,500 networks around ResNet-20."""
    return {"depths": [point[f"depth{s}"] for s in STAGES3], "widths": [point[f"width{s}"] for s in STAGES3],
            "kernel_size": point["kernel"], "stem_stride": point["stem_stride"]}


@SPACES.register(info=SpaceInfo(
    model="mobilenet_v3_stages",
    knobs={**{f"depth{s}": (1, 2, 3, 4) for s in STAGES4}, **{f"expansion{s}": (1, 3, 4, 6) for s in STAGES4},
           **{f"kernel{s}": (3, 5, 7) for s in STAGES4}, **{f"se{s}": (False, True) for s in STAGES4},
           "width_mult": (0.5, 0.75, 1.0, 1.25)},
    reference={"depth1": 1, "depth2": 2, "depth3": 3, "depth4": 2, "expansion1": 1, "expansion2": 4,
               "expansion3": 3, "expansion4": 6, "kernel1": 3, "kernel2": 3, "kernel3": 5, "kernel4": 3,
               "se1": False, "se2": False, "se3": True, "se4": True, "width_mult": 1.0},
    reference_name="mobilenet_v3_stages (its defaults)",
    zoo=("resnet20", "resnet56", "speednet_s", "mobilenet_v3_small", "mobilenet_v3_large", "mobilenet_v2")))
def mobilenet(point: Point) -> dict[str, Any]:
    """MobileNetV3-style inverted residuals (Howard et al. 2019) in four stages, each with its depth, expansion
    ratio, kernel 3/5/7 and squeeze-excite on or off, and one width multiplier."""
    return {"depths": [point[f"depth{s}"] for s in STAGES4], "expansions": [point[f"expansion{s}"] for s in STAGES4],
            "kernels": [point[f"kernel{s}"] for s in STAGES4], "se": [point[f"se{s}"] for s in STAGES4],
            "width_mult": point["width_mult"]}
