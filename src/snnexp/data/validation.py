"""A validation set held out of the training set (dataset.val_fraction), so that the test set chooses nothing.

Most datasets have no official validation set, and the papers that report on them choose the epoch (and often the
settings) by their test accuracy, which flatters the number. With dataset.val_fraction > 0 a seeded, class-stratified
part of the training set is held out: the run trains on the rest, evaluates both after every epoch, keeps the epoch
with the best validation accuracy in best.pt and reports that epoch's test accuracy beside the best test accuracy
(docs/science.md, "Choosing the epoch").

Every loader goes through `load`: a loader whose function takes `val_fraction` itself makes its own validation set
(SSC, which has an official one); for the others `hold_out` carves it from the training set after loading. The
carve is the same on every machine and for every trainer.seed (it has its own seed, dataset.split_seed where the
dataset has one, else 0), so runs that differ in their seed are validated on the same samples.
"""

import copy
import inspect
from typing import Any, Dict

import numpy as np
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset, Subset, TensorDataset

from snnexp.data.recordings import held_out_count
from snnexp.data.static import Splits


def load(dataset: DictConfig) -> Splits:
    """The dataset a config's `dataset` group names, with its validation set when dataset.val_fraction > 0."""
    options: Dict[str, Any] = OmegaConf.to_container(dataset, resolve=True)
    fraction = options.get("val_fraction") or 0.0
    if "val_fraction" not in inspect.signature(get_method(options["_target_"])).parameters:
        options.pop("val_fraction", None)  # the loader knows nothing of it: the validation set is carved here
    splits = instantiate(options)
    if fraction and splits.val is None:
        splits = hold_out(splits, fraction, options.get("split_seed", 0))
    return splits


def hold_out(splits: Splits, fraction: float, seed: int) -> Splits:
    """`splits` with about `fraction` of each class's training samples moved to a validation set (at least one of
    every class of two or more samples, and at least one left to train on): a seeded permutation per class. The
    validation samples are read as the test set reads its own (without the training set's augmentation)."""
    labels = labels_of(splits.train)
    rng = np.random.default_rng(seed)
    val = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        val.extend(members[rng.permutation(len(members))[:held_out_count(fraction, len(members))]])
    val = np.sort(np.asarray(val, dtype=np.int64))
    train = np.setdiff1d(np.arange(len(labels)), val)
    return Splits(Subset(splits.train, train.tolist()), splits.test, splits.input_shape, splits.num_classes,
                  splits.sequence, splits.empty_reason,
                  val=Subset(unaugmented(splits.train, splits.test), val.tolist()))


def labels_of(dataset: Dataset) -> np.ndarray:
    """Every sample's label, from where the dataset keeps them (our frame caches, torchvision's `targets`, a
    TensorDataset's second tensor), or else by reading every sample."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].numpy()
    for name in ("labels", "targets"):
        if hasattr(dataset, name):
            return np.asarray(getattr(dataset, name))
    return np.asarray([int(y) for _, y in dataset])


def unaugmented(train: Dataset, test: Dataset) -> Dataset:
    """The training set as the test set reads its samples: without random crops and flips (torchvision's datasets:
    the test set's transform; our frame datasets: without_augmentation), so that the validation accuracy is
    measured as the test accuracy is."""
    if hasattr(train, "without_augmentation"):
        return train.without_augmentation()
    if hasattr(train, "transform") and hasattr(test, "transform") and train.transform is not test.transform:
        plain = copy.copy(train)
        plain.transform = test.transform
        return plain
    return train
