"""Writers for small files in the real on-disk formats of the event datasets, so that tests read them
through the real loading code (tonic's readers). x, y, t (microseconds, non-decreasing), p (0/1) are
equal-length 1-d integer arrays. Formats: docs/science.md, section 6, and tonic/io.py."""

import csv
import random
import struct
from pathlib import Path

import numpy as np


def write_nmnist_bin(path, x, y, t, p):
    """N-MNIST: 5 bytes per event: x, y, then bit 7 = polarity and 23 bits of timestamp (us)."""
    x, y, t, p = (np.asarray(a, dtype=np.int64) for a in (x, y, t, p))
    if len(t) and t.max() >= 2**23:
        raise ValueError("N-MNIST timestamps are 23 bits (< 8.4 s)")
    raw = np.empty((len(x), 5), dtype=np.uint8)
    raw[:, 0] = x
    raw[:, 1] = y
    raw[:, 2] = (p << 7) | (t >> 16)
    raw[:, 3] = (t >> 8) & 0xFF
    raw[:, 4] = t & 0xFF
    raw.tofile(path)


def write_aedat2(path, x, y, t, p, chip=None):
    """AER-DAT 2.0 as in CIFAR10-DVS's original release: '#' header lines, then big-endian (uint32
    address, uint32 timestamp) records; the address is the inverse of tonic's read_dvs_128 decoding
    (x = addr >> 8 & 0x7F, y = addr >> 1 & 0x7F, p = addr & 1). `chip`: a jAER AEChip class to name in the
    header, as jAER writes it (e.g. "ch.unizh.ini.jaer.chip.retina.DVS128")."""
    x, y, t, p = (np.asarray(a, dtype=np.uint32) for a in (x, y, t, p))
    write_aedat2_addresses(path, (x << 8) | (y << 1) | p, t, chip)


def _jaer_header(chip=None) -> bytes:
    lines = [b"#!AER-DAT2.0", b"# This is a raw AE data file - do not edit",
             b"# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event",
             b"# Timestamps tick is 1 us", b"# created by snnexp's tests"]
    if chip:  # jAER since 2014: AEFileOutputStream, then AEChip.writeAdditionalAEFileOutputStreamHeader
        lines += [f"# AEChip: {chip}".encode(), b"# End Of ASCII Header"]
    return b"".join(line + b"\r\n" for line in lines)


def write_aedat2_addresses(path, address, t, chip=None):
    """AER-DAT 2.0 records of raw 32-bit addresses (any chip's layout) under jAER's header naming `chip`."""
    records = np.empty(len(address), dtype=[("address", ">u4"), ("timeStamp", ">u4")])
    records["address"] = address
    records["timeStamp"] = t
    with open(path, "wb") as f:
        f.write(_jaer_header(chip))
        f.write(records.tobytes())


DAVIS240C = "eu.seebetter.ini.chips.davis.DAVIS240C"


def write_aedat2_davis240c(path, x, y, t, p, imu_t=()):
    """A jAER AEDAT 2.0 recording of a DAVIS240C (240 x 180): jAER's DavisChip address layout, DVS events as
    y << 22 | x << 12 | polarity << 11 (bit 31 clear), and an IMU sample at each of `imu_t` as jAER's IMUSample
    writes it: 7 records (accel x, y, z, temperature, gyro x, y, z), address 0x80000C00 | code << 28 | 16-bit value
    << 12. x, y are the chip's address fields."""
    x, y, t, p = (np.asarray(a, dtype=np.uint32) for a in (x, y, t, p))
    address = [(y << 22) | (x << 12) | (p << 11)]
    times = [t]
    for ti in imu_t:
        values = np.array([100, -200, 16384, 300, 5, -5, 1], dtype=np.int16).astype(np.uint16).astype(np.uint32)
        address.append(np.uint32(0x80000C00) | (np.arange(7, dtype=np.uint32) << 28) | (values << 12))
        times.append(np.full(7, ti, dtype=np.uint32))
    address, times = np.concatenate(address), np.concatenate(times)
    order = np.argsort(times, kind="stable")
    write_aedat2_addresses(path, address[order], times[order], DAVIS240C)


