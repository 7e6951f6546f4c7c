"""Figures of images without pyplot (no display, no global state): a sample grid as one PNG, and a labelled table
of images — prompts × (model, calls) in train_sd.py.

    save_grid(to_uint8(x), "runs/sd/teacher/grid.png")            # (N, 3, H, W) uint8 → 8 per row
"""
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.image import imsave
from torch import Tensor

from .io import atomic_write


def tile(x: Tensor, nrow: int = 8) -> np.ndarray:
    """(N, C, H, W) images → one (rows·H, nrow·W, C) array, row-major; the last row is padded with zeros."""
    n, c, h, w = x.shape
    rows = -(-n // nrow)
    x = torch.cat([x.detach().cpu(), torch.zeros(rows * nrow - n, c, h, w, dtype=x.dtype)])
    return x.view(rows, nrow, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, nrow * w, c).numpy()


def save_grid(x: Tensor, path, nrow: int = 8, zoom: int = 2):
    """uint8 images (N, 3, H, W) as one PNG grid, each pixel drawn zoom × zoom (32-px samples stay visible)."""
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"save_grid takes uint8 images (N, 3, H, W); got {x.dtype} {tuple(x.shape)} (see to_uint8)")
    grid = tile(x, nrow).repeat(zoom, 0).repeat(zoom, 1)
    atomic_write(path, lambda f: imsave(f, grid, format="png"))


def image_table(columns: dict, row_labels: list, path, dpi: int = 100, cell: float = 1.2, gap: int = 2):
    """columns {title: (R, 3, H, W) uint8}, one image per row label; the titles head the columns, the labels the rows.

    The cells are pasted into one array drawn once (`cell` inches a side, `gap` white pixels between): one axes,
    however many models and prompts."""
    cols = [images[:len(row_labels)].detach().cpu() for images in columns.values()]
    rows, (_, h, w) = len(row_labels), cols[0].shape[1:]
    canvas = np.full((rows * (h + gap) - gap, len(cols) * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for j, images in enumerate(cols):
        for i in range(rows):
            canvas[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = images[i].permute(1, 2, 0).numpy()
    left, top, bottom = 1.6, 0.5, 0.1                                                     # margins, inches
    width, height = left + cell * len(cols) + 0.1, top + cell * rows + bottom
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((left / width, bottom / height, cell * len(cols) / width, cell * rows / height))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    for j, title in enumerate(columns):
        ax.text(j * (w + gap) + w / 2, -h / 16, title, ha="center", va="bottom", fontsize=7)
    for i, label in enumerate(row_labels):
        ax.text(-w / 8, i * (h + gap) + h / 2, label, ha="right", va="center", fontsize=6)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
