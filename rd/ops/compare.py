"""The two kernel paths per UNet shape, on a GPU: single-pass (clusters, sm_90+) against multi-pass.

    python -m rd.ops.compare                  # seconds, after the extension's build (cached)

It uses the build with the single-pass kernels (it sets RD_OPS_CLUSTER=1 for itself and its child process).

Per (C, H×W) of the cifar UNet at N=512, bf16, channels_last, G=32, with scale/shift:
  path      S of the single-pass cluster kernels, forward/backward (0: multi-pass)
  errors    max |kernel − reference| of y, dx, dγ, dβ, dscale, dshift; the reference is rd.ops.group_norm_silu_ref
            in float32 autograd on the same (bf16-valued) inputs; `rel` = the worst of max|err| / max|ref|
  time      GPU µs of one fwd+bwd (the two ops; a CUDA graph replayed, median as rd.timing.graph_timeit),
            for this process and for a child process run with RD_OPS_MULTIPASS=1 (the multi-pass kernels), and
            the effective bandwidth of this process's time: 5 × bytes(x) (read x, write y; read x, dy, write dx)
Shapes with H·W > 64 take the multi-pass path in both processes (rd/ops/group_norm_silu_cluster.cu says why); run with
RD_OPS_DEBUG=1 to see each decision.
"""
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from ..cli import arg, parse
from ..timing import graph_timeit

SHAPES = [(128, 32), (256, 32), (384, 32), (128, 16), (256, 16), (384, 16), (512, 16), (256, 8), (512, 8), (256, 4),
          (512, 4)]                                    # (C, H = W)
N, G, EPS = 512, 32, 1e-5


def make(c, h, seed=0):
    g = torch.Generator("cuda").manual_seed(seed)
    x = torch.randn(N, c, h, h, device="cuda", generator=g).mul_(1.5).add_(0.3).bfloat16()
    x = x.contiguous(memory_format=torch.channels_last)
    weight = 1 + 0.3 * torch.randn(c, device="cuda", generator=g)
    bias = 0.2 * torch.randn(c, device="cuda", generator=g)
    scale = 0.3 * torch.randn(N, c, device="cuda", generator=g)
    shift = 0.3 * torch.randn(N, c, device="cuda", generator=g)
    dy = torch.randn(x.shape, device="cuda", generator=g).bfloat16().contiguous(memory_format=torch.channels_last)
    return x, weight, bias, scale, shift, dy


def time_us(x, weight, bias, scale, shift, dy, iters):
    def step():
        y, mean, rstd = torch.ops.rd.group_norm_silu(x, weight, bias, scale, shift, G, EPS)
        torch.ops.rd.group_norm_silu_backward(dy, x, mean, rstd, weight, bias, scale, shift, G)
    return 1e6 * graph_timeit(step, iters, 3)


def errors(x, weight, bias, scale, shift, dy):
    """max |err| of (y, dx, dγ, dβ, dscale, dshift) and the worst max|err| / max|ref|."""
    from rd import ops
    ref_in = [t.detach().float().requires_grad_() for t in (x, weight, bias, scale, shift)]
    y_ref = ops.group_norm_silu_ref(ref_in[0], *ref_in[1:3], G, EPS, *ref_in[3:])
    want = [y_ref.detach(), *torch.autograd.grad(y_ref, ref_in, dy.float())]
    del y_ref, ref_in
    ins = [t.detach().clone().requires_grad_() for t in (x, weight, bias, scale, shift)]
    y = ops.group_norm_silu(ins[0], ins[1], ins[2], G, EPS, ins[3], ins[4], impl="cuda")
    got = [y.detach(), *torch.autograd.grad(y, ins, dy)]
    err = [(a.float() - b).abs().max().item() for a, b in zip(got, want)]
    rel = max(e / max(b.abs().max().item(), 1e-30) for e, b in zip(err, want))
    return err, rel


