"""Readers: one event file (or one labelled slice of one) -> integer arrays x, y, t (us), p (0/1).

Each reader parses its format with tonic's (or the `aedat` package's) code where that does the job, then refuses,
with CorruptFile naming the file and what it appears to be, a file that is
- another format under this name, or empty (`what_is` reads the first bytes);
- not a recording of the expected sensor's polarity events: a jAER header naming another chip, or address bits
  outside the DVS128's fields (AEDAT 2.0); a source other than DVS128 in the header, or packets of frames, IMU
  samples, cochlea or other non-polarity events (AEDAT 3.1); an event stream of another size, with frame and IMU
  streams beside it or not (AEDAT4); in any format, events (MIN_EVENTS_JUDGED or more) that lie in fewer than
  MIN_COVERED_LINES of the sensor's columns or rows, as no camera's do (a silicon cochlea's addresses, 0-1023, in
  an AEDAT 2.0 file without jAER's AEChip line, read as DVS128 events in 4 columns);
- damaged where the format lets it show: not a whole number of records, a packet running past the end of the
  file, a header and no events, an event outside the sensor (34x34 for N-MNIST, 128x128 otherwise), a negative
  timestamp, or timestamps that go backwards.
None of these formats carries a checksum: a damaged byte that moves an event to another pixel inside the
sensor, flips its polarity, or raises a timestamp without breaking their order reads as a real event.

Orientation: x counts columns and y rows of the frames (frames.py puts event (x, y) at [.., y, x]). N-MNIST: x, y
as stored (tonic's read_mnist_file), digits upright. AEDAT 2.0: x = address bits 8-14, y = bits 1-7, as tonic's
read_dvs_128; jAER and iniVation call bits 1-7 X and bits 8-14 Y and display X mirrored (127 - X) with y up, so
our frame is jAER's picture reflected in its anti-diagonal (a standing person lies on its side), and
SpikingJelly's CIFAR10-DVS loader (x = 127 - our x, y = 127 - our y, p = 1 - our p, after jAER, which reads
bit 0 = 1 as OFF) gives our frame turned by 180 degrees with ON and OFF swapped. AEDAT 3.1 and 4.0, tonic's .npy:
x, y as stored, origin top left, as DV displays them.
docs/science.md, section 6, has the layouts.
"""

import functools
import os
import re
from pathlib import Path
from typing import Tuple

import numpy as np

from snnexp.data.event_checks import (  # noqa: F401
    MIN_COVERED_LINES,
    MIN_EVENTS_JUDGED,
    SIGNATURES,
    check_events,
    corrupt,
    expect_format,
    what_is,
)
from snnexp.errors import CorruptFile, DatasetError

Events = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # x, y, t (us), p

# ----------------------------------------------------------------------------------------------------- N-MNIST


def read_nmnist(path) -> Events:
    """N-MNIST 40-bit events with tonic's reader; a size that is not a multiple of 5 bytes is a
    truncated file."""
    from tonic.datasets import NMNIST
    from tonic.io import read_mnist_file

    expect_format(path, "", "an N-MNIST recording (5-byte events, no header)")
    size = os.path.getsize(path)
    if size % 5:
        raise corrupt(path, f"{size} bytes is not a whole number of 5-byte N-MNIST events (truncated?)")
    ev = read_mnist_file(str(path), dtype=NMNIST.dtype)
    x, y, t, p = (ev[k].astype(np.int64) for k in ("x", "y", "t", "p"))
    check_events(path, x, y, t, 34, 34)
    return x, y, t, p


# ------------------------------------------------------------------------------------------ AEDAT 2.0 and 3.1


def _aedat_header(path, expected: str, reader: str) -> Tuple[str, int]:
    """The text header of an AEDAT 2.0 / 3.x file and the offset of the data after it: the lines that start with
    '#', up to AEDAT 3.1's '#!END-HEADER' or jAER's '# End Of ASCII Header' line where there is one (after it the
    data may start with a '#' byte). Read here: tonic's read_aedat_header_from_file puts the data one byte before
    the end of a file that holds only a header."""
    expect_format(path, expected, reader)
    lines = []
    with open(path, "rb") as f:
        for line in f:
            if not line.startswith(b"#"):
                break
            lines.append(line)
            if line.startswith(b"#!END-HEADER") or b"End Of ASCII Header" in line:
                break
    return b"".join(lines).decode("latin-1"), sum(len(line) for line in lines)


