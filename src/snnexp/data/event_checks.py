"""What every event reader checks (data/readers.py): a file's format by its first bytes (`what_is`), and events
that no recording of the sensor could hold: none at all, outside the sensor, timestamps negative or going backwards,
or spread over only a handful of its columns or rows (`check_events`). Each refusal is a CorruptFile naming the
file and what it appears to be."""

import numpy as np

from snnexp.errors import CorruptFile

SIGNATURES = ((b"#!AER-DAT4", "an AEDAT 4.0 file"), (b"#!AER-DAT3", "an AEDAT 3.x file"),
              (b"#!AER-DAT2", "an AEDAT 2.0 file"), (b"#!AER-DAT1", "an AEDAT 1.0 file"),
              (b"\x93NUMPY", "a NumPy .npy file"), (b"PK\x03\x04", "a zip archive"), (b"\x1f\x8b", "a gzip archive"))


def corrupt(path, why: str) -> CorruptFile:
    return CorruptFile(f"{path}: {why}", path=path)


def what_is(path) -> str:
    """What the first bytes of `path` say it is: 'an empty file (0 bytes)', a format from SIGNATURES, or ''
    (no known signature: N-MNIST's headerless records, or something else)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "an empty file (0 bytes)"
    return next((name for magic, name in SIGNATURES if head.startswith(magic)), "")


def expect_format(path, expected: str, reader: str) -> None:
    """Refuse a file whose signature is not `expected` ('' for N-MNIST, which has none)."""
    found = what_is(path)
    if found != expected:
        magic = next((m for m, name in SIGNATURES if name == expected), b"")
        raise corrupt(path, f"is {found}, not {reader}" if found else f"does not start with {magic!r}: not {reader}")


def check_events(path, x, y, t, width, height) -> None:
    """Refuse no events, an event outside the width x height sensor, a negative or decreasing timestamp, events in
    a handful of the sensor's columns or rows."""
    if not len(t):
        raise corrupt(path, "holds no events (an empty recording)")
    outside = np.flatnonzero((x < 0) | (y < 0) | (x >= width) | (y >= height))
    if len(outside):
        i = outside[0]
        raise corrupt(path, f"event {i} at x={int(x[i])}, y={int(y[i])} lies outside the {width}x{height} sensor "
                             f"(another sensor's recording, or a damaged file)")
    negative = np.flatnonzero(t < 0)
    if len(negative):
        raise corrupt(path, f"negative timestamp {int(t[negative[0]])} us at event {negative[0]} (damaged file)")
    back = np.flatnonzero(np.diff(t) < 0)
    if len(back):
        i = back[0] + 1
        raise corrupt(path, f"timestamps go backwards at event {i} ({int(t[i - 1])} -> {int(t[i])} us; damaged file)")
    check_coverage(path, x, y, width, height)


# A camera recording's events spread over its sensor: the 1,000 real N-MNIST recordings in ../shared/data each
# cover at least 32 of the 34 columns and 31 of the 34 rows, and a CIFAR10-DVS image or a DVS Gesture body fills
# most of the 128x128, with background-activity events everywhere else. A silicon cochlea's addresses (0-1023) read
# as DVS128 events fill 4 columns (x = address bits 8-9). 8, twice that, refuses such files and no camera recording.
MIN_COVERED_LINES = 8
# Fewer events than this may lie in a few rows by chance, and say too little to judge: a real recording has
# thousands (N-MNIST's fewest: 1,112), hand-made ones a few.
MIN_EVENTS_JUDGED = 100


def check_coverage(path, x, y, width, height) -> None:
    """Refuse events that fill only a handful of the sensor's columns or rows: not a camera's recording."""
    if len(x) < MIN_EVENTS_JUDGED:
        return
    columns, rows = len(np.unique(x)), len(np.unique(y))
    if min(columns, rows) < MIN_COVERED_LINES:
        raise corrupt(path, f"its {len(x)} events lie in {columns} of the {width} columns and {rows} of the "
                             f"{height} rows of the {width}x{height} sensor: not a recording of the sensor (a "
                             f"silicon cochlea's or another device's events)")
