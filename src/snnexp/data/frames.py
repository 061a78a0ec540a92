"""Integrate an event stream (x, y, t, p) into T frames of shape [2, H, W] (event counts per polarity), or a
train of spikes (t, channel) of a 1-d sensor (a cochlea's channels: SHD, SSC) into T frames [C] (spike counts).

Two ways to cut the stream into T slices (docs/science.md, section 4):
- split_by="number": equal event counts, as SpikingJelly's code the PLIF paper used: with N events and
  d = N // T, slice k < T-1 holds events [k d, (k+1) d) and the last slice the rest [(T-1) d, N).
- split_by="time": by time. With bin_ms set (STBP: 5 ms), slice k holds events with
  t0 + k bin <= t < t0 + (k+1) bin, t0 the first event's time, and later events are dropped; with
  bin_ms unset, the recording's duration is cut into T equal slices (SpikingJelly's split_by='time').
A sample with fewer events than T, or shorter than T bins, still gives T frames (some empty).
Spike trains (channel_frames) are cut by time from t = 0, the start of the recording, instead of from the first
spike: an utterance's silent start is part of its timing.

One vectorised pass (np.bincount over a flat frame/polarity/pixel index) instead of a loop over frames;
bench/ compares it with tonic's ToFrame.
"""

from typing import Optional, Tuple

import numpy as np

SPLIT_METHODS = ("number", "time")


def frame_index(t: np.ndarray, T: int, split_by: str, bin_ms: Optional[float] = None,
                start: Optional[int] = None) -> np.ndarray:
    """The slice (0..T-1) of every event, or -1 for events that fall after the last slice. t: non-decreasing
    microseconds; by time, slices start at `start` (None: the first event's time) and, without bin_ms, end at the
    last event."""
    n = len(t)
    if split_by == "number":
        d = n // T
        if d == 0:
            return np.full(n, T - 1, dtype=np.int64)
        return np.minimum(np.arange(n, dtype=np.int64) // d, T - 1)
    if split_by != "time":
        raise ValueError(f"split_by must be one of {SPLIT_METHODS}, got {split_by!r}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    t = t.astype(np.int64) - int(t[0] if start is None else start)
    if bin_ms is not None:
        k = t // int(round(bin_ms * 1000))
        return np.where(k < T, k, -1)
    duration = int(t[-1]) + 1  # equal slices of [t0, t_last]
    return np.minimum(t * T // duration, T - 1)


def events_to_frames(
    x: np.ndarray,
    y: np.ndarray,
    t: np.ndarray,
    p: np.ndarray,
    sensor_size: Tuple[int, int],
    T: int,
    split_by: str = "number",
    bin_ms: Optional[float] = None,
    downsample: int = 1,
) -> np.ndarray:
    """Events -> uint16 counts [T, 2, H, W]. sensor_size = (W, H) of the sensor before downsampling;
    downsample = d sums d x d pixel blocks (frames of ceil(H/d) x ceil(W/d))."""
    width, height = (-(-s // downsample) for s in sensor_size)
    k = frame_index(np.asarray(t), T, split_by, bin_ms)
    keep = k >= 0
    xs = np.asarray(x, dtype=np.int64)[keep] // downsample
    ys = np.asarray(y, dtype=np.int64)[keep] // downsample
    ps = (np.asarray(p)[keep] > 0).astype(np.int64)
    flat = ((k[keep] * 2 + ps) * height + ys) * width + xs
    counts = np.bincount(flat, minlength=T * 2 * height * width)
    return np.minimum(counts, np.iinfo(np.uint16).max).astype(np.uint16).reshape(T, 2, height, width)


def channel_frames(t: np.ndarray, channel: np.ndarray, channels: int, T: int, bin_ms: Optional[float] = None,
                   group: int = 1) -> np.ndarray:
    """Spikes of a 1-d sensor -> uint16 counts [T, channels // group]: frame k, channel c counts the spikes of
    channels c*group .. c*group + group-1 with k*bin <= t < (k+1)*bin, t in microseconds from the recording's
    start (bin_ms: fixed bins, spikes from T*bin on dropped; None: [0, t_last] cut into T equal slices)."""
    width = channels // group
    k = frame_index(np.asarray(t), T, "time", bin_ms, start=0)
    keep = k >= 0
    flat = k[keep] * width + np.asarray(channel, dtype=np.int64)[keep] // group
    counts = np.bincount(flat, minlength=T * width)
    return np.minimum(counts, np.iinfo(np.uint16).max).astype(np.uint16).reshape(T, width)
