"""Writers for small image datasets in the real on-disk formats that torchvision reads, so that tests load
them through the real code (snnexp.data -> torchvision.datasets): MNIST's and Fashion-MNIST's IDX files and
CIFAR's pickled batches. Images are random; labels cycle through the classes."""

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX (LeCun's format): magic 0x0000 08 <ndim> (08 = unsigned byte), big-endian int32 sizes, data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_mnist_like(root: Path, name: str = "MNIST", n_train: int = 8, n_test: int = 4, seed: int = 0) -> None:
    """<root>/<name>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, extracted as torchvision leaves them
    (name: MNIST or FashionMNIST)."""
    rng = np.random.default_rng(seed)
    raw = root / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _cifar_batch(rng, n, classes, label_key):
    return {"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8), label_key: list(np.arange(n) % classes)}


def make_cifar(root: Path, cls, n_train: int = 8, n_test: int = 4, seed: int = 0):
    """torchvision's CIFAR10 (cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta) or CIFAR100
    (cifar-100-python/train, test, meta) layout, as rows of 3x32x32 uint8 and a label list.

    torchvision checks these files against the md5s of the official release: the returned dict holds the
    class attributes (train_list, test_list, meta) with our files' md5s, for monkeypatch.setattr."""
    rng = np.random.default_rng(seed)
    folder = root / cls.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    hundred = cls.meta["key"] == "fine_label_names"
    classes, label_key = (100, "fine_labels") if hundred else (10, "labels")
    per_train = [n_train // len(cls.train_list)] * len(cls.train_list)
    per_train[0] += n_train - sum(per_train)
    for (name, _), n in zip(cls.train_list, per_train):
        _pickle(folder / name, _cifar_batch(rng, n, classes, label_key))
    for name, _ in cls.test_list:
        _pickle(folder / name, _cifar_batch(rng, n_test, classes, label_key))
    _pickle(folder / cls.meta["filename"], {cls.meta["key"]: [f"class{i}" for i in range(classes)]})
    return {
        "train_list": [[name, _md5(folder / name)] for name, _ in cls.train_list],
        "test_list": [[name, _md5(folder / name)] for name, _ in cls.test_list],
        "meta": {**cls.meta, "md5": _md5(folder / cls.meta["filename"])},
    }
