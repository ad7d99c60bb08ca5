"""A small UNet that predicts the noise in a noised image (Ho et al. 2020, scaled down).

Shape of the network for the defaults (32x32, base 64, mults (1, 2, 2)):

    conv 3->64 | 32x32: res 64        | down | 16x16: res 128 | down | 8x8: res 128 + attn
    middle: res, attn, res at 8x8
    up path mirrors it, each res block taking the skip connection concatenated.

Every residual block adds a projection of the timestep embedding (sinusoidal, as in the
Transformer, then an MLP). With `num_classes > 0`, a learned class embedding is added to
the timestep embedding; index `num_classes` is the "no class" token that classifier-free
guidance trains by dropping labels (Ho & Salimans 2022).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from audit.errors import AuditError


@dataclass(frozen=True)
class ModelConfig:
    resolution: int = 32
    channels: int = 3
    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_resolution: int = 8  # self-attention at this feature-map size (0 = none)
    dropout: float = 0.0
    num_classes: int = 0  # 0 = unconditional
    groups: int = 8  # GroupNorm groups

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        d["channel_mults"] = tuple(d.get("channel_mults", cls.channel_mults))
        return cls(**d)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps: [sin(t*f_k), cos(t*f_k)], f_k = 10000^(-k/half)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of a small feature map, residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (b, hw, c)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        n_levels = len(config.channel_mults)
        if config.resolution % (2 ** (n_levels - 1)):
            raise AuditError(
                f"resolution {config.resolution} is not divisible by 2^{n_levels - 1} "
                f"(channel_mults {config.channel_mults}); use 16, 32 or 64."
            )
        self.config = c = config
        ch, g, drop = c.base_channels, c.groups, c.dropout
        temb = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        # One extra row: the "no class" token for classifier-free guidance.
        self.class_emb = nn.Embedding(c.num_classes + 1, temb) if c.num_classes > 0 else None
        self.conv_in = nn.Conv2d(c.channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skips, cur, res = [ch], ch, c.resolution
        for level, mult in enumerate(c.channel_mults):
            for _ in range(c.num_res_blocks):
                block = nn.ModuleList([ResBlock(cur, ch * mult, temb, g, drop)])
                cur = ch * mult
                if res == c.attention_resolution:
                    block.append(AttentionBlock(cur, g))
                self.down.append(block)
                skips.append(cur)
            if level < n_levels - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(cur, cur, 3, stride=2, padding=1)]))
                skips.append(cur)
                res //= 2

        self.mid1 = ResBlock(cur, cur, temb, g, drop)
        self.mid_attn = AttentionBlock(cur, g)
        self.mid2 = ResBlock(cur, cur, temb, g, drop)

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mults))):
            for _ in range(c.num_res_blocks + 1):
                block = nn.ModuleList([ResBlock(cur + skips.pop(), ch * mult, temb, g, drop)])
                cur = ch * mult
                if res == c.attention_resolution:
                    block.append(AttentionBlock(cur, g))
                self.up.append(block)
            if level > 0:
                self.up.append(
                    nn.ModuleList(
                        [
                            nn.Upsample(scale_factor=2, mode="nearest"),
                            nn.Conv2d(cur, cur, 3, padding=1),
                        ]
                    )
                )
                res *= 2
        self.norm_out = nn.GroupNorm(g, cur)
        self.conv_out = nn.Conv2d(cur, c.channels, 3, padding=1)
        # Start as "predict zero noise": a common trick that makes early training stable.
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)  # type: ignore[arg-type]

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predicted noise for images `x` in [-1, 1] at integer timesteps `t`; `y` = class ids
        (`num_classes` means "no class"; None means "no class" for every image)."""
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        if self.class_emb is not None:
            if y is None:
                y = torch.full_like(t, self.config.num_classes)
            emb = emb + self.class_emb(y)
        h = self.conv_in(x)
        hs = [h]
        for block in self.down:
            h = _apply(block, h, emb)  # type: ignore[arg-type]
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for block in self.up:
            if isinstance(block[0], ResBlock):  # type: ignore[index]
                h = torch.cat([h, hs.pop()], dim=1)
            h = _apply(block, h, emb)  # type: ignore[arg-type]
        return self.conv_out(F.silu(self.norm_out(h)))


def _apply(block: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    for layer in block:
        h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
    return h
