"""CIFAR-10 loading: exact round trips from pickles, PNG folders, .tar.gz; the cache; errors that teach; GPULoader."""
import os
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

import rd.data as data_mod  # the cache test patches the pickle reader here
from rd.data import CIFAR_CLASSES, URL, GPULoader, download, load_cifar10, to_uint8

PER_BATCH = 20


def make_pickles(root, seed=0):
    """A tiny cifar-10-batches-py: 5 train batches + 1 test batch of PER_BATCH random images each."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    out = {"train": [], "test": []}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, PER_BATCH).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"synthetic"}, f)
        out["test" if name == "test_batch" else "train"].append((data.reshape(-1, 3, 32, 32), labels))
    return folder, {k: (np.concatenate([d for d, _ in v]), np.concatenate([l for _, l in v])) for k, v in out.items()}


def make_folder(root, suffix=".png", per_class=2, seed=0):
    """A tiny {train,test}/<class>/NNNN.png folder; returns it and the expected (images, labels) per split, in
    the loader's order (class, then file name)."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(seed)
    expected = {}
    for split in ("train", "test"):
        xs, ys = [], []
        for label, cls in enumerate(CIFAR_CLASSES):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                x = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)        # (H, W, 3)
                Image.fromarray(x).save(root / split / cls / f"{i:04d}{suffix}")
                xs.append(x.transpose(2, 0, 1))
                ys.append(label)
        expected[split] = (np.stack(xs), np.array(ys))
    return root, expected