COCHLEA_AMS1C = "ch.unizh.ini.jaer.chip.cochlea.CochleaAMS1c"


def write_aedat2_cochlea(path, channel, ear, neuron, lpf, t, chip=COCHLEA_AMS1C):
    """A jAER AEDAT 2.0 recording of the CochleaAMS1c silicon cochlea: address bit 0 LPF/BPF ganglion cell, bit 1
    ear (1 right), bits 2-7 channel (0-63), bits 8-9 threshold neuron (0-3), as jAER's CochleaAMS1c extractor reads
    it. Every address (0-1023) fits in the DVS128's 16 bits. chip=None: no AEChip line, as jAER wrote before 2014."""
    channel, ear, neuron, lpf, t = (np.asarray(a, dtype=np.uint32) for a in (channel, ear, neuron, lpf, t))
    write_aedat2_addresses(path, (neuron << 8) | (channel << 2) | (ear << 1) | lpf, t, chip)


def cochlea_sweep(rng, duration_us=500_000):
    """A silicon cochlea hearing a tone that sweeps from channel 10 to 50: every (channel, ear, neuron, LPF/BPF)
    cell fires as a Poisson process, at 300 Hz near the tone's channel (falling off over ~3 channels, halved for
    each higher threshold neuron) over 5 Hz of spontaneous spikes. Returns channel, ear, neuron, lpf, t (us)."""
    channel, ear, neuron, lpf = np.meshgrid(np.arange(64), np.arange(2), np.arange(4), np.arange(2), indexing="ij")
    channel, ear, neuron, lpf = (a.ravel() for a in (channel, ear, neuron, lpf))
    spikes = []
    for start in range(0, duration_us, 1000):  # 1 ms steps
        tone = 10 + 40 * start / duration_us
        rate = 5 + 300 * np.exp(-((channel - tone) ** 2) / 18) / 2.0 ** neuron  # Hz
        cells = np.repeat(np.arange(len(channel)), rng.poisson(rate * 1e-3))
        spikes.append((cells, start + rng.integers(0, 1000, len(cells))))
    cells, t = (np.concatenate(a) for a in zip(*spikes))
    order = np.argsort(t, kind="stable")
    cells, t = cells[order], t[order]
    return channel[cells], ear[cells], neuron[cells], lpf[cells], t


def write_aedat31_gesture(path, x, y, t, p, packet_size=4096, source="DVS128", special=False, imu_t=()):
    """AEDAT 3.1 as in the DVS128 Gesture release: a text header, then packets of a 28-byte header
    (eventType 1 = polarity, source, eventSize 8, tsOffset 4, tsOverflow, capacity, number, valid) and
    8-byte little-endian events (data: bit 0 valid, bit 1 polarity, bits 2-16 y, bits 17-31 x; int32 t).
    `source`: the device the '#Source 1:' header line names; `special`: a special-event packet (type 0, one
    timestamp-reset event) first, as cAER writes; `imu_t`: an IMU6 packet (type 3, 36-byte events: info, t,
    7 float32) with a sample at each of these times, as a DAVIS writes."""
    x, y, t, p = (np.asarray(a, dtype=np.uint32) for a in (x, y, t, p))
    events = np.empty(len(x), dtype=[("data", "<u4"), ("t", "<i4")])
    events["data"] = (x << 17) | (y << 2) | (p << 1) | 1
    events["t"] = t.astype(np.int32)
    with open(path, "wb") as f:
        f.write(f"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: {source}\r\n#Start-Time: 2017-01-01 00:00:00\r\n"
                f"#!END-HEADER\r\n".encode())
        if special:
            f.write(struct.pack("<hhiiiiii", 0, 1, 8, 4, 0, 1, 1, 1))
            f.write(struct.pack("<Ii", (1 << 1) | 1, 0))  # type 1 (TIMESTAMP_RESET) in bits 1-7, valid
        for start in range(0, len(events), packet_size):
            chunk = events[start:start + packet_size]
            n = len(chunk)
            f.write(struct.pack("<hhiiiiii", 1, 1, 8, 4, 0, n, n, n))
            f.write(chunk.tobytes())
        if len(imu_t):
            f.write(struct.pack("<hhiiiiii", 3, 1, 36, 4, 0, len(imu_t), len(imu_t), len(imu_t)))
            for ti in imu_t:
                f.write(struct.pack("<Ii7f", 1, int(ti), 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 25.0))


