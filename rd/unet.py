"""The image network: a DDPM++/ADM-style UNet with time, class-label and text-token conditioning.  [DDPM, EDM]

    net = UNet(UNetConfig.preset("cifar"))          # 38.3 M parameters, 12.1 GFLOPs per 32×32 image
    out = net(x, t)                                  # x (B, 3, 32, 32), t (B,) in [0, 1]  →  (B, 3, 32, 32)
    out = net(x, t, labels)                          # class-conditional (labels (B,) int; label = num_classes is ∅)
    out = net(x, t, tokens)                          # cross-attention on token features (B, L, context_dim)

Building blocks, top to bottom: a sinusoidal embedding of 1000·t and an MLP; residual blocks (rd.layers.ResBlock)
GroupNorm → SiLU → conv → (+ time embedding as per-channel scale and shift) → GroupNorm → SiLU → dropout → conv,
with a 1×1 skip when the width changes; multi-head self-attention (and cross-attention when a context is given)
at the chosen resolutions; strided-conv downsampling and nearest-neighbour upsampling with skip connections.
The network only maps (x_t, t, cond) to a prediction: its schedule and prediction type are the caller's.
"""
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .layers import ResBlock, Upsample2x, group_norm_silu


def timestep_embedding(t, dim: int, max_period: float = 10_000.0):
    """[cos(1000·t·f_i), sin(1000·t·f_i)], f_i = max_period^(−i/(dim/2)): the transformer embedding of DDPM."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angle = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([angle.cos(), angle.sin()], dim=1)


class Attention(nn.Module):
    """x + proj(softmax(q kᵀ/√d) v) over the H·W positions; k, v from x (self) or from a token context (cross)."""

    def __init__(self, channels: int, heads: int, context_dim: int | None = None, groups: int = 32):
        super().__init__()
        self.heads, self.norm = heads, nn.GroupNorm(groups, channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim or channels, 2 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x, context=None):                                                # x (B, C, H, W)
        h = rearrange(self.norm(x), "b c y x -> b (y x) c")                            # (B, HW, C)
        src = h if context is None else context                                         # (B, L, C_ctx)
        q = rearrange(self.q(h), "b n (heads d) -> b heads n d", heads=self.heads)       # (B, heads, HW, d)
        k, v = rearrange(self.kv(src), "b n (two heads d) -> two b heads n d", two=2, heads=self.heads)
        out = rearrange(F.scaled_dot_product_attention(q, k, v), "b heads n d -> b n (heads d)")
        return x + rearrange(self.proj(out), "b (y x) c -> b c y x", y=x.shape[2])


@dataclass
class UNetConfig:
    in_channels: int = 3                   # image (or latent) channels
    resolution: int = 32                   # input height = width
    channels: int = 128                    # width at the top level
    ch_mult: tuple = (1, 2, 2, 2)          # width multipliers per level (len = number of levels)
    num_res_blocks: int = 2                # residual blocks per level (down path; the up path has one more)
    attn_resolutions: tuple = (16,)        # resolutions with self-attention
    heads: int = 4                         # attention heads
    dropout: float = 0.1                   # dropout inside residual blocks
    num_classes: int = 0                   # > 0: class-conditional; label num_classes is the null label (CFG)
    context_dim: int = 0                   # > 0: cross-attention on (B, L, context_dim) tokens at attention levels

    @staticmethod
    def preset(name: str) -> "UNetConfig":
        """'cifar' (DDPM's CIFAR-10 layout with scale-shift embeddings: 38.3 M parameters, 12.1 forward GFLOPs
        per image), 'cifar-small' (9.6 M, 3.0 GFLOPs), 'tiny' (0.76 M, 0.51 GFLOPs; CPU tests). Counted by
        `describe` (FLOPs = 2 × multiply-adds)."""
        presets = {
            "cifar": UNetConfig(),
            "cifar-small": UNetConfig(channels=64),
            "tiny": UNetConfig(channels=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), dropout=0.0),
        }
        if name not in presets:
            raise ValueError(f"unknown UNet preset {name!r}; allowed: {', '.join(presets)}")
        return presets[name]


class UNet(nn.Module):
    """ε/x0/v/u-agnostic image network: (x_t (B, C, H, W), t (B,), cond) → (B, C, H, W)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg, ch, emb_dim = cfg, cfg.channels, 4 * cfg.channels
        ctx = cfg.context_dim or None
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes else None
        self.stem = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.down, skips, res, c = nn.ModuleList(), [ch], cfg.resolution, ch
        for level, mult in enumerate(cfg.ch_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(self._block(c, ch * mult, emb_dim, res, ctx))
                c = ch * mult
                skips.append(c)
            if level < len(cfg.ch_mult) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, cfg.dropout, zero_init=True), Attention(c, cfg.heads, ctx),
                                  ResBlock(c, c, emb_dim, cfg.dropout, zero_init=True)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.ch_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(self._block(c + skips.pop(), ch * mult, emb_dim, res, ctx))
                c = ch * mult
            if level > 0:
                self.up.append(Upsample2x())
                self.up.append(nn.Conv2d(c, c, 3, padding=1))
                res *= 2
        self.out_norm, self.out = nn.GroupNorm(32 if c % 32 == 0 else 8, c), nn.Conv2d(c, cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _block(self, c_in, c_out, emb_dim, res, ctx):
        blocks = [ResBlock(c_in, c_out, emb_dim, self.cfg.dropout, zero_init=True)]   # each block starts as skip(x)
        if res in self.cfg.attn_resolutions:
            blocks.append(Attention(c_out, self.cfg.heads, ctx))
        return nn.ModuleList(blocks)

    def _run(self, layer, h, emb, context):
        if isinstance(layer, nn.ModuleList):                 # ResBlock [+ Attention]
            h = layer[0](h, emb)
            return layer[1](h, context) if len(layer) > 1 else h
        return layer(h)

    def forward(self, x, t, cond=None):
        cfg = self.cfg
        if x.dim() != 4 or x.shape[1] != cfg.in_channels or x.shape[2:] != (cfg.resolution, cfg.resolution):
            raise ValueError(f"this UNet takes images (B, {cfg.in_channels}, {cfg.resolution}, {cfg.resolution}) "
                             f"(UNetConfig in_channels and resolution); got {tuple(x.shape)}")
        emb = self.time_mlp(timestep_embedding(t, self.cfg.channels).to(x.dtype))
        context = None
        if self.cfg.num_classes:
            if cond is None or cond.dim() != 1:
                raise ValueError(f"a class-conditional UNet needs labels (B,) in [0, {self.cfg.num_classes}]")
            emb = emb + self.label_emb(cond)
        elif self.cfg.context_dim:
            if cond is None or cond.dim() != 3 or cond.shape[-1] != self.cfg.context_dim:
                raise ValueError(f"a text-conditional UNet needs tokens (B, L, {self.cfg.context_dim})")
            context = cond
        h = self.stem(x)
        hs = [h]
        for layer in self.down:
            h = self._run(layer, h, emb, context)
            hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb), context), emb)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(layer, h, emb, context)
        return self.out(group_norm_silu(h, self.out_norm))


def count_flops(net: UNet, batch: int = 1, cond=None) -> float:
    """Forward FLOPs per image (a multiply-add counts 2), counted by torch.utils.flop_counter on a CPU pass."""
    from torch.utils.flop_counter import FlopCounterMode
    cfg = net.cfg
    x = torch.zeros(batch, cfg.in_channels, cfg.resolution, cfg.resolution)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x, torch.full((batch,), 0.5), cond)
    return counter.get_total_flops() / batch


def describe(cfg: UNetConfig) -> dict:
    """Parameters (millions) and forward GFLOPs per image of a config: what UNetConfig.preset's docstring lists."""
    net = UNet(cfg)
    cond = torch.zeros(1, dtype=torch.long) if cfg.num_classes else (torch.zeros(1, 8, cfg.context_dim) if cfg.context_dim else None)
    return {"params_M": sum(p.numel() for p in net.parameters()) / 1e6, "gflops": count_flops(net, cond=cond) / 1e9,
            **asdict(cfg)}
