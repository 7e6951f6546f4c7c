"""Two processes (gloo on the CPU, as torchrun would start them): the pairs are the same as one process makes,
DistributedDataParallel training over two halves of each batch equals one process on the whole batch, and a SIGTERM
that reaches one process stops both at the same step."""
import os
import signal
import socket

import pytest
import torch
import torch.multiprocessing as mp

from rd import dist
from rd.mixture import ring_mixture
from rd.rectify import generate_pairs, load_pairs
from rd.schedules import get_schedule
from rd.train import TrainConfig, train
from rd.unet import UNet, UNetConfig

pytestmark = pytest.mark.e2e              # an end-to-end run: `-m "not e2e"` leaves it out (tests/conftest.py)

WORLD = 2
CFG = dict(steps=4, batch=8, lr=1e-3, warmup=2, log_every=2, ckpt_every=2, amp="fp32", channels_last=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(fn, *args):
    port = free_port()
    mp.spawn(_worker, args=(fn, port, args), nprocs=WORLD, join=True)


def _worker(rank, fn, port, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = dist.init(backend="gloo")
    try:
        fn(ctx, *args)
    finally:
        dist.finish()


def fixed_batches(schedule):
    """Each process takes its slice of one fixed global batch (whatever the generator): the global batch is then
    the same with one or two processes, so the training runs must agree."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(CFG["batch"], 3, 32, 32, generator=g) * 2 - 1
    eps, t = torch.randn(x0.shape, generator=g), schedule.sample_t(CFG["batch"], g)

    def batch(n, _generator):
        part = slice(dist.rank() * n, (dist.rank() + 1) * n)
        return x0[part], eps[part], t[part], None
    return batch


def tiny_net():
    torch.manual_seed(0)
    return UNet(UNetConfig.preset("tiny"))


def _everything(ctx, folder):
    """What each of the two processes runs (one spawn for all tests: starting processes costs seconds)."""
    s = get_schedule("vp-sd")
    generate_pairs(ring_mixture().net(s, "eps"), s, "eps", folder / "pairs", n=300, shape=(2,), shard_size=64,
                   steps=6, seed=3, progress=False)
    s = get_schedule("vp-ddpm")
    ema = train(tiny_net(), s, "eps", fixed_batches(s), TrainConfig(**CFG), folder / "train")
    torch.save(ema.state_dict(), folder / "train" / f"ema{ctx.rank}.pt")
    try:
        train(tiny_net(), s, "eps", fixed_batches(s), TrainConfig(**CFG | {"batch": 7}), folder / "bad")
    except ValueError as err:
        if "divisible by the number of processes (2)" in str(err):
            (folder / f"refused{ctx.rank}").touch()
    # SIGTERM reaches process 1 alone, during step 3: both processes stop at the next log line (step 4), together
    batches, calls = fixed_batches(s), [0]

    def terminated_on_process_1(n, g):
        calls[0] += 1
        if ctx.rank == 1 and calls[0] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return batches(n, g)
    try:
        train(tiny_net(), s, "eps", terminated_on_process_1, TrainConfig(**CFG | {"steps": 6, "ckpt_every": 100}),
              folder / "sigterm")
    except SystemExit as stop:
        (folder / f"sigterm{ctx.rank}").write_text(str(stop.code))


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two")
    run_processes(_everything, folder)
    return folder


def test_two_processes_make_the_same_pairs_as_one(two, tmp_path):
    s = get_schedule("vp-sd")
    generate_pairs(ring_mixture().net(s, "eps"), s, "eps", tmp_path / "one", n=300, shape=(2,), shard_size=64,
                   steps=6, seed=3, progress=False)
    one, pair2 = load_pairs(tmp_path / "one", s, (2,)), load_pairs(two / "pairs", s, (2,))   # checks the hashes
    torch.testing.assert_close(one.eps, pair2.eps, rtol=0, atol=0)
    torch.testing.assert_close(one.x_path, pair2.x_path, rtol=0, atol=0)
    assert (tmp_path / "one" / "manifest.json").read_text() == (two / "pairs" / "manifest.json").read_text()


def test_two_processes_train_like_one_on_the_same_global_batch(two, tmp_path):
    s = get_schedule("vp-ddpm")
    one = train(tiny_net(), s, "eps", fixed_batches(s), TrainConfig(**CFG), tmp_path / "one")
    ema0, ema1 = (torch.load(two / "train" / f"ema{r}.pt") for r in range(WORLD))
    for name, a in one.state_dict().items():
        torch.testing.assert_close(ema0[name], ema1[name], rtol=0, atol=0)   # the processes stay in step
        torch.testing.assert_close(ema0[name], a, rtol=1e-3, atol=1e-4)     # and with one process (Adam steps 1e-3)
    log = (two / "train" / "log.txt").read_text().splitlines()              # written once, by process 0
    assert len(log) == 2 and log[-1].startswith("step 4/4 | loss ")


def test_batch_not_divisible_by_the_processes_is_refused(two):
    assert (two / "refused0").exists() and (two / "refused1").exists()
    assert not (two / "bad" / "ckpt.pt").exists()


def test_one_process_needs_no_process_group():
    ctx = dist.init()
    assert (ctx.rank, ctx.world, ctx.main, dist.world(), dist.rank()) == (0, 1, True, 1, 0)
    x = torch.arange(3.0)
    assert dist.mean(x) is x


def test_sigterm_on_one_process_stops_both_at_the_same_step_with_a_checkpoint(two):
    assert [(two / f"sigterm{r}").read_text() for r in range(WORLD)] == ["143", "143"]
    assert torch.load(two / "sigterm" / "ckpt.pt", weights_only=True)["step"] == 4
    assert (two / "sigterm" / "log.txt").read_text().splitlines()[-1] == "train: stopped by SIGTERM at step 4"