DVS128_CHIPS = ("DVS128", "Tmpdiff128")  # jAER's AEChip classes of the 128x128 DVS (Tmpdiff128: its first name)
DVS128_ADDRESS_BITS = 0xFFFF  # bit 15 external input, bits 8-14 and 1-7 the pixel, bit 0 the polarity


def _jaer_chip(header: str) -> str:
    """The AEChip class that jAER names in its header ('# AEChip: eu.seebetter.ini.chips.davis.DAVIS240C'), or ''."""
    m = re.search(r"^#\s*AEChip:\s*(\S+)", header, re.MULTILINE)
    return m.group(1) if m else ""


def _sensor_kind(chip: str) -> str:
    kind = "a silicon cochlea" if "cochlea" in chip.lower() else "a DAVIS camera" if "davis" in chip.lower() else \
        "another sensor"
    return f"{kind} (jAER AEChip {chip})"


def read_aedat2_dvs128(path) -> Events:
    """AER-DAT 2.0 (CIFAR10-DVS's original release) with tonic's header and record readers, decoded with the DVS128
    address layout of tonic's read_dvs_128 (which cannot be called itself: in tonic 1.7 it unpacks two values from
    a reader that returns three). Refuses another chip named in jAER's header, and an address with bits above 15
    (a DAVIS puts y in bits 22-30 and x in 12-21, and marks frame and IMU samples with bit 31). Events with bit 15
    set are the DVS128's external-input (sync) events, which jAER does not draw either: they are left out."""
    from tonic.io import get_aer_events_from_file

    header, start = _aedat_header(path, "an AEDAT 2.0 file", "an AEDAT 2.0 DVS128 recording")
    chip = _jaer_chip(header)
    if chip and chip.rsplit(".", 1)[-1] not in DVS128_CHIPS:
        raise corrupt(path, f"a recording of {_sensor_kind(chip)}, not of a 128x128 DVS128")
    if (os.path.getsize(path) - start) % 8:
        raise corrupt(path, "data is not a whole number of 8-byte events (truncated, or not AEDAT 2.0 records)")
    ev = get_aer_events_from_file(str(path), 2.0, start)
    addr, t = ev["address"], ev["timeStamp"].astype(np.int64)
    foreign = np.flatnonzero(addr & ~np.uint32(DVS128_ADDRESS_BITS))
    if len(foreign):
        i = foreign[0]
        raise corrupt(path, f"event {i} has address 0x{int(addr[i]):08x}, with bits above the DVS128's 16: not a "
                             f"DVS128 recording (a DAVIS camera's, or a damaged file)")
    pixel = (addr & 0x8000) == 0
    addr, t = addr[pixel], t[pixel]
    x, y, p = (addr >> 8) & 0x7F, (addr >> 1) & 0x7F, addr & 0x1
    check_events(path, x, y, t, 128, 128)
    return x.astype(np.int64), y.astype(np.int64), t, p.astype(np.int64)


AEDAT31_PACKET = np.dtype([("type", "<i2"), ("source", "<i2"), ("size", "<i4"), ("ts_offset", "<i4"),
                           ("ts_overflow", "<i4"), ("capacity", "<i4"), ("number", "<i4"), ("valid", "<i4")])
AEDAT31_POLARITY = np.dtype([("data", "<u4"), ("t", "<i4")])
AEDAT31_TYPES = ("special", "polarity", "frame", "IMU6", "IMU9", "sample (ADC)", "ear (cochlea)", "configuration",
                 "point1D", "point2D", "point3D", "point4D", "spike")


def _aedat31_sources(path, header: str) -> set:
    """The source IDs of the header's '#Source <ID>: <device>' lines (copies of older sources, '#-Source', aside);
    a device other than DVS128 is refused."""
    sources = dict(re.findall(r"^#Source (\d+): ?(.*?)\r?$", header, re.MULTILINE))
    other = {i: name for i, name in sources.items() if name.strip() != "DVS128"}
    if other:
        i, name = next(iter(other.items()))
        raise corrupt(path, f"its header names source {i}: {name.strip()}, not a 128x128 DVS128")
    return {int(i) for i in sources}


