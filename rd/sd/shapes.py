"""Captioned shapes: "a red circle on the left" → a 32×32 image, drawn procedurally (no download).

    images, attrs = make_shapes(50_000, seed=0)      # (N, 3, 32, 32) uint8, (N, 3) int64 = (colour, shape, position)
    texts = captions(attrs)                          # ["a yellow triangle at the top", …]

The stand-in for a text-to-image data set: every image is one filled shape on a dark, smooth, slightly noisy
background, and all three attributes of the caption are visible in it, so a text-conditional model can be checked
for prompt fidelity (rd.sd.classifier reads the attributes back). 4 colours × 3 shapes × 4 positions = 48 prompts.
Drawing: each shape is a signed distance d(p) (negative inside) and its coverage clamp(0.5 − d, 0, 1) is a
1-pixel anti-aliased ramp; image = background·(1 − coverage) + colour·coverage.
Positions: the centre sits off the image centre by an offset D along the named direction and by at most D − 2 px
(at size 32) across it, so "left" and "top" never overlap; the shape stays inside the image with 1 px to spare.
"""
import math

import torch
from torch import Tensor

COLOURS = {                                          # RGB fills, far from each other and from the background
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom")
ATTRIBUTES = {"colour": tuple(COLOURS), "shape": SHAPES, "position": POSITIONS}   # order of the columns of attrs
PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
PROMPTS = [                                          # figure prompts: every colour, shape and position at least twice
    "a red circle on the left",
    "a green square on the right",
    "a blue triangle at the top",
    "a yellow circle at the bottom",
    "a red square at the top",
    "a green triangle on the left",
    "a blue circle on the right",
    "a yellow square at the bottom",
]

RADIUS = (5.0, 8.0)          # shape radius range in px at size 32 (scaled with size)
MIN_OFFSET = 4.0             # least offset D of the centre from the image centre, along the named direction (px at 32)
CROSS_MARGIN = 2.0           # the offset across the named direction is at most D − CROSS_MARGIN (px at 32)
BACKGROUND = (0.08, 0.30)    # range of the background's mean grey level (in [0, 1])
TINT = 0.05                  # per-channel colour tint of the background, uniform in ±TINT
GRADIENT = 0.15              # largest brightness change of the background across the image (linear ramp)
NOISE = 0.03                 # std of the per-pixel Gaussian noise on the background
JITTER = (0.85, 1.05)        # brightness factor of the fill colour
CHUNK = 4096                 # images drawn at a time (bounds the float32 scratch memory to ~50 MB at size 32)


def caption(colour: int, shape: int, position: int) -> str:
    """(colour, shape, position) indices → "a <colour> <shape> <where>", e.g. "a blue square at the top"."""
    return f"a {tuple(COLOURS)[colour]} {SHAPES[shape]} {PHRASES[POSITIONS[position]]}"


def captions(attrs: Tensor) -> list[str]:
    """attrs (N, 3) int → N captions."""
    return [caption(*row) for row in attrs.tolist()]


def parse_caption(text: str) -> tuple[int, int, int]:
    """The inverse of `caption`: "a red circle on the left" → (0, 0, 0); any other text is a ValueError."""
    for c, colour in enumerate(COLOURS):
        for s, shape in enumerate(SHAPES):
            for p, position in enumerate(POSITIONS):
                if text.strip().lower() == caption(c, s, p):
                    return c, s, p
    raise ValueError(f"{text!r} is not a shapes caption; captions read 'a <colour> <shape> <where>' with colour in "
                     f"{tuple(COLOURS)}, shape in {SHAPES}, where in {tuple(PHRASES.values())}")


def make_shapes(n: int, seed: int = 0, size: int = 32) -> tuple[Tensor, Tensor]:
    """n captioned images: (images (n, 3, size, size) uint8, attrs (n, 3) int64); same (n, seed, size) ⇒ same output.

    Attributes are uniform and independent; every random number comes from one torch.Generator seeded with `seed`.
    """
    if n < 0 or size < 16:
        raise ValueError(f"need n ≥ 0 and size ≥ 16 (the shapes are 10–16 px wide at size 32), got n={n}, size={size}")
    gen = torch.Generator().manual_seed(seed)
    k = size / 32                                                        # px at size 32 → px at this size
    attrs = torch.stack([torch.randint(len(v), (n,), generator=gen) for v in ATTRIBUTES.values()], dim=1)  # (N, 3)
    u = torch.rand(n, 10, generator=gen, dtype=torch.float64)           # per-image parameters, uniform in [0, 1)
    radius = k * (RADIUS[0] + (RADIUS[1] - RADIUS[0]) * u[:, 0])         # (N,)
    d_max = size / 2 - radius - k                                        # the shape stays ≥ 1 px inside the border
    along = k * MIN_OFFSET + (d_max - k * MIN_OFFSET) * u[:, 1]          # (N,) offset D along the named direction
    across = (along - k * CROSS_MARGIN) * (2 * u[:, 2] - 1)              # (N,) offset across it, |across| ≤ D − margin
    sign = torch.tensor([-1.0, 1.0, -1.0, 1.0], dtype=torch.float64)[attrs[:, 2]]   # left/top: −, right/bottom: +
    horizontal = attrs[:, 2] < 2                                         # left/right move x, top/bottom move y
    cx = size / 2 + torch.where(horizontal, sign * along, across)        # (N,) pixel units, x to the right
    cy = size / 2 + torch.where(horizontal, across, sign * along)        # (N,) y downwards: "top" is small y
    fill = torch.tensor(list(COLOURS.values()), dtype=torch.float64)[attrs[:, 0]] / 255   # (N, 3)
    fill = (fill * (JITTER[0] + (JITTER[1] - JITTER[0]) * u[:, 3:4])).clamp(0, 1)
    grey = BACKGROUND[0] + (BACKGROUND[1] - BACKGROUND[0]) * u[:, 4:5]   # (N, 1)
    base = grey + TINT * (2 * u[:, 5:8] - 1)                             # (N, 3) background mean colour
    angle = 2 * math.pi * u[:, 8]                                        # gradient direction
    slope = GRADIENT * u[:, 9] / size                                    # brightness change per px
    params = torch.stack([cx, cy, radius, angle.cos() * slope, angle.sin() * slope], dim=1).float()   # (N, 5)
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for i in range(0, n, CHUNK):
        sl = slice(i, i + CHUNK)
        noise = NOISE * torch.randn(len(params[sl]), 3, size, size, generator=gen)
        images[sl] = _draw(params[sl], attrs[sl, 1], fill[sl].float(), base[sl].float(), noise)
    return images, attrs


def _draw(params: Tensor, shape: Tensor, fill: Tensor, base: Tensor, noise: Tensor) -> Tensor:
    """One chunk: params (B, 5) = (cx, cy, r, gx, gy), shape (B,), fill/base (B, 3), noise (B, 3, S, S) → uint8."""
    size = noise.shape[-1]
    coords = torch.arange(size, dtype=torch.float32) + 0.5                # pixel centres
    x, y = coords[None, None, :], coords[None, :, None]                  # (1, 1, S), (1, S, 1)
    cx, cy, r, gx, gy = (p[:, None, None] for p in params.unbind(1))    # each (B, 1, 1)
    dx, dy = x - cx, y - cy                                              # (B, S, S)
    sdf = _signed_distance(dx, dy, r, shape)                             # (B, S, S), negative inside
    coverage = (0.5 - sdf).clamp(0, 1)[:, None]                          # (B, 1, S, S): 1-px anti-aliased ramp
    ramp = (gx * (x - size / 2) + gy * (y - size / 2))[:, None]          # (B, 1, S, S) smooth linear gradient
    background = base[:, :, None, None] + ramp + noise                   # (B, 3, S, S)
    image = background * (1 - coverage) + fill[:, :, None, None] * coverage
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def _signed_distance(dx: Tensor, dy: Tensor, r: Tensor, shape: Tensor) -> Tensor:
    """Distance to the outline (negative inside) of a circle, square or upward triangle of "radius" r, at (dx, dy).

    circle: |p| − r.  square (axis-aligned, half side a = r·√π/2, the circle's area): max(|dx|, |dy|) − a.
    triangle (apex (0, −r), base corners (±r, r), so as wide and tall as the circle): the largest signed distance
    to its three edge lines, n·p − c with unit outward normals (±2, −1)/√5 through the apex and (0, 1) at y = r.
    """
    circle = dx.hypot(dy) - r
    square = torch.maximum(dx.abs(), dy.abs()) - r * math.sqrt(math.pi) / 2
    sides = (2 * dx.abs() - (dy + r)) / math.sqrt(5)                     # both slanted edges (mirror symmetric)
    triangle = torch.maximum(sides, dy - r)
    pick = shape[:, None, None]
    return torch.where(pick == 0, circle, torch.where(pick == 1, square, triangle))
