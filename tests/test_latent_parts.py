"""Latent text-to-image parts: captioned shapes, tokeniser and text encoder, KL autoencoder, attribute classifier."""
import json

import pytest
import torch

from rd.autoencoder import (Autoencoder, AutoencoderConfig, decode_latents, encode_latents, kl_divergence,
                            latent_scale)
from rd.classifier import AttributeClassifier, ClassifierConfig, accuracy, train_classifier
from rd.shapes import (ATTRIBUTES, COLOURS, POSITIONS, PROMPTS, SHAPES, caption, captions, make_shapes,
                       parse_caption)
from rd.text import PAD, UNK, TextEncoder, TextEncoderConfig, Tokenizer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one thread avoids OpenMP barriers, which on a shared 2-core machine made a training
    step 100× slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def to_float(images_uint8):
    return images_uint8.float() / 127.5 - 1


#----------------------------------------------------------------------------
# rd.shapes

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


#----------------------------------------------------------------------------
# rd.text

def shapes_tokenizer():
    return Tokenizer.from_texts(captions(make_shapes(200, seed=0)[1]))


def test_tokenizer_round_trip_unknown_empty_truncation_case():
    tok = shapes_tokenizer()
    assert tok.vocab[:2] == ["<pad>", "<unk>"] and tok.vocab[2:] == sorted(tok.vocab[2:]) and len(tok.vocab) == 17
    texts = ["a red circle on the left", "a yellow triangle at the bottom"]
    ids = tok.encode(texts, 12)
    assert ids.shape == (2, 12) and ids.dtype == torch.long and tok.decode(ids) == texts
    assert (ids[:, 6:] == PAD).all() and (ids[:, :6] != PAD).all()
    assert tok.encode(["a PURPLE circle"], 4)[0].tolist() == [tok.index["a"], UNK, tok.index["circle"], PAD]
    assert (tok.encode([""], 12) == PAD).all(), "the null prompt is all PAD"
    assert tok.encode(["a red circle on the left"], 3)[0].tolist() == tok.encode(["a red circle"], 3)[0].tolist()
    assert torch.equal(tok.encode(["A Red CIRCLE, on the left!"], 8), tok.encode(["a red circle on the left"], 8))
    assert Tokenizer.words("it's a 3-sided shape") == ["it's", "a", "3", "sided", "shape"]
    rebuilt = Tokenizer(json.loads(json.dumps(tok.vocab)))
    assert torch.equal(rebuilt.encode(texts, 12), ids)
    with pytest.raises(ValueError, match="starts with"):
        Tokenizer(["red", "<pad>", "<unk>"])


def encoder(dtype=torch.float32, **kw):
    torch.manual_seed(0)
    return TextEncoder(TextEncoderConfig(vocab_size=17, **kw)).to(dtype)


def test_text_encoder_shapes_size_and_null_prompt():
    tok, enc = shapes_tokenizer(), encoder()
    assert 0.3e6 < sum(p.numel() for p in TextEncoder(TextEncoderConfig()).parameters()) < 0.5e6
    ids = tok.encode(["a red circle on the left", ""], 12)
    out = enc(ids)
    assert out.shape == (2, 13, 128), "a start token, then one row per position"
    assert torch.isfinite(out).all(), "the all-PAD null prompt must not give NaN (the start token is always a key)"
    assert not torch.allclose(out[0], out[1])
    with pytest.raises(ValueError, match="at most 12"):
        enc(tok.encode(["a red circle"], 13))


def test_padding_does_not_change_the_prompt_features():
    """PAD keys are masked: the start + word rows are the same whatever the padding length (float64 to be exact).
    If this fails, PAD tokens are being attended to."""
    tok, enc = shapes_tokenizer(), encoder(torch.float64)
    texts = ["a red circle on the left", "a blue square"]
    short, long = enc(tok.encode(texts, 6)), enc(tok.encode(texts, 12))
    torch.testing.assert_close(short[0, :7], long[0, :7], rtol=0, atol=1e-12)
    torch.testing.assert_close(short[1, :4], long[1, :4], rtol=0, atol=1e-12)
    other = enc(tok.encode(["a red circle on the right", "a blue circle"], 12))
    assert not torch.allclose(other[0, 1], long[0, 1]), "attention is bidirectional: 'a' sees the last word"


def test_text_encoder_gradients_reach_every_parameter_and_are_finite():
    tok, enc = shapes_tokenizer(), encoder()
    ids = tok.encode(["a red circle on the left at the top of a green square", ""], 12)
    enc(ids).square().mean().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == [], missing
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters())


#----------------------------------------------------------------------------
# rd.autoencoder

