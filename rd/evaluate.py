"""The evaluation stage of rd.cifar: FID of every model at its call counts, of the students' data (the pairs' own
samples) and of CIFAR-10's test images (FID's calibration), sample grids, and the tables (FID, ratios, minutes per
stage, throughputs) written to results<sfx>.md / .json.  [FID]"""
import json
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from .data import load_cifar10, to_uint8
from .dist import named_noise
from .figures import tile
from .io import atomic_write, atomic_write_text
from .rectify import load_pairs
from .sampling import sample, solver_for
from .stages import synchronize


@torch.no_grad()
def generate(net, schedule, pred_type, solver, calls, noise, device, batch=2500, grid="logsnr"):
    """uint8 samples (N, 3, H, W) of net after `calls` steps of `solver` on `grid` from `noise`, bf16 network."""
    out = []
    for z in noise.split(batch):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device != "cpu"):
            x = sample(net, z.to(device), schedule, pred_type, solver, calls, grid=grid)
        out.append(to_uint8(x).cpu())
    return torch.cat(out)


def sampling_rate(net, schedule, pred_type, solver, calls, noise, device, batch=2500, repeats=3, grid="logsnr") -> float:
    """Steady-state img/s: one untimed batch first (allocations, kernel selection), then `repeats` timed ones."""
    z = noise[:batch]
    generate(net, schedule, pred_type, solver, calls, z, device, batch, grid)
    synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        generate(net, schedule, pred_type, solver, calls, z, device, batch, grid)
    synchronize()
    return repeats * len(z) / (time.perf_counter() - start)


def call_counts(text: str) -> list[int]:
    """A comma list of network-call counts, "1,2,4,10,25" → [1, 2, 4, 10, 25] (a ValueError if one is no integer)."""
    return [int(c) for c in text.split(",") if c.strip()]


def student_phases(name: str) -> int | None:
    """K of a student name: the plain students rd and rf → 1, the phased rdK → K ≥ 1; None for any other name."""
    if name in ("rd", "rf"):
        return 1
    return int(name[2:]) if name.startswith("rd") and name[2:].isdigit() and int(name[2:]) > 0 else None


def is_phased(name: str) -> bool:
    """Whether a student name is a phased RD, rdK (sampled with one first-order step per phase); False for rd, rf and
    any other name."""
    return name not in ("rd", "rf") and student_phases(name) is not None


def eval_models(cfg, teacher: tuple, students: dict) -> dict:
    """What `evaluate` scores: {name: (net, schedule, pred_type, [calls], solver_of_calls, grid)} from the teacher's
    and each student's (net, schedule, pred_type). The teacher at --teacher_calls and the plain students (rd, rf) at
    1, 2 and 4 calls sample with --sampler on --grid (dpm++1 at one call, rd.sampling.solver_for); a phased student
    rdK at K calls, one first-order step per phase, on the λ-uniform phases it was trained on."""
    def solver(calls):
        return solver_for(calls, cfg.sampler)

    models = {"teacher": (*teacher, call_counts(cfg.teacher_calls), solver, cfg.grid)}
    for name, (net, sch, p) in students.items():
        if is_phased(name):
            models[name] = (net, sch, p, [student_phases(name)], lambda calls: "dpm++1", "logsnr")
        else:
            models[name] = (net, sch, p, [1, 2, 4], solver, cfg.grid)
    return models


