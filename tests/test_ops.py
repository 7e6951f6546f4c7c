"""rd.ops: the reference is GroupNorm→scale/shift→SiLU, the backward derivation matches autograd, the custom op is
registered correctly (opcheck, torch.compile), the dispatcher falls back once; on a GPU the kernel matches the
reference in every dtype, layout and odd size."""
import fnmatch
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import rd.ops as ops
from rd.ops import fused
from rd.ops.reference import backward_formula, forward_with_stats, group_norm_silu_ref
from rd.layers import group_norm_silu as block_group_norm_silu
from rd.unet import UNet, UNetConfig

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the fused kernel)")


def inputs(n, c, h, w, groups, dtype=torch.float64, device="cpu", channels_last=False, affine=True, offset=0.0,
           seed=0):
    """x (N, C, H, W) in `dtype`; weight, bias (C,), scale, shift (N, C) in float32/float64 (None if not affine)."""
    g = torch.Generator().manual_seed(seed)
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    x = (offset + 1.5 * torch.randn(n, c, h, w, generator=g, dtype=torch.float64) + 0.3).to(device, dtype)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    weight = (1 + 0.3 * torch.randn(c, generator=g, dtype=torch.float64)).to(device, pdt)
    bias = (0.2 * torch.randn(c, generator=g, dtype=torch.float64)).to(device, pdt)
    scale = (0.3 * torch.randn(n, c, generator=g, dtype=torch.float64)).to(device, pdt) if affine else None
    shift = (0.3 * torch.randn(n, c, generator=g, dtype=torch.float64)).to(device, pdt) if affine else None
    return x, weight, bias, scale, shift


def leaves(*tensors):
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


def ref_with_grads(x, weight, bias, scale, shift, groups, dy):
    """Float64 reference output and gradients (x, weight, bias, scale, shift) on the same values: the truth."""
    args = leaves(*(None if t is None else t.double() for t in (x, weight, bias, scale, shift)))
    y = group_norm_silu_ref(args[0], args[1], args[2], groups, 1e-5, args[3], args[4])
    grads = torch.autograd.grad(y, [a for a in args if a is not None], dy.double())
    return y.detach(), grads

# ---- CPU: the specification and the derivation ------------------------------------------------------------------


@pytest.mark.parametrize("affine", [True, False])
def test_reference_gradcheck(affine):
    args = [a for a in leaves(*inputs(2, 6, 3, 2, 3, affine=affine)) if a is not None]
    assert torch.autograd.gradcheck(lambda x, w, b, *ss: group_norm_silu_ref(x, w, b, 3, 1e-5, *ss), args)


def test_reference_is_groupnorm_then_scale_shift_then_silu():
    x, weight, bias, scale, shift = inputs(3, 8, 5, 4, 4)
    norm = torch.nn.GroupNorm(4, 8).double()
    with torch.no_grad():
        norm.weight.copy_(weight), norm.bias.copy_(bias)
    h = norm(x) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    torch.testing.assert_close(group_norm_silu_ref(x, weight, bias, 4, 1e-5, scale, shift), F.silu(h))
    torch.testing.assert_close(group_norm_silu_ref(x, weight, bias, 4), F.silu(norm(x)))
    # rd.layers' call (the residual block's) on CPU is that composition, bit for bit, also under bf16 autocast
    xf, s, b = x.float(), scale.float(), shift.float()
    norm = norm.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.silu(norm(xf) * (1 + s.bfloat16()[:, :, None, None]) + b.bfloat16()[:, :, None, None])
        assert torch.equal(block_group_norm_silu(xf, norm, s.bfloat16(), b.bfloat16()), expected)


