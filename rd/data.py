"""CIFAR-10 for the diffusion models: pickles, image folder or its .tar.gz → cached uint8 (N, 3, 32, 32); GPU loader.

`load_cifar10(root, split)` reads the official `cifar-10-batches-py` pickles (what `download` unpacks), an image
folder `{train,test}/<class>/*.jpg|png` (class names as CIFAR_CLASSES), or a `.tar.gz` of that folder, streamed
member by member, never unpacked (any prefix before `train/` or `test/`). It decodes once into
`cache_dir/cifar10_<split>.npz` with a fingerprint of the source (paths, sizes, mtimes): a changed source is decoded
again, a removed one is served from the cache. Nothing is downloaded unless you call `download(root)`.
The offline JPEG archive is lossy (quality 75): FID reference statistics must come from the same decoded images.
`GPULoader` keeps the whole uint8 set on the device and yields x0 ∈ [-1, 1] batches with no host work per step.
"""
import hashlib
import os
from io import BytesIO
from pathlib import Path

import numpy as np
import torch

from .io import UnreadableFile, atomic_write, first_line

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"                    # of cifar-10-python.tar.gz, as published on the page
COUNTS = {"train": 50_000, "test": 10_000}                   # images per split; a tenth of that per class
PICKLES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def load_cifar10(root, split="train", cache_dir=None, strict=True, verbose=True):
    """CIFAR-10 `split` from `root` (pickles, image folder, .tar.gz) → images (N, 3, 32, 32) uint8, labels (N,) int64.

    strict=True demands the full split (50,000 train / 10,000 test, balanced); strict=False accepts any size
    (synthetic test sets, subsets). verbose prints one line with the count per class.
    """
    if split not in COUNTS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root).expanduser()
    cache = Path(cache_dir) / f"cifar10_{split}.npz" if cache_dir is not None else None
    if not root.exists():
        if cache is not None and cache.exists():                 # the source is gone: the cache is all there is
            images, labels, _ = _load_cache(cache)
            return _check(images, labels, split, strict, f"{cache} (source {root} is gone)", verbose)
        raise FileNotFoundError(
            f"CIFAR-10 not found at {root}. Get it one of two ways:\n"
            f"  (1) the official pickles: rd.data.download({str(root)!r}) fetches {URL} (163 MB) and unpacks "
            f"cifar-10-batches-py/ there, then load_cifar10({str(root / 'cifar-10-batches-py')!r});\n"
            f"  (2) offline: an image-folder archive {{train,test}}/<class>/*.jpg such as cifar10-jpg.tar.gz "
            f"(see DATA.md): pass the .tar.gz itself as root, no need to unpack it.")
    kind, files = _find_source(root, split)
    fingerprint = _fingerprint(files)
    if cache is not None and cache.exists():
        images, labels, cached = _load_cache(cache)
        if cached == fingerprint:
            return _check(images, labels, split, strict, f"{cache} (cache of {root})", verbose)
        if verbose:
            print(f"{cache} was made from another or an older source: decoding {root} again")
    x, y = {"pickles": _read_pickles, "folder": _read_folder, "tar": _read_tar}[kind](files, split)
    if cache is not None:                                    # cached before the count check: strict=False reuses it
        _save_npz(cache, images=x, labels=y, fingerprint=np.array(fingerprint))
    return _check(torch.from_numpy(x), torch.from_numpy(y), split, strict, str(root), verbose)


def download(root) -> Path:
    """Fetch the official cifar-10-python.tar.gz into `root`, check its MD5, unpack it → root/cifar-10-batches-py.

    Runs only when you call it (load_cifar10 never downloads); needs network access to www.cs.toronto.edu."""
    import tarfile
    import urllib.error
    import urllib.request
    root = Path(root).expanduser()
    folder = root / "cifar-10-batches-py"
    if all((folder / name).exists() for name in PICKLES["train"] + PICKLES["test"]):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "cifar-10-python.tar.gz"
    if not archive.exists():
        tmp = archive.with_name(f".{archive.name}.tmp{os.getpid()}")
        print(f"downloading {URL} → {archive}")
        try:
            with urllib.request.urlopen(URL, timeout=60) as response, open(tmp, "wb") as f:
                while block := response.read(1 << 20):
                    f.write(block)
        except (urllib.error.URLError, OSError) as e:        # URLError, timeouts, refused connections
            tmp.unlink(missing_ok=True)
            raise ConnectionError(
                f"could not download {URL}: {e}. Without network access, fetch that file on another machine and "
                f"put it at {archive} (then call download again), or pass an image-folder .tar.gz to "
                f"load_cifar10 (see DATA.md).") from e
        os.replace(tmp, archive)
    md5 = hashlib.md5(archive.read_bytes(), usedforsecurity=False).hexdigest()
    if md5 != MD5:
        archive.unlink()
        raise ValueError(f"{archive} has MD5 {md5}, expected {MD5}: a broken download, now deleted; retry")
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(root, filter="data")                  # "data": no absolute paths, links or devices
    return folder


#----------------------------------------------------------------------------
# Finding and fingerprinting the source.

