"""The built-in digits dataset: scikit-learn's images and stratified split, kept in a cache file after the first
run (importing scikit-learn would cost every run 2 s)."""

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from snnexp.data.static import digits


def sklearn_split(test_fraction, seed):
    d = load_digits()
    tr, te = train_test_split(np.arange(len(d.target)), test_size=test_fraction, random_state=seed, stratify=d.target)
    return d, sorted(tr), sorted(te)


def check(splits, test_fraction, seed):
    d, tr, te = sklearn_split(test_fraction, seed)
    x_tr, y_tr = splits.train.tensors
    x_te, y_te = splits.test.tensors
    assert torch.equal(x_tr, torch.tensor(d.images[tr], dtype=torch.float32).unsqueeze(1) / 16)
    assert torch.equal(y_tr, torch.tensor(d.target[tr])) and torch.equal(y_te, torch.tensor(d.target[te]))
    assert torch.equal(x_te, torch.tensor(d.images[te], dtype=torch.float32).unsqueeze(1) / 16)


def test_cached_digits_are_scikit_learns_split_and_a_broken_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    check(digits(), 0.2, 0)  # built
    files = list((tmp_path / "snnexp" / "digits").iterdir())
    assert len(files) == 1
    check(digits(), 0.2, 0)  # read back
    files[0].write_bytes(b"not a tensor file")
    check(digits(), 0.2, 0)  # rebuilt
    check(digits(test_fraction=0.3, split_seed=1), 0.3, 1)  # another split, another file
    assert len(list((tmp_path / "snnexp" / "digits").iterdir())) == 2


def test_an_unwritable_cache_only_costs_time(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # a folder under a file cannot be made
    check(digits(), 0.2, 0)
