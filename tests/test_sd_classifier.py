"""rd.sd.classifier: the prompt-fidelity classifier learns the attributes and is at chance on noise."""
import pytest
import torch

from rd.sd.classifier import AttributeClassifier, ClassifierConfig, accuracy, train_classifier
from rd.sd.shapes import make_shapes


pytestmark = pytest.mark.usefixtures("one_thread")     # tests/conftest.py



@pytest.fixture(scope="module")
def shapes_split():
    return make_shapes(6000, seed=1), make_shapes(1000, seed=2)


def test_classifier_output_heads():
    clf = AttributeClassifier(ClassifierConfig(heads=(4, 3, 4), channels=8))
    assert [o.shape for o in clf(torch.randn(5, 3, 32, 32))] == [(5, 4), (5, 3), (5, 4)]


def test_classifier_learns_the_shapes_on_held_out_images(shapes_split):
    """200 steps of batch 64 at width 8, a few seconds on one CPU thread. If colour and
    position are right but shape is not, the shapes are too alike at 32 px (or the net too small)."""
    (x, a), (x_test, a_test) = shapes_split
    clf = train_classifier(x, a, ClassifierConfig(channels=8), steps=200, batch=64, seed=0)
    acc, per = accuracy(clf, x_test, a_test, per_attribute=True)
    assert acc >= 0.9, f"all-attribute accuracy {acc:.3f}; per attribute (colour, shape, position) {per}"
    assert accuracy(clf, x_test, a_test) == acc


def test_classifier_is_at_chance_on_shuffled_labels(shapes_split):
    """Labels shuffled across images carry no information: held-out accuracy must stay near chance (1/48 for
    all three; 1/4, 1/3, 1/4 each). If it does not, labels leak into the images or the accuracy is wrong."""
    (x, a), (x_test, a_test) = shapes_split
    shuffled = a[torch.randperm(len(a), generator=torch.Generator().manual_seed(0))]
    clf = train_classifier(x, shuffled, ClassifierConfig(channels=8), steps=100, batch=64, seed=0)
    acc, per = accuracy(clf, x_test, a_test, per_attribute=True)
    assert acc < 0.08 and all(p < 0.45 for p in per), (acc, per)


def test_classifier_takes_plain_labels_and_refuses_mismatched_heads():
    x, a = make_shapes(64, seed=0)
    clf = train_classifier(x, a[:, 1], ClassifierConfig(heads=(3,), channels=8), steps=2, batch=8, flip=True)
    assert 0 <= accuracy(clf, x, a[:, 1]) <= 1
    with pytest.raises(ValueError, match="for 3 heads"):
        train_classifier(x, a[:, :2], ClassifierConfig(channels=8), steps=1)