@pytest.mark.a4
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("affine", [True, False])
def test_backward_formula_is_the_gradient(channels_last, affine):
    """The derivation the kernel implements (per-channel sums, then dx per group) equals autograd, in float64."""
    x, weight, bias, scale, shift = inputs(3, 12, 5, 3, 4, channels_last=channels_last, affine=affine)
    dy = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y, mean, rstd = forward_with_stats(x, weight, bias, scale, shift, 4, 1e-5)
    y_ref, grads_ref = ref_with_grads(x, weight, bias, scale, shift, 4, dy)
    torch.testing.assert_close(y, y_ref)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    var, mu = torch.var_mean(x.reshape(3, 4, -1), dim=2, unbiased=False)
    torch.testing.assert_close(mean, mu)
    torch.testing.assert_close(rstd, (var + 1e-5).rsqrt())
    grads = backward_formula(dy, x, mean, rstd, weight, bias, scale, shift, 4)
    hints = {"dx": "dx = rstd·(g − mean(g) − x̂·mean(g·x̂)) with g = dh·γ·(1 + s), means over the whole group "
                   "(C/G channels × H·W), and dx in x's memory format",
             "dweight": "dγ = Σ_n (1 + s)·B, B = Σ_hw dh·x̂", "dbias": "dβ = Σ_n (1 + s)·A, A = Σ_hw dh",
             "dscale": "dscale = γ·B + β·A (β is easy to forget)",
             "dshift": "dshift = A = Σ_hw dh with dh = dy·σ(h)·(1 + h·(1 − σ(h)))"}
    for name, got, want in zip(["dx", "dweight", "dbias", "dscale", "dshift"], grads, grads_ref):
        torch.testing.assert_close(got, want, msg=lambda m: f"A4.1: {name} differs from autograd: {hints[name]}.\n{m}")


@pytest.mark.a4
def test_custom_op_registration_cpu():
    """opcheck (schema, fake shapes/strides, autograd, AOT) of both ops, run through their CPU formulas."""
    for channels_last, affine in [(False, True), (True, False)]:
        x, weight, bias, scale, shift = inputs(2, 8, 3, 5, 4, dtype=torch.float32, channels_last=channels_last,
                                               affine=affine)
        torch.library.opcheck(torch.ops.rd.group_norm_silu.default, (*leaves(x, weight, bias, scale, shift), 4, 1e-5))
        y, mean, rstd = torch.ops.rd.group_norm_silu(x, weight, bias, scale, shift, 4, 1e-5)
        torch.library.opcheck(torch.ops.rd.group_norm_silu_backward.default,
                              (torch.randn_like(y), x, mean, rstd, weight, bias, scale, shift, 4))


@pytest.mark.a4
def test_custom_op_compiles_fullgraph_cpu():
    x, weight, bias, scale, shift = leaves(*inputs(2, 8, 3, 5, 4, dtype=torch.float32, channels_last=True))

    def loss(x, weight, bias, scale, shift):
        return torch.ops.rd.group_norm_silu(x, weight, bias, scale, shift, 4, 1e-5)[0].square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(x, weight, bias, scale, shift), (x, weight, bias, scale, shift))
    want = torch.autograd.grad(loss(x, weight, bias, scale, shift), (x, weight, bias, scale, shift))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)

# ---- CPU: the dispatcher ------------------------------------------------------------------------------------------


def test_dispatch_on_cpu(monkeypatch):
    def no_build():
        raise AssertionError("impl='auto' on a CPU tensor must not try to build the CUDA extension")
    monkeypatch.setattr(fused, "_build", no_build)
    monkeypatch.setitem(fused._STATE, "ext", None)
    monkeypatch.setitem(fused._STATE, "error", None)
    x, weight, bias, scale, shift = inputs(2, 8, 3, 3, 4, dtype=torch.float32)
    want = group_norm_silu_ref(x, weight, bias, 4, 1e-5, scale, shift)
    assert torch.equal(ops.group_norm_silu(x, weight, bias, 4, 1e-5, scale, shift, impl="auto"), want)
    assert torch.equal(ops.group_norm_silu(x, weight, bias, 4, 1e-5, scale, shift, impl="ref"), want)
    with pytest.raises(RuntimeError, match="impl='cuda' needs a 4-D .* CUDA tensor"):
        ops.group_norm_silu(x, weight, bias, 4, impl="cuda")
    with pytest.raises(ValueError, match="allowed: auto, cuda, ref"):
        ops.group_norm_silu(x, weight, bias, 4, impl="triton")
    with pytest.raises(ValueError, match="allowed: auto, cuda, ref"):
        ops.set_default_impl("fast")
    previous = ops.set_default_impl("ref")
    try:
        assert ops.get_default_impl() == "ref" and previous == "auto"
    finally:
        ops.set_default_impl(previous)


