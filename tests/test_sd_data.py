"""rd.sd.data: the latent pipeline's captioned training images, held-out images and evaluation prompts."""
import torch

from rd.data import CIFAR_CLASSES
from rd.sd.data import TEMPLATES, eval_prompts, held_out_images, train_images
from rd.sd.shapes import ATTRIBUTES, captions, make_shapes


def test_training_shapes_come_with_their_captions(tmp_path):
    images, attrs, caps = train_images("shapes", 12, seed=3, cifar="", cache=tmp_path)
    want_images, want_attrs = make_shapes(12, seed=3)
    assert torch.equal(images, want_images) and torch.equal(attrs, want_attrs) and caps == captions(want_attrs)


def test_cifar_captions_take_the_templates_in_turn(tmp_path):
    folder = tmp_path / "cifar"                                   # a tiny image folder: 3 classes × 3 images
    from PIL import Image
    for c in range(3):
        (folder / "train" / CIFAR_CLASSES[c]).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (32, 32), (40 * c, 10 * i, 0)).save(folder / "train" / CIFAR_CLASSES[c] / f"{i}.png")
    images, attrs, caps = train_images("cifar10", 9, seed=0, cifar=str(folder), cache=tmp_path / "cache")
    assert images.shape == (9, 3, 32, 32) and attrs.shape == (9, 1)
    assert attrs[:, 0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert caps[:4] == ["a photo of a airplane", "a picture of a airplane", "an image of a airplane", "a small automobile"]
    assert caps[5] == "a photo of a automobile" and len(TEMPLATES) == 5


def test_cifar_prompts_are_balanced_and_shape_prompts_are_seeded():
    attrs, caps = eval_prompts("cifar10", 20, seed=0)
    assert attrs[:, 0].tolist() == list(range(10)) * 2 and caps[3] == f"a photo of a {CIFAR_CLASSES[3]}"
    attrs, caps = eval_prompts("shapes", 50, seed=0)
    assert attrs.shape == (50, len(ATTRIBUTES)) and caps == captions(attrs)
    assert torch.equal(attrs, eval_prompts("shapes", 50, seed=0)[0])
    assert not torch.equal(attrs, eval_prompts("shapes", 50, seed=1)[0])


def test_held_out_shapes_are_not_the_training_images(tmp_path):
    images, attrs = held_out_images("shapes", 16, seed=0, cifar="", cache=tmp_path)
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.uint8 and attrs.shape == (16, len(ATTRIBUTES))
    assert not torch.equal(images, make_shapes(16, seed=0)[0])
    assert torch.equal(images, make_shapes(16, seed=1000)[0])            # new shapes: the seed the training never takes