def evaluate(cfg, out: Path, sfx: str, images, models: dict, laps, device, cache: Path,
             folders: dict | None = None) -> dict:
    """models: {name: (net, schedule, pred_type, [calls], solver_of_calls, grid)}; writes results<sfx>.md / .json and
    samples<sfx>.png; a student's log is in folders[name] (default <out>/<name>). Returns {(name, calls): FID or
    None}."""
    noise = named_noise(cfg.seed, "eval noise", (cfg.fid_n, 3, 32, 32))          # no training pair's ε
    inception, calibration, stats = None, None, None
    if cfg.inception:
        from .fid import feature_stats, fid, fid_from_stats, inception_features, load_inception, reference_stats
        inception = load_inception(cfg.inception, device=device)
        with laps("eval"):
            stats = reference_stats(f"cifar10-train-{len(images)}", lambda: images, inception, cache_dir=cache,
                                    device=device)
            test_images, _ = load_cifar10(cfg.data, "test", cache_dir=cache, verbose=False)
            synchronize()
            start = time.perf_counter()
            test_features = inception_features(test_images, inception, device=device, progress=False)
            synchronize()
            feature_rate = len(test_images) / (time.perf_counter() - start)
            calibration = fid_from_stats(*feature_stats(test_features, device), *stats, device)
        print(f"calibration: FID(test {len(test_images)} vs train {len(images)}) = {calibration:.4f}")
    else:
        print("--inception='': FID skipped, samples and grids only")
    results, grids = {}, {}
    with laps("eval"):
        for name, (net, sch, pred, calls, solver_of, grid) in models.items():
            for k in calls:
                start = time.perf_counter()
                samples = generate(net, sch, pred, solver_of(k), k, noise, device, grid=grid)
                grids[(name, k)] = samples[:64]
                results[(name, k)] = fid(samples, *stats, inception, device=device, progress=False) if inception else None
                print(f"{name} at {k} call{'s' * (k > 1)}: FID {_fmt(results[(name, k)])} "
                      f"({time.perf_counter() - start:.1f} s)", flush=True)
        teacher, sch, pred, _, solver_of, grid = models["teacher"]
        rates = {k: sampling_rate(teacher, sch, pred, solver_of(k), k, noise, device, grid=grid) for k in (1, 4)}
        pair_fid = _pairs_fid(cfg, out / "pairs", sch, stats, inception, device)
        if pair_fid is not None:
            print(f"{pair_fid[0]}: FID {_fmt(pair_fid[1])}", flush=True)
    lines = _tables(cfg, images, models, results, calibration, laps, rates, out, folders or {}, pair_fid)
    if inception:
        lines.append(f"| FID Inception features, batch 500, fp32 | {feature_rate:,.0f} img/s |")
    table = "\n".join(lines)
    print(table)
    atomic_write_text(table + "\n", out / f"results{sfx}.md")
    atomic_write_text(json.dumps({f"{n}@{k}": v for (n, k), v in results.items()} | {"calibration": calibration}
                                 | ({} if pair_fid is None else {"pairs": pair_fid[1]}), indent=1),
                      out / f"results{sfx}.json")
    _figure(models, grids, results, out / f"samples{sfx}.png")
    print(f"tables and grids in {out}/: results{sfx}.md, samples{sfx}.png")
    return results


def _pairs_fid(cfg, pair_dir: Path, schedule, stats, inception, device) -> tuple[str, float | None] | None:
    """(what, FID) of the pairs' clean samples, the first --fid_n: the data every student learns from; None without
    a pair directory. FID None: no Inception file, or fewer pairs than --fid_n."""
    if not (pair_dir / "manifest.json").exists():
        return None
    try:
        pairs = load_pairs(pair_dir, schedule, (3, 32, 32), limit=cfg.fid_n)
    except (FileNotFoundError, ValueError) as err:          # a shard deleted or damaged: the models' FIDs still count
        print(f"the pairs' own FID is skipped: {err}")
        return f"the pairs' x̂0 (not scored: {pair_dir} is incomplete or damaged, see the log)", None
    c = pairs.config
    short = len(pairs.eps) < cfg.fid_n
    what = (f"the pairs' x̂0 (the first {len(pairs.eps):,}: the teacher's {c['solver']}, {c['steps']} steps through "
            f"{c['phases']} phase{'s' * (c['phases'] > 1)}, from their own noise"
            + (f"; fewer than --fid_n={cfg.fid_n}, not scored)" if short and inception is not None else ")"))
    if inception is None or short:
        return what, None
    from .fid import fid
    return what, fid(to_uint8(pairs.x_path[:, -1]), *stats, inception, device=device, progress=False)


def logged_rate(run_dir: Path) -> float:
    """Median img/s of a training log's lines, the first (compilation, warm-up) left out."""
    log = run_dir / "log.txt"
    rates = [float(line.split(" | ")[3].split()[0]) for line in log.read_text().splitlines()
             if line.startswith("step ")] if log.exists() else []
    return torch.tensor(rates[1:] or rates).median().item() if rates else float("nan")


