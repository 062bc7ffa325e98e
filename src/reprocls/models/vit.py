"""Vision Transformer (Dosovitskiy et al. 2021): an image as a sequence of patches, read by a plain Transformer.

The 224 px models carry torchvision's names and sizes (B/16, B/32, L/16); the Ti and S widths are
DeiT's (Touvron et al. 2021, table 1). Patch-4 variants read 28-32 px images as an 8x8 (or 7x7) token grid.

Module names are timm's (`blocks.3.attn.qkv`) except the patch embedding (timm: `patch_embed.proj`);
`remap_state_dict` maps timm and torchvision checkpoints onto them and resamples the position embedding
when a checkpoint was trained at another image size (paper section 3.2). The layers `DropPath` and `Mlp`
are shared with the Swin family.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reprocls.models import register_model
from reprocls.models._base import Classifier, linear_head, run_blocks

LAYER_NORM_EPS = 1e-6  # the paper's JAX code and torchvision use 1e-6, not PyTorch's default 1e-5


def to_pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop a residual branch for whole samples, rescale the rest."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """The Transformer's position-wise feed-forward network: Linear, GELU, Linear, with dropout after each."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention over all tokens, through torch's fused scaled_dot_product_attention."""

    def __init__(self, dim: int, num_heads: int, attention_dropout: float = 0.0, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(dim, dim * 3)  # queries, keys and values of all heads in one matrix, in that order
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (batch, heads, tokens, head_dim)
        p = self.attention_dropout if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        x = x.transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj_drop(self.proj(x))


class EncoderBlock(nn.Module):
    """Pre-norm Transformer layer (paper eq. 2-3): x + MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        *,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads, attention_dropout, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, mlp_dim, dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(Classifier):
    """Patch embedding, a class token and learned position embeddings, `depth` encoder blocks, a linear head.

    The position embedding has one entry per patch of an `img_size` image (plus the class token), so the
    model accepts exactly that input size; build it with the size you train at.
    """

    def __init__(
        self,
        *,
        patch_size: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_dim: int,
        img_size: int | tuple[int, int] = 224,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path_rate: float = 0.0,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.img_size = to_pair(img_size)
        if self.img_size[0] % patch_size or self.img_size[1] % patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of the patch size {patch_size}")
        self.patch_size = patch_size
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_features = dim
        self.stem_stride = patch_size
        self.default_input_size = (in_chans, *self.img_size)

        self.patch_embed = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)  # a linear map of each patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size[0] * self.grid_size[1], dim))
        self.pos_drop = nn.Dropout(dropout)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear in depth, 0 at the first block
        self.blocks = nn.Sequential(
            *(
                EncoderBlock(
                    dim, num_heads, mlp_dim, dropout=dropout, attention_dropout=attention_dropout, drop_path=rate
                )
                for rate in rates
            )
        )
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.head = linear_head(dim, num_classes)
        self.grad_checkpointing = grad_checkpointing
        self._init_weights()

    def _init_weights(self) -> None:
        """The paper's (and torchvision's) scheme: LeCun-normal patches, N(0, 0.02) positions, Xavier MLPs.

        One change: torchvision starts the head at zero, which would leave every other parameter without
        gradient in the first step; a small random head (as in timm) keeps the backward pass informative.
        """
        fan_in = self.patch_embed.in_channels * self.patch_size**2
        nn.init.trunc_normal_(self.patch_embed.weight, std=math.sqrt(1.0 / fan_in))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.pos_embed, std=0.02)
        for block in self.blocks:
            nn.init.xavier_uniform_(block.attn.qkv.weight)
            nn.init.zeros_(block.attn.qkv.bias)
            nn.init.zeros_(block.attn.proj.bias)
            for fc in (block.mlp.fc1, block.mlp.fc2):
                nn.init.xavier_uniform_(fc.weight)
                nn.init.normal_(fc.bias, std=1e-6)
        self._init_head()

    def _init_head(self) -> None:
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after the final LayerNorm: (batch, 1 + patches, dim), the class token first."""
        height, width = x.shape[-2:]
        if (height, width) != self.img_size:
            size = height if height == width else (height, width)
            raise ValueError(
                f"{type(self).__name__} was built for {self.img_size[0]}x{self.img_size[1]} inputs but got "
                f"{height}x{width}; build it with img_size={size} (there is one position embedding per patch)"
            )
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (batch, patches, dim), patches in row-major order
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        x = run_blocks(self.blocks, x, self.grad_checkpointing)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0]  # the class token's final state is the image representation (paper eq. 4)
        return x if pre_logits else self.head(x)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.head = linear_head(self.num_features, num_classes)
        self._init_head()

    def remap_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Accept torchvision's and timm's key names, and resample position embeddings trained at another size.

        timm's ViTs (`vit_tiny_patch16_224` ...) differ from ours only in `patch_embed.proj` (ours: `patch_embed`).
        """
        if "conv_proj.weight" in state:
            state = {_torchvision_key(key): value for key, value in state.items()}
        if "patch_embed.proj.weight" in state:
            state = {key.replace("patch_embed.proj.", "patch_embed.", 1): value for key, value in state.items()}
        pos_embed = state.get("pos_embed")
        if pos_embed is not None and pos_embed.shape != self.pos_embed.shape:
            state = {**state, "pos_embed": resample_pos_embed(pos_embed, self.grid_size)}
        return state


