"""Swin Transformer (Liu et al. 2021): self-attention inside local windows that shift between blocks.

Four stages at strides 4, 8, 16 and 32; each stage but the first starts by merging 2x2 patches. Window
attention carries a learned bias per relative position (paper eq. 4), and every second block shifts the
windows by half a window so information crosses window borders (section 3.2).

Feature maps whose size is not a multiple of the window are zero-padded at the bottom and right before
attention and cropped after, as torchvision does, so any input size works (the padding takes part in
attention as zero tokens, as in the authors' code). torchvision and timm checkpoints (and the authors',
which older timm releases share) load through `remap_state_dict`.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reprocls.models import register_model
from reprocls.models._base import Classifier, linear_head, run_blocks
from reprocls.models.vit import DropPath, Mlp, to_pair

LAYER_NORM_EPS = 1e-5  # PyTorch's default, as in the paper's code and torchvision
MASKED = -100.0  # the attention logit between tokens from different regions of a shifted window (authors' value)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(batch, H, W, C) -> (batch, windows, window * window, C); H and W must be multiples of `window`."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, -1, window * window, channels)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of `window_partition`."""
    batch, channels = windows.shape[0], windows.shape[-1]
    x = windows.view(batch, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, height, width, channels)


def relative_position_index(window: int) -> torch.Tensor:
    """(N, N) with N = window**2: for each pair of tokens, the row of the bias table for their offset."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    offsets = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, N, N), each in [0, 2 * window - 2]
    return offsets[0] * (2 * window - 1) + offsets[1]


def shifted_window_mask(
    height: int, width: int, window: int, shift: tuple[int, int], device: torch.device
) -> torch.Tensor:
    """(windows, N, N) additive mask: after a cyclic shift a window can hold pixels from up to four image
    regions that were never neighbours; tokens attend only within their own region (paper figure 4)."""
    region = torch.zeros(height, width, device=device)
    label = 0
    for rows in (slice(0, -window), slice(-window, -shift[0] or None), slice(-shift[0] or None, None)):
        for cols in (slice(0, -window), slice(-window, -shift[1] or None), slice(-shift[1] or None, None)):
            region[rows, cols] = label
            label += 1
    region = window_partition(region[None, :, :, None], window)[0, :, :, 0]  # (windows, N)
    different = region[:, :, None] != region[:, None, :]
    return torch.zeros_like(different, dtype=torch.float32).masked_fill(different, MASKED)


class ShiftedWindowAttention(nn.Module):
    """Multi-head self-attention within (shifted) windows, with a relative position bias."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        attention_dropout: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads, self.window_size, self.shift_size = num_heads, window_size, shift_size
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)

    def relative_position_bias(self) -> torch.Tensor:
        n = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.flatten()].view(n, n, -1)
        return bias.permute(2, 0, 1)  # (heads, N, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, H, W, C) -> (batch, H, W, C)."""
        batch, height, width, dim = x.shape
        window = self.window_size
        x = F.pad(x, (0, 0, 0, -width % window, 0, -height % window))
        padded_h, padded_w = x.shape[1], x.shape[2]
        # a window covering the whole (padded) map has nothing to shift across
        shift = (0 if padded_h <= window else self.shift_size, 0 if padded_w <= window else self.shift_size)
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))

        windows = window_partition(x, window)  # (batch, windows, N, C)
        tokens = windows.shape[2]
        qkv = self.qkv(windows).view(batch, -1, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each (batch, windows, heads, N, head_dim)
        bias = self.relative_position_bias()
        if any(shift):
            bias = bias + shifted_window_mask(padded_h, padded_w, window, shift, x.device)[:, None].to(bias.dtype)
        p = self.attention_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=p)
        out = self.proj_drop(self.proj(out.transpose(2, 3).reshape(batch, -1, tokens, dim)))

        x = window_reverse(out, window, padded_h, padded_w)
        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2))
        return x[:, :height, :width].contiguous()


class SwinBlock(nn.Module):
    """Pre-norm Transformer block with (shifted) window attention (paper eq. 3), on (batch, H, W, C) maps."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        *,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = ShiftedWindowAttention(dim, num_heads, window_size, shift_size, attention_dropout, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Concatenate each 2x2 group of tokens and project 4C -> 2C: half the resolution, twice the width."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=LAYER_NORM_EPS)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))  # odd sizes: pad one row/column of zeros
        # this order of the four neighbours (top-left, bottom-left, top-right, bottom-right) is the checkpoints'
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class PatchEmbed(nn.Module):
    """Linear embedding of non-overlapping patches, then LayerNorm; returns channels-last (batch, H, W, C)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SwinStage(nn.Module):
    """Patch merging (all stages but the first), then blocks alternating regular and shifted windows."""

    def __init__(self, downsample: nn.Module, blocks: list[SwinBlock]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)