def make_tar(folder, archive, prefix="cifar10"):
    """folder → archive.tar.gz whose members all start with `prefix/` (as the real offline archive's may)."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=prefix)
    return archive


def assert_same(got, want):
    images, labels = got
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert torch.equal(images, torch.from_numpy(want[0])), "pixels differ: channel order or layout is wrong"
    assert torch.equal(labels, torch.from_numpy(want[1]).long())


#----------------------------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "test"])
def test_pickles_round_trip_exactly(tmp_path, split):
    folder, expected = make_pickles(tmp_path)
    got = load_cifar10(folder, split, strict=False)
    assert got[0].shape == (5 * PER_BATCH if split == "train" else PER_BATCH, 3, 32, 32)
    assert_same(got, expected[split])
    assert_same(load_cifar10(tmp_path, split, strict=False), expected[split])   # the parent folder works too


@pytest.mark.parametrize("split", ["train", "test"])
def test_png_folder_and_its_tar_round_trip_exactly(tmp_path, split):
    folder, expected = make_folder(tmp_path / "imgs")
    assert_same(load_cifar10(folder, split, strict=False), expected[split])
    archive = make_tar(folder, tmp_path / "cifar10-png.tar.gz", prefix="some/prefix")
    assert_same(load_cifar10(archive, split, strict=False), expected[split])


def test_jpeg_tar_shapes_and_labels(tmp_path):
    folder, expected = make_folder(tmp_path / "imgs", suffix=".jpg", per_class=3)
    archive = make_tar(folder, tmp_path / "cifar10-jpg.tar.gz")
    images, labels = load_cifar10(archive, "train", strict=False)
    assert images.shape == (30, 3, 32, 32) and images.dtype == torch.uint8     # JPEG is lossy: no pixel check
    assert torch.equal(labels, torch.arange(10).repeat_interleave(3))
    err = (images.float() - torch.from_numpy(expected["train"][0]).float()).abs().mean()
    assert err < 60, "decoded JPEGs are far from their sources: wrong channel order or transpose?"


def test_cache_is_written_used_and_refreshed(tmp_path, monkeypatch):
    folder, expected = make_pickles(tmp_path / "src")
    cache_dir = tmp_path / "cache"
    assert_same(load_cifar10(folder, "train", cache_dir=cache_dir, strict=False), expected["train"])
    assert (cache_dir / "cifar10_train.npz").exists()
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".")], "temporary file left behind"

    def no_decoding(*args):
        raise AssertionError("the source was decoded again although the cache matches it")
    with monkeypatch.context() as m:                                           # the same source: the cache serves
        m.setattr(data_mod, "_read_pickles", no_decoding)
        assert_same(load_cifar10(folder, "train", cache_dir=cache_dir, strict=False), expected["train"])

    folder2, expected2 = make_pickles(tmp_path / "src", seed=1)               # the source changes: decode again
    os.utime(folder2 / "data_batch_1", ns=(1, 1))
    assert_same(load_cifar10(folder2, "train", cache_dir=cache_dir, strict=False), expected2["train"])

    shutil.rmtree(tmp_path / "src")                                            # the source is gone: the cache serves
    assert_same(load_cifar10(folder, "train", cache_dir=cache_dir, strict=False), expected2["train"])


@pytest.mark.parametrize("in_tar", [False, True])
def test_image_of_wrong_size_names_the_file(tmp_path, in_tar):
    Image = pytest.importorskip("PIL.Image")
    folder, _ = make_folder(tmp_path / "imgs")
    Image.fromarray(np.zeros((32, 31, 3), np.uint8)).save(folder / "train" / "cat" / "odd.png")   # 31 wide
    root = make_tar(folder, tmp_path / "a.tar.gz") if in_tar else folder
    with pytest.raises(ValueError, match=r"odd\.png is 31×32"):
        load_cifar10(root, "train", strict=False)


def test_missing_root_explains_how_to_get_the_data_and_never_downloads(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("load_cifar10 must never download by itself")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(FileNotFoundError, match=r"cs\.toronto\.edu/~kriz/cifar-10-python\.tar\.gz") as info:
        load_cifar10(tmp_path / "nowhere")
    assert "download(" in str(info.value) and "tar.gz" in str(info.value)


def test_download_without_network_says_so(tmp_path, monkeypatch):
    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    with pytest.raises(ConnectionError, match="could not download") as info:
        download(tmp_path / "data")
    assert URL in str(info.value)
    assert not list((tmp_path / "data").iterdir()), "a failed download must leave no partial file"


def test_strict_rejects_a_tiny_set(tmp_path):
    folder, _ = make_pickles(tmp_path)
    with pytest.raises(ValueError, match=r"50,000.*strict=False"):
        load_cifar10(folder, "train")
    with pytest.raises(ValueError, match=r"10,000"):
        load_cifar10(folder, "test", strict=True)


def test_bad_split_and_not_a_dataset(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_cifar10(tmp_path, "val")
    (tmp_path / "stuff").mkdir()
    with pytest.raises(ValueError, match="neither"):
        load_cifar10(tmp_path, "train")


#----------------------------------------------------------------------------
# GPULoader (on CPU here; the same code runs on CUDA).

def dataset(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n)


def match(x, images):
    """For each batch image: the index of the dataset image it equals, and whether it equals it mirrored."""
    u = to_uint8(x)                                                             # exact inverse of x/127.5 − 1
    same = (u[:, None] == images[None]).flatten(2).all(-1)                      # (B, N)
    mirrored = (u[:, None] == images.flip(3)[None]).flatten(2).all(-1)         # (B, N)
    assert ((same | mirrored).sum(1) == 1).all(), "a batch image is neither a dataset image nor its mirror"
    return (same | mirrored).int().argmax(1), mirrored.any(1)


def test_loader_range_epochs_and_labels():
    images, labels = dataset()
    loader = GPULoader(images, labels, batch=16, device="cpu", flip=False)
    batches = [next(loader) for _ in range(3)]                                  # 40 // 16 = 2 per epoch
    for x, y in batches:
        assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1
        idx, mirrored = match(x, images)
        assert not mirrored.any() and torch.equal(labels[idx], y)
    first_epoch = torch.cat([match(x, images)[0] for x, _ in batches[:2]])
    assert len(set(first_epoch.tolist())) == 32, "an epoch must not repeat an image"
    assert loader.epoch == 1
    full = GPULoader(images, labels, batch=40, device="cpu", flip=False)
    x, _ = next(full)
    assert x.min() == -1 and x.max() == 1                                       # 0 ↦ −1, 255 ↦ +1


def test_flips_really_flip():
    images, labels = dataset()
    x, y = next(GPULoader(images, labels, batch=40, device="cpu", flip=True, seed=3))
    idx, mirrored = match(x, images)
    assert sorted(idx.tolist()) == list(range(40)) and torch.equal(labels[idx], y)
    assert 5 < mirrored.sum() < 35, f"{int(mirrored.sum())} of 40 mirrored: flips should be about half"


def test_loader_is_deterministic_per_seed_and_channels_last():
    images, labels = dataset()

    def first_batches(seed, n=7):                                             # 7 × 8 > 40: crosses an epoch
        loader = GPULoader(images, labels, 8, "cpu", seed=seed)
        return [next(loader) for _ in range(n)]
    a, b, c = first_batches(1), first_batches(1), first_batches(2)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))
    x, _ = next(GPULoader(images, labels, 8, "cpu", channels_last=True))
    assert x.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="batch"):
        GPULoader(images, labels, 41, "cpu")


def test_sample_is_a_function_of_the_generator_alone():
    images, labels = dataset()
    loader = GPULoader(images, labels, 8, "cpu", flip=True)
    a = loader.sample(200, torch.Generator().manual_seed(5))
    next(loader)                                                      # iterator state must not matter
    b = loader.sample(200, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    idx, mirrored = match(a[0], images)
    assert torch.equal(labels[idx], a[1]) and len(set(idx.tolist())) > 30, "draws cover the set (with replacement)"
    assert 60 < mirrored.sum() < 140, f"{int(mirrored.sum())} of 200 mirrored: flips should be about half"


def test_to_uint8_inverts_the_loader_map_and_clamps():
    images = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(to_uint8(images.float() / 127.5 - 1), images)
    assert to_uint8(torch.tensor([-3.0, 2.0, 0.0])).tolist() == [0, 255, 128]        # round(127.5) = 128 (half to even)


def test_truncated_or_garbage_archives_and_pickles_name_the_file_and_the_fix(tmp_path):
    """No tarfile/pickle traceback, but the file, what is wrong and what to do."""
    folder, _ = make_folder(tmp_path / "src")
    archive = make_tar(folder, tmp_path / "cifar10.tar.gz")
    (tmp_path / "cut.tar.gz").write_bytes(archive.read_bytes()[:archive.stat().st_size // 2])
    (tmp_path / "junk.tar.gz").write_bytes(b"<html>404 Not Found</html>\n" * 40)
    for name in ("cut.tar.gz", "junk.tar.gz"):
        with pytest.raises(ValueError, match=rf"{name} is not a readable CIFAR-10 archive .*re-download it, or pass "
                                             r"the cifar-10-batches-py folder"):
            load_cifar10(tmp_path / name, "train", strict=False, verbose=False)
    pickles, _ = make_pickles(tmp_path / "p")
    batch = pickles / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"data_batch_3 is not a readable CIFAR-10 batch .*download it again"):
        load_cifar10(pickles, "train", strict=False, verbose=False)