def test_failed_build_warns_once_and_falls_back(monkeypatch):
    """Simulate a failed nvcc: one warning with the reason, the reference from then on, impl='cuda' explains why."""
    calls = []

    def broken_build():
        calls.append(1)
        raise RuntimeError("nvcc: command not found")
    monkeypatch.setattr(fused, "_build", broken_build)
    monkeypatch.setitem(fused._STATE, "ext", None)
    monkeypatch.setitem(fused._STATE, "error", None)
    monkeypatch.setattr(ops, "kernel_supports", lambda x: True)     # pretend this CPU tensor could take the kernel
    x, weight, bias, scale, shift = inputs(2, 8, 3, 3, 4, dtype=torch.float32)
    want = group_norm_silu_ref(x, weight, bias, 4, 1e-5, scale, shift)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert torch.equal(ops.group_norm_silu(x, weight, bias, 4, 1e-5, scale, shift, impl="auto"), want)
        assert fused.load_extension() is None
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and len(calls) == 1, messages
    assert "nvcc: command not found" in messages[0] and "falling back to the PyTorch reference" in messages[0]
    assert ops.build_failed()
    with pytest.raises(RuntimeError, match="unavailable: RuntimeError: nvcc: command not found"):
        ops.group_norm_silu(x, weight, bias, 4, impl="cuda")

# ---- GPU: the kernel against the reference ----------------------------------------------------------------------

TOL = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}
SHAPES = [(3, 48, 7, 7, 16),       # odd H·W (NCHW: scalar loads), C/G = 3
          (4, 64, 8, 8, 32),       # vector loads in both layouts
          (2, 32, 16, 16, 1),      # one group: stats over the whole sample
          (8, 128, 32, 32, 32),    # the CIFAR top level: many channels_last splits
          (2, 12, 5, 3, 4),        # C = 12: channels_last falls back to scalar loads for 16-bit dtypes
          (1, 16, 5, 5, 16),       # one channel per group, N = 1
          (4, 64, 1, 1, 8),        # H·W = 1 (NCHW and channels_last at once)
          (2, 4, 8, 8, 2),         # C = 4 < the vector width
          (2, 4096, 3, 3, 64)]     # C/V > 256 channel vectors: the tiles loop over channel chunks


def check_against_reference(x, weight, bias, scale, shift, groups, impl="cuda", tol=None):
    tol = TOL[x.dtype] if tol is None else tol
    dy = torch.randn(x.shape, device=x.device, generator=torch.Generator(x.device).manual_seed(2)).to(x.dtype)
    y_ref, grads_ref = ref_with_grads(x.detach(), weight, bias, scale, shift, groups, dy)
    args = leaves(x, weight, bias, scale, shift)
    if x.requires_grad:                  # a prepared leaf (e.g. a misaligned view) is used as it is, not cloned
        args[0] = x
    y = ops.group_norm_silu(args[0], args[1], args[2], groups, 1e-5, args[3], args[4], impl=impl)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert y.stride() == torch.empty_like(x, memory_format=fused.memory_format(x)).stride(), "output layout"
    grads = torch.autograd.grad(y, [a for a in args if a is not None], dy)
    names = ["y", "dx", "dweight", "dbias", "dscale", "dshift"]
    dtypes = [x.dtype] + [a.dtype for a in args if a is not None]      # each gradient in its input's dtype
    for name, got, want, dtype in zip(names, (y, *grads), (y_ref, *grads_ref), dtypes):
        assert got.dtype == dtype, f"{name} dtype {got.dtype} != {dtype}"
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * want.abs().max().item(),
                                   msg=lambda m: f"{name} ({x.dtype}, {tuple(x.shape)}, G={groups}): {m}")


@cuda
def test_cuda_extension_builds():
    assert ops.load_extension(strict=True) is not None    # if this fails, its message holds the compiler output


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("affine", [True, False], ids=["scale_shift", "plain"])
def test_cuda_matches_reference(dtype, channels_last, shape, affine):
    *size, groups = shape
    check_against_reference(*inputs(*size, groups, dtype, "cuda", channels_last, affine), groups)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_cuda_large_mean_is_stable(dtype, channels_last):
    """x = 100 + noise: E[x²] − E[x]² in float32 would lose ~3 digits of the variance; Welford/Chan does not."""
    x, weight, bias, scale, shift = inputs(4, 64, 32, 32, 32, dtype, "cuda", channels_last, offset=100.0)
    _, mean, rstd = torch.ops.rd.group_norm_silu(x, weight, bias, scale, shift, 32, 1e-5)
    var, mu = torch.var_mean(x.double().reshape(4, 32, -1), dim=2, unbiased=False)
    torch.testing.assert_close(mean.double(), mu, rtol=1e-6, atol=0)
    torch.testing.assert_close(rstd.double(), (var + 1e-5).rsqrt(), rtol=2e-5, atol=0)
    check_against_reference(x, weight, bias, scale, shift, 32)


