"""Latent text-to-image diffusion: ŷ(z_t, t, prompt) = UNet(z_t, t, TextEncoder(tokens)) on latents.  [RD, CFG]

The pieces of a Stable-Diffusion-style model that are not an autoencoder (rd/sd/autoencoder.py), a text tower
(rd/sd/text.py) or a UNet (rd/unet.py): the module that joins the text tower to the UNet, prompt dropout for
classifier-free guidance, and few-step sampling with or without guidance. train_sd.py and tutorials/05 use them.
"""
import torch
from torch import Tensor, nn

from ..predictions import FORMS
from ..rectify import sample_phased
from ..sampling import classifier_free_guidance, sample, solver_for
from ..schedules import Schedule

# the teacher forms of rd.predictions.FORMS that suit latents: EDM's preconditioning assumes data of std σ_d = 0.5,
# SD-scaled latents have std 1
LATENT_FORMS = tuple(name for name, (_, pred) in FORMS.items() if pred != "edm")


class TextUNet(nn.Module):
    """(z_t (B, c, h, w), t (B,), tokens (B, L)) → UNet(z_t, t, TextEncoder(tokens)): one module, trained together.

    SD freezes a pretrained CLIP text tower; here it is trained from scratch with the denoiser (and frozen with it
    for the students, which copy both)."""

    def __init__(self, unet: nn.Module, text: nn.Module):
        super().__init__()
        self.unet, self.text = unet, text

    def forward(self, x, t, tokens):
        return self.unet(x, t, self.text(tokens))


def drop_prompts(tokens: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Each row replaced by the null prompt (all padding, token 0) with probability p: CFG training.  [CFG]"""
    keep = torch.rand(len(tokens), generator=generator, device=generator.device).to(tokens.device) >= p   # (B,)
    return tokens * keep[:, None]


@torch.no_grad()
def generate_latents(net, noise: Tensor, schedule: Schedule, pred_type: str, calls: int, tokens: Tensor,
                     guidance: float = 1.0, batch: int = 500, phased: bool = False) -> Tensor:
    """Clean latents (the last step lands on σ = 0) after `calls` network evaluations per sample (CFG doubles each
    evaluation's batch, not the count).

    phased=False: rd.sampling.solver_for(calls) on the λ-uniform grid of `calls` steps. phased=True (a phased RD
    student of K = calls phases): one first-order step per phase, landing on the phase boundaries of its pairs
    (rd.rectify.sample_phased). guidance = 1: the conditional model alone (how rectified students sample: their pairs
    already carry the teacher's guidance); guidance > 1: ŷ_∅ + w·(ŷ_c − ŷ_∅), ŷ the prediction of
    pred_type, with the null prompt = all padding."""
    out = []
    for z, c in zip(noise.split(batch), tokens.split(batch)):
        fn = (lambda x, t, c=c: net(x, t, c)) if guidance == 1.0 else \
            classifier_free_guidance(net, c, torch.zeros_like(c), guidance)
        with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=z.device.type == "cuda"):
            x = sample_phased(fn, z, schedule, pred_type, calls) if phased else \
                sample(fn, z, schedule, pred_type, solver_for(calls), calls)
        out.append(x.float())
    return torch.cat(out)
