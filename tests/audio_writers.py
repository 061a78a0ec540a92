"""Writers of small files in the real format of the Spiking Heidelberg datasets (SHD, SSC), so that tests read them
through the real loading code. The layout, as the authors publish it and tonic's SHD/SSC classes read it (h5py):

    spikes/times   one variable-length float16 array per sample: spike times in seconds
    spikes/units   one variable-length uint16 array per sample: the channel (0..699) of each spike
    labels         uint16, one per sample
    extra/keys, extra/speaker, extra/meta_info/{gender, age, body_height}   (tonic's classes read keys and speaker)
"""

import gzip
import zipfile
from pathlib import Path

import h5py
import numpy as np

SHD_FILES = ("shd_train.h5", "shd_test.h5")
SSC_FILES = ("ssc_train.h5", "ssc_valid.h5", "ssc_test.h5")


def write_hsd(path, times, units, labels, num_classes=20, times_dtype=np.float16, units_dtype=np.uint16):
    """One file: times[i] (seconds) and units[i] the spikes of sample i, labels[i] its class. The class names and
    speakers under extra/ are placeholders of the published shapes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(labels)
    with h5py.File(path, "w") as f:
        spikes = f.create_group("spikes")
        t = spikes.create_dataset("times", shape=(n,), dtype=h5py.vlen_dtype(np.dtype(times_dtype)))
        u = spikes.create_dataset("units", shape=(n,), dtype=h5py.vlen_dtype(np.dtype(units_dtype)))
        for i in range(n):
            t[i] = np.asarray(times[i], dtype=times_dtype)
            u[i] = np.asarray(units[i], dtype=units_dtype)
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.uint16))
        extra = f.create_group("extra")
        extra.create_dataset("keys", data=np.array([f"class-{k}".encode() for k in range(num_classes)]))
        extra.create_dataset("speaker", data=np.arange(n, dtype=np.uint16) % 12)
        meta = extra.create_group("meta_info")
        meta.create_dataset("gender", data=np.array([b"female", b"male"] * 6))
        meta.create_dataset("age", data=np.arange(20, 32, dtype=np.uint16))
        meta.create_dataset("body_height", data=np.arange(160, 172, dtype=np.uint16))


def random_spikes(rng, n_spikes, duration_s=0.1, channels=700):
    """A sample: n_spikes spikes at sorted random times in [0, duration_s), on random channels."""
    return np.sort(rng.uniform(0, duration_s, n_spikes)), rng.integers(0, channels, n_spikes)


def write_random_hsd(path, n, num_classes, seed=0, duration_s=0.1):
    """n samples of 20-60 spikes each, labels cycling through the classes."""
    rng = np.random.default_rng(seed)
    samples = [random_spikes(rng, int(rng.integers(20, 60)), duration_s) for _ in range(n)]
    write_hsd(path, [s[0] for s in samples], [s[1] for s in samples], [i % num_classes for i in range(n)],
              num_classes)


def make_shd(root: Path, n_train=8, n_test=4, seed=0) -> Path:
    """<root>/SHD/shd_train.h5 and shd_test.h5; returns the folder."""
    for name, n, s in zip(SHD_FILES, (n_train, n_test), (seed, seed + 1)):
        write_random_hsd(root / "SHD" / name, n, 20, s)
    return root / "SHD"


def make_ssc(root: Path, n=(8, 3, 4), seed=0) -> Path:
    """<root>/SSC/ssc_train.h5, ssc_valid.h5 and ssc_test.h5 of n[0], n[1], n[2] samples; returns the folder."""
    for k, (name, count) in enumerate(zip(SSC_FILES, n)):
        write_random_hsd(root / "SSC" / name, count, 35, seed + k)
    return root / "SSC"


def gzip_file(src: Path, dest: Path) -> Path:
    """The authors' archive: <name>.h5.gz, the file gzipped."""
    dest.write_bytes(gzip.compress(src.read_bytes()))
    return dest


def zip_file(src: Path, dest: Path) -> Path:
    """tonic's mirror's archive: <name>.h5.zip, the file at the zip's top level."""
    with zipfile.ZipFile(dest, "w") as z:
        z.write(src, src.name)
    return dest
