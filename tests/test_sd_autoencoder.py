"""rd.sd.autoencoder: shapes and presets, the KL term's closed form, learning, the latent scale."""
import pytest
import torch

from rd.sd.autoencoder import (Autoencoder, AutoencoderConfig, decode_latents, encode_latents, kl_divergence,
                               latent_scale)
from rd.sd.shapes import make_shapes


pytestmark = pytest.mark.usefixtures("one_thread")     # tests/conftest.py


def to_float(images_uint8):
    return images_uint8.float() / 127.5 - 1


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
