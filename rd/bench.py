"""Benchmark: the fused GroupNorm+SiLU op alone, a CIFAR UNet training step, and few-step sampling.

    python -m rd.bench                                # all parts (minutes on a GPU, the kernel build included)
    python -m rd.bench --parts=op --op_layouts=channels_last
    python -m rd.bench --preset=quick                 # a tiny smoke run; on a CPU only the reference rows

Prints one markdown table. Every row holds a baseline and ours measured in the same run, and their ratio
(> 1: ours is better): eager PyTorch (GroupNorm under bf16 autocast, then scale/shift, then SiLU) against the fused
kernel, and torch.compile without the kernel against torch.compile with it. Times are medians over timed iterations
after warm-up, measured with CUDA events. The op rows give the GPU time (one fwd+bwd captured in a CUDA graph
and replayed) and, summed, also the wall time of calls made one at a time, where the host's overhead shows.
MFU = 3 × forward FLOPs per image × batch / step time / peak, the peak being the best measured 8192³ bf16 matmul.
"""
import time
from collections import Counter
from dataclasses import dataclass
from unittest import mock

import torch

from . import ops
from .cli import FlagChecks, arg, parse
from .predictions import denoising_loss
from .sampling import sample
from .schedules import get_schedule
from .timing import graph_timeit, timeit
from .unet import UNet, UNetConfig, count_flops


def attempt(what: str, fn):
    """fn(), or None after printing why it failed: one broken measurement leaves "–" instead of ending the run."""
    try:
        return fn()
    except Exception as e:                     # a compile or kernel error: reported, the other rows still run
        print(f"{what} FAILED: {type(e).__name__}: {str(e)[-2000:]}", flush=True)
        return None


def peak_bf16_flops(n: int = 8192, tries: int = 10) -> float:
    """Dense bf16 FLOP/s of the best of `tries` n³ matmuls: the MFU denominator."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    return 2 * n ** 3 / min(timeit(lambda: a @ b, 1, 2 if i == 0 else 0) for i in range(tries))


def norm_calls(cfg: UNetConfig) -> Counter:
    """(C, H, W, groups, with scale/shift) of each group_norm_silu call in one UNet forward → calls per forward."""
    calls = Counter()

    def record(x, weight, bias, groups, eps=1e-5, scale=None, shift=None, impl=None):
        calls[(x.shape[1], x.shape[2], x.shape[3], groups, scale is not None)] += 1
        return ops.group_norm_silu_ref(x, weight, bias, groups, eps, scale, shift)
    with mock.patch.object(ops, "group_norm_silu", record), torch.no_grad():
        UNet(cfg)(torch.zeros(1, cfg.in_channels, cfg.resolution, cfg.resolution), torch.zeros(1))
    return calls


def eager_op(x, weight, bias, groups: int, scale=None, shift=None):
    """The UNet's eager path: GroupNorm in fp32 under bf16 autocast, scale/shift, SiLU, and the cast to bf16 that
    the next convolution does."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        return ops.group_norm_silu_ref(x, weight, bias, groups, 1e-5, scale, shift).to(torch.bfloat16)


def fused_op(x, weight, bias, groups: int, scale=None, shift=None):
    return ops.group_norm_silu(x, weight, bias, groups, 1e-5, scale, shift, impl="cuda")


def bench_op(args, cuda: bool, rows: list):
    """(a) fwd+bwd of every distinct group_norm_silu call of the UNet, bf16, at batch args.op_batch: the GPU time
    of each (CUDA-graph replay; on a CPU the wall time), then per layout the sums over one forward's calls, of the
    GPU time and of the wall time of calls made one at a time (host overhead included)."""
    device = "cuda" if cuda else "cpu"
    compiled_op = torch.compile(eager_op, dynamic=True) if cuda and args.compile else None
    totals = {}
    for layout in args.op_layouts.split(","):
        fmt = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}[layout]
        for (c, h, w, groups, affine), count in norm_calls(UNetConfig.preset(args.unet)).items():
            g = torch.Generator(device).manual_seed(0)
            x = torch.randn(args.op_batch, c, h, w, device=device, generator=g, dtype=torch.bfloat16)
            x = x.contiguous(memory_format=fmt).requires_grad_()
            params = [(1 + 0.1 * torch.randn(c, device=device, generator=g)).requires_grad_(),
                      (0.1 * torch.randn(c, device=device, generator=g)).requires_grad_()]
            if affine:      # scale, shift come from a Linear under autocast: bf16 (N, C)
                params += [(0.1 * torch.randn(args.op_batch, c, device=device, generator=g)).bfloat16().requires_grad_()
                           for _ in range(2)]
            dy = torch.randn(x.shape, device=device, generator=g, dtype=torch.bfloat16).contiguous(memory_format=fmt)

            def step(fn):
                y = fn(x, params[0], params[1], groups, *params[2:])
                torch.autograd.grad(y, [x, *params], dy)
            case = f"{layout} ({args.op_batch},{c},{h},{w}) G={groups}{' +scale/shift' if affine else ''} ×{count}"
            fns = {"eager": eager_op, "fused": fused_op if cuda else None, "compiled": compiled_op}
            clocks = {"gpu": graph_timeit if cuda else timeit, "wall": timeit} if cuda else {"gpu": timeit}
            t = {(clock, k): attempt(f"op {k} {clock} {case}", lambda: timer(lambda: step(fn), args.iters,
                                                                              args.warmup))
                 for clock, timer in clocks.items() for k, fn in fns.items() if fn is not None}
            for (clock, k), v in t.items():          # a failed measurement makes its sum unknown
                previous = totals.get((layout, clock, k), 0.0)
                totals[layout, clock, k] = None if v is None or previous is None else previous + count * v
            rows.append(op_row(f"{case}{', GPU time' if cuda else ''}", {k: v for (c, k), v in t.items()
                                                                          if c == "gpu"}))
        for clock in clocks:
            what = {"gpu": "GPU time" if cuda else "time", "wall": "wall time, one call at a time"}[clock]
            rows.append(op_row(f"{layout}: all calls of one forward, summed, {what}",
                               {k: v for (l, c, k), v in totals.items() if l == layout and c == clock}))


