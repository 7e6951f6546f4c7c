"""x ≈ D(z), z ~ N(μ(x), σ²(x)): Stable Diffusion's first stage, a KL-regularised autoencoder, small.  [LDM §3.1]

    ae = Autoencoder(AutoencoderConfig.preset("small"))
    loss, stats = ae.loss(x, generator=gen)          # x (B, 3, 32, 32) in [-1, 1]; stats: l1, mse, kl for the log
    scale = latent_scale(ae, x_data)                 # 1 / std of the encoder means (SD's 0.18215, measured here)
    z0 = encode_latents(ae, x_data, scale)           # (N, 4, 8, 8), std ≈ 1: what the latent diffusion model learns
    x = decode_latents(ae, z0, scale)                # (N, 3, 32, 32) in ≈ [-1, 1]

Encoder: conv → per level residual blocks GroupNorm → SiLU → conv (rd.layers.ResBlock, no time embedding) and a
stride-2 conv between levels (f = 2^(len(ch_mult) − 1) = 4: 32 px → 8 × 8 × 4) → a mid block → GroupNorm → SiLU →
conv to 2·latent_channels = (μ, log σ²), log σ² clamped to [−30, 20] as SD does. The decoder mirrors it with
nearest-neighbour upsampling; its output is not squashed (no tanh): images live in [-1, 1] and are clamped only
when turned into uint8.
Simplifications, for teaching: SD's autoencoder also has self-attention in its mid blocks and is trained with a
perceptual (LPIPS) loss and a patch-GAN discriminator; here the loss is L1 + L2 + KL only, so reconstructions
are a little blurrier. On 32-px shapes that is enough.
"""
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..layers import ResBlock, Upsample2x

LOGVAR_RANGE = (-30.0, 20.0)         # clamp of log σ², as SD's DiagonalGaussianDistribution


