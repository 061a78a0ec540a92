"""The event-file readers (snnexp.data.readers) on files in the real formats, written by tests/event_writers.py:
recordings of other sensors, damaged files, and the orientation each reader produces, checked against jAER's,
tonic's and SpikingJelly's decoding and, for N-MNIST, against the MNIST digits themselves."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA, run_snnexp
from event_writers import (
    COCHLEA_AMS1C,
    DAVIS240C,
    cochlea_sweep,
    make_cifar10dvs,
    make_gesture,
    random_events,
    write_aedat2,
    write_aedat2_addresses,
    write_aedat2_cochlea,
    write_aedat2_davis240c,
    write_aedat31_gesture,
    write_gesture_labels_csv,
    write_nmnist_bin,
    write_tonic_gesture_npy,
)
from snnexp.data import DatasetError, dvs_cifar10, dvs_gesture
from snnexp.data.readers import (
    read_aedat2_dvs128,
    read_aedat4_events,
    read_aedat31_polarity,
    read_nmnist,
    read_source,
    read_tonic_gesture_npy,
)
from snnexp.errors import CorruptFile

DVS128 = "ch.unizh.ini.jaer.chip.retina.DVS128"
TRAIN_STEP = ["trainer.T=4", "trainer.epochs=1", "trainer.max_steps=2", "trainer.batch_size=4", "model=mlp",
              "dataset.downsample=4"]


def events(n=300, size=128, seed=0):
    return random_events(np.random.default_rng(seed), n, size, 1_000_000)


def read_gesture_file(path):
    return read_aedat31_polarity.__wrapped__(str(path))  # not through the cache of the last two recordings


def subdir(path: Path) -> Path:
    path.mkdir()
    return path


def refused(reader, path, *phrases):
    with pytest.raises(CorruptFile) as e:
        reader(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and e.value.path == str(path)
    for phrase in phrases:
        assert phrase in msg, msg
    return msg


# ---------------------------------------------------------------------------- recordings from another sensor


def test_a_davis240c_recording_with_imu_samples_is_refused_by_its_header_and_by_its_addresses(tmp_path):
    x, y, t, p = random_events(np.random.default_rng(0), 200, 180, 100_000)
    write_aedat2_davis240c(tmp_path / "davis.aedat", x, y, t, p, imu_t=[10_000, 20_000])
    refused(read_aedat2_dvs128, tmp_path / "davis.aedat",
            f"a recording of a DAVIS camera (jAER AEChip {DAVIS240C}), not of a 128x128 DVS128")
    # the same file from a jAER too old to write the AEChip line: jAER's DAVIS address layout gives it away
    raw = (tmp_path / "davis.aedat").read_bytes()
    (tmp_path / "old.aedat").write_bytes(raw.replace(f"# AEChip: {DAVIS240C}\r\n".encode(), b""))
    refused(read_aedat2_dvs128, tmp_path / "old.aedat", "with bits above the DVS128's 16: not a DVS128 recording")


def test_a_cochlea_recording_is_refused_by_its_header_or_without_one_by_the_four_columns_it_fills(tmp_path):
    """A CochleaAMS1c's addresses (0-1023) fit in the DVS128's 16 bits; read as DVS128 events they lie in 4 columns
    (x = address bits 8-9) and every row."""
    path = tmp_path / "cochlea.aedat"
    write_aedat2_cochlea(path, *cochlea_sweep(np.random.default_rng(0)))
    refused(read_aedat2_dvs128, path, f"a recording of a silicon cochlea (jAER AEChip {COCHLEA_AMS1C})")
    without_chip = tmp_path / "anonymous.aedat"
    without_chip.write_bytes(path.read_bytes().replace(f"# AEChip: {COCHLEA_AMS1C}\r\n".encode(), b""))
    refused(read_aedat2_dvs128, without_chip, "events lie in 4 of the 128 columns and 128 of the 128 rows",
            "not a recording of the sensor (a silicon cochlea's or another device's events)")


def test_a_headerless_cochlea_recording_among_cifar10dvs_recordings_stops_the_loader_naming_it(tmp_path):
    make_cifar10dvs(tmp_path, per_class=2)
    path = tmp_path / "CIFAR10DVS" / "cat" / "cifar10_cat_1.aedat"
    write_aedat2_cochlea(path, *cochlea_sweep(np.random.default_rng(1)), chip=None)
    with pytest.raises(CorruptFile, match=f"^{path}: its [0-9]+ events lie in 4 of the 128 columns .* not a "
                                          f"recording of the sensor"):
        dvs_cifar10(str(tmp_path), download=False, T=2, cache_dir=str(tmp_path / "cache"), workers=1)


def moving_edge(rng):
    """A CIFAR10-DVS-like scene: an image's vertical edge (rows 20-107) sweeping from column 10 to 117 in 200 ms,
    each pixel on it firing with probability 0.2 per ms."""
    rows = np.arange(20, 108)
    x, y, t = [], [], []
    for ms in range(200):
        fire = rows[rng.random(len(rows)) < 0.2]
        x.append(np.full(len(fire), 10 + ms * 107 // 199))
        y.append(fire)
        t.append(ms * 1000 + np.sort(rng.integers(0, 1000, len(fire))))
    x, y, t = (np.concatenate(a) for a in (x, y, t))
    return x, y, t, np.ones(len(t), dtype=np.int64)


def waving_hand(rng):
    """A gesture-like blob: a disc of radius 6 (13 rows) waving between columns 30 and 90, twice in a second, ten
    events a ms on its rim, ON ahead of it and OFF behind, with no background activity: fewer rows than any real
    gesture recording fills."""
    x, y, t, p = [], [], [], []
    for ms in range(1000):
        cx = 60 + 30 * np.sin(2 * np.pi * 2 * ms / 1000)
        angle = rng.uniform(0, 2 * np.pi, 10)
        x.append(np.clip(np.round(cx + 6 * np.cos(angle)), 0, 127).astype(np.int64))
        y.append(np.round(40 + 6 * np.sin(angle)).astype(np.int64))
        t.append(ms * 1000 + np.sort(rng.integers(0, 1000, 10)))
        p.append((np.cos(angle) * np.cos(2 * np.pi * 2 * ms / 1000) > 0).astype(np.int64))  # ahead: ON
    return tuple(np.concatenate(a) for a in (x, y, t, p))


@pytest.mark.parametrize("scene", [moving_edge, waving_hand])
def test_dvs128_recordings_of_a_moving_edge_or_a_waving_hand_read_in_every_format(tmp_path, scene):
    x, y, t, p = scene(np.random.default_rng(0))
    assert len(np.unique(y)) <= 88  # the scene fills a part of the sensor only (13 rows for the hand)
    write_aedat2(tmp_path / "a.aedat", x, y, t, p)  # no AEChip line: only the events can tell
    write_aedat31_gesture(tmp_path / "g.aedat", x, y, t, p)
    write_tonic_gesture_npy(tmp_path / "g.npy", x, y, t, p)
    for reader, path in ((read_aedat2_dvs128, "a.aedat"), (read_gesture_file, "g.aedat"),
                         (read_tonic_gesture_npy, "g.npy")):
        for got, written in zip(reader(tmp_path / path), (x, y, t, p)):
            np.testing.assert_array_equal(got, written)


def test_a_dvs128_recording_named_by_jaer_reads_and_its_external_input_events_are_left_out(tmp_path):
    x, y, t, p = events()
    write_aedat2(tmp_path / "a.aedat", x, y, t, p, chip=DVS128)
    got = read_aedat2_dvs128(tmp_path / "a.aedat")
    for a, b in zip(got, (x, y, t, p)):
        np.testing.assert_array_equal(a, b)
    address = np.array([(5 << 8) | (6 << 1) | 1, 0x8000, (7 << 8) | (8 << 1)], dtype=np.uint32)
    write_aedat2_addresses(tmp_path / "sync.aedat", address, [10, 20, 30], chip=DVS128)
    x, y, t, p = read_aedat2_dvs128(tmp_path / "sync.aedat")
    assert x.tolist() == [5, 7] and y.tolist() == [6, 8] and t.tolist() == [10, 30] and p.tolist() == [1, 0]


def test_aedat31_from_another_source_or_with_imu_packets_is_refused(tmp_path):
    x, y, t, p = random_events(np.random.default_rng(0), 300, 180, 100_000)
    write_aedat31_gesture(tmp_path / "davis.aedat", x, y, t, p, source="DAVIS240C")
    refused(read_gesture_file, tmp_path / "davis.aedat", "its header names source 1: DAVIS240C, not a 128x128 DVS128")
    x, y, t, p = events()
    write_aedat31_gesture(tmp_path / "imu.aedat", x, y, t, p, special=True, imu_t=[500, 600])
    refused(read_gesture_file, tmp_path / "imu.aedat", "holds IMU6 events (packet at byte ",
            "not a DVS128 polarity recording")
    write_aedat31_gesture(tmp_path / "ok.aedat", x, y, t, p, special=True)  # special packets, as cAER writes
    np.testing.assert_array_equal(read_gesture_file(tmp_path / "ok.aedat")[0], x)


@pytest.mark.parametrize("camera, width, height", [("DVXplorerLite", 320, 240), ("DAVIS346", 346, 260)])
def test_aedat4_of_another_camera_with_frame_and_imu_streams_is_refused_naming_its_size(tmp_path, camera, width,
                                                                                         height):
    pytest.importorskip("dv_processing", reason="writing AEDAT4 needs dv-processing (dev extra)")
    from event_writers import write_aedat4

    x, y, t, p = random_events(np.random.default_rng(0), 500, 128, 100_000)  # events that would fit a DVS128
    path = tmp_path / f"{camera}.aedat4"
    write_aedat4(path, x, y, t, p, width, height, camera, frame_t=[0, 50_000], imu_t=[0, 10_000, 20_000])
    refused(read_aedat4_events, path, f"its event stream is {width}x{height}, not 128x128: a recording of another "
                                      f"sensor")


def test_files_without_size_information_are_held_to_their_sensor(tmp_path):
    x, y, t, p = random_events(np.random.default_rng(0), 300, 128, 100_000)
    write_tonic_gesture_npy(tmp_path / "big.npy", x * 2, y, t, p)  # a 256-wide sensor's events
    refused(read_tonic_gesture_npy, tmp_path / "big.npy", "lies outside the 128x128 sensor")
    write_nmnist_bin(tmp_path / "big.bin", x, y, t, p)  # 128x128 events in N-MNIST's format
    refused(read_nmnist, tmp_path / "big.bin", "lies outside the 34x34 sensor")


# ---------------------------------------------------------------------------------------------- damaged files


def good_file(kind, folder: Path, n=300) -> Path:
    """A valid file of each format, with events in time order."""
    size = 34 if kind == "nmnist" else 128
    x, y, t, p = events(n, size)
    path = folder / {"nmnist": "a.bin", "aedat2": "a.aedat", "aedat31": "g.aedat", "aedat4": "a.aedat4",
                     "npy": "a.npy"}[kind]
    if kind == "nmnist":
        write_nmnist_bin(path, x, y, t, p)
    elif kind == "aedat2":
        write_aedat2(path, x, y, t, p, chip=DVS128)
    elif kind == "aedat31":
        write_aedat31_gesture(path, x, y, t, p, packet_size=100, special=True)
    elif kind == "aedat4":
        pytest.importorskip("dv_processing", reason="writing AEDAT4 needs dv-processing (dev extra)")
        from event_writers import write_aedat4

        write_aedat4(path, x, y, t, p)
    else:
        write_tonic_gesture_npy(path, x, y, t, p)
    return path


READER = {"nmnist": read_nmnist, "aedat2": read_aedat2_dvs128, "aedat31": read_gesture_file,
          "aedat4": read_aedat4_events, "npy": read_tonic_gesture_npy}
KINDS = list(READER)


def header_length(kind, raw: bytes) -> int:
    if kind in ("aedat2", "aedat31"):
        return raw.index(b"\r\n#!END-HEADER\r\n") + 16 if kind == "aedat31" else raw.index(b"Header\r\n") + 8
    if kind == "aedat4":
        return 18 + int.from_bytes(raw[14:18], "little")
    return 10 + int.from_bytes(raw[8:10], "little")  # .npy version 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_an_empty_file_is_named(tmp_path, kind):
    path = good_file(kind, tmp_path)
    path.write_bytes(b"")
    refused(READER[kind], path, "an empty file (0 bytes)")


@pytest.mark.parametrize("kind", KINDS)
def test_a_header_without_events_is_named(tmp_path, kind):
    path = good_file(kind, tmp_path)
    raw = path.read_bytes()
    if kind == "nmnist":  # no header: a lone timestamp-overflow record (y = 240) holds no event
        path.write_bytes(bytes([0, 240, 0, 0, 0]))
    elif kind == "aedat31":  # the header, and a special-event packet
        path.write_bytes(raw[:header_length(kind, raw) + 36])
    elif kind == "npy":
        np.save(path, np.zeros((0, 4)))
    elif kind == "aedat4":
        from event_writers import write_aedat4

        write_aedat4(path, [], [], [], [])
    else:
        path.write_bytes(raw[:header_length(kind, raw)])
    refused(READER[kind], path, "holds no events")


BODY_OF = {"nmnist": "aedat2", "aedat2": "aedat31", "aedat31": "aedat2", "aedat4": "aedat2", "npy": "aedat2"}


@pytest.mark.parametrize("kind", KINDS)
def test_a_valid_header_over_another_formats_body_is_refused(tmp_path, kind):
    own = good_file(kind, subdir(tmp_path / "own"))
    other = good_file(BODY_OF[kind], tmp_path, n=400)
    own_raw, other_raw = own.read_bytes(), other.read_bytes()
    body = other_raw[header_length(BODY_OF[kind], other_raw):]
    if kind == "nmnist":  # no header of its own: another format's whole file under the name
        own.write_bytes(other_raw)
        refused(read_nmnist, own, "is an AEDAT 2.0 file, not an N-MNIST recording")
        return
    if kind == "npy":  # a header that promises [N, 4] float64 rows, over as many bytes of AEDAT 2.0 records
        header = own_raw[:header_length(kind, own_raw)].replace(b"(300, 4)", f"({len(body) // 32}, 4)".encode())
        own.write_bytes(header + body[:len(body) // 32 * 32])
    else:
        own.write_bytes(own_raw[:header_length(kind, own_raw)] + body)
    refused(READER[kind], own)


@pytest.mark.parametrize("kind", KINDS)
def test_random_flipped_bytes_give_a_named_error_or_events_that_keep_the_format(tmp_path, kind):
    """200 damaged copies, 1-3 bytes each changed: each is refused (CorruptFile), or reads as events inside the
    sensor in time order; never another exception."""
    path = good_file(kind, tmp_path)
    raw = path.read_bytes()
    size = 34 if kind == "nmnist" else 128
    outcomes = {"refused": 0, "read": 0}
    for trial in range(200):
        rng = np.random.default_rng(trial)
        damaged = bytearray(raw)
        for _ in range(rng.integers(1, 4)):
            damaged[rng.integers(len(damaged))] ^= int(rng.integers(1, 256))
        copy = tmp_path / f"damaged{path.suffix}"
        copy.write_bytes(bytes(damaged))
        try:
            x, y, t, p = READER[kind](copy)
        except CorruptFile:
            outcomes["refused"] += 1
            continue
        outcomes["read"] += 1
        assert x.min() >= 0 and y.min() >= 0 and x.max() < size and y.max() < size
        assert np.all(np.diff(t) >= 0) and t[0] >= 0 and set(np.unique(p)) <= {0, 1}
    assert outcomes["refused"] >= 10, outcomes


def flip(path: Path, offset: int, value: int) -> Path:
    raw = bytearray(path.read_bytes())
    raw[offset] = value
    path.write_bytes(bytes(raw))
    return path


def test_a_byte_that_moves_an_event_off_the_sensor_or_back_in_time_is_refused_in_every_format(tmp_path):
    rows = [
        # (kind, byte offset from the data's start, new value, phrase)
        ("nmnist", 5 * 7 + 0, 200, "event 7 at x=200, y="),  # event 7's x byte
        ("nmnist", 5 * 150 + 2, 0, "timestamps go backwards at event 150"),  # its timestamp's high byte
        ("aedat2", 8 * 7 + 1, 0x01, "event 7 has address 0x0001"),  # bit 16 of event 7's big-endian address
        ("aedat2", 8 * 150 + 5, 0, "timestamps go backwards at event 150"),  # its timestamp's second byte
        ("aedat31", 36 + 28 + 8 * 7 + 3, 0xFF, "lies outside the 128x128 sensor"),  # x's top bits, event 7
        ("aedat31", 36 + 28 + 8 * 50 + 6, 0, "timestamps go backwards at event 50"),  # its timestamp's third byte
    ]
    for i, (kind, offset, value, phrase) in enumerate(rows):
        path = good_file(kind, subdir(tmp_path / str(i)))
        raw = path.read_bytes()
        refused(READER[kind], flip(path, header_length(kind, raw) + offset if kind != "nmnist" else offset, value),
                phrase)
    npy = good_file("npy", tmp_path)
    for column, value, phrase in ((0, 128, "lies outside the 128x128 sensor"), (3, -1.0, "negative timestamp"),
                                  (3, 0.0, "timestamps go backwards")):
        ev = np.load(npy)
        ev[5 if value else 150, column] = value
        np.save(tmp_path / "bad.npy", ev)
        refused(read_tonic_gesture_npy, tmp_path / "bad.npy", phrase)


def test_an_aedat4_event_off_its_stream_is_refused(tmp_path):
    """AEDAT4 packets are compressed, so a byte cannot be aimed at one event: an event written outside the stream's
    declared 128x128 stands in for it (dv-processing refuses to write timestamps out of order)."""
    pytest.importorskip("dv_processing", reason="writing AEDAT4 needs dv-processing (dev extra)")
    from event_writers import write_aedat4

    write_aedat4(tmp_path / "a.aedat4", [1, 200, 3], [2, 3, 4], [10, 20, 30], [1, 0, 1])
    refused(read_aedat4_events, tmp_path / "a.aedat4", "event 1 at x=200, y=3 lies outside the 128x128 sensor")


def test_a_file_that_cannot_be_opened_is_a_dataset_error_naming_it(tmp_path):
    (tmp_path / "folder.aedat").mkdir()
    with pytest.raises(DatasetError, match="folder.aedat: cannot be read"):
        read_source(str(tmp_path / "folder.aedat"))


# ------------------------------------------------------------------------------------------------ orientation


def _tonic_io(monkeypatch):
    """tonic.io, whose read_dvs_128 / read_dvs_ibm work: in tonic 1.7 they unpack two values from the header reader,
    which returns three."""
    import tonic.io

    three = tonic.io.read_aedat_header_from_file
    monkeypatch.setattr(tonic.io, "read_aedat_header_from_file", lambda f: three(f)[:2])
    return tonic.io


def test_aedat2_decodes_as_tonic_read_dvs_128_and_is_spikingjellys_frame_turned_180_degrees(tmp_path, monkeypatch):
    x, y, t, p = events()
    write_aedat2(tmp_path / "a.aedat", x, y, t, p, chip=DVS128)
    ours = read_aedat2_dvs128(tmp_path / "a.aedat")
    _, theirs = _tonic_io(monkeypatch).read_dvs_128(str(tmp_path / "a.aedat"))
    for name, mine in zip("xytp", ours):
        np.testing.assert_array_equal(mine, theirs[name].astype(np.int64))
    sj = pytest.importorskip("spikingjelly.datasets.cifar10_dvs")
    theirs = sj._load_origin_data(str(tmp_path / "a.aedat"))
    np.testing.assert_array_equal(theirs["x"], 127 - ours[0])
    np.testing.assert_array_equal(theirs["y"], 127 - ours[1])
    np.testing.assert_array_equal(theirs["p"], 1 - ours[3])  # and the polarity read the other way round


def test_aedat2_frames_are_jaers_picture_reflected_in_its_anti_diagonal(tmp_path):
    """An 'L' drawn in jAER's display coordinates (x right, y up; DVS128.java: x = 127 - address bits 1-7,
    y = bits 8-14), read through the CIFAR10-DVS loader: our frame is jAER's picture with rows and columns
    swapped and both reversed."""
    jx = np.array([10] * 40 + list(range(10, 30)))  # a vertical stroke up from (10, 10), a foot to the right
    jy = np.array(list(range(10, 50)) + [10] * 20)
    address = (jy.astype(np.uint32) << 8) | ((127 - jx).astype(np.uint32) << 1)
    folder = tmp_path / "CIFAR10DVS" / "cat"
    folder.mkdir(parents=True)
    write_aedat2_addresses(folder / "l.aedat", address, np.arange(len(jx)), chip=DVS128)
    splits = dvs_cifar10(str(tmp_path), download=False, T=1, cache_dir=str(tmp_path / "cache"), test_fraction=0.0)
    ours = splits.train[0][0].numpy()[0].sum(0) > 0  # [H, W]
    jaer = np.zeros((128, 128), bool)
    jaer[127 - jy, jx] = True  # jAER's display as an image: row 0 at the top
    assert not np.array_equal(ours, jaer) and not np.array_equal(ours, jaer.T)
    np.testing.assert_array_equal(ours, jaer[::-1, ::-1].T)


def test_aedat31_decodes_as_spikingjelly_and_tonic_do(tmp_path, monkeypatch):
    x, y, t, p = events()
    write_aedat31_gesture(tmp_path / "g.aedat", x, y, t, p, packet_size=100)
    ours = read_gesture_file(tmp_path / "g.aedat")
    _, theirs = _tonic_io(monkeypatch).read_dvs_ibm(str(tmp_path / "g.aedat"))
    for name, mine in zip("xytp", ours):
        np.testing.assert_array_equal(mine, theirs[name].astype(np.int64))
    utils = pytest.importorskip("spikingjelly.datasets.utils")
    theirs = utils.load_aedat_v3(str(tmp_path / "g.aedat"))
    for name, mine in zip("xytp", ours):
        np.testing.assert_array_equal(mine, theirs[name].astype(np.int64))


@pytest.mark.skipif(not (SHARED_DATA / "NMNIST").is_dir() or not (SHARED_DATA / "MNIST").is_dir(),
                    reason="real N-MNIST and MNIST not present")
def test_real_nmnist_recordings_read_upright_like_their_mnist_digits():
    """N-MNIST recording n is MNIST training image n (1-based): the events summed over time match the digit as
    read better than the digit transposed, flipped or turned."""
    raw = SHARED_DATA / "MNIST" / "raw"
    with gzip.open(raw / "train-images-idx3-ubyte.gz") as f:
        digits = np.frombuffer(f.read()[16:], np.uint8).reshape(-1, 28, 28).astype(float)
    files = sorted((SHARED_DATA / "NMNIST" / "Train").glob("*/*.bin"))[::9][:100]
    best = []
    for f in files:
        x, y, _, _ = read_nmnist(f)
        seen = np.zeros((34, 34))
        np.add.at(seen, (y, x), 1)
        digit = digits[int(f.stem) - 1]
        views = {"as read": digit, "transposed": digit.T, "upside down": digit[::-1], "mirrored": digit[:, ::-1],
                 "turned": digit[::-1, ::-1]}
        best.append(max(views, key=lambda k: np.corrcoef(seen[3:31, 3:31].ravel(), views[k].ravel())[0, 1]))
    assert best.count("as read") >= 90, {k: best.count(k) for k in set(best)}


# --------------------------------------------------------------------- skipped files: counted, through the CLI


def test_skipped_gesture_samples_are_counted_by_file_and_repeated_when_the_cache_is_reused(tmp_path, caplog):
    folder = make_gesture(tmp_path)
    x, y, t, p = random_events(np.random.default_rng(0), 3000, 180, 3_000_000)
    write_aedat31_gesture(folder / "user02_led.aedat", x, y, t, p, source="DAVIS240C")
    write_gesture_labels_csv(folder / "user02_led_labels.csv", [(1, 0, 1_000_000), (2, 1_000_000, 2_000_000)])
    (folder / "trials_to_train.txt").write_text("user01_led.aedat\nuser02_led.aedat\n")
    kwargs = dict(download=False, T=2, cache_dir=str(tmp_path / "cache"), workers=1)
    with pytest.raises(CorruptFile, match="user02_led.aedat: its header names source 1: DAVIS240C.*"
                                          "dataset.on_corrupt=skip leaves such files out"):
        dvs_gesture(str(tmp_path), **kwargs)
    caplog.set_level("WARNING", logger="snnexp")
    splits = dvs_gesture(str(tmp_path), on_corrupt="skip", **kwargs)
    assert len(splits.train) == 3
    summary = "1 corrupt file(s) skipped (dataset.on_corrupt=skip): 2 of 5 samples left out"
    assert summary in caplog.text
    meta = json.loads((splits.train.cache_dir / "meta.json").read_text())
    assert meta["skipped_files"] == [str(folder / "user02_led.aedat")] and len(meta["skipped"]) == 2
    caplog.clear()
    dvs_gesture(str(tmp_path), on_corrupt="skip", **kwargs)
    assert f"{summary} when this cache was built" in caplog.text


def test_a_split_of_nothing_but_corrupt_files_is_an_error(tmp_path):
    folder = tmp_path / "CIFAR10DVS" / "cat"
    folder.mkdir(parents=True)
    x, y, t, p = random_events(np.random.default_rng(0), 100, 180, 100_000)
    for i in range(3):
        write_aedat2_davis240c(folder / f"{i}.aedat", x, y, t, p)
    with pytest.raises(DatasetError, match="all 2 samples of dvs_cifar10 train.* are in corrupt files, skipped"):
        dvs_cifar10(str(tmp_path), download=False, T=2, cache_dir=str(tmp_path / "c"), test_fraction=0.0,
                    on_corrupt="skip", workers=1)


def test_a_davis240c_file_among_cifar10dvs_recordings_stops_the_cli_or_is_skipped_and_counted(tmp_path):
    make_cifar10dvs(tmp_path / "data")
    x, y, t, p = random_events(np.random.default_rng(0), 300, 180, 1_000_000)
    davis = tmp_path / "data" / "CIFAR10DVS" / "cat" / "cifar10_cat_9.aedat"
    write_aedat2_davis240c(davis, x, y, t, p, imu_t=[100_000, 200_000])
    args = ["train", "dataset=dvs_cifar10", "dataset.cache_dir=cache", "dataset.download=false", *TRAIN_STEP]
    proc = run_snnexp(*args, "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"snnexp: error: {davis}: a recording of a DAVIS camera (jAER AEChip {DAVIS240C})" in proc.stderr
    proc = run_snnexp(*args, "dataset.on_corrupt=skip", "hydra.run.dir=run2", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert "1 corrupt file(s) skipped (dataset.on_corrupt=skip): 1 of " in out
    assert json.loads((tmp_path / "run2" / "metrics.json").read_text())["step"] == 2