_TORCHVISION_RENAMES = [  # (pattern, replacement) applied in order to each torchvision key
    (r"^conv_proj\.", "patch_embed."),
    (r"^class_token$", "cls_token"),
    (r"^encoder\.pos_embedding$", "pos_embed"),
    (r"^encoder\.ln\.", "norm."),
    (r"^heads\.head\.", "head."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.", r"blocks.\1."),
    (r"\.ln_1\.", ".norm1."),
    (r"\.ln_2\.", ".norm2."),
    (r"\.self_attention\.in_proj_(weight|bias)$", r".attn.qkv.\1"),  # nn.MultiheadAttention packs q, k, v like we do
    (r"\.self_attention\.out_proj\.", ".attn.proj."),
    (r"\.mlp\.0\.", ".mlp.fc1."),
    (r"\.mlp\.3\.", ".mlp.fc2."),
]


def _torchvision_key(key: str) -> str:
    for pattern, replacement in _TORCHVISION_RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def resample_pos_embed(pos_embed: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """Bicubic 2-D interpolation of the patch position embeddings to a new grid; the class token's is kept."""
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    old = math.isqrt(patch_pos.shape[1])
    if old * old != patch_pos.shape[1]:
        raise ValueError(f"cannot resample a position embedding of {patch_pos.shape[1]} patches: not a square grid")
    dim = patch_pos.shape[-1]
    grid = patch_pos.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=grid_size, mode="bicubic", align_corners=False)
    patch_pos = grid.permute(0, 2, 3, 1).reshape(1, grid_size[0] * grid_size[1], dim).to(pos_embed.dtype)
    return torch.cat([cls_pos, patch_pos], dim=1)


def _vit(
    patch_size: int,
    dim: int,
    depth: int,
    num_heads: int,
    *,
    num_classes: int,
    in_chans: int,
    img_size: int | tuple[int, int],
    kwargs: dict[str, Any],
) -> VisionTransformer:
    """Every ViT of the paper and of DeiT: MLP width 4x the model width."""
    return VisionTransformer(
        patch_size=patch_size,
        dim=dim,
        depth=depth,
        num_heads=num_heads,
        mlp_dim=4 * dim,
        img_size=img_size,
        num_classes=num_classes,
        in_chans=in_chans,
        **kwargs,
    )




@register_model
def vit_ti_4(*, num_classes: int = 10, in_chans: int = 3, img_size: int = 32, **kwargs: Any) -> VisionTransformer:
    """ViT-Ti/4 for 28-32 px images: DeiT-Ti widths (Touvron et al. 2021) on 4x4 patches (Dosovitskiy et al. 2021)."""
    model = _vit(4, 192, 12, 3, num_classes=num_classes, in_chans=in_chans, img_size=img_size, kwargs=kwargs)
    model.designed_input_size = 32
    return model


@register_model
def vit_s_4(*, num_classes: int = 10, in_chans: int = 3, img_size: int = 32, **kwargs: Any) -> VisionTransformer:
    """ViT-S/4 for 28-32 px images: DeiT-S widths (Touvron et al. 2021) on 4x4 patches (Dosovitskiy et al. 2021)."""
    model = _vit(4, 384, 12, 6, num_classes=num_classes, in_chans=in_chans, img_size=img_size, kwargs=kwargs)
    model.designed_input_size = 32
    return model


@register_model
def vit_ti_16(*, num_classes: int = 1000, in_chans: int = 3, img_size: int = 224, **kwargs: Any) -> VisionTransformer:
    """ViT-Ti/16, the width of DeiT-Ti (Touvron et al. 2021, table 1), 5.7 M parameters at 224 px."""
    return _vit(16, 192, 12, 3, num_classes=num_classes, in_chans=in_chans, img_size=img_size, kwargs=kwargs)


@register_model
def vit_s_16(*, num_classes: int = 1000, in_chans: int = 3, img_size: int = 224, **kwargs: Any) -> VisionTransformer:
    """ViT-S/16, the width of DeiT-S (Touvron et al. 2021, table 1), 22.1 M parameters at 224 px."""
    return _vit(16, 384, 12, 6, num_classes=num_classes, in_chans=in_chans, img_size=img_size, kwargs=kwargs)


@register_model
def vit_b_16(*, num_classes: int = 1000, in_chans: int = 3, img_size: int = 224, **kwargs: Any) -> VisionTransformer:
    """ViT-B/16 (Dosovitskiy et al. 2021, table 1), 86.6 M parameters at 224 px."""
    return _vit(16, 768, 12, 12, num_classes=num_classes, in_chans=in_chans, img_size=img_size, kwargs=kwargs)


@register_model
def vit_b_32(*, num_classes: int = 1000, in_chans: int = 3, img_size: int = 224, **kwargs: Any) -> VisionTransformer:
    """ViT-B/32 (Dosovitskiy et al. 2021, table 1), 88.2 M parameters at 224 px."""
    return _vit(32, 768, 12, 12, num_classes=num_classes, in_chans=in_chans, img_size=img_size, kwargs=kwargs)


@register_model
def vit_l_16(*, num_classes: int = 1000, in_chans: int = 3, img_size: int = 224, **kwargs: Any) -> VisionTransformer:
    """ViT-L/16 (Dosovitskiy et al. 2021, table 1), 304.3 M parameters at 224 px."""
    return _vit(16, 1024, 24, 16, num_classes=num_classes, in_chans=in_chans, img_size=img_size, kwargs=kwargs)
