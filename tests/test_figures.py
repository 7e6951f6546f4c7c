"""rd.figures: the grid's layout, the PNGs it writes, and a clear refusal of images that are not uint8."""
import matplotlib.image
import pytest
import torch

from rd.figures import image_table, save_grid, tile


def test_tile_is_row_major_and_pads_the_last_row():
    x = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 3, 2, 2)    # image i is filled with i
    grid = tile(x, nrow=3)
    assert grid.shape == (4, 6, 3)
    assert grid[::2, ::2, 0].tolist() == [[0, 1, 2], [3, 4, 0]]                   # the sixth cell is blank


def test_save_grid_writes_the_zoomed_png_and_refuses_floats(tmp_path):
    x = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    save_grid(x, tmp_path / "a" / "grid.png", nrow=4, zoom=2)
    png = matplotlib.image.imread(tmp_path / "a" / "grid.png")                     # floats in [0, 1], RGBA
    assert png.shape[:2] == (3 * 8 * 2, 4 * 8 * 2)
    assert (png[0, 0, :3] * 255).round().tolist() == x[0, :, 0, 0].tolist()        # image 0's top-left pixel
    assert (png[47, 31, :3] * 255).round().tolist() == x[9, :, 7, 7].tolist()      # image 9 (row 2, column 1)
    with pytest.raises(ValueError, match=r"uint8 images .*\(see to_uint8\)"):
        save_grid(x.float() / 255, tmp_path / "b.png")


def test_image_table_writes_one_figure(tmp_path):
    cols = {f"model {j}\n{j + 1} calls": torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8) for j in range(3)}
    image_table(cols, ["a red circle", "a blue square"], tmp_path / "t.png")
    assert matplotlib.image.imread(tmp_path / "t.png").shape[1] > 100
