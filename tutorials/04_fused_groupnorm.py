# %% [markdown]
# # 04 — A fused GroupNorm + SiLU kernel for the UNet
#
# Every residual block of the UNet (rd.layers.ResBlock) runs `SiLU(GroupNorm(x)·(1 + scale) + shift)` twice (the
# scale/shift of the time embedding enters the second one). In eager PyTorch under bf16 autocast that is a cast to
# fp32, GroupNorm, a multiply, an add, SiLU and a cast back — each a full pass over the activations, and twice as many
# in the backward.
# rd.ops fuses it into one CUDA op (rd/ops/group_norm_silu.cu) whose reference is four lines of PyTorch
# (rd/ops/reference.py). We
# 1. check the reference against nn.GroupNorm + SiLU;
# 2. see why the statistics need care (E[x²] − E[x]² in fp32 fails for activations with a large mean);
# 3. derive the backward that the kernel implements and check it against autograd in float64;
# 4. count the bytes each version moves, and on a GPU check the kernel and time it.
#
# Run: `python tutorials/04_fused_groupnorm.py` (seconds on a CPU; on a GPU its first call builds the kernel, ≈ 1 min).
# `RD_SMOKE=1` shrinks it for the tests. The full benchmark (training step, sampling) is `python -m rd.bench`.

# %% Setup
import os
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import rd.ops as ops
from rd.timing import timeit
from rd.cli import smoke_mode
from rd.ops.reference import backward_formula, forward_with_stats, group_norm_silu_ref

# %% Config
SMOKE = smoke_mode()
OUT = Path(os.environ.get("RD_OUT", "runs/tutorials-smoke" if SMOKE else "runs/tutorials"))
SHAPE = (3, 48, 7, 7)                      # (N, C, H, W) of the correctness checks: odd sizes on purpose
GROUPS = 16                                # C/G = 3 channels per group
OFFSETS = [0.0, 1.0, 10.0, 100.0, 1000.0]  # activation means for the variance experiment
GROUP_SIZE = 4096                          # elements per group there (C/G·H·W of the CIFAR UNet's top level)
BENCH_SHAPES = [(128, 128, 32, 32), (128, 256, 16, 16), (128, 256, 8, 8), (512, 128, 32, 32)]
ITERS = 3 if SMOKE else 20                 # timed iterations (median)
SEED = 0

# %% 1. The specification: GroupNorm, then the time embedding's scale and shift, then SiLU
OUT.mkdir(parents=True, exist_ok=True)
g = torch.Generator().manual_seed(SEED)
n, c, h, w = SHAPE
x = torch.randn(SHAPE, generator=g, dtype=torch.float64) * 1.5 + 0.3
weight = 1 + 0.3 * torch.randn(c, generator=g, dtype=torch.float64)
bias = 0.2 * torch.randn(c, generator=g, dtype=torch.float64)
scale, shift = (0.3 * torch.randn(n, c, generator=g, dtype=torch.float64) for _ in range(2))
norm = torch.nn.GroupNorm(GROUPS, c).double()
with torch.no_grad():
    norm.weight.copy_(weight), norm.bias.copy_(bias)
composition = F.silu(norm(x) * (1 + scale[:, :, None, None]) + shift[:, :, None, None])
y_ref = group_norm_silu_ref(x, weight, bias, GROUPS, 1e-5, scale, shift)
print(f"reference vs nn.GroupNorm→scale/shift→SiLU: max |error| {(y_ref - composition).abs().max():.1e}")

# %% [markdown]
# ## 2. Statistics that survive a large mean
# The kernel needs μ_g and var_g per (sample, group). One pass of Σx and Σx² gives var = E[x²] − E[x]², but in fp32
# both terms are ≈ μ² and their difference loses log10(μ²/var) digits. The kernel instead keeps Welford's running
# (mean, M2) per thread — each new value updates mean += d/k, M2 += d·(x − mean) with d = x − old mean — and merges
# partial results with Chan's formula: mean = mean_a + d·n_b/n, M2 = M2_a + M2_b + d²·n_a·n_b/n (d = mean_b − mean_a).
# NCHW: one warp per (n, c) plane; NHWC (channels_last): blocks over (n, a slice of H·W), threads over channel
# vectors; then one warp per (n, g) merges the partials of its C/G channels.
# Built with RD_OPS_CLUSTER=1 (group_norm_silu_cluster.cu), on an sm_90+ GPU maps of at most 64 positions (the
# UNet's 8×8 and 4×4 levels) take a single-pass path instead:
# a cluster of blocks holds the whole sample in shared memory, so x is read from DRAM once, and with the data on chip
# the variance is the exact two-pass Σ(x − μ)². On larger maps that path is slower (its load, reduce
# and write phases do not overlap; the multi-pass kernels' many blocks per SM do): `python -m rd.ops.compare`.