@cuda
def test_cuda_odd_memory():
    """A misaligned x (scalar loads), a non-contiguous x (copied to NCHW), bf16 scale/shift (cast, grads cast back)."""
    x, weight, bias, scale, shift = inputs(2, 32, 8, 8, 8, torch.bfloat16, "cuda")
    storage = torch.empty(x.numel() + 1, device="cuda", dtype=x.dtype)
    misaligned = storage[1:].view(x.shape).copy_(x).requires_grad_()          # 2 bytes past a 16-byte boundary
    assert misaligned.data_ptr() % 16 == 2 and misaligned.is_contiguous()
    check_against_reference(misaligned, weight, bias, scale, shift, 8)
    check_against_reference(x.transpose(2, 3), weight, bias, scale, shift, 8)
    check_against_reference(x, weight, bias, scale.bfloat16(), shift.bfloat16(), 8)


@pytest.mark.a4                      # it compares the kernel with backward_formula
@cuda
def test_cuda_backward_with_dy_in_another_layout_and_deterministic():
    x, weight, bias, scale, shift = inputs(4, 64, 8, 8, 32, torch.bfloat16, "cuda", channels_last=True)
    y, mean, rstd = torch.ops.rd.group_norm_silu(x, weight, bias, scale, shift, 32, 1e-5)
    y2, mean2, rstd2 = torch.ops.rd.group_norm_silu(x, weight, bias, scale, shift, 32, 1e-5)
    assert torch.equal(y, y2) and torch.equal(mean, mean2) and torch.equal(rstd, rstd2), "no atomics: repeatable"
    dy = torch.randn(x.shape, device="cuda", dtype=x.dtype)                     # NCHW dy for an NHWC x
    got = torch.ops.rd.group_norm_silu_backward(dy, x, mean, rstd, weight, bias, scale, shift, 32)
    want = backward_formula(dy, x, mean, rstd, weight, bias, scale, shift, 32)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w.double(), rtol=2e-2, atol=2e-2 * w.abs().max().item())
    assert torch.equal(got[0], torch.ops.rd.group_norm_silu_backward(dy, x, mean, rstd, weight, bias, scale, shift,
                                                                     32)[0])


@cuda
def test_cuda_auto_uses_reference_for_float64():
    x, weight, bias, scale, shift = inputs(2, 8, 3, 3, 4, torch.float64, "cuda")
    torch.testing.assert_close(ops.group_norm_silu(x, weight, bias, 4, 1e-5, scale, shift),
                               group_norm_silu_ref(x, weight, bias, 4, 1e-5, scale, shift))


@cuda
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_cuda_opcheck(channels_last):
    for dtype, affine in [(torch.bfloat16, True), (torch.float32, False)]:
        x, weight, bias, scale, shift = inputs(2, 32, 6, 6, 8, dtype, "cuda", channels_last, affine)
        torch.library.opcheck(torch.ops.rd.group_norm_silu.default, (*leaves(x, weight, bias, scale, shift), 8, 1e-5))
        y, mean, rstd = torch.ops.rd.group_norm_silu(x, weight, bias, scale, shift, 8, 1e-5)
        torch.library.opcheck(torch.ops.rd.group_norm_silu_backward.default,
                              (torch.randn_like(y), x, mean, rstd, weight, bias, scale, shift, 8))


@cuda
@pytest.mark.parametrize("impl", ["cuda", "auto"])
def test_cuda_torch_compile_fullgraph(impl):
    """The op stays in an inductor graph (fullgraph: no graph breaks) and gives the eager kernel's values."""
    x, weight, bias, scale, shift = leaves(*inputs(4, 64, 8, 8, 32, torch.bfloat16, "cuda", channels_last=True))

    def loss(x, weight, bias, scale, shift):
        y = ops.group_norm_silu(x, weight, bias, 32, 1e-5, scale, shift, impl=impl)
        return (y.float() * torch.linspace(-1, 1, y.shape[1], device=y.device)[:, None, None]).square().mean()

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True)
    got = torch.autograd.grad(compiled(x, weight, bias, scale, shift), (x, weight, bias, scale, shift))
    want = torch.autograd.grad(loss(x, weight, bias, scale, shift), (x, weight, bias, scale, shift))
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w.double(), rtol=2e-2, atol=2e-2 * w.abs().max().item())


