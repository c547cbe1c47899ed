"""Standard on-disk formats: MNIST/Fashion-MNIST (IDX), CIFAR-10/100 (binary version), ImageFolder.

Files live under ``<root>/<dataset>/``. When missing and ``download`` is allowed, they are
fetched and verified by MD5 before use; offline, the error names every expected file and
the directory. The CIFAR *binary* distribution is read (not the Python one, which is a
pickle) so nothing here unpickles data.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from .registry import DATASETS

MNIST_FILES = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }),
}
CIFAR = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530",
                "cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"], 10),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8",
                 "cifar-100-binary", ["train.bin"], ["test.bin"], 100),
}


class DatasetNotFoundError(FileNotFoundError):
    pass


def md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, dest: Path, checksum: str) -> None:
    """Download to a temp file, verify MD5, then move into place (never leaves a partial file).

    A failed download deletes its temp file; one left by a killed process is removed the
    next time anything is fetched into the same folder."""
    from ..foundations.io import clean_orphans

    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_orphans(dest.parent, older_than_s=3600.0)  # spare a download another process has running
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=30) as r:
            shutil.copyfileobj(r, f)
        got = md5(Path(tmp))
        if got != checksum:
            raise IOError(f"checksum mismatch for {url}: expected md5 {checksum}, got {got}")
        Path(tmp).replace(dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _missing(name: str, folder: Path, files: list[str], why: str = "") -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{name}: expected files {files} in {folder}{why}. Place them there, or allow download with network access.")


def read_idx(path: Path) -> torch.Tensor:
    """IDX format (MNIST): magic (0, 0, dtype 0x08, ndim), big-endian dims, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {arr.size} values (truncated?)")
    return torch.from_numpy(arr.copy()).view(*dims)


def _mnist_like(name: str, root, download: bool):
    base, files = MNIST_FILES[name]
    folder = Path(root) / name
    paths = {}
    for fname, checksum in files.items():
        p = folder / fname
        if not p.exists() and (folder / fname[:-3]).exists():
            p = folder / fname[:-3]  # uncompressed copy is fine too
        if not p.exists():
            if not download:
                raise _missing(name, folder, list(files))
            try:
                fetch(base + fname, p, checksum)
            except OSError as e:
                raise _missing(name, folder, list(files), f" (download failed: {e})") from e
        paths[fname] = p
    x = lambda k: read_idx(paths[k]).unsqueeze(1).float() / 255.0  # noqa: E731
    y = lambda k: read_idx(paths[k]).long()  # noqa: E731
    return ((x("train-images-idx3-ubyte.gz"), y("train-labels-idx1-ubyte.gz")),
            (x("t10k-images-idx3-ubyte.gz"), y("t10k-labels-idx1-ubyte.gz")), 10)


@DATASETS.register("mnist")
def mnist(root="data", download=True):
    """MNIST (IDX files under root/mnist): 60,000 train / 10,000 test."""
    return _mnist_like("mnist", root, download)


@DATASETS.register("fashion-mnist")
def fashion_mnist(root="data", download=True):
    """Fashion-MNIST (IDX files under root/fashion-mnist): 60,000 train / 10,000 test."""
    return _mnist_like("fashion-mnist", root, download)


def read_cifar_bin(path: Path, label_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR binary records: label byte(s) then 3072 bytes (R, G, B planes of 32x32)."""
    raw = np.fromfile(path, dtype=np.uint8)
    rec = label_bytes + 3072
    if raw.size % rec:
        raise ValueError(f"{path}: size {raw.size} is not a multiple of the {rec}-byte CIFAR record")
    raw = raw.reshape(-1, rec)
    y = torch.from_numpy(raw[:, label_bytes - 1].astype(np.int64))  # CIFAR-100: fine label is the 2nd byte
    x = torch.from_numpy(raw[:, label_bytes:].copy()).view(-1, 3, 32, 32).float() / 255.0
    return x, y


def _cifar(name: str, root, download: bool):
    url, checksum, sub, train_files, test_files, classes = CIFAR[name]
    folder = Path(root) / name / sub
    expected = train_files + test_files
    if not all((folder / f).exists() for f in expected):
        if not download:
            raise _missing(name, folder, expected)
        archive = Path(root) / name / url.rsplit("/", 1)[1]
        try:
            if not archive.exists():
                fetch(url, archive, checksum)
            with tarfile.open(archive) as t:
                t.extractall(Path(root) / name, filter="data")
        except OSError as e:
            raise _missing(name, folder, expected, f" (download failed: {e})") from e
    lb = 1 if name == "cifar10" else 2
    parts = [read_cifar_bin(folder / f, lb) for f in train_files]
    test = read_cifar_bin(folder / test_files[0], lb)
    return (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])), test, classes


@DATASETS.register("cifar10")
def cifar10(root="data", download=True):
    """CIFAR-10, binary version (root/cifar-10-batches-bin): 50,000 train / 10,000 test."""
    return _cifar("cifar10", root, download)


@DATASETS.register("cifar100")
def cifar100(root="data", download=True):
    """CIFAR-100, binary version (root/cifar-100-binary): 50,000 train / 10,000 test."""
    return _cifar("cifar100", root, download)


IMG_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def _read_folder(folder: Path, classes: list[str], size: int):
    from PIL import Image

    xs, ys = [], []
    for ci, c in enumerate(classes):
        for p in sorted((folder / c).iterdir()):
            if p.suffix.lower() in IMG_EXT:
                img = Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)
                xs.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
                ys.append(ci)
    if not xs:
        raise DatasetNotFoundError(f"imagefolder: no images ({sorted(IMG_EXT)}) under {folder}/<class>/")
    return torch.stack(xs).float() / 255.0, torch.tensor(ys)


@DATASETS.register("imagefolder")
def imagefolder(root="data", download=False, path: str | None = None, size: int = 64):
    """``<path>/train/<class>/*.png`` and ``<path>/val/<class>/*`` (or ``test/``), loaded at size x size."""
    base = Path(path) if path else Path(root) / "imagefolder"
    train_dir = base / "train"
    test_dir = next((base / d for d in ("val", "test") if (base / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DatasetNotFoundError(
            f"imagefolder: expected {train_dir}/<class>/<images> and {base}/val/<class>/<images> (or test/)")
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    return _read_folder(train_dir, classes, size), _read_folder(test_dir, classes, size), len(classes)