# %%
errors = {"fp32 E[x²] − E[x]²": [], "fp32 Welford/Chan (torch.var_mean)": []}
for offset in OFFSETS:
    v = offset + torch.randn(GROUP_SIZE, generator=g, dtype=torch.float64)
    exact = v.var(unbiased=False)
    v32 = v.float()
    naive = (v32 * v32).mean() - v32.mean() ** 2
    errors["fp32 E[x²] − E[x]²"].append(abs(naive.double() / exact - 1).item())
    welford = torch.var_mean(v32, unbiased=False)[0]
    errors["fp32 Welford/Chan (torch.var_mean)"].append(abs(welford.double() / exact - 1).item())
print("relative error of the variance, by mean offset:", ", ".join(f"{o:g}" for o in OFFSETS))
for name, errs in errors.items():
    print(f"  {name:38s}", " ".join(f"{e:.1e}" for e in errs))
fig, ax = plt.subplots(figsize=(6, 4))
for name, errs in errors.items():
    ax.loglog([max(o, 0.1) for o in OFFSETS], [max(e, 1e-9) for e in errs], "o-", label=name)
ax.set(xlabel="mean of the group (0 plotted at 0.1)", ylabel="relative error of var (floor 1e-9)",
       title=f"variance of {GROUP_SIZE} values, std 1")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "04_variance_error.png", dpi=110)

# %% [markdown]
# ## 3. The backward, derived
# Write x̂ = (x − μ_g)·rstd_g, u = x̂·γ + β, h = u·(1 + s) + shift, y = SiLU(h) = h·σ(h). Then
# * dh = dy·SiLU'(h), SiLU'(h) = σ(h)·(1 + h·(1 − σ(h))): recomputed from x, μ, rstd — y is never stored;
# * per (n, c), A = Σ_hw dh and B = Σ_hw dh·x̂ give every parameter gradient: dshift = A, dscale = Σ dh·u = γB + βA,
#   dβ = Σ_n (1 + s)·A, dγ = Σ_n (1 + s)·B;
# * with g = ∂L/∂x̂ = dh·γ·(1 + s), the normalisation's Jacobian gives dx = rstd·(g − mean_g(g) − x̂·mean_g(g·x̂)),
#   and mean_g(g) = Σ_c γ(1 + s)·A / (C/G·H·W), mean_g(g·x̂) = Σ_c γ(1 + s)·B / (C/G·H·W): per-group constants.
# So the backward is a reduction pass (A, B per channel), a tiny per-group pass, and one elementwise pass
# dx = a·dh + Q·(x − μ) + R with a = rstd·γ(1 + s), Q = −rstd²·mean_g(g·x̂), R = −rstd·mean_g(g).
# The scale/shift of the time embedding only change the per-(n, c) coefficients a, b of h = (x − μ)·a + b, so they
# cost nothing in the elementwise passes.

# %%
dy = torch.randn(SHAPE, generator=g, dtype=torch.float64)
leaves = [t.clone().requires_grad_() for t in (x, weight, bias, scale, shift)]
y_leaves = group_norm_silu_ref(leaves[0], leaves[1], leaves[2], GROUPS, 1e-5, *leaves[3:])
autograd = torch.autograd.grad(y_leaves, leaves, dy)
y, mean, rstd = forward_with_stats(x, weight, bias, scale, shift, GROUPS, 1e-5)
formula = backward_formula(dy, x, mean, rstd, weight, bias, scale, shift, GROUPS)
print(f"forward with saved statistics vs reference: max |error| {(y - y_ref).abs().max():.1e}")
for name, a, b in zip(["dx", "dγ", "dβ", "dscale", "dshift"], formula, autograd):
    print(f"backward formula vs autograd, {name:6s}: max |error| {(a - b).abs().max():.1e}")