class SwinTransformer(Classifier):
    """Patch embedding, four stages of Swin blocks, LayerNorm, global average pooling and a linear head.

    `img_size` only sets `default_input_size`: nothing in the network depends on the input size.
    """

    def __init__(
        self,
        *,
        patch_size: int = 4,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        img_size: int | tuple[int, int] = 224,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path_rate: float = 0.0,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.patch_size, self.window_size = patch_size, window_size
        self.stem_stride = patch_size
        self.default_input_size = (in_chans, *to_pair(img_size))
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)

        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linear over all blocks
        stages, dim = [], embed_dim
        for index, (depth, heads) in enumerate(zip(depths, num_heads)):
            downsample: nn.Module = nn.Identity()
            if index > 0:
                downsample, dim = PatchMerging(dim), dim * 2
            blocks = [
                SwinBlock(
                    dim,
                    heads,
                    window_size,
                    shift_size=window_size // 2 if i % 2 else 0,
                    mlp_ratio=mlp_ratio,
                    dropout=dropout,
                    attention_dropout=attention_dropout,
                    drop_path=rates.pop(0),
                )
                for i in range(depth)
            ]
            stages.append(SwinStage(downsample, blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = dim
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.head = linear_head(dim, num_classes)
        self.grad_checkpointing = grad_checkpointing
        self._init_weights()

    def _init_weights(self) -> None:
        """The paper's code: truncated N(0, 0.02) for linear layers and position-bias tables, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, ShiftedWindowAttention):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final feature map after LayerNorm, channels first like the CNNs': (batch, C, H / 32, W / 32) at patch 4."""
        x = self.patch_embed(x)
        for stage in self.stages:
            x = stage.downsample(x)
            x = run_blocks(stage.blocks, x, self.grad_checkpointing)
        return self.norm(x).permute(0, 3, 1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.head(x)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.head = linear_head(self.num_features, num_classes)
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def remap_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Accept torchvision's and timm's key names; position indices and attention masks are derived, never loaded.

        timm names our `stages` `layers` and its classifier `head.fc`, and like us merges patches at the start of
        a stage. The authors' checkpoints (and older timm releases) merge at the end of the previous stage
        (`layers.0.downsample` exists) and name the classifier `head`; both layouts are accepted.
        """
        if "features.0.0.weight" in state:
            state = {_torchvision_key(key): value for key, value in state.items()}
        elif any(key.startswith("layers.") for key in state):
            merge_at_end = "layers.0.downsample.reduction.weight" in state
            state = {_timm_key(key, merge_at_end): value for key, value in state.items()}
        derived = ("relative_position_index", "attn_mask")
        return {key: value for key, value in state.items() if not key.endswith(derived)}


def _torchvision_key(key: str) -> str:
    """torchvision keeps one flat `features` list: [embedding, stage 0, merging, stage 1, merging, ...]."""
    key = re.sub(r"^features\.0\.0\.", "patch_embed.proj.", key)
    key = re.sub(r"^features\.0\.2\.", "patch_embed.norm.", key)
    match = re.match(r"^features\.(\d+)\.(.*)$", key)
    if match:
        position, rest = int(match.group(1)), match.group(2)
        if position % 2:  # odd positions hold the blocks of stage (position - 1) / 2
            key = f"stages.{(position - 1) // 2}.blocks.{rest}"
        else:  # even positions > 0 hold the merging that opens stage position / 2
            key = f"stages.{position // 2}.downsample.{rest}"
    return re.sub(r"\.mlp\.0\.", ".mlp.fc1.", re.sub(r"\.mlp\.3\.", ".mlp.fc2.", key))


def _timm_key(key: str, merge_at_end: bool) -> str:
    """timm's `layers.i` are our `stages.i`; with `merge_at_end`, `layers.i.downsample` opens our stage i + 1."""
    if merge_at_end:
        key = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"stages.{int(m[1]) + 1}.downsample.", key)
    key = re.sub(r"^layers\.", "stages.", key)
    return re.sub(r"^head\.fc\.", "head.", key)


# The paper trains with drop_path_rate 0.2 (T), 0.3 (S) and 0.5 (B) (appendix A2.1); like every regulariser
# here it is a recipe setting, so the builders default to 0 (torchvision bakes it into its builders).


@register_model
def swin_t(*, num_classes: int = 1000, in_chans: int = 3, img_size: int = 224, **kwargs: Any) -> SwinTransformer:
    """Swin-T (Liu et al. 2021, section 3.3), 28.3 M parameters at 224 px."""
    return SwinTransformer(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                            num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)


@register_model
def swin_s(*, num_classes: int = 1000, in_chans: int = 3, img_size: int = 224, **kwargs: Any) -> SwinTransformer:
    """Swin-S (Liu et al. 2021, section 3.3), 49.6 M parameters at 224 px."""
    return SwinTransformer(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24),
                            num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)


@register_model
def swin_b(*, num_classes: int = 1000, in_chans: int = 3, img_size: int = 224, **kwargs: Any) -> SwinTransformer:
    """Swin-B (Liu et al. 2021, section 3.3), 87.8 M parameters at 224 px."""
    return SwinTransformer(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                            num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)


@register_model
def swin_t_2(*, num_classes: int = 10, in_chans: int = 3, img_size: int = 32, **kwargs: Any) -> SwinTransformer:
    """Swin-T (Liu et al. 2021) for 28-32 px images: 2x2 patches, 4x4 windows; 27.5 M parameters.

    The trailing number is the patch size, as in `vit_ti_4`. At 32 px the stages see 16, 8, 4 and 2 tokens a
    side, so the shifted windows still cross borders in the first two; the model is marked as designed for 32 px, so
    it does not trigger the small-input warning.
    """
    kwargs = {"patch_size": 2, "window_size": 4, **kwargs}
    model = SwinTransformer(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                            num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)
    model.designed_input_size = 32
    return model