def _find_source(root: Path, split: str) -> tuple[str, list[Path]]:
    """Which kind of source `root` is ("pickles", "folder", "tar") and the files that make up `split`."""
    if root.is_file():
        if not root.name.endswith(TAR_SUFFIXES):
            raise ValueError(f"{root} is a file but not a {'/'.join(TAR_SUFFIXES)} archive; pass the "
                             f"cifar-10-batches-py folder, an image folder or a .tar.gz of one")
        return "tar", [root]
    if (root / "cifar-10-batches-py").is_dir():             # the folder download() unpacked into
        root = root / "cifar-10-batches-py"
    if any((root / name).exists() for name in PICKLES["train"] + PICKLES["test"]):
        missing = [name for name in PICKLES[split] if not (root / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{root} looks like cifar-10-batches-py but lacks {missing}; download it "
                                    f"again (rd.data.download)")
        return "pickles", [root / name for name in PICKLES[split]]
    folder = root / split
    if not folder.is_dir():                                  # an unpacked archive with one top-level folder
        below = [d / split for d in root.iterdir() if (d / split).is_dir()]
        if len(below) != 1:
            raise ValueError(f"{root} holds neither data_batch_*/test_batch pickles nor a {split}/ folder "
                             f"(layout {{train,test}}/<class>/*.jpg|png, classes {', '.join(CIFAR_CLASSES)})")
        folder = below[0]
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise ValueError(f"{folder} holds no .jpg/.jpeg/.png images; expected {folder}/<class>/*.png")
    return "folder", files


def _fingerprint(files) -> str:
    """SHA-256 of every file's path, size and mtime: cheap (no reading), and any edit or copy changes it."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


#----------------------------------------------------------------------------
# The three readers. Each returns (images (N, 3, 32, 32) uint8, labels (N,) int64) as numpy arrays.

def _read_pickles(files, split):
    """Pickled dicts {b'data': (n, 3072) uint8 = R, G, B planes of 32×32 row-major, b'labels': n ints} → arrays.

    Unpickle only files you trust: a pickle can run code."""
    import pickle
    xs, ys = [], []
    for name in files:
        try:
            d = pickle.loads(name.read_bytes(), encoding="bytes")
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, AttributeError, ImportError) as e:
            raise UnreadableFile(f"{name} is not a readable CIFAR-10 batch ({type(e).__name__}: {first_line(e)}): a "
                                 f"truncated or damaged file; download it again (rd.data.download)") from e
        if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
            raise ValueError(f"{name} is not a CIFAR-10 batch (a dict with keys b'data' and b'labels')")
        x = np.asarray(d[b"data"], dtype=np.uint8)
        y = np.asarray(d[b"labels"], dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(y) != len(x):
            raise ValueError(f"{name}: b'data' has shape {x.shape} and b'labels' length {len(y)}; expected "
                             f"(n, 3072) = n images of 3×32×32 and n labels")
        xs.append(x.reshape(-1, 3, 32, 32))                  # (n, 3, 32, 32)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _pil_image():
    """PIL.Image, or an error saying how to get it (only image folders and their archives need Pillow)."""
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("CIFAR-10 image files need Pillow: pip install pillow (the pickles do not)") from e
    return Image


def _decode(Image, data: bytes, name: str) -> np.ndarray:
    """Encoded image bytes → (3, 32, 32) uint8 RGB; any other size is an error that names the file."""
    try:
        with Image.open(BytesIO(data)) as im:
            if im.size != (32, 32):
                raise ValueError(f"{name} is {im.size[0]}×{im.size[1]} (width×height), but CIFAR-10 images are "
                                 f"32×32; remove or resize that file")
            return np.asarray(im.convert("RGB")).transpose(2, 0, 1)    # (H, W, 3) → (3, 32, 32)
    except OSError as e:                     # PIL: not an image, or a truncated one
        raise UnreadableFile(f"{name} is not a readable image ({first_line(e)}); remove that file, or get the data "
                             f"set again") from e


def _label(folder_name: str, name: str) -> int:
    if folder_name not in CIFAR_CLASSES:
        raise ValueError(f"{name}: folder {folder_name!r} is not a CIFAR-10 class; expected one of "
                         f"{', '.join(CIFAR_CLASSES)}")
    return CIFAR_CLASSES.index(folder_name)


def _stack_images(items, where):
    """[(label, file name, (3, 32, 32) image)] → arrays ordered by class, then file name (folder and tar alike)."""
    if not items:
        raise ValueError(f"no images found in {where}; expected <prefix>/{{train,test}}/<class>/*.jpg|png (unpack "
                         f"the official pickle archive with rd.data.download(<its folder>) instead)")
    items.sort(key=lambda item: (item[0], item[1]))
    return np.stack([item[2] for item in items]), np.array([item[0] for item in items], dtype=np.int64)


def _read_folder(files, split):
    Image = _pil_image()
    items = [(_label(f.parent.name, str(f)), f.name, _decode(Image, f.read_bytes(), str(f))) for f in files]
    return _stack_images(items, f"the {split}/ folder")


def _read_tar(files, split):
    """Stream the archive once, in member order (gzip cannot seek back cheaply); nothing is written to disk."""
    import tarfile
    import gzip
    import zlib
    path, items, Image = files[0], [], _pil_image()
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                parts = member.name.split("/")                   # […prefix, split, class, file]
                if (member.isfile() and len(parts) >= 3 and parts[-3] == split and not parts[-1].startswith(".")
                        and Path(parts[-1]).suffix.lower() in IMAGE_SUFFIXES):
                    name = f"{path}:{member.name}"
                    items.append((_label(parts[-2], name), parts[-1],
                                  _decode(Image, tar.extractfile(member).read(), name)))
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:    # garbage, truncated, damaged gzip
        raise UnreadableFile(f"{path} is not a readable CIFAR-10 archive ({type(e).__name__}: {first_line(e)}); "
                             f"re-download it, or pass the cifar-10-batches-py folder instead") from e
    return _stack_images(items, f"{path} under */{split}/")


#----------------------------------------------------------------------------
# The cache and the checks.

def _save_npz(path: Path, **arrays):
    """np.savez made atomic as rd.io.atomic_save is (temporary file in the same folder, fsync, rename)."""
    atomic_write(path, lambda f: np.savez(f, **arrays))   # a file object: numpy adds no ".npz" to the temp name


def _load_cache(path: Path):
    """(images, labels, fingerprint) from a cache file; a damaged file is an error that says to delete it."""
    import zipfile
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels, fingerprint = z["images"], z["labels"], str(z["fingerprint"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise UnreadableFile(f"{path} is not a readable CIFAR-10 cache ({e}); delete it and load again") from e
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), fingerprint


def _check(images, labels, split, strict, source, verbose):
    """Labels in 0…9; with strict, exactly the official counts; print the class balance."""
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{source}: labels range over {int(labels.min())}…{int(labels.max())}, expected 0…9")
    counts = torch.bincount(labels, minlength=10).tolist()
    if verbose:
        print(f"CIFAR-10 {split}: {len(labels):,} images from {source}; per class {counts}")
    want = COUNTS[split]
    if strict and (len(labels) != want or any(c != want // 10 for c in counts)):
        raise ValueError(f"{source}: the {split} split has {len(labels):,} images, per class {counts}; the full "
                         f"CIFAR-10 {split} split has {want:,} ({want // 10:,} per class). An incomplete copy? "
                         f"Download it again, or pass strict=False to use a smaller set on purpose.")
    return images, labels


def to_uint8(x):
    """Images in [−1, 1] (model samples) → uint8 0..255: round((clamp(x) + 1)·127.5), the inverse of from_uint8."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(x):
    """uint8 images 0..255 → float32 in [−1, 1]: x/127.5 − 1 (what every model here trains on)."""
    return x.float() / 127.5 - 1

#----------------------------------------------------------------------------

class GPULoader:
    """Endless batches x0 = x/127.5 − 1 ∈ [-1, 1] with random horizontal flips, from a uint8 set kept on `device`.

    Each epoch is a fresh permutation drawn from a torch.Generator seeded with `seed` (same seed, same device kind
    ⇒ same batches); the ragged tail of an epoch is dropped. CIFAR-10 train takes 150 MB of device memory as uint8.
        loader = GPULoader(*load_cifar10(root, cache_dir="runs/cache"), batch=128, device="cuda")
        x0, y = next(loader)        # (128, 3, 32, 32) float32, (128,) int64
    """

    def __init__(self, images, labels, batch, device, flip=True, seed=0, channels_last=False):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if not 1 <= batch <= len(images):
            raise ValueError(f"batch must be in 1…{len(images)} (the dataset size), got {batch}")
        self.images = images.to(device)                      # (N, C, H, W) uint8
        self.labels = labels.to(device, torch.int64)         # (N,)
        self.batch, self.flip, self.channels_last = batch, flip, channels_last
        self.gen = torch.Generator(device=self.images.device).manual_seed(seed)
        self.epoch, self.perm, self.pos = -1, None, len(images)   # the first batch draws epoch 0's permutation

    def __iter__(self):
        return self

    def __next__(self):
        n, device = len(self.images), self.images.device
        if self.pos + self.batch > n:
            self.perm = torch.randperm(n, generator=self.gen, device=device)
            self.epoch, self.pos = self.epoch + 1, 0
        idx = self.perm[self.pos:self.pos + self.batch]      # (B,)
        self.pos += self.batch
        return self._batch(idx, self.gen)

    def sample(self, n, generator):
        """n images drawn with replacement, flips included, by `generator` alone: no loader state, so a training loop
        that seeds the generator from the step (rd.train does) replays the same batches after a restart."""
        idx = torch.randint(len(self.images), (n,), generator=generator, device=generator.device)
        return self._batch(idx.to(self.images.device), generator)

    def _batch(self, idx, gen):
        x = self.images[idx]                                 # (B, C, H, W) uint8
        if self.flip:
            mirror = torch.rand(len(idx), generator=gen, device=gen.device).to(x.device) < 0.5   # (B,) bool
            x = torch.where(mirror[:, None, None, None], x.flip(3), x)
        x = from_uint8(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[idx]
