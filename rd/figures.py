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


def image_table(columns: dict, row_labels: list, path, dpi: int = 100):
    """columns {title: (R, 3, H, W) uint8}, one image per row label; the titles head the columns."""
    fig = Figure(figsize=(1.3 * len(columns), 1.4 * len(row_labels) + 0.6))
    axes = fig.subplots(len(row_labels), len(columns), squeeze=False)
    for j, (title, images) in enumerate(columns.items()):
        axes[0, j].set_title(title, fontsize=7)
        for i, label in enumerate(row_labels):
            axes[i, j].imshow(images[i].permute(1, 2, 0).cpu().numpy())
            axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
            if j == 0:
                axes[i, j].set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