def _fmt(v):
    return "—" if v is None else f"{v:.2f}"


def _tables(cfg, images, models, results, calibration, laps, rates, out, folders, pair_fid=None) -> list[str]:
    cols = sorted({k for (_, k) in results})
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    data = "random images" if cfg.data == "random" else f"{len(images)} CIFAR-10 train images ({Path(cfg.data).name})"
    head = f"FID-{cfg.fid_n / 1000:g}k against {data}" if cfg.inception else f"FID skipped (--inception=''), {data}"
    sampler = cfg.sampler + (" (dpm++2m at 2 calls)" if cfg.sampler == "dpm++3m" else "")
    lines = [f"{head}; {cfg.unet} UNet, teacher form {cfg.form}; {gpu}; sampling: dpm++1 at 1 call, {sampler} "
             f"on the {cfg.grid} grid above, phased students one dpm++1 step per phase", "",
             "| model | " + " | ".join(f"{k} call{'s' * (k > 1)}" for k in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {n} | " + " | ".join(_fmt(results.get((n, k))) for k in cols) + " |" for n in models]
    ratio = lambda a, b: "—" if a is None or b is None else f"{a / b:.2f}"                    # noqa: E731
    ref = results.get(("teacher", max(k for (n, k) in results if n == "teacher")))
    lines += ["", "| ratio | value |", "|---|---|"]
    for k in (1, 2, 4):
        if ("rd", k) in results and ("rf", k) in results:
            lines.append(f"| RD ÷ RF at {k} call{'s' * (k > 1)} | {ratio(results[('rd', k)], results[('rf', k)])} |")
    for (n, k), v in results.items():
        if n == "rd" and k in (1, 2) or is_phased(n):
            lines.append(f"| {n} at {k} ÷ teacher at its most calls | {ratio(v, ref)} |")
    if pair_fid is not None:
        lines += ["", "| the students' data | FID |", "|---|---|", f"| {pair_fid[0]} | {_fmt(pair_fid[1])} |"]
    if calibration is not None:
        lines += ["", f"Calibration: FID(CIFAR-10 test vs train) = {calibration:.4f} (3.11 on the JPEG copy)"]
    lines += ["", "| stage (summed over invocations) | minutes |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in laps.minutes.items()] + [f"| all | {sum(laps.minutes.values()):.2f} |"]
    amp = "bf16" if gpu != "cpu" else "fp32"
    lines += ["", "| throughput | rate |", "|---|---|",
              f"| teacher training, batch {cfg.batch}, {amp}{', compiled' if cfg.compile and gpu != 'cpu' else ''} | "
              f"{logged_rate(out / 'teacher'):,.0f} img/s |"]
    lines += [f"| {n} training, batch {cfg.batch}, {amp} | {logged_rate(folders.get(n, out / n)):,.0f} img/s |"
              for n in models if n != "teacher"]
    rate_file = out / "pairs_rate.json"
    if rate_file.exists():
        r = json.loads(rate_file.read_text())
        lines.append(f"| pair generation ({cfg.pair_steps} steps, {amp}, {r.get('processes', 1)} process(es)) | "
                     f"{r['pairs'] / r['seconds']:,.0f} pairs/s |")
    batch = min(2500, cfg.fid_n)                                                      # as sampling_rate draws it
    lines += [f"| teacher sampling, {k} call{'s' * (k > 1)}, batch {batch}, {amp}, steady state | {v:,.0f} img/s |"
              for k, v in rates.items()]
    return lines


def _figure(models, grids, results, path):
    """One 8 × 8 grid per (model, calls): rows are models, columns call counts."""
    cols = sorted({k for (_, k) in grids})
    fig = Figure(figsize=(2.6 * len(cols), 2.8 * len(models)))
    axes = fig.subplots(len(models), len(cols), squeeze=False)
    for i, name in enumerate(models):
        for j, k in enumerate(cols):
            axes[i, j].axis("off")
            if (name, k) in grids:
                axes[i, j].imshow(tile(grids[(name, k)]))
                axes[i, j].set_title(f"{name}, {k} call{'s' * (k > 1)}, FID {_fmt(results[(name, k)])}", fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=80))