def _aedat31_polarity_packets(path, data: np.ndarray, start: int, sources: set):
    """Walk the packets of an AEDAT 3.1 body; yield (events, ts_overflow) of each polarity packet. Special-event
    packets (timestamp markers) are passed over; any other event type, or a packet that is not whole, is refused."""
    pos = 0
    while pos < len(data):
        at = start + pos
        if pos + 28 > len(data):
            raise corrupt(path, f"truncated packet header at byte {at}")
        h = data[pos:pos + 28].view(AEDAT31_PACKET)[0]
        kind, size, capacity, number = int(h["type"]), int(h["size"]), int(h["capacity"]), int(h["number"])
        if 1 < kind < len(AEDAT31_TYPES):
            raise corrupt(path, f"holds {AEDAT31_TYPES[kind]} events (packet at byte {at}): not a DVS128 polarity "
                                 f"recording")
        if kind not in (0, 1) or size != 8 or h["ts_offset"] != 4 or not 0 <= number <= capacity \
                or (sources and int(h["source"]) not in sources):
            raise corrupt(path, f"corrupt packet header at byte {at} (type {kind}, source {int(h['source'])}, "
                                 f"event size {size}, {number} of {capacity} events)")
        end = pos + 28 + capacity * size
        if end > len(data):
            raise corrupt(path, f"truncated packet at byte {at}")
        if kind == 1:
            yield data[pos + 28:pos + 28 + number * 8].view(AEDAT31_POLARITY), int(h["ts_overflow"])
        pos = end


@functools.lru_cache(maxsize=2)  # the gestures of one recording are converted one after another
def read_aedat31_polarity(path) -> Events:
    """AEDAT 3.1 (DVS128 Gesture): tonic's header reader, then the packets walked here, keeping the polarity
    events marked valid: tonic's get_aer_events_from_file reads every packet as polarity events, which the real
    recordings' special-event packets would corrupt, and cannot see a truncated file. x and y are the 15-bit fields
    of the format (bits 17-31, 2-16), so that a damaged high bit shows as an event outside the sensor; the
    timestamp is the event's 31 bits plus the packet's overflow count times 2^31."""
    header, start = _aedat_header(path, "an AEDAT 3.x file", "an AEDAT 3.1 DVS128 recording")
    sources = _aedat31_sources(path, header)
    data = np.fromfile(path, dtype=np.uint8, offset=start)
    chunks = []
    for ev, overflow in _aedat31_polarity_packets(path, data, start, sources):
        ev = ev[(ev["data"] & 1) == 1]  # bit 0: the valid mark
        chunks.append((ev["data"], ev["t"].astype(np.int64) + (overflow << 31)))
    d = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros(0, np.uint32)
    t = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros(0, np.int64)
    x, y, p = (d >> 17).astype(np.int64), ((d >> 2) & 0x7FFF).astype(np.int64), ((d >> 1) & 0x1).astype(np.int64)
    check_events(path, x, y, t, 128, 128)
    return x, y, t, p


def read_gesture_slice(source) -> Events:
    """One labelled gesture: the events of recording `path` with start <= t < end; none there is refused (the
    labels do not match the recording)."""
    path, start, end = source
    x, y, t, p = read_aedat31_polarity(path)
    keep = (t >= start) & (t < end)
    if not keep.any():
        raise corrupt(path, f"no events between t={start} and t={end} us, where its labels put a gesture (the "
                             f"recording spans {int(t[0])}-{int(t[-1])} us)")
    return x[keep], y[keep], t[keep], p[keep]


# ---------------------------------------------------------------------------------------------- AEDAT4, .npy


def _aedat4_header(path) -> None:
    """Refuse an AEDAT4 file whose IOHeader (after '#!AER-DAT4.0\\r\\n': int32 size, then a flatbuffer holding the
    streams' description as XML) is cut short or whose XML is not whole: the `aedat` decoder aborts the whole
    process on some damaged XML, where an exception could have been caught."""
    from xml.etree import ElementTree

    with open(path, "rb") as f:
        head = f.read(18)
        size = int.from_bytes(head[14:18], "little") if len(head) == 18 else -1
        block = f.read(size) if 0 < size < 1 << 24 else b""
    begin, end = block.find(b"<dv"), block.rfind(b"</dv>")
    if len(block) != size or begin < 0 or end < begin:
        raise corrupt(path, "truncated or damaged AEDAT4 header (its stream description is not whole)")
    try:
        ElementTree.fromstring(block[begin:end + 5].decode("utf-8"))
    except (UnicodeDecodeError, ElementTree.ParseError) as e:
        raise corrupt(path, f"damaged AEDAT4 header: its stream description is not valid XML ({e})") from None