@cuda
def test_cuda_unet_fused_matches_reference():
    """A tiny UNet step under bf16 autocast, channels_last: the fused op changes values only at bf16 precision."""
    torch.manual_seed(0)
    net = UNet(UNetConfig.preset("tiny")).cuda().to(memory_format=torch.channels_last)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    x = torch.randn(4, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    t = torch.rand(4, device="cuda")
    results = {}
    for impl in ("ref", "cuda"):
        previous = ops.set_default_impl(impl)
        try:
            net.zero_grad()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = net(x, t)
            out.float().square().mean().backward()
            results[impl] = (out.float(), torch.cat([p.grad.flatten().float() for p in net.parameters()]))
        finally:
            ops.set_default_impl(previous)
    (out_ref, g_ref), (out, g) = results["ref"], results["cuda"]
    # bf16 rounding in other places (the reference computes 1 + scale in bf16): ≈ 1.5e-2 measured on a CPU emulation
    assert (out - out_ref).norm() / out_ref.norm() < 5e-2
    assert F.cosine_similarity(g, g_ref, dim=0) > 0.99

# ---- GPU: the single-pass path (thread-block clusters, sm_90+, a build with RD_OPS_CLUSTER=1) and the multi-pass path

MULTIPASS_FORCED = os.environ.get("RD_OPS_MULTIPASS", "") not in ("", "0")
sm90 = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9
                          or MULTIPASS_FORCED or not fused.cluster_build(),
                          reason="needs an sm_90+ GPU (clusters), RD_OPS_CLUSTER=1 and RD_OPS_MULTIPASS unset")


def test_cluster_build_flag_selects_sources_and_folder(monkeypatch, tmp_path):
    """RD_OPS_CLUSTER=1 builds group_norm_silu_cluster.cu into a separate extension in its own folder (so the two
    builds never overwrite each other's cache); unset or "0", the multi-pass kernels alone."""
    monkeypatch.setenv("RD_OPS_BUILD_DIR", str(tmp_path / "ops"))
    for value, cluster in [("", False), ("0", False), ("1", True)]:
        monkeypatch.setenv("RD_OPS_CLUSTER", value)
        assert fused.cluster_build() is cluster
        assert fused.build_dir() == tmp_path / ("ops-cluster" if cluster else "ops")
    assert (fused.SOURCES / "group_norm_silu_cluster.cu").is_file()


def test_build_folder_is_the_clones_or_torchs_when_installed(monkeypatch, tmp_path):
    """In a clone the build goes to its ignored build/ folder; installed without the clone (site-packages, where no
    pyproject.toml sits beside the package), to torch's extension folder, never into site-packages."""
    monkeypatch.delenv("RD_OPS_BUILD_DIR", raising=False)
    monkeypatch.delenv("RD_OPS_CLUSTER", raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    tag = (f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__.split('+')[0]}"
           f"-cu{torch.version.cuda}-sm90")
    assert fused.build_dir() == fused.SOURCES.parents[1] / "build" / "rd_ops" / tag
    monkeypatch.setattr(fused, "SOURCES", tmp_path / "site-packages" / "rd" / "ops")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    assert fused.build_dir() == tmp_path / "ext" / "rd_ops" / tag
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    from torch.utils.cpp_extension import get_default_build_root
    assert fused.build_dir() == Path(get_default_build_root()) / "rd_ops" / tag