def write_gesture_labels_csv(path, rows):
    """The release's user<NN>_<lighting>_labels.csv: rows of (class 1-11, start us, end us)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "startTime_usec", "endTime_usec"])
        w.writerows(rows)


def write_aedat4(path, x, y, t, p, width=128, height=128, camera="DVS128", frame_t=(), imu_t=()):
    """AEDAT4 (what tonic's CIFAR10DVS download holds), written by iniVation's dv-processing. With frame_t or imu_t:
    the streams a DAVIS camera records (events, frames, IMU, triggers), a blank frame at each of frame_t and an IMU
    sample at each of imu_t."""
    import dv_processing as dv

    config = dv.io.MonoCameraWriter.DAVISConfig if len(frame_t) or len(imu_t) else \
        dv.io.MonoCameraWriter.EventOnlyConfig
    writer = dv.io.MonoCameraWriter(str(path), config(camera, (width, height)))
    store = dv.EventStore()
    for ti, xi, yi, pi in zip(t, x, y, p):
        store.push_back(int(ti), int(xi), int(yi), bool(pi))
    writer.writeEvents(store)
    for ti in frame_t:
        writer.writeFrame(dv.Frame(int(ti), np.zeros((height, width), np.uint8)))
    for ti in imu_t:  # timestamp, temperature, accelerometer x y z (g), gyroscope x y z, magnetometer x y z
        writer.writeImu(dv.IMU(int(ti), 25.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
    del writer  # closes the file


def write_tonic_gesture_npy(path, x, y, t, p, dtype=np.float64):
    """tonic's DVSGesture download: one .npy per gesture, an [N, 4] array with columns x, y, p, t in ms."""
    ev = np.stack([np.asarray(a, dtype=np.float64) for a in (x, y, p)] + [np.asarray(t) / 1000.0], axis=1)
    np.save(path, ev.astype(dtype))


# ------------------------------------------------------------- small datasets in the real folder layouts


def random_events(rng, n, size, duration_us=300_000):
    x = rng.integers(0, size, n)
    y = rng.integers(0, size, n)
    t = np.sort(rng.integers(0, duration_us, n))
    p = rng.integers(0, 2, n)
    return x, y, t, p


def make_nmnist(root: Path, per_digit=2, digits=range(10), seed=0):
    """NMNIST/{Train,Test}/<digit>/<n>.bin, written in a shuffled order."""
    rng = np.random.default_rng(seed)
    jobs = [(split, d, i) for split in ("Train", "Test") for d in digits for i in range(per_digit)]
    random.Random(seed).shuffle(jobs)
    for split, d, i in jobs:
        folder = root / "NMNIST" / split / str(d)
        folder.mkdir(parents=True, exist_ok=True)
        write_nmnist_bin(folder / f"{d * 100 + i:05d}.bin", *random_events(rng, 50 + 10 * d, 34))


def make_cifar10dvs(root: Path, classes=("airplane", "cat", "truck"), per_class=10, seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        folder = root / "CIFAR10DVS" / c
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            write_aedat2(folder / f"cifar10_{c}_{i}.aedat", *random_events(rng, 200, 128, 1_000_000))


def make_gesture(root: Path, seed=0):
    """Two recordings (user01: train, user24: test), three labelled gestures each."""
    rng = np.random.default_rng(seed)
    folder = root / "DvsGesture"
    folder.mkdir(parents=True)
    for user in ("user01_led", "user24_led"):
        write_aedat31_gesture(folder / f"{user}.aedat", *random_events(rng, 3000, 128, 3_000_000))
        write_gesture_labels_csv(folder / f"{user}_labels.csv",
                                 [(1, 0, 1_000_000), (5, 1_000_000, 2_000_000), (11, 2_000_000, 3_000_000)])
    (folder / "trials_to_train.txt").write_text("user01_led.aedat\n")
    (folder / "trials_to_test.txt").write_text("user24_led.aedat\n")
    return folder