def run(check: bool, iters: int) -> dict:
    from rd import ops
    t0 = time.time()
    ext = ops.load_extension(strict=True)
    out = {"load_s": time.time() - t0, "rows": {}}
    for c, h in SHAPES:
        x, weight, bias, scale, shift, dy = make(c, h)
        row = {"path": (ext.cluster_size(x, G, False), ext.cluster_size(x, G, True)),
               "us": time_us(x, weight, bias, scale, shift, dy, iters)}
        if check:
            row["err"], row["rel"] = errors(x, weight, bias, scale, shift, dy)
        out["rows"][f"{c},{h}"] = row
        del x, weight, bias, scale, shift, dy
        torch.cuda.empty_cache()
    return out


@dataclass
class CompareConfig:
    iters: int = arg(20, "timed replays per shape (median)")
    child: bool = arg(False, "timing only, JSON on stdout (the RD_OPS_MULTIPASS=1 run)")
    baseline: bool = arg(True, "also time the multi-pass kernels in a child process")


def main():
    args = parse(CompareConfig, None, __doc__.split("\n")[0], prog="python -m rd.ops.compare")
    if not torch.cuda.is_available():
        raise SystemExit("rd.ops.compare times CUDA kernels: it needs a CUDA GPU (none is visible here)")
    os.environ["RD_OPS_CLUSTER"] = "1"                 # the build with group_norm_silu_cluster.cu (read at build time)
    if args.child:
        print("JSON " + json.dumps(run(check=False, iters=args.iters)), flush=True)
        return
    t0 = time.time()
    ours = run(check=True, iters=args.iters)
    base = {}
    if args.baseline:
        env = dict(os.environ, RD_OPS_MULTIPASS="1")
        try:
            child = subprocess.run([sys.executable, "-m", "rd.ops.compare", "--child=true", f"--iters={args.iters}"],
                                   env=env, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired as e:
            child = subprocess.CompletedProcess(e.cmd, -1, str(e.stdout or ""), f"timed out after {e.timeout} s")
        lines = [l for l in child.stdout.splitlines() if l.startswith("JSON ")]
        if child.returncode != 0 or not lines:
            print(f"multi-pass child failed (rc {child.returncode}):\n{child.stdout[-2000:]}\n{child.stderr[-2000:]}")
        else:
            base = json.loads(lines[-1][5:])["rows"]
    dev = torch.cuda.get_device_name()
    env_note = " (RD_OPS_MULTIPASS set in this process!)" if os.environ.get("RD_OPS_MULTIPASS", "0") not in ("", "0") \
        else ""
    print(f"{dev}, N={N}, bf16, channels_last, G={G}, scale/shift; extension load {ours['load_s']:.1f} s{env_note}")
    head = (f"{'C':>4} {'HxW':>6} {'S f/b':>6} | {'err y':>8} {'dx':>8} {'dgamma':>8} {'dbeta':>8} {'dscale':>8} "
            f"{'dshift':>8} {'rel':>8} | {'us':>8} {'TB/s':>5} {'multi us':>8} {'speedup':>7}")
    print(head)
    print("-" * len(head))
    total, total_base, failed = 0.0, 0.0, False
    for c, h in SHAPES:
        key = f"{c},{h}"
        r = ours["rows"][key]
        us = r["us"]
        total += us
        tbs = 5 * N * c * h * h * 2 / (us * 1e-6) / 1e12
        b = base.get(key)
        if b is not None:
            total_base += b["us"]
        errs = " ".join(f"{e:8.1e}" for e in r["err"])
        ok = "" if r["rel"] < 2e-2 else "  FAIL"
        failed |= bool(ok)
        print(f"{c:>4} {f'{h}x{h}':>6} {'%d/%d' % tuple(r['path']):>6} | {errs} {r['rel']:8.1e} | {us:8.1f} {tbs:5.2f} "
              f"{(b['us'] if b else float('nan')):8.1f} {(b['us'] / us if b else float('nan')):7.2f}{ok}")
    if base:
        print(f"{'sum':>18} {'':>64} | {total:8.1f} {'':>5} {total_base:8.1f} {total_base / total:7.2f}")
    print(f"wall {time.time() - t0:.1f} s")
    if failed:
        raise SystemExit("rd.ops.compare: the kernels disagree with the reference beyond 2e-2 (FAIL rows above)")


if __name__ == "__main__":
    main()