def test_an_installed_package_ships_every_kernel_source():
    """pyproject.toml's package data covers every non-Python file of rd/ops (a header left out breaks the build of
    a non-editable install only)."""
    tomllib = pytest.importorskip("tomllib")
    root = fused.SOURCES.parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["rd.ops"]
    files = [p.name for p in fused.SOURCES.iterdir() if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert "group_norm_silu_common.cuh" in files
    assert [f for f in files if not any(fnmatch.fnmatch(f, pattern) for pattern in patterns)] == []


@cuda
@pytest.mark.skipif(fused.cluster_build(), reason="the default build (RD_OPS_CLUSTER unset)")
def test_cuda_default_build_takes_the_multipass_path():
    """Without RD_OPS_CLUSTER the single-pass kernels are not compiled: every shape takes the multi-pass path."""
    for (*size, groups), per_dtype in CLUSTER_SHAPES.items():
        for dtype in per_dtype:
            x = inputs(*size, groups, dtype, "cuda", channels_last=True)[0]
            assert cluster_sizes(x, groups) == (0, 0), (tuple(size), dtype)


BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
# (N, C, H, W, G) → per dtype (S forward, S backward) by group_norm_silu_cluster.cu's rule (0: multi-pass): H·W ≤ 64,
# then the smallest S whose block needs ≤ 64 KB of shared memory, else the largest within the opt-in limit (227 KB
# on an H100 or H200: other GPUs may choose otherwise, and the S check is then skipped)
CLUSTER_SHAPES = {
    (3, 512, 4, 4, 32): {BF16: (1, 1), FP16: (1, 1), FP32: (1, 2)},        # one block per sample
    (2, 512, 7, 7, 32): {BF16: (1, 4), FP16: (1, 4), FP32: (2, 4)},        # H·W = 49: the last chunk is partial
    (2, 4096, 3, 3, 64): {BF16: (2, 16), FP16: (2, 16), FP32: (8, 16)},    # S = 16 (non-portable), empty high ranks,
                                                                           # C/V > 256 vectors
    (1, 16384, 8, 8, 32): {BF16: (16, 0), FP16: (16, 0), FP32: (0, 0)},    # too big for any S: multi-pass
    (4, 128, 16, 16, 32): {BF16: (0, 0), FP16: (0, 0), FP32: (0, 0)},      # H·W > 64: multi-pass (faster there)
    (2, 36, 8, 8, 4): {BF16: (0, 0), FP16: (0, 0), FP32: (1, 1)},          # C = 36: no 16-byte vectors for 16 bits
}


def cluster_sizes(x, groups):
    """(S forward, S backward) that the kernels take for x; 0 for the multi-pass path."""
    ext = ops.load_extension(strict=True)
    return ext.cluster_size(x, groups, False), ext.cluster_size(x, groups, True)


@sm90
@pytest.mark.parametrize("dtype", [FP32, FP16, BF16], ids=str)
@pytest.mark.parametrize("shape", list(CLUSTER_SHAPES), ids=lambda s: "x".join(map(str, s)))
def test_cuda_cluster_path_matches_reference(dtype, shape):
    *size, groups = shape
    x, weight, bias, scale, shift = inputs(*size, groups, dtype, "cuda", channels_last=True)
    if any(name in torch.cuda.get_device_name() for name in ("H100", "H200")):     # 227 KB of opt-in shared memory
        assert cluster_sizes(x, groups) == CLUSTER_SHAPES[shape][dtype]
    check_against_reference(x, weight, bias, scale, shift, groups)
    check_against_reference(*inputs(*size, groups, dtype, "cuda", channels_last=True, affine=False, seed=1), groups)


@sm90
@pytest.mark.parametrize("shape", [(2, 4096, 3, 3, 64), (2, 512, 7, 7, 32), (3, 512, 4, 4, 32)],
                         ids=lambda s: "x".join(map(str, s)))
def test_cuda_cluster_path_is_deterministic_and_graph_capturable(shape):
    """Fixed reduction orders: two calls give the same bits; the launches replay in a CUDA graph with those bits."""
    *size, groups = shape
    x, weight, bias, scale, shift = inputs(*size, groups, torch.bfloat16, "cuda", channels_last=True)
    assert all(s > 0 for s in cluster_sizes(x, groups))
    dy = torch.randn(x.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(3)).to(x.dtype)
    dy = dy.contiguous(memory_format=torch.channels_last)

    def step():
        y, mean, rstd = torch.ops.rd.group_norm_silu(x, weight, bias, scale, shift, groups, 1e-5)
        return (y, mean, rstd, *torch.ops.rd.group_norm_silu_backward(dy, x, mean, rstd, weight, bias, scale, shift,
                                                                      groups))
    first, second = step(), step()
    for a, b in zip(first, second):
        assert torch.equal(a, b), "no atomics: repeatable"
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(first, captured):
        assert torch.equal(a, b), "the graph replay gives the eager bits"


@sm90
def test_cuda_cluster_decision_made_inside_a_graph_capture():
    """A shape's first call inside a CUDA-graph capture: the per-shape decision queries and configures the device
    (RelaxedCapture lets it), the capture succeeds, and the replay gives the eager bits of the same path."""
    # a shape (C = 384, H·W = 36, G = 32) that no other test uses: its decision is not cached yet in this process
    x, weight, bias, scale, shift = inputs(2, 384, 6, 6, 32, torch.bfloat16, "cuda", channels_last=True)
    dy = torch.randn(x.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(5)).to(x.dtype)
    dy = dy.contiguous(memory_format=torch.channels_last)

    def step():
        y, mean, rstd = torch.ops.rd.group_norm_silu(x, weight, bias, scale, shift, 32, 1e-5)
        return (y, mean, rstd, *torch.ops.rd.group_norm_silu_backward(dy, x, mean, rstd, weight, bias, scale, shift,
                                                                      32))
    ops.load_extension(strict=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()                         # the first call of this shape in this process
    graph.replay()
    torch.cuda.synchronize()
    assert all(s > 0 for s in cluster_sizes(x, 32)), "decided inside the capture: the single-pass path"
    for a, b in zip(step(), captured):
        assert torch.equal(a, b)
    check_against_reference(x, weight, bias, scale, shift, 32)


MULTIPASS_SCRIPT = """
import sys
import torch
from rd import ops
ext = ops.load_extension(strict=True)
results = []
for x, weight, bias, scale, shift, dy, groups in torch.load(sys.argv[1]):
    x, weight, bias, scale, shift, dy = (t.cuda() for t in (x, weight, bias, scale, shift, dy))
    x, dy = (t.contiguous(memory_format=torch.channels_last) for t in (x, dy))
    assert ext.cluster_size(x, groups, False) == 0 and ext.cluster_size(x, groups, True) == 0, "RD_OPS_MULTIPASS=1"
    y, mean, rstd = torch.ops.rd.group_norm_silu(x, weight, bias, scale, shift, groups, 1e-5)
    grads = torch.ops.rd.group_norm_silu_backward(dy, x, mean, rstd, weight, bias, scale, shift, groups)
    results.append([t.cpu() for t in (y, mean, rstd, *grads)])
torch.save(results, sys.argv[2])
"""


@sm90
def test_cuda_multipass_env_gives_the_same_results(tmp_path):
    """RD_OPS_MULTIPASS=1 (read once per process) forces the multi-pass kernels: a subprocess runs a few shapes with
    it; this process (the single-pass path on an sm_90+ GPU) gets the same outputs within the dtype's tolerance."""
    cases, here = [], []
    for (*size, groups), dtype in [((2, 512, 7, 7, 32), BF16), ((2, 512, 7, 7, 32), FP32),
                                   ((3, 512, 4, 4, 32), FP16), ((2, 4096, 3, 3, 64), BF16)]:
        x, weight, bias, scale, shift = inputs(*size, groups, dtype, "cuda", channels_last=True)
        dy = torch.randn(x.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(4)).to(dtype)
        dy = dy.contiguous(memory_format=torch.channels_last)
        assert all(s > 0 for s in cluster_sizes(x, groups)), "this process takes the single-pass path"
        y, mean, rstd = torch.ops.rd.group_norm_silu(x, weight, bias, scale, shift, groups, 1e-5)
        grads = torch.ops.rd.group_norm_silu_backward(dy, x, mean, rstd, weight, bias, scale, shift, groups)
        here.append([t.cpu() for t in (y, mean, rstd, *grads)])
        cases.append([t.cpu() for t in (x, weight, bias, scale, shift, dy)] + [groups])
    torch.save(cases, tmp_path / "cases.pt")
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "multipass.py").write_text(MULTIPASS_SCRIPT)
    env = dict(os.environ, RD_OPS_MULTIPASS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, str(tmp_path / "multipass.py"), str(tmp_path / "cases.pt"),
                          str(tmp_path / "out.pt")], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    names = ["y", "mean", "rstd", "dx", "dweight", "dbias", "dscale", "dshift"]
    for case, ours, theirs in zip(cases, here, torch.load(tmp_path / "out.pt")):
        tol = TOL[case[0].dtype]
        for name, a, b in zip(names, ours, theirs):
            assert a.dtype == b.dtype and a.stride() == b.stride(), name
            b = b.double()
            torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol * b.abs().max().item(),
                                       msg=lambda m: f"{name} ({case[0].dtype}, {tuple(case[0].shape)}): {m}")



@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU message")
def test_compare_needs_a_gpu_and_says_so():
    run = subprocess.run([sys.executable, "-m", "rd.ops.compare"], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "needs a CUDA GPU" in run.stderr
    run = subprocess.run([sys.executable, "-m", "rd.ops.compare", "--help"], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "--baseline BASELINE" in run.stdout and "(default: True)" in run.stdout
