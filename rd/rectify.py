"""Rectified Diffusion: pairs from the teacher's ODE, then the teacher's own training on them.  [RD Alg. 4, §2.3]

1. `generate_pairs`: draw ε once, solve the teacher's PF-ODE deterministically (DPM-Solver) from x_{t_max} = σ·ε,
   record the states at K + 1 phase boundaries t_max = b_0 > … > b_K = t_min. Written as shards plus a manifest:
   seeded per shard (same seed ⇒ same pairs, however often it is interrupted), each shard written atomically,
   finished shards skipped on resume.
2. `load_pairs` checks the directory against what the caller expects (schedule, data shape, completeness,
   checksums) and refuses anything else.
3. `pair_batches` feeds the ordinary denoising loss with (x0, ε, t): for K = 1 the pair is (x̂0, ε) of [RD Alg. 4];
   for K phases, the pair of the phase that contains t, from the teacher's endpoints of that phase  [RD §2.3, PeRF]
   (K = 1 uses the same formula on the whole range: see Pairs.phase_pairs):
       z = x/α, r = σ/α:   ε_ph = (z_s − z_e)/(r_s − r_e),   x0_ph = z_e − r_e·ε_ph.
   The student then keeps the teacher's schedule, prediction type, network and loss: k rounds of this are
   k-rectified. `flow_student` is the Rectified-Flow/InstaFlow baseline: the same pairs in the FM form.
"""
import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .predictions import Predictor
from .sampling import get_grid
from .schedules import FlowMatching, Schedule
from .solvers import MIN_STEPS, get_solver