def op_row(case, t):
    us = {k: 1e6 * v for k, v in t.items() if v is not None}
    fused = us.get("fused")
    return ["op fwd+bwd", case, "µs", us.get("eager"), fused, ratio(us.get("eager"), fused), us.get("compiled"),
            fused if "compiled" in us else None, ratio(us.get("compiled"), fused if "compiled" in us else None)]


def ratio(baseline, ours, higher_is_better=False):
    if baseline is None or ours is None:
        return None
    return ours / baseline if higher_is_better else baseline / ours


def bench_train(args, cuda: bool, rows: list):
    """(b) a training step (denoising loss, backward, Adam) under bf16 autocast, channels_last."""
    device = torch.device("cuda" if cuda else "cpu")
    cfg = UNetConfig.preset(args.unet)
    flops = count_flops(UNet(cfg))                                     # forward FLOPs per image (CPU pass)
    peak = peak_bf16_flops() if cuda else None
    torch.manual_seed(0)
    net = UNet(cfg).to(device).to(memory_format=torch.channels_last).train()
    schedule = get_schedule("vp-sd")
    compile_batches = [int(b) for b in args.compile_batches.split(",") if b] if cuda and args.compile else []
    for batch in [int(b) for b in args.batches.split(",")]:
        g = torch.Generator(device).manual_seed(0)
        x0 = torch.randn(batch, cfg.in_channels, cfg.resolution, cfg.resolution, device=device, generator=g)
        x0 = x0.contiguous(memory_format=torch.channels_last)
        eps = torch.randn(x0.shape, device=device, generator=g).contiguous(memory_format=torch.channels_last)
        t = schedule.sample_t(batch, device=device)
        rate = {}
        for name, impl, compiled in [("eager", "ref", False), ("fused", "cuda", False),
                                     ("compiled", "ref", True), ("compiled+fused", "cuda", True)]:
            if (impl == "cuda" and not cuda) or (compiled and batch not in compile_batches):
                continue
            previous = ops.set_default_impl(impl)
            try:
                torch._dynamo.reset()
                seconds = attempt(f"train b={batch} {name}", lambda: time_train_step(net, compiled, schedule, x0, eps,
                                                                                      t, args))
                if seconds is not None:
                    rate[name] = batch / seconds
            finally:
                ops.set_default_impl(previous)
        mfu = {k: 100 * 3 * flops * v / peak for k, v in rate.items()} if peak else {}
        for metric, vals in [("img/s", rate), ("MFU %", mfu)]:
            if vals:
                rows.append(["train step", f"b={batch}, bf16, channels_last", metric, vals.get("eager"),
                             vals.get("fused"), ratio(vals.get("eager"), vals.get("fused"), True), vals.get("compiled"),
                             vals.get("compiled+fused"), ratio(vals.get("compiled"), vals.get("compiled+fused"), True)])
    if peak:
        print(f"peak dense bf16 (8192³ matmul): {peak / 1e12:.0f} TFLOP/s; forward {flops / 1e9:.2f} GFLOPs/image")


def time_train_step(net, compiled: bool, schedule, x0, eps, t, args) -> float:
    """Median seconds of forward (denoising loss, bf16 autocast) + backward + Adam step; prints the compile time."""
    model = torch.compile(net) if compiled else net
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, fused=x0.is_cuda)                  # as rd.train

    def step():
        with torch.autocast(x0.device.type, dtype=torch.bfloat16):
            loss = denoising_loss(model, schedule, x0, eps, t, "eps")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    t0 = time.perf_counter()
    step()
    if x0.is_cuda:
        torch.cuda.synchronize()
    if compiled:
        print(f"train b={x0.shape[0]}: first compiled step {time.perf_counter() - t0:.0f} s", flush=True)
    return timeit(step, args.iters, args.warmup)


