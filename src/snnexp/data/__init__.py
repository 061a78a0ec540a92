"""Datasets. Each loader returns a `Splits`: train and test datasets of (x, label), x an image [C, H, W]
in [0, 1] (static datasets), T event frames [T, 2, H, W] (event datasets) or T frames [T, C] of spike counts
per channel (the audio spike datasets SHD and SSC)."""

from snnexp.data.audio import shd, ssc
from snnexp.data.events import dvs_cifar10, dvs_gesture, nmnist
from snnexp.data.static import Splits, cifar10, cifar100, digits, fashion_mnist, mnist
from snnexp.errors import CorruptFile, DatasetError

__all__ = ["CorruptFile", "DatasetError", "Splits", "cifar10", "cifar100", "digits", "dvs_cifar10", "dvs_gesture",
           "fashion_mnist", "mnist", "nmnist", "shd", "ssc"]
