"""Rectified Diffusion: pairs from the teacher's ODE, then the teacher's own training on them.  [RD Alg. 4, §2.3]

1. `generate_pairs`: draw ε once, solve the teacher's PF-ODE deterministically (DPM-Solver) from x_{t_max} = σ·ε,
   record the states at K + 1 phase boundaries t_max = b_0 > … > b_K = t_min; with clean=True (the default) the
   last state is the clean sample x̂0 (σ = 0), where rd.sampling.sample ends too. Written as shards plus a manifest:
   seeded per shard (same seed ⇒ same pairs, however often it is interrupted), each shard written atomically,
   finished shards skipped on resume.
2. `load_pairs` checks the directory against what the caller expects (schedule, data shape, completeness,
   checksums) and refuses anything else.
3. `pair_batches` feeds the ordinary denoising loss with (x0, ε, t). Each phase's pair is the one whose forward path
   passes through the teacher's states at both ends of the phase  [RD §2.3, PeRF]:
       z = x/α, r = σ/α:   ε_ph = (z_s − z_e)/(r_s − r_e),   x0_ph = z_e − r_e·ε_ph;
   with K = 1 this is [RD Alg. 4]'s (x̂0, ε), made exact at both ends (see Pairs.phase_pairs).
   The student then keeps the teacher's schedule, prediction type, network and loss: k rounds of this are
   k-rectified. `flow_student` is the Rectified-Flow/InstaFlow baseline: the same pairs in the FM form.
4. `sample_phased`: a phased student samples with one first-order step per phase, on `phase_boundaries`, the
   boundaries its pairs were made on.
"""
import copy
import functools
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import dist
from .io import ConfigMismatch, atomic_save, atomic_write_text, fingerprint, progress_off, read_json, sha256
from .predictions import Predictor
from .sampling import classifier_free_guidance, get_grid, sample
from .schedules import FlowMatching, Schedule, late_t, schedule_params
from .solvers import MIN_STEPS, get_solver

STUDENT_TIMES = ("schedule", "uniform", "late")    # students' training times: student_times
HANDOVER = 0.3       # phase_of: the last fraction (in λ) of each phase trained on the next phase's pair

FORMAT = 1


def _write_manifest(out: Path, manifest: dict):
    atomic_write_text(json.dumps(manifest, indent=1), out / "manifest.json")


def read_manifest(pair_dir) -> dict:
    """A pair directory's manifest.json; a damaged one is an UnreadableFile that says to regenerate the pairs."""
    d = Path(pair_dir)
    return read_json(d / "manifest.json", f"delete {d} and make the pairs again (generate_pairs, or the pairs stage)")


def pairs_on_disk(pair_dir) -> int:
    """How many pairs a pair directory's manifest lists as written (0 where there is none yet)."""
    d = Path(pair_dir)
    return sum(s["n"] for s in read_manifest(d)["shards"].values()) if (d / "manifest.json").exists() else 0


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.pt"


def phase_boundaries(schedule: Schedule, phases: int) -> Tensor:
    """t_max = b_0 > b_1 > … > b_K = t_min, uniform in λ (float64): where the pairs keep the teacher's states, and
    where sample_phased steps.  [RD §2.3]"""
    return get_grid(schedule, phases, "logsnr")


def sample_phased(net, noise: Tensor, schedule: Schedule, pred_type: str, phases: int, callback=None) -> Tensor:
    """A phased student's sample in K = `phases` calls: one first-order step (DPM-Solver++(1)) per phase, from
    x_{b_0} = σ_{b_0}·noise through x_{b_1}, …, the last one onto σ = 0 (the clean sample).  [RD §2.3, PeRF]

    Inside phase k the student was trained on the forward path through the teacher's states at b_k and b_{k+1},
    along which its prediction is constant: one first-order step from b_k lands on b_{k+1} exactly (Theorem 1 of
    [RD]), so a perfect student reproduces the teacher's boundary states. A multistep solver would extrapolate
    across phases, whose predictions differ. The step grid is phase_boundaries(schedule, K)."""
    return sample(net, noise, schedule, pred_type, "dpm++1", phases, grid="logsnr", callback=callback)

