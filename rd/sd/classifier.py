"""p(attribute | x): a small CNN that reads an image's attributes back, the prompt-fidelity stand-in for CLIP score.

    clf = train_classifier(images, attrs, ClassifierConfig(), steps=1500)   # images (N, 3, 32, 32) uint8, attrs (N, A)
    acc, per = accuracy(clf, generated_uint8, prompt_attrs, per_attribute=True)   # fraction with EVERY attribute right

A text-to-image model is faithful to "a red circle on the left" when a classifier trained on real images says
red, circle and left for its samples: the all-attribute accuracy on generated images measures prompt fidelity
the way CLIP score does for Stable Diffusion [CLIP], with a judge whose own accuracy on real held-out images is
known. For CIFAR-10, heads = (10,) and labels (N,) work as well (then flip=True is the usual augmentation).
Network: three blocks conv 3×3 → GroupNorm → ReLU → 2×2 max-pool (32 → 16 → 8 → 4 px, widths c, 2c, 4c), then
the 4 × 4 map flattened, not averaged: "left" and "top" are attributes, and a global average pool would throw
away where the shape is. One linear head per attribute.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data import from_uint8


@dataclass
class ClassifierConfig:
    heads: tuple = (4, 3, 4)       # classes per attribute (shapes: colour, shape, position; CIFAR-10: (10,))
    channels: int = 32             # width of the first block (then 2×, 4×; a multiple of 8)


class AttributeClassifier(nn.Module):
    """x (B, 3, 32, 32) in [-1, 1] → one logit tensor (B, k_i) per attribute i."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg, c = cfg, cfg.channels
        layers, c_in = [], 3
        for c_out in (c, 2 * c, 4 * c):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.Flatten())                       # (B, 4c·4·4)
        self.heads = nn.ModuleList(nn.Linear(4 * c * 16, k) for k in cfg.heads)

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.shape[-2:] != (32, 32):
            raise ValueError(f"the classifier reads 32×32 images, got {tuple(x.shape[-2:])}")
        h = self.features(x)
        return [head(h) for head in self.heads]


def _as_columns(attrs: Tensor) -> Tensor:
    """(N,) labels or (N, A) attributes → (N, A) int64."""
    return (attrs[:, None] if attrs.dim() == 1 else attrs).long()


def train_classifier(images_uint8: Tensor, attrs: Tensor, cfg: ClassifierConfig, steps: int, batch: int = 128,
                     lr: float = 2e-3, device="cpu", seed: int = 0, flip: bool = False) -> AttributeClassifier:
    """min Σ_i CE(head_i(x), a_i) by Adam, lr cosine-decayed to 0; returns the model in eval mode on `device`.

    Batches are drawn with replacement by a torch.Generator seeded with `seed`, which also seeds the initial
    weights (the global RNG is left alone). flip=True mirrors half of each batch left-right: right for CIFAR-10,
    wrong for the shapes, where "left" and "right" are labels.
    """
    attrs = _as_columns(attrs)
    if attrs.shape != (len(images_uint8), len(cfg.heads)):
        raise ValueError(f"attrs has shape {tuple(attrs.shape)}, expected ({len(images_uint8)}, {len(cfg.heads)}) "
                         f"for {len(cfg.heads)} heads")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = AttributeClassifier(cfg).to(device)
    images, attrs = images_uint8.to(device), attrs.to(device)              # (N, 3, 32, 32) uint8, (N, A)
    gen = torch.Generator(device=images.device).manual_seed(seed)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    bar = tqdm(range(steps), desc="classifier", leave=False)
    for _ in bar:
        idx = torch.randint(len(images), (batch,), generator=gen, device=images.device)   # (B,)
        x = from_uint8(images[idx])                                       # (B, 3, 32, 32) in [-1, 1]
        if flip:
            mirror = torch.rand(batch, generator=gen, device=images.device) < 0.5
            x = torch.where(mirror[:, None, None, None], x.flip(3), x)
        loss = sum(F.cross_entropy(logits, attrs[idx, i]) for i, logits in enumerate(clf(x)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return clf.eval()


@torch.no_grad()
def accuracy(clf: AttributeClassifier, images_uint8: Tensor, attrs: Tensor, batch: int = 512,
             per_attribute: bool = False):
    """Fraction of images whose every attribute is predicted right (and, with per_attribute, each attribute's own).

    Batches go to the classifier's device. Returns a float, or (float, list of floats) with per_attribute=True.
    """
    attrs = _as_columns(attrs)
    device = next(clf.parameters()).device
    right = []                                                              # (n, A) bool per batch
    for i in range(0, len(images_uint8), batch):
        x = from_uint8(images_uint8[i:i + batch].to(device))
        pred = torch.stack([logits.argmax(1) for logits in clf(x)], dim=1)  # (n, A)
        right.append((pred == attrs[i:i + batch].to(device)).cpu())
    right = torch.cat(right)                                                # (N, A)
    all_right = right.all(dim=1).float().mean().item()
    return (all_right, right.float().mean(dim=0).tolist()) if per_attribute else all_right
