"""The latent pipeline's two captioned data sets (train_sd.py --data): the built-in shapes (rd.sd.shapes), whose
captions name colour, shape and position, and CIFAR-10, whose captions put the class name in a template; for each,
the training images, held-out images and the evaluation's prompts, with the attributes (N, A) a fidelity
classifier reads back (shapes: colour, shape, position; CIFAR-10: the class).

    images, attrs, caps = train_images("shapes", 20_000, seed=0)     # CIFAR-10: cifar=…, cache=…
    attrs, prompts = eval_prompts("cifar10", 10_000, seed=0)       # ["a photo of a airplane", …], balanced classes
"""
from pathlib import Path

import torch

from ..data import CIFAR_CLASSES, load_cifar10
from .shapes import ATTRIBUTES, captions, make_shapes

TEMPLATES = ("a photo of a {}", "a picture of a {}", "an image of a {}", "a small {}", "a photo of the {}")


def train_images(data: str, n: int, seed: int, cifar: str = "", cache: Path | None = None):
    """uint8 images (N, 3, 32, 32), attributes (N, A) and captions: n new shapes, or CIFAR-10's train split (from
    `cifar`, decoded once into `cache`; n ≥ 50,000 demands the full split) with the templates taken in turn."""
    if data == "shapes":
        images, attrs = make_shapes(n, seed=seed)
        return images, attrs, captions(attrs)
    images, labels = load_cifar10(cifar, "train", cache_dir=cache, strict=n >= 50_000)
    caps = [TEMPLATES[i % len(TEMPLATES)].format(CIFAR_CLASSES[y]) for i, y in enumerate(labels.tolist())]
    return images, labels[:, None], caps


def eval_prompts(data: str, n: int, seed: int):
    """n prompts with their attributes: uniform random attributes (shapes) or balanced classes (CIFAR-10)."""
    g = torch.Generator().manual_seed(seed + 7)
    if data == "shapes":
        attrs = torch.stack([torch.randint(len(v), (n,), generator=g) for v in ATTRIBUTES.values()], 1)
        return attrs, captions(attrs)
    labels = torch.arange(n) % len(CIFAR_CLASSES)
    return labels[:, None], [f"a photo of a {CIFAR_CLASSES[y]}" for y in labels.tolist()]


def held_out_images(data: str, n: int, seed: int, cifar: str = "", cache: Path | None = None):
    """n images no model trained on, uint8 (N, 3, 32, 32), with their attributes (N, A): new shapes, or the first
    CIFAR-10 test images (from `cifar`, decoded once into `cache`)."""
    if data == "shapes":
        return make_shapes(n, seed=seed + 1000)
    held_out, labels = load_cifar10(cifar, "test", cache_dir=cache, strict=False, verbose=False)
    return held_out[:n], labels[:n, None]