# ----------------------------------------------------------------------------


@torch.no_grad()
def solve_path(net, schedule: Schedule, pred_type: str, eps: Tensor, boundaries: Tensor, solver: str, steps: int,
               clean: bool = False):
    """x_{b_0} = σ_{b_0}·ε, then x_{b_{k+1}} = DPM-Solver(x_{b_k}) phase by phase: the teacher's states (B, K+1, ...).

    `steps` solver steps in all, ⌈steps/K⌉ per phase (each phase on its own λ-uniform sub-grid; a multistep solver
    restarts in every phase, and never gets fewer steps than its order needs). clean=True: the last phase's last
    step lands on σ = 0 (rd.solvers, denoise_last), so the last state is the clean sample x̂0."""
    # BEGIN ASSIGNMENT A3.1: the teacher's ODE from σ_T·ε, phase by phase, keeping its state at every boundary — see [RD] Alg. 4 and §2.3
    k = len(boundaries) - 1
    per_phase = max(-(-steps // k), MIN_STEPS.get(solver, 1))
    model, solve = Predictor(net, pred_type, schedule), get_solver(solver)
    x = schedule.sigma(boundaries[0]).item() * eps
    path = [x]
    for i, (b_s, b_e) in enumerate(zip(boundaries[:-1].tolist(), boundaries[1:].tolist())):
        x = solve(model, x, get_grid(schedule, per_phase, "logsnr", t_max=b_s, t_min=b_e), schedule,
                  denoise_last=clean and i == k - 1)
        path.append(x)
    return torch.stack(path, 1)
    # END ASSIGNMENT


def generate_pairs(net, schedule: Schedule, pred_type: str, out_dir, n: int, shape: tuple, *, shard_size: int = 4096,
                   solver: str = "dpm++2m", steps: int = 25, phases: int = 1, seed: int = 0, batch: int = 4096,
                   device="cpu", dtype=torch.float32, progress: bool = True, cond: Tensor | None = None,
                   null_cond: Tensor | None = None, guidance: float = 1.0, clean: bool = True) -> Path:
    """ε ~ N(0, I) once, x̂0 = the teacher's ODE solution from σ_{t_max}·ε: n pairs as shards + manifest.  [RD Alg. 4]

    net(x, t) → prediction of `pred_type`; shape: one sample's shape, e.g. (2,) or (3, 32, 32). Shard i's noise
    comes from its own generator seeded (seed, i) on the CPU: the pairs do not depend on interruptions or on the
    batch size. A second call with the same settings and the same teacher weights resumes (finished shards are
    kept); other settings or another teacher are refused. Under torchrun (rd.dist) process r makes the shards
    i ≡ r (mod W) — the same pairs as one process — and process 0 writes the manifest once all are done (so an
    interrupted multi-process run remakes the shards it had made; a finished one is kept).

    Conditional teachers: net(x, t, c) with `cond` (n, ...) — pair i solves the ODE for prompt cond[i], guided by
    classifier-free guidance of scale `guidance` against `null_cond` (one unbatched null condition) when
    guidance ≠ 1, as [RD] made SD's pairs; the shards keep cond, so the student learns the guided ODE.
    clean=True ends every path on the clean sample (σ = 0) instead of x_{t_min}.
    """
    if n < 1 or shard_size < 1 or phases < 1 or steps < phases:
        raise ValueError(f"need n ≥ 1, shard_size ≥ 1, phases ≥ 1 and steps ≥ phases; got n={n}, "
                         f"shard_size={shard_size}, phases={phases}, steps={steps}")
    if cond is not None and len(cond) != n:
        raise ValueError(f"cond must hold one condition per pair: {len(cond)} conditions for n={n} pairs")
    if guidance != 1.0 and (cond is None or null_cond is None):
        raise ValueError("classifier-free guidance (guidance ≠ 1) needs cond and null_cond")
    if not math.isfinite(guidance):
        raise ValueError(f"guidance must be a finite number; got {guidance}")
    get_solver(solver)
    rank, world = dist.rank(), dist.world()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    boundaries = phase_boundaries(schedule, phases)
    config = {"schedule": schedule.name, "schedule_params": schedule_params(schedule), "teacher": fingerprint(net),
              "pred_type": pred_type, "shape": list(shape), "n": n,
              "shard_size": shard_size, "solver": solver, "steps": steps, "phases": phases, "seed": seed,
              "boundaries": boundaries.tolist(), "guidance": guidance, "clean": clean,
              "cond": None if cond is None else hashlib.sha256(cond.cpu().numpy().tobytes()).hexdigest()}
    manifest = {"format": FORMAT, "config": config, "shards": {}}
    if (out / "manifest.json").exists():
        old = read_manifest(out)
        if old.get("format") != FORMAT or old.get("config") != config:
            diff = {k: (old.get("config", {}).get(k), v) for k, v in config.items() if old.get("config", {}).get(k) != v}
            raise ConfigMismatch(f"{out} holds pairs made with other settings (old, new): {diff}; "
                             f"use another directory, or delete this one to regenerate")
        manifest["shards"] = old["shards"]
    n_shards = (n + shard_size - 1) // shard_size
    for i in tqdm(range(rank, n_shards, world), desc=f"pairs → {out}", disable=progress_off(not progress or rank != 0)):
        name = shard_name(i)
        if name in manifest["shards"] and (out / name).exists():
            continue                                                   # finished by an earlier call
        m = min(shard_size, n - i * shard_size)
        g = torch.Generator().manual_seed(dist.stream_seed(seed, i))
        eps = torch.randn((m, *shape), generator=g)
        c = None if cond is None else cond[i * shard_size:i * shard_size + m]
        paths = []
        for j in range(0, m, batch):
            e = eps[j:j + batch].to(device=device, dtype=dtype)
            paths.append(solve_path(_conditioned(net, c, j, batch, null_cond, guidance, device), schedule, pred_type,
                                    e, boundaries, solver, steps, clean).cpu())
        x_path = torch.cat(paths).float()
        if not torch.isfinite(x_path).all():
            bad = (~torch.isfinite(x_path)).sum().item()
            raise FloatingPointError(
                f"pairs: shard {name} would hold {bad:,} non-finite values of {x_path.numel():,}: the teacher's ODE "
                f"diverged ({solver}, {steps} steps, guidance {guidance:g}). Nothing was written for it; check the "
                "teacher checkpoint (does it sample finite images?) and the guidance scale.")
        atomic_save({"eps": eps, "x_path": x_path} | ({} if c is None else {"cond": c.cpu()}), out / name)
        if world == 1:
            manifest["shards"][name] = {"n": m, "sha256": sha256(out / name)}
            _write_manifest(out, manifest)
    if world > 1:                          # all shards are on disk (atomic writes): process 0 lists them
        dist.barrier()
        if rank == 0:
            for i in range(n_shards):
                name = shard_name(i)
                if name not in manifest["shards"]:
                    manifest["shards"][name] = {"n": min(shard_size, n - i * shard_size), "sha256": sha256(out / name)}
            _write_manifest(out, manifest)
        dist.barrier()
    return out


def _conditioned(net, c, start, batch, null_cond, guidance, device):
    """net itself, or (x, t) ↦ net(x, t, c_batch), guided by CFG when guidance ≠ 1."""
    if c is None:
        return net
    cb = c[start:start + batch].to(device)
    if guidance == 1.0:
        return lambda x, t: net(x, t, cb)
    return classifier_free_guidance(net, cb, null_cond.to(device).expand(len(cb), *null_cond.shape), guidance)

# ----------------------------------------------------------------------------


@dataclass
class Pairs:
    """A loaded pair directory: the noises, the teacher's states at the phase boundaries, and the settings."""
    eps: Tensor          # (N, *shape): the noise that started each teacher trajectory
    x_path: Tensor       # (N, K+1, *shape): teacher states at the phase boundaries; x_path[:, -1] is x̂0
    boundaries: Tensor   # (K+1,) float64, t_max … t_min (the last state is at σ = 0 instead when config["clean"])
    config: dict         # the manifest's settings
    cond: Tensor | None = None   # (N, ...): each pair's condition (prompt tokens), None for unconditional pairs

    def to(self, device) -> "Pairs":
        """The same pairs on `device` (the batches are then drawn there too)."""
        return Pairs(self.eps.to(device), self.x_path.to(device), self.boundaries.to(device), self.config,
                     None if self.cond is None else self.cond.to(device))

    def coarsen(self, k: int) -> "Pairs":
        """The K = k view of pairs made with K phases (k divides K): every (K/k)-th boundary — one generation serves
        RD (k = 1), RF and phased RD of every k that divides K (the λ-uniform boundaries of k phases are these)."""
        K = len(self.boundaries) - 1
        if k < 1 or K % k:
            raise ValueError(f"these pairs have {K} phases; a view of k phases needs k ≥ 1 dividing {K}, got k={k}")
        keep = torch.arange(0, K + 1, K // k)
        return Pairs(self.eps, self.x_path[:, keep.to(self.x_path.device)], self.boundaries[keep], self.config,
                     self.cond)

    def endpoints(self) -> "Pairs":
        """The K = 1 view of phased pairs: (ε, the teacher's first and last states)."""
        return self.coarsen(1)

    def phase_pairs(self, schedule: Schedule) -> tuple[Tensor, Tensor]:
        """(x0_ph, ε_ph), each (N, K, *shape): the pair whose forward path α_t·x0 + σ_t·ε passes through the
        teacher's states at both ends of each phase (z is linear in r along such a path).

        K = 1 is [RD Alg. 4]'s (x̂0, ε), made exact at the ends: x_{t_max} = σ_T·ε is where sampling starts,
        but α_T·x̂0 + σ_T·ε is not, so ε_ph = ε − (α_T/σ_T)·x̂0 and x0_ph = x̂0 (clean pairs; pairs that end at
        t_min add O(σ_min)). The shift is small (α_T/σ_T = 0.07 for SD's schedule), and it is where an ε-prediction
        model is least forgiving. Clean pairs end at σ = 0: there r = 0 and z = x̂0 (α = 1 at the data end).
        """
        # BEGIN ASSIGNMENT A3.2: the pair (x0_ph, ε_ph) whose forward path passes through the teacher's states at both ends of each phase — see the docstring, [RD] §2.3
        c = schedule(self.boundaries)
        alpha, r = c.alpha.clone(), c.sigma / c.alpha
        if self.config.get("clean"):
            alpha[-1], r[-1] = 1.0, 0.0                                                    # the clean end, σ = 0
        view = (1, -1) + (1,) * (self.eps.dim() - 1)
        z = self.x_path.double() / alpha.view(view)                                         # (N, K+1, ...)
        r = r.view(view)
        eps_ph = (z[:, :-1] - z[:, 1:]) / (r[:, :-1] - r[:, 1:])
        return (z[:, 1:] - r[:, 1:] * eps_ph).float(), eps_ph.float()
        # END ASSIGNMENT


def load_pairs(pair_dir, schedule: Schedule | None = None, shape: tuple | None = None,
               limit: int | None = None) -> Pairs:
    """Pairs from a finished directory; a clear error for another schedule or shape, or a shard missing,
    unfinished or corrupt (a student never trains on wrong data). limit: only the first `limit` pairs, read from
    the shards that hold them (an evaluation of the pairs' own samples needs no more)."""
    d = Path(pair_dir)
    if not (d / "manifest.json").exists():
        raise FileNotFoundError(f"{d} has no manifest.json: not a pair directory (make one with generate_pairs)")
    manifest = read_manifest(d)
    cfg = manifest["config"]
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{d} was written in pair format {manifest.get('format')}, this rd reads format {FORMAT}")
    if schedule is not None and cfg["schedule_params"] != schedule_params(schedule):
        raise ValueError(f"{d} holds pairs of schedule {cfg['schedule']!r} {cfg['schedule_params']}, not "
                         f"{schedule.name!r} {schedule_params(schedule)}: a student trains on its own teacher's pairs")
    if shape is not None and list(shape) != cfg["shape"]:
        raise ValueError(f"{d} holds samples of shape {tuple(cfg['shape'])}, not {tuple(shape)}")
    n_shards = (cfg["n"] + cfg["shard_size"] - 1) // cfg["shard_size"]
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 pair, got {limit}")
    n = cfg["n"] if limit is None else min(limit, cfg["n"])
    eps, paths, conds = [], [], []
    for i in range((n + cfg["shard_size"] - 1) // cfg["shard_size"]):
        name = shard_name(i)
        if name not in manifest["shards"] or not (d / name).exists():
            raise FileNotFoundError(f"{d}/{name} is missing or unfinished ({len(manifest['shards'])} of {n_shards} "
                                    f"shards done); rerun generate_pairs with the same settings to finish it")
        if sha256(d / name) != manifest["shards"][name]["sha256"]:
            raise ValueError(f"{d}/{name} is corrupt (checksum differs from the manifest); delete it and rerun "
                             f"generate_pairs with the same settings to regenerate it")
        shard = torch.load(d / name, map_location="cpu", weights_only=True)
        eps.append(shard["eps"])
        paths.append(shard["x_path"])
        conds.append(shard.get("cond"))
    cond = torch.cat(conds)[:n] if conds[0] is not None else None
    return Pairs(torch.cat(eps)[:n], torch.cat(paths)[:n], torch.tensor(cfg["boundaries"], dtype=torch.float64), cfg,
                 cond)


def phase_of(pairs: Pairs, schedule: Schedule, t: Tensor, handover: float = HANDOVER) -> Tensor:
    """k with b_{k+1} < t ≤ b_k, moved to k + 1 in the last `handover` fraction (in λ) of phase k.  [RD §2.3]

    The sampler queries phase k only at its start b_k, where x_{b_k} is also the end of phase k − 1 with a
    different pair. Trained right up to b_k, a smooth network blends both targets there; handing the end of each
    phase to the next puts every query inside its own phase's training window (RESULTS.md, "Phase handover"; swept
    in "phased RD's handover": in 2D, 0.6 suits K = 4 and 0.15–0.25 K = 2, similar widths in λ).
    """
    b, k = pairs.boundaries, len(pairs.boundaries) - 1
    phase = (torch.searchsorted(-b, -t) - 1).clamp(0, k - 1)
    if k == 1:
        return phase
    lam_b = schedule.lam(b)
    frac = (schedule.lam(t.clamp(b[-1].item(), b[0].item())) - lam_b[phase]) / (lam_b[phase + 1] - lam_b[phase])
    return torch.where(frac > 1 - handover, (phase + 1).clamp(max=k - 1), phase)


def handover_problem(handover: float) -> str | None:
    """What is wrong with a handover for phase_of, as a flag's error says it; None for one in [0, 1)."""
    return None if 0 <= handover < 1 else "a fraction of a phase in [0, 1): 0 trains each phase right up to its end"


def pair_batches(pairs: Pairs, schedule: Schedule, handover: float = HANDOVER, sample_t=None):
    """(x0_ph, ε_ph, t) batches: t ~ the teacher's training times, the pair of phase_of(t).  [RD Alg. 4, §2.3]

    sample_t(n, generator, device) → t replaces the training times (default schedule.sample_t); t outside
    [t_min, t_max] uses the nearest phase. Conditional pairs give (x0_ph, ε_ph, t, cond)."""
    if pairs.config["schedule_params"] != schedule_params(schedule):
        raise ValueError(f"pairs of schedule {pairs.config['schedule']!r} cannot train a {schedule.name!r} student "
                         f"in the teacher's form")
    x0_ph, eps_ph = pairs.phase_pairs(schedule)

    sample_t = sample_t or schedule.sample_t

    def batch(n, generator):
        idx = torch.randint(0, x0_ph.shape[0], (n,), generator=generator, device=x0_ph.device)
        t = sample_t(n, generator, device=x0_ph.device)
        phase = phase_of(pairs, schedule, t, handover)
        out = x0_ph[idx, phase], eps_ph[idx, phase], t
        return out if pairs.cond is None else (*out, pairs.cond[idx])
    return batch


def phase_start_t(boundaries: Tensor, n: int, generator=None, device=None) -> Tensor:
    """t towards each phase's start b_k, where sample_phased queries the student: phase k with probability
    (b_k − b_{k+1})/(b_0 − b_K), as uniform t gives it, then t = b_k − (b_k − b_{k+1})·u², u ~ U(0, 1), which is
    (1.10) inside the phase (float64)."""
    b = boundaries.to(device=device, dtype=torch.float64)
    width = b[:-1] - b[1:]                                                     # (K,)
    k = torch.multinomial(width, n, replacement=True, generator=generator)      # (n,)
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
    return b[:-1][k] - width[k] * u.square()


def student_times(choice: str, schedule: Schedule, phases: int = 1):
    """sample_t(n, generator, device) → t for a student's batches on `schedule` by a choice of STUDENT_TIMES, or None.

    schedule: None (the form's own times); uniform: uniform t (None on FM, whose own times are uniform); late: towards
    where the student is queried: rd.schedules.late_t for a plain student (phases 1), towards t_max, and for a phased
    one phase_start_t on phase_boundaries(schedule, phases), towards each phase's start."""
    if choice == "late":
        return functools.partial(late_t, schedule) if phases == 1 else \
            functools.partial(phase_start_t, phase_boundaries(schedule, phases))
    if choice == "uniform" and schedule.name != "fm":
        return functools.partial(Schedule.sample_t, schedule)
    return None


def rectify(model, schedule: Schedule, pred_type: str, train_fn, pair_dir, n: int, shape: tuple, rounds: int = 1,
            phases: int = 1, seed: int = 0, **pair_kw):
    """model_{i+1} = train_fn(copy of model_i, pairs of model_i), i = 1..rounds: k-rectified.  [RD Alg. 4]

    Each round draws fresh noise (seed + i) into pair_dir/round<i> and trains in the teacher's own form;
    train_fn(student, batches) → trained student (e.g. rd.toy.train_toy)."""
    # BEGIN ASSIGNMENT A3.3: k rounds of rectification: pairs from the current model, then a copy of it trained on them in its own form — see [RD] Alg. 4
    for i in range(1, rounds + 1):
        d = generate_pairs(model, schedule, pred_type, Path(pair_dir) / f"round{i}", n, shape, phases=phases,
                           seed=seed + i, **pair_kw)
        model = train_fn(copy.deepcopy(model), pair_batches(load_pairs(d, schedule, shape), schedule))
    return model
    # END ASSIGNMENT


def flow_batches(pairs: Pairs, fm: Schedule, sample_t=None):
    """x_t = (1 − t)·x̂0 + t·ε on the teacher's pairs (x̂0 = its x_{t_min}), t from FM's times or sample_t.  [RF, InstaFlow]

    The raw pair of [RD Alg. 4]: FM samples from x_{0.999} = 0.999·ε, which this path meets up to 0.001·x̂0, so
    it needs no endpoint correction (unlike the teacher's form: see Pairs.phase_pairs). Conditional pairs add cond;
    sample_t(n, generator, device) → t replaces FM's training times (uniform), as in pair_batches."""
    x0, eps, sample_t = pairs.x_path[:, -1], pairs.eps, sample_t or fm.sample_t

    def batch(n, generator):
        idx = torch.randint(0, x0.shape[0], (n,), generator=generator, device=x0.device)
        out = x0[idx], eps[idx], sample_t(n, generator, device=x0.device)
        return out if pairs.cond is None else (*out, pairs.cond[idx])
    return batch


def flow_student(teacher):
    """RF / InstaFlow: the teacher's weights, reinterpreted in the FM form with velocity prediction.  [RF, InstaFlow]"""
    student = copy.deepcopy(teacher)
    student.schedule, student.pred_type = FlowMatching(), "flow"
    return student
