"""Several GPUs, one process each (torchrun): who am I, wait for the others, average across processes.

    torchrun --nproc_per_node=2 train_sd.py         # WORLD_SIZE, RANK, LOCAL_RANK come from torchrun
    ctx = rd.dist.init()                            # NCCL process group, this process's GPU; a no-op for one process

With one process (python train_sd.py, every CPU run, the tests) every helper here is a no-op, so the library's
code paths are the same as without torchrun. rd.train wraps the network in DistributedDataParallel and splits each
batch over the processes; rd.rectify.generate_pairs splits the shards by rank. Both seed each unit of work (a step, a
shard) by stream_seed, so the numbers do not depend on how the work was split or interrupted; evaluation draws its
noise from named streams (named_noise), which no unit of work shares.
"""
import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int = 0                  # this process among all
    world: int = 1                 # processes
    local_rank: int = 0            # this process on its machine: its GPU index
    device: str = "cpu"

    @property
    def main(self) -> bool:
        """The process that writes files, logs and shows progress bars."""
        return self.rank == 0


def stream_seed(seed: int, i: int) -> int:
    """seed·1,000,003 + i: the seed of stream i (a training step, a pair shard) of a run seeded `seed`. The same
    whichever process draws it and however often the run was interrupted; distinct for every (seed, i) with
    seed ≥ 0 and 0 ≤ i < 1,000,003, so runs of nearby seeds share no stream."""
    return seed * 1_000_003 + i


def named_seed(seed: int, name: str) -> int:
    """The seed of the stream called `name` ("eval noise", "grid noise") of a run seeded `seed`: 2^61 + 61 bits of
    SHA-256(name, seed). Above every seed a pair shard (stream_seed) or a training step (stream_seed·world + rank,
    up to 16 processes) draws from in a run seeded below 10^11, so evaluation noise is never a training pair's or a
    step's noise; another name or seed gives another stream."""
    digest = hashlib.sha256(f"{name}\0{seed}".encode()).digest()
    return (1 << 61) | int.from_bytes(digest[:8], "little") >> 3


def named_noise(seed: int, name: str, shape: tuple) -> torch.Tensor:
    """ε ~ N(0, I) of `shape` (float32, CPU) from the stream named_seed(seed, name): the noise an evaluation or a
    figure starts from, which no training pair and no training step draws."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(named_seed(seed, name)))


def global_batch(batch: int, world: int, per_process: bool = False) -> int:
    """Images per optimiser step over all `world` processes: `batch`, split over them (rd.train gives each
    batch // world), or with per_process `batch` on each of them."""
    return batch * (world if per_process else 1)


def env_world() -> int:
    """WORLD_SIZE as torchrun sets it (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(backend: str | None = None) -> Context:
    """Join the process group torchrun described (NCCL on this process's GPU unless `backend` says otherwise, e.g.
    "gloo" for CPU tests); one process: nothing to join, the context of a single process on cuda:0 or the CPU."""
    world = env_world()
    if world == 1:
        return Context(device="cuda" if torch.cuda.is_available() else "cpu")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if backend is None:
        if not torch.cuda.is_available() or torch.cuda.device_count() <= local:
            raise RuntimeError(f"torchrun started {world} processes, but process {rank} finds "
                               f"{torch.cuda.device_count()} CUDA GPUs (it needs GPU {local}); multi-process "
                               f"training runs one process per GPU over NCCL — on a CPU run one process")
        torch.cuda.set_device(local)
        backend = "nccl"
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=torch.device("cuda", local) if backend == "nccl" else None)
    return Context(rank, world, local, f"cuda:{local}" if backend == "nccl" else "cpu")


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def barrier():
    """Wait until every process gets here (nothing with one process)."""
    if active():
        dist.barrier()


def mean(x: torch.Tensor) -> torch.Tensor:
    """x averaged over the processes (x itself with one process)."""
    if not active():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


def finish():
    """Leave the process group (at the end of a torchrun job)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