def _norm(c: int) -> nn.GroupNorm:
    """GroupNorm with min(32, c/4) groups: SD's 32 groups at SD widths, ≥ 4 channels per group at small widths."""
    return nn.GroupNorm(min(32, c // 4), c)


def _block(c_in: int, c_out: int) -> ResBlock:
    """out = skip(x) + conv(SiLU(GN(conv(SiLU(GN(x)))))): rd.layers.ResBlock, no time embedding, _norm's groups."""
    return ResBlock(c_in, c_out, norm=_norm)


@dataclass
class AutoencoderConfig:
    channels: int = 64             # width at full resolution (a multiple of 4)
    ch_mult: tuple = (1, 2, 2)     # width multipliers per level; len − 1 stride-2 steps: f = 4
    num_res_blocks: int = 1        # residual blocks per encoder level (the decoder has one more, as SD)
    latent_channels: int = 4       # channels of z (SD: 4)
    kl_weight: float = 1e-6        # weight of the per-element KL against the per-pixel reconstruction loss

    @staticmethod
    def preset(name: str) -> "AutoencoderConfig":
        """'tiny' (channels 16: 0.23 M parameters; train_sd.py's cpu preset, tutorial 05 and the tests), 'small'
        (32: 0.92 M), 'base' (64: 3.66 M; the gpu preset). All f = 4, 4 latent channels; sizes as sum(p.numel())."""
        presets = {
            "tiny": AutoencoderConfig(channels=16),
            "small": AutoencoderConfig(channels=32),
            "base": AutoencoderConfig(channels=64),
        }
        if name not in presets:
            raise ValueError(f"unknown autoencoder preset {name!r}; allowed: {', '.join(presets)}")
        return presets[name]


class Autoencoder(nn.Module):
    """encode: x (B, 3, H, W) → (μ, log σ²), each (B, c_z, H/f, W/f);  decode: z → x̂ (B, 3, H, W).  [LDM §3.1]"""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        widths = [cfg.channels * m for m in cfg.ch_mult]
        self.f = 2 ** (len(widths) - 1)                                  # spatial downsampling factor
        enc, c = [nn.Conv2d(3, widths[0], 3, padding=1)], widths[0]
        for level, w in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                enc.append(_block(c, w))
                c = w
            if level < len(widths) - 1:
                enc.append(nn.Conv2d(c, c, 3, stride=2, padding=1))     # downsample ×2
        enc += [_block(c, c), _block(c, c),                              # the mid block
                _norm(c), nn.SiLU(), nn.Conv2d(c, 2 * cfg.latent_channels, 3, padding=1)]   # → (μ, log σ²)
        self.encoder = nn.Sequential(*enc)
        dec = [nn.Conv2d(cfg.latent_channels, c, 3, padding=1), _block(c, c), _block(c, c)]
        for level, w in reversed(list(enumerate(widths))):
            for _ in range(cfg.num_res_blocks + 1):
                dec.append(_block(c, w))
                c = w
            if level > 0:
                dec += [Upsample2x(), nn.Conv2d(c, c, 3, padding=1)]
        dec += [_norm(c), nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, 3, H, W) → (mean, logvar), each (B, latent_channels, H/f, W/f); logvar clamped to [−30, 20]."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: Tensor) -> Tensor:
        """z (B, latent_channels, h, w) → x̂ (B, 3, f·h, f·w), unclamped."""
        return self.decoder(z)

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        """L = mean|x − x̂| + mean (x − x̂)² + kl_weight · mean_elements KL(N(μ, σ²) ‖ N(0, 1)),  x̂ = D(μ + σ·ε).

        Both means are per element (pixels of x; entries of z), so the terms do not scale with the image size.
        SD sums both over an image instead; its weight w_SD corresponds to kl_weight = w_SD · |z| / |x| here
        (|z| / |x| = (4·8·8) / (3·32·32) = 1/12 at f = 4). ε ~ N(0, I) is drawn from `generator`, which must live
        on x's device (None: the global generator). Returns (L, {"loss", "l1", "mse", "kl"}), the stats as detached
        0-dim tensors: nothing waits for the device until the caller logs them (float(v) or f"{v:.4f}").
        """
        mean, logvar = self.encode(x)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        x_rec = self.decode(mean + (0.5 * logvar).exp() * eps)                     # reparameterisation
        l1, mse = (x_rec - x).abs().mean(), (x_rec - x).square().mean()
        kl = kl_divergence(mean, logvar).mean()
        total = l1 + mse + self.cfg.kl_weight * kl
        return total, {"loss": total.detach(), "l1": l1.detach(), "mse": mse.detach(), "kl": kl.detach()}


def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) = ½ (μ² + σ² − 1 − log σ²), per element (no reduction).  [VAE App. B]"""
    return 0.5 * (mean.square() + logvar.exp() - 1 - logvar)


#----------------------------------------------------------------------------
# Latents for the diffusion model. Batches go to the autoencoder's device; results stay there.

def _device(ae: nn.Module) -> torch.device:
    return next(ae.parameters()).device


@torch.no_grad()
def latent_scale(ae: Autoencoder, images_float: Tensor, batch: int = 256) -> float:
    """scale = 1 / std(μ(x)) over every element of the encoder means of `images_float` (B, 3, H, W) in [-1, 1].  [LDM]

    SD's scale_factor 0.18215 was measured the same way (on a batch of sampled latents of its autoencoder), so that
    the latents the diffusion model sees have unit variance, as its noise schedule assumes. Sums in float64.
    """
    n, s1, s2 = 0, 0.0, 0.0
    for i in range(0, len(images_float), batch):
        mean, _ = ae.encode(images_float[i:i + batch].to(_device(ae)))
        m = mean.double()
        n, s1, s2 = n + m.numel(), s1 + m.sum().item(), s2 + m.square().sum().item()
    var = (s2 - s1 * s1 / n) / (n - 1)
    return 1.0 / math.sqrt(var)


@torch.no_grad()
def encode_latents(ae: Autoencoder, images_float: Tensor, scale: float, batch: int = 256) -> Tensor:
    """z0 = scale · μ(x): images (N, 3, H, W) in [-1, 1] → latents (N, c_z, H/f, W/f), deterministic.

    SD samples z = μ + σ·ε each time it encodes a training image; here the mean is used (σ is tiny at
    kl_weight 1e-6, and a fixed z0 per image lets the latents be computed once and reused for every epoch).
    """
    return torch.cat([ae.encode(images_float[i:i + batch].to(_device(ae)))[0] * scale
                      for i in range(0, len(images_float), batch)])


@torch.no_grad()
def decode_latents(ae: Autoencoder, z: Tensor, scale: float, batch: int = 256) -> Tensor:
    """x̂ = D(z / scale): latents (N, c_z, h, w) → images (N, 3, f·h, f·w) in ≈ [-1, 1] (clamp before uint8)."""
    return torch.cat([ae.decode(z[i:i + batch].to(_device(ae)) / scale) for i in range(0, len(z), batch)])