def bench_sample(args, cuda: bool, rows: list):
    """(c) 1- and 4-step DPM-Solver++ generation, and the solver's time per step beyond its network call."""
    device = torch.device("cuda" if cuda else "cpu")
    cfg = UNetConfig.preset(args.unet)
    torch.manual_seed(0)
    net = UNet(cfg).to(device).to(memory_format=torch.channels_last).eval()
    schedule, batch = get_schedule("vp-sd"), args.sample_batch
    noise = torch.randn(batch, cfg.in_channels, cfg.resolution, cfg.resolution, device=device)
    noise = noise.contiguous(memory_format=torch.channels_last)
    rate, overhead = {}, {}
    for name, impl in [("eager", "ref"), ("fused", "cuda")]:
        if impl == "cuda" and not cuda:
            continue
        previous = ops.set_default_impl(impl)
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16), torch.no_grad():
                t_net = attempt(f"net eval {name}", lambda: timeit(
                    lambda: net(noise, torch.full((batch,), 0.5, device=device)), args.iters, args.warmup))
                for steps, solver in [(1, "dpm++1"), (4, "dpm++2m")]:
                    t_k = attempt(f"sample {steps} {name}", lambda: timeit(
                        lambda: sample(net, noise, schedule, "eps", solver, steps), args.iters, args.warmup))
                    if t_k is not None and t_net is not None:
                        rate[name, steps] = batch / t_k
                        overhead[name, steps] = 100 * (t_k - steps * t_net) / (steps * t_net)
        finally:
            ops.set_default_impl(previous)
    for steps, solver in [(1, "dpm++1"), (4, "dpm++2m")]:
        e, f = rate.get(("eager", steps)), rate.get(("fused", steps))
        rows.append(["sampling", f"{steps} step{'s' * (steps > 1)} {solver}, b={batch}", "img/s", e, f,
                     ratio(e, f, True), None, None, None])
        rows.append(["sampling", f"solver time per step beyond the net ({solver}, {steps} step{'s' * (steps > 1)})",
                     "% of a net eval",
                     overhead.get(("eager", steps)), overhead.get(("fused", steps)), None, None, None, None])


def _cell(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 10 else f"{v:.0f}"
    return str(v)


def table(rows) -> str:
    """The markdown table; × = baseline/ours for times, ours/baseline for rates (> 1: ours is better)."""
    head = ["part", "case", "metric", "eager", "eager+fused", "×", "compiled", "compiled+fused", "×"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows])


@dataclass
class BenchConfig:
    parts: str = arg("op,train,sample", "comma-separated subset of op, train, sample")
    unet: str = arg("cifar", "UNet preset (rd.unet.UNetConfig.preset)")
    batches: str = arg("128,512", "training-step batch sizes")
    compile_batches: str = arg("128", "batch sizes that also run torch.compile (about a minute each per variant); "
                               "empty for none")
    compile: bool = arg(True, "run the torch.compile rows")
    op_batch: int = arg(128, "batch of the op-alone shapes")
    op_layouts: str = arg("channels_last,contiguous", "memory formats of the op-alone rows")
    sample_batch: int = arg(512, "images per sampling call")
    iters: int = arg(20, "timed iterations per measurement (median)")
    warmup: int = arg(5, "untimed iterations before them")


PRESETS = {"quick": dict(unet="tiny", batches="4", compile=False, iters=2, warmup=1, op_batch=4, sample_batch=4)}


def main(argv=None):
    args = parse(BenchConfig, argv, __doc__.split("\n")[0], presets=PRESETS,
                 prog="python -m rd.bench")
    parts = args.parts.split(",")
    checks = FlagChecks("python -m rd.bench", args)
    if unknown := set(parts) - {"op", "train", "sample"}:
        checks.bad("parts", f"unknown parts {sorted(unknown)}; allowed: op, train, sample")
    checks.done()
    cuda = torch.cuda.is_available()
    if cuda:
        t0 = time.perf_counter()
        ops.load_extension(strict=True)
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; extension ready in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    else:
        print("no CUDA device: the fused and compiled columns are skipped (–); timing the reference on the CPU")
    rows = []
    for part, fn in [("op", bench_op), ("train", bench_train), ("sample", bench_sample)]:
        if part in parts:
            t0 = time.perf_counter()
            fn(args, cuda, rows)
            print(f"{part}: {time.perf_counter() - t0:.0f} s", flush=True)
    print("columns: eager = PyTorch ops (GroupNorm in fp32 under bf16 autocast); eager+fused = rd.ops kernel; "
          "compiled = torch.compile without the kernel (op rows: of the reference, dynamic shapes); "
          "compiled+fused = with it (op rows: the kernel, opaque to the compiler); × = ours vs baseline, > 1 better\n")
    out = table(rows)
    print(out)
    return out


if __name__ == "__main__":
    main()