def _is_panic(e: BaseException) -> bool:
    """A panic of Rust code under Python (pyo3's PanicException, which derives from BaseException)."""
    return type(e).__name__ == "PanicException"


def read_aedat4_events(path) -> Events:
    """AEDAT4 (CIFAR10-DVS as tonic downloads it) with the `aedat` package that tonic's read_aedat4 wraps, called
    here because tonic's wrapper drops the event stream's size, which must be 128x128. The first event stream is
    read (as tonic does); other streams (frames, IMU, triggers) are not."""
    expect_format(path, "an AEDAT 4.0 file", "an AEDAT4 recording")
    _aedat4_header(path)
    try:
        import aedat
    except ImportError:
        raise DatasetError(f"reading {path} needs the 'aedat' package: pip install aedat") from None
    try:
        decoder = aedat.Decoder(str(path))
        streams = decoder.id_to_stream()
        ids = sorted(i for i, s in streams.items() if s["type"] == "events")
        if not ids:
            raise corrupt(path, f"has no event stream (its streams: {sorted(s['type'] for s in streams.values())})")
        size = (streams[ids[0]]["width"], streams[ids[0]]["height"])
        if size != (128, 128):
            raise corrupt(path, f"its event stream is {size[0]}x{size[1]}, not 128x128: a recording of another "
                                 f"sensor (a DAVIS240 is 240x180, a DAVIS346 346x260, a DVXplorer Lite 320x240)")
        packets = [packet["events"] for packet in decoder if packet["stream_id"] == ids[0]]
    except CorruptFile:
        raise
    except BaseException as e:  # the decoder's RuntimeErrors, and its Rust code's panics
        if not (isinstance(e, Exception) or _is_panic(e)):
            raise
        raise corrupt(path, f"cannot read as AEDAT4 ({type(e).__name__}: {e})") from None
    ev = np.concatenate(packets) if packets else np.zeros(0, [("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("on", "?")])
    x, y, t, p = (ev[k].astype(np.int64) for k in ("x", "y", "t", ev.dtype.names[3]))  # 'on' in aedat's dtype
    check_events(path, x, y, t, 128, 128)
    return x, y, t, p


def read_tonic_gesture_npy(path) -> Events:
    """tonic's DVSGesture download: one .npy per gesture, an [N, 4] array with columns x, y, p, t (ms). Refuses
    another array, values that are not finite or (x, y, p) not whole, and a polarity other than 0 or 1."""
    expect_format(path, "a NumPy .npy file", "tonic's DVSGesture .npy")
    try:
        ev = np.load(path, allow_pickle=False)
    except Exception as e:
        raise corrupt(path, f"cannot read as .npy ({type(e).__name__}: {e})") from None
    if ev.ndim != 2 or ev.shape[1] != 4 or ev.dtype.kind not in "iuf":
        raise corrupt(path, f"holds a {ev.dtype} array of shape {ev.shape}, not tonic's [N, 4] events (x, y, p, t)")
    if not np.isfinite(ev).all() or np.abs(ev).max(initial=0) >= 2**40 or np.any(ev[:, :3] != np.round(ev[:, :3])):
        raise corrupt(path, "holds values that are not finite or beyond any event's, or an x, y or p that is not "
                             "a whole number")
    x, y, p = (ev[:, i].astype(np.int64) for i in range(3))
    if np.any((p != 0) & (p != 1)):
        raise corrupt(path, f"polarity {int(p[(p != 0) & (p != 1)][0])} is not 0 or 1")
    t = np.round(ev[:, 3] * 1000).astype(np.int64)
    check_events(path, x, y, t, 128, 128)
    return x, y, t, p


READERS = {".bin": read_nmnist, ".aedat": read_aedat2_dvs128, ".aedat4": read_aedat4_events,
           ".npy": read_tonic_gesture_npy}


def read_source(source) -> Events:
    """The events of one sample: a file, by its suffix's reader, or a (recording, start, end) gesture slice. A file
    that cannot be opened at all (permissions, a broken link) is a DatasetError naming it, not a traceback."""
    try:
        return read_gesture_slice(source) if isinstance(source, tuple) else READERS[Path(source).suffix](source)
    except OSError as e:
        raise DatasetError(f"{e.filename or source}: cannot be read ({e.strerror or e})") from None
