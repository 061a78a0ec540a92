"""Datasets. Each loader returns a `Splits`: train and test datasets of (x [C, H, W] in [0, 1], label)."""

from snnexp.data.static import DatasetError, Splits, cifar10, digits, fashion_mnist, mnist

__all__ = ["DatasetError", "Splits", "cifar10", "digits", "fashion_mnist", "mnist"]
