"""Static image datasets: scikit-learn's 8x8 digits (ships with the package, no download) and
torchvision's MNIST, Fashion-MNIST and CIFAR10."""

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch.utils.data import Dataset, TensorDataset

from snnexp import cache_home
from snnexp.data.archives import extracted
from snnexp.data.cache import default_cache_dir
from snnexp.errors import DatasetError
from snnexp.files import atomic_path


@dataclass
class Splits:
    train: Dataset
    test: Dataset
    input_shape: Tuple[int, ...]  # of one frame: [C, H, W]
    num_classes: int
    sequence: bool = False  # samples are already frame sequences [T, C, H, W] (event data), not images
    empty_reason: str = ""  # why the training or test set is empty (a loader returns what there is; a run stops)
    val: Optional[Dataset] = None  # a validation set (dataset.val_fraction > 0: data.validation)


def digits(test_fraction: float = 0.2, split_seed: int = 0) -> Splits:
    """scikit-learn's handwritten digits: 1,797 8x8 grey images (values 0-16), 10 classes. It has no
    official split: a stratified, seeded split, the same on every machine."""
    x, y, tr, te = _digits_arrays(test_fraction, split_seed)
    return Splits(TensorDataset(x[tr], y[tr]), TensorDataset(x[te], y[te]), (1, 8, 8), 10)


def _digits_arrays(test_fraction: float, split_seed: int):
    """Images, labels and the split's indices, kept in a small file under $XDG_CACHE_HOME/snnexp/digits after the
    first call: importing scikit-learn takes 2 s of each run's start (more than 2 epochs of training on digits),
    the file takes milliseconds. Keyed by scikit-learn's version and the split's settings."""
    from importlib.metadata import version

    name = f"digits-sklearn{version('scikit-learn')}-test{test_fraction}-seed{split_seed}.pt"
    path = cache_home() / "digits" / name
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # absent, or unreadable: build it again
        pass
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    idx = torch.arange(len(y)).numpy()
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=split_seed, stratify=d.target)
    arrays = (x, y, torch.as_tensor(sorted(tr)), torch.as_tensor(sorted(te)))
    # atomic, for parallel jobs; a cache that cannot be written only costs the next run the 2 s. Saved through
    # open(), which raises OSError where torch.save's own file writer raises RuntimeError.
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(arrays, f)
    return arrays


def _torchvision(cls, data_dir, download, train_transform=None, test_transform=None):
    """Build a torchvision dataset for both splits, turning 'not found / download failed' into one
    message that names the folder and the files to put there. The files the user placed are read whatever
    `download` says (see _placed); `download` only decides whether missing files are fetched into data_dir."""
    root = Path(data_dir).expanduser()
    read_from = _placed(cls, root)
    try:
        return (
            cls(str(read_from), train=True, download=download, transform=train_transform),
            cls(str(read_from), train=False, transform=test_transform),
        )
    except (RuntimeError, OSError) as e:  # torchvision: "Dataset not found", URLError, failed mirrors
        raise DatasetError(_missing_message(cls, root, download, e)) from None


def _official_files(cls, root: Path) -> Tuple[Path, Dict[Path, str], str]:
    """(the folder, {official archive: md5}, where torchvision reads them extracted, relative to its root):
    MNIST and Fashion-MNIST, four IDX .gz files in <root>/<Name>/raw/; CIFAR, one .tar.gz in <root>/."""
    if hasattr(cls, "resources"):
        folder = root / cls.__name__ / "raw"
        return folder, {folder / name: md5 for name, md5 in cls.resources}, f"{cls.__name__}/raw"
    return root, {root / cls.filename: cls.tgz_md5}, ""


