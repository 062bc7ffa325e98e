"""Published complexity of the architectures we implement, with where each figure comes from.

`tests/test_complexity.py` checks our models against these rows and `scripts/gen_models_md.py` prints them
beside our measurements. Figures are kept as the source prints them ("0.27", "4.089"): the last printed
digit sets how closely a measurement can be expected to agree.

Conventions: params in millions; MACs in billions of multiply-adds per image at `input_size`, which is what
papers and torchvision's weight metadata (`_ops`, labelled "GFLOPS") call FLOPs. Torchvision rows were read
from the installed package (`get_model_weights(name).DEFAULT.meta`, torchvision 0.29) and are measured at
the crop size of those weights' eval transform (EfficientNet-B2: 288 px, not the paper's 260 px).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

RELATIVE_TOLERANCE = 0.005  # 0.5 %: torchvision's counter and ours differ only in rounding


def _step(printed: str) -> float:
    """The unit of the last printed digit: '0.27' -> 0.01, '36.5' -> 0.1, '4.089' -> 0.001."""
    return float(Decimal(1).scaleb(Decimal(printed).as_tuple().exponent))


@dataclass(frozen=True)
class Published:
    """One architecture's params and MACs as a paper or reference implementation reports them."""

    name: str  # our registry name
    params_printed: str  # millions of parameters, as printed by the source
    macs_printed: str | None  # billions of multiply-adds per image at input_size; None when the source gives none
    input_size: tuple[int, int, int] | None  # (C, H, W) the MACs refer to
    source: str  # paper and table, or the torchvision weights enum the metadata was read from

    @property
    def params_m(self) -> float:
        return float(self.params_printed)

    @property
    def macs_g(self) -> float | None:
        return None if self.macs_printed is None else float(self.macs_printed)

    def params_tolerance(self) -> float:
        """Allowed |measured - published| in M: 0.5 %, or half the last printed digit if the source rounds coarser."""
        return max(RELATIVE_TOLERANCE * self.params_m, _step(self.params_printed) / 2)

    def macs_tolerance(self) -> float | None:
        """Allowed |measured - published| in G, by the same rule as params."""
        if self.macs_printed is None:
            return None
        return max(RELATIVE_TOLERANCE * float(self.macs_printed), _step(self.macs_printed) / 2)

    def params_agree(self, measured_params: int) -> bool:
        """Does a measured parameter count match this row within its tolerance?"""
        return abs(measured_params / 1e6 - self.params_m) <= self.params_tolerance() + 1e-12

    def macs_agree(self, measured_macs: int) -> bool | None:
        """Does a measured MAC count (at `input_size`) match this row? None when the source gives no MACs."""
        tolerance = self.macs_tolerance()
        if tolerance is None or self.macs_g is None:
            return None
        return abs(measured_macs / 1e9 - self.macs_g) <= tolerance + 1e-12


def _torchvision(name: str, num_params: int, ops: str, crop: int, weights: str) -> Published:
    """A row from torchvision's weight metadata: exact `num_params`, `_ops` GMACs at the weights' crop size."""
    params = f"{Decimal(num_params).scaleb(-6):f}"  # exact count, in millions
    return Published(name, params, ops, (3, crop, crop), f"torchvision weights metadata ({weights})")


def _paper(name: str, params: str, source: str, input_size: tuple[int, int, int] | None = None) -> Published:
    """A row from a paper table that gives parameters only."""
    return Published(name, params, None, input_size, source)


_HE_TABLE_6 = "He et al. 2016, Deep Residual Learning, table 6 (CIFAR-10)"
_WRN = "Zagoruyko & Komodakis 2016, Wide Residual Networks, table 4 (#params)"

