import gzip
import struct

import numpy as np
import pytest
import torch

from prunekit import data
from prunekit.data.base import augment_batch
from prunekit.data.standard import DatasetNotFoundError
from prunekit.foundations.registry import UnknownNameError


def test_registry_lists_all_and_rejects_unknown():
    for n in ["digits", "mnist5k", "mnist1d", "synthetic", "mnist", "fashion-mnist", "cifar10", "cifar100",
              "imagefolder"]:
        assert n in data.names()
    with pytest.raises(UnknownNameError, match="valid choices: .*mnist5k"):
        data.load("imagenet-22k")


def test_mnist5k_split_is_stratified_deterministic_and_real():
    a = data.load("mnist5k", normalize_inputs=False)
    b = data.load("mnist5k", normalize_inputs=False)
    assert len(a.train) == 4000 and len(a.test) == 1000
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.train.y, b.train.y)
    counts = torch.bincount(a.test.y, minlength=10)
    full = torch.bincount(torch.cat([a.train.y, a.test.y]), minlength=10)
    # stratified: every class keeps its 20% share within one sample
    assert torch.all((counts - full * 0.2).abs() <= 1)
    assert a.train.x.shape[1:] == (1, 28, 28) and 0 <= a.train.x.min() and a.train.x.max() <= 1
    # no sample is in both splits
    tr = {hash(r.numpy().tobytes()) for r in a.train.x.flatten(1)}
    assert sum(hash(r.numpy().tobytes()) in tr for r in a.test.x.flatten(1)) < 5  # MNIST has rare exact dupes


def test_mnist5k_resize_and_normalise_like_tpp():
    b = data.load("mnist5k", resize=32)
    assert b.input_shape == (1, 32, 32)
    raw = data.load("mnist5k", resize=32, normalize_inputs=False)
    assert torch.allclose(b.train.x, (raw.train.x - 0.1307) / 0.3081, atol=1e-6)


def test_val_split_carved_from_train():
    b = data.load("mnist5k", val_fraction=0.1)
    assert len(b.train) == 3600 and len(b.val) == 400 and len(b.test) == 1000


def test_digits_and_mnist1d_and_synthetic():
    d = data.load("digits")
    assert d.input_shape == (1, 8, 8) and len(d.train) + len(d.test) == 1797
    m = data.load("mnist1d")
    assert len(m.train) == 4000 and len(m.test) == 1000 and m.input_shape == (1, 40)
    assert data.load("mnist1d", as_image=True).input_shape == (1, 1, 40)
    s = data.load("synthetic", shape=(3, 8, 8), num_classes=4, n_train=64, n_test=32)
    assert s.input_shape == (3, 8, 8) and s.num_classes == 4 and set(s.train.y.tolist()) <= {0, 1, 2, 3}


def _write_idx(path, arr: np.ndarray):
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_loader_reads_real_format(tmp_path, name):
    rng = np.random.default_rng(0)
    folder = tmp_path / name
    folder.mkdir()
    imgs = rng.integers(0, 256, (6, 28, 28))
    labels = np.array([0, 1, 2, 3, 4, 5])
    for split in ("train", "t10k"):
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", imgs)
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    b = data.load(name, root=str(tmp_path), normalize_inputs=False, download=False)
    assert b.train.x.shape == (6, 1, 28, 28)
    assert torch.allclose(b.train.x[2, 0], torch.tensor(imgs[2], dtype=torch.float32) / 255)
    assert b.test.y.tolist() == labels.tolist()


def test_missing_files_error_names_them(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="train-images-idx3-ubyte.gz.*" + str(tmp_path)):
        data.load("mnist", root=str(tmp_path), download=False)
    with pytest.raises(DatasetNotFoundError, match="data_batch_1.bin"):
        data.load("cifar10", root=str(tmp_path), download=False)


def test_cifar_binary_format(tmp_path):
    rng = np.random.default_rng(1)
    for name, sub, files, lb in [("cifar10", "cifar-10-batches-bin",
                                  [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"], 1),
                                 ("cifar100", "cifar-100-binary", ["train.bin", "test.bin"], 2)]:
        folder = tmp_path / name / sub
        folder.mkdir(parents=True)
        pix = rng.integers(0, 256, (3, 3072)).astype(np.uint8)
        labels = np.array([[0, 3], [1, 7], [2, 9]], dtype=np.uint8)[:, :lb]  # (coarse, fine) for CIFAR-100
        rec = np.concatenate([labels, pix], axis=1)
        for f in files:
            rec.tofile(folder / f)
        b = data.load(name, root=str(tmp_path), normalize_inputs=False, download=False)
        expect = [3, 7, 9] if name == "cifar100" else [0, 1, 2]
        assert b.test.y.tolist() == expect
        assert b.input_shape == (3, 32, 32)
        # channel planes: first 1024 bytes are red
        assert torch.allclose(b.test.x[1, 0].flatten(), torch.tensor(pix[1, :1024], dtype=torch.float32) / 255)
        assert len(b.train) == 3 * (len(files) - 1)


def test_imagefolder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for ci, c in enumerate(["cat", "dog"]):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((10, 10, 3), 100 * ci, np.uint8)).save(tmp_path / split / c / f"{i}.png")
    b = data.load("imagefolder", path=str(tmp_path), size=8, normalize_inputs=False)
    assert b.num_classes == 2 and b.input_shape == (3, 8, 8) and len(b.train) == 4
    assert torch.allclose(b.train.x[b.train.y == 1], torch.full((2, 3, 8, 8), 100 / 255), atol=1e-6)


def test_augment_batch_crop_and_flip():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    y = augment_batch(x, g, crop_pad=0, flip=True)
    for i in range(2):  # each sample is either itself or its mirror
        assert torch.equal(y[i], x[i]) or torch.equal(y[i], x[i].flip(-1))
    z = augment_batch(x, torch.Generator().manual_seed(3), crop_pad=2)
    assert z.shape == x.shape
    # every crop is a shifted window of the zero-padded image
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        assert any(torch.equal(z[i, 0], xp[i, 0, a:a + 4, b:b + 4]) for a in range(5) for b in range(5))


def test_download_verifies_checksum_and_never_leaves_partial_files(tmp_path):
    import hashlib

    from prunekit.data.standard import fetch

    src = tmp_path / "src.bin"
    src.write_bytes(b"prunekit" * 100)
    good = hashlib.md5(src.read_bytes()).hexdigest()
    dest = tmp_path / "out" / "file.bin"
    fetch(src.as_uri(), dest, good)
    assert dest.read_bytes() == src.read_bytes()
    bad_dest = tmp_path / "out2" / "file.bin"
    with pytest.raises(IOError, match="checksum mismatch"):
        fetch(src.as_uri(), bad_dest, "0" * 32)
    assert not bad_dest.exists() and list(bad_dest.parent.iterdir()) == []