FORMAT = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_save(obj, path: Path):
    """torch.save to a temporary file in the same folder, fsync, then rename: never a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_manifest(out: Path, manifest: dict):
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / "manifest.json")


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.pt"

# ----------------------------------------------------------------------------


@torch.no_grad()
def solve_path(net, schedule: Schedule, pred_type: str, eps: Tensor, boundaries: Tensor, solver: str, steps: int):
    """Teacher states at every boundary, (B, K+1, ...): x_{b_0} = σ_{b_0}·ε, then `steps` solver steps in total,
    split evenly over the K phases (each phase uses its own λ-uniform sub-grid)."""
    k = len(boundaries) - 1
    per_phase = max(steps // k, MIN_STEPS.get(solver, 1))
    model, solve = Predictor(net, pred_type, schedule), get_solver(solver)
    x = schedule.sigma(boundaries[0]).item() * eps
    path = [x]
    for b_s, b_e in zip(boundaries[:-1].tolist(), boundaries[1:].tolist()):
        x = solve(model, x, get_grid(schedule, per_phase, "logsnr", t_max=b_s, t_min=b_e), schedule)
        path.append(x)
    return torch.stack(path, 1)


def generate_pairs(net, schedule: Schedule, pred_type: str, out_dir, n: int, shape: tuple, *, shard_size: int = 4096,
                   solver: str = "dpm++2m", steps: int = 25, phases: int = 1, seed: int = 0, batch: int = 4096,
                   device="cpu", dtype=torch.float32, progress: bool = True) -> Path:
    """Write n teacher pairs to out_dir as shards with a manifest; resume what an earlier call left unfinished.

    net(x, t) → prediction of `pred_type`; shape: one sample's shape, e.g. (2,) or (3, 32, 32). Shard i's noise
    comes from its own generator seeded (seed, i) on the CPU: the pairs do not depend on interruptions, on the
    batch size or on which device ran which shard.
    """
    if n < 1 or shard_size < 1 or phases < 1 or steps < phases:
        raise ValueError(f"need n ≥ 1, shard_size ≥ 1, phases ≥ 1 and steps ≥ phases; got n={n}, "
                         f"shard_size={shard_size}, phases={phases}, steps={steps}")
    get_solver(solver)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    boundaries = get_grid(schedule, phases, "logsnr")
    config = {"schedule": schedule.name, "pred_type": pred_type, "shape": list(shape), "n": n,
              "shard_size": shard_size, "solver": solver, "steps": steps, "phases": phases, "seed": seed,
              "boundaries": boundaries.tolist()}
    manifest = {"format": FORMAT, "config": config, "shards": {}}
    if (out / "manifest.json").exists():
        old = json.loads((out / "manifest.json").read_text())
        if old.get("config") != config:
            diff = {k: (old.get("config", {}).get(k), v) for k, v in config.items() if old.get("config", {}).get(k) != v}
            raise ValueError(f"{out} holds pairs made with other settings (old, new): {diff}; "
                             f"use another directory, or delete this one to regenerate")
        manifest["shards"] = old["shards"]
    n_shards = (n + shard_size - 1) // shard_size
    for i in tqdm(range(n_shards), desc=f"pairs → {out}", disable=not progress):
        name = shard_name(i)
        if name in manifest["shards"] and (out / name).exists():
            continue                                                   # finished by an earlier call
        m = min(shard_size, n - i * shard_size)
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        eps = torch.randn((m, *shape), generator=g)
        paths = [solve_path(net, schedule, pred_type, e.to(device=device, dtype=dtype), boundaries, solver, steps).cpu()
                 for e in eps.split(batch)]
        atomic_save({"eps": eps, "x_path": torch.cat(paths).float()}, out / name)
        manifest["shards"][name] = {"n": m, "sha256": _sha256(out / name)}
        _write_manifest(out, manifest)
    return out

# ----------------------------------------------------------------------------


@dataclass
class Pairs:
    eps: Tensor          # (N, *shape): the noise that started each teacher trajectory
    x_path: Tensor       # (N, K+1, *shape): teacher states at the phase boundaries; x_path[:, -1] is x̂0
    boundaries: Tensor   # (K+1,) float64, t_max … t_min
    config: dict         # the manifest's settings

    def phase_pairs(self, schedule: Schedule) -> tuple[Tensor, Tensor]:
        """(x0_ph, ε_ph), each (N, K, *shape): the pair whose forward path α_t·x0 + σ_t·ε passes through the
        teacher's states at both ends of each phase (z is linear in r along such a path).

        K = 1 is [RD Alg. 4]'s (x̂0, ε), made exact at the ends: x_{t_max} = σ_T·ε is where sampling starts,
        but α_T·x̂0 + σ_T·ε is not, so ε_ph = ε − (α_T/σ_T)·x̂0 + O(σ_min) and x0_ph = x̂0 + O(σ_min) (x̂0 = the
        teacher's x_{t_min}). The shift is small (α_T/σ_T = 0.07 for SD's schedule), and it is where an
        ε-prediction model is least forgiving.
        """
        c = schedule(self.boundaries)
        view = (1, -1) + (1,) * (self.eps.dim() - 1)
        z = self.x_path.double() / c.alpha.view(view)                                       # (N, K+1, ...)
        r = (c.sigma / c.alpha).view(view)
        eps_ph = (z[:, :-1] - z[:, 1:]) / (r[:, :-1] - r[:, 1:])
        return (z[:, 1:] - r[:, 1:] * eps_ph).float(), eps_ph.float()


def load_pairs(pair_dir, schedule: Schedule | None = None, shape: tuple | None = None) -> Pairs:
    """Read a finished pair directory, refusing one from another schedule or shape, or with a shard missing,
    unfinished or corrupt."""
    d = Path(pair_dir)
    if not (d / "manifest.json").exists():
        raise FileNotFoundError(f"{d} has no manifest.json: not a pair directory (make one with generate_pairs)")
    manifest = json.loads((d / "manifest.json").read_text())
    cfg = manifest["config"]
    if schedule is not None and cfg["schedule"] != schedule.name:
        raise ValueError(f"{d} holds pairs of schedule {cfg['schedule']!r}, not {schedule.name!r}: a student "
                         f"trains on its own teacher's pairs (RF students too: they convert the same pairs)")
    if shape is not None and list(shape) != cfg["shape"]:
        raise ValueError(f"{d} holds samples of shape {tuple(cfg['shape'])}, not {tuple(shape)}")
    n_shards = (cfg["n"] + cfg["shard_size"] - 1) // cfg["shard_size"]
    eps, paths = [], []
    for i in range(n_shards):
        name = shard_name(i)
        if name not in manifest["shards"] or not (d / name).exists():
            raise FileNotFoundError(f"{d}/{name} is missing or unfinished ({len(manifest['shards'])} of {n_shards} "
                                    f"shards done); rerun generate_pairs with the same settings to finish it")
        if _sha256(d / name) != manifest["shards"][name]["sha256"]:
            raise ValueError(f"{d}/{name} is corrupt (checksum differs from the manifest); delete it and rerun "
                             f"generate_pairs with the same settings to regenerate it")
        shard = torch.load(d / name, map_location="cpu", weights_only=True)
        eps.append(shard["eps"])
        paths.append(shard["x_path"])
    return Pairs(torch.cat(eps), torch.cat(paths), torch.tensor(cfg["boundaries"], dtype=torch.float64), cfg)


def phase_of(pairs: Pairs, schedule: Schedule, t: Tensor, handover: float = 0.3) -> Tensor:
    """Which phase's pair trains time t: the phase containing t, except that the last `handover` fraction (in λ) of
    each phase goes to the next phase.

    The sampler queries phase k only at its start b_k, where x_{b_k} is also the end of phase k − 1 with a
    different pair. Trained right up to b_k, a smooth network blends both targets there (measured on the VP/ε
    teacher, K = 4: the second phase's one-step error stayed at 0.39 of the teacher's 0.50); handing the end of each
    phase to the next puts every query inside its own phase's training window (error 0.04).
    """
    b, k = pairs.boundaries, len(pairs.boundaries) - 1
    phase = (torch.searchsorted(-b, -t) - 1).clamp(0, k - 1)
    if k == 1:
        return phase
    lam_b = schedule.lam(b)
    frac = (schedule.lam(t.clamp(b[-1].item(), b[0].item())) - lam_b[phase]) / (lam_b[phase + 1] - lam_b[phase])
    return torch.where(frac > 1 - handover, (phase + 1).clamp(max=k - 1), phase)


def pair_batches(pairs: Pairs, schedule: Schedule, handover: float = 0.3):
    """Batches (x0, ε, t) for the student: t from the teacher's own training distribution, (x0, ε) the pair of the
    phase that trains t (`phase_of`; t outside [t_min, t_max] uses the nearest phase)."""
    if pairs.config["schedule"] != schedule.name:
        raise ValueError(f"pairs of schedule {pairs.config['schedule']!r} cannot train a {schedule.name!r} student "
                         f"in the teacher's form")
    x0_ph, eps_ph = pairs.phase_pairs(schedule)

    def batch(n, generator):
        idx = torch.randint(0, x0_ph.shape[0], (n,), generator=generator)
        t = schedule.sample_t(n, generator)
        phase = phase_of(pairs, schedule, t, handover)
        return x0_ph[idx, phase], eps_ph[idx, phase], t
    return batch


def rectify(model, schedule: Schedule, pred_type: str, train_fn, pair_dir, n: int, shape: tuple, rounds: int = 1,
            phases: int = 1, **pair_kw):
    """k-rectified [RD Alg. 4]: each round draws pairs from the current model (pair_dir/round<i>) and trains a copy of
    it on them in the same form. train_fn(student, batches) → trained student (e.g. rd.toy.train_toy)."""
    for i in range(1, rounds + 1):
        d = generate_pairs(model, schedule, pred_type, Path(pair_dir) / f"round{i}", n, shape, phases=phases, **pair_kw)
        model = train_fn(copy.deepcopy(model), pair_batches(load_pairs(d, schedule, shape), schedule))
    return model


def flow_batches(pairs: Pairs, schedule: Schedule, fm: Schedule):
    """The Rectified-Flow baseline's batches: the same pairs (x0, ε) as the RD student's (single phase),
    on FM's straight path x_t = (1 − t)·x0 + t·ε with FM's training times."""
    if len(pairs.boundaries) != 2:
        raise ValueError("the RF baseline trains on single-phase pairs (phases=1)")
    x0, eps = (p[:, 0] for p in pairs.phase_pairs(schedule))

    def batch(n, generator):
        idx = torch.randint(0, x0.shape[0], (n,), generator=generator)
        return x0[idx], eps[idx], fm.sample_t(n, generator)
    return batch


def flow_student(teacher):
    """RF / InstaFlow: the teacher's weights, reinterpreted in the FM form with velocity prediction.  [RF, InstaFlow]"""
    student = copy.deepcopy(teacher)
    student.schedule, student.pred_type = FlowMatching(), "flow"
    return student