def tiny_ae():
    torch.manual_seed(0)
    return Autoencoder(AutoencoderConfig.preset("tiny"))


def test_autoencoder_shapes_and_presets():
    ae, x = tiny_ae(), torch.randn(2, 3, 32, 32)
    mean, logvar = ae.encode(x)
    assert mean.shape == logvar.shape == (2, 4, 8, 8)
    assert ae.decode(mean).shape == (2, 3, 32, 32)
    presets = [Autoencoder(AutoencoderConfig.preset(n)) for n in ("tiny", "small", "base")]
    sizes = [sum(p.numel() for p in net.parameters()) for net in presets]
    assert sizes == sorted(sizes)
    with pytest.raises(ValueError, match="allowed: tiny, small, base"):
        AutoencoderConfig.preset("huge")


def test_kl_matches_the_closed_form_and_the_loss_is_its_documented_sum():
    mean = torch.tensor([0.0, 1.0, -2.0, 0.5], dtype=torch.float64)
    logvar = torch.tensor([0.0, 0.0, 1.0, -3.0], dtype=torch.float64)
    reference = torch.distributions.kl_divergence(torch.distributions.Normal(mean, (0.5 * logvar).exp()),
                                                  torch.distributions.Normal(0.0, 1.0))
    torch.testing.assert_close(kl_divergence(mean, logvar), reference)
    assert kl_divergence(torch.zeros(3), torch.zeros(3)).abs().max() == 0, "N(0, 1) is at KL 0 from itself"
    ae, x = tiny_ae(), to_float(make_shapes(4, seed=0)[0])
    total, stats = ae.loss(x, torch.Generator().manual_seed(0))
    kl = kl_divergence(*ae.encode(x)).mean().item()
    assert float(stats["kl"]) == pytest.approx(kl, rel=1e-5)
    assert total.item() == pytest.approx(float(stats["l1"] + stats["mse"]) + ae.cfg.kl_weight * kl, rel=1e-6)
    assert not stats["loss"].requires_grad


def test_reparameterisation_noise_comes_from_the_generator():
    ae, x = tiny_ae(), torch.randn(2, 3, 32, 32)
    a, _ = ae.loss(x, torch.Generator().manual_seed(1))
    b, _ = ae.loss(x, torch.Generator().manual_seed(1))
    c, _ = ae.loss(x, torch.Generator().manual_seed(2))
    assert a == b and a != c


def test_tiny_autoencoder_learns_shapes():
    x = to_float(make_shapes(256, seed=0)[0])
    ae, gen = tiny_ae(), torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(ae.parameters(), lr=2e-3)
    losses = []
    for _ in range(60):
        loss, stats = ae.loss(x[torch.randint(len(x), (16,), generator=gen)], gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(stats["loss"]))
    early, late = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert late < 0.5 * early, f"loss {early:.3f} → {late:.3f}: the autoencoder did not learn"


def test_latent_scale_gives_unit_std_and_latents_round_trip_in_shape():
    ae, x = tiny_ae(), to_float(make_shapes(100, seed=0)[0])
    scale = latent_scale(ae, x, batch=32)
    assert scale == pytest.approx(1 / ae.encode(x)[0].std().item(), rel=1e-4)
    assert scale == pytest.approx(latent_scale(ae, x, batch=7), rel=1e-6), "batching must not change the result"
    z = encode_latents(ae, x, scale, batch=32)
    assert z.shape == (100, 4, 8, 8) and z.std().item() == pytest.approx(1.0, abs=1e-4)
    # float32 convolutions differ slightly with the batch size, hence the tolerances
    torch.testing.assert_close(z, ae.encode(x)[0] * scale, rtol=1e-4, atol=1e-5)
    x_rec = decode_latents(ae, z, scale, batch=32)
    assert x_rec.shape == (100, 3, 32, 32)
    torch.testing.assert_close(x_rec, ae.decode(z / scale), rtol=1e-4, atol=1e-5)


#----------------------------------------------------------------------------
# rd.classifier

@pytest.fixture(scope="module")
def shapes_split():
    return make_shapes(6000, seed=1), make_shapes(1000, seed=2)


def test_classifier_output_heads():
    clf = AttributeClassifier(ClassifierConfig(heads=(4, 3, 4), channels=8))
    assert [o.shape for o in clf(torch.randn(5, 3, 32, 32))] == [(5, 4), (5, 3), (5, 4)]


def test_classifier_learns_the_shapes_on_held_out_images(shapes_split):
    """200 steps of batch 64 at width 8, a few seconds on one CPU thread; ≈ 96–98 % when measured. If colour and
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