def _placed(cls, root: Path) -> Path:
    """The folder torchvision is to read as its root. `root` (data_dir) when it holds the extracted files, or
    lacks some archive (torchvision then downloads into it, or says what is missing). When all the official
    archives are there (and no extracted copy), they are extracted once into the cache (snnexp.data.cache.
    extracted, which checks their md5s first), which torchvision reads: torchvision would extract them beside
    themselves, so a read-only data folder would fail and a writable one would gain the extracted files."""
    folder, archives, inside = _official_files(cls, root)
    extracted_there = [folder / Path(a).stem for a in archives] if inside else [root / cls.base_folder]
    if all(p.exists() for p in extracted_there) or not all(a.is_file() for a in archives):
        return root
    return extracted(archives, default_cache_dir(), cls.__name__, _source(cls), into=inside)


def _source(cls) -> str:
    return cls.mirrors[0] if hasattr(cls, "mirrors") else cls.url


def _missing_message(cls, root: Path, download: bool, err: Exception) -> str:
    name = cls.__name__
    folder, archives, inside = _official_files(cls, root)
    files = "\n".join(f"    {a.name:32s} md5 {md5}  ({_found(a, inside)})" for a, md5 in archives.items())
    if isinstance(err, PermissionError) or (isinstance(err, OSError) and not os.access(folder, os.W_OK)):
        how = f"cannot write to {folder} ({err}); copy the files to a writable folder and set dataset.data_dir"
    elif not inside and (root / cls.base_folder).is_dir():
        how = f"{root / cls.base_folder} is incomplete or damaged (a file is missing or its md5 differs)"
    elif download:
        how = f"it is not there and the download failed ({err})"
    else:
        how = "it is not there and dataset.download=false"
    return (
        f"{name} not found: {how}.\n"
        f"Put these files in {folder}/ (from {_source(cls)}):\n{files}\n"
        f"or point dataset.data_dir at a folder that already holds {name}/ (e.g. dataset.data_dir=/path/to/data)."
    )


def _found(archive: Path, inside: str) -> str:
    if archive.is_file():
        return "here"
    if inside and archive.with_suffix("").is_file():
        return "here, extracted"
    return "missing"


def _as_tensors(tv_dataset) -> TensorDataset:
    # MNIST-style datasets hold all images as one uint8 tensor: use it directly instead of converting
    # 60,000 PIL images every epoch, which costs more than a small SNN's training step on 2 cores.
    x = tv_dataset.data.unsqueeze(1).float().div_(255.0)
    return TensorDataset(x, torch.as_tensor(tv_dataset.targets, dtype=torch.long))


def mnist(data_dir: str = "data", download: bool = True) -> Splits:
    from torchvision.datasets import MNIST

    train, test = _torchvision(MNIST, data_dir, download)
    return Splits(_as_tensors(train), _as_tensors(test), (1, 28, 28), 10)


def fashion_mnist(data_dir: str = "data", download: bool = True) -> Splits:
    from torchvision.datasets import FashionMNIST

    train, test = _torchvision(FashionMNIST, data_dir, download)
    return Splits(_as_tensors(train), _as_tensors(test), (1, 28, 28), 10)


def _cifar(cls, num_classes, data_dir, download, augment) -> Splits:
    """CIFAR with the usual augmentation for training (random 32x32 crop of the 4-pixel padded image,
    horizontal flip) when `augment`."""
    from torchvision import transforms as tf

    train_tf = [tf.RandomCrop(32, padding=4), tf.RandomHorizontalFlip()] if augment else []
    train, test = _torchvision(cls, data_dir, download, tf.Compose(train_tf + [tf.ToTensor()]), tf.ToTensor())
    return Splits(train, test, (3, 32, 32), num_classes)


def cifar10(data_dir: str = "data", download: bool = True, augment: bool = True) -> Splits:
    from torchvision.datasets import CIFAR10

    return _cifar(CIFAR10, 10, data_dir, download, augment)


def cifar100(data_dir: str = "data", download: bool = True, augment: bool = True) -> Splits:
    from torchvision.datasets import CIFAR100

    return _cifar(CIFAR100, 100, data_dir, download, augment)
