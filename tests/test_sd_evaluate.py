"""rd.sd.evaluate's helpers: the evaluation prompts, the held-out images, no FID without a network. (The whole
evaluation runs in tests/test_train_sd.py.)"""
import torch

from rd.data import CIFAR_CLASSES
from rd.sd.evaluate import eval_prompts, fid_reference, held_out_images
from rd.sd.shapes import ATTRIBUTES, captions, make_shapes


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


def test_no_inception_file_no_fid(tmp_path):
    assert fid_reference("", "shapes", torch.zeros(4, 3, 32, 32, dtype=torch.uint8), tmp_path, "cpu") == (None, None)
    assert not any(tmp_path.iterdir())
