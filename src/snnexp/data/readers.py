"""Readers: one event file (or one labelled slice of one) -> integer arrays x, y, t (us), p, with tonic's readers
where they do the job."""

import functools
import os
from typing import Tuple

import numpy as np

from snnexp.errors import CorruptFile, DatasetError

Events = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # x, y, t (us), p


def _check(path, x, y, t, width, height) -> None:
    if len(x) and (x.max() >= width or y.max() >= height):
        raise CorruptFile(f"{path}: event at x={int(x.max())}, y={int(y.max())} outside the {width}x{height} sensor")
    if len(t) > 1 and np.any(np.diff(t.astype(np.int64)) < 0):
        raise CorruptFile(f"{path}: timestamps go backwards (corrupt file)")


def read_nmnist(path) -> Events:
    """N-MNIST 40-bit events with tonic's reader; a size that is not a multiple of 5 bytes is a
    truncated file."""
    from tonic.datasets import NMNIST
    from tonic.io import read_mnist_file

    size = os.path.getsize(path)
    if size == 0 or size % 5:
        raise CorruptFile(f"{path}: {size} bytes is not a whole number of 5-byte N-MNIST events (truncated?)")
    ev = read_mnist_file(str(path), dtype=NMNIST.dtype)
    x, y, t, p = ev["x"], ev["y"], ev["t"], ev["p"]
    _check(path, x, y, t, 34, 34)
    return x, y, t, p


def read_aedat2_dvs128(path) -> Events:
    """AER-DAT 2.0 (CIFAR10-DVS's original release) with tonic's header and event readers, decoded with
    the DVS128 address layout of tonic's read_dvs_128 (which cannot be called itself: in tonic 1.7 it
    unpacks two values from a reader that returns three)."""
    from tonic.io import get_aer_events_from_file, read_aedat_header_from_file

    try:
        version, start, _ = read_aedat_header_from_file(str(path))
    except Exception as e:
        raise CorruptFile(f"{path}: not an AER-DAT file ({e})") from None
    if not 2 <= version < 3:
        raise CorruptFile(f"{path}: AER-DAT version {version}, expected 2.x")
    if (os.path.getsize(path) - start) % 8:
        raise CorruptFile(f"{path}: data is not a whole number of 8-byte events (truncated?)")
    ev = get_aer_events_from_file(str(path), version, start)
    addr, t = ev["address"], ev["timeStamp"]
    x, y, p = (addr >> 8) & 0x7F, (addr >> 1) & 0x7F, addr & 0x1
    _check(path, x, y, t, 128, 128)
    return x, y, t, p


def read_aedat4_events(path) -> Events:
    """AEDAT4 (CIFAR10-DVS as tonic downloads it) with tonic's read_aedat4 (PyPI package `aedat`)."""
    from tonic.io import read_aedat4

    try:
        ev = read_aedat4(str(path))
    except ImportError:
        raise DatasetError(f"reading {path} needs the 'aedat' package: pip install aedat") from None
    except Exception as e:
        raise CorruptFile(f"{path}: cannot read as AEDAT4 ({e})") from None
    x, y, t = ev["x"], ev["y"], ev["t"]
    p = ev[ev.dtype.names[3]]  # 'on' in aedat's dtype
    _check(path, x, y, t, 128, 128)
    return x, y, t.astype(np.int64), p.astype(np.int64)


@functools.lru_cache(maxsize=2)  # the gestures of one recording are converted one after another
def read_aedat31_polarity(path) -> Events:
    """AEDAT 3.1 (DVS128 Gesture): tonic's header reader, then the packets walked here, keeping only
    polarity packets (type 1): tonic's get_aer_events_from_file reads every packet as polarity events,
    which the real recordings' special-event packets would corrupt, and cannot see a truncated file."""
    from tonic.io import read_aedat_header_from_file

    try:
        version, start, _ = read_aedat_header_from_file(str(path))
    except Exception as e:
        raise CorruptFile(f"{path}: not an AEDAT file ({e})") from None
    if version < 3:
        raise CorruptFile(f"{path}: AEDAT version {version}, expected 3.x")
    data = np.fromfile(path, dtype=np.uint8, offset=start)
    header = np.dtype([("type", "<i2"), ("source", "<i2"), ("size", "<i4"), ("ts_offset", "<i4"),
                       ("ts_overflow", "<i4"), ("capacity", "<i4"), ("number", "<i4"), ("valid", "<i4")])
    polarity = np.dtype([("data", "<u4"), ("t", "<i4")])
    chunks, pos = [], 0
    while pos < len(data):
        if pos + 28 > len(data):
            raise CorruptFile(f"{path}: truncated packet header at byte {start + pos}")
        h = data[pos:pos + 28].view(header)[0]
        end = pos + 28 + int(h["capacity"]) * int(h["size"])
        if h["size"] <= 0 or end > len(data):
            raise CorruptFile(f"{path}: truncated or corrupt packet at byte {start + pos}")
        if h["type"] == 1 and h["size"] == 8:
            ev = data[pos + 28:pos + 28 + int(h["number"]) * 8].view(polarity)
            chunks.append(ev[(ev["data"] & 1) == 1])  # bit 0: valid mark
        pos = end
    ev = np.concatenate(chunks) if chunks else np.zeros(0, polarity)
    d, t = ev["data"], ev["t"].astype(np.int64)
    x, y, p = (d >> 17) & 0x1FFF, (d >> 2) & 0x1FFF, (d >> 1) & 0x1
    _check(path, x, y, t, 128, 128)
    return x, y, t, p


def read_gesture_slice(source) -> Events:
    """One labelled gesture: the events of recording `path` with start <= t < end."""
    path, start, end = source
    x, y, t, p = read_aedat31_polarity(path)
    keep = (t >= start) & (t < end)
    return x[keep], y[keep], t[keep], p[keep]


def read_tonic_gesture_npy(path) -> Events:
    """tonic's DVSGesture download: one .npy per gesture, columns x, y, p, t (ms)."""
    try:
        ev = np.load(path)
    except Exception as e:
        raise CorruptFile(f"{path}: cannot read as .npy ({e})") from None
    x, y, p = (ev[:, i].astype(np.int64) for i in range(3))
    t = np.round(ev[:, 3] * 1000).astype(np.int64)
    _check(path, x, y, t, 128, 128)
    return x, y, t, p


READERS = {".bin": read_nmnist, ".aedat": read_aedat2_dvs128, ".aedat4": read_aedat4_events,
           ".npy": read_tonic_gesture_npy}