# %% [markdown]
# ## 4. Bytes moved, and the kernel on a GPU
# The op is memory-bound: a few flops per element against 2-byte loads. Count the bytes each version moves for
# bf16 activations, forward + backward (the per-channel coefficients are tiny and stay in cache).

# %%
EAGER_BYTES = {                           # bytes per element of each eager kernel (reads + writes), bf16 x
    "cast x to fp32 (autocast)": 2 + 4, "GroupNorm: statistics, then normalise": 4 + 4 + 4, "·(1 + scale)": 4 + 4,
    "+ shift": 4 + 4, "SiLU": 4 + 4, "cast to bf16 (next conv)": 4 + 2,
    "bwd: cast dy to fp32": 2 + 4, "bwd: SiLU": 4 + 4 + 4, "bwd: Σ dy (dshift)": 4, "bwd: dy·(1 + scale)": 4 + 4,
    "bwd: dy·GN(x), Σ (dscale)": 4 + 4 + 4 + 4, "bwd: GroupNorm (sums, then dx)": 4 + 4 + 4 + 4 + 4,
    "bwd: cast dx to bf16": 4 + 2}
FUSED_BYTES = {"stats: read x": 2, "apply: read x, write y": 2 + 2, "bwd sums: read x, dy": 2 + 2,
               "bwd dx: read x, dy, write dx": 2 + 2 + 2}
eager_bytes, fused_bytes = sum(EAGER_BYTES.values()), sum(FUSED_BYTES.values())
print(f"bytes per element, fwd+bwd: eager ≈ {eager_bytes} in {len(EAGER_BYTES)} kernels, fused {fused_bytes} in "
      f"{len(FUSED_BYTES)} passes (+ 2 tiny per-group ones) → ≈ {eager_bytes / fused_bytes:.0f}× less traffic "
      f"(a hand count; rd.bench measures)")
if torch.cuda.is_available():
    x = torch.randn(8, 128, 16, 16, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    params = [torch.ones(128, device="cuda"), torch.zeros(128, device="cuda"),
              *(0.3 * torch.randn(2, 8, 128, device="cuda"))]                 # γ, β, scale, shift
    want = group_norm_silu_ref(x.float(), params[0], params[1], 32, 1e-5, *params[2:])
    got = ops.group_norm_silu(x, params[0], params[1], 32, 1e-5, *params[2:], impl="cuda")
    print(f"kernel (bf16, channels_last) vs fp32 reference: max |error| {(got.float() - want).abs().max():.1e} "
          f"(bf16 rounding of outputs ≈ {want.abs().max().item() * 2 ** -9:.1e})")
    print("| shape (bf16, channels_last) | eager µs | fused µs | × |\n|---|---|---|---|")
    for shape in BENCH_SHAPES[:1] if SMOKE else BENCH_SHAPES:
        x = torch.randn(shape, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        w_ = torch.ones(shape[1], device="cuda", requires_grad=True)
        b_ = torch.zeros(shape[1], device="cuda", requires_grad=True)
        s_, sh_ = (torch.zeros(shape[:2], device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
        dy = torch.randn_like(x)
        times = {}
        for impl in ("ref", "cuda"):
            def step():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    out = ops.group_norm_silu(x, w_, b_, 32, 1e-5, s_, sh_, impl=impl).to(torch.bfloat16)
                torch.autograd.grad(out, [x, w_, b_, s_, sh_], dy)
            times[impl] = 1e6 * timeit(step, ITERS, 3)
        print(f"| {shape} | {times['ref']:.0f} | {times['cuda']:.0f} | {times['ref'] / times['cuda']:.2f} |")
else:
    print("no GPU: the kernel is not run here. On one, this cell compares it with the reference and times fwd+bwd "
          f"of eager vs fused for {BENCH_SHAPES} (bf16, channels_last); `python -m rd.bench` measures the whole step.")
print(f"\nfigure in {OUT}/: 04_variance_error.png")
