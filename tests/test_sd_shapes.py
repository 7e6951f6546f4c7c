"""rd.sd.shapes: captioned shapes are deterministic, balanced, and show what their captions say."""
import pytest
import torch

from rd.sd.shapes import ATTRIBUTES, COLOURS, POSITIONS, PROMPTS, SHAPES, caption, captions, make_shapes, parse_caption


pytestmark = pytest.mark.usefixtures("one_thread")     # tests/conftest.py



def test_shapes_are_deterministic_per_seed_and_differ_across_seeds():
    x1, a1 = make_shapes(64, seed=3)
    x2, a2 = make_shapes(64, seed=3)
    x3, a3 = make_shapes(64, seed=4)
    assert torch.equal(x1, x2) and torch.equal(a1, a2)
    assert not torch.equal(a1, a3) and (x1 != x3).float().mean() > 0.5


def test_shapes_types_ranges_and_sizes():
    x, a = make_shapes(50, seed=0)
    assert x.shape == (50, 3, 32, 32) and x.dtype == torch.uint8
    assert a.shape == (50, 3) and a.dtype == torch.int64
    for column, values in enumerate(ATTRIBUTES.values()):
        assert 0 <= a[:, column].min() and a[:, column].max() < len(values)
    assert x.float().std() > 20, "images should not be flat"
    assert make_shapes(4, size=64)[0].shape == (4, 3, 64, 64)
    assert make_shapes(0)[0].shape == (0, 3, 32, 32)


def test_captions_read_as_written():
    assert caption(0, 0, 0) == "a red circle on the left"
    assert caption(2, 1, 2) == "a blue square at the top"
    assert caption(3, 2, 3) == "a yellow triangle at the bottom"
    assert caption(1, 0, 1) == "a green circle on the right"
    assert captions(torch.tensor([[0, 0, 0], [3, 2, 3]])) == ["a red circle on the left",
                                                              "a yellow triangle at the bottom"]
    for c in range(len(COLOURS)):
        for s in range(len(SHAPES)):
            for p in range(len(POSITIONS)):
                assert parse_caption(caption(c, s, p)) == (c, s, p)
    with pytest.raises(ValueError, match="not a shapes caption"):
        parse_caption("a purple circle on the left")


def test_prompts_cover_every_attribute_value():
    parsed = torch.tensor([parse_caption(p) for p in PROMPTS])             # (P, 3)
    for column, values in enumerate(ATTRIBUTES.values()):
        assert set(parsed[:, column].tolist()) == set(range(len(values)))


def test_attributes_are_balanced():
    _, a = make_shapes(4000, seed=0)
    for column, values in enumerate(ATTRIBUTES.values()):
        counts = torch.bincount(a[:, column], minlength=len(values)).float()
        expected = 4000 / len(values)
        assert ((counts - expected).abs() < 0.15 * expected).all(), f"{list(ATTRIBUTES)[column]}: {counts.tolist()}"


def test_the_shape_is_where_the_caption_says_and_has_its_colour():
    """The pixels far from the image's median colour (the background's: a shape covers < 25 % of the image) have
    their centroid in the named half, and their mean colour is nearest to the named colour."""
    x, a = make_shapes(400, seed=5)
    x = x.float() / 255                                                    # (N, 3, S, S) in [0, 1]
    median = x.flatten(2).median(dim=2).values                              # (N, 3)
    dist = (x - median[:, :, None, None]).norm(dim=1)                       # (N, S, S)
    mask = (dist > 0.5 * dist.amax(dim=(1, 2), keepdim=True)).float()       # (N, S, S) shape pixels
    coords = torch.arange(32.0) + 0.5
    area = mask.sum(dim=(1, 2))
    cx = (mask * coords[None, None, :]).sum(dim=(1, 2)) / area
    cy = (mask * coords[:, None]).sum(dim=(1, 2)) / area
    pos = a[:, 2]
    assert (cx[pos == 0] < 16).all() and (cx[pos == 1] > 16).all(), "left/right: x of the shape's centroid"
    assert (cy[pos == 2] < 16).all() and (cy[pos == 3] > 16).all(), "top/bottom: y grows downwards"
    fill = (x * mask[:, None]).sum(dim=(2, 3)) / area[:, None]              # (N, 3) mean colour of the shape
    palette = torch.tensor(list(COLOURS.values())) / 255                    # (4, 3)
    assert torch.equal(torch.cdist(fill, palette).argmin(dim=1), a[:, 0])
    assert (area > 40).all() and (area < 0.25 * 32 * 32).all()