PUBLISHED: tuple[Published, ...] = (
    # ImageNet ResNets (He et al. 2016); torchvision's are "v1.5" (stride in the 3x3), as ours.
    _torchvision("resnet18", 11_689_512, "1.814", 224, "ResNet18_Weights.IMAGENET1K_V1"),
    _torchvision("resnet34", 21_797_672, "3.664", 224, "ResNet34_Weights.IMAGENET1K_V1"),
    _torchvision("resnet50", 25_557_032, "4.089", 224, "ResNet50_Weights.IMAGENET1K_V2"),
    _torchvision("resnet101", 44_549_160, "7.801", 224, "ResNet101_Weights.IMAGENET1K_V2"),
    _torchvision("resnet152", 60_192_808, "11.514", 224, "ResNet152_Weights.IMAGENET1K_V2"),
    # CIFAR ResNets: the paper gives parameters to two significant digits and no FLOPs.
    _paper("resnet20", "0.27", _HE_TABLE_6, (3, 32, 32)),
    _paper("resnet32", "0.46", _HE_TABLE_6, (3, 32, 32)),
    _paper("resnet44", "0.66", _HE_TABLE_6, (3, 32, 32)),
    _paper("resnet56", "0.85", _HE_TABLE_6, (3, 32, 32)),
    _paper("resnet110", "1.7", _HE_TABLE_6, (3, 32, 32)),
    # Wide ResNets for CIFAR: parameters only.
    _paper("wrn_16_8", "11.0", _WRN, (3, 32, 32)),
    _paper("wrn_28_10", "36.5", _WRN, (3, 32, 32)),
    _paper("wrn_40_4", "8.9", _WRN, (3, 32, 32)),
    # VGG (Simonyan & Zisserman 2015) with torchvision's 7x7-pooled classifier.
    _torchvision("vgg11", 132_863_336, "7.609", 224, "VGG11_Weights.IMAGENET1K_V1"),
    _torchvision("vgg11_bn", 132_868_840, "7.609", 224, "VGG11_BN_Weights.IMAGENET1K_V1"),
    _torchvision("vgg13", 133_047_848, "11.308", 224, "VGG13_Weights.IMAGENET1K_V1"),
    _torchvision("vgg13_bn", 133_053_736, "11.308", 224, "VGG13_BN_Weights.IMAGENET1K_V1"),
    _torchvision("vgg16", 138_357_544, "15.47", 224, "VGG16_Weights.IMAGENET1K_V1"),
    _torchvision("vgg16_bn", 138_365_992, "15.47", 224, "VGG16_BN_Weights.IMAGENET1K_V1"),
    _torchvision("vgg19", 143_667_240, "19.632", 224, "VGG19_Weights.IMAGENET1K_V1"),
    _torchvision("vgg19_bn", 143_678_248, "19.632", 224, "VGG19_BN_Weights.IMAGENET1K_V1"),
    # MobileNets (Sandler et al. 2018; Howard et al. 2019).
    _torchvision("mobilenet_v2", 3_504_872, "0.301", 224, "MobileNet_V2_Weights.IMAGENET1K_V2"),
    _torchvision("mobilenet_v3_small", 2_542_856, "0.057", 224, "MobileNet_V3_Small_Weights.IMAGENET1K_V1"),
    _torchvision("mobilenet_v3_large", 5_483_032, "0.217", 224, "MobileNet_V3_Large_Weights.IMAGENET1K_V2"),
    # EfficientNets (Tan & Le 2019), at torchvision's crop sizes.
    _torchvision("efficientnet_b0", 5_288_548, "0.386", 224, "EfficientNet_B0_Weights.IMAGENET1K_V1"),
    _torchvision("efficientnet_b1", 7_794_184, "0.687", 240, "EfficientNet_B1_Weights.IMAGENET1K_V2"),
    _torchvision("efficientnet_b2", 9_109_994, "1.088", 288, "EfficientNet_B2_Weights.IMAGENET1K_V1"),
    _torchvision("efficientnet_b3", 12_233_232, "1.827", 300, "EfficientNet_B3_Weights.IMAGENET1K_V1"),
    _torchvision("efficientnet_b4", 19_341_616, "4.394", 380, "EfficientNet_B4_Weights.IMAGENET1K_V1"),
    _torchvision("efficientnet_b5", 30_389_784, "10.266", 456, "EfficientNet_B5_Weights.IMAGENET1K_V1"),
    _torchvision("efficientnet_b6", 43_040_704, "19.068", 528, "EfficientNet_B6_Weights.IMAGENET1K_V1"),
    _torchvision("efficientnet_b7", 66_347_960, "37.746", 600, "EfficientNet_B7_Weights.IMAGENET1K_V1"),
    # Vision Transformers (Dosovitskiy et al. 2021): MACs include the attention products.
    _torchvision("vit_b_16", 86_567_656, "17.564", 224, "ViT_B_16_Weights.IMAGENET1K_V1"),
    _torchvision("vit_b_32", 88_224_232, "4.409", 224, "ViT_B_32_Weights.IMAGENET1K_V1"),
    _torchvision("vit_l_16", 304_326_632, "61.555", 224, "ViT_L_16_Weights.IMAGENET1K_V1"),
    _torchvision("vit_l_32", 306_535_400, "15.378", 224, "ViT_L_32_Weights.IMAGENET1K_V1"),
    # Swin Transformers (Liu et al. 2021).
    _torchvision("swin_t", 28_288_354, "4.491", 224, "Swin_T_Weights.IMAGENET1K_V1"),
    _torchvision("swin_s", 49_606_258, "8.741", 224, "Swin_S_Weights.IMAGENET1K_V1"),
    _torchvision("swin_b", 87_768_224, "15.431", 224, "Swin_B_Weights.IMAGENET1K_V1"),
)

PUBLISHED_BY_NAME: dict[str, Published] = {row.name: row for row in PUBLISHED}

__all__ = ["PUBLISHED", "PUBLISHED_BY_NAME", "Published", "RELATIVE_TOLERANCE"]
